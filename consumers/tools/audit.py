"""``pktstream audit``: reconcile the packet topic against the producers' own accounting.

Reads the stats topic (each run's latest report) and the packet topic's
message headers (host, run, sequence range; the Avro values are not decoded),
and reports per run and per minute: packets seen, records captured, records
in the topic, duplicates, gaps in the sequence numbers, and losses by cause.
A run is exact when every packet the kernel saw is either in the topic once
or counted as lost with its cause.
"""

from __future__ import annotations

import statistics
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from pktstream.schemas import headers as H
from pktstream.schemas.decode import message_headers
from pktstream.schemas.stats import decode_reports

log = structlog.get_logger("pktstream.audit")

CLOCK_WARN_S = 300  # the consumers' default --clock-tolerance-s


@dataclass
class RunAudit:
    host: str
    run_id: str
    interface: str = ""
    messages: int = 0
    records_in_topic: int = 0  # as the headers count them, duplicates included
    egress_in_topic: int = 0  # of which egress records
    unique: int = 0
    duplicates: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)  # missing [first, last] seq ranges
    report: dict[str, Any] | None = None
    per_minute: dict[str, int] = field(default_factory=dict)
    # the host's clock against the broker's: the median of each message's newest record time less
    # its append time (None: no message with both, e.g. a topic that keeps the producers' times)
    clock_offset_s: float | None = None
    # records of this run that a later run of the same host gave up for good while replaying the
    # spool (its reports' failed_for_runs): this run's own report counted them as pending
    failed_later: int = 0
    # what this run gave up of earlier runs' batches (the largest figure of any of its reports)
    failed_for_runs: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Records given up: by this run (its report), and by later runs replaying its spooled batches."""
        return (int(self.report["records_failed"]) if self.report else 0) + self.failed_later

    @property
    def pending(self) -> int:
        """Records pending at this run's report, less those a later run gave up since."""
        return max(0, (int(self.report["records_pending"]) if self.report else 0) - self.failed_later)

    @property
    def missing(self) -> int:
        return sum(b - a + 1 for a, b in self.gaps)

    @property
    def crashed(self) -> bool:
        return bool(self.report and self.report.get("crashed"))

    @property
    def crash_lost(self) -> int:
        """Records of a run that did not end cleanly that entered the ring but never reached the topic."""
        if not self.crashed:
            return 0
        assert self.report is not None
        return max(0, int(self.report["records_captured"]) - self.unique)

    @property
    def unexplained(self) -> int:
        """Captured records neither in the topic nor counted as given up or still pending.

        Records pending at the report (in the producer's queue or spool) that were
        delivered later, by this run or by a later run replaying the spool, are in
        the topic by now and need no explaining."""
        if self.report is None:
            return self.missing
        if self.crashed:
            return 0  # what is absent was lost in the crash: crash_lost counts it
        r = self.report
        absent = int(r["records_captured"]) - self.unique - self.failed
        return max(0, absent - self.pending)

    @property
    def kernel_identity(self) -> bool:
        """packets seen = records captured + ring-full losses + sampled out (exact once final)."""
        r = self.report
        return r is not None and r["packets_seen"] == r["records_captured"] + r["ringbuf_full"] + r["sampled_out"]

    @property
    def directions(self) -> list[str]:
        return list(self.report.get("directions", ["ingress"])) if self.report else []

    def by_direction(self) -> dict[str, dict[str, int]]:
        """Per direction: seen, captured, ring full, sampled out (the report's figures) and the records
        in the topic (the messages' headers)."""
        r = self.report
        if r is None:
            return {}
        egress = {"seen": int(r.get("egress_packets_seen", 0)), "captured": int(r.get("egress_records_captured", 0)),
                  "ringbuf_full": int(r.get("egress_ringbuf_full", 0)),
                  "sampled_out": int(r.get("egress_sampled_out", 0)), "in_topic": self.egress_in_topic}
        total = {"seen": int(r["packets_seen"]), "captured": int(r["records_captured"]),
                 "ringbuf_full": int(r["ringbuf_full"]), "sampled_out": int(r["sampled_out"]),
                 "in_topic": self.records_in_topic}
        ingress = {k: total[k] - egress[k] for k in total}
        return {d: v for d, v in (("ingress", ingress), ("egress", egress)) if d in self.directions}

    @property
    def directions_balance(self) -> bool:
        """Each direction's kernel identity holds, and when nothing is failed, pending or duplicated,
        each direction's records are in the topic exactly."""
        rows = self.by_direction()
        if not rows:
            return False
        plain = self.report is not None and not self.crashed and self.duplicates == 0 and \
            self.failed == 0 and self.pending == 0
        return all(v["seen"] == v["captured"] + v["ringbuf_full"] + v["sampled_out"]
                   and (not plain or v["in_topic"] == v["captured"]) for v in rows.values())

    @property
    def exact(self) -> bool:
        """Every packet the run's kernel programs saw is in the topic once or counted with its cause,
        in each direction."""
        return bool(self.report and self.report["final"] and self.kernel_identity and self.unexplained == 0
                    and self.duplicates == 0 and self.directions_balance)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(missing=self.missing, failed=self.failed, pending=self.pending,
                 unexplained=self.unexplained, kernel_identity=self.kernel_identity,
                 crashed=self.crashed, crash_lost=self.crash_lost, exact=self.exact, directions=self.directions,
                 by_direction=self.by_direction())
        return d


