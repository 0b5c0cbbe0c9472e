"""Event time of the consumer apps: each capture point's clock, progress as offset metadata, the
watermark rule, the warnings."""

from __future__ import annotations

import numpy as np
import structlog

from pktstream.consumers.engine.eventtime import (
    MAX_METADATA_CHARS,
    NO_PROGRESS,
    ClockReporter,
    ClockRules,
    Judged,
    LateReporter,
    SourceClock,
    parse_progress,
    point_key,
    progress_metadata,
    watermark,
)

S = 10**9
RULES = ClockRules(grace_ns=5 * S, future_ns=300 * S, behind_ns=86400 * S, idle_ns=60 * S)
NOW = 1_800_000_000 * S


def ts(*seconds: float) -> np.ndarray:
    return np.array([NOW + int(x * S) for x in seconds], dtype=np.int64)


def sent(c: SourceClock, origin: str, *seconds: float) -> Judged:
    """A message of these records, appended by the broker a second after its newest."""
    return c.judge(origin, ts(*seconds), NOW + int((max(seconds) + 1) * S), RULES)


def warmed(*origins: str) -> SourceClock:
    """A partition past its warm-up: each capture point has sent a minute and a second, up to NOW."""
    c = SourceClock()
    for o in origins:
        c.judge(o, ts(-61, 0), NOW, RULES)
    assert c.progress == NOW
    return c


def test_a_partition_warms_up_before_anything_is_late() -> None:
    c = SourceClock()
    sent(c, "a/eth0", 0, 24)  # a's first 24-second batch
    assert c.progress == NO_PROGRESS
    back = SourceClock.parse(c.metadata())
    assert (back.first, back.first_ref, back.points) == (NOW, NOW + 25 * S, c.points)  # a restart goes on
    assert sent(c, "b/eth0", -5, 10).keep.all()  # b shows up with an earlier batch
    sent(c, "a/eth0", 24, 48)
    sent(c, "b/eth0", 10, 45)
    assert c.progress == NO_PROGRESS  # 53 s of event time since the first record
    sent(c, "a/eth0", 48, 60)
    assert c.progress == NOW + 45 * S  # 65 s: warmed up, at the slower host


def test_a_partition_of_frozen_clocks_or_garbage_warms_up_on_the_brokers_time() -> None:
    frozen = SourceClock()
    for k in range(100):  # one host whose clock stands still, read over 100 s of broker time
        frozen.judge("frozen/eth0", ts(0, 0), NOW + k * S, RULES)
    assert frozen.progress == NOW
    garbage = SourceClock()
    for k in range(100):  # nothing but messages that do not decode
        garbage.seen(NOW + k * S, RULES)
    assert garbage.progress == NOW + 99 * S - RULES.idle_ns
    for k in range(2):  # a frozen clock holds the partition at most behind_ns behind the broker
        frozen.judge("frozen/eth0", ts(0), NOW + RULES.behind_ns + (k + 100) * S, RULES)
    assert frozen.progress == NOW + 101 * S


def test_progress_travels_as_offset_metadata() -> None:
    assert parse_progress(progress_metadata(1_800_000_000_123)) == 1_800_000_000_123
    assert parse_progress(None) == parse_progress("") == parse_progress("progress=x") == NO_PROGRESS
    assert parse_progress("something else") == NO_PROGRESS


def test_a_capture_points_clock_travels_with_the_progress_and_stays_under_kafkas_limit() -> None:
    c = warmed("h1/eth0", "h2/eth0")
    sent(c, "h1/eth0", 0, 10)
    sent(c, "h2/eth0", 4)
    back = SourceClock.parse(c.metadata())
    assert back.progress == c.progress == NOW + 4 * S
    assert back.points == c.points == {point_key("h1/eth0"): NOW + 10 * S, point_key("h2/eth0"): NOW + 4 * S}
    assert SourceClock.parse(progress_metadata(NOW)) == SourceClock(NOW)  # an older consumer's metadata
    many = SourceClock(NOW, {point_key(f"h{i}/eth0"): NOW + i for i in range(1000)})
    meta = many.metadata()
    assert len(meta) <= MAX_METADATA_CHARS
    kept = SourceClock.parse(meta).points
    assert 100 < len(kept) < 1000  # the fastest, then the slowest first
    assert set(kept.values()) == {NOW + 999, *range(NOW, NOW + len(kept) - 1)}


