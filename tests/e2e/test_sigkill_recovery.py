"""A producer killed with SIGKILL: the next one on the interface carries on and accounts for the
dead run exactly, from the counters it left pinned in bpffs."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from pktstream.producer import sysbpf
from tests.support.helpers import NetnsHost, require
from tests.support.producer_proc import PKTSTREAM, ProducerProcess

pytestmark = [pytest.mark.kernel, pytest.mark.kafka]


def test_killed_run_is_accounted_exactly(kafka_bootstrap: str, make_host: Callable[..., NetnsHost]) -> None:
    require(sysbpf.is_bpffs("/sys/fs/bpf"), "needs bpffs on /sys/fs/bpf (the set-up mounts it)")
    host = make_host()
    topic, stats = f"kill-{uuid.uuid4().hex[:8]}", f"kill-stats-{uuid.uuid4().hex[:8]}"
    state = tempfile.mkdtemp(prefix="pktstream-test-state-")
    args = ("--interface", host.host_if, "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
            "--stats-topic", stats, "--payload-bytes", "0", "--no-adaptive-sampling")
    env = {"PKTSTREAM_HOME": state}
    frame = bytes(Ether(dst=host.host_mac, src=host.peer_mac) / IP(src=host.peer_ip, dst="198.18.0.8")
                  / UDP(sport=8, dport=9))

    first = ProducerProcess(*args, env=env)
    first.wait_event("producer_started")
    run_a = first.event("producer_started")["run_id"]
    host.send_frames([frame] * 3000)
    time.sleep(1.0)
    host.send_frames([frame] * 2000)  # killed while these are in flight: some never reach Kafka
    first.stop(signal.SIGKILL)

    second = ProducerProcess(*args, env=env)
    second.wait_event("producer_started")
    accounted = second.event("crashed_run_accounted")
    assert accounted["run_id"] == run_a and accounted["packets_seen"] == 5000
    host.send_frames([frame] * 700)
    time.sleep(1.0)
    assert second.stop() == 0

    r = subprocess.run([PKTSTREAM, "audit", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                        "--stats-topic", stats, "--json"], capture_output=True, text=True, timeout=120)
    runs = {x["run_id"]: x for x in json.loads(r.stdout)}
    a = runs[run_a]
    assert a["crashed"] and a["exact"], a
    rep = a["report"]
    assert rep["packets_seen"] == 5000 == a["unique"] + a["crash_lost"] + rep["ringbuf_full"]
    assert a["duplicates"] == 0
    b = runs[second.event("producer_started")["run_id"]]
    assert b["exact"] and not b["crashed"] and b["unique"] == b["report"]["packets_seen"] == 700
