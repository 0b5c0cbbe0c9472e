"""``pktstream relay``: the packet topic as one record per message in the schema-registry wire
format, for the readers of the Kafka ecosystem (docs/registry.md).

Each packet message (an Avro container of thousands of records) goes through the consumers' one
door for untrusted input (schemas/columns.py: the writer's schema resolved against ours, sizes
bounded), its records are written again under our schema by the producer's compiled encoder and
cut into messages by one compiled loop (schemas/_codec.c ``pkt_avro_frame``): 0x00, the schema id,
the record, then the host and interface it came from (fields the relayed schema adds). Python's
work per record is the producer call alone.

Exactly once: a consumer group over the packet topic (scale-out: run more instances with the same
--app-id) and one Kafka transaction at a time holding the records written and the offsets read
(engine/transactions.py, as the consumers' runner uses it). A record of partition p goes to
partition p of the output topic (created with as many), keyed by its host, so each host's records
stay in order. A message that does not decode is dead-lettered in the same transaction.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import fastavro
import numpy as np
import structlog
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from fastavro.schema import to_parsing_canonical_form

from pktstream.consumers.engine.deadletter import DeadLetters
from pktstream.consumers.engine.runner import default_instance_id
from pktstream.consumers.engine.topics import group_consumer
from pktstream.consumers.engine.transactions import Transactions
from pktstream.consumers.relay.batchproduce import BatchProducer, BatchRefused, Interrupted
from pktstream.runtime.kafka import ensure_topic, max_message_bytes, require_topic
from pktstream.runtime.registry import Registry
from pktstream.schemas import headers as H
from pktstream.schemas import load_schema_json, wire
from pktstream.schemas.columns import container_blocks, read_container
from pktstream.schemas.container import encode_records, field_specs
from pktstream.schemas.decode import DecodeError, message_headers

log = structlog.get_logger("pktstream.relay")

MAX_QUEUE = 2_000_000  # messages the producer's queue holds
OUT_MESSAGE_BYTES = 8 << 20  # the output topic's max.message.bytes when the relay creates it
PRODUCER_MESSAGE_BYTES = 64 << 20  # (the transactional producer's message.max.bytes is a little more)
RECORD_ROOM = 64 << 10  # room a record leaves in a batch under the topic's limit (key, framing)
MAX_NAME = 255  # bytes (UTF-8) of a host id or interface name (the producer's are far shorter)
_SPECS = field_specs(load_schema_json("packet"))
_PAYLOADS = [s.name for s in _SPECS if s.kind == "bytes"]
_KINDS, _SIZES = wire.layout(load_schema_json("packet"))
_SHAPE = [(s.name, s.kind, s.size) for s in _SPECS]  # a writer's records laid out so are passed through


def _as_ours(lay: Any) -> bool:
    """Are a writer's records laid out as ours (the same fields, in order, encoded alike: its blocks'
    bytes are records of our schema and are passed through as they are)?"""
    return not lay.defaults and [(s.name, s.kind, s.size) for s in lay.specs] == _SHAPE


def relayed_schema() -> dict[str, Any]:
    """The packet record (schemas/packet.avsc) and, after its fields, the host and interface that
    captured it (the container's metadata: a message of its own has no container)."""
    s = load_schema_json("packet")
    return {**s, "fields": [*s["fields"],
                            {"name": "host", "type": "string", "default": "",
                             "doc": "The capture point's host id (pktstream.host)."},
                            {"name": "interface", "type": "string", "default": "",
                             "doc": "The interface it captured on (pktstream.interface)."}]}


@cache
def _relayed_form() -> str:
    return str(to_parsing_canonical_form(fastavro.parse_schema(relayed_schema())))


def is_relayed(schema_text: str) -> bool:
    """Is this schema (a registry's text) the relayed packet record's?"""
    try:
        return str(to_parsing_canonical_form(fastavro.parse_schema(json.loads(schema_text)))) == _relayed_form()
    except Exception:
        return False


@dataclass
class RelayConfig:
    app_id: str
    packet_topic: str
    out_topic: str
    start: str = "end"  # "end" | "beginning": where a partition without a committed offset starts
    until_end: bool = False
    commit_interval_s: float = 1.0
    commit_records: int = 1_000_000
    dead_letter_topic: str | None = None
    instance_id: str = ""
    compression: str = "zstd"
    compatibility: str | None = None  # None: the level in force, BACKWARD where none (Registry.level)


@dataclass
class RelayFigures:
    messages_in: int = 0
    records_out: int = 0
    dead_lettered: int = 0
    transactions: int = 0
    aborted: int = 0
    started: float = field(default_factory=time.monotonic)


class Relay:
    def __init__(self, conf: Mapping[str, Any], cfg: RelayConfig, registry: Registry, stop: threading.Event) -> None:
        self.conf, self.cfg, self.registry, self.stop = dict(conf), cfg, registry, stop
        self.figures = RelayFigures()
        # per assigned partition: the offset after the last message relayed (or dead-lettered) in the open
        # transaction, and where the open transaction began (what an abort goes back to); the relay
        # commits these, never the consumer's position (which runs ahead of what was relayed)
        self.done: dict[int, int] = {}
        self.base: dict[int, int] = {}

    def prepare(self) -> None:
        """The packet topic must exist; the output topic is created with as many partitions; the
        schema registered (a refusal stops the relay before anything is read)."""
        self.nparts = require_topic(self.conf, self.cfg.packet_topic)
        ensure_topic(self.conf, self.cfg.out_topic, self.nparts, -1,
                     {"retention.ms": str(7 * 86400_000), "max.message.bytes": str(OUT_MESSAGE_BYTES)})
        self.out_parts = require_topic(self.conf, self.cfg.out_topic, "output topic")
        # what the topic really takes (an existing topic keeps its own limit): batches and records within it
        self.limit = min(max_message_bytes(self.conf, self.cfg.out_topic), PRODUCER_MESSAGE_BYTES)
        self.schema_id = self.registry.register(f"{self.cfg.out_topic}-value", json.dumps(relayed_schema()), "AVRO",
                                                self.cfg.compatibility)
        self.head = wire.head(self.schema_id)

    def run(self, duration_s: float | None = None) -> RelayFigures:
        cfg = self.cfg
        instance = cfg.instance_id or default_instance_id()
        consumer = group_consumer(self.conf, cfg.app_id, f"{cfg.app_id}-{instance}",
                                  reset="earliest" if cfg.start == "beginning" else "latest")
        self._dead: DeadLetters | None = None
        txn = Transactions(self.conf, f"{cfg.app_id}-{instance}", on_replace=self._producer_replaced,
                           extra={"linger.ms": 50, "batch.size": max(16 << 10, min(4 << 20, self.limit - (64 << 10))),
                                  "batch.num.messages": 200_000, "compression.type": cfg.compression,
                                  "queue.buffering.max.messages": MAX_QUEUE, "queue.buffering.max.kbytes": 2 << 20,
                                  "delivery.report.only.error": True})
        self._batch: tuple[Any, BatchProducer | None] = (None, None)
        dead = DeadLetters(self.conf, cfg.dead_letter_topic, "pktstream-relay", producer=txn.producer) \
            if cfg.dead_letter_topic else None
        self._dead = dead
        self.assigned: set[int] = set()
        self.at_end: set[int] = set()
        pending = 0  # records in the open transaction
        failed = False  # an exception is on its way out: nothing more may commit

        def commit() -> None:
            nonlocal pending
            moved = {q: o for q, o in self.done.items() if q in self.assigned and o != self.base.get(q)}
            if failed or (not pending and not moved):
                return
            offsets = [TopicPartition(cfg.packet_topic, q, o) for q, o in sorted(moved.items())]
            if txn.commit(offsets, consumer.consumer_group_metadata()):
                self.figures.transactions += 1
                self.base.update(moved)
            else:  # aborted, or its outcome unknown (a stuck call: the new producer completed or aborted it)
                self.figures.aborted += 1
                self._rewind(consumer, committed=True)
            pending = 0

        def on_assign(c: Any, parts: list[TopicPartition]) -> None:
            self.assigned |= {p.partition for p in parts}
            log.info("relay_assigned", partitions=sorted(self.assigned))

        def on_revoke(c: Any, parts: list[TopicPartition]) -> None:
            commit()  # what was relayed of them is committed before another instance takes them
            if failed and pending:
                txn.abort("stopping after an error")
            for p in parts:
                self.assigned.discard(p.partition)
                self.at_end.discard(p.partition)
                self.done.pop(p.partition, None)
                self.base.pop(p.partition, None)

        consumer.subscribe([cfg.packet_topic], on_assign=on_assign, on_revoke=on_revoke)
        deadline = None if duration_s is None else time.monotonic() + duration_s
        last = time.monotonic()
        try:
            while not self.stop.is_set() and (deadline is None or time.monotonic() < deadline):
                msgs = consumer.consume(16, 0.2)
                for m in msgs:  # where an abort goes back to, for every partition of the batch (before any is read)
                    q = m.partition() or 0
                    if m.error() is None and q in self.assigned and (m.offset() or 0) >= self.done.get(q, -1):
                        self.base.setdefault(q, m.offset() or 0)
                for m in msgs:
                    q = m.partition() or 0
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            if q in self.assigned:
                                self.at_end.add(q)
                            continue
                        if err.fatal() or err.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                                         KafkaError.GROUP_AUTHORIZATION_FAILED):
                            raise KafkaException(err)
                        log.warning("relay_consume_error", error=str(err))
                        continue
                    if q not in self.assigned:
                        continue  # fetched before its partition was revoked: its new owner reads it
                    off = m.offset() or 0
                    if off < self.done.get(q, -1):
                        continue  # read before a rewind took the partition back
                    self.at_end.discard(q)
                    self.figures.messages_in += 1
                    try:
                        pending += self._relay(txn, m, dead)
                    except (BatchRefused, Interrupted) as e:  # this transaction's records go; its input is read again
                        log.warning("relay_transaction_abandoned", error=str(e) or type(e).__name__)
                        txn.abort(str(e))
                        self.figures.aborted += 1
                        self._rewind(consumer)
                        pending = 0
                        break
                    self.done[q] = off + 1
                now = time.monotonic()
                if now - last >= cfg.commit_interval_s or pending >= cfg.commit_records:
                    commit()
                    last = now
                if cfg.until_end and self.assigned and self.at_end >= self.assigned and not msgs:
                    break
            commit()
        except BaseException:
            failed = True
            raise
        finally:
            if self._batch[1] is not None:
                self._batch[1].close()
            consumer.close()
            txn.close()
        el = time.monotonic() - self.figures.started
        log.info("relay_stopped", app_id=cfg.app_id, seconds=round(el, 2), **{
            k: v for k, v in vars(self.figures).items() if k != "started"})
        return self.figures

    def _relay(self, txn: Transactions, m: Message, dead: DeadLetters | None) -> int:
        """One packet message's records into the open transaction; their count (0 when the message is
        dead-lettered: the reason logged and counted)."""
        try:
            value = m.value()
            b = container_blocks(value)
            hdr = message_headers(m)
            host = hdr.get(H.HOST) or b.metadata.get(H.HOST, "")
            iface = hdr.get(H.INTERFACE) or b.metadata.get(H.INTERFACE, "")
            if len(host.encode()) > MAX_NAME or len(iface.encode()) > MAX_NAME:  # (the readers' bound: columns.py)
                raise DecodeError(f"host or interface name longer than {MAX_NAME} bytes")
            tail = wire.avro_string(host) + wire.avro_string(iface)
            if _as_ours(b.lay):  # the common case: the blocks are cut into messages as they are
                blocks = b.blocks
            else:  # an older (or newer) writer's layout: decoded, and written again under our schema
                batch = read_container(value)
                cols = dict(batch.columns)
                for name in _PAYLOADS:  # a payload longer than its column was cut to the width on decoding
                    cols[name + "__len"] = np.minimum(cols[name + "__len"], cols[name].shape[1])
                blocks = [(batch.n, encode_records(_SPECS, cols, batch.n))] if batch.n else []
            framed = [wire.frame_block(block, n, _KINDS, _SIZES, self.head, tail) for n, block in blocks if n]
            for _buf, ends in framed:  # (a writer's payload may be longer than the width it declared)
                largest = int(max(ends[0], np.diff(ends).max(initial=0)))
                if largest > self.limit - RECORD_ROOM:
                    raise DecodeError(f"a record of {largest:,} bytes: the output topic takes at most "
                                      f"{self.limit - RECORD_ROOM:,} per record")
        except (DecodeError, ValueError, MemoryError) as e:
            self.figures.dead_lettered += 1
            if dead is not None:
                dead.put(m, str(e))
            else:
                log.warning("message_corrupt", topic=m.topic(), partition=m.partition(), offset=m.offset(),
                            reason=str(e)[:300])
            return 0
        topic, key, part = self.cfg.out_topic, m.key(), (m.partition() or 0) % self.out_parts
        bp = self._batch_producer(txn.producer)
        if bp is not None:
            for buf, ends in framed:
                bp.produce(part, buf, ends, key, self.stop.is_set)
            n = sum(len(ends) for _b, ends in framed)
            txn.producer.poll(0)
            self.figures.records_out += n
            return n
        produce, poll = txn.producer.produce, txn.producer.poll
        count = 0
        for buf, ends in framed:
            start = 0
            for end in ends.tolist():
                while True:
                    try:
                        produce(topic, buf[start:end], key, part)  # (positional: a quarter cheaper than keywords)
                        break
                    except BufferError:  # the local queue is full: wait for room, never drop
                        if self.stop.is_set():
                            raise Interrupted from None
                        poll(0.05)
                start = end
            count += len(ends)
            poll(0)
        self.figures.records_out += count
        return count

    def _batch_producer(self, producer: Any) -> BatchProducer | None:
        """The batch producer on the transaction's producer (a new one when the producer was replaced)."""
        owner, bp = self._batch
        if owner is not producer:
            if bp is not None:
                bp.close()
            bp = BatchProducer.attach(producer, self.cfg.out_topic, MAX_QUEUE)
            log.info("relay_produce_path", batch=bp is not None)
            self._batch = (producer, bp)
        return bp

    def _rewind(self, consumer: Any, committed: bool = False) -> None:
        """After an abort: every assigned partition back to where the aborted transaction began; with
        ``committed``, to the group's committed offsets when it has them (a commit whose outcome was not
        known: a new producer of the same id has completed or aborted it, so they are stable)."""
        known: dict[int, int] = {}
        if committed and self.assigned:
            try:
                for p in consumer.committed([TopicPartition(self.cfg.packet_topic, q) for q in self.assigned],
                                            timeout=30):
                    if p.offset >= 0:
                        known[p.partition] = p.offset
            except KafkaException as e:
                log.warning("relay_committed_unknown", error=str(e))
        for q in list(self.assigned):
            start = known.get(q, self.base.get(q))
            if start is None:
                continue  # nothing read of it in the transaction
            consumer.seek(TopicPartition(self.cfg.packet_topic, q, start))
            self.base[q] = self.done[q] = start
            self.at_end.discard(q)

    def _producer_replaced(self, producer: Any) -> None:
        """A stuck transactional call replaced the producer: dead letters go through the new one."""
        if self._dead is not None:
            self._dead.producer = producer
