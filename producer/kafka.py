"""Kafka side of the producer: reachability, topic creation, the publisher."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from pktstream.producer.errors import KafkaUnavailableError
from pktstream.producer.latency import LatencyRecorder
from pktstream.producer.log import librdkafka_logger

log = structlog.get_logger("pktstream.kafka")


def client_config(bootstrap: str, extra: Mapping[str, str]) -> dict[str, Any]:
    """librdkafka configuration common to admin, producer and consumers (SASL/TLS pass through)."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": librdkafka_logger()}
    conf.update(extra)
    return conf


def check_reachable(conf: Mapping[str, Any], timeout_s: float = 10.0) -> None:
    errors: list[str] = []

    def on_error(err: KafkaError) -> None:
        errors.append(str(err))

    admin = AdminClient({**conf, "error_cb": on_error})  # type: ignore[dict-item]
    try:
        md = admin.list_topics(timeout=timeout_s)
    except KafkaException as e:
        detail = "; ".join(dict.fromkeys(errors)) or str(e)
        raise KafkaUnavailableError(
            f"cannot reach Kafka at {conf.get('bootstrap.servers')} within {timeout_s:.0f}s: {detail}"
        ) from None
    if not md.brokers:
        raise KafkaUnavailableError(f"Kafka at {conf.get('bootstrap.servers')} reports no brokers")


def ensure_topic(
    conf: Mapping[str, Any],
    topic: str,
    partitions: int,
    replication_factor: int = -1,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> bool:
    """Create the topic unless it exists; returns True when it was created."""
    admin = AdminClient(dict(conf))
    md = admin.list_topics(timeout=timeout_s)
    if topic in md.topics and md.topics[topic].error is None:
        return False
    nt = NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor, config=dict(config or {}))
    fut = admin.create_topics([nt], operation_timeout=timeout_s)[topic]
    try:
        fut.result(timeout=timeout_s)
    except KafkaException as e:
        if e.args and e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise KafkaUnavailableError(f"creating topic {topic!r} failed: {e}") from None
    log.info("topic_created", topic=topic, partitions=partitions, config=dict(config or {}))
    return True


@dataclass
class DeliveryStats:
    messages_sent: int = 0
    messages_delivered: int = 0
    messages_failed: int = 0
    records_sent: int = 0
    records_delivered: int = 0
    records_failed: int = 0
    bytes_delivered: int = 0
    last_error: str = ""
    latency: LatencyRecorder = field(default_factory=LatencyRecorder)


class Publisher:
    """Idempotent, acks=all producer of whole batches; counts every delivery outcome.

    A full local queue (BufferError) is back-pressure: the publisher serves
    delivery reports and retries, it never drops a batch silently.
    """

    def __init__(self, conf: Mapping[str, Any], topic: str) -> None:
        self.topic = topic
        self.stats = DeliveryStats()
        full = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.max.bytes": 64 << 20,
            "batch.size": 64 << 20,
            **conf,
            "error_cb": self._on_error,
        }
        self.producer = Producer(full)

    def _on_error(self, err: KafkaError) -> None:
        self.stats.last_error = str(err)
        log.warning("kafka_error", error=str(err), fatal=err.fatal())

    def publish(
        self,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]],
        records: int,
        ts_first_ns: int = 0,
        ts_last_ns: int = 0,
    ) -> None:

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.stats.messages_failed += 1
                self.stats.records_failed += records
                self.stats.last_error = str(err)
                log.error("batch_delivery_failed", error=str(err), records=records)
            else:
                self.stats.messages_delivered += 1
                self.stats.records_delivered += records
                self.stats.bytes_delivered += len(value)
                if ts_first_ns:
                    self.stats.latency.add(time.time_ns(), ts_first_ns, ts_last_ns, records)

        while True:
            try:
                self.producer.produce(self.topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.stats.messages_sent += 1
        self.stats.records_sent += records
        self.producer.poll(0)

    def poll(self, timeout_s: float = 0) -> None:
        self.producer.poll(timeout_s)

    def queued(self) -> int:
        return len(self.producer)

    def flush(self, timeout_s: float = 60.0) -> int:
        """Deliver everything queued; returns the number of messages still undelivered."""
        return int(self.producer.flush(timeout_s))
