"""The schema-registry wire format against the real broker and a real registry (Apicurio, started by
``pktstream registry up`` as a user starts it), judged by readers users run: confluent-kafka's
AvroDeserializer and JSONDeserializer (which validates every document by the registered OCSF schema)
and ClickHouse's AvroConfluent format (chDB) with the registry's URL; and by ``pktstream query``."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chdb
import fastavro
import pyarrow.parquet as pq
import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from pktstream.consumers.relay.batchproduce import ENV as BATCH_ENV
from pktstream.runtime.kafka import ensure_topic
from tests.support.apps import committed, final_figures, log_events, run_usage, usage_cmd
from tests.support.authproxy import AuthProxy
from tests.support.connect import sink_to_files, struct_fields
from tests.support.helpers import read_messages
from tests.support.producer_proc import PKTSTREAM
from tests.support.traffic import CATALOG, containers, generate, merge, packets, spread

pytestmark = [pytest.mark.kafka]

SEC = 10**9


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """A local registry as a user starts one: (its URL, the options that name it to the CLI)."""
    port, data = free_port(), tmp_path_factory.mktemp("registry")
    opts = ["--port", str(port), "--data-dir", str(data)]
    up = subprocess.run([PKTSTREAM, "registry", "up", *opts], capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stderr[-3000:]
    url = up.stdout.strip().splitlines()[-1]
    assert url == f"http://127.0.0.1:{port}/apis/ccompat/v7"
    try:
        yield url, opts
    finally:
        subprocess.run([PKTSTREAM, "registry", "down", *opts], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def packet_topic(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """Three minutes of HTTP and TLS conversations with their answers, and a SYN flood: (topic, catalog,
    rules)."""
    topic = f"reg-packets-{uuid.uuid4().hex[:8]}"
    t0 = (time.time_ns() - 1800 * SEC) // (60 * SEC) * (60 * SEC)
    flood = packets([{"ts": ts, "src": f"52.1.{i // 250}.{1 + i % 250}", "dst": "10.1.0.10", "sport": 1024 + i,
                      "dport": 80, "flags": 0x02} for i, ts in enumerate(spread(t0 + 20 * SEC, 3000, 20 * SEC))])
    traffic = merge(generate(500, t0, 180 * SEC, clients=200, seed=3, responses=True), flood)
    ensure_topic({"bootstrap.servers": kafka_bootstrap}, topic, 3)
    p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for m in containers(traffic, batch=2000):
        p.produce(topic, m, partition=0)
    assert p.flush(60) == 0
    d = tmp_path_factory.mktemp("reg-config")
    (d / "catalog.yaml").write_text(yaml.safe_dump(CATALOG))
    (d / "rules.yaml").write_text(yaml.safe_dump({"detectors": {"syn_flood": {"min_half_open": 500}}}))
    return topic, d / "catalog.yaml", d / "rules.yaml"


@pytest.fixture(scope="module")
def usage_topic(kafka_bootstrap: str, registry: tuple[str, list[str]],
                packet_topic: tuple[str, Path, Path]) -> tuple[str, list[dict[str, Any]]]:
    """pktstream usage over the packet topic with --wire-format registry: (its usage topic, the records it
    printed, their native form)."""
    url, _opts = registry
    topic, catalog, _rules = packet_topic
    usage = f"reg-usage-{uuid.uuid4().hex[:6]}"
    printed = run_usage(usage_cmd(kafka_bootstrap, topic, f"u-{usage}", usage, catalog, "--partitions", "3",
                                  "--grace-s", "1", "--wire-format", "registry", "--schema-registry", url))
    assert sum(r["requests"] for r in printed) > 200
    return usage, printed


def deserialize(bootstrap: str, url: str, topic: str) -> list[Any]:
    """Every committed record of the topic, read by confluent-kafka's deserializer of the schema type the
    registry holds for the topic's subject; a message it cannot read fails the test."""
    sr = SchemaRegistryClient({"url": url})
    kind = sr.get_latest_version(f"{topic}-value").schema.schema_type
    de: Any = AvroDeserializer(sr) if kind == "AVRO" else JSONDeserializer(None, schema_registry_client=sr)
    ctx = SerializationContext(topic, MessageField.VALUE)
    return [de(value, ctx) for _key, value, _headers in read_messages(bootstrap, topic)]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_every_output_topic_in_the_registry_format_is_read_by_the_readers_users_run(
        kafka_bootstrap: str, registry: tuple[str, list[str]], packet_topic: tuple[str, Path, Path],
        usage_topic: tuple[str, list[dict[str, Any]]]) -> None:
    """Each app run once with --output json: what it prints is its records in their native form, what
    the readers read from its topics must be the same records."""
    url, opts = registry
    topic, catalog, rules = packet_topic
    b = kafka_bootstrap
    tag = uuid.uuid4().hex[:6]
    common = ["--bootstrap-servers", b, "--topic", topic, "--from-beginning", "--until-end", "--metrics-port", "0",
              "--log-format", "json", "--partitions", "3", "--output", "json", "--grace-s", "1"]
    reg = ["--wire-format", "registry", "--schema-registry", url]

    # usage: one Avro datum per message (0x00, a 4-byte id, the datum)
    usage, expected = usage_topic
    values = [v for _k, v, _h in read_messages(b, usage)]
    assert values and all(v[0] == 0 and len(v) > 5 for v in values)
    got = deserialize(b, url, usage)
    for r in got:
        r["window_start_ms"] = int(r["window_start_ms"].timestamp() * 1000)
    key = lambda r: (r["window_s"], r["window_start_ms"], r["api"])  # noqa: E731
    assert sorted(got, key=key) == sorted(expected, key=key)
    want: dict[str, list[int]] = {}
    for r in expected:
        w = want.setdefault(r["api"], [0, 0, 0])
        w[0] += r["requests"]
        w[1] += r["bytes"]
        w[2] += 1
    # ClickHouse's AvroConfluent format, with the registry's URL
    path = Path(f"/tmp/pktstream-reg-{tag}.bin")
    try:
        path.write_bytes(b"".join(values))
        ch = chdb.query(f"SELECT api, sum(requests), sum(bytes), count() FROM file('{path}', 'AvroConfluent') "
                        f"GROUP BY api ORDER BY api SETTINGS format_avro_schema_registry_url='{url}'", "JSONCompact")
    finally:
        path.unlink(missing_ok=True)
    assert {row[0]: [int(x) for x in row[1:]] for row in json.loads(str(ch))["data"]} == want
    # pktstream query
    q = ["--bootstrap-servers", b, "--schema-registry", url, "--format", "json"]
    sql = "select api, sum(requests)::BIGINT r, sum(bytes)::BIGINT b, count(*) n from usage group by api"
    rows = [json.loads(line) for line in run(PKTSTREAM, "query", sql, "--usage-topic", usage, *q).stdout.splitlines()]
    assert {r["api"]: [r["r"], r["b"], r["n"]] for r in rows} == want

    # activity: the three classes as JSON Schema documents, each valid by the registered OCSF schema
    names = {k: f"reg-{k}-{tag}" for k in ("conn", "dns", "http")}
    printed = [json.loads(line) for line in run(
        PKTSTREAM, "activity", *common, "--app-id", f"a-{tag}", "--connections-topic", names["conn"],
        "--dns-topic", names["dns"], "--http-topic", names["http"], *reg).stdout.splitlines()]
    by_class: dict[int, list[Any]] = {}
    for d in printed:
        by_class.setdefault(d["class_uid"], []).append(d)
    assert len(by_class[4001]) > 200 and len(by_class[4002]) > 200
    for cls, k in ((4001, "conn"), (4002, "http"), (4003, "dns")):
        assert sorted(deserialize(b, url, names[k]), key=json.dumps) == sorted(by_class.get(cls, []), key=json.dumps)
    rows = [json.loads(line) for line in run(
        PKTSTREAM, "query", "select count(*) n, sum(bytes_out)::BIGINT o from connections", "--connections-topic",
        names["conn"], *q).stdout.splitlines()]
    assert rows == [{"n": len(by_class[4001]),
                     "o": sum(d["traffic"]["bytes_out"] for d in by_class[4001])}]

    # alerts: Detection Finding by OCSF's JSON Schema; and Avro (schemas/alert.avsc) with --format avro
    for form in ("json", "avro"):
        out = f"reg-alerts-{form}-{tag}"
        printed = [json.loads(line) for line in run(
            PKTSTREAM, "alerts", *common, "--app-id", f"al-{form}-{tag}", "--rules", str(rules), "--catalog",
            str(catalog), "--alerts-topic", out, "--commit-interval-s", "1", "--format", form,
            *reg).stdout.splitlines()]
        assert any(d["unmapped"]["pktstream"]["rule"] == "syn_flood" for d in printed)
        docs = deserialize(b, url, out)
        if form == "json":
            assert sorted(docs, key=json.dumps) == sorted(printed, key=json.dumps)
        else:
            assert sorted((d["uid"], d["rule"], d["count"]) for d in docs) == sorted(
                (d["finding_info"]["uid"], d["unmapped"]["pktstream"]["rule"], d["count"])
                for d in printed)

    # the registry keeps its schemas across a restart: the ids the messages name still read
    assert run(PKTSTREAM, "registry", "down", *opts).stdout.strip() == "stopped"
    assert run(PKTSTREAM, "registry", "up", *opts).stdout.strip().endswith("/apis/ccompat/v7")
    assert len(deserialize(b, url, usage)) == len(expected)


