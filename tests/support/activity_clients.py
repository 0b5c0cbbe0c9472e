"""Conversations of every kind, run inside a test namespace (``python activity_clients.py PLAN``):
HTTP requests answered at once and late, a TLS ClientHello, a refused and a reset connection, UDP
with and without an answer, a ping, a long-lived connection with a packet every 0.5 s, and DNS
lookups over UDP and TCP (answered, refused, nonexistent, unanswered).
Prints one JSON line per conversation: what it was, its client port."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import sys
import time
from typing import Any


def http(server: str, port: int, path: str) -> dict[str, Any]:
    s = socket.create_connection((server, port), timeout=10)
    cport = s.getsockname()[1]
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: api.shop.test\r\nUser-Agent: pktstream-test/1.0\r\n"
              "Connection: close\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return {"what": "http", "cport": cport, "port": port, "status": int(data.split()[1]) if data else 0}


def tls(server: str, port: int) -> dict[str, Any]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((server, port), timeout=10)
    cport = raw.getsockname()[1]
    with ctx.wrap_socket(raw, server_hostname="pay.shop.test") as s:
        s.sendall(b"GET /charge HTTP/1.1\r\nHost: pay.shop.test\r\n\r\n")
        s.recv(4096)
    return {"what": "tls", "cport": cport, "port": port}


def refused(server: str, port: int) -> dict[str, Any]:
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    cport = s.getsockname()[1]
    with contextlib.suppress(ConnectionRefusedError):
        s.connect((server, port))
    s.close()
    return {"what": "refused", "cport": cport, "port": port}


def reset(server: str, port: int) -> dict[str, Any]:
    s = socket.create_connection((server, port), timeout=10)
    cport = s.getsockname()[1]
    s.sendall(b"hello")
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    s.close()
    return {"what": "reset", "cport": cport, "port": port}


def udp(server: str, port: int, answered: bool) -> dict[str, Any]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    cport = s.getsockname()[1]
    s.settimeout(2)
    s.sendto(b"query-" + (b"a" if answered else b"b") * 40, (server, port))
    if answered:
        s.recvfrom(4096)
    s.close()
    return {"what": "udp" if answered else "udp-oneway", "cport": cport, "port": port}


def ping(server: str) -> dict[str, Any]:
    """One ICMP echo request, and its reply read (no ping binary needed)."""
    body = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"pktstream-ping"
    csum = sum(struct.unpack(f"!{len(body) // 2}H", body))
    csum = (csum >> 16) + (csum & 0xFFFF)
    csum = ~(csum + (csum >> 16)) & 0xFFFF
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(2)
    s.sendto(body, (server, 0))
    s.recvfrom(4096)
    s.close()
    return {"what": "ping", "cport": 8, "port": 0}


def long_lived(server: str, port: int, seconds: float) -> dict[str, Any]:
    s = socket.create_connection((server, port), timeout=10)
    cport = s.getsockname()[1]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s.sendall(b"tick")
        s.recv(64)
        time.sleep(0.5)
    s.close()
    return {"what": "long", "cport": cport, "port": port}


DNS_NAMES = ("www.shop.test", "alias.shop.test", "many.shop.test", "refused.shop.test", "nx.shop.test",
             "silent.shop.test")


def dns_query(ident: int, name: str, qtype: int) -> bytes:
    q = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def lookup(server: str, ident: int, name: str, qtype: int = 1, tcp: bool = False) -> dict[str, Any]:
    """One query from a socket of its own; waits 0.5 s at most for the answer."""
    msg = dns_query(ident, name, qtype)
    if tcp:
        s = socket.create_connection((server, 53), timeout=5)
        cport = s.getsockname()[1]
        s.sendall(struct.pack("!H", len(msg)) + msg)
        with contextlib.suppress(OSError):
            s.recv(4096)
        s.close()
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        cport = s.getsockname()[1]
        s.settimeout(0.5)
        s.sendto(msg, (server, 53))
        with contextlib.suppress(TimeoutError):
            s.recvfrom(4096)
        s.close()
    return {"what": "dns-tcp" if tcp else "dns", "cport": cport, "port": 53, "id": ident, "name": name}


def main() -> None:
    plan = json.loads(sys.argv[1])
    srv = plan["server"]
    out = [http(srv, plan["http_port"], p) for p in ("/v1/users/1", "/v1/orders/7/items", "/misc/1/x")]
    out.append(tls(srv, plan["tls_port"]))
    out.append(refused(srv, plan["closed_port"]))
    out.append(reset(srv, plan["reset_port"]))
    out.append(udp(srv, plan["udp_port"], True))
    out.append(udp(srv, plan["closed_port"], False))
    out.append(ping(srv))
    out.append(long_lived(srv, plan["echo_port"], plan["long_s"]))
    out += [lookup(srv, 0x100 + k, name, 28 if name == "alias.shop.test" else 1) for k, name in enumerate(DNS_NAMES)]
    out.append(lookup(srv, 0x200, "www.shop.test", tcp=True))
    for o in out:
        print(json.dumps(o))


if __name__ == "__main__":
    main()
