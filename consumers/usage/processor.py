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
  only the distinct (API, client) and (API, capture point) pairs.

Windows are one minute of event time; a window is published when its end plus ``grace_s`` is
behind the watermark. The minute aggregates are merged into hour aggregates when they close,
so hours are exact roll-ups (distinct clients included).
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field
from typing import Any

import fastavro
import numpy as np
import numpy.typing as npt

from pktstream.consumers.catalog import ApiRef, Catalog
from pktstream.consumers.engine.features import (
    REQUEST_KINDS,
    Features,
    StringTable,
    addr_hash,
    featurize,
    flow_order,
    mix,
    take,
    words_bytes,
)
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
from pktstream.consumers.usage.responses import NBUCKETS, QUEUE_DTYPE, Paired, Pairing, bucket, quantile_ms
from pktstream.schemas import headers as H
from pktstream.schemas import load_schema_json
from pktstream.schemas.columns import Batch
from pktstream.schemas.decode import addr_text
from pktstream.schemas.protocols import FIN, PROTO_TCP, PROTO_UDP, RST

MINUTE_NS = 60_000_000_000
HOUR_NS = 3600_000_000_000
FLOW_IDLE_NS = 600_000_000_000  # a connection without a request for 10 minutes leaves the flow table
MAX_PENDING_FLOWS = 200_000
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

    __slots__ = ("addr", "cnt", "parts", "waiting")

    def __init__(self, addr: npt.NDArray[np.uint64] | None = None, cnt: npt.NDArray[np.int64] | None = None) -> None:
        self.addr = addr if addr is not None else np.zeros((0, 2), dtype=np.uint64)
        self.cnt = cnt if cnt is not None else np.zeros((0, 3), dtype=np.int64)
        self.parts: list[tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]] = []
        self.waiting = 0

    def add(self, addr: npt.NDArray[np.uint64], cnt: npt.NDArray[np.int64]) -> None:
        self.parts.append((addr, cnt))
        self.waiting += len(addr)
        if self.waiting > max(4096, 2 * len(self.addr)):
            self.reduce()

    def extend(self, o: Clients) -> None:
        o.reduce()
        self.add(o.addr, o.cnt)

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
        return len(self.addr)

    def top(self, k: int) -> list[tuple[bytes, list[int]]]:
        """The k clients with the most requests, then packets; ties by address."""
        self.reduce()
        c = self.cnt
        order = np.lexsort((self.addr[:, 1], self.addr[:, 0], -c[:, 1], -c[:, 0]))[:k]
        ab = words_bytes(self.addr[order])
        return [(ab[16 * i : 16 * i + 16], v) for i, v in enumerate(c[order].tolist())]

    def dump(self) -> list[npt.NDArray[Any]]:
        self.reduce()
        return [np.ascontiguousarray(self.addr, dtype="<u8"), np.ascontiguousarray(self.cnt, dtype="<i8")]

    @classmethod
    def load(cls, d: list[Any]) -> Clients:
        addr = snapshot_array(d[0], "<u8", (-1, 2))
        cnt = snapshot_array(d[1], "<i8", (-1, 3))
        if len(addr) != len(cnt):
            raise ValueError("snapshot: client addresses and counters differ in number")
        return cls(addr, cnt)


def _add_pending(a: Agg, pend: Pending, acc: list[int]) -> None:
    """A waiting connection's packets of one window ([packets, bytes, syns, the server's packets,
    their bytes]) added to an API's window."""
    p, b, s = acc[0], acc[1], acc[2]
    a.packets += p
    a.nbytes += b
    a.syns += s
    a.seen_by |= pend.origins
    if p or b:
        a.clients.add(*_one_client(pend.src, p, b))
    if len(acc) > 3 and acc[3]:
        a.answered = True
        a.rpackets += acc[3]
        a.rbytes += acc[4]


