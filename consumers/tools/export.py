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

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from pktstream.consumers.tools.history import ADDRESS_BYTES, row_prefixes
from pktstream.schemas.protocols import PROTO_ICMP, PROTO_ICMP6, PROTO_TCP, PROTO_UDP

COMMENT = ("pktstream export: frames rebuilt from packet metadata; each payload is the prefix the producer "
           "captured (payload_bytes), so frames are truncated where it ends; Ethernet addresses are not recorded "
           "(zero), L4 checksums are zero")
LINKTYPE_ETHERNET = 1
F_L4_UNPARSED = 64


_ETH = 22  # Ethernet header with two VLAN tags, at most
_L3 = 48  # IPv6 with a fragment header, at most
_L4 = 20  # TCP without options

_IPV4 = np.dtype([("vihl", "u1"), ("tos", "u1"), ("total", ">u2"), ("id", ">u2"), ("frag", ">u2"), ("ttl", "u1"),
                  ("proto", "u1"), ("csum", ">u2"), ("src", "u1", 4), ("dst", "u1", 4)])
_IPV6 = np.dtype([("vtf", ">u4"), ("plen", ">u2"), ("next", "u1"), ("hlim", "u1"), ("src", "u1", 16),
                  ("dst", "u1", 16), ("f_next", "u1"), ("f_res", "u1"), ("f_off", ">u2"), ("f_id", ">u4")])
_TCP = np.dtype([("sport", ">u2"), ("dport", ">u2"), ("seq", ">u4"), ("ack", ">u4"), ("off", "u1"), ("flags", "u1"),
                 ("win", ">u2"), ("csum", ">u2"), ("urg", ">u2")])
_UDP = np.dtype([("sport", ">u2"), ("dport", ">u2"), ("len", ">u2"), ("csum", ">u2"), ("pad", "u1", 12)])
_ICMP = np.dtype([("type", "u1"), ("code", "u1"), ("csum", ">u2"), ("rest", ">u4"), ("pad", "u1", 12)])
_INTS = ("ts_ns", "ip_version", "protocol", "src_port", "dst_port", "wire_len", "ttl", "tcp_flags", "frag_flags",
         "frag_offset", "vlan_outer", "vlan_inner", "ethertype", "flags")


def _addresses(col: pa.Array) -> npt.NDArray[np.uint8]:
    """An address column of 16-byte values (packet_schema(address_text=False)) as (n, 16) bytes."""
    if col.type != ADDRESS_BYTES:
        raise TypeError(f"export: addresses as {col.type}; read the topic with packet_schema(address_text=False)")
    data = np.frombuffer(col.buffers()[1], np.uint8, 16 * len(col), 16 * col.offset)
    return data.reshape(len(col), 16)


def _join_rows(parts: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]]) -> bytes:
    """Per row, its piece of each part in turn (each part: its pieces concatenated, and their lengths)."""
    lens = np.stack([ln for _, ln in parts], axis=1)
    row_len = lens.sum(axis=1)
    start = np.zeros(len(row_len), np.int64)
    np.cumsum(row_len[:-1], out=start[1:])
    before = np.cumsum(lens, axis=1) - lens  # where each part begins inside its row
    out = np.empty(int(row_len.sum()), np.uint8)
    for p, (flat, ln) in enumerate(parts):
        if len(flat) == 0:
            continue
        first = np.zeros(len(ln), np.int64)
        np.cumsum(ln[:-1], out=first[1:])
        out[np.repeat(start + before[:, p] - first, ln) + np.arange(len(flat))] = flat
    return out.tobytes()


@dataclass
class Frames:
    """A batch's frames, rebuilt: the headers (fixed-width blocks, each row's used length) and payloads."""

    ts_ns: npt.NDArray[np.int64]
    wire_len: npt.NDArray[np.int64]
    headers: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]]  # Ethernet, IP, transport
    payload: tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]

    @property
    def length(self) -> npt.NDArray[np.int64]:
        total = self.payload[1].copy()
        for _, ln in self.headers:
            total += ln
        return total

    def parts(self) -> list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]]:
        return [(row_prefixes(b, ln), ln) for b, ln in self.headers] + [self.payload]


