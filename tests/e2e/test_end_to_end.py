"""The producer on a veth writes to the real broker; every packet an independent
capture (tcpdump) saw on the same interface, in either direction, comes out of the topic exactly
once, with its direction."""

from __future__ import annotations

import collections
import io
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1Q
from scapy.utils import rdpcap

from pktstream.consumers.tools.audit import audit, render
from pktstream.consumers.tools.tail import tail
from tests.support.frames import build_cases
from tests.support.helpers import NetnsHost, require
from tests.support.producer_proc import ProducerProcess

pytestmark = [pytest.mark.kernel, pytest.mark.kafka]


def pcap_tuples(path: Path) -> list[tuple[Any, ...]]:
    out = []
    for p in rdpcap(str(path)):
        src = dst = "::"
        sport = dport = proto = 0
        layer = p
        if Dot1Q in p:
            layer = p[Dot1Q]
        if IP in layer:
            ip = layer[IP]
            src, dst, proto = ip.src, ip.dst, ip.proto
            if ip.ihl < 5:
                pass  # impossible header: L4 is not parsed
            elif ip.frag == 0 and (TCP in ip or UDP in ip):
                l4 = ip[TCP] if TCP in ip else ip[UDP]
                sport, dport = l4.sport, l4.dport
            elif ip.frag == 0 and ICMP in ip:
                sport, dport = ip[ICMP].type, ip[ICMP].code
        elif IPv6 in layer:
            ip6 = layer[IPv6]
            src, dst = ip6.src, ip6.dst
            icmp6 = [la for la in ip6.layers() if la.__name__.startswith("ICMPv6")]
            if IPv6ExtHdrFragment in ip6 and ip6[IPv6ExtHdrFragment].offset > 0:
                proto = ip6[IPv6ExtHdrFragment].nh  # a later fragment: no L4 header
            elif TCP in ip6 or UDP in ip6:
                l4 = ip6[TCP] if TCP in ip6 else ip6[UDP]
                sport, dport, proto = l4.sport, l4.dport, (6 if TCP in ip6 else 17)
            elif icmp6:
                sport, dport, proto = ip6[icmp6[0]].type, ip6[icmp6[0]].code, 58
        elif ARP in p:
            pass
        out.append((src, dst, sport, dport, proto, p.wirelen))
    return out


def record_tuple(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["direction"], r["src_addr"], r["dst_addr"], r["src_port"], r["dst_port"], r["protocol"],
            r["wire_len"])


