"""Dead letters: a message a consumer cannot decode is set aside, with the reason, and counted.

The original key, value and headers go to the dead-letter topic unchanged, plus headers saying
where the message came from and why it was set aside, so that it can be inspected or replayed.
Processing goes on with the next message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import structlog
from confluent_kafka import KafkaError, Message, Producer

from pktstream.runtime.kafka import ensure_topic
from pktstream.schemas import headers as H

log = structlog.get_logger("pktstream.deadletter")


class DeadLetters:
    def __init__(self, conf: Mapping[str, Any], topic: str, consumer: str, create: bool = True,
                 producer: Producer | None = None) -> None:
        """``producer``: a transactional producer of the caller's, so that a dead letter is written
        in the same transaction as the consumer's offsets (exactly once); else one of our own."""
        self.topic = topic
        self.consumer = consumer
        self.count = 0
        self.failed = 0
        if create:
            ensure_topic(conf, topic, 1, -1, {"retention.ms": str(30 * 86400_000)})
        self.owned = producer is None
        self.producer = producer or Producer({**conf, "enable.idempotence": True, "acks": "all"})

    def put(self, msg: Message, reason: str) -> None:
        headers = [
            *(msg.headers() or []),
            (H.DLQ_REASON, reason.encode()),
            (H.DLQ_TOPIC, (msg.topic() or "").encode()),
            (H.DLQ_PARTITION, str(msg.partition()).encode()),
            (H.DLQ_OFFSET, str(msg.offset()).encode()),
            (H.DLQ_CONSUMER, self.consumer.encode()),
        ]

        def on_delivery(err: KafkaError | None, _m: Message) -> None:
            if err is not None:
                self.failed += 1
                log.error("dead_letter_not_delivered", error=str(err), offset=msg.offset())

        self.producer.produce(self.topic, value=msg.value(), key=msg.key(), headers=cast(Any, headers),
                              on_delivery=on_delivery)
        self.producer.poll(0)
        self.count += 1
        log.warning("message_dead_lettered", topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
                    reason=reason, dead_letter_topic=self.topic)

    def close(self, timeout_s: float = 30.0) -> None:
        if not self.owned:
            return
        left = self.producer.flush(timeout_s)
        if left:
            self.failed += left
            log.error("dead_letters_undelivered", count=left)
