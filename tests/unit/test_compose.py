"""docker-compose.yml cannot run here (no Docker engine); check its services and settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_services() -> None:
    services = load()["services"]
    assert {"kafka", "producer", "tail"} <= set(services)


def test_kafka_is_kraft_single_node() -> None:
    k = load()["services"]["kafka"]
    assert k["image"].startswith("apache/kafka:4.")
    env = k["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "CONTROLLER" in env["KAFKA_LISTENERS"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] in ("1", 1)
    assert "healthcheck" in k


def test_producer_has_what_bcc_and_xdp_need() -> None:
    p = load()["services"]["producer"]
    assert p["privileged"] is True
    assert p["network_mode"] == "host"
    mounts = " ".join(p["volumes"])
    for m in ("/sys/kernel/btf", "/lib/modules", "/usr/src", "/sys/fs/bpf"):
        assert m in mounts, m
    assert p["environment"]["PKTSTREAM_BOOTSTRAP_SERVERS"]
    assert p["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "produce" in p["command"]


def test_tail_consumer_reads_the_same_topic() -> None:
    s = load()["services"]
    assert "tail" in s["tail"]["command"]
    assert s["tail"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_named_volumes_are_declared() -> None:
    data = load()
    declared = set(data.get("volumes") or {})
    for name, svc in data["services"].items():
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0]
            if not src.startswith(("/", ".")):
                assert src in declared, f"{name} uses undeclared volume {src}"
    assert "/var/lib/pktstream" in " ".join(data["services"]["producer"]["volumes"])
