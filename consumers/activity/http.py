"""HTTP exchanges for ``pktstream activity``: one OCSF 1.3.0 HTTP Activity record (class 4002) per
HTTP/1.x request and its answer.

Stage one (``http_rows``) makes one row of each packet whose payload prefix begins an HTTP/1.x
request line or status line (what ``parse_payloads`` reads: method, Host, target, status code,
Content-Length), oriented client -> server and keyed like its conversation, with the User-Agent the
prefix holds. Stage two (``pair``) pairs them per conversation in order, as HTTP/1.1 does (keep-alive
and pipelining alike: the n-th answer is the n-th request's), judged by the packets' own times so that
a replay writes the same records:

- a request and its answer (the next status line from the server after it; 1xx interim answers but
  101 are not answers) are one record, once the watermark passed the answer;
- a request nothing answered within ``timeout`` is written unanswered (``http_response.code`` 0,
  ``unmapped.pktstream.answered`` false);
- an answer to no request seen (the request line cut, sampled out, or sent before the capture) is a
  record of its own, activity Unknown.

The path is what the request target holds before its query, with credentials and personal data
replaced as the alerts' evidence shows them (``parse.redact_path``); the query string is not kept.
"""

from __future__ import annotations

import json
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from pktstream.consumers.activity.dns import _HOSTNAME, candidates
from pktstream.consumers.engine.features import FEATURE_DTYPE, StringTable, take
from pktstream.consumers.engine.parse import (
    F_LINE_CUT,
    KIND_HTTP1,
    KIND_HTTP1_RESPONSE,
    METHODS,
    redact_path,
)
from pktstream.consumers.engine.runner import Output
from pktstream.schemas.columns import Batch
from pktstream.schemas.protocols import PROTO_TCP

if TYPE_CHECKING:
    from pktstream.consumers.activity.processor import ActivityProcessor, ActivityState

VIEW_HTTP = 3  # a feature row's view: an HTTP/1.x request or status line
MAX_USER_AGENT = 256
# OCSF 1.3.0 HTTP Activity: activity by method (PATCH and others: Other, the method as the name)
ACTIVITIES = {"CONNECT": (1, "Connect"), "DELETE": (2, "Delete"), "GET": (3, "Get"), "HEAD": (4, "Head"),
              "OPTIONS": (5, "Options"), "POST": (6, "Post"), "PUT": (7, "Put"), "TRACE": (8, "Trace")}

# what an HTTP row's columns hold (FEATURE_DTYPE, reused):
#   answer   1: a status line, sent by the server
#   method   index into parse.METHODS (requests); status the status code (answers)
#   name     the Host header (string)
#   path     the target before its query, and after a line feed the User-Agent when the prefix holds
#            it (one string: the engine's batches renumber strings in name and path only)
#   content_length  the Content-Length the prefix holds (-1 none)
#   syns     a request's prefix, hashed (CRC-32): a TCP retransmission repeats it byte for byte
#   pflags   parse.F_*: F_LINE_CUT the request line was cut by the prefix


