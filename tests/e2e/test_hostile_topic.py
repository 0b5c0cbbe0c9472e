"""One bad host cannot blind the fleet: a packet topic holding valid records from three hosts and
every hostile message of tests/support/hostile.py, read by usage, alerts, query, export and tail
on a broker left at Kafka's default message.max.bytes. Each process stays up within a stated
memory bound, every valid record is counted, each hostile message is dead-lettered or skipped
and counted. Also: repartition messages and dead letters larger than their topics allow."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer

from pktstream.runtime.kafka import ensure_topic, max_message_bytes
from tests.support.apps import PKTSTREAM, alerts_cmd, final_figures, log_events, usage_cmd
from tests.support.helpers import read_messages, running_broker, wait_peak_rss_mb
from tests.support.hostile import hostile, record, valid
from tests.support.ocsf import assert_valid
from tests.support.traffic import CATALOG as GEN_CATALOG
from tests.support.traffic import containers, fleet, generate, http_get, packets

pytestmark = pytest.mark.kafka

PORT = int(os.environ.get("PKTSTREAM_TEST_DEFAULT_LIMITS_PORT", "19320"))
RSS_BOUND_MB = 512  # a consumer or tool reading every hostile message (measured: 220 to 350 MB)
PACKET_TOPIC_CONFIG = {"max.message.bytes": str(64 << 20), "message.timestamp.type": "LogAppendTime"}


@pytest.fixture(scope="module")
def default_kafka() -> Iterator[str]:
    """A broker of its own with Kafka's default message.max.bytes (1 MB): no internal topic may
    depend on a generous broker."""
    with running_broker(PORT, "default-limits", message_max_bytes=None) as lk:
        yield lk.bootstrap


def run_measured(cmd: list[str], timeout_s: float = 300) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak RSS in MB) of a command (its VmHWM, read every 20 ms)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err)
        peak = wait_peak_rss_mb(p, timeout_s)
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"), peak


def load_topic(bootstrap: str, topic: str) -> tuple[int, list[tuple[str, bytes]]]:
    """Valid messages of three hosts with a hostile one after each of the first, on three
    partitions; (valid records, the hostile messages)."""
    ensure_topic({"bootstrap.servers": bootstrap}, topic, 3, config=PACKET_TOPIC_CONFIG)
    t0 = time.time_ns() - 400 * 10**9
    hosts = [(f"host{h}", generate(110, t0, 180 * 10**9, clients=100, seed=20 + h, responses=True))
             for h in range(3)]
    good = fleet(hosts, batch=150)  # in time order, as a live fleet sends
    total = sum(t.n for _, t in hosts)
    weird = [record(i, t0 + 200 * 10**9 + i) for i in range(10)]
    good.append(("\udcff\udcfeweird", valid(weird, "weird")))  # a host header that is not UTF-8
    total += len(weird)
    bad = hostile(t0 + 100 * 10**9)
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 64 << 20, "enable.idempotence": True})
    for i, (host, m) in enumerate(good):
        hdr = [("pktstream.host", host.encode(errors="surrogateescape")), ("pktstream.interface", b"eth0")]
        part = {"host1": 1, "host2": 2}.get(host, 0)
        p.produce(topic, m, key=host.encode(errors="surrogateescape"), partition=part, headers=hdr)
        if i < len(bad):
            name, value = bad[i]
            p.produce(topic, value, key=b"evil", partition=i % 3,
                      headers=[("pktstream.host", b"evil"), ("hostile", name.encode())])
    assert len(good) > len(bad)
    assert p.flush(60) == 0
    return total, bad


def test_hostile_messages_stop_nothing_and_hide_no_valid_record(default_kafka: str, tmp_path: Path) -> None:
    topic = f"hostile-{uuid.uuid4().hex[:8]}"
    total, bad = load_topic(default_kafka, topic)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(GEN_CATALOG))
    names = sorted(n for n, _ in bad)

    # usage: every valid packet counted, each hostile message dead-lettered with its reason
    app = f"t-hu-{uuid.uuid4().hex[:6]}"
    rc, out, err, rss = run_measured(usage_cmd(default_kafka, topic, app, f"{topic}.usage", catalog,
                                               "--dead-letter-topic", f"{topic}.usage.dlq"))
    assert rc == 0, err[-3000:]
    fig = final_figures(log_events(err))
    assert (fig["records_in"], fig["undecodable"], fig["dead_lettered"]) == (total, len(bad), len(bad))
    assert fig["records_clock_skewed"] == fig["records_out_of_order"] == fig["late_records"] == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert sum(r["packets"] + (r["response_packets"] or 0) for r in rows if r["window_s"] == 60) == total
    dlq = read_messages(default_kafka, f"{topic}.usage.dlq")
    assert sorted(h["hostile"].decode() for _k, _v, h in dlq) == names
    by_name = dict(bad)
    for _k, v, h in dlq:
        assert h["pktstream.dlq.reason"] and h["pktstream.dlq.topic"].decode() == topic
        assert v == by_name[h["hostile"].decode()]  # unchanged: the dead-letter topic takes the largest
    assert rss < RSS_BOUND_MB, f"usage peak RSS {rss} MB"
    print(f"usage: {total} records, {len(bad)} dead-lettered, peak RSS {rss} MB")

    # alerts: the same, and the benign traffic raises nothing
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"detectors": {}}))
    rc, out, err, rss = run_measured(alerts_cmd(default_kafka, topic, f"t-ha-{uuid.uuid4().hex[:6]}",
                                                f"{topic}.alerts", rules_file, catalog,
                                                "--dead-letter-topic", f"{topic}.alerts.dlq"))
    assert rc == 0, err[-3000:]
    fig = final_figures(log_events(err))
    assert (fig["records_in"], fig["undecodable"], fig["dead_lettered"]) == (total, len(bad), len(bad))
    assert_valid([json.loads(line) for line in out.splitlines()])
    assert len(read_messages(default_kafka, f"{topic}.alerts.dlq")) == len(bad)
    assert rss < RSS_BOUND_MB, f"alerts peak RSS {rss} MB"
    print(f"alerts: peak RSS {rss} MB")

    reader = ["--bootstrap-servers", default_kafka, "--topic", topic]
    # query: every valid record in the table; the skipped messages said
    rc, out, err, rss = run_measured([PKTSTREAM, "query", "SELECT count(*) AS n, count(DISTINCT host) AS hosts "
                                      "FROM packets", *reader, "--format", "json"])
    assert rc == 0, err[-3000:]
    assert json.loads(out) == {"n": total, "hosts": 4}
    assert f"{len(bad)} corrupt message(s)" in err and rss < RSS_BOUND_MB, (err, rss)

    # export: every valid record written
    rc, out, err, rss = run_measured([PKTSTREAM, "export", *reader, "--format", "pcap", "-o",
                                      str(tmp_path / "out.pcap")])
    assert rc == 0, err[-3000:]
    assert f"{total:,} records written" in err and f"{len(bad)} corrupt message(s) skipped" in err, err
    assert rss < RSS_BOUND_MB

    # tail: every valid record a line; the stats report it is shown (no records), the rest skipped
    rc, out, err, rss = run_measured([PKTSTREAM, "tail", *reader, "--from-beginning", "--no-follow",
                                      "--payload", "none"])
    assert rc == 0, err[-3000:]
    assert len(out.splitlines()) == total
    assert f"{len(bad) - 1} corrupt message(s) skipped" in err and rss < RSS_BOUND_MB, (err, rss)


def test_repartition_messages_fit_a_topic_at_the_brokers_default_limit(default_kafka: str, tmp_path: Path) -> None:
    """20,000 requests with distinct 50-character paths in one message: 1.4 MB and more of
    repartition rows, into an internal topic that was left at the broker's 1 MB. They are split
    to fit (an over-limit message would abort the transaction at every retry: a livelock)."""
    conf = {"bootstrap.servers": default_kafka}
    topic = f"hostile-rp-{uuid.uuid4().hex[:8]}"
    ensure_topic(conf, topic, 1, config=PACKET_TOPIC_CONFIG)
    app = f"t-rp-{uuid.uuid4().hex[:6]}"
    ensure_topic(conf, f"{app}.repartition", 1)  # an existing internal topic at the broker's default
    assert max_message_bytes(conf, f"{app}.repartition") < 1_100_000
    t0 = time.time_ns() - 300 * 10**9
    n = 20_000
    reqs = packets([{"ts": t0 + i * 1_000_000, "src": f"10.9.{i >> 8 & 255}.{i & 255}", "dst": "10.1.0.10",
                     "sport": 40000 + i % 20000, "dport": 80, "flags": 0x18,
                     "payload": http_get(f"/{uuid.UUID(int=i).hex}{i:018d}")} for i in range(n)], payload_width=256)
    p = Producer({"bootstrap.servers": default_kafka, "message.max.bytes": 64 << 20})
    for m in containers(reqs, batch=n):
        p.produce(topic, m, key=b"gen", partition=0)
    assert p.flush(30) == 0
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"apis": []}))
    rc, out, err, _rss = run_measured(usage_cmd(default_kafka, topic, app, f"{topic}.usage", catalog))
    assert rc == 0, err[-3000:]
    events = log_events(err)
    fig = final_figures(events)
    assert fig["aborted"] == 0 and fig["records_in"] == n
    assert [e["topic"] for e in events if e["event"] == "internal_topic_limit_low"] == [f"{app}.repartition"]
    rows = [json.loads(line) for line in out.splitlines()]
    assert sum(r["requests"] for r in rows if r["window_s"] == 60) == n
    sizes = [len(v) for _k, v, _h in read_messages(default_kafka, f"{app}.repartition")]
    assert len(sizes) > 1 and max(sizes) < 1_048_588, sizes


def test_a_dead_letter_larger_than_its_topic_is_cut_to_fit(default_kafka: str, tmp_path: Path) -> None:
    conf = {"bootstrap.servers": default_kafka}
    topic = f"hostile-dl-{uuid.uuid4().hex[:8]}"
    ensure_topic(conf, topic, 1, config=PACKET_TOPIC_CONFIG)
    dlq = f"{topic}.dlq"
    ensure_topic(conf, dlq, 1)  # left at the broker's default: 1 MB
    big = dict(hostile(time.time_ns()))["1.6M_records_declared_with_65536_byte_payloads"]
    assert len(big) > 1_500_000
    t0 = time.time_ns() - 120 * 10**9
    p = Producer({"bootstrap.servers": default_kafka, "message.max.bytes": 64 << 20})
    p.produce(topic, valid([record(i, t0 + i) for i in range(5)], "h"), key=b"h")
    p.produce(topic, big, key=b"evil", headers=[("pktstream.host", b"evil")])
    p.produce(topic, valid([record(i, t0 + 10**9 + i) for i in range(5)], "h"), key=b"h")
    assert p.flush(30) == 0
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"apis": []}))
    rc, _out, err, _rss = run_measured(usage_cmd(default_kafka, topic, f"t-dl-{uuid.uuid4().hex[:6]}",
                                                 f"{topic}.usage", catalog, "--dead-letter-topic", dlq))
    assert rc == 0, err[-3000:]
    fig: dict[str, Any] = final_figures(log_events(err))
    assert (fig["records_in"], fig["dead_lettered"], fig["aborted"]) == (10, 1, 0)
    [(key, value, headers)] = read_messages(default_kafka, dlq)
    assert key == b"evil" and headers["pktstream.host"] == b"evil"
    assert int(headers["pktstream.dlq.truncated"]) == len(big) and value == big[: len(value)]
    assert len(value) < 1_048_588 and b"payload_bytes" in headers["pktstream.dlq.reason"]
