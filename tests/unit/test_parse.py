"""Payload parsers: HTTP/1.x, HTTP/2 preface, TLS ClientHello; generated and hostile inputs."""

from __future__ import annotations

import string
import struct
from urllib.parse import quote

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


# -- credentials, tokens and e-mail addresses never reach a route template ------------------------
# (test tokens are built by concatenation: no literal in this file has a real key's shape)

ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"
JWT = ".".join(["eyJ" + "hbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9", "eyJ" + "zdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkFubiJ9",
                "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"])
VENDOR_TOKENS = {
    "github classic": "ghp" + "_" + "A1b2C3d4" * 4 + "E5f6",
    "github oauth": "gho" + "_" + "A1b2C3d4" * 4 + "E5f6",
    "github user-to-server": "ghu" + "_" + "A1b2C3d4" * 4 + "E5f6",
    "github server-to-server": "ghs" + "_" + "A1b2C3d4" * 4 + "E5f6",
    "github refresh": "ghr" + "_" + "A1b2C3d4" * 4 + "E5f6",
    "github fine-grained": "github" + "_pat_" + "11ABCDEFG0" + "_" + "aBcDeFgHiJ" * 5,
    "gitlab": "glpat" + "-" + "aBcDeFgHiJkLmNoPqRsT",
    "slack bot": "xoxb" + "-" + "1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "slack user": "xoxp" + "-" + "1234567890-1234567890123-1234567890123-abcdef0123456789",
    "slack app": "xoxa" + "-" + "2-1234567890-abcdefghijkl",
    "stripe live secret": "sk" + "_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "stripe live restricted": "rk" + "_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "stripe test secret": "sk" + "_test_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "stripe test restricted": "rk" + "_test_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "google api key": "AIza" + "SyD-" + "abcdefghijklmnopqrstuvwxyz01234",
    "aws access key id": "AKIA" + "IOSFODNN7EXAMPLE",
    "aws temporary key id": "ASIA" + "IOSFODNN7EXAMPLE",
}


@pytest.mark.parametrize("token", list(VENDOR_TOKENS.values()), ids=list(VENDOR_TOKENS))
def test_vendor_tokens_become_token(token: str) -> None:
    assert P.normalize_path(f"/v1/keys/{token}/usage") == "/v1/keys/{token}/usage"
    assert P.normalize_path(f"/v1/keys/key={token}") == "/v1/keys/{token}"  # inside a segment too
    assert P.redact_path(f"/v1/keys/{token}") == "/v1/keys/{token}"


