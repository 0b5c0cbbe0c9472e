"""A consumer app's state store: each repartition partition's state, snapshotted into the
compacted ``<app>.state`` topic with every commit and read back when the partition is assigned
(or the transaction aborted). How a snapshot is laid out and cut into blocks is ``snapshot.py``;
this is where the blocks a commit changed and the manifest are written (with the runner's
transactional producer, so a snapshot commits with the offsets it belongs to) and put back together
from the topic."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
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
class Written:
    """What a snapshot written into a transaction leaves in the state topic once it commits."""

    blocks: set[bytes]
    since_full: int
    since_full_msgs: int
    wrote: int  # bytes of blocks written
    unchanged: int  # bytes of blocks named that the topic held already


@dataclass
class PartState:
    data: Any
    sources: dict[int, int] = field(default_factory=dict)  # packet partition -> event time reached (ns)
    watermark: int = NO_PROGRESS
    parts: int = 1  # part keys an earlier build's last snapshot left with a value (the next one tombstones them)
    # the snapshot's name, committed with it as the metadata of the partition's offset: a restore
    # that reads another (an older one whose successor's commit markers have not reached the state
    # topic yet) knows it is not the one that goes with the offset ("": a snapshot from before tokens)
    token: str = ""
    # what the partition's last committed snapshot left in the state topic (settled by the store once
    # a commit that wrote a snapshot succeeded; an aborted one leaves them as they were):
    blocks: set[bytes] = field(default_factory=set)  # digests of the blocks its manifest names
    since_full: int = -1  # bytes of blocks written since the last whole image (-1: the next one is whole)
    since_full_msgs: int = 0  # messages written since the last whole image (blocks, tombstones, manifests)
    pending: Written | None = None  # what the snapshot written into the open transaction makes true


Produce = Callable[..., None]  # runner._produce(topic, value, key=, partition=, headers=)


@dataclass
class Found:
    value: bytes  # the snapshot, its blocks or parts joined
    parts: int  # part keys that may hold a value (an earlier build's parts; 1 after a manifest)
    blocks: set[bytes]  # the blocks its manifest names (none for an earlier build's snapshot)


def last_snapshot(loader: Consumer, state_topic: str, q: int) -> Found | None:
    """The last committed snapshot of partition q of the state topic; None when there is none.
    Its manifest is near the partition's end, its blocks within a few whole images of it (see
    snapshot.py): the last 64 offsets are read, then four times as many (at least as many as
    the missing blocks need) until the snapshot is whole or the partition was read from its
    start. Raises SnapshotUnreadable when the partition could not be read to its end or its last
    snapshot is not whole."""
    tp = TopicPartition(state_topic, q)
    lo, hi = retrying(lambda: loader.get_watermark_offsets(tp, timeout=10, cached=False), "watermarks", timeout_s=20)
    if lo < 0 or hi < lo:
        raise SnapshotUnreadable(f"{state_topic}[{q}]: no valid offsets ({lo}, {hi})")
    if hi <= lo:
        return None
    back = 64
    while True:  # from the last `back` offsets, four times as many each time, until a snapshot is whole
        start = max(lo, hi - back)
        chain = snapshot.Chain()
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
                chain.add(m.value(), message_headers(m))
        except DecodeError as e:
            raise SnapshotUnreadable(f"{state_topic}[{q}]: {e}") from None
        finally:
            loader.unassign()
        if not at_end:
            raise SnapshotUnreadable(f"{state_topic}[{q}]: not read to its end (60 s without a message)")
        if chain.complete or start == lo:
            break
        # nothing read (aborted transactions take offsets too), or the window began inside the
        # last snapshot, or after blocks it names: further back, at least as far as they reach
        back = max(4 * back, 2 * (chain.parts.n + chain.missing()) + 64)
    try:
        value = chain.value()
    except DecodeError as e:
        raise SnapshotUnreadable(f"{state_topic}[{q}]: {e}") from None
    return None if value is None else Found(value, chain.live_keys(), chain.digests())


class StateStore:
    """Writes and restores the snapshots of one app's partitions (state topic ``topic``)."""

    def __init__(self, conf: Mapping[str, Any], app_id: str, topic: str, proc: StateProcessor,
                 part_bytes: int) -> None:
        self.conf, self.app_id, self.topic, self.proc = dict(conf), app_id, topic, proc
        self.part_bytes = part_bytes  # the most one block of a snapshot takes (at most 64 KiB)
        self.loader = snapshot_loader(self.conf, app_id)
        self.written = 0  # bytes of blocks committed (manifests and tombstones aside)
        self.unchanged = 0  # bytes of blocks a committed snapshot named that were in the topic already

    def write(self, produce: Produce, q: int, st: PartState, **context: Any) -> None:
        """Partition q's state into the open transaction: packed (degraded while over its budget,
        logged as state_degraded), cut into blocks; the blocks the partition's last committed
        manifest does not name written (all of them for a whole image), those it named that this
        one does not tombstoned, an earlier build's part keys tombstoned, the manifest last. What
        that leaves in the topic is ``st.pending`` until ``settle`` (the commit succeeded): an
        aborted transaction leaves ``st`` describing the last committed snapshot."""
        # a snapshot written before and never settled (a commit whose outcome is not known: a
        # stuck transaction's producer replaced, a failed commit while partitions were revoked)
        # may or may not be in the topic: this one is a whole image, tombstoning what either named
        unsure, st.pending = st.pending, None
        value = snapshot.pack_within(partial(self._doc, st), partial(self.proc.degrade, st.data), MAX_SNAPSHOT,
                                     partition=q, **context)
        block_bytes = snapshot.block_size(len(value), self.part_bytes)
        pieces = snapshot.blocks(value, block_bytes)
        # (arrays each begin a block: more than size / block_bytes); a manifest within a part too
        while len(pieces) > snapshot.MAX_BLOCKS or snapshot.DIGEST * len(pieces) + 256 > max(self.part_bytes, 1 << 16):
            block_bytes *= 2
            pieces = snapshot.blocks(value, block_bytes)
        digests = [snapshot.digest(b) for b in pieces]
        # a whole image when what a restore would read back to the last one passes FULL_EVERY images,
        # in bytes or in messages (a commit that changes little still takes a block, a manifest)
        whole = (unsure is not None or st.since_full < 0 or st.since_full >= snapshot.FULL_EVERY * len(value)
                 or st.since_full_msgs >= snapshot.FULL_EVERY * max(len(pieces) + 2, 64))
        have = set() if whole else st.blocks
        wrote = msgs = unchanged = 0
        done: set[bytes] = set()
        for d, b in zip(digests, pieces, strict=True):
            if d in done:
                continue
            done.add(d)
            if d in have:
                unchanged += len(b)
                continue
            produce(self.topic, bytes(b), key=snapshot.block_key(q, d), partition=q,
                    headers=[(H.SNAPSHOT_BLOCK, d.hex())])
            wrote, msgs = wrote + len(b), msgs + 1
        for d in sorted((st.blocks | (unsure.blocks if unsure is not None else set())) - done):
            produce(self.topic, None, key=snapshot.block_key(q, d), partition=q)
            msgs += 1
        for i in range(1, st.parts):
            produce(self.topic, None, key=snapshot.part_key(q, i), partition=q)
        gen = uuid.uuid4().hex[:16]
        produce(self.topic, snapshot.manifest(gen, len(value), digests), key=snapshot.part_key(q, 0), partition=q,
                headers=[(H.SNAPSHOT_MANIFEST, gen)])
        st.pending = Written(done, 0 if whole else st.since_full + wrote,
                             0 if whole else st.since_full_msgs + msgs + 1, wrote, unchanged)

    def settle(self, states: Iterable[PartState]) -> None:
        """The transaction these states' snapshots were written into committed."""
        for st in states:
            w = st.pending
            if w is None:
                continue
            st.blocks, st.parts, st.since_full, st.since_full_msgs = w.blocks, 1, w.since_full, w.since_full_msgs
            self.written += w.wrote
            self.unchanged += w.unchanged
            st.pending = None

    def _doc(self, st: PartState) -> dict[str, Any]:
        return {"data": self.proc.dump(st.data), "sources": st.sources, "watermark": st.watermark,
                "token": st.token}

    def restore(self, q: int, expect: bool = False) -> tuple[PartState, bool]:
        """The last committed snapshot of partition q, or a fresh state; and whether there was one.
        ``expect``: the partition's offsets are committed, so a snapshot must be there: not finding
        it is retried with a new reader, then an error (never a fresh state)."""
        found: Found | None = None
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
        try:
            doc = snapshot.unpack(found.value)  # (DecodeError only)
            # the next snapshot is a whole image (since_full -1): how far back the blocks were is not known
            st = PartState(self.proc.load(doc["data"]), {int(k): int(v) for k, v in doc["sources"].items()},
                           int(doc["watermark"]), found.parts, token=str(doc.get("token") or ""), blocks=found.blocks)
        except (DecodeError, ValueError, LookupError, TypeError, AttributeError, OverflowError) as e:
            raise PktstreamError(f"state of {self.app_id}.repartition[{q}] cannot be restored: its snapshot does not "
                                 f"read as this app's state ({type(e).__name__}: {e})") from e
        log.info("state_restored", partition=q, bytes=len(found.value), blocks=len(found.blocks), parts=found.parts,
                 watermark=st.watermark, token=st.token)
        return st, True

    def renew(self) -> None:
        """A new reader (one whose metadata went stale may never see a partition's new end)."""
        self.loader.close()
        self.loader = snapshot_loader(self.conf, self.app_id)

    def close(self) -> None:
        self.loader.close()
