"""``pktstream query SQL``: SQL over a time range of the topics, in an embedded DuckDB.

``packets`` is the packet topic's range (consumers/tools/history.py), streamed into the engine a
message at a time (an Arrow record batch reader: bounded memory whatever the range; DuckDB scans
it once, so a query that reads ``packets`` twice should go through ``pktstream export --format
parquet`` first). ``usage`` and ``alerts`` are the consumers' output topics over the same range,
read only when the SQL names them; ``connections``, ``dns`` and ``http`` are ``pktstream activity``'s
conversation, DNS lookup and HTTP exchange records. Output: an aligned table, CSV, JSON lines or Parquet.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pktstream.consumers.engine.wirein import WireReader
from pktstream.consumers.tools.history import (
    Progress,
    Range,
    packet_batches,
    packet_schema,
    range_has_messages,
    terminal_progress,
)
from pktstream.consumers.tools.pushdown import pushdown
from pktstream.runtime.errors import ConfigError, PktstreamError

log = structlog.get_logger("pktstream.query")

@dataclass
class Sources:
    packets: str = "pktstream.packets"
    usage: str = "pktstream.usage"
    alerts: str = "pktstream.alerts"
    connections: str = "pktstream.connections"
    dns: str = "pktstream.dns"
    http: str = "pktstream.http"


def names_table(sql: str, table: str) -> bool:
    """Does the SQL name this table (as a word outside quotes)?"""
    bare = re.sub(r"'(?:[^']|'')*'", "''", sql)
    return re.search(rf"(?<![\w.\"]){table}(?![\w\"])", bare, re.IGNORECASE) is not None


def _messages(conf: Mapping[str, Any], topic: str) -> Iterator[bytes]:
    """Every committed message of a (small) output topic, partition after partition (its partitions
    read at once); the callers cut the range by record time."""
    c = Consumer({**conf, "group.id": "pktstream-query-out", "enable.auto.commit": False,
                  "enable.partition.eof": True, "isolation.level": "read_committed"})
    try:
        md = c.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            raise PktstreamError(f"the query names a table whose topic {topic!r} does not exist")
        ends: dict[int, int] = {}
        starts = []
        for p in sorted(md.partitions):
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30, cached=False)
            if hi > lo:
                ends[p] = hi
                starts.append(TopicPartition(topic, p, lo))
        got: dict[int, list[bytes]] = {p: [] for p in ends}
        if starts:
            c.assign(starts)
        left = set(ends)
        while left:
            m = c.poll(1.0)
            if m is None:
                continue
            p = m.partition() or 0
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    left.discard(p)
                    continue
                raise KafkaException(err)
            if p not in left:
                continue
            got[p].append(m.value() or b"")
            if (m.offset() or 0) + 1 >= ends[p]:
                left.discard(p)
        for p in sorted(got):
            yield from got[p]
    finally:
        c.close()


def usage_table(conf: Mapping[str, Any], topic: str, rng: Range, wr: WireReader | None = None) -> pa.Table:
    from pktstream.consumers.usage.processor import _PARSED

    wr = wr or WireReader()
    rows: list[dict[str, Any]] = []
    for value in _messages(conf, topic):
        try:
            rows.extend(r for r in wr.avro_records(value, "usage", _PARSED) if isinstance(r, dict))
        except PktstreamError:
            raise  # the registry cannot be reached: the table would be wrong
        except Exception:
            continue  # not a usage record: set aside as the consumers do
    lo = datetime.fromtimestamp(rng.since_ms / 1000, UTC) if rng.since_ms is not None else None
    hi = datetime.fromtimestamp(rng.until_ms / 1000, UTC) if rng.until_ms is not None else None
    rows = [r for r in rows
            if (lo is None or r["window_start_ms"] >= lo) and (hi is None or r["window_start_ms"] <= hi)]
    return pa.Table.from_pylist(rows) if rows else pa.table({"window_start_ms": pa.array([], pa.timestamp("ms"))})


def alerts_table(conf: Mapping[str, Any], topic: str, rng: Range, wr: WireReader | None = None) -> pa.Table:
    """One row per OCSF event: its time, rule, severity, activity, key, message, and the document."""
    wr = wr or WireReader()
    cols: dict[str, list[Any]] = {k: [] for k in ("time", "rule", "severity_id", "activity", "key", "message",
                                                  "uid", "document")}
    for value in _messages(conf, topic):
        try:
            value = wr.json_bytes(value)
            d = json.loads(value)
            t = int(d["time"])
        except (ValueError, KeyError, TypeError, RecursionError):
            continue
        if (rng.since_ms is not None and t < rng.since_ms) or (rng.until_ms is not None and t > rng.until_ms):
            continue
        pk = d.get("unmapped", {}).get("pktstream", {})
        cols["time"].append(datetime.fromtimestamp(t / 1000, UTC))
        cols["rule"].append(pk.get("rule"))
        cols["severity_id"].append(d.get("severity_id"))
        cols["activity"].append(d.get("activity_name"))
        cols["key"].append(pk.get("key"))
        cols["message"].append(d.get("message"))
        cols["uid"].append(d.get("finding_info", {}).get("uid"))
        cols["document"].append(value.decode(errors="replace"))
    return pa.table({
        "time": pa.array(cols["time"], pa.timestamp("ms", tz="UTC")), "rule": pa.array(cols["rule"], pa.string()),
        "severity_id": pa.array(cols["severity_id"], pa.int32()), "activity": pa.array(cols["activity"], pa.string()),
        "key": pa.array(cols["key"], pa.string()), "message": pa.array(cols["message"], pa.string()),
        "uid": pa.array(cols["uid"], pa.string()), "document": pa.array(cols["document"], pa.string()),
    })


CONNECTION_COLUMNS: dict[str, pa.DataType] = {
    "time": pa.timestamp("ms", tz="UTC"), "start_time": pa.timestamp("ms", tz="UTC"), "duration_ms": pa.int64(),
    "activity": pa.string(), "conn_state": pa.string(), "final": pa.bool_(), "protocol": pa.string(),
    "src": pa.string(), "src_port": pa.int32(), "dst": pa.string(), "dst_port": pa.int32(), "hostname": pa.string(),
    "packets_out": pa.int64(), "packets_in": pa.int64(), "bytes_out": pa.int64(), "bytes_in": pa.int64(),
    "community_id": pa.string(), "uid": pa.string(), "seen_by": pa.list_(pa.string()), "sampled": pa.bool_(),
    "document": pa.string(),
}


_INT_RANGE = {pa.int32(): (-(1 << 31), (1 << 31) - 1), pa.int64(): (-(1 << 63), (1 << 63) - 1)}


def fits(row: Mapping[str, Any], columns: Mapping[str, pa.DataType]) -> bool:
    """Whether each of a record's values fits its column (a record with a list where a string goes, or a
    number out of range, is set aside, not the query's end)."""
    for k, v in row.items():
        t = columns[k]
        if v is None or t == pa.bool_() or pa.types.is_timestamp(t):
            continue
        if t == pa.string():
            if not isinstance(v, str) or not _utf8(v):
                return False
        elif t in _INT_RANGE:
            lo, hi = _INT_RANGE[t]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                return False
        elif pa.types.is_list(t) and not (isinstance(v, list) and all(isinstance(x, str) and _utf8(x) for x in v)):
            return False
    return True