@pytest.mark.parametrize(
    ("target", "template"),
    [
        # JWTs: whole, cut short (a payload prefix ends mid-token), percent-encoded, behind a prefix
        (f"/auth/{JWT}/refresh", "/auth/{token}/refresh"),
        (f"/auth/{JWT[:40]}", "/auth/{token}"),
        ("/auth/" + "eyJ" + "hbGci", "/auth/{token}"),
        (f"/auth/{JWT.replace('.', '%2E')}", "/auth/{token}"),
        (f"/auth/Bearer%20{JWT}", "/auth/{token}"),
        # e-mail addresses, plain and percent-encoded (once, twice)
        ("/users/ann.lee@example.com/prefs", "/users/{email}/prefs"),
        ("/users/ann.lee%40example.com/prefs", "/users/{email}/prefs"),
        ("/users/ann.lee%2540example.co.uk", "/users/{email}"),
        ("/unsubscribe/ANN+news@Example.ORG?u=1", "/unsubscribe/{email}"),
        # what the producer redacted: stars, whole or in part
        ("/r/****************/x", "/r/{token}/x"),
        ("/r/" + "ghp_" + "*" * 36, "/r/{token}"),
        ("/r/ab**cd", "/r/{token}"),
        ("/r/%2A%2A%2A%2A", "/r/{token}"),
        # matrix parameters never survive
        ("/app/index.jsp;jsessionid=A1B2C3D4E5F6A7B8C9D0E1F2A3B4C5D6", "/app/index.jsp"),
        ("/app;jsessionid=short/cart", "/app/cart"),
        ("/a;b=c;d=e/f", "/a/f"),
        # long opaque runs: with digits, scrambled mixed case, base64 with + / = and ~, dotted
        ("/reset/aGVsbG8gd29ybGQxMjM0NTY3", "/reset/{id}"),
        ("/t/qXkZpLmWvRtYbNcJhGfD", "/t/{id}"),
        ("/t/Ab3dEfGh1jKl%2BMnOpQr%2FSt%3D%3D", "/t/{id}"),
        ("/t/Ab3dEfGh1jKl+MnOpQrSt==", "/t/{id}"),
        ("/t/Xy18Q~abcdefghij1klmnopqrstuvwxyz", "/t/{id}"),
        ("/t/" + "ya29" + ".a0AfH6SMBx1234567890abcdef", "/t/{token}"),
        ("/files/session:Ab3dEfGh1jKlMnOpQrSt", "/files/{id}"),
        # authority with a password (absolute-form in any case, or a segment)
        ("HTTP://user:secret@proxy.example/a/7", "/a/{id}"),
        ("/fetch/user:secret@internal", "/fetch/{token}"),
        # ordinary paths stay readable
        ("/v1/users", "/v1/users"),
        ("/api/2024-01-01/things", "/api/2024-01-01/things"),
        ("/static/app.min.js", "/static/app.min.js"),
        ("/static/bootstrap-5.3.2.bundle.min.js", "/static/bootstrap-5.3.2.bundle.min.js"),
        ("/health", "/health"),
        ("/index.html", "/index.html"),
        ("/users/3f2504e0-4f89-11d3-9a0c-0305e82c3301", "/users/{id}"),
        ("/users/{uuid}", "/users/{uuid}"),
        ("/api/getUserAccountInformation", "/api/getUserAccountInformation"),
        ("/rpc/HTTPServerURLHandler/AssumeRoleWithWebIdentity", "/rpc/HTTPServerURLHandler/AssumeRoleWithWebIdentity"),
        ("/@babel/core", "/@babel/core"),
        ("/react@18.2.0/umd/react.min.js", "/react@18.2.0/umd/react.min.js"),
        ("/~alice/index.html", "/~alice/index.html"),
        ("/search/caf%C3%A9", "/search/caf%C3%A9"),
        ("*", "*"),
        ("/", "/"),
    ],
)
def test_normalize_path_placeholders(target: str, template: str) -> None:
    assert P.normalize_path(target) == template


def test_redact_path_keeps_ids_and_attack_text() -> None:
    """Evidence keeps numbers, UUIDs, matrix parameter names and attack text; secrets go."""
    assert P.redact_path("/search/0001234") == "/search/0001234"
    assert P.redact_path("/static/../../../../etc/passwd") == "/static/../../../../etc/passwd"
    assert P.redact_path("/cgi-bin/x.cgi;id") == "/cgi-bin/x.cgi;id"
    assert P.redact_path("/app/index.jsp;jsessionid=ABC123") == "/app/index.jsp;jsessionid={token}"
    assert P.redact_path(f"/x/{JWT}/../../etc/passwd") == "/x/{token}/../../etc/passwd"
    assert P.redact_path("/u/ann%40example.com/..%2f..%2fetc") == "/u/{email}/..%2f..%2fetc"
    assert P.redact_path("/items/3f2504e0-4f89-11d3-9a0c-0305e82c3301") == "/items/3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    assert P.redact_path("/blobs/9f86d081884c7d659a2feaa0c55ad015") == "/blobs/{id}"


words = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_jwts = st.tuples(st.text(B64URL, min_size=4, max_size=60), st.lists(st.text(B64URL, max_size=60), max_size=4)).map(
    lambda t: ".".join(["eyJ" + t[0], *t[1]]))
