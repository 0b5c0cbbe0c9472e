"""Where pktstream keeps its files."""

from __future__ import annotations

import os
from pathlib import Path


def state_home() -> Path:
    """Where pktstream keeps state (local broker data, spool): $PKTSTREAM_HOME or the XDG state dir."""
    base = os.environ.get("PKTSTREAM_HOME")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "pktstream"
