"""``pktstream activity``: one record per conversation, as OCSF Network Activity (class 4001).

Runs on ``runner.StreamRunner`` (exactly once, scaled out, replayable), like usage and alerts.

Stage one reads both directions of every conversation (``featurize(answers=True)``) and folds, per
packet message, each conversation's packets of one direction and one update interval into one row
before the shuffle: packets and wire bytes summed, TCP flags or-ed, the first packet's time in
``ts_ns`` and the last one's in ``ts_data``, ACT_SYNACK in ``attack`` when a SYN-ACK was among them, the
TLS server name of a ClientHello in ``name``. Its ``fh`` becomes the conversation's key (the hash of
its endpoints in a fixed order, whichever way a packet went), which also picks its partition.

Stage two keeps a table of open conversations in arrays (one slot each): endpoints in that fixed
order (lo, hi) and which of them is the client, packets and bytes each way, flags each way, first
and last time, the capture points, whether sampling touched it. A conversation ends

- when it closed (TCP: a FIN each way, or a RST) and ``linger_s`` of event time passed after its last
  packet (the last ACKs, a retransmission);
- when nothing was seen of it for ``tcp_idle_s`` (TCP) or ``idle_s`` (UDP, ICMP, others);
- when a closed TCP conversation's client opens it again (a SYN after the close: port reuse);
- when the consumer stops with ``--until-end`` (everything still open is written as it stands).

Its record then says how it went in the manner of Zeek's ``conn_state`` (``CONN_STATES``), mapped to
OCSF's activity (Close, Reset, Fail, Refuse, Traffic). A conversation that lasts longer than one
``update_s`` interval gets a Traffic record at each interval boundary (event time, the same for all
conversations) at which it had packets: the totals up to that boundary, so that the last record of a
conversation (``unmapped.pktstream.final``) always holds its whole totals.

Every record and its timing depend only on the input (replays equal the first run): a boundary's
totals count the packets stamped before it, whenever they were read.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import numpy.typing as npt

from pktstream.consumers.activity import MAX_CONVERSATIONS, MAX_DNS_PENDING
from pktstream.consumers.activity import dns as dns_activity
from pktstream.consumers.activity import http as http_activity
from pktstream.consumers.alerts.ocsf import DIRECTION, LOCAL_NETWORKS, Network, networks
from pktstream.consumers.catalog import Catalog
from pktstream.consumers.engine.communityid import community_id, ported_id
from pktstream.consumers.engine.features import (
    FEATURE_DTYPE,
    Features,
    StringTable,
    featurize,
    flow_hash,
    take,
)
from pktstream.consumers.engine.parse import KIND_TLS_HELLO
from pktstream.consumers.engine.runner import FOREVER, Output
from pktstream.consumers.engine.snapshot import array as snapshot_array
from pktstream.schemas.columns import Batch
from pktstream.schemas.decode import addr_text
from pktstream.schemas.protocols import ACK, FIN, PROTO_ICMP, PROTO_ICMP6, PROTO_TCP, PROTO_UDP, PSH, RST, SYN

SEC = 1_000_000_000
# OCSF 1.3.0 network_endpoint.hostname's pattern (a server name that does not match stays in
# unmapped.pktstream.tls_server_name only)
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9])\.)*"
                       r"([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9\-]*[A-Za-z0-9])")
_MAPPED = bytes(10) + b"\xff\xff"
NEVER = np.iinfo(np.int64).max
RECORD_CLASSES = ("network", "dns", "http")  # --records: Network (4001), DNS (4003), HTTP (4002) Activity
OCSF_VERSION = "1.3.0"
MAX_CUTS = 256  # conversations one key may be cut into per batch (process: a bound on its passes)
ACT_SYNACK = 1  # attack bit of an activity row: a SYN-ACK among its packets

try:
    PRODUCT_VERSION = version("pktstream")
except PackageNotFoundError:  # pragma: no cover
    PRODUCT_VERSION = "0"

# conn_state -> (OCSF activity_id, what it means); after Zeek's conn.log
CONN_STATES: dict[str, tuple[int, str]] = {
    "S0": (4, "connection attempt seen, no reply"),
    "S1": (6, "established, not terminated"),
    "SF": (2, "normal establishment and termination"),
    "REJ": (5, "connection attempt rejected (answered by a RST)"),
    "S2": (2, "established, close attempt by the client only"),
    "S3": (2, "established, close attempt by the server only"),
    "RSTO": (3, "established, the client aborted it (RST)"),
    "RSTR": (3, "established, the server aborted it (RST)"),
    "RSTOS0": (3, "the client sent a SYN then a RST, no SYN-ACK seen"),
    "RSTRH": (3, "the server sent a SYN-ACK then a RST, no SYN seen from the client"),
    "SH": (4, "the client sent a SYN then a FIN, no SYN-ACK seen (half-open)"),
    "SHR": (4, "the server sent a SYN-ACK then a FIN, no SYN seen from the client"),
    "OTH": (6, "no SYN seen: traffic of a conversation begun before the capture"),
    "ONE": (6, "one direction only (not TCP)"),
    "BOTH": (6, "both directions (not TCP)"),
}
ACTIVITY = {1: "Open", 2: "Close", 3: "Reset", 4: "Fail", 5: "Refuse", 6: "Traffic", 99: "Other"}
PROTO_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp", PROTO_ICMP6: "icmpv6"}

# one open conversation; index 0 of the (2,) fields is the lo -> hi direction, 1 the other
CONV_DTYPE = np.dtype([
    ("key", "<u8"),
    ("lo", "<u8", (2,)),
    ("hi", "<u8", (2,)),
    ("lo_port", "<u2"),  # ICMP: the first packet's type
    ("hi_port", "<u2"),  # ICMP: its code
    ("proto", "u1"),
    ("ipv", "u1"),
    ("client_lo", "u1"),  # 1: lo is the client (the side that opened it, or as stage one judged)
    ("used", "u1"),
    ("first_ns", "<i8"),
    ("last_ns", "<i8"),
    ("next_b", "<i8"),  # the next update boundary; pk/by count packets before it, pkb/byb from it on
    ("pk", "<u8", (2,)),
    ("by", "<u8", (2,)),
    ("pkb", "<u8", (2,)),
    ("byb", "<u8", (2,)),
    ("flags", "u1", (2,)),
    ("syn", "u1", (2,)),  # a SYN without ACK was sent that way
    ("synack", "u1", (2,)),
    ("seen", "u1", (2,)),  # packets were seen that way (kept-apart ones too)
    # the flags each way of the packets before next_b (uf) and in the interval after it (ufb): TCP flags
    # in bits 0-7, a SYN without ACK bit 8, a SYN-ACK bit 9 (what a Traffic record at a boundary says)
    ("uf", "<u2", (2,)),
    ("ufb", "<u2", (2,)),
    ("fin_ns", "<i8", (2,)),  # the first FIN each way (its row's time; NEVER: none)
    ("rst_ns", "<i8"),  # the first RST either way
    ("active", "u1"),  # packets before next_b since the last boundary
    ("evicted", "u1"),  # ended early: the table was full
    ("upd_ns", "<i8"),  # the boundary of its last Traffic record (0: none)
    ("sampled", "u1"),
    ("updates", "<u4"),  # Traffic records written for it
    ("origins", "<u8"),  # bit i: capture point i of the state's table (bit 63: the 64th and later)
    ("sni", "<i4"),  # the state's string: a ClientHello's server name; -1 none
], align=False)


# packets of a conversation stamped more than an interval past its next boundary (see process)
LATER_DTYPE = np.dtype([("slot", "<i8"), ("d", "u1"), ("ts", "<i8"), ("pk", "<u8"), ("by", "<u8"), ("f", "<u2")],
                       align=False)


@dataclass
class ActivityState:
    t: npt.NDArray[Any] = field(default_factory=lambda: np.zeros(0, dtype=CONV_DTYPE))
    index: dict[int, int] = field(default_factory=dict)  # conversation key -> slot
    free: list[int] = field(default_factory=list)
    finished: list[npt.NDArray[Any]] = field(default_factory=list)  # ended, written at the next close
    updates: list[npt.NDArray[Any]] = field(default_factory=list)  # Traffic records (upd_ns: the boundary) to write
    strings: StringTable = field(default_factory=StringTable)  # server names
    origins: list[str] = field(default_factory=list)  # capture points, bit i of CONV_DTYPE.origins
    closed_until: int = 0  # event time up to which everything is written
    later: npt.NDArray[Any] = field(default_factory=lambda: np.zeros(0, dtype=LATER_DTYPE))
    late_records: int = 0
    records: int = 0
    reopened: int = 0
    evicted: int = 0
    # DNS messages not yet decided (rows of FEATURE_DTYPE, see activity/dns.py; name and path number the
    # state's strings, origin a capture point's bit)
    dns: npt.NDArray[Any] = field(default_factory=lambda: np.zeros(0, dtype=FEATURE_DTYPE))
    dns_records: int = 0
    dns_evicted: int = 0
    # HTTP/1.x request and status lines not yet decided (activity/http.py; name and path number the state's
    # strings)
    http: npt.NDArray[Any] = field(default_factory=lambda: np.zeros(0, dtype=FEATURE_DTYPE))
    http_records: int = 0
    http_evicted: int = 0
    # rows kept since the last close, joined to dns / http once then (pending())
    dns_new: list[npt.NDArray[Any]] = field(default_factory=list)
    http_new: list[npt.NDArray[Any]] = field(default_factory=list)
    # (capture points' bits, how many the state knows) -> their names as JSON (records' seen_by)
    seen_json: dict[tuple[int, int], str] = field(default_factory=dict)

    def pending(self, attr: str) -> npt.NDArray[Any]:
        """The undecided DNS (``attr`` "dns") or HTTP ("http") rows, those kept since the last call joined."""
        new = getattr(self, attr + "_new")
        if new:
            setattr(self, attr, np.concatenate([getattr(self, attr), *new]))
            new.clear()
        arr: npt.NDArray[Any] = getattr(self, attr)
        return arr

    def slot(self) -> int:
        if not self.free:
            n = len(self.t)
            grown = np.zeros(max(64, 2 * n), dtype=CONV_DTYPE)
            grown[:n] = self.t
            self.t = grown
            self.free = list(range(len(grown) - 1, n - 1, -1))
        return self.free.pop()

    def origin_bit(self, name: str) -> int:
        if name in self.origins:
            return self.origins.index(name)
        if len(self.origins) < 63:
            self.origins.append(name)
            return len(self.origins) - 1
        return 63


# an ICMP type and its answer's share a conversation (echo, timestamp, information, address mask;
# ICMPv6 echo and the neighbour/router exchanges): keyed by the request's type
_ICMP_REQUEST = np.arange(256, dtype=np.uint16)
_ICMP_REQUEST[[0, 14, 16, 18]] = [8, 13, 15, 17]
_ICMP6_REQUEST = np.arange(256, dtype=np.uint16)
_ICMP6_REQUEST[[129, 131, 134, 136, 140, 145]] = [128, 130, 133, 135, 139, 144]
_ICMP_PAIRED = np.zeros(256, dtype=bool)
_ICMP_PAIRED[[0, 8, 13, 14, 15, 16, 17, 18]] = True
_ICMP6_PAIRED = np.zeros(256, dtype=bool)
_ICMP6_PAIRED[[128, 129, 130, 131, 133, 134, 135, 136, 139, 140, 144, 145]] = True


def _endpoints(rows: npt.NDArray[Any]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint16], npt.NDArray[np.uint16]]:
    """Whether each row's source endpoint is the conversation's hi one (addresses, then ports for
    TCP and UDP), with the source's and destination's part of the key: the ports (TCP, UDP), the
    request's type and, unless it is a request or answer, the code (ICMP, ICMPv6), else 0."""
    src, dst = rows["src_addr"], rows["dst_addr"]
    proto = rows["protocol"]
    ported = (proto == PROTO_TCP) | (proto == PROTO_UDP)
    sp = np.where(ported, rows["src_port"], 0).astype(np.uint16)
    dp = np.where(ported, rows["dst_port"], 0).astype(np.uint16)
    s0, s1, d0, d1 = src[:, 0], src[:, 1], dst[:, 0], dst[:, 1]
    src_hi = np.asarray((s0 > d0) | ((s0 == d0) & ((s1 > d1) | ((s1 == d1) & (sp > dp)))), dtype=bool)
    v4, v6 = proto == PROTO_ICMP, proto == PROTO_ICMP6
    if v4.any() or v6.any():
        itype = (rows["src_port"] & 0xFF).astype(np.intp)
        icode = rows["dst_port"].astype(np.uint16)
        paired = np.where(v4, _ICMP_PAIRED[itype], _ICMP6_PAIRED[itype])
        kind = np.where(v4, _ICMP_REQUEST[itype], _ICMP6_REQUEST[itype])
        icmp = v4 | v6
        # the key's two "ports" for ICMP: lo's the request type, hi's the code (0 for a pair)
        sp = np.where(icmp & ~src_hi, kind, np.where(icmp, np.where(paired, 0, icode), sp)).astype(np.uint16)
        dp = np.where(icmp & src_hi, kind, np.where(icmp, np.where(paired, 0, icode), dp)).astype(np.uint16)
    return src_hi, sp, dp


