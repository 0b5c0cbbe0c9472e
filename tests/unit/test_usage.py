"""The usage consumer's pieces without Kafka: catalog, OpenAPI import, feature batches, the
per-partition processor (exact counts on generated traffic, snapshots, late records), the table."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pktstream.consumers.catalog import Catalog, import_openapi
from pktstream.consumers.engine import features, snapshot
from pktstream.consumers.engine.parse import normalize_path
from pktstream.consumers.engine.runner import FOREVER, Output
from pktstream.consumers.usage.processor import MINUTE_NS, UsageProcessor
from pktstream.consumers.usage.red import RedMetrics
from pktstream.consumers.usage.responses import (
    LATENCY_BOUNDS_NS,
    LATENCY_BOUNDS_S,
    NBUCKETS,
    _next_at_or_after,
    quantile_ms,
)
from pktstream.consumers.usage.table import render
from pktstream.runtime.errors import ConfigError
from pktstream.schemas.columns import read_container
from pktstream.schemas.decode import DecodeError
from tests.support.traffic import CATALOG, containers, generate, v4
from tests.support.traffic import packets as packets_traffic

T0 = 1_800_000_000_000_000_000 - 1_800_000_000_000_000_000 % MINUTE_NS


def feed(p: UsageProcessor, msgs: list[bytes], states: dict[int, Any], nparts: int = 4) -> None:
    for m in msgs:
        f = p.featurize(read_container(m), "gen/eth0")
        for q, part in p.route(f, nparts).items():
            p.process(states[q], features.decode(features.encode(part)))


def totals(outs: list[Output], window_s: int = 60) -> dict[str, dict[str, int]]:
    tot: dict[str, dict[str, int]] = {}
    for o in outs:
        r = o.record
        if r["window_s"] != window_s:
            continue
        d = tot.setdefault(r["api"], {"requests": 0, "packets": 0, "bytes": 0, "new_connections": 0})
        for k in d:
            d[k] += r[k]
    return tot


def answer_totals(outs: list[Output], window_s: int = 60) -> dict[str, Counter[str]]:
    tot: dict[str, Counter[str]] = defaultdict(Counter)
    for o in outs:
        r = o.record
        if r["window_s"] != window_s:
            continue
        d = tot[r["api"]]
        if r["responses"] is None:
            d["null"] += 1
            continue
        for k in ("response_packets", "response_bytes", "responses", "unanswered", "latency_count"):
            d[k] += r[k]
        for code, v in r["status_codes"].items():
            d[f"code:{code}"] += v
        for i, v in enumerate(r["latency_buckets"]):
            d[f"bucket:{i}"] += v
    return tot


def test_answers_are_paired_with_their_requests() -> None:
    """Both directions of the generated mix: every answer pairs with its request, each latency
    lands in the bucket holding the API's delay, the counts of both directions are exact, and the
    result does not depend on how the records are cut into messages or partitions."""
    t = generate(6000, T0 + 5 * 10**9, 100 * 10**9, clients=300, responses=True)
    results = []
    for batch, nparts in ((3000, 4), (777, 3)):
        red = RedMetrics()
        p = UsageProcessor(Catalog.from_data(CATALOG), red=red)
        states = {q: p.new_state() for q in range(nparts)}
        feed(p, containers(t, batch=batch), states, nparts)
        outs = [o for st_ in states.values() for o in p.close(st_, FOREVER)]
        got, ans = totals(outs), answer_totals(outs)
        # the RED histograms (/metrics) hold the same answers as the usage records: per route, the
        # latency buckets; per route and status, the counts
        prom: dict[str, Counter[str]] = defaultdict(Counter)
        for fam in red.collect():
            for smp in fam.samples:
                route = smp.labels["http_route"]
                if fam.name == "http_server_request_duration_seconds" and smp.name.endswith("_count"):
                    prom[route][f"code:{smp.labels['http_response_status_code'] or 0}"] += int(smp.value)
                elif fam.name == "http_server_request_duration_seconds" and smp.name.endswith("_bucket"):
                    prom[route][f"le:{smp.labels['le']}"] += int(smp.value)
        for api, a in ans.items():
            if api.endswith("/udp"):
                assert api not in prom
                continue
            codes = {k: v for k, v in a.items() if k.startswith("code:")}
            if set(codes) == {"code:0"} or not codes:  # TLS: no status code label
                assert prom[api]["code:0"] == a["latency_count"], api
            else:
                assert {k: v for k, v in prom[api].items() if k.startswith("code:")} == codes, api
            cum = np.cumsum([a[f"bucket:{i}"] for i in range(NBUCKETS)]).tolist()
            les = [str(float(b)) for b in LATENCY_BOUNDS_S] + ["+Inf"]
            assert [prom[api][f"le:{le}"] for le in les] == cum and cum[-1] > 0, api
        for api, e in t.expected.items():
            for k in ("requests", "packets", "bytes", "new_connections"):
                assert got[api][k] == e[k], (api, k)
            if api.endswith("/udp"):
                assert ans[api] == Counter({"null": ans[api]["null"]})  # no answers seen: null, not 0
                continue
            a = ans[api]
            assert a["null"] == 0
            for k in ("response_packets", "response_bytes", "responses"):
                assert a[k] == e[k], (api, k, a[k], e[k])
            assert a["unanswered"] == 0 and a["latency_count"] == e["responses"]
            codes = {k: v for k, v in a.items() if k.startswith("code:")}
            assert codes == {k: v for k, v in e.items() if k.startswith("code:")}, api
            (delay,) = [int(k.split(":")[1]) for k in e if k.startswith("delay:")]
            want = int(np.searchsorted(LATENCY_BOUNDS_NS, delay, side="left"))  # latency == delay
            assert {k: v for k, v in a.items() if k.startswith("bucket:") and v} == {f"bucket:{want}": e["responses"]}
        results.append(sorted((o.record["api"], o.record["window_start_ms"], o.record["window_s"],
                               o.record["responses"], o.record["latency_buckets"], o.record["status_codes"])
                              for o in outs if o.record["responses"] is not None))
    # answers count in the window of the answer: the same whatever the batches and partitions
    merged: list[Counter[tuple[Any, ...]]] = [Counter() for _ in results]
    for m, res in zip(merged, results, strict=True):
        for api, w, ws, n, _b, _c in res:
            m[(api, w, ws)] += n
    assert merged[0] == merged[1]


def test_unanswered_requests_and_one_direction_captures() -> None:
    p = UsageProcessor(Catalog.from_data(CATALOG), response_timeout_s=5)
    cli, srv = "10.9.0.2", "10.1.0.10"
    get = b"GET /v1/users/1 HTTP/1.1\r\nHost: api.shop.test\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    t0 = T0 + 10**9

    def pkt(ts: int, out: bool, flags: int, payload: bytes = b"", sport: int = 40000) -> dict[str, Any]:
        a, b = (srv, cli) if out else (cli, srv)
        pa, pb = (80, sport) if out else (sport, 80)
        return {"ts": ts, "src": a, "dst": b, "sport": pa, "dport": pb, "flags": flags, "payload": payload,
                "direction": int(out), "len": 60 + len(payload)}

    # one connection: 3 pipelined requests, 2 answers in order, then nothing (the third is unanswered);
    # a second connection of which only the client's side was captured (no server packet at all)
    pk = [pkt(t0, False, 0x02), pkt(t0 + 10**5, True, 0x12), pkt(t0 + 2 * 10**5, False, 0x10),
          pkt(t0 + 3 * 10**5, False, 0x18, get), pkt(t0 + 4 * 10**5, False, 0x18, get),
          pkt(t0 + 5 * 10**5, False, 0x18, get),
          pkt(t0 + 3 * 10**6, True, 0x18, ok), pkt(t0 + 9 * 10**6, True, 0x18, ok),
          pkt(t0, False, 0x02, sport=40001), pkt(t0 + 10**6, False, 0x18, get, sport=40001)]
    t = packets_traffic(pk)
    st_ = p.new_state()
    for part in p.route(p.featurize(read_container(containers(t)[0]), "h/i"), 1).values():
        p.process(st_, part)
    # the snapshot round trip keeps the waiting requests
    st_ = p.load(snapshot.unpack(snapshot.pack(p.dump(st_))))
    assert len(st_.pairing.queue) == 2
    outs = p.close(st_, FOREVER)
    (rec,) = [o.record for o in outs if o.record["window_s"] == 60]
    assert rec["api"] == "users.get" and rec["requests"] == 4
    assert rec["responses"] == 2 and rec["status_codes"] == {"200": 2} and rec["status_classes"] == {"2xx": 2}
    # the third request of the first connection; the second connection's request was never seen answered
    assert rec["unanswered"] == 1
    assert rec["latency_count"] == 2 and rec["latency_buckets"][0] == 1 and rec["latency_buckets"][1] == 1
    assert rec["latency_sum_us"] == (3 * 10**6 - 3 * 10**5 + 9 * 10**6 - 4 * 10**5) // 1000
    assert rec["response_packets"] == 3 and rec["response_bytes"] == 3 * 60 + 2 * len(ok)
    assert rec["error_rate"] == round(1 / 3, 6)
    assert rec["latency_p50_ms"] == 5.0 and 5.0 < rec["latency_p99_ms"] <= 10.0
    # a capture of the client's side only: the response figures are null
    only_in = packets_traffic([x for x in pk if not x["direction"]])
    p2 = UsageProcessor(Catalog.from_data(CATALOG), response_timeout_s=5)
    st2 = p2.new_state()
    for part in p2.route(p2.featurize(read_container(containers(only_in)[0]), "h/i"), 1).values():
        p2.process(st2, part)
    (rec2,) = [o.record for o in p2.close(st2, FOREVER) if o.record["window_s"] == 60]
    assert rec2["requests"] == 4 and rec2["responses"] is None and rec2["unanswered"] is None
    assert rec2["latency_p99_ms"] is None and rec2["response_bytes"] is None


@pytest.mark.parametrize("span_ns", [10**3, 10**9, 10**18])
def test_first_bytes_follow_their_request_whatever_the_time_span(span_ns: int) -> None:
    """TLS / HTTP/2 pairing: each request's first server payload of its connection at or after it,
    as a brute force finds it, over spans of event time as long as a replay of years (no key overflow)."""
    rng = np.random.default_rng(span_ns % 1000)
    conns = rng.integers(0, 2**64, 40, dtype=np.uint64)
    n, m = 3000, 2000
    q_conn, e_conn = rng.choice(conns, n), rng.choice(conns, m)
    q_ts = rng.integers(0, span_ns, n, dtype=np.int64)
    e_ts = rng.integers(0, span_ns, m, dtype=np.int64)
    e_ts[:50] = q_ts[:50]  # an answer at the request's own nanosecond counts
    e_conn[:50] = q_conn[:50]
    at, found = _next_at_or_after(q_conn, q_ts, e_conn, e_ts)
    for i in range(n):
        cand = np.flatnonzero((e_conn == q_conn[i]) & (e_ts >= q_ts[i]))
        if len(cand) == 0:
            assert not found[i]
        else:
            assert found[i] and e_ts[at[i]] == e_ts[cand].min() and e_conn[at[i]] == q_conn[i]


def test_latency_quantiles_from_the_buckets() -> None:
    h = np.zeros(NBUCKETS, np.int64)
    assert quantile_ms(h, 0.5) is None
    h[3] = 10  # (25, 50] ms
    assert quantile_ms(h, 0.5) == 37.5 and quantile_ms(h, 1.0) == 50.0
    h[-1] = 90  # above 10 s
    assert quantile_ms(h, 0.99) == 10000.0


def test_generated_mix_is_counted_exactly() -> None:
    t = generate(6000, T0 + 5 * 10**9, 100 * 10**9, clients=300)
    p = UsageProcessor(Catalog.from_data(CATALOG))
    states = {q: p.new_state() for q in range(4)}
    feed(p, containers(t, batch=3000), states)
    outs = [o for st_ in states.values() for o in p.close(st_, FOREVER)]
    got = totals(outs)
    for api, e in t.expected.items():
        for k in ("requests", "packets", "bytes", "new_connections"):
            assert got[api][k] == e[k], (api, k)
    assert set(got) == set(t.expected)
    # one minute window of one API: distinct clients are the distinct sources of that minute
    rec = next(o.record for o in outs if o.record["api"] == "users.get" and o.record["window_s"] == 60)
    c = t.columns
    start = rec["window_start_ms"] * 1_000_000
    sel = (c["ts_ns"] >= start) & (c["ts_ns"] < start + MINUTE_NS) & (c["dst_port"] == 80) \
        & (c["payload__len"] > 0) & (c["payload"][:, :4] == np.frombuffer(b"GET ", np.uint8)).all(axis=1) \
        & (c["dst_addr"] == np.frombuffer(v4("10.1.0.10"), np.uint8)).all(axis=1)
    users = [bytes(r) for r in c["payload"][sel]]
    sel_users = np.array([u.startswith(b"GET /v1/users/") for u in users])
    srcs = {bytes(s) for s in c["src_addr"][sel][sel_users]}
    assert rec["distinct_clients"] == len(srcs)
    assert rec["requests"] == int(sel_users.sum())
    assert rec["methods"] == {"GET": rec["requests"]}
    assert rec["matched"] and rec["host"] == "api.shop.test" and rec["protocol"] == "http"
    # the hour roll-up adds the minutes up
    hours = totals(outs, 3600)
    assert hours == got


def test_snapshot_restore_mid_stream_changes_nothing() -> None:
    t = generate(4000, T0, 150 * 10**9, clients=200)
    msgs = containers(t, batch=2000)
    p = UsageProcessor(Catalog.from_data(CATALOG))
    ref = {q: p.new_state() for q in range(2)}
    feed(p, msgs, ref, 2)
    ref_out = [o.record for q in sorted(ref) for o in p.close(ref[q], FOREVER)]
    half = len(msgs) // 2
    states = {q: p.new_state() for q in range(2)}
    feed(p, msgs[:half], states, 2)
    mid = [o.record for q in sorted(states) for o in p.close(states[q], T0 + 70 * 10**9)]
    restored = {q: p.load(snapshot.unpack(snapshot.pack(p.dump(s)))) for q, s in states.items()}
    feed(p, msgs[half:], restored, 2)
    rest = [o.record for q in sorted(restored) for o in p.close(restored[q], FOREVER)]

    def k(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["window_s"], r["window_start_ms"], r["api"])

    assert sorted(mid + rest, key=k) == sorted(ref_out, key=k)
    assert mid  # the first minute closed before the snapshot


def test_late_records_are_counted_not_added() -> None:
    t = generate(200, T0, 30 * 10**9, clients=20)
    msgs = containers(t)
    p = UsageProcessor(Catalog.from_data(CATALOG), grace_s=5)
    st_ = {0: p.new_state()}
    feed(p, msgs, st_, 1)
    outs = p.close(st_[0], T0 + MINUTE_NS + 5 * 10**9)
    assert outs and st_[0].late_records == 0
    feed(p, msgs[:1], st_, 1)  # the same minute again, after it closed
    assert st_[0].late_records == t.n
    assert p.close(st_[0], T0 + 2 * MINUTE_NS + 5 * 10**9) == []


def test_catalog_matching_rules() -> None:
    cat = Catalog.from_data({"apis": [
        {"name": "host-any", "host": "api.x.test"},
        {"name": "users", "host": "api.x.test", "method": "GET", "path": "/v1/users/{id}"},
        {"name": "users-me", "host": "api.x.test", "method": "GET", "path": "/v1/users/me"},
        {"name": "wild", "host": "*.internal.test"},
        {"name": "net", "address": "10.9.0.0/16", "port": 5432},
    ]})
    a = v4("10.1.2.3")
    assert cat.match("api.x.test", a, 80, "GET", "/v1/users/42", "http").name == "users"
    assert cat.match("api.x.test", a, 80, "GET", "/v1/users/me", "http").name == "users-me"
    assert cat.match("api.x.test", a, 80, "GET", "/v1/users/42/", "http").name == "users"
    assert cat.match("api.x.test", a, 80, "POST", "/v1/users/42", "http").name == "host-any"
    assert cat.match("api.x.test", a, 443, "", "", "tls").name == "host-any"
    assert cat.match("db.internal.test", a, 443, "", "", "tls").name == "wild"
    assert cat.match("", v4("10.9.1.1"), 5432, "", "", "tcp").name == "net"
    assert cat.match("", v4("10.8.1.1"), 5432, "", "", "tcp").name == "10.8.1.1:5432/tcp"
    other = cat.match("shop.test", a, 8080, "GET", "/orders/123/items/9f1b2c3d4e5f60718293a4b5c6d7e8f9?x=1",
                      "http")
    assert (other.name, other.matched) == ("shop.test:8080 GET /orders/{id}/items/{id}", False)
    assert cat.match("api.x.test", a, 80, "GET", "/v1/us", "http", partial=True).name == "host-any"
    assert cat.match("", a, 80, "GET", "/v1/us", "http", partial=True).name == "10.1.2.3:80 GET (partial)"


def test_catalog_errors_are_listed_together(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("apis:\n  - {name: a, port: 70000}\n  - {host: x}\n  - {name: b, method: FETCH, path: v1}\n"
                   "  - {name: a, address: not-an-ip, colour: red}\n")
    with pytest.raises(ConfigError) as e:
        Catalog.load(bad)
    text = str(e.value)
    for needle in ("port must be 1..65535", "'name' is required", "FETCH", "must start with '/'",
                   "appears twice", "address", "unknown keys ['colour']"):
        assert needle in text, (needle, text)
    with pytest.raises(ConfigError, match="No such file"):
        Catalog.load(tmp_path / "missing.yaml")


OPENAPI = {
    "openapi": "3.0.3",
    "servers": [{"url": "https://api.shop.test/v2"}],
    "paths": {
        "/users/{userId}": {"get": {"operationId": "getUser"}, "delete": {}},
        "/orders": {"post": {"operationId": "createOrder", "x-rate-limit-per-min": 100}},
    },
}


def test_openapi_import_becomes_a_catalog(tmp_path: Path) -> None:
    doc = import_openapi(OPENAPI)
    names = [a["name"] for a in doc["apis"]]
    assert names == ["getUser", "DELETE /v2/users/{userId}", "createOrder", "api.shop.test other"]
    cat = Catalog.from_data(doc)
    a = v4("10.0.0.1")
    assert cat.match("api.shop.test", a, 443, "GET", "/v2/users/77", "http").name == "getUser"
    ref = cat.match("api.shop.test", a, 443, "POST", "/v2/orders", "http")
    assert (ref.name, ref.rate_limit_per_min) == ("createOrder", 100)
    assert cat.match("api.shop.test", a, 443, "GET", "/v2/other", "http").name == "api.shop.test other"
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(OPENAPI))
    out = subprocess.run([str(Path(sys.executable).with_name("pktstream")), "catalog-from-openapi", str(spec)],
                         capture_output=True, text=True, check=True).stdout
    assert "name: getUser" in out and "path: /v2/users/{userId}" in out
    with pytest.raises(ConfigError, match="OpenAPI 3"):
        import_openapi({"swagger": "2.0"})


def test_feature_batches_round_trip_and_reject_garbage() -> None:
    t = generate(50, T0, 10**9, clients=5)
    f = features.featurize(read_container(containers(t)[0]), "h/i")
    back = features.decode(features.encode(f))
    assert back.strings == f.strings and back.rows.tobytes() == f.rows.tobytes()
    value = features.encode(f)
    for bad in (b"", b"PSFB", value[:-1], b"XXXX" + value[4:], value[:9] + b"!" + value[10:]):
        with pytest.raises(DecodeError):
            features.decode(bad)
    for field, index in (("origin", len(f.strings)), ("path", -2), ("name", 10**6)):
        rows = f.rows.copy()
        rows[field][0] = index  # a row pointing past the batch's strings is refused, not looked up
        with pytest.raises(DecodeError, match=field):
            features.decode(features.encode(features.Features(rows, f.strings)))


def test_egress_records_are_not_features_yet() -> None:
    """The answers a host sends (direction 1) do not count as requests, packets or connections:
    the same traffic with egress copies of every record featurizes to the same rows."""
    from tests.support.traffic import Traffic

    t = generate(50, T0, 10**9, clients=5)
    both = Traffic({k: np.concatenate([v, v]) for k, v in t.columns.items()}, 2 * t.n)
    both.columns["direction"] = np.repeat(np.array([0, 1], np.int64), t.n)
    one = features.featurize(read_container(containers(t)[0]), "h/i")
    two = features.featurize(read_container(containers(both, batch=2 * t.n)[0]), "h/i")
    assert two.rows.tobytes() == one.rows.tobytes() and len(one.rows) > 0


def test_answers_mode_orients_tcp_and_udp_only() -> None:
    """Both directions as rows of their conversation: the server's TCP packets are swapped to client ->
    server and marked; an ICMP port unreachable keeps its type and code and the port it quotes."""
    quoted = bytes([0x45]) + bytes(19) + (40001).to_bytes(2, "big") + (5353).to_bytes(2, "big") + bytes(4)
    t = packets_traffic([
        {"ts": T0, "src": "10.0.0.1", "dst": "10.0.0.2", "sport": 40001, "dport": 8080, "flags": 0x02},
        {"ts": T0 + 1000, "src": "10.0.0.2", "dst": "10.0.0.1", "sport": 8080, "dport": 40001, "flags": 0x12},
        {"ts": T0 + 2000, "src": "10.0.0.2", "dst": "10.0.0.1", "sport": 3, "dport": 3, "proto": 1,
         "flags": 0, "payload": quoted, "direction": 1},
        {"ts": T0 + 3000, "src": "10.0.0.2", "dst": "10.0.0.1", "sport": 1, "dport": 4, "proto": 1, "flags": 0},
    ])
    rows = features.featurize(read_container(containers(t)[0]), "h/i", answers=True).rows
    rows = rows[np.argsort(rows["ts_ns"])]
    assert rows["answer"].tolist() == [0, 1, 0, 0]
    assert rows["src_port"].tolist() == [40001, 40001, 3, 1] and rows["dst_port"].tolist() == [8080, 8080, 3, 4]
    assert rows["fh"][0] == rows["fh"][1]
    assert (rows["fh"] == features.flow_hash(rows["src_addr"], rows["dst_addr"], rows["src_port"], rows["dst_port"],
                                             rows["protocol"])).all()  # each row's hash is its oriented 5-tuple's
    assert rows["quoted_port"][2] == 5353


ids = st.one_of(st.integers(0, 10**12).map(str), st.uuids().map(str),
                st.binary(min_size=8, max_size=32).map(lambda b: b.hex()))
words = st.text("abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=12)


@given(st.lists(st.tuples(words, st.one_of(st.none(), ids)), min_size=1, max_size=6), st.booleans())
def test_generated_paths_normalise_ids_only(segs: list[tuple[str, str | None]], query: bool) -> None:
    path = "".join(f"/{w}" + (f"/{i}" if i is not None else "") for w, i in segs)
    template = "".join(f"/{w}" + ("/{id}" if i is not None else "") for w, i in segs)
    assert normalize_path(path + ("?a=1&token=x" if query else "")) == template


def test_credentials_in_paths_reach_no_usage_record_route_label_or_snapshot() -> None:
    """Requests whose paths carry a JWT, a GitHub token, an e-mail address (percent-encoded), starred
    bytes and a session id: the usage records, the RED metrics' http_route labels and the state's
    snapshot hold the placeholders, never the secrets."""
    jwt = "eyJ" + "hbGciOiJIUzI1NiJ9." + "eyJ" + "zdWIiOiJhbm4ifQ.c2lnbmF0dXJlMTIzNDU2Nzg5MA"
    gh = "ghp" + "_" + "A1b2C3d4" * 4 + "E5f6"
    secrets = [jwt, gh, "ann.lee@example.com", "ann.lee%40example.com", "SESSION0123456789ABCDEF"]
    paths = {f"/auth/{jwt}/refresh": "/auth/{token}/refresh", f"/repos/{gh}/hooks": "/repos/{token}/hooks",
             "/users/ann.lee%40example.com/prefs": "/users/{email}/prefs", "/r/************": "/r/{token}",
             "/cart;jsessionid=SESSION0123456789ABCDEF": "/cart"}
    cli, srv, t0 = "10.9.0.2", "10.1.0.10", T0 + 10**9
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    pk: list[dict[str, Any]] = []
    for i, path in enumerate(paths):
        get = f"GET {path}?token=x HTTP/1.1\r\nHost: other.shop.test\r\n\r\n".encode()
        pk += [{"ts": t0 + i * 10**7, "src": cli, "dst": srv, "sport": 40000 + i, "dport": 80, "flags": 0x18,
                "payload": get, "len": 60 + len(get)},
               {"ts": t0 + i * 10**7 + 10**6, "src": srv, "dst": cli, "sport": 80, "dport": 40000 + i, "flags": 0x18,
                "payload": ok, "direction": 1, "len": 60 + len(ok)}]
    red = RedMetrics()
    p = UsageProcessor(Catalog.from_data(CATALOG), red=red, response_timeout_s=5)
    st_ = p.new_state()
    for part in p.route(p.featurize(read_container(containers(packets_traffic(pk, payload_width=256))[0]), "h/i"),
                        1).values():
        p.process(st_, features.decode(features.encode(part)))  # as the repartition topic carries them
    state = snapshot.pack(p.dump(st_)).decode("latin-1")
    outs = p.close(st_, FOREVER)
    apis = {o.record["api"] for o in outs if o.record["window_s"] == 60}
    assert apis == {f"other.shop.test:80 GET {t}" for t in paths.values()}
    routes = {smp.labels["http_route"] for fam in red.collect() for smp in fam.samples}
    assert routes == apis
    records = json.dumps([o.record for o in outs])
    for secret in secrets:
        assert secret not in state and secret not in records and not any(secret in r for r in routes), secret


def test_table_shows_the_busiest_apis() -> None:
    recs = [{"api": f"api{i}", "window_start_ms": 1_800_000_000_000, "window_s": 60, "requests": i * 10,
             "partial_requests": 0, "packets": i * 30, "bytes": i * 3000, "new_connections": i,
             "distinct_clients": i, "top_clients": [{"client": "10.0.0.1", "requests": i, "packets": 1, "bytes": 1}]}
            for i in range(1, 21)]
    text = render(recs, top=5)
    lines = text.splitlines()
    assert "requests 2100" in lines[0]
    assert lines[2].startswith("api20") and lines[6].startswith("api16") and "and 15 more" in lines[-1]
    assert "10.0.0.1 (20)" in lines[2]
    # error rate and p99 where the answers were seen, "-" where not (a one-direction capture)
    recs[-1].update(error_rate=0.125, latency_p99_ms=247.5, response_bytes=12000)
    head, row20, row19 = render(recs, top=5).splitlines()[1:4]
    cols = head.split()
    assert cols[:4] == ["API", "req/min", "err%", "p99"]
    assert row20.split()[:4] == ["api20", "200", "12.5", "247.5"] and "12.0 kB" in row20
    assert row19.split()[:4] == ["api19", "190", "-", "-"]


SYN_, ACK_, PSH_, FIN_ = 0x02, 0x10, 0x08, 0x01
T0 = 1_700_000_000_000_000_000 + 5 * 10**9
REQ_CREATE = b"POST /v1/orders HTTP/1.1\r\nHost: api.shop.test\r\n\r\n"
REQ_ITEMS = b"GET /v1/orders/5/items HTTP/1.1\r\nHost: api.shop.test\r\n\r\n"
Row = tuple[int, int, int, int | None]  # packets, bytes, new connections, response packets


def one_conn(t: int, *exchanges: tuple[int, bytes, int], sport: int = 40000,
             syn_again: bool = False) -> list[dict[str, Any]]:
    """A connection's packets: handshake, then per (time after t, request, status) the request and its
    answer 20 ms later, then the client's FIN 100 us after the last answer."""
    up = {"src": "10.100.0.7", "dst": "10.1.0.10", "sport": sport, "dport": 80}
    dn = {"src": "10.1.0.10", "dst": "10.100.0.7", "sport": 80, "dport": sport}
    out = [{"ts": t, "flags": SYN_, "len": 66, **up}]
    if syn_again:  # a retransmitted SYN
        out.append({"ts": t + 10_000, "flags": SYN_, "len": 66, **up})
    out += [{"ts": t + 50_000, "flags": SYN_ | ACK_, "len": 66, **dn},
            {"ts": t + 100_000, "flags": ACK_, "len": 66, **up}]
    for dt, req, status in exchanges:
        answer = f"HTTP/1.1 {status} R\r\nContent-Length: 0\r\n\r\n".encode()
        out += [{"ts": t + dt, "flags": PSH_ | ACK_, "len": 66 + len(req), "payload": req, **up},
                {"ts": t + dt + 20_000_000, "flags": PSH_ | ACK_, "len": 90, "payload": answer, **dn}]
    return [*out, {"ts": out[-1]["ts"] + 100_000, "flags": FIN_ | ACK_, "len": 66, **up}]


