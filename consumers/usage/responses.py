"""Answers paired with their requests, per connection, for ``pktstream usage``.

A request (an HTTP/1.x request line, a TLS ClientHello, an HTTP/2 preface) waits in the
connection's queue until its answer: for HTTP/1.x the next status line the server sends on the
connection (responses come in the order of the requests, keep-alive and pipelining alike; 1xx
interim responses other than 101 are not answers); for TLS and HTTP/2 the server's first packet
with payload after it (time to first byte). The latency is the answer's first packet's
timestamp minus the request's first packet's, both from the capture point that saw the two (a
connection is paired per capture point). A request that no answer follows within ``timeout_ns``
is unanswered, counted in the minute its timeout ends; an answer later than that pairs with
nothing. Only requests of connections whose server packets the capture point saw can be
unanswered: a capture point that records one direction yields no response figures at all.

Everything is batch-wise: the queue is a few numpy columns, matched by rank per connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pktstream.consumers.engine.snapshot import array as snapshot_array

# latency histogram bucket upper bounds (seconds): OpenTelemetry's default for
# http.server.request.duration; one more bucket (+Inf) above the last
LATENCY_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
LATENCY_BOUNDS_NS = np.array([round(b * 1e9) for b in LATENCY_BOUNDS_S], dtype=np.int64)
NBUCKETS = len(LATENCY_BOUNDS_S) + 1
MAX_QUEUED = 1_000_000  # requests waiting for answers per partition; beyond, the oldest are unanswered

QUEUE_DTYPE = np.dtype([
    ("conn", "<u8"),  # the connection (flow hash mixed with the capture point)
    ("ts", "<i8"),  # the request's first packet
    ("api", "<i4"),  # index into the state's API names
    ("method", "u1"),
    ("http", "u1"),  # 1: HTTP/1.x (answered by a status line); 0: TLS / HTTP/2 (by the first bytes)
    ("seen", "u1"),  # 1 once a packet of the server's on the connection was seen
    ("content_length", "<i4"),
    ("point", "<u4"),  # the capture point (a stable hash of its "host/interface")
    ("client", "<u8"),  # the connection's 5-tuple hash (features.flow_hash), the same at every capture point
])
# the queue as snapshots before the capture point and client were in it held it
_QUEUE_V1 = np.dtype(QUEUE_DTYPE.descr[:7])


def bucket(latency_ns: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each latency's bucket: the first whose bound holds it (latency <= bound), NBUCKETS - 1 above all."""
    return np.searchsorted(LATENCY_BOUNDS_NS, latency_ns, side="left").astype(np.int64)


def quantile_ms(hist: npt.NDArray[np.int64] | list[int], q: float) -> float | None:
    """The q-quantile of a bucket histogram in milliseconds, interpolated linearly inside its bucket
    (as Prometheus' histogram_quantile does): None when empty; the last bound when it is in +Inf."""
    h = np.asarray(hist, dtype=np.int64)
    total = int(h.sum())
    if total == 0:
        return None
    rank = q * total
    cum = np.cumsum(h)
    i = int(np.searchsorted(cum, rank, side="left"))
    if i >= len(LATENCY_BOUNDS_S):
        return LATENCY_BOUNDS_S[-1] * 1000
    lo = 0.0 if i == 0 else LATENCY_BOUNDS_S[i - 1]
    hi = LATENCY_BOUNDS_S[i]
    below = 0 if i == 0 else int(cum[i - 1])
    inside = int(h[i])
    frac = (rank - below) / inside if inside else 1.0
    return round((lo + (hi - lo) * frac) * 1000, 3)


@dataclass
class Paired:
    """What one batch's pairing found, row by row (numpy columns)."""

    api: npt.NDArray[np.int64]  # index into the state's API names
    ts: npt.NDArray[np.int64]  # when it counts (the answer's time; the timeout's end for unanswered)
    status: npt.NDArray[np.int64]  # HTTP status (0: none, TLS / HTTP/2 first bytes or unanswered)
    latency: npt.NDArray[np.int64]  # ns; -1: none (an answer without a request, an unanswered one)
    method: npt.NDArray[np.int64]
    req_length: npt.NDArray[np.int64]  # request Content-Length, -1 unknown
    resp_length: npt.NDArray[np.int64]  # response Content-Length, -1 unknown
    unanswered: npt.NDArray[np.bool_]
    point: npt.NDArray[np.uint32] = field(default_factory=lambda: np.zeros(0, np.uint32))  # the capture point
    client: npt.NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, np.uint64))  # its 5-tuple hash

    @classmethod
    def empty(cls) -> Paired:
        z = np.zeros(0, np.int64)
        return cls(z, z, z, z, z, z, z, np.zeros(0, bool))

    @classmethod
    def concat(cls, parts: list[Paired]) -> Paired:
        parts = [p for p in parts if len(p.api)]
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                     ("api", "ts", "status", "latency", "method", "req_length", "resp_length", "unanswered",
                      "point", "client")))


