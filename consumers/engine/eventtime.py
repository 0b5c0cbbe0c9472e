"""Event time of a consumer app (the rules are in ``runner``'s docstring): each capture point's
clock within a packet partition, the partition's progress and how both travel as committed offset
metadata, the watermark of a repartition partition, and the warnings that name a capture point
whose records arrive late or stamped by a clock out of tolerance.

Every host of a fleet writes the packet topic, so no single host's clock may move event time for
the others:

- a record stamped more than ``future_ns`` ahead of its reference time (the broker's append time
  when the topic keeps it, else the earlier of the message's time and this process's clock) or
  more than ``behind_ns`` behind it is *set aside* (counted per capture point, never processed): it
  never advances progress, and so never the watermark;
- a capture point's progress is the latest honest event time of its records, each taken at most
  at its message's reference time (a host a little ahead is counted but moves nothing past the
  broker's clock); a partition's progress is the *slowest active* capture point's (active: within
  ``idle_ns`` of the partition's fastest), never going back and never more than ``behind_ns``
  behind the broker's time (a frozen clock holds the others that long at most); one host's long
  batches or backlog therefore make none of another host's records late, and a capture point that
  stops sending holds the others back for at most ``idle_ns`` of event time. A partition warms up
  first: its progress stays none until it holds ``idle_ns`` of event time (or of broker time), so
  the hosts that share it have shown up before anything is late;
- a repartition partition's watermark is the slowest progress of the packet partitions with
  unread input; a caught-up partition holds it while its progress is within ``idle_ns`` of
  wall-clock time (then time moves on without new traffic), and it never passes wall-clock time
  plus ``future_ns``.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

log = structlog.get_logger("pktstream.stream")

NO_PROGRESS = -1
LATE_LOG_EVERY_S = 60.0


PROGRESS_META = "progress="  # the offset metadata of a packet partition: its progress (ns)
POINTS_META = ";points="  # then its capture points' clocks, as progress deltas
FIRST_META = ";first="  # or, while warming up, the earliest event time seen
FIRST_REF_META = ";firstref="  # ... and the first message's reference time
MAX_POINTS = 1000  # capture points a partition keeps the clocks of
MAX_METADATA_CHARS = 3800  # Kafka keeps at most 4096 bytes of offset metadata (offset.metadata.max.bytes)
FORGET_NS = 3600 * 10**9  # a capture point this far behind its partition's fastest is forgotten
S = 10**9


@dataclass(frozen=True)
class ClockRules:
    """Tolerances of event time (settings of the consumer apps; docs/operations.md)."""

    grace_ns: int  # how far behind its partition's progress a record may be (the app's window grace)
    future_ns: int = 300 * S  # a record stamped further ahead of its reference time is set aside
    behind_ns: int = 3600 * S  # ... and one stamped further behind it (a frozen clock holds no longer)
    idle_ns: int = 60 * S  # a capture point further behind its partition's fastest no longer holds it


def point_key(origin: str) -> str:
    """A capture point's short, stable key in offset metadata (48 bits of a hash of host/interface)."""
    return hashlib.blake2b(origin.encode(errors="replace"), digest_size=6).hexdigest()


@dataclass
class Judged:
    keep: npt.NDArray[np.bool_]  # rows to process
    future: npt.NDArray[np.bool_]  # rows stamped too far ahead of the reference time
    behind: npt.NDArray[np.bool_]  # ... or too far behind it
    late: npt.NDArray[np.bool_]  # honest rows older than the partition's progress minus the grace
    offset_ns: int  # the message's newest record against its reference time (the host's clock offset)


