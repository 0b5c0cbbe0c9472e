"""Which run a producer on an interface is in, kept on disk so that its successor knows if it
ended cleanly. A run that did not (SIGKILL, crash, power loss) is accounted for by the next
producer on the same interface from the counters it left pinned in bpffs."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class RunState:
    host_id: str
    interface: str
    run_id: str
    stats_topic: str
    started_ns: int
    clean: bool = False
    directions: list[str] = field(default_factory=lambda: ["ingress"])  # what the run captured


class RunStateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> RunState | None:
        try:
            return RunState(**json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, state: RunState) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state)))
        os.replace(tmp, self.path)
