"""The producer's publisher: idempotent, acks=all delivery of whole batches, every outcome counted."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pktstream.producer.latency import LatencyRecorder
from pktstream.producer.spool import Spool
from pktstream.schemas import headers as H

log = structlog.get_logger("pktstream.kafka")


@dataclass
class DeliveryStats:
    records_delivered: int = 0
    records_failed: int = 0
    bytes_delivered: int = 0
    records_spooled: int = 0  # this run's records waiting in the spool
    records_replayed: int = 0  # records delivered from the spool (any run's)
    failed_for_runs: dict[str, int] = field(default_factory=dict)  # earlier runs' records given up, by run
    latency: LatencyRecorder = field(default_factory=LatencyRecorder)


DOWN_GRACE_S = 5.0  # at shutdown, how long every broker may be down before the queue goes to the spool


class Publisher:
    """Idempotent, acks=all producer of whole batches; counts every delivery outcome.

    Without a spool, a full local queue (BufferError) is back-pressure: the
    publisher serves delivery reports and retries. With a spool, the batch is
    written to disk instead and replayed later (``replay``), so that the ring
    buffer keeps being drained while Kafka is away. A batch is only ever
    lost when the spool is full, and then it is counted.
    """

    # errors after which the batch may still be delivered later: keep it in the spool
    RETRIABLE: frozenset[int] = frozenset({
        KafkaError._MSG_TIMED_OUT, KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT, KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    })
    # errors no retry of the same bytes cures: a spooled batch refused so leaves the spool (counted);
    # any other refusal (an ACL not there yet, a topic being re-created) keeps it for a later round
    FINAL: frozenset[int] = frozenset({
        KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG,
    })
    TOO_LARGE: frozenset[int] = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
    BACKOFF_S = 5.0  # after a refusal that may be cured (authorisation, no such topic): replay pauses

    def __init__(self, conf: Mapping[str, Any], topic: str, spool: Spool | None = None,
                 run_id: str = "") -> None:
        self.topic = topic
        self.spool = spool
        self.run_id = run_id
        if spool is not None:
            spool.on_lost = self._lost
        self.stats = DeliveryStats()
        self._too_large: set[Any] = set()  # spooled batches refused as too large in company
        self.fatal: KafkaError | None = None  # librdkafka's fatal error: this producer instance is done
        self._dropped_said = False
        self._replay_after = 0.0
        self._down_since: float | None = None  # when librdkafka said every broker is down
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

    @property
    def brokers_down(self) -> bool:
        """Every broker unreachable (librdkafka said so) and nothing delivered since."""
        return self._down_since is not None

    def _on_error(self, err: KafkaError) -> None:
        log.warning("kafka_error", error=str(err), fatal=err.fatal())
        if err.code() == KafkaError._ALL_BROKERS_DOWN and self._down_since is None:
            self._down_since = time.monotonic()
        if err.fatal() and self.fatal is None:
            self.fatal = err  # the spool keeps everything from here on; the pipeline stops and says so

    def _to_spool(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]], records: int) -> bool:
        assert self.spool is not None
        if self.spool.put(self.topic, key, headers, value, records):
            self.stats.records_spooled += records
            return True
        self.stats.records_failed += records
        if not self._dropped_said:  # counted every time (records_failed, spool_records_dropped), said once
            log.error("spool_full_batch_dropped", records=records, spool_bytes=self.spool.bytes,
                      causes=dict(self.spool.dropped_by_cause))
            self._dropped_said = True
        return False

    def publish(
        self,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        records: int,
        ts_first_ns: int = 0,
        ts_last_ns: int = 0,
    ) -> None:
        """Queue one packet batch; its delivery outcome is counted in ``stats``."""

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                self._down_since = None
                self.stats.records_delivered += records
                self.stats.bytes_delivered += len(value)
                if ts_first_ns:
                    self.stats.latency.add(time.time_ns(), ts_first_ns, ts_last_ns, records)
                return
            if self.spool is not None and (err.code() in self.RETRIABLE or err.code() in self.TOO_LARGE):
                # too large: the broker may have refused a whole request for one big neighbour; the
                # replay tries the batch alone and gives it up (counted) only if it is refused so
                self._to_spool(key, value, headers, records)
                return
            self.stats.records_failed += records
            log.error("batch_delivery_failed", error=str(err), records=records)

        if self.spool is not None and (len(self.spool) or self.spool.inflight):
            # keep order: while older batches wait on disk, new ones join them
            self._to_spool(key, value, headers, records)
            return
        while True:
            try:
                self.producer.produce(self.topic, value=value, key=key, headers=cast(Any, headers),
                                      on_delivery=on_delivery)
                break
            except BufferError:
                if self.spool is not None:
                    self._to_spool(key, value, headers, records)
                    break
                self.producer.poll(0.05)
            except KafkaException as e:  # the topic deleted, a fatal idempotence error: never a crash
                self._refused(e, records)
                if self.spool is not None:
                    self._to_spool(key, value, headers, records)
                else:
                    self.stats.records_failed += records
                break
        self.producer.poll(0)

    def _refused(self, e: KafkaException, records: int) -> None:
        err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
        log.error("produce_refused", error=str(err or e), fatal=bool(err and err.fatal()), records=records)

    def replay(self, max_inflight: int = 4) -> None:
        """Send spooled batches again, oldest first, a few at a time; each file goes when Kafka acks it."""
        spool = self.spool
        if spool is None or not len(spool) or spool.inflight >= max_inflight or len(self.producer) > 100:
            return
        if self.fatal is not None or time.monotonic() < self._replay_after:
            return  # nothing given up for a producer that cannot send any more; a refusal backs off
        # a batch refused as too large may only have shared a request with one that is: such
        # batches go again one at a time, and only one refused alone is given up
        if self._too_large:  # (a file quarantined or given up meanwhile no longer holds this mode)
            self._too_large = {p for p in self._too_large if p.exists() and not spool.skipped(p)}
        alone = bool(self._too_large)
        if alone and (spool.inflight or len(self.producer)):
            return
        batches = spool.oldest(1 if alone else max_inflight - spool.inflight)
        for i, b in enumerate(batches):
            own = dict(b.headers).get(H.RUN_ID) == self.run_id.encode()

            def on_delivery(err: KafkaError | None, msg: Message, b: Any = b, own: bool = own,
                            alone: bool = alone) -> None:
                log.debug("spool_replay_result", file=b.path.name, error=str(err) if err else None)
                if err is not None and err.code() in self.TOO_LARGE and not alone:
                    self._too_large.add(b.path)
                    spool.done(b, delivered=False)
                    return
                self._too_large.discard(b.path)
                if err is not None and err.code() in self.FINAL and not err.fatal():
                    self._give_up(b, own, err.name(), str(err))
                    return
                if err is not None and err.code() not in self.RETRIABLE:
                    self._replay_after = time.monotonic() + self.BACKOFF_S
                    log.warning("spool_replay_refused", file=b.path.name, error=str(err), retry_in_s=self.BACKOFF_S)
                spool.done(b, delivered=err is None)
                if err is None:
                    self._down_since = None
                    self.stats.records_replayed += b.records
                    if own:
                        self.stats.records_delivered += b.records
                        self.stats.records_spooled -= b.records
                        self.stats.bytes_delivered += len(b.value)

            log.debug("spool_replay", file=b.path.name, records=b.records)
            try:
                self.producer.produce(b.topic, value=b.value, key=b.key, headers=cast(Any, b.headers),
                                      on_delivery=on_delivery)
            except BufferError:  # the memory queue is full: try again on a later round
                spool.done(b, delivered=False)
                for rest in batches[i + 1 :]:  # not sent this time: free them for the next round
                    spool.done(rest, delivered=False)
                return
            except KafkaException as e:  # refused before sending
                err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
                if err is not None and err.code() in self.FINAL and not err.fatal():
                    # (larger than this producer's own message.max.bytes): no retry cures it
                    self._give_up(b, own, err.name(), str(err))
                    for rest in batches[i + 1 :]:
                        spool.done(rest, delivered=False)
                    return
                for rest in batches[i:]:  # kept, tried again later
                    spool.done(rest, delivered=False)
                self._replay_after = time.monotonic() + self.BACKOFF_S
                log.warning("spool_replay_refused", file=b.path.name, error=str(e), retry_in_s=self.BACKOFF_S)
                return

    def _give_up(self, b: Any, own: bool, code: str, error: str) -> None:
        """A spooled batch Kafka refuses for good: out of the spool, counted as failed with its
        cause (this run's records in records_failed; a previous run's in the spool's drops)."""
        assert self.spool is not None
        self._too_large.discard(b.path)
        if self.spool.failed(b, f"rejected_{code.lower().lstrip('_')}"):
            self._lost(b.headers, b.records)
        log.error("spool_batch_rejected", file=b.path.name, topic=b.topic, records=b.records, error=error,
                  this_run=own)

    def _lost(self, headers: list[tuple[str, bytes]], records: int) -> None:
        """Records of a spooled batch given up (refused for good, or its file set aside): this
        run's in records_failed, an earlier run's in failed_for_runs (for the audit of that run)."""
        run = dict(headers).get(H.RUN_ID, b"")
        if run == self.run_id.encode():
            self.stats.records_failed += records
            self.stats.records_spooled -= records
        elif records:
            rid = run.decode("utf-8", "replace")
            self.stats.failed_for_runs[rid] = self.stats.failed_for_runs.get(rid, 0) + records

    def publish_aux(self, topic: str, key: bytes, value: bytes) -> dict[str, bool]:
        """Queue a message of another topic (stats); failures are logged, not counted as records.
        Returns its outcome, filled in by the delivery report: {"delivered": ...}."""
        outcome = {"delivered": False}

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                log.error("aux_delivery_failed", topic=topic, error=str(err))
            else:
                self._down_since = None
                outcome["delivered"] = True

        try:
            self.producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
        except BufferError:
            log.error("aux_queue_full", topic=topic)
        except KafkaException as e:
            log.error("aux_delivery_failed", topic=topic, error=str(e))
        self.producer.poll(0)
        return outcome

    def spool_aux(self, topic: str, key: bytes, value: bytes) -> bool:
        """Keep a message Kafka did not take (the final stats report at shutdown) in the spool, to
        go with the batches; False without a spool or when it cannot take it."""
        if self.spool is None:
            return False
        self.producer.purge(in_queue=True, in_flight=False)
        self.producer.poll(0.1)
        return self.spool.put(topic, key, [], value, 0)

    def drain_to_spool(self, timeout_s: float, down_grace_s: float = DOWN_GRACE_S) -> int:
        """At shutdown: deliver the queue and the spool for up to ``timeout_s``, then move what
        is still queued to the spool (it is replayed by the next run). When every broker is down
        (and stays so for ``down_grace_s``) nothing more can be delivered: the queue goes to the
        spool at once rather than after the whole timeout. Returns the messages left undelivered
        and not spooled."""
        start = time.monotonic()
        deadline = start + timeout_s
        while time.monotonic() < deadline:
            self.replay()
            self.producer.poll(0.1)
            if not len(self.producer) and not (self.spool is not None and (len(self.spool) or self.spool.inflight)):
                break
            if self.spool is not None and self.brokers_down and time.monotonic() - start >= down_grace_s:
                log.warning("kafka_down_at_shutdown", queued=len(self.producer),
                            down_for_s=round(time.monotonic() - (self._down_since or start), 1))
                break
        left = len(self.producer)
        if left and self.spool is not None:
            self.producer.purge(in_queue=True, in_flight=False)
            self.producer.poll(0.5)
            # requests in flight: their reports spool them (none can be, with every broker down)
            left = int(self.producer.flush(down_grace_s if self.brokers_down else 15.0))
        return left

    def poll(self, timeout_s: float = 0) -> None:
        self.producer.poll(timeout_s)

    def queued(self) -> int:
        return len(self.producer)

    def flush(self, timeout_s: float = 60.0) -> int:
        """Deliver everything queued; returns the number of messages still undelivered."""
        return int(self.producer.flush(timeout_s))
