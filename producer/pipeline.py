"""The producer's main loop: ring buffer -> batch -> Avro container -> Kafka.

Each stage works on whole batches: the ring buffer is copied out as one
array, mapped to columns with numpy, encoded by the batch encoder and sent
as one Kafka message of up to ``batch_records`` records.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
from fastavro.schema import fingerprint, to_parsing_canonical_form

from pktstream.producer import sysbpf
from pktstream.producer.capture import (
    Capture,
    Counters,
    check_privileges,
    default_route_interface,
    empty_records,
    ifindex_of,
    read_counters,
)
from pktstream.producer.config import ProducerConfig
from pktstream.producer.metrics import COUNTERS, GAUGES
from pktstream.producer.privacy import PayloadScope, redact
from pktstream.producer.publish import Publisher
from pktstream.producer.runstate import RunState, RunStateFile
from pktstream.producer.sampling import SamplingController
from pktstream.producer.spool import Spool
from pktstream.runtime.errors import InterfaceError
from pktstream.runtime.kafka import check_reachable, client_config, ensure_topic
from pktstream.runtime.metrics import Heartbeat, MetricsServer
from pktstream.runtime.paths import state_home
from pktstream.schemas import load_schema_json, packets
from pktstream.schemas.container import ContainerWriter
from pktstream.schemas.stats import encode_report, stats_key

log = structlog.get_logger("pktstream.producer")

PACKET_SCHEMA = "packet"
DRAIN_PAUSE_S = 0.005
DRAIN_BUDGET_S = 0.05
# the snapshot's fields that the stats topic carries (schemas/stats.avsc)
STATS_FIELDS = ("packets_seen", "records_captured", "records_delivered", "records_failed", "records_pending",
                "records_spooled", "ringbuf_full", "ringbuf_full_per_cpu", "sampled_out", "sample_rate", "batches")


def schema_fingerprint(schema: dict[str, Any]) -> str:
    """CRC-64-AVRO (Rabin) fingerprint of the schema's parsing canonical form, hex."""
    return str(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


@dataclass
class RunTotals:
    records_read: int = 0
    batches: int = 0
    next_seq: int = 0
    redacted: int = 0  # records whose payload had credentials replaced
    payload_cleared: int = 0  # records whose payload was out of scope


class ProducerRun:
    def __init__(self, cfg: ProducerConfig, bootstrap: str, stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.stop = stop or threading.Event()
        self.run_id = uuid.uuid4().hex[:16]
        self.totals = RunTotals()
        self._pending: list[npt.NDArray[np.void]] = []
        self._pending_n = 0
        self._pending_bytes = 0
        self._pending_since = 0.0
        self.capture: Capture | None = None
        self.publisher: Publisher | None = None
        self._last_counters = Counters()
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
                {"retention.ms": str(cfg.retention_ms), "max.message.bytes": str(64 << 20),
                 "compression.type": "producer"},
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
                "pktstream.host": cfg.host_id,
                "pktstream.interface": cfg.interface,
                "pktstream.run_id": self.run_id,
                "pktstream.payload_bytes": str(cfg.payload_bytes),
            },
        )
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
        self.static_headers: list[tuple[str, bytes]] = [
            ("pktstream.schema_fp", self.fingerprint.encode()),
            ("pktstream.host", cfg.host_id.encode()),
            ("pktstream.interface", cfg.interface.encode()),
            ("pktstream.run_id", self.run_id.encode()),
        ]

    def _account_previous_run(self) -> str | None:
        """Pin the counters where bpffs allows; report a previous run that did not end cleanly.

        Returns the bpffs path for this run's counters, or None when they cannot be pinned."""
        cfg = self.cfg
        assert self.publisher is not None
        self.runfile = RunStateFile(state_home() / "runs" / f"{cfg.host_id}-{cfg.interface}.json")
        prev = self.runfile.read()
        pin: Path | None = None
        if cfg.pin_dir and sysbpf.is_bpffs(cfg.pin_dir):
            pin = Path(cfg.pin_dir) / cfg.interface / "counters"
            pin.parent.mkdir(parents=True, exist_ok=True)
        elif cfg.pin_dir:
            log.warning("counters_not_pinned", pin_dir=cfg.pin_dir, reason="not on a mounted bpffs",
                        effect="a killed producer's last records cannot be accounted for exactly")
        if prev is None or prev.clean:
            return str(pin) if pin else None
        if pin is None or not pin.exists():
            log.warning("previous_run_unaccounted", run_id=prev.run_id,
                        reason="it did not end cleanly and left no pinned counters")
            return str(pin) if pin else None
        fd = sysbpf.obj_get(str(pin))
        try:
            c = read_counters(fd)
        finally:
            os.close(fd)
        report = {
            "host_id": prev.host_id, "interface": prev.interface, "run_id": prev.run_id, "ts_ns": time.time_ns(),
            "final": True, "crashed": True, "packets_seen": c.packets, "records_captured": c.records,
            "records_delivered": 0, "records_failed": 0, "records_pending": 0, "records_spooled": 0,
            "ringbuf_full": c.ringbuf_full, "ringbuf_full_per_cpu": list(c.ringbuf_full_per_cpu),
            "sampled_out": c.sampled_out, "sample_rate": 0, "batches": 0,
        }
        self.publisher.publish_aux(prev.stats_topic, stats_key(prev.host_id, prev.run_id), encode_report(report))
        log.warning("crashed_run_accounted", run_id=prev.run_id, packets_seen=c.packets,
                    records_captured=c.records, ringbuf_full=c.ringbuf_full, sampled_out=c.sampled_out)
        return str(pin)

    # -- batches ------------------------------------------------------------
    def _add(self, recs: npt.NDArray[np.void]) -> None:
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(recs)
        self._pending_n += len(recs)
        self._pending_bytes += packets.estimated_bytes(recs)

    def _flush_batch(self) -> None:
        if not self._pending:
            return
        assert self.publisher is not None
        recs = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending = []
        self._pending_n = 0
        self._pending_bytes = 0
        n = len(recs)
        if self.cfg.payload_bytes:
            self.totals.payload_cleared += self.scope.apply(recs)
            if self.cfg.redact:
                self.totals.redacted += redact(recs)
        seq_first = self.totals.next_seq
        offset = time.time_ns() - time.monotonic_ns()
        cols = packets.to_columns(recs, seq_first, offset)
        value = self.writer.container(cols, n)
        headers = [
            *self.static_headers,
            ("pktstream.records", str(n).encode()),
            ("pktstream.seq_first", str(seq_first).encode()),
            ("pktstream.seq_last", str(seq_first + n - 1).encode()),
        ]
        self.publisher.publish(self.key, value, headers, n, int(cols["ts_ns"][0]), int(cols["ts_ns"][-1]))
        self.totals.next_seq += n
        self.totals.batches += 1

    def _batch_due(self, now: float) -> bool:
        return bool(self._pending) and (
            self._pending_n >= self.cfg.batch_records
            or self._pending_bytes >= self.cfg.batch_bytes
            or (now - self._pending_since) * 1000 >= self.cfg.batch_age_ms
        )

    def _drain(self, budget_s: float = DRAIN_BUDGET_S) -> int:
        """Read the ring until it is empty, flushing full batches; under overload, stop after
        ``budget_s`` so that the loop still serves delivery reports and adapts sampling."""
        assert self.capture is not None
        total = 0
        deadline = time.monotonic() + budget_s
        while True:
            room = self.cfg.batch_records - self._pending_n
            recs = self.capture.reader.read(room)
            if len(recs):
                self._add(recs)
                total += len(recs)
                self.totals.records_read += len(recs)
            if self._pending_n >= self.cfg.batch_records or self._pending_bytes >= self.cfg.batch_bytes:
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
        self.capture.attach(cfg.interface, cfg.xdp_mode)
        log.info("producer_started", interface=cfg.interface, topic=cfg.topic, bootstrap=self.bootstrap,
                 run_id=self.run_id, host_id=cfg.host_id, schema_fp=self.fingerprint)
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
                now = time.monotonic()
                if duration_s is not None and now - started >= duration_s:
                    break
                self._drain()
                now = time.monotonic()
                if self._batch_due(now):
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
                if self._pending:
                    # Records are arriving: sleep instead of waking on each one, so that every
                    # drain takes thousands of records (the ring holds far more than a pause
                    # of DRAIN_PAUSE_S at any rate the producer sustains).
                    left = cfg.batch_age_ms / 1000 - (now - self._pending_since)
                    time.sleep(max(0.0, min(left, DRAIN_PAUSE_S, cap)))
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
        lat = s.latency.percentiles_ms((50, 99))
        return {
            "packets_seen": c.packets,
            "records_captured": self.totals.records_read,
            "records_delivered": s.records_delivered,
            "records_failed": s.records_failed,
            "records_pending": self.totals.records_read - s.records_delivered - s.records_failed,
            "records_spooled": s.records_spooled,
            "records_replayed": s.records_replayed,
            "spool_bytes": self.publisher.spool.bytes if self.publisher.spool else 0,
            "ringbuf_full": c.ringbuf_full,
            "ringbuf_full_per_cpu": list(c.ringbuf_full_per_cpu),
            "sampled_out": c.sampled_out,
            "sample_rate": self.sampler.rate,
            "batches": self.totals.batches,
            "records_redacted": self.totals.redacted,
            "records_payload_cleared": self.totals.payload_cleared,
            "bytes_delivered": s.bytes_delivered,
            "queue_messages": self.publisher.queued(),
            "ring_fill_ratio": self.capture.reader.pending_bytes() / self.capture.reader.size,
            "latency_p50_seconds": lat["p50"] / 1000,
            "latency_p99_seconds": lat["p99"] / 1000,
        }

    def health(self) -> tuple[bool, str]:
        if self.capture is None or self.capture.link_fd is None:
            return False, "xdp program not attached"
        if not self.heartbeat.fresh():
            return False, "main loop stalled"
        return True, "ok"

    def _publish_stats(self, final: bool) -> None:
        assert self.publisher is not None
        snap = self.snapshot()
        report = {k: snap[k] for k in STATS_FIELDS}
        report.update(host_id=self.cfg.host_id, interface=self.cfg.interface, run_id=self.run_id,
                      ts_ns=time.time_ns(), final=final, crashed=False)
        self.publisher.publish_aux(self.cfg.stats_topic, stats_key(self.cfg.host_id, self.run_id),
                                   encode_report(report))

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
        undelivered = self.publisher.drain_to_spool(60.0)
        self._publish_stats(final=True)
        self.publisher.flush(30.0)
        self.runfile.write(RunState(self.cfg.host_id, self.cfg.interface, self.run_id, self.cfg.stats_topic,
                                    0, clean=True))
        lat = self.publisher.stats.latency.percentiles_ms((50, 99))
        c = self.capture.counters()
        s = self.publisher.stats
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
            batches=self.totals.batches,
            seq_last=self.totals.next_seq - 1,
            undelivered_messages=undelivered,
            records_spooled=s.records_spooled,
            records_replayed=s.records_replayed,
            latency_p50_ms=round(lat["p50"], 2),
            latency_p99_ms=round(lat["p99"], 2),
            sample_rate=self.sampler.rate,
        )
        if self.metrics is not None:
            self.metrics.close()
        if self.publisher.spool is not None:
            self.publisher.spool.close()
        self.capture.close()
        self.capture = None


