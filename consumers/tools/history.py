"""A time range of the packet topic as Arrow record batches: what ``pktstream query`` and
``pktstream export`` read.

The start of the range is found by time (``offsets_for_times``: a message's timestamp is when the
producer sent it, never before its records were captured, so no earlier message holds a record
of the range); a partition is read until a message both sent more than UNTIL_SLACK_MS after the
range's end and holding only later records (a spool replayed after that, later in the partition,
is not read); records outside the range are cut by their own ``ts_ns``. Each message is decoded
as a whole by the columnar decoder and becomes one record batch: integer columns as they are,
addresses as text (each distinct address formatted once), the payload as binary, ``ts`` from
``ts_ns``, and ``host``, ``interface`` and ``run_id`` from the message's headers (else the
container's metadata). Nothing holds more than a message at a time, so memory stays bounded
whatever the range. A message that does not decode is counted and skipped.

The topic may also be ``pktstream relay``'s (one record per message in the schema-registry wire
format, each record naming its host and interface): its messages are read RELAYED_RUN at a time
(engine/wirein.py, the registry asked for the schema ids), a record batch per capture point.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pktstream.consumers.engine.wirein import WireReader
from pktstream.consumers.tools.pushdown import Filter, message_passes, record_mask
from pktstream.schemas import headers as H
from pktstream.schemas import load_schema_json, wire
from pktstream.schemas.columns import read_container
from pktstream.schemas.decode import DecodeError, addr_text, message_headers

log = structlog.get_logger("pktstream.history")

UNTIL_SLACK_MS = 60_000  # messages sent up to this long after --until are read for its records
RELAYED_RUN = 4096  # pktstream relay's messages (one record each) decoded at once


ADDRESS_BYTES = pa.binary(16)


def packet_schema(address_text: bool = True) -> pa.Schema:
    """The ``packets`` table: every field of schemas/packet.avsc under its name (int -> int32,
    long -> int64, addresses -> text, bytes -> binary), then ts, host, interface, run_id.
    ``address_text=False``: addresses as their 16 bytes (IPv4 mapped into IPv6), for readers that
    want the bytes (pcap export) rather than text."""
    fields: list[pa.Field] = []
    for f in load_schema_json("packet")["fields"]:
        t = f["type"]
        if f["name"] in ("src_addr", "dst_addr"):
            fields.append(pa.field(f["name"], pa.string() if address_text else ADDRESS_BYTES))
        elif t == "long":
            fields.append(pa.field(f["name"], pa.int64()))
        elif t == "int":
            fields.append(pa.field(f["name"], pa.int32()))
        elif t == "bytes":
            fields.append(pa.field(f["name"], pa.binary()))
        else:
            raise AssertionError(f"packet field {f['name']}: type {t!r} has no column type")
    fields += [pa.field("ts", pa.timestamp("ns", tz="UTC")), pa.field("host", pa.string()),
               pa.field("interface", pa.string()), pa.field("run_id", pa.string())]
    return pa.schema(fields)


FIELD_DEFAULTS: dict[str, Any] = {f["name"]: f["default"] for f in load_schema_json("packet")["fields"]
                                  if isinstance(f.get("default"), int)}


def addresses(m: npt.NDArray[np.uint8]) -> pa.Array:
    """(n, 16) address bytes (IPv4 mapped into IPv6) as text; each distinct address formatted once."""
    if len(m) == 0:
        return pa.array([], pa.string())
    rows = np.ascontiguousarray(m).view(np.dtype((np.void, 16))).ravel()
    uniq, inverse = np.unique(rows, return_inverse=True)
    texts = [addr_text(bytes(u)) for u in uniq]
    return pa.array(texts, pa.string()).take(pa.array(inverse.astype(np.int32).ravel()))


def row_prefixes(matrix: npt.NDArray[np.uint8], lens: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """Each row's first lens[i] bytes of an (n, width) matrix (lens at most the width), concatenated:
    gathered by index, so a row mostly shorter than the width costs only its own bytes."""
    n, width = len(lens), (matrix.shape[1] if matrix.ndim == 2 else 0)
    if n == 0 or width == 0:
        return np.zeros(0, np.uint8)
    start = np.arange(n, dtype=np.int64) * width
    first = np.cumsum(lens) - lens  # where each row's bytes begin in the output
    out: npt.NDArray[np.uint8] = np.ascontiguousarray(matrix).reshape(-1)[
        np.repeat(start - first, lens) + np.arange(int(lens.sum()))]
    return out


def binaries(matrix: npt.NDArray[np.uint8], lengths: npt.NDArray[Any]) -> pa.Array:
    """Variable-length bytes from the decoder's (n, width) matrix and lengths, without a loop."""
    n = len(lengths)
    lens = np.minimum(lengths.astype(np.int64), matrix.shape[1] if matrix.ndim == 2 else 0)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lens, out=offsets[1:])
    data = row_prefixes(matrix, lens)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])


