"""Secrets never reach Kafka: redaction of payload prefixes and the payload scope."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pktstream.producer.privacy import PayloadScope, redact
from pktstream.schemas.record import record_dtype

WIDTH = 256


def batch(payloads: list[bytes], width: int = WIDTH) -> np.ndarray:
    recs = np.zeros(len(payloads), dtype=record_dtype(width))
    for i, p in enumerate(payloads):
        p = p[:width]
        recs["payload"][i, : len(p)] = np.frombuffer(p, dtype=np.uint8)
        recs["cap_len"][i] = len(p)
        recs["payload_len"][i] = len(p)
    return recs


def payloads_of(recs: np.ndarray) -> list[bytes]:
    return [bytes(r["payload"][: r["cap_len"]]) for r in recs]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"GET /v1/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer eyJhbGciOi.abc\r\n\r\n",
         b"GET /v1/x HTTP/1.1\r\nHost: a\r\nAuthorization: *********************\r\n\r\n"),
        (b"GET /p?id=7&access_token=s3cr3t&x=1 HTTP/1.1\r\nCOOKIE: sid=42; a=b\r\n",
         b"GET /p?id=7&access_token=******&x=1 HTTP/1.1\r\nCOOKIE: ***********\r\n"),
        (b"POST /login?API_KEY=k1 HTTP/1.1\r\nx-api-key: zz\r\nproxy-authorization: Basic YQ==\r\n",
         b"POST /login?API_KEY=** HTTP/1.1\r\nx-api-key: **\r\nproxy-authorization: **********\r\n"),
        (b"GET /search?q=token&keyword=1 HTTP/1.1\r\n", b"GET /search?q=token&keyword=1 HTTP/1.1\r\n"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
    ],
    ids=["bearer", "query-and-cookie", "api-keys", "no-secret", "tls"],
)
def test_redaction(raw: bytes, expected: bytes) -> None:
    recs = batch([raw])
    assert redact(recs) == (0 if raw == expected else 1)
    assert payloads_of(recs) == [expected]


def test_cut_prefix_redacts_what_is_there() -> None:
    raw = b"GET / HTTP/1.1\r\nAuthorization: Basic dXNlcjpwYXNz"
    recs = batch([raw], width=40)
    redact(recs)
    assert payloads_of(recs) == [b"GET / HTTP/1.1\r\nAuthorization: Basic d"[:16] + b"Authorization: " + b"*" * 9]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8),
       st.sampled_from([b"Authorization: ", b"cookie:", b"X-Api-Key:", b"GET /?token=", b"\r\n", b"&", b"?"]))
def test_redaction_fuzz(parts: list[bytes], glue: bytes) -> None:
    raw = glue.join(parts)
    recs = batch([raw, raw])
    recs["payload"][1, 200:] = 0xAB  # bytes past cap_len must stay untouched
    recs["cap_len"][1] = min(len(raw), 200)
    before_tail = recs["payload"][1, 200:].copy()
    redact(recs)
    once = payloads_of(recs)
    assert [len(p) for p in once] == [min(len(raw), WIDTH), min(len(raw), 200)]  # lengths never change
    assert (recs["payload"][1, 200:] == before_tail).all()
    redact(recs)
    assert payloads_of(recs) == once  # idempotent
    for p in once:  # a secret header line keeps no value bytes but '*'
        for line in p.split(b"\n"):
            if line.lower().startswith((b"authorization:", b"cookie:", b"x-api-key:")):
                value = line.split(b":", 1)[1].lstrip(b" ").split(b"\r")[0]
                assert set(value) <= {ord("*")}


def test_scope_by_port_and_network() -> None:
    recs = batch([b"a" * 10, b"b" * 10, b"c" * 10])
    recs["dst_port"] = [80, 443, 8080]
    recs["src_addr"][:, 10:12] = 0xFF
    recs["src_addr"][:, 12:] = [[10, 0, 0, 1], [10, 0, 0, 2], [192, 168, 1, 1]]
    s = PayloadScope(ports=[80, 8080], networks=["10.0.0.0/8", "2001:db8::/32"])
    assert s.apply(recs) == 2
    assert payloads_of(recs) == [b"a" * 10, b"", b""]
    assert list(recs["payload_len"]) == [10, 10, 10]  # only the bytes go
    assert PayloadScope().everything