class Points:
    """Capture points' feature batches of given packets, and the minute rows of process() calls."""

    def __init__(self) -> None:
        self.p = UsageProcessor(Catalog.from_data(CATALOG))

    def feats(self, pkts: list[dict[str, Any]], origin: str = "h/eth0", shift: int = 0,
              keep: str = "both") -> features.Features:
        """keep: "up" (the client's packets only), "down" (the server's), "both"."""
        moved = [{**x, "ts": x["ts"] + shift} for x in pkts
                 if keep == "both" or (x["src"] == "10.100.0.7") == (keep == "up")]
        return self.p.featurize(read_container(containers(packets_traffic(moved), batch=max(1, len(moved)))[0]), origin)

    def table(self, calls: list[list[features.Features]]) -> dict[str, Row]:
        s = self.p.new_state()
        for fs in calls:
            self.p.process(s, features.concat(fs))
        return {r["api"]: (r["packets"], r["bytes"], r["new_connections"], r["response_packets"])
                for o in self.p.close(s, FOREVER) for r in fastavro.reader(io.BytesIO(o.value)) if r["window_s"] == 60}


def test_a_port_reused_by_a_later_connection_counts_under_its_own_api_however_batched() -> None:
    """Two connections on one 5-tuple 17 s apart (POST /v1/orders, then GET /v1/orders/5/items): each
    one's handshake, request, answer and close count under its own API, whether the two share a
    process() call or one producer container, come in two, or the second is cut inside its handshake.
    (Which rows share a batch follows the runner's commit timing: before, two runs over one topic
    published different counts.)"""
    pt = Points()
    a, b = one_conn(T0, (200_000, REQ_CREATE, 201)), one_conn(T0 + 17 * 10**9, (200_000, REQ_ITEMS, 200))
    fa, fb, fb1, fb2 = pt.feats(a), pt.feats(b), pt.feats(b[:2]), pt.feats(b[2:])
    want = {"orders.create": (4, 4 * 66 + 49, 1, 2), "orders.get": (4, 4 * 66 + 56, 1, 2)}
    assert pt.table([[fa], [fb]]) == want
    assert pt.table([[fa, fb]]) == want
    assert pt.table([[pt.feats(a + b)]]) == want  # one container: the second SYN must not fold into the first request
    assert pt.table([[fa, fb1], [fb2]]) == want
    assert pt.table([[fa], [fb1], [fb2]]) == want
    assert pt.table([[pt.feats(a[:4])], [pt.feats(a[4:] + b)]]) == want  # the first one's tail with the second's SYN
    # a retransmitted SYN opens no third connection
    b2 = one_conn(T0 + 17 * 10**9, (200_000, REQ_ITEMS, 200), syn_again=True)
    want2 = {**want, "orders.get": (5, 5 * 66 + 56, 2, 2)}
    assert pt.table([[pt.feats(a + b2)]]) == want2
    assert pt.table([[pt.feats(a + b2[:5])], [pt.feats(b2[5:])]]) == want2


