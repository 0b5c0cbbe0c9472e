"""The straightforward producer the throughput benchmark compares against.

Same XDP program, same broker, same schema; but the way most first versions
are written: bcc's per-event ring-buffer callback, a ctypes view and a dict
per record, one ``fastavro.schemaless_writer`` call and one Kafka message per
record. Prints the same JSON events as ``pktstream produce``
(``producer_started``, ``producer_stopped``) so the benchmark drives both alike.

    python -m bench.baseline --interface IF --bootstrap-servers B --topic T [--payload-bytes N]
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import os
import signal
import socket
import sys
import time
from typing import Any

import fastavro
from confluent_kafka import Producer

from pktstream.bpf import BPF_DIR, PROGRAM
from pktstream.producer import sysbpf
from pktstream.schemas import load_schema_json
from pktstream.schemas import record as R


def ctypes_record(payload_bytes: int) -> type[ctypes.Structure]:
    ctype = {"<u8": ctypes.c_uint64, "<u4": ctypes.c_uint32, "<u2": ctypes.c_uint16, "u1": ctypes.c_uint8,
             "16u1": ctypes.c_uint8 * 16}
    fields: list[tuple[str, Any]] = [(n, ctype[f]) for n, f, _ in R.HEADER_FIELDS]
    area = R.payload_area(payload_bytes)
    if area:
        fields.append(("payload", ctypes.c_uint8 * area))

    class Rec(ctypes.Structure):
        _fields_ = fields

    return Rec


def emit(event: str, **kw: Any) -> None:
    print(json.dumps({"event": event, **kw}), file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interface", required=True)
    ap.add_argument("--bootstrap-servers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--payload-bytes", type=int, default=0)
    a = ap.parse_args()

    parsed = fastavro.parse_schema(load_schema_json("packet"))
    Rec = ctypes_record(a.payload_bytes)
    producer = Producer({"bootstrap.servers": a.bootstrap_servers, "enable.idempotence": True, "acks": "all",
                         "compression.type": "zstd", "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
    stats = {"captured": 0, "delivered": 0, "failed": 0}
    host = b"baseline"
    offset = time.time_ns() - time.monotonic_ns()

    def on_delivery(err: Any, _msg: Any) -> None:
        stats["failed" if err else "delivered"] += 1

    def callback(_ctx: Any, data: Any, _size: int) -> None:
        ev = ctypes.cast(data, ctypes.POINTER(Rec)).contents
        rec = {
            "seq": stats["captured"], "ts_ns": ev.ts_ns + offset, "ifindex": ev.ifindex, "rx_queue": ev.rx_queue,
            "src_addr": bytes(ev.src_addr), "dst_addr": bytes(ev.dst_addr), "ip_version": ev.ip_version,
            "protocol": ev.protocol, "src_port": ev.src_port, "dst_port": ev.dst_port, "wire_len": ev.wire_len,
            "ttl": ev.ttl, "tcp_flags": ev.tcp_flags, "frag_flags": ev.frag_flags, "frag_offset": ev.frag_offset,
            "vlan_outer": ev.vlan_outer, "vlan_inner": ev.vlan_inner, "ethertype": ev.ethertype,
            "flags": ev.flags, "sample_rate": ev.sample_rate, "payload_len": ev.payload_len,
            "payload": bytes(ev.payload[: ev.cap_len]) if a.payload_bytes else b"",
        }
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, rec)
        while True:
            try:
                producer.produce(a.topic, buf.getvalue(), key=host, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        stats["captured"] += 1

    from bcc import BPF

    b = BPF(src_file=str(PROGRAM).encode(),
            cflags=[f"-I{BPF_DIR}", f"-DPAYLOAD_BYTES={a.payload_bytes}", "-DRINGBUF_PAGES=4096"])
    fn = b.load_func(b"xdp_capture", BPF.XDP)
    b[b"events"].open_ring_buffer(callback)
    link = sysbpf.xdp_link_create(fn.fd, socket.if_nametoindex(a.interface))
    counters = b[b"counters"]
    stop = False

    def handler(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    emit("xdp_attached", prog_id=sysbpf.prog_id(fn.fd))
    emit("producer_started")
    while not stop:
        b.ring_buffer_poll(50)
        producer.poll(0)
    os.close(link)
    b.ring_buffer_consume()
    producer.flush(60)

    def total(idx: int) -> int:
        return sum(int(v) for v in counters[ctypes.c_uint32(idx)])

    emit("producer_stopped", packets_seen=total(R.CNT_PACKETS), records_captured=stats["captured"],
         records_delivered=stats["delivered"], records_failed=stats["failed"],
         ringbuf_full=total(R.CNT_RINGBUF_FULL), sampled_out=total(R.CNT_SAMPLED_OUT),
         latency_p50_ms=float("nan"), latency_p99_ms=float("nan"))


if __name__ == "__main__":
    main()
