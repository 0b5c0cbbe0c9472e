"""``pktstream query`` and ``pktstream export`` against the real broker, judged by readers we did not
write: Apache avro decodes the topic (the expected answers), tshark reads the pcap and pcapng
files, pyarrow the Parquet file."""

from __future__ import annotations

import io
import ipaddress
import json
import random
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import avro.datafile
import avro.io
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from confluent_kafka import Producer

from pktstream.consumers.tools.history import Progress, Range
from pktstream.consumers.tools.query import Sources, run_query
from pktstream.runtime.kafka import ensure_topic
from tests.support.apps import alerts_cmd, read_alerts, read_usage, restart_scenario, run_alerts, run_usage, usage_cmd
from tests.support.helpers import read_messages, require
from tests.support.producer_proc import PKTSTREAM
from tests.support.traffic import CATALOG as GEN_CATALOG
from tests.support.traffic import containers, generate, merge, packets

pytestmark = [pytest.mark.kafka]

SEC = 10**9
T0 = (time.time_ns() - 3600 * SEC) // (60 * SEC) * (60 * SEC)  # an hour ago, on a minute


def crafted() -> Any:
    """Frames of every shape the exporter rebuilds: TCP flags, UDP, ICMP, fragments, VLAN tags."""
    rng = random.Random(4)
    pk = []
    for i in range(300):
        kind = i % 6
        p: dict[str, Any] = {"ts": T0 + i * 10**7, "src": f"198.51.100.{1 + i % 50}", "dst": "203.0.113.7",
                             "sport": 1024 + i, "dport": 443, "len": 100 + rng.randrange(1400), "ttl": 30 + i % 200}
        if kind == 0:
            p.update(flags=0x02, len=60)
        elif kind == 1:
            p.update(proto=17, dport=53, payload=b"\x12\x34\x01\x00" + bytes(8))
        elif kind == 2:
            p.update(proto=1, sport=8, dport=0, len=98)
        elif kind == 3:
            p.update(proto=17, frag_flags=0, frag_offset=1480, record_flags=32 | 64, sport=0, dport=0)
        elif kind == 4:
            p.update(vlan_outer=100, record_flags=4, flags=0x18, payload=b"GET /x HTTP/1.1\r\n")
        else:
            p.update(vlan_outer=200, vlan_inner=30, record_flags=4, flags=0x11)
        pk.append(p)
    return packets(pk)


@pytest.fixture(scope="module")
def topic(kafka_bootstrap: str) -> Iterator[str]:
    """Two capture points on two partitions, with a message that does not decode among them."""
    name = f"query-{uuid.uuid4().hex[:8]}"
    ensure_topic({"bootstrap.servers": kafka_bootstrap}, name, 2)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    one = merge(crafted(), generate(400, T0 + 5 * SEC, 60 * SEC, clients=40, seed=2))
    two = generate(300, T0 + 30 * SEC, 60 * SEC, clients=20, seed=3)
    # each message stamped as a producer stamps it: when it was sent, just after its last record
    for i, m in enumerate(containers(one, batch=700, host="edge-1")):
        p.produce(name, m, key=b"edge-1", partition=0, timestamp=sent_ms(one, 700, i))
    p.produce(name, b"not an avro container", key=b"edge-1", partition=0, timestamp=sent_ms(one, 700, 1))
    for i, m in enumerate(containers(two, batch=500, host="edge-2")):
        p.produce(name, m, key=b"edge-2", partition=1, timestamp=sent_ms(two, 500, i))
    assert p.flush(30) == 0
    SENT[name] = one.n + two.n
    yield name


SENT: dict[str, int] = {}


def sent_ms(t: Any, batch: int, i: int) -> int:
    return int(t.columns["ts_ns"][min(t.n, (i + 1) * batch) - 1]) // 10**6 + 100


def apache_records(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record as Apache's avro package decodes it, with the host from the container."""
    out = []
    for _k, value, _h in read_messages(bootstrap, topic):
        try:
            reader = avro.datafile.DataFileReader(io.BytesIO(value), avro.io.DatumReader())
        except Exception:
            continue
        host = reader.get_meta("pktstream.host").decode()
        for r in reader:
            r["host"] = host
            for a in ("src_addr", "dst_addr"):
                ip = ipaddress.IPv6Address(r[a])
                r[a] = str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)
            out.append(r)
    return out