_vendor = st.one_of(
    st.tuples(st.sampled_from(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]), st.text(ALNUM, min_size=36, max_size=36)),
    st.tuples(st.just("github_pat_"), st.text(ALNUM + "_", min_size=22, max_size=82)),
    st.tuples(st.just("glpat-"), st.text(B64URL, min_size=20, max_size=40)),
    st.tuples(st.sampled_from([f"xox{c}-" for c in "abposr"]), st.text(ALNUM + "-", min_size=10, max_size=60)),
    st.tuples(st.sampled_from(["sk_live_", "rk_live_", "sk_test_", "rk_test_"]),
              st.text(ALNUM, min_size=24, max_size=99)),
    st.tuples(st.just("AIza"), st.text(B64URL, min_size=35, max_size=35)),
    st.tuples(st.sampled_from(["AKIA", "ASIA"]),
              st.text(string.ascii_uppercase + string.digits, min_size=16, max_size=16)),
).map("".join)
# 20-65 base64/base64url characters (+ and ~ too) with a digit somewhere, padded or not
_opaque = st.tuples(st.text(B64URL + "+~", min_size=19, max_size=64), st.integers(0, 64),
                    st.sampled_from(string.digits), st.sampled_from(["", "=", "=="])).map(
    lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :] + t[3])
_starred = st.tuples(st.text(ALNUM + "*", max_size=30), st.text("*", min_size=1, max_size=30),
                     st.text(ALNUM, max_size=10)).map("".join).filter(lambda s: s != "*")
_emails = st.tuples(st.text(ALNUM + "._+-", min_size=1, max_size=20),
                    st.lists(st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10),
                             min_size=1, max_size=3),
                    st.text(string.ascii_letters, min_size=2, max_size=6)).map(
    lambda t: f"{t[0]}@{'.'.join([*t[1], t[2]])}")
SECRETS = {"jwt": (_jwts, {"{token}"}), "vendor": (_vendor, {"{token}"}), "opaque": (_opaque, {"{id}", "{token}"}),
           "starred": (_starred, {"{token}"}), "email": (_emails, {"{email}"})}
_secrets = st.one_of(*[s.map(lambda v, k=k: (k, v)) for k, (s, _) in SECRETS.items()])


def _encodings(secret: str) -> list[str]:
    return [secret, secret.replace("@", "%40"), secret.replace("@", "%2540"), quote(secret, safe="")]


@settings(max_examples=1000, deadline=None)
@given(st.lists(words, max_size=3), _secrets, st.lists(words, max_size=3), st.integers(0, 3), st.booleans())
def test_generated_secrets_never_reach_a_template(before: list[str], kind_secret: tuple[str, str],
                                                  after: list[str], encoding: int, query: bool) -> None:
    """A JWT, vendor key, opaque token, starred run or e-mail address as a path segment (plain or
    percent-encoded) becomes its placeholder; the words around it stay; so in evidence paths."""
    kind, secret = kind_secret
    seg = _encodings(secret)[encoding]
    target = "/" + "/".join([*before, seg, *after]) + ("?a=1" if query else "")
    out = P.normalize_path(target)
    segs = out.split("/")[1:]
    assert segs[: len(before)] == before and segs[len(before) + 1 :] == after
    assert segs[len(before)] in SECRETS[kind][1], (target, out)
    for form in _encodings(secret):
        assert form not in out
    evidence = P.redact_path(target.split("?")[0])
    assert evidence.split("/")[1:][len(before)] in SECRETS[kind][1] | {"{id}"}
    assert secret not in evidence and seg not in evidence


@settings(max_examples=300, deadline=None)
@given(st.lists(words, min_size=1, max_size=4), st.text(string.printable.translate(str.maketrans("", "", "/?#;")),
                                                        max_size=40))
def test_generated_matrix_parameters_never_survive(segs: list[str], value: str) -> None:
    target = "/" + "/".join(segs) + ";jsessionid=" + value
    assert P.normalize_path(target) == "/" + "/".join(segs)
