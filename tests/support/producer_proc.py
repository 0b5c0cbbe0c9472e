"""Run ``pktstream produce`` as a user would, as a subprocess, and watch its JSON log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PKTSTREAM = str(Path(sys.executable).with_name("pktstream"))


def private_dir(kind: str) -> str:
    """A directory of its own for each producer a test starts (spool, state)."""
    return tempfile.mkdtemp(prefix=f"pktstream-test-{kind}-")


class ProducerProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> None:
        self.events: list[dict[str, Any]] = []
        self.other_lines: list[str] = []
        # no metrics port unless a test asks: several producers run side by side
        # state (run files, default spool) in a directory of the test's own
        full_env = {**os.environ, "PKTSTREAM_LOG_FORMAT": "json", "PKTSTREAM_METRICS_PORT": "0",
                    "PKTSTREAM_SPOOL_DIR": private_dir("spool"), "PKTSTREAM_HOME": private_dir("state"),
                    **(env or {})}
        self.proc = subprocess.Popen([*prefix, PKTSTREAM, "produce", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=full_env)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                self.events.append(json.loads(line))
            except json.JSONDecodeError:
                self.other_lines.append(line)

    def wait_event(self, name: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e.get("event") == name:
                    return e
            if self.proc.poll() is not None:
                self._t.join(2)
                raise AssertionError(f"producer exited {self.proc.returncode} before {name}: "
                                     f"{self.events} {self.other_lines}")
            time.sleep(0.05)
        raise AssertionError(f"no {name} within {timeout}s: {self.events}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._t.join(5)
        return rc

    def event(self, name: str) -> dict[str, Any]:
        return next(e for e in self.events if e.get("event") == name)


def audit_runs(bootstrap: str, topic: str, stats: str) -> list[dict[str, Any]]:
    """``pktstream audit --json`` of a topic, every run, with the table an operator sees printed too
    (``pytest -s`` shows it)."""
    r = subprocess.run([PKTSTREAM, "audit", "--bootstrap-servers", bootstrap, "--topic", topic,
                        "--stats-topic", stats, "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    table = subprocess.run([PKTSTREAM, "audit", "--bootstrap-servers", bootstrap, "--topic", topic,
                            "--stats-topic", stats], capture_output=True, text=True, timeout=120)
    print(table.stdout)
    return list(json.loads(r.stdout))


def single_run_audit(bootstrap: str, topic: str, stats: str) -> dict[str, Any]:
    """audit_runs of a topic written by one producer run (asserted)."""
    runs = audit_runs(bootstrap, topic, stats)
    assert len(runs) == 1, runs
    return dict(runs[0])
