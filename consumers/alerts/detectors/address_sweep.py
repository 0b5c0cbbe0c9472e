"""Address sweep: one source tries one port on many hosts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import Add, Detector, Evidence, View, Window, addr_text, attempts, proto_name
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import mix


class AddressSweep(Detector, name="address_sweep", order=20, severity_id=3,
                   technique=("T1595.001", "Active Scanning: Scanning IP Blocks"), tactic=("TA0043", "Reconnaissance")):
    """Address sweep: one source tries one destination port on at least min_hosts distinct hosts within a window."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 300, "hop_s": 0, "min_hosts": 25}
    columns = ("src_addr", "dst_addr", "dst_port", "protocol", "syns", "flags_or", "src_port")

    def source_rows(self, rows: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """Attempts go to their source's partition too: a sweep is everything one source tried."""
        out: npt.NDArray[np.bool_] = (rows["ip_version"] > 0) & attempts(rows["protocol"], rows["syns"],
                                                                          rows["flags_or"], rows["src_port"])
        return out

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        # (src, dport, proto) -> distinct destinations, from the rows keyed by source
        s_att = np.flatnonzero(v.src_rows & v.attempts())
        yield Add(s_att, mix(v.hs[s_att], v.dst_port[s_att], v.protocol[s_att]), item=v.hd[s_att])

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = w.distinct >= self.settings["min_hosts"]
        return out

    def item_text(self, c: dict[str, Any], r: int, item: int) -> str:
        return addr_text(c["dst_addr"][r])

    def describe(self, e: Evidence) -> tuple[str, str]:
        port = e.col("dst_port")
        key = f"{e.src}->*:{port}/{proto_name(e.col('protocol'))}"
        return key, f"{e.distinct} hosts tried on port {port} by {e.src}"
