"""DNS lookups: the parser against messages scapy's DNS layer encodes (an encoder we did not write),
cut at every length; and the activity consumer's DNS Activity records (pairing, timeouts, answers
the prefix lacks, retransmissions, snapshots, live equal to backlog), each valid by OCSF's schema."""

from __future__ import annotations

import json
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRRMX, DNSRRSOA, DNSRRSRV

from pktstream.consumers.activity.processor import ActivityProcessor
from pktstream.consumers.engine import dns
from tests.support.activity import run
from tests.support.communityid_ref import reference as cid
from tests.support.ocsf import validator

SEC = 1_000_000_000
MS = 1_000_000
T0 = 1_800_000_000 * SEC
C, S = "10.9.0.2", "10.9.0.1"


def answer_records() -> list[Any]:
    return [DNSRR(rrname="www.example.com", type="CNAME", rdata="web.example.com", ttl=30),
            DNSRR(rrname="web.example.com", type="A", rdata="10.1.2.3", ttl=60),
            DNSRR(rrname="web.example.com", type="AAAA", rdata="2001:db8::1", ttl=61),
            DNSRR(rrname="web.example.com", type="TXT", rdata=['v=spf1 "q"', "x"], ttl=5),
            DNSRRMX(rrname="example.com", exchange="mx.example.org", preference=10, ttl=7),
            DNSRRSRV(rrname="_sip._tcp.example.com", target="sip.example.com", port=5060, priority=1, weight=5),
            DNSRRSOA(rrname="example.com", mname="ns.example.com", rname="host.example.com", serial=2026120701,
                     refresh=7200, retry=900, expire=1209600, minimum=300),
            DNSRR(rrname="example.com", type=99 + 1000, rdata=b"\x01\x02")]


WANT = [(5, 1, 30, "web.example.com"), (1, 1, 60, "10.1.2.3"), (28, 1, 61, "2001:db8::1"),
        (16, 1, 5, '"v=spf1 \\"q\\"" "x"'), (15, 1, 7, "10 mx.example.org"), (33, 1, 0, "1 5 5060 sip.example.com"),
        (6, 1, 0, "ns.example.com host.example.com 2026120701 7200 900 1209600 300"), (1099, 1, 0, "\\# 2 0102")]


def response(ident: int = 77, rcode: int = 0, qname: str = "www.example.com", an: list[Any] | None = None) -> bytes:
    return bytes(DNS(id=ident, qr=1, rd=1, ra=1, rcode=rcode, qd=[DNSQR(qname=qname, qtype="A")],
                     an=an if an is not None else answer_records()))


def query(ident: int = 77, qname: str = "www.example.com", qtype: str = "A") -> bytes:
    return bytes(DNS(id=ident, rd=1, qd=[DNSQR(qname=qname, qtype=qtype)]))


def test_parser_reads_what_scapy_encodes() -> None:
    m = dns.parse(response())
    assert m is not None and m.response and m.id == 77 and m.rcode == 0 and m.ancount == 8 and not m.cut
    assert (m.qname, m.qtype, m.qclass) == ("www.example.com", 1, 1)
    assert m.answers == WANT
    q = dns.parse(query(5, "Mixed.Case.example", "AAAA"))
    assert q is not None and not q.response and (q.qname, q.qtype, q.answers) == ("Mixed.Case.example", 28, [])
    # over TCP: after the two-byte length
    raw = response()
    t = dns.parse(len(raw).to_bytes(2, "big") + raw, tcp=True)
    assert t is not None and t.answers == WANT
    # names with bytes outside letters and digits: presentation form (RFC 1035 escapes)
    raw = bytes(12) + b"\x03a.b\x02c\x00\x07example\x00\x00\x01\x00\x01"
    odd = dns.parse(raw[:5] + b"\x01" + raw[6:])
    assert odd is not None and odd.qname == "a\\.b.c\\000.example"


def test_every_cut_of_a_message_gives_a_prefix_of_its_answers_and_never_raises() -> None:
    raw = response()
    full = dns.parse(raw)
    assert full is not None
    question_end = 12 + len("www.example.com") + 2 + 4
    for n in range(len(raw)):
        m = dns.parse(raw[:n])
        if n < question_end:  # the question cut: no lookup
            assert m is None
            continue
        assert m is not None and m.id == 77 and m.ancount == 8 and m.cut and m.qname == "www.example.com"
        assert m.answers == full.answers[: len(m.answers)]