def _one_client(src: bytes, packets: int, nbytes: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    return (np.frombuffer(src, dtype="<u8").reshape(1, 2).copy(), np.array([[0, packets, nbytes]], dtype=np.int64))


@dataclass
class Agg:
    """One API in one window."""

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

    def merge(self, o: Agg) -> None:
        self.requests += o.requests
        self.partial += o.partial
        self.packets += o.packets
        self.nbytes += o.nbytes
        self.syns += o.syns
        self.sampled |= o.sampled
        for k, v in o.methods.items():
            self.methods[k] = self.methods.get(k, 0) + v
        self.clients.extend(o.clients)
        self.seen_by |= o.seen_by
        self.answered |= o.answered
        self.rpackets += o.rpackets
        self.rbytes += o.rbytes
        self.responses += o.responses
        self.unanswered += o.unanswered
        for c, v in o.codes.items():
            self.codes[c] = self.codes.get(c, 0) + v
        self.hist = self.hist + o.hist
        self.latency_sum_us += o.latency_sum_us

    def dump(self) -> list[Any]:
        return [self.requests, self.partial, self.packets, self.nbytes, self.syns, self.sampled, self.methods,
                self.clients.dump(), sorted(self.seen_by),
                [self.answered, self.rpackets, self.rbytes, self.responses, self.unanswered,
                 {str(k): v for k, v in self.codes.items()}, self.hist.tolist(), self.latency_sum_us]]

    @classmethod
    def load(cls, d: list[Any]) -> Agg:
        a = cls(int(d[0]), int(d[1]), int(d[2]), int(d[3]), int(d[4]), bool(d[5]), dict(d[6]),
                Clients.load(d[7]), set(d[8]))
        if len(d) > 9:  # written by a version that pairs answers
            r = d[9]
            a.answered, a.rpackets, a.rbytes, a.responses, a.unanswered = bool(r[0]), int(r[1]), int(r[2]), \
                int(r[3]), int(r[4])
            a.codes = {int(k): int(v) for k, v in r[5].items()}
            a.hist = np.array(r[6], dtype=np.int64)
            if a.hist.shape != (NBUCKETS,):
                raise ValueError("snapshot: latency histogram of another size")
            a.latency_sum_us = int(r[7])
        return a


@dataclass
class Pending:
    """Packets of a connection that has not sent a request yet."""

    src: bytes
    service: str  # the catch-all API they go to if no request comes
    origins: set[str] = field(default_factory=set)
    # window start -> [packets, bytes, syns, the server's packets, their bytes]
    windows: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class UsageState:
    windows: dict[int, dict[str, Agg]] = field(default_factory=dict)  # minute start (ns) -> API -> Agg
    hours: dict[int, dict[str, Agg]] = field(default_factory=dict)
    closed_until: int = 0  # minute windows starting before this are closed
    flows: dict[int, Any] = field(default_factory=dict)  # flow hash -> (api, last request ts, closing)
    pending: dict[int, Pending] = field(default_factory=dict)
    apis: dict[str, ApiRef] = field(default_factory=dict)
    late_records: int = 0
    records: int = 0
    pairing: Pairing = field(default_factory=lambda: Pairing(int(RESPONSE_TIMEOUT_S * 1e9)))
    names: StringTable = field(default_factory=StringTable)  # API names the request queue refers to


def _flow_hash(rows: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    return np.ascontiguousarray(rows["fh"])  # features.flow_hash of the 5-tuple, from stage one


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
                 red: Any = None) -> None:
        self.catalog = catalog
        self.topic = topic
        self.grace_ns = int(grace_s * 1e9)
        self.top_clients = top_clients
        self.hours = hours
        self.timeout_ns = int(response_timeout_s * 1e9)
        self.red = red  # red.RedMetrics: the answers as Prometheus histograms (process-local)

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
        return UsageState(pairing=Pairing(self.timeout_ns))

    def _service(self, st: UsageState, dst: bytes, port: int, proto: int) -> str:
        ref = self.catalog.match("", dst, port, "", "", "udp" if proto == PROTO_UDP else "tcp")
        st.apis.setdefault(ref.name, ref)
        return ref.name

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
                st.apis.setdefault(ref.name, ref)
                ids[j] = api_id(ref.name)
            row_api[req_idx] = ids[inv.ravel()]
        # 2. other packets -> their connection's API
        fh = _flow_hash(rows)
        order = flow_order(fh)
        fs = fh[order] >> np.uint64(20)
        starts = np.flatnonzero(np.r_[True, fs[1:] != fs[:-1]])
        gid = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
        a_sorted = row_api[order]
        pos = np.where(a_sorted >= 0, np.arange(n), -1)
        last = np.maximum.accumulate(pos)
        ffill = np.where(last >= starts[gid], a_sorted[np.maximum(last, 0)], -1)
        # per connection (groups are contiguous in sorted order: reduceat over their starts)
        flags_s = rows["flags_or"][order]
        is_syn_s = rows["syns"][order] > 0
        has_req = np.logical_or.reduceat(a_sorted >= 0, starts)
        big = np.iinfo(np.int64).max
        firstpos = np.minimum.reduceat(np.where(a_sorted >= 0, np.arange(n), big), starts)
        # rows before the connection's first request in this batch: the flow table, else that request
        need = np.flatnonzero(ffill < 0)
        if need.size:
            opened = np.logical_or.reduceat(is_syn_s, starts)  # a SYN: a new connection, whatever the table says
            groups = np.unique(gid[need])
            tcp_s = rows["protocol"][order][starts] == PROTO_TCP  # only TCP connections are in the table
            groups = groups[~opened[groups] & tcp_s[groups]]
            table_api = np.full(len(starts), -1, dtype=np.int64)
            for g in groups.tolist():
                ent = st.flows.get(int(fs[starts[g]]))
                if ent is not None:
                    table_api[g] = api_id(ent[0])
            fill = table_api[gid[need]]
            nofill = fill < 0
            hr = has_req[gid[need]]
            fill = np.where(nofill & hr, a_sorted[np.minimum(firstpos[gid[need]], n - 1)], fill)
            ffill[need] = fill
        row_api_sorted = ffill
        # 3. the flow table learns each connection's latest request (and whether it is closing)
        if req_idx.size:
            lastreq = np.maximum.reduceat(np.where(a_sorted >= 0, np.arange(n), -1), starts)
            closing = np.logical_or.reduceat((flags_s & (FIN | RST)) != 0, starts)
            gs = np.flatnonzero(lastreq >= 0)
            ps = lastreq[gs]
            keys = fs[ps].tolist()
            names = [api_names[a] for a in a_sorted[ps].tolist()]
            st.flows.update(zip(keys, zip(names, rows["ts_ns"][order][ps].tolist(), closing[gs].tolist(),
                                          strict=True), strict=True))
            if st.pending:
                for key, name in zip(keys, names, strict=True):
                    pend = st.pending.pop(key, None)
                    if pend is not None:
                        self._resolve(st, pend, name)
        # 4. packets of connections still without a request: wait (TCP that opened here) or catch-all
        unk = np.flatnonzero(row_api_sorted < 0)
        if unk.size:
            rows_s = take(rows, order[unk])  # the rows concerned, in sorted order: unk indexes them
            pos_of = np.full(n, -1, dtype=np.int64)
            pos_of[unk] = np.arange(len(unk))
            syn_u = is_syn_s[unk] & (rows_s["protocol"] == PROTO_TCP)
            ug, ustart, ucnt = np.unique(gid[unk], return_index=True, return_counts=True)
            has_syn = np.logical_or.reduceat(syn_u, ustart)
            # candidates to wait: TCP connections opening here, or already waiting
            cand = has_syn.copy()
            if st.pending:
                waiting_keys = np.fromiter(st.pending.keys(), dtype=np.uint64, count=len(st.pending))
                cand |= np.isin(fs[starts[ug]], waiting_keys)
            wait_rows: list[npt.NDArray[np.intp]] = []
            for gi_, us, uc, hs in zip(np.flatnonzero(cand).tolist(), ustart[cand].tolist(), ucnt[cand].tolist(),
                                       has_syn[cand].tolist(), strict=True):
                g = int(ug[gi_])
                key = int(fs[starts[g]])
                pend = st.pending.get(key)
                if pend is None and hs and len(st.pending) < MAX_PENDING_FLOWS:
                    r0 = rows_s[us]
                    pend = st.pending[key] = Pending(
                        words_bytes(r0["src_addr"]), self._service(st, words_bytes(r0["dst_addr"]), int(r0["dst_port"]),
                                                              int(r0["protocol"])))
                if pend is not None:
                    sel = unk[us : us + uc]
                    win_s = win[order][sel]
                    for i, w in zip(pos_of[sel].tolist(), win_s.tolist(), strict=True):
                        acc = pend.windows.setdefault(int(w), [0, 0, 0, 0, 0])
                        if rows_s["answer"][i]:
                            acc[3] += int(rows_s["packets"][i])
                            acc[4] += int(rows_s["nbytes"][i])
                        else:
                            acc[0] += int(rows_s["packets"][i])
                            acc[1] += int(rows_s["nbytes"][i])
                            acc[2] += int(rows_s["syns"][i])
                        pend.origins.add(f.text(int(rows_s["origin"][i])))
                    wait_rows.append(sel)
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
            self._aggregate(st, f, take(rows, ok), win[ok], row_api[ok], is_req[ok], api_names)
        # 6. answers paired with requests
        if answer.any() or st.pairing.queue.size or is_req.any():
            self._pair(st, f, rows, row_api, is_req, answer, api_names)

    def _pair(self, st: UsageState, f: Features, rows: npt.NDArray[Any], row_api: npt.NDArray[np.int64],
              is_req: npt.NDArray[np.bool_], answer: npt.NDArray[np.bool_], api_names: list[str]) -> None:
        # the connection per capture point: its flow hash mixed with a stable hash of the capture point
        uo, oinv = np.unique(rows["origin"].astype(np.int64), return_inverse=True)
        crc = np.array([zlib.crc32(f.text(o).encode()) for o in uo.tolist()], dtype=np.int64)
        conn = mix(rows["fh"], crc[oinv.ravel()])
        ids = np.array([st.names.add(nm) for nm in api_names] or [0], dtype=np.int64)  # batch API -> state name
        ans_conn = np.unique(conn[answer])
        ri = np.flatnonzero(is_req)
        reqs = np.zeros(len(ri), QUEUE_DTYPE)
        if len(ri):
            reqs["conn"] = conn[ri]
            reqs["ts"] = rows["ts_ns"][ri]
            reqs["api"] = ids[row_api[ri]]
            reqs["method"] = rows["method"][ri]
            reqs["http"] = rows["kind"][ri] == KIND_HTTP1
            reqs["seen"] = np.isin(reqs["conn"], ans_conn)
            reqs["content_length"] = rows["content_length"][ri]
        status = rows["status"].astype(np.int64)
        final = (status < 100) | (status >= 200) | (status == 101)  # 1xx interim answers are not answers
        rs = np.flatnonzero(answer & (rows["kind"] == KIND_HTTP1_RESPONSE) & final)
        r_api = np.full(len(rs), -1, np.int64)
        if len(rs):
            ra = row_api[rs]
            r_api[ra >= 0] = ids[ra[ra >= 0]]
            for j in np.flatnonzero(ra < 0).tolist():  # the connection waits for its request: the server's API
                r = rows[rs[j]]
                r_api[j] = st.names.add(self._service(st, words_bytes(r["dst_addr"]), int(r["dst_port"]),
                                                    int(r["protocol"])))
        responses = {"conn": conn[rs], "ts": rows["ts_ns"][rs], "status": status[rs],
                     "content_length": rows["content_length"][rs], "api": r_api}
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
        order = np.lexsort((p.api, win))
        w_s, a_s = win[order], p.api[order]
        starts = np.flatnonzero(np.r_[True, (w_s[1:] != w_s[:-1]) | (a_s[1:] != a_s[:-1])])
        bounds = np.r_[starts, m]
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            sel = order[lo:hi]
            name = st.names.items[int(a_s[lo])]
            a = st.windows.setdefault(int(w_s[lo]), {}).setdefault(name, Agg())
            a.answered = True
            un = p.unanswered[sel]
            a.unanswered += int(un.sum())
            answered = sel[~un]
            a.responses += len(answered)
            if len(answered):
                codes, cnt = np.unique(p.status[answered], return_counts=True)
                for c, v in zip(codes.tolist(), cnt.tolist(), strict=True):
                    a.codes[c] = a.codes.get(c, 0) + v
                timed = answered[lb[answered] >= 0]
                if len(timed):
                    a.hist += np.bincount(lb[timed], minlength=NBUCKETS)
                    a.latency_sum_us += int((p.latency[timed] // 1000).sum())
        if self.red is not None:
            self.red.observe(st, p, lb)

    def _aggregate(self, st: UsageState, f: Features, rows: npt.NDArray[Any], win: npt.NDArray[np.int64],
                   api: npt.NDArray[np.int64], is_req: npt.NDArray[np.bool_], api_names: list[str]) -> None:
        wins, winv = np.unique(win, return_inverse=True)
        na = len(api_names)
        key = winv.ravel().astype(np.int64) * na + api
        groups, gi = np.unique(key, return_inverse=True)
        gi = gi.ravel()
        ng = len(groups)
        rate = rows["sample_rate"].astype(np.int64)
        ans = rows["answer"] != 0
        npk_all = rows["packets"].astype(np.int64)
        nbytes_all = rows["nbytes"].astype(np.int64)
        npk = np.where(ans, 0, npk_all)
        nbytes = np.where(ans, 0, nbytes_all)
        rpk = np.bincount(gi, np.where(ans, npk_all, 0), ng)
        rby = np.bincount(gi, np.where(ans, nbytes_all, 0), ng)
        nans = np.bincount(gi, ans, ng)
        reqw = np.where(is_req, rate, 0)
        cut = (rows["pflags"] & (F_LINE_CUT | F_HEADERS_CUT | F_TLS_CUT)) != 0
        packets = np.bincount(gi, npk, ng)
        byts = np.bincount(gi, nbytes, ng)
        reqs = np.bincount(gi, reqw, ng)
        partial = np.bincount(gi, np.where(is_req & cut, rate, 0), ng)
        syns = np.bincount(gi, rows["syns"].astype(np.int64), ng)
        sampled = np.bincount(gi, (rate > 1).astype(np.int64), ng)
        aggs: list[Agg] = []
        for j, g in enumerate(groups.tolist()):
            w = int(wins[g // na])
            name = api_names[g % na]
            a = st.windows.setdefault(w, {}).get(name)
            if a is None:
                a = st.windows[w][name] = Agg()
            a.requests += int(reqs[j])
            a.partial += int(partial[j])
            a.packets += int(packets[j])
            a.nbytes += int(byts[j])
            a.syns += int(syns[j])
            a.sampled |= bool(sampled[j])
            if nans[j]:
                a.answered = True
                a.rpackets += int(rpk[j])
                a.rbytes += int(rby[j])
            aggs.append(a)
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
        # clients: each group's rows go to its API's client table as they are (folded later)
        gi_c = np.where(ans, ng, gi)  # the server's packets are not a client's
        corder = np.argsort(gi_c, kind="stable")
        cstarts = np.searchsorted(gi_c[corder], np.arange(ng + 1))
        src = rows["src_addr"][corder]
        ccnt = np.stack([reqw, npk, nbytes], axis=1)[corder]
        for j in range(ng):
            lo, hi = int(cstarts[j]), int(cstarts[j + 1])
            aggs[j].clients.add(src[lo:hi], ccnt[lo:hi])
        for u in np.unique(gi.astype(np.int64) * 65536 + rows["origin"].astype(np.int64)).tolist():
            aggs[u >> 16].seen_by.add(f.text(u & 0xFFFF))

    def _resolve(self, st: UsageState, pend: Pending, api: str) -> None:
        for w, acc in pend.windows.items():
            _add_pending(st.windows.setdefault(w, {}).setdefault(api, Agg()), pend, acc)

    # -- closing ----------------------------------------------------------------------------

    def close(self, st: UsageState, watermark_ns: int) -> list[Output]:
        out: list[Output] = []
        final = watermark_ns >= FOREVER
        limit = FOREVER if final else watermark_ns - self.grace_ns
        self._add_paired(st, st.pairing.expire(limit))  # before the windows they count in close
        closing = sorted(w for w in st.windows if w + MINUTE_NS <= limit)
        if closing:
            # waiting connections' packets of those windows go to the server's catch-all
            for key, pend in list(st.pending.items()):
                for w in [w for w in pend.windows if w + MINUTE_NS <= limit]:
                    _add_pending(st.windows.setdefault(w, {}).setdefault(pend.service, Agg()), pend,
                                 pend.windows.pop(w))
                if not pend.windows:
                    del st.pending[key]
        for w in closing:
            apis = st.windows.pop(w)
            for name in sorted(apis):
                out.append(self._output(st, name, w, 60, apis[name]))
                if self.hours:
                    h = w - w % HOUR_NS
                    st.hours.setdefault(h, {}).setdefault(name, Agg()).merge(apis[name])
            st.closed_until = max(st.closed_until, w + MINUTE_NS)
        if not final:  # what starts before the last closed minute boundary is late from now on
            st.closed_until = max(st.closed_until, limit - limit % MINUTE_NS)
        for h in sorted(h for h in st.hours if h + HOUR_NS <= limit):
            apis = st.hours.pop(h)
            for name in sorted(apis):
                out.append(self._output(st, name, h, 3600, apis[name]))
        if closing:
            idle, linger = limit - FLOW_IDLE_NS, limit - CLOSED_LINGER_NS
            for key in [k for k, v in st.flows.items() if v[1] < (linger if v[2] else idle)]:
                del st.flows[key]
        return out

    def _output(self, st: UsageState, name: str, w: int, window_s: int, a: Agg) -> Output:
        ref = st.apis.get(name) or ApiRef(name, "", 0, "tcp", False)
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
        return {
            "windows": {str(w): {k: a.dump() for k, a in apis.items()} for w, apis in st.windows.items()},
            "hours": {str(w): {k: a.dump() for k, a in apis.items()} for w, apis in st.hours.items()},
            "closed_until": st.closed_until,
            "flows": {str(k): v for k, v in st.flows.items()},
            "pending": {str(k): [p.src.hex(), p.service, sorted(p.origins), {str(w): v for w, v in p.windows.items()}]
                        for k, p in st.pending.items()},
            "apis": {k: [r.host, r.port, r.protocol, r.matched, r.rate_limit_per_min] for k, r in st.apis.items()},
            "late_records": st.late_records, "records": st.records,
            "queue": st.pairing.dump(), "names": st.names.items,
        }

    def load(self, d: Any) -> UsageState:
        return UsageState(
            pairing=Pairing.load(self.timeout_ns, d["queue"]) if "queue" in d else Pairing(self.timeout_ns),
            names=StringTable([str(x) for x in d.get("names", [])]),
            windows={int(w): {k: Agg.load(a) for k, a in apis.items()} for w, apis in d["windows"].items()},
            hours={int(w): {k: Agg.load(a) for k, a in apis.items()} for w, apis in d["hours"].items()},
            closed_until=int(d["closed_until"]),
            flows={int(k): tuple(v) for k, v in d["flows"].items()},
            pending={int(k): Pending(bytes.fromhex(v[0]), v[1], set(v[2]),
                                     {int(w): [*x, 0, 0][:5] for w, x in v[3].items()})
                     for k, v in d["pending"].items()},
            apis={k: ApiRef(k, v[0], int(v[1]), v[2], bool(v[3]), int(v[4])) for k, v in d["apis"].items()},
            late_records=int(d["late_records"]), records=int(d["records"]),
        )

    def figures(self, states: list[UsageState]) -> dict[str, float]:
        return {
            "late_records": sum(s.late_records for s in states),
            "open_windows": sum(len(s.windows) for s in states),
            "flows": sum(len(s.flows) for s in states),
            "pending_flows": sum(len(s.pending) for s in states),
            "waiting_requests": sum(len(s.pairing.queue) for s in states),
        }
