"""SYN flood: many connections to one host that never get past their SYN."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import Add, Detector, Evidence, View, Window
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import mix
from pktstream.schemas.protocols import PROTO_TCP

OPENED, HALF_OPEN = 1, 2  # items: a connection that went on, one that sent nothing but SYNs


class SynFlood(Detector, name="syn_flood", order=30, severity_id=4, technique=("T1499.001", "OS Exhaustion Flood"),
               tactic=("TA0040", "Impact"), light=True):
    """SYN flood: at least min_half_open connections to one host in a window sent nothing but SYNs, and they are
    at least min_ratio of the connections opened to it."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 10, "min_half_open": 1000, "min_ratio": 0.8}
    columns = ("dst_addr", "protocol", "syns", "packets")

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        # dst -> connections opened (item 1) and left half-open (item 2)
        opened = np.flatnonzero(v.dst_rows & (v.protocol == PROTO_TCP) & (v.syns > 0))
        yield Add(opened, mix(v.hd[opened]), item=np.where(v.n[opened] == v.syns[opened], HALF_OPEN, OPENED), n=1)

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        half = w.per_key(np.where(w.c["item"] == HALF_OPEN, w.c["n"], 0))
        out: npt.NDArray[np.bool_] = (half >= self.settings["min_half_open"]) \
            & (half >= self.settings["min_ratio"] * np.maximum(w.n, 1))
        return out

    def describe(self, e: Evidence) -> tuple[str, str]:
        half = int(np.where(e.c["item"][e.rows] == HALF_OPEN, e.c["n"][e.rows], 0).sum())
        return e.dst, f"{half} of {e.n} connections to {e.dst} left half-open"