def pktstream(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([PKTSTREAM, *args], capture_output=True, text=True, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return r


def query(bootstrap: str, topic: str, sql: str, *extra: str) -> list[dict[str, Any]]:
    r = pktstream("query", "--bootstrap-servers", bootstrap, "--topic", topic, sql, "--format", "json", *extra)
    return [json.loads(line) for line in r.stdout.splitlines()]


FIELDS = ["seq", "ts_ns", "ifindex", "rx_queue", "src_addr", "dst_addr", "ip_version", "protocol", "src_port",
          "dst_port", "wire_len", "ttl", "tcp_flags", "frag_flags", "frag_offset", "vlan_outer", "vlan_inner",
          "ethertype", "flags", "sample_rate", "payload_len", "host"]


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def test_query_answers_equal_the_topic_as_apache_avro_decodes_it(kafka_bootstrap: str, topic: str) -> None:
    expected = apache_records(kafka_bootstrap, topic)
    assert len(expected) == SENT[topic]
    got = query(kafka_bootstrap, topic, f"select {', '.join(FIELDS)}, payload from packets")
    key = lambda r: (r["host"], r["seq"], r["ts_ns"])  # noqa: E731
    assert len(got) == len(expected)
    for g, e in zip(sorted(got, key=key), sorted(expected, key=key), strict=True):
        assert {f: g[f] for f in FIELDS} == {f: e[f] for f in FIELDS}
        assert g["payload"] == e["payload"].decode("utf-8", "backslashreplace")
    # a GROUP BY over a time range and one capture point
    since, until = (T0 + 20 * SEC) // 10**6, (T0 + 50 * SEC) // 10**6
    rows = query(kafka_bootstrap, topic, "select src_addr, protocol, count(*) as n, sum(wire_len) as bytes "
                 "from packets group by all", "--since", iso(since), "--until", iso(until), "--host", "edge-1")
    want: Counter[tuple[str, int]] = Counter()
    size: Counter[tuple[str, int]] = Counter()
    for e in expected:
        if e["host"] == "edge-1" and since * 10**6 <= e["ts_ns"] <= until * 10**6:
            want[(e["src_addr"], e["protocol"])] += 1
            size[(e["src_addr"], e["protocol"])] += e["wire_len"]
    assert {(r["src_addr"], r["protocol"]): (r["n"], r["bytes"]) for r in rows} == \
        {k: (n, size[k]) for k, n in want.items()}
    assert sum(want.values()) > 100


def test_simple_filters_are_applied_while_decoding(kafka_bootstrap: str, topic: str) -> None:
    """A query's simple WHERE filters drop records (and whole messages, by their headers) before
    DuckDB: the answer is the same, fewer records reach the engine."""
    expected = apache_records(kafka_bootstrap, topic)
    sql = ("SELECT src_addr, dst_port, count(*) AS n, sum(wire_len) AS bytes FROM packets "
           "WHERE protocol = 6 AND dst_port = 443 AND host = 'edge-1' AND wire_len >= 200 GROUP BY ALL")
    progress = Progress()
    out = io.BytesIO()
    run_query({"bootstrap.servers": kafka_bootstrap}, sql, Range(), Sources(packets=topic), "json", out, progress)
    got = {(r["src_addr"], r["dst_port"]): (r["n"], r["bytes"]) for r in map(json.loads, out.getvalue().splitlines())}
    want: Counter[tuple[str, int]] = Counter()
    size: Counter[tuple[str, int]] = Counter()
    for e in expected:
        if e["protocol"] == 6 and e["dst_port"] == 443 and e["host"] == "edge-1" and e["wire_len"] >= 200:
            want[(e["src_addr"], e["dst_port"])] += 1
            size[(e["src_addr"], e["dst_port"])] += e["wire_len"]
    assert got == {k: (n, size[k]) for k, n in want.items()} and sum(want.values()) > 20
    edge1 = sum(1 for e in expected if e["host"] == "edge-1")
    assert progress.records == sum(want.values())  # only the passing records reached DuckDB
    assert progress.filtered == edge1 - progress.records  # edge-2's messages were not even decoded


def test_export_pcap_and_pcapng_open_in_tshark_one_frame_per_record(kafka_bootstrap: str, topic: str,
                                                                    tmp_path: Path) -> None:
    require(shutil.which("tshark") is not None, "needs tshark (the set-up installs it)")
    expected = sorted((r for r in apache_records(kafka_bootstrap, topic) if r["host"] == "edge-1"),
                      key=lambda r: (r["ts_ns"], r["seq"]))
    for fmt in ("pcap", "pcapng"):
        out = tmp_path / f"x.{fmt}"
        r = pktstream("export", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--host", "edge-1",
                      "--format", fmt, "-o", str(out))
        assert f"{len(expected):,} records written" in r.stderr
        fields = ["frame.len", "frame.cap_len", "frame.time_epoch", "ip.src", "ip.dst", "ip.proto", "ip.ttl",
                  "tcp.srcport", "tcp.dstport", "tcp.flags", "udp.srcport", "udp.dstport", "icmp.type", "vlan.id",
                  "ip.frag_offset"]
        ts = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-E", "separator=;", "-E", "occurrence=a",
                             *[x for f in fields for x in ("-e", f)]], capture_output=True, text=True, timeout=120)
        assert ts.returncode == 0, ts.stderr
        frames = [dict(zip(fields, line.split(";"), strict=True)) for line in ts.stdout.splitlines()]
        assert len(frames) == len(expected)
        got = sorted(frames, key=lambda f: f["frame.time_epoch"])
        for f, e in zip(got, expected, strict=True):
            assert int(f["frame.len"]) == e["wire_len"], (f, e)
            assert int(f["frame.cap_len"]) <= e["wire_len"]
            assert f["ip.src"] == e["src_addr"] and f["ip.dst"] == e["dst_addr"]
            assert int(f["ip.proto"]) == e["protocol"] and int(f["ip.ttl"]) == e["ttl"]
            sec, frac = f["frame.time_epoch"].split(".")
            assert int(sec) * 10**9 + int(frac.ljust(9, "0")) == e["ts_ns"]  # nanoseconds, exactly
            if e["frag_offset"]:
                assert int(f["ip.frag_offset"]) * 8 == e["frag_offset"] and not f["udp.srcport"]  # in 8-byte units
            elif e["protocol"] == 6:
                assert (int(f["tcp.srcport"]), int(f["tcp.dstport"])) == (e["src_port"], e["dst_port"])
                assert int(f["tcp.flags"], 16) == e["tcp_flags"]
            elif e["protocol"] == 17:
                assert (int(f["udp.srcport"]), int(f["udp.dstport"])) == (e["src_port"], e["dst_port"])
            elif e["protocol"] == 1:
                assert int(f["icmp.type"]) == e["src_port"]
            vids = [int(v) for v in f["vlan.id"].split(",") if v]
            assert vids == [v & 0xFFF for v in (e["vlan_outer"], e["vlan_inner"]) if v]
    info = subprocess.run(["capinfos", str(tmp_path / "x.pcapng")], capture_output=True, text=True, timeout=60)
    assert "payload is the prefix" in info.stdout and "nanoseconds" in info.stdout


