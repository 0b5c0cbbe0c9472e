"""The usage consumer's pieces without Kafka: catalog, OpenAPI import, feature batches, the
per-partition processor (exact counts on generated traffic, snapshots, late records), the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pktstream.consumers.catalog import Catalog, import_openapi
from pktstream.consumers.engine import features, snapshot
from pktstream.consumers.engine.parse import normalize_path
from pktstream.consumers.engine.runner import FOREVER, Output
from pktstream.consumers.usage.processor import MINUTE_NS, UsageProcessor
from pktstream.consumers.usage.table import render
from pktstream.runtime.errors import ConfigError
from pktstream.schemas.columns import read_container
from pktstream.schemas.decode import DecodeError
from tests.support.traffic import CATALOG, containers, generate, v4

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


ids = st.one_of(st.integers(0, 10**12).map(str), st.uuids().map(str),
                st.binary(min_size=8, max_size=32).map(lambda b: b.hex()))
words = st.text("abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=12)


@given(st.lists(st.tuples(words, st.one_of(st.none(), ids)), min_size=1, max_size=6), st.booleans())
def test_generated_paths_normalise_ids_only(segs: list[tuple[str, str | None]], query: bool) -> None:
    path = "".join(f"/{w}" + (f"/{i}" if i is not None else "") for w, i in segs)
    template = "".join(f"/{w}" + ("/{id}" if i is not None else "") for w, i in segs)
    assert normalize_path(path + ("?a=1&token=x" if query else "")) == template


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
