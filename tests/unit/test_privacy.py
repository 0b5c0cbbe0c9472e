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
                value = line.split(b":", 1)[1].lstrip(b" \t").split(b"\r")[0]  # after OWS
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


# -- every placement class: names as people write them, values by their shape, HTTP/2 ----------

STYLES = ["snake", "camel", "kebab", "upper", "title"]


def styled(name: str, style: str) -> str:
    """A credential name as some framework writes it: access_token, accessToken, access-token..."""
    words = name.split("_")
    if style == "camel":
        return words[0] + "".join(w.title() for w in words[1:])
    if style == "kebab":
        return "-".join(words)
    if style == "upper":
        return name.upper()
    if style == "title":
        return "-".join(w.title() for w in words)
    return name


SHAPES = ["jwt", "aws", "github", "github-pat", "gitlab", "slack", "stripe", "google", "pem"]
B62 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def shaped(shape: str, seed: int) -> tuple[bytes, int]:
    """A credential recognised by its shape, and where its secret part starts (after the marker
    that says what it is: eyJ, AKIA, ghp_, ...)."""
    import base64
    import random

    rng = random.Random(seed)

    def pick(alphabet: str, n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    if shape == "jwt":
        def b64(x: bytes) -> str:
            return base64.urlsafe_b64encode(x).rstrip(b"=").decode()
        tok = ".".join([b64(b'{"alg":"HS256","typ":"JWT"}'), b64(b'{"sub":"' + pick(B62, 12).encode() + b'"}'),
                        pick(B62 + "-_", 43)])
        return tok.encode(), 3
    marker, body = {
        "aws": ("AKIA", pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
        "github": ("ghp_", pick(B62, 36)),
        "github-pat": ("github_pat_", pick(B62 + "_", 82)),
        "gitlab": ("glpat-", pick(B62 + "-_", 20)),
        "slack": ("xoxb-", f"{rng.randrange(10**11, 10**12)}-{rng.randrange(10**11, 10**12)}-{pick(B62, 24)}"),
        "stripe": ("sk_live_", pick(B62, 24)),
        "google": ("AIza", pick(B62 + "-_", 35)),
        "pem": ("-----BEGIN PRIVATE KEY-----\n", pick(B62 + "+/", 64) + "\n" + pick(B62 + "+/", 40)),
    }[shape]
    return (marker + body).encode(), len(marker)


def placed(place: str, name: str, secret: bytes) -> tuple[bytes, int]:
    """An HTTP message (request or answer) with the secret in one place; returns it and the
    secret's offset."""
    def at(head: bytes, tail: bytes = b"") -> tuple[bytes, int]:
        return head + secret + tail, len(head)

    n = name.encode()
    if place == "query":
        return at(b"GET /cb?state=xyz&" + n + b"=", b"&lang=en HTTP/1.1\r\nHost: a\r\n\r\n")
    if place == "fragment":  # an OAuth implicit-flow redirect
        return at(b"HTTP/1.1 302 Found\r\nLocation: https://app.test/cb#" + n + b"=", b"&token_type=bearer\r\n\r\n")
    if place == "form-bracket":
        return at(b"POST /users/sign_in HTTP/1.1\r\n\r\nuser[email]=a%40b.c&user[" + n + b"]=", b"&commit=1")
    if place == "form-encoded-bracket":
        return at(b"user%5Bemail%5D=a%40b.c&user%5B" + n + b"%5D=", b"&commit=1")
    if place == "form-array":
        return at(n + b"[]=", b"&" + n + b"[]=x")
    if place == "json-quoted-before":  # a stray quote in a header before the body
        return at(b'POST / HTTP/1.1\r\nUser-Agent: the "best" client"\r\n\r\n{"a":1,"' + n + b'":"', b'"}')
    if place == "json-array":
        return at(b'{"' + n + b'": ["', b'", "second"], "x": 1}')
    if place == "json-in-header":
        return at(b'GET / HTTP/1.1\r\nX-Context: {"' + n + b'":"', b'"}\r\n\r\n')
    # a header named by the name, with a tab after the colon
    return at(b"GET / HTTP/1.1\r\nHost: a\r\n" + n + b":\t", b"\r\nAccept: */*\r\n\r\n")


NAME_PLACES = ["query", "fragment", "form-bracket", "form-encoded-bracket", "form-array", "json-quoted-before",
               "json-array", "json-in-header"]
CAMEL_NAMES = ["access_token", "refresh_token", "client_secret", "id_token", "private_key", "api_key", "password",
               "client_assertion", "secret_access_key", "session_id", "csrf_token", "passphrase", "credentials",
               "x_amz_signature", "x_amz_credential", "x_amz_security_token", "x_goog_signature"]
VENDOR_HEADERS = ["X-Goog-Api-Key", "Private-Token", "X-Vault-Token", "X-Auth-Token", "Ocp-Apim-Subscription-Key",
                  "X-Amzn-Oidc-Accesstoken", "X-Amzn-Oidc-Data", "X-Forwarded-Access-Token", "X-Shopify-Access-Token",
                  "X-Api-Secret", "Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie", "X-CSRF-Token"]


def assert_starred(raw: bytes, off: int, size: int, cut: int) -> None:
    prefix = raw[:cut]
    recs = batch([prefix])
    redact(recs)
    (out,) = payloads_of(recs)
    assert len(out) == len(prefix)
    inside = out[off : min(off + size, len(prefix))]
    assert set(inside) <= {ord("*")}, (raw, out)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(NAME_PLACES), st.sampled_from(CAMEL_NAMES), st.sampled_from(STYLES),
       st.text(B62 + "-._~+", min_size=6, max_size=40), st.text("abcdefgh ijk:\r\n=", max_size=60),
       st.integers(0, WIDTH))
def test_names_as_people_write_them_in_every_place(place: str, name: str, style: str, secret: str, lead: str,
                                                   cut: int) -> None:
    """accessToken, ACCESS-TOKEN, user[access_token], user%5Baccess_token%5D, token[], arrays, a
    fragment of a redirect, JSON after a stray quote or inside a header: after any leading bytes,
    cut at any length, no byte of the secret is published."""
    raw, off = placed(place, styled(name, style), secret.encode())
    if place in ("query", "json-quoted-before", "json-in-header", "fragment", "form-bracket"):
        lead = ""  # these start the message
    elif lead:
        lead += "\r\n\r\n"  # whatever came before: headers, or the end of the previous body
    raw, off = lead.encode() + raw, off + len(lead)
    assert_starred(raw, off, len(secret), cut)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VENDOR_HEADERS), st.sampled_from(["lower", "as-is"]),
       st.text(B62 + "-._~+/=;", min_size=6, max_size=60), st.sampled_from(["request", "answer"]),
       st.integers(0, WIDTH))
