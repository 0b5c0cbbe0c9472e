"""A consumer app's state store: each repartition partition's state, snapshotted into the
compacted ``<app>.state`` topic with every commit and read back when the partition is assigned
(or the transaction aborted). How a snapshot is laid out and cut into parts is ``snapshot.py``;
this is where the parts are written (with the runner's transactional producer, so a snapshot
commits with the offsets it belongs to) and put back together from the topic."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pktstream.consumers.engine import snapshot
from pktstream.consumers.engine.eventtime import NO_PROGRESS
from pktstream.consumers.engine.topics import MAX_SNAPSHOT, SnapshotUnreadable, snapshot_loader
from pktstream.runtime.errors import PktstreamError
from pktstream.runtime.kafka import retrying, transient
from pktstream.schemas import headers as H
from pktstream.schemas.decode import DecodeError, message_headers

log = structlog.get_logger("pktstream.stream")

RESTORE_TRIES = 6


class StateProcessor(Protocol):
    """What the store asks of an app's processor (runner.Processor has it all)."""

    def new_state(self) -> Any: ...

    def dump(self, state: Any) -> Any: ...

    def load(self, data: Any) -> Any: ...

    def degrade(self, state: Any) -> dict[str, Any]: ...


@dataclass
class PartState:
    data: Any
    sources: dict[int, int] = field(default_factory=dict)  # packet partition -> event time reached (ns)
    watermark: int = NO_PROGRESS
    parts: int = 1  # part keys its last snapshot left with a value (a smaller one tombstones the rest)
    # the snapshot's name, committed with it as the metadata of the partition's offset: a restore
    # that reads another (an older one whose successor's commit markers have not reached the state
    # topic yet) knows it is not the one that goes with the offset ("": a snapshot from before tokens)
    token: str = ""


Produce = Callable[..., None]  # runner._produce(topic, value, key=, partition=, headers=)


def last_snapshot(loader: Consumer, state_topic: str, q: int) -> tuple[bytes, int] | None:
    """The last committed snapshot of partition q of the state topic, its parts joined, and how
    many part keys may hold a value (its parts, or more where an older snapshot's were seen);
    None when there is none. Compacted, the partition holds the latest snapshot's parts near its
    end: the last 64 offsets are read, then four times as many (at least as many as the parts
    need) until the snapshot is whole or the partition was read from its start. Raises
    SnapshotUnreadable when the partition could not be read to its end or its last snapshot is
    not whole."""
    tp = TopicPartition(state_topic, q)
    lo, hi = retrying(lambda: loader.get_watermark_offsets(tp, timeout=10, cached=False), "watermarks", timeout_s=20)
    if lo < 0 or hi < lo:
        raise SnapshotUnreadable(f"{state_topic}[{q}]: no valid offsets ({lo}, {hi})")
    if hi <= lo:
        return None
    back = 64
    while True:  # from the last `back` offsets, four times as many each time, until a snapshot is whole
        start = max(lo, hi - back)
        parts = snapshot.Parts()
        loader.assign([TopicPartition(state_topic, q, start)])
        deadline = time.monotonic() + 60  # without a message: a read that goes on is not cut short
        at_end = False
        try:
            while time.monotonic() < deadline:
                m = loader.poll(1.0)
                if m is None:
                    continue
                deadline = time.monotonic() + 60
                merr = m.error()
                if merr is not None:
                    if merr.code() == KafkaError._PARTITION_EOF:
                        at_end = True
                        break
                    if not transient(merr):
                        raise KafkaException(merr)
                    continue  # a broker gone for a while: the client fails over and reads on
                parts.add(m.value(), message_headers(m).get(H.SNAPSHOT_PART))
        except DecodeError as e:
            raise SnapshotUnreadable(f"{state_topic}[{q}]: {e}") from None
        finally:
            loader.unassign()
        if not at_end:
            raise SnapshotUnreadable(f"{state_topic}[{q}]: not read to its end (60 s without a message)")
        if parts.complete or start == lo:
            break
        # nothing read (aborted transactions take offsets too), or the window began inside the
        # last snapshot: further back, at least as far as its parts and their tombstones reach
        back = max(4 * back, 2 * parts.n + 64)
    try:
        value = parts.value()
    except DecodeError as e:
        raise SnapshotUnreadable(f"{state_topic}[{q}]: {e}") from None
    return None if value is None else (value, parts.live_keys())


