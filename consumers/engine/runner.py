"""Stateful consumers over the packet topic: scaled out, exactly once, replayable.

A consumer app (``pktstream usage``, ``pktstream alerts``) runs two stages in one process, in
one consumer group named by its app id:

1. **re-key**: a packet-topic message (one host's batch) is decoded into columns, turned into
   feature rows (``engine/features.py``) and split by the app's ``route`` (a hash of the destination
   address, or of the source) over the partitions of ``<app>.repartition``: one message to each
   partition that gets rows, with headers naming its source partition and how far that source's
   event time has got. Before a transaction commits, every repartition partition not yet told a
   source's latest progress gets an empty message saying it (``_tell_progress``), so that once it
   has read a commit's messages, every partition knows every source's progress as if each input
   message had gone to all of them (the watermark's barriers are taken after this process's own
   commit, so that another instance's committed transaction is read whole first: see _advance).
2. **state**: each repartition partition has its own state (windows, flow tables, open alerts),
   fed by the rows routed to it, so everything towards one destination meets in one place
   whatever host captured it.

Exactly once: what one turn of the loop produces (repartition messages, outputs, dead letters)
and a snapshot of each changed partition's state (``<app>.state``, compacted, partition p holds
partition p's snapshots) commit in one Kafka transaction together with the consumed offsets; a
repartition partition's offset names the snapshot it goes with (a token, as its metadata), so
that a process taking it over waits for that snapshot (see _committed_with_states).
A consumer killed at any point restarts from the last commit: the snapshot and the offsets it
resumes from belong together, and the outputs of the unfinished transaction were never visible
to read_committed readers. A restarted instance with the same instance id fences its old self.

Event time: each packet partition has a progress, the latest event time of its messages so far
(committed with its offset, as the offset's metadata, so a restarted or rebalanced process goes on
from the same figure). Stage one sets aside, as late, the rows of a message older than that
progress minus the grace, before the message changes it: whether a row is late depends only on
the order of its own partition, never on when a process happened to read what. A repartition
partition's watermark is the progress of the slowest source that still has unread input (a packet
partition whose committed offset is below its end); when every source is caught up, wall-clock
time moves it on, so the last window closes without new traffic. Windows close grace after the
watermark passes their end and only when the partition has read everything committed to it, so a
row that stage one let through always finds its window open, and the same input gives the same
windows whatever the timing (replays and restarts included).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from pktstream.consumers.engine.deadletter import DeadLetters
from pktstream.consumers.engine.eventtime import (
    NO_PROGRESS,
    ClockReporter,
    ClockRules,
    LateReporter,
    SourceClock,
    parse_progress,
    watermark,
)
from pktstream.consumers.engine.features import FEATURE_DTYPE, Features, compact, concat, decode, encode, take
from pktstream.consumers.engine.intake import Intake
from pktstream.consumers.engine.losses import MAX_LOST
from pktstream.consumers.engine.statestore import PartState, StateStore
from pktstream.consumers.engine.topics import (
    SNAPSHOT_PART_BYTES,
    AppTopics,
    group_consumer,
    internal_max_bytes,
    prepare_topics,
)
from pktstream.consumers.engine.transactions import Transactions
from pktstream.consumers.engine.wirein import WireReader
from pktstream.runtime.errors import ConfigError, PktstreamError
from pktstream.runtime.kafka import retrying, transient
from pktstream.schemas import headers as H
from pktstream.schemas import wire
from pktstream.schemas.columns import Batch, read_container
from pktstream.schemas.decode import DecodeError, message_headers

log = structlog.get_logger("pktstream.stream")

FOREVER = 1 << 62
BATCH_ROWS = 65_536  # rows a partition's batch waits for (StreamRunner._process_batches)
MAX_RELAYED_RUN = 4096  # pktstream relay's messages (one record each) read at once
REGISTRY_RETRY_S = 5.0  # how long relayed messages wait when the registry named cannot be reached


@dataclass
class Output:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    record: Any = None  # the output as data, for whoever shows it (the terminal table)


class Processor(Protocol):
    """What an app plugs into the runner."""

    grace_ns: int  # how long after its end a window waits for late rows (event time)

    def featurize(self, batch: Batch, origin: str) -> Features: ...

    def route(self, f: Features, nparts: int) -> dict[int, Features]:
        """The rows per repartition partition, in arrays of their own (the runner renumbers
        their strings in place)."""

    def new_state(self) -> Any: ...

    def process(self, state: Any, f: Features) -> None: ...

    def close(self, state: Any, watermark_ns: int) -> list[Output]:
        """Close what ends at or before the watermark (the processor applies its grace)."""
        ...

    def dump(self, state: Any) -> Any:
        """The state as JSON-able data, in which numpy arrays may stand for values (snapshot.py)."""
        ...

    def load(self, data: Any) -> Any: ...

    def lost(self, state: Any, origin: str, t_ns: int, records: int) -> None:
        """A capture point could not queue ``records`` records around event time ``t_ns`` (its ring
        buffer was full): noted, so that the results of its windows say so."""
        ...

    def degrade(self, state: Any) -> dict[str, Any]:
        """One step less detail in the state, for a snapshot over its size limit (snapshot.pack_within
        dumps it again after each step): what was dropped, logged as ``state_degraded``; {} when
        nothing is left to drop."""
        ...

    def figures(self, states: list[Any]) -> dict[str, float]:
        """Counters and gauges for metrics and progress logs."""
        ...


@dataclass
class StreamConfig:
    app_id: str
    packet_topic: str = "pktstream.packets"
    partitions: int = 0  # of the repartition and state topics; 0: as many as the packet topic
    start: str = "end"  # where a new group starts reading the packet topic: beginning | end | time
    since_ms: int | None = None
    commit_interval_s: float = 1.0
    until_end: bool = False  # stop once everything in the topic (as of now) is processed
    dead_letter_topic: str | None = None
    instance_id: str = ""
    replication_factor: int = -1
    clock_tolerance_s: float = 300.0  # event time: see eventtime.ClockRules
    max_behind_s: float = 3600.0
    idle_s: float = 60.0
    state_part_bytes: int = SNAPSHOT_PART_BYTES  # the most one message of a state snapshot takes
    commit_records: int = 500_000  # packet records one transaction reads at most (intake.py)
    align_s: float = 10.0  # how far (event time) a packet partition reads ahead of the slowest; 0: no limit

    @property
    def repartition_topic(self) -> str:
        return f"{self.app_id}.repartition"

    @property
    def state_topic(self) -> str:
        return f"{self.app_id}.state"


@dataclass
class RunCounters:
    messages_in: int = 0
    records_in: int = 0
    batches_rekeyed: int = 0
    dead_lettered: int = 0
    outputs: int = 0
    transactions: int = 0
    aborted: int = 0
    restored_partitions: int = 0
    records_out_of_order: int = 0  # older than their packet partition's progress minus the grace: not routed
    records_clock_skewed: int = 0  # stamped out of the clock tolerance: not routed
    undecodable: int = 0  # packet messages that did not decode or featurize (dead-lettered)
    intake_waits: int = 0  # times stage one waited for stage two (intake.py)
    partitions_held: int = 0  # times a packet partition waited for the slowest one (intake.py)
    barriers_retaken: int = 0  # watermark barriers dropped: a commit not yet readable in the partition (_advance)
    state_bytes_written: int = 0  # bytes of snapshot blocks written to the state topic (statestore.py)
    state_bytes_unchanged: int = 0  # bytes of snapshot blocks named again, already in the state topic


OFFSETS_VISIBLE_S = 120.0  # how long a committed snapshot's offsets may take to become visible
BARRIER_PATIENCE_S = 60.0  # how long a partition's barriers wait for a source's committed progress (_advance)


def ringbuf_full(h: Mapping[str, str]) -> int:
    """The ring-buffer losses a packet message's header tells (0 when absent or not a count: the
    header is untrusted input, and a bad one costs its own point's stamp, nothing else)."""
    v = h.get(H.RINGBUF_FULL)
    if v is None or not (v.isascii() and v.isdigit()) or len(v) > 13:
        return 0
    return min(int(v), MAX_LOST)