def _utf8(s: str) -> bool:
    """Whether a string can be written as UTF-8 (JSON can carry a lone surrogate, Arrow cannot)."""
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


def _record_table(conf: Mapping[str, Any], topic: str, rng: Range, columns: Mapping[str, pa.DataType],
                  row_of: Callable[[dict[str, Any], bytes], tuple[int, dict[str, Any]] | None],
                  what: str, wr: WireReader | None = None) -> pa.Table:
    """One row per record of an activity topic whose time (``row_of``'s first value, ms) is in the range.
    A record ``row_of`` cannot read (it raises, or returns None) or whose values do not fit their columns
    is set aside, as the consumers do."""
    wr = wr or WireReader()
    cols: dict[str, list[Any]] = {k: [] for k in columns}
    for value in _messages(conf, topic):
        try:
            value = wr.json_bytes(value)
            got = row_of(json.loads(value), value)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, OSError, RecursionError):
            continue
        if got is None or not fits(got[1], columns):
            continue
        t, row = got
        if (rng.since_ms is not None and t < rng.since_ms) or (rng.until_ms is not None and t > rng.until_ms):
            continue
        for k, v in row.items():
            cols[k].append(v)
    try:
        return pa.table({k: pa.array(v, columns[k]) for k, v in cols.items()})
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
        raise PktstreamError(f"the {what} topic {topic!r} holds a record that does not fit its table: {e}") from None


