"""What a capture point could not record, by second of event time: the completeness of a window.

A producer's packet message tells, in its ``pktstream.ringbuf_full`` header, how many records the
kernel could not queue (its ring buffer was full) since the run's previous message. Stage one
passes that on to every repartition partition (runner._stage_one), stamped with the message's
newest honest event time; each partition's state keeps the marks here, and a window's results say
how many records the capture points behind them lost within the window (``records_lost``).

Bounded: marks older than ``HORIZON_NS`` behind the watermark go (no window that long stays open);
a point keeps at most one mark a second of that horizon (times are the stage one's judged ones, so
an honest point never needs more), and all points together at most ``MAX_MARKS``: past either, the
oldest tenth of the point's marks (of the point with the most, for the second) goes and is counted
(``dropped``), so one point's marks never push out another's before its own do, unless
hosts invent point names by the thousand (each keeps its own share then).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

HORIZON_NS = 2 * 3600 * 1_000_000_000  # the longest window (an hour) and its grace, with room
MAX_MARKS = 100_000
PER_POINT = HORIZON_NS // 1_000_000_000  # one mark a second over the horizon: all an honest point needs
SECOND = 1_000_000_000


class Losses:
    def __init__(self, limit: int = MAX_MARKS) -> None:
        self.limit = limit
        self.by: dict[str, dict[int, int]] = {}  # capture point -> second of event time -> records
        self.marks = 0
        self.dropped = 0

    def add(self, origin: str, t_ns: int, records: int) -> None:
        s = t_ns // SECOND
        per = self.by.setdefault(origin, {})
        if s not in per:
            if len(per) >= PER_POINT:
                self._drop_oldest(origin)
            elif self.marks >= self.limit:
                self._drop_oldest(max(self.by, key=lambda o: len(self.by[o])))
            self.marks += 1
        per[s] = per.get(s, 0) + records

    def within(self, origins: Iterable[str], start_ns: int, end_ns: int) -> int:
        """Records the points lost in [start_ns, end_ns)."""
        lo, hi = start_ns // SECOND, -(-end_ns // SECOND)
        total = 0
        for o in origins:
            per = self.by.get(o)
            if per:
                total += sum(n for s, n in per.items() if lo <= s < hi)
        return total

    def prune(self, watermark_ns: int) -> None:
        """Forget marks no open window can hold any more."""
        if not self.marks:
            return
        before = (watermark_ns - HORIZON_NS) // SECOND
        for o in list(self.by):
            per = self.by[o]
            for s in [s for s in per if s < before]:
                del per[s]
                self.marks -= 1
            if not per:
                del self.by[o]

    def _drop_oldest(self, origin: str) -> None:
        """The oldest tenth of a point's marks (at once: a point losing records all the time pays
        this once per tenth, not at every mark)."""
        per = self.by[origin]
        for s in sorted(per)[: max(1, len(per) // 10)]:
            del per[s]
            self.marks -= 1
            self.dropped += 1

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