def _read_all(conf: Mapping[str, Any], topic: str) -> list[Any]:
    """Every message of a topic, from the beginning to the end as of now."""
    c = Consumer({**conf, "group.id": f"pktstream-audit-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    out: list[Any] = []
    try:
        md = c.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            raise KafkaException(f"topic {topic!r} not found")
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in t.partitions]
        todo = set()
        for p in parts:
            lo, hi = c.get_watermark_offsets(p, timeout=10)
            if hi > lo:
                todo.add(p.partition)
        c.assign(parts)
        idle = 0
        while todo and idle < 60:
            msg = c.poll(0.5)
            if msg is None:
                idle += 1
                continue
            idle = 0
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    todo.discard(msg.partition() or 0)
                    continue
                raise KafkaException(err)
            out.append(msg)
    finally:
        c.close()
    return out


def _merge(ranges: list[tuple[int, int, int]]) -> tuple[int, list[tuple[int, int]], int]:
    """(unique count, merged ranges, highest seq) of inclusive seq ranges."""
    merged: list[list[int]] = []
    for a, b, _ in sorted(ranges):
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    unique = sum(b - a + 1 for a, b in merged)
    return unique, [(a, b) for a, b in merged], merged[-1][1] if merged else -1


def _number(text: str) -> int:
    """A header's integer (ValueError unless it is one of at most 19 digits)."""
    if len(text) > 20:
        raise ValueError(f"not a number: {text[:20]!r}...")
    return int(text)


def audit(conf: Mapping[str, Any], topic: str, stats_topic: str,
          skipped: dict[str, int] | None = None) -> list[RunAudit]:
    """Every run's audit; ``skipped`` (when given) gets, per topic, the messages that could not be
    read as pktstream's (no or malformed headers, a corrupt report)."""
    skipped = {} if skipped is None else skipped
    runs: dict[tuple[str, str], RunAudit] = {}
    ranges: dict[tuple[str, str], list[tuple[int, int, int]]] = defaultdict(list)
    offsets: dict[tuple[str, str], list[float]] = defaultdict(list)
    foreign = 0
    for msg in _read_all(conf, topic):
        h = message_headers(msg)
        try:  # headers any host writes: numbers of at most 19 digits, else the message is skipped
            key = (h[H.HOST], h[H.RUN_ID])
            first, last, n = (_number(h[k]) for k in (H.SEQ_FIRST, H.SEQ_LAST, H.RECORDS))
            egress = _number(h.get(H.RECORDS_EGRESS, "0"))
            ts_last = _number(h[H.TS_LAST]) if H.TS_LAST in h else None
        except (KeyError, ValueError):
            foreign += 1
            continue
        ra = runs.setdefault(key, RunAudit(host=key[0], run_id=key[1], interface=h.get(H.INTERFACE, "")))
        ra.messages += 1
        ra.records_in_topic += n
        ra.egress_in_topic += egress
        ranges[key].append((first, last, n))
        ts_type, ts_ms = msg.timestamp()
        if ts_type == TIMESTAMP_LOG_APPEND_TIME and ts_last is not None:
            offsets[key].append(ts_last / 1e9 - ts_ms / 1e3)
        minute = datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")
        ra.per_minute[minute] = ra.per_minute.get(minute, 0) + n
    if foreign:  # said on standard error by the command (skipped: not counted in any run)
        log.warning("audit_foreign_messages", topic=topic, count=foreign)
    skipped[topic] = foreign
    try:
        stats_msgs = _read_all(conf, stats_topic)
    except KafkaException:
        stats_msgs = []
    for msg in stats_msgs:
        try:
            reports = decode_reports(msg.value())
        except Exception as e:  # a corrupt report must not stop the audit
            log.warning("audit_corrupt_report", offset=msg.offset(), reason=str(e))
            skipped[stats_topic] = skipped.get(stats_topic, 0) + 1
            continue
        for r in reports:
            key = (r["host_id"], r["run_id"])
            ra = runs.setdefault(key, RunAudit(host=key[0], run_id=key[1], interface=r["interface"]))
            if ra.report is None or (r["final"], r["ts_ns"]) >= (ra.report["final"], ra.report["ts_ns"]):
                ra.report = r
            # it only grows within a run; the report kept may lack it (one made for a crashed run)
            for earlier, n in (r.get("failed_for_runs") or {}).items():
                ra.failed_for_runs[earlier] = max(ra.failed_for_runs.get(earlier, 0), int(n))
    credit_later_failures(runs)
    for key, ra in runs.items():
        if offsets.get(key):
            ra.clock_offset_s = round(float(statistics.median(offsets[key])), 3)
        unique, merged, top = _merge(ranges.get(key, []))
        ra.unique = unique
        ra.duplicates = ra.records_in_topic - unique
        end = max(top, int(ra.report["records_captured"]) - 1 if ra.report else top)
        gaps: list[tuple[int, int]] = []
        nxt = 0
        for a, b in merged:
            if a > nxt:
                gaps.append((nxt, a - 1))
            nxt = b + 1
        if end >= nxt:
            gaps.append((nxt, end))
        ra.gaps = gaps
    return sorted(runs.values(), key=lambda r: (r.host, r.report["ts_ns"] if r.report else 0, r.run_id))


def credit_later_failures(runs: Mapping[tuple[str, str], RunAudit]) -> None:
    """What later runs of a host gave up of earlier runs' spooled batches (their reports'
    failed_for_runs) counted as those earlier runs' failed records."""
    for (host, _run), ra in runs.items():
        for earlier, n in (ra.failed_for_runs or (ra.report or {}).get("failed_for_runs") or {}).items():
            target = runs.get((host, earlier))
            if target is not None and target is not ra:
                target.failed_later += int(n)


def render(runs: list[RunAudit]) -> str:
    cols = ["host", "run", "iface", "dirs", "seen", "captured", "in topic", "dups", "missing", "ring full", "sampled",
            "failed", "pending", "crash lost", "unexplained", "final", "exact", "clock"]
    rows = [cols]
    for r in runs:
        rep = r.report or {}
        rows.append([r.host, r.run_id, r.interface, "+".join(r.directions) or "?", str(rep.get("packets_seen", "?")),
                     str(rep.get("records_captured", "?")), str(r.unique), str(r.duplicates), str(r.missing),
                     str(rep.get("ringbuf_full", "?")), str(rep.get("sampled_out", "?")),
                     str(r.failed) if r.report else "?", str(r.pending) if r.report else "?",
                     str(r.crash_lost) if r.crashed else "-", str(r.unexplained),
                     str(rep.get("final", "?")).lower(), "yes" if r.exact else "NO",
                     "-" if r.clock_offset_s is None else f"{r.clock_offset_s:+.1f}s"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(w) if i >= 4 else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.append("")
    if any(len(r.directions) > 1 or r.directions == ["egress"] for r in runs):
        lines.append("per direction (seen = captured + ring full + sampled; in topic from the message headers):")
        for r in runs:
            for d, v in r.by_direction().items():
                lines.append(f"  {r.host}  {r.run_id}  {d:7}  seen {v['seen']}  captured {v['captured']}  "
                             f"in topic {v['in_topic']}  ring full {v['ringbuf_full']}  sampled {v['sampled_out']}")
        lines.append("")
    lines.append("records in the topic per minute (message time):")
    for r in runs:
        for minute, n in sorted(r.per_minute.items()):
            lines.append(f"  {r.host}  {r.run_id}  {minute}  {n}")
    for r in runs:
        if r.clock_offset_s is not None and abs(r.clock_offset_s) > CLOCK_WARN_S:
            lines.append(f"clock of {r.host}/{r.run_id}: its records are {r.clock_offset_s:+.0f} s off the broker's "
                         f"time (the consumers set aside records more than --clock-tolerance-s, default "
                         f"{CLOCK_WARN_S} s, ahead)")
    for r in runs:
        if r.gaps:
            shown = ", ".join(f"{a}-{b}" for a, b in r.gaps[:10])
            lines.append(f"gaps in {r.host}/{r.run_id}: {shown}{' ...' if len(r.gaps) > 10 else ''}")
    return "\n".join(lines)
