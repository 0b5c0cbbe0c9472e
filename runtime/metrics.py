"""Prometheus metrics and a health endpoint, read from the live process at scrape time.

Nothing is updated per record: a custom collector asks the producer for its
counters (kernel counters through one bpf() lookup each) when Prometheus
scrapes ``/metrics``. ``/healthz`` answers 200 while the main loop turns and
the program is attached, 503 with the reason otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pktstream.runtime.errors import PktstreamError


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

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, code, ctype = generate_latest(registry), 200, "text/plain; version=0.0.4"
                elif self.path.startswith("/healthz"):
                    ok, why = health()
                    body, code, ctype = (why + "\n").encode(), 200 if ok else 503, "text/plain"
                else:
                    body, code, ctype = b"see /metrics and /healthz\n", 404, "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # no access log lines
                pass

        try:
            self.server = ThreadingHTTPServer((address, port), Handler)
        except OSError as e:
            raise PktstreamError(f"metrics endpoint {address}:{port}: {e.strerror}; "
                                 "choose another --metrics-port or 0 to turn it off") from None
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Heartbeat:
    """The main loop's pulse, for /healthz."""

    def __init__(self, max_age_s: float = 5.0) -> None:
        self.last = time.monotonic()
        self.max_age_s = max_age_s

    def beat(self) -> None:
        self.last = time.monotonic()

    def fresh(self) -> bool:
        return time.monotonic() - self.last <= self.max_age_s
