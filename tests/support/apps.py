"""Running the consumer apps in tests and benchmarks: the HTTP and TLS servers their traffic goes to,
clients in a namespace, the apps' log events, committed offsets, and kills at a commit."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import fastavro
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from pktstream.runtime.kafka import ensure_topic
from tests.support.helpers import NetnsHost, read_messages, sh
from tests.support.ocsf import assert_valid
from tests.support.producer_proc import PKTSTREAM
from tests.support.traffic import Traffic, containers, fleet, generate, merge, packets, spread

HTTP_PORT, TLS_PORT = 18080, 18443


# how the test HTTP server answers: (method, path pattern) -> (status, delay in seconds); else 200 at once
ANSWERS = [
    ("POST", re.compile(r"^/v1/orders$"), 201, 0.06),
    ("GET", re.compile(r"^/v1/orders/\d+/items$"), 404, 0.15),
    ("GET", re.compile(r"^/misc/"), 500, 0.0),
    ("POST", re.compile(r"^/login$"), 401, 0.0),  # no credentials are ever right
    ("GET", re.compile(r"^/flaky/fail"), 503, 0.0),
]


def answer_for(method: str, path: str) -> tuple[int, float]:
    for m, pat, status, delay in ANSWERS:
        if m == method and pat.match(path):
            return status, delay
    return 200, 0.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _ok(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # the body, so that the next request on the connection parses
        status, delay = answer_for(self.command, self.path)
        if delay:
            time.sleep(delay)
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = do_PUT = _ok

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def servers(tmp: Path) -> Iterator[None]:
    """An HTTP server and a TLS server on this host (the namespaces reach it over their veths)."""
    http = ThreadingHTTPServer(("0.0.0.0", HTTP_PORT), _Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=pay.shop.test", "-days", "1",
       "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tmp / "cert.pem"), str(tmp / "key.pem"))
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", TLS_PORT))
    lsock.listen(64)
    stop = threading.Event()

    def serve_tls() -> None:
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as s:
                    buf = b""
                    while b"\r\n\r\n" not in buf:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        buf += chunk
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except (OSError, ssl.SSLError):
                pass

    threading.Thread(target=serve_tls, daemon=True).start()
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            lsock.shutdown(socket.SHUT_RDWR)  # wakes the accept() that holds the listening socket
        lsock.close()
        http.shutdown()
        http.server_close()


SCRIPTED_PORT = 18081
PLAIN_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _ScriptedHandler(BaseHTTPRequestHandler):
    """Answers each request with the exact bytes scripted for "METHOD path" (the path with its query,
    as sent), else PLAIN_ANSWER; written in one send, with no Date or Server header of its own."""
    protocol_version = "HTTP/1.1"
    answers: ClassVar[dict[str, bytes]] = {}

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # the body, so that the next request on the connection parses
        self.wfile.write(self.answers.get(f"{self.command} {self.path}", PLAIN_ANSWER))

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def scripted_server(answers: dict[str, bytes], port: int = SCRIPTED_PORT) -> Iterator[None]:
    """An HTTP server on this host that gives the scripted answers (``_ScriptedHandler``): a test
    decides every byte of what the server sends back."""
    handler = type("_Scripted", (_ScriptedHandler,), {"answers": dict(answers)})
    http = ThreadingHTTPServer(("0.0.0.0", port), handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        http.shutdown()
        http.server_close()


def run_clients(h: NetnsHost, plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for extra in {c["src"] for c in plan} - {h.peer_ip}:
        h.run("ip", "addr", "replace", f"{extra}/24", "dev", h.peer_if)  # (again: no error)
    out = h.run(sys.executable, str(Path(__file__).with_name("api_clients.py")), json.dumps(plan), timeout=120)
    return [json.loads(line) for line in out.stdout.splitlines()]


def log_events(stderr: str) -> list[dict[str, Any]]:
    """A consumer app's JSON log lines (``--log-format json``)."""
    out = []
    for line in stderr.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            e = json.loads(line)
            if isinstance(e, dict) and "event" in e:
                out.append(e)
    return out


