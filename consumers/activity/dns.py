"""DNS lookups for ``pktstream activity``: one OCSF 1.3.0 DNS Activity record (class 4003) per query
and its answer.

Stage one (``dns_rows``) reads the DNS message at the start of each payload prefix of port 53 (UDP,
and TCP segments that begin with a message's two-byte length: the first of each message) and makes
one row of it, oriented client -> server whatever its direction, keyed like its conversation (so a
query and its answer meet in one partition). The row's columns hold what the record needs (see
``dns_rows``); the question's name and the answers travel as strings.

Stage two (``pair``) keeps these rows until they are decided, judged by the packets' own times so
that a replay writes the same records:

- a query and the first answer to it (same conversation, same DNS id, not before it and within
  ``timeout``) are one record, Traffic (6), once the watermark passed the answer;
- a query nothing answered within ``timeout`` is a Query record (1), ``answered`` false;
- an answer to no query seen is a Response record (2) (the query was sampled out, or came before
  the capture);
- the same query again (same id) before it was answered is a retransmission: counted on the first.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from pktstream.consumers.engine import dns
from pktstream.consumers.engine.features import FEATURE_DTYPE, StringTable, addr_words, take
from pktstream.consumers.engine.runner import Output
from pktstream.schemas.columns import Batch
from pktstream.schemas.protocols import PROTO_TCP, PROTO_UDP

if TYPE_CHECKING:
    from pktstream.consumers.activity.processor import ActivityProcessor, ActivityState

DNS_PORT = 53
VIEW_DNS = 2  # a feature row's view: a DNS message (not a conversation's packets)
# a DNS row's pflags
DF_CUT, DF_TCP = 1, 2
SEC = 1_000_000_000

# what a DNS row's columns hold (FEATURE_DTYPE, reused):
#   answer        1: a response (QR), sent by the server
#   quoted_port   the DNS id
#   status        the header's flags (QR, opcode, AA, TC, RD, RA, AD, CD, rcode)
#   content_length the question's type; attack its class
#   syns          the header's answer count
#   name          the question's name (string); path the answers read, as JSON (string), -1 none
#   nbytes        the DNS message's length (the UDP payload, the TCP message without its length)
#   pflags        DF_CUT: the prefix ended before what the header counts; DF_TCP: over TCP


def dns_rows(batch: Batch, rows: npt.NDArray[Any], strings: StringTable) -> npt.NDArray[Any]:
    """One row per DNS message among a container's records (``rows``: its feature rows, one per record
    in the same order, as featurize(answers=True) makes them)."""
    c = batch.columns
    payload = c.get("payload")
    if payload is None or payload.shape[1] < 12 or batch.n == 0:
        return np.zeros(0, dtype=FEATURE_DTYPE)
    proto, sport, dport = c["protocol"], c["src_port"], c["dst_port"]
    cap = c["payload__len"]
    cand = np.flatnonzero(((proto == PROTO_UDP) | (proto == PROTO_TCP)) & ((sport == DNS_PORT) | (dport == DNS_PORT))
                          & (cap >= 12) & (c["ip_version"] > 0))
    if len(cand) == 0:
        return np.zeros(0, dtype=FEATURE_DTYPE)
    keep, msgs = [], []
    pay = payload[cand]
    caps = np.minimum(cap[cand], payload.shape[1]).tolist()
    tcps = (proto[cand] == PROTO_TCP).tolist()
    for j, (n, tcp) in enumerate(zip(caps, tcps, strict=True)):
        m = dns.parse(pay[j, :n].tobytes(), tcp)
        if m is not None:
            keep.append(j)
            msgs.append(m)
    if not keep:
        return np.zeros(0, dtype=FEATURE_DTYPE)
    idx = cand[keep]
    out = take(rows, idx)
    qr = np.fromiter((m.response for m in msgs), dtype=bool, count=len(msgs))
    src, dst = addr_words(c["src_addr"])[idx], addr_words(c["dst_addr"])[idx]
    out["src_addr"] = np.where(qr[:, None], dst, src)
    out["dst_addr"] = np.where(qr[:, None], src, dst)
    out["src_port"] = np.where(qr, dport[idx], sport[idx])
    out["dst_port"] = np.where(qr, sport[idx], dport[idx])
    out["answer"] = qr
    out["view"] = VIEW_DNS
    out["kind"] = 0
    out["quoted_port"] = [m.id for m in msgs]
    out["status"] = [m.flags for m in msgs]
    out["content_length"] = [m.qtype for m in msgs]
    out["attack"] = [m.qclass for m in msgs]
    out["syns"] = [m.ancount for m in msgs]
    out["name"] = [strings.add(m.qname) if m.qname else -1 for m in msgs]
    out["path"] = [strings.add(json.dumps(m.answers, separators=(",", ":"))) if m.answers else -1 for m in msgs]
    tcp_rows = proto[idx] == PROTO_TCP
    plen = c["payload_len"][idx].astype(np.int64)
    out["nbytes"] = np.maximum(np.where(tcp_rows, plen - 2, plen), 0)
    out["pflags"] = np.asarray([m.cut for m in msgs], dtype=np.uint8) * DF_CUT + tcp_rows.astype(np.uint8) * DF_TCP
    out["ts_data"] = out["ts_ns"]
    from pktstream.consumers.activity.processor import conversation_keys

    out["fh"] = conversation_keys(out)
    return out


def keep(proc: ActivityProcessor, st: ActivityState, rows: npt.NDArray[Any], strings: list[str],
         attr: str = "dns") -> None:
    """A batch's DNS (or HTTP: ``attr``) rows into the state's undecided ones: the strings their name
    and path number and their capture points renumbered as the state's."""
    late = rows["ts_ns"] < st.closed_until
    if late.any():
        st.late_records += int(late.sum())
        rows = take(rows, np.flatnonzero(~late))
    if len(rows) == 0:
        return
    rows = rows.copy()

    def text(i: int) -> str:
        return strings[i] if 0 <= i < len(strings) else ""

    for fld in ("name", "path"):
        ids = {i: (st.strings.add(text(i)) if text(i) else -1) for i in np.unique(rows[fld]).tolist() if i >= 0}
        rows[fld] = [ids.get(i, -1) for i in rows[fld].tolist()]
    bits = {i: st.origin_bit(text(i)) for i in np.unique(rows["origin"]).tolist()}
    rows["origin"] = [bits[i] for i in rows["origin"].tolist()]
    getattr(st, attr + "_new").append(rows)


