"""RED metrics of the APIs on ``pktstream usage``'s ``/metrics``: rate, errors and duration per API in
the Prometheus form of OpenTelemetry's HTTP server semantic conventions.

* ``http_server_request_duration_seconds``: a histogram of the answers paired with a request
  (responses.py), the latency from the request's first packet to the answer's first packet, with
  the conventions' default bucket bounds (the usage topic's latency buckets);
* ``http_server_request_body_size_bytes`` and ``http_server_response_body_size_bytes``: histograms of
  the requests' and answers' Content-Length, where the payload prefix holds it.

Labels: ``http_route`` (the API: the catalog's name or the route template pktstream made),
``http_request_method``, ``http_response_status_code`` (absent for TLS and HTTP/2: their answers
have no status pktstream can read), ``server_address`` and ``server_port``. Cardinality guards (traffic
chooses Host headers and paths): at most ``max_apis`` route values per server address (further APIs of
that server are counted under ``http_route="_OTHER"``, as are answers whose (name, server) the state
took as the server's row of folded names, caps.WaitingNames),
at most ``max_servers`` server addresses (the answers of further servers under ``server_address="_OTHER"``
and ``http_route="_OTHER"``) and at most ``max_label_sets`` label sets in all (the answers of further
label sets under one set whose every label is ``_OTHER`` or empty). Each answer counted under an
``_OTHER`` label is counted in ``folded`` (``red_folded`` on /metrics).

These are the process's own counters, from its start (Prometheus' rate() handles restarts): an
answer processed again after an aborted transaction is counted again here, never in the usage topic.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from pktstream.consumers.catalog import OTHER
from pktstream.consumers.engine.parse import METHODS
from pktstream.consumers.usage.caps import is_fold
from pktstream.consumers.usage.responses import LATENCY_BOUNDS_S, NBUCKETS, Paired

SIZE_BOUNDS = (0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000)  # the default bounds
_SIZE_BOUNDS = np.array(SIZE_BOUNDS, dtype=np.int64)
LABELS = ("http_route", "http_request_method", "http_response_status_code", "server_address", "server_port")
OVERFLOW = (OTHER, "", "", OTHER, "")  # the label set of the answers past max_label_sets


class _Hist:
    __slots__ = ("buckets", "total")

    def __init__(self, n: int) -> None:
        self.buckets = np.zeros(n, np.int64)
        self.total = 0.0


MAX_APIS = 100  # route values per server address
MAX_SERVERS = 100  # server addresses
MAX_LABEL_SETS = 2000  # label sets of each histogram (each one is 17 or 18 series)


class RedMetrics(Collector):
    def __init__(self, max_apis: int = MAX_APIS, max_servers: int = MAX_SERVERS,
                 max_label_sets: int = MAX_LABEL_SETS) -> None:
        self.max_apis = max_apis
        self.max_servers = max_servers
        self.max_label_sets = max_label_sets
        self.lock = threading.Lock()
        self.duration: dict[tuple[str, ...], _Hist] = {}
        self.req_size: dict[tuple[str, ...], _Hist] = {}
        self.resp_size: dict[tuple[str, ...], _Hist] = {}
        self.routes: dict[str, set[str]] = {}  # server address -> the route values given out
        self.label_sets: set[tuple[str, ...]] = set()  # the label sets given out
        self.folded = 0  # answers counted under an _OTHER label

    def _labels(self, st: Any, api: int, method: int, status: int) -> tuple[tuple[str, ...], bool]:
        """An answer's labels, and whether a guard folded them."""
        name, server_key = st.names.key(api)
        ref = st.ref_of(name, server_key)
        server = ref.host or server_key.rpartition(":")[0] or name.split(" ", 1)[0].rsplit(":", 1)[0]
        port = str(ref.port) if ref.port else ""
        folded = is_fold((name, server_key))
        if folded:
            name = OTHER
        routes = self.routes.get(server)
        if routes is None:
            if len(self.routes) >= self.max_servers:
                server, port, name, folded = OTHER, "", OTHER, True
            routes = self.routes.setdefault(server, set())
        if name not in routes:
            if len(routes) >= self.max_apis:
                name, folded = OTHER, True
            else:
                routes.add(name)
        meth = METHODS[method] if 0 < method < len(METHODS) else ""
        labels = (name, meth, str(status) if status else "", server, port)
        if labels not in self.label_sets:
            if len(self.label_sets) >= self.max_label_sets:
                return OVERFLOW, True
            self.label_sets.add(labels)
        return labels, folded

    def figures(self) -> dict[str, float]:
        with self.lock:
            return {"red_folded": self.folded, "red_label_sets": len(self.label_sets)}

    def observe(self, st: Any, p: Paired, lb: npt.NDArray[np.int64]) -> None:
        """The answers of a batch (unanswered requests are not observations), with each one's latency
        bucket (-1: no latency). Histograms per label set in one pass each (bincount on group x bucket)."""
        sel = np.flatnonzero(~p.unanswered)
        if len(sel) == 0:
            return
        key = (p.api[sel] * 1024 + p.status[sel]) * 16 + p.method[sel]
        uniq, inv = np.unique(key, return_inverse=True)
        g, k = inv.ravel().astype(np.int64), len(uniq)
        answers = np.bincount(g, minlength=k)
        timed = lb[sel] >= 0
        dur = _grouped(g[timed], lb[sel][timed], NBUCKETS, k)
        dur_sum = np.bincount(g[timed], weights=p.latency[sel][timed], minlength=k) / 1e9
        sizes = []
        for col in (p.req_length[sel], p.resp_length[sel]):
            known = col >= 0
            v = col[known]
            sizes.append((_grouped(g[known], np.searchsorted(_SIZE_BOUNDS, v, side="left"), len(SIZE_BOUNDS) + 1, k),
                          np.bincount(g[known], weights=v, minlength=k)))
        with self.lock:
            for i, kk in enumerate(uniq.tolist()):
                labels, folded = self._labels(st, kk // (1024 * 16), kk % 16, (kk // 16) % 1024)
                if folded:
                    self.folded += int(answers[i])
                if dur[i].any():
                    self._add(self.duration, labels, dur[i], float(dur_sum[i]), NBUCKETS)
                for store, (hist, total) in zip((self.req_size, self.resp_size), sizes, strict=True):
                    if hist[i].any():
                        self._add(store, labels, hist[i], float(total[i]), len(SIZE_BOUNDS) + 1)

    @staticmethod
    def _add(store: dict[tuple[str, ...], _Hist], labels: tuple[str, ...], counts: npt.NDArray[np.int64],
             total: float, n: int) -> None:
        h = store.get(labels)
        if h is None:
            h = store[labels] = _Hist(n)
        h.buckets += counts
        h.total += total

    def collect(self) -> Iterator[Any]:
        with self.lock:
            for name, doc, store, bounds in (
                    ("http_server_request_duration_seconds", "Duration of HTTP server requests (request's first "
                     "packet to the answer's first packet).", self.duration, LATENCY_BOUNDS_S),
                    ("http_server_request_body_size_bytes", "Size of HTTP server request bodies (Content-Length).",
                     self.req_size, SIZE_BOUNDS),
                    ("http_server_response_body_size_bytes", "Size of HTTP server response bodies (Content-Length).",
                     self.resp_size, SIZE_BOUNDS)):
                m = HistogramMetricFamily(name, doc, labels=list(LABELS))
                for labels, h in sorted(store.items()):
                    cum = np.cumsum(h.buckets).tolist()
                    les = [_le(b) for b in bounds] + ["+Inf"]
                    m.add_metric(list(labels), list(zip(les, cum, strict=True)), h.total)
                yield m


def _le(b: float) -> str:
    return str(float(b))


def _grouped(group: npt.NDArray[np.int64], b: npt.NDArray[Any], nb: int, k: int) -> npt.NDArray[np.int64]:
    """Counts per (group, bucket) as a (k, nb) array."""
    return np.bincount(group * nb + b, minlength=k * nb).reshape(k, nb).astype(np.int64)
