"""Feature batches: what the stateful consumers need of each packet record, as one numpy array.

Stage one of a consumer (see ``runner.py``) turns a packet-topic message into a feature batch:
the packet columns it needs plus what the payload prefix says (HTTP method, Host header or TLS
server name, request target), with strings kept once in a table the rows point into. The batch
travels through the consumer's internal repartition topic as one Kafka message:

    b"PSFB" | u32 header length | header JSON {"v": 1, "n": rows, "strings": [...]} | rows

The rows are ``FEATURE_DTYPE`` records, little-endian, packed. Only pktstream writes these
messages; a message that does not read as one raises DecodeError (and is dead-lettered).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pktstream.consumers.engine.parse import (
    CONTENT_LENGTH,
    HOST_LEN,
    HOST_OFF,
    KIND,
    KIND_H2_PREFACE,
    KIND_HTTP1,
    KIND_HTTP1_RESPONSE,
    KIND_TLS_HELLO,
    METHOD,
    PATH_LEN,
    PATH_OFF,
    STATUS,
    parse_payloads,
)
from pktstream.consumers.engine.parse import FLAGS as PFLAGS
from pktstream.schemas.columns import Batch
from pktstream.schemas.decode import DecodeError
from pktstream.schemas.protocols import ACK, PROTO_TCP, PROTO_UDP, SYN

MAGIC = b"PSFB"
VERSION = 3  # 2: the fh column; 3: answer, status, content_length, ts_data

FEATURE_DTYPE = np.dtype([
    ("ts_ns", "<i8"),
    ("src_addr", "<u8", (2,)),  # the 16 address bytes as two words (equality and hashing only)
    ("dst_addr", "<u8", (2,)),
    ("src_port", "<u2"),
    ("dst_port", "<u2"),
    ("protocol", "u1"),
    ("ip_version", "u1"),
    ("tcp_flags", "u1"),
    ("ttl", "u1"),
    ("wire_len", "<u4"),
    ("sample_rate", "<u4"),
    ("kind", "u1"),  # parse.KIND_*: what the payload prefix is
    ("method", "u1"),  # index into parse.METHODS
    ("pflags", "u1"),  # parse.F_*: request line / headers / ClientHello cut short
    ("view", "u1"),  # which keying brought the row to this partition (VIEW_*)
    ("origin", "<i2"),  # string index: "host/interface" that captured the packet
    ("name", "<i4"),  # string index: Host header or TLS server name; -1 when none
    ("path", "<i4"),  # string index: request target without its query; -1 when none
    ("attack", "<u2"),  # ATTACK_* bits found in the payload prefix (alerts consumer)
    ("frag_flags", "u1"),
    ("rflags", "u1"),
    # a row may stand for several packets of one connection (usage.coalesce): their sums
    ("packets", "<u4"),  # wire packets (an egress GSO buffer's segments), scaled by sample_rate
    ("nbytes", "<u8"),  # wire bytes (each GSO segment with its headers), scaled by sample_rate
    ("syns", "<u4"),  # SYNs without ACK, scaled by sample_rate
    ("flags_or", "u1"),  # TCP flags of all of them, or-ed
    ("fh", "<u8"),  # flow_hash of the 5-tuple (computed once, in stage one)
    # conversations (featurize(answers=True)): the row is oriented client -> server whichever way
    # its packets went, and answer says they went from the server to the client
    ("answer", "u1"),
    ("status", "<u2"),  # an HTTP/1.x response's status code (0 otherwise)
    ("content_length", "<i4"),  # Content-Length of an HTTP/1.x request or response (-1: not in the prefix)
    ("ts_data", "<i8"),  # the first of the row's packets that carries payload: its ts_ns (0: none does)
    ("direction", "u1"),  # as the packet schema's: 0 received (ingress), 1 sent (egress)
    ("quoted_port", "<u2"),  # an ICMP port-unreachable's quoted destination port (0 otherwise)
], align=False)

VIEW_DST, VIEW_SRC = 0, 1
MAX_HEADERS = 256  # the most a wire packet's headers take (Ethernet, VLAN tags, IP with options, TCP)


def as_records(rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A structured array's rows as opaque records of the same bytes: numpy copies a structured
    array field by field, ten times slower than opaque records (bench/records.py)."""
    return rows.view(np.dtype((np.void, rows.dtype.itemsize)))