class Figures:
    """The live line of figures: on a terminal one refreshed line, otherwise a log event."""

    def __init__(self, run: ProducerRun, tty: bool, interval_s: float) -> None:
        self.run = run
        self.tty = tty
        self.interval_s = interval_s if tty else max(interval_s, 10.0)
        self.t0 = self.last_t = time.monotonic()
        self.last_records = 0
        self.last_bytes = 0

    def maybe_emit(self, now: float) -> None:
        if now - self.last_t < self.interval_s:
            return
        run = self.run
        assert run.capture is not None and run.publisher is not None
        c = run.capture.counters()
        s = run.publisher.stats
        dt = now - self.last_t
        rate = (run.totals.records_read - self.last_records) / dt
        brate = (s.bytes_delivered - self.last_bytes) / dt
        self.last_t, self.last_records, self.last_bytes = now, run.totals.records_read, s.bytes_delivered
        fig = {
            "records_per_s": round(rate),
            "bytes_per_s": round(brate),
            "records": run.totals.records_read,
            "delivered": s.records_delivered,
            "batches": run.totals.batches,
            "kernel_drops": c.ringbuf_full,
            "queue": run.publisher.queued(),
            "failed": s.records_failed,
            "sample_rate": run.sampler.rate,
        }
        if self.tty:
            line = (f"\r{fig['records_per_s']:>9,} rec/s {fig['bytes_per_s'] / 1e6:8.2f} MB/s  "
                    f"records {fig['records']:,}  delivered {fig['delivered']:,}  batches {fig['batches']:,}  "
                    f"kernel drops {fig['kernel_drops']:,}  queue {fig['queue']}  failed {fig['failed']:,}  "
                    f"sampling 1/{fig['sample_rate']} ")
            sys.stderr.write(line)
            sys.stderr.flush()
        else:
            log.info("producer_stats", **fig)

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)

