"""Attack strings in HTTP requests: SQL injection, path traversal, ${jndi: lookups, shell injection."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts import attacks
from pktstream.consumers.alerts.detector import Add, Detector, Evidence, View, Window
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import mix
from pktstream.consumers.engine.parse import KIND_HTTP1, redact_path


class HttpAttack(Detector, name="http_attack", order=90, severity_id=4,
                 technique=("T1190", "Exploit Public-Facing Application"), tactic=("TA0001", "Initial Access")):
    """Attack string in HTTP request: an HTTP/1.x request line or header in the payload prefix carries SQL
    injection, path traversal, a ${jndi: lookup (obfuscations resolved) or shell injection; at least
    min_requests per source, destination, port and kind in a window."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 60, "min_requests": 1}
    columns = ("src_addr", "dst_addr", "dst_port", "kind", "attack", "path")

    def payload_scan(self) -> Callable[..., Any] | None:
        return attacks.scan_batch  # stage one marks each request's attack kinds (a bit each)

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        r = v.rows
        hit = np.flatnonzero(v.dst_rows & (r["kind"] == KIND_HTTP1) & (r["attack"] > 0))
        if not len(hit):
            return
        bits = r["attack"][hit]
        for bit in attacks.NAMES:
            sel = hit[(bits & bit) != 0]
            if len(sel):
                # the request path, as an index into the state's own strings (traffic chooses it: at
                # most --max-paths of them at once, the others read _OTHER), credentials, tokens and
                # e-mail addresses in it replaced (parse.redact_path: state and alerts never hold them)
                path = np.array([state.strings.add_payload(redact_path(v.f.text(int(p)) or "/"))
                                 for p in r["path"][sel].tolist()], dtype=np.int64)
                yield Add(sel, mix(np.full(len(sel), bit), v.hs[sel], v.hd[sel], v.dst_port[sel]), item=bit, n=1,
                          sub=bit, s=path)

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = w.n >= self.settings["min_requests"]
        return out

    def item_text(self, c: dict[str, Any], r: int, item: int) -> str:
        return attacks.NAMES.get(item, str(item))

    def describe(self, e: Evidence) -> tuple[str, str]:
        name = attacks.NAMES[e.sub]
        port = e.col("dst_port")
        e.sample["path"] = e.state.strings.items[e.col("s")] if e.col("s") >= 0 else ""
        return (f"{name}:{e.src}->{e.dst}:{port}",
                f"{e.n} requests from {e.src} to {e.dst}:{port} with {name.replace('_', ' ')}")
