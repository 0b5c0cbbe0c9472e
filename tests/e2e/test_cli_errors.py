"""Bad input gets a clear error, as a user would meet it on the command line."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.helpers import NetnsHost, require, sh
from tests.support.producer_proc import PKTSTREAM, ProducerProcess


def run(*args: str, prefix: tuple[str, ...] = (), timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, PKTSTREAM, *args], capture_output=True, text=True, timeout=timeout)


def test_invalid_config_lists_every_problem() -> None:
    r = run("produce", "--payload-bytes", "999", "--codec", "lzma", "--xdp-mode", "fast", "--sample-rate", "0")
    assert r.returncode == 2
    for needle in ("payload_bytes: 999", "codec: 'lzma'", "xdp_mode: 'fast'", "sample_rate: 0"):
        assert needle in r.stderr


def test_unknown_interface(root: None) -> None:
    r = run("produce", "--interface", "nosuch0", "--bootstrap-servers", "127.0.0.1:1")
    assert r.returncode == 1
    assert "unknown interface 'nosuch0'" in r.stderr and "lo" in r.stderr


@pytest.mark.kafka
def test_unreachable_broker(root: None) -> None:
    r = run("produce", "--interface", "lo", "--bootstrap-servers", "127.0.0.1:1")
    assert r.returncode == 1
    assert "cannot reach Kafka at 127.0.0.1:1" in r.stderr


def test_missing_capabilities_are_named(root: None) -> None:
    require(shutil.which("capsh") is not None, "needs capsh (libcap2-bin)")
    drop = "cap_bpf,cap_net_admin,cap_perfmon,cap_sys_admin"
    cmd = f"{PKTSTREAM} produce --interface lo --bootstrap-servers 127.0.0.1:1"
    r = subprocess.run(["capsh", f"--drop={drop}", "--", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "without CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON" in r.stderr


@pytest.mark.kernel
@pytest.mark.kafka
def test_sigkill_leaves_no_xdp_program_attached(
    kafka_bootstrap: str, make_host: Callable[..., NetnsHost]
) -> None:
    host = make_host()
    prod = ProducerProcess("--interface", host.host_if, "--bootstrap-servers", kafka_bootstrap,
                           "--topic", "sigkill-test")
    prod.wait_event("producer_started")
    assert "xdp" in sh("ip", "-d", "link", "show", "dev", host.host_if).stdout
    prod.stop(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while "xdp" in sh("ip", "-d", "link", "show", "dev", host.host_if).stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "xdp" not in sh("ip", "-d", "link", "show", "dev", host.host_if).stdout
    # and a new producer attaches again at once
    prod2 = ProducerProcess("--interface", host.host_if, "--bootstrap-servers", kafka_bootstrap,
                            "--topic", "sigkill-test")
    prod2.wait_event("producer_started")
    assert prod2.stop() == 0
    assert "xdp" not in sh("ip", "-d", "link", "show", "dev", host.host_if).stdout


def test_no_python_traceback_for_user_errors() -> None:
    r = run("produce", "--config", str(Path(sys.prefix) / "missing.toml"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "missing.toml" in r.stderr


@pytest.mark.kernel
@pytest.mark.kafka
def test_runs_with_only_the_documented_capabilities(
    kafka_bootstrap: str, make_host: Callable[..., NetnsHost]
) -> None:
    """The bounding set holds CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON and nothing else."""
    require(shutil.which("setpriv") is not None, "needs setpriv (util-linux)")
    host = make_host()
    topic = f"leastpriv-{uuid.uuid4().hex[:6]}"
    prod = ProducerProcess("--interface", host.host_if, "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                           prefix=("setpriv", "--bounding-set=-all,+bpf,+net_admin,+perfmon", "--inh-caps=-all", "--"))
    prod.wait_event("producer_started")
    status = Path(f"/proc/{prod.proc.pid}/status").read_text()
    host.send_frames([bytes(Ether(dst=host.host_mac, src=host.peer_mac) / IP(src=host.peer_ip, dst="198.18.0.1")
                            / UDP(sport=1, dport=2))] * 10)
    time.sleep(1)
    assert prod.stop() == 0
    bnd = int(next(ln for ln in status.splitlines() if ln.startswith("CapBnd:")).split()[1], 16)
    assert bnd == (1 << 39) | (1 << 12) | (1 << 38)  # bpf, net_admin, perfmon
    stopped = prod.event("producer_stopped")
    assert stopped["records_delivered"] == stopped["packets_seen"] == 10


def test_consumers_list_every_problem_of_their_files(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("apis:\n  - {name: a, port: 0}\n  - {host: x}\n")
    r = run("usage", "--catalog", str(catalog), "--grace-s", "-1", "--bootstrap-servers", "127.0.0.1:1")
    assert r.returncode == 2, r.stderr
    assert "--grace-s must be >= 0" in r.stderr or "port must be 1..65535" in r.stderr
    r = run("usage", "--catalog", str(catalog), "--bootstrap-servers", "127.0.0.1:1")
    assert r.returncode == 2 and "port must be 1..65535" in r.stderr and "'name' is required" in r.stderr
    rules = tmp_path / "rules.yaml"
    rules.write_text("detectors:\n  port_scan: {min_ports: -3}\n  nosuch: {}\n")
    r = run("alerts", "--rules", str(rules), "--bootstrap-servers", "127.0.0.1:1")
    assert r.returncode == 2 and "detectors.port_scan.min_ports" in r.stderr and "detectors.nosuch" in r.stderr
    r = run("usage", "--since", "yesterday", "--commit-interval-s", "0", "--bootstrap-servers", "127.0.0.1:1")
    assert r.returncode == 2 and "--since: 'yesterday'" in r.stderr and "--commit-interval-s must be > 0" in r.stderr


@pytest.mark.kafka
def test_every_command_says_an_unreachable_broker_and_a_missing_topic_in_the_same_words(
        kafka_bootstrap: str) -> None:
    """One error path: one line in words, exit 1, no KafkaError{...}, no librdkafka log lines."""
    missing = f"nosuch-{uuid.uuid4().hex[:6]}"
    verbs = ("tail", "audit", "usage", "alerts", "activity")
    extras = {v: ("--metrics-port", "0") if v in ("usage", "alerts", "activity") else () for v in verbs}
    # each waits 10 s for the broker that is not there: side by side
    waiting = {v: subprocess.Popen([PKTSTREAM, v, "--bootstrap-servers", "127.0.0.1:1", *extras[v]], text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for v in verbs}
    unreachable = {v: subprocess.CompletedProcess(p.args, p.wait(60), *p.communicate()) for v, p in waiting.items()}
    for verb in verbs:
        extra = extras[verb]
        r = unreachable[verb]
        assert r.returncode == 1, (verb, r.stderr)
        assert r.stderr.startswith("pktstream: error: cannot reach Kafka at 127.0.0.1:1 within 10s: "), (verb, r.stderr)
        assert "Connection refused" in r.stderr and "KafkaError{" not in r.stderr, (verb, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (verb, r.stderr)
        r = run(verb, "--bootstrap-servers", kafka_bootstrap, "--topic", missing, *extra)
        assert r.returncode == 1, (verb, r.stderr)
        assert f"packet topic '{missing}' does not exist on the broker" in r.stderr, (verb, r.stderr)
        assert "Traceback" not in r.stderr and "KafkaError{" not in r.stderr, (verb, r.stderr)
