"""The metrics endpoint under idle and hostile clients: one thread whatever the connections, and
/healthz answers while thousands of connections sit idle."""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from pktstream.runtime.metrics import MetricsServer, _Server


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    m = MetricsServer("127.0.0.1", 0, lambda: {"records": 7}, lambda: (True, "loop turned 0.1s ago"),
                      {"host": "h1"}, {"records": "records seen"}, {})
    yield m
    m.close()


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, r.read()


def test_five_thousand_idle_connections_leave_healthz_fast_and_threads_bounded(server: MetricsServer) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 6000
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, max(hard, want)), max(hard, want)))
        except (ValueError, OSError):
            pytest.skip(f"needs {want} descriptors (limit {soft}/{hard})")
    threads_before = threading.active_count()
    idle: list[socket.socket] = []
    try:
        for _ in range(5000):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            idle.append(s)
        time.sleep(0.5)  # the server has accepted (and, past its bound, closed the oldest of) them
        assert threading.active_count() <= threads_before + 1
        assert len(server.server.conns) <= _Server.MAX_CONNECTIONS
        times = []
        for _ in range(5):
            t = time.monotonic()
            status, body = get(server.port, "/healthz")
            times.append(time.monotonic() - t)
            assert (status, body) == (200, b"loop turned 0.1s ago\n")
        assert max(times) < 0.1, times
        status, body = get(server.port, "/metrics")
        assert status == 200 and b'pktstream_records_total{host="h1"} 7.0' in body
        assert threading.active_count() <= threads_before + 1
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_slow_and_oversized_requests_are_cut_off(server: MetricsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Server, "TIMEOUT_S", 2.0)  # (10 s in service) read by the serving loop at each turn
    big = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    big.sendall(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 9000)
    assert big.recv(100).startswith(b"HTTP/1.1 431 ")
    big.close()
    post = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    post.sendall(b"POST /metrics HTTP/1.1\r\n\r\n")
    assert post.recv(100).startswith(b"HTTP/1.1 405 ")
    post.close()
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    slow.sendall(b"GET /heal")  # and never the rest
    t = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        assert slow.recv(100) == b""  # closed by the server
    assert _Server.TIMEOUT_S - 1 < time.monotonic() - t < _Server.TIMEOUT_S + 2
    slow.close()
    with pytest.raises(urllib.error.HTTPError) as e:
        get(server.port, "/nothing-here")
    assert e.value.code == 404


def test_a_scrape_flood_renders_once_a_second() -> None:
    renders = []

    def snapshot() -> dict[str, int]:
        renders.append(time.monotonic())
        return {"records": len(renders)}

    m = MetricsServer("127.0.0.1", 0, snapshot, lambda: (True, "ok"), {"host": "h1"}, {"records": "records seen"}, {})
    try:
        bodies = {get(m.port, "/metrics")[1] for _ in range(50)}
        assert len(renders) <= 2 and len(bodies) <= 2  # fifty scrapes, one page (two if a second turned)
        time.sleep(1.1)
        assert b'pktstream_records_total{host="h1"} ' + str(len(renders) + 1).encode() in get(m.port, "/metrics")[1]
    finally:
        m.close()


@pytest.mark.skipif(not socket.has_dualstack_ipv6(), reason="no IPv6 on this host")
def test_the_every_address_v6_bind_takes_ipv4_too() -> None:
    m = MetricsServer("::", 0, lambda: {"records": 7}, lambda: (True, "ok"), {"host": "h1"}, {"records": "r"}, {})
    try:
        assert get(m.port, "/healthz") == (200, b"ok\n")  # 127.0.0.1 into a server bound to ::
        with urllib.request.urlopen(f"http://[::1]:{m.port}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        m.close()