def candidates(p: npt.NDArray[Any], limit: int) -> npt.NDArray[np.intp]:
    """The rows of the conversations that have a row stamped before ``limit``."""
    early = p["ts_ns"] < limit
    if early.all():
        return np.arange(len(p))
    if not early.any():
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(np.isin(p["fh"], np.unique(p["fh"][early])))


def pair(proc: ActivityProcessor, st: ActivityState, limit: int, final: bool) -> list[Output]:
    """The lookups decided by ``limit`` (event time; ``final``: everything) as records; the rest stay."""
    p = st.pending("dns")
    if len(p) == 0:
        return []
    timeout = proc.dns_timeout_ns
    # only the conversations with a row before the limit can have something decided
    cand = np.arange(len(p)) if final else candidates(p, limit)
    # (by conversation, id, time; a query before an answer stamped alike, whatever order they came in)
    order = cand[np.lexsort((p["answer"][cand], p["ts_ns"][cand], p["quoted_port"][cand], p["fh"][cand]))].tolist()
    fh, ident, ts, ans = p["fh"].tolist(), p["quoted_port"].tolist(), p["ts_ns"].tolist(), p["answer"].tolist()
    done = np.zeros(len(p), dtype=bool)
    found: list[tuple[int, int, int]] = []  # (query row or -1, answer row or -1, retransmissions)
    i = 0
    n = len(order)
    while i < n:
        j = i
        g = (fh[order[i]], ident[order[i]])
        while j < n and (fh[order[j]], ident[order[j]]) == g:
            j += 1
        q, extra = -1, list[int]()
        for r in order[i:j]:
            t = ts[r]
            if q >= 0 and t >= ts[q] + timeout:  # the open query went unanswered
                if not (final or ts[q] + timeout <= limit):
                    break
                found.append((q, -1, len(extra)))
                done[[q, *extra]] = True
                q, extra = -1, list[int]()
            if t >= limit and not final:
                break  # not decided yet (nor anything after it)
            if ans[r]:
                found.append((q, r, len(extra)))
                done[[r, *([q, *extra] if q >= 0 else [])]] = True
                q, extra = -1, list[int]()
            elif q >= 0:
                extra.append(r)
            else:
                q = r
        else:
            if q >= 0 and (final or ts[q] + timeout <= limit):
                found.append((q, -1, len(extra)))
                done[[q, *extra]] = True
        i = j
    evicted: set[int] = set()
    left = np.flatnonzero(~done)
    if len(left) > proc.max_dns_pending:
        # too many undecided: the oldest are written as they stand (marked evicted)
        old = left[np.argsort(p["ts_ns"][left], kind="stable")[: len(left) - proc.max_dns_pending]]
        for r in old.tolist():
            found.append((-1, r, 0) if ans[r] else (r, -1, 0))
            evicted.add(r)
        done[old] = True
        st.dns_evicted += len(old)
    if not found:
        return []
    cols = _Columns(p)
    out = [record(proc, st, cols, q, r, k, (q if q >= 0 else r) in evicted) for q, r, k in found]
    st.dns = take(p, np.flatnonzero(~done))
    st.dns_records += len(out)
    out.sort(key=lambda x: x[0])
    return [o for _t, o in out]