def frames(b: pa.RecordBatch) -> Frames:
    """The frames a batch of records describes, as far as their metadata and payload prefixes go
    (column-wise: no Python per record)."""
    n = b.num_rows
    c = {k: b.column(k).to_numpy(zero_copy_only=False).astype(np.int64) for k in _INTS}
    pay = b.column("payload")
    offsets = np.frombuffer(pay.buffers()[1], np.int32, n + 1, pay.offset * 4).astype(np.int64)
    data = np.frombuffer(pay.buffers()[2], np.uint8) if pay.buffers()[2] is not None else np.zeros(0, np.uint8)
    p_len = np.diff(offsets)
    p_flat = data[offsets[0]:offsets[-1]]
    # Ethernet: addresses zero (not recorded), the recorded VLAN tags (the outer TPID is not recorded), type
    outer, inner = c["vlan_outer"], c["vlan_inner"]
    tags = (outer != 0).astype(np.int64) + ((outer != 0) & (inner != 0))
    eth = np.zeros((n, _ETH), np.uint8)
    words = np.stack([np.full(n, 0x8100), outer, np.full(n, 0x8100), inner, c["ethertype"], c["ethertype"],
                      c["ethertype"]], axis=1)
    # the words after the addresses: [type] / [8100 outer type] / [8100 outer 8100 inner type]
    pick = np.array([[4, 4, 4, 4, 4], [0, 1, 4, 4, 4], [0, 1, 2, 3, 4]])[tags]
    w = np.take_along_axis(words, pick, axis=1).astype(">u2")
    eth[:, 12:] = w.view(np.uint8).reshape(n, 10)
    l2 = 14 + 4 * tags
    version, proto, wire = c["ip_version"], c["protocol"], c["wire_len"]
    v4, v6 = version == 4, version == 6
    ip = v4 | v6
    ff, off = c["frag_flags"], c["frag_offset"]
    # transport header: on first fragments whose L4 the producer parsed
    l4_on = ip & (off == 0) & ((c["flags"] & F_L4_UNPARSED) == 0)
    tcp, udp = l4_on & (proto == PROTO_TCP), l4_on & (proto == PROTO_UDP)
    icmp = l4_on & ((proto == PROTO_ICMP) | (proto == PROTO_ICMP6))
    l4 = np.zeros(n, _TCP)
    l4["sport"], l4["dport"], l4["off"], l4["flags"] = c["src_port"], c["dst_port"], 5 << 4, c["tcp_flags"] & 0xFF
    # UDP and ICMP rows overwrite the TCP fields they share bytes with (the rest stays zero)
    u = l4.view(_UDP)
    udp_len = np.minimum(np.maximum(8, wire - l2 - np.where(v4, 20, 40)), 0xFFFF)
    u["len"] = np.where(udp, udp_len, u["len"])
    i = l4.view(_ICMP)
    for name, val in (("type", c["src_port"] & 0xFF), ("code", c["dst_port"] & 0xFF), ("csum", 0)):
        i[name] = np.where(icmp, val, i[name])
    l4_len = np.where(tcp, 20, np.where(udp | icmp, 8, 0))
    # IP
    src, dst = _addresses(b.column("src_addr")), _addresses(b.column("dst_addr"))
    h6 = np.zeros(n, _IPV6)
    frag6 = v6 & ((off != 0) | ((ff & 1) != 0))
    h6["vtf"], h6["plen"] = 6 << 28, np.minimum(np.maximum(0, wire - l2 - 40), 0xFFFF)
    h6["next"] = np.where(frag6, 44, proto)
    h6["hlim"], h6["src"], h6["dst"] = c["ttl"], src, dst
    h6["f_next"], h6["f_off"] = np.where(frag6, proto, 0), np.where(frag6, (off // 8) << 3 | (ff & 1), 0)
    l3_bytes = h6.view(np.uint8).reshape(n, _L3).copy()
    if v4.any():
        h4 = np.zeros(n, _IPV4)
        h4["vihl"], h4["total"] = 0x45, np.minimum(np.maximum(20, wire - l2), 0xFFFF)
        h4["frag"] = (ff & 1) << 13 | (ff & 2) << 13 | (off // 8)
        h4["ttl"], h4["proto"], h4["src"], h4["dst"] = c["ttl"], proto, src[:, 12:], dst[:, 12:]
        s = h4.view(">u2").reshape(n, 10).astype(np.int64).sum(axis=1)
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        h4["csum"] = ~s & 0xFFFF
        l3_bytes[v4, :20] = h4.view(np.uint8).reshape(n, 20)[v4]
        l3_bytes[v4, 20:] = 0
    l3_len = np.where(v4, 20, np.where(v6, 40 + 8 * frag6, 0))
    return Frames(c["ts_ns"], wire, [(eth, l2), (l3_bytes, l3_len), (l4.view(np.uint8).reshape(n, _L4), l4_len)],
                  (p_flat, p_len))


def write_pcap(batches: Iterable[pa.RecordBatch], out: BinaryIO) -> int:
    out.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET))  # nanosecond pcap
    n = 0
    for b in batches:
        if b.num_rows == 0:
            continue
        f = frames(b)
        length = f.length
        rec = np.zeros((b.num_rows, 4), "<u4")
        rec[:, 0], rec[:, 1] = np.divmod(f.ts_ns, 1_000_000_000)
        rec[:, 2], rec[:, 3] = length, np.maximum(length, f.wire_len)
        out.write(_join_rows([(rec.view(np.uint8).ravel(), np.full(b.num_rows, 16, np.int64)), *f.parts()]))
        n += b.num_rows
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
    for b in batches:
        m = b.num_rows
        if m == 0:
            continue
        f = frames(b)
        length = f.length
        pad = -length % 4
        total = 32 + length + pad  # enhanced packet block: 28 bytes before the frame, its padding, 4 after
        head = np.zeros((m, 7), "<u4")
        head[:, 0], head[:, 1] = 6, total
        ts = f.ts_ns.astype(np.uint64)
        head[:, 3], head[:, 4] = ts >> np.uint64(32), ts & np.uint64(0xFFFFFFFF)
        head[:, 5], head[:, 6] = length, np.maximum(length, f.wire_len)
        tail = np.zeros((m, 7), np.uint8)  # the padding, then the block's length again
        tail[np.arange(m)[:, None], pad[:, None] + np.arange(4)] = total.astype("<u4").view(np.uint8).reshape(m, 4)
        out.write(_join_rows([(head.view(np.uint8).ravel(), np.full(m, 28, np.int64)), *f.parts(),
                              (row_prefixes(tail, pad + 4), pad + 4)]))
        n += m
    return n


def write_parquet(batches: Iterable[pa.RecordBatch], schema: pa.Schema, out: BinaryIO) -> int:
    n = 0
    with pq.ParquetWriter(out, schema) as w:
        for b in batches:
            w.write_batch(b)
            n += b.num_rows
    return n
