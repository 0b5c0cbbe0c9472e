"""The alerts restart scenario, many times: does a consumer killed twice publish exactly what an
uninterrupted run publishes?

    sudo .venv/bin/python -m bench.restart_loop [--runs 40] [--jitter-s 0] [--bootstrap HOST:PORT]

Loads the topic of the alerts restart test (``tests/support/apps.py``) (two hosts on two packet
partitions in time order, attacks over several windows, a late spool) into a real broker (a
local one on port 19601 unless --bootstrap names one), runs ``pktstream alerts
--from-beginning --until-end`` once uninterrupted, then per run a new app id that is SIGKILLed
right after a commit (plus a random wait up to --jitter-s), twice, and then finishes. It prints
each run's verdict and the failures; a failed run's logs stay in the printed directory. The test
runs the scenario once; this finds the rare timing that one run may miss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
import uuid
from pathlib import Path

from tests.support.apps import alerts_cmd, kill_twice_then_finish, read_alerts, restart_scenario, run_alerts
from tests.support.helpers import running_broker


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--jitter-s", type=float, default=0.0, help="wait up to this long after a commit to kill")
    ap.add_argument("--bootstrap", default=None)
    a = ap.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="pktstream-restart-logs-"))
    with contextlib.ExitStack() as stack:
        bootstrap = a.bootstrap or stack.enter_context(running_broker(19601, "restart-loop")).bootstrap
        topic, rules, catalog = restart_scenario(bootstrap, logs)
        ref = sorted(json.dumps(d, sort_keys=True) for d in run_alerts(
            alerts_cmd(bootstrap, topic, f"ref-{uuid.uuid4().hex[:6]}", f"{topic}.ref", rules, catalog)))
        print(f"uninterrupted run: {len(ref)} alerts", flush=True)
        failed = []
        for i in range(a.runs):
            app = f"kill-{uuid.uuid4().hex[:6]}"
            cmd = alerts_cmd(bootstrap, topic, app, f"{topic}.{app}", rules, catalog, "--commit-interval-s", "0.2")
            kill_twice_then_finish(cmd, bootstrap, app, topic, delay_s=lambda: random.random() * a.jitter_s,
                                   logs=logs)
            got = sorted(json.dumps(d, sort_keys=True) for d in read_alerts(bootstrap, f"{topic}.{app}"))
            ok = got == ref
            print(f"run {i + 1}: {'same alerts' if ok else f'DIFFERENT: {len(got)} alerts'}  ({app})", flush=True)
            if ok:
                for f in logs.glob(f"{app}.*.log"):
                    f.unlink()
            else:
                failed.append(app)
        print(f"{a.runs} runs, {len(failed)} with other alerts than the uninterrupted run"
              + (f"; their logs: {logs}" if failed else ""))


if __name__ == "__main__":
    main()
