"""Event time of the consumer apps: progress as offset metadata, the watermark rule, late lines."""

from __future__ import annotations

import structlog

from pktstream.consumers.engine.eventtime import NO_PROGRESS, LateReporter, parse_progress, progress_metadata, watermark


def test_progress_travels_as_offset_metadata() -> None:
    assert parse_progress(progress_metadata(1_800_000_000_123)) == 1_800_000_000_123
    assert parse_progress(None) == parse_progress("") == parse_progress("progress=x") == NO_PROGRESS
    assert parse_progress("something else") == NO_PROGRESS


def test_watermark_is_the_slowest_pending_source_or_the_clock() -> None:
    sources = {0: 500, 1: 300, 2: 900}
    assert watermark(sources, [0, 2], now_ns=10_000) == 500  # partition 1 is caught up: not waited for
    assert watermark(sources, [0, 1, 2], now_ns=10_000) == 300
    assert watermark(sources, [3], now_ns=10_000) == NO_PROGRESS  # a pending source not seen yet holds it
    assert watermark(sources, [], now_ns=10_000) == 10_000  # all caught up: wall-clock time
    assert watermark({0: 20_000}, [], now_ns=10_000) == 20_000  # never behind what was seen


def test_late_records_are_said_once_a_minute_per_capture_point() -> None:
    rep = LateReporter(grace_ns=5 * 10**9)
    with structlog.testing.capture_logs() as logs:
        rep.report("h1/eth0", 0, 100, 7 * 10**9)
        rep.report("h1/eth0", 0, 50, 8 * 10**9)  # within the minute: counted, not said
        rep.report("h2/eth0", 3, 10, 6 * 10**9)
    assert [(e["origin"], e["records"], e["behind_s"]) for e in logs] == [("h1/eth0", 100, 7.0), ("h2/eth0", 10, 6.0)]
    assert rep.unreported == {"h1/eth0": 50, "h2/eth0": 0}
