"""``pktstream usage``: per-API usage per minute (and hour), from packets alone.

Runs on ``stream.StreamRunner`` (exactly once, scaled out, replayable). Rows are routed by
destination address, so every packet towards a server meets in one partition whatever host
captured it. Per partition:

* requests (HTTP/1.x request lines, TLS ClientHellos, HTTP/2 prefaces) are matched to an API
  by the catalog, once per distinct (host, address, port, method, path) in a batch;
* every other packet of a TCP connection is attributed to the API of the connection's latest
  request (a flow table keyed by a 64-bit hash of the 5-tuple); packets of a connection that
  has not yet sent a request (its SYN, the handshake) wait in the flow table until it does, and
  go to the server's catch-all (``address:port/tcp``) if the window closes first;
* aggregates per (window, API) are computed with numpy over the whole batch; Python touches
  only the distinct (API, client) and (API, capture point) pairs;
* traffic chooses the names the catalog does not know, so each window keeps a row of their own for
  a bounded number of them per server and in all, the rest in ``_OTHER`` rows (caps.py), decided
  by a hash of each name so that the rows do not depend on arrival; what connections and waiting
  requests refer to is dropped once nothing does, and a state too large for its snapshot gives up
  detail (``degrade``).

Windows are one minute of event time; a window is published when its end plus ``grace_s`` is
behind the watermark. The minute aggregates are merged into hour aggregates when they close,
so hours are exact roll-ups (distinct clients included).
"""

from __future__ import annotations

import io
import itertools
import zlib
from dataclasses import dataclass, field
from typing import Any

import fastavro
import numpy as np
import numpy.typing as npt

from pktstream.consumers.catalog import ApiRef, Catalog, unmatched_ref
from pktstream.consumers.engine.features import (
    REQUEST_KINDS,
    Features,
    addr_hash,
    featurize,
    flow_order,
    mix,
    take,
    words_bytes,
)
from pktstream.consumers.engine.losses import MAX_LOST, Losses
from pktstream.consumers.engine.parse import (
    F_HEADERS_CUT,
    F_LINE_CUT,
    F_TLS_CUT,
    KIND_H2_PREFACE,
    KIND_HTTP1,
    KIND_HTTP1_RESPONSE,
    KIND_TLS_HELLO,
    METHODS,
)
from pktstream.consumers.engine.runner import FOREVER, Output
from pktstream.consumers.engine.snapshot import array as snapshot_array
from pktstream.consumers.usage.caps import (
    MAX_APIS,
    MAX_APIS_PER_SERVER,
    Admission,
    Key,
    WaitingNames,
    fold_ref,
    is_fold,
    key_of,
    key_text,
)
from pktstream.consumers.usage.responses import NBUCKETS, QUEUE_DTYPE, Paired, Pairing, bucket, quantile_ms
from pktstream.schemas import headers as H
from pktstream.schemas import load_schema_json
from pktstream.schemas.columns import Batch
from pktstream.schemas.decode import addr_text
from pktstream.schemas.protocols import FIN, PROTO_TCP, PROTO_UDP, RST, SYN

MINUTE_NS = 60_000_000_000
HOUR_NS = 3600_000_000_000
FLOW_IDLE_NS = 600_000_000_000  # a connection without a request for 10 minutes leaves the flow table
# Two capture points' records of one connection are this close in time (their clocks agree this well),
# and a client reuses a port no sooner than this after the last connection on it (TIME_WAIT)
SAME_CONNECTION_NS = 1_000_000_000
MAX_PENDING_FLOWS = 200_000
# capture points a row keeps figures of apart while its minute is open; the others' are kept together
MAX_POINTS_PER_ROW = 64
OTHER_POINTS = "_OTHER"
CLOSED_LINGER_NS = 10_000_000_000  # a closed connection's last ACKs still find it for 10 s
RESPONSE_TIMEOUT_S = 30.0  # a request no answer follows within this is unanswered
_SCHEMA = load_schema_json("usage")
_PARSED = fastavro.parse_schema(_SCHEMA)
# the answer figures: the schema's nullable fields (null when the capture saw none of the server's packets)
ANSWER_FIELDS = tuple(f["name"] for f in _SCHEMA["fields"] if isinstance(f["type"], list) and "null" in f["type"])


class Clients:
    """Per-client counters (requests, packets, bytes) of one API in one window, as arrays.

    Batches append their rows as they are; ``reduce`` folds equal addresses together (exactly:
    sorted on both address words), which happens when the appended rows outgrow what is
    already folded, and before anything is read."""

    __slots__ = ("addr", "cnt", "dropped", "parts", "waiting")

    def __init__(self, addr: npt.NDArray[np.uint64] | None = None, cnt: npt.NDArray[np.int64] | None = None,
                 dropped: int = 0) -> None:
        self.addr = addr if addr is not None else np.zeros((0, 2), dtype=np.uint64)
        self.cnt = cnt if cnt is not None else np.zeros((0, 3), dtype=np.int64)
        self.parts: list[tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]] = []
        self.waiting = 0
        self.dropped = dropped  # distinct clients whose counters a degraded snapshot gave up (see trim)

    def add(self, addr: npt.NDArray[np.uint64], cnt: npt.NDArray[np.int64]) -> None:
        self.parts.append((addr, cnt))
        self.waiting += len(addr)
        if self.waiting > max(4096, 2 * len(self.addr)):
            self.reduce()

    def extend(self, o: Clients) -> None:
        o.reduce()
        self.add(o.addr, o.cnt)
        self.dropped += o.dropped

    def reduce(self) -> None:
        if not self.parts:
            return
        addr = np.concatenate([self.addr, *(p[0] for p in self.parts)])
        cnt = np.concatenate([self.cnt, *(p[1] for p in self.parts)])
        self.parts, self.waiting = [], 0
        if len(addr) == 0:
            return
        order = np.lexsort((addr[:, 1], addr[:, 0]))
        a = addr[order]
        new = np.empty(len(a), dtype=bool)
        new[0] = True
        new[1:] = (a[1:] != a[:-1]).any(axis=1)
        starts = np.flatnonzero(new)
        self.addr = a[starts]
        self.cnt = np.add.reduceat(cnt[order], starts, axis=0)

    def __len__(self) -> int:
        self.reduce()
        return len(self.addr) + self.dropped

    def trim(self, k: int) -> int:
        """Only the k busiest clients kept (a snapshot over its limit); the others still count as
        distinct clients (an upper bound from then on: one that comes back counts twice). Returns how
        many were dropped."""
        self.reduce()
        n = len(self.addr) - k
        if n <= 0:
            return 0
        c = self.cnt
        keep = np.sort(np.lexsort((self.addr[:, 1], self.addr[:, 0], -c[:, 1], -c[:, 0]))[:k])
        self.addr, self.cnt = self.addr[keep], self.cnt[keep]
        self.dropped += n
        return n

    def top(self, k: int) -> list[tuple[bytes, list[int]]]:
        """The k clients with the most requests, then packets; ties by address."""
        self.reduce()
        c = self.cnt
        order = np.lexsort((self.addr[:, 1], self.addr[:, 0], -c[:, 1], -c[:, 0]))[:k]
        ab = words_bytes(self.addr[order])
        return [(ab[16 * i : 16 * i + 16], v) for i, v in enumerate(c[order].tolist())]

    def dump(self) -> list[Any]:
        self.reduce()
        out: list[Any] = [np.ascontiguousarray(self.addr, dtype="<u8"), np.ascontiguousarray(self.cnt, dtype="<i8")]
        return [*out, self.dropped] if self.dropped else out

    @classmethod
    def load(cls, d: list[Any]) -> Clients:
        addr = snapshot_array(d[0], "<u8", (-1, 2))
        cnt = snapshot_array(d[1], "<i8", (-1, 3))
        if len(addr) != len(cnt):
            raise ValueError("snapshot: client addresses and counters differ in number")
        return cls(addr, cnt, int(d[2]) if len(d) > 2 else 0)


def _add_pending(a: Agg, pend: Pending, accs: dict[str, list[int]]) -> None:
    """A waiting connection's packets of one window, per capture point ([packets, bytes, syns, the
    server's packets, their bytes, the point's request and answer ranks]), added to an API's window."""
    for origin, acc in accs.items():
        sub = a.sub(origin, max(acc[5], acc[6]))
        p, b, s = acc[0], acc[1], acc[2]
        sub.packets += p
        sub.nbytes += b
        sub.syns += s
        sub.req_rank = max(sub.req_rank, acc[5])
        sub.ans_rank = max(sub.ans_rank, acc[6])
        if p or b:
            sub.clients.add(*_one_client(pend.src, p, b))
        if acc[3]:
            sub.answered = True
            sub.rpackets += acc[3]
            sub.rbytes += acc[4]
        conv = np.array([pend.flow], np.uint64)
        if p or b or s:
            sub.req_seen.add(conv)
        if acc[3]:
            sub.ans_seen.add(conv)


def _tables(a: Agg) -> list[Clients]:
    """A row's client tables: its own and, while its minute is open, its capture points'."""
    return [a.clients, *(p.clients for p in a.points.values())]


