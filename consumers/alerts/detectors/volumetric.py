"""Traffic volume far above its own baseline, per destination and per source."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import Add, Detector, Evidence, View, Window
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import mix

DESTINATION, SOURCE = 0, 1  # sub: which address the key is


class Volumetric(Detector, name="volumetric", order=110, severity_id=3,
                 technique=("T1498", "Network Denial of Service"), tactic=("TA0040", "Impact"), light=True):
    """Traffic volume far above its baseline: packets of one destination (or one source) in a window exceed
    min_packets, factor times its average and its average plus sigmas standard deviations over the windows seen
    before (after warmup_windows of history), spread over at least min_flows connections (one bulk transfer is
    not an anomaly)."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 10, "warmup_windows": 30, "factor": 10.0,
                                "sigmas": 6.0, "min_packets": 20000, "min_flows": 50, "max_keys": 100000}
    columns = ("src_addr", "dst_addr", "ip_version", "packets", "fh")

    def source_rows(self, rows: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """Everything a source sent goes to its partition too: its volume and flows."""
        out: npt.NDArray[np.bool_] = rows["ip_version"] > 0
        return out

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        sel = np.flatnonzero(v.ip_dst)
        yield Add(sel, mix(np.zeros(len(sel)), v.hd[sel]), item=v.fh[sel], sub=DESTINATION)
        sel = np.flatnonzero(v.src_rows)
        yield Add(sel, mix(np.ones(len(sel)), v.hs[sel]), item=v.fh[sel], sub=SOURCE)

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        """Keys far above their own baseline; the others' baselines learn this window (Welford)."""
        cfg = self.settings
        keys, n = w.keys, w.n
        bl = w.state.baselines
        seen = bl.lookup(keys)
        x = n.astype(np.float64)
        std = np.sqrt(seen.m2 / np.maximum(1.0, seen.cnt - 1))
        fire: npt.NDArray[np.bool_] = seen.found & (seen.cnt >= cfg["warmup_windows"]) & (x >= cfg["min_packets"]) \
            & (x > cfg["factor"] * seen.mean) & (x > seen.mean + cfg["sigmas"] * std)
        bl.learn(keys, seen, x, ~fire, int(cfg["max_keys"]))  # an attack does not move the baseline
        out: npt.NDArray[np.bool_] = fire & (w.distinct >= cfg["min_flows"])
        return out

    def describe(self, e: Evidence) -> tuple[str, str]:
        scope = "destination" if e.sub == DESTINATION else "source"
        who = e.dst if e.sub == DESTINATION else e.src
        return f"{scope}:{who}", f"{e.n} packets for {scope} {who}, far above its baseline"
