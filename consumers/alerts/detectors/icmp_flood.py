"""ICMP flood: a high rate of echo requests towards one host."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from pktstream.consumers.alerts.detector import Add, PacketFlood, View
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import mix
from pktstream.schemas.protocols import PROTO_ICMP, PROTO_ICMP6

# ICMP type and code travel in the port fields (src_port = type): echo request types
ECHO_REQUEST, ECHO_REQUEST6 = 8, 128


class IcmpFlood(PacketFlood, name="icmp_flood", order=50, severity_id=4,
                technique=("T1498.001", "Direct Network Flood"), tactic=("TA0040", "Impact"), light=True):
    """ICMP flood: at least min_packets ICMP or ICMPv6 echo requests towards one host in a window."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 10, "min_packets": 5000}
    columns = ("dst_addr", "protocol", "src_port", "packets")

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        sel = np.flatnonzero(v.dst_rows & (((v.protocol == PROTO_ICMP) & (v.src_port == ECHO_REQUEST))
                                           | ((v.protocol == PROTO_ICMP6) & (v.src_port == ECHO_REQUEST6))))
        yield Add(sel, mix(v.hd[sel]))