def test_credential_headers_by_name_and_ending(header: str, case: str, secret: str, direction: str, cut: int) -> None:
    h = header.lower() if case == "lower" else header
    start = b"GET /v1 HTTP/1.1\r\n" if direction == "request" else b"HTTP/1.1 200 OK\r\n"
    raw, off = placed("header", h, secret.encode())
    raw = start + raw[len(b"GET / HTTP/1.1\r\n"):]
    off += len(start) - len(b"GET / HTTP/1.1\r\n")
    assert_starred(raw, off, len(secret), cut)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SHAPES), st.integers(0, 2**32), st.sampled_from(["header", "form", "json", "answer-json"]),
       st.integers(0, WIDTH))
def test_values_by_their_shape_under_any_name(shape: str, seed: int, where: str, cut: int) -> None:
    """JWTs, AWS key ids, GitHub, GitLab, Slack, Stripe and Google tokens, PEM private keys: under
    names that say nothing (note, data, X-Trace), in requests and answers, cut anywhere; what
    follows the marker is redacted."""
    tok, marker = shaped(shape, seed)
    if where == "header":
        head = b"GET / HTTP/1.1\r\nX-Trace: "
        raw = head + tok + b"\r\n\r\n"
    elif where == "form":
        head = b"user=bob&note="
        raw = head + tok + b"&x=1"
    elif where == "json":
        head = b'{"data": "'
        raw = head + tok.replace(b"\n", b"\\n") + b'"}'
        tok = tok.replace(b"\n", b"\\n")
    else:
        head = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"result": "'
        raw = head + tok.replace(b"\n", b"\\n") + b'"}'
        tok = tok.replace(b"\n", b"\\n")
    prefix = raw[:cut]
    recs = batch([prefix])
    redact(recs)
    (out,) = payloads_of(recs)
    start = len(head) + marker
    secret_part = out[start : min(len(head) + len(tok), len(prefix))]
    assert set(secret_part) <= set(b"*\n\\n"), (shape, where, prefix, out)


