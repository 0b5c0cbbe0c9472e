"""Bulk reader of a BPF ring buffer, memory-mapped; no per-record callback.

Every record in pktstream's ring buffer has the same size, so the slots
between the consumer and producer positions form a strided array: one
8-byte header (length with BUSY/DISCARD bits, page offset) then the record.
The data area is mapped twice back to back by the kernel, so any run of
slots is contiguous in memory even across the wrap. A read copies up to
``max_records`` records out with one numpy operation and then advances the
consumer position, which frees the space for the kernel.

Memory ordering: the producer position is loaded before the slots are read
and the consumer position stored after they are copied; on x86-64 (TSO)
plain loads and stores keep that order, which is what libbpf's
acquire/release pairs reduce to there.
"""

from __future__ import annotations

import mmap
import select

import numpy as np
import numpy.typing as npt

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SIZE = 8


class RingbufLayoutError(RuntimeError):
    """A slot's length does not match the expected record size."""


class RingReader:
    def __init__(self, map_fd: int, size: int, record_dtype: np.dtype[np.void]) -> None:
        page = mmap.PAGESIZE
        if size <= 0 or size & (size - 1) or size % page:
            raise ValueError(f"ring buffer size {size} must be a power of two multiple of {page}")
        self.size = size
        self.dtype = record_dtype
        self.record_size = record_dtype.itemsize
        if self.record_size % 8:
            raise ValueError("record size must be a multiple of 8")
        self.stride = HDR_SIZE + self.record_size
        self._cons_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod_map = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._cons = np.frombuffer(self._cons_map, dtype=np.uint64, count=1)
        self._prod = np.frombuffer(self._prod_map, dtype=np.uint64, count=1)
        self._data = np.frombuffer(self._prod_map, dtype=np.uint8, offset=page)
        self._poll = select.poll()
        self._poll.register(map_fd, select.POLLIN)

    def pending_bytes(self) -> int:
        return int(self._prod[0]) - int(self._cons[0])

    def wait(self, timeout_s: float) -> bool:
        """Block until the kernel signals new records or the timeout passes."""
        if self.pending_bytes() >= self.stride:
            return True
        return bool(self._poll.poll(max(0, int(timeout_s * 1000))))

    def read(self, max_records: int) -> npt.NDArray[np.void]:
        """Copy out up to max_records committed records and free their slots."""
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        n = min((prod - cons) // self.stride, max_records)
        if n <= 0:
            return np.empty(0, dtype=self.dtype)
        start = cons & (self.size - 1)
        slots = self._data[start : start + n * self.stride].reshape(n, self.stride)
        hdr = slots[:, :4].copy().view("<u4").reshape(n)
        busy = (hdr & BUSY_BIT) != 0
        if busy.any():  # a slot reserved but not yet submitted: stop before it
            n = int(np.argmax(busy))
            if n == 0:
                return np.empty(0, dtype=self.dtype)
            slots = slots[:n]
            hdr = hdr[:n]
        lengths = hdr & ~np.uint32(BUSY_BIT | DISCARD_BIT)
        if (lengths != self.record_size).any():
            bad = int(lengths[lengths != self.record_size][0])
            raise RingbufLayoutError(f"ring buffer slot of {bad} bytes, expected {self.record_size}")
        records = slots[:, HDR_SIZE:].copy().view(self.dtype).reshape(n)
        discarded = (hdr & DISCARD_BIT) != 0
        self._cons[0] = cons + n * self.stride
        if discarded.any():
            records = records[~discarded]
        return records

    def close(self) -> None:
        self._cons = np.empty(1, dtype=np.uint64)
        self._prod = np.empty(1, dtype=np.uint64)
        self._data = np.empty(0, dtype=np.uint8)
        self._cons_map.close()
        self._prod_map.close()
