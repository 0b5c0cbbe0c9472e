"""The producer's run: start-up checks, then the main loop over its stages, then shutdown.

    ring drain (capture.RingReader)  ->  batch (batcher.Batcher)  ->  encode (encode.BatchEncoder)
    ->  publish (publish.Publisher)  ->  accounting (accounting: stats topic, crashed runs)

Each stage works on whole batches: the ring buffer is copied out as one array, mapped to
columns with numpy, encoded by the batch encoder and sent as one Kafka message of up to
``batch_records`` records. The loop also serves delivery reports, adapts sampling under
overload, and publishes the loss accounting; shutdown detaches, drains, delivers and reports.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from fastavro.schema import fingerprint, to_parsing_canonical_form

from pktstream.producer.accounting import account_crashed_run, ms_or_none, pin_path, stats_report
from pktstream.producer.batcher import Batcher
from pktstream.producer.capture import (
    Capture,
    Counters,
    check_privileges,
    default_route_interface,
    empty_records,
    ifindex_of,
)
from pktstream.producer.config import ProducerConfig, default_host_id, legacy_host_id
from pktstream.producer.encode import BatchEncoder
from pktstream.producer.figures import Figures
from pktstream.producer.metrics import COUNTERS, GAUGES
from pktstream.producer.privacy import PayloadScope
from pktstream.producer.publish import Publisher
from pktstream.producer.runstate import RunState, RunStateFile
from pktstream.producer.sampling import SamplingController
from pktstream.producer.spool import Spool
from pktstream.runtime.errors import InterfaceError, PktstreamError
from pktstream.runtime.kafka import check_reachable, client_config, ensure_topic
from pktstream.runtime.metrics import Heartbeat, MetricsServer
from pktstream.runtime.paths import state_home
from pktstream.schemas import headers as H
from pktstream.schemas import load_schema_json, packets
from pktstream.schemas.container import ContainerWriter
from pktstream.schemas.stats import stats_key

log = structlog.get_logger("pktstream.producer")

PACKET_SCHEMA = "packet"
DRAIN_PAUSE_S = 0.005
DRAIN_BUDGET_S = 0.05


def schema_fingerprint(schema: dict[str, Any]) -> str:
    """CRC-64-AVRO (Rabin) fingerprint of the schema's parsing canonical form, hex."""
    return str(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


@dataclass
class RunTotals:
    records_read: int = 0
    batches: int = 0


class ProducerRun:
    def __init__(self, cfg: ProducerConfig, bootstrap: str, stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.stop = stop or threading.Event()
        self.run_id = uuid.uuid4().hex[:16]
        self.totals = RunTotals()
        self.batcher = Batcher(cfg.batch_records, cfg.batch_bytes, cfg.batch_age_ms, cfg.batch_quiet_ms)
        self.capture: Capture | None = None
        self.publisher: Publisher | None = None
        self._last_counters = Counters()
        self._full_stamped = 0  # ring-buffer losses already told in a message's header
        self.directions: list[str] = []  # what the run captures (attached at run())
        self.sampler = SamplingController(base_rate=cfg.sample_rate, max_rate=cfg.max_sample_rate)
        self.heartbeat = Heartbeat()
        self.scope = PayloadScope(
            [int(x) for x in cfg.payload_ports.split(",") if x.strip()],
            [x.strip() for x in cfg.payload_networks.split(",") if x.strip()],
        )
        self.metrics: MetricsServer | None = None
        self._next_stats = 0.0
        self._next_sample_check = 0.0

    # -- start-up -----------------------------------------------------------
    def prepare(self) -> None:
        """Every check that can fail before anything is attached or sent."""
        cfg = self.cfg
        if not cfg.interface:
            iface = default_route_interface()
            if iface is None:
                raise InterfaceError("no default route on this host; name the interface with --interface")
            cfg.interface = iface
        ifindex_of(cfg.interface)
        check_privileges()
        conf = client_config(self.bootstrap, cfg.kafka)
        check_reachable(conf)
        if cfg.create_topic:
            ensure_topic(
                conf, cfg.topic, cfg.partitions, cfg.replication_factor,
                # the broker's clock stamps each message (LogAppendTime): the consumers judge a host's
                # record times against it, so a host's wrong clock cannot move their event time
                {"retention.ms": str(cfg.retention_ms), "max.message.bytes": str(64 << 20),
                 "compression.type": "producer", "message.timestamp.type": "LogAppendTime"},
            )
            ensure_topic(
                conf, cfg.stats_topic, 1, cfg.replication_factor,
                # compaction keeps the latest report of every run (key = host/run)
                {"cleanup.policy": "compact,delete", "retention.ms": str(max(cfg.retention_ms, 30 * 86400_000))},
            )
        schema = load_schema_json(PACKET_SCHEMA)
        self.fingerprint = schema_fingerprint(schema)
        self.writer = ContainerWriter(
            schema,
            codec=cfg.codec,
            metadata={
                H.HOST: cfg.host_id,
                H.INTERFACE: cfg.interface,
                H.RUN_ID: self.run_id,
                H.PAYLOAD_BYTES: str(cfg.payload_bytes),
            },
        )
        self._take_over_legacy_files()
        spool = None
        if cfg.spool_max_bytes:
            # one spool per producer (host, interface, topic): two never replay the same files
            spool_dir = Path(cfg.spool_dir or state_home() / "spool" / f"{cfg.host_id}-{cfg.interface}-{cfg.topic}")
            spool = Spool(spool_dir, cfg.spool_max_bytes)
            if len(spool):
                log.info("spool_found", directory=str(spool_dir), batches=len(spool), bytes=spool.bytes)
        self.publisher = Publisher(
            {**conf, "compression.type": cfg.compression, "queue.buffering.max.kbytes": cfg.queue_max_kbytes,
             "client.id": f"pktstream-{cfg.host_id}"},
            cfg.topic, spool=spool, run_id=self.run_id,
        )
        # warm the encoder path (column gathering, ctypes call) before the first real batch
        self.writer.container(packets.to_columns(empty_records(cfg.payload_bytes, 1), 0, 0), 1)
        pinned = self._account_previous_run()
        self.capture = Capture(payload_bytes=cfg.payload_bytes, ringbuf_bytes=cfg.ringbuf_bytes,
                               pin_counters=pinned)
        self.capture.reset_counters()  # a pinned map still holds the previous run's totals
        self.capture.set_sample_rate(cfg.sample_rate)
        self.runfile.write(RunState(cfg.host_id, cfg.interface, self.run_id, cfg.stats_topic, time.time_ns()))
        self.key = cfg.host_id.encode()
        static_headers: list[tuple[str, bytes]] = [
            (H.SCHEMA_FP, self.fingerprint.encode()),
            (H.HOST, cfg.host_id.encode()),
            (H.INTERFACE, cfg.interface.encode()),
            (H.RUN_ID, self.run_id.encode()),
        ]
        self.encoder = BatchEncoder(self.writer, static_headers, cfg.payload_bytes, self.scope, cfg.redact,
                                    cfg.redact_names.split(","), keep_http2_headers=not cfg.redact_http2_headers)

    def _take_over_legacy_files(self) -> None:
        """A producer upgraded from a build whose default host id was the machine id's first digits
        keeps its spool (replayed, not lost) and run state (a crashed run still accounted for): the
        files named by the old default are renamed to the new one's names."""
        cfg = self.cfg
        old = legacy_host_id()
        if old is None or old == cfg.host_id or cfg.host_id != default_host_id():
            return
        pairs = [(state_home() / "runs" / f"{old}-{cfg.interface}.json",
                  state_home() / "runs" / f"{cfg.host_id}-{cfg.interface}.json")]
        if not cfg.spool_dir:
            pairs.append((state_home() / "spool" / f"{old}-{cfg.interface}-{cfg.topic}",
                          state_home() / "spool" / f"{cfg.host_id}-{cfg.interface}-{cfg.topic}"))
        for src, dst in pairs:
            if src.exists() and not dst.exists():
                try:
                    src.rename(dst)
                    log.info("legacy_host_id_files_taken_over", source=str(src), destination=str(dst))
                except OSError as e:
                    log.warning("legacy_host_id_files_left", source=str(src), error=e.strerror)

    def _account_previous_run(self) -> str | None:
        """Pin the counters where bpffs allows; report a previous run that did not end cleanly.

        Returns the bpffs path for this run's counters, or None when they cannot be pinned."""
        cfg = self.cfg
        assert self.publisher is not None
        self.runfile = RunStateFile(state_home() / "runs" / f"{cfg.host_id}-{cfg.interface}.json")
        pin = pin_path(cfg.pin_dir, cfg.interface)
        account_crashed_run(self.runfile.read(), pin, self.publisher)
        return str(pin) if pin else None

    # -- batches ------------------------------------------------------------
    def _flush_batch(self) -> None:
        recs = self.batcher.take()
        if recs is None:
            return
        assert self.publisher is not None and self.capture is not None
        full = self.capture.ringbuf_full()  # the losses since the previous message travel with this one
        m = self.encoder.encode(recs, full - self._full_stamped)
        self._full_stamped = full
        self.publisher.publish(self.key, m.value, m.headers, m.records, m.ts_first_ns, m.ts_last_ns)
        self.totals.batches += 1

    def _drain(self, budget_s: float = DRAIN_BUDGET_S) -> int:
        """Read the ring until it is empty, flushing full batches; under overload, stop after
        ``budget_s`` so that the loop still serves delivery reports and adapts sampling."""
        assert self.capture is not None
        total = 0
        deadline = time.monotonic() + budget_s
        while True:
            room = self.batcher.room()
            recs = self.capture.reader.read(room)
            if len(recs):
                self.batcher.add(recs)
                total += len(recs)
                self.totals.records_read += len(recs)
            if self.batcher.full():
                self._flush_batch()
                if time.monotonic() < deadline:
                    continue
                return total
            if len(recs) < room:
                return total

    # -- run ----------------------------------------------------------------
    def run(self, duration_s: float | None = None) -> RunTotals:
        assert self.capture is not None and self.publisher is not None
        cfg = self.cfg
        self.capture.attach(cfg.interface, cfg.xdp_mode, cfg.direction, cfg.egress_hook)
        self.directions = self.capture.directions
        self.runfile.write(RunState(cfg.host_id, cfg.interface, self.run_id, cfg.stats_topic, time.time_ns(),
                                    directions=self.directions))
        log.info("producer_started", interface=cfg.interface, topic=cfg.topic, bootstrap=self.bootstrap,
                 run_id=self.run_id, host_id=cfg.host_id, schema_fp=self.fingerprint,
                 directions=self.directions, egress_hook=self.capture.egress_hook or None)
        figures = Figures(self, tty=sys.stderr.isatty(), interval_s=cfg.stats_interval_s)
        started = time.monotonic()
        self._next_stats = started + cfg.stats_publish_s
        if cfg.metrics_port:
            self.metrics = MetricsServer(cfg.metrics_address, cfg.metrics_port, self.snapshot, self.health,
                                         {"host": cfg.host_id, "interface": cfg.interface}, counters=COUNTERS,
                                         gauges=GAUGES)
            log.info("metrics_listening", address=cfg.metrics_address, port=self.metrics.port)
        try:
            while not self.stop.is_set():
                if self.publisher.fatal is not None:  # librdkafka gave this producer up: a new process
                    raise PktstreamError(f"the Kafka producer failed for good ({self.publisher.fatal.str()}); "
                                         "what it did not deliver is in the spool, which a restart replays")
                now = time.monotonic()
                if duration_s is not None and now - started >= duration_s:
                    break
                self._drain()
                now = time.monotonic()
                if self.batcher.due(now):
                    self._flush_batch()
                self.publisher.poll(0)
                self.publisher.replay()
                if cfg.adaptive_sampling and now >= self._next_sample_check:
                    self._adapt_sampling(now)
                figures.maybe_emit(now)
                if now >= self._next_stats:
                    self._next_stats = now + cfg.stats_publish_s
                    self._publish_stats(final=False)
                self.heartbeat.beat()
                # with batches in flight, wake often enough that delivery reports (and so
                # the acknowledged figures and latencies) are served promptly
                cap = 0.01 if self.publisher.queued() else 0.1
                if self.batcher and not self.batcher.quiet(now):
                    # Records are arriving: sleep instead of waking on each one, so that every
                    # drain takes thousands of records (the ring holds far more than a pause
                    # of DRAIN_PAUSE_S at any rate the producer sustains).
                    time.sleep(max(0.0, min(self.batcher.age_left_s(now), DRAIN_PAUSE_S, cap)))
                elif self.batcher:  # a quiet host's small batch: wake on the next record or when due
                    self.capture.reader.wait(max(0.0, min(self.batcher.age_left_s(now), cap)))
                else:
                    self.capture.reader.wait(min(cfg.batch_age_ms / 1000, cap))
        finally:
            self.shutdown(figures)
        return self.totals

    def snapshot(self) -> dict[str, Any]:
        """Current totals, for the stats topic and /metrics."""
        assert self.capture is not None and self.publisher is not None
        c = self.capture.counters()
        s = self.publisher.stats
        spool = self.publisher.spool  # (a Spool with no files is falsy: compared with None)
        lat = s.latency.percentiles_ms((50, 99))
        return {
            "packets_seen": c.packets,
            "records_captured": self.totals.records_read,
            "records_delivered": s.records_delivered,
            "records_failed": s.records_failed,
            "records_pending": self.totals.records_read - s.records_delivered - s.records_failed,
            "records_spooled": s.records_spooled,
            "records_replayed": s.records_replayed,
            "failed_for_runs": dict(s.failed_for_runs),
            "spool_bytes": spool.bytes if spool is not None else 0,
            "spool_records_dropped": spool.records_dropped if spool is not None else 0,
            "spool_dropped_by_cause": dict(spool.dropped_by_cause) if spool is not None else {},
            "spool_files_quarantined": spool.files_quarantined if spool is not None else 0,
            "ringbuf_full": c.ringbuf_full,
            "ringbuf_full_per_cpu": list(c.ringbuf_full_per_cpu),
            "sampled_out": c.sampled_out,
            "directions": self.directions,
            "egress_packets_seen": c.egress_packets,
            "egress_records_captured": c.egress_records,
            "egress_ringbuf_full": c.egress_ringbuf_full,
            "egress_sampled_out": c.egress_sampled_out,
            "sample_rate": self.sampler.rate,
            "batches": self.totals.batches,
            "records_redacted": self.encoder.redacted,
            "records_payload_cleared": self.encoder.payload_cleared,
            "bytes_delivered": s.bytes_delivered,
            "queue_messages": self.publisher.queued(),
            "ring_fill_ratio": self.capture.reader.pending_bytes() / self.capture.reader.size,
            "latency_p50_seconds": lat["p50"] / 1000,
            "latency_p99_seconds": lat["p99"] / 1000,
        }

    def health(self) -> tuple[bool, str]:
        if self.capture is None or not self.capture.directions:
            return False, "capture programs not attached"
        if not self.heartbeat.fresh():
            return False, "main loop stalled"
        return True, "ok"

    def _publish_stats(self, final: bool) -> tuple[bytes, bytes, dict[str, bool]]:
        """Queue a stats report; its key, value and outcome (filled in at delivery)."""
        assert self.publisher is not None
        key = stats_key(self.cfg.host_id, self.run_id)
        value = stats_report(self.snapshot(), self.cfg.host_id, self.cfg.interface, self.run_id, final)
        return key, value, self.publisher.publish_aux(self.cfg.stats_topic, key, value)

    def _adapt_sampling(self, now: float) -> None:
        assert self.capture is not None
        self._next_sample_check = now + 0.05
        c = self.capture.counters()
        new_drops = c.ringbuf_full - self._last_counters.ringbuf_full
        self._last_counters = c
        fill = self.capture.reader.pending_bytes() / self.capture.reader.size
        rate = self.sampler.update(now, fill, new_drops)
        if rate is not None:
            self.capture.set_sample_rate(rate)
            log.warning("sampling_changed", sample_rate=rate, ring_fill=round(fill, 3), new_drops=new_drops)

    def shutdown(self, figures: Figures | None = None) -> None:
        """Detach, drain what the kernel already captured, deliver everything, report."""
        if self.capture is None or self.publisher is None:
            return
        self.capture.detach()
        while self._drain() > 0:  # everything the kernel captured before the detach
            pass
        self._flush_batch()
        # within the 90 s that systemd (TimeoutStopSec) and Kubernetes (terminationGracePeriodSeconds)
        # give: 45 s to deliver, 10 s for the final report, then the spool for what is left; with
        # every broker down, a few seconds each (nothing can be delivered: the spool keeps it all)
        undelivered = self.publisher.drain_to_spool(45.0)
        key, value, report = self._publish_stats(final=True)
        self.publisher.flush(2.0 if self.publisher.brokers_down and self.publisher.spool is not None else 10.0)
        # the run is clean only when its final report is in the stats topic or in the spool (the
        # next run delivers it); else the next run accounts for it from the pinned counters
        reported = report["delivered"] or self.publisher.spool_aux(self.cfg.stats_topic, key, value)
        if not report["delivered"]:
            log.warning("final_report_spooled" if reported else "final_report_undelivered", run_id=self.run_id)
        self.runfile.write(RunState(self.cfg.host_id, self.cfg.interface, self.run_id, self.cfg.stats_topic,
                                    0, clean=reported, directions=self.directions))
        lat = self.publisher.stats.latency.percentiles_ms((50, 99))
        c = self.capture.counters()
        s = self.publisher.stats
        figures_now = self.snapshot()
        if figures is not None:
            figures.finish()
        log.info(
            "producer_stopped",
            run_id=self.run_id,
            packets_seen=c.packets,
            records_captured=self.totals.records_read,
            records_delivered=s.records_delivered,
            records_failed=s.records_failed,
            ringbuf_full=c.ringbuf_full,
            sampled_out=c.sampled_out,
            directions=self.directions,
            egress_packets_seen=c.egress_packets,
            egress_records_captured=c.egress_records,
            batches=self.totals.batches,
            seq_last=self.encoder.next_seq - 1,
            undelivered_messages=undelivered,
            records_spooled=s.records_spooled,
            records_replayed=s.records_replayed,
            spool_dropped_by_cause=figures_now["spool_dropped_by_cause"],
            spool_files_quarantined=figures_now["spool_files_quarantined"],
            latency_p50_ms=ms_or_none(lat["p50"]),
            latency_p99_ms=ms_or_none(lat["p99"]),
            sample_rate=self.sampler.rate,
        )
        if self.metrics is not None:
            self.metrics.close()
        if self.publisher.spool is not None:
            self.publisher.spool.close()
        self.capture.close()
        self.capture = None


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)

