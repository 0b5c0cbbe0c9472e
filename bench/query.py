"""``pktstream query`` over a large packet topic: records/s (read from Kafka, decode, load into
DuckDB, a GROUP BY) and the process's peak RSS; with ``--export FORMAT``, ``pktstream export``
of the whole topic to a file instead (read, decode, rebuild the frames, write).

    python -m bench.query --records 20000000
    python -m bench.query --records 5000000 --export pcapng

Fills a topic of its own on a local broker (started here, or --bootstrap) with generated traffic
(about 1 M distinct records, repeated up to --records), then times the command as a user runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer

from pktstream.runtime.kafka import ensure_topic
from tests.support.helpers import wait_peak_rss_mb
from tests.support.traffic import fleet, generate

PKTSTREAM = str(Path(sys.executable).with_name("pktstream"))
SQL = ("SELECT host, protocol, dst_port, count(*) AS packets, sum(wire_len) AS bytes, "
       "count(DISTINCT src_addr) AS sources FROM packets GROUP BY ALL ORDER BY packets DESC LIMIT 10")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20_000_000)
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument("--sql", default=SQL)
    ap.add_argument("--export", choices=["pcap", "pcapng", "parquet"], default=None,
                    help="time pktstream export to this format instead of the query")
    a = ap.parse_args()
    lk = None
    bootstrap = a.bootstrap
    if not bootstrap:
        from pktstream.runtime.kafka_local import LocalKafka

        lk = LocalKafka(port=19610, data_dir=Path(tempfile.mkdtemp(prefix="pktstream-bench-query-")))
        lk.down()
        bootstrap = lk.up()
    try:
        t = generate(50_000, time.time_ns() - 3600 * 10**9, 600 * 10**9, clients=5000)
        msgs = fleet([(f"gen{h}", t) for h in range(3)])  # ~1 M records in messages of 20,000
        per_round = 3 * t.n
        topic = f"bench-query-{uuid.uuid4().hex[:6]}"
        ensure_topic({"bootstrap.servers": bootstrap}, topic, 6)
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "compression.type": "zstd",
                      "message.max.bytes": 16 << 20, "queue.buffering.max.kbytes": 1 << 20})
        sent = 0
        while sent < a.records:
            for host, m in msgs:
                while True:
                    try:
                        p.produce(topic, m, key=host.encode())
                        break
                    except BufferError:  # the local queue is full: let the broker take some
                        p.poll(0.1)
                p.poll(0)
            sent += per_round
        assert p.flush(300) == 0
        t0 = time.monotonic()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryDirectory() as tmp:
            cmd = [PKTSTREAM, "query", "--bootstrap-servers", bootstrap, "--topic", topic, a.sql, "--format", "json"]
            if a.export:
                cmd = [PKTSTREAM, "export", "--bootstrap-servers", bootstrap, "--topic", topic, "--format", a.export,
                       "-o", str(Path(tmp) / f"out.{a.export}")]
            proc = subprocess.Popen(cmd, stdout=out)
            rss_mb = wait_peak_rss_mb(proc, every_s=0.05)  # the command's own peak (VmHWM)
            secs = time.monotonic() - t0
            assert proc.returncode == 0
            out.seek(0)
            rows = [] if a.export else [json.loads(line) for line in out.read().decode().splitlines()]
            file_mb = (Path(tmp) / f"out.{a.export}").stat().st_size / 1e6 if a.export else 0
        total = sum(x.get("packets", 0) for x in rows)
        print(json.dumps({"records": sent, "seconds": round(secs, 2), "records_per_s": round(sent / secs),
                          "peak_rss_mb": round(rss_mb), "top_rows_records": total, "cpus": os.cpu_count(),
                          **({"export": a.export, "file_mb": round(file_mb)} if a.export else {})}))
    finally:
        if lk is not None:
            lk.down()
            shutil.rmtree(lk.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