def to_batch(columns: Mapping[str, npt.NDArray[Any]], n: int, host: str, interface: str, run_id: str,
             schema: pa.Schema) -> pa.RecordBatch:
    arrays: list[pa.Array] = []
    for f in schema:
        if f.name in ("src_addr", "dst_addr"):
            arrays.append(addresses(columns[f.name]) if f.type == pa.string() else
                          pa.FixedSizeBinaryArray.from_buffers(ADDRESS_BYTES, n, [
                              None, pa.py_buffer(np.ascontiguousarray(columns[f.name], np.uint8))]))
        elif f.type == pa.binary():
            arrays.append(binaries(columns[f.name], columns[f.name + "__len"]) if f.name in columns
                          else pa.array([b""] * n, pa.binary()))
        elif f.name == "ts":
            arrays.append(pa.array(columns["ts_ns"].astype(np.int64), pa.int64()).cast(f.type))
        elif f.name in ("host", "interface", "run_id"):
            value = {"host": host, "interface": interface, "run_id": run_id}[f.name]
            arrays.append(pc.cast(pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)),
                                                                 pa.array([value], pa.string())), pa.string()))
        elif f.name in columns:
            arrays.append(pa.array(columns[f.name].astype(f.type.to_pandas_dtype()), f.type))
        else:  # a field newer than the data's writer schema: its default
            default = FIELD_DEFAULTS.get(f.name, 0)
            arrays.append(pa.array(np.full(n, default, f.type.to_pandas_dtype()), f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


@dataclass
class Range:
    since_ms: int | None = None  # None: from the oldest message
    until_ms: int | None = None  # None: to the end of the topic as it is when reading starts
    hosts: frozenset[str] | None = None  # capture points (host ids) to keep; None: all
    filters: tuple[Filter, ...] = ()  # simple WHERE filters of a query, applied while decoding


@dataclass
class Progress:
    messages: int = 0
    records: int = 0  # handed to the engine
    filtered: int = 0  # of the range, dropped by a pushed-down filter before the engine
    corrupt: int = 0
    first_ns: int = 0
    last_ns: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        def t(ns: int) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9)) if ns else "-"
        return (f"{self.records:,} records from {self.messages:,} messages, {t(self.first_ns)} .. {t(self.last_ns)}"
                f" ({time.monotonic() - self.started:.0f} s)")


def _bounds(consumer: Consumer, topic: str, rng: Range) -> list[tuple[int, int, int]]:
    """(partition, first offset, end offset) of each partition holding messages of the range."""
    md = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if md is None or md.error is not None or not md.partitions:
        raise KafkaException(f"topic {topic!r} not found")
    parts = sorted(md.partitions)
    out = []
    starts: dict[int, int] = {}
    if rng.since_ms is not None:
        for tp in consumer.offsets_for_times([TopicPartition(topic, p, rng.since_ms) for p in parts], timeout=30):
            starts[tp.partition] = tp.offset  # -1: no message that late
    for p in parts:
        lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30, cached=False)
        start = starts.get(p, lo)
        start = hi if start < 0 else max(start, lo)
        if start < hi:
            out.append((p, start, hi))
    return out


def range_has_messages(conf: Mapping[str, Any], topic: str, rng: Range) -> bool:
    consumer = Consumer({**conf, "group.id": f"pktstream-query-{uuid.uuid4().hex[:8]}"})
    try:
        return bool(_bounds(consumer, topic, rng))
    finally:
        consumer.close()


