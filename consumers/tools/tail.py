"""``pktstream tail``: the packet topic as JSON lines (or ``pktstream relay``'s topic: one record per
message in the schema-registry wire format, its schema looked up in the registry).

From the beginning, from a time, or from the end (following, the default).
A message that cannot be decoded is reported on stderr, counted and skipped.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, TextIO

import structlog
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from pktstream.consumers.engine.deadletter import DeadLetters
from pktstream.consumers.engine.wirein import WireReader
from pktstream.schemas import headers as H
from pktstream.schemas import wire
from pktstream.schemas.decode import DecodeError, iter_container, message_headers, present

log = structlog.get_logger("pktstream.tail")


@cache
def _relayed_schema() -> Any:
    import fastavro

    from pktstream.consumers.relay.relay import relayed_schema

    return fastavro.parse_schema(relayed_schema())


@dataclass
class TailStats:
    messages: int = 0
    records: int = 0
    corrupt: int = 0


def tail(
    conf: Mapping[str, Any],
    topic: str,
    start: str = "end",
    since_ms: int | None = None,
    follow: bool = True,
    max_records: int | None = None,
    payload: str = "text",
    out: TextIO = sys.stdout,
    idle_timeout_s: float = 5.0,
    should_stop: Callable[[], bool] = lambda: False,
    dead_letter_topic: str | None = None,
    wire_reader: WireReader | None = None,
) -> TailStats:
    """Print records as JSON lines; returns what was read.

    Without ``follow`` it stops once every partition is read to its end (as
    of start), or after ``idle_timeout_s`` without messages.
    """
    consumer = Consumer({
        **conf,
        "group.id": f"pktstream-tail-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    })
    stats = TailStats()
    wire_reader = wire_reader or WireReader()
    dead = DeadLetters(conf, dead_letter_topic, "pktstream-tail") if dead_letter_topic else None
    try:
        md = consumer.list_topics(topic, timeout=10)
        tmd = md.topics.get(topic)
        if tmd is None or tmd.error is not None:
            raise KafkaException(f"topic {topic!r} not found" + (f": {tmd.error}" if tmd else ""))
        parts = [TopicPartition(topic, p) for p in sorted(tmd.partitions)]
        if start == "time" and since_ms is not None:
            parts = consumer.offsets_for_times([TopicPartition(topic, p.partition, since_ms) for p in parts],
                                               timeout=10)
        else:
            for p in parts:
                p.offset = OFFSET_BEGINNING if start == "beginning" else OFFSET_END
        consumer.assign(parts)
        at_eof: set[int] = set()
        idle = 0.0
        while not should_stop():
            msg = consumer.poll(0.5)
            if msg is None:
                idle += 0.5
                if not follow and idle >= idle_timeout_s:
                    break
                continue
            idle = 0.0
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_eof.add(msg.partition() or 0)
                    if not follow and len(at_eof) >= len(parts):
                        break
                    continue
                raise KafkaException(err)
            at_eof.discard(msg.partition())
            stats.messages += 1
            hdr = message_headers(msg)
            try:
                value = msg.value()
                if wire.framed(value):  # a record of pktstream relay's topic: its host and interface in it
                    assert value is not None
                    recs = wire_reader.avro_records(value, "relayed", _relayed_schema())
                    lines = [json.dumps({"host": r.pop("host"), "interface": r.pop("interface"),
                                         **present(r, payload)}, separators=(",", ":"), default=str)
                             for r in recs]
                else:
                    metadata, records = iter_container(value)
                    host = hdr.get(H.HOST) or metadata.get(H.HOST, "")
                    iface = hdr.get(H.INTERFACE) or metadata.get(H.INTERFACE, "")
                    # the message's lines are written once it decoded whole: a message that fails half
                    # way is set aside, not half shown
                    lines = [json.dumps({"host": host, "interface": iface, **present(rec, payload)},
                                        separators=(",", ":"), default=str) for rec in records]
            except Exception as e:  # DecodeError, or anything a hostile record makes present() raise
                stats.corrupt += 1
                reason = str(e) if isinstance(e, DecodeError) else f"{type(e).__name__}: {e}"[:500]
                if dead is not None:
                    dead.put(msg, reason)
                else:
                    log.warning("message_corrupt", topic=topic, partition=msg.partition(), offset=msg.offset(),
                                reason=reason)
                continue
            for line in lines:
                out.write(line + "\n")
                stats.records += 1
                if max_records is not None and stats.records >= max_records:
                    out.flush()
                    return stats  # the finally clause closes the consumer and the dead letters
            out.flush()
    finally:
        consumer.close()
        if dead is not None:
            dead.close()
    return stats
