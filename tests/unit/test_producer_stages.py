"""The producer's stages without a kernel or a broker: batching, encoding, accounting."""

from __future__ import annotations

import io
import math

import avro.datafile
import avro.io
import numpy as np

from pktstream.producer.accounting import ms_or_none, stats_report
from pktstream.producer.batcher import Batcher
from pktstream.producer.encode import BatchEncoder
from pktstream.producer.privacy import PayloadScope
from pktstream.schemas import headers as H
from pktstream.schemas import load_schema_json
from pktstream.schemas.container import ContainerWriter
from pktstream.schemas.record import record_dtype
from pktstream.schemas.stats import decode_reports


def records(n: int, payload: bytes = b"", width: int = 64) -> np.ndarray:
    recs = np.zeros(n, dtype=record_dtype(width))
    recs["ts_ns"] = np.arange(n) * 1000 + 5_000_000
    recs["wire_len"] = 60
    p = payload[:width]
    recs["payload"][:, : len(p)] = np.frombuffer(p, dtype=np.uint8)
    recs["cap_len"] = len(p)
    recs["payload_len"] = len(p)
    return recs


def test_batcher_is_due_by_records_bytes_or_age() -> None:
    b = Batcher(max_records=100, max_bytes=1 << 30, max_age_ms=50)
    assert not b and b.take() is None and not b.due(0.0)
    b.add(records(40), now=10.0)
    b.add(records(30), now=10.02)
    assert b.records == 70 and b.room() == 30 and not b.full()
    assert not b.due(10.049) and b.due(10.05)  # the oldest record's age decides
    assert math.isclose(b.age_left_s(10.03), 0.02)
    b.add(records(30), now=10.03)
    assert b.full() and b.due(10.03)
    out = b.take()
    assert out is not None and len(out) == 100 and out["ts_ns"][40] == records(1)["ts_ns"][0]
    assert not b and b.records == 0 and b.bytes == 0
    small = Batcher(max_records=10**6, max_bytes=1000, max_age_ms=10**6)
    small.add(records(200, b"x" * 64), now=0.0)
    assert small.full()  # by estimated bytes


def test_a_quiet_hosts_small_batch_waits_longer_a_busy_ones_does_not() -> None:
    b = Batcher(max_records=10**6, max_bytes=1 << 30, max_age_ms=100, quiet_ms=2000, quiet_bytes=16 << 10)
    b.add(records(10), now=0.0)  # 10 records: far under 16 KiB
    assert not b.due(0.1) and b.quiet(0.1) and math.isclose(b.age_left_s(0.5), 1.5)
    assert not b.due(1.999) and b.due(2.0) and not b.quiet(2.0)
    b.add(records(2000), now=0.5)  # grown past 16 KiB: due at the usual age
    assert b.bytes >= 16 << 10 and b.due(0.1) and not b.quiet(0.1)
    off = Batcher(max_records=10**6, max_bytes=1 << 30, max_age_ms=100, quiet_ms=0)
    off.add(records(1), now=0.0)
    assert off.due(0.1) and not off.quiet(0.1)


def test_encoder_numbers_records_and_apache_avro_reads_the_message() -> None:
    schema = load_schema_json("packet")
    enc = BatchEncoder(ContainerWriter(schema, codec="null"), [(H.HOST, b"h1")], 64, PayloadScope([], []), True)
    first = enc.encode(records(3, b"GET / HTTP/1.1\r\nAuthorization: Bearer abc\r\n"))
    second = enc.encode(records(2))
    hdr = dict(second.headers)
    assert (hdr[H.HOST], hdr[H.RECORDS], hdr[H.SEQ_FIRST], hdr[H.SEQ_LAST]) == (b"h1", b"2", b"3", b"4")
    assert enc.next_seq == 5 and enc.redacted == 3 and first.records == 3
    rows = list(avro.datafile.DataFileReader(io.BytesIO(first.value), avro.io.DatumReader()))
    assert [r["seq"] for r in rows] == [0, 1, 2]
    assert all(b"abc" not in r["payload"] and b"Authorization: **********" in r["payload"] for r in rows)
    assert first.ts_first_ns == rows[0]["ts_ns"] and first.ts_last_ns == rows[-1]["ts_ns"]


def test_stats_report_and_latencies_for_json_logs() -> None:
    snap = {"packets_seen": 10, "records_captured": 9, "records_delivered": 8, "records_failed": 1,
            "records_pending": 0, "records_spooled": 0, "ringbuf_full": 1, "ringbuf_full_per_cpu": [1, 0],
            "sampled_out": 0, "sample_rate": 1, "batches": 2, "not_reported": 5, "directions": ["ingress", "egress"],
            "egress_packets_seen": 4, "egress_records_captured": 4, "egress_ringbuf_full": 0, "egress_sampled_out": 0,
            "failed_for_runs": {"run0": 500}}
    (r,) = decode_reports(stats_report(snap, "h1", "eth0", "run1", final=True))
    assert r["failed_for_runs"] == {"run0": 500}
    assert r["packets_seen"] == 10 and r["records_failed"] == 1 and r["final"] and not r["crashed"]
    assert r["directions"] == ["ingress", "egress"] and r["egress_packets_seen"] == 4
    assert r["host_id"] == "h1" and "not_reported" not in r
    assert ms_or_none(float("nan")) is None and ms_or_none(1.23456) == 1.23
