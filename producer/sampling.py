"""Stepping down under overload: adaptive in-kernel 1-in-N sampling.

When the ring buffer fills faster than the producer drains it, losing
records at random (whichever find the ring full) would bias every count
downstream. Instead the controller doubles the kernel's sampling rate as
soon as the ring passes its high-water mark or any record was lost, and
halves it again once the ring has stayed below the low-water mark for a
while. Every record carries the rate in force, so consumers scale counts
back, and every sampled-out packet is counted in the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SamplingController:
    base_rate: int = 1
    max_rate: int = 1024
    high_water: float = 0.5
    low_water: float = 0.1
    calm_s: float = 2.0
    rate: int = 0
    _calm_since: float | None = None

    def __post_init__(self) -> None:
        if self.rate == 0:
            self.rate = self.base_rate

    def update(self, now: float, fill: float, new_drops: int) -> int | None:
        """Feed the ring's fill ratio and the records lost since the last call; returns a new rate or None."""
        if new_drops > 0 or fill >= self.high_water:
            self._calm_since = None
            if self.rate < self.max_rate:
                self.rate = min(self.max_rate, self.rate * 2)
                return self.rate
            return None
        if fill <= self.low_water and self.rate > self.base_rate:
            if self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= self.calm_s:
                self._calm_since = now
                self.rate = max(self.base_rate, self.rate // 2)
                return self.rate
            return None
        if fill > self.low_water:
            self._calm_since = None
        return None
