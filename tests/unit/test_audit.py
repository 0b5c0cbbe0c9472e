"""The audit's arithmetic on runs: what a later run gave up of an earlier run's spooled batches
is that earlier run's failed records, not pending for ever."""

from __future__ import annotations

from typing import Any

from pktstream.consumers.tools.audit import RunAudit, credit_later_failures


def report(run: str, **kw: Any) -> dict[str, Any]:
    r = {"host_id": "h1", "interface": "eth0", "run_id": run, "ts_ns": 1, "final": True, "crashed": False,
         "packets_seen": 0, "records_captured": 0, "records_delivered": 0, "records_failed": 0,
         "records_pending": 0, "records_spooled": 0, "ringbuf_full": 0, "ringbuf_full_per_cpu": [],
         "sampled_out": 0, "sample_rate": 1, "batches": 0, "directions": ["ingress"], "failed_for_runs": {}}
    r.update(kw)
    return r


def test_a_later_run_giving_up_an_earlier_runs_spooled_batch_counts_it_failed_for_that_run() -> None:
    # run1 stopped with 3,000 of its 4,000 records in the spool (pending); run2 replayed 2,500 of them
    # and gave up 500 (too large for the topic by then)
    run1 = RunAudit("h1", "run1", "eth0", unique=3_500, report=report(
        "run1", packets_seen=4_000, records_captured=4_000, records_delivered=1_000, records_pending=3_000,
        records_spooled=3_000))
    run1.gaps = [(1_000, 1_499)]
    run2 = RunAudit("h1", "run2", "eth0", report=report("run2", failed_for_runs={"run1": 500, "gone": 7}))
    other_host = RunAudit("h2", "run1", "eth0", unique=10, report=report("run1", packets_seen=10,
                                                                          records_captured=10))
    runs = {("h1", "run1"): run1, ("h1", "run2"): run2, ("h2", "run1"): other_host}
    assert run1.pending == 3_000 and run1.failed == 0
    credit_later_failures(runs)
    assert (run1.failed, run1.pending, run1.unexplained, run1.missing) == (500, 2_500, 0, 500)
    assert run1.exact and run1.as_dict()["failed"] == 500
    assert other_host.failed == 0 and run2.failed == 0  # another host's run of the same id is not touched


def test_without_the_later_report_the_absent_records_stay_pending_not_unexplained() -> None:
    run1 = RunAudit("h1", "run1", "eth0", unique=1_000, report=report(
        "run1", packets_seen=4_000, records_captured=4_000, records_delivered=1_000, records_pending=3_000))
    credit_later_failures({("h1", "run1"): run1})
    assert (run1.failed, run1.pending, run1.unexplained) == (0, 3_000, 0)