def connections_table(conf: Mapping[str, Any], topic: str, rng: Range, wr: WireReader | None = None) -> pa.Table:
    """One row per conversation record (OCSF Network Activity) whose end is in the range: the fields a
    hunt filters on as columns, and the document."""
    return _record_table(conf, topic, rng, CONNECTION_COLUMNS, _connection_row, "connections", wr)


def _connection_row(d: dict[str, Any], value: bytes) -> tuple[int, dict[str, Any]]:
    t, t0 = int(d["time"]), int(d["start_time"])
    src, dst, traffic = d["src_endpoint"], d["dst_endpoint"], d["traffic"]
    pk = d["unmapped"]["pktstream"]
    return t, {
        "time": datetime.fromtimestamp(t / 1000, UTC), "start_time": datetime.fromtimestamp(t0 / 1000, UTC),
        "duration_ms": int(d.get("duration", t - t0)), "activity": str(d["activity_name"]),
        "conn_state": str(pk["conn_state"]), "final": bool(pk["final"]),
        "protocol": str(d["connection_info"]["protocol_name"]), "src": str(src["ip"]),
        "src_port": src.get("port"), "dst": str(dst["ip"]), "dst_port": dst.get("port"),
        "hostname": dst.get("hostname"), "packets_out": int(traffic["packets_out"]),
        "packets_in": int(traffic["packets_in"]), "bytes_out": int(traffic["bytes_out"]),
        "bytes_in": int(traffic["bytes_in"]), "community_id": str(pk["community_id"]),
        "uid": str(d["connection_info"]["uid"]), "seen_by": [str(x) for x in pk.get("seen_by", [])],
        "sampled": bool(pk.get("sampled")), "document": value.decode(errors="replace"),
    }


DNS_COLUMNS: dict[str, pa.DataType] = {
    "time": pa.timestamp("ms", tz="UTC"),
    "activity": pa.string(),
    "answered": pa.bool_(),
    "protocol": pa.string(),
    "src": pa.string(),
    "src_port": pa.int32(),
    "dst": pa.string(),
    "dst_port": pa.int32(),
    "query_name": pa.string(),
    "query_type": pa.string(),
    "dns_id": pa.int32(),
    "rcode": pa.string(),
    "rcode_id": pa.int32(),
    "latency_us": pa.int64(),
    "answers": pa.list_(pa.string()),
    "answer_count": pa.int32(),
    "answers_cut": pa.bool_(),
    "community_id": pa.string(),
    "seen_by": pa.list_(pa.string()),
    "sampled": pa.bool_(),
    "document": pa.string(),
}


def dns_table(conf: Mapping[str, Any], topic: str, rng: Range, wr: WireReader | None = None) -> pa.Table:
    """One row per DNS lookup record (OCSF DNS Activity) whose time (the query's, else the answer's)
    is in the range."""
    return _record_table(conf, topic, rng, DNS_COLUMNS, _dns_row, "DNS", wr)


def _dns_row(d: dict[str, Any], value: bytes) -> tuple[int, dict[str, Any]] | None:
    t = int(d["time"])
    if int(d["class_uid"]) != 4003:
        return None
    src, dst, pk = d["src_endpoint"], d["dst_endpoint"], d["unmapped"]["pktstream"]
    return t, {
        "time": datetime.fromtimestamp(t / 1000, UTC), "activity": str(d["activity_name"]),
        "answered": bool(pk["answered"]), "protocol": str(d["connection_info"]["protocol_name"]),
        "src": str(src["ip"]), "src_port": int(src["port"]), "dst": str(dst["ip"]),
        "dst_port": int(dst["port"]), "query_name": str(pk["query_name"]),
        "query_type": pk.get("query_type_name"), "dns_id": pk.get("dns_id"), "rcode": d.get("rcode"),
        "rcode_id": d.get("rcode_id"), "latency_us": pk.get("latency_us"),
        "answers": [str(a["rdata"]) for a in d.get("answers", [])],
        "answer_count": pk.get("answer_count"), "answers_cut": bool(pk.get("answers_cut")),
        "community_id": str(pk["community_id"]), "seen_by": [str(x) for x in pk.get("seen_by", [])],
        "sampled": bool(pk.get("sampled")), "document": value.decode(errors="replace"),
    }


