"""Completeness on results (issue 25, item 3, first part): a capture point's ring-buffer losses,
told in its messages' ``pktstream.ringbuf_full`` header, are stamped on the usage rows and alerts
of the windows they fall in (``records_lost``), for the points those results were counted from."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as hs

from pktstream.consumers.alerts.ocsf import avro_record
from pktstream.consumers.alerts.processor import AlertsProcessor
from pktstream.consumers.alerts.rules import load_rules
from pktstream.consumers.catalog import Catalog
from pktstream.consumers.engine import features, snapshot
from pktstream.consumers.engine.losses import HORIZON_NS, MAX_LOST, MAX_POINTS, PER_POINT, SECOND, Losses
from pktstream.consumers.engine.runner import FOREVER, lost_note, ringbuf_full
from pktstream.consumers.usage.processor import MINUTE_NS, UsageProcessor
from pktstream.producer.encode import BatchEncoder
from pktstream.producer.privacy import PayloadScope
from pktstream.schemas import headers as H
from pktstream.schemas import load_schema_json
from pktstream.schemas.columns import read_container
from pktstream.schemas.container import ContainerWriter
from pktstream.schemas.record import record_dtype
from tests.support.traffic import CATALOG, containers, generate, packets

T0 = 1_800_000_000_000_000_000 - 1_800_000_000_000_000_000 % MINUTE_NS


def test_marks_add_up_by_point_and_second_and_stay_bounded() -> None:
    lo = Losses(limit=50)
    lo.add("a/eth0", T0 + 1, 10)
    lo.add("a/eth0", T0 + 999_999_999, 5)  # the same second
    lo.add("a/eth0", T0 + 61 * SECOND, 7)
    lo.add("b/eth0", T0 + 2 * SECOND, 3)
    assert lo.marks == 3
    assert lo.within(["a/eth0"], T0, T0 + MINUTE_NS) == 15
    assert lo.within(["a/eth0", "b/eth0"], T0, T0 + MINUTE_NS) == 18
    assert lo.within(["a/eth0"], T0 + MINUTE_NS, T0 + 2 * MINUTE_NS) == 7
    assert lo.within(["c/eth0"], T0, FOREVER) == 0
    again = Losses.load(json.loads(json.dumps(lo.dump())))
    assert again.by == lo.by and again.marks == 3
    lo.prune(T0 + 61 * SECOND + HORIZON_NS)  # the first minute's marks: no window holds them now
    assert lo.within(["a/eth0", "b/eth0"], T0, FOREVER) == 7 and lo.marks == 1
    # a point writing marks at every second: at most PER_POINT of them, its own oldest go first
    liar = Losses()
    liar.add("b/eth0", T0, 1)
    for s in range(PER_POINT + 500):
        liar.add("liar/x", T0 + s * SECOND, 1)
    assert len(liar.by["liar/x"]) <= PER_POINT and liar.within(["b/eth0"], T0, T0 + 1) == 1
    # all points together: the one with the most marks gives them up first
    small = Losses(limit=100)
    small.add("b/eth0", T0, 1)
    for s in range(300):
        small.add("busy/x", T0 + s * SECOND, 1)
    assert small.marks <= 100 and small.within(["b/eth0"], T0, T0 + 1) == 1 and small.dropped > 0
    # names by the thousand: at most MAX_POINTS kept, and no point left without marks
    many = Losses()
    for i in range(3 * MAX_POINTS):
        many.add(f"invented-{i}/x", T0 + (i % 50) * SECOND, 1)
    assert len(many.by) == MAX_POINTS and all(many.by.values()) and many.marks == MAX_POINTS
    assert many.dropped == 2 * MAX_POINTS
    # counts saturate: no sum outgrows what a result can hold
    huge = Losses()
    for _ in range(5):
        huge.add("a/eth0", T0, MAX_LOST)
    huge.add("b/eth0", T0, MAX_LOST)
    assert huge.within(["a/eth0", "b/eth0"], T0, T0 + SECOND) == MAX_LOST
    assert huge.per_point(T0, T0 + SECOND) == {"a/eth0": MAX_LOST, "b/eth0": MAX_LOST}


@pytest.mark.parametrize(("value", "count"), [
    ("120", 120), (None, 0), ("", 0), ("-3", 0), ("1e3", 0), ("²", 0), ("9" * 14, 0), (" 5", 0), ("0", 0),
])
def test_the_header_is_a_count_or_nothing(value: str | None, count: int) -> None:
    assert ringbuf_full({} if value is None else {H.RINGBUF_FULL: value}) == count


@given(hs.one_of(hs.text(max_size=40), hs.from_regex(r"\A[0-9]{1,20}\Z")))
def test_any_header_value_reads_as_a_bounded_count(value: str) -> None:
    n = ringbuf_full({H.RINGBUF_FULL: value})
    assert 0 <= n <= MAX_LOST and (n == 0 or value.isascii())


@given(hs.one_of(hs.text(max_size=60), hs.builds(json.dumps, hs.lists(
    hs.one_of(hs.integers(), hs.text(max_size=5), hs.none(), hs.floats(allow_nan=False)), max_size=4))))
def test_any_note_reads_as_a_bounded_note_or_none(value: str) -> None:
    note = lost_note(value)
    assert note is None or (len(note[0]) <= 300 and 0 < note[2] <= MAX_LOST)


def test_a_loss_note_reads_back_or_not_at_all() -> None:
    assert lost_note(json.dumps(["a/eth0", 5, 7])) == ("a/eth0", 5, 7)
    for bad in ("[", "[1,2,3]", '["a", 5, 0]', '["a", 5, -1]', '["a", "5", 1]', '{"a": 1}', '["a", 5]', "null"):
        assert lost_note(bad) is None, bad


def test_the_producer_tells_its_losses_in_the_message_that_follows_them() -> None:
    enc = BatchEncoder(ContainerWriter(load_schema_json("packet")), [], 0, PayloadScope(), False)
    recs = np.zeros(3, dtype=record_dtype(0))
    assert H.RINGBUF_FULL not in dict(enc.encode(recs).headers)
    assert dict(enc.encode(recs, ringbuf_full=42).headers)[H.RINGBUF_FULL] == b"42"


def usage_outputs(lost: list[tuple[str, int, int]]) -> list[dict[str, Any]]:
    """Two minutes of generated HTTP traffic from capture point gen-host/eth0, with the loss notes
    told to every partition as stage one does."""
    p = UsageProcessor(Catalog.from_data(CATALOG))
    states = {q: p.new_state() for q in range(3)}
    for m in containers(generate(3000, T0 + SECOND, 110 * SECOND, clients=100), batch=1000):
        f = p.featurize(read_container(m), "gen-host/eth0")
        for q, part in p.route(f, 3).items():
            p.process(states[q], features.decode(features.encode(part)))
    for origin, t, n in lost:
        for st in states.values():
            p.lost(st, origin, t, n)
    # through a snapshot: the marks are state
    states = {q: p.load(snapshot.unpack(snapshot.pack(p.dump(st)))) for q, st in states.items()}
    return [o.record for st in states.values() for o in p.close(st, FOREVER)]


def test_usage_rows_say_how_many_records_their_capture_points_lost_in_their_window() -> None:
    clean = usage_outputs([])
    assert clean and all(r["records_lost"] == 0 for r in clean)
    lossy = usage_outputs([("gen-host/eth0", T0 + 30 * SECOND, 500), ("gen-host/eth0", T0 + 40 * SECOND, 20),
                           ("other/eth1", T0 + 30 * SECOND, 9_999)])  # not a point of these rows
    minute = [r for r in lossy if r["window_s"] == 60]
    first = [r for r in minute if r["window_start_ms"] == T0 // 1_000_000]
    second = [r for r in minute if r["window_start_ms"] == (T0 + MINUTE_NS) // 1_000_000]
    assert first and second
    assert all(r["records_lost"] == 520 for r in first) and all(r["records_lost"] == 0 for r in second)
    assert all(r["records_lost"] == 520 for r in lossy if r["window_s"] == 3600)
    # the counts themselves do not change: the stamp says what they could not count
    strip = [{k: v for k, v in r.items() if k != "records_lost"} for r in lossy]
    assert strip == [{k: v for k, v in r.items() if k != "records_lost"} for r in clean]


def test_an_alert_raised_while_its_capture_point_lost_records_says_so() -> None:
    p = AlertsProcessor(load_rules(None, {}), Catalog.from_data(CATALOG))
    st = p.new_state()
    t = packets([{"ts": T0 + SECOND + i * 200_000, "src": f"10.9.{i % 200}.{i % 250 + 1}", "dst": "10.1.0.10",
                  "sport": 40000 + i % 20000, "dport": 5000, "proto": 17, "len": 80} for i in range(25_000)])
    for m in containers(t, batch=5000, host="edge", interface="eth0"):
        p.process(st, p.featurize(read_container(m), "edge/eth0"))
    p.lost(st, "edge/eth0", T0 + 3 * SECOND, 1234)
    p.lost(st, "edge/eth0", T0 + 30 * SECOND, 99)  # after the last packet the alert counted
    docs = [o.record for o in p.close(st, FOREVER)]
    (udp,) = [d for d in docs if d["unmapped"]["pktstream"]["rule"] == "udp_flood" and d["activity_id"] == 1]
    assert udp["unmapped"]["pktstream"]["records_lost"] == 1234
    assert udp["message"].endswith("; capture incomplete: 1234 records lost by edge/eth0 meanwhile"), udp["message"]
    assert avro_record(udp)["records_lost"] == 1234
    # the same flood without losses: the same alert, complete
    st = p.new_state()
    for m in containers(t, batch=5000, host="edge", interface="eth0"):
        p.process(st, p.featurize(read_container(m), "edge/eth0"))
    (clean,) = [o.record for o in p.close(st, FOREVER) if o.record["unmapped"]["pktstream"]["rule"] == "udp_flood"
                and o.record["activity_id"] == 1]
    assert clean["unmapped"]["pktstream"]["records_lost"] == 0 and "capture incomplete" not in clean["message"]
    assert clean["unmapped"]["pktstream"]["window_count"] == udp["unmapped"]["pktstream"]["window_count"] == 25_000
    assert not clean["unmapped"]["pktstream"]["sampled"] and not udp["unmapped"]["pktstream"]["sampled"]
    # one record in 8 kept (the kernel's sampling): the counts are estimates, and the alert says so
    st = p.new_state()
    thinned = packets([{"ts": T0 + SECOND + i * 1_600_000, "src": f"10.9.{i % 200}.{i % 250 + 1}", "dst": "10.1.0.10",
                        "sport": 40000 + i, "dport": 5000, "proto": 17, "len": 80, "sample_rate": 8}
                       for i in range(3_125)])
    for m in containers(thinned, batch=1000, host="edge", interface="eth0"):
        p.process(st, p.featurize(read_container(m), "edge/eth0"))
    st = p.load(snapshot.unpack(snapshot.pack(p.dump(st))))  # the marks are state
    (est,) = [o.record for o in p.close(st, FOREVER) if o.record["unmapped"]["pktstream"]["rule"] == "udp_flood"
              and o.record["activity_id"] == 1]
    assert est["unmapped"]["pktstream"]["sampled"] and est["unmapped"]["pktstream"]["window_count"] == 25_000
    assert est["message"].endswith("; estimated from sampled records") and avro_record(est)["sampled"]