class StateStore:
    """Writes and restores the snapshots of one app's partitions (state topic ``topic``)."""

    def __init__(self, conf: Mapping[str, Any], app_id: str, topic: str, proc: StateProcessor,
                 part_bytes: int) -> None:
        self.conf, self.app_id, self.topic, self.proc = dict(conf), app_id, topic, proc
        self.part_bytes = part_bytes  # the most one message of a snapshot takes
        self.loader = snapshot_loader(self.conf, app_id)

    def write(self, produce: Produce, q: int, st: PartState, **context: Any) -> None:
        """Partition q's state into the open transaction: packed (degraded while over its budget,
        logged as state_degraded), cut into parts, the keys of a previous snapshot's further parts
        tombstoned first."""
        value = snapshot.pack_within(partial(self._doc, st), partial(self.proc.degrade, st.data), MAX_SNAPSHOT,
                                     partition=q, **context)
        n = snapshot.parts_of(len(value), self.part_bytes)
        for i in range(n, st.parts):
            produce(self.topic, None, key=snapshot.part_key(q, i), partition=q)
        for i, (part, header) in enumerate(snapshot.split(value, self.part_bytes)):
            produce(self.topic, part, key=snapshot.part_key(q, i), partition=q, headers=[(H.SNAPSHOT_PART, header)])
        st.parts = n

    def _doc(self, st: PartState) -> dict[str, Any]:
        return {"data": self.proc.dump(st.data), "sources": st.sources, "watermark": st.watermark,
                "token": st.token}

    def restore(self, q: int, expect: bool = False) -> tuple[PartState, bool]:
        """The last committed snapshot of partition q, or a fresh state; and whether there was one.
        ``expect``: the partition's offsets are committed, so a snapshot must be there: not finding
        it is retried with a new reader, then an error (never a fresh state)."""
        found: tuple[bytes, int] | None = None
        for attempt in range(RESTORE_TRIES):
            last = attempt == RESTORE_TRIES - 1
            try:
                found = last_snapshot(self.loader, self.topic, q)
                if found is not None or not expect:
                    break
                why = "no snapshot although the partition's offsets are committed"
            except KafkaException as e:
                # a client whose metadata kept a broker that left the cluster may never find the
                # partition again (librdkafka#5511): a new one asks afresh
                if last or not transient(e.args[0] if e.args else None):
                    raise
                why = str(e)
            except SnapshotUnreadable as e:
                why = str(e)
            if last:
                raise PktstreamError(f"state of {self.app_id}.repartition[{q}] cannot be restored: {why}")
            log.warning("snapshot_loader_replaced", partition=q, error=why)
            self.loader.close()
            self.loader = snapshot_loader(self.conf, self.app_id)
            time.sleep(min(8.0, 0.5 * 2**attempt))
        if found is None:
            return PartState(self.proc.new_state()), False
        value, parts = found
        doc = snapshot.unpack(value)
        st = PartState(self.proc.load(doc["data"]), {int(k): int(v) for k, v in doc["sources"].items()},
                       int(doc["watermark"]), parts, str(doc.get("token") or ""))
        log.info("state_restored", partition=q, bytes=len(value), parts=parts, watermark=st.watermark, token=st.token)
        return st, True

    def renew(self) -> None:
        """A new reader (one whose metadata went stale may never see a partition's new end)."""
        self.loader.close()
        self.loader = snapshot_loader(self.conf, self.app_id)

    def close(self) -> None:
        self.loader.close()
