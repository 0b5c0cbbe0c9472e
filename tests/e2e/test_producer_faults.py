"""The producer's own fault paths against a real broker: a spooled batch the topic refuses for good
leaves the spool (counted with its cause) instead of blocking the batches behind it, and a final
stats report Kafka did not take is kept in the spool and delivered by the next run."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest

from pktstream.producer.publish import Publisher
from pktstream.producer.spool import Spool
from pktstream.runtime.kafka import ensure_topic
from pktstream.schemas import headers as H
from tests.support.helpers import read_messages

pytestmark = [pytest.mark.kafka]


def replay_until_empty(pub: Publisher, spool: Spool, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while (len(spool) or spool.inflight) and time.monotonic() < deadline:
        pub.replay()
        pub.poll(0.2)
    assert not len(spool) and not spool.inflight, "the spool did not empty"


def test_a_batch_the_topic_refuses_for_good_leaves_the_spool(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"faults-{uuid.uuid4().hex[:8]}"
    conf = {"bootstrap.servers": kafka_bootstrap}
    ensure_topic(conf, topic, 1, config={"max.message.bytes": "2000"})  # lowered during an outage, say
    spool = Spool(tmp_path / "spool", 1 << 20)
    run = [(H.RUN_ID, b"run-1")]
    spool.put(topic, b"host-a", run, b"x" * 50_000, records=500)  # over the topic's limit
    spool.put(topic, b"host-a", run, b"small batch", records=3)
    pub = Publisher({**conf, "compression.type": "none"}, topic, spool=spool, run_id="run-1")
    pub.stats.records_spooled = 503  # as this run's publish() left them
    replay_until_empty(pub, spool)
    pub.flush(10)
    assert [m[1] for m in read_messages(kafka_bootstrap, topic)] == [b"small batch"]  # not blocked behind it
    assert (pub.stats.records_failed, pub.stats.records_delivered, pub.stats.records_spooled) == (500, 3, 0)
    assert spool.dropped_by_cause == {"rejected_msg_size_too_large": 500}


def test_a_final_report_kafka_did_not_take_is_delivered_by_the_next_run(kafka_bootstrap: str,
                                                                           tmp_path: Path) -> None:
    stats_topic = f"faults-stats-{uuid.uuid4().hex[:8]}"
    ensure_topic({"bootstrap.servers": kafka_bootstrap}, stats_topic, 1)
    with socket.socket() as s:  # a port with no broker behind it: Kafka is away at shutdown
        s.bind(("127.0.0.1", 0))
        away = f"127.0.0.1:{s.getsockname()[1]}"
    spool = Spool(tmp_path / "spool", 1 << 20)
    down = Publisher({"bootstrap.servers": away, "message.timeout.ms": 1500}, "packets", spool=spool,
                     run_id="run-1")
    outcome = down.publish_aux(stats_topic, b"host-a/run-1", b"final report of run-1")
    down.flush(3)
    assert outcome == {"delivered": False}
    assert down.spool_aux(stats_topic, b"host-a/run-1", b"final report of run-1")
    spool.close()
    spool = Spool(tmp_path / "spool", 1 << 20)  # the next run, Kafka back
    up = Publisher({"bootstrap.servers": kafka_bootstrap}, "packets", spool=spool, run_id="run-2")
    replay_until_empty(up, spool)
    assert [(m[0], m[1]) for m in read_messages(kafka_bootstrap, stats_topic)] == [
        (b"host-a/run-1", b"final report of run-1")]


def test_a_live_batch_refused_beside_a_too_large_one_is_delivered(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The broker refuses a whole request for one batch over the topic's limit; the small batches
    that travelled with it are retried (alone, from the spool) and delivered, the big one counted."""
    topic = f"faults-live-{uuid.uuid4().hex[:8]}"
    conf = {"bootstrap.servers": kafka_bootstrap}
    ensure_topic(conf, topic, 1, config={"max.message.bytes": "2000"})
    spool = Spool(tmp_path / "spool", 1 << 20)
    pub = Publisher({**conf, "compression.type": "none", "linger.ms": 200}, topic, spool=spool, run_id="run-1")
    pub.publish(b"host-a", b"small one", [(H.RUN_ID, b"run-1")], 2)
    pub.publish(b"host-a", b"x" * 50_000, [(H.RUN_ID, b"run-1")], 500)  # one request with its neighbours
    pub.publish(b"host-a", b"small two", [(H.RUN_ID, b"run-1")], 3)
    pub.flush(10)
    replay_until_empty(pub, spool)
    pub.flush(10)
    assert sorted(m[1] for m in read_messages(kafka_bootstrap, topic)) == [b"small one", b"small two"]
    assert (pub.stats.records_delivered, pub.stats.records_failed) == (5, 500)
    assert spool.dropped_by_cause == {"rejected_msg_size_too_large": 500}