def test_random_tokens_in_paths_and_what_stays() -> None:
    import random

    rng = random.Random(3)
    toks = ["".join(rng.choice(B62) for _ in range(32)) for _ in range(2000)]
    recs = batch([f"GET /files/{t}/raw HTTP/1.1\r\nHost: a\r\n\r\n".encode() for t in toks])
    redact(recs)
    out = payloads_of(recs)
    caught = sum(1 for t, o in zip(toks, out, strict=True) if t.encode() not in o)
    assert caught >= 0.99 * len(toks)  # docs/operations.md: 99.9% of 32-character tokens
    assert out[0] == b"GET /files/" + b"*" * 32 + b"/raw HTTP/1.1\r\nHost: a\r\n\r\n"
    plain = [b"GET /api/v1/users/550e8400-e29b-41d4-a716-446655440000/downloadMonthlyInvoiceReport HTTP/1.1\r\n",
             b"GET /static/app.3f9a8b7c.js HTTP/1.1\r\nIf-None-Match: \"d41d8cd98f00b204e9800998ecf8427e\"\r\n",
             b"GET /blog/how-to-run-kafka-in-kraft-mode-2024 HTTP/1.1\r\n"]
    recs = batch(plain)
    assert redact(recs) == 0


def test_ordinary_traffic_is_not_masked() -> None:
    """A corpus of ordinary requests, answers, body segments, uploads, chunked bodies and HTTP/2 DATA
    frames (UUIDs, digests in paths and ETags, base64 images, slugs, camel-case names, credential
    headers before bodies): nothing changes but the credential headers' values (docs/operations.md
    gives the rate)."""
    from tests.support.http_corpus import corpus, expected

    payloads = corpus(20000)
    recs = batch(payloads)
    redact(recs)
    wrong = [(p[:WIDTH], o) for p, o in zip(payloads, payloads_of(recs), strict=True) if expected(p[:WIDTH]) != o]
    assert len(wrong) <= len(payloads) // 1000, wrong[:3]


def h2_frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_http2_header_blocks_are_cleared_frames_kept() -> None:
    block = b"\x82\x86\x41\x8a\xa0\xe4\x1d\x13\x9d\x09\xb8\xf0\x1e\x07\x40\x0dauthorization\x0eBearer s3cr3tX"
    cont = b"\x40\x06cookie\x08sid=1234"
    data = h2_frame(0, 1, 1, b"\x00\x00\x00\x00\x05hello")
    settings_ = h2_frame(4, 0, 0, b"\x00\x03\x00\x00\x00\x64")
    client = H2_PREFACE + settings_ + h2_frame(1, 0, 1, block) + h2_frame(9, 4, 1, cont) + data
    midway = h2_frame(1, 4, 3, block) + data  # a later segment: frames from its start, no preface
    push = h2_frame(5, 4, 2, b"\x00\x00\x00\x04" + cont)
    recs = batch([client, midway, push])
    assert redact(recs) == 3
    out = payloads_of(recs)
    hdr = len(H2_PREFACE) + len(settings_)
    assert out[0][:hdr] == client[:hdr]  # the preface and SETTINGS as they were: still recognised as HTTP/2
    assert out[0][hdr : hdr + 9] == client[hdr : hdr + 9]  # the HEADERS frame's header
    assert out[0][hdr + 9 : hdr + 9 + len(block)] == b"*" * len(block)
    assert out[0].endswith(data) and b"s3cr3t" not in out[0] and b"sid=" not in out[0]
    assert out[1] == midway[:9] + b"*" * len(block) + data
    assert out[2] == push[:9] + b"*" * (len(push) - 9)
    kept = batch([client])
    redact(kept, keep_http2_headers=True)
    assert payloads_of(kept) == [client]  # the opt-in keeps HPACK as captured


def test_http2_detection_leaves_other_binary_alone() -> None:
    import random

    rng = random.Random(5)
    blobs = [bytes(rng.getrandbits(8) for _ in range(200)) for _ in range(500)]
    blobs += [b"\x16\x03\x01\x02\x00" + b[5:] for b in blobs[:100]]  # TLS records
    recs = batch(blobs)
    redact(recs)
    changed = sum(1 for a, b in zip(blobs, payloads_of(recs), strict=True) if a != b)
    assert changed <= 1