def http_rows(batch: Batch, rows: npt.NDArray[Any], strings: StringTable) -> npt.NDArray[Any]:
    """One row per HTTP/1.x request or status line among a container's records (``rows``: its
    feature rows, one per record in the same order, as featurize(answers=True) makes them)."""
    kind = rows["kind"]
    sel = np.flatnonzero(((kind == KIND_HTTP1) | (kind == KIND_HTTP1_RESPONSE)) & (rows["protocol"] == PROTO_TCP)
                         & (rows["ip_version"] > 0))
    if len(sel) == 0:
        return np.zeros(0, dtype=FEATURE_DTYPE)
    from pktstream.consumers.activity.processor import conversation_keys

    out = take(rows, sel)
    out["view"] = VIEW_HTTP
    out["answer"] = kind[sel] == KIND_HTTP1_RESPONSE
    out["syns"] = 0
    out["packets"] = 0
    out["nbytes"] = 0
    out["fh"] = conversation_keys(out)
    payload = batch.columns.get("payload")
    req = np.flatnonzero(kind[sel] == KIND_HTTP1)
    if payload is not None and payload.shape[1] and len(req):
        cap = batch.columns["payload__len"]
        seen: dict[tuple[bytes, int], int] = {}
        path = out["path"]
        items = strings.items
        crc = out["syns"]
        for j, i in zip(req.tolist(), sel[req].tolist(), strict=True):
            raw = payload[i, : min(int(cap[i]), payload.shape[1])].tobytes()
            k = (raw, int(path[j]))
            got = seen.get(k)
            if got is None:
                ua = _user_agent(raw)
                got = seen[k] = strings.add(f"{items[k[1]] if k[1] >= 0 else ''}\n{ua}") if ua else k[1]
            path[j] = got
            crc[j] = zlib.crc32(raw)
    return out


def _user_agent(raw: bytes) -> str:
    """The User-Agent header's value in a request prefix ("": none, or cut by the prefix)."""
    ends = [e for e in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if e >= 0]
    head = raw[: min(ends)] + b"\n" if ends else raw  # the headers (not a body that quotes one)
    at = head.lower().find(b"\nuser-agent:")
    if at < 0:
        return ""
    start = at + len(b"\nuser-agent:")
    end = head.find(b"\n", start)
    if end < 0:
        return ""  # cut by the prefix: not the whole value
    return head[start:end].strip().decode("latin-1")[:MAX_USER_AGENT]


def pair(proc: ActivityProcessor, st: ActivityState, limit: int, final: bool) -> list[Output]:
    """The exchanges decided by ``limit`` (event time; ``final``: everything) as records; the rest stay."""
    p = st.pending("http")
    if len(p) == 0:
        return []
    timeout = proc.http_timeout_ns
    cand = np.arange(len(p)) if final else candidates(p, limit)  # (conversations with a row before the limit)
    # (a request before an answer stamped alike)
    order = cand[np.lexsort((p["answer"][cand], p["ts_ns"][cand], p["fh"][cand]))].tolist()
    fh, ts, ans, status = p["fh"].tolist(), p["ts_ns"].tolist(), p["answer"].tolist(), p["status"].tolist()
    # what makes two requests the same (a TCP retransmission of the first): the prefix's bytes (their
    # CRC-32: query strings too), method, Host, target and user agent, Content-Length
    same = list(zip(p["syns"].tolist(), p["method"].tolist(), p["name"].tolist(), p["path"].tolist(),
                    p["content_length"].tolist(), strict=True))
    done = np.zeros(len(p), dtype=bool)
    found: list[tuple[int, int, int]] = []  # (request row or -1, answer row or -1, retransmissions)
    i, n = 0, len(order)
    again: dict[int, list[int]] = {}  # a queued request -> its retransmissions

    def settle(q: int, r: int) -> None:
        extra = again.pop(q, []) if q >= 0 else []
        found.append((q, r, len(extra)))
        for x in (q, r, *extra):
            if x >= 0:
                done[x] = True

    while i < n:
        j = i
        while j < n and fh[order[j]] == fh[order[i]]:
            j += 1
        queue: list[int] = []
        again.clear()
        for r in order[i:j]:
            t = ts[r]
            stop = False
            while queue and t >= ts[queue[0]] + timeout:  # the oldest request went unanswered
                if not (final or ts[queue[0]] + timeout <= limit):
                    stop = True
                    break
                settle(queue.pop(0), -1)
            if stop or (t >= limit and not final):
                break  # not decided yet (nor anything after it)
            if not ans[r]:
                if queue and same[r] == same[queue[-1]]:
                    again.setdefault(queue[-1], []).append(r)  # the same request again, still unanswered
                else:
                    queue.append(r)
                continue
            if 100 <= status[r] < 200 and status[r] != 101:
                done[r] = True  # an interim answer (100 Continue, 103 Early Hints): the request still waits
                continue
            settle(queue.pop(0) if queue else -1, r)
        else:
            while queue and (final or ts[queue[0]] + timeout <= limit):
                settle(queue.pop(0), -1)
        i = j
    evicted: set[int] = set()
    left = np.flatnonzero(~done)
    if len(left) > proc.max_http_pending:
        old = left[np.argsort(p["ts_ns"][left], kind="stable")[: len(left) - proc.max_http_pending]]
        for r in old.tolist():
            found.append((-1, r, 0) if ans[r] else (r, -1, 0))
            evicted.add(r)
        done[old] = True
        st.http_evicted += len(old)
    if not found:
        return []
    cols = _Columns(p)
    out = [record(proc, st, cols, q, r, (q if q >= 0 else r) in evicted, k) for q, r, k in found]
    st.http = take(p, np.flatnonzero(~done))
    st.http_records += len(out)
    out.sort(key=lambda x: x[0])
    return [o for _k, o in out]