@dataclass
class SourceClock:
    """One packet partition's event time: its progress, and each capture point's clock.

    A capture point's clock takes its honest records' event times, each at most its message's
    reference time (a host ahead of the broker by less than the tolerance is counted, but cannot
    move anyone's progress past the broker's time). The progress is the slowest active capture
    point's; it never goes back, and never stays more than ``behind_ns`` behind the broker's time
    (a frozen clock holds the others for at most that long). Until the partition has warmed up
    (``idle_ns`` of event time, or of broker time) there is none; a partition whose messages carry
    no honest record then follows the broker's time less ``idle_ns``."""

    progress: int = NO_PROGRESS
    points: dict[str, int] = field(default_factory=dict)  # point_key(origin) -> its clock (event time)
    first: int = NO_PROGRESS  # the earliest honest event time seen while the progress is still none
    first_ref: int = NO_PROGRESS  # the first message's reference time, while the progress is still none
    now_ref: int = NO_PROGRESS  # the latest reference (broker) time seen (not committed: derived again)

    def seen(self, ref_ns: int, rules: ClockRules) -> None:
        """A message of the partition was read, whatever it held (one that did not decode too)."""
        self.now_ref = max(self.now_ref, ref_ns)
        if self.progress == NO_PROGRESS and self.first_ref == NO_PROGRESS:
            self.first_ref = ref_ns
        self._advance(rules)

    def judge(self, origin: str, ts: npt.NDArray[np.int64], ref_ns: int, rules: ClockRules) -> Judged:
        """Judge a message's rows (their event times), then move the clocks on with the honest ones.
        Whether a row is late depends only on the partition's order, never on when it was read."""
        future = ts > ref_ns + rules.future_ns
        behind = ts < ref_ns - rules.behind_ns
        honest = ~(future | behind)
        late = honest & (ts < self.progress - rules.grace_ns) if self.progress != NO_PROGRESS \
            else np.zeros(len(ts), bool)
        offset = int(ts.max()) - ref_ns if len(ts) else 0
        if honest.any():
            key = point_key(origin)
            self.points[key] = max(self.points.get(key, NO_PROGRESS), min(int(ts[honest].max()), ref_ns))
            if self.progress == NO_PROGRESS:
                low = int(ts[honest].min())
                self.first = low if self.first == NO_PROGRESS else min(self.first, low)
            if len(self.points) > MAX_POINTS:  # bounded: the furthest behind go first
                self.points = dict(sorted(self.points.items(), key=lambda kv: kv[1])[-MAX_POINTS:])
        self.seen(ref_ns, rules)
        return Judged(honest & ~late, future, behind, late, offset)

    def _advance(self, rules: ClockRules) -> None:
        top = max(self.points.values()) if self.points else NO_PROGRESS
        if self.progress == NO_PROGRESS:
            by_event = self.points and top - self.first >= rules.idle_ns
            by_broker = self.first_ref != NO_PROGRESS and self.now_ref - self.first_ref >= rules.idle_ns
            if not (by_event or by_broker):
                return  # warming up: the capture points that share the partition have yet to show up
        if self.points:
            cand = min(v for v in self.points.values() if v >= top - rules.idle_ns)
        else:
            cand = self.now_ref - rules.idle_ns
        if self.now_ref != NO_PROGRESS:
            cand = max(cand, self.now_ref - rules.behind_ns)
        self.progress = max(self.progress, cand)
        self.first = self.first_ref = NO_PROGRESS
        if len(self.points) > 1:  # bounded: capture points long gone are forgotten
            self.points = {k: v for k, v in self.points.items() if v >= top - FORGET_NS}

    def metadata(self) -> str:
        """The clock as committed offset metadata: the progress (or, warming up, the first event
        and broker times), then as many capture points as fit: the fastest, then the slowest (the
        ones that hold the progress)."""
        out = progress_metadata(self.progress)
        base = self.progress
        if self.progress == NO_PROGRESS:
            if self.first_ref == NO_PROGRESS:
                return out
            out += f"{FIRST_META}{self.first}{FIRST_REF_META}{self.first_ref}"
            base = self.first if self.first != NO_PROGRESS else self.first_ref
        if not self.points:
            return out
        ranked = sorted(self.points.items(), key=lambda kv: kv[1])
        parts = []
        room = MAX_METADATA_CHARS - len(out) - len(POINTS_META)
        for k, v in [ranked[-1], *ranked[:-1]]:
            item = f"{k}:{v - base}"
            room -= len(item) + 1
            if room < 0:
                break
            parts.append(item)
        return out + POINTS_META + ",".join(parts)

    @classmethod
    def parse(cls, meta: str | None) -> SourceClock:
        """A partition's clock from committed offset metadata (none, or an older consumer's
        ``progress=N`` alone: the progress without capture points)."""
        if not meta or not meta.startswith(PROGRESS_META):
            return cls()
        head, _, rest = meta.partition(POINTS_META)
        clock = cls(parse_progress(head))
        base = clock.progress
        if clock.progress == NO_PROGRESS and FIRST_META in head:
            with contextlib.suppress(ValueError):
                first, _, first_ref = head.partition(FIRST_META)[2].partition(FIRST_REF_META)
                clock.first, clock.first_ref = int(first), int(first_ref)
                base = clock.first if clock.first != NO_PROGRESS else clock.first_ref
        for item in rest.split(",") if rest and base != NO_PROGRESS else []:
            k, _, d = item.partition(":")
            with contextlib.suppress(ValueError):
                clock.points[k] = base + int(d)
        return clock


def progress_metadata(ns: int) -> str:
    return f"{PROGRESS_META}{ns}"


