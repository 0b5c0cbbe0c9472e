"""DNS lookups in ``pktstream activity`` without Kafka: stage one (featurize, which parses every
port-53 payload prefix), the repartition encoding and stage two (pairing, records) over many
lookups from many clients, with closes every simulated second (steady state, not one burst).

    .venv/bin/python -m bench.dns [--lookups 200000] [--clients 5000] [--batch 4000]

Prints DNS packets/s through stage one and two, and lookups (records)/s.
"""

from __future__ import annotations

import argparse
import struct
import time

import numpy as np

from pktstream.consumers.activity.processor import ActivityProcessor
from pktstream.consumers.engine import features
from pktstream.consumers.engine.runner import FOREVER
from pktstream.schemas import load_schema_json
from pktstream.schemas.columns import read_container
from pktstream.schemas.container import ContainerWriter

SEC = 1_000_000_000
PAYLOAD = 256


def query(ident: int, name: str) -> bytes:
    q = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)


def answer(ident: int, name: str, addrs: list[bytes]) -> bytes:
    q = query(ident, name)
    head = struct.pack("!HHHHHH", ident, 0x8180, 1, len(addrs), 0, 0)
    rrs = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + a for a in addrs)
    return head + q[12:] + rrs


def traffic(n: int, clients: int, t0: int, span_ns: int, seed: int = 3) -> dict[str, np.ndarray]:
    """n lookups (query, answer 1-5 ms later, 1-4 addresses) of 500 names from ``clients`` clients."""
    rng = np.random.default_rng(seed)
    names = [f"svc{i}.internal.example.com" for i in range(500)]
    which = rng.integers(0, len(names), size=n)
    ids = rng.integers(0, 65536, size=n)
    client = rng.integers(0, clients, size=n)
    sport = rng.integers(20000, 60000, size=n)
    tq = np.sort(rng.integers(t0, t0 + span_ns, size=n))
    ta = tq + rng.integers(1_000_000, 5_000_000, size=n)
    m = 2 * n
    pay = np.zeros((m, PAYLOAD), dtype=np.uint8)
    plen = np.zeros(m, dtype=np.int64)
    cache: dict[tuple[int, int, int], tuple[bytes, bytes]] = {}
    for i in range(n):
        w, ident = int(which[i]), int(ids[i])
        k = (w, ident, w % 4 + 1)
        msgs = cache.get(k)
        if msgs is None:
            addrs = [bytes([10, 2, w >> 8, (w + j) & 0xFF]) for j in range(k[2])]
            msgs = cache[k] = (query(ident, names[w]), answer(ident, names[w], addrs))
        for j, raw in enumerate(msgs):
            pay[2 * i + j, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
            plen[2 * i + j] = len(raw)
        if len(cache) > 20000:
            cache.clear()
    c_addr = np.zeros((n, 16), dtype=np.uint8)
    c_addr[:, 10:12] = 0xFF
    c_addr[:, 12] = 10
    c_addr[:, 13] = 0
    c_addr[:, 14] = (client >> 8) & 0xFF
    c_addr[:, 15] = client & 0xFF
    s_addr = np.zeros((n, 16), dtype=np.uint8)
    s_addr[:, 10:12] = 0xFF
    s_addr[:, 12:16] = [10, 1, 0, 53]
    src = np.empty((m, 16), dtype=np.uint8)
    dst = np.empty((m, 16), dtype=np.uint8)
    src[0::2], dst[0::2], src[1::2], dst[1::2] = c_addr, s_addr, s_addr, c_addr
    ts = np.empty(m, dtype=np.int64)
    ts[0::2], ts[1::2] = tq, ta
    sp = np.empty(m, dtype=np.int64)
    dp = np.empty(m, dtype=np.int64)
    sp[0::2], dp[0::2], sp[1::2], dp[1::2] = sport, 53, 53, sport
    order = np.argsort(ts, kind="stable")
    cols = {"seq": np.arange(m, dtype=np.int64), "ts_ns": ts, "src_addr": src, "dst_addr": dst, "src_port": sp,
            "dst_port": dp, "protocol": np.full(m, 17), "tcp_flags": np.zeros(m, dtype=np.int64),
            "wire_len": 42 + plen, "ttl": np.full(m, 64), "payload": pay, "payload__len": plen, "payload_len": plen}
    for name, val in (("ifindex", 2), ("rx_queue", 0), ("ip_version", 4), ("frag_flags", 2), ("frag_offset", 0),
                      ("vlan_outer", 0), ("vlan_inner", 0), ("ethertype", 0x0800), ("flags", 0), ("sample_rate", 1),
                      ("segments", 1)):
        cols[name] = np.full(m, val, dtype=np.int64)
    cols["direction"] = np.tile([0, 1], n)
    return {k: v[order] for k, v in cols.items()}


def containers(cols: dict[str, np.ndarray], batch: int) -> list[bytes]:
    w = ContainerWriter(load_schema_json("packet"), "null", {"pktstream.host": "dns-bench",
                                                             "pktstream.payload_bytes": str(PAYLOAD)})
    n = len(cols["seq"])
    return [w.container({k: v[s : s + batch] for k, v in cols.items()}, min(batch, n - s)) for s in range(0, n, batch)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lookups", type=int, default=200_000)
    ap.add_argument("--clients", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=4000)
    ap.add_argument("--span-s", type=float, default=120.0)
    a = ap.parse_args()
    t0 = 1_800_000_000 * SEC
    msgs = [read_container(c) for c in containers(traffic(a.lookups, a.clients, t0, int(a.span_s * SEC)), a.batch)]
    p = ActivityProcessor(grace_s=1.0)
    nparts = 1
    states = [p.new_state()]
    records = 0
    t_stage1 = t_stage2 = 0.0
    next_close = t0 + SEC
    for b in msgs:
        t = time.perf_counter()
        parts = p.route(p.featurize(b, "dns-bench/eth0"), nparts)
        wire = {q: features.encode(f) for q, f in parts.items()}
        t_stage1 += time.perf_counter() - t
        t = time.perf_counter()
        for q, data in wire.items():
            p.process(states[q], features.decode(data))
        last = int(b.columns["ts_ns"].max())
        while next_close <= last:  # a commit each simulated second
            records += sum(o.topic == "pktstream.dns" for o in p.close(states[0], next_close))
            next_close += SEC
        t_stage2 += time.perf_counter() - t
    t = time.perf_counter()
    records += sum(o.topic == "pktstream.dns" for o in p.close(states[0], FOREVER))
    t_stage2 += time.perf_counter() - t
    pkts = 2 * a.lookups
    print(f"{a.lookups:,} lookups ({pkts:,} DNS packets) from {a.clients:,} clients over {a.span_s:.0f} s of event "
          f"time, messages of {a.batch} records")
    print(f"stage one: {pkts / t_stage1:,.0f} packets/s; stage two: {pkts / t_stage2:,.0f} packets/s; "
          f"both: {pkts / (t_stage1 + t_stage2):,.0f} packets/s, {records / (t_stage1 + t_stage2):,.0f} lookups/s "
          f"({records:,} records)")


if __name__ == "__main__":
    main()
