"""The activity consumer's conversation table without Kafka: how each kind of conversation ends and
what its record says, checked field by field, and by the official OCSF 1.3.0 schema."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pktstream.consumers.activity.processor import ActivityProcessor
from pktstream.consumers.engine.runner import FOREVER, Output
from pktstream.schemas.columns import read_container
from tests.support.activity import run
from tests.support.communityid_ref import reference as cid  # the PyPI package's
from tests.support.ocsf import validator
from tests.support.traffic import client_hello, containers, packets

SEC = 1_000_000_000
T0 = 1_800_000_000 * SEC
FIN, SYN, RST, PSH, ACK = 1, 2, 4, 8, 16
C, S = "10.9.0.2", "10.9.0.1"


def tcp(t: int, src: str, dst: str, sport: int, dport: int, flags: int, n: int = 0, **kw: Any) -> dict[str, Any]:
    return {"ts": t, "src": src, "dst": dst, "sport": sport, "dport": dport, "flags": flags, "len": 54 + n,
            "payload": kw.pop("payload", b"x" * n), **kw}


def handshake(t: int, cport: int, close: str = "fin") -> list[dict[str, Any]]:
    ms = 1_000_000
    p = [tcp(t, C, S, cport, 80, SYN), tcp(t + ms, S, C, 80, cport, SYN | ACK),
         tcp(t + 2 * ms, C, S, cport, 80, ACK),
         tcp(t + 3 * ms, C, S, cport, 80, PSH | ACK, 100), tcp(t + 5 * ms, S, C, 80, cport, PSH | ACK, 300)]
    if close == "fin":
        p += [tcp(t + 6 * ms, C, S, cport, 80, FIN | ACK), tcp(t + 7 * ms, S, C, 80, cport, FIN | ACK),
              tcp(t + 8 * ms, C, S, cport, 80, ACK)]
    elif close == "rst-client":
        p += [tcp(t + 6 * ms, C, S, cport, 80, RST | ACK)]
    elif close == "rst-server":
        p += [tcp(t + 6 * ms, S, C, 80, cport, RST | ACK)]
    return p


def finals(out: list[Output]) -> list[dict[str, Any]]:
    return [d for d in docs_of(out) if d["unmapped"]["pktstream"]["final"]]


def docs_of(out: list[Output]) -> list[dict[str, Any]]:
    return [json.loads(o.value) for o in out]


def assert_ocsf(docs: list[dict[str, Any]]) -> None:
    v = validator("1.3.0", "network_activity")
    bad = [f"{e.json_path}: {e.message[:160]}" for d in docs for e in v.iter_errors(d)]
    assert not bad, bad[:5]


@pytest.mark.parametrize(("close", "state", "activity", "out_p", "in_p"), [
    ("fin", "SF", "Close", 5, 3),
    ("rst-client", "RSTO", "Reset", 4, 2),
    ("rst-server", "RSTR", "Reset", 3, 3),
    ("none", "S1", "Traffic", 3, 2),
])
def test_a_tcp_conversation_is_one_record_with_both_directions(close: str, state: str, activity: str, out_p: int,
                                                               in_p: int) -> None:
    pk = handshake(T0, 40001, close)
    out = run(pk)
    docs = finals(out)
    # (one still open at the end of the input is written as a live read would go on: begun on a boundary,
    # it has its update at the next, a minute on, before its end at --tcp-idle-s)
    assert len(docs) == 1 and len(out) == (2 if close == "none" else 1)
    d = docs[0]
    assert d["activity_name"] == activity and d["status_code"] == state
    assert d["src_endpoint"] == {"ip": C, "port": 40001} and d["dst_endpoint"] == {"ip": S, "port": 80}
    t = d["traffic"]
    out_b = sum(x["len"] for x in pk if x["src"] == C)
    in_b = sum(x["len"] for x in pk if x["src"] == S)
    assert t == {"packets_out": out_p, "packets_in": in_p, "packets": out_p + in_p, "bytes_out": out_b,
                 "bytes_in": in_b, "bytes": out_b + in_b}
    assert d["start_time"] == T0 // 1_000_000
    assert d["end_time"] == max(x["ts"] for x in pk) // 1_000_000
    assert d["unmapped"]["pktstream"]["community_id"] == cid(C, S, 6, 40001, 80)
    assert d["unmapped"]["pktstream"]["seen_by"] == ["h/eth0"]
    assert d["connection_info"]["protocol_name"] == "tcp" and d["connection_info"]["direction"] == "Lateral"
    assert_ocsf(docs)


def test_refused_attempted_and_half_open() -> None:
    ms = 1_000_000
    pk = [
        tcp(T0, C, S, 40010, 81, SYN), tcp(T0 + ms, S, C, 81, 40010, RST | ACK),  # refused
        tcp(T0, C, S, 40011, 82, SYN), tcp(T0 + SEC, C, S, 40011, 82, SYN),  # no answer
        tcp(T0, C, S, 40012, 83, SYN), tcp(T0 + ms, C, S, 40012, 83, FIN),  # SYN then FIN
        tcp(T0, C, S, 40013, 84, SYN), tcp(T0 + ms, C, S, 40013, 84, RST),  # SYN then RST
        tcp(T0, C, S, 40014, 85, PSH | ACK, 10), tcp(T0 + ms, S, C, 85, 40014, ACK),  # midstream
    ]
    by_port = {d["dst_endpoint"]["port"]: d for d in finals(run(pk))}
    got = {p: (d["status_code"], d["activity_name"], d["traffic"]["packets_out"], d["traffic"]["packets_in"])
           for p, d in by_port.items()}
    assert got == {81: ("REJ", "Refuse", 1, 1), 82: ("S0", "Fail", 2, 0), 83: ("SH", "Fail", 2, 0),
                   84: ("RSTOS0", "Reset", 2, 0), 85: ("OTH", "Traffic", 1, 1)}
    assert_ocsf(list(by_port.values()))


def test_udp_icmp_tls_name_and_sampling() -> None:
    ms = 1_000_000
    pk = [
        {"ts": T0, "src": C, "dst": S, "sport": 5353, "dport": 53, "proto": 17, "len": 80, "flags": 0},
        {"ts": T0 + ms, "src": S, "dst": C, "sport": 53, "dport": 5353, "proto": 17, "len": 120, "flags": 0},
        {"ts": T0, "src": C, "dst": S, "sport": 8, "dport": 0, "proto": 1, "len": 98, "flags": 0},
        {"ts": T0 + ms, "src": S, "dst": C, "sport": 0, "dport": 0, "proto": 1, "len": 98, "flags": 0},
        tcp(T0, C, S, 40020, 443, SYN, sample_rate=4),
        tcp(T0 + ms, S, C, 443, 40020, SYN | ACK, sample_rate=4),
        tcp(T0 + 2 * ms, C, S, 40020, 443, PSH | ACK, payload=client_hello("pay.shop.test"), sample_rate=4),
    ]
    docs = {d["connection_info"]["protocol_name"]: d for d in finals(run(pk, batch=2))}
    u = docs["udp"]
    assert (u["status_code"], u["traffic"]["bytes_out"], u["traffic"]["bytes_in"]) == ("BOTH", 80, 120)
    assert u["unmapped"]["pktstream"]["community_id"] == cid(C, S, 17, 5353, 53)
    i = docs["icmp"]
    assert (i["src_endpoint"], i["traffic"]["packets_out"], i["traffic"]["packets_in"]) == ({"ip": C}, 1, 1)
    assert i["unmapped"]["pktstream"]["community_id"] == cid(C, S, 1, 8, 0)
    t = docs["tcp"]
    assert t["dst_endpoint"]["hostname"] == "pay.shop.test"
    assert t["unmapped"]["pktstream"]["sampled"] is True
    assert t["traffic"]["packets_out"] == 8 and t["traffic"]["packets_in"] == 4  # scaled by the rate
    assert_ocsf(list(docs.values()))


def test_a_closed_conversation_waits_for_linger_and_port_reuse_starts_another() -> None:
    p = ActivityProcessor(grace_s=1, linger_s=5)
    first = handshake(T0, 40030)
    again = handshake(T0 + 3 * SEC, 40030)  # the same ports again, 3 s later
    out = run(first + again, p, batch=3, watermarks=[T0 + 2 * SEC])
    docs = finals(out)
    assert [d["status_code"] for d in docs] == ["SF", "SF"]
    assert [d["start_time"] for d in docs] == [T0 // 1_000_000, (T0 + 3 * SEC) // 1_000_000]
    assert all(d["traffic"]["packets"] == 8 for d in docs)
    # written once the watermark is past the last packet + linger (+ grace), not before
    p = ActivityProcessor(grace_s=1, linger_s=5)
    st = p.new_state()
    p.process(st, p.featurize(read_container(containers(packets(first), batch=100)[0]), "h/eth0"))
    assert p.close(st, T0 + 6 * SEC) == []  # last packet T0 + 8 ms: 5.008 s after it is not yet reached
    assert [d["status_code"] for d in docs_of(p.close(st, T0 + 7 * SEC))] == ["SF"]
    assert p.close(st, FOREVER) == [] and not st.index


def test_a_long_conversation_gets_traffic_updates_with_totals_before_each_boundary() -> None:
    p = ActivityProcessor(grace_s=1, update_s=10)
    start = T0 + 3 * SEC  # boundaries at T0 + 10 s, 20 s, ...
    pk = [tcp(start, C, S, 40040, 80, SYN), tcp(start + 1000, S, C, 80, 40040, SYN | ACK)]
    pk += [tcp(start + k * SEC, C, S, 40040, 80, PSH | ACK, 10) for k in range(1, 35)]  # to T0 + 37 s
    pk += [tcp(start + 35 * SEC, C, S, 40040, 80, FIN | ACK), tcp(start + 35 * SEC + 1, S, C, 80, 40040, FIN | ACK)]
    marks = [T0 + k * SEC for k in range(5, 60, 4)]
    out = run(pk, p, batch=5, watermarks=marks)
    docs = docs_of(out)
    ups = [d for d in docs if not d["unmapped"]["pktstream"]["final"]]
    # the first boundary (T0 + 10 s) comes before the conversation is one interval old
    assert [d["end_time"] for d in ups] == [(T0 + k * SEC) // 1_000_000 for k in (20, 30)]
    assert [d["traffic"]["packets_out"] for d in ups] == [1 + sum(1 for x in pk[2:] if x["ts"] < T0 + k * SEC)
                                                          for k in (20, 30)]
    assert all(d["activity_name"] == "Traffic" and d["status_code"] == "S1" for d in ups)
    fin = finals(out)
    assert len(fin) == 1 and fin[0]["status_code"] == "SF" and fin[0]["traffic"]["packets"] == len(pk)
    assert len({d["connection_info"]["uid"] for d in docs}) == 1
    assert len({d["metadata"]["uid"] for d in docs}) == len(docs)
    # the same input read in other batch sizes, other watermarks and partitions: the same records; and
    # read as a backlog (all of it before the first watermark passes a boundary), the same again
    again = run(pk, ActivityProcessor(grace_s=1, update_s=10), nparts=1, batch=7, watermarks=marks[::2])
    assert sorted(o.value for o in again) == sorted(o.value for o in out)
    backlog = run(pk, ActivityProcessor(grace_s=1, update_s=10), nparts=2, batch=len(pk), watermarks=marks)
    assert sorted(o.value for o in backlog) == sorted(o.value for o in out)
    assert_ocsf(docs)


def test_an_egress_gso_buffer_counts_its_segments_each_with_its_headers() -> None:
    # the server answers with one GSO buffer of 3 segments of 1,448 bytes: on the wire 3 packets of
    # 54 + 1,448 bytes (the record shows one set of headers and the whole payload)
    pk = handshake(T0, 40050)
    pk.append(tcp(T0 + 9_000_000, S, C, 80, 40050, ACK, 3 * 1448, direction=1, segments=3, payload_len=3 * 1448,
                  payload=b"y" * 64))
    d = finals(run(pk))[0]
    assert d["traffic"]["packets_in"] == 3 + 3
    assert d["traffic"]["bytes_in"] == sum(x["len"] for x in pk[:-1] if x["src"] == S) + 3 * (54 + 1448)


def test_a_full_table_ends_the_conversations_seen_least_lately_and_an_unanswered_attempt_ends_sooner() -> None:
    # a SYN sweep of 40 ports; the table holds 10: the oldest end early, each written once, evicted
    p = ActivityProcessor(grace_s=1, max_conversations=10)
    pk = [tcp(T0 + i * 1_000_000, C, S, 41000 + i, 1000 + i, SYN) for i in range(40)]
    docs = finals(run(pk, p, nparts=1, batch=5))  # (the limit is per partition)
    assert sorted(d["dst_endpoint"]["port"] for d in docs) == [1000 + i for i in range(40)]
    evicted = [d for d in docs if d["unmapped"]["pktstream"].get("evicted")]
    assert 30 <= len(evicted) < 40 and all(d["status_code"] == "S0" for d in docs)
    assert max(d["dst_endpoint"]["port"] for d in evicted) < min(d["dst_endpoint"]["port"] for d in docs
                                                                 if d not in evicted)
    # a flood of unanswered SYNs evicts its own attempts first, not an established conversation
    p = ActivityProcessor(grace_s=1, max_conversations=10)
    pk = handshake(T0, 42000, close="none")
    pk += [tcp(T0 + SEC + i * 1_000_000, "10.66.0.9", S, 41000 + i, 80, SYN) for i in range(40)]
    docs = finals(run(pk, p, nparts=1, batch=5))
    est = [d for d in docs if d["src_endpoint"]["port"] == 42000]
    assert len(est) == 1 and "evicted" not in est[0]["unmapped"]["pktstream"] and est[0]["status_code"] == "S1"
    # attempts end after --attempt-s (30 s), an answered conversation after --tcp-idle-s (300 s)
    p = ActivityProcessor(grace_s=0)
    st = p.new_state()
    both = [tcp(T0, C, S, 41100, 80, SYN), tcp(T0 + 1, C, S, 41101, 80, SYN), tcp(T0 + 2, S, C, 80, 41101, SYN | ACK)]
    p.process(st, p.featurize(read_container(containers(packets(both), batch=100)[0]), "h/eth0"))
    assert [d["status_code"] for d in docs_of(p.close(st, T0 + 31 * SEC))] == ["S0"]
    assert p.close(st, T0 + 299 * SEC) == []
    assert [d["status_code"] for d in docs_of(p.close(st, T0 + 301 * SEC))] == ["S1"]


def test_review_mends_order_names_states_and_buffers() -> None:
    # every boundary a close passes gets its update, and the final comes after the last of them
    p = ActivityProcessor(grace_s=0, update_s=10)
    pk = [{"ts": T0 + k * 5 * SEC + 1, "src": C, "dst": S, "sport": 5000, "dport": 514, "proto": 17, "len": 90,
           "flags": 0} for k in range(24)]  # UDP every 5 s for 2 minutes
    out = run(pk, p, nparts=1, batch=len(pk), watermarks=[T0 + 300 * SEC])
    docs = docs_of(out)
    assert [d["unmapped"]["pktstream"]["final"] for d in docs] == [False] * 11 + [True]
    assert [d["time"] for d in docs] == sorted(d["time"] for d in docs)  # the final's: its last update's
    assert [d["traffic"]["packets"] for d in docs[:-1]] == [2 * k for k in range(2, 13)]  # before 20 s, .. 120 s
    assert docs[-1]["end_time"] == (T0 + 115 * SEC) // 1_000_000 and docs[-1]["traffic"]["packets"] == 24
    # a server name OCSF's hostname pattern refuses stays out of dst_endpoint, in unmapped
    odd = "my_svc.internal\x1b[2J"
    pk = [tcp(T0, C, S, 40060, 443, SYN), tcp(T0 + 1, S, C, 443, 40060, SYN | ACK),
          tcp(T0 + 2, C, S, 40060, 443, PSH | ACK, payload=client_hello(odd))]
    d = finals(run(pk))[0]
    assert "hostname" not in d["dst_endpoint"]
    assert d["unmapped"]["pktstream"]["tls_server_name"] == odd.lower()
    assert_ocsf([d])
    # no SYN-ACK seen (sampled out) but the server sent data and a FIN: established and closed
    pk = [tcp(T0, C, S, 40070, 80, SYN), tcp(T0 + 2, C, S, 40070, 80, PSH | ACK, 10),
          tcp(T0 + 3, S, C, 80, 40070, PSH | ACK, 10), tcp(T0 + 4, C, S, 40070, 80, FIN | ACK),
          tcp(T0 + 5, S, C, 80, 40070, FIN | ACK)]
    assert finals(run(pk))[0]["status_code"] == "SF"
    # a BIG TCP buffer whose record says no payload length: its bytes as they are, no header guess
    pk = [tcp(T0, S, C, 80, 40080, ACK, 0, direction=1, segments=131, len=190066, payload_len=0)]
    d = finals(run(pk))[0]
    assert (d["traffic"]["packets_in"], d["traffic"]["bytes_in"]) == (131, 190066)


def _live_and_backlog(pk: list[dict[str, Any]], **kw: Any) -> tuple[list[bytes], list[bytes]]:
    """The records of a live read (a message per packet, a close after each) and of a backlog (all in one
    message, then the closes)."""
    marks = sorted({x["ts"] + 1 for x in pk} | {max(x["ts"] for x in pk) + 1000 * SEC})
    live = run(pk, ActivityProcessor(grace_s=0, **kw), nparts=1, batch=1, watermarks=marks)
    backlog = run(pk, ActivityProcessor(grace_s=0, **kw), nparts=1, batch=len(pk), watermarks=marks)
    return sorted(o.value for o in live), sorted(o.value for o in backlog)


@pytest.mark.parametrize("case", ["reuse", "refused_thrice", "ntp", "syn_retry", "fin_again", "long_then_gap",
                                  "server_only", "exact_timeout", "fins_at_linger", "answer_kept_apart"])
def test_conversations_are_cut_by_the_packets_times_whatever_the_batches(case: str) -> None:
    ms = 1_000_000
    if case == "reuse":  # the same ports again 3 s later
        pk, want = handshake(T0, 40090) + handshake(T0 + 3 * SEC, 40090), ["SF", "SF"]
    elif case == "refused_thrice":  # a refused port retried from one source port
        pk = [p for i in range(3) for p in (tcp(T0 + i * 100 * ms, C, S, 40091, 81, SYN),
                                            tcp(T0 + i * 100 * ms + 1, S, C, 81, 40091, RST | ACK))]
        want = ["REJ"] * 3
    elif case == "ntp":  # fixed-port UDP quieter than --udp-idle-s (60 s)
        pk = [p for i in range(3) for p in (
            {"ts": T0 + i * 100 * SEC, "src": C, "dst": S, "sport": 123, "dport": 123, "proto": 17, "len": 90},
            {"ts": T0 + i * 100 * SEC + ms, "src": S, "dst": C, "sport": 123, "dport": 123, "proto": 17, "len": 90})]
        want = ["BOTH"] * 3
    elif case == "syn_retry":  # a SYN again after --attempt-s (30 s)
        pk, want = [tcp(T0, C, S, 40092, 82, SYN), tcp(T0 + 40 * SEC, C, S, 40092, 82, SYN)], ["S0", "S0"]
    elif case == "fin_again":  # the server's FIN-ACK again 7 s after the close (--linger-s 5)
        pk = [*handshake(T0, 40093), tcp(T0 + 7 * SEC, S, C, 80, 40093, FIN | ACK)]
        want = ["OTH", "SF"]
    elif case == "long_then_gap":  # UDP every 5 s for 50 s (updates each 10 s), silent 70 s, again
        pk = [{"ts": T0 + k * 5 * SEC, "src": C, "dst": S, "sport": 5004, "dport": 5004, "proto": 17, "len": 90}
              for k in range(11)]
        pk.append({**pk[0], "ts": T0 + 120 * SEC})
        want = ["ONE", "ONE"]
    elif case == "server_only":  # only the server's side captured: data every 45 s (answered: 300 s idle)
        pk = [tcp(T0 + k * 45 * SEC, S, C, 443, 40094, PSH | ACK, 100) for k in range(6)]
        want = ["OTH"]
    elif case == "exact_timeout":  # a packet exactly --udp-idle-s (60 s) after the last
        pk = [{"ts": T0 + k * 60 * SEC, "src": C, "dst": S, "sport": 5005, "dport": 53, "proto": 17, "len": 90}
              for k in range(2)]
        want = ["ONE", "ONE"]
    elif case == "fins_at_linger":  # FINs each way, then the server's again exactly --linger-s (5 s) later
        pk = [tcp(T0 + 9 * SEC, C, S, 40096, 80, FIN | ACK), tcp(T0 + 14 * SEC, S, C, 80, 40096, FIN | ACK),
              tcp(T0 + 19 * SEC, S, C, 80, 40096, FIN | ACK)]
        want = ["OTH", "OTH"]
    else:  # the server's answer read ahead of the watermark (kept apart) still makes the conversation answered
        pk = [tcp(T0 + 341 * SEC + 2 * ms, C, S, 40097, 80, ACK),
              tcp(T0 + 370 * SEC + 3 * ms, S, C, 80, 40097, PSH | ACK, 10),
              tcp(T0 + 400 * SEC + 3 * ms, C, S, 40097, 80, PSH | ACK, 10)]
        want = ["OTH"]
    kw = {"update_s": 10} if case in ("long_then_gap", "answer_kept_apart") else {}
    live, backlog = _live_and_backlog(pk, **kw)
    assert live == backlog
    docs = [json.loads(v) for v in live]
    assert sorted(d["status_code"] for d in docs if d["unmapped"]["pktstream"]["final"]) == want
    assert sum(d["traffic"]["packets"] for d in docs if d["unmapped"]["pktstream"]["final"]) == len(pk)


def test_a_flood_from_one_source_port_is_cut_a_bounded_number_of_times_per_batch() -> None:
    from pktstream.consumers.activity.processor import MAX_CUTS

    n = MAX_CUTS + 44
    pk = [p for i in range(n) for p in (tcp(T0 + i * 1_000_000, C, S, 40095, 81, SYN),
                                        tcp(T0 + i * 1_000_000 + 1, S, C, 81, 40095, RST | ACK))]
    docs = finals(run(pk, ActivityProcessor(grace_s=0), nparts=1, batch=len(pk)))
    assert len(docs) == MAX_CUTS + 1  # the rest of the batch counted together
    assert sum(d["traffic"]["packets"] for d in docs) == len(pk)
    assert len(finals(run(pk, ActivityProcessor(grace_s=0), nparts=1, batch=2))) == n  # one a message: each
