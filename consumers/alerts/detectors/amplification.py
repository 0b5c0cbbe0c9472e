"""Reflection/amplification: large UDP answers from amplification services towards one host."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import Add, Detector, Evidence, Setup, View, Window
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import mix
from pktstream.schemas.protocols import PROTO_UDP


class Amplification(Detector, name="amplification", order=60, severity_id=4,
                    technique=("T1498.002", "Reflection Amplification"), tactic=("TA0040", "Impact"), light=True):
    """Reflection/amplification attack: at least min_packets UDP packets from amplification service ports (53,
    123, 1900, 11211, 19, 389) towards one host in a window, min_mean_bytes or more on average."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 10, "min_packets": 500, "min_mean_bytes": 512,
                                "ports": [53, 123, 1900, 11211, 19, 389]}
    columns = ("dst_addr", "protocol", "src_port", "packets", "nbytes")

    def __init__(self, settings: dict[str, Any], setup: Setup) -> None:
        super().__init__(settings, setup)
        self.ports = np.array(sorted(settings["ports"]), dtype=np.int64)

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        sel = np.flatnonzero(v.dst_rows & (v.protocol == PROTO_UDP) & np.isin(v.src_port, self.ports))
        yield Add(sel, mix(v.hd[sel]), item=v.src_port[sel])

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        cfg = self.settings
        out: npt.NDArray[np.bool_] = (w.n >= cfg["min_packets"]) & (w.b >= cfg["min_mean_bytes"] * w.n)
        return out

    def describe(self, e: Evidence) -> tuple[str, str]:
        return e.dst, f"{e.n} packets ({e.b} bytes) from amplification ports to {e.dst}"
