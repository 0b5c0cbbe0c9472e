"""A corrupt, truncated or wrongly-encoded message is set aside with its reason, counted, and
the records around it are still read."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pktstream.consumers.tools.tail import tail
from pktstream.producer.capture import empty_records
from pktstream.runtime.kafka import ensure_topic
from pktstream.schemas import load_schema_json
from pktstream.schemas.container import ContainerWriter
from pktstream.schemas.packets import to_columns

pytestmark = pytest.mark.kafka


def test_bad_messages_go_to_the_dead_letter_topic(kafka_bootstrap: str) -> None:
    conf = {"bootstrap.servers": kafka_bootstrap}
    topic, dlq = f"dl-{uuid.uuid4().hex[:8]}", f"dl-{uuid.uuid4().hex[:8]}.dlq"
    ensure_topic(conf, topic, 1)
    good = ContainerWriter(load_schema_json("packet")).container(to_columns(empty_records(0, 3), 0, 0), 3)
    bad = [(b"not avro at all", "not an Avro object container"), (good[:-40], "ends early"), (b"", "empty message")]
    p = Producer(conf)
    p.produce(topic, good, key=b"h")
    for value, _ in bad:
        p.produce(topic, value, key=b"h", headers=[("pktstream.host", b"h")])
    p.produce(topic, good, key=b"h")
    assert p.flush(30) == 0

    out = io.StringIO()
    stats = tail(conf, topic, start="beginning", follow=False, out=out, dead_letter_topic=dlq)
    assert (stats.messages, stats.records, stats.corrupt) == (5, 6, 3)
    assert len(out.getvalue().splitlines()) == 6

    c = Consumer({**conf, "group.id": uuid.uuid4().hex, "enable.auto.commit": False})
    c.assign([TopicPartition(dlq, 0, 0)])
    got = []
    while len(got) < 3:
        m = c.poll(10)
        assert m is not None, "dead letters missing"
        got.append(m)
    c.close()
    for m, (value, why) in zip(got, bad, strict=True):
        h = {k: v.decode() for k, v in m.headers()}
        assert (m.value() or b"") == value and m.key() == b"h"
        assert h["pktstream.dlq.reason"] and why in h["pktstream.dlq.reason"]
        assert h["pktstream.dlq.topic"] == topic and h["pktstream.dlq.consumer"] == "pktstream-tail"
        assert h["pktstream.host"] == "h"  # original headers kept
    assert [int(json.loads(x)["seq"]) for x in out.getvalue().splitlines()] == [0, 1, 2, 0, 1, 2]
