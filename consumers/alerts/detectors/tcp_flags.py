"""TCP flag anomalies: NULL, XMAS, SYN+FIN, SYN+RST, FIN without ACK (scanner probes, evasion)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import Add, Detector, Evidence, View, Window
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import mix
from pktstream.schemas.protocols import ACK, FIN, PROTO_TCP, PSH, RST, SYN, URG

FLAG_NAMES = {1: "NULL", 2: "XMAS", 3: "SYN+FIN", 4: "SYN+RST", 5: "FIN without ACK"}


def _flag_code(f: int) -> int:
    if (f & 0x3F) == 0:  # none of the six classic flags
        return 1  # NULL
    if (f & (FIN | PSH | URG)) == (FIN | PSH | URG):
        return 2  # XMAS
    if (f & (SYN | FIN)) == (SYN | FIN):
        return 3
    if (f & (SYN | RST)) == (SYN | RST):
        return 4
    if (f & ACK) == 0 and (f & FIN) != 0 and (f & SYN) == 0:
        return 5  # FIN without ACK
    return 0


_FLAG_CODES = np.array([_flag_code(f) for f in range(256)], dtype=np.uint8)


def flag_anomaly(flags: npt.NDArray[Any], proto: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """FLAG_NAMES code of each TCP packet's flags (0: nothing odd), from a table of all 256."""
    code: npt.NDArray[np.uint8] = _FLAG_CODES[np.asarray(flags, dtype=np.uint8)]
    code[proto != PROTO_TCP] = 0
    return code


class TcpFlags(Detector, name="tcp_flags", order=80, severity_id=3, technique=("T1046", "Network Service Discovery"),
               tactic=("TA0007", "Discovery")):
    """TCP flag anomaly: TCP packets with no flags (NULL), FIN+PSH+URG (XMAS), SYN+FIN, SYN+RST, or FIN without
    ACK; at least min_packets per source, destination and kind in a window."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 60, "min_packets": 1}
    columns = ("src_addr", "dst_addr", "dst_port", "protocol", "tcp_flags", "packets")

    @staticmethod
    def keep_apart(flags: npt.NDArray[Any], proto: npt.NDArray[Any]) -> npt.NDArray[np.uint8] | None:
        """A packet with odd flags stays a row of its own, so that its flags reach this detector."""
        return flag_anomaly(flags, proto)

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        r = v.rows
        if not len(r):
            return
        code = flag_anomaly(r["tcp_flags"], v.protocol)
        sel = np.flatnonzero(v.dst_rows & (code > 0))
        yield Add(sel, mix(code[sel], v.hs[sel], v.hd[sel]), item=v.dst_port[sel], sub=code[sel])

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = w.n >= self.settings["min_packets"]
        return out

    def describe(self, e: Evidence) -> tuple[str, str]:
        kind = FLAG_NAMES[e.sub]
        return f"{kind}:{e.src}->{e.dst}", f"{e.n} {kind} packets from {e.src} to {e.dst}"
