"""Event time of a consumer app (the rules are in ``runner``'s docstring): a packet partition's
progress and how it travels as committed offset metadata, the watermark of a repartition
partition, and the warning that names a capture point whose records arrive out of order."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

import structlog

log = structlog.get_logger("pktstream.stream")

NO_PROGRESS = -1
LATE_LOG_EVERY_S = 60.0


PROGRESS_META = "progress="  # the offset metadata of a packet partition: its progress (ns)


def progress_metadata(ns: int) -> str:
    return f"{PROGRESS_META}{ns}"


def parse_progress(meta: str | None) -> int:
    """A packet partition's progress from its committed offset's metadata (none yet: NO_PROGRESS)."""
    if meta and meta.startswith(PROGRESS_META):
        with contextlib.suppress(ValueError):
            return int(meta[len(PROGRESS_META):])
    return NO_PROGRESS


def watermark(sources: dict[int, int], pending: Iterable[int], now_ns: int) -> int:
    """A repartition partition's watermark: the progress of the slowest packet partition that still
    has uncommitted input (NO_PROGRESS while one of those has none yet); when every source is
    caught up, wall-clock time (time moves on without new traffic)."""
    waiting = [sources.get(p, NO_PROGRESS) for p in pending]
    if waiting:
        low = min(waiting)
        return NO_PROGRESS if low == NO_PROGRESS else low
    return max([now_ns, *sources.values()])


class LateReporter:
    """Say which capture point sends late records (a clock off, a spool replayed after an outage):
    at most one line per capture point a minute, with the records since the last."""

    def __init__(self, grace_ns: int) -> None:
        self.grace_ns = grace_ns
        self.logged: dict[str, float] = {}  # capture point -> when its late records were last logged
        self.unreported: dict[str, int] = {}  # capture point -> late records since that line

    def report(self, origin: str, p: int, n: int, behind_ns: int) -> None:
        since = self.unreported.get(origin, 0) + n
        now = time.monotonic()
        if now - self.logged.get(origin, -LATE_LOG_EVERY_S) < LATE_LOG_EVERY_S:
            self.unreported[origin] = since
            return
        self.logged[origin] = now
        self.unreported[origin] = 0
        log.warning("records_out_of_order", origin=origin, partition=p, records=since,
                    behind_s=round(behind_ns / 1e9, 3), grace_s=self.grace_ns / 1e9)