def _unanswered(q: npt.NDArray[Any], timeout_ns: int) -> Paired:
    n = len(q)
    z = np.zeros(n, np.int64)
    return Paired(q["api"].astype(np.int64), q["ts"] + timeout_ns, z, np.full(n, -1, np.int64),
                  q["method"].astype(np.int64), q["content_length"].astype(np.int64), np.full(n, -1, np.int64),
                  np.ones(n, bool), q["point"].copy(), q["client"].copy())


def _answered(q: npt.NDArray[Any], ts: npt.NDArray[np.int64], status: npt.NDArray[np.int64],
              latency: npt.NDArray[np.int64], resp_length: npt.NDArray[np.int64]) -> Paired:
    """Requests (QUEUE_DTYPE rows) and their answers, row by row."""
    return Paired(q["api"].astype(np.int64), ts, status, latency, q["method"].astype(np.int64),
                  q["content_length"].astype(np.int64), resp_length, np.zeros(len(q), bool), q["point"].copy(),
                  q["client"].copy())


@dataclass
class Pairing:
    """The requests of one partition waiting for answers."""

    timeout_ns: int
    queue: npt.NDArray[Any] = field(default_factory=lambda: np.zeros(0, QUEUE_DTYPE))

    def add(self, requests: npt.NDArray[Any], answers_conn: npt.NDArray[np.uint64],
            responses: dict[str, npt.NDArray[Any]], first_bytes: dict[str, npt.NDArray[Any]]) -> Paired:
        """One batch: ``requests`` (QUEUE_DTYPE rows, their ``seen`` already set from the batch),
        the connections whose server packets the batch holds, HTTP responses (conn, ts, status,
        content_length, api: the connection's API for an answer without a request, point, client) and the server's
        packets with payload (conn, ts: the first payload's time)."""
        q = np.concatenate([self.queue, requests]) if len(self.queue) else requests
        if len(q) and len(answers_conn):
            q["seen"] |= np.isin(q["conn"], answers_conn).astype(np.uint8)
        out: list[Paired] = []
        # rank order: per connection, by time (the queue's requests are older than the batch's)
        order = np.lexsort((np.arange(len(q)), q["ts"], q["conn"]))
        q = q[order]
        matched = np.zeros(len(q), bool)
        # HTTP/1.x: the k-th status line on a connection answers its k-th waiting request
        http = np.flatnonzero(q["http"] == 1)
        r_conn = responses["conn"]
        if len(r_conn):
            ro = np.lexsort((responses["ts"], r_conn))
            r = {k: v[ro] for k, v in responses.items()}
            q_rank = _ranks(q["conn"][http])
            r_rank = _ranks(r["conn"])
            # join on (connection, rank)
            qi, ri = _join(_rank_key(q["conn"][http], q_rank), _rank_key(r["conn"], r_rank))
            req = http[qi]
            lat = r["ts"][ri] - q["ts"][req]
            ok = (lat >= 0) & (lat <= self.timeout_ns)
            req_ok, ri_ok = req[ok], ri[ok]
            matched[req] = True  # answered in time, or too late: either way no longer waiting
            late = req[~ok]
            if len(late):
                out.append(_unanswered(q[late], self.timeout_ns))
            out.append(_answered(q[req_ok], r["ts"][ri_ok], r["status"][ri_ok].astype(np.int64), lat[ok],
                                 r["content_length"][ri_ok].astype(np.int64)))
            lone = np.ones(len(r["conn"]), bool)
            lone[ri_ok] = False
            li = np.flatnonzero(lone)
            if len(li):  # answers without a (timely) request: their status counts, no latency
                m = len(li)
                out.append(Paired(r["api"][li].astype(np.int64), r["ts"][li], r["status"][li].astype(np.int64),
                                  np.full(m, -1, np.int64), np.zeros(m, np.int64), np.full(m, -1, np.int64),
                                  r["content_length"][li].astype(np.int64), np.zeros(m, bool), r["point"][li],
                                  r["client"][li]))
        # TLS / HTTP/2: the server's first payload at or after the request
        tls = np.flatnonzero(q["http"] == 0)
        if len(tls) and len(first_bytes["conn"]):
            at, found = _next_at_or_after(q["conn"][tls], q["ts"][tls], first_bytes["conn"], first_bytes["ts"])
            dt = first_bytes["ts"][at]
            lat = dt - q["ts"][tls]
            ok = found & (lat <= self.timeout_ns)
            matched[tls[found]] = True
            late = tls[found & ~ok]
            if len(late):
                out.append(_unanswered(q[late], self.timeout_ns))
            sel, k = tls[ok], int(ok.sum())
            out.append(_answered(q[sel], dt[ok], np.zeros(k, np.int64), lat[ok], np.full(k, -1, np.int64)))
        rest = q[~matched]
        if len(rest) > MAX_QUEUED:  # the oldest give up their place
            drop = np.argsort(rest["ts"], kind="stable")[: len(rest) - MAX_QUEUED]
            keep = np.ones(len(rest), bool)
            keep[drop] = False
            gone = rest[~keep]
            out.append(_unanswered(gone[gone["seen"] == 1], self.timeout_ns))
            rest = rest[keep]
        self.queue = rest
        return Paired.concat(out)

    def expire(self, limit_ns: int) -> Paired:
        """Requests whose timeout ended before limit_ns: unanswered (those of connections whose server
        was seen) or forgotten."""
        if len(self.queue) == 0:
            return Paired.empty()
        gone = self.queue["ts"] + self.timeout_ns < limit_ns
        if not gone.any():
            return Paired.empty()
        q = self.queue[gone]
        self.queue = self.queue[~gone]
        return _unanswered(q[q["seen"] == 1], self.timeout_ns)

    def dump(self) -> Any:
        return np.ascontiguousarray(self.queue)

    @classmethod
    def load(cls, timeout_ns: int, d: Any) -> Pairing:
        if isinstance(d, np.ndarray) and d.dtype.itemsize == QUEUE_DTYPE.itemsize:
            return cls(timeout_ns, snapshot_array(d, QUEUE_DTYPE).copy())
        # written before the queue named each request's capture point and client (pktstream 0.1's base64 too)
        old = snapshot_array(d, _QUEUE_V1)
        q = np.zeros(len(old), QUEUE_DTYPE)
        for k in _QUEUE_V1.names or ():
            q[k] = old[k]
        return cls(timeout_ns, q)


