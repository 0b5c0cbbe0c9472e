"""Stage one's intake (consumers/engine/intake.py): bounded transactions, stage two's pace, and
one process's packet partitions read side by side in event time."""

from __future__ import annotations

from pktstream.consumers.engine.intake import MAX_CONSUME, MAX_CONSUME_SMALL, SMALL_MESSAGE, UNREAD_HOLD_S, Intake

S = 10**9
NOW = 1000.0  # monotonic seconds


def intake(commit_records: int = 1000) -> Intake:
    return Intake(commit_records=commit_records, align_ns=10 * S, idle_ns=60 * S)


def heads(it: Intake, **at: int) -> Intake:
    """Each partition pN read up to the event time given (broker time the same)."""
    for name, t in at.items():
        it.read(int(name[1:]), t, t)
    return it


def test_a_transaction_that_read_its_records_waits_until_it_commits() -> None:
    it = intake()
    it.records(600)
    d = it.decide({0, 1}, {}, set(), NOW)
    assert not d.wait and d.paused == set()
    it.records(400)
    d = it.decide({0, 1}, {}, set(), NOW)
    assert d.wait and d.paused == {0, 1}
    it.committed()
    assert not it.decide({0, 1}, {}, set(), NOW).wait


def test_stage_one_waits_for_stage_two_to_read_what_it_wrote_two_commits_ago() -> None:
    it = intake()
    it.wrote(0, 10)
    it.wrote(1, 4)
    it.committed()
    it.wrote(0, 20)
    it.committed()
    # the older commit's rows: partition 0 up to offset 10, partition 1 up to 4
    assert it.decide({0}, {0: 9, 1: 4}, set(), NOW).wait
    assert not it.decide({0}, {0: 10, 1: 4}, set(), NOW).wait
    # a repartition partition another process reads is not waited for
    assert not it.decide({0}, {1: 4}, set(), NOW).wait
    # a commit without rows keeps the gates as they were
    it.committed()
    assert it.decide({0}, {0: 9, 1: 4}, set(), NOW).wait


def test_a_partition_ahead_of_the_slowest_waits_until_it_is_within_half_the_bound() -> None:
    it = heads(intake(), p0=100 * S, p1=95 * S)
    it.pending = {0, 1}
    assert it.decide({0, 1}, {}, set(), NOW).paused == set()
    heads(it, p0=111 * S, p1=100 * S)
    d = it.decide({0, 1}, {}, set(), NOW)
    assert d.paused == {0} and not d.wait
    it.paused = d.paused
    heads(it, p1=105 * S)
    assert it.decide({0, 1}, {}, set(), NOW).paused == {0}  # 6 s ahead: still waits
    heads(it, p1=107 * S)
    assert it.decide({0, 1}, {}, set(), NOW).paused == set()  # 4 s: reads on
    # a partition that is not pending (nothing left to read) holds nobody, however far behind
    heads(it, p0=500 * S)
    it.pending = {0}
    assert it.decide({0, 1}, {}, set(), NOW).paused == set()
    # no bound, or nothing known of what is pending: nothing waits
    none = heads(Intake(1000, 0), p0=500 * S, p1=100 * S)
    none.pending = {0, 1}
    assert none.decide({0, 1}, {}, set(), NOW).paused == set()
    assert heads(intake(), p0=500 * S, p1=100 * S).decide({0, 1}, {}, set(), NOW).paused == set()


def test_a_partition_not_read_yet_holds_the_others_until_its_first_message_for_a_while() -> None:
    it = heads(intake(), p0=100 * S)
    it.pending = {0, 1}
    assert it.decide({0, 1}, {}, set(), NOW).paused == {0}
    # a leader away: after UNREAD_HOLD_S it holds nothing
    assert it.decide({0, 1}, {}, set(), NOW + UNREAD_HOLD_S + 1).paused == set()
    heads(it, p1=99 * S)
    assert it.decide({0, 1}, {}, set(), NOW).paused == set()


def test_a_partition_read_to_its_end_or_whose_time_stood_still_holds_nothing() -> None:
    it = heads(intake(), p0=500 * S, p1=100 * S)
    it.pending = {0, 1}  # as last asked: partition 1's end may not be committed yet
    assert it.decide({0, 1}, {}, {1}, NOW).paused == set()
    assert it.decide({0, 1}, {}, set(), NOW).paused == {0}
    # partition 1 not read, but at its end (nothing in it but control records, say)
    it2 = heads(intake(), p0=500 * S)
    it2.pending = {0, 1}
    assert it2.decide({0, 1}, {}, {1}, NOW).paused == set()
    # partition 1's messages go on for a minute of broker time without an honest record (a host
    # whose clock jumped, undecodable messages): its head stood still and holds nothing
    it.read(1, None, 140 * S)
    assert it.decide({0, 1}, {}, set(), NOW).paused == {0}
    it.read(1, None, 161 * S)
    assert it.decide({0, 1}, {}, set(), NOW).paused == set()
    # one honest record again and it holds as before
    it.read(1, 101 * S, 162 * S)
    assert it.decide({0, 1}, {}, set(), NOW).paused == {0}


def test_consume_takes_few_enough_messages_to_stay_within_the_transaction() -> None:
    it = intake(commit_records=500_000)
    for _ in range(200):
        it.records(20_000)
        it.committed()
    assert it.records_per_message == 20_000
    assert it.consume_size(2) == 26  # 500,000 / 20,000 and the one that crosses
    it.records(480_000)
    assert it.consume_size(2) == 1
    it.paused = {0, 1}  # nothing of the packet topic comes: stage two's messages in full batches
    assert it.consume_size(2) == MAX_CONSUME
    assert it.consume_size(0) == MAX_CONSUME
    # the largest message lately counts, not the mean: one big message among small ones
    it2 = intake(commit_records=500_000)
    for n in (1000, 1000, 100_000, 1000):
        it2.records(n)
    assert it2.records_per_message > 90_000
    assert it2.consume_size(1) <= 5
    # pktstream relay's topic: one record per message, read thousands at a time, still within the transaction
    it3 = intake(commit_records=500_000)
    it3.records(64, messages=64, relayed=True)
    assert it3.records_per_message < SMALL_MESSAGE
    assert it3.consume_size(1) == MAX_CONSUME_SMALL
    it3.records(499_000, messages=499_000, relayed=True)
    assert it3.consume_size(1) == 937  # what is left of the transaction, and one
    it3.records(100_000)  # a container again: a few messages at a time
    assert it3.consume_size(1) == 1
    # small containers (a quiet host, or a hostile one) never open the door to thousands at once
    it4 = intake(commit_records=500_000)
    for _ in range(200):
        it4.records(10)
    assert it4.records_per_message <= SMALL_MESSAGE
    assert it4.consume_size(1) == MAX_CONSUME


def test_a_reset_forgets_everything_and_a_partition_that_leaves_is_forgotten() -> None:
    it = heads(intake(), p0=5 * S, p1=6 * S)
    it.records(5000)
    it.wrote(0, 3)
    it.committed()
    it.paused = {0, 1}
    it.decide({0, 1}, {}, set(), NOW)
    it.forget(1)
    assert it.paused == {0} and 1 not in it.read_from and 1 not in it.heads and 1 not in it.since
    it.reset()
    assert (it.txn_records, it.txn_need, it.gates, it.paused, it.pending, it.read_from, it.heads) == (
        0, {}, [], set(), None, set(), {})