def test_a_schema_the_registry_refuses_stops_the_app_before_anything_is_published(
        kafka_bootstrap: str, registry: tuple[str, list[str]], packet_topic: tuple[str, Path, Path]) -> None:
    url, _opts = registry
    topic, catalog, _rules = packet_topic
    out = f"reg-refused-{uuid.uuid4().hex[:6]}"
    sr = SchemaRegistryClient({"url": url})
    # (no level set on the subject: Apicurio checks nothing by default; the app sets BACKWARD)
    theirs = {"type": "record", "name": "ApiUsage", "namespace": "io.pktstream",
              "fields": [{"name": "api", "type": "long"}]}
    sr.register_schema(f"{out}-value", Schema(json.dumps(theirs), "AVRO"))
    p = subprocess.run(usage_cmd(kafka_bootstrap, topic, f"u-x-{out}", out, catalog, "--wire-format", "registry",
                                 "--schema-registry", url), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr[-2000:]
    err = p.stderr.strip().splitlines()[-1]
    assert err.startswith(f"pktstream: error: the schema registry at {url} refused the AVRO schema of subject "
                          f"'{out}-value': it is not compatible"), err
    assert "nothing was published" in err
    assert read_messages(kafka_bootstrap, out, timeout_s=10) == []
    # the subject still holds only its own version
    assert sr.get_versions(f"{out}-value") == [1]


def pcap_records(data: bytes) -> list[bytes]:
    """A pcap file's records (each with its 16-byte record header), by the format's own layout."""
    assert int.from_bytes(data[:4], "little") in (0xA1B2C3D4, 0xA1B23C4D)
    out, at = [], 24
    while at < len(data):
        n = int.from_bytes(data[at + 8 : at + 12], "little")
        out.append(data[at : at + 16 + n])
        at += 16 + n
    assert at == len(data)
    return out


def test_the_consumers_read_the_relayed_topic_as_they_read_the_packet_topic(
        kafka_bootstrap: str, registry: tuple[str, list[str]], packet_topic: tuple[str, Path, Path],
        usage_topic: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """pktstream usage over pktstream relay's copy of the packet topic (one record per message) counts
    what it counted over the packet topic, record for record, though the registry (behind TLS and a
    password) was out when it first needed it."""
    url, _opts = registry
    topic, catalog, _rules = packet_topic
    _usage, printed = usage_topic
    b, tag = kafka_bootstrap, uuid.uuid4().hex[:6]
    out = f"reg-relayed-{tag}"
    run(PKTSTREAM, "relay", "--bootstrap-servers", b, "--topic", topic, "--to", out, "--app-id", f"relay-{tag}",
        "--from-beginning", "--until-end", "--schema-registry", url, "--log-format", "json")
    # the registry is out (503) when the consumer first needs it: the relayed messages wait, nothing is lost
    with AuthProxy(url.split("/apis/")[0], tmp_path) as px:
        conf = tmp_path / "registry.properties"
        conf.write_text(f"basic.auth.user.info={px.user}:{px.password}\nssl.ca.location={px.ca}\n")
        px.failing = True
        cmd = usage_cmd(b, out, f"u-{tag}", f"reg-usage-relayed-{tag}", catalog, "--partitions", "3", "--grace-s",
                        "1", "--schema-registry", px.url + "/apis/ccompat/v7", "--schema-registry-config", str(conf))
        with tempfile.NamedTemporaryFile("w+", dir=tmp_path) as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
            try:
                deadline = time.monotonic() + 120
                while Path(err.name).read_text().count('"registry_unavailable"') < 2:  # it tried, and again
                    assert proc.poll() is None and time.monotonic() < deadline
                    time.sleep(0.1)
                px.failing = False
                stdout, _ = proc.communicate(timeout=300)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate(timeout=30)
            err.seek(0)
            events = log_events(err.read())
        assert proc.returncode == 0, events[-5:]
    assert sum(1 for e in events if e["event"] == "registry_unavailable") >= 2
    got = [json.loads(line) for line in stdout.splitlines()]
    figures = final_figures(events)
    key = lambda r: (r["window_s"], r["window_start_ms"], r["api"])  # noqa: E731
    assert sorted(got, key=key) == sorted(printed, key=key)
    assert figures["records_in"] == sum(1 for _ in read_messages(b, out))
    assert figures["undecodable"] == 0


def test_the_relay_writes_every_packet_record_once_through_a_sigkill_and_kafka_connect_sinks_it(
        kafka_bootstrap: str, registry: tuple[str, list[str]], usage_topic: tuple[str, list[dict[str, Any]]],
        tmp_path: Path) -> None:
    """``pktstream relay`` killed with SIGKILL mid-stream and started again: every packet record of the
    topic is in the relayed topic exactly once (as read_committed readers see it), field for field
    what Apache-compatible readers decode from the packet topic, with its host and interface; a
    message that is not a container is dead-lettered, once. Then a Kafka Connect worker (Apache
    Kafka's connect-standalone, Apicurio's AvroConverter) sinks the relayed topic and the usage topic to
    files whose rows are the topics' records."""
    url, _opts = registry
    b = kafka_bootstrap
    tag = uuid.uuid4().hex[:6]
    topic, out, app = f"relay-in-{tag}", f"relay-out-{tag}", f"relay-{tag}"
    t0 = (time.time_ns() - 1800 * SEC) // (60 * SEC) * (60 * SEC)
    traffic = generate(2000, t0, 60 * SEC, clients=300, seed=7, responses=True)
    ensure_topic({"bootstrap.servers": b}, topic, 3)
    p = Producer({"bootstrap.servers": b, "enable.idempotence": True})
    expected = []
    for h, host in enumerate(("relay-a", "relay-b")):
        for m in containers(traffic, batch=1000, host=host, interface=f"eth{h}"):
            p.produce(topic, m, key=host.encode(), partition=h)
            expected += [{**r, "host": host, "interface": f"eth{h}"} for r in fastavro.reader(io.BytesIO(m))]
    p.produce(topic, b"Obj\x01 not a container", key=b"relay-c", partition=2)
    assert p.flush(60) == 0
    messages = 2 * len(containers(traffic, batch=1000)) + 1

    cmd = [PKTSTREAM, "relay", "--bootstrap-servers", b, "--topic", topic, "--to", out, "--app-id", app,
           "--from-beginning", "--until-end", "--schema-registry", url, "--commit-records", "500",
           "--dead-letter-topic", f"{out}.dlq", "--log-format", "json"]
    # the first run enqueues each message's records with one librdkafka call (batchproduce.py), the second
    # one by one through confluent-kafka's produce (its fallback): the output must not tell them apart
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (done := committed(b, app, topic)) == 0:
            assert first.poll() is None and time.monotonic() < deadline, (first.stderr.read() if first.stderr else "")
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(30)
    # (read before the kill: afterwards the group's offsets are unstable until the next run fences the
    # killed one's transaction; the kill may come after the last commit on a fast machine, which this
    # test then shows less of, but never wrongly)
    assert 0 < done <= messages
    assert first.stderr is not None
    assert [e["batch"] for e in log_events(first.stderr.read()) if e["event"] == "relay_produce_path"] == [True]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, BATCH_ENV: "python"})
    assert second.returncode == 0, second.stderr[-3000:]
    stopped = [e for e in log_events(second.stderr) if e["event"] == "relay_stopped"]
    # (a second run with nothing left to relay, the first having committed everything before the kill,
    # produces nothing and so never chooses a path)
    assert stopped and [e["batch"] for e in log_events(second.stderr) if e["event"] == "relay_produce_path"] == (
        [False] if stopped[0]["records_out"] else [])
    assert stopped and (stopped[0]["records_out"] < len(expected) or done == messages)  # from the first's commit

    got = deserialize(b, url, out)
    key = lambda r: (r["host"], r["seq"])  # noqa: E731
    assert len(got) == len(expected) == len({key(r) for r in got})
    assert sorted(got, key=key) == sorted(expected, key=key)
    # ClickHouse's AvroConfluent format reads them with the registry's URL
    (tmp_path / "relayed.bin").write_bytes(b"".join(v for _k, v, _h in read_messages(b, out)))
    ch = chdb.query(f"SELECT host, interface, count(), sum(wire_len), sum(seq), sum(length(payload)), "
                    f"countDistinct(src_addr) FROM file('{tmp_path / 'relayed.bin'}', 'AvroConfluent') GROUP BY "
                    f"host, interface ORDER BY host SETTINGS format_avro_schema_registry_url='{url}'", "JSONCompact")
    assert [[str(x) for x in row] for row in json.loads(str(ch))["data"]] == [
        [h, f"eth{i}", *(str(v) for v in (len(rs), sum(r["wire_len"] for r in rs), sum(r["seq"] for r in rs),
                                          sum(len(r["payload"]) for r in rs), len({r["src_addr"] for r in rs})))]
        for i, h in enumerate(("relay-a", "relay-b")) for rs in [[r for r in expected if r["host"] == h]]]
    for host in ("relay-a", "relay-b"):  # each host's records in the order its producer wrote them
        assert [r["seq"] for r in got if r["host"] == host] == [r["seq"] for r in expected if r["host"] == host]
    # pktstream tail shows the relayed topic as it shows the packet topic: the same lines
    tail = [PKTSTREAM, "tail", "--bootstrap-servers", b, "--from-beginning", "--no-follow", "--payload", "hex",
            "--schema-registry", url]
    relayed = run(*tail, "--topic", out).stdout.splitlines()
    assert len(relayed) == len(expected)
    assert sorted(relayed) == sorted(run(*tail, "--topic", topic).stdout.splitlines())
    dead = read_messages(b, f"{out}.dlq")
    assert [(k, v) for k, v, _h in dead] == [(b"relay-c", b"Obj\x01 not a container")]
    # pktstream query and export read the relayed topic as they read the packet topic (run_id aside: a
    # relayed record does not carry its producer run's id)
    sql = ("SELECT host, interface, count(*) AS n, count(DISTINCT seq) AS seqs, sum(wire_len) AS b, "
           "sum(octet_length(payload)) AS p, min(ts) AS t0, max(ts) AS t1, count(DISTINCT src_addr) AS srcs "
           "FROM packets GROUP BY ALL ORDER BY ALL")
    query = [PKTSTREAM, "query", sql, "--bootstrap-servers", b, "--format", "csv", "--schema-registry", url]
    table = run(*query, "--topic", out).stdout
    assert table == run(*query, "--topic", topic).stdout
    assert [row[:3] for row in list(csv.reader(table.splitlines()))[1:]] == [
        [h, f"eth{i}", str(sum(1 for r in expected if r["host"] == h))] for i, h in enumerate(("relay-a", "relay-b"))]
    one = run(*query, "--topic", out, "--host", "relay-b").stdout.splitlines()
    assert one == [table.splitlines()[0], table.splitlines()[2]]
    export = [PKTSTREAM, "export", "--bootstrap-servers", b, "--schema-registry", url]
    for name, t in (("relayed", out), ("native", topic)):
        run(*export, "--topic", t, "--format", "parquet", "-o", str(tmp_path / f"{name}.parquet"))
        run(*export, "--topic", t, "--format", "pcap", "-o", str(tmp_path / f"{name}.pcap"))
    tables = [pq.read_table(tmp_path / f"{name}.parquet").drop_columns(["run_id"]).sort_by([("host", "ascending"),
                                                                                           ("seq", "ascending")])
              for name in ("relayed", "native")]
    assert tables[0].num_rows == len(expected) and tables[0].equals(tables[1])
    frames = [sorted(pcap_records((tmp_path / f"{name}.pcap").read_bytes())) for name in ("relayed", "native")]
    assert len(frames[0]) == len(expected) and frames[0] == frames[1]

    usage, printed = usage_topic
    rows = sink_to_files(b, url, {out: (tmp_path / "packets.txt", len(expected)),
                                  usage: (tmp_path / "usage.txt", len(printed))}, tmp_path)
    assert sorted(struct_fields(line, ("host", "seq", "ts_ns", "payload_len")) for line in rows[out]) == sorted(
        (r["host"], str(r["seq"]), str(r["ts_ns"]), str(r["payload_len"])) for r in expected)
    assert sorted(struct_fields(line, ("api", "window_s", "requests", "packets", "bytes")) for line in rows[usage]) \
        == sorted((r["api"], str(r["window_s"]), str(r["requests"]), str(r["packets"]), str(r["bytes"]))
                  for r in printed)