@pytest.mark.parametrize("sport", [40000, 40001, 40002, 40005])
def test_a_reused_port_seen_by_two_capture_points(sport: int) -> None:
    """The same two connections seen by the server's host and the client's (whose clock is 3 ms
    behind), their records batched every way the runner may: each point's records of a connection
    count under its API, the other point's SYN a few ms later cuts nothing. (The flow's hash, so
    the order of groups in a batch, changes with the port.)"""
    pt = Points()
    a = one_conn(T0, (200_000, REQ_CREATE, 201), sport=sport)
    b = one_conn(T0 + 17 * 10**9, (200_000, REQ_ITEMS, 200), sport=sport)
    want = {"orders.create": (4, 4 * 66 + 49, 1, 2), "orders.get": (4, 4 * 66 + 56, 1, 2)}
    S, C, sk = "server/eth0", "client/eth0", -3_000_000
    srv, cli = pt.feats(a + b, S), pt.feats(a + b, C, sk)
    assert pt.table([[srv, cli]]) == want
    assert pt.table([[cli, srv]]) == want
    assert pt.table([[cli], [srv]]) == want
    s_a, s_b1, s_b2 = pt.feats(a, S), pt.feats(b[:2], S), pt.feats(b[2:], S)
    c_a, c_b1, c_b2 = pt.feats(a, C, sk), pt.feats(b[:2], C, sk), pt.feats(b[2:], C, sk)
    assert pt.table([[c_a, s_a, c_b1], [s_b1, c_b2], [s_b2]]) == want
    assert pt.table([[c_a, c_b1], [s_a, s_b1, c_b2, s_b2]]) == want
    assert pt.table([[c_a, c_b1], [c_b2, s_a, s_b1, s_b2]]) == want
    assert pt.table([[c_a, c_b1], [s_a], [s_b1, c_b2, s_b2]]) == want