@pytest.mark.parametrize("raw", [
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # a pointer to itself
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x20\x00\x01\x00\x01",  # a pointer forwards
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x40\x00\x00\x01\x00\x01",  # an extended label type
    b"\x00\x01\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01",  # two questions
    b"\x00\x01\x79\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01",  # opcode 15
    b"\x00\x01\x01\x00\x00\x01" + b"\x00" * 6 + b"\x3f" * 300,  # a name longer than 255 bytes
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x01\x41\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x00\x00\x01\x00\x01",  # a pointer into the header
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x20" + b"a" * 20,  # a question the prefix cuts
])
def test_malformed_messages_are_not_lookups(raw: bytes) -> None:
    # (twice, with another id: the cache of messages read gives the same answer)
    for r in (raw, b"\x01\x42" + raw[2:]):
        assert dns.parse(r) is None
        assert dns.parse(len(r).to_bytes(2, "big") + r, tcp=True) is None


def test_a_name_in_an_answer_ends_within_its_data() -> None:
    """A CNAME whose declared length is shorter than its name: the answer is not read (nor any after
    it, whose place is then unknown), not read from the next record's bytes."""
    q = query(1)
    head = bytes.fromhex("0001818000010002 00000000".replace(" ", ""))
    cname = b"\x03web\xc0\x10"
    bad = b"\xc0\x0c" + bytes.fromhex("0005000100000005") + (2).to_bytes(2, "big") + cname
    good = b"\xc0\x0c" + bytes.fromhex("000100010000003c0004") + bytes([10, 0, 0, 1])
    m = dns.parse(head + q[12:] + bad + good)
    assert m is not None and m.answers == []


def udp(t: int, src: str, dst: str, sport: int, dport: int, payload: bytes, **kw: Any) -> dict[str, Any]:
    return {"ts": t, "src": src, "dst": dst, "sport": sport, "dport": dport, "proto": 17, "flags": 0,
            "len": 42 + len(payload), "payload": payload, "payload_len": len(payload), **kw}


def lookups(out: list[Any]) -> list[dict[str, Any]]:
    docs = [json.loads(o.value) for o in out if o.topic == "pktstream.dns"]
    v = validator("1.3.0", "dns_activity")
    bad = [f"{e.json_path}: {e.message[:160]}" for d in docs for e in v.iter_errors(d)]
    assert not bad, bad[:5]
    return docs


def traffic() -> list[dict[str, Any]]:
    short = response(an=[DNSRR(rrname="api.example.com", type="A", rdata="10.1.2.4", ttl=60)],
                     qname="api.example.com")
    tq, ta = query(11, "api.example.com"), short_(11)
    return [
        # answered after 12 ms, by a response whose answers the 128-byte prefix cuts
        udp(T0, C, S, 40001, 53, query(77)), udp(T0 + 12 * MS, S, C, 53, 40001, response(77), direction=1),
        # refused, and a name that does not exist
        udp(T0 + SEC, C, S, 40002, 53, query(8, "x.test")),
        udp(T0 + SEC + 2 * MS, S, C, 53, 40002, response(8, 5, "x.test", an=[]), direction=1),
        udp(T0 + SEC, C, S, 40003, 53, query(9, "nope.example.com")),
        udp(T0 + SEC + 3 * MS, S, C, 53, 40003, response(9, 3, "nope.example.com", an=[]), direction=1),
        # unanswered, sent three times (a resolver's retries)
        *[udp(T0 + 2 * SEC + k * SEC, C, S, 40004, 53, query(10, "slow.example.com")) for k in range(3)],
        # an answer whose query was not seen
        udp(T0 + 3 * SEC, S, C, 53, 40005, short, direction=1),
        # over TCP: the query's segment and the answer's (each begins with the message's length)
        {"ts": T0 + 4 * SEC, "src": C, "dst": S, "sport": 40006, "dport": 53, "flags": 0x18,
         "len": 54 + 2 + len(tq), "payload": len(tq).to_bytes(2, "big") + tq, "payload_len": 2 + len(tq)},
        {"ts": T0 + 4 * SEC + 5 * MS, "src": S, "dst": C, "sport": 53, "dport": 40006, "flags": 0x18,
         "len": 54 + 2 + len(ta), "payload": len(ta).to_bytes(2, "big") + ta, "payload_len": 2 + len(ta),
         "direction": 1},
        # a later query in the same conversation with the same id: a lookup of its own
        udp(T0 + 30 * SEC, C, S, 40001, 53, query(77)), udp(T0 + 30 * SEC + MS, S, C, 53, 40001, short,
                                                              direction=1),
    ]


