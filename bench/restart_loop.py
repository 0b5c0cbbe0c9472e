"""The alerts restart scenario, many times: does a consumer killed twice publish exactly what an
uninterrupted run publishes?

    sudo .venv/bin/python -m bench.restart_loop [--runs 40] [--jitter-s 0] [--bootstrap HOST:PORT]

Loads the topic of ``tests/e2e/test_alerts.py``'s restart test (two hosts on two packet
partitions in time order, attacks over several windows, a late spool) into a real broker (a
local one on port 19601 unless --bootstrap names one), runs ``pktstream alerts
--from-beginning --until-end`` once uninterrupted, then per run a new app id that is SIGKILLed
right after a commit (plus a random wait up to --jitter-s), twice, and then finishes. It prints
each run's verdict and the failures; a failed run's logs stay in the printed directory. The test
runs the scenario once; this finds the rare timing that one run may miss.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from tests.e2e.test_alerts import alerts_cmd, load, read_alerts, run_alerts
from tests.e2e.test_usage import committed


def killed_twice(cmd: list[str], bootstrap: str, app: str, topic: str, jitter_s: float, logs: Path) -> None:
    for k in range(2):
        with open(logs / f"{app}.{k}.log", "w") as err:
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
            base = committed(bootstrap, app, topic, f"{app}.repartition")
            while committed(bootstrap, app, topic, f"{app}.repartition") == base and p.poll() is None:
                time.sleep(0.02)
            time.sleep(random.random() * jitter_s)
            p.send_signal(signal.SIGKILL)
            p.wait(30)
    with open(logs / f"{app}.2.log", "w") as err:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, timeout=300, check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--jitter-s", type=float, default=0.0, help="wait up to this long after a commit to kill")
    ap.add_argument("--bootstrap", default=None)
    a = ap.parse_args()
    lk = None
    bootstrap = a.bootstrap
    if not bootstrap:
        from pktstream.producer.kafka_local import LocalKafka

        lk = LocalKafka(port=19601, data_dir=Path(tempfile.mkdtemp(prefix="pktstream-restart-")))
        lk.down()
        bootstrap = lk.up()
    logs = Path(tempfile.mkdtemp(prefix="pktstream-restart-logs-"))
    try:
        topic = f"restart-{uuid.uuid4().hex[:6]}"
        load(bootstrap, topic)
        rules = logs / "rules.yaml"
        rules.write_text(yaml.safe_dump({"detectors": {"syn_flood": {"min_half_open": 500}}}))
        catalog = logs / "catalog.yaml"
        catalog.write_text(yaml.safe_dump({"apis": []}))
        ref = sorted(json.dumps(d, sort_keys=True) for d in run_alerts(
            alerts_cmd(bootstrap, topic, f"ref-{uuid.uuid4().hex[:6]}", f"{topic}.ref", rules, catalog)))
        print(f"uninterrupted run: {len(ref)} alerts", flush=True)
        failed = []
        for i in range(a.runs):
            app = f"kill-{uuid.uuid4().hex[:6]}"
            cmd = alerts_cmd(bootstrap, topic, app, f"{topic}.{app}", rules, catalog, "--commit-interval-s", "0.2")
            killed_twice(cmd, bootstrap, app, topic, a.jitter_s, logs)
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
    finally:
        if lk is not None:
            lk.down()


if __name__ == "__main__":
    main()
