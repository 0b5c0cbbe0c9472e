"""Server errors far above a service's own baseline."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import Add, Detector, Evidence, View, Window
from pktstream.consumers.alerts.tables import AlertsState, Baselines
from pktstream.consumers.engine.features import mix
from pktstream.consumers.engine.parse import KIND_HTTP1_RESPONSE

ANSWER, ERROR = 0, 1  # items: an answer, a 5xx answer


class ErrorSpike(Detector, name="error_spike", order=105, severity_id=3,
                 technique=("T1499.003", "Application Exhaustion Flood"), tactic=("TA0040", "Impact")):
    """Error spike: a service's (server address and port) share of 5xx answers in a window is at least min_ratio,
    with at least min_errors of them, and factor times its average share over the windows before (after
    warmup_windows of history; a window that fires does not move the average)."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 60, "warmup_windows": 5, "factor": 5.0,
                                          "min_ratio": 0.2, "min_errors": 20, "max_keys": 100000}
    columns = ("src_addr", "src_port", "kind", "status", "direction")
    answers = True

    def source_rows(self, rows: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """The host's HTTP answers go to the answering server's partition."""
        out: npt.NDArray[np.bool_] = (rows["direction"] == 1) & (rows["kind"] == KIND_HTTP1_RESPONSE)
        return out

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        sel = np.flatnonzero(v.egress_src & (v.rows["kind"] == KIND_HTTP1_RESPONSE) & (v.status >= 100))
        yield Add(sel, mix(v.hs[sel], v.src_port[sel]), item=np.where(v.status[sel] >= 500, ERROR, ANSWER), n=1)

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        cfg = self.settings
        errors = w.per_key(np.where(w.c["item"] == ERROR, w.c["n"], 0))
        ratio = errors / np.maximum(w.n, 1)
        bl = baselines(w.state)
        seen = bl.lookup(w.keys)
        fire: npt.NDArray[np.bool_] = seen.found & (seen.cnt >= cfg["warmup_windows"]) \
            & (errors >= cfg["min_errors"]) & (ratio >= cfg["min_ratio"]) & (ratio >= cfg["factor"] * seen.mean)
        bl.learn(w.keys, seen, ratio, ~fire, int(cfg["max_keys"]))  # a window that fires does not move the average
        return fire

    def describe(self, e: Evidence) -> tuple[str, str]:
        errors = int(np.where(e.c["item"][e.rows] == ERROR, e.c["n"][e.rows], 0).sum())
        port = e.col("src_port")
        return f"{e.src}:{port}", f"{errors} of {e.n} answers of {e.src}:{port} were server errors (5xx)"


def baselines(state: AlertsState) -> Baselines:
    """This detector's history per service (share of 5xx per window), kept in the state."""
    return state.extra_baselines.setdefault("error_spike", Baselines())
