"""Prometheus metrics and a health endpoint, read from the live process at scrape time.

Nothing is updated per record: a custom collector asks the producer for its
counters (kernel counters through one bpf() lookup each) when Prometheus
scrapes ``/metrics``. ``/healthz`` answers 200 while the main loop turns and
the program is attached, 503 with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pktstream.runtime.errors import PktstreamError

log = structlog.get_logger("pktstream.metrics")


class _Collector(Collector):
    def __init__(self, prefix: str, snapshot: Callable[[], dict[str, Any]], labels: dict[str, str],
                 counters: dict[str, str], gauges: dict[str, str]) -> None:
        self.prefix = prefix
        self.snapshot = snapshot
        self.labels = labels
        self.counters = counters
        self.gauges = gauges

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot()
        names, values = list(self.labels), list(self.labels.values())
        for name, doc in self.counters.items():
            if name in snap:
                m = CounterMetricFamily(f"{self.prefix}_{name}", doc, labels=names)
                m.add_metric(values, snap[name])
                yield m
        for name, doc in self.gauges.items():
            if name in snap:
                g = GaugeMetricFamily(f"{self.prefix}_{name}", doc, labels=names)
                g.add_metric(values, snap[name])
                yield g
        per_cpu = snap.get("ringbuf_full_per_cpu")
        if per_cpu is not None:
            m = CounterMetricFamily(f"{self.prefix}_ringbuf_full_by_cpu", "ringbuf_full per CPU",
                                    labels=[*names, "cpu"])
            for cpu, v in enumerate(per_cpu):
                m.add_metric([*values, str(cpu)], v)
            yield m


RENDER_CACHE_S = 1.0


class MetricsServer:
    def __init__(
        self,
        address: str,
        port: int,
        snapshot: Callable[[], dict[str, Any]],
        health: Callable[[], tuple[bool, str]],
        labels: dict[str, str],
        counters: dict[str, str],
        gauges: dict[str, str],
        prefix: str = "pktstream",
        collectors: list[Collector] | None = None,
    ) -> None:
        registry = CollectorRegistry()
        registry.register(_Collector(prefix, snapshot, labels, counters, gauges))
        for c in collectors or []:  # metrics a consumer app keeps itself (the usage RED histograms)
            registry.register(c)

        rendered: list[tuple[float, bytes]] = []  # the last page and when: scrapes in one second share it

        def respond(method: str, path: str) -> tuple[int, str, bytes]:
            if method not in ("GET", "HEAD"):
                return 405, "text/plain", b"GET /metrics or /healthz\n"
            if path.startswith("/metrics"):
                now = time.monotonic()
                if not rendered or now - rendered[0][0] >= RENDER_CACHE_S:
                    # a scraper hammering the endpoint costs one render a second, not one a request
                    rendered[:] = [(now, generate_latest(registry))]
                return 200, "text/plain; version=0.0.4", rendered[0][1]
            if path.startswith("/healthz"):
                ok, why = health()
                return (200 if ok else 503), "text/plain", (why + "\n").encode()
            return 404, "text/plain", b"see /metrics and /healthz\n"

        try:
            self.server = _Server(address, port, respond)
        except OSError as e:
            raise PktstreamError(f"metrics endpoint {address}:{port}: {e.strerror}; "
                                 "choose another --metrics-port or 0 to turn it off") from None
        self.port = self.server.port
        self.thread = threading.Thread(target=self.server.serve, name="metrics", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.stop.set()
        self.thread.join(timeout=5)
        self.server.close()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class _Conn:
    __slots__ = ("opened", "out", "request")

    def __init__(self) -> None:
        self.opened = time.monotonic()
        self.request = bytearray()
        self.out: memoryview | None = None


class _Server:
    """An HTTP/1.1 server in one thread: a selector over the listening socket and at most
    MAX_CONNECTIONS connections, each answering one request and closed. No thread per
    connection, so idle or slow clients cost a socket, not a thread: a connection that has not
    sent its request head (at most MAX_HEAD bytes) and read its answer within TIMEOUT_S is
    closed, and while MAX_CONNECTIONS are open the oldest is closed to let a new one in, so no
    number of idle connections keeps Prometheus or a health check out."""

    MAX_CONNECTIONS = 256
    MAX_HEAD = 8192
    TIMEOUT_S = 10.0

    def __init__(self, address: str, port: int, respond: Callable[[str, str], tuple[int, str, bytes]]) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        # "::" is every address, IPv4 too (as Prometheus' own exporters take it), whatever the
        # host's net.ipv6.bindv6only says
        self.sock = socket.create_server((address, port), family=family, backlog=1024,
                                         dualstack_ipv6=address == "::" and socket.has_dualstack_ipv6())
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.respond = respond
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self.conns: dict[socket.socket, _Conn] = {}  # oldest first
        self.stop = threading.Event()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                self._turn()
            except Exception as e:  # never the end of /healthz: one turn lost, said
                log.error("metrics_server_error", error=f"{type(e).__name__}: {e}"[:300])
                time.sleep(0.1)

    def _turn(self) -> None:
        for key, events in self.sel.select(timeout=0.25):
            if key.data is None:
                self._accept()
                continue
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if s not in self.conns:
                continue
            try:
                if events & selectors.EVENT_READ:
                    self._read(s, self.conns[s])
                elif events & selectors.EVENT_WRITE:
                    self._write(s, self.conns[s])
            except OSError:
                self._drop(s)
        now = time.monotonic()
        for s, c in list(self.conns.items()):
            if now - c.opened < self.TIMEOUT_S:
                break
            self._drop(s)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                s, _addr = self.sock.accept()
            except BlockingIOError:
                return
            except OSError:  # out of descriptors (or a connection aborted): make room, pause accepting
                if self.conns:
                    self._drop(next(iter(self.conns)))
                else:
                    time.sleep(0.1)  # nothing to free: do not spin on a listener that stays readable
                return
            if len(self.conns) >= self.MAX_CONNECTIONS:  # the oldest still sending its request (not a scrape
                # being answered), else the oldest
                self._drop(next((k for k, c in self.conns.items() if c.out is None), next(iter(self.conns))))
            s.setblocking(False)
            self.conns[s] = _Conn()
            self.sel.register(s, selectors.EVENT_READ, True)

    def _read(self, s: socket.socket, c: _Conn) -> None:
        data = s.recv(4096)
        if not data:
            self._drop(s)
            return
        c.request += data
        end = c.request.find(b"\r\n\r\n")
        if end < 0:
            end = c.request.find(b"\n\n")
        if end < 0:
            if len(c.request) > self.MAX_HEAD:
                self._answer(s, c, 431, "text/plain", b"request head too long\n", False)
            return
        parts = bytes(c.request[: c.request.find(b"\n")]).decode("latin-1").split()
        if len(parts) < 2:
            self._answer(s, c, 400, "text/plain", b"bad request\n", False)
            return
        try:
            code, ctype, body = self.respond(parts[0], parts[1])
        except Exception as e:  # a collector that fails answers 500; the server thread goes on
            log.error("metrics_handler_failed", error=f"{type(e).__name__}: {e}"[:300])
            code, ctype, body = 500, "text/plain", b"metrics failed; see the process's log\n"
        self._answer(s, c, code, ctype, body, parts[0] != "HEAD")

    def _answer(self, s: socket.socket, c: _Conn, code: int, ctype: str, body: bytes, with_body: bool) -> None:
        head = (f"HTTP/1.1 {code} {_REASONS.get(code, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        c.out = memoryview(head + body if with_body else head)
        self.sel.modify(s, selectors.EVENT_WRITE, True)
        self._write(s, c)

    def _write(self, s: socket.socket, c: _Conn) -> None:
        assert c.out is not None
        try:
            n = s.send(c.out)
        except BlockingIOError:
            return
        c.out = c.out[n:]
        if not len(c.out):
            self._drop(s)

    def _drop(self, s: socket.socket) -> None:
        self.conns.pop(s, None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(s)
        s.close()

    def close(self) -> None:
        for s in list(self.conns):
            self._drop(s)
        self.sel.close()
        self.sock.close()


class Heartbeat:
    """The main loop's pulse, for /healthz."""

    def __init__(self, max_age_s: float = 5.0) -> None:
        self.last = time.monotonic()
        self.max_age_s = max_age_s

    def beat(self) -> None:
        self.last = time.monotonic()

    def fresh(self) -> bool:
        return time.monotonic() - self.last <= self.max_age_s
