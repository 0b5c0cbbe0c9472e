"""Hash group-by with sums (consumers/engine/_agg.c), the alerts consumer's window tables.

``Groups`` keeps one row per distinct (k, item, o) key: n and b summed, t0 the least and t1 the
greatest time, r the greatest rank (alerts: how near the packets' destination the capture point
saw them), f the least flow hash (alerts: which flows it counted), and sub, s and (optionally) a
sample feature row taken from the group's earliest row. Adding a batch is one C pass over it,
whatever the table's size: no sort, no fold.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from pktstream.consumers.engine.features import as_records
from pktstream.runtime.native import load_native

COLS: dict[str, Any] = {"k": np.uint64, "item": np.uint64, "o": np.int64, "n": np.int64, "b": np.int64,
                        "t0": np.int64, "t1": np.int64, "sub": np.int64, "s": np.int64, "r": np.int64,
                        "f": np.int64}
_ORDER = tuple(COLS)  # the rows of Groups.data
IN = ("k", "item", "o", "n", "b", "t", "sub", "s", "r", "f")  # the rows of a batch (see batch())
_DEFAULTS = (0, 0, 0, 1, 0, 0, 0, -1, 0, 0)


@cache
def _lib() -> ctypes.CDLL:
    lib = load_native()
    i64, p = ctypes.c_int64, ctypes.c_void_p
    lib.pkt_agg_add.restype = i64
    lib.pkt_agg_add.argtypes = [i64, p, i64, i64, p, p, i64, p, p, p, p]
    lib.pkt_agg_index.restype = None
    lib.pkt_agg_index.argtypes = [i64, p, i64, i64, p]
    lib.pkt_agg_find.restype = None
    lib.pkt_agg_find.argtypes = [i64, p, i64, p, p, i64, p]
    return lib


def batch(m: int, **cols: Any) -> npt.NDArray[np.int64]:
    """A batch of m rows for Groups.add_batch: one int64 row per IN column (uint64 keys stored
    as their bits); columns not given take their default (item 0, o 0, n 1, b 0, t 0, sub 0, s -1, r 0,
    f 0)."""
    a = np.empty((len(IN), m), np.int64)
    for i, name in enumerate(IN):
        v = cols.get(name, _DEFAULTS[i])
        if isinstance(v, np.ndarray) and v.dtype == np.uint64:
            v = v.view(np.int64)
        a[i] = v
    return a


class Groups:
    __slots__ = ("_ng", "_ptrs", "cap", "data", "gpick", "ng", "rec", "slots")

    def __init__(self, rec_dtype: np.dtype[Any] | None = None) -> None:
        self.ng = 0
        self.cap = 0
        self.data = np.zeros((len(_ORDER), 0), np.int64)
        self.rec: npt.NDArray[Any] | None = np.zeros(0, rec_dtype) if rec_dtype is not None else None
        self.gpick = np.zeros(0, np.int64)
        self.slots = np.zeros(1, np.int64)
        self._ng = np.zeros(1, np.int64)  # the C loop's group count (in and out)
        self._ptrs = (0, 0, 0, 0)  # addresses of slots, _ng, data, gpick (set by _grow)

    def __len__(self) -> int:
        return self.ng

    def _grow(self, need: int) -> None:
        cap = max(64, self.cap)
        while cap < need:
            cap *= 2
        d = np.zeros((len(_ORDER), cap), np.int64)
        d[:, : self.ng] = self.data[:, : self.ng]
        self.data = d
        if self.rec is not None:
            r = np.zeros(cap, self.rec.dtype)
            r[: self.ng] = self.rec[: self.ng]  # contiguous: one copy
            self.rec = r
        self.gpick = np.full(cap, -1, np.int64)
        self.slots = np.zeros(2 * cap, np.int64)
        _lib().pkt_agg_index(self.ng, self.data.ctypes.data, cap, 2 * cap - 1, self.slots.ctypes.data)
        self.cap = cap
        self._ptrs = (self.slots.ctypes.data, self._ng.ctypes.data, self.data.ctypes.data, self.gpick.ctypes.data)

    def add(self, k: Any, item: Any = 0, o: Any = 0, n: Any = 1, b: Any = 0, t: Any = 0, sub: Any = 0,
            s: Any = -1, rows: npt.NDArray[Any] | None = None, want_gid: bool = False,
            r: Any = 0, f: Any = 0) -> npt.NDArray[np.int64] | None:
        """Rows added (scalars stand for a column of that value); see add_batch."""
        kk = np.asarray(k)
        return self.add_batch(batch(len(kk), k=kk, item=item, o=o, n=n, b=b, t=t, sub=sub, s=s, r=r, f=f), rows,
                              want_gid=want_gid)

    def add_batch(self, a: npt.NDArray[np.int64], rows: npt.NDArray[Any] | None = None,
                  rows_index: npt.NDArray[np.intp] | None = None, want_gid: bool = False,
                  key_only: bool = False) -> npt.NDArray[np.int64] | None:
        """A batch (see batch()) added. ``rows``: the feature rows its samples come from (row i of
        the batch is rows[rows_index[i]], or rows[i]); a table made with a rec_dtype needs them.
        ``key_only``: grouped by k and o alone, n and b not counted (a table of a sample per key and
        capture point).
        Returns each row's group when ``want_gid``."""
        m = a.shape[1]
        gid = np.empty(m, np.int64) if want_gid else None
        if m == 0:
            return gid
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        keep = self.rec is not None and rows is not None
        pick = np.empty(m, np.int64) if keep else None
        if self.cap == 0:
            self._grow(min(m, 1024))
        add = _lib().pkt_agg_add
        start = 0
        part = a
        while start < m:
            if start:
                part = np.ascontiguousarray(a[:, start:])
            self._ng[0] = self.ng
            slots, ngp, data, gpick = self._ptrs
            done = add(m - start, part.ctypes.data, int(key_only), 2 * self.cap - 1, slots, ngp, self.cap, data, gpick,
                       None if gid is None else gid.ctypes.data + 8 * start,
                       None if pick is None else pick.ctypes.data + 8 * start)
            if pick is not None:
                p = pick[start : start + done]
                sel = np.flatnonzero(p >= 0)
                if len(sel):
                    assert rows is not None and self.rec is not None
                    src = sel + start
                    as_records(self.rec)[p[sel]] = as_records(rows)[src if rows_index is None else rows_index[src]]
            self.ng = int(self._ng[0])
            start += done
            if start < m:  # full: small tables grow fast (most windows' tables stay small)
                self._grow((4 if self.cap < 1 << 16 else 2) * self.cap)
        return gid

    def view(self) -> dict[str, npt.NDArray[Any]]:
        """The groups' columns (views, valid until the next add), with "rec" when kept."""
        d = self.data[:, : self.ng]
        out = {k: (d[i].view(np.uint64) if COLS[k] == np.uint64 else d[i]) for i, k in enumerate(_ORDER)}
        if self.rec is not None:
            out["rec"] = self.rec[: self.ng]
        return out

    def find(self, k: Any, item: Any = 0, o: Any = 0) -> npt.NDArray[np.int64]:
        """The group of each key, -1 where there is none."""
        kk = np.asarray(k)
        m = len(kk)
        gid = np.full(m, -1, np.int64)
        if m and self.ng:
            a = batch(m, k=kk, item=item, o=o)
            _lib().pkt_agg_find(m, a.ctypes.data, 2 * self.cap - 1, self.slots.ctypes.data, self.data.ctypes.data,
                                self.cap, gid.ctypes.data)
        return gid


def group_index(keys: npt.NDArray[Any], *more: Any) -> tuple[npt.NDArray[np.int64], Groups]:
    """Each row's group among the distinct (keys, more...) values, numbered in order of first
    appearance, and the groups (k = the first key column)."""
    g = Groups()
    item = more[0] if more else 0
    o = more[1] if len(more) > 1 else 0
    gid = g.add(keys, item, o, n=1, want_gid=True)
    assert gid is not None
    return gid, g


def first_rows(gid: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """The first row of each group, groups numbered in order of first appearance (as
    group_index numbers them): a row whose group is above every group before it."""
    if len(gid) == 0:
        return np.zeros(0, np.intp)
    prev = np.maximum.accumulate(gid)
    return np.flatnonzero(np.r_[True, gid[1:] > prev[:-1]])