def lost_note(v: str) -> tuple[str, int, int] | None:
    """A repartition message's loss note (written by stage one): (origin, event time, records)."""
    try:
        origin, t, n = json.loads(v)
    except (ValueError, TypeError, RecursionError):
        return None
    if not (isinstance(origin, str) and isinstance(t, int) and isinstance(n, int) and 0 < n <= MAX_LOST):
        return None
    return origin[:300], t, n


def encode_within(f: Features, limit: int) -> list[bytes]:
    """A feature batch as repartition messages of at most ``limit`` bytes each (halved until each
    fits; each half keeps only the strings its rows use), so that no message is refused by the
    topic, which would abort the transaction again at every retry. A batch with no rows is one
    (empty) message: stage two learns the source's progress from it."""
    value = encode(compact(f, inplace=True))
    if len(value) <= limit or len(f.rows) <= 1:
        return [value]
    half = len(f.rows) // 2
    return (encode_within(Features(f.rows[:half].copy(), f.strings), limit)
            + encode_within(Features(f.rows[half:].copy(), f.strings), limit))


class ConsumerFailed(Exception):
    """librdkafka reported the group consumer's fatal error."""


def default_instance_id() -> str:
    return socket.gethostname()


class StreamRunner:
    def __init__(self, conf: Mapping[str, Any], cfg: StreamConfig, processor: Processor,
                 stop: threading.Event | None = None) -> None:
        self.conf = dict(conf)
        self.cfg = cfg
        self.proc = processor
        self.stop = stop or threading.Event()
        self.counters = RunCounters()
        self.states: dict[int, PartState] = {}
        self.positions: dict[tuple[str, int], int] = {}
        self.changed: set[tuple[str, int]] = set()
        self.dirty: set[int] = set()
        self.eof: set[tuple[str, int]] = set()
        self.eof_at: dict[int, int] = {}  # repartition partition -> offset of its last end-of-partition event
        self.need: dict[int, int] = {}  # repartition partition -> one past the last offset we wrote to it
        # repartition partition -> (packet partitions pending, its committed end, wall clock, the packet
        # partitions' committed progress), taken together: the watermark those give is used once the
        # partition is read to that end and knows that progress (see _advance)
        self.barriers: dict[int, tuple[set[int], int, int, dict[int, int]]] = {}
        self.committed_progress: dict[int, int] = {}  # packet partition -> progress committed with its offset
        self._short_since: dict[int, float] = {}  # repartition partition -> since when its barriers fell short
        self.assigned: set[tuple[str, int]] = set()
        self.clocks: dict[int, SourceClock] = {}  # packet partition -> its event time (eventtime.py)
        self.rules = ClockRules(processor.grace_ns, int(cfg.clock_tolerance_s * 1e9), int(cfg.max_behind_s * 1e9),
                                int(cfg.idle_s * 1e9))
        self.late = LateReporter(processor.grace_ns)
        self.clock_reporter = ClockReporter(self.rules)
        self.topics: AppTopics | None = None
        self._failure_logged: set[str] = set()
        self.produced = 0  # messages produced in the open transaction
        self.last_pending_check = 0.0
        self.nparts = 0
        self.npackets = 0
        self.on_outputs: list[Any] = []  # callbacks(list[Output]) after a commit made them visible
        # per output topic, how its records are written when not as the processor made them (the
        # schema-registry wire format: app.registry_encoders)
        self.encoders: dict[str, Callable[[Output], bytes]] = {}
        self.wire_in: WireReader | None = None  # how pktstream relay's messages are read (engine/wirein.py)
        self._registry_retry_at = 0.0  # (monotonic) until then relayed messages wait (_rekey_relayed)
        self._uncommitted: list[Output] = []
        self._batches: dict[int, list[Features]] = {}  # rows read, not yet processed (_process_batches)
        self._batch_rows: dict[int, int] = {}
        self.consumer: Consumer | None = None
        self.txn: Transactions | None = None
        self.dead: DeadLetters | None = None
        self.instance = ""
        self._rejoining = False
        self._rejoins: list[float] = []  # when the consumer was replaced (see _rejoin)
        self.told: dict[tuple[int, int], int] = {}  # (packet p, repartition q) -> the progress sent to q
        self.intake = Intake(cfg.commit_records, int(cfg.align_s * 1e9), int(cfg.idle_s * 1e9))  # intake.py
        self.heartbeat = time.monotonic()

    # -- setup ------------------------------------------------------------------------------

    def prepare(self) -> None:
        cfg = self.cfg
        self.topics = prepare_topics(self.conf, cfg.packet_topic, cfg.repartition_topic, cfg.state_topic,
                                     cfg.partitions, cfg.replication_factor)
        self.npackets, self.nparts = self.topics.packet_partitions, self.topics.partitions
        instance = cfg.instance_id or default_instance_id()
        self.txn = Transactions(self.conf, f"{cfg.app_id}-{instance}", on_replace=self._producer_replaced)
        if cfg.dead_letter_topic:
            self.dead = DeadLetters(self.conf, cfg.dead_letter_topic, cfg.app_id, producer=self.producer,
                                    max_bytes=internal_max_bytes(self.topics.packet_max_bytes))
        self.instance = instance
        # parts at most --state-part-bytes, and well within what the state topic accepts
        limit = self.topics.state_max_bytes
        self.store = StateStore(self.conf, cfg.app_id, cfg.state_topic, self.proc,
                                min(cfg.state_part_bytes, limit - min(64 << 10, limit // 2)))
        self._subscribe()
        log.info("stream_started", app_id=cfg.app_id, instance=instance, packet_topic=cfg.packet_topic,
                 packet_partitions=self.npackets, repartition_partitions=self.nparts)

    def _subscribe(self) -> None:
        cfg = self.cfg
        self.consumer = group_consumer(self.conf, cfg.app_id, self.instance)
        self.consumer.subscribe([cfg.packet_topic, cfg.repartition_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _rejoin(self, why: str) -> None:
        """librdkafka declared the group consumer failed for good (seen after a broker's death: the
        session timed out against a stale coordinator and the static member's rejoin was fenced by
        itself). Abort the open transaction, forget the assignment and join again with a new
        consumer: the partitions come back from their last commit (offsets and snapshots), as after
        a restart. A duplicate instance fences this one's producer, so it still stops (``_FENCED`` at
        the next commit), and more than three rejoins in ten minutes stop it too."""
        now = time.monotonic()
        self._rejoins = [t for t in self._rejoins if now - t < 600] + [now]
        if len(self._rejoins) > 3:
            raise PktstreamError(f"the group consumer failed {len(self._rejoins)} times in ten minutes: {why}")
        log.warning("consumer_rejoined", error=why)
        assert self.txn is not None and self.consumer is not None
        self._rejoining = True
        self.txn.abort("abort on rejoin")
        with contextlib.suppress(KafkaException, RuntimeError):
            self.consumer.close()
        self.counters.aborted += 1
        for key in list(self.assigned):
            self._forget(key)
        self.eof_at.clear()
        self._drop_work()
        self._rejoining = False
        self._subscribe()  # a new consumer: nothing paused

    # -- assignment -------------------------------------------------------------------------

    def _start_offset(self, tp: TopicPartition) -> int:
        assert self.consumer is not None
        consumer = self.consumer
        try:
            lo, hi = retrying(lambda: consumer.get_watermark_offsets(tp, timeout=10, cached=False), "watermarks",
                              timeout_s=30)
        except KafkaException as e:
            if not transient(e.args[0] if e.args else None):
                raise
            # a client whose metadata kept a broker that left the cluster may never find the partition
            # again (librdkafka#5511, as the store's reader): a new client asks afresh
            log.warning("watermarks_asked_afresh", topic=tp.topic, partition=tp.partition, error=str(e))
            self.store.renew()
            loader = self.store.loader
            lo, hi = retrying(lambda: loader.get_watermark_offsets(tp, timeout=10, cached=False), "watermarks")
        if self.cfg.start == "beginning":
            return int(lo)
        if self.cfg.start == "time" and self.cfg.since_ms is not None:
            at = [TopicPartition(tp.topic, tp.partition, self.cfg.since_ms)]
            r = retrying(lambda: consumer.offsets_for_times(at, timeout=10), "offsets_for_times")[0]
            return int(r.offset) if r.offset >= 0 else int(hi)
        return int(hi)

    def _committed_with_states(self, consumer: Consumer,
                               parts: list[TopicPartition]) -> tuple[list[TopicPartition], dict[int, PartState]]:
        """The committed positions of parts and the states of their repartition partitions, as one
        transaction left them. A snapshot commits with its partition's offset, whose metadata names
        it (its token). The offsets become readable when the commit's markers reach the group's
        coordinator, the snapshot when they reach the state topic's partition, and the two can be
        seconds apart (a broker restarted, a partition whose leader just moved): a snapshot without
        an offset, or another snapshot than the offset names (the one before), means the commit is
        not readable everywhere yet, so both are asked again, rather than resume from an offset with
        the state of an earlier one (rows lost between the two) or from the start with a restored
        state. Offsets without a snapshot are an error."""
        committed = retrying(lambda: consumer.committed(parts, timeout=30), "committed")
        states: dict[int, PartState] = {}
        restored: set[int] = set()
        waiting: dict[int, str] = {}
        deadline = 0.0
        first = True
        while first or waiting:
            if not first:
                deadline = deadline or time.monotonic() + OFFSETS_VISIBLE_S  # from the first pass's end
                if time.monotonic() > deadline:
                    raise PktstreamError(
                        f"{self.cfg.repartition_topic} partitions {sorted(waiting)}: the committed offsets and the "
                        f"state snapshots do not match after {OFFSETS_VISIBLE_S:.0f} s "
                        f"({'; '.join(waiting.values())}); "
                        f"offsets expired while the app was stopped? To start over, give a new --app-id or delete "
                        f"the app's internal topics")
                log.warning("committed_offsets_not_visible", partitions=sorted(waiting), why=sorted(waiting.values()))
                time.sleep(1.0)
                self.store.renew()  # (a reader whose metadata went stale would not see it either)
                committed = retrying(lambda: consumer.committed(parts, timeout=30), "committed")
            redo = set(waiting) if not first else None
            waiting = {}
            for tp in committed:
                if tp.topic != self.cfg.repartition_topic or (redo is not None and tp.partition not in redo):
                    continue
                # an offset naming its snapshot waits here for it (below); one of an earlier build that
                # names none must find one at once (the store retries a while, then stops)
                st, found = self.store.restore(tp.partition, expect=tp.offset >= 0 and not tp.metadata)
                states[tp.partition] = st
                if found:
                    restored.add(tp.partition)
                if found and tp.offset < 0:
                    waiting[tp.partition] = f"[{tp.partition}] a snapshot but no committed offset"
                elif tp.offset >= 0 and tp.metadata and not found:
                    waiting[tp.partition] = f"[{tp.partition}] no snapshot yet, the offset's is {tp.metadata}"
                elif tp.offset >= 0 and tp.metadata and st.token and st.token != tp.metadata:
                    # (a snapshot without a token: an earlier build's, written after this offset, as
                    # that build did when only windows closed; taken as it is)
                    waiting[tp.partition] = f"[{tp.partition}] snapshot {st.token}, the offset's is {tp.metadata}"
            first = False
        self.counters.restored_partitions += len(restored)
        return committed, states

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        committed, states = self._committed_with_states(consumer, parts)
        for tp in committed:
            key = (tp.topic, tp.partition)
            if self._resume_from(tp):
                if tp.topic == self.cfg.packet_topic:
                    self.positions[key] = tp.offset  # committed with the next transaction
                    self.changed.add(key)
            elif tp.topic == self.cfg.repartition_topic:
                self.positions[key] = tp.offset  # what its state holds: a snapshot commits with it (_commit)
            self.assigned.add(key)
            if tp.topic == self.cfg.repartition_topic:
                self.states[tp.partition] = states[tp.partition]
        consumer.assign(committed)
        # a partition keeps librdkafka's pause across a revoke and a new assignment: resumed here,
        # paused again by _intake if it must wait
        packets = [TopicPartition(tp.topic, tp.partition) for tp in committed if tp.topic == self.cfg.packet_topic]
        if packets:
            consumer.resume(packets)
            self.intake.paused.difference_update(tp.partition for tp in packets)
        log.info("partitions_assigned", partitions=[f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in committed])

    def _resume_from(self, tp: TopicPartition) -> bool:
        """Turn a committed position into where reading resumes, and take a packet partition's
        progress from it; True when nothing had been committed."""
        fresh = tp.offset < 0
        if tp.topic == self.cfg.packet_topic:
            self.clocks[tp.partition] = SourceClock() if fresh else SourceClock.parse(tp.metadata)
        if fresh:
            tp.offset = self._start_offset(tp) if tp.topic == self.cfg.packet_topic else OFFSET_BEGINNING
        return fresh

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        """The partitions go to the group's next assignment: what was done since the last commit is
        committed now, or, when that fails, aborted (never left open: a later commit would publish
        snapshots of partitions another member has taken over)."""
        if not self._rejoining:  # (a consumer given up: its work since the last commit is aborted)
            try:
                if not self._commit(rewind=False):
                    self._drop_work()
            except KafkaException as e:
                log.warning("commit_on_revoke_failed", error=str(e))
                self._abort_work("commit on revoke failed")
        for tp in parts:
            self._forget((tp.topic, tp.partition))
        log.info("partitions_revoked", partitions=[f"{tp.topic}[{tp.partition}]" for tp in parts])

    def _on_lost(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        """The group took the partitions away (this member's session expired): another member may
        already have them, so the work since the last commit is not committed but aborted, and the
        partitions come back, if they do, from their last commit."""
        if not self._rejoining:
            self._abort_work("partitions lost")
        for key in {(tp.topic, tp.partition) for tp in parts} | set(self.assigned):
            self._forget(key)
        log.warning("partitions_lost", partitions=[f"{tp.topic}[{tp.partition}]" for tp in parts])

    def _abort_work(self, why: str) -> None:
        """Abort the open transaction and forget what it held (_drop_work)."""
        assert self.txn is not None
        if self._has_work():
            self.txn.abort(why)
            self.counters.aborted += 1
        self._drop_work()

    def _drop_work(self) -> None:
        """Forget what the open transaction held (it is aborted): rows, outputs, barriers, changes."""
        self.barriers.clear()
        self._batches.clear()
        self._batch_rows.clear()
        self.changed.clear()
        self.dirty.clear()
        self.produced = 0
        self._uncommitted = []
        self._reset_intake()
        self.told.clear()

    def _forget(self, key: tuple[str, int]) -> None:
        topic, p = key
        self.assigned.discard(key)
        self.positions.pop(key, None)
        self.changed.discard(key)
        self.eof.discard(key)
        if topic == self.cfg.packet_topic:
            self.clocks.pop(p, None)
            self.intake.forget(p)  # (librdkafka keeps a pause: _on_assign resumes it if it comes back)
            self.told = {k: v for k, v in self.told.items() if k[0] != p}
        if topic == self.cfg.repartition_topic:
            self.states.pop(p, None)
            self.eof_at.pop(p, None)  # a stale end would let a barrier pass once it is assigned again
            self._batches.pop(p, None)
            self._batch_rows.pop(p, None)
            self.dirty.discard(p)
            self.barriers.pop(p, None)
            self._short_since.pop(p, None)

    # -- the loop ---------------------------------------------------------------------------

    def run(self, duration_s: float | None = None) -> RunCounters:
        assert self.consumer is not None and self.producer is not None
        t_end = time.monotonic() + duration_s if duration_s else None
        last_commit = time.monotonic()
        last_log = time.monotonic() - 20
        try:
            while not self.stop.is_set() and (t_end is None or time.monotonic() < t_end):
                self.heartbeat = time.monotonic()
                self._intake()
                # consume() waits for all 64 or the timeout: a short one, so that a queue holding
                # fewer (the end of a burst, the rows a commit just made readable) is not waited on
                mine = sum(1 for t, _p in self.assigned if t == self.cfg.packet_topic)
                msgs = self.consumer.consume(num_messages=self.intake.consume_size(mine), timeout=0.02)
                try:
                    self._handle_all(msgs)
                except ConsumerFailed as e:
                    self._rejoin(str(e))
                    continue
                self._process_batches(force=False)
                now = time.monotonic()
                at_end = self._at_end()
                if self.cfg.until_end and at_end and not self._has_work() and self._group_done(now):
                    self._advance(final=True)
                    if not self._commit():
                        # the last transaction (the windows the final close emitted) was aborted and
                        # the state rewound to the commit before: read on and finish again
                        log.warning("final_commit_aborted", **self.figures())
                        continue
                    log.info("stream_caught_up", **self.figures())
                    break
                if (now - last_commit >= self.cfg.commit_interval_s or (at_end and self._has_work())
                        or self.intake.full):
                    self._advance(final=False)
                    self._commit()
                    last_commit = time.monotonic()
                    continue
                if now - last_log >= 30:
                    log.info("stream_progress", reading=sorted(f"{t}[{p}]" for t, p in self.assigned - self.eof),
                             paused=sorted(self.intake.paused), **self.figures())
                    last_log = now
        finally:
            self.close()
        return self.counters

    def _group_done(self, now: float) -> bool:
        """Has the whole group (other instances too) processed the packet topic to its end? Until
        then more rows may come to our partitions from packet partitions another instance reads."""
        if now - self.last_pending_check < 0.5:
            return False
        self.last_pending_check = now
        return self._pending() == set() and self._read_to_committed_end()

    def _committed_end(self, q: int) -> int | None:
        """Repartition partition q's last stable offset now (None: cannot tell)."""
        assert self.consumer is not None
        try:
            _lo, hi = self.consumer.get_watermark_offsets(TopicPartition(self.cfg.repartition_topic, q), timeout=10,
                                                          cached=False)
        except KafkaException as e:
            log.warning("watermark_check_failed", error=str(e))
            return None
        return int(hi)

    def _read_to_committed_end(self) -> bool:
        """Have we read our repartition partitions to their committed end? An end-of-partition seen
        before another instance's last commit is stale (the fetch that would bring its rows may
        still be on its way, or wait for a partition's new leader): the last stable offset now
        (read_committed's high watermark) against where the end was seen says."""
        for t, p in self.assigned:
            if t != self.cfg.repartition_topic:
                continue
            end = self._committed_end(p)
            if end is None or self.eof_at.get(p, -1) < end:
                return False
        return True

    def _has_work(self) -> bool:
        return bool(self.changed or self.dirty or self.produced or self._uncommitted)

    def _handle_all(self, msgs: list[Message]) -> None:
        """Every message consume() returned, in order; a run of pktstream relay's messages (one record
        each, in the registry's wire format) of one packet partition is read at once. Packet messages
        past the transaction's records (intake.full), and a run that must wait for the registry, are
        read again later: the rest of their partition's messages with them."""
        topic, n = self.cfg.packet_topic, len(msgs)
        # what decides each message's path, read once (a run of the relay's messages is thousands long)
        tops = [m.topic() for m in msgs]
        parts = [m.partition() or 0 for m in msgs]
        framed = [t == topic and m.error() is None and (v := m.value()) is not None and len(v) >= wire.HEAD_BYTES
                  and v[0] == wire.MAGIC for t, m in zip(tops, msgs, strict=True)]
        later: set[int] = set()  # packet partitions sought back: read again by the next consume()
        i = 0
        while i < n:
            m, p = msgs[i], parts[i]
            if tops[i] == topic and p in later:
                i += 1
                continue
            # the transaction holds its records: the rest waits for the next one (consume() may have returned
            # more than consume_size guessed: messages larger than lately)
            if (self.intake.full and tops[i] == topic and m.error() is None and (topic, p) in self.assigned
                    and self._seek_back(p, m.offset() or 0)):
                later.add(p)
                self.eof.discard((topic, p))
                i += 1
                continue
            if not (framed[i] and (topic, p) in self.assigned):
                self._handle(m)
                i += 1
                continue
            j, end = i + 1, min(n, i + MAX_RELAYED_RUN)
            while j < end and framed[j] and parts[j] == p:
                j += 1
            if not self._handle_relayed(msgs[i:j]):
                later.add(p)
                self.eof.discard((topic, p))  # (it is not read to its end while it is read again)
            i = j

    def _seek_back(self, p: int, offset: int) -> bool:
        """Packet partition p to be read again from ``offset`` (False: librdkafka would not)."""
        assert self.consumer is not None
        try:
            self.consumer.seek(TopicPartition(self.cfg.packet_topic, p, offset))
            return True
        except KafkaException as e:
            log.warning("seek_failed", partition=p, offset=offset, error=str(e))
            return False

    def _handle_relayed(self, run: list[Message]) -> bool:
        """A run of relayed messages of one partition; False: not read, the partition sought back to its
        first message (the registry named cannot be reached: read again after REGISTRY_RETRY_S)."""
        key = (self.cfg.packet_topic, run[0].partition() or 0)
        if not self._rekey_relayed(run):
            if not self._seek_back(key[1], run[0].offset() or 0):
                raise ConsumerFailed(f"could not seek {key[0]}[{key[1]}] back to {run[0].offset()}")
            return False
        self.eof.discard(key)
        self.counters.messages_in += len(run)
        self.positions[key] = (run[-1].offset() or 0) + 1
        self.changed.add(key)
        return True

    def _handle(self, m: Message) -> None:
        err = m.error()
        key = (m.topic() or "", m.partition() or 0)
        if key not in self.assigned and (err is None or err.code() == KafkaError._PARTITION_EOF):
            return  # of a partition revoked meanwhile (its offset must not commit with our transaction)
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                self.eof.add(key)
                if key[0] == self.cfg.repartition_topic:
                    self.eof_at[key[1]] = m.offset() or 0
                elif (m.offset() or 0) > self.positions.get(key, -1):
                    # a topic written in transactions (pktstream relay's) ends with a commit marker after
                    # its last message: the offset to commit is past it, else the input never looks done
                    # (read_committed: nothing unread lies below the end it reports)
                    self.positions[key] = m.offset() or 0
                    self.changed.add(key)
                return
            if err.fatal() or err.code() == KafkaError._FATAL:
                raise ConsumerFailed(str(err))
            log.warning("consumer_error", error=str(err))
            return
        self.eof.discard(key)
        self.counters.messages_in += 1
        if key[0] == self.cfg.packet_topic:
            self._rekey(m)
        else:
            self._apply(m)
        self.positions[key] = (m.offset() or 0) + 1
        self.changed.add(key)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            q = msg.partition() or 0
            end = (msg.offset() or 0) + 1
            self.need[q] = max(self.need.get(q, 0), end)
            self.intake.wrote(q, end)

    # -- stage one's intake (intake.py) -----------------------------------------------------

    def _intake(self) -> None:
        """Pause and resume packet partitions as the intake decides (see intake.py)."""
        assert self.consumer is not None
        rt, pt = self.cfg.repartition_topic, self.cfg.packet_topic
        mine = {p for t, p in self.assigned if t == pt}
        # how far stage two has read: a partition assigned anew has no position until a message
        # comes, but its end-of-partition says it (a gate's rows read before a rebalance would
        # otherwise be waited for forever)
        read = {q: max(self.positions.get((rt, q), -1), self.eof_at.get(q, -1)) for t, q in self.assigned if t == rt}
        d = self.intake.decide(mine, read, {p for p in mine if (pt, p) in self.eof}, time.monotonic())
        pause, resume = d.paused - self.intake.paused, (self.intake.paused & mine) - d.paused
        if pause:
            self.consumer.pause([TopicPartition(pt, p) for p in sorted(pause)])
            if d.wait:
                self.counters.intake_waits += 1
            else:
                self.counters.partitions_held += len(pause)
        if resume:
            self.consumer.resume([TopicPartition(pt, p) for p in sorted(resume)])
        self.intake.paused = d.paused

    def _reset_intake(self) -> None:
        """Forget the intake's figures (a rejoin, a rewind): nothing is waited for, nothing paused."""
        if self.intake.paused and self.consumer is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                self.consumer.resume([TopicPartition(self.cfg.packet_topic, p) for p in sorted(self.intake.paused)])
        self.intake.reset()

    def _caught_up(self, q: int) -> bool:
        """Has stage two read everything this process wrote to repartition partition q?

        End-of-partition events are queued: one handled now may predate our last commit, so
        its offset, not its arrival, says whether it covers what we wrote."""
        return self.eof_at.get(q, -1) >= self.need.get(q, 0) and (self.cfg.repartition_topic, q) in self.eof

    def _at_end(self) -> bool:
        if not self.assigned:
            return False
        for t, p in self.assigned:
            if (t, p) not in self.eof:
                return False
            if t == self.cfg.repartition_topic and not self._caught_up(p):
                return False
        return True

    def _produce(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None,
                 headers: list[tuple[str, bytes]] | None = None, on_delivery: Any = None) -> None:
        assert self.producer is not None
        kw: dict[str, Any] = {"value": value, "key": key, "headers": headers or []}
        if on_delivery is not None:
            kw["on_delivery"] = on_delivery
        if partition is not None:
            kw["partition"] = partition
        while True:
            try:
                self.producer.produce(topic, **kw)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.produced += 1

    def _dead_letter(self, m: Message, reason: str) -> None:
        self.counters.dead_lettered += 1
        if self.dead is not None:
            self.dead.put(m, reason)
            self.produced += 1
        else:
            log.warning("message_skipped", topic=m.topic(), partition=m.partition(), offset=m.offset(),
                        reason=reason)

    def _undecodable(self, m: Message, e: Exception) -> None:
        """Any failure to read a packet message (DecodeError, or whatever a hostile message makes
        feature extraction raise) sets it aside: counted, dead-lettered, never a crash."""
        self.counters.undecodable += 1
        # it moves the partition's broker time on: a partition of nothing but such messages warms up
        ref = self._reference_ns(m)
        self.clocks.setdefault(m.partition() or 0, SourceClock()).seen(ref, self.rules)
        self.intake.read(m.partition() or 0, None, ref)
        if isinstance(e, DecodeError):
            reason = str(e)
        else:
            reason = f"features: {type(e).__name__}: {e}"[:1000]
            kind = type(e).__name__
            if kind not in self._failure_logged:  # the first of each kind with its stack, once
                self._failure_logged.add(kind)
                log.warning("featurize_failed", topic=m.topic(), partition=m.partition(), offset=m.offset(),
                            error=reason, exc_info=e)
        self._dead_letter(m, reason)

    def _reference_times(self, run: list[Message]) -> npt.NDArray[np.int64]:
        """_reference_ns of each message of a run, at once."""
        stamps = np.array([m.timestamp() for m in run], dtype=np.int64).reshape(-1, 2)
        kind, ns = stamps[:, 0], np.minimum(stamps[:, 1], 1 << 42) * 1_000_000  # (ms of year 2109: no wrap)
        now = time.time_ns()
        return np.where(ns <= 0, now, np.where(kind == TIMESTAMP_LOG_APPEND_TIME, ns, np.minimum(ns, now)))

    def _reference_ns(self, m: Message) -> int:
        """What a message's records are judged against: the broker's append time where the topic
        keeps it (the same in a replay), else the earlier of the message's time and our clock."""
        kind, ms = m.timestamp()
        now = time.time_ns()
        if kind == TIMESTAMP_LOG_APPEND_TIME and ms > 0:
            return int(ms) * 1_000_000
        return min(int(ms) * 1_000_000, now) if ms > 0 else now

    def _rekey(self, m: Message) -> None:
        try:
            batch = read_container(m.value())
            h = message_headers(m)
            origin = f"{h.get(H.HOST) or batch.metadata.get(H.HOST, '?')}/" \
                     f"{h.get(H.INTERFACE) or batch.metadata.get(H.INTERFACE, '?')}"[:300]
            f = self.proc.featurize(batch, origin)
        except Exception as e:  # the topic is untrusted input: see _undecodable
            self._undecodable(m, e)
            return
        self.counters.records_in += batch.n
        self.intake.records(batch.n, relayed=False)
        # (a message without records tells no loss: our producer never writes one, and each told
        # loss costs a message to every partition)
        self._stage_one(m.partition() or 0, self._reference_ns(m), origin, f, ringbuf_full(h) if batch.n else 0)

    def _rekey_relayed(self, run: list[Message]) -> bool:
        """A run of pktstream relay's messages of one packet partition (engine/wirein.py): decoded at
        once, then each capture point's records as a packet message's are. A message that does not
        read (its schema id names no relayed schema of ours, or it is not one such record) is set aside
        alone (_undecodable); so is every one while the local registry cannot be reached, when none was
        named. False: a registry named (--schema-registry) cannot be reached; nothing was read."""
        if self.wire_in is None:
            from pktstream.consumers.engine.wirein import wire_reader

            self.wire_in = wire_reader(None, None)
        now = time.monotonic()
        if now < self._registry_retry_at:
            time.sleep(0.05)  # (the partition comes back at once: not a busy loop meanwhile)
            return False
        try:
            origins, bad, n = self.wire_in.relayed([m.value() or b"" for m in run], self.cfg.packet_topic)
        except ConfigError:
            raise
        except PktstreamError as e:
            self._registry_retry_at = now + REGISTRY_RETRY_S
            log.warning("registry_unavailable", error=str(e)[:300], retry_s=REGISTRY_RETRY_S,
                        partition=run[0].partition(), offset=run[0].offset())
            return False
        except DecodeError as e:  # a bound on the whole run (MAX_RELAYED_RUN keeps well within it)
            for m in run:
                self._undecodable(m, e)
            return True
        for i in sorted(bad):
            self._undecodable(run[i], DecodeError(bad[i]))
        if not n:
            return True
        p = run[0].partition() or 0
        refs = self._reference_times(run)
        for o in origins:
            origin = f"{o.host or '?'}/{o.interface or '?'}"[:300]
            parts: list[tuple[list[int], Batch, Features]] = []
            self._featurize_apart(run, o.messages, o.row_message, o.batch, origin, parts)
            for msgs, batch, f in parts:
                self.counters.records_in += batch.n
                self.intake.records(batch.n, messages=len(msgs), relayed=True)
                self._stage_one(p, int(refs[msgs].max()), origin, f)
        return True

    def _featurize_apart(self, run: list[Message], msgs: list[int], row_message: npt.NDArray[np.int64],
                         batch: Batch, origin: str, out: list[tuple[list[int], Batch, Features]]) -> None:
        """featurize a capture point's records of a run; when it fails (the topic is untrusted input),
        each half of its messages apart, down to the messages that fail alone, which are set aside
        (_undecodable): a few bad messages cost a few more calls, not one per message."""
        try:
            out.append((msgs, batch, self.proc.featurize(batch, origin)))
            return
        except Exception as e:
            if len(msgs) == 1:
                self._undecodable(run[msgs[0]], e)
                return
        for half in (msgs[: len(msgs) // 2], msgs[len(msgs) // 2 :]):
            rows = np.isin(row_message, half)
            self._featurize_apart(run, half, row_message[rows], Batch({}, int(rows.sum()),
                                  {k: v[rows] for k, v in batch.columns.items()}), origin, out)

    def _stage_one(self, p: int, ref: int, origin: str, f: Features, lost: int = 0) -> None:
        """A packet message's features (one capture point's records): judged against its source's
        clock, then written to the repartition topic by key. ``lost``: the records the capture point
        could not queue since its previous message (its ring buffer was full), told to every
        partition (each may hold rows of the point's windows) with the event time of the message's
        newest honest record (else its reference time)."""
        clock = self.clocks.setdefault(p, SourceClock())
        oldest_kept = clock.progress - self.rules.grace_ns if clock.progress != NO_PROGRESS else NO_PROGRESS
        head = None
        if len(f.rows):
            before = clock.progress
            j = clock.judge(origin, f.rows["ts_ns"], ref, self.rules)
            honest = ~(j.future | j.behind)
            if honest.any():
                head = min(int(f.rows["ts_ns"][honest].max()), ref)
            self.clock_reporter.measured(origin, j.offset_ns)
            packets = f.rows["packets"]
            if j.future.any() or j.behind.any():
                ahead, behind = int(packets[j.future].sum()), int(packets[j.behind].sum())
                self.counters.records_clock_skewed += ahead + behind
                self.clock_reporter.report(origin, p, ahead, behind, j.offset_ns)
            if j.late.any():  # decided by this partition's order alone (see the module's docstring)
                n = int(packets[j.late].sum())
                self.counters.records_out_of_order += n
                self.late.report(origin, p, n, before - int(f.rows["ts_ns"][j.late].min()))
            if not j.keep.all():
                f = Features(take(f.rows, j.keep), f.strings)
        else:
            clock.seen(ref, self.rules)
        self.intake.read(p, head, ref)
        progress = str(clock.progress).encode()
        routed = self.proc.route(f, self.nparts)
        headers = [(H.SRC, str(p).encode()), (H.PROGRESS, progress)]
        # the losses, once to each partition: on its first message of these rows, else an empty one;
        # stamped no older than what the partition still takes (a window that is open)
        at = max(head if head is not None else ref, oldest_kept)
        told = [*headers, (H.LOST, json.dumps([origin, at, lost]).encode())] if lost else headers
        limit = self._repartition_limit()
        for q in sorted(routed):
            if not len(routed[q].rows):
                continue
            for i, value in enumerate(encode_within(routed[q], limit)):
                self._produce(self.cfg.repartition_topic, value, partition=q, headers=told if i == 0 else headers,
                              on_delivery=self._delivered)
            self.told[(p, q)] = clock.progress
        if lost:
            empty = encode(Features(np.zeros(0, FEATURE_DTYPE), []))
            for q in range(self.nparts):
                if q not in routed or not len(routed[q].rows):
                    self._produce(self.cfg.repartition_topic, empty, partition=q, headers=told,
                                  on_delivery=self._delivered)
                    self.told[(p, q)] = clock.progress
        self.counters.batches_rekeyed += 1

    def _tell_progress(self) -> None:
        """Before a commit: an empty repartition message to every partition that has not been told
        a packet partition's latest progress (see the module's docstring). One per source and
        partition and commit at most, where every input message used to send one to each."""
        for p in sorted(p for t, p in self.assigned if t == self.cfg.packet_topic):
            clock = self.clocks.get(p)
            if clock is None:
                continue
            headers = [(H.SRC, str(p).encode()), (H.PROGRESS, str(clock.progress).encode())]
            empty = None
            for q in range(self.nparts):
                if self.told.get((p, q)) == clock.progress:
                    continue
                if empty is None:
                    empty = encode(Features(np.zeros(0, FEATURE_DTYPE), []))
                self._produce(self.cfg.repartition_topic, empty, partition=q, headers=headers,
                              on_delivery=self._delivered)
                self.told[(p, q)] = clock.progress

    def _repartition_limit(self) -> int:
        """The largest repartition message to write: what the topic accepts, less room for the
        headers and the record batch's framing (lz4 only makes it smaller)."""
        limit = self.topics.repartition_max_bytes if self.topics is not None else 1 << 20
        return max(64 << 10, limit - (16 << 10))

    def _apply(self, m: Message) -> None:
        q = m.partition() or 0
        st = self.states.get(q)
        if st is None:  # a message of a partition no longer ours (revoked meanwhile)
            return
        try:
            f = decode(m.value())
            h = message_headers(m)
            src, progress = int(h[H.SRC]), int(h[H.PROGRESS])
        except Exception as e:  # DecodeError, a header missing or not a number, ...
            self._dead_letter(m, f"repartition message: {e}")
            self.dirty.add(q)  # its offset commits, so a snapshot does too (see _committed_with_states)
            return
        st.sources[src] = max(st.sources.get(src, NO_PROGRESS), progress)
        if len(f.rows):
            self._batches.setdefault(q, []).append(f)
            self._batch_rows[q] = self._batch_rows.get(q, 0) + len(f.rows)
        note = lost_note(h[H.LOST]) if H.LOST in h else None
        if note is not None:  # (read when its windows close: no order with the rows to keep)
            self.proc.lost(st.data, *note)
        self.dirty.add(q)

    def _process_batches(self, force: bool = True) -> None:
        """The rows read for each partition, processed as one batch once there are BATCH_ROWS of
        them (the fixed cost of a numpy pass is paid once per batch, not once per message), and all
        of them before the watermark moves or a transaction commits (``force``)."""
        for q in [q for q, n in self._batch_rows.items() if force or n >= BATCH_ROWS]:
            fs = self._batches.pop(q)
            del self._batch_rows[q]
            st = self.states.get(q)
            if st is not None:
                self.proc.process(st.data, concat(fs))

    # -- event time ---------------------------------------------------------------------------

    def _pending(self) -> set[int] | None:
        """Packet partitions with input not yet committed by this app (None: cannot tell now)."""
        assert self.consumer is not None
        tps = [TopicPartition(self.cfg.packet_topic, p) for p in range(self.npackets)]
        try:
            committed = self.consumer.committed(tps, timeout=10)
            pending = set()
            self.committed_progress = {tp.partition: parse_progress(tp.metadata) for tp in committed if tp.offset >= 0}
            for tp in committed:
                # the fetcher's figure when this process reads the partition (a query would wait
                # behind the fetch long-poll), the broker's answer otherwise
                _lo, hi = self.consumer.get_watermark_offsets(tp, cached=True)
                if hi < 0:
                    _lo, hi = self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)
                off = tp.offset if tp.offset >= 0 else -1
                if tp.offset == OFFSET_INVALID or off < hi:
                    pending.add(tp.partition)
            self.intake.pending = pending
            return pending
        except KafkaException as e:
            log.warning("watermark_check_failed", error=str(e))
            return None

    def _advance(self, final: bool) -> None:
        self._process_batches()
        if final:
            for st in self.states.values():
                self._emit(self.proc.close(st.data, FOREVER))
            self.dirty.update(self.states)
            return
        ready = list(self.states)
        if not ready:
            return
        # Which packet partitions are pending says how far event time may go, but only for rows
        # this process has read: another instance's rows committed before the check may not have
        # reached us yet (an end-of-partition seen before its commit, a fetch slowed by a leader's
        # move), and judged against a watermark that ignores them they would be late. So the
        # pending set is taken with each partition's committed end, and used once we have read
        # that far (a later end would do too, but under load it would never be reached).
        # The barriers are taken right after this process's commit (_take_barriers): its own open
        # transaction, had it written to q already, would hold q's last stable offset before the
        # tail of another instance's transaction committed just before the check, and the tail's
        # rows (and the progress told at its end) would come after a watermark that ignores them.
        # Rows this process writes after that need no wait: they come from packet partitions read
        # since the commit, pending at the check if they had input then, and so holding the
        # watermark at the progress told by the last commit; stage one lets through only rows
        # within the grace of that. One caught up then holds it at its progress while that is
        # within --idle-s of wall-clock time; only a source idle longer, whose new rows arrive
        # between the barrier and its use, can find windows closed (late_records), as the idle rule
        # says for its older rows anyway. (Waiting for stage two to read them, as this did before
        # 2026-12-06, never happened under steady input: every turn writes more, so windows stayed
        # open and the state grew with the whole input.)
        # A commit's markers reach the group's offsets and each repartition partition at different
        # moments (seconds apart after a broker's death): the check can find a packet partition
        # caught up by another instance's commit whose rows q does not show yet, and q's end taken
        # then is short of them. Every commit tells every partition each source's progress
        # (_tell_progress), the progress its offset commits with: a barrier after which q knows a
        # caught-up source's progress as less than that is dropped, and the next one taken.
        for q in ready:
            if q not in self.barriers:
                continue
            pending, end, now_ns, progress = self.barriers[q]
            if max(self.positions.get((self.cfg.repartition_topic, q), -1), self.eof_at.get(q, -1)) < end:
                continue
            del self.barriers[q]
            st = self.states[q]
            short = sorted(p for p, prog in progress.items()
                           if p not in pending and st.sources.get(p, NO_PROGRESS) < prog)
            if short:
                since = self._short_since.setdefault(q, time.monotonic())
                if time.monotonic() - since < BARRIER_PATIENCE_S:
                    self.counters.barriers_retaken += 1
                    continue
                # (a progress message lost, dead-lettered as unreadable: windows must close all the same)
                log.warning("barrier_progress_missing", partition=q, sources=short,
                            waited_s=round(time.monotonic() - since))
            self._short_since.pop(q, None)
            wm = watermark(st.sources, pending, now_ns, self.rules.idle_ns, self.rules.future_ns)
            if wm > st.watermark:
                st.watermark = wm
                self._emit(self.proc.close(st.data, wm))
                self.dirty.add(q)

    def _take_barriers(self) -> None:
        """After a commit: the pending packet partitions, then each repartition partition's last
        stable offset, for the partitions without a barrier (see _advance)."""
        missing = [q for q in self.states if q not in self.barriers]
        if not missing:
            return
        pending = self._pending()
        if pending is None:
            return
        now_ns, progress = time.time_ns(), dict(self.committed_progress)
        for q in missing:
            end = self._committed_end(q)
            if end is None:
                return
            self.barriers[q] = (pending, end, now_ns, progress)

    def _emit(self, outs: list[Output]) -> None:
        enc = self.encoders
        for o in outs:
            e = enc.get(o.topic) if enc else None
            self._produce(o.topic, o.value if e is None else e(o), key=o.key, headers=o.headers)
        self.counters.outputs += len(outs)
        self._uncommitted.extend(outs)

    # -- transactions -----------------------------------------------------------------------

    def _commit(self, rewind: bool = True) -> bool:
        """Commit the open transaction (snapshots, offsets, outputs). False when it was aborted and
        the state rewound to the last commit (the caller must not take its outputs as published);
        ``rewind=False``: not rewound (the partitions are being revoked)."""
        assert self.producer is not None and self.consumer is not None
        if not self._has_work():
            self._take_barriers()  # nothing open: the check sees everything committed (windows close when quiet)
            return True
        self._process_batches()
        self._tell_progress()
        rt = self.cfg.repartition_topic
        # a repartition partition's offset commits with its state's snapshot, named by the token in
        # the offset's metadata (see _committed_with_states)
        self.dirty.update(q for t, q in self.changed if t == rt)
        token = uuid.uuid4().hex[:16]
        offsets = [self._offset(t, p) for (t, p) in sorted(self.changed) if (t, p) in self.positions and t != rt]
        written = []
        for q in sorted(self.dirty):
            st = self.states.get(q)
            pos = self.positions.get((rt, q))
            if st is None or pos is None:  # (None: nothing committed or read there, so a new state: none kept)
                continue
            st.token = token
            # arrays as raw bytes after a JSON header; the producer's lz4 compresses it (zlib here
            # cost more than the rest of a commit); the blocks that changed (statestore.py)
            self.store.write(self._produce, q, st, app_id=self.cfg.app_id)
            written.append(st)
            offsets.append(TopicPartition(rt, q, pos, token))
        assert self.txn is not None
        if not self.txn.commit(offsets, self.consumer.consumer_group_metadata()):
            self.counters.aborted += 1
            if rewind:
                self._rewind()
            return False
        self.counters.transactions += 1
        self.store.settle(written)  # (an aborted commit leaves each state's blocks as the last commit left them)
        self.counters.state_bytes_written = self.store.written
        self.counters.state_bytes_unchanged = self.store.unchanged
        self._take_barriers()
        self.changed.clear()
        self.dirty.clear()
        self.produced = 0
        self.intake.committed()
        outs, self._uncommitted = self._uncommitted, []
        for cb in self.on_outputs:
            cb(outs)
        return True

    @property
    def producer(self) -> Producer | None:
        """The open transaction's producer (transactions.py replaces a stuck one)."""
        return self.txn.producer if self.txn is not None else None

    def _producer_replaced(self, producer: Producer) -> None:
        if self.dead is not None:
            self.dead.producer = producer

    def _offset(self, topic: str, p: int) -> TopicPartition:
        """The position to commit; a packet partition's carries its progress."""
        if topic != self.cfg.packet_topic:
            return TopicPartition(topic, p, self.positions[(topic, p)])
        return TopicPartition(topic, p, self.positions[(topic, p)], self.clocks.get(p, SourceClock()).metadata())

    def _rewind(self) -> None:
        """After an aborted transaction: back to the last commit (offsets and state)."""
        assert self.consumer is not None
        self._reset_intake()  # resumed before the seeks below
        self.told.clear()  # what the aborted transaction told is gone
        parts = [TopicPartition(t, p) for (t, p) in sorted(self.assigned)]
        committed, states = self._committed_with_states(self.consumer, parts)
        fresh = []
        for tp in committed:
            key = (tp.topic, tp.partition)
            self.positions.pop(key, None)  # read again from the commit: a stale one would let a barrier pass
            if self._resume_from(tp):
                if tp.topic == self.cfg.packet_topic:
                    self.positions[key] = tp.offset  # committed with the next transaction (as in _on_assign)
                    fresh.append(key)
            elif tp.topic == self.cfg.repartition_topic:
                self.positions[key] = tp.offset  # as in _on_assign
            self.consumer.seek(tp)
            if tp.topic == self.cfg.repartition_topic:
                self.states[tp.partition] = states[tp.partition]
        self.changed.clear()
        self.changed.update(fresh)
        self.dirty.clear()
        self.eof.clear()
        self.eof_at.clear()
        self.barriers.clear()
        self._batches.clear()
        self._batch_rows.clear()
        self.produced = 0
        self._uncommitted = []

    def figures(self) -> dict[str, Any]:
        c = self.counters
        out: dict[str, Any] = {k: getattr(c, k) for k in c.__dataclass_fields__}
        out.update(self.proc.figures([st.data for st in self.states.values()]))
        return out

    def close(self) -> None:
        if self.consumer is not None:
            with contextlib.suppress(RuntimeError):
                self.consumer.close()
            self.consumer = None
        if getattr(self, "store", None) is not None:
            self.store.close()
        if self.txn is not None:
            self.txn.close()
            self.txn = None