def _pending_windows(d: dict[str, Any], origins: list[str]) -> dict[int, dict[str, list[int]]]:
    """A waiting connection's windows from a snapshot; one written before they were kept per capture
    point gives each window's figures to the first of the points that saw the connection by name."""
    out: dict[int, dict[str, list[int]]] = {}
    for w, x in d.items():
        if isinstance(x, dict):
            out[int(w)] = {str(o): _acc(acc) for o, acc in x.items()}
        else:
            out[int(w)] = {str(min(origins)) if origins else "": _acc(x)}
    return out


def _acc(x: list[Any]) -> list[int]:
    v = [int(y) for y in x][:7]
    return v + [0, 0, 0, 0, 0, -1, -1][len(v):]


def _one_client(src: bytes, packets: int, nbytes: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    return (np.frombuffer(src, dtype="<u8").reshape(1, 2).copy(), np.array([[0, packets, nbytes]], dtype=np.int64))


class Hashes:
    """A set of 64-bit hashes (the connections a capture point saw, by their 5-tuple's hash): batches
    append theirs as they are, folded to sorted distinct values when they outgrow what is folded."""

    __slots__ = ("parts", "v", "waiting")

    def __init__(self, v: npt.NDArray[np.uint64] | None = None) -> None:
        self.v = v if v is not None else np.zeros(0, np.uint64)
        self.parts: list[npt.NDArray[np.uint64]] = []
        self.waiting = 0

    def add(self, h: npt.NDArray[np.uint64]) -> None:
        if len(h):
            self.parts.append(h.copy())  # (not a view that keeps a whole batch's array alive)
            self.waiting += len(h)
            if self.waiting > max(1 << 16, 4 * len(self.v)):  # (folding less often: each fold sorts v again)
                self.values()

    def values(self) -> npt.NDArray[np.uint64]:
        if self.parts:
            self.v = np.unique(np.concatenate([self.v, *self.parts]))
            self.parts, self.waiting = [], 0
        return self.v

    def __len__(self) -> int:
        return len(self.values())

    def dump(self) -> npt.NDArray[np.uint64]:
        return np.ascontiguousarray(self.values(), dtype="<u8")

    @classmethod
    def load(cls, d: Any) -> Hashes:
        return cls(snapshot_array(d, "<u8").copy())


def _claims(sets: list[Hashes]) -> list[tuple[bool, bool]]:
    """For capture points in order (nearest the server first): whether to count a point's figures,
    and whether that is a judgement (it shares some but not all of its connections with the points
    before it that were counted). A point half or more of whose connections counted points before it
    hold is not counted (the same traffic, seen farther from the server, or across a minute boundary
    by a clock of its own); one that shares fewer is (its own traffic, a few 5-tuples that repeat)."""
    out: list[tuple[bool, bool]] = []
    held: npt.NDArray[np.uint64] = np.zeros(0, np.uint64)  # sorted: the counted points' connections
    for h in sets:
        mine = h.values()
        if len(held) and len(mine):
            at = np.minimum(np.searchsorted(held, mine), len(held) - 1)
            shared = int((held[at] == mine).sum())
        else:
            shared = 0
        counted = 2 * shared < len(mine) or len(mine) == 0
        out.append((counted, 0 < shared < len(mine)))
        if counted and len(mine):
            held = np.union1d(held, mine)
    return out


def rank_of(ttl: npt.NDArray[np.uint8], direction: npt.NDArray[np.uint8],
            answer: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """How near the server each row's capture point is (higher: nearer), from the packet's TTL and
    whether it was captured arriving or leaving. A request's hops from the client are its sender's
    initial TTL (64, 128 or 255, the next at or above) minus its TTL, and at equal hops its arrival is
    nearer the server than its departure (the next host's ingress follows the last one's egress);
    an answer's hops from the server count down the same way, its departure nearer the server."""
    t = ttl.astype(np.int64)
    hops = np.where(t <= 64, 64, np.where(t <= 128, 128, 255)) - t
    received = direction == 0
    out: npt.NDArray[np.int64] = np.where(answer, 2 * (255 - hops) + ~received, 2 * hops + received).astype(np.int64)
    return out


@dataclass
class Agg:
    """One API in one window. While the minute is open its figures are kept per capture point
    (``points``) and ``resolve`` counts each conversation once when it closes: what the point
    nearest the server saw, plus what only points farther away saw (their clients the nearer ones
    did not see), for the client's side (requests, packets, bytes, clients) and the server's
    (answers, status codes, latency) apart."""

    requests: int = 0
    partial: int = 0
    packets: int = 0
    nbytes: int = 0
    syns: int = 0
    sampled: bool = False
    methods: dict[str, int] = field(default_factory=dict)
    clients: Clients = field(default_factory=Clients)
    seen_by: set[str] = field(default_factory=set)
    # the server's side (see responses.py); none of it is published unless answered
    answered: bool = False  # some of the server's packets were seen
    rpackets: int = 0
    rbytes: int = 0
    responses: int = 0
    unanswered: int = 0
    codes: dict[int, int] = field(default_factory=dict)  # status code -> responses (0: unreadable)
    hist: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(NBUCKETS, np.int64))
    latency_sum_us: int = 0
    # an open minute's figures per capture point ("host/interface" -> its own Agg), resolved at close
    points: dict[str, Agg] = field(default_factory=dict)
    # a capture point's own Agg: how near the server it saw the requests and the answers (rank_of;
    # -1: none), and the connections (their 5-tuple's hash) whose client's packets it counted
    # (req_seen) and whose answers or unanswered requests it counted (ans_seen)
    req_rank: int = -1
    ans_rank: int = -1
    req_seen: Hashes = field(default_factory=Hashes)
    ans_seen: Hashes = field(default_factory=Hashes)
    overlaps: int = 0  # capture point sides counted or not by a judgement: some of their connections were nearer

    def sub(self, origin: str, rank: int = -1) -> Agg:
        a = self.points.get(origin)
        if a is None:
            # past MAX_POINTS_PER_ROW the others together, a point per rank (points at one distance
            # from the server: seen_by still names each)
            key = origin if len(self.points) < MAX_POINTS_PER_ROW or origin.startswith(OTHER_POINTS) \
                else next((k for k, v in self.points.items() if k.startswith(OTHER_POINTS) and origin in v.seen_by),
                          f"{OTHER_POINTS}:{rank}")  # (where its rows went: its answers follow them)
            a = self.points.get(key)
            if a is None:
                a = self.points[key] = Agg()
            if not origin.startswith(OTHER_POINTS):
                a.seen_by.add(origin)
        return a

    def merge(self, o: Agg) -> None:
        self._merge_figures(o)
        for origin, sub in o.points.items():
            self.sub(origin).merge(sub)
        self.req_rank = max(self.req_rank, o.req_rank)
        self.ans_rank = max(self.ans_rank, o.ans_rank)
        self.req_seen.add(o.req_seen.values())
        self.ans_seen.add(o.ans_seen.values())
        self.overlaps += o.overlaps

    def _merge_figures(self, o: Agg) -> None:
        self._merge_requests(o)
        self.seen_by |= o.seen_by
        self._merge_answers(o)

    def _merge_requests(self, o: Agg) -> None:
        self.requests += o.requests
        self.partial += o.partial
        self.packets += o.packets
        self.nbytes += o.nbytes
        self.syns += o.syns
        self.sampled |= o.sampled
        for k, v in o.methods.items():
            self.methods[k] = self.methods.get(k, 0) + v
        self.clients.extend(o.clients)

    def _merge_answers(self, o: Agg) -> None:
        self.answered |= o.answered
        self.rpackets += o.rpackets
        self.rbytes += o.rbytes
        self.responses += o.responses
        self.unanswered += o.unanswered
        for c, v in o.codes.items():
            self.codes[c] = self.codes.get(c, 0) + v
        self.hist = self.hist + o.hist
        self.latency_sum_us += o.latency_sum_us

    def resolve(self) -> None:
        """The capture points' figures counted once each (see the class), the client's side and the
        server's apart: points nearest the server first (ties by name); a farther point adds its
        figures when none of its connections (5-tuples) was counted nearer, nothing when all were,
        and when some were, all of them if fewer than half, else nothing (``overlaps``)."""
        points, self.points = self.points, {}
        if not points:
            return
        for sub in points.values():
            self.seen_by |= sub.seen_by
        if len(points) == 1:
            (only,) = points.values()
            self._merge_figures(only)
            return
        near = sorted(points.items(), key=lambda kv: (-kv[1].req_rank, kv[0]))
        subs = [sub for _o, sub in near if sub.requests or sub.packets or sub.syns or len(sub.req_seen)]
        for sub, (counted, judged) in zip(subs, _claims([sub.req_seen for sub in subs]), strict=True):
            if counted:
                self._merge_requests(sub)
            self.overlaps += judged
        near = sorted(points.items(), key=lambda kv: (-kv[1].ans_rank, kv[0]))
        subs = [sub for _o, sub in near if sub.answered or sub.responses or sub.unanswered or len(sub.ans_seen)]
        for sub, (counted, judged) in zip(subs, _claims([sub.ans_seen for sub in subs]), strict=True):
            if counted:
                self._merge_answers(sub)
            self.overlaps += judged

    def _empty(self) -> bool:
        return not (self.requests or self.partial or self.packets or self.nbytes or self.syns or self.sampled
                    or self.methods or len(self.clients) or self.answered or self.overlaps or len(self.req_seen)
                    or len(self.ans_seen))

    def dump(self) -> list[Any]:
        if self.points and self._empty():  # an open minute's row: its capture points' figures only
            return [{k: v.dump() for k, v in self.points.items()}]
        out: list[Any] = [
            self.requests, self.partial, self.packets, self.nbytes, self.syns, self.sampled, self.methods,
            self.clients.dump(), sorted(self.seen_by),
            [self.answered, self.rpackets, self.rbytes, self.responses, self.unanswered,
             {str(k): v for k, v in self.codes.items()}, self.hist.tolist(), self.latency_sum_us]
            if self.answered or self.responses or self.unanswered or self.codes or self.latency_sum_us else None]
        if self.points or self.req_rank >= 0 or self.ans_rank >= 0 or self.overlaps or len(self.req_seen) \
                or len(self.ans_seen):
            out.append([{k: v.dump() for k, v in self.points.items()}, self.req_rank, self.ans_rank, self.overlaps,
                        self.req_seen.dump(), self.ans_seen.dump()])
        return out

    @classmethod
    def load(cls, d: list[Any], depth: int = 0) -> Agg:
        if len(d) == 1:  # an open minute's row (see dump)
            if depth or not isinstance(d[0], dict):
                raise ValueError("snapshot: a capture point's figures hold capture points")
            a = cls()
            a.points = {str(k): cls.load(v, 1) for k, v in d[0].items()}
            return a
        a = cls(int(d[0]), int(d[1]), int(d[2]), int(d[3]), int(d[4]), bool(d[5]), dict(d[6]),
                Clients.load(d[7]), set(d[8]))
        if len(d) > 9 and d[9] is not None:  # written by a version that pairs answers (None: no answers)
            r = d[9]
            a.answered, a.rpackets, a.rbytes, a.responses, a.unanswered = bool(r[0]), int(r[1]), int(r[2]), \
                int(r[3]), int(r[4])
            a.codes = {int(k): int(v) for k, v in r[5].items()}
            a.hist = np.array(r[6], dtype=np.int64)
            if a.hist.shape != (NBUCKETS,):
                raise ValueError("snapshot: latency histogram of another size")
            a.latency_sum_us = int(r[7])
        if len(d) > 10:  # written by a version that counts each conversation once (per capture point)
            p = d[10]
            if p[0] and depth:
                raise ValueError("snapshot: a capture point's figures hold capture points")
            a.points = {str(k): cls.load(v, depth + 1) for k, v in p[0].items()}
            a.req_rank, a.ans_rank, a.overlaps = int(p[1]), int(p[2]), int(p[3])
            a.req_seen, a.ans_seen = Hashes.load(p[4]), Hashes.load(p[5])
        return a


@dataclass
class Pending:
    """Packets of a connection that has not sent a request yet."""

    src: bytes
    service: str  # the catch-all API they go to if no request comes
    origins: set[str] = field(default_factory=set)
    # window start -> capture point -> [packets, bytes, syns, the server's packets, their bytes, the
    # point's ranks (rank_of) of the requests and of the answers]
    windows: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    server: str = ""  # "address:port" of the connection's server
    since: int = 0  # its first packet's ts (ns): a request seen long before is another connection's
    flow: int = 0  # the hash of its 5-tuple (features' fh)


@dataclass
class UsageState:
    # minute start (ns) -> row (caps.Key: API name, server) -> Agg; which names have rows: caps
    windows: dict[int, dict[Key, Agg]] = field(default_factory=dict)
    hours: dict[int, dict[Key, Agg]] = field(default_factory=dict)
    caps: dict[int, Admission] = field(default_factory=dict)  # minute start -> its uncatalogued names
    hour_caps: dict[int, Admission] = field(default_factory=dict)
    closed_until: int = 0  # minute windows starting before this are closed
    # flow hash -> (its latest request's (API, server) in names, that request's ts, closing)
    flows: dict[int, tuple[int, int, bool]] = field(default_factory=dict)
    pending: dict[int, Pending] = field(default_factory=dict)
    point_names: dict[int, str] = field(default_factory=dict)  # capture point hash -> "host/interface"
    overlaps: int = 0  # (window, API, capture point) figures approximated: nearer points saw part of its clients
    apis: dict[str, ApiRef] = field(default_factory=dict)  # the catalogued APIs seen
    late_records: int = 0
    records: int = 0
    pairing: Pairing = field(default_factory=lambda: Pairing(int(RESPONSE_TIMEOUT_S * 1e9)))
    losses: Losses = field(default_factory=Losses)  # the capture points' ring-buffer losses (engine/losses.py)
    # the (API, server) pairs the flow table and the request queue refer to
    names: WaitingNames = field(default_factory=WaitingNames)
    apis_folded: int = 0  # (window, name) pairs that went to an _OTHER row (each batch's decisions)
    requests_folded: int = 0  # requests counted in an _OTHER row of a minute instead of their own

    def ref_of(self, name: str, server: str) -> ApiRef:
        """What the usage record says of an API: the catalog's, else read from the name (caps, catalog)."""
        ref = self.apis.get(name)
        if ref is not None:
            return ref
        if is_fold((name, server)):
            return fold_ref((name, server))
        return unmatched_ref(name, server)


def _flow_hash(rows: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    return np.ascontiguousarray(rows["fh"])  # features.flow_hash of the 5-tuple, from stage one


def _servers(rows: npt.NDArray[Any]) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Each row's server (destination address and port) as a number, and the servers as text
    ("address:port"), once per distinct one."""
    if len(rows) == 0:
        return np.zeros(0, np.int64), []
    _u, first, inv = np.unique(mix(rows["dst_addr"], rows["dst_port"]), return_index=True, return_inverse=True)
    dst = words_bytes(rows["dst_addr"][first])
    ports = rows["dst_port"][first].tolist()
    texts = [f"{addr_text(dst[16 * j : 16 * j + 16])}:{port}" for j, port in enumerate(ports)]
    return inv.ravel().astype(np.int64), texts


def _protocol(kind: int, proto: int) -> str:
    if kind == KIND_TLS_HELLO:
        return "tls"
    if kind == KIND_H2_PREFACE:
        return "h2c"
    if kind in REQUEST_KINDS:
        return "http"
    return "udp" if proto == PROTO_UDP else "tcp"


class UsageProcessor:
    def __init__(self, catalog: Catalog, topic: str = "pktstream.usage", grace_s: float = 10.0,
                 top_clients: int = 10, hours: bool = True, response_timeout_s: float = RESPONSE_TIMEOUT_S,
                 red: Any = None, max_apis_per_server: int = MAX_APIS_PER_SERVER, max_apis: int = MAX_APIS) -> None:
        self.catalog = catalog
        self.topic = topic
        self.grace_ns = int(grace_s * 1e9)
        self.top_clients = top_clients
        self.hours = hours
        self.timeout_ns = int(response_timeout_s * 1e9)
        self.red = red  # red.RedMetrics: the answers as Prometheus histograms (process-local)
        # uncatalogued names with a row of their own per window (caps.py)
        self.max_apis_per_server = max_apis_per_server
        self.max_apis = max_apis
        # (name, server) pairs the flow table and the request queue may refer to at once: a window's names
        # twice over (the current minute's and the last one's); past that, a server's _OTHER row
        self.max_waiting_names = 2 * max_apis

    # -- stage one --------------------------------------------------------------------------

    def featurize(self, batch: Batch, origin: str) -> Features:
        return featurize(batch, origin, transport_only=True, coalesce_ns=MINUTE_NS, answers=True)

    def route(self, f: Features, nparts: int) -> dict[int, Features]:
        rows = f.rows
        if len(rows) == 0:
            return {}
        part = (addr_hash(rows["dst_addr"]) % np.uint64(nparts)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        sorted_rows = take(rows, order)  # one copy; each partition's rows are then a contiguous slice
        bounds = np.searchsorted(part[order], np.arange(nparts + 1))
        return {q: Features(sorted_rows[bounds[q] : bounds[q + 1]], f.strings)
                for q in range(nparts) if bounds[q + 1] > bounds[q]}

    # -- stage two --------------------------------------------------------------------------

    def new_state(self) -> UsageState:
        return UsageState(pairing=Pairing(self.timeout_ns), names=WaitingNames(limit=self.max_waiting_names))

    def _service(self, st: UsageState, dst: bytes, port: int, proto: int) -> str:
        ref = self.catalog.match("", dst, port, "", "", "udp" if proto == PROTO_UDP else "tcp")
        if ref.matched:  # the others are read back from their names (UsageState.ref_of)
            st.apis.setdefault(ref.name, ref)
        return ref.name

    @staticmethod
    def _key(st: UsageState, name: str, server: str) -> Key:
        """The row key of an API at a server: catalogued APIs have one row whatever the server."""
        return (name, "") if name in st.apis else (name, server)

    def process(self, st: UsageState, f: Features) -> None:
        rows = f.rows
        n = len(rows)
        st.records += int(rows["packets"].sum())
        win = (rows["ts_ns"] // MINUTE_NS) * MINUTE_NS
        late = win < st.closed_until
        if late.any():
            st.late_records += int(rows["packets"][late].sum())
            rows, win = take(rows, ~late), win[~late]
            n = len(rows)
            if n == 0:
                return
        kind = rows["kind"]
        answer = rows["answer"] != 0
        is_req = np.isin(kind, REQUEST_KINDS) & ~answer
        srv, servers = _servers(rows)
        # 1. requests -> API, once per distinct (dst, port, method, host, path, kind)
        api_names: list[str] = []
        api_index: dict[str, int] = {}

        def api_id(name: str) -> int:
            i = api_index.get(name)
            if i is None:
                i = api_index[name] = len(api_names)
                api_names.append(name)
            return i

        row_api = np.full(n, -1, dtype=np.int64)
        req_idx = np.flatnonzero(is_req)
        if req_idx.size:
            r = take(rows, req_idx)
            line_cut = (r["pflags"] & F_LINE_CUT).astype(np.int64)
            rkey = mix(r["dst_addr"], r["dst_port"], r["method"], r["kind"], r["name"], r["path"], line_cut)
            _u, first, inv = np.unique(rkey, return_index=True, return_inverse=True)
            uniq = r[first]
            ids = np.empty(len(uniq), dtype=np.int64)
            dsts = words_bytes(uniq["dst_addr"])
            for j, (nm, port, meth, pth, knd, pfl) in enumerate(zip(
                    uniq["name"].tolist(), uniq["dst_port"].tolist(), uniq["method"].tolist(), uniq["path"].tolist(),
                    uniq["kind"].tolist(), uniq["pflags"].tolist(), strict=True)):
                ref = self.catalog.match(f.text(nm), dsts[16 * j : 16 * j + 16], port,
                                         METHODS[meth] if meth < len(METHODS) else "", f.text(pth),
                                         _protocol(knd, PROTO_TCP), partial=bool(pfl & F_LINE_CUT))
                if ref.matched:
                    st.apis.setdefault(ref.name, ref)
                ids[j] = api_id(ref.name)
            row_api[req_idx] = ids[inv.ravel()]
        # 2. other packets -> their connection's API
        # Each capture point's rows of a flow are a group, in capture order, cut into connections at
        # the client's first SYN after other rows (at a point that sees only the answers, the SYN-ACK):
        # a port reused by a later connection. Another point's rows of the same connection, by a clock
        # of its own, are not cut by it; a connection whose request a point did not see (it sees one
        # direction, or the request is in another batch) takes the one another point saw (_fill_apart).
        fh = _flow_hash(rows)
        point = fh ^ (mix(rows["origin"]) << np.uint64(20))
        order = flow_order(point)
        fs = fh[order] >> np.uint64(20)  # the flow: the flow table's and the waiting handshakes' key
        gk = point[order] >> np.uint64(20)  # the flow at one capture point
        ts_s = rows["ts_ns"][order]
        a_sorted = row_api[order]
        is_syn_s = rows["syns"][order] > 0  # a client's SYN
        handshake = (rows["tcp_flags"][order] & SYN) != 0  # a row that starts at a SYN or SYN-ACK
        idx = np.arange(n)
        gstart = np.r_[True, gk[1:] != gk[:-1]]
        if n > 1:
            gfirst = np.flatnonzero(gstart)
            g0 = np.repeat(gfirst, np.diff(np.r_[gfirst, n]))  # each row's group's first row
            lastother = np.maximum.accumulate(np.where(handshake, -1, idx))
            # a connection opens at the client's SYN; at a point that sees no SYN of the flow (only the
            # answers), at the SYN-ACK (elsewhere a SYN-ACK after the request is a late or repeated one)
            no_syn = np.logical_or.reduceat(is_syn_s, gfirst) == 0
            opens = is_syn_s | (handshake & np.repeat(no_syn, np.diff(np.r_[gfirst, n])))
            cand = np.r_[False, opens[1:] & (lastother[:-1] >= g0[1:])]
            prevcand = np.maximum.accumulate(np.where(cand, idx, -1))
            gstart = gstart | (cand & np.r_[False, lastother[:-1] > prevcand[:-1]])  # (not a retransmitted SYN)
        starts = np.flatnonzero(gstart)
        gid = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
        pos = np.where(a_sorted >= 0, idx, -1)
        last = np.maximum.accumulate(pos)
        ffill = np.where(last >= starts[gid], a_sorted[np.maximum(last, 0)], -1)
        # per connection (groups are contiguous in sorted order: reduceat over their starts)
        flags_s = rows["flags_or"][order]
        has_req = np.logical_or.reduceat(a_sorted >= 0, starts)
        big = np.iinfo(np.int64).max
        firstpos = np.minimum.reduceat(np.where(a_sorted >= 0, idx, big), starts)
        tcp_s = rows["protocol"][order][starts] == PROTO_TCP  # only TCP connections are in the table
        syn_g = np.logical_or.reduceat(is_syn_s, starts)  # the client's SYN is in it
        # opening: a SYN in it, or it starts at a handshake row (a point that sees only the answers)
        opening = (syn_g | handshake[starts]) & tcp_s
        # rows before the connection's first request in this batch
        need = np.flatnonzero(ffill < 0)
        if need.size:
            ng = np.unique(gid[need])
            # an opening connection's rows, and other protocols': the first request here (at once)
            fill = np.where((opening | ~tcp_s) & has_req, a_sorted[np.minimum(firstpos, n - 1)], -1)
            rest_g = ng[(fill[ng] < 0) & tcp_s[ng]]
            if rest_g.size:
                org_s = rows["origin"][order]
                self._fill_apart(st, rest_g, fill, starts, fs, gk, ts_s, a_sorted, has_req, firstpos, opening,
                                 syn_g, api_id, lambda i: f.text(int(org_s[i])))
            ffill[need] = fill[gid[need]]
        row_api_sorted = ffill
        # 3. the flow table learns each connection's latest request (and whether it is closing), the
        # latest in time last; a waiting handshake goes to the flow's first request since it began
        if req_idx.size:
            lastreq = np.maximum.reduceat(np.where(a_sorted >= 0, idx, -1), starts)
            closing = np.logical_or.reduceat((flags_s & (FIN | RST)) != 0, starts)
            gs = np.flatnonzero(lastreq >= 0)
            gs = gs[np.argsort(ts_s[lastreq[gs]], kind="stable")]
            ps = lastreq[gs]
            keys = fs[ps].tolist()
            pair = self._pair_ids(st, a_sorted[ps], srv[order][ps], api_names, servers)
            st.flows.update(zip(keys, zip(pair.tolist(), ts_s[ps].tolist(), closing[gs].tolist(),
                                          strict=True), strict=True))
            if st.pending:
                fp = firstpos[gs]
                for i in np.argsort(ts_s[fp], kind="stable").tolist():
                    key = keys[i]
                    pend = st.pending.get(key)
                    if pend is not None and int(ts_s[fp[i]]) >= pend.since - SAME_CONNECTION_NS:
                        del st.pending[key]
                        self._resolve(st, pend, api_names[int(a_sorted[fp[i]])])
        # 4. packets of connections still without a request: wait (TCP that opened here) or catch-all
        unk = np.flatnonzero(row_api_sorted < 0)
        if unk.size:
            rows_s = take(rows, order[unk])  # the rows concerned, in sorted order: unk indexes them
            rank_s = rank_of(rows_s["ttl"], rows_s["direction"], rows_s["answer"] != 0)
            pos_of = np.full(n, -1, dtype=np.int64)
            pos_of[unk] = np.arange(len(unk))
            ug, ustart, ucnt = np.unique(gid[unk], return_index=True, return_counts=True)
            # to wait: TCP connections whose client's SYN is here (not those of a point that sees only
            # the answers: no request will come to it), then rows of connections already waiting
            has_syn = np.logical_or.reduceat(is_syn_s[unk] & (rows_s["protocol"] == PROTO_TCP), ustart)
            win_o = win[order]
            wait_rows: list[npt.NDArray[np.intp]] = []

            def wait(j: int, hs: bool) -> None:
                g, us, uc = int(ug[j]), int(ustart[j]), int(ucnt[j])
                key = int(fs[starts[g]])
                pend = st.pending.get(key)
                if pend is not None and int(ts_s[starts[g]]) < pend.since - SAME_CONNECTION_NS:
                    return  # an older connection's rows (a point that lags): not the waiting one's
                if pend is None and hs and len(st.pending) < MAX_PENDING_FLOWS:
                    r0 = rows_s[us]
                    pend = st.pending[key] = Pending(
                        words_bytes(r0["src_addr"]), self._service(st, words_bytes(r0["dst_addr"]), int(r0["dst_port"]),
                                                              int(r0["protocol"])),
                        server=servers[int(srv[order[unk[us]]])], since=int(ts_s[starts[g]]), flow=int(r0["fh"]))
                if pend is None:
                    return
                sel = unk[us : us + uc]
                for i, w in zip(pos_of[sel].tolist(), win_o[sel].tolist(), strict=True):
                    origin = f.text(int(rows_s["origin"][i]))
                    acc = pend.windows.setdefault(int(w), {}).get(origin)
                    if acc is None:
                        acc = pend.windows[int(w)][origin] = [0, 0, 0, 0, 0, -1, -1]
                    if rows_s["answer"][i]:
                        acc[3] += int(rows_s["packets"][i])
                        acc[4] += int(rows_s["nbytes"][i])
                        acc[6] = max(acc[6], int(rank_s[i]))
                    else:
                        acc[0] += int(rows_s["packets"][i])
                        acc[1] += int(rows_s["nbytes"][i])
                        acc[2] += int(rows_s["syns"][i])
                        acc[5] = max(acc[5], int(rank_s[i]))
                    pend.origins.add(origin)
                wait_rows.append(sel)

            for j in np.flatnonzero(has_syn).tolist():
                wait(j, True)
            if st.pending:
                waiting_keys = np.fromiter(st.pending.keys(), dtype=np.uint64, count=len(st.pending))
                for j in np.flatnonzero(~has_syn & np.isin(fs[starts[ug]], waiting_keys)).tolist():
                    g = int(ug[j])
                    key, t0 = int(fs[starts[g]]), int(ts_s[starts[g]])
                    if opening[g]:  # a handshake from the answers' side: the waiting one's, if as recent
                        joins = t0 >= st.pending[key].since - SAME_CONNECTION_NS
                    else:
                        joins = self._waits(st, key, t0, f.text(int(rows_s["origin"][ustart[j]])))
                    if joins:
                        wait(j, False)
            if wait_rows:
                row_api_sorted[np.concatenate(wait_rows)] = -2  # waiting in the flow table
            rest = np.flatnonzero(row_api_sorted == -1)
            if rest.size:  # the server's catch-all, once per distinct (address, port, protocol)
                rr = rows_s[pos_of[rest]]
                _su, sfirst, sinv = np.unique(mix(rr["dst_addr"], rr["dst_port"], rr["protocol"]),
                                              return_index=True, return_inverse=True)
                su = rr[sfirst]
                sid = np.array([api_id(self._service(st, words_bytes(u["dst_addr"]), int(u["dst_port"]),
                                                     int(u["protocol"]))) for u in su], dtype=np.int64)
                row_api_sorted[rest] = sid[sinv.ravel()]
        row_api = np.empty(n, dtype=np.int64)
        row_api[order] = row_api_sorted
        # 5. aggregate per (window, API)
        ok = np.flatnonzero(row_api >= 0)
        if ok.size:
            self._aggregate(st, f, take(rows, ok), win[ok], row_api[ok], is_req[ok], api_names, srv[ok], servers)
        # 6. answers paired with requests
        if answer.any() or st.pairing.queue.size or is_req.any():
            self._pair(st, f, rows, row_api, is_req, answer, api_names, srv, servers)

    @staticmethod
    def _pair_ids(st: UsageState, api: npt.NDArray[np.int64], srv: npt.NDArray[np.int64], api_names: list[str],
                  servers: list[str]) -> npt.NDArray[np.int64]:
        """Each row's (API, server) as a number in the state's names (once per distinct pair)."""
        if len(api) == 0:
            return np.zeros(0, np.int64)
        ns = len(servers)
        u, inv = np.unique(api.astype(np.int64) * ns + srv, return_inverse=True)
        ids = np.array([st.names.add_pair(api_names[k // ns], servers[k % ns], api_names[k // ns] in st.apis)
                        for k in u.tolist()], dtype=np.int64)
        out: npt.NDArray[np.int64] = ids[inv.ravel()]
        return out

    def _pair(self, st: UsageState, f: Features, rows: npt.NDArray[Any], row_api: npt.NDArray[np.int64],
              is_req: npt.NDArray[np.bool_], answer: npt.NDArray[np.bool_], api_names: list[str],
              srv: npt.NDArray[np.int64], servers: list[str]) -> None:
        # the connection per capture point: its flow hash mixed with a stable hash of the capture point
        uo, oinv = np.unique(rows["origin"].astype(np.int64), return_inverse=True)
        crc = np.array([zlib.crc32(f.text(o).encode()) for o in uo.tolist()], dtype=np.int64)
        for o, c in zip(uo.tolist(), crc.tolist(), strict=True):
            st.point_names.setdefault(c, f.text(o))
        conn = mix(rows["fh"], crc[oinv.ravel()])
        ans_conn = np.unique(conn[answer])
        ri = np.flatnonzero(is_req)
        status = rows["status"].astype(np.int64)
        final = (status < 100) | (status >= 200) | (status == 101)  # 1xx interim answers are not answers
        rs = np.flatnonzero(answer & (rows["kind"] == KIND_HTTP1_RESPONSE) & final)
        ra = row_api[rs]
        known = ra >= 0
        conv_req, conv_rs = rows["fh"][ri], rows["fh"][rs]  # each request's and answer's connection (5-tuple)
        # (API, server) numbers of the requests and of the answers whose connection has one, at once
        both = np.concatenate([ri, rs[known]])
        ids = self._pair_ids(st, row_api[both], srv[both], api_names, servers)
        reqs = np.zeros(len(ri), QUEUE_DTYPE)
        if len(ri):
            reqs["conn"] = conn[ri]
            reqs["ts"] = rows["ts_ns"][ri]
            reqs["api"] = ids[: len(ri)]
            reqs["method"] = rows["method"][ri]
            reqs["http"] = rows["kind"][ri] == KIND_HTTP1
            reqs["seen"] = np.isin(reqs["conn"], ans_conn)
            reqs["content_length"] = rows["content_length"][ri]
            reqs["point"] = crc[oinv.ravel()[ri]]
            reqs["client"] = conv_req
        r_api = np.full(len(rs), -1, np.int64)
        if len(rs):
            r_api[known] = ids[len(ri) :]
            for j in np.flatnonzero(~known).tolist():  # the connection waits for its request: the server's API
                r = rows[rs[j]]
                service = self._service(st, words_bytes(r["dst_addr"]), int(r["dst_port"]), int(r["protocol"]))
                r_api[j] = st.names.add_pair(service, servers[int(srv[rs[j]])], service in st.apis)
        responses = {"conn": conn[rs], "ts": rows["ts_ns"][rs], "status": status[rs],
                     "content_length": rows["content_length"][rs], "api": r_api,
                     "point": crc[oinv.ravel()[rs]].astype(np.uint32), "client": conv_rs}
        ds = np.flatnonzero(answer & (rows["ts_data"] > 0))
        first_bytes = {"conn": conn[ds], "ts": rows["ts_data"][ds]}
        self._add_paired(st, st.pairing.add(reqs, ans_conn, responses, first_bytes))

    def _add_paired(self, st: UsageState, p: Paired) -> None:
        """Answers and unanswered requests into their windows (and the RED metrics)."""
        m = len(p.api)
        if m == 0:
            return
        win = (p.ts // MINUTE_NS) * MINUTE_NS
        lb = np.where(p.latency >= 0, bucket(p.latency), -1)  # each answer's latency bucket, once
        # a group per (window, API and server); the groups placed in their windows' rows, then all per row
        wins, winv = np.unique(win, return_inverse=True)
        na = int(p.api.max()) + 1
        groups, gi = np.unique(winv.ravel().astype(np.int64) * na + p.api, return_inverse=True)
        keys = [st.names.key(i) for i in (groups % na).tolist()]
        rows_of, tid, _folded = self._place(st, wins, groups // na, keys)
        # each answer's row, then its capture point's figures in it (Agg.points)
        pt, ti = np.unique(tid[gi.ravel()] << 32 | p.point.astype(np.int64), return_inverse=True)
        ti = ti.ravel()
        aggs = [rows_of[k >> 32].sub(st.point_names.get(k & 0xFFFFFFFF, "")) for k in pt.tolist()]
        nt = len(aggs)
        # the connections each point counted answers and unanswered requests of (an answer's own rows may
        # have gone to another row: a lagging point's, a catch-all's after the flow table was given up)
        co = np.argsort(ti, kind="stable")
        cb = np.searchsorted(ti[co], np.arange(nt + 1)).tolist()
        cv = p.client[co]
        for j, a in enumerate(aggs):
            a.ans_seen.add(cv[cb[j] : cb[j + 1]])
        un = p.unanswered
        unanswered = np.bincount(ti[un], minlength=nt)
        responses = np.bincount(ti[~un], minlength=nt)
        timed = ~un & (lb >= 0)
        hist = np.bincount(ti[timed] * NBUCKETS + lb[timed], minlength=nt * NBUCKETS).reshape(nt, NBUCKETS)
        lsum = np.zeros(nt, np.int64)
        np.add.at(lsum, ti[timed], p.latency[timed] // 1000)
        for a, u, r, h, ls in zip(aggs, unanswered.tolist(), responses.tolist(), hist, lsum.tolist(), strict=True):
            a.answered = True
            a.unanswered += u
            a.responses += r
            if ls or h.any():
                a.hist += h
                a.latency_sum_us += ls
        ck, cn = np.unique(ti[~un] * 1024 + np.clip(p.status[~un], 0, 1023), return_counts=True)
        for k, v in zip(ck.tolist(), cn.tolist(), strict=True):
            d = aggs[k // 1024].codes
            d[k % 1024] = d.get(k % 1024, 0) + v
        if self.red is not None:
            self.red.observe(st, p, lb)

    def _aggregate(self, st: UsageState, f: Features, rows: npt.NDArray[Any], win: npt.NDArray[np.int64],
                   api: npt.NDArray[np.int64], is_req: npt.NDArray[np.bool_], api_names: list[str],
                   srv: npt.NDArray[np.int64], servers: list[str]) -> None:
        wins, winv = np.unique(win, return_inverse=True)
        na, ns = len(api_names), len(servers) + 1
        # the capture points, numbered 0.. in this batch (without a sort)
        orig = rows["origin"].astype(np.int64)
        present = np.zeros(int(orig.max()) + 1, np.int64)
        present[orig] = 1
        point_of = np.cumsum(present) - 1
        points = np.flatnonzero(present)
        no = len(points)
        # a group per (window, API, server, capture point); a catalogued API's servers share its row (server 0)
        catalogued = np.array([nm in st.apis for nm in api_names], dtype=bool)
        key = ((winv.ravel().astype(np.int64) * na + api) * ns + np.where(catalogued[api], 0, srv + 1)) * no \
            + point_of[orig]
        groups, gi = np.unique(key, return_inverse=True)
        gi = gi.ravel()
        rate = rows["sample_rate"].astype(np.int64)
        reqw = np.where(is_req, rate, 0)
        # each group's row (caps.Admission), and in it its capture point's figures (Agg.points); the groups
        # that go to one (an _OTHER row's) are added up first, so that Python sees each once
        rg, rinv = np.unique(groups // no, return_inverse=True)
        keys = [(api_names[g // ns % na], servers[g % ns - 1] if g % ns else "") for g in rg.tolist()]
        rows_of, tid, folded = self._place(st, wins, rg // (na * ns), keys)
        if folded.any():
            st.requests_folded += int(reqw[folded[rinv.ravel()][gi]].sum())
        sk, sinv = np.unique(tid[rinv.ravel()] * no + groups % no, return_inverse=True)
        gi = sinv.ravel()[gi]  # from here on: each row's capture point's figures in its row
        ans = rows["answer"] != 0
        rank = rank_of(rows["ttl"], rows["direction"], ans)
        grank = np.full(len(sk), -1, np.int64)  # (a point's rank, for a row past MAX_POINTS_PER_ROW)
        np.maximum.at(grank, gi, rank)
        aggs = [rows_of[k // no].sub(f.text(int(points[k % no])), r)
                for k, r in zip(sk.tolist(), grank.tolist(), strict=True)]
        ng = len(aggs)
        req_rank = np.full(ng, -1, np.int64)
        np.maximum.at(req_rank, gi[~ans], rank[~ans])
        ans_rank = np.full(ng, -1, np.int64)
        np.maximum.at(ans_rank, gi[ans], rank[ans])
        npk_all = rows["packets"].astype(np.int64)
        nbytes_all = rows["nbytes"].astype(np.int64)
        npk = np.where(ans, 0, npk_all)
        nbytes = np.where(ans, 0, nbytes_all)
        rpk = np.bincount(gi, np.where(ans, npk_all, 0), ng)
        rby = np.bincount(gi, np.where(ans, nbytes_all, 0), ng)
        nans = np.bincount(gi, ans, ng)
        cut = (rows["pflags"] & (F_LINE_CUT | F_HEADERS_CUT | F_TLS_CUT)) != 0
        packets = np.bincount(gi, npk, ng)
        byts = np.bincount(gi, nbytes, ng)
        reqs = np.bincount(gi, reqw, ng)
        partial = np.bincount(gi, np.where(is_req & cut, rate, 0), ng)
        syns = np.bincount(gi, rows["syns"].astype(np.int64), ng)
        sampled = np.bincount(gi, (rate > 1).astype(np.int64), ng)
        for j, a in enumerate(aggs):
            a.requests += int(reqs[j])
            a.partial += int(partial[j])
            a.packets += int(packets[j])
            a.nbytes += int(byts[j])
            a.syns += int(syns[j])
            a.sampled |= bool(sampled[j])
            a.req_rank = max(a.req_rank, int(req_rank[j]))
            a.ans_rank = max(a.ans_rank, int(ans_rank[j]))
            if nans[j]:
                a.answered = True
                a.rpackets += int(rpk[j])
                a.rbytes += int(rby[j])
        # methods
        mrows = np.flatnonzero(is_req & (rows["method"] > 0))
        if mrows.size:
            mk = gi[mrows].astype(np.int64) * 16 + rows["method"][mrows]
            mu = np.unique(mk)
            mw = np.bincount(np.searchsorted(mu, mk), rate[mrows], len(mu))
            for k, c in zip(mu.tolist(), mw.tolist(), strict=True):
                m = METHODS[k % 16] if k % 16 < len(METHODS) else "?"
                d = aggs[k // 16].methods
                d[m] = d.get(m, 0) + int(c)
        # clients: each row's rows go to its client table as they are (folded later)
        gi_c = np.where(ans, ng + gi, gi)  # the server's packets are not a client's: after them, by row too
        corder = np.argsort(gi_c, kind="stable")
        cstarts = np.searchsorted(gi_c[corder], np.arange(2 * ng + 1))
        src = rows["src_addr"][corder]
        ccnt = np.stack([reqw, npk, nbytes], axis=1)[corder]
        cv = rows["fh"][corder]  # and the connections (5-tuples) each point counted each side of
        bounds = cstarts.tolist()
        for j in range(ng):
            lo, hi = bounds[j], bounds[j + 1]
            if hi > lo:
                aggs[j].clients.add(src[lo:hi], ccnt[lo:hi])
                aggs[j].req_seen.add(cv[lo:hi])
            aggs[j].ans_seen.add(cv[bounds[ng + j] : bounds[ng + j + 1]])

    def _place(self, st: UsageState, wins: npt.NDArray[np.int64], gw: npt.NDArray[np.int64],
               keys: list[Key]) -> tuple[list[Agg], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Groups (sorted by window: wins[gw] each, and a row key each) placed in their windows' rows:
        the distinct rows, each group's row in them, and whether the group went to an _OTHER row."""
        n = len(keys)
        wb = np.r_[np.flatnonzero(np.r_[True, gw[1:] != gw[:-1]]), n].tolist() if n else [0]
        aggs: list[Agg] = []
        tid = np.empty(n, dtype=np.int64)
        folded = np.zeros(n, dtype=bool)
        at: dict[int, int] = {}
        for lo, hi in itertools.pairwise(wb):
            targets, rows_of = self._rows(st, int(wins[gw[lo]]), keys[lo:hi])
            for j, (t, a) in enumerate(zip(targets, rows_of, strict=True), lo):
                folded[j] = t != keys[j]
                i = at.get(id(a))
                if i is None:
                    i = at[id(a)] = len(aggs)
                    aggs.append(a)
                tid[j] = i
        return aggs, tid, folded

    def _fill_apart(self, st: UsageState, groups: npt.NDArray[np.int64], fill: npt.NDArray[np.int64],
                    starts: npt.NDArray[np.intp], fs: npt.NDArray[np.uint64], gk: npt.NDArray[np.uint64],
                    ts_s: npt.NDArray[np.int64], a_sorted: npt.NDArray[np.int64], has_req: npt.NDArray[np.bool_],
                    firstpos: npt.NDArray[np.int64], opening: npt.NDArray[np.bool_], syn: npt.NDArray[np.bool_],
                    api_id: Any, origin: Any) -> None:
        """fill[g]: the API of the rows before connection g's first request in this batch (its rows
        in the sorted batch from starts[g]), for the TCP connections the common case does not settle.
        One that opens here or whose handshake waits (_waits) takes its own first request, else the
        first request of the same connection opening at another point (within SAME_CONNECTION_NS), else
        the other point's request that ends the wait, else the flow table's request if that was as
        close in time (and not a closed connection's, when this point saw the client's SYN); else none
        (it waits). One that began
        before this batch takes the latest request another point saw of the flow before its first
        row, else the flow table's, else its own first request here."""
        want = np.unique(fs[starts[groups]])
        # the other points' requests of these flows: flow -> [(ts, API, point)] in time order
        others: dict[int, list[tuple[int, int, int]]] = {}
        req = np.flatnonzero(a_sorted >= 0)
        req = req[np.isin(fs[req], want)]
        for f_, t_, a_, k_ in zip(fs[req].tolist(), ts_s[req].tolist(), a_sorted[req].tolist(), gk[req].tolist(),
                                  strict=True):
            others.setdefault(f_, []).append((t_, a_, k_))
        for v in others.values():
            v.sort()
        # the connections of these flows that open here with a request: flow -> [(start, its API, point)]
        opened: dict[int, list[tuple[int, int, int]]] = {}
        og = np.flatnonzero(opening & has_req)
        og = og[np.isin(fs[starts[og]], want)]
        for g2, a2 in zip(og.tolist(), a_sorted[firstpos[og]].tolist(), strict=True):
            s2 = int(starts[g2])
            opened.setdefault(int(fs[s2]), []).append((int(ts_s[s2]), a2, int(gk[s2])))
        for g in groups.tolist():
            s0 = int(starts[g])
            key, t0, own = int(fs[s0]), int(ts_s[s0]), int(gk[s0])
            a = -1
            if opening[g] or self._waits(st, key, t0, origin(s0)):
                if has_req[g]:
                    a = int(a_sorted[firstpos[g]])
                else:  # the same connection opening at another point, else one the table saw begin then
                    a = next((a2 for t2, a2, k2 in opened.get(key, ()) if k2 != own
                              and abs(t2 - t0) <= SAME_CONNECTION_NS), -1)
                    pend = st.pending.get(key)
                    if a < 0 and pend is not None:  # the request that ends the wait here (step 3)
                        a = next((a2 for t2, a2, k2 in others.get(key, ())
                                  if k2 != own and t2 >= pend.since - SAME_CONNECTION_NS), -1)
                    ent = st.flows.get(key) if a < 0 else None
                    # (a closed connection's is not that of one whose client's SYN this point saw: a
                    # port reused within the second)
                    if ent is not None and abs(ent[1] - t0) <= SAME_CONNECTION_NS and not (ent[2] and syn[g]):
                        a = api_id(st.names.key(ent[0])[0])
                    # (none: it waits for its request, which this point or another may see later)
            else:
                a = next((a2 for t2, a2, k2 in reversed(others.get(key, ())) if k2 != own and t2 <= t0), -1)
                if a < 0:
                    ent = st.flows.get(key)
                    if ent is not None:
                        a = api_id(st.names.key(ent[0])[0])  # the name; its server is the rows'
                if a < 0 and has_req[g]:
                    a = int(a_sorted[firstpos[g]])
            fill[g] = a

    @staticmethod
    def _waits(st: UsageState, key: int, t0: int, origin: str) -> bool:
        """Whether rows of flow key from this capture point, the first at t0, continue the handshake
        waiting for its request: this point saw it, and not long after these rows."""
        pend = st.pending.get(key)
        return pend is not None and t0 >= pend.since - SAME_CONNECTION_NS and origin in pend.origins

    def _resolve(self, st: UsageState, pend: Pending, api: str) -> None:
        key = self._key(st, api, pend.server)
        for w, acc in pend.windows.items():
            _add_pending(self._rows(st, w, [key])[1][0], pend, acc)

    def _rows(self, st: UsageState, w: int, keys: list[Key], hour: bool = False) -> tuple[list[Key], list[Agg]]:
        """The rows of window w (an hour's with ``hour``) that keys (distinct) go to, as its caps admit
        them, and the keys of those rows; rows that lost their place meanwhile are merged where they go."""
        windows, caps = (st.hours, st.hour_caps) if hour else (st.windows, st.caps)
        rows = windows.setdefault(w, {})
        adm = caps.get(w)
        if adm is None:
            adm = caps[w] = Admission(self.max_apis_per_server, self.max_apis)
        targets = adm.place(keys)
        self._move(st, rows, adm, hour)
        out: list[Agg] = []
        for k, t in zip(keys, targets, strict=True):
            if not hour and t != k and not is_fold(k):
                st.apis_folded += 1
            a = rows.get(t)
            if a is None:
                a = rows[t] = Agg()
            out.append(a)
        return targets, out

    @staticmethod
    def _move(st: UsageState, rows: dict[Key, Agg], adm: Admission, hour: bool) -> None:
        """Rows that lost their place in a window merged into the rows they go to."""
        for src, dst in adm.take_moves():
            a = rows.pop(src, None)
            if a is None:
                continue
            b = rows.get(dst)
            if b is None:
                rows[dst] = a
            else:
                b.merge(a)
            if not hour and not is_fold(src):
                st.apis_folded += 1
                # (an open minute's requests are its capture points', each point's count of a request)
                st.requests_folded += a.requests + sum(p.requests for p in a.points.values())

    # -- closing ----------------------------------------------------------------------------

    def close(self, st: UsageState, watermark_ns: int) -> list[Output]:
        out: list[Output] = []
        final = watermark_ns >= FOREVER
        limit = FOREVER if final else watermark_ns - self.grace_ns
        self._add_paired(st, st.pairing.expire(limit))  # before the windows they count in close
        closing = sorted(w for w in st.windows if w + MINUTE_NS <= limit)
        if closing or final or (st.pending and limit - limit % MINUTE_NS > st.closed_until):
            # waiting connections' packets of the windows that close go to the server's catch-all (also
            # of windows that hold nothing else, a flood's: whenever a minute closes)
            for key, pend in list(st.pending.items()):
                for w in [w for w in pend.windows if w + MINUTE_NS <= limit]:
                    _add_pending(self._rows(st, w, [self._key(st, pend.service, pend.server)])[1][0], pend,
                                 pend.windows.pop(w))
                if not pend.windows:
                    del st.pending[key]
            closing = sorted(w for w in st.windows if w + MINUTE_NS <= limit)
        for w in closing:
            rows = st.windows.pop(w)
            st.caps.pop(w, None)
            for a in rows.values():  # each conversation counted once, whatever number of points saw it
                a.resolve()
                st.overlaps += a.overlaps
            out += self._outputs(st, rows, w, 60)
            if self.hours:  # the hour's caps place the minute's rows (caps.py: the roll-up stays exact)
                keys = sorted(rows)
                for k, a in zip(keys, self._rows(st, w - w % HOUR_NS, keys, hour=True)[1], strict=True):
                    a.merge(rows[k])
            st.closed_until = max(st.closed_until, w + MINUTE_NS)
        if not final:  # what starts before the last closed minute boundary is late from now on
            st.closed_until = max(st.closed_until, limit - limit % MINUTE_NS)
        for h in sorted(h for h in st.hours if h + HOUR_NS <= limit):
            st.hour_caps.pop(h, None)
            out += self._outputs(st, st.hours.pop(h), h, 3600)
        if closing:
            idle, linger = limit - FLOW_IDLE_NS, limit - CLOSED_LINGER_NS
            for key in [k for k, v in st.flows.items() if v[1] < (linger if v[2] else idle)]:
                del st.flows[key]
            self._drop_names(st)
            if st.point_names:  # the capture points the waiting requests name
                keep = set(np.unique(st.pairing.queue["point"]).tolist())
                st.point_names = {c: t for c, t in st.point_names.items() if c in keep}
        st.losses.prune(limit)
        return out

    def lost(self, st: UsageState, origin: str, t_ns: int, records: int) -> None:
        st.losses.add(origin, t_ns, records)

    @staticmethod
    def _drop_names(st: UsageState) -> None:
        """The (API, server) pairs neither the flow table nor the request queue refers to are dropped."""
        keep = np.zeros(len(st.names.items), dtype=bool)
        q = st.pairing.queue["api"].astype(np.int64)
        keep[q[(q >= 0) & (q < len(keep))]] = True
        if st.flows:
            keep[np.fromiter((v[0] for v in st.flows.values()), dtype=np.int64, count=len(st.flows))] = True
        st.names.drop(keep)

    def _outputs(self, st: UsageState, rows: dict[Key, Agg], w: int, window_s: int) -> list[Output]:
        """A closed window's records, one per API name (its servers' rows added up), by name."""
        by_name: dict[str, list[Key]] = {}
        for k in sorted(rows):
            by_name.setdefault(k[0], []).append(k)
        lost = st.losses.per_point(w, w + window_s * 1_000_000_000)  # once for all the window's rows
        out = []
        for name in sorted(by_name):
            ks = by_name[name]
            a = rows[ks[0]]
            if len(ks) > 1:
                a = Agg()
                for k in ks:
                    a.merge(rows[k])
            out.append(self._output(st, ks[0], w, window_s, a, lost))
        return out

    def _output(self, st: UsageState, key: Key, w: int, window_s: int, a: Agg, lost: dict[str, int]) -> Output:
        name = key[0]
        ref = st.ref_of(*key)
        top = a.clients.top(self.top_clients)
        rec = {
            "api": name, "matched": ref.matched, "window_start_ms": w // 1_000_000, "window_s": window_s,
            "host": ref.host, "port": ref.port, "protocol": ref.protocol,
            "requests": a.requests, "partial_requests": a.partial, "packets": a.packets, "bytes": a.nbytes,
            "new_connections": a.syns, "methods": dict(sorted(a.methods.items())),
            "distinct_clients": len(a.clients),
            "top_clients": [{"client": addr_text(c), "requests": v[0], "packets": v[1], "bytes": v[2]}
                            for c, v in top],
            "seen_by": sorted(a.seen_by), "sampled": a.sampled,
            "records_lost": min(sum(lost.get(o, 0) for o in a.seen_by), MAX_LOST),
            **self._answers(a),
        }
        buf = io.BytesIO()
        fastavro.writer(buf, _PARSED, [rec], codec="null")
        return Output(self.topic, name.encode(), buf.getvalue(), [(H.WINDOW_S, str(window_s).encode())],
                      record=rec)

    @staticmethod
    def _answers(a: Agg) -> dict[str, Any]:
        """The response figures of a window: null unless the server's side was seen."""
        if not a.answered:
            return {k: None for k in ANSWER_FIELDS}
        classes: dict[str, int] = {}
        for c, v in a.codes.items():
            if c:
                k = f"{c // 100}xx"
                classes[k] = classes.get(k, 0) + v
        hist = [int(x) for x in a.hist.tolist()]
        paired = sum(hist)
        return {
            "response_packets": a.rpackets, "response_bytes": a.rbytes, "responses": a.responses,
            "unanswered": a.unanswered, "status_classes": dict(sorted(classes.items())),
            "status_codes": {str(c): v for c, v in sorted(a.codes.items()) if c},
            "latency_buckets": hist, "latency_sum_us": a.latency_sum_us,
            "latency_p50_ms": quantile_ms(a.hist, 0.5), "latency_p90_ms": quantile_ms(a.hist, 0.9),
            "latency_p99_ms": quantile_ms(a.hist, 0.99),
            "error_rate": round((classes.get("5xx", 0) + a.unanswered) / (a.responses + a.unanswered), 6)
            if a.responses + a.unanswered else None,
            "latency_count": paired,
        }

    # -- state ------------------------------------------------------------------------------

    def dump(self, st: UsageState) -> Any:
        flows = st.flows
        vals = np.array(list(flows.values()), dtype=np.int64).reshape(-1, 3)
        return {
            "windows": {str(w): {key_text(k): a.dump() for k, a in rows.items()} for w, rows in st.windows.items()},
            "hours": {str(w): {key_text(k): a.dump() for k, a in rows.items()} for w, rows in st.hours.items()},
            "caps": {str(w): a.dump() for w, a in st.caps.items()},
            "hour_caps": {str(w): a.dump() for w, a in st.hour_caps.items()},
            "closed_until": st.closed_until,
            # flow hash, (API, server) number in names, its last request's ts, closing: as columns
            "flow_table": [np.fromiter(flows.keys(), dtype="<u8", count=len(flows)), vals[:, 0].astype("<i4"),
                           vals[:, 1].astype("<i8"), vals[:, 2].astype("u1")],
            "pending": {str(k): [p.src.hex(), p.service, sorted(p.origins), {str(w): v for w, v in p.windows.items()},
                                 p.server, p.since, p.flow] for k, p in st.pending.items()},
            "apis": {k: [r.host, r.port, r.protocol, r.matched, r.rate_limit_per_min] for k, r in st.apis.items()},
            "late_records": st.late_records, "records": st.records,
            "queue": st.pairing.dump(), "names": st.names.items, "names_free": st.names.free,
            "folded": [st.apis_folded, st.requests_folded, st.names.folded],
            "points": [np.fromiter(st.point_names.keys(), dtype="<u4", count=len(st.point_names)),
                       list(st.point_names.values()), st.overlaps],
            "losses": st.losses.dump(),
        }

    def load(self, d: Any) -> UsageState:
        apis = {k: ApiRef(k, v[0], int(v[1]), v[2], bool(v[3]), int(v[4])) for k, v in d["apis"].items()
                if v[3]}  # (a snapshot older than the caps kept the uncatalogued ones too)
        folded = [int(x) for x in d.get("folded", [0, 0, 0])]
        names = WaitingNames([str(x) for x in d.get("names", [])], [int(i) for i in d.get("names_free", [])],
                             self.max_waiting_names, folded[2])
        if "flow_table" in d:
            k, nm, ts, closing = d["flow_table"]
            ents = zip(snapshot_array(nm, "<i4").tolist(), snapshot_array(ts, "<i8").tolist(),
                       snapshot_array(closing, "u1").astype(bool).tolist(), strict=True)
            flows = dict(zip(snapshot_array(k, "<u8").tolist(), ents, strict=True))
        else:  # flow hash -> [API name, ts, closing] (older snapshots): the names without their server
            flows = {int(k): (names.add_pair(v[0], "", v[0] in apis), int(v[1]), bool(v[2]))
                     for k, v in d["flows"].items()}
        if any(i < 0 or i >= len(names.items) for i, _t, _c in flows.values()):
            raise ValueError("snapshot: a flow refers to no API name")
        windows = {int(w): {key_of(k): Agg.load(a) for k, a in rows.items()} for w, rows in d["windows"].items()}
        pts = d.get("points", [np.zeros(0, "<u4"), [], 0])
        hours = {int(w): {key_of(k): Agg.load(a) for k, a in rows.items()} for w, rows in d["hours"].items()}
        return UsageState(
            pairing=Pairing.load(self.timeout_ns, d["queue"]) if "queue" in d else Pairing(self.timeout_ns),
            names=names, windows=windows, hours=hours,
            caps={int(w): Admission.load(a, list(windows.get(int(w), {}))) for w, a in d.get("caps", {}).items()},
            hour_caps={int(w): Admission.load(a, list(hours.get(int(w), {})))
                       for w, a in d.get("hour_caps", {}).items()},
            closed_until=int(d["closed_until"]),
            flows=flows,
            pending={int(k): Pending(bytes.fromhex(v[0]), v[1], set(v[2]), _pending_windows(v[3], v[2]),
                                     v[4] if len(v) > 4 else "", int(v[5]) if len(v) > 5 else 0,
                                     int(v[6]) if len(v) > 6 else 0)
                     for k, v in d["pending"].items()},
            apis=apis, late_records=int(d["late_records"]), records=int(d["records"]),
            apis_folded=folded[0], requests_folded=folded[1],
            point_names=dict(zip(snapshot_array(pts[0], "<u4").tolist(), [str(t) for t in pts[1]], strict=True)),
            overlaps=int(pts[2]), losses=Losses.load(d.get("losses")),
        )

    def figures(self, states: list[UsageState]) -> dict[str, float]:
        out: dict[str, float] = {
            "late_records": sum(s.late_records for s in states),
            "loss_marks_dropped": sum(s.losses.dropped for s in states),
            "open_windows": sum(len(s.windows) for s in states),
            "flows": sum(len(s.flows) for s in states),
            "pending_flows": sum(len(s.pending) for s in states),
            "waiting_requests": sum(len(s.pairing.queue) for s in states),
            "apis_folded": sum(s.apis_folded for s in states),
            "requests_folded": sum(s.requests_folded for s in states),
            "capture_point_overlaps": sum(s.overlaps for s in states),
            "waiting_names_folded": sum(s.names.folded for s in states),
            "api_rows": sum(len(r) for s in states for r in (*s.windows.values(), *s.hours.values())),
        }
        if self.red is not None:
            out.update(self.red.figures())
        return out

    # -- a snapshot over its size limit -----------------------------------------------------

    def degrade(self, st: UsageState) -> dict[str, Any]:
        """One step less detail in the state, for a snapshot that would exceed its size limit (the
        runner dumps again after each step, see snapshot.pack_within): what was dropped, {} when
        nothing is left to drop. In order:

        1. the clients past --top-clients of every open row (their number still counts in
           distinct_clients, an upper bound from then on);
        2. three quarters of the names with a row of their own in each open window, as often as it
           takes (their rows go to the _OTHER rows, whose clients are trimmed too);
        3. the flow table and the connections waiting for their first request (their later packets
           go to the server's catch-all row);
        4. the requests waiting for answers (neither answered nor unanswered);
        5. the connections each capture point of an open minute counted (Agg.req_seen, ans_seen): from
           then on each point of those minutes counts what it saw, however many others saw it too.

        Each step depends on the state alone; which commit needs one depends on when commits happen,
        so a degraded window's rows may differ from a replay's."""
        open_rows = [*st.windows.values(), *st.hours.values()]
        dropped = sum(c.trim(self.top_clients) for rows in open_rows for a in rows.values() for c in _tables(a))
        if dropped:
            return {"dropped": "client detail", "clients": dropped, "kept_per_row": self.top_clients}
        before = sum(len(r) for r in open_rows)
        shrunk = False
        for hour, caps in ((False, st.caps), (True, st.hour_caps)):
            for w, adm in caps.items():
                if adm.per_server > 1 or adm.total > 1:  # a quarter of the names each step
                    adm.shrink(max(1, adm.per_server // 4), max(1, adm.total // 4))
                    self._move(st, (st.hours if hour else st.windows)[w], adm, hour)
                    shrunk = True
        if shrunk:
            rows = [*st.windows.values(), *st.hours.values()]
            trimmed = sum(c.trim(self.top_clients) for r in rows for a in r.values() for c in _tables(a))  # _OTHER'
            return {"dropped": "api names", "rows_folded": before - sum(len(r) for r in rows), "clients": trimmed,
                    "max_apis_per_server": max((a.per_server for a in st.caps.values()), default=0)}
        if st.flows or st.pending:
            nflows, npending = len(st.flows), len(st.pending)
            for pend in st.pending.values():
                key = self._key(st, pend.service, pend.server)
                for w, acc in pend.windows.items():
                    _add_pending(self._rows(st, w, [key])[1][0], pend, acc)
            st.flows.clear()
            st.pending.clear()
            self._drop_names(st)
            return {"dropped": "connections", "flows": nflows, "pending_flows": npending}
        if len(st.pairing.queue):
            n = len(st.pairing.queue)
            st.pairing.queue = st.pairing.queue[:0]
            self._drop_names(st)
            return {"dropped": "waiting requests", "requests": n}
        sets = [h for rows in st.windows.values() for a in rows.values() for p in a.points.values()
                for h in (p.req_seen, p.ans_seen) if len(h)]
        if sets:  # from here on every capture point of those minutes counts what it saw
            n = sum(len(h) for h in sets)
            for h in sets:
                h.v, h.parts, h.waiting = np.zeros(0, np.uint64), [], 0
            return {"dropped": "capture points' connections", "connections": n}
        return {}