class _Columns:
    def __init__(self, p: npt.NDArray[Any]) -> None:
        self.ts = p["ts_ns"].tolist()
        self.fh = p["fh"].tolist()
        self.method = p["method"].tolist()
        self.status = p["status"].tolist()
        self.name = p["name"].tolist()
        self.path = p["path"].tolist()
        self.length = p["content_length"].tolist()
        self.pflags = p["pflags"].tolist()
        self.rate = p["sample_rate"].tolist()
        self.origin = p["origin"].tolist()
        self.sport = p["src_port"].tolist()
        self.dport = p["dst_port"].tolist()
        self.ipv = p["ip_version"].tolist()
        self.src = p["src_addr"]
        self.dst = p["dst_addr"]


def js(text: str) -> str:
    """A string as JSON, from a bounded cache (hosts, paths, API names and user agents repeat)."""
    out = _JS.get(text)
    if out is None:
        if len(_JS) >= 100_000:
            _JS.clear()
        out = _JS[text] = json.dumps(text)
    return out


_JS: dict[str, str] = {}


def record(proc: ActivityProcessor, st: ActivityState, c: _Columns, q: int, r: int,
           evicted: bool, retrans: int = 0) -> tuple[tuple[int, str], Output]:
    """One exchange's OCSF HTTP Activity record: the request (row q, -1 none) and its answer (row r, -1 none)."""
    first = q if q >= 0 else r
    client, server = proc.endpoint(c.src[first]), proc.endpoint(c.dst[first])
    sport, dport = c.sport[first], c.dport[first]
    names = st.strings.items
    nn = len(names)
    t_first = c.ts[first]
    t_ms = t_first // 1_000_000
    extra = ""
    sampled = False
    origins = 0
    end_ms = t_ms
    if q >= 0:
        mi = c.method[q]
        method = METHODS[mi] if mi < len(METHODS) else ""
        activity = ACTIVITIES.get(method) or (99, method.capitalize() or "Other")
        hi, pi = c.name[q], c.path[q]
        host = names[hi] if 0 <= hi < nn else ""
        raw_path, _, agent = (names[pi] if 0 <= pi < nn else "").partition("\n")
        cut = bool(c.pflags[q] & F_LINE_CUT)
        api = ""
        if method:
            addr16 = c.dst[first].tobytes()
            api = proc.catalog.match(host, addr16, dport, method, raw_path, "http", partial=cut).name
        req = f'"http_method":"{method}",' if method in ACTIVITIES else ""
        if not cut and (raw_path or host):  # (a cut target could end inside a secret redaction cannot see)
            hn = f',"hostname":"{host}"' if host and _HOSTNAME.fullmatch(host) else ""
            path_j = js(redact_path(raw_path) if raw_path else "/")
            req += f'"url":{{"path":{path_j},"port":{dport},"scheme":"http"{hn}}},'
        if agent:
            req += f'"user_agent":{js(agent)},'
        if c.length[q] >= 0:
            req += f'"length":{c.length[q]},'
        req = req[:-1]
        sampled |= c.rate[q] > 1
        origins |= 1 << c.origin[q]
        if cut:
            extra += ',"request_line_cut":true'
        if retrans:
            extra += f',"retransmissions":{retrans}'
    else:
        method, host, api, req = "", "", "", ""
        activity = (0, "Unknown")
    if r >= 0:
        resp = f'"code":{c.status[r]}'
        if c.length[r] >= 0:
            resp += f',"length":{c.length[r]}'
        sampled |= c.rate[r] > 1
        origins |= 1 << c.origin[r]
        end_ms = c.ts[r] // 1_000_000
    else:
        resp = '"code":0,"message":"no answer within the timeout"'
    timing = ""
    if q >= 0 and r >= 0:
        lat = c.ts[r] - c.ts[q]
        resp += f',"latency":{lat // 1_000_000}'
        timing = f',"duration":{lat // 1_000_000}'
        extra += f',"latency_us":{lat // 1000}'
    if evicted:
        extra += ',"evicted":true'
    direction = proc.direction(client[2], server[2])
    v = 6 if c.ipv[first] == 6 else 4
    cid = proc.community(client[1], server[1], PROTO_TCP, sport, dport)
    uid = f"{c.fh[first]:016x}{t_first & 0xFFFFFFFFFFFFFFFF:016x}{'q' if q >= 0 else 'r'}"
    seen = seen_by(st, origins)
    act_id, act_name = activity
    doc = (
        f'{{"activity_id":{act_id},"activity_name":{js(act_name)},"category_uid":4,'
        f'"category_name":"Network Activity","class_uid":4002,"class_name":"HTTP Activity",'
        f'"type_uid":{400200 + act_id},"type_name":{js("HTTP Activity: " + act_name)},'
        f'"severity_id":1,"severity":"Informational","time":{t_ms},"start_time":{t_ms},"end_time":{end_ms}'
        f'{timing},"timezone_offset":0,'
        f'"src_endpoint":{{"ip":"{client[0]}","port":{sport}}},"dst_endpoint":{{"ip":"{server[0]}","port":{dport}}},'
        f'"connection_info":{{"protocol_num":6,"protocol_name":"tcp","protocol_ver_id":{v},'
        f'"protocol_ver":"Internet Protocol version {v}","direction_id":{direction[0]},'
        f'"direction":"{direction[1]}"}},'
        f'"http_request":{{{req}}},"http_response":{{{resp}}},'
        f'"metadata":{{"version":"1.3.0","product":{{"name":"pktstream","vendor_name":"pktstream",'
        f'"version":{js(proc.product_version)},"feature":{{"name":"activity"}}}},'
        f'"log_provider":"pktstream","log_name":"pktstream.http","uid":"{uid}"}},'
        f'"unmapped":{{"pktstream":{{"community_id":"{cid}","api":{js(api)},"method":"{method}",'
        f'"host":{js(host)},"answered":{"true" if r >= 0 else "false"},"seen_by":{seen},'
        f'"sampled":{"true" if sampled else "false"}{extra}}}}}}}'
    )
    return (t_first, uid), Output(proc.http_topic, (cid or uid).encode(), doc.encode(), [])


def seen_by(st: ActivityState, origins: int) -> str:
    """The names of the capture points whose bits are set (the state's numbering), as JSON."""
    key = (origins, len(st.origins))
    out = st.seen_json.get(key)
    if out is None:
        names = [o for i, o in enumerate(st.origins) if origins >> i & 1]
        if origins >> 63 & 1:
            names.append("(more)")
        if len(st.seen_json) > 10_000:
            st.seen_json.clear()
        out = st.seen_json[key] = json.dumps(names)
    return out
