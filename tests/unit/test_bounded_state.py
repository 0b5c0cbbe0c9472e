"""State that traffic chooses stays bounded (issue 23): uncatalogued API names are capped per window
(usage/caps.py) and folded into _OTHER rows that count every request; RED label sets are capped; the
alerts keep at most --max-paths request paths; what no open window needs is dropped; a snapshot over
its size limit degrades its detail and says so."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from typing import Any

import numpy as np
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from pktstream.consumers.alerts.processor import AlertsProcessor
from pktstream.consumers.alerts.rules import load_rules
from pktstream.consumers.catalog import Catalog, unmatched_ref
from pktstream.consumers.engine import features, snapshot
from pktstream.consumers.engine.runner import FOREVER, Output
from pktstream.consumers.usage.caps import GLOBAL, Admission, Key, fold_name, key_text, rank
from pktstream.consumers.usage.processor import MINUTE_NS, UsageProcessor, UsageState
from pktstream.consumers.usage.red import RedMetrics
from pktstream.runtime.errors import ConfigError
from pktstream.schemas.columns import read_container
from tests.support.traffic import CATALOG, containers, flood, generate, merge, packets, v4

T0 = 1_800_000_000_000_000_000 - 1_800_000_000_000_000_000 % (3600 * 10**9)  # an hour boundary
FLOOD = b"GET /v1/things HTTP/1.1\r\nHost: h#######.flood.test\r\n\r\n"  # each request its own Host header


# -- the rule itself --------------------------------------------------------------------------------

def expected_rows(pairs: set[Key], per_server: int, total: int) -> dict[Key, Key]:
    """The rows caps.py's docstring defines, by brute force: each pair's row."""
    by_server: dict[str, list[Key]] = {}
    for k in sorted(pairs, key=lambda k: rank(key_text(k))):
        by_server.setdefault(k[1], []).append(k)
    smallest = [k for ks in by_server.values() for k in ks[:per_server]]
    admitted = set(sorted(smallest, key=lambda k: rank(key_text(k)))[:total])
    servers = set(sorted({k[1] for k in pairs}, key=rank)[:total])
    return {k: k if k in admitted else ((fold_name(k[1]), k[1]) if k[1] in servers else GLOBAL) for k in pairs}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 6)), min_size=1, max_size=300),
       st.integers(1, 5), st.integers(1, 12), st.randoms(use_true_random=False))
def test_admission_is_the_smallest_hashes_whatever_the_order(pairs: list[tuple[int, int]], per_server: int,
                                                              total: int, rnd: random.Random) -> None:
    """Fed in any order and any batches, a window's rows are those the rule names, and every pair's
    traffic ends in its row (the moves merge a row that loses its place where the rule puts it)."""
    keys = [(f"h{n}.test:80 GET /", f"10.0.0.{s}:80") for n, s in pairs]
    want = expected_rows(set(keys), per_server, total)
    for _ in range(2):
        rnd.shuffle(keys)
        a = Admission(per_server, total)
        rows: Counter[Key] = Counter()
        i = 0
        while i < len(keys):
            part = Counter(keys[i : i + rnd.randint(1, 20)])  # a batch: its distinct pairs placed once
            i += part.total()
            batch = list(part)
            for k, t in zip(batch, a.place(batch), strict=True):
                rows[t] += part[k]  # a unit of traffic per occurrence
            for src, dst in a.take_moves():
                rows[dst] += rows.pop(src, 0)
        got: Counter[Key] = Counter()
        for k in keys:
            got[want[k]] += 1
        assert rows == got
        assert len(a) <= total and all(len(v) <= per_server for v in a.per.values())
        back = Admission.load(snapshot.unpack(snapshot.pack(a.dump())), list(rows))
        assert back.admitted == a.admitted and back.servers == a.servers


def test_uncatalogued_names_read_back_as_the_catalog_made_them() -> None:
    cat = Catalog.from_data(CATALOG)
    a, b = v4("10.7.0.1"), ipaddress.IPv6Address("2001:db8::7").packed
    cases = [("x.test", a, 8080, "GET", "/a/123", "http", False), ("x.test", a, 8080, "GET", "/a/b", "http", True),
             ("pay.test", a, 443, "", "", "tls", False), ("", a, 9000, "", "", "h2c", False),
             ("", b, 5432, "", "", "tcp", False), ("", b, 53, "", "", "udp", False),
             ("", b, 8080, "POST", "/v1/x", "http", False)]
    for host, addr, port, method, path, proto, partial in cases:
        ref = cat.match(host, addr, port, method, path, proto, partial=partial)
        assert not ref.matched
        server = f"{'10.7.0.1' if addr == a else '2001:db8::7'}:{port}"
        assert unmatched_ref(ref.name, server) == ref, ref


def test_catalog_names_of_the_overflow_rows_are_reserved() -> None:
    with pytest.raises(ConfigError, match="reserved"):
        Catalog.from_data({"apis": [{"name": "_OTHER", "port": 80}, {"name": "x:80/_OTHER", "port": 81}]})


# -- usage ------------------------------------------------------------------------------------------

def run_usage(p: UsageProcessor, msgs: list[bytes], nparts: int = 1,
              every: int = 1) -> tuple[list[Output], dict[int, UsageState], int]:
    """The messages through featurize, route, process, close (at each message's newest time) and a
    snapshot (every ``every`` messages): the outputs, the states, the largest snapshot."""
    states = {q: p.new_state() for q in range(nparts)}
    outs: list[Output] = []
    largest = 0
    for i, m in enumerate(msgs):
        b = read_container(m)
        for q, part in p.route(p.featurize(b, "gen/eth0"), nparts).items():
            p.process(states[q], features.decode(features.encode(part)))
        for q in sorted(states):
            outs += p.close(states[q], int(b.columns["ts_ns"].max()))
            if i % every == 0:
                largest = max(largest, len(snapshot.pack(p.dump(states[q]))))
                check_caps(p, states[q])
    for q in sorted(states):
        outs += p.close(states[q], FOREVER)
    return outs, states, largest


def check_caps(p: UsageProcessor, s: UsageState) -> None:
    for caps, windows in ((s.caps, s.windows), (s.hour_caps, s.hours)):
        for w, rows in windows.items():
            named = [k for k in rows if k[1] and not k[0].endswith("_OTHER")]
            assert len(named) <= p.max_apis
            assert max(Counter(k[1] for k in named).values(), default=0) <= p.max_apis_per_server
            assert len(caps[w]) <= p.max_apis and len(caps[w].servers) <= p.max_apis
    assert len(s.names) <= 2 * p.max_waiting_names + 1  # + the servers' _OTHER rows, the _OTHER row
    assert set(s.apis) <= {a["name"] for a in CATALOG["apis"]}


def test_a_host_header_flood_keeps_the_rows_at_the_cap_and_counts_every_request() -> None:
    """600,000 requests, each with its own Host header, to one server over five minutes, among the
    catalogued mix: each minute has at most --max-apis-per-server rows of the flood's names, the
    server's _OTHER row holds the rest of its requests exactly, the catalogued APIs are never folded,
    and no snapshot grows past a few MiB (without the caps: one row per name, ~490,000 names to 64 MiB)."""
    n = 600_000
    mix = generate(1500, T0 + 10**9, 5 * MINUTE_NS, clients=100)
    t = merge(flood(n, T0 + 10**9, 5 * MINUTE_NS, FLOOD), mix)
    p = UsageProcessor(Catalog.from_data(CATALOG), max_apis_per_server=200, max_apis=1000)
    outs, states, largest = run_usage(p, containers(t, batch=40_000), every=3)
    minutes = [o.record for o in outs if o.record["window_s"] == 60]
    hours = [o.record for o in outs if o.record["window_s"] == 3600]
    flood_rows = Counter(r["window_start_ms"] for r in minutes if ".flood.test:80" in r["api"])
    assert len(flood_rows) == 6 and max(flood_rows.values()) <= 200  # the flood's minutes (and a bit of a 6th)
    other = [r for r in minutes if r["api"] == "10.1.0.10:80/_OTHER"]
    assert other and all(r["port"] == 80 and not r["matched"] and r["host"] == "" for r in other)
    figures = p.figures(list(states.values()))
    named = sum(r["requests"] for r in minutes if ".flood.test:80" in r["api"])
    assert named == sum(flood_rows.values())  # a request each
    assert sum(r["requests"] for r in other) == figures["requests_folded"] == n - named
    got = Counter()
    for r in minutes:
        if r["matched"]:
            got[r["api"]] += r["requests"]
    assert got == {api: e["requests"] for api, e in mix.expected.items() if e.get("requests")}
    assert figures["apis_folded"] >= n - named
    # the hour rolls the minutes up exactly, under the same caps
    assert sum(r["requests"] for r in hours) == sum(r["requests"] for r in minutes)
    assert sum(1 for r in hours if ".flood.test:80" in r["api"]) <= 200
    assert largest < 4 << 20, largest
    assert all(len(s.names) == 0 and not s.windows and not s.caps for s in states.values())


def test_rows_do_not_depend_on_batches_or_partitions() -> None:
    """The caps rank names by a hash, not by arrival: other batch sizes and partition counts (and a
    snapshot restored midway) give the same records."""
    t = merge(flood(30_000, T0 + 10**9, 2 * MINUTE_NS, FLOOD, clients=300),
              flood(20_000, T0 + 2 * 10**9, 2 * MINUTE_NS, b"GET /p HTTP/1.1\r\nHost: a######.x.test\r\n\r\n",
                    dst="10.1.0.11", clients=300))

    def records(batch: int, nparts: int, total: int) -> list[tuple[Any, ...]]:
        p = UsageProcessor(Catalog(), max_apis_per_server=50, max_apis=total)
        outs = run_usage(p, containers(t, batch=batch), nparts)[0]
        return sorted((r["window_s"], r["window_start_ms"], r["api"], r["requests"], r["packets"],
                       r["distinct_clients"]) for r in (o.record for o in outs))

    a = records(10_000, 1, 80)  # the total cap binds: the two servers' 50 + 50 names share 80 rows
    named = Counter(r[1] for r in a if r[0] == 60 and not r[2].endswith("_OTHER"))
    assert sorted(named.values())[-2:] == [80, 80] and a == records(3_333, 1, 80)
    # each partition has caps of its own: with the total out of reach, the per-server cap alone decides,
    # wherever a server's names are handled
    assert records(10_000, 1, 5000) == records(7_777, 2, 5000)
    p = UsageProcessor(Catalog(), max_apis_per_server=50, max_apis=80)
    msgs = containers(t, batch=5_000)
    st_ = p.new_state()
    outs: list[Output] = []
    for i, m in enumerate(msgs):
        b = read_container(m)
        for part in p.route(p.featurize(b, "gen/eth0"), 1).values():
            p.process(st_, part)
        outs += p.close(st_, int(b.columns["ts_ns"].max()))
        if i == len(msgs) // 2:
            st_ = p.load(snapshot.unpack(snapshot.pack(p.dump(st_))))
    outs += p.close(st_, FOREVER)
    assert sorted((r["window_s"], r["window_start_ms"], r["api"], r["requests"], r["packets"], r["distinct_clients"])
                  for r in (o.record for o in outs)) == a


def test_red_label_sets_and_servers_are_capped() -> None:
    """Answers to 60,000 requests, each with its own Host header (so its own server_address): at most
    --metrics-max-servers servers and --metrics-max-label-sets label sets; every answer is counted, those
    under an _OTHER label in red_folded."""
    n = 60_000
    red = RedMetrics(max_apis=5, max_servers=20, max_label_sets=50)
    p = UsageProcessor(Catalog(), red=red, max_apis_per_server=100, max_apis=1000)
    run_usage(p, containers(flood(n, T0 + 10**9, 2 * MINUTE_NS, FLOOD, clients=500, responses=True), batch=40_000),
              every=100)
    counts: Counter[tuple[str, ...]] = Counter()
    for fam in red.collect():
        if fam.name == "http_server_request_duration_seconds":
            for smp in fam.samples:
                if smp.name.endswith("_count"):
                    counts[(smp.labels["http_route"], smp.labels["server_address"])] += int(smp.value)
    assert sum(counts.values()) == n
    assert len(red.label_sets) <= 50 and len(counts) <= 51  # + the overflow set
    assert len({server for _route, server in counts}) <= 21
    folded = sum(v for (route, server), v in counts.items() if "_OTHER" in (route, server))
    assert folded == red.folded == p.figures([])["red_folded"] > n // 2


def test_a_snapshot_over_its_limit_degrades_and_says_so() -> None:
    """pack_within degrades the state (client detail, then names, connections, waiting requests) until
    the snapshot fits, logging each step; the degraded state restores and closes, every request still
    counted; when nothing is left to drop, degrade says so."""
    t = merge(generate(3000, T0 + 10**9, 90 * 10**9, clients=3000, responses=True),
              flood(40_000, T0 + 10**9, 90 * 10**9, FLOOD, clients=3000))
    p = UsageProcessor(Catalog.from_data(CATALOG), top_clients=3, max_apis_per_server=400, max_apis=2000)
    s = p.new_state()
    for m in containers(t, batch=20_000):
        for part in p.route(p.featurize(read_container(m), "gen/eth0"), 1).values():
            p.process(s, part)
    full = len(snapshot.pack(p.dump(s)))
    limit = full // 4
    with structlog.testing.capture_logs() as logs:
        value = snapshot.pack_within(lambda: p.dump(s), lambda: p.degrade(s), limit, partition=7)
    assert len(value) <= limit < full
    steps = [e for e in logs if e["event"] == "state_degraded"]
    assert steps and steps[0]["dropped"] == "client detail" and steps[0]["partition"] == 7
    assert all(e["bytes"] < e["bytes_before"] for e in steps)
    restored = p.load(snapshot.unpack(value))
    while p.degrade(restored):
        pass
    assert p.degrade(restored) == {} and not restored.flows and not len(restored.pairing.queue)
    recs = [o.record for o in p.close(restored, FOREVER) if o.record["window_s"] == 60]
    assert sum(r["requests"] for r in recs) == 40_000 + 3000  # the flood's and the mix's (a request each)
    assert max(r["distinct_clients"] for r in recs) > 3  # the clients past the top still count
    with structlog.testing.capture_logs() as logs:
        snapshot.pack_within(lambda: p.dump(restored), lambda: p.degrade(restored), 10, partition=7)
    assert [e["event"] for e in logs] == ["state_over_limit"]


def test_a_snapshot_of_the_version_before_the_caps_restores() -> None:
    """Rows keyed by name alone, the flow table as a mapping of names, names without their server."""
    t = generate(2000, T0 + 10**9, 100 * 10**9, clients=300, responses=True)
    msgs = containers(t, batch=3000)
    p = UsageProcessor(Catalog.from_data(CATALOG))
    ref = p.new_state()
    s = p.new_state()
    for i, m in enumerate(msgs):
        for part in p.route(p.featurize(read_container(m), "gen/eth0"), 1).values():
            p.process(ref, part)
            if i < len(msgs) // 2:
                p.process(s, part)
    d = p.dump(s)
    k, nm, ts, closing = d.pop("flow_table")
    old = {**d, "windows": {w: {k_.rpartition("\x1f")[0]: a for k_, a in rows.items()}
                            for w, rows in d["windows"].items()},
           "flows": {str(a): [s.names.key(b)[0], int(c), bool(e)]
                     for a, b, c, e in zip(k.tolist(), nm.tolist(), ts.tolist(), closing.tolist(), strict=True)},
           "pending": {a: v[:4] for a, v in d["pending"].items()},
           "names": [x.rpartition("\x1f")[0] for x in d["names"]]}
    for key in ("caps", "hour_caps", "names_free", "folded"):
        del old[key]
    assert old["flows"] and len(old["queue"]) and old["windows"]
    s = p.load(snapshot.unpack(snapshot.pack(old)))
    for m in msgs[len(msgs) // 2 :]:
        for part in p.route(p.featurize(read_container(m), "gen/eth0"), 1).values():
            p.process(s, part)

    def tot(st_: UsageState) -> Counter[str]:
        c: Counter[str] = Counter()
        for o in p.close(st_, FOREVER):
            if o.record["window_s"] == 60:
                c[o.record["api"]] += o.record["requests"]
                c[o.record["api"] + " packets"] += o.record["packets"]
        return c

    assert tot(s) == tot(ref)


# -- alerts -----------------------------------------------------------------------------------------

ATTACK = b"GET /search/#######?q=1%27%20or%201=1-- HTTP/1.1\r\nHost: shop.test\r\n\r\n"  # each its own path


def attack_only() -> dict[str, Any]:
    from pktstream.consumers.alerts.detectors import registry

    return {"detectors": {name: {"enabled": name in ("http_attack", "port_scan")} for name in registry()}}


def test_attack_paths_are_capped_and_dropped_with_their_windows() -> None:
    """60,000 SQL injection requests, each with its own path, from 20 sources over three minutes: at most
    --max-paths paths are kept at any time (the samples of the others read _OTHER, counted), those of
    closed windows are dropped, and the alerts and their counts are the same as without the cap."""
    n = 60_000
    msgs = containers(flood(n, T0 + 10**9, 3 * MINUTE_NS, ATTACK, clients=20), batch=10_000)

    def run(max_paths: int) -> tuple[list[dict[str, Any]], AlertsProcessor, Any, int]:
        p = AlertsProcessor(load_rules(None, attack_only()), max_paths=max_paths)
        s = p.new_state()
        docs: list[dict[str, Any]] = []
        most = 0
        for m in msgs:
            b = read_container(m)
            for part in p.route(p.featurize(b, "gen/eth0"), 1).values():
                p.process(s, features.decode(features.encode(features.compact(part))))
                most = max(most, len(s.strings.payload))
            docs += [o.record for o in p.close(s, int(b.columns["ts_ns"].max()))]
            snapshot.unpack(snapshot.pack(p.dump(s)))
        docs += [o.record for o in p.close(s, FOREVER)]
        return docs, p, s, most

    docs, p, s, most = run(500)
    assert most <= 500 and len(s.strings.payload) == 0  # every window closed: no path left
    assert p.figures([s])["paths_folded"] > 0
    fired = [d for d in docs if d["activity_id"] in (1, 2)]
    assert sum(d["unmapped"]["pktstream"]["window_count"] for d in fired) == n
    assert {d["unmapped"]["pktstream"]["key"].split("->")[0] for d in fired} == \
        {f"sql_injection:10.100.0.{c}" for c in range(20)}
    paths = {e["data"]["path"] for d in fired for e in d["evidences"]}
    assert paths <= {"_OTHER"} | {f"/search/{i:07d}" for i in range(n)}
    uncapped = run(10**6)[0]

    def facts(ds: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((d["unmapped"]["pktstream"]["key"], d["activity_id"],
                       d["unmapped"]["pktstream"].get("window_count")) for d in ds)

    assert facts(docs) == facts(uncapped)


def test_alerts_snapshot_over_its_limit_degrades() -> None:
    """Paths first (samples read _OTHER), then baselines, then sample rows per group; the degraded state
    still raises its alerts."""

    attack = flood(3000, T0 + 10**9, 20 * 10**9, ATTACK, clients=3)
    scan = packets([{"ts": T0 + 10**9 + i * 10**7, "src": "198.51.100.9", "dst": "10.1.0.10", "sport": 55555,
                     "dport": 1 + i, "flags": 0x02} for i in range(100)])
    p = AlertsProcessor(load_rules(None, attack_only()), max_paths=10_000)
    s = p.new_state()
    for m in containers(merge(attack, scan), batch=1000):
        for part in p.route(p.featurize(read_container(m), "gen/eth0"), 1).values():
            p.process(s, part)
    keys = np.arange(1, 5001, dtype=np.uint64)
    s.baselines.add(keys, np.ones(5000), np.arange(5000, dtype=np.float64), np.zeros(5000))
    with structlog.testing.capture_logs() as logs:
        snapshot.pack_within(lambda: p.dump(s), lambda: p.degrade(s), 1, partition=0)
    dropped = [e["dropped"] for e in logs if e["event"] == "state_degraded"]
    # baselines: 5000 keys, halved down to 1000
    assert dropped == ["request paths", *["baseline keys"] * 3, "sample rows"] and len(s.baselines) == 1000
    assert len(s.strings.payload) == 0 and p.degrade(s) == {}
    docs = [o.record for o in p.close(p.load(snapshot.unpack(snapshot.pack(p.dump(s)))), FOREVER)]
    creates = [d for d in docs if d["activity_id"] == 1]
    assert sorted(d["unmapped"]["pktstream"]["rule"] for d in creates) == ["http_attack"] * 3 + ["port_scan"]
    assert {e["data"]["path"] for d in creates if d["unmapped"]["pktstream"]["rule"] == "http_attack"
            for e in d["evidences"]} == {"_OTHER"}
    assert next(d for d in creates if d["unmapped"]["pktstream"]["rule"] == "port_scan")["unmapped"]["pktstream"][
        "distinct"] == 100


def test_state_strings_drop_only_what_payloads_brought() -> None:
    from pktstream.consumers.alerts.tables import StateStrings

    s = StateStrings(limit=2)
    origin = s.add("gen/eth0")
    a, b = s.add_payload("/a"), s.add_payload("/b")
    assert s.add_payload("/c") == s.index["_OTHER"] and s.folded == 1  # past the cap
    assert s.add("/a") == a and a not in s.payload  # brought by a payload, then named elsewhere: kept
    assert s.drop_payload(np.zeros(0, np.int64)) == 1 and "/b" not in s.index and len(s.payload) == 0
    assert s.add_payload("/c") == b and s.items[origin] == "gen/eth0"  # b's number, given out again
    back = StateStrings(list(s.items), list(s.free), 2, sorted(s.payload), s.folded)
    assert back.index == s.index and back.payload == s.payload