HTTP_COLUMNS: dict[str, pa.DataType] = {
    "time": pa.timestamp("ms", tz="UTC"),
    "activity": pa.string(),
    "answered": pa.bool_(),
    "src": pa.string(),
    "src_port": pa.int32(),
    "dst": pa.string(),
    "dst_port": pa.int32(),
    "method": pa.string(),
    "host": pa.string(),
    "path": pa.string(),
    "user_agent": pa.string(),
    "status": pa.int32(),
    "latency_us": pa.int64(),
    "request_length": pa.int64(),
    "response_length": pa.int64(),
    "api": pa.string(),
    "community_id": pa.string(),
    "seen_by": pa.list_(pa.string()),
    "sampled": pa.bool_(),
    "document": pa.string(),
}


def http_table(conf: Mapping[str, Any], topic: str, rng: Range, wr: WireReader | None = None) -> pa.Table:
    """One row per HTTP exchange record (OCSF HTTP Activity) whose time (the request's, else the
    answer's) is in the range."""
    return _record_table(conf, topic, rng, HTTP_COLUMNS, _http_row, "HTTP", wr)


def _http_row(d: dict[str, Any], value: bytes) -> tuple[int, dict[str, Any]] | None:
    t = int(d["time"])
    if int(d["class_uid"]) != 4002:
        return None
    src, dst, pk = d["src_endpoint"], d["dst_endpoint"], d["unmapped"]["pktstream"]
    rq, rs = d["http_request"], d["http_response"]
    return t, {
        "time": datetime.fromtimestamp(t / 1000, UTC), "activity": str(d["activity_name"]),
        "answered": bool(pk["answered"]), "src": str(src["ip"]), "src_port": int(src["port"]),
        "dst": str(dst["ip"]), "dst_port": int(dst["port"]), "method": str(pk["method"]),
        "host": str(pk["host"]), "path": (rq.get("url") or {}).get("path"), "user_agent": rq.get("user_agent"),
        "status": int(rs["code"]), "latency_us": pk.get("latency_us"), "request_length": rq.get("length"),
        "response_length": rs.get("length"), "api": str(pk["api"]), "community_id": str(pk["community_id"]),
        "seen_by": [str(x) for x in pk.get("seen_by", [])], "sampled": bool(pk.get("sampled")),
        "document": value.decode(errors="replace"),
    }


def run_query(conf: Mapping[str, Any], sql: str, rng: Range, sources: Sources, fmt: str, out: BinaryIO,
              progress: Progress | None = None, wr: WireReader | None = None) -> int:
    """Run the SQL; write its result; return the number of result rows. ``wr``: how output topics in the
    registry's wire format are read (default: the local registry, if it runs)."""
    import duckdb

    wr = wr or WireReader()
    progress = progress or Progress()
    con = duckdb.connect()
    named = {t for t in ("packets", "usage", "alerts", "connections", "dns", "http") if names_table(sql, t)}
    if not named:
        raise ConfigError([f"the query names none of the tables packets, usage, alerts, connections, dns, http: "
                           f"{sql!r}"])
    show = terminal_progress()
    keep: list[Any] = []  # what DuckDB scans must outlive the query
    if "packets" in named:
        if not range_has_messages(conf, sources.packets, rng):
            raise PktstreamError(f"no messages in {describe(rng)} of topic {sources.packets!r}")
        schema = packet_schema()
        filters = tuple(pushdown(sql))
        if filters:
            log.debug("query_filters_pushed_down", filters=[str(f) for f in filters])
        reader = pa.RecordBatchReader.from_batches(
            schema, packet_batches(conf, sources.packets, dataclasses.replace(rng, filters=filters), progress,
                                   schema, show, wr))
        keep.append(reader)
        con.register("packets", reader)
    if "usage" in named:
        keep.append(usage_table(conf, sources.usage, rng, wr))
        con.register("usage", keep[-1])
    if "alerts" in named:
        keep.append(alerts_table(conf, sources.alerts, rng, wr))
        con.register("alerts", keep[-1])
    if "connections" in named:
        keep.append(connections_table(conf, sources.connections, rng, wr))
        con.register("connections", keep[-1])
    if "dns" in named:
        keep.append(dns_table(conf, sources.dns, rng, wr))
        con.register("dns", keep[-1])
    if "http" in named:
        keep.append(http_table(conf, sources.http, rng, wr))
        con.register("http", keep[-1])
    try:
        rel = con.sql(sql)
        if rel is None:  # a statement without a result (SET, CREATE ...)
            return 0
        rows = write_result(rel.to_arrow_reader(), fmt, out)
    except duckdb.Error as e:
        columns = ", ".join(f"{f.name} {f.type}" for f in packet_schema())
        raise PktstreamError(f"SQL: {e}\nthe packets table has the columns: {columns}") from None
    finally:
        if show is not None:
            sys.stderr.write("\r\033[K")
    if "packets" in named and progress.records == 0:
        print(f"pktstream query: no packet records in {describe(rng)} of topic {sources.packets!r}"
              + (f" ({progress.corrupt} corrupt message(s) skipped)" if progress.corrupt else ""), file=sys.stderr)
    elif progress.corrupt:
        print(f"pktstream query: {progress.corrupt} corrupt message(s) of topic {sources.packets!r} skipped",
              file=sys.stderr)
    return rows