def test_prefix_starting_inside_a_header_value() -> None:
    """The rest of a long Cookie, continued in the next segment with no name before it: its first
    line is redacted when a header (or the end of the headers) follows it; a body is not."""
    cont = b"a9f8e7d6c5b4; session=Zx81kq; theme=dark\r\nAccept: */*\r\nHost: shop.test\r\n\r\n"
    body = b"username=bob&remember=1"
    line = b"PING\r\n"
    recs = batch([cont, body, line])
    redact(recs)
    out = payloads_of(recs)
    first = cont.index(b"\r\n")
    assert out[0] == b"*" * first + cont[first:]
    assert out[1:] == [body, line]


def test_url_userinfo_and_callback_codes() -> None:
    raw = [b"HTTP/1.1 302 Found\r\nLocation: https://alice:pa55w0rd@proxy.test:8080/x?code=AbC123&state=s1\r\n\r\n",
           b'{"upstream": "http://svc:hunter2@db.internal/", "ipv6": "http://[::1]:80/"}']
    recs = batch(raw)
    redact(recs)
    out = payloads_of(recs)
    assert out[0] == raw[0].replace(b"pa55w0rd", b"*" * 8).replace(b"AbC123", b"*" * 6)
    assert out[1] == raw[1].replace(b"hunter2", b"*" * 7)
    errors = batch([b'{"error": {"code": 404, "message": "not found"}}'])
    assert redact(errors) == 0  # "code" is a credential in query strings and forms, not in JSON


MYSQL_RESULT = b"\x01\x00\x00\x01\x01\x1e\x00\x00\x02\x03def\x04shop\x05users\x05users\x04name\x04name\x0c!\x00"


def h2(t: int, flags: int, sid: int, body: bytes) -> bytes:
    return h2_frame(t, flags, sid, body)


@pytest.mark.parametrize(("raw", "hidden", "kept"), [
    # a credential header is no reason to mask what follows it (the body after a last Cookie)
    (b"POST /search HTTP/1.1\r\nHost: shop\r\nContent-Type: application/x-www-form-urlencoded\r\n"
     b"Cookie: theme=dark\r\n\r\nq=1' UNION SELECT username,password FROM users--&page=1",
     [b"theme=dark"], [b"q=1' UNION SELECT username,password FROM users--&page=1"]),
    (b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=abc\r\n\r\n<html><body>Hello</body></html>",
     [b"sid=abc"], [b"<html><body>Hello</body></html>"]),
    (b'{"password"\n:"Hunter2secret"}', [b"Hunter2secret"], []),
    (b'{"body":"{\\"username\\":\\"bob\\",\\"password\\":\\"Hunter2secret\\"}"}', [b"Hunter2secret"],
     [b'\\"username\\":\\"bob\\"']),
    (b"GET /x?data=%7B%22key%22%3A%22AKIAIOSFODNN7EXAMPLE%22%7D HTTP/1.1\r\n", [b"IOSFODNN7EXAMPLE"], []),
    (b'{"aws":"\\nAKIAIOSFODNN7EXAMPLE"}', [b"IOSFODNN7EXAMPLE"], []),
    (b"GET / HTTP/1.1\r\nX-Proxy: http://admin:Hunter2secret", [b"Hunter2secret"], [b"http://admin:"]),
    (b'{"dsn":"postgres://admin:p@ss@db:5432/x"}', [b"p@ss"], [b"@db:5432/x"]),
    (b"username=bob&password1=Hunter2a&password2=Hunter2b&old_password=x1y2", [b"Hunter2a", b"Hunter2b", b"x1y2"],
     [b"username=bob"]),
    (b"user[password]=s1&user[password_confirmation]=s2&user[current_password]=s3&Input.Password=s4",
     [b"=s1", b"=s2", b"=s3", b"=s4"], []),
    (b"oauth_token=Ab12&oauth_token_secret=Kd75W4x&private_token=9koXpg98", [b"Ab12", b"Kd75W4x", b"9koXpg98"], []),
    (b'{"headers":{"x-api-key":"k3y99","X-Auth-Token":"tok77","Private-Token":"pt55"}}', [b"k3y99", b"tok77", b"pt55"],
     []),
    (b"GET / HTTP/1.1\r\nX-Auth-Key: 144c9d\r\nX-Functions-Key: fk88\r\n\r\n", [b"144c9d", b"fk88"], []),
    (b"stringData:\n  password: Hunter2secret\n  user: bob\n", [b"Hunter2secret"], [b"  user: bob"]),
    (b"------WebKitFormBoundary7MA4YWxk\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nplain\r\n", [],
     [b"------WebKitFormBoundary7MA4YWxk"]),
    (b"0\r\n\r\n", [], [b"0\r\n\r\n"]),
    (b"1a\r\nX-Checksum: abc\r\n", [], [b"1a\r\n"]),
    (b"GET /items?cursor=eyJpZCI6MTIzLCJ0cyI6MTcwMDAwMDAwMH0 HTTP/1.1\r\n", [],
     [b"eyJpZCI6MTIzLCJ0cyI6MTcwMDAwMDAwMH0"]),
    (b'{"passwordless": true, "password_expires_at": 1700000000, "client_secret_expires_at": 0}', [],
     [b"true", b"1700000000", b": 0}"]),
    (MYSQL_RESULT, [], [MYSQL_RESULT]),
    (H2_PREFACE + h2(4, 0, 0, b"") + h2(1, 5, 1, b"\x00\x0dauthorization\x15Bearer Hunter2secretX")
     + h2(0x10, 0, 0, b"\x00\x00\x00\x01u=1"), [b"Hunter2secret"], [H2_PREFACE]),
    (H2_PREFACE + h2(1, 0x44, 3, b"\x00\x0dauthorization\x15Bearer Hunter2secretX"), [b"Hunter2secret"], []),
    (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n" + h2(4, 0, 0, b"")
     + h2(1, 4, 1, b"\x00\x0aset-cookie\x0bsid=SeCrEt1"), [b"SeCrEt1"], [b"Upgrade: h2c"]),
], ids=["after-cookie", "after-set-cookie", "newline-before-colon", "stringified-json", "shape-after-%22",
        "shape-after-json-escape", "userinfo-cut", "userinfo-with-at", "django-passwords", "rails-passwords",
        "oauth1", "header-names-in-json", "more-vendor-headers", "yaml", "multipart-boundary-first",
        "chunk-end", "chunk-size", "json-cursor-not-jwt", "names-describing-passwords", "mysql-not-h2",
        "h2-extension-frame", "h2-unknown-flag", "h2c-upgrade"])
