"""Consumer-side decoding rate: packet containers to columns, against fastavro's reader.

    .venv/bin/python -m bench.decode [--records 1000000] [--payload 64]
"""

from __future__ import annotations

import argparse
import io
import time

import fastavro

from bench.encode import synthetic
from pktstream.schemas import load_schema_json
from pktstream.schemas.columns import read_container
from pktstream.schemas.container import ContainerWriter
from pktstream.schemas.packets import to_columns


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--payload", type=int, default=0)
    a = ap.parse_args()
    w = ContainerWriter(load_schema_json("packet"), metadata={"pktstream.payload_bytes": str(a.payload)})
    recs = synthetic(a.records, a.payload)
    msgs = [w.container(to_columns(recs[i : i + a.batch], i, 0), len(recs[i : i + a.batch]))
            for i in range(0, a.records, a.batch)]
    read_container(msgs[0])
    t = time.perf_counter()
    n = sum(read_container(m).n for m in msgs)
    ours = n / (time.perf_counter() - t)
    t = time.perf_counter()
    m = sum(1 for _ in fastavro.reader(io.BytesIO(msgs[0])))
    ref = m / (time.perf_counter() - t)
    print(f"payload={a.payload} records={n} batch={a.batch}")
    print(f"pktstream read_container: {ours:,.0f} records/s")
    print(f"fastavro.reader         : {ref:,.0f} records/s")
    print(f"ratio                   : {ours / ref:.1f}x")


if __name__ == "__main__":
    main()
