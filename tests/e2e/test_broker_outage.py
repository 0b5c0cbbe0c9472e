"""Faults: the broker stops in the middle of a stream and comes back.

A broker of their own (stopping the suite's would disturb the rest of it), up
at the start of each test. Traffic flows before, during and after the outage; the
producer keeps draining the ring; nothing the buffer budget covers is lost,
what exceeds it is counted exactly, and nothing is duplicated.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from pktstream.runtime.kafka_local import LocalKafka
from tests.support.helpers import NetnsHost, running_broker
from tests.support.producer_proc import ProducerProcess, audit_runs, private_dir, single_run_audit

pytestmark = [pytest.mark.kernel, pytest.mark.kafka]

OUTAGE_PORT = int(os.environ.get("PKTSTREAM_TEST_OUTAGE_PORT", "19300"))


@pytest.fixture(scope="module")
def _outage_broker(root: None) -> Iterator[LocalKafka]:
    with running_broker(OUTAGE_PORT, "outage") as lk:
        yield lk


@pytest.fixture
def own_broker(_outage_broker: LocalKafka) -> LocalKafka:
    """A broker apart from the suite's, shared by this module's tests (each stops and starts it; each
    has topics of its own): up at the start of every test, whatever the one before left."""
    _outage_broker.up()
    return _outage_broker


def burst(host: NetnsHost, n: int, tag: int) -> None:
    frame = bytes(Ether(dst=host.host_mac, src=host.peer_mac) / IP(src=host.peer_ip, dst="198.18.0.50")
                  / UDP(sport=tag, dport=7) / Raw(b"o" * 16))
    host.send_frames([frame] * n)



@pytest.mark.parametrize(
    ("outage_s", "queue_kb", "spool_bytes", "during"),
    [
        (40, 65536, 1 << 30, 6_000),  # the memory queue covers a 40 s outage
        (15, 1024, 1 << 30, 60_000),  # memory queue too small: the disk spool takes the rest
        (15, 1024, 400_000, 60_000),  # spool too small as well: the excess is counted, exactly
    ],
    ids=["memory-40s", "spool-15s", "spool-full-15s"],
)
def test_outage(own_broker: LocalKafka, make_host: Callable[..., NetnsHost], outage_s: int, queue_kb: int,
                spool_bytes: int, during: int) -> None:
    host = make_host()
    bootstrap = own_broker.bootstrap
    topic, stats = f"outage-{uuid.uuid4().hex[:8]}", f"outage-stats-{uuid.uuid4().hex[:8]}"
    prod = ProducerProcess("--interface", host.host_if, "--bootstrap-servers", bootstrap, "--topic", topic,
                           "--stats-topic", stats, "--payload-bytes", "0", "--batch-records", "2000",
                           "--queue-max-kbytes", str(queue_kb), "--spool-max-bytes", str(spool_bytes),
                           "--no-adaptive-sampling", "--stats-publish", "1")
    prod.wait_event("producer_started")
    burst(host, 1_000, 1)
    time.sleep(1.5)
    own_broker.down()
    t0 = time.monotonic()
    for i in range(6):  # traffic all through the outage
        burst(host, during // 6, 10 + i)
        time.sleep(outage_s / 6)
    time.sleep(max(0.0, outage_s - (time.monotonic() - t0)))
    own_broker.up()
    burst(host, 1_000, 2)
    time.sleep(3)
    # exit code 3: some records were given up (here: the spool overflowed), as documented
    assert prod.stop(timeout=180) == (3 if spool_bytes == 400_000 else 0)
    sent = 2_000 + during
    stopped = prod.event("producer_stopped")
    run = single_run_audit(bootstrap, topic, stats)
    rep = run["report"]
    assert rep["final"] and rep["packets_seen"] == sent and rep["ringbuf_full"] == 0
    assert run["duplicates"] == 0 and run["unexplained"] == 0
    assert sent == run["unique"] + rep["records_failed"] + rep["records_pending"]
    if spool_bytes == 400_000:
        assert rep["records_failed"] > 0  # the spool overflowed; counted, not silent
        assert run["unique"] + rep["records_failed"] == sent
    else:
        assert run["unique"] == sent and run["missing"] == 0
        assert rep["records_failed"] == 0 and rep["records_pending"] == 0
    if queue_kb == 1024:
        assert stopped["records_replayed"] > 0  # the spool was used and emptied


def test_stopped_while_the_broker_is_away_the_next_run_delivers_and_the_audit_balances(
        own_broker: LocalKafka, make_host: Callable[..., NetnsHost]) -> None:
    """SIGTERM during an outage: the producer does not wait out its delivery timeouts for a broker
    that is gone; the queue and the final report go to the spool, the run is marked clean, and the
    next run (the broker back) delivers both, so that the audit balances the first run exactly."""
    host = make_host()
    bootstrap = own_broker.bootstrap
    topic, stats = f"outage-stop-{uuid.uuid4().hex[:8]}", f"outage-stop-stats-{uuid.uuid4().hex[:8]}"
    spool = Path(private_dir("spool"))
    env = {"PKTSTREAM_SPOOL_DIR": str(spool), "PKTSTREAM_HOME": private_dir("state")}  # both runs'
    args = ("--interface", host.host_if, "--bootstrap-servers", bootstrap, "--topic", topic, "--stats-topic", stats,
            "--payload-bytes", "0", "--batch-records", "500", "--no-adaptive-sampling", "--stats-publish", "1")
    first = ProducerProcess(*args, env=env)
    run1 = first.wait_event("producer_started")["run_id"]
    burst(host, 1_000, 1)
    time.sleep(1.5)
    own_broker.down()
    burst(host, 3_000, 2)
    time.sleep(2)
    t0 = time.monotonic()
    assert first.stop(timeout=120) == 0
    took = time.monotonic() - t0
    print(f"stopped {took:.1f} s after SIGTERM with the broker away")
    assert took < 30, f"the stop took {took:.0f} s with the broker away"
    assert first.event("kafka_down_at_shutdown")["queued"] > 0
    first.event("final_report_spooled")
    stopped = first.event("producer_stopped")
    assert stopped["records_failed"] == 0 and stopped["undelivered_messages"] == 0
    assert stopped["records_spooled"] == 3_000  # the outage's records, all on disk
    assert list(spool.glob("*.batch"))

    own_broker.up()
    second = ProducerProcess(*args, env=env)
    run2 = second.wait_event("producer_started")["run_id"]
    deadline = time.monotonic() + 60
    while list(spool.glob("*.batch")):  # each file goes once Kafka has acknowledged it
        assert time.monotonic() < deadline, "the second run never emptied the spool"
        time.sleep(0.5)
    assert second.stop(timeout=120) == 0
    assert second.event("producer_stopped")["records_replayed"] == 3_000
    runs = {x["run_id"]: x for x in audit_runs(bootstrap, topic, stats)}
    assert set(runs) == {run1, run2}
    a = runs[run1]
    assert a["report"]["final"] and a["report"]["packets_seen"] == 4_000
    assert a["unique"] == 4_000 and a["duplicates"] == 0 and a["missing"] == 0 and a["unexplained"] == 0
    assert a["exact"], a
    assert runs[run2]["exact"] and runs[run2]["report"]["packets_seen"] == 0
