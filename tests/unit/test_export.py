"""``pktstream export``'s frames, column-wise, read back by scapy (an independent reader): IPv6 with
and without a fragment header, IPv4 fragments, VLAN tags, non-IP records, pcap and pcapng alike.
(tests/e2e/test_query_export.py reads the files of a real topic with tshark.)"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Dot1Q, Ether
from scapy.utils import rdpcap

from pktstream.consumers.tools import export
from pktstream.consumers.tools.history import packet_schema, to_batch
from tests.support.traffic import packets

T0 = 1_800_000_000_123_456_789


def records() -> tuple[dict[str, np.ndarray], int]:
    pk = [
        {"ts": T0, "src": "10.0.0.1", "dst": "10.0.0.2", "sport": 40000, "dport": 443, "flags": 0x12, "len": 60},
        {"ts": T0 + 1, "src": "10.0.0.1", "dst": "10.0.0.2", "proto": 17, "sport": 53, "dport": 5353, "len": 300,
         "payload": b"abcdefgh", "vlan_outer": 0x2064, "vlan_inner": 7},
        {"ts": T0 + 2, "src": "10.0.0.3", "dst": "10.0.0.2", "proto": 1, "sport": 8, "dport": 0, "len": 98},
        {"ts": T0 + 3, "src": "10.0.0.3", "dst": "10.0.0.2", "proto": 17, "frag_flags": 0, "frag_offset": 1480,
         "record_flags": 32 | 64, "sport": 0, "dport": 0, "len": 600, "payload": b"tail"},
        {"ts": T0 + 4, "src": "10.0.0.1", "dst": "10.0.0.2", "proto": 6, "sport": 1234, "dport": 80, "len": 1514,
         "payload": b"GET / HTTP/1.1\r\n", "vlan_outer": 5, "flags": 0x18},
        {"ts": T0 + 5, "src": "10.0.0.1", "dst": "10.0.0.2", "proto": 6, "sport": 1, "dport": 2, "len": 200},
        {"ts": T0 + 6, "src": "10.0.0.1", "dst": "10.0.0.2", "proto": 17, "sport": 1, "dport": 2, "len": 1400,
         "frag_flags": 1, "frag_offset": 0},
        {"ts": T0 + 7, "src": "10.0.0.1", "dst": "10.0.0.2", "proto": 0, "len": 64, "payload": b"\x00\x01"},
    ]
    t = packets(pk)
    c = {k: v.copy() for k, v in t.columns.items()}
    for i in (5, 6):  # IPv6, the second a first fragment (fragment header, transport header after it)
        c["ip_version"][i], c["ethertype"][i] = 6, 0x86DD
        c["src_addr"][i] = list(bytes.fromhex("20010db8000000000000000000000001"))
        c["dst_addr"][i] = list(bytes.fromhex("fe800000000000000000000000000002"))
    c["ip_version"][7], c["ethertype"][7] = 0, 0x0806  # not IP: Ethernet and the payload only
    return c, t.n


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_frames_read_back_field_by_field(fmt: str, tmp_path: Path) -> None:
    cols, n = records()
    batch = to_batch(cols, n, "h", "eth0", "r", packet_schema(address_text=False))
    buf = io.BytesIO()
    parts = [batch.slice(0, 3), batch.slice(3)]  # slices: the payload column starts at an offset
    written = export.write_pcap(parts, buf) if fmt == "pcap" else export.write_pcapng(parts, buf, export.COMMENT)
    assert written == n
    path = tmp_path / f"x.{fmt}"
    path.write_bytes(buf.getvalue())
    got = rdpcap(str(path))
    assert len(got) == n
    for i, p in enumerate(got):
        assert int(p.time * 10**9) // 1000 == int(cols["ts_ns"][i]) // 1000  # scapy keeps microseconds exactly
        assert p.wirelen == cols["wire_len"][i]
    tcp = got[0]
    assert tcp[IP].src == "10.0.0.1" and tcp[IP].ttl == 64 and tcp[TCP].flags == 0x12
    assert tcp[IP].len == 60 - 14
    again = IP(bytes(tcp[IP]))
    again.chksum = None  # scapy computes it
    assert IP(bytes(again)).chksum == tcp[IP].chksum != 0  # the header checksum is right
    udp = got[1]
    assert [d.vlan for d in (udp[Dot1Q], udp[Dot1Q].payload)] == [0x064, 7] and udp[Dot1Q].prio == 1
    assert udp[UDP].dport == 5353 and udp[UDP].len == 300 - 22 - 20 and bytes(udp[UDP].payload) == b"abcdefgh"
    assert got[2][ICMP].type == 8
    frag = got[3]
    assert frag[IP].frag * 8 == 1480 and UDP not in frag and bytes(frag[IP].payload) == b"tail"
    assert got[4][Dot1Q].vlan == 5 and bytes(got[4][TCP].payload) == b"GET / HTTP/1.1\r\n"
    v6 = got[5]
    assert v6[IPv6].src == "2001:db8::1" and v6[IPv6].dst == "fe80::2" and v6[TCP].dport == 2
    assert v6[IPv6].plen == 200 - 14 - 40
    f6 = got[6]
    assert f6[IPv6ExtHdrFragment].m == 1 and f6[IPv6ExtHdrFragment].offset == 0 and f6[UDP].dport == 2
    other = got[7]
    assert other[Ether].type == 0x0806 and IP not in other and bytes(other)[14:] == b"\x00\x01"