def test_lookups_as_ocsf_dns_activity() -> None:
    docs = lookups(run(traffic(), ActivityProcessor(dns_timeout_s=10)))
    by = {(d["src_endpoint"]["port"], d["start_time"]): d for d in docs}
    assert len(by) == len(docs) == 7
    a = by[(40001, T0 // MS)]
    assert (a["activity_name"], a["rcode"], a["rcode_id"], a["duration"]) == ("Traffic", "NoError", 0, 12)
    assert a["query"] == {"hostname": "www.example.com", "type": "A", "class": "IN", "opcode": "Query",
                          "opcode_id": 0, "packet_uid": 77}
    pk = a["unmapped"]["pktstream"]
    assert pk["latency_us"] == 12_000 and pk["answered"] and pk["answer_count"] == 8
    # the test's prefix is 128 bytes: the answers it holds, in order, and a flag that some are missing
    got = [(x["type"], x["ttl"], x["rdata"]) for x in a["answers"]]
    assert got == [(dns.type_name(t), ttl, r) for t, _c, ttl, r in WANT[: len(got)]] and 0 < len(got) < 8
    assert pk["answers_cut"] and a["answers"][0]["flag_ids"] == [3, 4]
    assert a["traffic"] == {"packets_out": 1, "packets_in": 1, "bytes_out": len(query(77)),
                            "bytes_in": len(response(77)), "packets": 2, "bytes": len(query(77)) + len(response(77))}
    assert (a["src_endpoint"], a["dst_endpoint"]) == ({"ip": C, "port": 40001}, {"ip": S, "port": 53})
    assert pk["community_id"] == cid(C, S, 17, 40001, 53)
    assert (by[(40002, (T0 + SEC) // MS)]["rcode"], by[(40003, (T0 + SEC) // MS)]["rcode"]) == ("Refused", "NXDomain")
    slow = by[(40004, (T0 + 2 * SEC) // MS)]
    assert (slow["activity_name"], slow["unmapped"]["pktstream"]["answered"]) == ("Query", False)
    assert slow["unmapped"]["pktstream"]["retransmissions"] == 2 and slow["traffic"]["packets_out"] == 3
    assert "rcode" not in slow and "answers" not in slow
    orphan = by[(40005, (T0 + 3 * SEC) // MS)]
    assert orphan["activity_name"] == "Response" and orphan["query"]["hostname"] == "api.example.com"
    assert orphan["answers"][0]["rdata"] == "10.1.2.4"
    t = by[(40006, (T0 + 4 * SEC) // MS)]
    assert t["connection_info"]["protocol_name"] == "tcp" and t["unmapped"]["pktstream"]["tcp"]
    assert (t["duration"], t["answers"][0]["rdata"], t["traffic"]["bytes_in"]) == (5, "10.1.2.4", len(short_()))
    again = by[(40001, (T0 + 30 * SEC) // MS)]
    assert again["activity_name"] == "Traffic" and again["answers"][0]["rdata"] == "10.1.2.4"


def short_(ident: int = 77) -> bytes:
    return response(ident, an=[DNSRR(rrname="api.example.com", type="A", rdata="10.1.2.4", ttl=60)],
                    qname="api.example.com")


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_live_and_backlog_reads_write_the_same_lookups(batch: int) -> None:
    """Watermarks between the messages (a live read, with snapshots and restores between closes) or
    none (a backlog read): the same records, whatever the batches."""
    marks = [T0 + k * SEC // 2 for k in range(80)]
    live = sorted(o.value for o in run(traffic(), ActivityProcessor(grace_s=0.2), batch=batch, watermarks=marks)
                  if o.topic == "pktstream.dns")
    backlog = sorted(o.value for o in run(traffic(), ActivityProcessor(grace_s=0.2), batch=batch)
                     if o.topic == "pktstream.dns")
    assert live == backlog and len(live) == 7


def test_pending_lookups_are_bounded() -> None:
    pkts = [udp(T0 + k * MS, C, S, 30000 + k, 53, query(k, f"h{k}.example.com")) for k in range(40)]
    p = ActivityProcessor(max_dns_pending=10, dns_timeout_s=100)
    docs = lookups(run(pkts, p, nparts=1, batch=40, watermarks=[T0 + 50 * MS]))
    assert len(docs) == 40
    assert sum(bool(d["unmapped"]["pktstream"].get("evicted")) for d in docs) == 30
    assert all(d["activity_name"] == "Query" for d in docs)
