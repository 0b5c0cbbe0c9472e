"""Consumer throughput: packet records per second through ``pktstream usage`` (and ``alerts``,
``activity``).

    sudo .venv/bin/python -m bench.consumers [--app usage|alerts|activity] [--connections 200000] [--cpu 1]
        [--span-s 20] [--directions both|ingress] [--restart-check SECONDS]

Generates traffic with a realistic API mix (tests/support/traffic.py: connections of 6 packets with
HTTP/1.1 requests and TLS ClientHellos, plus DNS; with --directions both, the default, the servers'
3 packets per connection too: SYN-ACK, the answer, FIN-ACK; 128-byte payload prefixes), loads it into a
topic of a real broker (a local one on port 19600 unless --bootstrap names one), then runs the
real command, ``pktstream <app> --from-beginning --until-end``, pinned to one CPU with taskset,
and reports records / second between its first assignment and its "caught up" log line. A
local broker is pinned to the other CPUs (all its threads), so that it does not share the
consumer's.
It also reports the command's peak RSS, its transactions (with how often stage one waited for stage
two and partitions were held back in event time: consumers/engine/intake.py) and how many
``state_degraded`` lines it logged (a partition's state over its budget, made less detailed), and
the in-process rate of the same work without Kafka (decode, features, re-key,
per-partition state), which is the ceiling the Kafka round trip eats into.

``--span-s`` is the event time the records cover. The default, 20 s for the default 1,980,000
records, is traffic of about 100,000 packets per second (a busy host; a consumer at 500,000/s
keeps up with five of them). A longer span is a quieter network replayed faster than it
happened: each window then holds fewer records, so the per-window work (opening and closing
tables, evaluating thresholds) weighs more per record; docs/benchmarks.md gives both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Producer

from pktstream.consumers.catalog import Catalog
from pktstream.consumers.engine import features
from pktstream.consumers.engine.runner import FOREVER
from pktstream.runtime.kafka import ensure_topic
from pktstream.schemas.columns import read_container
from tests.support.helpers import wait_peak_rss_mb
from tests.support.traffic import CATALOG, fleet, generate

PKTSTREAM = str(Path(sys.executable).with_name("pktstream"))


def processor(app: str, catalog: Catalog) -> Any:
    if app == "activity":
        from pktstream.consumers.activity.processor import ActivityProcessor

        return ActivityProcessor()
    if app == "usage":
        from pktstream.consumers.usage.processor import UsageProcessor

        return UsageProcessor(catalog)
    from pktstream.consumers.alerts.processor import AlertsProcessor
    from pktstream.consumers.alerts.rules import load_rules

    return AlertsProcessor(load_rules(None), catalog)


def in_process(app: str, msgs: list[bytes], nparts: int) -> float:
    p = processor(app, Catalog.from_data(CATALOG))
    states = {q: p.new_state() for q in range(nparts)}
    n = 0
    t = time.perf_counter()
    for m in msgs:
        b = read_container(m)
        n += b.n
        f = p.featurize(b, "gen/eth0")
        for q, part in p.route(f, nparts).items():
            p.process(states[q], features.decode(features.encode(part)))
    for st in states.values():
        p.close(st, FOREVER)
    return n / (time.perf_counter() - t)


def topic_bytes(data_dir: Path | None, topic: str) -> int | None:
    """The bytes a local broker's log holds for a topic (its segments), None for another broker."""
    if data_dir is None:
        return None
    return sum(f.stat().st_size for d in data_dir.rglob(f"{topic}-*") if d.is_dir() for f in d.glob("*.log"))


def command(app: str, bootstrap: str, topic: str, catalog: Path, cpu: int, app_id: str, out_topic: str,
            extra: list[str] | None = None, profile: str | None = None) -> list[str]:
    """The consumer's command line, pinned to ``cpu`` (under cProfile, writing ``profile``, when given)."""
    prof = [sys.executable, "-m", "cProfile", "-o", profile] if profile else []
    cmd = [*prof, PKTSTREAM, app, "--bootstrap-servers", bootstrap, "--topic", topic, "--app-id",
           app_id, "--connections-topic" if app == "activity" else f"--{app}-topic", out_topic,
           "--catalog", str(catalog),
           "--from-beginning", "--until-end", "--output", "none", "--metrics-port", "0", "--log-format", "json",
           *(extra or [])]
    return ["taskset", "-c", str(cpu), *cmd] if shutil.which("taskset") else cmd


