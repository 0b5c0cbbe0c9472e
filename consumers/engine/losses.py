"""What a capture point could not record, by second of event time: the completeness of a window.

A producer's packet message tells, in its ``pktstream.ringbuf_full`` header, how many records the
kernel could not queue (its ring buffer was full) since the run's previous message. Stage one
passes that on to every repartition partition (runner._stage_one), stamped with the message's
newest honest event time, never older than what its partition still takes; each partition's state
keeps the marks here, and a window's results say how many records the capture points behind them
lost within the window (``records_lost``).

Bounded, whatever the topic holds: marks older than ``HORIZON_NS`` behind the watermark go (no
window that long stays open); a point keeps at most one mark a second of that horizon (the times
are stage one's judged ones, so an honest point never needs more); at most ``MAX_POINTS`` points
and ``MAX_MARKS`` marks in all: past either, the oldest tenth of the marks of the point with the
most go, or the point with the fewest marks, and they are counted (``dropped``, a figure of the
apps); a record count saturates at ``MAX_LOST``. Capture-point names are what hosts write: a host
can write losses under another's name, as it can write records under it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

HORIZON_NS = 2 * 3600 * 1_000_000_000  # the longest window (an hour) and its grace, with room
SECOND = 1_000_000_000
PER_POINT = HORIZON_NS // SECOND  # one mark a second over the horizon: all an honest point needs
MAX_MARKS = 250_000  # 34 points losing records every second for two hours
MAX_POINTS = 1000  # as many as a partition keeps the clocks of (eventtime.MAX_POINTS)
MAX_LOST = 1 << 40  # a count above this is no count


class Losses:
    def __init__(self, limit: int = MAX_MARKS, max_points: int = MAX_POINTS) -> None:
        self.limit = limit
        self.max_points = max_points
        self.by: dict[str, dict[int, int]] = {}  # capture point -> second of event time -> records
        self.marks = 0
        self.dropped = 0
        self.oldest: int | None = None  # the oldest second held (prune's early exit)

    def add(self, origin: str, t_ns: int, records: int) -> None:
        s = t_ns // SECOND
        per = self.by.get(origin)
        if per is None:
            if len(self.by) >= self.max_points:
                self._drop_point(min(self.by, key=lambda o: (len(self.by[o]), o)))
            per = self.by[origin] = {}
        if s not in per:
            if len(per) >= PER_POINT:
                self._drop_oldest(origin)
            elif self.marks >= self.limit:
                self._drop_oldest(max(self.by, key=lambda o: (len(self.by[o]), o)))
            per = self.by.setdefault(origin, {})
            self.marks += 1
            self.oldest = s if self.oldest is None else min(self.oldest, s)
        per[s] = min(per.get(s, 0) + max(0, records), MAX_LOST)

    def within(self, origins: Iterable[str], start_ns: int, end_ns: int) -> int:
        """Records the points lost in [start_ns, end_ns)."""
        if not self.marks:
            return 0
        lo, hi = start_ns // SECOND, -(-end_ns // SECOND)
        total = 0
        for o in origins:
            per = self.by.get(o)
            if per:
                total += sum(n for s, n in per.items() if lo <= s < hi)
        return min(total, MAX_LOST)

    def per_point(self, start_ns: int, end_ns: int, origins: Iterable[str] | None = None) -> dict[str, int]:
        """Each point's losses in [start_ns, end_ns) (of ``origins``, else of every point), the points
        that lost any: one pass over the marks, for all the rows of a window at once."""
        if not self.marks:
            return {}
        out = {o: self.within([o], start_ns, end_ns) for o in (self.by if origins is None else origins)}
        return {o: n for o, n in out.items() if n}

    def prune(self, watermark_ns: int) -> None:
        """Forget marks no open window can hold any more."""
        before = (watermark_ns - HORIZON_NS) // SECOND
        if self.oldest is None or self.oldest >= before:
            return
        for o in list(self.by):
            per = self.by[o]
            for s in [s for s in per if s < before]:
                del per[s]
                self.marks -= 1
            if not per:
                del self.by[o]
        self.oldest = min((min(per) for per in self.by.values()), default=None)

    def _drop_oldest(self, origin: str) -> None:
        """The oldest tenth of a point's marks (at once: a point losing records all the time pays
        this once per tenth, not at every mark)."""
        per = self.by[origin]
        for s in sorted(per)[: max(1, len(per) // 10)]:
            del per[s]
            self.marks -= 1
            self.dropped += 1
        if not per:
            del self.by[origin]

    def _drop_point(self, origin: str) -> None:
        per = self.by.pop(origin)
        self.marks -= len(per)
        self.dropped += max(1, len(per))

    def dump(self) -> list[Any]:
        return [[o, [[s, n] for s, n in sorted(per.items())]] for o, per in sorted(self.by.items())] + [self.dropped]

    @classmethod
    def load(cls, d: list[Any] | None) -> Losses:
        out = cls()
        if not d:
            return out
        *points, dropped = d
        for o, marks in points:
            for s, n in marks:
                out.add(str(o), int(s) * SECOND, int(n))
        out.dropped = int(dropped)
        return out
