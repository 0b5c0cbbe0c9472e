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


# -- credentials in bodies and responses, wherever they sit --------------------------------------

NAMES = ["password", "passwd", "pwd", "secret", "client_secret", "token", "access_token", "refresh_token",
         "id_token", "api_key", "apikey", "private_key", "session"]
PLACES = ["query", "header", "form", "json", "json-nested", "multipart", "set-cookie", "json-response"]


def message(place: str, name: str, secret: bytes, noise: bytes) -> tuple[bytes, int]:
    """An HTTP message with the secret in one place; returns it and the secret's offset."""
    def at(head: bytes, tail: bytes = b"") -> tuple[bytes, int]:
        return head + secret + tail, len(head)

    n = name.encode()
    if place == "query":
        return at(b"GET /login?user=bob&" + n + b"=", b"&x=" + noise + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    if place == "header":
        return at(b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ", b"\r\nAccept: */*\r\n\r\n")
    if place == "form":  # no Content-Type in the prefix: a body segment of its own
        return at(b"user=" + noise + b"&" + n + b"=", b"&remember=1")
    if place == "json":
        return at(b'POST /oauth/token HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{"client_id": "app", "'
                  + n + b'": "', b'", "scope": "' + noise + b'"}')
    if place == "json-nested":
        return at(b'{"data": {"users": [{"name": "' + noise + b'", "creds": {"' + n + b'":"', b'"}}]}}')
    if place == "multipart":
        return at(b'--XyZ\r\nContent-Disposition: form-data; name="user"\r\n\r\n' + noise
                  + b'\r\n--XyZ\r\nContent-Disposition: form-data; name="' + n + b'"\r\n\r\n', b"\r\n--XyZ--\r\n")
    if place == "set-cookie":
        return at(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: sid=", b"; Path=/; HttpOnly\r\n\r\nok")
    # json-response: a token endpoint's answer
    return at(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"token_type":"Bearer","' + n + b'":"',
              b'","expires_in":3600}')


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(PLACES), st.sampled_from(NAMES), st.sampled_from(["lower", "upper", "title"]),
       st.text("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789-._~+/", min_size=6, max_size=40),
       st.text("abcdefghijklmnopqrstuvwxyz0123456789", max_size=30), st.integers(0, WIDTH))
def test_no_byte_of_a_credential_is_published_wherever_it_sits(place: str, name: str, case: str, secret: str,
                                                                noise: str, cut: int) -> None:
    """Generated requests and responses with a credential in a header, the query, a form body, a
    JSON body (at any depth), a multipart field, a Set-Cookie header or a token answer, cut at any
    prefix length: every byte of the secret inside the prefix is '*', and the length is kept."""
    cased = {"lower": name, "upper": name.upper(), "title": name.title()}[case]
    raw, off = message(place, cased, secret.encode(), noise.encode())
    prefix = raw[:cut]
    recs = batch([prefix])
    redact(recs)
    (out,) = payloads_of(recs)
    assert len(out) == len(prefix)
    inside = out[off : min(off + len(secret), len(prefix))]
    assert set(inside) <= {ord("*")}, (place, raw, out)


def test_body_redaction_examples_and_what_stays() -> None:
    raw = [b"POST /login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n"
           b"username=bob&password=hunter2&next=/home",
           b'{"client_id":"app","client_secret":"s3cr3t","nested":{"refresh_token":"r-1","n":1},"pwd":12345}',
           b'--b\r\nContent-Disposition: form-data; name="api_key"\r\n\r\nk-987\r\n--b\r\n'
           b'Content-Disposition: form-data; name="file"\r\n\r\nplain\r\n--b--',
           b"HTTP/1.1 302 Found\r\nSet-Cookie: session=abcdef; Secure\r\nLocation: /\r\n\r\n",
           b"GET /search?q=password&keyword=token HTTP/1.1\r\n", b'{"passwordless": true, "tokens": 3}']
    recs = batch(raw)
    assert redact(recs) == 4
    out = payloads_of(recs)
    assert out[0].endswith(b"username=bob&password=*******&next=/home")
    assert out[1] == (b'{"client_id":"app","client_secret":"******","nested":{"refresh_token":"***","n":1},'
                      b'"pwd":*****}')
    assert b"\r\n\r\n*****\r\n" in out[2] and b"\r\n\r\nplain\r\n" in out[2]
    assert b"Set-Cookie: " + b"*" * 22 + b"\r\n" in out[3]  # the whole value, attributes too
    assert out[4] == raw[4] and out[5] == raw[5]  # names as values, longer names: nothing to hide


def test_names_users_add_are_redacted_too() -> None:
    from pktstream.producer.privacy import names_buffer

    raw = [b"pin=1234&otp=987654&user=bob", b'{"OTP": "555", "pin": 42}']
    plain = batch(raw)
    redact(plain)
    assert payloads_of(plain) == raw
    recs = batch(raw)
    assert redact(recs, names_buffer(["otp", " PIN "])) == 2
    assert payloads_of(recs) == [b"pin=****&otp=******&user=bob", b'{"OTP": "***", "pin": **}']