def through_kafka(app: str, bootstrap: str, topic: str, catalog: Path, cpu: int,
                  data_dir: Path | None = None, extra: list[str] | None = None,
                  profile: str | None = None) -> dict[str, Any]:
    app_id = f"bench-{app}-{uuid.uuid4().hex[:6]}"
    cmd = command(app, bootstrap, topic, catalog, cpu, app_id, f"{topic}.{app}", extra, profile)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        peak_mb = wait_peak_rss_mb(proc, every_s=0.05)  # the command's own peak (VmHWM)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if proc.returncode:
        raise SystemExit(f"pktstream {app} failed ({proc.returncode}):\n{stderr[-3000:]}")
    t_assign = t_done = None
    done: dict[str, Any] = {}
    degraded = 0
    for line in stderr.splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        ts = datetime.fromisoformat(e.get("timestamp", "1970-01-01T00:00:00+00:00").replace("Z", "+00:00"))
        if e.get("event") == "partitions_assigned" and t_assign is None:
            t_assign = ts
        if e.get("event") == "stream_caught_up":
            t_done, done = ts, e
        degraded += e.get("event") == "state_degraded"
    assert t_assign and t_done, stderr[-2000:]
    secs = (t_done - t_assign).total_seconds()
    # a benchmark that set rows aside as late would measure less work than it claims
    late = done.get("records_out_of_order", 0) + done.get("late_records", 0)
    assert late == 0, f"{late} records counted late: the generated traffic is out of order"
    return {"records": done["records_in"], "seconds": secs, "rate": done["records_in"] / secs,
            "outputs": done["outputs"], "peak_rss_mb": peak_mb, "transactions": done["transactions"],
            "intake_waits": done.get("intake_waits", 0), "partitions_held": done.get("partitions_held", 0),
            "degraded": degraded,
            "repartition_bytes": topic_bytes(data_dir, f"{app_id}.repartition"),
            "state_bytes": topic_bytes(data_dir, f"{app_id}.state")}


def outputs(app: str, bootstrap: str, topic: str) -> list[str]:
    """An output topic's committed records, each as sorted JSON (the order of a topic's partitions
    aside)."""
    from tests.support.apps import read_usage
    from tests.support.helpers import read_messages

    if app == "usage":
        recs = read_usage(bootstrap, topic)
    else:
        recs = [json.loads(v) for _k, v, _h in read_messages(bootstrap, topic)]
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in recs)