def describe(rng: Range) -> str:
    def t(ms: int | None, none: str) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z") if ms is not None else none
    return f"the range {t(rng.since_ms, 'the beginning')} .. {t(rng.until_ms, 'the end')}"


def _json_default(v: Any) -> Any:
    if isinstance(v, Decimal):  # DuckDB's sums of integers are HUGEINT, Arrow decimals
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, datetime):
        return v.isoformat().replace("+00:00", "Z")
    if isinstance(v, bytes):
        return v.decode("latin-1")
    return str(v)


def plain(b: pa.RecordBatch) -> pa.RecordBatch:
    """Timestamps as ISO 8601 text (nanoseconds kept), payloads as text (undecodable bytes escaped):
    what JSON lines and the table print."""
    cols = []
    for col, f in zip(b.columns, b.schema, strict=True):
        if pa.types.is_timestamp(f.type):
            col = pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ" if f.type.tz else "%Y-%m-%dT%H:%M:%S")
        elif pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
            col = pa.array([None if v is None else v.decode("utf-8", "backslashreplace") for v in col.to_pylist()],
                           pa.string())
        cols.append(col)
    return pa.RecordBatch.from_arrays(cols, names=b.schema.names)


def write_result(reader: pa.RecordBatchReader, fmt: str, out: BinaryIO) -> int:
    rows = 0
    if fmt in ("parquet", "csv"):  # Arrow's own writers, batch by batch
        writer = pq.ParquetWriter if fmt == "parquet" else pacsv.CSVWriter
        with writer(out, reader.schema) as w:
            for b in reader:
                w.write_batch(b)
                rows += b.num_rows
        return rows
    if fmt == "json":
        for b in reader:
            for r in plain(b).to_pylist():
                out.write(json.dumps(r, default=_json_default, separators=(",", ":")).encode() + b"\n")
            rows += b.num_rows
        return rows
    table = pa.Table.from_batches([plain(b) for b in reader])
    out.write(render_table(table).encode())
    return int(table.num_rows)


def render_table(t: pa.Table, max_rows: int = 1000) -> str:
    names = t.column_names
    cells = [[_cell(v) for v in row.values()] for row in t.slice(0, max_rows).to_pylist()]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
               for f in t.schema]

    def line(vals: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric, strict=True)
                         ).rstrip()
    lines = [line(names), line(["-" * w for w in widths])] + [line(r) for r in cells]
    if t.num_rows > max_rows:
        lines.append(f"({t.num_rows - max_rows:,} more rows; --format csv|json|parquet writes all)")
    lines.append(f"({t.num_rows:,} row{'s' if t.num_rows != 1 else ''})")
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, datetime):
        return v.isoformat().replace("+00:00", "Z")
    if isinstance(v, bytes):
        return v[:32].decode("latin-1").encode("unicode_escape").decode() + ("..." if len(v) > 32 else "")
    return str(v)


def open_output(path: str | None, fmt: str) -> BinaryIO:
    if path is None:
        if fmt == "parquet" and sys.stdout.isatty():
            raise ConfigError(["--format parquet writes binary: name a file with -o FILE"])
        return sys.stdout.buffer
    return Path(path).open("wb")
