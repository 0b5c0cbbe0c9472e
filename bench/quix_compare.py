"""Why the consumers do not use Quix Streams: its per-record rate on the same kind of window.

    python -m venv /tmp/qx && /tmp/qx/bin/pip install quixstreams
    /tmp/qx/bin/python bench/quix_compare.py --bootstrap 127.0.0.1:9092 [--records 200000]

One Kafka message per packet record (Quix's model: a dataframe row per message), keyed by API,
and the simplest per-API usage window Quix offers: a one-minute tumbling window on event time
with a grace period, counting records, with exactly-once processing. Prints records per second
(time from the first to the last record processed, not counting start-up).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from quixstreams import Application


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--records", type=int, default=200_000)
    a = ap.parse_args()
    topic = f"quix-cmp-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    admin.create_topics([NewTopic(topic, 6, 1)])[topic].result()
    p = Producer({"bootstrap.servers": a.bootstrap, "linger.ms": 20, "compression.type": "zstd"})
    t0 = int(time.time() * 1000) - 600_000
    apis = [f"api{i}" for i in range(20)]
    for i in range(a.records):
        api = apis[i % len(apis)]
        p.produce(topic, json.dumps({"api": api, "ts": t0 + i, "bytes": 100 + i % 1000}).encode(), key=api.encode())
        if i % 10000 == 0:
            p.poll(0)
    p.flush()
    state_dir = tempfile.mkdtemp(prefix="pktstream-quix-state-")  # RocksDB state, removed at the end
    app = Application(broker_address=a.bootstrap, consumer_group=f"quix-cmp-{uuid.uuid4().hex[:6]}",
                      auto_offset_reset="earliest", processing_guarantee="exactly-once", state_dir=state_dir)
    t = app.topic(topic, value_deserializer="json", timestamp_extractor=lambda v, h, ts, tt: v["ts"])
    sdf = app.dataframe(t)
    marks: list[float] = []

    def mark(v: dict) -> dict:
        marks.append(time.perf_counter())
        return v

    sdf = sdf.update(mark)
    sdf = sdf.tumbling_window(duration_ms=60_000, grace_ms=10_000).count().final()
    try:
        app.run(sdf, count=a.records, timeout=600, collect=False)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    n = len(marks)
    print(f"quixstreams tumbling-window count, exactly-once: {n} records in {marks[-1] - marks[0]:.2f} s "
          f"= {n / (marks[-1] - marks[0]):,.0f} records/s")


if __name__ == "__main__":
    main()
