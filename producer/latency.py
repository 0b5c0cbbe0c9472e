"""Latency from a packet's capture to the broker's acknowledgement, per batch.

A batch is acknowledged at one instant; its records were captured between
``ts_first`` and ``ts_last``. Each batch contributes its records' latencies
spread evenly between the newest and the oldest record's (the exact spread
of capture times inside a batch is not kept, to stay O(1) per batch).
"""

from __future__ import annotations

from collections import deque

import numpy as np

_POINTS = 32  # latency samples drawn per batch


class LatencyRecorder:
    def __init__(self, max_batches: int = 100_000) -> None:
        self._batches: deque[tuple[int, int, int]] = deque(maxlen=max_batches)

    def add(self, ack_ns: int, ts_first_ns: int, ts_last_ns: int, records: int) -> None:
        self._batches.append((ack_ns - ts_last_ns, ack_ns - ts_first_ns, records))

    def __len__(self) -> int:
        return len(self._batches)

    def percentiles_ms(self, qs: tuple[float, ...] = (50, 99)) -> dict[str, float]:
        if not self._batches:
            return {f"p{q:g}": float("nan") for q in qs}
        arr = np.array(self._batches, dtype=np.float64)
        frac = np.linspace(0.0, 1.0, _POINTS)
        lat = arr[:, 0:1] + (arr[:, 1:2] - arr[:, 0:1]) * frac[None, :]
        weights = np.repeat(arr[:, 2:3] / _POINTS, _POINTS, axis=1)
        order = np.argsort(lat, axis=None)
        lat_sorted = lat.ravel()[order]
        cum = np.cumsum(weights.ravel()[order])
        cum /= cum[-1]
        return {f"p{q:g}": float(lat_sorted[np.searchsorted(cum, q / 100)]) / 1e6 for q in qs}
