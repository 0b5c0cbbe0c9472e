"""Payload parsers: HTTP/1.x, HTTP/2 preface, TLS ClientHello; generated and hostile inputs."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pktstream.consumers.engine import parse as P


def rows(*payloads: bytes, width: int = 256) -> tuple[np.ndarray, np.ndarray]:
    m = np.zeros((len(payloads), width), dtype=np.uint8)
    lens = np.zeros(len(payloads), dtype=np.int64)
    for i, p in enumerate(payloads):
        p = p[:width]
        m[i, : len(p)] = np.frombuffer(p, dtype=np.uint8)
        lens[i] = len(p)
    return m, lens


def client_hello(sni: bytes | None, session: bytes = b"\x11" * 32) -> bytes:
    exts = b""
    if sni is not None:
        name = b"\x00" + struct.pack("!H", len(sni)) + sni
        exts += struct.pack("!HH", 0, len(name) + 2) + struct.pack("!H", len(name)) + name
    exts = struct.pack("!HH", 0x000B, 2) + b"\x01\x00" + exts  # ec_point_formats first
    body = b"\x03\x03" + b"\x22" * 32 + bytes([len(session)]) + session + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def test_http_request_line_and_host() -> None:
    m, lens = rows(b"GET /v1/users/42?x=1 HTTP/1.1\r\nUser-Agent: t\r\nhOsT:  api.example.com \r\n\r\n",
                   b"POST /orders HTTP/1.0\r\n\r\n",
                   b"DELETE /a/b HTTP/1.1\r\nAccept: */*\r\nHo",
                   b"PATCH /very/long/path/cut")
    out = P.parse_payloads(m, lens)
    assert list(out[:, P.KIND]) == [P.KIND_HTTP1] * 4
    assert [P.METHODS[x] for x in out[:, P.METHOD]] == ["GET", "POST", "DELETE", "PATCH"]
    assert P.slice_text(m, 0, out[0, P.PATH_OFF], out[0, P.PATH_LEN]) == "/v1/users/42?x=1"
    assert P.slice_text(m, 0, out[0, P.HOST_OFF], out[0, P.HOST_LEN]) == "api.example.com"
    assert out[0, P.VERSION] == 11 and out[1, P.VERSION] == 10
    assert out[1, P.FLAGS] == P.F_NO_HOST and out[1, P.HOST_LEN] == 0
    assert out[2, P.FLAGS] == P.F_HEADERS_CUT
    assert out[3, P.FLAGS] == P.F_LINE_CUT | P.F_HEADERS_CUT
    assert P.slice_text(m, 3, out[3, P.PATH_OFF], out[3, P.PATH_LEN]) == "/very/long/path/cut"


def test_tls_sni_h2_and_others() -> None:
    hello = client_hello(b"shop.example.org")
    m, lens = rows(hello, client_hello(None), hello[:60], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                   b"HTTP/1.1 200 OK\r\n", b"\x00\x01binary", b"")
    out = P.parse_payloads(m, lens)
    assert list(out[:, P.KIND]) == [P.KIND_TLS_HELLO, P.KIND_TLS_HELLO, P.KIND_TLS_HELLO, P.KIND_H2_PREFACE,
                                    P.KIND_HTTP1_RESPONSE, P.KIND_NONE, P.KIND_NONE]
    assert P.slice_text(m, 0, out[0, P.HOST_OFF], out[0, P.HOST_LEN]) == "shop.example.org"
    assert out[1, P.HOST_LEN] == 0 and out[1, P.FLAGS] == 0
    assert out[2, P.FLAGS] == P.F_TLS_CUT and out[2, P.HOST_LEN] == 0


http_methods = st.sampled_from(P.METHODS[1:])
path_seg = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
hosts = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){1,2}\Z")


@settings(max_examples=500, deadline=None)
@given(http_methods, st.lists(path_seg, max_size=6), hosts, st.integers(8, 256))
def test_generated_requests(method: str, segs: list[str], host: str, width: int) -> None:
    path = "/" + "/".join(segs)
    req = f"{method} {path} HTTP/1.1\r\nAccept: */*\r\nHost: {host}\r\n\r\n".encode()
    m, lens = rows(req, width=width)
    out = P.parse_payloads(m, lens)[0]
    assert out[P.KIND] == P.KIND_HTTP1 and P.METHODS[out[P.METHOD]] == method
    got_path = P.slice_text(m, 0, out[P.PATH_OFF], out[P.PATH_LEN])
    assert path.startswith(got_path) and (got_path == path or out[P.FLAGS] & P.F_LINE_CUT)
    host_line_end = req.index(b"Host: ") + len(f"Host: {host}\r\n")
    got_host = P.slice_text(m, 0, out[P.HOST_OFF], out[P.HOST_LEN])
    if len(req) <= width:
        assert out[P.FLAGS] == 0 and got_host == host
    elif host_line_end <= width:  # the Host line is whole even if later headers are cut
        assert got_host == host
    else:
        assert out[P.FLAGS] & P.F_HEADERS_CUT and host.startswith(got_host)


@settings(max_examples=300, deadline=None)
@given(hosts, st.binary(max_size=32), st.integers(6, 300))
def test_generated_client_hellos(host: str, session: bytes, cut: int) -> None:
    hello = client_hello(host.encode(), session)
    m, lens = rows(hello[:cut], width=300)
    out = P.parse_payloads(m, lens)[0]
    assert out[P.KIND] == P.KIND_TLS_HELLO
    if out[P.HOST_LEN]:
        assert P.slice_text(m, 0, out[P.HOST_OFF], out[P.HOST_LEN]) == host
    else:
        assert cut < len(hello) and out[P.FLAGS] == P.F_TLS_CUT


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8),
       st.sampled_from([b"", b"GET ", b"\x16\x03\x01", b"PRI * HTTP/2.0", b"HTTP/1.1 "]))
def test_hostile_bytes_never_break_the_parser(payloads: list[bytes], prefix: bytes) -> None:
    m, lens = rows(*[prefix + p for p in payloads])
    lens[0] = min(lens[0] + 40, 256)  # a length past the real bytes: still within the row
    out = P.parse_payloads(m, lens)
    assert out.shape == (len(payloads), P.OUT_COLS)
    offs_ok = (out[:, P.PATH_OFF] + out[:, P.PATH_LEN] <= 256) & (out[:, P.HOST_OFF] + out[:, P.HOST_LEN] <= 256)
    assert offs_ok.all() and (out[:, : P.CONTENT_LENGTH] >= 0).all() and (out[:, P.CONTENT_LENGTH] >= -1).all()
    assert ((out[:, P.STATUS] == 0) | ((out[:, P.STATUS] >= 100) & (out[:, P.STATUS] <= 599))).all()


def test_responses_status_and_content_length() -> None:
    m, lens = rows(b"HTTP/1.1 404 Not Found\r\nServer: x\r\ncontent-length:  12\r\n\r\nnot found...",
                   b"HTTP/1.0 200 OK\r\nX: y\r\n",  # headers cut: length unknown
                   b"HTTP/1.1 2",  # status cut
                   b"HTTP/1.1 503 Busy\r\nContent-Length: 1x\r\n\r\n",  # not a number
                   b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nHost: a\r\n\r\nhello",
                   b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                   b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 99999999999\r\n\r\n")
    out = P.parse_payloads(m, lens)
    assert list(out[:, P.KIND]) == [P.KIND_HTTP1_RESPONSE] * 4 + [P.KIND_HTTP1] * 2 + [P.KIND_HTTP1_RESPONSE]
    assert list(out[:, P.STATUS]) == [404, 200, 0, 503, 0, 0, 101]
    assert list(out[:, P.CONTENT_LENGTH]) == [12, -1, -1, -1, 5, -1, -1]
    assert list(out[:, P.VERSION]) == [11, 10, 11, 11, 11, 11, 11]
    assert out[2, P.FLAGS] == P.F_LINE_CUT and out[0, P.FLAGS] == 0


@pytest.mark.parametrize(
    ("target", "template"),
    [
        ("/v1/users/42", "/v1/users/{id}"),
        ("/v1/users/42/orders?limit=10", "/v1/users/{id}/orders"),
        ("/items/3f2504e0-4f89-11d3-9a0c-0305e82c3301", "/items/{id}"),
        ("/blobs/9f86d081884c7d659a2feaa0c55ad015", "/blobs/{id}"),
        ("/s/AbCdEfGhIjKlMnOpQrSt1234", "/s/{id}"),
        ("/v2/health", "/v2/health"),
        ("", "/"),
        ("http://proxy.example/a/7", "/a/{id}"),
    ],
)
def test_normalize_path(target: str, template: str) -> None:
    assert P.normalize_path(target) == template