def final_figures(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures a consumer app logs when it has caught up (``--until-end``)."""
    done = [e for e in events if e["event"] == "stream_caught_up"]
    assert done, f"no stream_caught_up in the log: {events[-5:]}"
    return done[-1]


def committed(bootstrap: str, group: str, *topics: str) -> int:
    """The sum of a group's committed offsets over the topics' partitions."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    total = 0
    for topic in topics:
        md = c.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or not md.partitions:
            continue
        offs = c.committed([TopicPartition(topic, p) for p in md.partitions], timeout=10)
        total += sum(max(0, tp.offset) for tp in offs)
    c.close()
    return total


def snapshot_blocks(bootstrap: str, app: str) -> tuple[int, int]:
    """Of an app's committed state snapshots: the most blocks one named, and how many were written
    incrementally (their commit wrote fewer blocks than they named)."""
    most = incremental = 0
    written: dict[bytes, int] = {}  # partition -> blocks written since its last manifest
    for k, v, h in read_messages(bootstrap, f"{app}.state"):
        q = k.split(b".")[0]
        if h.get("pktstream.snapshot.block") and v:
            written[q] = written.get(q, 0) + 1
        elif h.get("pktstream.snapshot.manifest"):
            (hlen,) = struct.unpack_from("<I", v, 4)
            named = len(set(v[8 + hlen + i : 8 + hlen + i + 16] for i in range(0, len(v) - 8 - hlen, 16)))
            most = max(most, named)
            incremental += written.pop(q, 0) < named
    return most, incremental


def kill_twice_then_finish(cmd: list[str], bootstrap: str, app: str, topic: str,
                           after_kill: Callable[[], None] = lambda: None, delay_s: Callable[[], float] = lambda: 0.0,
                           logs: Path | None = None) -> None:
    """Run a consumer app; SIGKILL it right after a commit (or ``delay_s()`` later), twice
    (``after_kill`` checks each); then let it finish. ``logs``: a directory for each run's stderr."""
    def stderr(k: int) -> Any:
        return open(logs / f"{app}.{k}.log", "w") if logs else contextlib.nullcontext(subprocess.DEVNULL)

    for k in range(2):
        with stderr(k) as err:
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
            base = committed(bootstrap, app, topic, f"{app}.repartition")
            deadline = time.monotonic() + 120
            while committed(bootstrap, app, topic, f"{app}.repartition") == base:
                rc = p.poll()
                if rc == 0:  # it finished (all done in the time a delay_s() gave it)
                    break
                assert rc is None, f"the consumer failed (exit {rc})"
                assert time.monotonic() < deadline, "no commit before the deadline"
                time.sleep(0.02)
            time.sleep(delay_s())
            p.send_signal(signal.SIGKILL)
            p.wait(30)
        after_kill()
    with stderr(2) as err:
        assert subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, timeout=300).returncode == 0


def alerts_cmd(bootstrap: str, topic: str, app: str, out_topic: str, rules_file: Path, catalog: Path,
               *extra: str) -> list[str]:
    return [PKTSTREAM, "alerts", "--bootstrap-servers", bootstrap, "--topic", topic, "--app-id", app,
            "--alerts-topic", out_topic, "--rules", str(rules_file), "--catalog", str(catalog), "--from-beginning",
            "--until-end", "--output", "json", "--metrics-port", "0", "--log-format", "json", *extra]


