"""Client request rate above the API's limit: the catalog's rate_limit_per_min, per client."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import Add, Detector, Evidence, Setup, View, Window, first_per_key
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.agg import first_rows, group_index
from pktstream.consumers.engine.features import mix, take, words_bytes
from pktstream.consumers.engine.parse import KIND_HTTP1, METHODS


class RateLimit(Detector, name="rate_limit", order=100, severity_id=2,
                technique=("T1499.003", "Application Exhaustion Flood"), tactic=("TA0040", "Impact")):
    """Client request rate above the API's limit: one client sends an API more requests in a window than the
    catalog's rate_limit_per_min allows for that window."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 60}
    columns = ("src_addr", "dst_addr", "dst_port", "kind", "method", "name", "path")

    def __init__(self, settings: dict[str, Any], setup: Setup) -> None:
        super().__init__(settings, setup)
        self.limited = any(e.rate_limit_per_min > 0 for e in setup.catalog.entries)

    def _limited_api(self, host: str, dst: bytes, port: int, method: int, path: str) -> str:
        """The name of the rate-limited API a request belongs to, "" when it belongs to none
        (Catalog.match remembers its answers)."""
        ref = self.setup.catalog.match(host, dst, port, METHODS[method] if method < len(METHODS) else "", path,
                                       "http")
        return ref.name if ref.matched and ref.rate_limit_per_min > 0 else ""

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        if not self.limited:  # no API has a limit: the catalog is never asked
            return
        r = v.rows
        req = np.flatnonzero(v.dst_rows & (r["kind"] == KIND_HTTP1) & (r["method"] > 0))
        if not len(req):
            return
        rr = take(r, req)
        # the catalog is asked once per distinct (Host, address, port, method, path)
        gid, _g = group_index(mix(rr["name"], v.hd[req], rr["dst_port"], rr["method"], rr["path"]))
        u = take(rr, first_rows(gid))
        apis = []
        dsts = words_bytes(u["dst_addr"])
        texts = [*v.f.strings, ""]  # index -1: no Host / no path
        for j, (nm, port, meth, pth) in enumerate(zip(u["name"].tolist(), u["dst_port"].tolist(),
                                                      u["method"].tolist(), u["path"].tolist(), strict=True)):
            name = self._limited_api(texts[nm], dsts[16 * j : 16 * j + 16], port, meth, texts[pth])
            apis.append(state.strings.add(name) if name else -1)
        api = np.array(apis, dtype=np.int64)[gid]
        ok = api >= 0
        sel, api = req[ok], api[ok]  # the API, as an index into the state's own strings
        yield Add(sel, mix(api, v.hs[sel]), n=1, s=api)

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        nk = len(w.keys)
        fire = np.zeros(nk, dtype=bool)
        first = first_per_key(w.kinv, nk)
        win_min = self.settings["window_s"] / 60.0
        for j in range(nk):
            api = w.state.strings.items[int(w.c["s"][first[j]])]
            ref = next((e for e in self.setup.catalog.entries if e.name == api), None)
            if ref is not None and ref.rate_limit_per_min > 0:
                fire[j] = w.n[j] > ref.rate_limit_per_min * win_min
        return fire

    def describe(self, e: Evidence) -> tuple[str, str]:
        api = e.state.strings.items[e.col("s")]
        return f"{api}:{e.src}", f"{e.n} requests from {e.src} to {api} in one window"