def test_what_the_review_found(raw: bytes, hidden: list[bytes], kept: list[bytes]) -> None:
    recs = batch([raw])
    redact(recs)
    (out,) = payloads_of(recs)
    assert len(out) == len(raw[:WIDTH])
    for h in hidden:
        assert h not in out, (h, out)
    for k in kept:
        assert k in out, (k, out)


def test_a_second_pass_changes_nothing_where_the_first_starred_a_control_byte() -> None:
    """Found by the property test: the first pass stars a value holding a NUL, which made the
    first line printable, and a second pass took the whole line for a continued credential."""
    recs = batch([b" GET /?token=\x00GET /?token=\n\r"])
    redact(recs)
    once = payloads_of(recs)
    assert once == [b"*" * 26 + b"\n\r"]  # (to the fixpoint: the line, printable once starred, is a value)
    redact(recs)
    assert payloads_of(recs) == once


@pytest.mark.parametrize("raw", [
    b'"password":"\nname="password=token\r\n\r\n',  # a JSON value starred over a multipart name
    b'\xff"password":"name="password"token=-\r\n\r\n',
    b'"password":[bkeHTTP/1.1 NS ,\n79:',  # (fuzz) stars over "HTTP/" made the line a continued value
    b"\xff-----BEGIN\xff@HJ KEY-----BEGIN\xff\xff--eyJh-----015.x\r}-\xff-z: PRIVATE KEY\xff~\xe4\xe4--------"
    b"\xff-\xf8b/etc/pxprohPO://pme=.\xf8b?c\xf9vJ=H\x00\x1aa/@O\xfd-",  # (fuzz) a token starred over PEM dashes
    b"x AKIAABCDEFGHIJKLHTTP/1.1\r\nHost: x\r\n\r\n",  # (review) letters starred over a line's "HTTP/"
    # (review of the narrower trigger) a starred '/' makes a header name of what it ended
    b'{"token":[\nab/cd:1]}',
    b"sid=SECRETVALUE -----BEGIN PRIVATE KEY\n-----MII/Bx-----END: x\n",
    b"-----BEGIN PRIVATE KEY\nx-----a/b-----END-token: hunter2\n",
])
def test_redaction_reaches_its_fixpoint_in_one_call(raw: bytes) -> None:
    """What one rule stars can change what another sees; a row is redacted again until nothing
    changes, so a second call never finds more (found by review and by the fuzz harness)."""
    recs = batch([raw])
    redact(recs)
    once = payloads_of(recs)
    redact(recs)
    assert payloads_of(recs) == once
    assert b"token\r" not in once[0] and b"=token" not in once[0]
    assert b"SECRETVALUE" not in once[0] and b"hunter2" not in once[0]