def conversation_keys(rows: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    """The key of each row's conversation: the same for both directions (ICMP: per pair of addresses,
    request type and, outside a request and its answer, code)."""
    src_hi, sp, dp = _endpoints(rows)
    lo = np.where(src_hi[:, None], rows["dst_addr"], rows["src_addr"])
    hi = np.where(src_hi[:, None], rows["src_addr"], rows["dst_addr"])
    return flow_hash(lo, hi, np.where(src_hi, dp, sp), np.where(src_hi, sp, dp), rows["protocol"])


def _sender_lo(rows: npt.NDArray[Any], src_hi: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Whether each row's packets went lo -> hi (``answer`` rows went from dst to src)."""
    return np.asarray(np.where(rows["answer"] != 0, src_hi, ~src_hi), dtype=bool)


class ActivityProcessor:
    def __init__(self, topic: str = "pktstream.connections", grace_s: float = 10.0, update_s: float = 60.0,
                 tcp_idle_s: float = 300.0, idle_s: float = 60.0, linger_s: float = 5.0, attempt_s: float = 30.0,
                 max_conversations: int = MAX_CONVERSATIONS, local_networks: list[str] | None = None,
                 dns_topic: str = "pktstream.dns", dns_timeout_s: float = 10.0,
                 max_dns_pending: int = MAX_DNS_PENDING, http_topic: str = "pktstream.http",
                 http_timeout_s: float = 30.0, max_http_pending: int = MAX_DNS_PENDING,
                 catalog: Catalog | None = None, records: tuple[str, ...] = RECORD_CLASSES) -> None:
        self.topic = topic
        # which record classes are written (stage one makes no rows for the others)
        self.dns_on, self.http_on = "dns" in records, "http" in records
        self.http_topic = http_topic
        self.http_timeout_ns = int(http_timeout_s * SEC)
        self.max_http_pending = max(1, max_http_pending)
        self.catalog = catalog or Catalog()
        self.dns_topic = dns_topic
        self.dns_timeout_ns = int(dns_timeout_s * SEC)
        self.max_dns_pending = max(1, max_dns_pending)
        self.product_version = PRODUCT_VERSION
        self.grace_ns = int(grace_s * SEC)
        self.attempt_ns = int(attempt_s * SEC)
        self.max_conversations = max(1, max_conversations)
        # (at most the idle timeouts: a conversation with packets in an interval cannot end before its boundary)
        self.update_ns = max(SEC, int(min(update_s, tcp_idle_s, idle_s) * SEC))
        self.tcp_idle_ns = int(tcp_idle_s * SEC)
        self.idle_ns = int(idle_s * SEC)
        self.linger_ns = int(linger_s * SEC)
        self.min_gap_ns = min(self.linger_ns, self.attempt_ns, self.idle_ns, self.tcp_idle_ns)
        self.local: list[Network] = networks(local_networks or list(LOCAL_NETWORKS))
        # address bytes -> text, packed, JSON, inside a local network
        self._texts: dict[bytes, tuple[str, bytes, str, bool]] = {}
        self._ranges = _ranges(self.local)

    # -- stage one --------------------------------------------------------------------------

    def featurize(self, batch: Batch, origin: str) -> Features:
        f = featurize(batch, origin, answers=True)
        table = StringTable(f.strings)
        # (rows of their own, beside the packets')
        lookups = dns_activity.dns_rows(batch, f.rows, table) if self.dns_on else np.zeros(0, dtype=FEATURE_DTYPE)
        if self.http_on:
            exchanges = http_activity.http_rows(batch, f.rows, table)
            if len(exchanges):
                lookups = np.concatenate([lookups, exchanges])
        rows = f.rows
        rows = rows if (rows["ip_version"] > 0).all() else take(rows, np.flatnonzero(rows["ip_version"] > 0))
        if len(rows) == 0:
            return Features(rows, f.strings)
        key = conversation_keys(rows)
        src_hi, _sp, _dp = _endpoints(rows)
        d = (~_sender_lo(rows, src_hi)).astype(np.int64)
        ts = rows["ts_ns"]
        bucket = ts // self.update_ns
        # the client's SYNs so far in the message, per conversation: the packets of both directions after
        # one go into rows apart from those before it (a SYN may open the conversation again: port reuse)
        by_time = np.lexsort((ts, key))
        syn = (rows["syns"][by_time] > 0).astype(np.int64)
        kt = key[by_time]
        head = np.ones(len(kt), dtype=bool)
        head[1:] = kt[1:] != kt[:-1]
        run = np.cumsum(syn)
        epoch = np.empty(len(kt), dtype=np.int64)
        epoch[by_time] = run - (run - syn)[np.flatnonzero(head)][np.cumsum(head) - 1]
        order = np.lexsort((ts, bucket, d, epoch, key))
        k_s, d_s, b_s, e_s = key[order], d[order], bucket[order], epoch[order]
        s = take(rows, order)
        t_o = s["ts_ns"]
        new = np.empty(len(order), dtype=bool)
        new[0] = True
        # and a row ends at a pause longer than the shortest timeout (process() judges gaps between rows)
        new[1:] = (k_s[1:] != k_s[:-1]) | (d_s[1:] != d_s[:-1]) | (b_s[1:] != b_s[:-1]) | (e_s[1:] != e_s[:-1]) \
            | (t_o[1:] - t_o[:-1] >= self.min_gap_ns)
        starts = np.flatnonzero(new)
        out = take(s, starts)  # each group's first packet (its time, endpoints, orientation)
        out["packets"] = np.add.reduceat(s["packets"], starts)
        out["nbytes"] = np.add.reduceat(s["nbytes"], starts)
        out["syns"] = np.add.reduceat(s["syns"], starts)
        out["flags_or"] = np.bitwise_or.reduceat(s["flags_or"], starts)
        out["ts_data"] = np.maximum.reduceat(s["ts_ns"], starts)  # the last packet's time
        out["sample_rate"] = np.maximum.reduceat(s["sample_rate"], starts)
        synack = ((s["tcp_flags"] & (SYN | ACK)) == (SYN | ACK)).astype(np.uint16) * ACT_SYNACK
        out["attack"] = np.bitwise_or.reduceat(synack, starts)
        sni = np.where((s["kind"] == KIND_TLS_HELLO) & (s["name"] >= 0), s["name"], -1).astype(np.int32)
        out["name"] = np.maximum.reduceat(sni, starts)
        out["fh"] = k_s[starts]
        if len(lookups):
            return Features(np.concatenate([out, lookups]), table.items)
        return Features(out, f.strings)

    def route(self, f: Features, nparts: int) -> dict[int, Features]:
        rows = f.rows
        if len(rows) == 0:
            return {}
        part = (rows["fh"] % np.uint64(nparts)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        s = take(rows, order)
        bounds = np.searchsorted(part[order], np.arange(nparts + 1))
        return {q: Features(s[bounds[q] : bounds[q + 1]], f.strings)
                for q in range(nparts) if bounds[q + 1] > bounds[q]}

    # -- stage two --------------------------------------------------------------------------

    def new_state(self) -> ActivityState:
        return ActivityState()

    def process(self, st: ActivityState, f: Features) -> None:
        rows = f.rows
        if len(rows) == 0:
            return
        if rows.dtype != FEATURE_DTYPE:
            raise ValueError("activity: rows of another layout")
        st.records += len(rows)
        view = rows["view"]
        lookup, exchange = view == dns_activity.VIEW_DNS, view == http_activity.VIEW_HTTP
        if lookup.any() or exchange.any():
            if lookup.any():
                dns_activity.keep(self, st, take(rows, np.flatnonzero(lookup)), f.strings)
            if exchange.any():
                dns_activity.keep(self, st, take(rows, np.flatnonzero(exchange)), f.strings, "http")
            rows = take(rows, np.flatnonzero(~(lookup | exchange)))
            if len(rows) == 0:
                return
        # a conversation ends where its packets say so, whatever the batches: rows after a gap longer than
        # its timeout, or a client's SYN after a close, begin another one. The rows before each key's
        # first such row are counted, its conversation ends, and the rest are looked at again.
        # (at most MAX_CUTS turns: a key cut more often in one batch, a flood of SYNs from one source port
        # to one closed port, has the rest of its rows counted together)
        for _ in range(MAX_CUTS):
            split = self._splits(st, rows)
            if not split.any():
                break
            self._process(st, Features(take(rows, np.flatnonzero(~split)), f.strings))
            rows = take(rows, np.flatnonzero(split))
            ended = np.fromiter((st.index.get(k, -1) for k in np.unique(rows["fh"]).tolist()), dtype=np.int64)
            ended = ended[ended >= 0]
            self._end(st, ended)
            st.reopened += len(ended)
        self._process(st, Features(rows, f.strings))

    def _splits(self, st: ActivityState, rows: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """The rows at or after their conversation's first row that begins another conversation: one
        later than the conversation's latest packet so far by more than its timeout (judged by what
        came before it: closed, answered, protocol), or a SYN from its client after a close."""
        n = len(rows)
        key, ts = rows["fh"], rows["ts_ns"]
        order = np.lexsort((ts, key))
        k, t_s = key[order], ts[order]
        lv = np.maximum(rows["ts_data"], ts)[order]
        first = np.ones(n, dtype=bool)
        first[1:] = k[1:] != k[:-1]
        starts = np.flatnonzero(first)
        gid = np.cumsum(first) - 1
        slots = np.fromiter((st.index.get(x, -1) for x in k[starts].tolist()), dtype=np.int64, count=len(starts))
        known = slots >= 0
        sl = np.where(known, slots, 0)
        t = st.t
        r = take(rows, order)
        src_hi, _sp, _dp = _endpoints(r)
        sender_lo = _sender_lo(r, src_hi)
        d = (~sender_lo).astype(np.int64)
        proto = r["protocol"]
        tcp = proto == PROTO_TCP
        # the client's direction: the table's, or as _process will judge it from the key's first row
        new_client_lo = np.where(~tcp[starts] | (r["syns"][starts] > 0), sender_lo[starts], ~src_hi[starts])
        tk = take(t, sl) if len(t) else np.zeros(len(sl), dtype=CONV_DTYPE)
        client_lo = np.where(known, tk["client_lo"] == 1, new_client_lo)
        cdir = np.where(client_lo, 0, 1)[gid]
        to_server = d == cdir
        flags = r["flags_or"]

        def before(x: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
            """How many earlier rows of the same key have x."""
            c = np.cumsum(x, dtype=np.int64) - x
            return np.asarray(c - c[starts][gid], dtype=np.int64)

        resp_dir = 1 - np.where(client_lo, 0, 1)
        g = np.arange(len(sl))
        slot_answered = known & (tk["seen"][g, resp_dir] == 1)
        slot_fin_c = known & (tk["fin_ns"][g, 1 - resp_dir] < NEVER)
        slot_fin_s = known & (tk["fin_ns"][g, resp_dir] < NEVER)
        slot_rst = known & (tk["rst_ns"] < NEVER)
        answered = slot_answered[gid] | (before(~to_server) > 0)
        fin_c = slot_fin_c[gid] | (before(to_server & (flags & FIN != 0)) > 0)
        fin_s = slot_fin_s[gid] | (before(~to_server & (flags & FIN != 0)) > 0)
        closed = tcp & ((slot_rst[gid] | (before(flags & RST != 0) > 0)) | (fin_c & fin_s))
        # the latest packet before each row: a running maximum per key over the earlier rows' last
        # packets (by rank, the key in the high bits), and the table's for a known key
        sorted_lv = np.sort(lv)
        rank = np.searchsorted(sorted_lv, lv).astype(np.uint64)
        run = np.maximum.accumulate((gid.astype(np.uint64) << np.uint64(32)) | rank)
        prev = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
        prev[1:] = sorted_lv[(run[:-1] & np.uint64(0xFFFFFFFF)).astype(np.int64)]
        prev[first] = np.iinfo(np.int64).min
        prev = np.maximum(prev, np.where(known, tk["last_ns"], np.iinfo(np.int64).min)[gid])
        has_prev = ~first | known[gid]
        timeout = np.where(tcp, np.where(closed, self.linger_ns,
                                         np.where(answered, self.tcp_idle_ns, self.attempt_ns)), self.idle_ns)
        # (the same instant as close(): a conversation whose deadline the watermark reached has ended)
        again = has_prev & ((t_s >= prev + timeout) | (closed & to_server & (r["syns"] > 0) & (t_s > prev)))
        if not again.any():
            return np.zeros(n, dtype=bool)
        after = np.cumsum(again) - (np.cumsum(again) - again)[starts][gid] > 0
        out = np.zeros(n, dtype=bool)
        out[order] = after
        return out

    def _process(self, st: ActivityState, f: Features) -> None:
        rows = f.rows
        if len(rows) == 0:
            return
        key = rows["fh"]
        ts = rows["ts_ns"]
        src_hi, _sp, _dp = _endpoints(rows)
        d = (~_sender_lo(rows, src_hi)).astype(np.int64)
        # each conversation's earliest row in the batch decides a new slot's orientation
        first_order = np.lexsort((ts, key))
        uk, at = np.unique(key[first_order], return_index=True)
        first = first_order[at]
        inv = np.searchsorted(uk, key)
        t = st.t
        slots = np.fromiter((st.index.get(k, -1) for k in uk.tolist()), dtype=np.int64, count=len(uk))
        missing = np.flatnonzero(slots < 0)
        if len(missing):
            # rows of a conversation not in the table, older than what is written: late
            late = ts[first[missing]] < st.closed_until
            if late.any():
                st.late_records += int(np.isin(inv, missing[late]).sum())
                missing = missing[~late]
            for j in missing.tolist():
                slots[j] = st.slot()
            t = st.t
            ns = slots[missing]
            r = take(rows, first[missing])
            rh = src_hi[first[missing]]
            t["used"][ns] = 1
            t["key"][ns] = uk[missing]
            t["lo"][ns] = np.where(rh[:, None], r["dst_addr"], r["src_addr"])
            t["hi"][ns] = np.where(rh[:, None], r["src_addr"], r["dst_addr"])
            icmp = ~((r["protocol"] == PROTO_TCP) | (r["protocol"] == PROTO_UDP))
            t["lo_port"][ns] = np.where(icmp, r["src_port"], np.where(rh, r["dst_port"], r["src_port"]))
            t["hi_port"][ns] = np.where(icmp, r["dst_port"], np.where(rh, r["src_port"], r["dst_port"]))
            t["proto"][ns] = r["protocol"]
            t["ipv"][ns] = r["ip_version"]
            # the client: the sender of a TCP conversation's first packet if it is a SYN, else as stage one
            # oriented it (SYN-ACKs, requests, answers, well-known ports); of any other conversation, the
            # sender of its first packet
            sender_lo = _sender_lo(r, rh)
            t["client_lo"][ns] = np.where((r["protocol"] != PROTO_TCP) | (r["syns"] > 0), sender_lo, ~rh)
            t["first_ns"][ns] = NEVER
            t["fin_ns"][ns] = NEVER
            t["rst_ns"][ns] = NEVER
            t["last_ns"][ns] = 0
            t["next_b"][ns] = (r["ts_ns"] // self.update_ns + 1) * self.update_ns
            for fld in ("pk", "by", "pkb", "byb", "flags", "syn", "synack", "seen", "uf", "ufb"):
                t[fld][ns] = 0
            t["active"][ns] = 0
            t["evicted"][ns] = 0
            t["upd_ns"][ns] = 0
            t["sampled"][ns] = 0
            t["updates"][ns] = 0
            t["origins"][ns] = 0
            t["sni"][ns] = -1
            for j, k in zip(missing.tolist(), uk[missing].tolist(), strict=True):
                st.index[k] = int(slots[j])
        row_slot = slots[inv]
        keep = np.flatnonzero(row_slot >= 0)
        over = len(st.index) - self.max_conversations
        if over > 0:
            # the table is full: conversations end now, with what is known of them, a tenth of the table at
            # a time (none of this batch's): unanswered ones first (a flood of spoofed SYNs evicts itself,
            # not the quiet established ones), then those seen least lately; ties by key
            t = st.t
            used = np.flatnonzero(t["used"] == 1)
            used = used[~np.isin(used, slots)]
            k = min(len(used), over + self.max_conversations // 10)
            tu = take(t, used)
            both = tu["pk"] + tu["pkb"]
            c = np.where(tu["client_lo"] == 1, 0, 1)
            rows_i = np.arange(len(tu))
            # established: the client sent more than its SYN and the server answered (a spoofed SYN that a
            # SYN-ACK answers is not)
            established = (both[rows_i, c] >= 2) & (both[rows_i, 1 - c] >= 1)
            gone = used[np.lexsort((tu["key"], tu["last_ns"], established))[:k]]
            t["evicted"][gone] = 1
            self._fold_later(st, gone)
            st.finished.append(take(t, gone))
            self._free(st, gone)
            st.evicted += k
            t = st.t
        if len(keep) < len(rows):
            rows, row_slot, d, ts = take(rows, keep), row_slot[keep], d[keep], ts[keep]
        if len(rows) == 0:
            return
        nb = t["next_b"][row_slot]
        ahead = (ts >= nb).astype(np.int64)
        far = ts >= nb + self.update_ns
        rbits = (rows["flags_or"].astype(np.uint16) | ((rows["syns"] > 0).astype(np.uint16) << np.uint16(8))
                 | (((rows["attack"] & ACT_SYNACK) != 0).astype(np.uint16) << np.uint16(9)))
        near = np.flatnonzero(~far)
        if len(near) < len(rows):
            # more than an interval past the next boundary (a backlog read ahead of the watermark): kept
            # apart until the boundaries before them are passed
            fi = np.flatnonzero(far)
            add = np.zeros(len(fi), dtype=LATER_DTYPE)
            add["slot"], add["d"], add["ts"] = row_slot[fi], d[fi], ts[fi]
            add["pk"], add["by"], add["f"] = rows["packets"][fi], rows["nbytes"][fi], rbits[fi]
            st.later = np.concatenate([st.later, add])
        # sums per (slot, direction, before/after the next boundary): one row each, added at once
        g = (row_slot[near] * 2 + d[near]) * 2 + ahead[near]
        ug, ginv = np.unique(g, return_inverse=True)
        gs, gd, ga = ug // 4, (ug // 2) % 2, ug % 2
        pk = np.bincount(ginv, weights=rows["packets"][near].astype(np.float64), minlength=len(ug)).astype(np.uint64)
        by = np.zeros(len(ug), dtype=np.uint64)
        np.add.at(by, ginv, rows["nbytes"][near])
        b = ga == 1
        t["pk"][gs[~b], gd[~b]] += pk[~b]
        t["by"][gs[~b], gd[~b]] += by[~b]
        t["pkb"][gs[b], gd[b]] += pk[b]
        t["byb"][gs[b], gd[b]] += by[b]
        for fld, sel in (("uf", near[ahead[near] == 0]), ("ufb", near[ahead[near] == 1])):
            np.bitwise_or.at(t[fld], (row_slot[sel], d[sel]), rbits[sel])
        fl = t["flags"]
        np.bitwise_or.at(fl, (row_slot, d), rows["flags_or"])
        syn = t["syn"]
        np.bitwise_or.at(syn, (row_slot, d), (rows["syns"] > 0).astype(np.uint8))
        sa = t["synack"]
        np.bitwise_or.at(sa, (row_slot, d), ((rows["attack"] & ACT_SYNACK) != 0).astype(np.uint8))
        t["seen"][row_slot, d] = 1
        np.minimum.at(t["first_ns"], row_slot, ts)
        fin = np.flatnonzero(rows["flags_or"] & FIN)
        np.minimum.at(t["fin_ns"], (row_slot[fin], d[fin]), ts[fin])
        rst = np.flatnonzero(rows["flags_or"] & RST)
        np.minimum.at(t["rst_ns"], row_slot[rst], ts[rst])
        np.maximum.at(t["last_ns"], row_slot, np.maximum(rows["ts_data"], ts))
        act = row_slot[ahead == 0]
        t["active"][act] = 1
        sampled = row_slot[rows["sample_rate"] > 1]
        t["sampled"][sampled] = 1
        origin_bits = np.zeros(len(f.strings) + 1, dtype=np.uint64)
        for i in np.unique(rows["origin"]).tolist():
            origin_bits[i] = np.uint64(1) << np.uint64(st.origin_bit(f.text(i)))
        o = rows["origin"].astype(np.int64)
        o = np.where((o >= 0) & (o < len(f.strings)), o, len(f.strings))  # (a number no string has: no bit)
        np.bitwise_or.at(t["origins"], row_slot, origin_bits[o])
        named = np.flatnonzero(rows["name"] >= 0)
        if len(named):
            ids = {i: st.strings.add(f.text(i)[:255]) for i in np.unique(rows["name"][named]).tolist()}
            t["sni"][row_slot[named]] = [ids[i] for i in rows["name"][named].tolist()]

    @staticmethod
    def _fold_later(st: ActivityState, slots: npt.NDArray[np.int64]) -> None:
        """The kept-apart packets of these conversations into their counts past the next boundary (they
        end now: their final records count everything)."""
        if len(st.later) == 0:
            return
        m = np.isin(st.later["slot"], slots)
        if m.any():
            lt = st.later[m]
            np.add.at(st.t["pkb"], (lt["slot"], lt["d"]), lt["pk"])
            np.add.at(st.t["byb"], (lt["slot"], lt["d"]), lt["by"])
            st.later = st.later[~m]

    @staticmethod
    def _free(st: ActivityState, slots: int | npt.NDArray[np.int64]) -> None:
        ss = np.atleast_1d(np.asarray(slots, dtype=np.int64))
        for k in st.t["key"][ss].tolist():
            del st.index[k]
        st.t["used"][ss] = 0
        st.free += ss.tolist()

    def _deadline(self, tt: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """When each conversation (rows of CONV_DTYPE) ends unless another packet comes: its last packet
        plus linger (closed), the TCP idle timeout (answered), the attempt timeout (not answered yet) or
        the idle timeout (UDP, ICMP)."""
        tcp = tt["proto"] == PROTO_TCP
        timeout = np.where(tcp, np.where(_closed(tt), self.linger_ns,
                                         np.where(_answered(tt), self.tcp_idle_ns, self.attempt_ns)), self.idle_ns)
        return np.asarray(tt["last_ns"] + timeout, dtype=np.int64)

    def _roll(self, st: ActivityState, slots: npt.NDArray[np.int64], limits: npt.NDArray[np.int64]) -> None:
        """Pass the update boundaries of these conversations up to each one's limit (the watermark, and
        never past its deadline): a Traffic record (into st.updates) at each boundary at which one is at
        least an interval old, had packets in the interval and had not closed; then the packets after
        the boundary count as before it."""
        t = st.t
        while True:  # (each turn moves every due conversation's next boundary on by an interval or more)
            m = t["next_b"][slots] <= limits
            if not m.any():
                return
            due, lim = slots[m], limits[m]
            tt = take(t, due)
            b = tt["next_b"]
            # closed before the boundary (judged by the packets before it, whatever was read since)
            alive = (tt["proto"] != PROTO_TCP) | ((tt["rst_ns"] >= b) & (tt["fin_ns"].max(axis=1) >= b))
            want = (tt["active"] == 1) & (tt["first_ns"] <= b - self.update_ns) & alive
            if want.any():
                r = take(t, due[want])
                bw = b[want]
                # the flags as of the boundary: those of the packets before it, whatever was read since
                r["flags"] = r["uf"] & 0xFF
                r["syn"] = (r["uf"] >> 8) & 1
                r["synack"] = (r["uf"] >> 9) & 1
                r["upd_ns"] = bw
                st.updates.append(r)
            t["updates"][due[want]] += 1
            t["upd_ns"][due[want]] = b[want]
            t["pk"][due] += t["pkb"][due]
            t["by"][due] += t["byb"][due]
            t["active"][due] = (t["pkb"][due].sum(axis=1) > 0).astype(np.uint8)
            t["pkb"][due] = 0
            t["byb"][due] = 0
            t["uf"][due] |= t["ufb"][due]
            t["ufb"][due] = 0
            # past an empty interval the next boundary is the one after the limit (unless packets past it
            # are kept apart)
            later = st.later
            step = (t["active"][due] == 1) | np.isin(due, later["slot"])
            t["next_b"][due] = np.where(step, b + self.update_ns,
                                        np.maximum(b + self.update_ns, (lim // self.update_ns + 1) * self.update_ns))
            if len(later):
                # kept-apart packets now within an interval of the next boundary join its counts
                nb = t["next_b"][later["slot"]]
                move = np.isin(later["slot"], due) & (later["ts"] < nb + self.update_ns)
                if move.any():
                    lt = later[move]
                    past = lt["ts"] >= t["next_b"][lt["slot"]]
                    for fld_p, fld_b, fld_f, sel in (("pk", "by", "uf", ~past), ("pkb", "byb", "ufb", past)):
                        np.add.at(t[fld_p], (lt["slot"][sel], lt["d"][sel]), lt["pk"][sel])
                        np.add.at(t[fld_b], (lt["slot"][sel], lt["d"][sel]), lt["by"][sel])
                        np.bitwise_or.at(t[fld_f], (lt["slot"][sel], lt["d"][sel]), lt["f"][sel])
                    st.later = later[~move]

    def _end(self, st: ActivityState, slots: npt.NDArray[np.int64]) -> None:
        """These conversations end: their boundaries up to their deadlines passed (the updates a live
        read would write before their end), their kept-apart packets counted, their slots freed."""
        if len(slots) == 0:
            return
        self._roll(st, slots, self._deadline(take(st.t, slots)))
        self._fold_later(st, slots)
        st.finished.append(take(st.t, slots))
        self._free(st, slots)

    def lost(self, st: ActivityState, origin: str, t_ns: int, records: int) -> None:
        """(Conversation records do not carry the capture's completeness yet: the note is not kept.)"""

    def close(self, st: ActivityState, watermark_ns: int) -> list[Output]:
        final = watermark_ns >= FOREVER
        limit = FOREVER if final else watermark_ns - self.grace_ns
        t = st.t
        used = np.flatnonzero(t["used"] == 1)
        if len(used):
            deadline = self._deadline(take(t, used))
            # boundaries the watermark passed, never past a conversation's deadline (whether it is still
            # there then does not depend on when the watermark moved)
            if not final:
                self._roll(st, used, np.minimum(deadline, limit))
            self._end(st, used[deadline <= limit])
        lookups = dns_activity.pair(self, st, limit, final) + http_activity.pair(self, st, limit, final)
        if not final:
            st.closed_until = max(st.closed_until, limit)
        updates, ended = st.updates, st.finished
        st.updates, st.finished = [], []
        if not updates and not ended:
            if lookups:
                self._drop_strings(st)
            return lookups
        ups = np.concatenate(updates) if updates else np.zeros(0, dtype=CONV_DTYPE)
        rows = np.concatenate([ups, *ended])
        n_up = len(ups)
        out = self.outputs(st, rows, ups["upd_ns"].tolist() + [0] * (len(rows) - n_up),
                           [False] * n_up + [True] * (len(rows) - n_up))
        if ended or lookups:
            self._drop_strings(st)
        return out + lookups

    @staticmethod
    def _drop_strings(st: ActivityState) -> None:
        keep = np.zeros(len(st.strings.items), dtype=bool)
        live = st.t["sni"][(st.t["used"] == 1) & (st.t["sni"] >= 0)]
        keep[live[live < len(keep)]] = True
        for r in st.finished:
            f = r["sni"][(r["sni"] >= 0) & (r["sni"] < len(keep))]
            keep[f] = True
        for arr in (st.pending("dns"), st.pending("http")):  # undecided DNS messages' and HTTP lines'
            for fld in ("name", "path"):
                ix = arr[fld]
                keep[ix[(ix >= 0) & (ix < len(keep))]] = True
        st.strings.drop(keep)

    # -- records ----------------------------------------------------------------------------

    def endpoint(self, words: npt.NDArray[Any]) -> tuple[str, bytes, bool]:
        """An address (two words) as text, packed (4 bytes for IPv4) and whether it is local."""
        raw = np.ascontiguousarray(words, dtype="<u8").tobytes()
        e = self._texts.get(raw)
        if e is None:
            text = addr_text(raw)
            packed = raw[12:] if raw[:12] == _MAPPED else raw
            e = self._texts[raw] = (text, packed, json.dumps(text), _inside(packed, self._ranges))
        return e[0], e[1], e[3]

    @staticmethod
    def direction(src_in: bool, dst_in: bool) -> tuple[int, str]:
        d = _DIRECTIONS.get((src_in, dst_in), 0)
        return d, DIRECTION[d]

    @staticmethod
    def community(src: bytes, dst: bytes, proto: int, sport: int, dport: int) -> str:
        return ported_id(src, dst, proto, sport, dport) if len(src) == len(dst) else ""

    def outputs(self, st: ActivityState, rows: npt.NDArray[Any], boundaries: list[int],
                finals: list[bool]) -> list[Output]:
        """Conversations (rows of CONV_DTYPE) as OCSF 1.3.0 Network Activity events, in order of time:
        each its final record, or (``finals`` False) its Traffic record at its boundary with the totals
        before it. The JSON is written from the columns (Python ints and strings) in one pass; the
        Output's ``record`` is left None (``json.loads(value)`` gives the document)."""
        n = len(rows)
        blob = np.ascontiguousarray(np.concatenate([rows["lo"], rows["hi"]], axis=1), dtype="<u8").tobytes()
        proto_l, clo, key_l = rows["proto"].tolist(), rows["client_lo"].tolist(), rows["key"].tolist()
        lp_l, hp_l = rows["lo_port"].tolist(), rows["hi_port"].tolist()
        first_l, last_l = rows["first_ns"].tolist(), rows["last_ns"].tolist()
        # totals each way (final records add the counts past the next boundary), flat lists of ints
        fin = np.asarray(finals, dtype=bool)[:, None]
        pk2 = rows["pk"] + np.where(fin, rows["pkb"], 0)
        by2 = rows["by"] + np.where(fin, rows["byb"], 0)
        pk0, pk1, by0, by1 = pk2[:, 0].tolist(), pk2[:, 1].tolist(), by2[:, 0].tolist(), by2[:, 1].tolist()
        fl0, fl1 = rows["flags"][:, 0].tolist(), rows["flags"][:, 1].tolist()
        syn0, syn1 = rows["syn"][:, 0].tolist(), rows["syn"][:, 1].tolist()
        sa0, sa1 = rows["synack"][:, 0].tolist(), rows["synack"][:, 1].tolist()
        upd_l, org_l, sni_l = rows["updates"].tolist(), rows["origins"].tolist(), rows["sni"].tolist()
        updb_l = rows["upd_ns"].tolist()
        smp_l, ev_l, ipv_l = rows["sampled"].tolist(), rows["evicted"].tolist(), rows["ipv"].tolist()
        texts = self._texts
        if len(texts) > 200_000:  # (a cache of the addresses seen lately: bounded)
            texts.clear()
        seen: dict[int, str] = {}
        ranges = self._ranges
        out: list[tuple[int, bool, str, Output]] = []
        for i in range(n):
            base = 32 * i
            ends = []
            for raw in (blob[base : base + 16], blob[base + 16 : base + 32]):
                e = texts.get(raw)
                if e is None:
                    text = addr_text(raw)
                    packed = raw[12:] if raw[:12] == _MAPPED else raw
                    e = texts[raw] = (text, packed, json.dumps(text), _inside(packed, ranges))
                ends.append(e)
            final = finals[i]
            proto = proto_l[i]
            c = 0 if clo[i] else 1
            (_src, src_p, src_j, src_in), (_dst, dst_p, dst_j, dst_in) = (ends[0], ends[1]) if c == 0 else \
                (ends[1], ends[0])
            ported = proto in (PROTO_TCP, PROTO_UDP)
            lp, hp = lp_l[i], hp_l[i]
            sport, dport = ((lp, hp) if c == 0 else (hp, lp)) if ported else (lp, hp)
            if c == 0:
                p_out, p_in, b_out, b_in = pk0[i], pk1[i], by0[i], by1[i]
                state = _conn_state(proto, fl0[i], fl1[i], syn0[i], sa1[i], p_in)
            else:
                p_out, p_in, b_out, b_in = pk1[i], pk0[i], by1[i], by0[i]
                state = _conn_state(proto, fl1[i], fl0[i], syn1[i], sa0[i], p_in)
            activity = CONN_STATES[state][0] if final else 6
            first_ns = first_l[i]
            first_ms = first_ns // 1_000_000
            end_ms = max((last_l[i] if final else boundaries[i]) // 1_000_000, first_ms)
            # a final record comes after its conversation's last Traffic record, in time and on the topic
            time_ms = max(end_ms, updb_l[i] // 1_000_000) if final else end_ms
            # the conversation's key (a hash of its endpoints) and its first packet's time
            conn_uid = f"{key_l[i]:016x}{first_ns & 0xFFFFFFFFFFFFFFFF:016x}"
            if ported and len(src_p) == len(dst_p):
                cid = ported_id(src_p, dst_p, proto, sport, dport)
            elif len(src_p) == len(dst_p):
                cid = _community_id(src_p, dst_p, proto, sport, dport)
            else:
                cid = ""
            direction = _DIRECTIONS.get((src_in, dst_in), 0)
            mask = org_l[i]
            seen_j = seen.get(mask)
            if seen_j is None:
                names = [o for j, o in enumerate(st.origins) if mask >> j & 1]
                if mask >> 63 & 1:
                    names.append("(more)")
                seen_j = seen[mask] = json.dumps(names)
            sni = sni_l[i]
            name = st.strings.items[sni] if 0 <= sni < len(st.strings.items) else ""
            hostname = name if name and _HOSTNAME.fullmatch(name) else ""
            updates = upd_l[i] + (0 if final else 1)
            uid = f"{conn_uid}.{'f' if final else upd_l[i]}"  # each record of it: its update's number, f the last
            v6 = ipv_l[i] == 6
            detail = CONN_STATES[state][1] if final else CONN_STATES[state][1] + " (an update)"
            act = ACTIVITY[activity]
            src_ep = f'{{"ip":{src_j},"port":{sport}}}' if ported else f'{{"ip":{src_j}}}'
            host = f',"hostname":"{hostname}"' if hostname else ""  # (OCSF's pattern: nothing to escape)
            dst_ep = f'{{"ip":{dst_j},"port":{dport}{host}}}' if ported else f'{{"ip":{dst_j}{host}}}'
            tcp_flags = f',"tcp_flags":{fl0[i] | fl1[i]}' if proto == PROTO_TCP else ""
            extra = ""
            if not ported and proto in (PROTO_ICMP, PROTO_ICMP6):
                extra += f',"icmp_type":{lp},"icmp_code":{hp}'
            if name:
                extra += f',"tls_server_name":{json.dumps(name)}'
            if ev_l[i]:
                extra += ',"evicted":true'
            doc = (
                f'{{"activity_id":{activity},"activity_name":"{act}","category_uid":4,'
                f'"category_name":"Network Activity","class_uid":4001,"class_name":"Network Activity",'
                f'"type_uid":{400100 + activity},"type_name":"Network Activity: {act}",'
                f'"severity_id":1,"severity":"Informational","time":{time_ms},"start_time":{first_ms},'
                f'"end_time":{end_ms},"duration":{end_ms - first_ms},"timezone_offset":0,'
                f'"status_code":"{state}","status_detail":"{detail}","src_endpoint":{src_ep},'
                f'"dst_endpoint":{dst_ep},"connection_info":{{"uid":"{conn_uid}","protocol_num":{proto},'
                f'"protocol_name":"{PROTO_NAMES.get(proto, str(proto))}","protocol_ver_id":{6 if v6 else 4},'
                f'"protocol_ver":"Internet Protocol version {6 if v6 else 4}","direction_id":{direction},'
                f'"direction":"{DIRECTION[direction]}"{tcp_flags}}},'
                f'"traffic":{{"packets_out":{p_out},"packets_in":{p_in},"packets":{p_out + p_in},'
                f'"bytes_out":{b_out},"bytes_in":{b_in},"bytes":{b_out + b_in}}},'
                f'"metadata":{{"version":"{OCSF_VERSION}","product":{{"name":"pktstream","vendor_name":"pktstream",'
                f'"version":{json.dumps(PRODUCT_VERSION)},"feature":{{"name":"activity"}}}},'
                f'"log_provider":"pktstream","log_name":"pktstream.connections","uid":"{uid}",'
                f'"correlation_uid":"{conn_uid}"}},'
                f'"unmapped":{{"pktstream":{{"community_id":"{cid}","conn_state":"{state}",'
                f'"final":{"true" if final else "false"},"seen_by":{seen_j},'
                f'"sampled":{"true" if smp_l[i] else "false"},"update":{updates}{extra}}}}}}}'
            )
            out.append((time_ms, final, uid, Output(self.topic, (cid or conn_uid).encode(), doc.encode(), [])))
        out.sort(key=lambda x: (x[0], x[1], x[2]))
        return [o for _t, _f, _u, o in out]

    # -- state ------------------------------------------------------------------------------

    def dump(self, st: ActivityState) -> Any:
        used = np.flatnonzero(st.t["used"] == 1)
        fin = np.concatenate(st.finished) if st.finished else np.zeros(0, dtype=CONV_DTYPE)
        ups = np.concatenate(st.updates) if st.updates else np.zeros(0, dtype=CONV_DTYPE)
        later = st.later.copy()
        if len(later):  # the slots as the restored table numbers them (its open conversations in order)
            renumber = np.full(len(st.t), -1, dtype=np.int64)
            renumber[used] = np.arange(len(used))
            later["slot"] = renumber[later["slot"]]
        return {"v": 1, "open": take(st.t, used), "finished": fin, "strings": st.strings.items,
                "strings_free": st.strings.free, "origins": st.origins, "closed_until": st.closed_until,
                "counts": [st.late_records, st.records, st.reopened, st.evicted], "later": later,
                "updates": ups, "dns": st.pending("dns").copy(), "dns_counts": [st.dns_records, st.dns_evicted],
                "http": st.pending("http").copy(), "http_counts": [st.http_records, st.http_evicted]}

    def load(self, d: Any) -> ActivityState:
        if not isinstance(d, dict) or d.get("v") != 1:
            raise ValueError("activity snapshot: unknown version")
        opened = snapshot_array(d["open"], CONV_DTYPE)
        fin = snapshot_array(d["finished"], CONV_DTYPE)
        st = ActivityState(strings=StringTable([str(s) for s in d["strings"]], [int(i) for i in d["strings_free"]]),
                           origins=[str(o) for o in d["origins"]][:63], closed_until=int(d["closed_until"]))
        st.late_records, st.records, st.reopened, st.evicted = (int(x) for x in d["counts"])
        n = len(opened)
        st.t = np.zeros(max(64, n), dtype=CONV_DTYPE)
        st.t[:n] = opened
        st.index = dict(zip(opened["key"].tolist(), range(n), strict=True))
        if len(st.index) != n:
            raise ValueError("activity snapshot: a conversation twice")
        st.free = list(range(len(st.t) - 1, n - 1, -1))
        st.finished = [fin] if len(fin) else []
        ups = snapshot_array(d["updates"], CONV_DTYPE) if "updates" in d else np.zeros(0, dtype=CONV_DTYPE)
        st.updates = [ups] if len(ups) else []
        st.later = snapshot_array(d["later"], LATER_DTYPE)
        if "dns" in d:
            st.dns = snapshot_array(d["dns"], FEATURE_DTYPE)
            st.dns_records, st.dns_evicted = (int(x) for x in d["dns_counts"])
            if len(st.dns) and not ((st.dns["view"] == dns_activity.VIEW_DNS).all()
                                    and (st.dns["name"] < len(st.strings.items)).all()
                                    and (st.dns["path"] < len(st.strings.items)).all()
                                    and ((st.dns["origin"] >= 0) & (st.dns["origin"] < 64)).all()):
                raise ValueError("activity snapshot: a DNS message that does not fit the state")
        if "http" in d:
            st.http = snapshot_array(d["http"], FEATURE_DTYPE)
            st.http_records, st.http_evicted = (int(x) for x in d["http_counts"])
            n_s = len(st.strings.items)
            if len(st.http) and not ((st.http["view"] == http_activity.VIEW_HTTP).all()
                                     and (st.http["name"] < n_s).all() and (st.http["path"] < n_s).all()
                                     and ((st.http["origin"] >= 0) & (st.http["origin"] < 64)).all()):
                raise ValueError("activity snapshot: an HTTP line that does not fit the state")
        if len(st.later) and not ((st.later["slot"] >= 0) & (st.later["slot"] < n)).all():
            raise ValueError("activity snapshot: packets kept apart for no open conversation")
        return st

    def degrade(self, st: ActivityState) -> dict[str, Any]:
        return {}  # nothing to drop: every open conversation is owed its record

    def figures(self, states: list[ActivityState]) -> dict[str, float]:
        return {
            "flows": sum(len(s.index) for s in states),
            "late_records": sum(s.late_records for s in states),
            "conversations_reopened": sum(s.reopened for s in states),
            "conversations_evicted": sum(s.evicted for s in states),
            "dns_pending": sum(len(s.dns) + sum(map(len, s.dns_new)) for s in states),
            "dns_records": sum(s.dns_records for s in states),
            "dns_evicted": sum(s.dns_evicted for s in states),
            "http_pending": sum(len(s.http) + sum(map(len, s.http_new)) for s in states),
            "http_records": sum(s.http_records for s in states),
            "http_evicted": sum(s.http_evicted for s in states),
        }


def _answered(tt: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Conversations whose server sent packets (read so far, kept-apart ones too)."""
    s = np.where(tt["client_lo"] == 1, 1, 0)
    return np.asarray(tt["seen"][np.arange(len(tt)), s] == 1, dtype=bool)


def _closed(tt: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """TCP conversations that ended: a RST either way, or a FIN each way."""
    f0, f1 = tt["flags"][:, 0], tt["flags"][:, 1]
    return np.asarray(((f0 | f1) & RST != 0) | ((f0 & FIN != 0) & (f1 & FIN != 0)), dtype=bool)


def _conn_state(proto: int, of: int, sf: int, o_syn: int, s_synack: int, resp_packets: int) -> str:
    """Zeek's conn_state of a conversation from the client's (o) and the server's (s) or-ed TCP flags,
    whether the client sent a SYN without ACK and the server a SYN-ACK, and the server's packets."""
    if proto != PROTO_TCP:
        return "BOTH" if resp_packets else "ONE"
    o_fin, s_fin, o_rst, s_rst = of & FIN, sf & FIN, of & RST, sf & RST
    # data or a FIN from the server: it was established though no SYN-ACK was seen (sampled out)
    s_synack = s_synack or (o_syn and sf & (PSH | FIN))
    if o_syn and not s_synack:
        if s_rst:
            return "REJ"
        if o_rst:
            return "RSTOS0"
        return "SH" if o_fin else "S0"
    if o_syn:
        if o_rst:
            return "RSTO"
        if s_rst:
            return "RSTR"
        if o_fin and s_fin:
            return "SF"
        return "S2" if o_fin else "S3" if s_fin else "S1"
    if s_synack:
        if s_rst:
            return "RSTRH"
        if s_fin:
            return "SHR"
    return "OTH"


def _community_id(a: bytes, b: bytes, proto: int, sport: int, dport: int) -> str:
    """communityid.community_id of packed addresses (ICMP and others), "" where it refuses them."""
    try:
        return community_id(a, b, proto, sport, dport)
    except (ValueError, OverflowError, struct.error):
        return ""


# OCSF direction_id from which endpoints are inside (ocsf.direction_id): in, out, lateral
_DIRECTIONS = {(False, True): 1, (True, False): 2, (True, True): 3}


def _ranges(local: list[Network]) -> list[tuple[int, int, int]]:
    """Each network as (address length in bytes, its first address, mask) over the address's integer."""
    return [(4 if n.version == 4 else 16, int(n.network_address), int(n.netmask)) for n in local]


def _inside(raw: bytes, ranges: list[tuple[int, int, int]]) -> bool:
    """Whether a packed address (4 or 16 bytes) is in one of the networks (_ranges)."""
    v = int.from_bytes(raw, "big")
    size = len(raw)
    return any(size == n and v & mask == net for n, net, mask in ranges)
