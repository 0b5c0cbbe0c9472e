"""Kafka with SASL/SCRAM-SHA-512 over TLS: a real broker configured that way (self-signed CA).

The producer and tail take the settings from a properties file and PKTSTREAM_KAFKA__ variables
(never the command line) and pass them to librdkafka; the password never shows in a process's
arguments, in logs or in the logged configuration; a wrong password is a clear error at start.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from pktstream.runtime.kafka_local import LocalKafka
from tests.support.helpers import NetnsHost, running_broker
from tests.support.producer_proc import PKTSTREAM, ProducerProcess

pytestmark = [pytest.mark.kafka]

PORT = int(os.environ.get("PKTSTREAM_TEST_SASL_PORT", "19310"))


@pytest.fixture(scope="module")
def sasl_broker(root: None) -> Iterator[LocalKafka]:
    with running_broker(PORT, "sasl", sasl_port=PORT + 2, sasl_password=secrets.token_hex(12)) as lk:
        yield lk


def client_props(lk: LocalKafka, password: str) -> dict[str, str]:
    return {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": lk.sasl_user,
            "sasl.password": password, "ssl.ca.location": str(lk.ca_file)}


def x_flags(props: dict[str, str]) -> list[str]:
    return [a for k, v in props.items() for a in ("-X", f"{k}={v}")]


@pytest.mark.kernel
def test_produce_and_tail_over_sasl_ssl_with_no_secret_on_a_command_line(
        sasl_broker: LocalKafka, make_host: Callable[..., NetnsHost], tmp_path: Path) -> None:
    """The producer takes its Kafka properties from a properties file and the password from a
    PKTSTREAM_KAFKA__ variable, `pktstream tail` from PKTSTREAM_KAFKA_CONFIG: the password is in
    neither process's arguments (/proc/PID/cmdline, what `ps` shows every user) nor in any log."""
    host = make_host()
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    props = client_props(sasl_broker, sasl_broker.sasl_password)
    password = props.pop("sasl.password")
    conf = tmp_path / "kafka.properties"
    conf.write_text("# the producer's role\n" + "".join(f"{k}={v}\n" for k, v in props.items()))
    conf.chmod(0o600)
    prod = ProducerProcess("--interface", host.host_if, "--bootstrap-servers", sasl_broker.sasl_bootstrap,
                           "--topic", topic, "--stats-topic", f"{topic}-stats", "--kafka-config", str(conf),
                           env={"PKTSTREAM_KAFKA__SASL__PASSWORD": password})
    prod.wait_event("producer_started")
    cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in (prod.proc.pid,)]
    frame = bytes(Ether(dst=host.host_mac, src=host.peer_mac) / IP(src=host.peer_ip, dst="198.18.0.3")
                  / UDP(sport=3, dport=4))
    host.send_frames([frame] * 50)
    assert prod.stop() == 0
    assert prod.event("producer_stopped")["records_delivered"] == 50
    reader = tmp_path / "reader.properties"
    reader.write_text("".join(f"{k}={v}\n" for k, v in {**props, "sasl.password": password}.items()))
    t = subprocess.Popen([PKTSTREAM, "tail", "--bootstrap-servers", sasl_broker.sasl_bootstrap, "--topic", topic,
                          "--from-beginning", "--no-follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "PKTSTREAM_KAFKA_CONFIG": str(reader)})
    with contextlib.suppress(OSError):
        cmdlines.append(Path(f"/proc/{t.pid}/cmdline").read_bytes())
    out, err = t.communicate(timeout=120)
    assert t.returncode == 0, err
    assert len(out.splitlines()) == 50
    assert all(password.encode() not in c for c in cmdlines) and len(cmdlines) == 2
    logged = json.dumps(prod.events) + "".join(prod.other_lines) + out + err
    assert password not in logged
    assert prod.event("config_effective")["kafka"]["sasl.password"] == "***"


def test_wrong_password_is_a_clear_error_without_the_secret(sasl_broker: LocalKafka) -> None:
    wrong = "not-" + secrets.token_hex(6)
    r = subprocess.run([PKTSTREAM, "produce", "--interface", "lo", "--bootstrap-servers", sasl_broker.sasl_bootstrap,
                        "--metrics-port", "0", *x_flags(client_props(sasl_broker, wrong))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    error = next(ln for ln in r.stderr.splitlines() if ln.startswith("pktstream: error:"))
    assert f"cannot reach Kafka at {sasl_broker.sasl_bootstrap}" in error
    assert "Authentication failed" in error and "SCRAM-SHA-512" in error
    assert wrong not in r.stderr and wrong not in r.stdout
