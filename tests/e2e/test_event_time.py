"""No host's clock, batching or outage changes what is counted for another: event time is judged
per capture point. Topics are written as a fleet writes them (each host's messages when its batch
is complete), with the broker's append time, and read by ``pktstream usage``."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from confluent_kafka import Producer

from pktstream.runtime.kafka import ensure_topic
from pktstream.schemas import load_schema_json
from pktstream.schemas.container import ContainerWriter
from tests.support.apps import final_figures, log_events, usage_cmd
from tests.support.traffic import CATALOG as GEN_CATALOG
from tests.support.traffic import PAYLOAD, Traffic, generate

pytestmark = pytest.mark.kafka

S = 10**9
MIN = 60 * S
TOPIC_CONFIG = {"max.message.bytes": str(64 << 20), "message.timestamp.type": "LogAppendTime"}


def by_time(t: Traffic, host: str, start_ns: int, width_ns: int, phase_ns: int = 0,
            shift_ns: int = 0) -> list[tuple[int, str, bytes]]:
    """A host's records as a producer batches them: one message per ``width_ns`` of event time
    (the first cut ``phase_ns`` in), sent when the batch is complete; (send time, host, message).
    ``shift_ns``: the host's clock is that far off (its records stamped so)."""
    w = ContainerWriter(load_schema_json("packet"), "null", {"pktstream.host": host, "pktstream.interface": "eth0",
                                                             "pktstream.payload_bytes": str(PAYLOAD)})
    ts = t.columns["ts_ns"]
    cuts = np.arange(start_ns + phase_ns, int(ts.max()) + width_ns + 1, width_ns)
    cuts = np.concatenate(([start_ns], cuts[cuts > start_ns]))
    out = []
    for lo, hi in itertools.pairwise(cuts):
        keep = (ts >= lo) & (ts < hi)
        n = int(keep.sum())
        if n:
            cols = {k: v[keep] for k, v in t.columns.items()}
            cols["ts_ns"] = cols["ts_ns"] + shift_ns
            out.append((int(hi), host, w.container(cols, n)))
    return out


def send(bootstrap: str, topic: str, msgs: list[tuple[int, str, bytes]], partition_of: dict[str, int]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 64 << 20, "enable.idempotence": True})
    for _at, host, m in sorted(msgs, key=lambda x: x[0]):
        p.produce(topic, m, key=host.encode(), partition=partition_of[host],
                  headers=[("pktstream.host", host.encode()), ("pktstream.interface", b"eth0")])
    assert p.flush(60) == 0


def run(bootstrap: str, topic: str, catalog: Path, *extra: str) -> tuple[list[dict[str, Any]], dict[str, Any],
                                                                          list[dict[str, Any]]]:
    import subprocess

    cmd = usage_cmd(bootstrap, topic, f"t-et-{uuid.uuid4().hex[:6]}", f"{topic}.usage", catalog, *extra)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    events = log_events(p.stderr)
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    return [r for r in rows if r["window_s"] == 60], final_figures(events), events


