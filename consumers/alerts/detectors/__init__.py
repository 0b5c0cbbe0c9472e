"""The detectors of ``pktstream alerts``, one module each.

A module here defines one ``detector.Detector`` subclass: its name, rule text, defaults,
severity, ATT&CK technique, the columns it reads, and how it selects rows, decides a window and
describes what it found. ``registry()`` finds them all; adding a detector is adding a module (and
its test), nothing else.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from functools import cache

from pktstream.consumers.alerts.detector import Detector


@cache
def registry() -> dict[str, type[Detector]]:
    """Every detector by name, in their declared order (the order one window's alerts are emitted in)."""
    found: list[type[Detector]] = []
    for m in pkgutil.iter_modules(__path__):
        mod = importlib.import_module(f"{__name__}.{m.name}")
        classes = [c for _, c in inspect.getmembers(mod, inspect.isclass)
                   if issubclass(c, Detector) and c is not Detector and c.__module__ == mod.__name__]
        if len(classes) != 1:
            raise ImportError(f"detector module {mod.__name__} must define exactly one Detector, found {len(classes)}")
        found.append(classes[0])
    names = [d.name for d in found]
    if len(set(names)) != len(names):
        raise ImportError(f"two detectors share a name: {sorted(names)}")
    return {d.name: d for d in sorted(found, key=lambda d: (d.order, d.name))}
