"""Kafka client helpers both sides use: client configuration, reachability, topic creation."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from pktstream.runtime.errors import ConfigError, KafkaUnavailableError, PktstreamError
from pktstream.runtime.log import librdkafka_logger

log = structlog.get_logger("pktstream.kafka")


def client_config(bootstrap: str, extra: Mapping[str, str]) -> dict[str, Any]:
    """librdkafka configuration common to admin, producer and consumers (SASL/TLS pass through)."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": librdkafka_logger()}
    conf.update(extra)
    return conf


def check_reachable(conf: Mapping[str, Any], timeout_s: float = 10.0) -> None:
    errors: list[str] = []

    def on_error(err: KafkaError) -> None:
        # the words, not KafkaError{code=...}; the timing suffix varies between retries of one cause
        errors.append(re.sub(r"\s*\(after \d+ms in state \w+\)", "", err.str()))

    # librdkafka's own log lines (one per refused connection attempt) stay out of the way: the
    # probe's errors come through error_cb and are said once, in the message below
    admin = AdminClient({**conf, "error_cb": on_error, "log_level": 0})  # type: ignore[dict-item]
    try:
        md = admin.list_topics(timeout=timeout_s)
    except KafkaException as e:
        admin.poll(1.0)  # serve error_cb: it says why (authentication, TLS, resolution, refused)
        first = e.args[0] if e.args else None
        detail = "; ".join(dict.fromkeys(errors)) or (first.str() if isinstance(first, KafkaError) else str(e))
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


def parse_props(items: Sequence[str] | None) -> dict[str, str]:
    """``-X property=value`` flags as a librdkafka dict; every malformed one listed."""
    out: dict[str, str] = {}
    problems = []
    for it in items or []:
        if "=" not in it:
            problems.append(f"-X {it!r}: expected property=value")
            continue
        k, v = it.split("=", 1)
        out[k.strip()] = v
    if problems:
        raise ConfigError(problems)
    return out


def require_topic(conf: Mapping[str, Any], topic: str, what: str = "packet topic", timeout_s: float = 10.0) -> int:
    """The topic's partition count; the words every command uses when the topic is missing."""
    probe = AdminClient(dict(conf))
    md = probe.list_topics(topic, timeout=timeout_s)
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        raise PktstreamError(f"{what} {topic!r} does not exist on the broker; "
                             "start a producer first or name the topic with --topic")
    return len(t.partitions)
