"""Generated packet records with a realistic API mix, as packet-topic containers.

Connections of clients to a few services, each one SYN, the handshake's ACK, a request (HTTP/1.1
request line and headers, or a TLS ClientHello with a server name), ACKs and a FIN; plus DNS
over UDP. Everything is built with numpy from a few hundred distinct payloads, so that generating
is much cheaper than consuming. ``expected`` says what a usage consumer must count.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pktstream.schemas import load_schema_json
from pktstream.schemas.container import ContainerWriter

PAYLOAD = 128
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


def v4(text: str) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + ipaddress.IPv4Address(text).packed


def client_hello(sni: str) -> bytes:
    name = sni.encode()
    sni_ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    body = b"\x03\x03" + b"\x11" * 32 + b"\x00" + struct.pack("!H", 2) + b"\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(sni_ext)) + sni_ext
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


@dataclass
class Api:
    name: str
    server: str
    port: int
    host: str
    method: str = ""  # "" for TLS
    path: str = ""  # with {id} where an id goes
    weight: float = 1.0


DEFAULT_APIS = [
    Api("users.get", "10.1.0.10", 80, "api.shop.test", "GET", "/v1/users/{id}", 5),
    Api("users.update", "10.1.0.10", 80, "api.shop.test", "PUT", "/v1/users/{id}", 1),
    Api("orders.create", "10.1.0.10", 80, "api.shop.test", "POST", "/v1/orders", 2),
    Api("orders.get", "10.1.0.10", 80, "api.shop.test", "GET", "/v1/orders/{id}/items", 3),
    Api("health", "10.1.0.11", 8080, "status.shop.test", "GET", "/healthz", 1),
    Api("pay", "10.1.0.12", 443, "pay.shop.test", weight=3),
    Api("search", "10.1.0.13", 80, "search.shop.test", "GET", "/search", 2),
]

RATE_LIMITS = {"users.get": 600, "orders.create": 120}  # per client per minute (the alerts consumer's rate_limit)
CATALOG = {"apis": [
    {"name": a.name, "host": a.host, "port": a.port, **({"method": a.method, "path": a.path} if a.method else {}),
     **({"rate_limit_per_min": RATE_LIMITS[a.name]} if a.name in RATE_LIMITS else {})}
    for a in DEFAULT_APIS
]}


@dataclass
class Traffic:
    columns: dict[str, Any]
    n: int
    expected: dict[str, Counter[str]] = field(default_factory=dict)  # api -> requests, packets, bytes, conns


def _request(api: Api, ident: int) -> bytes:
    if not api.method:
        return client_hello(api.host)
    path = api.path.replace("{id}", str(ident))
    return f"{api.method} {path}?q=1 HTTP/1.1\r\nHost: {api.host}\r\nUser-Agent: gen\r\n\r\n".encode()


# the servers' answers (generate(responses=True)): per API, the delay and the status codes to pick from
ANSWER_DELAY_NS = {"users.get": 300_000, "users.update": 2_000_000, "orders.create": 60_000_000,
                   "orders.get": 30_000_000, "health": 100_000, "pay": 220_000_000, "search": 7_000_000}
ANSWER_CODES = {"users.get": (200, 200, 200, 404), "users.update": (204, 401, 403), "orders.create": (201, 500),
                "orders.get": (200,), "health": (200, 503), "search": (200, 200, 400)}
SERVER_HELLO = b"\x16\x03\x03\x00\x5a\x02\x00\x00\x56\x03\x03" + b"\x22" * 32


def _response(code: int) -> bytes:
    body = b"x" * (code % 7)
    return f"HTTP/1.1 {code} R\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def generate(connections: int, start_ns: int, span_ns: int, clients: int = 2000, seed: int = 1,
             apis: list[Api] | None = None, dns_share: float = 0.1, responses: bool = False) -> Traffic:
    """About 6 records per connection (+ DNS), timestamps spread over [start, start + span).

    ``responses``: the servers' packets too, as the server host's egress records (direction 1):
    a SYN-ACK, the answer (an HTTP status line from ANSWER_CODES, a TLS ServerHello) after the
    API's ANSWER_DELAY_NS, and a FIN-ACK; expected then holds what a usage consumer pairs."""
    apis = apis or DEFAULT_APIS
    rng = np.random.default_rng(seed)
    weights = np.array([a.weight for a in apis], dtype=float)
    which = rng.choice(len(apis), size=connections, p=weights / weights.sum())
    ids = rng.integers(1, 200, size=connections)
    client = rng.integers(0, clients, size=connections)
    sport = 32768 + (np.arange(connections) * 7919) % 28232  # the ephemeral range; a 5-tuple seldom reused
    t0 = np.sort(rng.integers(start_ns, start_ns + span_ns, size=connections))
    # per connection: SYN, ACK, request, ACK, ACK, FIN+ACK; 100 us apart
    k = 6
    conn = np.repeat(np.arange(connections), k)
    step = np.tile(np.arange(k), connections)
    n_tcp = connections * k
    n_dns = int(n_tcp * dns_share)
    n = n_tcp + n_dns
    cols: dict[str, Any] = {}
    ts = np.empty(n, dtype=np.int64)
    ts[:n_tcp] = t0[conn] + step * 100_000
    ts[n_tcp:] = rng.integers(start_ns, start_ns + span_ns, size=n_dns)
    client_addrs = np.array([list(v4(f"10.{100 + (c >> 16) % 100}.{(c >> 8) & 255}.{c & 255}"))
                             for c in range(clients)], dtype=np.uint8)
    servers = {a.server for a in apis} | {"10.1.0.53"}
    server_addr = {s: np.frombuffer(v4(s), dtype=np.uint8) for s in servers}
    src = np.empty((n, 16), dtype=np.uint8)
    dst = np.empty((n, 16), dtype=np.uint8)
    src[:n_tcp] = client_addrs[client[conn]]
    dns_clients = rng.integers(0, clients, size=n_dns)
    src[n_tcp:] = client_addrs[dns_clients]
    api_server = np.array([server_addr[a.server] for a in apis])
    dst[:n_tcp] = api_server[which[conn]]
    dst[n_tcp:] = server_addr["10.1.0.53"]
    flags = np.array([SYN, ACK, PSH | ACK, ACK, ACK, FIN | ACK], dtype=np.int64)
    payload = np.zeros((n, PAYLOAD), dtype=np.uint8)
    plen = np.zeros(n, dtype=np.int64)
    wire = np.empty(n, dtype=np.int64)
    wire[:n_tcp] = 66
    wire[n_tcp:] = 80
    req_rows = np.flatnonzero(step == 2)
    full_len = np.zeros(connections, dtype=np.int64)
    # distinct payloads: (api, id) pairs
    cache: dict[tuple[int, int], tuple[npt.NDArray[np.uint8], int]] = {}
    for c, r in enumerate(req_rows.tolist()):
        key = (int(which[c]), int(ids[c]))
        hit = cache.get(key)
        if hit is None:
            raw = _request(apis[key[0]], key[1])
            buf = np.zeros(PAYLOAD, dtype=np.uint8)
            buf[: min(len(raw), PAYLOAD)] = np.frombuffer(raw[:PAYLOAD], dtype=np.uint8)
            hit = cache[key] = (buf, len(raw))
        payload[r] = hit[0]
        plen[r] = min(hit[1], PAYLOAD)
        full_len[c] = hit[1]
        wire[r] = 66 + hit[1]
    dns_sport = rng.integers(20000, 60000, size=n_dns)
    sp = np.concatenate([sport[conn], dns_sport])
    dp = np.concatenate([np.array([a.port for a in apis])[which[conn]], np.full(n_dns, 53)])
    proto = np.concatenate([np.full(n_tcp, 6), np.full(n_dns, 17)])
    tflags = np.concatenate([flags[step], np.zeros(n_dns, dtype=np.int64)])
    direction = np.zeros(n, dtype=np.int64)
    if responses:  # per connection: SYN-ACK, the answer, FIN-ACK (server to client, egress)
        c3 = np.repeat(np.arange(connections), 3)
        s3 = np.tile(np.arange(3), connections)
        delay = np.array([ANSWER_DELAY_NS[a.name] for a in apis], dtype=np.int64)[which]
        codes = np.array([ANSWER_CODES.get(apis[w].name, (0,))[i % len(ANSWER_CODES.get(apis[w].name, (0,)))]
                          for i, w in enumerate(which.tolist())], dtype=np.int64)
        t_ans = t0 + 200_000 + delay
        r_ts = np.where(s3 == 0, t0[c3] + 50_000, np.where(s3 == 1, t_ans[c3], t_ans[c3] + 100_000))
        m3 = len(c3)
        r_pay = np.zeros((m3, PAYLOAD), dtype=np.uint8)
        r_plen = np.zeros(m3, dtype=np.int64)
        r_wire = np.full(m3, 66, dtype=np.int64)
        answers: dict[int, bytes] = {}
        for j in np.flatnonzero(s3 == 1).tolist():
            code = int(codes[c3[j]])
            if code not in answers:
                answers[code] = SERVER_HELLO if code == 0 else _response(code)
            raw = answers[code]
            r_pay[j, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
            r_plen[j] = len(raw)
            r_wire[j] = 66 + len(raw)
        ts = np.concatenate([ts, r_ts])
        src = np.concatenate([src, dst[:n_tcp][c3 * k]])
        dst = np.concatenate([dst, client_addrs[client[c3]]])
        sp, dp = np.concatenate([sp, dp[:n_tcp][c3 * k]]), np.concatenate([dp, sport[c3]])
        proto = np.concatenate([proto, np.full(m3, 6)])
        tflags = np.concatenate([tflags, np.array([SYN | ACK, PSH | ACK, FIN | ACK], dtype=np.int64)[s3]])
        wire = np.concatenate([wire, r_wire])
        payload = np.concatenate([payload, r_pay])
        plen = np.concatenate([plen, r_plen])
        direction = np.concatenate([direction, np.ones(m3, dtype=np.int64)])
        n += m3
    order = np.argsort(ts, kind="stable")
    cols["seq"] = np.arange(n, dtype=np.int64)
    cols["ts_ns"] = ts[order]
    cols["src_addr"] = src[order]
    cols["dst_addr"] = dst[order]
    cols["src_port"] = sp[order]
    cols["dst_port"] = dp[order]
    cols["protocol"] = proto[order]
    cols["tcp_flags"] = tflags[order]
    cols["direction"] = direction[order]
    cols["wire_len"] = wire[order]
    cols["payload"] = payload[order]
    cols["payload__len"] = plen[order]
    cols["payload_len"] = plen[order]
    for name, val in (("ifindex", 2), ("rx_queue", 0), ("ip_version", 4), ("ttl", 64), ("frag_flags", 2),
                      ("frag_offset", 0), ("vlan_outer", 0), ("vlan_inner", 0), ("ethertype", 0x0800),
                      ("flags", 0), ("sample_rate", 1)):
        cols[name] = np.full(n, val, dtype=np.int64)
    expected: dict[str, Counter[str]] = {}
    for i, a in enumerate(apis):
        sel = which == i
        e = expected[a.name] = Counter()
        e["requests"] = int(sel.sum())
        e["packets"] = int(sel.sum()) * k
        e["bytes"] = int(sel.sum()) * k * 66 + int(full_len[sel].sum())
        e["new_connections"] = int(sel.sum())
        e["distinct_clients"] = len(set(client[sel].tolist()))
        if responses:
            e["response_packets"] = int(sel.sum()) * 3
            e["response_bytes"] = int(r_wire.reshape(-1, 3)[sel].sum())
            e["responses"] = int(sel.sum())
            for code, cnt in Counter(codes[sel].tolist()).items():
                if code:
                    e[f"code:{code}"] = cnt
            e[f"delay:{ANSWER_DELAY_NS[a.name]}"] = int(sel.sum())
    e = expected["10.1.0.53:53/udp"] = Counter()
    e["packets"] = n_dns
    e["bytes"] = n_dns * 80
    e["distinct_clients"] = len(set(dns_clients.tolist()))
    return Traffic(cols, n, expected)


def containers(t: Traffic, batch: int = 20000, host: str = "gen-host", interface: str = "eth0") -> list[bytes]:
    """The records as packet-topic messages of ``batch`` records each."""
    w = ContainerWriter(load_schema_json("packet"), "null", {"pktstream.host": host, "pktstream.interface": interface,
                                                             "pktstream.payload_bytes": str(PAYLOAD)})
    out = []
    for s in range(0, t.n, batch):
        e = min(t.n, s + batch)
        cols = {k: v[s:e] for k, v in t.columns.items()}
        out.append(w.container(cols, e - s))
    return out


def fleet(hosts: list[tuple[str, Traffic]], batch: int = 20000) -> list[tuple[str, bytes]]:
    """Several hosts' records as (host, message) in the order a live fleet sends them: by each
    message's first timestamp. (All of one host, then all of the next, would put hours of event
    time out of order in a partition that two hosts share: the consumers set such rows aside as
    late, as they must.)"""
    out = []
    for h, (name, t) in enumerate(hosts):
        ts = t.columns["ts_ns"]
        for i, m in enumerate(containers(t, batch=batch, host=name)):
            out.append((int(ts[i * batch]), h, i, name, m))
    out.sort(key=lambda x: x[:3])
    return [(name, m) for _ts, _h, _i, name, m in out]


# -- packets one by one (attack scenarios for the alerts consumer) ------------------------------------

def packets(pkts: list[dict[str, Any]], payload_width: int = PAYLOAD) -> Traffic:
    """Records from dicts: ts, src, dst (IPv4 text), sport, dport, proto (6), flags (TCP), len, payload;
    and any other field of the packet schema by its name (frag_flags, frag_offset, ttl, "flags" of the
    record as record_flags, ...), else its usual value."""
    n = len(pkts)
    cols: dict[str, Any] = {
        "seq": np.arange(n, dtype=np.int64),
        "ts_ns": np.array([p["ts"] for p in pkts], dtype=np.int64),
        "src_addr": np.array([list(v4(p["src"])) for p in pkts], dtype=np.uint8).reshape(n, 16),
        "dst_addr": np.array([list(v4(p["dst"])) for p in pkts], dtype=np.uint8).reshape(n, 16),
        "src_port": np.array([p.get("sport", 40000) for p in pkts], dtype=np.int64),
        "dst_port": np.array([p.get("dport", 80) for p in pkts], dtype=np.int64),
        "protocol": np.array([p.get("proto", 6) for p in pkts], dtype=np.int64),
        "tcp_flags": np.array([p.get("flags", 0x10) for p in pkts], dtype=np.int64),
        "wire_len": np.array([p.get("len", 60) for p in pkts], dtype=np.int64),
        "ttl": np.array([p.get("ttl", 64) for p in pkts], dtype=np.int64),
    }
    payload = np.zeros((n, payload_width), dtype=np.uint8)
    plen = np.zeros(n, dtype=np.int64)
    for i, p in enumerate(pkts):
        raw = p.get("payload", b"")[:payload_width]
        payload[i, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        plen[i] = len(raw)
    cols["payload"] = payload
    cols["payload__len"] = plen
    cols["payload_len"] = np.array([p.get("payload_len", n_) for p, n_ in zip(pkts, plen.tolist(), strict=True)],
                                   dtype=np.int64)
    for name, val in (("ifindex", 2), ("rx_queue", 0), ("ip_version", 4), ("frag_flags", 2), ("frag_offset", 0),
                      ("vlan_outer", 0), ("vlan_inner", 0), ("ethertype", 0x0800), ("flags", 0),
                      ("sample_rate", 1), ("direction", 0), ("segments", 1)):
        key = "record_flags" if name == "flags" else name
        cols[name] = np.array([p.get(key, val) for p in pkts], dtype=np.int64)
    order = np.argsort(cols["ts_ns"], kind="stable")
    return Traffic({k: v[order] for k, v in cols.items()}, n)


# columns with a default in the packet schema: a Traffic without them has their default
_DEFAULTS = {"segments": 1, "direction": 0}


def merge(*ts: Traffic) -> Traffic:
    names = {k for t in ts for k in t.columns}

    def col(t: Traffic, k: str) -> Any:
        return t.columns[k] if k in t.columns else np.full(t.n, _DEFAULTS[k], dtype=np.int64)

    cols = {k: np.concatenate([col(t, k) for t in ts]) for k in names}
    order = np.argsort(cols["ts_ns"], kind="stable")
    return Traffic({k: v[order] for k, v in cols.items()}, sum(t.n for t in ts))


def spread(t0: int, n: int, span_ns: int) -> list[int]:
    return [t0 + i * span_ns // max(1, n) for i in range(n)]


def http_get(path: str, host: str = "api.shop.test", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def flood(n: int, start_ns: int, span_ns: int, template: bytes, dst: str = "10.1.0.10", dport: int = 80,
          clients: int = 2000, responses: bool = False) -> Traffic:
    """n requests whose payload is ``template`` with its run of '#' replaced by the request's number
    (zero-padded: each request its own Host header, or path), spread evenly over [start, start + span),
    from ``clients`` clients with one keep-alive connection each; with ``responses`` each is answered
    (HTTP/1.1 200, 1 ms later, the server host's egress record). Built with numpy alone: a million
    requests take a second. ``expected`` holds the requests per client connection."""
    at = template.index(b"#")
    digits = len(template[at:]) - len(template[at:].lstrip(b"#"))
    if 10**digits < n:
        raise ValueError(f"template has room for {10**digits} numbers, not {n}")
    i = np.arange(n, dtype=np.int64)
    req = np.tile(np.frombuffer(template, dtype=np.uint8), (n, 1))
    for d in range(digits):
        req[:, at + d] = ord("0") + (i // 10 ** (digits - 1 - d)) % 10
    client = i % clients
    addrs = np.array([list(v4(f"10.{100 + (c >> 16) % 100}.{(c >> 8) & 255}.{c & 255}")) for c in range(clients)],
                     dtype=np.uint8)
    server = np.frombuffer(v4(dst), dtype=np.uint8)
    ts = start_ns + i * span_ns // max(1, n)
    width = max(PAYLOAD, len(template))
    payload = np.zeros((n, width), dtype=np.uint8)
    payload[:, : len(template)] = req
    cols: dict[str, Any] = {
        "ts_ns": ts, "src_addr": addrs[client], "dst_addr": np.tile(server, (n, 1)),
        "src_port": 40000 + client, "dst_port": np.full(n, dport, np.int64), "tcp_flags": np.full(n, PSH | ACK),
        "wire_len": np.full(n, 66 + len(template)), "payload": payload, "payload__len": np.full(n, len(template)),
        "direction": np.zeros(n, np.int64),
    }
    if responses:
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        rp = np.zeros((n, width), dtype=np.uint8)
        rp[:, : len(ok)] = np.frombuffer(ok, dtype=np.uint8)
        answer = {"ts_ns": ts + 1_000_000, "src_addr": cols["dst_addr"], "dst_addr": cols["src_addr"],
                  "src_port": cols["dst_port"], "dst_port": cols["src_port"], "tcp_flags": cols["tcp_flags"],
                  "wire_len": np.full(n, 66 + len(ok)), "payload": rp, "payload__len": np.full(n, len(ok)),
                  "direction": np.ones(n, np.int64)}
        cols = {k: np.concatenate([v, answer[k]]) for k, v in cols.items()}
    m = len(cols["ts_ns"])
    order = np.argsort(cols["ts_ns"], kind="stable")
    cols = {k: np.asarray(v)[order] for k, v in cols.items()}
    cols["seq"] = np.arange(m, dtype=np.int64)
    cols["payload_len"] = cols["payload__len"]
    for name, val in (("protocol", 6), ("ifindex", 2), ("rx_queue", 0), ("ip_version", 4), ("ttl", 64),
                      ("frag_flags", 2), ("frag_offset", 0), ("vlan_outer", 0), ("vlan_inner", 0),
                      ("ethertype", 0x0800), ("flags", 0), ("sample_rate", 1)):
        cols[name] = np.full(m, val, dtype=np.int64)
    return Traffic(cols, m, {"requests": Counter({"total": n})})
