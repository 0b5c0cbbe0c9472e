"""Port scan: one source tries many ports of one host (Zeek's scan policy, firewall screens)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import Add, Detector, Evidence, View, Window
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import mix


class PortScan(Detector, name="port_scan", order=10, severity_id=3, technique=("T1046", "Network Service Discovery"),
               tactic=("TA0007", "Discovery")):
    """Port scan: one source tries at least min_ports distinct destination ports on one host within a window
    (TCP SYN or flag probes without ACK, UDP from an ephemeral port)."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 300, "hop_s": 0, "min_ports": 15}
    columns = ("src_addr", "dst_addr", "dst_port", "protocol", "syns", "flags_or", "src_port")

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        # (src, dst) -> distinct destination ports
        att = np.flatnonzero(v.dst_rows & v.attempts())
        yield Add(att, mix(v.hs[att], v.hd[att]), item=v.dst_port[att])

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = w.distinct >= self.settings["min_ports"]
        return out

    def describe(self, e: Evidence) -> tuple[str, str]:
        return f"{e.src}->{e.dst}", f"{e.distinct} ports of {e.dst} tried by {e.src}"
