"""UDP flood: a high rate of UDP packets towards one host."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from pktstream.consumers.alerts.detector import Add, PacketFlood, Setup, View
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import mix
from pktstream.schemas.protocols import PROTO_UDP


class UdpFlood(PacketFlood, name="udp_flood", order=40, severity_id=4, technique=("T1498.001", "Direct Network Flood"),
               tactic=("TA0040", "Impact"), light=True):
    """UDP flood: at least min_packets UDP packets towards one host in a window (reflection traffic from
    amplification ports counts as amplification instead)."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 10, "min_packets": 20000}
    columns = ("dst_addr", "protocol", "src_port", "packets")

    def __init__(self, settings: dict[str, Any], setup: Setup) -> None:
        super().__init__(settings, setup)
        # the amplification detector's ports (its setting, whether it runs or not) are its traffic
        self.amp_ports = np.array(sorted(setup.detectors["amplification"]["ports"]), dtype=np.int64)

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        sel = np.flatnonzero(v.dst_rows & (v.protocol == PROTO_UDP) & ~np.isin(v.src_port, self.amp_ports))
        yield Add(sel, mix(v.hd[sel]))

