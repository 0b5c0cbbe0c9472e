"""A scan the host's own answers confirm: its RSTs and ICMP port-unreachables to one source."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import Add, Detector, Evidence, View, Window
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import mix
from pktstream.schemas.protocols import PROTO_TCP, RST

TCP_RESET, ICMP_UNREACHABLE = 1, 2  # sub: how the host answered


class ScanConfirmed(Detector, name="scan_confirmed", order=12, severity_id=3,
                    technique=("T1046", "Network Service Discovery"), tactic=("TA0007", "Discovery")):
    """Scan confirmed by the answers: the host answered one source's probes of at least min_ports distinct closed
    ports within a window with TCP RSTs or ICMP port-unreachables (its egress records; a closed port answers so,
    an open one does not, so the ports are the ones the source tried in vain)."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 300, "min_ports": 15}
    columns = ("src_addr", "dst_addr", "src_port", "dst_port", "protocol", "flags_or", "quoted_port", "direction")
    answers = True

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        r = v.rows
        # the host's answers, in the prober's partition: key (prober, host), item the closed port
        rst = np.flatnonzero(v.egress_dst & (v.protocol == PROTO_TCP) & ((v.flags_or & RST) != 0))
        yield Add(rst, mix(v.hd[rst], v.hs[rst]), item=v.src_port[rst], sub=TCP_RESET, n=1)
        icmp = np.flatnonzero(v.egress_dst & (r["quoted_port"] > 0))
        yield Add(icmp, mix(v.hd[icmp], v.hs[icmp]), item=r["quoted_port"][icmp].astype(np.int64),
                  sub=ICMP_UNREACHABLE, n=1)

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = w.distinct >= self.settings["min_ports"]
        return out

    def describe(self, e: Evidence) -> tuple[str, str]:
        how = "ICMP port-unreachables" if e.sub == ICMP_UNREACHABLE else "TCP resets"
        return f"{e.dst}->{e.src}", f"{e.src} answered {e.distinct} ports {e.dst} probed as closed ({how})"
