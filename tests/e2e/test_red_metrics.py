"""``pktstream usage``'s RED metrics scraped by a real Prometheus server (Debian's ``prometheus``):
PromQL returns the exact answers per API and status code that the traffic held, each latency in
the bucket of its API's delay, and the cardinality guard folds a server's further APIs into _OTHER."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer

from pktstream.runtime.kafka import ensure_topic
from tests.support.apps import usage_cmd
from tests.support.traffic import ANSWER_DELAY_NS, CATALOG, DEFAULT_APIS, containers, generate

pytestmark = [pytest.mark.kafka]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def promql(base: str, query: str) -> list[dict[str, Any]]:
    doc = json.loads(get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})))
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


def test_prometheus_scrapes_exact_answers_per_api_and_status(kafka_bootstrap: str, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "Debian's prometheus package is missing (scripts/test-tools.sh installs it)"
    topic = f"red-{uuid.uuid4().hex[:8]}"
    ensure_topic({"bootstrap.servers": kafka_bootstrap}, topic, 3)
    t = generate(4000, time.time_ns() - 300 * 10**9, 120 * 10**9, clients=200, seed=11, responses=True)
    p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "message.max.bytes": 16 << 20})
    for m in containers(t, batch=2500, host="red-host"):
        p.produce(topic, m, key=b"red-host")
    assert p.flush(60) == 0
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG))

    mport, pport = free_port(), free_port()
    cmd = usage_cmd(kafka_bootstrap, topic, f"t-red-{uuid.uuid4().hex[:6]}", f"{topic}.usage", catalog,
                    "--metrics-max-apis", "3", "--output", "none")
    cmd = [c for c in cmd if c != "--until-end"]
    cmd[cmd.index("--metrics-port") + 1] = str(mport)
    at = cmd.index("--metrics-port")
    cmd[at:at] = ["--metrics-address", "127.0.0.1"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "pktstream-usage", "static_configs": [{"targets": [f"127.0.0.1:{mport}"]}]}],
    }))
    consumer = subprocess.Popen([*cmd, "--duration", "240"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{pport}"
    try:
        want: Counter[tuple[str, str]] = Counter()  # (API, status code) -> answers
        for a in DEFAULT_APIS:
            for k, v in t.expected[a.name].items():
                if k.startswith("code:"):
                    want[(a.name, k[5:])] += v
            if not a.method:  # TLS: no status, the label is absent
                want[(a.name, "")] += t.expected[a.name]["responses"]
        same_server = {a.name for a in DEFAULT_APIS if a.server == "10.1.0.10"}  # four APIs on one server
        assert len(same_server) == 4
        got: Counter[tuple[str, str]] = Counter()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                res = promql(base, "sum by (http_route, http_response_status_code) "
                                   "(http_server_request_duration_seconds_count)")
            except OSError:
                time.sleep(0.5)
                continue
            got = Counter({(r["metric"].get("http_route", ""), r["metric"].get("http_response_status_code", "")):
                           int(float(r["value"][1])) for r in res})
            if sum(got.values()) == sum(want.values()):
                break
            time.sleep(0.5)
        # the APIs of servers under the guard: exact per code
        for (api, code), n in want.items():
            if api not in same_server:
                assert got[(api, code)] == n, (api, code, got)
        # the server with four APIs: three by name, the fourth under _OTHER; per code the same totals
        routes = {api for api, _ in got if api in same_server}
        assert len(routes) == 3 and any(api == "_OTHER" for api, _ in got), got
        (other,) = same_server - routes
        for (api, code), n in want.items():
            if api in routes:
                assert got[(api, code)] == n, (api, code, got)
            elif api == other:
                assert got[("_OTHER", code)] == n, (code, got)
        # latency buckets: each API's answers in the bucket holding its delay (OTel bounds, seconds)
        for api in ("pay", "search"):
            if api not in {a for a, _ in got}:
                continue
            delay_s = ANSWER_DELAY_NS[api] / 1e9
            rows = promql(base, f'sum by (le) (http_server_request_duration_seconds_bucket{{http_route="{api}"}})')
            cum = {float(r["metric"]["le"]): int(float(r["value"][1])) for r in rows}
            total = t.expected[api]["responses"]
            assert all(v == (total if le >= delay_s else 0) for le, v in cum.items()), (api, cum)
        # request and response body sizes: the answers' Content-Length (the generator's bodies are code % 7 bytes)
        rows = promql(base, 'sum by (http_response_status_code) (http_server_response_body_size_bytes_sum)')
        sizes = {r["metric"].get("http_response_status_code", ""): float(r["value"][1]) for r in rows}
        want_sizes: Counter[str] = Counter()
        for (_api, code), n in want.items():
            if code:
                want_sizes[code] += n * (int(code) % 7)
        assert sizes == {c: float(v) for c, v in want_sizes.items()}, sizes
        labels = promql(base, "http_server_request_duration_seconds_count")[0]["metric"]
        assert {"http_route", "http_request_method", "server_address", "server_port", "job"} <= set(labels)
    finally:
        consumer.send_signal(signal.SIGTERM)
        prom.send_signal(signal.SIGTERM)
        rc = consumer.wait(60)
        prom.wait(60)
    assert rc == 0, consumer.stderr.read().decode()[-3000:] if consumer.stderr else ""
