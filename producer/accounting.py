"""Loss accounting: the figures a run reports (stats topic, /metrics, logs), and the report of a
previous run that did not end cleanly, from the counters it left pinned in bpffs."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import structlog

from pktstream.producer import sysbpf
from pktstream.producer.capture import read_counters
from pktstream.producer.publish import Publisher
from pktstream.producer.runstate import RunState
from pktstream.schemas.stats import encode_report, stats_key

log = structlog.get_logger("pktstream.producer")

# the snapshot's fields that the stats topic carries (schemas/stats.avsc)
STATS_FIELDS = ("packets_seen", "records_captured", "records_delivered", "records_failed", "records_pending",
                "records_spooled", "ringbuf_full", "ringbuf_full_per_cpu", "sampled_out", "sample_rate", "batches",
                "directions", "egress_packets_seen", "egress_records_captured", "egress_ringbuf_full",
                "egress_sampled_out", "failed_for_runs")


def stats_report(snapshot: dict[str, Any], host_id: str, interface: str, run_id: str, final: bool) -> bytes:
    """One report of the stats topic (schemas/stats.avsc) from a run's figures."""
    report = {k: snapshot[k] for k in STATS_FIELDS}
    report.update(host_id=host_id, interface=interface, run_id=run_id, ts_ns=time.time_ns(), final=final,
                  crashed=False)
    return encode_report(report)


def ms_or_none(x: float) -> float | None:
    """A latency for a JSON log line: rounded, or None where there is none yet (never NaN)."""
    return None if math.isnan(x) else round(x, 2)


def pin_path(pin_dir: str, interface: str) -> Path | None:
    """Where this run's counters are pinned; None when they cannot be (no bpffs there)."""
    if pin_dir and sysbpf.is_bpffs(pin_dir):
        pin = Path(pin_dir) / interface / "counters"
        pin.parent.mkdir(parents=True, exist_ok=True)
        return pin
    if pin_dir:
        log.warning("counters_not_pinned", pin_dir=pin_dir, reason="not on a mounted bpffs",
                    effect="a killed producer's last records cannot be accounted for exactly")
    return None


def account_crashed_run(prev: RunState | None, pin: Path | None, publisher: Publisher) -> None:
    """Publish the final report of a previous run that did not end cleanly, from its pinned
    counters: everything it captured but never delivered is then counted in the stats topic."""
    if prev is None or prev.clean:
        return
    if pin is None or not pin.exists():
        log.warning("previous_run_unaccounted", run_id=prev.run_id,
                    reason="it did not end cleanly and left no pinned counters")
        return
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
        "directions": prev.directions, "egress_packets_seen": c.egress_packets,
        "egress_records_captured": c.egress_records, "egress_ringbuf_full": c.egress_ringbuf_full,
        "egress_sampled_out": c.egress_sampled_out,
    }
    publisher.publish_aux(prev.stats_topic, stats_key(prev.host_id, prev.run_id), encode_report(report))
    log.warning("crashed_run_accounted", run_id=prev.run_id, packets_seen=c.packets,
                records_captured=c.records, ringbuf_full=c.ringbuf_full, sampled_out=c.sampled_out)
