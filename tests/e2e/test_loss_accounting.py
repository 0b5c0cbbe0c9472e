"""Exact loss accounting, in the stream itself: packets sent = records in the topic + losses counted.

A burst far larger than a deliberately small ring buffer is sent from a namespace;
the producer publishes what it can, the kernel counts every record it could not
queue, and ``pktstream audit`` reconciles the topics to the packet.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from tests.support.helpers import NetnsHost
from tests.support.producer_proc import PKTSTREAM, ProducerProcess

pytestmark = [pytest.mark.kernel, pytest.mark.kafka]


def audit_json(bootstrap: str, topic: str, stats_topic: str) -> list[dict]:
    r = subprocess.run([PKTSTREAM, "audit", "--bootstrap-servers", bootstrap, "--topic", topic,
                        "--stats-topic", stats_topic, "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("adaptive", [False, True], ids=["sampling-off", "adaptive-sampling"])
def test_burst_overflow_is_accounted_to_the_packet(
    kafka_bootstrap: str, make_host: Callable[..., NetnsHost], adaptive: bool
) -> None:
    host = make_host()
    topic, stats_topic = f"loss-{uuid.uuid4().hex[:8]}", f"loss-stats-{uuid.uuid4().hex[:8]}"
    args = ["--interface", host.host_if, "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
            "--stats-topic", stats_topic, "--ringbuf-bytes", "65536", "--stats-publish", "0.5",
            "--payload-bytes", "0"]
    if not adaptive:
        args.append("--no-adaptive-sampling")
    prod = ProducerProcess(*args)
    prod.wait_event("producer_started")
    frame = bytes(Ether(dst=host.host_mac, src=host.peer_mac) / IP(src=host.peer_ip, dst="198.18.0.77")
                  / UDP(sport=1, dport=9) / Raw(b"x" * 18))
    sent = 30_000
    host.send_frames([frame] * sent)
    assert prod.stop() == 0
    stopped = prod.event("producer_stopped")

    runs = audit_json(kafka_bootstrap, topic, stats_topic)
    assert len(runs) == 1
    run = runs[0]
    rep = run["report"]
    assert rep["final"] is True
    assert rep["packets_seen"] == sent
    assert rep["ringbuf_full"] + (rep["sampled_out"] if adaptive else 0) > 0  # the burst did overflow
    # every packet sent is in the topic once, or counted as lost with its cause
    assert sent == run["unique"] + rep["ringbuf_full"] + rep["sampled_out"] + rep["records_failed"]
    assert run["duplicates"] == 0 and run["missing"] == 0 and run["unexplained"] == 0
    assert run["kernel_identity"] is True
    assert run["unique"] == rep["records_captured"] == stopped["records_delivered"]
    if not adaptive:
        assert rep["sampled_out"] == 0


def test_metrics_and_health_endpoints(kafka_bootstrap: str, make_host: Callable[..., NetnsHost]) -> None:
    import socket
    import urllib.request

    host = make_host()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prod = ProducerProcess("--interface", host.host_if, "--bootstrap-servers", kafka_bootstrap,
                           "--topic", f"metrics-{uuid.uuid4().hex[:8]}", env={"PKTSTREAM_METRICS_PORT": str(port)})
    try:
        prod.wait_event("metrics_listening")
        frame = bytes(Ether(dst=host.host_mac, src=host.peer_mac) / IP(src=host.peer_ip, dst="198.18.0.9")
                      / UDP(sport=5, dport=6))
        host.send_frames([frame] * 25)
        deadline = time.monotonic() + 10
        line = ""
        while time.monotonic() < deadline and not line.endswith(" 25.0"):
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            line = next(ln for ln in text.splitlines() if ln.startswith("pktstream_packets_seen_total{"))
            time.sleep(0.2)
        assert line.endswith(" 25.0") and f'interface="{host.host_if}"' in line
        assert "pktstream_ringbuf_full_by_cpu_total{" in text and "pktstream_sample_rate{" in text
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status == 200 and health.read() == b"ok\n"
    finally:
        assert prod.stop() == 0