def test_points_that_each_see_one_direction() -> None:
    """The server's host records the clients' packets, the client's host only the answers (ingress
    capture on both): the answers count under the API of the request the other point saw, on a reused
    port too, in one batch or several."""
    pt = Points()
    a, b = one_conn(T0, (200_000, REQ_CREATE, 201)), one_conn(T0 + 17 * 10**9, (200_000, REQ_ITEMS, 200))
    want = {"orders.create": (4, 4 * 66 + 49, 1, 2), "orders.get": (4, 4 * 66 + 56, 1, 2)}
    S, C, sk = "server/eth0", "client/eth0", -3_000_000
    for calls in ([[pt.feats(a + b, S, keep="up"), pt.feats(a + b, C, sk, keep="down")]],
                  [[pt.feats(a + b, C, sk, keep="down"), pt.feats(a + b, S, keep="up")]],
                  [[pt.feats(a, S, keep="up"), pt.feats(a, C, sk, keep="down")],
                   [pt.feats(b, C, sk, keep="down"), pt.feats(b, S, keep="up")]],
                  [[pt.feats(a, S, keep="up")], [pt.feats(a, C, sk, keep="down"), pt.feats(b, S, keep="up")],
                   [pt.feats(b, C, sk, keep="down")]]):
        assert pt.table(calls) == want


