"""The producer's live line of figures: one refreshed line on a terminal, a log event otherwise."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from pktstream.producer.pipeline import ProducerRun

log = structlog.get_logger("pktstream.producer")


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