def _next_at_or_after(conn: npt.NDArray[np.uint64], ts: npt.NDArray[np.int64], e_conn: npt.NDArray[np.uint64],
                      e_ts: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """For each (conn, ts): the index of the first event of the same connection at or after ts
    (valid where found). One sort of both sides by (connection, time, request before event at equal
    times), then each position's next event by a reversed running minimum."""
    n, m = len(conn), len(e_conn)
    c = np.concatenate([conn, e_conn])
    t = np.concatenate([ts, e_ts])
    is_event = np.r_[np.zeros(n, bool), np.ones(m, bool)]
    order = np.lexsort((is_event, t, c))
    pos = np.arange(n + m)
    nxt = np.where(is_event[order], pos, n + m)
    nxt = np.minimum.accumulate(nxt[::-1])[::-1]  # the next event's position, n + m if none
    where = np.empty(n + m, np.int64)
    where[order] = pos
    at_pos = nxt[where[:n]]
    found = at_pos < n + m
    at_pos_c = np.minimum(at_pos, n + m - 1)
    ev = order[at_pos_c] - n  # index into the events
    found &= (ev >= 0) & (c[order[at_pos_c]] == conn)
    return np.where(found, ev, 0).astype(np.intp), found


def _ranks(keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """For keys sorted so that equal keys are adjacent: each row's rank among its equals (0, 1, ...)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64)
    new = np.r_[True, keys[1:] != keys[:-1]]
    starts = np.flatnonzero(new)
    first = np.repeat(starts, np.diff(np.r_[starts, n]))
    return np.arange(n, dtype=np.int64) - first


def _rank_key(conn: npt.NDArray[np.uint64], rank: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """(connection, rank) as one 64-bit key (the connection is a 64-bit hash already)."""
    with np.errstate(over="ignore"):
        return np.asarray(conn ^ ((rank.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)),
                          dtype=np.uint64)


def _join(a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Rows of a and b (keys unique on each side) with equal keys: their indices, in a's order."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    ob = np.argsort(b, kind="stable")
    sb = b[ob]
    at = np.searchsorted(sb, a)
    at_c = np.minimum(at, len(sb) - 1)
    hit = (at < len(sb)) & (sb[at_c] == a)
    ai = np.flatnonzero(hit)
    return ai, ob[at_c[hit]]
