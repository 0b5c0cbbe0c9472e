"""State that traffic-chosen strings would grow stays bounded: 600,000 requests to one server, each
with a Host header of its own and answered 200, through ``pktstream usage`` live. Every request is
counted; the API rows, the state snapshots, the process's memory and /metrics stay bounded; the
consumer keeps committing."""

from __future__ import annotations

import io
import re
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import fastavro
import numpy as np
import pytest
import yaml
from confluent_kafka import Producer

from pktstream.runtime.kafka import ensure_topic
from tests.support.apps import PKTSTREAM, log_events
from tests.support.helpers import peak_rss_mb, read_messages
from tests.support.traffic import PAYLOAD, Traffic, containers, v4

pytestmark = pytest.mark.kafka

N = 600_000
MORE = 20_000
HOST_DIGITS = 7


def distinct_hosts(n: int, t0: int, span_ns: int) -> Traffic:
    """n requests ``GET / HTTP/1.1`` with ``Host: h<i>.example.test`` on the connections of 2,000
    clients to 10.1.0.10:80, each answered ``HTTP/1.1 200 OK`` 2 ms later (egress); built with numpy."""
    head = b"GET / HTTP/1.1\r\nHost: h"
    tail = b".example.test\r\n\r\n"
    req = np.zeros((n, PAYLOAD), np.uint8)
    req[:, : len(head)] = np.frombuffer(head, np.uint8)
    i = np.arange(n)
    for k in range(HOST_DIGITS):  # the host's digits, most significant first
        req[:, len(head) + k] = 48 + (i // 10 ** (HOST_DIGITS - 1 - k)) % 10
    req[:, len(head) + HOST_DIGITS: len(head) + HOST_DIGITS + len(tail)] = np.frombuffer(tail, np.uint8)
    req_len = len(head) + HOST_DIGITS + len(tail)
    ans = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    resp = np.zeros((n, PAYLOAD), np.uint8)
    resp[:, : len(ans)] = np.frombuffer(ans, np.uint8)
    client = np.array([list(v4(f"10.77.{c >> 8}.{c & 255}")) for c in range(2000)], np.uint8)[i % 2000]
    server = np.frombuffer(v4("10.1.0.10"), np.uint8)[None, :].repeat(n, 0)
    sport = np.full(n, 10000)  # keep-alive: 2,000 connections, each with requests for many hosts (a proxy's)
    t = t0 + i * span_ns // n
    cols = {
        "ts_ns": np.concatenate([t, t + 2_000_000]),
        "src_addr": np.concatenate([client, server]), "dst_addr": np.concatenate([server, client]),
        "src_port": np.concatenate([sport, np.full(n, 80)]), "dst_port": np.concatenate([np.full(n, 80), sport]),
        "tcp_flags": np.full(2 * n, 0x18), "direction": np.concatenate([np.zeros(n), np.ones(n)]).astype(np.int64),
        "payload": np.concatenate([req, resp]),
        "payload__len": np.concatenate([np.full(n, req_len), np.full(n, len(ans))]),
    }
    cols["payload_len"] = cols["payload__len"]
    cols["wire_len"] = cols["payload__len"] + 66
    order = np.argsort(cols["ts_ns"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    cols["seq"] = np.arange(2 * n)
    for name, val in (("ifindex", 2), ("rx_queue", 0), ("ip_version", 4), ("protocol", 6), ("ttl", 64),
                      ("frag_flags", 2), ("frag_offset", 0), ("vlan_outer", 0), ("vlan_inner", 0),
                      ("ethertype", 0x0800), ("flags", 0), ("sample_rate", 1), ("segments", 1)):
        cols[name] = np.full(2 * n, val, dtype=np.int64)
    return Traffic(cols, 2 * n)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else -1.0


def done(text: str, records: int, outputs_before: float) -> bool:
    """Has the consumer read ``records`` and closed every window they opened (stage two too)?"""
    return metric(text, "pktstream_consumer_records_in_total") == records and \
        metric(text, "pktstream_consumer_outputs_total") > outputs_before and \
        metric(text, "pktstream_consumer_open_windows") == 0


def test_600000_distinct_host_headers_keep_state_memory_and_metrics_bounded(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"bounded-{uuid.uuid4().hex[:8]}"
    ensure_topic({"bootstrap.servers": kafka_bootstrap}, topic, 1,
                 config={"max.message.bytes": str(64 << 20), "message.timestamp.type": "LogAppendTime"})
    t0 = (time.time_ns() - 10 * 60 * 10**9) // (60 * 10**9) * (60 * 10**9)
    traffic = distinct_hosts(N, t0, 4 * 60 * 10**9)
    p = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 64 << 20, "linger.ms": 20})
    for m in containers(traffic, batch=20_000, host="gw"):
        p.produce(topic, m, key=b"gw", partition=0)
    assert p.flush(60) == 0
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"apis": []}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = f"t-bs-{uuid.uuid4().hex[:6]}"
    cmd = [PKTSTREAM, "usage", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--app-id", app,
           "--usage-topic", f"{topic}.usage", "--catalog", str(catalog), "--from-beginning", "--no-hours",
           "--output", "none",
           "--metrics-port", str(port), "--metrics-address", "127.0.0.1", "--log-format", "json"]
    with open(tmp_path / "usage.log", "w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 240
            text = ""
            while time.monotonic() < deadline:  # live: until every record is read and the windows closed
                time.sleep(1)
                assert proc.poll() is None, "the consumer stopped"
                try:
                    text = scrape(port)
                except OSError:
                    continue
                if done(text, 2 * N, 0):
                    break
            else:
                raise AssertionError(f"not caught up: {text[-2000:]}")
            # and it keeps going live: traffic of now, with names past the caps, read and committed
            t_before = metric(text, "pktstream_consumer_transactions_total")
            more = distinct_hosts(MORE, time.time_ns() - 5 * 10**9, 5 * 10**9)
            for m in containers(more, batch=20_000, host="gw"):
                p.produce(topic, m, key=b"gw", partition=0)
            assert p.flush(60) == 0
            while metric(text, "pktstream_consumer_records_in_total") < 2 * (N + MORE):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(1)
                text = scrape(port)
            time.sleep(2)
            text = scrape(port)
            assert metric(text, "pktstream_consumer_transactions_total") > t_before
            assert metric(text, "pktstream_consumer_late_records_total") == 0
            peak_mb = peak_rss_mb(proc.pid)
            assert peak_mb > 0
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
        err.seek(0)
        events = log_events(err.read())
    assert proc.returncode == 0
    stopped = [e for e in events if e["event"] == "stream_stopped"][-1]
    assert stopped["aborted"] == 0 and stopped["records_in"] == 2 * (N + MORE)
    # /metrics: the RED label sets capped (100 routes of the server and its _OTHER, one method and
    # status), so the exposition stays about 8 KB a label set whatever the number of names
    assert 0 < metric(text, "pktstream_consumer_red_label_sets") <= 101
    assert len(text) < 1 << 20, len(text)
    # every request counted, in at most the capped number of rows per minute
    rows = []
    for _k, v, _h in read_messages(kafka_bootstrap, f"{topic}.usage"):
        rows += [r for r in fastavro.reader(io.BytesIO(v)) if isinstance(r, dict) and r["window_s"] == 60]
    assert sum(r["requests"] for r in rows) == N  # (the live minute is still open)
    per_minute: dict[object, int] = {}
    for r in rows:
        per_minute[r["window_start_ms"]] = per_minute.get(r["window_start_ms"], 0) + 1
    assert max(per_minute.values()) <= 1001 + 1, per_minute  # the named rows, the server's _OTHER row
    assert sum(r["requests"] for r in rows if r["api"].endswith("_OTHER")) > N // 2
    # the state snapshots: bounded whatever the number of names
    sizes = [len(v) for _k, v, _h in read_messages(kafka_bootstrap, f"{app}.state")]
    assert sizes and max(sizes) < 16 << 20, max(sizes)
    # the peak follows the batches a turn of the loop takes (64 messages of 20,000 names here), not
    # the number of names overall (measured: 878 MB)
    assert peak_mb < 1280, peak_mb
    print(f"600,000 Host headers: {len(rows)} minute rows, largest snapshot {max(sizes):,} bytes, "
          f"/metrics {len(text):,} bytes, peak RSS {peak_mb} MB, {stopped['transactions']} transactions")
