"""Hostile input: generated and mutated frames through the real program (BPF_PROG_TEST_RUN).

For every frame the program returns XDP_PASS and writes exactly one record
whose lengths stay within the frame. For every well-formed frame each field
equals what dpkt, an independent parser, finds in it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from typing import Any

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pktstream.producer.capture import Capture
from pktstream.schemas import record as R

pytestmark = pytest.mark.kernel

PAYLOAD = 64
XDP_PASS = 2
EXT_HDRS = {0: dpkt.ip6.IP6HopOptsHeader, 43: dpkt.ip6.IP6RoutingHeader, 60: dpkt.ip6.IP6DstOptsHeader}


@pytest.fixture(scope="module")
def cap(root: None) -> Iterator[Capture]:
    with Capture(payload_bytes=PAYLOAD, ringbuf_bytes=1 << 22) as c:
        yield c


def run_one(cap: Capture, frame: bytes) -> Any:
    res = cap.test_run(frame)
    assert res.retval == XDP_PASS
    recs = cap.reader.read(10)
    assert len(recs) == 1
    r = recs[0]
    assert r["wire_len"] == len(frame)
    assert r["cap_len"] <= min(PAYLOAD, r["payload_len"]) and r["payload_len"] <= len(frame)
    return r


# -- generated well-formed frames -------------------------------------------------------------

ports = st.integers(0, 65535)
payloads = st.binary(max_size=300)


@st.composite
def l4(draw: st.DrawFn, v6: bool) -> tuple[int, bytes, dict[str, int], bytes]:
    """(protocol, header+payload bytes, expected port/flag fields, payload)."""
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    data = draw(payloads)
    if kind == "tcp":
        opts = draw(st.sampled_from([b"", b"\x02\x04\x05\xb4", b"\x01\x01\x04\x02\x01\x03\x03\x07"]))
        flags = draw(st.integers(0, 255))
        t = dpkt.tcp.TCP(sport=draw(ports), dport=draw(ports), flags=flags, opts=opts, data=data)
        t.off = (20 + len(opts)) // 4
        return 6, bytes(t), {"src_port": t.sport, "dst_port": t.dport, "tcp_flags": flags}, data
    if kind == "udp":
        u = dpkt.udp.UDP(sport=draw(ports), dport=draw(ports), data=data)
        u.ulen = 8 + len(data)
        return 17, bytes(u), {"src_port": u.sport, "dst_port": u.dport, "tcp_flags": 0}, data
    if kind == "icmp":
        typ, code = draw(st.integers(0, 255)), draw(st.integers(0, 255))
        hdr = struct.pack("!BBHI", typ, code, 0, draw(st.integers(0, 2**32 - 1)))
        return (58 if v6 else 1), hdr + data, {"src_port": typ, "dst_port": code, "tcp_flags": 0}, data
    # protocols neither side parses (dpkt would treat 50/51 as IPv6 extension headers)
    proto = draw(st.sampled_from([143, 253, 254]))
    return proto, data, {"src_port": 0, "dst_port": 0, "tcp_flags": 0}, b""


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, dict[str, Any], bytes]:
    v6 = draw(st.booleans())
    proto, l4bytes, exp, payload = draw(l4(v6))
    flags = R.F_L4_SKIPPED if proto not in (1, 6, 17, 58) else 0
    if v6:
        src, dst = draw(st.binary(min_size=16, max_size=16)), draw(st.binary(min_size=16, max_size=16))
        chain = draw(st.lists(st.sampled_from([0, 43, 60]), max_size=3))
        body = l4bytes
        nxt = proto
        for h in reversed(chain):
            ext = EXT_HDRS[h](nxt=nxt, len=0, data=b"\x00" * 6 if h != 43 else b"\x00" * 4)
            if h == 43:
                ext = dpkt.ip6.IP6RoutingHeader(nxt=nxt, len=0, type=0, segs_left=0, rsvd_sl_bits=0)
            body = bytes(ext) + body
            nxt = h
        if chain:
            flags |= R.F_IPV6_EXT
        hlim = draw(st.integers(0, 255))
        ip = struct.pack("!IHBB", 6 << 28, len(body), nxt, hlim) + src + dst + body
        exp.update(ip_version=6, protocol=proto, ttl=hlim, src_addr=src, dst_addr=dst, ethertype=0x86DD)
        ethertype = 0x86DD
    else:
        src, dst = draw(st.binary(min_size=4, max_size=4)), draw(st.binary(min_size=4, max_size=4))
        optlen = draw(st.sampled_from([0, 4, 8, 40]))
        ttl = draw(st.integers(0, 255))
        df = draw(st.booleans())
        ip4 = dpkt.ip.IP(src=src, dst=dst, p=proto, ttl=ttl, opts=b"\x01" * optlen, data=l4bytes)
        ip4.df = int(df)
        ip4.hl = 5 + optlen // 4
        ip4.len = ip4.hl * 4 + len(l4bytes)
        ip = bytes(ip4)
        if optlen:
            flags |= R.F_IP_OPTIONS
        mapped = b"\x00" * 10 + b"\xff\xff"
        exp.update(ip_version=4, protocol=proto, ttl=ttl, src_addr=mapped + src, dst_addr=mapped + dst,
                   frag_flags=R.FRAG_DF if df else 0, ethertype=0x0800)
        ethertype = 0x0800
    tags = draw(st.lists(st.integers(0, 0xFFFF), max_size=2))
    l2 = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"
    tpids = [0x88A8, 0x8100] if len(tags) == 2 else [0x8100]
    for tpid, tci in zip(tpids, tags, strict=False):
        l2 += struct.pack("!HH", tpid, tci)
    l2 += struct.pack("!H", ethertype)
    if tags:
        flags |= R.F_VLAN
    exp.update(vlan_outer=tags[0] if tags else 0, vlan_inner=tags[1] if len(tags) > 1 else 0, flags=flags,
               payload_len=len(payload))
    return l2 + ip, exp, payload


def dpkt_view(frame: bytes) -> dict[str, Any]:
    """What dpkt, independently, reads from the frame."""
    eth = dpkt.ethernet.Ethernet(frame)
    out: dict[str, Any] = {"vlan": [t.pri << 13 | t.cfi << 12 | t.id for t in getattr(eth, "vlan_tags", [])]}
    ip = eth.data
    if isinstance(ip, dpkt.ip.IP):
        out.update(ip_version=4, src=ipaddress.IPv4Address(ip.src), dst=ipaddress.IPv4Address(ip.dst), ttl=ip.ttl,
                   protocol=ip.p)
    else:
        out.update(ip_version=6, src=ipaddress.IPv6Address(ip.src), dst=ipaddress.IPv6Address(ip.dst),
                   ttl=ip.hlim, protocol=ip.p)
    l4 = ip.data
    if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
        out.update(src_port=l4.sport, dst_port=l4.dport)
    return out


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames())
def test_generated_frames_match_dpkt(cap: Capture, case: tuple[bytes, dict[str, Any], bytes]) -> None:
    frame, exp, payload = case
    r = run_one(cap, frame)
    for k, v in exp.items():
        got = bytes(r[k]) if k in ("src_addr", "dst_addr") else int(r[k])
        assert got == v, (k, got, v)
    assert bytes(r["payload"][: r["cap_len"]]) == payload[:PAYLOAD]
    d = dpkt_view(frame)
    assert d["ip_version"] == r["ip_version"] and d["ttl"] == r["ttl"] and d["protocol"] == r["protocol"]
    addr = ipaddress.IPv6Address(bytes(r["src_addr"]))
    assert (addr.ipv4_mapped or addr) == d["src"]
    assert [int(r["vlan_outer"]), int(r["vlan_inner"])][: len(d["vlan"])] == d["vlan"]
    if "src_port" in d:
        assert (d["src_port"], d["dst_port"]) == (r["src_port"], r["dst_port"])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames(), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8),
       st.integers(14, 2000))
def test_mutated_frames_always_pass(cap: Capture, case: tuple[bytes, dict[str, Any], bytes],
                                    flips: list[tuple[int, int]], cut: int) -> None:
    frame = bytearray(case[0])
    for pos, val in flips:
        if pos < len(frame):
            frame[pos] = val
    run_one(cap, bytes(frame[: max(14, min(cut, len(frame)))]))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=14, max_size=1600))
def test_random_bytes_always_pass(cap: Capture, frame: bytes) -> None:
    run_one(cap, frame)