def read_topic(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    buf = io.StringIO()
    tail({"bootstrap.servers": bootstrap}, topic, start="beginning", follow=False, out=buf, payload="hex")
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def traffic(host: NetnsHost) -> int:
    """Real sockets (TCP connection, UDP, ICMP via raw socket) and crafted frames from the namespace."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host.host_ip, 0))
    server.listen(4)
    port = server.getsockname()[1]
    script = (
        "import socket\n"
        f"for i in range(3):\n"
        f"    c = socket.create_connection(('{host.host_ip}', {port}), timeout=5)\n"
        "    c.sendall(b'GET /api/items/%d?token=abc123 HTTP/1.1\\r\\nHost: shop\\r\\n"
        "Authorization: Bearer s3cr3t\\r\\n\\r\\n' % i)\n"
        "    c.recv(100)\n"
        "    c.close()\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for i in range(20): u.sendto(b'udp-%d' % i, ('{host.host_ip}', 5300 + i))\n"
    )
    import sys

    client = host.popen(sys.executable, "-c", script)
    for _ in range(3):
        conn, _addr = server.accept()
        conn.recv(1000)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        conn.close()
    _out, err = client.communicate(timeout=30)
    assert client.returncode == 0, err
    server.close()
    frames = [c.frame for c in build_cases(dst_mac=host.host_mac, src_mac=host.peer_mac)
              if c.name != "truncated_vlan"]
    host.send_frames(frames)
    return len(frames)


def test_every_captured_packet_arrives_exactly_once(
    kafka_bootstrap: str, make_host: Callable[..., NetnsHost], tmp_path: Path
) -> None:
    require(shutil.which("tcpdump") is not None, "needs tcpdump")
    host = make_host()
    topic = f"e2e-{uuid.uuid4().hex[:8]}"
    prod = ProducerProcess("--interface", host.host_if, "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                           "--partitions", "2", "--batch-age-ms", "50", "--batch-records", "16",
                           "--payload-bytes", "128")
    dumps: dict[int, tuple[Path, subprocess.Popen[str]]] = {}
    try:
        prod.wait_event("producer_started")
        for direction, q in ((0, "in"), (1, "out")):
            path = tmp_path / f"{q}.pcap"
            dump = subprocess.Popen(["tcpdump", "-i", host.host_if, "-Q", q, "-n", "-s", "256", "-U", "-w",
                                     str(path)], stderr=subprocess.PIPE, text=True)
            dumps[direction] = (path, dump)
            assert dump.stderr is not None
            line = dump.stderr.readline()
            assert "listening on" in line, line
        crafted = traffic(host)
        time.sleep(1.0)
    finally:
        for _path, dump in dumps.values():
            dump.terminate()
            dump.wait(10)
        rc = prod.stop()
    assert rc == 0, prod.events[-5:]
    assert prod.event("producer_started")["directions"] == ["ingress", "egress"]

    seen = [(d, *t) for d, (path, _dump) in dumps.items() for t in pcap_tuples(path)]
    records = read_topic(kafka_bootstrap, topic)
    # floors from what traffic() sends, whatever the kernel adds (ICMP errors are rate limited):
    # in, per connection at least SYN, request and one ACK or FIN, the 20 datagrams and the crafted frames;
    # out, per connection at least SYN-ACK, the answer, FIN and one ACK
    assert sum(1 for t in seen if t[0] == 0) >= 3 * 3 + 20 + crafted
    assert sum(1 for t in seen if t[0] == 1) >= 3 * 4
    assert collections.Counter(record_tuple(r) for r in records) == collections.Counter(seen)
    assert all(r["segments"] == 1 for r in records)  # nothing here is large enough for GSO
    # exactly once, in order: sequence numbers 0..n-1, each once
    assert sorted(r["seq"] for r in records) == list(range(len(records)))
    stopped = prod.event("producer_stopped")
    assert stopped["records_captured"] == stopped["records_delivered"] == len(records)
    assert stopped["ringbuf_full"] == 0 and stopped["records_failed"] == 0
    assert stopped["packets_seen"] == len(records)
    assert stopped["egress_records_captured"] == stopped["egress_packets_seen"] == \
        sum(r["direction"] for r in records)
    # the audit balances per direction: the report's egress share, the messages' egress counts
    run_id = prod.event("producer_started")["run_id"]
    (run,) = [r for r in audit({"bootstrap.servers": kafka_bootstrap}, topic, "pktstream.stats") if r.run_id == run_id]
    egress = sum(r["direction"] for r in records)
    assert run.exact and run.directions == ["ingress", "egress"]
    assert run.by_direction() == {
        "ingress": {"seen": len(records) - egress, "captured": len(records) - egress, "in_topic": len(records) - egress,
                    "ringbuf_full": 0, "sampled_out": 0},
        "egress": {"seen": egress, "captured": egress, "in_topic": egress, "ringbuf_full": 0, "sampled_out": 0}}
    assert "per direction" in render([run])
    # the host's clock against the broker's (the producer's topic keeps the append time): its newest
    # record of a message is a little older than the message's arrival
    assert run.clock_offset_s is not None and -10 < run.clock_offset_s <= 0.05, run.clock_offset_s
    assert {r["host"] for r in records} == {prod.event("producer_started")["host_id"]}
    http = [r for r in records if bytes.fromhex(r["payload"]).startswith(b"GET /api/items/")]
    assert len(http) == 3 and all(r["dst_port"] > 0 and r["tcp_flags"] & 0x08 for r in http)
    answers = [r for r in records if bytes.fromhex(r["payload"]).startswith(b"HTTP/1.1 200 OK")]
    assert len(answers) == 3 and all(r["direction"] == 1 for r in answers)
    # tail from a time: all of it from the epoch on, nothing from an hour ahead
    for since_ms, expect in ((0, len(records)), (int(time.time() * 1000) + 3_600_000, 0)):
        buf = io.StringIO()
        tail({"bootstrap.servers": kafka_bootstrap}, topic, start="time", since_ms=since_ms, follow=False, out=buf)
        assert len(buf.getvalue().splitlines()) == expect
    # credentials never reach Kafka: redacted in place, lengths kept
    for r in http:
        p = bytes.fromhex(r["payload"])
        assert b"?token=******" in p and b"Authorization: *************\r\n" in p
    assert not any(b"s3cr3t" in bytes.fromhex(r["payload"]) or b"abc123" in bytes.fromhex(r["payload"])
                   for r in records)
