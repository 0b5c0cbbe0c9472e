"""Stage one's intake: how much of the packet topic a consumer reads, and which partitions.

Stage two sees stage one's rows only once their transaction commits. A stage one left to read at
its own pace put most of a backlog into one transaction (8.9 M of 11.5 M records in the first ten
seconds of a replay), and no window could close until it was all read: the state grew with the
backlog. And a repartition partition's watermark is its slowest source's progress, so a packet
partition read faster than another in event time (one holding one host against one holding three)
only adds rows to windows that cannot close yet. So:

- a transaction reads at most ``commit_records`` packet records (then the runner commits, whatever
  the interval), and consume() takes few enough messages not to overshoot that by more than one;
- stage one waits while stage two has not read what this process wrote two commits ago: one
  transaction's rows are read while the next one's are made;
- of the packet partitions one process reads, one more than ``align_ns`` of event time ahead of
  the slowest with unread input waits until it is within half of that (Flink's watermark alignment
  does the same for its sources). Only one process's own partitions are aligned: measured the same
  way (the newest honest event time read), the slowest is always one that is read, so no two
  processes can wait for each other.

The runner applies what ``decide`` says with librdkafka's pause and resume (a pause drops what was
fetched for the partition; the resume fetches again from its next unread offset), and handles
every message consume() returns. This module holds the figures and the decisions, without Kafka,
so that they can be tested alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from pktstream.consumers.engine.eventtime import NO_PROGRESS

MAX_CONSUME = 64  # messages one consume() takes at most
MAX_CONSUME_SMALL = 4096  # ... when the packet messages hold few records (pktstream relay's: one each)
SMALL_MESSAGE = 64  # records a packet message holds at most lately for that
UNREAD_HOLD_S = 10.0  # how long a partition not read from yet holds the others (a leader away, say)


@dataclass
class Decision:
    paused: set[int]  # the packet partitions that must not be read now
    wait: bool  # all of them, for the transaction's records or for stage two


@dataclass
class Intake:
    commit_records: int
    align_ns: int
    idle_ns: int = 60 * 10**9  # a head that has not moved for this long (broker time) holds nothing
    txn_records: int = 0  # packet records read in the open transaction
    txn_need: dict[int, int] = field(default_factory=dict)  # repartition partition -> one past our last write
    gates: list[dict[int, int]] = field(default_factory=list)  # txn_need of the last two commits
    paused: set[int] = field(default_factory=set)
    pending: set[int] | None = None  # packet partitions with uncommitted input, as last asked
    read_from: set[int] = field(default_factory=set)  # packet partitions read from since they were assigned
    heads: dict[int, int] = field(default_factory=dict)  # the newest honest event time read from each
    head_ref: dict[int, int] = field(default_factory=dict)  # the reference (broker) time it last moved at
    last_ref: dict[int, int] = field(default_factory=dict)  # the latest reference time read from each
    records_per_message: float = 1000.0  # the largest message lately (decays by 1/16 a message)
    relayed: bool = False  # the last packet messages read were pktstream relay's (one record each)
    since: dict[int, float] = field(default_factory=dict)  # when decide first saw each partition (monotonic)

    # -- what happened ----------------------------------------------------------------------

    def read(self, p: int, head: int | None, ref_ns: int) -> None:
        """A message of packet partition p was handled (whatever it held): ``head`` the newest
        honest event time among its records (None: none), ``ref_ns`` its reference (broker) time."""
        self.read_from.add(p)
        self.last_ref[p] = max(self.last_ref.get(p, ref_ns), ref_ns)
        if head is not None and head > self.heads.get(p, NO_PROGRESS):
            self.heads[p] = head
            self.head_ref[p] = self.last_ref[p]

    def records(self, n: int, messages: int = 1, relayed: bool = False) -> None:
        """Packet messages (one container, or ``messages`` of pktstream relay's: ``relayed``) of n
        records in all were read into the open transaction."""
        self.txn_records += n
        self.records_per_message = max(n / max(messages, 1), self.records_per_message * (15 / 16) ** messages)
        self.relayed = relayed

    def wrote(self, q: int, end: int) -> None:
        """A repartition message was delivered to partition q, ending at offset ``end`` (exclusive)."""
        self.txn_need[q] = max(self.txn_need.get(q, 0), end)

    def committed(self) -> None:
        self.txn_records = 0
        if self.txn_need:
            self.gates = [*self.gates[-1:], self.txn_need]
            self.txn_need = {}

    def forget(self, p: int) -> None:
        """Packet partition p is no longer ours."""
        self.paused.discard(p)
        self.read_from.discard(p)
        self.heads.pop(p, None)
        self.head_ref.pop(p, None)
        self.last_ref.pop(p, None)
        self.since.pop(p, None)

    def reset(self) -> None:
        """A rewind or a rejoin: nothing waited for, nothing paused (the caller resumes first)."""
        self.txn_records = 0
        self.txn_need = {}
        self.gates = []
        self.paused = set()
        self.pending = None
        self.read_from = set()
        self.heads, self.head_ref, self.last_ref, self.since = {}, {}, {}, {}

    # -- decisions --------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        return self.txn_records >= self.commit_records

    def consume_size(self, mine: int) -> int:
        """How many messages one consume() takes: MAX_CONSUME, but while stage one reads, few
        enough that the packet messages among them stay within the transaction's remaining
        records if none is larger than the largest lately (a packet message may hold tens of
        thousands of records; a sudden jump in size can still overshoot)."""
        if not mine or len(self.paused) >= mine:
            return MAX_CONSUME
        left = max(0, self.commit_records - self.txn_records)
        # thousands at a time only while the messages are the relay's: small containers (a quiet host, or a
        # hostile one) must not open the door to thousands of containers at once
        cap = MAX_CONSUME_SMALL if self.relayed and self.records_per_message <= SMALL_MESSAGE else MAX_CONSUME
        return max(1, min(cap, int(left / max(1.0, self.records_per_message)) + 1))

    def decide(self, mine: Set[int], stage_two_at: Mapping[int, int], at_end: Set[int], now: float) -> Decision:
        """Which of our packet partitions ``mine`` must wait.

        ``stage_two_at``: how far stage two has read each of our repartition partitions;
        ``at_end``: those of ``mine`` read to their end; ``now``: monotonic time."""
        for p in mine:
            self.since.setdefault(p, now)
        wait = self.full
        if not wait and len(self.gates) >= 2:
            wait = any(q in stage_two_at and stage_two_at[q] < end for q, end in self.gates[-2].items())
        return Decision(set(mine) if wait else self._ahead(mine, at_end, now), wait)

    def _head(self, p: int) -> int:
        """How far partition p is read in event time: its head, unless that stood still for idle_ns of
        broker time while its messages went on (a host whose clock went off, undecodable messages:
        it would hold the others for nothing); NO_PROGRESS then, or when none was read."""
        head = self.heads.get(p, NO_PROGRESS)
        if head == NO_PROGRESS or self.last_ref.get(p, 0) - self.head_ref.get(p, 0) > self.idle_ns:
            return NO_PROGRESS
        return head

    def _ahead(self, mine: Set[int], at_end: Set[int], now: float) -> set[int]:
        """Of ``mine``, those too far ahead of the slowest with unread input (a paused one waits until
        it is within half the bound). One read to its end holds nothing back, nor does one without a
        head (see _head); one not read from yet holds the others until its first message
        (librdkafka's queue may hold a whole partition's backlog before another's first message), for
        UNREAD_HOLD_S at most."""
        pending = self.pending
        if self.align_ns <= 0 or not pending or not mine:
            return set()
        at = {p: self._head(p) for p in mine}
        live = (set(mine) & pending) - set(at_end)
        unread = {p for p in live if p not in self.read_from and now - self.since[p] < UNREAD_HOLD_S}
        if unread:
            return {p for p in mine - unread if at[p] != NO_PROGRESS}
        slow = [at[p] for p in live if at[p] != NO_PROGRESS]
        if not slow:
            return set()
        slowest = min(slow)
        return {p for p in mine if at[p] != NO_PROGRESS
                and at[p] - slowest > (self.align_ns // 2 if p in self.paused else self.align_ns)}
