"""Crafted frames and the record each must produce (every field).

The expectations are written from the packet as built, not from the C code:
each case states what a user must find in the record.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from pktstream.schemas import record as R

SRC4, DST4 = "198.51.100.7", "203.0.113.9"
SRC6, DST6 = "2001:db8::7", "2001:db8:1::9"


def addr16(a: str) -> bytes:
    ip = ipaddress.ip_address(a)
    if ip.version == 4:
        return bytes(10) + b"\xff\xff" + ip.packed
    return ip.packed


@dataclass
class Case:
    name: str
    frame: bytes
    expect: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""  # the whole L4 payload present in the frame; the record holds its prefix


def base(frame: bytes, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "src_addr": bytes(16), "dst_addr": bytes(16), "wire_len": len(frame), "sample_rate": 1,
        "src_port": 0, "dst_port": 0, "payload_len": 0, "frag_offset": 0, "vlan_outer": 0, "vlan_inner": 0,
        "flags": 0, "ip_version": 0, "protocol": 0, "ttl": 0, "tcp_flags": 0, "frag_flags": 0,
        "ethertype": 0, "rx_queue": 0,
    }
    d.update(kw)
    return d


def v4(frame: bytes, proto: int, ttl: int = 64, **kw: Any) -> dict[str, Any]:
    return base(frame, src_addr=addr16(SRC4), dst_addr=addr16(DST4), ip_version=4, protocol=proto, ttl=ttl,
                ethertype=0x0800, **kw)


def v6(frame: bytes, proto: int, hlim: int = 64, **kw: Any) -> dict[str, Any]:
    return base(frame, src_addr=addr16(SRC6), dst_addr=addr16(DST6), ip_version=6, protocol=proto, ttl=hlim,
                ethertype=0x86DD, **kw)


def build_cases(dst_mac: str, src_mac: str) -> list[Case]:
    eth = Ether(dst=dst_mac, src=src_mac)
    cases: list[Case] = []

    def add(name: str, pkt: Any, expect_fn: Any, payload: bytes = b"", **kw: Any) -> None:
        frame = bytes(pkt)
        cases.append(Case(name, frame, expect_fn(frame, **kw), payload))

    # TCP, every flag combination that matters
    for fname, flags in [("syn", "S"), ("synack", "SA"), ("ack", "A"), ("rst", "R"), ("fin_ack", "FA"),
                         ("null", ""), ("xmas", "FPU"), ("syn_fin", "SF"), ("syn_rst", "SR"), ("fin", "F"),
                         ("ece_cwr_syn", "SEC")]:
        tcp = TCP(sport=40000, dport=443, flags=flags)
        add(f"ipv4_tcp_{fname}", eth / IP(src=SRC4, dst=DST4, ttl=61) / tcp, v4, proto=6, ttl=61,
            src_port=40000, dst_port=443, tcp_flags=int(tcp.flags), frag_flags=0)
    http = b"GET /v1/users/42 HTTP/1.1\r\nHost: api.example\r\n\r\n"
    add("ipv4_tcp_psh_http", eth / IP(src=SRC4, dst=DST4, flags="DF") / TCP(sport=50123, dport=80, flags="PA")
        / Raw(http), v4, payload=http, proto=6, src_port=50123, dst_port=80, tcp_flags=0x18,
        frag_flags=R.FRAG_DF, payload_len=len(http))
    # TCP with options: payload starts after doff*4
    add("ipv4_tcp_options", eth / IP(src=SRC4, dst=DST4) / TCP(sport=1, dport=2, flags="PA",
        options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]) / Raw(b"abc"), v4, payload=b"abc", proto=6,
        src_port=1, dst_port=2, tcp_flags=0x18, payload_len=3)
    # UDP: payload shorter and longer than the prefix, exactly as long
    for pname, plen in [("short", 10), ("exact", 64), ("long", 300)]:
        data = bytes((i * 7 + 3) & 0xFF for i in range(plen))
        add(f"ipv4_udp_{pname}", eth / IP(src=SRC4, dst=DST4, ttl=1) / UDP(sport=5353, dport=53) / Raw(data),
            v4, payload=data, proto=17, ttl=1, src_port=5353, dst_port=53, payload_len=plen)
    add("ipv4_udp_empty", eth / IP(src=SRC4, dst=DST4) / UDP(sport=9, dport=9), v4, proto=17, src_port=9,
        dst_port=9)
    # Ethernet padding after a short datagram is not payload
    pkt = eth / IP(src=SRC4, dst=DST4) / UDP(sport=7, dport=8) / Raw(b"xy")
    padded = bytes(pkt) + b"\x00" * (60 - len(bytes(pkt)))
    cases.append(Case("ipv4_udp_padded", padded, v4(padded, 17, src_port=7, dst_port=8, payload_len=2), b"xy"))
    # ICMP: type and code in the port fields
    add("ipv4_icmp_echo", eth / IP(src=SRC4, dst=DST4) / ICMP(type=8, code=0) / Raw(b"ping-data"), v4,
        payload=b"ping-data", proto=1, src_port=8, dst_port=0, payload_len=9)
    add("ipv4_icmp_unreach", eth / IP(src=SRC4, dst=DST4) / ICMP(type=3, code=3), v4, proto=1, src_port=3,
        dst_port=3)
    # IPv4 with options
    add("ipv4_options", eth / IP(src=SRC4, dst=DST4, options=[IPOption_RR(routers=["1.2.3.4"])])
        / UDP(sport=11, dport=12) / Raw(b"opt"), v4, payload=b"opt", proto=17, src_port=11, dst_port=12,
        payload_len=3, flags=R.F_IP_OPTIONS)
    # IPv4 fragments: first (MF, offset 0) has ports; a later one has none
    add("ipv4_frag_first", eth / IP(src=SRC4, dst=DST4, flags="MF", frag=0) / UDP(sport=21, dport=22, len=1000)
        / Raw(b"F" * 40), v4, payload=b"F" * 40, proto=17, src_port=21, dst_port=22, payload_len=40,
        frag_flags=R.FRAG_MF, flags=R.F_FRAGMENT)
    add("ipv4_frag_later", eth / IP(src=SRC4, dst=DST4, flags=0, frag=185, proto=17) / Raw(b"L" * 30), v4,
        payload=b"L" * 30, proto=17, payload_len=30, frag_offset=1480, flags=R.F_FRAGMENT | R.F_L4_SKIPPED)
    # IPv6
    add("ipv6_tcp_syn", eth / IPv6(src=SRC6, dst=DST6, hlim=55) / TCP(sport=33000, dport=8443, flags="S"), v6,
        proto=6, hlim=55, src_port=33000, dst_port=8443, tcp_flags=0x02)
    add("ipv6_udp", eth / IPv6(src=SRC6, dst=DST6) / UDP(sport=40001, dport=53) / Raw(b"q" * 20), v6,
        payload=b"q" * 20, proto=17, src_port=40001, dst_port=53, payload_len=20)
    add("ipv6_icmpv6_echo", eth / IPv6(src=SRC6, dst=DST6) / ICMPv6EchoRequest(data=b"echo"), v6,
        payload=b"echo", proto=58, src_port=128, dst_port=0, payload_len=4)
    add("ipv6_ext_headers", eth / IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting() / UDP(sport=100, dport=200) / Raw(b"ext"), v6, payload=b"ext", proto=17,
        src_port=100, dst_port=200, payload_len=3, flags=R.F_IPV6_EXT)
    add("ipv6_frag_first", eth / IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(m=1, offset=0, id=7)
        / UDP(sport=300, dport=400, len=2000) / Raw(b"f" * 16), v6, payload=b"f" * 16, proto=17, src_port=300,
        dst_port=400, payload_len=16, frag_flags=R.FRAG_MF, flags=R.F_IPV6_EXT | R.F_FRAGMENT)
    add("ipv6_frag_later", eth / IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(m=0, offset=100, id=7, nh=17)
        / Raw(b"g" * 24), v6, payload=b"g" * 24, proto=17, payload_len=24, frag_offset=800,
        flags=R.F_IPV6_EXT | R.F_FRAGMENT | R.F_L4_SKIPPED)
    # VLAN: one 802.1Q tag; 802.1ad + 802.1Q (QinQ)
    add("vlan_ipv4_udp", eth / Dot1Q(vlan=100, prio=3) / IP(src=SRC4, dst=DST4) / UDP(sport=1000, dport=2000)
        / Raw(b"v"), v4, payload=b"v", proto=17, src_port=1000, dst_port=2000, payload_len=1,
        vlan_outer=(3 << 13) | 100, flags=R.F_VLAN)
    add("qinq_ipv6_tcp", eth / Dot1AD(vlan=10) / Dot1Q(vlan=20) / IPv6(src=SRC6, dst=DST6)
        / TCP(sport=5, dport=6, flags="A"), v6, proto=6, src_port=5, dst_port=6, tcp_flags=0x10, vlan_outer=10,
        vlan_inner=20, flags=R.F_VLAN)
    # not IP
    add("arp", eth / ARP(psrc="10.0.0.1", pdst="10.0.0.2"), base, ethertype=0x0806)
    # truncated and malformed headers
    full = bytes(eth / IP(src=SRC4, dst=DST4) / TCP(sport=1234, dport=80, flags="S"))
    cut_ip = full[:14 + 12]
    cases.append(Case("truncated_ipv4_header", cut_ip, base(cut_ip, ethertype=0x0800, flags=R.F_TRUNCATED)))
    cut_tcp = full[:14 + 20 + 10]
    cases.append(Case("truncated_tcp_header", cut_tcp, v4(cut_tcp, 6, flags=R.F_TRUNCATED)))
    full6 = bytes(eth / IPv6(src=SRC6, dst=DST6) / UDP(sport=1, dport=2))
    cut6 = full6[:14 + 30]
    cases.append(Case("truncated_ipv6_header", cut6, base(cut6, ethertype=0x86DD, flags=R.F_TRUNCATED)))
    cut_vlan = bytes(eth / Dot1Q(vlan=7))[:14 + 2]
    cases.append(Case("truncated_vlan", cut_vlan, base(cut_vlan, ethertype=0x8100, flags=R.F_TRUNCATED)))
    bad_ihl = bytearray(bytes(eth / IP(src=SRC4, dst=DST4) / UDP(sport=1, dport=2)))
    bad_ihl[14] = 0x43  # version 4, IHL 3 (12 bytes): impossible
    cases.append(Case("malformed_ihl", bytes(bad_ihl), v4(bytes(bad_ihl), 17, flags=R.F_MALFORMED)))
    bad_doff = bytearray(full)
    bad_doff[14 + 20 + 12] = 0x20  # data offset 2 words
    cases.append(Case("malformed_tcp_doff", bytes(bad_doff),
                      v4(bytes(bad_doff), 6, src_port=1234, dst_port=80, tcp_flags=0x02, flags=R.F_MALFORMED)))
    return cases


def record_dict(rec: Any) -> dict[str, Any]:
    out = {name: rec[name].item() if not isinstance(rec[name], np.ndarray) else rec[name] for name in
           rec.dtype.names}
    out["src_addr"] = bytes(rec["src_addr"])
    out["dst_addr"] = bytes(rec["dst_addr"])
    return out


def check_record(case: Case, rec: dict[str, Any], payload_bytes: int, ifindex: int) -> None:
    exp = dict(case.expect)
    exp["ifindex"] = ifindex
    exp.setdefault("direction", R.DIR_INGRESS)
    exp.setdefault("segments", 1)
    exp["cap_len"] = min(len(case.payload), payload_bytes)
    for k, v in exp.items():
        assert rec[k] == v, f"{case.name}: field {k} is {rec[k]!r}, expected {v!r}"
    if payload_bytes:
        assert bytes(rec["payload"][: exp["cap_len"]]) == case.payload[:payload_bytes], case.name
    else:
        assert "payload" not in rec


def read_records(capture: Any, n: int, timeout_s: float = 5.0) -> list[Any]:
    """Up to ``n`` records from a capture's ring buffer, waiting at most ``timeout_s`` for them."""
    deadline = time.monotonic() + timeout_s
    recs: list[Any] = []
    while len(recs) < n and time.monotonic() < deadline:
        capture.reader.wait(0.1)
        recs.extend(capture.reader.read(1000))
    return recs


def kernel_refuses(frame: bytes) -> bool:
    """BPF_PROG_TEST_RUN of a classifier refuses (EINVAL) a frame whose EtherType is IPv4 or IPv6
    but that cannot hold the IP header; such frames reach the classifier on a real interface (the
    veth test sends them)."""
    ethertype = int.from_bytes(frame[12:14], "big")
    return (ethertype == 0x0800 and len(frame) < 34) or (ethertype == 0x86DD and len(frame) < 54)
