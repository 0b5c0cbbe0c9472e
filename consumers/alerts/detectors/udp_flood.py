"""UDP flood: a high rate of UDP packets towards one host."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import Add, Detector, Evidence, Setup, View, Window, distinct_sources
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import mix
from pktstream.schemas.protocols import PROTO_UDP


class UdpFlood(Detector):
    name = "udp_flood"
    order = 40
    title = "UDP flood"
    severity_id = 4
    technique = ("T1498.001", "Direct Network Flood")
    tactic = ("TA0040", "Impact")
    rule = ("at least min_packets UDP packets towards one host in a window (reflection traffic from amplification "
            "ports counts as amplification instead)")
    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 10, "min_packets": 20000}
    columns = ("dst_addr", "protocol", "src_port", "packets")
    light = True

    def __init__(self, settings: dict[str, Any], setup: Setup) -> None:
        super().__init__(settings, setup)
        # the amplification detector's ports (its setting, whether it runs or not) are its traffic
        self.amp_ports = np.array(sorted(setup.detectors["amplification"]["ports"]), dtype=np.int64)

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        sel = np.flatnonzero(v.dst_rows & (v.protocol == PROTO_UDP) & ~np.isin(v.src_port, self.amp_ports))
        yield Add(sel, mix(v.hd[sel]))

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = w.n >= self.settings["min_packets"]
        return out

    def describe(self, e: Evidence) -> tuple[str, str]:
        return e.dst, f"{e.n} packets to {e.dst} from {distinct_sources(e.c, e.rows)} sources"
