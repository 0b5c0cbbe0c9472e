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
from pathlib import Path

import pytest
import yaml
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from pktstream.schemas import headers as H
from tests.support.apps import alerts_cmd, run_alerts
from tests.support.helpers import NetnsHost, read_messages
from tests.support.producer_proc import PKTSTREAM, ProducerProcess

pytestmark = [pytest.mark.kernel, pytest.mark.kafka]


def audit_json(bootstrap: str, topic: str, stats_topic: str) -> list[dict]:
    r = subprocess.run([PKTSTREAM, "audit", "--bootstrap-servers", bootstrap, "--topic", topic,
                        "--stats-topic", stats_topic, "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("adaptive", [False, True], ids=["sampling-off", "adaptive-sampling"])
def test_burst_overflow_is_accounted_to_the_packet(
    kafka_bootstrap: str, make_host: Callable[..., NetnsHost], adaptive: bool, tmp_path: Path
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
    # the losses travel with the data: each message tells those since the one before (what the ring
    # lost after the last message was cut is in the final report only)
    told = sum(int(h.get(H.RINGBUF_FULL, b"0")) for _k, _v, h in read_messages(kafka_bootstrap, topic))
    assert 0 < told <= rep["ringbuf_full"]
    if adaptive:
        return
    # and an alert raised on this capture says how incomplete it was (issue 25, item 3)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"detectors": {"udp_flood": {"min_packets": 100}}}))
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"apis": []}))
    # (three partitions: the losses reach each once, with rows or in an empty message)
    docs = run_alerts(alerts_cmd(kafka_bootstrap, topic, f"t-loss-{uuid.uuid4().hex[:6]}", f"{topic}.alerts", rules,
                                 catalog, "--partitions", "3"))
    events = [d for d in docs if d["unmapped"]["pktstream"]["rule"] == "udp_flood" and d["activity_id"] in (1, 2)]
    # (one window, unless the burst straddled a 10 s boundary: then each says what fell in its span)
    assert sum(d["unmapped"]["pktstream"]["window_count"] for d in events) == rep["records_captured"]
    lost = [d["unmapped"]["pktstream"]["records_lost"] for d in events]
    assert max(lost) > 0 and max(lost) <= told and (lost == [told] or len(events) > 1), (lost, told)
    for d, n in zip(events, lost, strict=True):
        point = d["unmapped"]["pktstream"]["seen_by"][0]
        assert d["message"].endswith(f"; capture incomplete: {n} records lost by {point} meanwhile") if n else \
            "capture incomplete" not in d["message"]


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
