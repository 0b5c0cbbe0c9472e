from __future__ import annotations

from pktstream.producer.latency import LatencyRecorder
from pktstream.producer.sampling import SamplingController


def test_doubles_on_drops_or_high_water_up_to_the_ceiling() -> None:
    c = SamplingController(base_rate=1, max_rate=8)
    assert c.update(0.0, fill=0.2, new_drops=0) is None
    assert c.update(0.1, fill=0.2, new_drops=5) == 2
    assert c.update(0.2, fill=0.6, new_drops=0) == 4
    assert c.update(0.3, fill=0.9, new_drops=1) == 8
    assert c.update(0.4, fill=0.9, new_drops=1) is None  # at the ceiling
    assert c.rate == 8


def test_halves_only_after_a_calm_period_and_never_below_base() -> None:
    c = SamplingController(base_rate=2, max_rate=64, calm_s=2.0, rate=8)
    assert c.update(0.0, fill=0.01, new_drops=0) is None  # calm starts
    assert c.update(1.9, fill=0.01, new_drops=0) is None
    assert c.update(2.0, fill=0.01, new_drops=0) == 4
    assert c.update(3.0, fill=0.3, new_drops=0) is None  # between the marks: calm broken
    assert c.update(3.1, fill=0.0, new_drops=0) is None
    assert c.update(5.2, fill=0.0, new_drops=0) == 2
    assert c.update(9.0, fill=0.0, new_drops=0) is None
    assert c.rate == 2


def test_latency_percentiles_weight_records() -> None:
    r = LatencyRecorder()
    # 99 batches of 1000 records at exactly 10 ms, one batch of 10 records at 500 ms
    for _ in range(99):
        r.add(ack_ns=10_000_000, ts_first_ns=0, ts_last_ns=0, records=1000)
    r.add(ack_ns=500_000_000, ts_first_ns=0, ts_last_ns=0, records=10)
    p = r.percentiles_ms((50, 99))
    assert p["p50"] == 10.0 and p["p99"] == 10.0
    r2 = LatencyRecorder()
    r2.add(ack_ns=100_000_000, ts_first_ns=0, ts_last_ns=100_000_000, records=1000)  # 0..100 ms spread
    p2 = r2.percentiles_ms((50, 99))
    assert 45 <= p2["p50"] <= 55 and 95 <= p2["p99"] <= 100
