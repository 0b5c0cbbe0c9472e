"""Stage one's intake (consumers/engine/intake.py): bounded transactions, stage two's pace, and
packet partitions read side by side in event time."""

from __future__ import annotations

from pktstream.consumers.engine.eventtime import NO_PROGRESS
from pktstream.consumers.engine.intake import MAX_CONSUME, Intake

S = 10**9


def intake(**kw: int) -> Intake:
    return Intake(commit_records=kw.pop("commit_records", 1000), align_ns=kw.pop("align_ns", 10 * S))


def test_a_transaction_that_read_its_records_waits_until_it_commits() -> None:
    it = intake()
    it.records(600)
    d = it.decide({0, 1}, {}, {}, {}, set())
    assert not d.wait and d.paused == set()
    it.records(400)
    d = it.decide({0, 1}, {}, {}, {}, set())
    assert d.wait and d.paused == {0, 1}
    it.committed()
    assert not it.decide({0, 1}, {}, {}, {}, set()).wait


def test_stage_one_waits_for_stage_two_to_read_what_it_wrote_two_commits_ago() -> None:
    it = intake()
    it.wrote(0, 10)
    it.wrote(1, 4)
    it.committed()
    it.wrote(0, 20)
    it.committed()
    # the older commit's rows: partition 0 up to offset 10, partition 1 up to 4
    assert it.decide({0}, {0: 9, 1: 4}, {}, {}, set()).wait
    assert not it.decide({0}, {0: 10, 1: 4}, {}, {}, set()).wait
    # a repartition partition another process reads is not waited for
    assert not it.decide({0}, {1: 4}, {}, {}, set()).wait
    # a commit without rows keeps the gates as they were
    it.committed()
    assert it.decide({0}, {0: 9, 1: 4}, {}, {}, set()).wait


def test_a_partition_ahead_of_the_slowest_waits_until_it_is_within_half_the_bound() -> None:
    it = intake()
    it.pending = {0, 1}
    it.read(0)
    it.read(1)
    assert it.decide({0, 1}, {}, {0: 100 * S, 1: 95 * S}, {}, set()).paused == set()
    d = it.decide({0, 1}, {}, {0: 111 * S, 1: 100 * S}, {}, set())
    assert d.paused == {0} and not d.wait
    it.paused = d.paused
    assert it.decide({0, 1}, {}, {0: 111 * S, 1: 105 * S}, {}, set()).paused == {0}  # 6 s ahead: still
    assert it.decide({0, 1}, {}, {0: 111 * S, 1: 107 * S}, {}, set()).paused == set()  # 4 s: reads on
    # no bound, or nothing known of what is pending: nothing waits
    assert Intake(1000, 0, pending={0, 1}, read_from={0, 1}).decide(
        {0, 1}, {}, {0: 500 * S, 1: 100 * S}, {}, set()).paused == set()
    assert Intake(1000, 10 * S, read_from={0, 1}).decide({0, 1}, {}, {0: 500 * S, 1: 100 * S}, {}, set()).paused \
        == set()


def test_a_partition_not_read_yet_holds_the_others_until_its_first_message() -> None:
    it = intake()
    it.pending = {0, 1}
    it.read(0)
    assert it.decide({0, 1}, {}, {0: 100 * S}, {}, set()).paused == {0}
    it.read(1)
    assert it.decide({0, 1}, {}, {0: 100 * S, 1: 99 * S}, {}, set()).paused == set()


def test_a_partition_read_to_its_end_or_without_an_honest_time_holds_nothing() -> None:
    it = intake()
    it.pending = {0, 1}  # as last asked: partition 1's end may not be committed yet
    it.read(0)
    assert it.decide({0, 1}, {}, {0: 500 * S, 1: 100 * S}, {}, {1}).paused == set()
    # partition 1 unread but at its end (nothing in it but control records, say): holds nothing
    assert it.decide({0, 1}, {}, {0: 500 * S}, {}, {1}).paused == set()
    # partition 1 read, but none of its records had an honest time (a host's clock a year off)
    it.read(1)
    assert it.decide({0, 1}, {}, {0: 500 * S}, {}, set()).paused == set()


def test_another_processs_partition_holds_ours_by_the_progress_stage_two_learned() -> None:
    it = intake()
    it.pending = {0, 2}
    it.read(0)
    assert it.decide({0}, {}, {0: 100 * S}, {2: 80 * S}, set()).paused == {0}
    assert it.decide({0}, {}, {0: 100 * S}, {2: 95 * S}, set()).paused == set()
    # warming up over there (no progress yet): it holds nothing
    assert it.decide({0}, {}, {0: 100 * S}, {2: NO_PROGRESS}, set()).paused == set()
    # and a partition that is not pending does not hold anyone, however old its progress
    it.pending = {0}
    assert it.decide({0}, {}, {0: 100 * S}, {2: 10 * S}, set()).paused == set()


def test_consume_takes_few_enough_messages_to_stay_within_the_transaction() -> None:
    it = intake(commit_records=500_000)
    for _ in range(200):
        it.records(20_000)
        it.committed()
    assert 19_000 < it.records_per_message <= 20_000
    assert it.consume_size(2) == 26  # 500,000 / 20,000 and the one that crosses
    it.records(480_000)
    assert it.consume_size(2) == 1
    it.paused = {0, 1}  # nothing of the packet topic comes: stage two's messages in full batches
    assert it.consume_size(2) == MAX_CONSUME
    assert it.consume_size(0) == MAX_CONSUME


def test_a_reset_forgets_everything_and_a_partition_that_leaves_is_forgotten() -> None:
    it = intake()
    it.records(5000)
    it.wrote(0, 3)
    it.committed()
    it.paused = {0, 1}
    it.read(1)
    it.forget(1)
    assert it.paused == {0} and 1 not in it.read_from
    it.reset()
    assert (it.txn_records, it.txn_need, it.gates, it.paused, it.pending, it.read_from) == (0, {}, [], set(), None,
                                                                                             set())
