"""The alerts consumer's state per partition: window tables, open alerts, baselines, strings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from pktstream.consumers.engine.agg import COLS as AGG_COLS
from pktstream.consumers.engine.agg import Groups
from pktstream.consumers.engine.agg import batch as agg_batch
from pktstream.consumers.engine.features import FEATURE_DTYPE, StringTable, mix, take
from pktstream.consumers.engine.losses import Losses
from pktstream.consumers.engine.snapshot import array as snapshot_array

OTHER = "_OTHER"  # what a string from a payload past the cap reads (StateStrings)
MAX_PATHS = 10_000  # strings taken from payloads (attack paths) kept per partition at once
_S = list(AGG_COLS).index("s")


class Table:
    """Counters of (key, item, capture point) groups in one C hash table (agg.Groups), each with the
    greatest rank of its rows (how near the packets' destination the point saw them) and the least
    flow hash among them (which flows it counted), with
    sample feature rows: one per group, or, in a light table, one per key and capture point
    (``side``), which is all that the detectors with large tables (floods, volume) need."""

    __slots__ = ("g", "light", "side")

    def __init__(self, light: bool = False) -> None:
        self.light = light
        self.g = Groups(None if light else FEATURE_DTYPE)
        self.side = Groups(FEATURE_DTYPE) if light else None

    def add(self, a: npt.NDArray[np.int64], rows: npt.NDArray[Any], idx: npt.NDArray[np.intp] | None = None) -> None:
        """A batch (agg.batch) added; its row i came from rows[idx[i]] (rows[i] without idx)."""
        if a.shape[1] == 0:
            return
        self.g.add_batch(a, None if self.light else rows, idx)
        if self.side is not None:
            self.side.add_batch(a, rows, idx, key_only=True)

    @property
    def cols(self) -> dict[str, npt.NDArray[Any]]:
        return self.g.view()

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.g.view())
        if self.side is not None:
            sv = self.side.view()
            out["side"] = {"k": sv["k"], "o": sv["o"], "t0": sv["t0"], "rec": sv["rec"]}
        return out

    @classmethod
    def load(cls, d: dict[str, Any]) -> Table:
        dec = snapshot_array

        # a snapshot from before capture points were told apart has no "r" (rank 0) nor "f": each group
        # its own flows (-1, -2, ...), so that its counts add up with the others' as they did then
        k0 = dec(d["k"], np.uint64)
        cols = {k: dec(d[k], t) for k, t in AGG_COLS.items() if k in d or k not in ("r", "f")}
        if "r" not in cols:
            cols["r"] = np.zeros(len(k0), np.int64)
        if "f" not in cols:  # each group a flow of its own, the same whatever table it is merged into
            cols["f"] = mix(k0, cols["item"], cols["o"]).view(np.int64)
        light = "side" in d
        t = cls(light)
        rec = None if light else dec(d["rec"], FEATURE_DTYPE)
        n = len(cols["k"])
        if any(len(v) != n for v in cols.values()) or (rec is not None and len(rec) != n):
            raise ValueError("snapshot: alert table columns differ in length")
        t.g.add(cols["k"], cols["item"], cols["o"], cols["n"], cols["b"], cols["t0"], cols["sub"], cols["s"], rows=rec,
                r=cols["r"], f=cols["f"])
        if len(t.g) != n:
            raise ValueError("snapshot: alert table has repeated keys")
        t.g.data[list(AGG_COLS).index("t1"), :n] = cols["t1"]
        if t.side is not None:
            sk, st0, srec = (dec(d["side"]["k"], np.uint64), dec(d["side"]["t0"], np.int64),
                             dec(d["side"]["rec"], FEATURE_DTYPE))
            # (a snapshot from before the samples were kept per capture point has one per key, o 0)
            so = dec(d["side"]["o"], np.int64) if "o" in d["side"] else np.zeros(len(sk), np.int64)
            if not len(sk) == len(st0) == len(srec) == len(so):
                raise ValueError("snapshot: alert table columns differ in length")
            t.side.add_batch(agg_batch(len(sk), k=sk, o=so, t=st0), srec, key_only=True)
        return t

    @classmethod
    def merged(cls, tables: list[Table]) -> Table:
        """One table holding the groups of several (a sliding window's hops): counts summed, the
        earliest and latest times kept, each group's sample from its earliest row (each key's, when one
        of them is light: a degraded snapshot made it so)."""
        if len(tables) == 1:
            return tables[0]
        out = cls(any(t.light for t in tables))
        for t in tables:
            c = t.g.view()
            rec = None if t.light else c["rec"]
            out.g.add(c["k"], c["item"], c["o"], c["n"], c["b"], c["t0"], c["sub"], c["s"], rows=rec, r=c["r"],
                      f=c["f"])
            out.g.add(c["k"], c["item"], c["o"], 0, 0, c["t1"], c["sub"], c["s"], f=c["f"])  # the latest time
            if out.side is not None:
                sv = t.side.view() if t.side is not None else {"k": c["k"], "o": c["o"], "t0": c["t0"],
                                                               "rec": c["rec"]}
                out.side.add_batch(agg_batch(len(sv["k"]), k=sv["k"], o=sv["o"], t=sv["t0"]), sv["rec"],
                                   key_only=True)
        return out

    def strings_used(self) -> npt.NDArray[np.int64]:
        """The numbers of the state's strings its groups' samples refer to (``s``)."""
        s: npt.NDArray[np.int64] = self.g.data[_S, : len(self.g)]
        return s[s >= 0]

    def replace_strings(self, old: npt.NDArray[np.int64], new: int) -> int:
        """The samples referring to one of the strings ``old`` refer to ``new`` instead; returns how many."""
        s = self.g.data[_S, : len(self.g)]
        hit = np.isin(s, old)
        s[hit] = new
        return int(hit.sum())

    def lighten(self) -> int:
        """One sample feature row per key and capture point instead of per group (a snapshot over its
        limit); returns the sample rows dropped."""
        if self.light:
            return 0
        c = self.g.view()
        light = Table(light=True)
        n = len(c["k"])
        light.g.add(c["k"], c["item"], c["o"], c["n"], c["b"], c["t0"], c["sub"], c["s"], r=c["r"], f=c["f"])
        light.g.data[list(AGG_COLS).index("t1"), :n] = c["t1"]
        assert light.side is not None
        light.side.add_batch(agg_batch(n, k=c["k"], o=c["o"], t=c["t0"]), c["rec"], key_only=True)
        self.light, self.g, self.side = True, light.g, light.side
        return n - len(self.side)

    def with_samples(self) -> dict[str, Any]:
        """The groups' columns, each with a sample feature row (a light table's is its key's at its
        capture point)."""
        c = self.g.view()
        if self.side is None:
            return c
        idx = self.side.find(c["k"], 0, c["o"])
        miss = idx < 0
        if miss.any():  # samples restored from a snapshot that kept one per key
            idx[miss] = self.side.find(c["k"][miss])
        rec = self.side.view()["rec"]
        return {**c, "rec": take(rec, np.maximum(idx, 0)) if len(rec) else np.zeros(len(idx), FEATURE_DTYPE)}


def expand(c: dict[str, Any]) -> dict[str, Any]:
    """A table's sample fields as columns."""
    r = c["rec"]
    return {**c, "src_addr": r["src_addr"], "dst_addr": r["dst_addr"], "src_port": r["src_port"].astype(np.int64),
            "dst_port": r["dst_port"].astype(np.int64), "protocol": r["protocol"].astype(np.int64),
            "tcp_flags": r["tcp_flags"].astype(np.int64), "ttl": r["ttl"].astype(np.int64),
            "wire_len": r["wire_len"].astype(np.int64)}