def per_minute(rows: list[dict[str, Any]]) -> Counter[int]:
    c: Counter[int] = Counter()
    for r in rows:
        c[r["window_start_ms"] * 1_000_000 // MIN] += r["packets"]
    return c


def expected_per_minute(*ts: Traffic) -> Counter[int]:
    c: Counter[int] = Counter()
    for t in ts:
        c.update(Counter((t.columns["ts_ns"] // MIN).tolist()))
    return c


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    f = tmp_path / "catalog.yaml"
    f.write_text(yaml.safe_dump(GEN_CATALOG))
    return f


def test_hosts_a_year_and_eight_hours_ahead_are_set_aside_and_named(kafka_bootstrap: str, catalog: Path) -> None:
    """Six honest hosts on two partitions, and two whose clocks are wrong, sharing them: a year
    ahead (a VM restored with a wrong clock) and eight hours (an RTC in local time). Every honest
    record is counted in its own minute; the two are named, with their offsets."""
    topic = f"et-future-{uuid.uuid4().hex[:8]}"
    ensure_topic({"bootstrap.servers": kafka_bootstrap}, topic, 2, config=TOPIC_CONFIG)
    t0 = (time.time_ns() - 5 * MIN) // MIN * MIN
    honest = [generate(150, t0, 3 * MIN, clients=100, seed=40 + h) for h in range(6)]
    msgs = [m for h, t in enumerate(honest) for m in by_time(t, f"honest{h}", t0, 5 * S, phase_ns=h * S)]
    skewed = {"year-ahead": 365 * 86400 * S, "tz-ahead": 8 * 3600 * S}
    bad = generate(100, t0, 3 * MIN, clients=50, seed=49)
    for host, shift in skewed.items():
        msgs += [(at, h, m) for at, h, m in by_time(bad, host, t0, 5 * S, shift_ns=shift)]
    parts = {**{f"honest{h}": h % 2 for h in range(6)}, "year-ahead": 0, "tz-ahead": 1}
    send(kafka_bootstrap, topic, msgs, parts)

    rows, fig, events = run(kafka_bootstrap, topic, catalog)
    assert per_minute(rows) == expected_per_minute(*honest)
    assert fig["records_clock_skewed"] == 2 * bad.n
    assert fig["records_out_of_order"] == fig["late_records"] == 0
    named = {e["origin"]: e for e in events if e["event"] == "capture_point_clock_skewed"}
    assert set(named) == {"year-ahead/eth0", "tz-ahead/eth0"}
    assert named["year-ahead/eth0"]["clock_offset_s"] > 364 * 86400
    assert 7.9 * 3600 < named["tz-ahead/eth0"]["clock_offset_s"] < 8.1 * 3600


def test_hosts_sharing_a_partition_with_long_batches_lose_nothing(kafka_bootstrap: str, catalog: Path) -> None:
    """Six hosts on one partition, each sending a message per 24 seconds of its traffic, their
    batch boundaries 4 seconds apart: a host's records are up to 24 s behind another's message
    that came first, more than the grace (10 s). Nothing is late; every record counts in its minute."""
    topic = f"et-batches-{uuid.uuid4().hex[:8]}"
    ensure_topic({"bootstrap.servers": kafka_bootstrap}, topic, 1, config=TOPIC_CONFIG)
    t0 = (time.time_ns() - 6 * MIN) // MIN * MIN
    hosts = [generate(300, t0, 4 * MIN, clients=100, seed=60 + h) for h in range(6)]
    msgs = [m for h, t in enumerate(hosts) for m in by_time(t, f"b{h}", t0, 24 * S, phase_ns=4 * h * S)]
    send(kafka_bootstrap, topic, msgs, {f"b{h}": 0 for h in range(6)})

    rows, fig, _ = run(kafka_bootstrap, topic, catalog)
    assert fig["records_out_of_order"] == fig["late_records"] == 0
    assert per_minute(rows) == expected_per_minute(*hosts)


def test_a_backlog_after_a_hosts_own_outage_counts_in_its_minutes_while_they_are_open(
        kafka_bootstrap: str, catalog: Path) -> None:
    """Three hosts share a partition; one loses its broker for three minutes and spools, then its
    backlog arrives after the others' messages of those minutes. With --idle-s above the outage its
    minutes wait for it and every record counts in its own minute; with the default (60 s) they
    close without it and the backlog is counted as late, per host, visibly."""
    topic = f"et-backlog-{uuid.uuid4().hex[:8]}"
    ensure_topic({"bootstrap.servers": kafka_bootstrap}, topic, 1, config=TOPIC_CONFIG)
    t0 = (time.time_ns() - 8 * MIN) // MIN * MIN
    hosts = [generate(400, t0, 6 * MIN, clients=100, seed=80 + h) for h in range(3)]
    msgs = []
    for h, t in enumerate(hosts):
        for at, host, m in by_time(t, f"o{h}", t0, 2 * S, phase_ns=h * S // 3):
            if h == 2 and t0 + 2 * MIN <= at < t0 + 5 * MIN:
                at = t0 + 5 * MIN + at % S  # spooled: sent when its broker is back, at minute 5
            msgs.append((at, host, m))
    send(kafka_bootstrap, topic, msgs, {f"o{h}": 0 for h in range(3)})

    rows, fig, _ = run(kafka_bootstrap, topic, catalog, "--idle-s", "300")
    assert fig["records_out_of_order"] == fig["late_records"] == 0
    assert per_minute(rows) == expected_per_minute(*hosts)

    rows, fig, events = run(kafka_bootstrap, topic, catalog)  # --idle-s 60: the minutes close without o2
    late = [e for e in events if e["event"] == "records_out_of_order"]
    assert fig["records_out_of_order"] > 0 and {e["origin"] for e in late} == {"o2/eth0"}
    counted = sum(per_minute(rows).values())
    assert counted + fig["records_out_of_order"] == sum(t.n for t in hosts)  # counted, or late and said


def test_a_backlog_is_read_in_bounded_transactions_with_its_partitions_side_by_side(
        kafka_bootstrap: str, catalog: Path) -> None:
    """Six minutes of four hosts' traffic read as a backlog: one host alone on partition 0, three
    sharing partition 1, so that partition 0 covers three times the event time per message. Read
    with transactions of at most 20,000 records and partitions kept within 10 s of event time of
    each other, stage one waits (for its transaction, for stage two) and partition 0 waits for
    partition 1; every record is counted in its minute, none late, as when read all at once."""
    topic = f"et-backlog-{uuid.uuid4().hex[:8]}"
    ensure_topic({"bootstrap.servers": kafka_bootstrap}, topic, 2, config=TOPIC_CONFIG)
    t0 = (time.time_ns() - 8 * MIN) // MIN * MIN
    hosts = [generate(6000, t0, 6 * MIN, clients=300, seed=80 + h) for h in range(4)]
    msgs = [m for h, t in enumerate(hosts) for m in by_time(t, f"bl{h}", t0, 5 * S, phase_ns=h * S)]
    send(kafka_bootstrap, topic, msgs, {"bl0": 0, "bl1": 1, "bl2": 1, "bl3": 1})
    total = sum(t.n for t in hosts)
    biggest = max(int(np.bincount((t.columns["ts_ns"] - t0) // (5 * S)).max()) for t in hosts)  # one message's

    rows, fig, _ = run(kafka_bootstrap, topic, catalog, "--commit-records", "20000", "--align-s", "10")
    assert fig["records_in"] == total
    assert fig["records_out_of_order"] == fig["late_records"] == 0
    assert per_minute(rows) == expected_per_minute(*hosts)
    # each transaction read at most its 20,000 records and the message that crossed them
    assert fig["transactions"] >= total / (20000 + 2 * biggest)
    assert fig["intake_waits"] > 0
    assert fig["partitions_held"] > 0, fig


def test_quiet_hosts_tiny_messages_go_only_where_they_have_rows(kafka_bootstrap: str, catalog: Path) -> None:
    """Three quiet hosts sending a message per 100 ms of their traffic (a record or two each) on one
    partition, re-keyed over six: a repartition partition gets a message only where a message has
    rows, and each source's progress once per commit, not an empty message per input message and
    partition as before; every record still counts in its minute, none late."""
    import subprocess

    from tests.support.helpers import read_messages

    topic = f"et-quiet-{uuid.uuid4().hex[:8]}"
    ensure_topic({"bootstrap.servers": kafka_bootstrap}, topic, 1, config=TOPIC_CONFIG)
    t0 = (time.time_ns() - 5 * MIN) // MIN * MIN
    hosts = [generate(200, t0, 3 * MIN, clients=50, seed=90 + h) for h in range(3)]
    msgs = [m for h, t in enumerate(hosts) for m in by_time(t, f"q{h}", t0, S // 10, phase_ns=h * S // 30)]
    send(kafka_bootstrap, topic, msgs, {f"q{h}": 0 for h in range(3)})
    app = f"t-et-{uuid.uuid4().hex[:6]}"
    p = subprocess.run(usage_cmd(kafka_bootstrap, topic, app, f"{topic}.usage", catalog, "--partitions", "6"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    fig = final_figures(log_events(p.stderr))
    rows = [r for r in (json.loads(line) for line in p.stdout.splitlines()) if r["window_s"] == 60]
    assert fig["records_out_of_order"] == fig["late_records"] == 0
    assert per_minute(rows) == expected_per_minute(*hosts)
    repartition = read_messages(kafka_bootstrap, f"{app}.repartition")
    with_rows = sum(1 for _k, v, _h in repartition if v and len(v) > 64)  # an empty batch is a few bytes
    assert fig["batches_rekeyed"] == len(msgs)
    assert len(repartition) - with_rows <= 6 * fig["transactions"]  # progress: a source per partition and commit
    assert len(repartition) < 6 * len(msgs) / 2, (len(repartition), len(msgs))
