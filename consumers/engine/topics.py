"""A consumer app's topics and Kafka clients: the packet topic checked, the internal topics
(``<app>.repartition``, ``<app>.state``) created, and the transactional producer, the group's
consumer and the snapshot loader configured."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import Consumer, Producer

from pktstream.runtime.errors import PktstreamError
from pktstream.runtime.kafka import (
    check_reachable,
    ensure_topic,
    max_message_bytes,
    require_topic,
)

log = structlog.get_logger("pktstream.stream")

MAX_SNAPSHOT = 64 << 20  # a partition's state snapshot, all its parts (the budget of snapshot.pack_within)
SNAPSHOT_PART_BYTES = 1 << 20  # the most a part of a snapshot takes (one message of the state topic)


@dataclass(frozen=True)
class AppTopics:
    packet_partitions: int
    partitions: int  # of the repartition and state topics
    packet_max_bytes: int  # the packet topic's max.message.bytes
    repartition_max_bytes: int  # what the internal topics accept, as they are (read back)
    state_max_bytes: int


def internal_max_bytes(packet_max_bytes: int) -> int:
    """The max.message.bytes internal topics (repartition, state, dead letters) are created with: at
    least the packet topic's, whatever the broker's default (Kafka's is 1 MB)."""
    return max(packet_max_bytes, MAX_SNAPSHOT)


def prepare_topics(conf: Mapping[str, Any], packet_topic: str, repartition_topic: str, state_topic: str,
                   partitions: int, replication_factor: int) -> AppTopics:
    """The internal topics, created as needed with as many partitions as the packet topic unless
    ``partitions`` says otherwise, and with a max.message.bytes of at least the packet topic's; the
    limits of existing ones are read back (the runner splits repartition messages to fit them) and
    one below the packet topic's is named in a warning."""
    check_reachable(conf)
    npackets = require_topic(conf, packet_topic)
    want = partitions or npackets
    packet_max = max_message_bytes(conf, packet_topic)
    size = str(internal_max_bytes(packet_max))
    ensure_topic(conf, repartition_topic, want, replication_factor,
                 {"retention.ms": str(86400_000), "cleanup.policy": "delete", "max.message.bytes": size})
    ensure_topic(conf, state_topic, want, replication_factor,
                 {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000", "max.message.bytes": size})
    probe = Consumer({**conf, "group.id": "pktstream-md"})
    deadline = time.monotonic() + 30
    while True:  # a topic just created takes a moment to show in the metadata
        md = probe.list_topics(timeout=10)
        have = [md.topics.get(x) for x in (repartition_topic, state_topic)]
        if all(x is not None and x.error is None and x.partitions for x in have) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    probe.close()
    if any(x is None or not x.partitions for x in have):
        raise PktstreamError(f"internal topics {repartition_topic}, {state_topic} did not appear")
    nparts = len(md.topics[repartition_topic].partitions)
    if len(md.topics[state_topic].partitions) != nparts:
        raise PktstreamError(f"{state_topic} and {repartition_topic} have different partition counts")
    limits = {t: max_message_bytes(conf, t) for t in (repartition_topic, state_topic)}
    for t, limit in limits.items():
        if limit < packet_max:
            log.warning("internal_topic_limit_low", topic=t, max_message_bytes=limit,
                        packet_topic_max_message_bytes=packet_max,
                        fix=f"kafka-configs --alter --entity-type topics --entity-name {t} "
                            f"--add-config max.message.bytes={size}")
    return AppTopics(npackets, nparts, packet_max, limits[repartition_topic], limits[state_topic])


def transactional_producer(conf: Mapping[str, Any], transactional_id: str,
                           extra: Mapping[str, Any] | None = None) -> Producer:
    """``extra``: settings of the caller's over these (the relay's batching and compression)."""
    return Producer({
        **conf,
        "transactional.id": transactional_id,
        "transaction.timeout.ms": 60000,
        "linger.ms": 5,
        "compression.type": "lz4",  # the repartition topic: cheap to compress, read back at once
        "message.max.bytes": MAX_SNAPSHOT + (1 << 20),
        **(extra or {}),
    })


def group_consumer(conf: Mapping[str, Any], group: str, instance: str, reset: str = "earliest") -> Consumer:
    """``reset``: where a partition without a committed offset starts (earliest, latest)."""
    return Consumer({
        **conf,
        "group.id": group,
        # static membership: a restarted instance takes its partitions back at once instead of
        # waiting for the group to time its old self out
        "group.instance.id": instance,
        "session.timeout.ms": 15000,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "auto.offset.reset": reset,
        "fetch.max.bytes": 64 << 20,
        # a full local queue (our big messages fill it quickly) postpones the partition's next
        # fetch by this much (librdkafka's default, 1 s, left the consumer idle at times), and a
        # fetch that finds nothing new waits at most this long for it (the repartition topic's
        # rows become readable at each commit; 20 fetches a second per broker when idle)
        "fetch.queue.backoff.ms": 20,
        "fetch.wait.max.ms": 50,
        "receive.message.max.bytes": MAX_SNAPSHOT + (70 << 20),
        "max.partition.fetch.bytes": 16 << 20,
    })


def snapshot_loader(conf: Mapping[str, Any], app_id: str) -> Consumer:
    """A consumer outside the group that reads state snapshots back (assigned by hand)."""
    return Consumer({**conf, "group.id": f"{app_id}-loader-{uuid.uuid4().hex[:6]}",
                     "isolation.level": "read_committed", "enable.auto.commit": False,
                     "enable.partition.eof": True, "fetch.max.bytes": MAX_SNAPSHOT,
                     "receive.message.max.bytes": MAX_SNAPSHOT + (1 << 20),
                     "max.partition.fetch.bytes": 64 << 20})


class SnapshotUnreadable(Exception):
    """The state topic's partition could not be read to its end (a broker gone, a client whose
    metadata went stale): whether it holds a snapshot is not known. Never the same as "none"."""
