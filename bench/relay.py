"""Relay throughput: packet records per second through ``pktstream relay`` (the packet topic as one
record per message in the schema-registry wire format), and the bytes per record of both forms on
the broker.

    sudo .venv/bin/python -m bench.relay [--connections 200000] [--hosts 3] [--cpu 1] [--compression zstd]
                                         [--read-back usage]

Generates the both-direction mix of bench.consumers (tests/support/traffic.py: about 9.6 records per
connection, 128-byte payload prefixes), loads it into a topic of a local broker (port 19600, pinned
to the other CPUs), starts a local registry (Apicurio, ``pktstream registry``), then runs the real
command, ``pktstream relay --from-beginning --until-end``, pinned to one CPU with taskset (its
librdkafka threads included), and reports records / second between its assignment and its
``relay_stopped`` line, its peak RSS, and the bytes the broker's log holds per record for the packet
topic and for the relayed topic. ``--read-back APP``: then that consumer over the relayed topic and
over the packet topic (bench.consumers' measure), to show what reading one record per message costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import yaml
from confluent_kafka import Producer

from bench.consumers import through_kafka, topic_bytes
from pktstream.runtime.kafka import ensure_topic
from pktstream.runtime.kafka_local import LocalKafka
from pktstream.runtime.registry_local import LocalRegistry
from tests.support.helpers import wait_peak_rss_mb
from tests.support.traffic import CATALOG, fleet, generate

PKTSTREAM = str(Path(sys.executable).with_name("pktstream"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=200_000, help="per host (about 9.6 records each)")
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=1, help="the CPU the relay is pinned to")
    ap.add_argument("--span-s", type=float, default=60.0)
    ap.add_argument("--compression", default="zstd")
    ap.add_argument("--read-back", choices=["usage", "alerts", "activity"], default=None,
                    help="then run this consumer over the relayed topic and over the packet topic (records/s of each)")
    a = ap.parse_args()
    span_ns = int(a.span_s * 1e9)
    t = generate(a.connections, time.time_ns() - span_ns - 300 * 10**9, span_ns, clients=5000, responses=True)
    sent = fleet([(f"gen{h}", t) for h in range(a.hosts)])
    work = Path(tempfile.mkdtemp(prefix="pktstream-bench-relay-"))
    lk = LocalKafka(port=19600, data_dir=work / "kafka")
    reg = LocalRegistry(port=free_port(), data_dir=work / "registry")
    try:
        lk.down()
        bootstrap = lk.up()
        others = sorted(set(range(os.cpu_count() or 1)) - {a.cpu})
        pid = lk.pid()
        if pid and others and shutil.which("taskset"):
            subprocess.run(["taskset", "-a", "-p", "-c", ",".join(map(str, others)), str(pid)], check=True,
                           capture_output=True)
        url = reg.up()
        topic = f"bench-relay-{uuid.uuid4().hex[:6]}"
        ensure_topic({"bootstrap.servers": bootstrap}, topic, 6)
        prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "zstd",
                         "message.max.bytes": 16 << 20, "enable.idempotence": True})
        for host, m in sent:
            prod.produce(topic, m, key=host.encode())
            prod.poll(0)
        prod.flush(120)
        del prod
        out = f"{topic}.records"
        cmd = ["taskset", "-c", str(a.cpu), PKTSTREAM, "relay", "--bootstrap-servers", bootstrap, "--topic", topic,
               "--to", out, "--app-id", f"bench-relay-{uuid.uuid4().hex[:6]}", "--from-beginning", "--until-end",
               "--schema-registry", url, "--log-format", "json", "--compression", a.compression]
        with tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
            peak = wait_peak_rss_mb(p, timeout_s=1800)
            assert p.returncode == 0, f"relay exited {p.returncode}"
            err.seek(0)
            events = [json.loads(line) for line in err if line.startswith("{")]
        t0 = min(datetime.fromisoformat(e["timestamp"]) for e in events if e["event"] == "relay_assigned")
        stopped = next(e for e in events if e["event"] == "relay_stopped")
        seconds = (datetime.fromisoformat(stopped["timestamp"]) - t0).total_seconds()
        n = stopped["records_out"]
        packet_bytes = topic_bytes(lk.dir, topic) or 0
        out_bytes = topic_bytes(lk.dir, out) or 0
        back = {}
        if a.read_back:
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
                yaml.safe_dump(CATALOG, f)
            for name, t in (("relayed", out), ("packet", topic)):
                back[name] = through_kafka(a.read_back, bootstrap, t, Path(f.name), a.cpu, lk.dir,
                                           ["--schema-registry", url])
            os.unlink(f.name)
    finally:
        reg.down()
        lk.down()
        shutil.rmtree(work, ignore_errors=True)
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  machine: {platform.node()} {os.cpu_count()} CPUs "
          f"{platform.machine()} Linux {platform.release()}  Python {platform.python_version()}")
    print(f"records: {n:,}  hosts: {a.hosts}  payload: 128 B  directions: both  compression: {a.compression}")
    print(f"pktstream relay on 1 CPU: {n / seconds:,.0f} records/s ({n:,} in {seconds:.2f} s, "
          f"{stopped['transactions']} transactions)  peak RSS {peak:,} MB")
    print(f"bytes per record on the broker: packet topic {packet_bytes / n:.1f} (containers, zstd), "
          f"relayed topic {out_bytes / n:.1f} (one record per message, {a.compression})")
    for name, r in back.items():
        print(f"pktstream {a.read_back} over the {name} topic on 1 CPU: {r['rate']:,.0f} records/s "
              f"({r['records']:,} in {r['seconds']:.2f} s)  peak RSS {r['peak_rss_mb']:,} MB")


if __name__ == "__main__":
    main()
