"""Brute force / credential stuffing: one client collects many 401 and 403 answers from one API."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import Add, Detector, Evidence, View, Window
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import mix
from pktstream.consumers.engine.parse import KIND_HTTP1_RESPONSE


class BruteForce(Detector, name="brute_force", order=95, severity_id=3, technique=("T1110", "Brute Force"),
                 tactic=("TA0006", "Credential Access")):
    """Brute force: a server answered one client with at least min_failures 401 or 403 responses on one service
    (address and port) within a window (the host's own answers, captured on egress)."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 300, "min_failures": 20}
    columns = ("src_addr", "dst_addr", "src_port", "kind", "status", "direction")
    answers = True

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        r = v.rows
        # the server's answers, in the client's partition: key (client, server, server port)
        failed = (v.status == 401) | (v.status == 403)
        sel = np.flatnonzero(v.egress_dst & (r["kind"] == KIND_HTTP1_RESPONSE) & failed)
        yield Add(sel, mix(v.hd[sel], v.hs[sel], v.src_port[sel]), item=v.status[sel], n=1)

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = w.n >= self.settings["min_failures"]
        return out

    def describe(self, e: Evidence) -> tuple[str, str]:
        port = e.col("src_port")
        return f"{e.dst}->{e.src}:{port}", f"{e.n} failed logins (401/403) of {e.dst} at {e.src}:{port}"
