"""HTTP exchanges: the activity consumer's HTTP Activity records (pairing in order with keep-alive and
pipelining, interim answers, timeouts, answers to no request seen, the catalog's API name, redacted
paths, user agents), each valid by OCSF's schema, live reads equal to backlog reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pktstream.consumers.activity.processor import ActivityProcessor
from pktstream.consumers.catalog import Catalog
from tests.support.activity import run
from tests.support.communityid_ref import reference as cid
from tests.support.ocsf import validator

SEC = 1_000_000_000
MS = 1_000_000
T0 = 1_800_000_000 * SEC
C, S = "10.9.0.2", "10.9.0.1"
SYN, ACK, PSH, FIN = 2, 16, 8, 1


def seg(t: int, src: str, dst: str, sport: int, dport: int, payload: bytes, flags: int = PSH | ACK,
        **kw: Any) -> dict[str, Any]:
    return {"ts": t, "src": src, "dst": dst, "sport": sport, "dport": dport, "flags": flags,
            "len": 54 + len(payload), "payload": payload, "payload_len": len(payload), **kw}


def req(t: int, port: int, line: str, host: str = "api.shop.test", extra: str = "") -> dict[str, Any]:
    return seg(t, C, S, port, 80, f"{line} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())


def resp(t: int, port: int, code: int, reason: str = "OK", length: int | None = None) -> dict[str, Any]:
    cl = f"Content-Length: {length}\r\n" if length is not None else ""
    return seg(t, S, C, 80, port, f"HTTP/1.1 {code} {reason}\r\n{cl}\r\n".encode(), direction=1)


def exchanges(out: list[Any]) -> list[dict[str, Any]]:
    docs = [json.loads(o.value) for o in out if o.topic == "pktstream.http"]
    v = validator("1.3.0", "http_activity")
    bad = [f"{e.json_path}: {e.message[:160]}" for d in docs for e in v.iter_errors(d)]
    assert not bad, bad[:5]
    return docs


def traffic() -> list[dict[str, Any]]:
    return [
        seg(T0, C, S, 41000, 80, b"", SYN), seg(T0 + MS, S, C, 80, 41000, b"", SYN | ACK, direction=1),
        # keep-alive: two requests in turn, the second answered after 150 ms
        req(T0 + 2 * MS, 41000, "GET /v1/users/42?token=abc", extra="User-Agent: curl/8.5.0\r\n"),
        resp(T0 + 5 * MS, 41000, 200, length=27),
        req(T0 + 10 * MS, 41000, "POST /v1/orders", extra="Content-Length: 12\r\n"),
        resp(T0 + 160 * MS, 41000, 201, "Created"),
        # pipelined: three requests, then their three answers in order; a 100 Continue before the first
        req(T0 + SEC, 41001, "PUT /v1/files/a"), req(T0 + SEC + MS, 41001, "PATCH /v1/files/b"),
        req(T0 + SEC + 2 * MS, 41001, "DELETE /v1/files/c"),
        resp(T0 + SEC + 3 * MS, 41001, 100, "Continue"), resp(T0 + SEC + 4 * MS, 41001, 204, "No Content"),
        resp(T0 + SEC + 5 * MS, 41001, 409, "Conflict"), resp(T0 + SEC + 6 * MS, 41001, 404, "Not Found"),
        # unanswered; an answer whose request was not seen; a path holding a token
        req(T0 + 2 * SEC, 41002, "GET /slow"),
        resp(T0 + 3 * SEC, 41003, 500, "Internal Server Error"),
        req(T0 + 4 * SEC, 41004, "GET /v1/reset/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"),
        resp(T0 + 4 * SEC + MS, 41004, 302, "Found"),
    ]


CATALOG = Catalog.from_data({"apis": [{"name": "users.get", "host": "api.shop.test", "method": "GET",
                                       "path": "/v1/users/{id}"}]})


def test_exchanges_as_ocsf_http_activity() -> None:
    docs = exchanges(run(traffic(), ActivityProcessor(http_timeout_s=30, catalog=CATALOG)))
    got = [(d["src_endpoint"]["port"], d["unmapped"]["pktstream"]["method"], d["http_response"]["code"],
            d["unmapped"]["pktstream"].get("latency_us")) for d in sorted(docs, key=lambda d: d["start_time"])]
    assert got == [(41000, "GET", 200, 3000), (41000, "POST", 201, 150_000), (41001, "PUT", 204, 4000),
                   (41001, "PATCH", 409, 4000), (41001, "DELETE", 404, 4000), (41002, "GET", 0, None),
                   (41003, "", 500, None), (41004, "GET", 302, 1000)]
    by = {(d["src_endpoint"]["port"], d["unmapped"]["pktstream"]["method"]): d for d in docs}
    g = by[(41000, "GET")]
    assert (g["activity_id"], g["activity_name"], g["duration"]) == (3, "Get", 3)
    assert g["http_request"] == {"http_method": "GET", "url": {"path": "/v1/users/42", "port": 80, "scheme": "http",
                                                               "hostname": "api.shop.test"},
                                 "user_agent": "curl/8.5.0"}
    assert g["http_response"] == {"code": 200, "length": 27, "latency": 3}
    assert g["unmapped"]["pktstream"]["api"] == "users.get" and g["unmapped"]["pktstream"]["answered"]
    assert g["unmapped"]["pktstream"]["community_id"] == cid(C, S, 6, 41000, 80)
    assert by[(41000, "POST")]["http_request"]["length"] == 12
    assert by[(41000, "POST")]["unmapped"]["pktstream"]["api"] == "api.shop.test:80 POST /v1/orders"
    patch = by[(41001, "PATCH")]
    assert (patch["activity_id"], patch["activity_name"]) == (99, "Patch")
    assert "http_method" not in patch["http_request"]
    slow = by[(41002, "GET")]
    assert (slow["http_response"]["code"], slow["unmapped"]["pktstream"]["answered"]) == (0, False)
    orphan = by[(41003, "")]
    assert (orphan["activity_id"], orphan["http_request"], orphan["unmapped"]["pktstream"]["answered"]) == (0, {}, True)
    assert by[(41004, "GET")]["http_request"]["url"]["path"] == "/v1/reset/{token}"


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_live_and_backlog_reads_write_the_same_exchanges(batch: int) -> None:
    marks = [T0 + k * SEC // 4 for k in range(40)]
    live = sorted(o.value for o in run(traffic(), ActivityProcessor(grace_s=0.2, http_timeout_s=1), batch=batch,
                                       watermarks=marks) if o.topic == "pktstream.http")
    backlog = sorted(o.value for o in run(traffic(), ActivityProcessor(grace_s=0.2, http_timeout_s=1), batch=batch)
                     if o.topic == "pktstream.http")
    assert live == backlog and len(live) == 8


def test_a_request_after_the_timeout_is_answered_by_the_next_status_line() -> None:
    """The first request times out; the answer that comes later pairs with the second request."""
    pkts = [req(T0, 42000, "GET /a"), req(T0 + 5 * SEC, 42000, "GET /b"), resp(T0 + 5 * SEC + MS, 42000, 200)]
    docs = exchanges(run(pkts, ActivityProcessor(http_timeout_s=2)))
    assert sorted((d["http_request"]["url"]["path"], d["http_response"]["code"]) for d in docs) == [("/a", 0),
                                                                                                   ("/b", 200)]


def test_pending_exchanges_are_bounded() -> None:
    pkts = [req(T0 + k * MS, 30000 + k, f"GET /r{k}") for k in range(40)]
    docs = exchanges(run(pkts, ActivityProcessor(max_http_pending=10, http_timeout_s=100), nparts=1, batch=40,
                         watermarks=[T0 + 50 * MS]))
    assert len(docs) == 40 and sum(bool(d["unmapped"]["pktstream"].get("evicted")) for d in docs) == 30


def test_record_classes_can_be_left_out() -> None:
    """--records network,dns: no HTTP rows leave stage one, no HTTP records; the conversations stay."""
    out = run(traffic(), ActivityProcessor(records=("network", "dns")))
    every = run(traffic(), ActivityProcessor())
    assert not [o for o in out if o.topic == "pktstream.http"] and [o for o in every if o.topic == "pktstream.http"]
    conns = sorted(o.value for o in out if o.topic == "pktstream.connections")
    assert conns == sorted(o.value for o in every if o.topic == "pktstream.connections") and len(conns) >= 5


def test_a_retransmitted_request_is_one_exchange_and_the_next_ones_stay_paired() -> None:
    """The same request again before its answer (a TCP retransmission) counts on the first: the
    answers that follow pair with the requests they answer."""
    pkts = [req(T0, 43000, "GET /a"), req(T0 + 200 * MS, 43000, "GET /a"), resp(T0 + 205 * MS, 43000, 200),
            req(T0 + 300 * MS, 43000, "GET /b"), resp(T0 + 305 * MS, 43000, 201, "Created"),
            req(T0 + 400 * MS, 43000, "GET /c"), resp(T0 + 405 * MS, 43000, 202, "Accepted")]
    docs = exchanges(run(pkts, ActivityProcessor()))
    got = sorted((d["http_request"]["url"]["path"], d["http_response"]["code"],
                  d["unmapped"]["pktstream"]["latency_us"], d["unmapped"]["pktstream"].get("retransmissions", 0))
                 for d in docs)
    assert got == [("/a", 200, 205_000, 1), ("/b", 201, 5000, 0), ("/c", 202, 5000, 0)]


def test_a_cut_request_line_gives_no_path_and_a_body_gives_no_user_agent() -> None:
    long = "/reset/" + "eyJhbGciOiJIUzI1NiJ9" * 10  # longer than the prefix: the target is cut inside the token
    body = b"POST /form HTTP/1.1\r\nHost: api.shop.test\r\nContent-Length: 30\r\n\r\n\r\nUser-Agent: from-body\r\n"
    pkts = [req(T0, 44000, f"GET {long}"), resp(T0 + MS, 44000, 200),
            seg(T0 + SEC, C, S, 44001, 80, body), resp(T0 + SEC + MS, 44001, 200)]
    docs = {d["src_endpoint"]["port"]: d for d in exchanges(run(pkts, ActivityProcessor()))}
    cut = docs[44000]
    assert cut["unmapped"]["pktstream"]["request_line_cut"] and "url" not in cut["http_request"]
    assert "eyJ" not in json.dumps(cut)
    assert "user_agent" not in docs[44001]["http_request"]


def test_pipelined_requests_that_differ_only_in_their_query_are_not_retransmissions() -> None:
    pkts = [req(T0, 45000, "GET /items?page=1"), req(T0 + MS, 45000, "GET /items?page=2"),
            req(T0 + 2 * MS, 45000, "GET /other"), resp(T0 + 3 * MS, 45000, 200), resp(T0 + 4 * MS, 45000, 201),
            resp(T0 + 5 * MS, 45000, 202)]
    docs = exchanges(run(pkts, ActivityProcessor()))
    assert sorted((d["http_request"]["url"]["path"], d["http_response"]["code"],
                   d["unmapped"]["pktstream"].get("retransmissions", 0)) for d in docs) == [
        ("/items", 200, 0), ("/items", 201, 0), ("/other", 202, 0)]