def run_alerts(cmd: list[str], log: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    if log is not None:
        log.extend(log_events(p.stderr))
    docs = [json.loads(line) for line in p.stdout.splitlines()]
    assert_valid(docs)  # every event, by OCSF's own schema
    return docs


def read_alerts(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    out = []
    for key, value, _headers in read_messages(bootstrap, topic):
        doc = json.loads(value)
        assert key == doc["finding_info"]["uid"].encode()
        out.append(doc)
    assert_valid(out)  # every event, by OCSF's own schema
    return out


def read_usage(bootstrap: str, topic: str, settled: bool = True) -> list[dict[str, Any]]:
    """Every committed record of a usage topic (the transactional outputs a reader sees; see
    read_messages for ``settled``)."""
    out = []
    for _key, value, _headers in read_messages(bootstrap, topic, settled=settled):
        for r in fastavro.reader(io.BytesIO(value)):
            assert isinstance(r, dict)
            r["window_start_ms"] = int(r["window_start_ms"].timestamp() * 1000)  # logical type -> ms
            out.append(r)
    return out


def usage_cmd(bootstrap: str, topic: str, app: str, usage_topic: str, catalog: Path,
              *extra: str) -> list[str]:
    return [PKTSTREAM, "usage", "--bootstrap-servers", bootstrap, "--topic", topic, "--app-id", app,
            "--usage-topic", usage_topic, "--catalog", str(catalog), "--from-beginning", "--until-end",
            "--output", "json", "--metrics-port", "0", "--log-format", "json", *extra]






def run_usage(cmd: list[str], timeout: float = 300, figures: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    if figures is not None:
        figures.update(final_figures(log_events(p.stderr)))
    return [json.loads(line) for line in p.stdout.splitlines()]


def key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["window_s"], r["window_start_ms"], r["api"])


LATE_SPOOL = 5000  # packets of the late block load() appends


def load(bootstrap: str, topic: str) -> None:
    """Generated traffic from two hosts, each on a packet partition of its own, sent in time order as
    a live fleet sends it, with attacks that span several windows; the SYN flood is split between
    the hosts: each half alone is under the threshold. Then a third host's spool: a UDP flood
    minutes older than the partition it lands in has got to, which must be set aside as late (by
    the partition's order, so whatever the timing of the run)."""
    ensure_topic({"bootstrap.servers": bootstrap}, topic, 6)
    t0 = (time.time_ns() - 600 * 10**9) // (300 * 10**9) * (300 * 10**9)
    sec = 10**9
    rng = random.Random(5)
    benign = generate(20000, t0, 250 * sec, clients=300, seed=9, responses=True)
    flood = packets([{"ts": ts, "src": f"52.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                      "dst": "10.1.0.10", "sport": rng.randrange(1024, 65535), "dport": 80, "flags": 0x02}
                     for ts in spread(t0 + 20 * sec, 12000, 40 * sec)])
    udp = packets([{"ts": ts, "src": "45.33.32.1", "dst": "10.1.0.11", "proto": 17, "sport": 40000, "dport": 9,
                    "len": 100} for ts in spread(t0 + 100 * sec, 100000, 30 * sec)])
    scan = packets([{"ts": t0 + 150 * sec + i * 10**8, "src": "45.33.32.9", "dst": "10.1.0.12", "dport": p,
                     "flags": 0x02} for i, p in enumerate(range(1000, 1100))])
    late = packets([{"ts": ts, "src": "45.33.32.2", "dst": "10.1.0.13", "proto": 17, "sport": 40000, "dport": 9,
                     "len": 100} for ts in spread(t0 + 100 * sec, LATE_SPOOL, 30 * sec)])
    half = flood.n // 2
    first = {k: v[:half] for k, v in flood.columns.items()}
    second = {k: v[half:] for k, v in flood.columns.items()}

    hosts = {"gen0": 0, "gen1": 1, "gen2": 0}
    sent = fleet([("gen0", merge(benign, Traffic(first, half), udp)),
                  ("gen1", merge(Traffic(second, flood.n - half), scan))], batch=3000)
    sent += [("gen2", m) for m in containers(late, batch=3000, host="gen2")]
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "zstd",
                  "message.max.bytes": 16 << 20, "enable.idempotence": True})
    for name, m in sent:
        p.produce(topic, m, key=name.encode(), partition=hosts[name])
    assert p.flush(60) == 0


def restart_scenario(bootstrap: str, directory: Path) -> tuple[str, Path, Path]:
    """The restart test's topic (load()), rules and empty catalog: (topic, rules file, catalog).
    bench/restart_loop.py runs the same scenario many times."""
    topic = f"alerts-restart-{uuid.uuid4().hex[:8]}"
    load(bootstrap, topic)
    rules_file = directory / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"detectors": {"syn_flood": {"min_half_open": 500}}}))
    catalog = directory / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"apis": []}))
    return topic, rules_file, catalog


def run_activity(bootstrap: str, topic: str, out_topic: str, *extra: str) -> list[dict[str, Any]]:
    cmd = [PKTSTREAM, "activity", "--bootstrap-servers", bootstrap, "--topic", topic, "--app-id",
           f"t-activity-{uuid.uuid4().hex[:6]}", "--connections-topic", out_topic, "--dns-topic", f"{out_topic}.dns",
           "--http-topic", f"{out_topic}.http",
           "--from-beginning", "--until-end",
           "--output", "json", "--metrics-port", "0", "--log-format", "json", "--partitions", "3", "--grace-s", "1",
           *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return [json.loads(line) for line in p.stdout.splitlines()]