def test_one_far_future_or_far_behind_host_moves_nothing() -> None:
    c = SourceClock()
    j = c.judge("honest/eth0", ts(-62, -1), NOW, RULES)
    assert j.keep.all() and c.progress == NOW - 1 * S
    year = c.judge("ahead/eth0", ts(365 * 86400, 365 * 86400 + 1), NOW, RULES)
    assert year.future.all() and not year.keep.any() and year.offset_ns > 364 * 86400 * S
    eight_h = c.judge("tz/eth0", ts(8 * 3600), NOW, RULES)
    assert eight_h.future.all()
    old = c.judge("rtc/eth0", ts(-2 * 86400), NOW, RULES)
    assert old.behind.all() and not old.keep.any()
    assert c.progress == NOW - 1 * S and set(c.points) == {point_key("honest/eth0")}
    assert c.judge("honest/eth0", ts(0), NOW, RULES).keep.all()  # the honest host is never late


def test_progress_is_the_slowest_active_capture_point_so_long_batches_are_not_late() -> None:
    c = warmed("a/eth0", "b/eth0")
    sent(c, "a/eth0", 0, 24)
    sent(c, "b/eth0", 0, 24)
    assert c.progress == NOW + 24 * S
    sent(c, "a/eth0", 24, 48)  # a's next 24-second batch first
    assert c.progress == NOW + 24 * S  # held by b
    j = sent(c, "b/eth0", 24, 30, 48)
    assert j.keep.all() and c.progress == NOW + 48 * S


def test_a_host_ahead_within_the_tolerance_moves_no_one_past_the_brokers_time() -> None:
    c = warmed("honest/eth0")
    c.judge("evil/eth0", ts(299), NOW + 10 * S, RULES)  # 289 s ahead of the broker: counted ...
    assert c.progress <= NOW + 10 * S  # ... but it moves nothing past the broker's time
    assert c.judge("honest/eth0", ts(5, 9), NOW + 10 * S, RULES).keep.all()


def test_an_idle_capture_point_holds_the_partition_for_idle_s_only_and_its_backlog_is_late() -> None:
    c = warmed("a/eth0", "b/eth0")
    c.judge("a/eth0", ts(50), NOW + 50 * S, RULES)
    assert c.progress == NOW  # b within 60 s of a: still holds
    c.judge("a/eth0", ts(61), NOW + 61 * S, RULES)
    assert c.progress == NOW + 61 * S  # b idle: no longer holds
    j = c.judge("b/eth0", ts(10, 58), NOW + 70 * S, RULES)
    assert j.late.tolist() == [True, False]  # what the closed minutes missed is late, the rest counted


def test_watermark_is_the_slowest_pending_source_or_the_clock() -> None:
    sources = {0: 500, 1: 300, 2: 900}
    assert watermark(sources, [0, 2], now_ns=10_000) == 500  # partition 1 is caught up: not waited for
    assert watermark(sources, [0, 1, 2], now_ns=10_000) == 300
    assert watermark(sources, [3], now_ns=10_000) == NO_PROGRESS  # a pending source not seen yet holds it
    assert watermark(sources, [], now_ns=10_000) == 10_000  # all caught up: wall-clock time
    assert watermark({0: 20_000}, [], now_ns=10_000) == 20_000  # never behind what was seen


def test_a_caught_up_source_holds_the_watermark_for_idle_s_of_wall_clock_and_none_passes_the_tolerance() -> None:
    assert watermark({0: 9_500, 1: 9_990}, [], now_ns=10_000, idle_ns=1_000) == 9_500  # a host's outage
    assert watermark({0: 8_500, 1: 9_990}, [], now_ns=10_000, idle_ns=1_000) == 9_990  # idle past idle_ns
    assert watermark({0: 50_000}, [0], now_ns=10_000, idle_ns=1_000, future_ns=300) == 10_300


def test_late_records_are_said_once_a_minute_per_capture_point() -> None:
    rep = LateReporter(grace_ns=5 * 10**9)
    with structlog.testing.capture_logs() as logs:
        rep.report("h1/eth0", 0, 100, 7 * 10**9)
        rep.report("h1/eth0", 0, 50, 8 * 10**9)  # within the minute: counted, not said
        rep.report("h2/eth0", 3, 10, 6 * 10**9)
    assert [(e["origin"], e["records"], e["behind_s"]) for e in logs] == [("h1/eth0", 100, 7.0), ("h2/eth0", 10, 6.0)]
    assert rep.unreported == {"h1/eth0": 50, "h2/eth0": 0}


def test_a_skewed_clock_is_named_with_its_offset() -> None:
    rep = ClockReporter(RULES)
    with structlog.testing.capture_logs() as logs:
        rep.report("ahead/eth0", 2, 40, 0, 365 * 86400 * S)
        rep.report("ahead/eth0", 2, 10, 0, 365 * 86400 * S)
    assert [(e["event"], e["origin"], e["records_set_aside"], e["clock_offset_s"]) for e in logs] == \
        [("capture_point_clock_skewed", "ahead/eth0", 40, 365 * 86400.0)]
    assert rep.totals == {"ahead/eth0": 50} and rep.figures() == {"capture_points_skewed": 1}
