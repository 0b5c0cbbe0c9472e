"""Dead letters: a message a consumer cannot decode is set aside, with the reason, and counted.

The original key, value and headers go to the dead-letter topic unchanged, plus headers saying
where the message came from and why it was set aside, so that it can be inspected or replayed
(a value larger than the dead-letter topic accepts is cut to fit, and a header gives its size).
Processing goes on with the next message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import structlog
from confluent_kafka import KafkaError, Message, Producer

from pktstream.consumers.engine.topics import MAX_SNAPSHOT
from pktstream.runtime.kafka import ensure_topic, max_message_bytes
from pktstream.schemas import headers as H

log = structlog.get_logger("pktstream.deadletter")


DLQ_HEADROOM = 64 << 10  # room left in a dead letter for its key, headers and the record batch's framing


class DeadLetters:
    def __init__(self, conf: Mapping[str, Any], topic: str, consumer: str, create: bool = True,
                 producer: Producer | None = None, max_bytes: int = MAX_SNAPSHOT) -> None:
        """``producer``: a transactional producer of the caller's, so that a dead letter is written
        in the same transaction as the consumer's offsets (exactly once); else one of our own.
        ``max_bytes``: the max.message.bytes the topic is created with (at least the packet
        topic's); the limit the topic really has is read back, and a dead letter over it is
        written with its value cut to fit (headers say so), never refused by the broker."""
        self.topic = topic
        self.consumer = consumer
        self.count = 0
        self.failed = 0
        self.truncated = 0
        if create:
            ensure_topic(conf, topic, 1, -1, {"retention.ms": str(30 * 86400_000), "max.message.bytes": str(max_bytes)})
        self.limit = max_message_bytes(conf, topic)
        self.owned = producer is None
        self.producer = producer or Producer({**conf, "enable.idempotence": True, "acks": "all",
                                             "message.max.bytes": max(self.limit, MAX_SNAPSHOT) + (1 << 20)})

    def put(self, msg: Message, reason: str) -> None:
        value = msg.value() or b""
        key = msg.key()
        reason = reason[:2000]
        headers = [
            *(msg.headers() or []),
            (H.DLQ_REASON, reason.encode(errors="replace")),
            (H.DLQ_TOPIC, (msg.topic() or "").encode()),
            (H.DLQ_PARTITION, str(msg.partition()).encode()),
            (H.DLQ_OFFSET, str(msg.offset()).encode()),
            (H.DLQ_CONSUMER, self.consumer.encode()),
        ]
        room = self.limit - DLQ_HEADROOM - len(key or b"") - sum(len(k) + len(v or b"") for k, v in headers)
        if room < 0:  # the original headers alone are over the limit: they go, ours stay
            headers = [*headers[-6:], (H.DLQ_TRUNCATED, b"headers")]
            room = self.limit - DLQ_HEADROOM - len(key or b"") - sum(len(k) + len(v or b"") for k, v in headers)
        if len(value) > room:  # the value cut to fit; key, headers and reason kept
            headers.append((H.DLQ_TRUNCATED, str(len(value)).encode()))
            value = value[: max(0, room)]
            self.truncated += 1

        def on_delivery(err: KafkaError | None, _m: Message) -> None:
            if err is not None:
                self.failed += 1
                log.error("dead_letter_not_delivered", error=str(err), offset=msg.offset())

        while True:
            try:
                self.producer.produce(self.topic, value=value, key=key, headers=cast(Any, headers),
                                      on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: wait for room, never drop
                self.producer.poll(0.05)
        self.producer.poll(0)
        self.count += 1
        log.warning("message_dead_lettered", topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
                    reason=reason[:300], dead_letter_topic=self.topic, bytes=len(msg.value() or b""),
                    truncated=len(value) < len(msg.value() or b""))

    def close(self, timeout_s: float = 30.0) -> None:
        if not self.owned:
            return
        left = self.producer.flush(timeout_s)
        if left:
            self.failed += left
            log.error("dead_letters_undelivered", count=left)