def test_a_registry_behind_tls_and_credentials_is_used_with_the_settings_users_give(
        kafka_bootstrap: str, registry: tuple[str, list[str]], packet_topic: tuple[str, Path, Path],
        tmp_path: Path) -> None:
    """Production's registry wants HTTPS with its own CA and credentials (tests/support/authproxy.py in
    front of the local one): with the settings file a user writes (basic auth, or a bearer token, and
    ssl.ca.location) the app registers and writes, query reads back; a wrong password, or a CA not
    trusted, stops the app with the registry's words before anything is published."""
    url, _opts = registry
    topic, catalog, _rules = packet_topic
    b, tag = kafka_bootstrap, uuid.uuid4().hex[:6]
    with AuthProxy(url.split("/apis/")[0], tmp_path) as px:
        purl = px.url + "/apis/ccompat/v7"
        settings = {
            "basic": {"basic.auth.user.info": f"{px.user}:{px.password}", "ssl.ca.location": str(px.ca)},
            "bearer": {"bearer.auth.credentials.source": "STATIC_TOKEN", "bearer.auth.token": px.token,
                       "bearer.auth.logical.cluster": "lsrc-test", "ssl.ca.location": str(px.ca)},
            "wrong": {"basic.auth.user.info": f"{px.user}:nope", "ssl.ca.location": str(px.ca)},
            "untrusted": {"basic.auth.user.info": f"{px.user}:{px.password}"},
        }
        files = {}
        for name, props in settings.items():
            files[name] = tmp_path / f"{name}.properties"
            files[name].write_text("".join(f"{k}={v}\n" for k, v in props.items()))
            files[name].chmod(0o600)
        usage = f"reg-auth-{tag}"

        def app(name: str) -> list[str]:
            return usage_cmd(b, topic, f"u-auth-{name}-{tag}", usage, catalog, "--partitions", "3", "--grace-s", "1",
                             "--wire-format", "registry", "--schema-registry", purl,
                             "--schema-registry-config", str(files[name]))

        for name, words in (("wrong", "HTTP 401"), ("untrusted", "cannot be reached")):
            p = subprocess.run(app(name), capture_output=True, text=True, timeout=300)
            assert p.returncode == 1, p.stderr[-2000:]
            last = p.stderr.strip().splitlines()[-1]
            assert last.startswith(f"pktstream: error: the schema registry at {purl} ") and words in last, last
        assert read_messages(b, usage, timeout_s=5) == []
        refused = len(px.seen)
        assert refused and not any(ok for _m, _p, ok in px.seen)  # (the untrusted CA's never got through TLS)
        printed = run_usage(app("basic"))
        assert printed and all(ok for _m, _p, ok in px.seen[refused:])
        # query reads it back through the proxy with a bearer token
        q = [PKTSTREAM, "query", "select api, sum(requests)::BIGINT r, count(*) n from usage group by api order by api",
             "--bootstrap-servers", b, "--usage-topic", usage, "--schema-registry", purl,
             "--schema-registry-config", str(files["bearer"]), "--format", "json"]
        rows = [json.loads(line) for line in run(*q).stdout.splitlines()]
        want: dict[str, list[int]] = {}
        for r in printed:
            w = want.setdefault(r["api"], [0, 0])
            w[0] += r["requests"]
            w[1] += 1
        assert {r["api"]: [r["r"], r["n"]] for r in rows} == want
        assert all(ok for _m, _p, ok in px.seen[refused:])