def test_parquet_export_equals_the_query_table(kafka_bootstrap: str, topic: str, tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    pktstream("export", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--format", "parquet", "-o", str(out))
    exported = pq.read_table(out)
    queried = tmp_path / "q.parquet"
    pktstream("query", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "select * from packets",
              "--format", "parquet", "-o", str(queried))
    table = pq.read_table(queried)
    assert exported.num_rows == len(apache_records(kafka_bootstrap, topic))
    assert exported.schema.names == table.schema.names
    key = [(k, "ascending") for k in ("host", "seq", "ts_ns")]
    a, b = exported.sort_by(key), table.sort_by(key)
    for name in exported.schema.names:  # the same values, column by column
        x, y = a[name], b[name]
        if name == "ts":  # nanoseconds: compared as integers (datetime has microseconds)
            x, y = x.cast(pa.int64()), y.cast(pa.int64())
        assert x.to_pylist() == y.to_pylist(), name
    assert exported.schema.field("ts").type == pa.timestamp("ns", tz="UTC")


def test_bad_input_is_said_in_words(kafka_bootstrap: str, topic: str) -> None:
    r = pktstream("query", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "select nope from packets",
                  ok=False)
    assert r.returncode == 1 and "nope" in r.stderr and "the packets table has the columns: seq int64" in r.stderr
    r = pktstream("query", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "select 1", ok=False)
    assert r.returncode == 2 and "names none of the tables" in r.stderr
    r = pktstream("query", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--since", "2999-01-01T00:00:00Z",
                  "select count(*) from packets", ok=False)
    assert r.returncode == 1 and "no messages in the range 2999-01-01T00:00:00Z" in r.stderr
    r = pktstream("query", "--bootstrap-servers", kafka_bootstrap, "--topic", f"{topic}-missing",
                  "select count(*) from packets", ok=False)
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = pktstream("export", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--format", "pcap", "--since",
                  "yesterday", "--until", "then", "-o", "/dev/null", ok=False)
    assert r.returncode == 2 and "'yesterday' is not an ISO 8601 time" in r.stderr and "'then'" in r.stderr


def test_usage_and_alerts_are_tables_too(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The consumers' output topics as the tables usage and alerts: the answers equal what the
    topics hold as the tests' own readers (fastavro, JSON) read them."""
    b = kafka_bootstrap
    topic, rules, catalog = restart_scenario(b, tmp_path)
    usage_catalog = tmp_path / "usage-catalog.yaml"
    usage_catalog.write_text(yaml.safe_dump(GEN_CATALOG))
    run_usage(usage_cmd(b, topic, f"t-qu-{uuid.uuid4().hex[:6]}", f"{topic}.u", usage_catalog))
    run_alerts(alerts_cmd(b, topic, f"t-qa-{uuid.uuid4().hex[:6]}", f"{topic}.a", rules, catalog))
    want_u: Counter[str] = Counter()
    for r in read_usage(b, f"{topic}.u"):
        if r["window_s"] == 60:
            want_u[r["api"]] += r["requests"]
    want_a = Counter(d["unmapped"]["pktstream"]["rule"] for d in read_alerts(b, f"{topic}.a"))
    assert sum(want_u.values()) > 100 and len(want_a) >= 3
    got_u = query(b, topic, "SELECT api, sum(requests) AS n FROM usage WHERE window_s = 60 GROUP BY api",
                  "--usage-topic", f"{topic}.u")
    assert {r["api"]: r["n"] for r in got_u} == dict(want_u)
    got_a = query(b, topic, "SELECT rule, count(*) AS n, count(DISTINCT document->>'$.finding_info.uid') AS ids "
                  "FROM alerts GROUP BY rule", "--alerts-topic", f"{topic}.a")
    assert {r["rule"]: r["n"] for r in got_a} == dict(want_a)
