"""deploy/clickhouse/ against the real broker, through ClickHouse itself (chDB, the embedded
ClickHouse from PyPI, with its Kafka engine): the rows, the one-minute rollups, the usage windows
and the alerts equal what the topics hold as fastavro and json read them; a message that does not
decode is set aside in packets_errors and the rest still arrive. The cluster variant's statements
are parsed by ClickHouse's own parser (it needs Keeper and several servers to run)."""

from __future__ import annotations

import importlib.util
import io
import ipaddress
import json
import re
import string
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pyarrow as pa
import pytest
import yaml
from confluent_kafka import Producer

from pktstream.schemas import SCHEMA_DIR
from pktstream.schemas.container import ContainerWriter
from tests.support.apps import (
    alerts_cmd,
    read_alerts,
    read_usage,
    restart_scenario,
    run_activity,
    run_alerts,
    run_usage,
    usage_cmd,
)
from tests.support.helpers import read_messages
from tests.support.traffic import CATALOG as GEN_CATALOG
from tests.support.traffic import Traffic, containers, generate, merge, packets

pytestmark = [pytest.mark.kafka]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "clickhouse"
GARBAGE = b"not an avro container"


def statements(path: Path, **values: str) -> list[str]:
    """The file's statements with the placeholders filled in as envsubst fills them (every one
    must be given: a placeholder left over is an error)."""
    text = string.Template(path.read_text()).substitute(values)
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def text_ip(b: bytes) -> str:
    ip = ipaddress.IPv6Address(b)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