def packet_batches(conf: Mapping[str, Any], topic: str, rng: Range, progress: Progress | None = None,
                   schema: pa.Schema | None = None, on_progress: Callable[[Progress], None] | None = None,
                   wire_reader: WireReader | None = None) -> Iterator[pa.RecordBatch]:
    """The range's records, a record batch per message (partition after partition). The topic may be
    pktstream relay's (one record per message in the registry's wire format, engine/wirein.py):
    such messages are read RELAYED_RUN at a time, a record batch per capture point among them."""
    schema = schema or packet_schema()
    progress = progress or Progress()
    wr = wire_reader or WireReader()
    consumer = Consumer({**conf, "group.id": f"pktstream-query-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                         "enable.partition.eof": True, "isolation.level": "read_committed",
                         "fetch.max.bytes": 64 << 20})
    lo_ns = rng.since_ms * 1_000_000 if rng.since_ms is not None else None
    hi_ns = rng.until_ms * 1_000_000 if rng.until_ms is not None else None

    def wanted(host: str, iface: str, run_id: str) -> bool:
        """Are a capture point's records asked for (--host, the query's filters on these columns)?"""
        if rng.hosts is not None and host not in rng.hosts:
            return False
        return not rng.filters or message_passes(rng.filters, {"host": host, "interface": iface, "run_id": run_id})

    def select(cols: dict[str, npt.NDArray[Any]], n: int, host: str, iface: str, run_id: str
               ) -> pa.RecordBatch | None:
        """A wanted capture point's records, cut to the range and the record filters (None: none is left)."""
        if n == 0:
            return None
        ts = cols["ts_ns"]
        keep = None
        if lo_ns is not None or hi_ns is not None:
            keep = np.ones(n, bool)
            if lo_ns is not None:
                keep &= ts >= lo_ns
            if hi_ns is not None:
                keep &= ts <= hi_ns
            if not keep.any():
                return None
        if rng.filters:
            passing = record_mask(rng.filters, cols)
            if passing is not None:
                in_range = int(keep.sum()) if keep is not None else n
                keep = passing if keep is None else keep & passing
                progress.filtered += in_range - int(keep.sum())
                if not keep.any():
                    return None
        if keep is not None and not keep.all():
            cols = {k: v[keep] for k, v in cols.items()}
        n = len(cols["ts_ns"])
        progress.records += n
        t_lo, t_hi = int(cols["ts_ns"].min()), int(cols["ts_ns"].max())
        progress.first_ns = min(progress.first_ns, t_lo) if progress.first_ns else t_lo
        progress.last_ns = max(progress.last_ns, t_hi)
        if on_progress is not None:
            on_progress(progress)
        return to_batch(cols, n, host, iface, run_id, schema)

    def past(ts_min_ns: int, m: Any) -> bool:
        """Has the partition gone past the range (a host's records come in time order)?"""
        return (hi_ns is not None and rng.until_ms is not None and ts_min_ns > hi_ns
                and m.timestamp()[1] > rng.until_ms + UNTIL_SLACK_MS)

    def relayed(run: list[Any], p: int) -> tuple[list[pa.RecordBatch], bool]:
        origins, bad, _n = wr.relayed([m.value() for m in run], topic)
        for i, why in sorted(bad.items()):
            progress.corrupt += 1
            log.warning("message_corrupt", topic=topic, partition=p, offset=run[i].offset(), reason=why)
        mine = [o for o in origins if o.batch.n and wanted(o.host, o.interface, "")]
        if mine and past(min(int(o.batch.columns["ts_ns"].min()) for o in mine), run[-1]):
            return [], True
        out = []
        for o in mine:
            b = select(o.batch.columns, o.batch.n, o.host, o.interface, "")
            if b is not None:
                out.append(b)
        return out, False

    try:
        for p, start, end in _bounds(consumer, topic, rng):
            consumer.assign([TopicPartition(topic, p, start)])
            pos = start
            run: list[Any] = []  # relayed messages not read yet
            done = False
            while pos < end and not done:
                m = consumer.poll(1.0 if not run else 0.0)
                if m is None:
                    if run:
                        batches, done = relayed(run, p)
                        run = []
                        yield from batches
                    continue
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        break  # aborted or compacted tail: nothing more to read below `end`
                    raise KafkaException(err)
                pos = (m.offset() or 0) + 1
                if (m.offset() or 0) >= end:
                    break
                progress.messages += 1
                value = m.value() or b""
                if wire.framed(value):
                    run.append(m)
                    if len(run) >= RELAYED_RUN or pos >= end:
                        batches, done = relayed(run, p)
                        run = []
                        yield from batches
                    continue
                if run:
                    batches, done = relayed(run, p)
                    run = []
                    yield from batches
                    if done:
                        break
                h = message_headers(m)
                if rng.hosts is not None and H.HOST in h and h[H.HOST] not in rng.hosts:
                    continue  # another capture point's, known without decoding
                try:
                    b = read_container(value)
                except DecodeError as e:
                    progress.corrupt += 1
                    log.warning("message_corrupt", topic=topic, partition=p, offset=m.offset(), reason=str(e))
                    continue
                host = h.get(H.HOST) or b.metadata.get(H.HOST, "")
                iface = h.get(H.INTERFACE) or b.metadata.get(H.INTERFACE, "")
                run_id = h.get(H.RUN_ID) or b.metadata.get(H.RUN_ID, "")
                if not wanted(host, iface, run_id) or b.n == 0:
                    continue
                if past(int(b.columns["ts_ns"].min()), m):
                    break
                batch = select(b.columns, b.n, host, iface, run_id)
                if batch is not None:
                    yield batch
            if run:
                batches, _ = relayed(run, p)
                yield from batches
            consumer.unassign()
    finally:
        consumer.close()


def terminal_progress() -> Callable[[Progress], None] | None:
    """A progress line on standard error when it is a terminal (rewritten at most 4 times a second)."""
    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(p: Progress) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.25:
            last[0] = now
            sys.stderr.write("\r\033[K" + p.line())
            sys.stderr.flush()
    return show
