"""Messages a broken or malicious writer can put on the packet topic, made without project code:
fastavro for the well-formed ones, a hand-made Object Container (magic, metadata map, sync marker,
blocks) for the rest. Each comes with a name the tests report it under."""

from __future__ import annotations

import copy
import io
import json
import zlib
from collections.abc import Callable
from functools import cache
from typing import Any

import fastavro

from pktstream.schemas import load_schema_json

SYNC = b"\x5a" * 16
GIB = 1 << 30


def _long(v: int) -> bytes:
    z = (v << 1) ^ (v >> 63)
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _bytes(b: bytes) -> bytes:
    return _long(len(b)) + b


def container(schema: str, blocks: list[tuple[int, bytes]], codec: str = "null",
              meta: dict[str, str] | None = None, sync: bytes = SYNC, meta_count: int | None = None) -> bytes:
    """An Object Container by hand: any schema text, codec, metadata and blocks (records, data)."""
    m = {"avro.schema": schema, "avro.codec": codec, **(meta or {})}
    head = b"Obj\x01" + _long(meta_count if meta_count is not None else len(m))
    head += b"".join(_bytes(k.encode()) + _bytes(v.encode()) for k, v in m.items()) + _long(0) + sync
    return head + b"".join(_long(n) + _long(len(d)) + d + sync for n, d in blocks)


def packet_schema_text() -> str:
    return json.dumps(load_schema_json("packet"))


def record(i: int, ts_ns: int, **over: Any) -> dict[str, Any]:
    """A packet record with every field of schemas/packet.avsc (a UDP datagram of 7 bytes)."""
    r: dict[str, Any] = {
        "seq": i, "ts_ns": ts_ns, "ifindex": 2, "rx_queue": 0,
        "src_addr": bytes(10) + b"\xff\xff" + bytes([10, 9, (i >> 8) & 255, i & 255]),
        "dst_addr": bytes(10) + b"\xff\xff" + bytes([10, 1, 0, 10]),
        "ip_version": 4, "protocol": 17, "src_port": 40000 + i % 1000, "dst_port": 9999, "wire_len": 49, "ttl": 64,
        "tcp_flags": 0, "frag_flags": 2, "frag_offset": 0, "vlan_outer": 0, "vlan_inner": 0, "ethertype": 0x0800,
        "flags": 0, "sample_rate": 1, "payload_len": 7, "payload": b"hello %d" % (i % 10), "direction": 0,
        "segments": 1,
    }
    r["payload"] = r["payload"][:7]
    r.update(over)
    return r


def valid(records: list[dict[str, Any]], host: str, codec: str = "null", payload_bytes: str = "64",
          schema: dict[str, Any] | None = None) -> bytes:
    """A well-formed packet message as fastavro writes it, with the producer's metadata."""
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(copy.deepcopy(schema or load_schema_json("packet"))), records,
                    codec=codec, sync_marker=SYNC,
                    metadata={"pktstream.host": host, "pktstream.interface": "eth0",
                              "pktstream.payload_bytes": payload_bytes})
    return buf.getvalue()


