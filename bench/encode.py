"""Avro encoding rate: pktstream's batch encoder against fastavro, on the packet schema.

    .venv/bin/python -m bench.encode [--records 200000] [--payload 0|64|...]
"""

from __future__ import annotations

import argparse
import io
import time

import fastavro
import numpy as np

from pktstream.schemas import load_schema_json
from pktstream.schemas.container import ContainerWriter
from pktstream.schemas.packets import to_columns
from pktstream.schemas.record import record_dtype


def synthetic(n: int, payload: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = np.zeros(n, dtype=record_dtype(payload))
    r["ts_ns"] = np.arange(n, dtype=np.uint64) * 1000 + 10**12
    r["src_addr"][:, 10:12] = 0xFF
    r["src_addr"][:, 12:] = rng.integers(0, 256, (n, 4))
    r["dst_addr"][:, 10:12] = 0xFF
    r["dst_addr"][:, 12:] = [10, 0, 0, 1]
    r["ifindex"] = 2
    r["wire_len"] = rng.integers(64, 1500, n)
    r["sample_rate"] = 1
    r["src_port"] = rng.integers(1024, 65535, n)
    r["dst_port"] = rng.choice([80, 443, 53, 8080], n)
    r["ip_version"] = 4
    r["protocol"] = rng.choice([6, 17], n)
    r["ttl"] = 64
    r["tcp_flags"] = 0x18
    r["ethertype"] = 0x0800
    if payload:
        plen = rng.integers(0, payload + 1, n)
        r["payload_len"] = plen
        r["cap_len"] = plen
        r["payload"][:, :payload] = rng.integers(32, 127, (n, payload))
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--payload", type=int, default=0)
    a = ap.parse_args()
    schema = load_schema_json("packet")
    recs = synthetic(a.records, a.payload)
    w = ContainerWriter(schema)
    w.container(to_columns(recs[:10], 0, 0), 10)  # compile (or load the cached) encoder first
    t = time.perf_counter()
    size = 0
    for i in range(0, a.records, a.batch):
        chunk = recs[i : i + a.batch]
        size += len(w.container(to_columns(chunk, i, 0), len(chunk)))
    fast = a.records / (time.perf_counter() - t)

    cols = to_columns(recs[: a.batch], 0, 0)
    dicts = []
    for j in range(a.batch):
        d = {k: (int(v[j]) if np.ndim(v) == 1 else bytes(v[j])) for k, v in cols.items() if not k.endswith("__len")}
        d["payload"] = bytes(cols["payload"][j][: int(cols["payload__len"][j])])
        dicts.append(d)
    parsed = fastavro.parse_schema(schema)
    t = time.perf_counter()
    fastavro.writer(io.BytesIO(), parsed, dicts)
    ref = a.batch / (time.perf_counter() - t)
    print(f"payload={a.payload} records={a.records} batch={a.batch}")
    print(f"pktstream batch encoder: {fast:,.0f} records/s ({size / a.records:.1f} bytes/record uncompressed)")
    print(f"fastavro.writer        : {ref:,.0f} records/s")
    print(f"ratio                  : {fast / ref:.1f}x")


if __name__ == "__main__":
    main()
