"""The live usage table: top APIs of the latest closed minute, redrawn as windows close."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from pktstream.consumers.engine.runner import Output


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def render(records: list[dict[str, Any]], top: int = 15, width: int = 140) -> str:
    if not records:
        return "no closed window yet"
    start = max(r["window_start_ms"] for r in records)
    recs = [r for r in records if r["window_start_ms"] == start]
    recs.sort(key=lambda r: (-r["requests"], -r["bytes"], r["api"]))
    t = datetime.fromtimestamp(start / 1000, UTC).strftime("%Y-%m-%d %H:%M")
    total_req = sum(r["requests"] for r in recs)
    total_bytes = sum(r["bytes"] for r in recs)
    lines = [f"pktstream usage  window {t} UTC (1 min)  APIs {len(recs)}  requests {total_req}  "
             f"bytes {_bytes(total_bytes)}",
             f"{'API':<44} {'req/min':>8} {'err%':>6} {'p99 ms':>8} {'partial':>7} {'packets':>8} {'bytes':>10} "
             f"{'resp B':>10} {'conns':>6} {'clients':>7}  top clients"]
    for r in recs[:top]:
        clients = ", ".join(f"{c['client']} ({c['requests']})" for c in r["top_clients"][:3])
        api = r["api"] if len(r["api"]) <= 44 else r["api"][:43] + "…"
        err = r.get("error_rate")
        p99 = r.get("latency_p99_ms")
        rb = r.get("response_bytes")
        line = (f"{api:<44} {r['requests']:>8} {'-' if err is None else f'{100 * err:.1f}':>6} "
                f"{'-' if p99 is None else f'{p99:.1f}':>8} {r['partial_requests']:>7} {r['packets']:>8} "
                f"{_bytes(r['bytes']):>10} {'-' if rb is None else _bytes(rb):>10} {r['new_connections']:>6} "
                f"{r['distinct_clients']:>7}  {clients}")
        lines.append(line[:width])
    if len(recs) > top:
        lines.append(f"... and {len(recs) - top} more")
    return "\n".join(lines)


class UsageView:
    """Receives committed outputs; shows the table (redrawn on a TTY) or JSON lines."""

    def __init__(self, mode: str = "table", top: int = 15, out: TextIO = sys.stdout) -> None:
        self.mode = mode
        self.top = top
        self.out = out
        self.latest: dict[str, dict[str, Any]] = {}
        self.tty = out.isatty()

    def __call__(self, outputs: list[Output]) -> None:
        recs = [o.record for o in outputs if isinstance(o.record, dict) and o.record.get("window_s", 60) == 60]
        if self.mode == "json":
            for o in outputs:
                if isinstance(o.record, dict):
                    print(json.dumps(o.record, separators=(",", ":")), file=self.out, flush=True)
            return
        if self.mode == "none" or not recs:
            return
        for r in recs:
            self.latest[r["api"]] = r
        newest = max(r["window_start_ms"] for r in self.latest.values())
        self.latest = {k: v for k, v in self.latest.items() if v["window_start_ms"] == newest}
        text = render(list(self.latest.values()), self.top)
        if self.tty:
            self.out.write("\x1b[H\x1b[2J" + text + "\n")
        else:
            self.out.write(text + "\n\n")
        self.out.flush()