def _encoded(records: list[dict[str, Any]], schema: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    parsed = fastavro.parse_schema(copy.deepcopy(schema))
    for r in records:
        fastavro.schemaless_writer(out, parsed, r)
    return out.getvalue()


@cache
def deflate_bomb(size: int = GIB) -> bytes:
    """A raw deflate stream of ``size`` zero bytes (about 1 MB for 1 GiB)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    return b"".join(c.compress(chunk) for _ in range(size >> 20)) + c.flush()


@cache
def zstd_bomb(size: int = GIB) -> bytes:
    """One zstandard frame of ``size`` zero bytes (a few tens of kilobytes for 1 GiB)."""
    from pktstream.schemas.container import zstd_module

    c = zstd_module().ZstdCompressor(level=3)
    chunk = bytes(1 << 20)
    return b"".join(c.compress(chunk) for _ in range(size >> 20)) + c.flush()


def _zstd(data: bytes) -> bytes:
    from pktstream.schemas.container import zstd_module

    return bytes(zstd_module().compress(data))


def column_filling(t0_ns: int, corrupt: bool = True) -> bytes:
    """Two zstandard blocks of 215,000 records without payload at the widest payload (1,024): 533 MB
    of columns from 7 KB; the last block has a byte after its records unless not ``corrupt``."""
    tiny = _encoded([record(0, t0_ns, payload=b"", payload_len=0)], load_schema_json("packet")) * 215_000
    return container(packet_schema_text(), [(215_000, _zstd(tiny)), (215_000, _zstd(tiny + b"\x00"[:corrupt]))],
                     codec="zstandard", meta={"pktstream.payload_bytes": "1024"})


def hostile(t0_ns: int) -> list[tuple[str, bytes]]:
    """The hostile messages, (name, value): each must be set aside by a consumer, none may crash,
    stall or blind it. ``t0_ns``: the event time their records (where they have any) carry."""
    schema = load_schema_json("packet")
    recs = [record(i, t0_ns + i * 1000) for i in range(5)]
    good = valid(recs, "hostile")
    body = _encoded(recs, schema)

    deep = '{"type": "array", "items": ' * 5000 + '"long"' + "}" * 5000  # written as text: json cannot
    deep_text = ('{"type": "record", "name": "Packet", "namespace": "io.pktstream", "fields": [{"name": "x", '
                 f'"type": {deep}}}]}}')
    deep_small = ('{"type":"record","name":"Packet","namespace":"io.pktstream","fields":[{"name":"x","type":'
                  + '{"type":"array","items":' * 2000 + '"long"' + "}" * 2000 + "}]}")
    other = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "long"}]}
    packet_without_ts = {"type": "record", "name": "Packet", "namespace": "io.pktstream",
                         "fields": [{"name": "seq", "type": "long"}]}
    negative_fixed = {"type": "record", "name": "Packet", "namespace": "io.pktstream", "fields": [
        {"name": "a", "type": {"type": "fixed", "name": "A", "size": 16}},
        {"name": "b", "type": {"type": "fixed", "name": "B", "size": -4090}}]}
    union = copy.deepcopy(schema)
    for f in union["fields"]:
        if f["name"] == "payload":
            f["type"] = ["null", "bytes"]
    protocol_long = copy.deepcopy(schema)
    for f in protocol_long["fields"]:
        if f["name"] == "protocol":
            f["type"] = "long"
    big_protocol = _encoded([record(0, t0_ns, protocol=1 << 40)], protocol_long)  # a 6-byte varint in an int
    stats = load_schema_json("stats")
    forged_len = copy.deepcopy(schema)
    forged_len["fields"].append({"name": "payload__len", "type": "long", "default": 0})
    snappy_huge = _long(1 << 31) + b"\x00" * 16 + b"\x00\x00\x00\x00"  # declares 2 GiB uncompressed

    makers: list[tuple[str, Callable[[], bytes]]] = [
        ("payload_bytes_not_a_number", lambda: valid(recs, "hostile", payload_bytes="abc")),
        ("schema_5000_deep", lambda: container(deep_text, [(1, b"\x00")])),
        ("container_of_another_schema", lambda: container(json.dumps(other), [(2, _long(1) + _long(2))])),
        ("packet_record_without_ts_ns", lambda: container(json.dumps(packet_without_ts), [(2, _long(1) + _long(2))])),
        ("stats_report_on_the_packet_topic", lambda: container(json.dumps(stats), [(0, b"")])),
        ("1.6M_records_declared_with_65536_byte_payloads",
         lambda: container(packet_schema_text(), [(1_600_000, bytes(1_600_000))], meta={
             "pktstream.payload_bytes": "65536"})),
        ("negative_fixed_size", lambda: container(json.dumps(negative_fixed), [(1, bytes(4096) + bytes(8))])),
        ("schema_2000_deep_within_the_size_limit", lambda: container(deep_small, [(1, b"\x00")])),
        ("deflate_1MB_to_1GiB", lambda: container(packet_schema_text(), [(1_000_000, deflate_bomb())],
                                                  codec="deflate")),
        ("zstd_to_1GiB", lambda: container(packet_schema_text(), [(1_000_000, zstd_bomb())], codec="zstandard")),
        ("snappy_declaring_2GiB", lambda: container(packet_schema_text(), [(1_000, snappy_huge)], codec="snappy")),
        ("union_type_in_the_schema", lambda: container(json.dumps(union), [(0, b"")])),
        ("int_field_beyond_32_bits", lambda: container(packet_schema_text(), [(1, big_protocol)])),
        ("metadata_claiming_a_billion_entries", lambda: container(packet_schema_text(), [], meta_count=10**9)),
        ("truncated", lambda: good[:-40]),
        ("sync_marker_mismatch", lambda: good[:-16] + b"\xa5" * 16),
        ("block_with_bytes_after_its_records", lambda: container(packet_schema_text(), [(5, body + b"\x00")])),
        ("not_avro", lambda: b"\x00\x01garbage" * 100),
        ("empty_value", lambda: b""),
        # found by review: a quadratic frame loop, int() of 5000 digits, a forged length column, an
        # empty schema of a stats report's name declaring a trillion records (tail)
        ("zstd_of_100000_skippable_frames", lambda: container(packet_schema_text(), [(
            1, b"\x50\x2a\x4d\x18\x00\x00\x00\x00" * 100_000)], codec="zstandard")),
        ("payload_bytes_of_5000_digits", lambda: valid(recs, "hostile", payload_bytes="1" * 5000)),
        ("a_field_named_payload__len", lambda: container(json.dumps(forged_len), [(1, body[:0] + _long(-5))])),
        ("stats_name_no_fields_a_trillion_records", lambda: container(json.dumps(
            {"type": "record", "name": "io.pktstream.ProducerStats", "fields": []}), [(10**12, b"")])),
        # found by fuzzing: tiny records at the widest payload fill the column bound (512 MiB) from
        # a few kilobytes; a block joined to another must not double it (the last block is corrupt)
        ("430k_tiny_records_at_width_1024_then_a_bad_block", lambda: column_filling(t0_ns)),
    ]
    return [(name, make()) for name, make in makers]