def restart_check(app: str, bootstrap: str, topic: str, catalog: Path, cpu: int, kill_after_s: float,
                  extra: list[str]) -> tuple[int, int, float]:
    """The same run under another app id, SIGKILLed ``kill_after_s`` after a commit, twice, then
    finished: how many records it published, how many of them differ from the uninterrupted run's
    (in either direction), and its wall time."""
    from tests.support.apps import kill_twice_then_finish

    app_id = f"bench-{app}-kill-{uuid.uuid4().hex[:6]}"
    out = f"{topic}.{app}.restarted"
    t = time.monotonic()
    kill_twice_then_finish(command(app, bootstrap, topic, catalog, cpu, app_id, out, extra), bootstrap, app_id,
                           topic, delay_s=lambda: kill_after_s)
    wall = time.monotonic() - t
    ref, got = outputs(app, bootstrap, f"{topic}.{app}"), outputs(app, bootstrap, out)
    a, b = Counter(ref), Counter(got)
    diff = sum(((a - b) + (b - a)).values())
    if diff:
        with tempfile.NamedTemporaryFile("w", prefix="pktstream-restart-diff-", suffix=".txt", delete=False) as f:
            f.writelines(f"only uninterrupted: {r}\n" for r in (a - b).elements())
            f.writelines(f"only restarted: {r}\n" for r in (b - a).elements())
        print(f"restart check: the differing records are in {f.name}")
    return len(got), diff, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--app", choices=["usage", "alerts", "activity"], default="usage")
    ap.add_argument("--connections", type=int, default=200_000, help="per host (about 6.6 records each)")
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--directions", choices=["both", "ingress"], default="both",
                    help="both: the servers' answers too (SYN-ACK, status line or ServerHello, FIN-ACK per "
                         "connection: about 9.6 records per connection); ingress: the clients' packets only")
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument("--cpu", type=int, default=1, help="the CPU the consumer is pinned to")
    ap.add_argument("--span-s", type=float, default=20.0,
                    help="event time the generated traffic spans (20: about 100,000 records per second of traffic; "
                         "a longer span is a quieter network replayed faster, with more windows per record)")
    ap.add_argument("--app-arg", action="append", default=[], metavar="ARG",
                    help="an argument for the consumer's command line (repeat: --app-arg=-X --app-arg=PROP=VALUE)")
    ap.add_argument("--restart-check", type=float, default=None, metavar="SECONDS",
                    help="after the measured run, run the app again under another id, SIGKILLed this many seconds "
                         "after a commit, twice, then finished; and compare what the two published")
    ap.add_argument("--profile", metavar="FILE",
                    help="run the measured consumer under cProfile, its statistics written to FILE (slower: for "
                         "where the time goes, not for the figures)")
    a = ap.parse_args()
    span_ns = int(a.span_s * 1e9)
    t = generate(a.connections, time.time_ns() - span_ns - 300 * 10**9, span_ns, clients=5000,
                 responses=a.directions == "both")
    sent = fleet([(f"gen{h}", t) for h in range(a.hosts)])
    msgs = [m for _h, m in sent]
    rate_local = in_process(a.app, msgs, 6)
    lk = None
    bootstrap = a.bootstrap
    if not bootstrap:
        from pktstream.runtime.kafka_local import LocalKafka

        lk = LocalKafka(port=19600, data_dir=Path(tempfile.mkdtemp(prefix="pktstream-bench-")))
        lk.down()
        bootstrap = lk.up()
        broker_pid = lk.pid()
        others = sorted(set(range(os.cpu_count() or 1)) - {a.cpu})
        if broker_pid and others and shutil.which("taskset"):  # the broker (every thread) off the consumer's CPU
            subprocess.run(["taskset", "-a", "-p", "-c", ",".join(map(str, others)), str(broker_pid)],
                           check=True, capture_output=True)
    try:
        topic = f"bench-{a.app}-{uuid.uuid4().hex[:6]}"
        ensure_topic({"bootstrap.servers": bootstrap}, topic, 6)
        prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "zstd",
                         "message.max.bytes": 16 << 20, "enable.idempotence": True})
        for host, m in sent:
            prod.produce(topic, m, key=host.encode())
            prod.poll(0)
        prod.flush(120)
        del prod  # (a live client logs its reconnects when the broker stops)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(CATALOG, f)
        res = through_kafka(a.app, bootstrap, topic, Path(f.name), a.cpu, lk.dir if lk is not None else None,
                            a.app_arg, a.profile)
        packet_bytes = topic_bytes(lk.dir if lk is not None else None, topic)
        restarted = None
        if a.restart_check is not None:
            restarted = restart_check(a.app, bootstrap, topic, Path(f.name), a.cpu, a.restart_check, a.app_arg)
        os.unlink(f.name)
    finally:
        if lk is not None:
            lk.down()
            shutil.rmtree(lk.dir, ignore_errors=True)  # the broker's data: nothing left under /tmp
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  machine: {platform.node()} {os.cpu_count()} CPUs "
          f"{platform.machine()} Linux {platform.release()}  Python {platform.python_version()}")
    print(f"app: {a.app}  records: {len(msgs) and res['records']:,}  hosts: {a.hosts}  payload: 128 B  "
          f"event time spanned: {a.span_s:g} s  directions: {a.directions}")
    print(f"in process, no Kafka          : {rate_local:,.0f} records/s")
    print(f"pktstream {a.app} on 1 CPU (Kafka): {res['rate']:,.0f} records/s  ({res['records']:,} in "
          f"{res['seconds']:.2f} s, {res['outputs']} records out)")
    conns = a.connections * a.hosts
    print(f"connections: {conns:,} ({conns / res['seconds']:,.0f} per second)  peak RSS: {res['peak_rss_mb']:,.0f} MB")
    print(f"transactions: {res['transactions']:,} (stage one waited {res['intake_waits']}, partitions held "
          f"{res['partitions_held']})  state_degraded lines: {res['degraded']}")
    if restarted is not None:
        n, diff, wall = restarted
        print(f"restart check: killed {a.restart_check:g} s after a commit, twice, then finished ({wall:.0f} s): "
              f"{n:,} records published, {diff} differing from the uninterrupted run's "
              f"({res['outputs']:,})" + (" IDENTICAL" if diff == 0 else " DIFFERENT"))
    if packet_bytes:
        rb, sb = res["repartition_bytes"] or 0, res["state_bytes"] or 0
        print(f"bytes per record: packet topic {packet_bytes / res['records']:.1f} (zstd), repartition "
              f"{rb / res['records']:.1f}, state {sb / res['records']:.1f} (as written, before compaction)")


if __name__ == "__main__":
    main()