@dataclass
class OpenAlert:
    uid: str
    rule: str
    key: str
    first_window: int
    last_window: int  # start of the last window it fired in
    first_seen: int
    last_seen: int
    count: int  # packets (or requests) over its life
    windows: int = 1


class BaselineRows(NamedTuple):
    """Keys' histories as Baselines.lookup found them: position in the table, found, count, mean, m2."""

    pos: npt.NDArray[np.intp]
    found: npt.NDArray[np.bool_]
    cnt: npt.NDArray[np.float64]
    mean: npt.NDArray[np.float64]
    m2: npt.NDArray[np.float64]


class Baselines:
    """Per-key history of a value per window (the volume detector's packets, error_spike's share of
    5xx): window count, mean, sum of squared deviations."""

    def __init__(self, keys: npt.NDArray[np.uint64] | None = None, cnt: npt.NDArray[np.float64] | None = None,
                 mean: npt.NDArray[np.float64] | None = None, m2: npt.NDArray[np.float64] | None = None) -> None:
        self.keys = keys if keys is not None else np.zeros(0, np.uint64)
        self.cnt = cnt if cnt is not None else np.zeros(0)
        self.mean = mean if mean is not None else np.zeros(0)
        self.m2 = m2 if m2 is not None else np.zeros(0)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, keys: npt.NDArray[np.uint64], cnt: npt.NDArray[np.float64], mean: npt.NDArray[np.float64],
            m2: npt.NDArray[np.float64]) -> None:
        k = np.concatenate([self.keys, keys])
        order = np.argsort(k, kind="stable")
        self.keys = k[order]
        self.cnt = np.concatenate([self.cnt, cnt])[order]
        self.mean = np.concatenate([self.mean, mean])[order]
        self.m2 = np.concatenate([self.m2, m2])[order]

    def lookup(self, keys: npt.NDArray[np.uint64]) -> BaselineRows:
        """Each key's history: zeros where it has none."""
        pos = np.searchsorted(self.keys, keys)
        if len(self.keys) == 0:
            z = np.zeros(len(keys))
            return BaselineRows(pos, np.zeros(len(keys), bool), z, z, z)
        posc = np.minimum(pos, len(self.keys) - 1)
        found = (pos < len(self.keys)) & (self.keys[posc] == keys)
        return BaselineRows(pos, found, np.where(found, self.cnt[posc], 0.0), np.where(found, self.mean[posc], 0.0),
                            np.where(found, self.m2[posc], 0.0))

    def learn(self, keys: npt.NDArray[np.uint64], seen: BaselineRows, x: npt.NDArray[np.float64],
              where: npt.NDArray[np.bool_], max_keys: int) -> None:
        """The keys' histories (as ``lookup`` gave them) learn this window's value x where ``where``
        (Welford's running mean and squared deviations); keys without history start one; at most
        max_keys are kept (the busiest)."""
        cnt1 = seen.cnt + 1
        delta = x - seen.mean
        mean1 = seen.mean + delta / cnt1
        m2_1 = seen.m2 + delta * (x - mean1)
        upd = where & seen.found
        at = seen.pos[upd]
        self.cnt[at], self.mean[at], self.m2[at] = cnt1[upd], mean1[upd], m2_1[upd]
        new = where & ~seen.found
        if new.any():
            self.add(keys[new], cnt1[new], mean1[new], m2_1[new])
        self.cap(max_keys)

    def cap(self, max_keys: int) -> None:
        if len(self.keys) > max_keys:  # keep the busiest
            keep = np.sort(np.argsort(-self.mean, kind="stable")[:max_keys])
            self.keys, self.cnt, self.mean, self.m2 = self.keys[keep], self.cnt[keep], self.mean[keep], self.m2[keep]

    def dump(self) -> list[npt.NDArray[Any]]:
        return [self.keys, self.cnt, self.mean, self.m2]

    @classmethod
    def load(cls, d: list[Any]) -> Baselines:
        keys = snapshot_array(d[0], np.uint64)
        rest = [snapshot_array(x, np.float64) for x in d[1:]]
        if any(len(r) != len(keys) for r in rest):
            raise ValueError("snapshot: baseline columns differ in length")
        return cls(keys, *rest)