def test_a_lagging_point_keeps_a_keep_alive_connections_requests_apart() -> None:
    """A keep-alive connection (POST, then GET five seconds later) seen whole by the client's host,
    while the server's host's records come later and cut up: the handshake goes to the first request
    at both points, each answer to its request."""
    pt = Points()
    k = one_conn(T0, (200_000, REQ_CREATE, 201), (5_000_000_000, REQ_ITEMS, 200))
    one = pt.table([[pt.feats(k, "client/eth0")]])
    assert one == {"orders.create": (3, 3 * 66 + 49, 1, 2), "orders.get": (2, 66 + 56 + 66, 0, 1)}
    C, S = "client/eth0", "server/eth0"
    assert pt.table([[pt.feats(k[:6], C)], [pt.feats(k[:2], S)], [pt.feats(k[6:], C)], [pt.feats(k[2:], S)]]) \
        == one
    assert pt.table([[pt.feats(k, C)], [pt.feats(k[:3], S)], [pt.feats(k[3:], S)]]) == one


def test_repeated_handshakes_floods_and_answer_only_points_stay_cheap_and_in_place() -> None:
    """A SYN-ACK the network repeats after the request opens no connection; a port reused half a second
    after a connection closed, its handshake and request in two batches, is the new connection's; a
    point that sees only answers never makes connections wait (no request will come to it); a
    flood's repeated SYNs on one 5-tuple stay one waiting connection, and are published at the end
    although nothing else is in their window."""
    pt = Points()
    k = one_conn(T0, (200_000, REQ_CREATE, 201))
    up = {x: k[0][x] for x in ("src", "dst", "sport", "dport")}
    dn = {x: k[1][x] for x in ("src", "dst", "sport", "dport")}
    again = [*k[:4], {"ts": T0 + 300_000, "flags": SYN_ | ACK_, "len": 66, **dn}, *k[4:]]
    assert pt.table([[pt.feats(again)]]) == {"orders.create": (4, 4 * 66 + 49, 1, 3)}
    b = one_conn(T0 + 500_000_000, (200_000, REQ_ITEMS, 200))
    want = {"orders.create": (4, 4 * 66 + 49, 1, 2), "orders.get": (4, 4 * 66 + 56, 1, 2)}
    assert pt.table([[pt.feats(k)], [pt.feats(b[:3])], [pt.feats(b[3:])]]) == want
    # answers only, 2,000 connections whose requests no point saw
    answers = sorted((x for i in range(2000) for x in one_conn(T0 + i * 10_000_000, (200_000, REQ_CREATE, 200),
                                                               sport=20000 + i) if x["src"] == "10.1.0.10"),
                     key=lambda x: x["ts"])
    f = pt.feats(answers, "client/eth0")
    s = pt.p.new_state()
    pt.p.process(s, f)
    assert len(s.pending) == 0
    # SYN, RST, SYN, RST ... on one 5-tuple (a raw-socket flood answered by the server's SYN-ACKs)
    flood = [x for i in range(3000) for x in (
        {"ts": T0 + i * 1_000_000, "flags": SYN_, "len": 60, **up},
        {"ts": T0 + i * 1_000_000 + 50_000, "flags": SYN_ | ACK_, "len": 60, **dn},
        {"ts": T0 + i * 1_000_000 + 100_000, "flags": 0x04, "len": 60, **up})]
    f = pt.feats(flood)
    assert len(f.rows) <= 3001  # at most a row per attempt, the SYN-ACKs one
    s = pt.p.new_state()
    pt.p.process(s, f)
    assert len(s.pending) == 1
    assert pt.table([[f]]) == {"10.1.0.10:80/tcp": (6000, 6000 * 60, 3000, 3000)}


