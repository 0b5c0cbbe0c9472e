"""``pktstream export``: a time range of the packet topic as a pcap, pcapng or Parquet file.

pcap and pcapng hold one frame per record, rebuilt from its metadata and payload prefix:
Ethernet (addresses zero: the record has none; the VLAN tags it recorded), IPv4 or IPv6 with the
recorded TTL/hop limit, fragment fields and lengths, then TCP (the recorded flags), UDP or ICMP
headers and the payload prefix. The captured length is what was rebuilt, the original length
the record's ``wire_len``, so Wireshark and tshark show each frame as truncated where the prefix
ends. IP and UDP lengths are the original ones; checksums are zero (IPv4 header: computed).
Timestamps have nanosecond resolution. The pcapng file's comment says that the payloads are
prefixes. Parquet has the columns of ``pktstream query``'s ``packets`` table.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from pktstream.schemas.protocols import PROTO_ICMP, PROTO_ICMP6, PROTO_TCP, PROTO_UDP

COMMENT = ("pktstream export: frames rebuilt from packet metadata; each payload is the prefix the producer "
           "captured (payload_bytes), so frames are truncated where it ends; Ethernet addresses are not recorded "
           "(zero), L4 checksums are zero")
LINKTYPE_ETHERNET = 1
F_L4_UNPARSED = 64
ETH_ZERO = bytes(12)  # destination and source MAC: not recorded


def _v4(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


def _addr(text: str, v6: bool) -> bytes:
    return ipaddress.ip_address(text).packed if v6 else _v4(text)


def _ip_checksum(h: bytes) -> int:
    s = sum(struct.unpack(f"!{len(h) // 2}H", h))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return int(~s & 0xFFFF)


def frame(r: dict[str, Any]) -> bytes:
    """The frame a record describes, as far as its metadata and payload prefix go."""
    l2 = bytearray(ETH_ZERO)
    outer, inner, ethertype = r["vlan_outer"], r["vlan_inner"], r["ethertype"]
    if outer and inner:
        l2 += struct.pack("!HHHH", 0x8100, outer, 0x8100, inner)  # the outer TPID is not recorded
    elif outer:
        l2 += struct.pack("!HH", 0x8100, outer)
    l2 += struct.pack("!H", ethertype)
    version = r["ip_version"]
    if version not in (4, 6):
        return bytes(l2) + bytes(r["payload"])
    proto, wire = r["protocol"], r["wire_len"]
    first_fragment = r["frag_offset"] == 0
    l4 = b""
    if first_fragment and not r["flags"] & F_L4_UNPARSED:
        l3_len = wire - len(l2)
        if proto == PROTO_TCP:
            l4 = struct.pack("!HHIIBBHHH", r["src_port"], r["dst_port"], 0, 0, 5 << 4, r["tcp_flags"], 0, 0, 0)
        elif proto == PROTO_UDP:
            udp_len = max(8, l3_len - (20 if version == 4 else 40))
            l4 = struct.pack("!HHHH", r["src_port"], r["dst_port"], min(udp_len, 0xFFFF), 0)
        elif proto in (PROTO_ICMP, PROTO_ICMP6):
            l4 = struct.pack("!BBHI", r["src_port"], r["dst_port"], 0, 0)
    body = l4 + bytes(r["payload"])
    if version == 4:
        total = max(20, wire - len(l2))
        frag = (r["frag_flags"] & 1) << 13 | (r["frag_flags"] & 2) << 13 | (r["frag_offset"] // 8)
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, min(total, 0xFFFF), 0, frag, r["ttl"], proto, 0,
                        _addr(r["src_addr"], False), _addr(r["dst_addr"], False))
        h = h[:10] + struct.pack("!H", _ip_checksum(h)) + h[12:]
        return bytes(l2 + h + body)
    nxt = proto
    ext = b""
    if r["frag_offset"] or r["frag_flags"] & 1:
        ext = struct.pack("!BBHI", proto, 0, (r["frag_offset"] // 8) << 3 | (r["frag_flags"] & 1), 0)
        nxt = 44
    plen = max(0, wire - len(l2) - 40)
    h = struct.pack("!IHBB16s16s", 6 << 28, min(plen, 0xFFFF), nxt, r["ttl"], _addr(r["src_addr"], True),
                    _addr(r["dst_addr"], True))
    return bytes(l2 + h + ext + body)


def _records(batches: Iterable[pa.RecordBatch]) -> Iterable[dict[str, Any]]:
    cols = ["ts_ns", "src_addr", "dst_addr", "ip_version", "protocol", "src_port", "dst_port", "wire_len", "ttl",
            "tcp_flags", "frag_flags", "frag_offset", "vlan_outer", "vlan_inner", "ethertype", "flags", "payload"]
    for b in batches:
        yield from b.select(cols).to_pylist()


def write_pcap(batches: Iterable[pa.RecordBatch], out: BinaryIO) -> int:
    out.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET))  # nanosecond pcap
    n = 0
    for r in _records(batches):
        f = frame(r)
        sec, nsec = divmod(r["ts_ns"], 1_000_000_000)
        out.write(struct.pack("<IIII", sec, nsec, len(f), max(len(f), r["wire_len"])) + f)
        n += 1
    return n


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def write_pcapng(batches: Iterable[pa.RecordBatch], out: BinaryIO, comment: str) -> int:
    shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _option(1, comment.encode()) + _option(4, b"pktstream") \
        + _option(0, b"")
    out.write(_block(0x0A0D0D0A, shb))
    idb = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 0) + _option(9, bytes([9])) + _option(0, b"")  # if_tsresol 1e-9
    out.write(_block(1, idb))
    n = 0
    for r in _records(batches):
        f = frame(r)
        ts = r["ts_ns"]
        epb = struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(f), max(len(f), r["wire_len"])) + f \
            + bytes(-len(f) % 4)
        out.write(_block(6, epb))
        n += 1
    return n


def write_parquet(batches: Iterable[pa.RecordBatch], schema: pa.Schema, out: BinaryIO) -> int:
    n = 0
    with pq.ParquetWriter(out, schema) as w:
        for b in batches:
            w.write_batch(b)
            n += b.num_rows
    return n