class _Columns:
    """The DNS rows' columns as Python lists (one conversion per close, not one per field read)."""

    def __init__(self, p: npt.NDArray[Any]) -> None:
        self.ts = p["ts_ns"].tolist()
        self.fh = p["fh"].tolist()
        self.ident = p["quoted_port"].tolist()
        self.flags = p["status"].tolist()
        self.qtype = p["content_length"].tolist()
        self.qclass = p["attack"].tolist()
        self.ancount = p["syns"].tolist()
        self.name = p["name"].tolist()
        self.path = p["path"].tolist()
        self.nbytes = p["nbytes"].tolist()
        self.pflags = p["pflags"].tolist()
        self.rate = p["sample_rate"].tolist()
        self.origin = p["origin"].tolist()
        self.sport = p["src_port"].tolist()
        self.dport = p["dst_port"].tolist()
        self.proto = p["protocol"].tolist()
        self.ipv = p["ip_version"].tolist()
        self.src = p["src_addr"]
        self.dst = p["dst_addr"]


def record(proc: ActivityProcessor, st: ActivityState, c: _Columns, q: int, r: int, retrans: int,
           evicted: bool) -> tuple[tuple[int, str], Output]:
    """One lookup's OCSF DNS Activity record: the query (row q, -1 none) and its answer (row r, -1 none).
    The JSON is written from the columns directly (what can hold any character goes through json.dumps)."""
    first = q if q >= 0 else r
    client, server = proc.endpoint(c.src[first]), proc.endpoint(c.dst[first])
    sport, dport, proto = c.sport[first], c.dport[first], c.proto[first]
    names = st.strings.items

    def s(i: int) -> str:
        return names[i] if 0 <= i < len(names) else ""

    activity = 6 if q >= 0 and r >= 0 else 1 if q >= 0 else 2
    act_name = _ACTIVITY[activity]
    qn = q if q >= 0 else r
    qname = s(c.name[qn])
    qname_j = json.dumps(qname)
    qtype = c.qtype[qn]
    opcode = dns.OPCODES.get((c.flags[qn] >> 11) & 0xF, dns.OTHER_OPCODE)
    t_first = c.ts[first]
    t_ms = t_first // 1_000_000
    ident = c.ident[qn]
    parts = [f'{{"activity_id":{activity},"activity_name":"{act_name}","category_uid":4,'
             f'"category_name":"Network Activity","class_uid":4003,"class_name":"DNS Activity",'
             f'"type_uid":{400300 + activity},"type_name":"DNS Activity: {act_name}","severity_id":1,'
             f'"severity":"Informational","time":{t_ms},"start_time":{t_ms},"timezone_offset":0']
    if qname and dns_hostname(qname):  # (OCSF's pattern: nothing in it to escape)
        parts.append(f',"query":{{"hostname":"{qname}","type":"{dns.type_name(qtype)}",'
                     f'"class":"{dns.class_name(c.qclass[qn])}","opcode":"{opcode[1]}","opcode_id":{opcode[0]},'
                     f'"packet_uid":{ident}}}')
    direction = proc.direction(client[2], server[2])
    v = 6 if c.ipv[first] == 6 else 4
    parts.append(f',"src_endpoint":{{"ip":"{client[0]}","port":{sport}}},'
                 f'"dst_endpoint":{{"ip":"{server[0]}","port":{dport}}},'
                 f'"connection_info":{{"protocol_num":{proto},'
                 f'"protocol_name":"{"tcp" if proto == PROTO_TCP else "udp"}",'
                 f'"protocol_ver_id":{v},"protocol_ver":"Internet Protocol version {v}",'
                 f'"direction_id":{direction[0]},"direction":"{direction[1]}"}}')
    p_out = p_in = b_out = b_in = 0
    cid = proc.community(client[1], server[1], proto, sport, dport)
    extra = []
    sampled = False
    origins = 0
    if q >= 0:
        parts.append(f',"query_time":{c.ts[q] // 1_000_000}')
        p_out, b_out = 1 + retrans, c.nbytes[q]
        sampled |= c.rate[q] > 1
        origins |= 1 << c.origin[q]
        if retrans:
            extra.append(f',"retransmissions":{retrans}')
    if r >= 0:
        t_r = c.ts[r]
        rf = c.flags[r]
        rc = dns.RCODES.get(rf & 0xF, dns.UNASSIGNED_RCODE)
        parts.append(f',"rcode_id":{rc[0]},"rcode":"{rc[1]}","response_time":{t_r // 1_000_000},'
                     f'"end_time":{t_r // 1_000_000}')
        p_in, b_in = 1, c.nbytes[r]
        sampled |= c.rate[r] > 1
        origins |= 1 << c.origin[r]
        raw = s(c.path[r])
        n_answers = 0
        if raw:
            fl = _FLAGS.get(rf & 0x07B0)
            if fl is None:
                fids = [(fid, cap) for bit, fid, cap in dns.FLAGS if rf & bit]
                fl = _FLAGS[rf & 0x07B0] = (f',"flag_ids":{json.dumps([f for f, _c in fids])},'
                                            f'"flags":{json.dumps([cp for _f, cp in fids])}' if fids else "")
            uid16 = c.ident[r]
            answers = [f'{{"rdata":{json.dumps(data)},"type":"{dns.type_name(a_type)}",'
                       f'"class":"{dns.class_name(a_class)}","ttl":{ttl},"packet_uid":{uid16}{fl}}}'
                       for a_type, a_class, ttl, data in json.loads(raw)]
            n_answers = len(answers)
            parts.append(f',"answers":[{",".join(answers)}]')
        extra.append(f',"answer_count":{c.ancount[r]}')
        if c.pflags[r] & DF_CUT or n_answers < c.ancount[r]:
            extra.append(',"answers_cut":true')
        if q >= 0:
            lat = t_r - c.ts[q]
            parts.append(f',"duration":{lat // 1_000_000}')
            extra.append(f',"latency_us":{lat // 1000}')
    else:
        parts.append(f',"end_time":{t_ms}')
    uid = f"{c.fh[first]:016x}{t_first & 0xFFFFFFFFFFFFFFFF:016x}{ident:04x}{activity}"
    seen = [o for i, o in enumerate(st.origins) if origins >> i & 1]
    if origins >> 63 & 1:
        seen.append("(more)")
    if evicted:
        extra.append(',"evicted":true')
    parts.append(f',"traffic":{{"packets_out":{p_out},"packets_in":{p_in},"bytes_out":{b_out},"bytes_in":{b_in},'
                 f'"packets":{p_out + p_in},"bytes":{b_out + b_in}}},'
                 f'"metadata":{{"version":"1.3.0","product":{{"name":"pktstream","vendor_name":"pktstream",'
                 f'"version":{json.dumps(proc.product_version)},"feature":{{"name":"activity"}}}},'
                 f'"log_provider":"pktstream","log_name":"pktstream.dns","uid":"{uid}"}},'
                 f'"unmapped":{{"pktstream":{{"community_id":"{cid}","query_name":{qname_j},"query_type":{qtype},'
                 f'"query_type_name":"{dns.type_name(qtype)}","dns_id":{ident},'
                 f'"answered":{"true" if r >= 0 else "false"},"seen_by":{json.dumps(seen)},'
                 f'"sampled":{"true" if sampled else "false"},"tcp":{"true" if proto == PROTO_TCP else "false"}'
                 f'{"".join(extra)}}}}}}}')
    return (t_first, uid), Output(proc.dns_topic, (cid or uid).encode(), "".join(parts).encode(), [])


_ACTIVITY = {1: "Query", 2: "Response", 6: "Traffic"}
_FLAGS: dict[int, str] = {}  # the header's flag bits -> the answers' flag_ids and flags (JSON)


def dns_hostname(name: str) -> bool:
    """Whether a name is a host name by OCSF 1.3.0's pattern (dns_query.hostname's)."""
    return _HOSTNAME.fullmatch(name) is not None


_HOSTNAME = re.compile(r"(?=.{1,253}\Z)(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9])\.)*"
                       r"([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9\-]*[A-Za-z0-9])")