def topic_records(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    out = []
    for key, value, headers in read_messages(bootstrap, topic):
        if value == GARBAGE:
            continue
        for r in fastavro.reader(io.BytesIO(value)):
            assert isinstance(r, dict)
            r.setdefault("direction", 0)  # written before the fields existed: their defaults
            r.setdefault("segments", 1)
            r["host"] = (key or b"").decode()
            r["interface"] = headers.get("pktstream.interface", b"").decode()
            r["run_id"] = headers.get("pktstream.run_id", b"").decode()
            out.append(r)
    return out


class ClickHouse:
    def __init__(self, path: Path) -> None:
        from chdb import session

        self.s = session.Session(str(path))

    def run(self, sql: str) -> None:
        self.s.query(sql)

    def table(self, sql: str) -> pa.Table:
        res = self.s.query(sql, "Arrow")
        return pa.ipc.open_file(io.BytesIO(res.bytes())).read_all()

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return self.table(sql).to_pylist()

    def close(self) -> None:
        self.s.close()


def dns_lookups(t0: int, n: int) -> Traffic:
    """n DNS lookups (UDP, 2 ms each): answered with an address, nonexistent, or (each fifth) unanswered."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR

    pkts: list[dict[str, Any]] = []
    for i in range(n):
        t, name, port = t0 + i * 10**8, f"q{i}.shop.test", 20000 + i
        q = bytes(DNS(id=i, rd=1, qd=[DNSQR(qname=name)]))
        pkts.append({"ts": t, "src": "10.0.9.9", "dst": "10.1.0.53", "sport": port, "dport": 53, "proto": 17,
                     "flags": 0, "len": 42 + len(q), "payload": q})
        if i % 5 == 4:
            continue
        an = [DNSRR(rrname=name, type="A", rdata=f"10.2.0.{i}", ttl=60)] if i % 2 == 0 else []
        r = bytes(DNS(id=i, qr=1, rd=1, ra=1, rcode=0 if i % 2 == 0 else 3, qd=[DNSQR(qname=name)], an=an))
        pkts.append({"ts": t + 2_000_000, "src": "10.1.0.53", "dst": "10.0.9.9", "sport": 53, "dport": port,
                     "proto": 17, "flags": 0, "len": 42 + len(r), "payload": r, "direction": 1})
    return packets(pkts)


def test_clickhouse_reads_the_packet_usage_alerts_and_activity_topics(kafka_bootstrap: str,
                                                                        tmp_path: Path) -> None:
    b = kafka_bootstrap
    topic, rules, catalog = restart_scenario(b, tmp_path)
    # a capture point as the producer names it (headers), and a message that does not decode
    edge = generate(200, time.time_ns() - 1200 * 10**9, 60 * 10**9, clients=20, seed=11)
    # both directions, and egress GSO buffers that stand for several wire packets
    edge.columns["direction"] = np.arange(edge.n, dtype=np.int64) % 2
    edge.columns["segments"] = np.where(np.arange(edge.n) % 6 == 1, 4, 1).astype(np.int64)
    edge = merge(edge, dns_lookups(int(edge.columns["ts_ns"][0]), 60))
    p = Producer({"bootstrap.servers": b})
    run_id = uuid.uuid4().hex[:16]
    headers = [("pktstream.host", b"edge-9"), ("pktstream.interface", b"ens5"), ("pktstream.run_id", run_id.encode())]
    for m in containers(edge, batch=500, host="edge-9", interface="ens5"):
        p.produce(topic, m, key=b"edge-9", partition=3, headers=headers)
    # a message of the previous packet schema (no direction, no segments): read with their defaults
    old = generate(20, time.time_ns() - 1100 * 10**9, 10**9, clients=3, seed=12)
    v3 = json.loads((SCHEMA_DIR / "history" / "packet" / "v3.avsc").read_text())
    p.produce(topic, ContainerWriter(v3, "null", {"pktstream.host": "edge-9"}).container(old.columns, old.n),
              key=b"edge-9", partition=3, headers=headers)
    p.produce(topic, GARBAGE, key=b"edge-9", partition=3)
    assert p.flush(30) == 0
    usage_catalog = tmp_path / "usage-catalog.yaml"
    usage_catalog.write_text(yaml.safe_dump(GEN_CATALOG))
    run_usage(usage_cmd(b, topic, f"t-chu-{uuid.uuid4().hex[:6]}", f"{topic}.u", usage_catalog))
    run_alerts(alerts_cmd(b, topic, f"t-cha-{uuid.uuid4().hex[:6]}", f"{topic}.a", rules, catalog))

    every = run_activity(b, topic, f"{topic}.c")
    want_conns = [d for d in every if d["class_uid"] == 4001]
    want_dns = {d["metadata"]["uid"]: d for d in every if d["class_uid"] == 4003}
    want_http = {d["metadata"]["uid"]: d for d in every if d["class_uid"] == 4002}
    assert len(want_http) > 100 and len(want_http) == len([d for d in every if d["class_uid"] == 4002])
    assert len(want_dns) == 60 and sum(d["unmapped"]["pktstream"]["answered"] for d in want_dns.values()) == 48
    want = topic_records(b, topic)
    want_usage = read_usage(b, f"{topic}.u")
    want_alerts = read_alerts(b, f"{topic}.a")
    assert len(want) > 200_000 and len(want_usage) > 20 and len({d["finding_info"]["uid"] for d in want_alerts}) >= 3

    ch = ClickHouse(tmp_path / "clickhouse")
    try:
        for st in statements(DEPLOY / "single-node.sql", KAFKA_BROKERS=b, PACKETS_TOPIC=topic,
                             USAGE_TOPIC=f"{topic}.u", ALERTS_TOPIC=f"{topic}.a", CONNECTIONS_TOPIC=f"{topic}.c",
                             DNS_TOPIC=f"{topic}.c.dns", HTTP_TOPIC=f"{topic}.c.http",
                             CONSUMER_GROUP=f"t-ch-{uuid.uuid4().hex[:6]}"):
            ch.run(st)
        latest_conn: dict[str, dict[str, Any]] = {}
        for d in sorted(want_conns, key=lambda d: (d["unmapped"]["pktstream"]["final"], d["time"])):
            latest_conn[d["connection_info"]["uid"]] = d  # (a conversation's final record comes last)
        assert len(latest_conn) > 1000
        target = (len(want), 1, len(want_usage), len({d["metadata"]["uid"] for d in want_alerts}), len(latest_conn),
                  len(want_dns), len(want_http))
        deadline = time.monotonic() + 180
        got: tuple[int, ...] = ()
        while time.monotonic() < deadline:
            r = ch.rows("SELECT (SELECT count() FROM pktstream.packets) AS p, "
                        "(SELECT count() FROM pktstream.packets_errors) AS e, "
                        "(SELECT count() FROM pktstream.usage FINAL) AS u, "
                        "(SELECT count() FROM pktstream.alert_events FINAL) AS a, "
                        "(SELECT count() FROM pktstream.connections FINAL) AS c, "
                        "(SELECT count() FROM pktstream.dns FINAL) AS d, "
                        "(SELECT count() FROM pktstream.http FINAL) AS h")[0]
            got = (r["p"], r["e"], r["u"], r["a"], r["c"], r["d"], r["h"])
            if got == target:
                break
            time.sleep(2)
        assert got == target, f"ClickHouse holds {got}, the topics {target}"

        # every record, every field
        fields = ["seq", "ts_ns", "ifindex", "rx_queue", "ip_version", "protocol", "src_port", "dst_port",
                  "wire_len", "ttl", "tcp_flags", "frag_flags", "frag_offset", "vlan_outer", "vlan_inner",
                  "ethertype", "flags", "sample_rate", "payload_len", "direction", "segments"]
        t = ch.table("SELECT host, interface, run_id, src_ip, dst_ip, hex(payload) AS payload, "
                     "toUnixTimestamp64Nano(ts) AS ts_ns, " + ", ".join(f for f in fields if f != "ts_ns")
                     + " FROM pktstream.packets")
        cols = t.to_pydict()
        got_rows = Counter(zip(*(cols[c] for c in ["host", "interface", "run_id", "src_ip", "dst_ip", *fields]),
                               cols["payload"], strict=True))
        want_rows = Counter((r["host"], r["interface"], r["run_id"], text_ip(r["src_addr"]), text_ip(r["dst_addr"]),
                             *(r[f] for f in fields), r["payload"].hex().upper()) for r in want)
        assert got_rows == want_rows
        assert {(r["host"], r["interface"], r["run_id"]) for r in want if r["host"] == "edge-9"} == \
            {("edge-9", "ens5", run_id)}

        # the corrupt message: set aside with where it came from and why
        err = ch.rows("SELECT topic, kafka_partition, key, error, message FROM pktstream.packets_errors")[0]
        assert (err["topic"], err["kafka_partition"], err["key"], err["message"]) == \
            (topic, 3, "edge-9", GARBAGE.decode())
        assert re.search("magic", err["error"], re.I), err["error"]

        # the rollups: sums per key equal the records' (each record counts sample_rate times)
        def sums(key: Any) -> dict[Any, tuple[int, int, int]]:
            acc: dict[Any, list[int]] = defaultdict(lambda: [0, 0, 0])
            for r in want:
                a = acc[key(r)]
                n = max(r["sample_rate"], 1)
                a[0] += 1
                a[1] += n * r["segments"]
                a[2] += r["wire_len"] * n
            return {k: (v[0], v[1], v[2]) for k, v in acc.items()}

        def minute(r: dict[str, Any]) -> int:
            return int(r["ts_ns"]) // 60_000_000_000 * 60

        def rollup(table: str, *key: str) -> dict[Any, tuple[int, int, int]]:
            k = ", ".join(f"{e} AS k{i}" for i, e in enumerate(key))
            rows = ch.rows(f"SELECT toUnixTimestamp(minute) AS m, {k}, sum(records) AS r, sum(packets) AS p, "
                           f"sum(bytes) AS b FROM pktstream.{table} GROUP BY ALL")
            return {(r["m"], *(r[f"k{i}"] for i in range(len(key)))): (r["r"], r["p"], r["b"]) for r in rows}

        unmapped = "replaceRegexpOne(toString({}), '^::ffff:', '')"
        assert rollup("packets_1m_host", "host", "interface", "direction") == \
            sums(lambda r: (minute(r), r["host"], r["interface"], r["direction"]))
        assert rollup("packets_1m_port", "host", "direction", "protocol", "dst_port") == \
            sums(lambda r: (minute(r), r["host"], r["direction"], r["protocol"], r["dst_port"]))
        assert rollup("packets_1m_pair", "host", "direction", unmapped.format("src_addr"),
                      unmapped.format("dst_addr")) == \
            sums(lambda r: (minute(r), r["host"], r["direction"], text_ip(r["src_addr"]), text_ip(r["dst_addr"])))
        assert {r["direction"] for r in want} == {0, 1} and any(r["segments"] > 1 for r in want)

        # usage: one row per window, every figure
        def usage_key(r: dict[str, Any]) -> tuple[Any, ...]:
            return (r["window_s"], r["window_start_ms"], r["api"], r["host"], r["port"], r["protocol"], r["matched"],
                    r["requests"], r["partial_requests"], r["packets"], r["bytes"], r["new_connections"],
                    tuple(sorted(r["methods"].items())), r["distinct_clients"],
                    tuple((c["client"], c["requests"], c["packets"], c["bytes"]) for c in r["top_clients"]),
                    tuple(r["seen_by"]), r["sampled"],
                    # the answers: null in Avro is null in ClickHouse (the maps and buckets empty)
                    r["response_packets"], r["response_bytes"], r["responses"], r["unanswered"],
                    tuple(sorted((r["status_codes"] or {}).items())),
                    tuple(sorted((r["status_classes"] or {}).items())), tuple(r["latency_buckets"] or ()),
                    r["latency_sum_us"], r["latency_count"], r["latency_p50_ms"], r["latency_p99_ms"],
                    r["error_rate"])

        got_usage = []
        for r in ch.rows("SELECT *, toUnixTimestamp64Milli(window_start) AS window_start_ms "
                         "FROM pktstream.usage FINAL"):
            r["methods"] = dict(r["methods"])
            r["status_codes"], r["status_classes"] = dict(r["status_codes"]), dict(r["status_classes"])
            got_usage.append(r)
        assert Counter(map(usage_key, got_usage)) == Counter(map(usage_key, want_usage))
        assert any(r["responses"] for r in want_usage) and any(r["responses"] is None for r in want_usage)

        # alerts: every event once, and each alert's latest event
        events = ch.rows("SELECT event_uid, uid, rule, activity_id, severity_id, technique, count "
                         "FROM pktstream.alert_events FINAL")
        want_events = {d["metadata"]["uid"]: d for d in want_alerts}
        assert {e["event_uid"]: (e["uid"], e["rule"], e["activity_id"], e["severity_id"], e["technique"], e["count"])
                for e in events} == {
            k: (d["finding_info"]["uid"], d["unmapped"]["pktstream"]["rule"], d["activity_id"], d["severity_id"],
                d["finding_info"]["attacks"][0]["technique"]["uid"], d["count"]) for k, d in want_events.items()}
        latest: dict[str, dict[str, Any]] = {}
        for d in want_alerts:  # in topic order: one alert's events are on one partition, in order
            latest[d["finding_info"]["uid"]] = d
        got_latest = ch.rows("SELECT uid, activity_id, count, document FROM pktstream.alerts FINAL")
        assert {r["uid"]: (r["activity_id"], r["count"], json.loads(r["document"])) for r in got_latest} == {
            u: (d["activity_id"], d["count"], d) for u, d in latest.items()}
        # connections: each conversation's latest record, its columns as the document says
        got_c = ch.rows("SELECT uid, record_uid, conn_state, final, src_ip, src_port, dst_ip, dst_port, packets_out, "
                        "packets_in, bytes_out, bytes_in, community_id FROM pktstream.connections FINAL")
        assert {r["uid"]: (r["record_uid"], r["conn_state"], bool(r["final"]), r["src_ip"], r["src_port"], r["dst_ip"],
                           r["dst_port"], r["packets_out"], r["packets_in"], r["bytes_out"], r["bytes_in"],
                           r["community_id"]) for r in got_c} == {
            u: (d["metadata"]["uid"], d["status_code"], d["unmapped"]["pktstream"]["final"], d["src_endpoint"]["ip"],
                d["src_endpoint"].get("port", 0), d["dst_endpoint"]["ip"], d["dst_endpoint"].get("port", 0),
                d["traffic"]["packets_out"], d["traffic"]["packets_in"], d["traffic"]["bytes_out"],
                d["traffic"]["bytes_in"], d["unmapped"]["pktstream"]["community_id"]) for u, d in latest_conn.items()}
        # dns: each lookup once, its columns as the document says
        got_d = ch.rows("SELECT record_uid, query_name, rcode, answered, latency_us, answers, community_id, "
                        "src_port FROM pktstream.dns FINAL")
        assert {r["record_uid"]: (r["query_name"], r["rcode"], bool(r["answered"]), r["latency_us"], r["answers"],
                                  r["community_id"], r["src_port"]) for r in got_d} == {
            u: (d["unmapped"]["pktstream"]["query_name"], d.get("rcode", ""), d["unmapped"]["pktstream"]["answered"],
                d["unmapped"]["pktstream"].get("latency_us"), [a["rdata"] for a in d.get("answers", [])],
                d["unmapped"]["pktstream"]["community_id"], d["src_endpoint"]["port"]) for u, d in want_dns.items()}
        # http: each exchange once, its columns as the document says
        got_h = ch.rows("SELECT record_uid, method, host, path, status, answered, latency_us, api, community_id "
                        "FROM pktstream.http FINAL")
        assert {r["record_uid"]: (r["method"], r["host"], r["path"], r["status"], bool(r["answered"]),
                                  r["latency_us"], r["api"], r["community_id"]) for r in got_h} == {
            u: (d["unmapped"]["pktstream"]["method"], d["unmapped"]["pktstream"]["host"],
                d["http_request"].get("url", {}).get("path", ""), d["http_response"]["code"],
                d["unmapped"]["pktstream"]["answered"], d["unmapped"]["pktstream"].get("latency_us"),
                d["unmapped"]["pktstream"]["api"], d["unmapped"]["pktstream"]["community_id"])
            for u, d in want_http.items()}
    finally:
        ch.close()


@pytest.mark.parametrize("name", ["single-node.sql", "cluster.sql"])
def test_every_statement_parses(name: str, tmp_path: Path) -> None:
    """ClickHouse's own parser accepts every statement (formatQuery); the cluster variant names
    the same tables as the single node's, each as <name>_local and a Distributed <name>."""
    from chdb import session

    values = dict(KAFKA_BROKERS="k1:9092,k2:9092", PACKETS_TOPIC="pktstream.packets", USAGE_TOPIC="pktstream.usage",
                  ALERTS_TOPIC="pktstream.alerts", CONNECTIONS_TOPIC="pktstream.connections",
                  DNS_TOPIC="pktstream.dns", HTTP_TOPIC="pktstream.http",
                  CONSUMER_GROUP="clickhouse-pktstream", CLUSTER="pktstream")
    sts = statements(DEPLOY / name, **values)
    s = session.Session(str(tmp_path / "ch"))
    try:
        for st in sts:
            quoted = st.replace("\\", "\\\\").replace("'", "\\'")
            out = str(s.query(f"SELECT formatQuery('{quoted}')", "TabSeparatedRaw"))
            assert out.strip().startswith("CREATE"), (st, out)
    finally:
        s.close()
    created = {m.group(1) for st in sts for m in [re.search(r"CREATE (?:TABLE|MATERIALIZED VIEW) pktstream\.(\w+)", st)]
               if m}
    single = {m.group(1) for st in statements(DEPLOY / "single-node.sql", **values)
              for m in [re.search(r"CREATE (?:TABLE|MATERIALIZED VIEW) pktstream\.(\w+)", st)] if m}
    if name == "cluster.sql":
        # one source: cluster.sql is what make_cluster.py writes from single-node.sql
        spec = importlib.util.spec_from_file_location("make_cluster", DEPLOY / "make_cluster.py")
        assert spec is not None and spec.loader is not None
        make = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(make)
        assert (DEPLOY / "cluster.sql").read_text() == make.cluster_sql((DEPLOY / "single-node.sql").read_text())
        stored = {t for t in single if not t.endswith(("_queue", "_mv"))}
        assert created == single | {f"{t}_local" for t in stored}
        assert all("ON CLUSTER 'pktstream'" in st for st in sts)