def take(rows: npt.NDArray[Any], index: npt.NDArray[Any] | slice) -> npt.NDArray[Any]:
    """rows[index] (an index or mask array), copied as whole records (see as_records)."""
    return as_records(rows)[index].view(rows.dtype)


REQUEST_KINDS = (KIND_HTTP1, KIND_H2_PREFACE, KIND_TLS_HELLO)
# kind -> bool tables (parse.KIND_* are small numbers): one lookup instead of np.isin's passes
_IS_REQUEST = np.isin(np.arange(16), REQUEST_KINDS)
_IS_HTTP1_OR_TLS = np.isin(np.arange(16), (KIND_HTTP1, KIND_TLS_HELLO))
_STARTS_RUN = np.isin(np.arange(16), (*REQUEST_KINDS, KIND_HTTP1_RESPONSE))
_ANSWER_BIT = np.uint64(1 << 63)
_EGRESS_BIT = np.uint64(1 << 62)


def _port_rank(port: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """How much a port looks like a client's: 0 for well-known ports (< 1024), 2 for the
    ephemeral range (>= 32768), 1 between."""
    p = port.astype(np.int64)
    return (p >= 1024).astype(np.int64) + (p >= 32768)


def answers_of(src: npt.NDArray[Any], dst: npt.NDArray[Any], sport: npt.NDArray[Any], dport: npt.NDArray[Any],
               proto: npt.NDArray[Any], flags: npt.NDArray[Any], kind: npt.NDArray[Any],
               ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
    """Which packets go from a server to its client (addresses as (n, 2) words); with each row's
    conversation hash (flow_hash of its endpoints in a fixed order) and whether that order is
    client -> server (then the hash is the flow hash of the oriented row too).

    A conversation's server is known from its packets in the batch that say so, the first of
    them deciding: a request (HTTP/1.x request line, TLS ClientHello, HTTP/2 preface) or a SYN
    goes to the server, an HTTP/1.x response or a SYN-ACK comes from it. A conversation none of
    whose packets say so is judged by its ports: the server's is the well-known one (< 1024),
    else the one outside the ephemeral range (< 32768), else the lower; equal ports: the
    destination is the server. Packets other than TCP and UDP are never answers."""
    m = len(sport)
    if m == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, np.uint64), np.zeros(0, dtype=bool)
    # the conversation's endpoints in a fixed order: lo, hi (by address words, then port)
    s0, s1, d0, d1 = src[:, 0], src[:, 1], dst[:, 0], dst[:, 1]
    src_hi = (s0 > d0) | ((s0 == d0) & ((s1 > d1) | ((s1 == d1) & (sport > dport))))
    lo = np.where(src_hi[:, None], dst, src)
    hi = np.where(src_hi[:, None], src, dst)
    lo_p = np.where(src_hi, dport, sport)
    hi_p = np.where(src_hi, sport, dport)
    conv = flow_hash(lo, hi, lo_p, hi_p, proto)
    # evidence: +1 the packet goes to the server, -1 it comes from it
    syn = (flags & (SYN | ACK)) == SYN
    synack = (flags & (SYN | ACK)) == (SYN | ACK)
    tcp = proto == PROTO_TCP
    to_server = _IS_REQUEST[kind] | (syn & tcp)
    from_server = (kind == KIND_HTTP1_RESPONSE) | (synack & tcp)
    # the heuristic: is the conversation's server its hi endpoint?
    rl, rh = _port_rank(lo_p), _port_rank(hi_p)
    server_hi = (rh < rl) | ((rh == rl) & (hi_p < lo_p)) | ((rh == rl) & (hi_p == lo_p) & ~src_hi)
    ev = np.flatnonzero(to_server | from_server)
    if len(ev):
        # the first evidence per conversation: server is hi when (to the server) == (dst is hi)
        ev_hi = np.where(to_server[ev], ~src_hi[ev], src_hi[ev])
        keys, first = np.unique(conv[ev], return_index=True)
        at = np.searchsorted(keys, conv)
        at[at == len(keys)] = 0
        known = keys[at] == conv
        server_hi = np.where(known, ev_hi[first][at], server_hi)
    # only TCP and UDP have ports to swap (ICMP's hold type and code)
    ported = (proto == PROTO_TCP) | (proto == PROTO_UDP)
    answer = np.asarray((src_hi == server_hi) & ported, dtype=bool)
    # the oriented row is (lo -> hi) where the server is hi; unported rows stay as they are
    in_order = np.asarray(np.where(ported, server_hi, ~src_hi), dtype=bool)
    return answer, conv, in_order


@dataclass
class Features:
    rows: npt.NDArray[Any]
    strings: list[str] = field(default_factory=list)

    def text(self, idx: int) -> str:
        return self.strings[idx] if 0 <= idx < len(self.strings) else ""


class StringTable:
    """Strings kept once, numbered in the order they come. A state's table may drop strings nothing
    refers to any more (``drop``): their numbers are given out again, the others keep theirs."""

    def __init__(self, items: list[str] | None = None, free: list[int] | None = None) -> None:
        self.items: list[str] = list(items or [])
        self.free: list[int] = sorted({i for i in free or [] if 0 <= i < len(self.items)}, reverse=True)
        gone = set(self.free)
        self.index: dict[str, int] = {s: i for i, s in enumerate(self.items) if i not in gone}

    def __len__(self) -> int:
        return len(self.items) - len(self.free)

    def add(self, s: str) -> int:
        i = self.index.get(s)
        if i is None:
            if self.free:  # a dropped string's number (the lowest first)
                i = self.free.pop()
                self.items[i] = s
            else:
                i = len(self.items)
                self.items.append(s)
            self.index[s] = i
        return i

    def drop(self, keep: npt.NDArray[np.bool_]) -> int:
        """The strings whose numbers ``keep`` (a mask as long as ``items``) does not mark are dropped;
        returns how many."""
        gone = [i for i in np.flatnonzero(~keep[: len(self.items)]).tolist() if self.items[i] in self.index
                and self.index[self.items[i]] == i]
        for i in gone:
            del self.index[self.items[i]]
            self.items[i] = ""
        if gone:
            self.free = sorted({*self.free, *gone}, reverse=True)
        return len(gone)


def addr_words(col: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    """(n, 16) address bytes to (n, 2) words: a view when each row's 16 bytes are contiguous
    (a column of the decoder's fixed-size matrix), else a copy."""
    if col.dtype == np.uint8 and col.ndim == 2 and col.shape[1] == 16 and col.strides[1] == 1:
        return col.view("<u8")
    return np.ascontiguousarray(col, dtype=np.uint8).view("<u8").reshape(-1, 2)


def words_bytes(w: npt.NDArray[Any]) -> bytes:
    return np.ascontiguousarray(w, dtype="<u8").tobytes()


def flow_hash(src: npt.NDArray[Any], dst: npt.NDArray[Any], sport: npt.NDArray[Any], dport: npt.NDArray[Any],
              proto: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    """A 64-bit hash of each row's 5-tuple (addresses as (n, 2) words)."""
    with np.errstate(over="ignore"):
        a = addr_hash(src)
        b = addr_hash(dst)
        ports = (sport.astype(np.uint64) << np.uint64(24)) | (dport.astype(np.uint64) << np.uint64(8)) \
            | proto.astype(np.uint64)
        return np.asarray(a * np.uint64(0x9E3779B97F4A7C15) ^ b ^ (ports * np.uint64(0xC2B2AE3D27D4EB4F)),
                          dtype=np.uint64)


def flow_order(fh: npt.NDArray[np.uint64]) -> npt.NDArray[np.intp]:
    """Rows sorted by flow, each flow's rows in their original order (the index in the low bits
    of the key makes a plain sort keep it); flows are the top 44 bits of the hash."""
    n = len(fh)
    if n < (1 << 20):
        return np.argsort((fh & ~np.uint64(0xFFFFF)) | np.arange(n, dtype=np.uint64))
    return np.argsort(fh >> np.uint64(20), kind="stable")


def featurize(batch: Batch, origin: str, attack_scan: Any = None, transport_only: bool = False,
              coalesce_ns: int = 0, keep_apart: Any = None, answers: bool = False, egress: bool = False) -> Features:
    """One packet container's records as feature rows (the strings they need included).

    ``transport_only`` keeps TCP and UDP over IP. ``coalesce_ns`` > 0 folds each run of one
    connection's packets that starts at a request (or at the connection's first packet in the
    batch) and stays within one window of that length into one row: the first packet's fields,
    packets, bytes and SYNs summed, flags or-ed; ``keep_apart(tcp_flags, protocol)`` (nonzero:
    keep apart) names packets that stay rows of their own. ``attack_scan`` ((payloads, lengths) ->
    attack bits per row) marks HTTP request payloads; it is given each distinct prefix once.

    ``answers``: packets of both directions become rows of their conversation, each oriented
    client -> server (source and destination swapped for the server's packets, which have
    ``answer`` set; see answers_of), so that both directions share one flow hash; runs fold
    one direction's packets, a SYN or SYN-ACK starts a run (a reused port's next connection), and
    the rows are in capture order of their first packets. ``egress``: a host's egress records are
    rows too, as they are (``direction`` 1). With neither, a host's egress records are left out."""
    n = batch.n
    c = batch.columns
    strings = StringTable()
    o = strings.add(origin)
    if n == 0:
        return Features(np.zeros(0, dtype=FEATURE_DTYPE), strings.items)
    sel: npt.NDArray[np.intp] | None = None
    wanted: npt.NDArray[np.bool_] | None = None
    direction = c.get("direction")
    if not answers and not egress and direction is not None and direction.any():
        # the answers a host sends (egress records) are not features yet: requests, scans and
        # floods are judged on what arrives
        wanted = direction == 0
    if transport_only:
        proto_all = c["protocol"]
        transport = ((proto_all == PROTO_TCP) | (proto_all == PROTO_UDP)) & (c["ip_version"] > 0)
        wanted = transport if wanted is None else wanted & transport
    if wanted is not None and not wanted.all():  # most batches are all TCP and UDP: no copy then
        sel = np.flatnonzero(wanted)

    def col(name: str) -> npt.NDArray[Any]:
        return c[name] if sel is None else c[name][sel]

    ts = col("ts_ns")
    m = len(ts)
    src = addr_words(col("src_addr"))
    dst = addr_words(col("dst_addr"))
    sport, dport, proto = col("src_port"), col("dst_port"), col("protocol")
    rate = np.maximum(col("sample_rate"), 1).astype(np.uint32)
    flags = col("tcp_flags")
    wire_len = np.maximum(col("wire_len").astype(np.int64), 0)
    wire = wire_len.astype(np.uint64)
    segments = c.get("segments")
    if segments is not None and (segments > 1).any():
        # an egress GSO buffer: ``segs`` wire packets, each with the headers its record shows once
        # (their length: the frame's less its payload, where the payload length describes the buffer;
        # BIG TCP's buffers say 0 or the 16-bit field's limit, and then only the buffer's bytes count)
        segs = np.clip(col("segments"), 1, 0xFFFF).astype(np.uint64)
        plen = col("payload_len").astype(np.int64)
        hdr = wire_len - plen
        hdr = np.where((plen > 0) & (plen < 0xFFFF) & (hdr > 0), np.minimum(hdr, MAX_HEADERS), 0).astype(np.uint64)
        wire = wire + (segs - np.uint64(1)) * hdr
        pkts = np.minimum(rate.astype(np.uint64) * segs, 0xFFFFFFFF).astype(np.uint32)
    else:
        pkts = rate
    nbytes = wire * rate
    syns = np.where((flags & (SYN | ACK)) == SYN, rate, 0).astype(np.uint32)  # SYN without ACK
    payload = c.get("payload")
    has_payload = payload is not None and payload.shape[1] > 0 and m > 0
    if has_payload:
        assert payload is not None
        pay = payload if sel is None else payload[sel]
        plen = col("payload__len")
        parsed = parse_payloads(pay, plen)
    else:
        parsed = np.zeros((m, 10), dtype=np.int32)
    kind = parsed[:, KIND]
    idx: npt.NDArray[np.intp] = np.arange(m)
    packets = pkts
    flags_or = flags
    answer: npt.NDArray[np.bool_] | None = None
    fh: npt.NDArray[np.uint64] | None = None
    if answers and m:
        answer, conv, in_order = answers_of(src, dst, sport, dport, proto, flags, kind)
        if answer.any():
            src, dst = np.where(answer[:, None], dst, src), np.where(answer[:, None], src, dst)
            sport, dport = np.where(answer, dport, sport), np.where(answer, sport, dport)
        # the flow hash of the oriented rows: the conversation's where it is ordered client -> server
        fh = conv
        other = np.flatnonzero(~in_order)
        if len(other):
            fh[other] = flow_hash(src[other], dst[other], sport[other], dport[other], proto[other])
    data_ts = np.where(col("payload_len") > 0, ts, 0) if answers else None
    if fh is None:
        fh = flow_hash(src, dst, sport, dport, proto) if m else np.zeros(0, np.uint64)
    if coalesce_ns and m:
        key = fh if answer is None else fh ^ np.where(answer, _ANSWER_BIT, np.uint64(0))
        # a packet a host forwards back out of the link it came in on (a hairpin) is seen arriving and
        # leaving: its two records never fold into one row (the row would have one direction)
        dirs = col("direction") if direction is not None else None
        leaving = dirs != 0 if dirs is not None and dirs.any() and not dirs.all() else None
        if leaving is not None:
            key = key ^ np.where(leaving, _EGRESS_BIT, np.uint64(0))
        order = flow_order(key)
        fs = fh[order] >> np.uint64(20)
        w = ts[order] // coalesce_ns
        new = np.empty(m, dtype=bool)
        new[0] = True
        new[1:] = (fs[1:] != fs[:-1]) | (w[1:] != w[:-1]) | _STARTS_RUN[kind[order][1:]]
        if leaving is not None:
            e_s = leaving[order]
            new[1:] |= e_s[1:] != e_s[:-1]
        if answer is not None:
            a_s = answer[order]
            new[1:] |= a_s[1:] != a_s[:-1]
            # a SYN or SYN-ACK after other packets opens a connection: a port reused by the next one must
            # not fold into the last one's request or answer (repeated SYNs, a flood's, stay one row)
            hs = (flags[order] & SYN) != 0
            new[1:] |= hs[1:] & ~hs[:-1]
        if keep_apart is not None:
            odd = np.asarray(keep_apart(flags, proto))[order] != 0
            new[1:] |= odd[1:] | odd[:-1]
        starts = np.flatnonzero(new)
        idx = order[starts]
        packets = np.add.reduceat(pkts[order], starts)
        nbytes = np.add.reduceat(nbytes[order], starts)
        syns = np.add.reduceat(syns[order], starts)
        flags_or = np.bitwise_or.reduceat(flags[order], starts)
        if data_ts is not None:  # the earliest packet with payload: 0 (none) must not win
            big = np.iinfo(np.int64).max
            first_data = np.minimum.reduceat(np.where(data_ts[order] > 0, data_ts[order], big), starts)
            data_ts = np.where(first_data == big, 0, first_data)
        if answer is not None:
            # the runs in capture order (of their first packets), both directions interleaved: a
            # connection's answer run then comes before the next connection's on a reused port
            back = np.argsort(idx, kind="stable")
            idx, packets, nbytes, syns, flags_or = idx[back], packets[back], nbytes[back], syns[back], flags_or[back]
            if data_ts is not None:
                data_ts = data_ts[back]
    elif data_ts is not None:
        data_ts = data_ts[idx]
    k = len(idx)
    rows = np.zeros(k, dtype=FEATURE_DTYPE)
    rows["origin"] = o
    rows["name"] = -1
    rows["path"] = -1
    rows["ts_ns"] = ts[idx]
    rows["src_addr"] = src[idx]
    rows["dst_addr"] = dst[idx]
    rows["src_port"] = sport[idx]
    rows["dst_port"] = dport[idx]
    rows["protocol"] = proto[idx]
    rows["ip_version"] = col("ip_version")[idx]
    rows["tcp_flags"] = flags[idx]
    rows["ttl"] = col("ttl")[idx]
    rows["wire_len"] = col("wire_len")[idx]
    rows["sample_rate"] = rate[idx]
    rows["frag_flags"] = col("frag_flags")[idx]
    rows["rflags"] = col("flags")[idx] & 0xFF
    rows["packets"] = packets
    rows["nbytes"] = nbytes
    rows["syns"] = syns
    rows["flags_or"] = flags_or
    rows["fh"] = fh[idx]
    if direction is not None:
        rows["direction"] = col("direction")[idx]
    if answer is not None:
        rows["answer"] = answer[idx]
    if data_ts is not None:
        rows["ts_data"] = data_ts
    rows["content_length"] = -1
    if not has_payload:
        return Features(rows, strings.items)
    _quoted_ports(rows, idx, proto, sport, dport, pay, plen)
    pk = parsed[idx]
    rows["kind"] = pk[:, KIND]
    rows["method"] = pk[:, METHOD]
    rows["pflags"] = pk[:, PFLAGS]
    rows["status"] = pk[:, STATUS]
    http = (pk[:, KIND] == KIND_HTTP1) | (pk[:, KIND] == KIND_HTTP1_RESPONSE)
    rows["content_length"] = np.where(http, pk[:, CONTENT_LENGTH], -1)
    req = np.flatnonzero(_IS_HTTP1_OR_TLS[pk[:, KIND]])
    if req.size == 0:
        return Features(rows, strings.items)
    # identical prefixes (the same request again) are read once: group request rows by a hash
    # of their payload bytes
    src_rows = idx[req]  # rows of pay / plen / parsed
    plen_r = plen[src_rows]
    pw = pay[src_rows]
    if pw.shape[1] % 8:
        pw = np.pad(pw, ((0, 0), (0, 8 - pw.shape[1] % 8)))
    words = np.ascontiguousarray(pw).view("<u8")
    with np.errstate(over="ignore"):
        h = plen_r.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        for j in range(words.shape[1]):
            h = (h ^ words[:, j]) * np.uint64(0x100000001B3)
            h ^= h >> np.uint64(31)
    _u, first, inv = np.unique(h, return_index=True, return_inverse=True)
    u_name = np.full(len(first), -1, dtype=np.int32)
    u_path = np.full(len(first), -1, dtype=np.int32)
    u_attack = np.zeros(len(first), dtype=np.uint16)
    # one bytes object for the distinct rows, sliced in Python; hosts repeat: each is read once
    ui = src_rows[first]
    width = pay.shape[1]
    blob = np.ascontiguousarray(pay[ui]).tobytes()
    pu = parsed[ui]
    hosts: dict[bytes, int] = {}
    for j, (ho, hl, po, pl) in enumerate(zip(
            pu[:, HOST_OFF].tolist(), pu[:, HOST_LEN].tolist(), pu[:, PATH_OFF].tolist(), pu[:, PATH_LEN].tolist(),
            strict=True)):
        base = j * width
        if hl > 0:
            hb = blob[base + ho : base + ho + hl]
            hi = hosts.get(hb)
            if hi is None:
                host = hb.decode("latin-1").lower()
                if ":" in host and not host.startswith("["):
                    host = host.rsplit(":", 1)[0]
                hi = hosts[hb] = strings.add(host)
            u_name[j] = hi
        if pl > 0:
            target = blob[base + po : base + po + pl]
            q = target.find(b"?")
            u_path[j] = strings.add((target if q < 0 else target[:q]).decode("latin-1"))
    if attack_scan is not None:
        http = np.flatnonzero(pu[:, KIND] == KIND_HTTP1)
        if len(http):
            u_attack[http] = attack_scan(pay[ui[http]], plen[ui[http]])
    inv = inv.ravel()
    rows["name"][req] = u_name[inv]
    rows["path"][req] = u_path[inv]
    rows["attack"][req] = u_attack[inv]
    return Features(rows, strings.items)


def _quoted_ports(rows: npt.NDArray[Any], idx: npt.NDArray[np.intp], proto: npt.NDArray[Any],
                  itype: npt.NDArray[Any], icode: npt.NDArray[Any], pay: npt.NDArray[np.uint8],
                  plen: npt.NDArray[Any]) -> None:
    """ICMP port unreachable (v4 type 3 code 3, v6 type 1 code 4; the record's src_port and dst_port
    hold type and code): the destination port of the datagram it quotes, from the payload prefix
    (the quoted IP header, then the transport header)."""
    unreach = ((proto == 1) & (itype == 3) & (icode == 3)) | ((proto == 58) & (itype == 1) & (icode == 4))
    sel = np.flatnonzero(unreach[idx])
    if len(sel) == 0 or pay.shape[1] < 4:
        return
    src = idx[sel]
    p = pay[src]
    v6 = proto[src] == 58
    ihl = np.where(v6, 40, (p[:, 0].astype(np.int64) & 0xF) * 4)
    ok = plen[src] >= ihl + 4
    at = np.minimum(ihl + 2, pay.shape[1] - 2)
    ok &= ihl + 4 <= pay.shape[1]
    r = np.arange(len(src))
    port = (p[r, at].astype(np.int64) << 8) | p[r, at + 1]
    rows["quoted_port"][sel[ok]] = port[ok]


def encode(f: Features) -> bytes:
    header = json.dumps({"v": VERSION, "n": len(f.rows), "strings": f.strings}, separators=(",", ":")).encode()
    body: Any = np.ascontiguousarray(f.rows).view(np.uint8)  # joined as a buffer: one copy of the rows
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, body])


def decode(value: bytes | None) -> Features:
    if not value or len(value) < 8 or value[:4] != MAGIC:
        raise DecodeError("not a pktstream feature batch (bad magic)")
    (hlen,) = struct.unpack_from("<I", value, 4)
    if 8 + hlen > len(value):
        raise DecodeError("feature batch header runs past the message")
    try:
        header = json.loads(value[8 : 8 + hlen])
        n = int(header["n"])
        strings = [str(s) for s in header["strings"]]
        version = int(header["v"])
    except (ValueError, KeyError, TypeError) as e:
        raise DecodeError(f"feature batch header unreadable: {e}") from None
    if version != VERSION:
        raise DecodeError(f"feature batch version {version} (this consumer reads {VERSION})")
    body = memoryview(value)[8 + hlen :]
    if n < 0 or len(body) != n * FEATURE_DTYPE.itemsize:
        raise DecodeError(f"feature batch claims {n} rows in {len(body)} bytes")
    rows = np.frombuffer(body, dtype=FEATURE_DTYPE, count=n)
    for k in ("origin", "name", "path"):  # string indices the consumers look up
        col = rows[k]
        if n and (int(col.min()) < -1 or int(col.max()) >= len(strings)):
            raise DecodeError(f"feature batch: {k} refers to a string it does not carry")
    return Features(rows, strings)


def compact(f: Features, inplace: bool = False) -> Features:
    """The batch with only the strings its rows point to (rows are renumbered in a copy, or in
    place when the caller owns them: ``inplace``)."""
    rows = f.rows
    ns = len(f.strings)
    seen = np.zeros(ns + 1, dtype=bool)  # the last slot takes index -1 (no string)
    for k in ("name", "path", "origin"):
        seen[rows[k]] = True
    used = np.flatnonzero(seen[:ns])
    if len(used) == ns:
        return f
    if not inplace:
        rows = rows.copy()
    remap = np.cumsum(seen, dtype=np.int32) - 1
    remap[ns] = -1
    for k in ("name", "path", "origin"):
        rows[k] = remap[rows[k]]
    return Features(rows, [f.strings[i] for i in used.tolist()])


def concat(fs: list[Features]) -> Features:
    """Several batches as one: rows appended, string tables merged (equal strings become one)."""
    if len(fs) == 1:
        return fs[0]
    index: dict[str, int] = {}
    strings: list[str] = []
    # the one copy (as opaque records); each batch's slice is renumbered in it
    out = np.concatenate([as_records(f.rows) for f in fs]).view(FEATURE_DTYPE)
    at = 0
    for f in fs:
        remap = np.empty(len(f.strings) + 1, dtype=np.int32)
        remap[-1] = -1  # index -1 (no string) stays -1
        for i, text in enumerate(f.strings):
            j = index.get(text)
            if j is None:
                j = index[text] = len(strings)
                strings.append(text)
            remap[i] = j
        rows = out[at : at + len(f.rows)]
        at += len(f.rows)
        for k in ("name", "path", "origin"):
            rows[k] = remap[rows[k]]
    return Features(out, strings)


def addr_hash(words: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    """A stable 64-bit hash of (n, 2) address words (splitmix64 of their xor-rotate)."""
    with np.errstate(over="ignore"):
        w = np.asarray(words, dtype=np.uint64)
        z: npt.NDArray[np.uint64] = w[:, 0] ^ ((w[:, 1] << np.uint64(17)) | (w[:, 1] >> np.uint64(47)))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return np.asarray(z ^ (z >> np.uint64(31)), dtype=np.uint64)


def mix(*cols: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    """A 64-bit key of several columns, for grouping with np.unique on one array instead of
    records; (n, 2) address-word columns are hashed first."""
    with np.errstate(over="ignore"):
        z = np.full(len(cols[0]), 0x84222325CBF29CE4, dtype=np.uint64)
        for c in cols:
            c = np.asarray(c)
            if c.ndim == 2:
                c = addr_hash(c)
            if c.dtype != np.uint64:
                c = (c if c.dtype == np.int64 else c.astype(np.int64)).view(np.uint64)
            z ^= c
            z *= np.uint64(0x100000001B3)
            z ^= z >> np.uint64(29)
        return z