def test_a_window_that_only_waiting_connections_fill_is_published_once_when_its_minute_closes() -> None:
    """A SYN flood on one 5-tuple (nothing else in its minute, every connection waiting for a request)
    is published when the watermark passes its minute, once, and rolled up into its hour."""
    pt = Points()
    up = {"src": "10.100.0.7", "dst": "10.1.0.10", "sport": 40000, "dport": 80}

    def flood(t: int) -> list[dict[str, Any]]:
        return [x for i in range(30) for x in ({"ts": t + i * 1_000_000, "flags": SYN_, "len": 60, **up},
                                                {"ts": t + i * 1_000_000 + 100_000, "flags": 0x04, "len": 60, **up})]

    def rows(outs: list[Output]) -> list[tuple[int, str, int]]:
        return [(r["window_s"], r["api"], r["packets"]) for o in outs for r in fastavro.reader(io.BytesIO(o.value))]

    s = pt.p.new_state()
    pt.p.process(s, pt.feats(flood(T0)))
    assert rows(pt.p.close(s, T0 + 30 * 10**9)) == []  # its minute is open
    assert rows(pt.p.close(s, T0 + 75 * 10**9)) == [(60, "10.1.0.10:80/tcp", 60)]
    assert rows(pt.p.close(s, T0 + 140 * 10**9)) == []
    pt.p.process(s, pt.feats(flood(T0 + 130 * 10**9)))
    assert rows(pt.p.close(s, FOREVER)) == [(60, "10.1.0.10:80/tcp", 60), (3600, "10.1.0.10:80/tcp", 120)]
    assert not s.pending


def test_an_answers_only_point_joins_a_handshake_that_waits_for_its_request() -> None:
    """One point sees a connection both ways, another only its answers; the first point's handshake
    and request come in different batches: the second point's SYN-ACK waits with the handshake and
    counts under the request, in every batching."""
    pt = Points()
    a = one_conn(T0, (200_000, REQ_CREATE, 201))
    dn = [x for x in a if x["src"] == "10.1.0.10"]
    P1, P2 = "h1/eth0", "h2/eth0"
    want = {"orders.create": (4, 4 * 66 + 49, 1, 2)}  # the answers once, though both points saw them
    assert pt.table([[pt.feats(a, P1), pt.feats(dn, P2)]]) == want
    assert pt.table([[pt.feats(a[:3], P1), pt.feats(dn[:1], P2)], [pt.feats(a[3:], P1), pt.feats(dn[1:], P2)]]) == want
    assert pt.table([[pt.feats(a[:3], P1)], [pt.feats(dn[:1], P2)], [pt.feats(a[3:], P1), pt.feats(dn[1:], P2)]]) \
        == want


