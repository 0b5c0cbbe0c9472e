"""Stage two of the producer: records read from the ring wait here until a batch is due.

A batch is due when it holds ``max_records`` records, ``max_bytes`` of estimated Avro, or its
oldest record has waited ``max_age_ms``; at a quiet host, a batch still under ``quiet_bytes`` at
that age waits for more, up to ``quiet_ms`` (each message carries a header of about 1 KB: in
batches of a few records it outweighed them, 112 bytes per record at 100 packets/s). Records are
kept as the ring's own arrays (no copy per record); ``take`` joins them into one array when the
batch goes on to be encoded.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from pktstream.schemas import packets

QUIET_BYTES = 16 << 10  # a batch this large carries its header at a cost of a few per cent


class Batcher:
    def __init__(self, max_records: int, max_bytes: int, max_age_ms: int, quiet_ms: int = 0,
                 quiet_bytes: int = QUIET_BYTES) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_age_ms = max_age_ms
        self.quiet_ms = max(quiet_ms, max_age_ms)
        self.quiet_bytes = quiet_bytes
        self._parts: list[npt.NDArray[np.void]] = []
        self.records = 0
        self.bytes = 0
        self.since = 0.0  # monotonic time the oldest waiting record arrived

    def __bool__(self) -> bool:
        return bool(self._parts)

    def room(self) -> int:
        """Records the batch can still take."""
        return self.max_records - self.records

    def add(self, recs: npt.NDArray[np.void], now: float | None = None) -> None:
        if not self._parts:
            self.since = time.monotonic() if now is None else now
        self._parts.append(recs)
        self.records += len(recs)
        self.bytes += packets.estimated_bytes(recs)

    def full(self) -> bool:
        return self.records >= self.max_records or self.bytes >= self.max_bytes

    def _limit_ms(self) -> int:
        return self.max_age_ms if self.bytes >= self.quiet_bytes else self.quiet_ms

    def due(self, now: float) -> bool:
        return bool(self._parts) and (self.full() or (now - self.since) * 1000 >= self._limit_ms())

    def quiet(self, now: float) -> bool:
        """Past max_age_ms but too small to go: waiting for more records (a quiet host)."""
        return bool(self._parts) and (now - self.since) * 1000 >= self.max_age_ms and not self.due(now)

    def age_left_s(self, now: float) -> float:
        """Seconds until the oldest waiting record is due."""
        return self._limit_ms() / 1000 - (now - self.since)

    def take(self) -> npt.NDArray[np.void] | None:
        """The waiting records as one array (None when there are none); the batcher is empty after."""
        if not self._parts:
            return None
        recs = self._parts[0] if len(self._parts) == 1 else np.concatenate(self._parts)
        self._parts = []
        self.records = 0
        self.bytes = 0
        return recs
