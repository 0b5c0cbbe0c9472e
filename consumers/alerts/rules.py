"""Detector settings: each detector's defaults (its module declares them), overridden by the YAML
file of ``--rules``; every problem in the file is listed at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pktstream.consumers.alerts.detector import SEC
from pktstream.consumers.alerts.detectors import registry
from pktstream.consumers.alerts.ocsf import LOCAL_NETWORKS, networks
from pktstream.consumers.catalog import read_yaml
from pktstream.runtime.errors import ConfigError

SLIDE_HOPS = 5  # hops per window of a sliding detector whose hop_s is 0


@dataclass
class Rules:
    detectors: dict[str, dict[str, Any]]
    external_interfaces: list[str] = field(default_factory=list)
    close_after_windows: int = 1
    local_networks: list[str] = field(default_factory=lambda: list(LOCAL_NETWORKS))

    def on(self, name: str) -> bool:
        return bool(self.detectors[name]["enabled"])

    def window_ns(self, name: str) -> int:
        return int(self.detectors[name]["window_s"] * SEC)

    def step_ns(self, name: str) -> int:
        """How often the detector's window is evaluated: every hop_s (0: a fifth of window_s) for a
        detector with a sliding (hopping) window, every window_s for a tumbling one."""
        d = self.detectors[name]
        if "hop_s" not in d:
            return self.window_ns(name)
        return int(d["hop_s"] * SEC) if d["hop_s"] else self.window_ns(name) // SLIDE_HOPS


def load_rules(path: str | Path | None, data: Any = None) -> Rules:
    """Detector settings: the defaults, overridden by the YAML file's values; every problem listed."""
    if data is None and path:
        data = read_yaml(path, f"alerts config {path}")
    data = data or {}
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"alerts config {path}: expected a mapping"])
    unknown = set(data) - {"detectors", "external_interfaces", "close_after_windows", "local_networks"}
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)} (expected detectors, external_interfaces, "
                        "close_after_windows, local_networks)")
    defaults = {name: d.defaults for name, d in registry().items()}
    dets = {k: dict(v) for k, v in defaults.items()}
    given = data.get("detectors") or {}
    if not isinstance(given, dict):
        problems.append("detectors: expected a mapping of detector name to settings")
        given = {}
    for name, over in given.items():
        if name not in defaults:
            problems.append(f"detectors.{name}: no such detector (one of {', '.join(defaults)})")
            continue
        if not isinstance(over, dict):
            problems.append(f"detectors.{name}: expected a mapping")
            continue
        for k, v in over.items():
            if k not in defaults[name]:
                problems.append(f"detectors.{name}.{k}: unknown setting (known: {', '.join(defaults[name])})")
                continue
            want = defaults[name][k]
            if isinstance(want, bool):
                ok = isinstance(v, bool)
            elif isinstance(want, dict):  # port -> a whole number (per-service figures)
                ok = isinstance(v, dict) and all(
                    isinstance(p, int) and 0 < p < 65536 and isinstance(x, int) and not isinstance(x, bool) and x >= 0
                    for p, x in v.items())
            elif isinstance(want, list):
                ok = isinstance(v, list) and all(isinstance(x, int) and 0 < x < 65536 for x in v)
            elif isinstance(want, float):
                ok = isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
            else:
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= (1 if k == "window_s" else 0)
            if not ok:
                problems.append(f"detectors.{name}.{k}: {v!r} is not a valid {type(want).__name__}"
                                + (" >= 1" if k == "window_s" else ""))
            elif isinstance(want, dict):  # the ports given change, the others keep their defaults
                dets[name][k] = {**want, **v}
            else:
                dets[name][k] = v
    for name, d in registry().items():
        problems += [f"detectors.{name}: {p}" for p in d.validate(dets[name])]
    ext = data.get("external_interfaces") or []
    if not isinstance(ext, list) or not all(isinstance(x, str) for x in ext):
        problems.append("external_interfaces: expected a list of interface names (or host/interface)")
        ext = []
    local = data.get("local_networks", list(LOCAL_NETWORKS))
    if not isinstance(local, list) or not all(isinstance(x, str) for x in local):
        problems.append("local_networks: expected a list of networks (CIDR)")
        local = list(LOCAL_NETWORKS)
    else:
        for x in local:
            try:
                networks([x])
            except ValueError:
                problems.append(f"local_networks: {x!r} is not a network (CIDR)")
    close_after = data.get("close_after_windows", 1)
    if not isinstance(close_after, int) or close_after < 1:
        problems.append(f"close_after_windows: expected a whole number >= 1, got {close_after!r}")
        close_after = 1
    for name, cfg in dets.items():
        if cfg.get("hop_s") and cfg["window_s"] % cfg["hop_s"]:
            problems.append(f"detectors.{name}.hop_s: {cfg['hop_s']!r} must divide window_s ({cfg['window_s']!r})")
    if problems:
        raise ConfigError(problems)
    return Rules(dets, list(ext), close_after, list(local))