@pytest.mark.xfail(strict=True, reason="known gap: overlapping shapes and a token-shaped multipart name "
                   "(docs/operations.md, Payload privacy)")
@pytest.mark.parametrize("raw", [
    # a Google-key run rejected as too long becomes a key once a shape after it is starred (letters, digits,
    # dots or dashes starred: no second pass)
    b"GET / HTTP/1.1\r\nX: AIza" + b"B" * 31 + b"-eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: AIza" + b"B" * 30 + b"-ghp_" + b"C" * 36 + b"\r\n\r\n",
    # a multipart name holding a token: the shape stars the name's end, the next call no longer skips the line
    b'--b\r\nContent-Disposition: form-data; name="xoxb-abcdefghij-apikey"; token=SECRET1\r\n\r\nvalue\r\n--b--\r\n',
])
def test_known_gaps_of_one_call(raw: bytes) -> None:
    """Rows two reviews found where one call is not the fixpoint (contrived overlaps of two rules);
    strict xfail: when they are mended this fails, and the rows move to the fixpoint test."""
    recs = batch([raw])
    redact(recs)
    once = payloads_of(recs)
    redact(recs)
    assert payloads_of(recs) == once


@pytest.mark.parametrize("raw", [
    b'{"text":"key **AKIAIOSFODNN7EXAMPLE** here"}',
    b'{"text":"**ghp_' + b"a" * 36 + b'**"}',
    b"msg=use *sk_live_" + b"a" * 24 + b"* now",
    b'{"text":"my key is *xoxb-1234567890-abcdefghij* ok"}',
    b"glpat-" + b"a" * 20 + b"*",
    b"AKIAIOSFODNN7EXAMPLE*",
])
def test_a_token_in_markdown_stars_is_still_redacted(raw: bytes) -> None:
    """Chat and issue APIs carry Markdown: a token right before a literal '*' is a token (a review
    found them left in clear by a rule that rejected runs ending at a star; that rule is gone)."""
    recs = batch([raw])
    redact(recs)
    out = payloads_of(recs)[0]
    for marker in (b"IOSFODNN7EXAMPLE", b"a" * 20, b"1234567890-abcdefghij"):
        assert marker not in out, out


@pytest.mark.parametrize("raw", [
    b'POST /oauth/token HTTP/1.1\r\n\r\n{"client_secret":"s3cr3t-value","scope":"a b"}',
    b"GET / HTTP/1.1\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl-_x\r\n\r\n",
    b"GET /?api_key=ab+cd/ef%2Bgh~ij.kl-mn&x=1 HTTP/1.1\r\nCookie: sid=AbC-dEf_gh.ij/kl+mn\r\n\r\n",
    b'--XyZ\r\nContent-Disposition: form-data; name="api_key"\r\n\r\nk-123456\r\n--XyZ--\r\n',
    b"x-auth-token: a-b-c\r\npassword=--x--&token=-y-\r\n-----BEGIN PRIVATE KEY-----\nMIIB-x\n",
])
def test_values_of_token_characters_are_walked_once_and_stay_redacted(raw: bytes) -> None:
    """A credential value's own dots, dashes, slashes, pluses, tildes, underscores and percent signs
    are judged as letters (no second pass for them; runs of dashes still take one): a second call
    changes nothing, and the values are gone."""
    recs = batch([raw])
    redact(recs)
    once = payloads_of(recs)
    redact(recs)
    assert payloads_of(recs) == once
    for secret in (b"s3cr3t-value", b"c2lnbmF0dXJl", b"ef%2Bgh", b"dEf_gh", b"k-123456", b"a-b-c", b"MIIB"):
        assert secret not in once[0], (secret, once[0])


@pytest.mark.parametrize("rest", [b"ab*cdEF123tail", b"_pk_ses.1.ab12=*; PHPSESSID=q1w2e3r4"])
def test_a_star_inside_a_continued_cookie_value_does_not_save_it(rest: bytes) -> None:
    recs = batch([rest + b"\r\nHost: x\r\n\r\n"])  # the rest of a long Cookie, '*' and all
    redact(recs)
    assert payloads_of(recs) == [b"*" * len(rest) + b"\r\nHost: x\r\n\r\n"]
