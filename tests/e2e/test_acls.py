"""Least privilege on a real broker with SCRAM users and Kafka's StandardAuthorizer: each role
(runtime/roles.py) does its job end to end with its own credentials, read from a properties file,
and is refused what it may not do."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from pktstream.runtime.kafka_local import LocalKafka, setup_roles
from tests.support.helpers import NetnsHost, running_broker
from tests.support.producer_proc import PKTSTREAM, ProducerProcess

pytestmark = [pytest.mark.kafka]

PORT = int(os.environ.get("PKTSTREAM_TEST_ACL_PORT", "19320"))


@pytest.fixture(scope="module")
def acl_broker(root: None) -> Iterator[LocalKafka]:
    with running_broker(PORT, "acl", sasl_port=PORT + 2, sasl_password=secrets.token_hex(12), authorizer=True) as lk:
        yield lk


def props(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")


def write_refused(lk: LocalKafka, creds: Path, topic: str) -> str:
    """The error a role's principal gets producing to a topic (it must get one)."""
    errors: list[KafkaError] = []
    p = Producer({"bootstrap.servers": lk.sasl_bootstrap, **props(creds), "message.timeout.ms": 10000})
    p.produce(topic, b"not allowed", on_delivery=lambda err, _msg: errors.append(err))
    p.flush(15)
    assert errors and errors[0] is not None, f"{creds.stem} could write {topic}"
    return str(errors[0].name())


def read_refused(lk: LocalKafka, creds: Path, topic: str) -> str:
    c = Consumer({"bootstrap.servers": lk.sasl_bootstrap, **props(creds), "group.id": f"pktstream-t-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    t = c.list_topics(topic, timeout=10).topics.get(topic)
    if t is not None and t.error is not None:  # not even described to this principal
        c.close()
        return str(t.error.name())
    c.assign([TopicPartition(topic, 0, 0)])  # no group: the topic itself is what is refused
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            err = m.error()
            assert err is not None, f"{creds.stem} could read {topic}"
            if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                continue  # the group it has no right to either; what matters is the topic
            return str(err.name())
    finally:
        c.close()
    raise AssertionError(f"{creds.stem} reading {topic}: neither a record nor an error")


@pytest.mark.kernel
def test_each_role_does_its_job_and_nothing_else(acl_broker: LocalKafka, make_host: Callable[..., NetnsHost],
                                                 tmp_path: Path) -> None:
    topic, stats = f"acl-{uuid.uuid4().hex[:8]}", f"acl-stats-{uuid.uuid4().hex[:8]}"
    creds = setup_roles(acl_broker, apps=("alerts",), packets=topic, stats=stats)
    assert sorted(creds) == ["alerts", "producer", "reader"]
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in creds.values())
    host = make_host()
    # the producer: captures and publishes with its own principal
    prod = ProducerProcess("--interface", host.host_if, "--bootstrap-servers", acl_broker.sasl_bootstrap,
                           "--topic", topic, "--stats-topic", stats, "--kafka-config", str(creds["producer"]))
    prod.wait_event("producer_started")
    frame = bytes(Ether(dst=host.host_mac, src=host.peer_mac) / IP(src=host.peer_ip, dst="198.18.0.9")
                  / UDP(sport=5, dport=6))
    host.send_frames([frame] * 40)
    assert prod.stop() == 0
    assert prod.event("producer_stopped")["records_delivered"] == 40
    # the alerts app: reads the packet topic, runs its transactions, writes its own topics
    app = subprocess.run([PKTSTREAM, "alerts", "--bootstrap-servers", acl_broker.sasl_bootstrap, "--topic", topic,
                          "--from-beginning", "--until-end", "--output", "none",
                          "--metrics-port", "0", "--log-format", "json", "--kafka-config", str(creds["alerts"])],
                         capture_output=True, text=True, timeout=300)
    assert app.returncode == 0, app.stderr[-3000:]
    assert "AUTHORIZATION" not in app.stderr.upper()
    # the reader: tail reads what the producer wrote
    tail = subprocess.run([PKTSTREAM, "tail", "--bootstrap-servers", acl_broker.sasl_bootstrap, "--topic", topic,
                           "--from-beginning", "--no-follow", "--kafka-config", str(creds["reader"])],
                          capture_output=True, text=True, timeout=120)
    assert tail.returncode == 0, tail.stderr[-2000:]
    assert len(tail.stdout.splitlines()) == 40
    # and what each may not do
    assert read_refused(acl_broker, creds["producer"], topic) == "TOPIC_AUTHORIZATION_FAILED"
    assert write_refused(acl_broker, creds["producer"], "pktstream.alerts") == "TOPIC_AUTHORIZATION_FAILED"
    assert write_refused(acl_broker, creds["alerts"], topic) == "TOPIC_AUTHORIZATION_FAILED"
    assert write_refused(acl_broker, creds["reader"], stats) == "TOPIC_AUTHORIZATION_FAILED"
    assert group_refused(acl_broker, creds["reader"], topic, "pktstream-alerts") == "GROUP_AUTHORIZATION_FAILED"
    state = next(t for t in acl_broker_topics(acl_broker) if t.endswith(".state"))  # the replay's own app id
    assert state.startswith("pktstream-alerts")
    assert read_refused(acl_broker, creds["reader"], state) == "TOPIC_AUTHORIZATION_FAILED"


def group_refused(lk: LocalKafka, creds: Path, topic: str, group: str) -> str:
    """The error a principal gets joining a consumer group it may not use (it must get one)."""
    c = Consumer({"bootstrap.servers": lk.sasl_bootstrap, **props(creds), "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is not None:
                return str(m.error().name())
            assert m is None, f"{creds.stem} read {topic} in group {group}"
    finally:
        c.close()
    raise AssertionError(f"{creds.stem} joining {group}: no error")


def acl_broker_topics(lk: LocalKafka) -> list[str]:
    from confluent_kafka.admin import AdminClient

    return sorted(AdminClient({"bootstrap.servers": lk.bootstrap}).list_topics(timeout=10).topics)