class StateStrings(StringTable):
    """The state's strings: capture points and catalogued API names, few and always kept, and strings
    taken from payloads (attack paths: traffic chooses them), of which at most ``limit`` are kept at
    once; past that, a new one reads ``_OTHER`` (counted in ``folded``). The processor drops the payload
    strings no open window refers to when windows close (``drop_payload``); their numbers are given out
    again."""

    def __init__(self, items: list[str] | None = None, free: list[int] | None = None, limit: int = 1 << 62,
                 payload: list[int] | None = None, folded: int = 0) -> None:
        super().__init__(items, free)
        self.limit = limit
        gone = set(self.free)
        self.payload: set[int] = {i for i in payload or [] if 0 <= i < len(self.items) and i not in gone}
        self.folded = folded

    def add(self, s: str) -> int:
        """A string always kept (a capture point, an API name), even if a payload brought it first."""
        i = super().add(s)
        self.payload.discard(i)
        return i

    def add_payload(self, s: str) -> int:
        i = self.index.get(s)
        if i is not None:
            return i
        if s == OTHER or len(self.payload) >= self.limit:
            self.folded += int(s != OTHER)
            return self.add(OTHER)
        i = super().add(s)
        self.payload.add(i)
        return i

    def drop_payload(self, used: npt.NDArray[np.int64]) -> int:
        """The payload strings whose numbers are not in ``used`` dropped; returns how many."""
        if not self.payload:
            return 0
        live = np.zeros(len(self.items), dtype=bool)
        u = used[(used >= 0) & (used < len(live))]
        live[u] = True
        gone = [i for i in self.payload if not live[i]]
        if not gone:
            return 0
        keep = np.ones(len(self.items), dtype=bool)
        keep[gone] = False
        self.payload.difference_update(gone)
        return self.drop(keep)


@dataclass
class AlertsState:
    windows: dict[str, dict[int, Table]] = field(default_factory=dict)  # detector -> window start -> table
    closed_until: dict[str, int] = field(default_factory=dict)
    open: dict[str, OpenAlert] = field(default_factory=dict)  # rule|key -> alert
    baselines: Baselines = field(default_factory=Baselines)  # the volume detector's history per key
    extra_baselines: dict[str, Baselines] = field(default_factory=dict)  # other detectors' (error_spike), by name
    strings: StateStrings = field(default_factory=StateStrings)  # capture points, API names, paths
    late_records: int = 0
    alerts_raised: int = 0
    seen_nearer: int = 0  # counters of closed tumbling windows left out: another point counted the same flows
    losses: Losses = field(default_factory=Losses)  # the capture points' ring-buffer losses (engine/losses.py)
    sampled_at: Losses = field(default_factory=Losses)  # the seconds in which they sampled (1 per second)