# Where each capture point sees a client's packets and the server's (direction: 0 received, 1 sent;
# TTL): a client, a router (a link towards the client, one towards the server) and a server in a row
TOPOLOGY = {
    "client": ((1, 64), (0, 63)),
    "router-a": ((0, 64), (1, 63)),
    "router-b": ((1, 63), (0, 64)),
    "server": ((0, 63), (1, 64)),
}


def seen_at(pkts: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    (ud, ut), (dd, dt) = TOPOLOGY[where]
    return [{**x, "direction": ud, "ttl": ut} if x["src"].startswith("10.100.") else {**x, "direction": dd, "ttl": dt}
            for x in pkts]


def as_client(pkts: list[dict[str, Any]], addr: str) -> list[dict[str, Any]]:
    return [{**x, "src": addr if x["src"] == "10.100.0.7" else x["src"], "dst": addr if x["dst"] == "10.100.0.7"
             else x["dst"]} for x in pkts]


def usage_records(p: UsageProcessor, calls: list[list[features.Features]],
                  restore_after: int = -1) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """The minute records of process() calls by API (with their seen_by), and the state's figures; the
    state dumped and restored after call ``restore_after``."""
    s = p.new_state()
    for i, fs in enumerate(calls):
        p.process(s, features.concat(fs))
        if i == restore_after:
            s = p.load(snapshot.unpack(snapshot.pack(p.dump(s))))
    out = {r["api"]: r for o in p.close(s, FOREVER) for r in fastavro.reader(io.BytesIO(o.value))
           if r["window_s"] == 60}
    return out, p.figures([s])


def without_points(recs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: {f: v for f, v in r.items() if f != "seen_by"} for k, r in recs.items()}


def test_a_conversation_seen_by_several_capture_points_counts_once() -> None:
    """Two clients' connections (one keep-alive with two requests) seen by the server's host alone, the
    client's host alone, a router's two links, and all four points at once (the client's clock 3 ms
    behind), batched per point, all together, or cut in halves: the same records (requests, packets,
    bytes, new connections, status codes, latency buckets, clients), each conversation counted once;
    seen_by names every point that saw it."""
    pt = Points()
    p = pt.p
    k = one_conn(T0, (200_000, REQ_CREATE, 201), (5_000_000_000, REQ_ITEMS, 200))
    c2 = as_client(one_conn(T0 + 10**9, (300_000, REQ_CREATE, 201), sport=41000), "10.100.0.8")
    pk = sorted(k + c2, key=lambda x: x["ts"])

    def at(where: str, part: slice = slice(None), skew: int = 0) -> features.Features:
        return pt.feats(seen_at(pk, where)[part], f"{where}/eth0", skew)

    one, figures = usage_records(p, [[at("server")]])
    assert one["orders.create"]["requests"] == 2 and one["orders.get"]["requests"] == 1
    assert one["orders.create"]["distinct_clients"] == 2 and one["orders.create"]["new_connections"] == 2
    assert one["orders.create"]["status_codes"] == {"201": 2} and one["orders.get"]["status_codes"] == {"200": 1}
    assert one["orders.create"]["packets"] == 7 and one["orders.create"]["response_packets"] == 4
    want = without_points(one)
    half = len(pk) // 2
    for points in (["client"], ["router-a", "router-b"], ["server", "client"], ["client", "router-a", "router-b",
                                                                               "server"]):
        skews = {w: -3_000_000 if w == "client" else 0 for w in points}
        for calls in ([[at(w, skew=skews[w]) for w in points]],
                      [[at(w, skew=skews[w])] for w in points],
                      [[at(w, skew=skews[w])] for w in reversed(points)],
                      [[at(w, slice(None, half), skews[w]) for w in points],
                       [at(w, slice(half, None), skews[w]) for w in reversed(points)]]):
            got, figures = usage_records(p, calls)
            assert without_points(got) == want, (points, len(calls))
            assert {r["seen_by"] == sorted(f"{w}/eth0" for w in points) for r in got.values()} == {True}
            assert figures["capture_point_overlaps"] == 0
    # the state restored between two points' batches
    got, _f = usage_records(p, [[at("server")], [at("client", skew=-3_000_000)]], restore_after=0)
    assert without_points(got) == want
    got, _f = usage_records(p, [[at("router-b", slice(None, half))], [at("router-a")],
                                [at("router-b", slice(half, None))]], restore_after=1)
    assert without_points(got) == want


def test_points_that_see_different_clients_add_up() -> None:
    """The server not captured: each client's own host sees its connections (they add up); a router
    that sees both clients with one of the client hosts (the router counts, the host adds nothing);
    and a router link nearer the server that sees one client while a farther one sees both (the
    farther adds the other client's requests, packets and bytes, and the figures say they overlapped)."""
    pt = Points()
    p = pt.p
    k = one_conn(T0, (200_000, REQ_CREATE, 201))
    c2 = as_client(one_conn(T0 + 10**9, (300_000, REQ_CREATE, 201), sport=41000), "10.100.0.8")
    both = sorted(k + c2, key=lambda x: x["ts"])
    want = without_points(usage_records(p, [[pt.feats(seen_at(both, "server"), "server/eth0")]])[0])
    hosts = [pt.feats(seen_at(k, "client"), "c1/eth0"), pt.feats(seen_at(c2, "client"), "c2/eth0")]
    got, figures = usage_records(p, [hosts])
    assert without_points(got) == want and figures["capture_point_overlaps"] == 0
    assert got["orders.create"]["seen_by"] == ["c1/eth0", "c2/eth0"]
    got, figures = usage_records(p, [[hosts[0]], [pt.feats(seen_at(both, "router-a"), "r/eth0")]])
    assert without_points(got) == want and figures["capture_point_overlaps"] == 0
    got, figures = usage_records(p, [[pt.feats(seen_at(k, "router-b"), "r/eth1"),
                                      pt.feats(seen_at(both, "router-a"), "r/eth0")]])
    # (the farther link shares one conversation with the nearer and has one of its own: it adds
    # nothing, once for the client's side, once for the server's, and the figures say so)
    alone = without_points(usage_records(p, [[pt.feats(seen_at(k, "router-b"), "r/eth1")]])[0])
    assert without_points(got) == alone and figures["capture_point_overlaps"] == 2
    assert got["orders.create"]["requests"] == 1 and want["orders.create"]["requests"] == 2


def test_replicas_of_one_api_seen_by_their_own_hosts_add_up() -> None:
    """One client calls a catalogued API on two replicas, each captured on its own host (and the
    client's host captures both): every request counts once, the replicas' conversations apart."""
    pt = Points()
    p = pt.p
    k1 = one_conn(T0, (200_000, REQ_CREATE, 201))
    k2 = [{**x, "src": "10.1.0.11" if x["src"] == "10.1.0.10" else x["src"],
           "dst": "10.1.0.11" if x["dst"] == "10.1.0.10" else x["dst"]}
          for x in one_conn(T0 + 10**9, (200_000, REQ_CREATE, 201), (300_000, REQ_CREATE, 201), sport=41000)]
    both = sorted(k1 + k2, key=lambda x: x["ts"])
    want = without_points(usage_records(p, [[pt.feats(seen_at(both, "server"), "one/eth0")]])[0])
    assert want["orders.create"]["requests"] == 3
    replicas = [pt.feats(seen_at(k1, "server"), "s1/eth0"), pt.feats(seen_at(k2, "server"), "s2/eth0")]
    got, figures = usage_records(p, [replicas])
    assert without_points(got) == want and figures["capture_point_overlaps"] == 0
    got, figures = usage_records(p, [[*replicas, pt.feats(seen_at(both, "client"), "c/eth0")]])
    assert without_points(got) == want and figures["capture_point_overlaps"] == 0


def test_an_unanswered_request_seen_at_both_ends_counts_once() -> None:
    """A request the server never answers, seen by the client's host and the server's; its timeout
    ends in the next minute, in which the server's host sees only another client: one unanswered
    request, as the server's host alone counts it."""
    pt = Points()
    p = pt.p
    lost = [x for x in one_conn(T0 + 50 * 10**9, (200_000, REQ_CREATE, 201))
            if not x.get("payload", b"").startswith(b"HTTP")]
    other = as_client(one_conn(T0 + 75 * 10**9, (200_000, REQ_ITEMS, 200), sport=41000), "10.100.0.8")
    every = sorted(lost + other, key=lambda x: x["ts"])
    alone, _f = usage_records(p, [[pt.feats(seen_at(every, "server"), "s/eth0")]])
    assert sum(r["unanswered"] or 0 for r in alone.values()) == 1
    got, _f = usage_records(p, [[pt.feats(seen_at(every, "server"), "s/eth0"),
                                 pt.feats(seen_at(lost, "client"), "c/eth0")]])
    assert without_points(got) == without_points(alone)


def test_a_degraded_snapshot_keeps_conversations_counted_once() -> None:
    """Twenty clients, each captured on its own host and all on the server's; the state gives up its
    client detail (degrade, --top-clients 10) before the minute closes: still twenty requests from
    twenty clients, not the trimmed clients counted again from their own hosts."""
    pt = Points()
    p = pt.p
    conns = [as_client(one_conn(T0 + i * 10**8, (200_000, REQ_CREATE, 201), sport=41000 + i), f"10.100.1.{i + 1}")
             for i in range(20)]
    every = sorted((x for c in conns for x in c), key=lambda x: x["ts"])
    s = p.new_state()
    p.process(s, features.concat([pt.feats(seen_at(every, "server"), "s/eth0"),
                                  *(pt.feats(seen_at(c, "client"), f"c{i}/eth0") for i, c in enumerate(conns))]))
    assert p.degrade(s)["dropped"] == "client detail"
    r = next(o.record for o in p.close(s, FOREVER) if o.record["window_s"] == 60 and o.record["api"] == "orders.create")
    assert (r["requests"], r["distinct_clients"], r["responses"]) == (20, 20, 20)


def test_a_row_keeps_at_most_max_points_apart() -> None:
    """Seventy client hosts each calling the API (the server not captured): past MAX_POINTS_PER_ROW
    the others' figures are kept together, and every request still counts once; seen_by names all."""
    from pktstream.consumers.usage.processor import MAX_POINTS_PER_ROW

    pt = Points()
    p = pt.p
    n = MAX_POINTS_PER_ROW + 6
    conns = [as_client(one_conn(T0 + i * 10**8, (200_000, REQ_CREATE, 201), sport=41000 + i), f"10.100.1.{i + 1}")
             for i in range(n)]
    got, _f = usage_records(p, [[pt.feats(seen_at(c, "client"), f"c{i:02}/eth0") for i, c in enumerate(conns)]],
                            restore_after=0)
    r = got["orders.create"]
    assert (r["requests"], r["distinct_clients"], len(r["seen_by"])) == (n, n, n)


def test_a_point_left_out_does_not_hide_the_points_after_it() -> None:
    """A catalogued API on two replicas, one captured on its host: a router link sees all five
    connections (three to the captured replica, so it is left out), a second client's host sees its
    two to the other replica: those two count, though the router saw them too."""
    pt = Points()
    p = pt.p

    def to(server: str, c: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**x, "src": server if x["src"] == "10.1.0.10" else x["src"],
                 "dst": server if x["dst"] == "10.1.0.10" else x["dst"]} for x in c]

    r1 = [one_conn(T0 + i * 10**8, (200_000, REQ_CREATE, 201), sport=41000 + i) for i in range(3)]
    r2 = [to("10.1.0.11", as_client(one_conn(T0 + (3 + i) * 10**8, (200_000, REQ_CREATE, 201), sport=42000 + i),
                                    "10.100.0.8")) for i in range(2)]
    flat = sorted((x for c in r1 + r2 for x in c), key=lambda x: x["ts"])
    got, figures = usage_records(p, [[pt.feats(seen_at(sorted((x for c in r1 for x in c), key=lambda x: x["ts"]),
                                                       "server"), "r1/eth0"),
                                      pt.feats(seen_at(flat, "router-a"), "rt/eth0"),
                                      pt.feats(seen_at(sorted((x for c in r2 for x in c), key=lambda x: x["ts"]),
                                                       "client"), "c2/eth0")]])
    assert got["orders.create"]["requests"] == 5 and got["orders.create"]["responses"] == 5
    assert figures["capture_point_overlaps"] == 2  # the router's two sides: judged, left out


def test_points_past_the_cap_are_kept_apart_by_their_distance_from_the_server() -> None:
    """Seventy client hosts, then the server's host (the seventy-first point of the row): the server's
    figures are not lumped with the clients' past MAX_POINTS_PER_ROW, every request counts once."""
    pt = Points()
    p = pt.p
    conns = [as_client(one_conn(T0 + i * 10**8, (200_000, REQ_CREATE, 201), sport=41000 + i), f"10.100.1.{i + 1}")
             for i in range(70)]
    every = sorted((x for c in conns for x in c), key=lambda x: x["ts"])
    got, _f = usage_records(p, [[pt.feats(seen_at(c, "client"), f"c{i:02}/eth0") for i, c in enumerate(conns)],
                                [pt.feats(seen_at(every, "server"), "s/eth0")]])
    r = got["orders.create"]
    assert (r["requests"], r["responses"], r["distinct_clients"], len(r["seen_by"])) == (70, 70, 70, 71)