def parse_progress(meta: str | None) -> int:
    """A packet partition's progress from its committed offset's metadata (none yet: NO_PROGRESS)."""
    if meta and meta.startswith(PROGRESS_META):
        with contextlib.suppress(ValueError):
            return int(meta[len(PROGRESS_META):].partition(";")[0])
    return NO_PROGRESS


def watermark(sources: dict[int, int], pending: Iterable[int], now_ns: int, idle_ns: int = 0,
              future_ns: int | None = None) -> int:
    """A repartition partition's watermark: the slowest progress of its packet partitions. One with
    unread input holds it at its progress (NO_PROGRESS while one of those has none yet); one caught
    up holds it while its progress is within ``idle_ns`` of wall-clock time (a host's backlog
    after a short outage still finds its windows open), and is idle after that; when none holds
    it, wall-clock time. Never past wall-clock time plus ``future_ns``."""
    pending = set(pending)
    held: list[int] = []
    for p in pending:
        prog = sources.get(p, NO_PROGRESS)
        if prog == NO_PROGRESS:
            return NO_PROGRESS
        held.append(prog)
    held += [prog for p, prog in sources.items() if p not in pending and prog >= now_ns - idle_ns]
    wm = min(held) if held else max([now_ns, *sources.values()])
    return wm if future_ns is None else min(wm, now_ns + future_ns)


MAX_REPORTED = 10_000  # capture points a reporter keeps apart; the rest are reported as OTHER_POINTS
OTHER_POINTS = "_OTHER"


def _bounded(d: dict[str, Any], origin: str) -> str:
    """The key a reporter keeps ``origin`` under: itself, or OTHER_POINTS once it holds too many
    (forged capture points cannot grow it without bound)."""
    return origin if origin in d or len(d) < MAX_REPORTED else OTHER_POINTS


def _due(logged: dict[str, float], unreported: dict[str, int], origin: str, n: int) -> int | None:
    """Count n more for origin; the count since its last line when a line is due (one a minute at
    most per capture point), else None."""
    since = unreported.get(origin, 0) + n
    now = time.monotonic()
    if now - logged.get(origin, -LATE_LOG_EVERY_S) < LATE_LOG_EVERY_S:
        unreported[origin] = since
        return None
    logged[origin] = now
    unreported[origin] = 0
    return since


class LateReporter:
    """Say which capture point sends late records (a clock off, a spool replayed after an outage):
    at most one line per capture point a minute, with the records since the last."""

    def __init__(self, grace_ns: int) -> None:
        self.grace_ns = grace_ns
        self.logged: dict[str, float] = {}  # capture point -> when its late records were last logged
        self.unreported: dict[str, int] = {}  # capture point -> late records since that line

    def report(self, origin: str, p: int, n: int, behind_ns: int) -> None:
        origin = _bounded(self.logged, origin)
        since = _due(self.logged, self.unreported, origin, n)
        if since is None:
            return
        log.warning("records_out_of_order", origin=origin, partition=p, records=since,
                    behind_s=round(behind_ns / 1e9, 3), grace_s=self.grace_ns / 1e9)


class ClockReporter:
    """Say which capture point's clock is out of tolerance: its records set aside, with its offset,
    at most one line per capture point a minute; totals and offsets per capture point kept (for
    /metrics), each for at most MAX_REPORTED capture points."""

    MAX_POINTS = MAX_REPORTED

    def __init__(self, rules: ClockRules) -> None:
        self.rules = rules
        self.logged: dict[str, float] = {}
        self.unreported: dict[str, int] = {}
        self.totals: dict[str, int] = {}  # capture point -> records set aside for its clock
        self.offsets: dict[str, float] = {}  # capture point -> its last measured clock offset (s)

    def measured(self, origin: str, offset_ns: int) -> None:
        if origin in self.offsets or len(self.offsets) < self.MAX_POINTS:
            self.offsets[origin] = offset_ns / 1e9

    def report(self, origin: str, p: int, future: int, behind: int, offset_ns: int) -> None:
        n = future + behind
        key = _bounded(self.totals, origin)
        self.totals[key] = self.totals.get(key, 0) + n
        origin = _bounded(self.logged, origin)
        since = _due(self.logged, self.unreported, origin, n)
        if since is None:
            return
        log.warning("capture_point_clock_skewed", origin=origin, partition=p, records_set_aside=since,
                    ahead=future, behind=behind, clock_offset_s=round(offset_ns / 1e9, 3),
                    tolerance_s=self.rules.future_ns / 1e9)

    def figures(self) -> dict[str, Any]:
        return {"capture_points_skewed": len(self.totals)}
