"""No credential leaves the host: real HTTP clients in a namespace send credentials in every placement
people put them (headers, the query, form, JSON and multipart bodies, names as people write them,
presigned URLs, URL userinfo, vendor headers, values known by their shape under any name) to a real
server, whose answers carry credentials too (Set-Cookie, a Location with a token, a JSON token answer);
requests (ingress) and answers (egress) go through the producer and the real broker; the packet topic,
read with Apache's avro package, holds none of them, and the rest of each message as it was."""

from __future__ import annotations

import base64
import io
import json
import secrets
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import avro.datafile
import avro.io
import pytest

from tests.support.api_clients import request_bytes
from tests.support.apps import PLAIN_ANSWER, SCRIPTED_PORT, run_clients, scripted_server
from tests.support.helpers import NetnsHost, read_messages
from tests.support.producer_proc import ProducerProcess

pytestmark = [pytest.mark.kernel, pytest.mark.kafka]

HOST = "api.shop.test"
PREFIX = 256  # --payload-bytes: every request and every answer fits in it whole
ALNUM = string.ascii_letters + string.digits
FORM = "Content-Type: application/x-www-form-urlencoded\r\n"
JSON = "Content-Type: application/json\r\n"


def tok() -> str:
    """A credential of no particular shape, unique: a leak is found by searching for it."""
    return f"S{secrets.token_hex(8)}"


def rand(n: int, alphabet: str = ALNUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt() -> str:
    head = b64url(b'{"alg":"HS256","typ":"JWT"}')
    claims = b64url(json.dumps({"sub": secrets.token_hex(6), "iat": 1700000000}, separators=(",", ":")).encode())
    return f"{head}.{claims}.{b64url(secrets.token_bytes(32))}"


def stars(s: str) -> bytes:
    return b"*" * len(s)


def lines_kept(s: str) -> bytes:
    """s with every byte but its line ends replaced by '*'."""
    return bytes(c if c == 0x0A else 0x2A for c in s.encode())


def answer(head: str, body: str = "") -> bytes:
    """An answer as the scripted server sends it: status line and headers, Content-Length, body."""
    return f"{head}\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()


@dataclass
class Exchange:
    """One connection: a request, the server's answer, the credentials either carries by placement
    name, and what must be seen around each placement in the topic (any one of the alternatives:
    the credential's bytes replaced by as many '*', the rest as it was)."""

    request: list[str]  # method, path, extra header lines, body
    creds: dict[str, str]
    shown: dict[str, tuple[bytes, ...]] = field(default_factory=dict)
    answer: bytes = PLAIN_ANSWER

    @property
    def sent(self) -> bytes:
        method, path, extra, body = [*self.request, "", ""][:4]
        return request_bytes(method, path, extra, body, HOST)


def exchanges() -> list[Exchange]:
    x: list[Exchange] = []
    # headers, the query, form, JSON, multipart; a name the user added (--redact-names otp)
    a, b, c = tok(), tok(), tok()
    x.append(Exchange(["GET", "/me", f"Authorization: Bearer {a}\r\nX-Api-Key: {b}\r\nCookie: sid={c}\r\n"],
                      {"header Authorization": a, "header X-Api-Key": b, "header Cookie": c}))
    a = tok()
    x.append(Exchange(["GET", f"/login?user=bob&access_token={a}&lang=en"], {"query access_token": a},
                      {"query access_token": (b"access_token=" + stars(a) + b"&lang=en",)}))
    a = tok()
    x.append(Exchange(["POST", "/login", FORM, f"username=bob&password={a}"], {"form password": a},
                      {"form password": (b"password=" + stars(a),)}))
    a, b = tok(), tok()
    x.append(Exchange(["POST", "/oauth/token", JSON,
                       json.dumps({"client_id": "app", "client_secret": a, "nested": {"refresh_token": b}})],
                      {"json client_secret": a, "json nested refresh_token": b},
                      {"json client_secret": (b'"client_secret": "' + stars(a) + b'"',)}))
    a = tok()
    x.append(Exchange(["POST", "/upload", "Content-Type: multipart/form-data; boundary=XyZ\r\n",
                       f'--XyZ\r\nContent-Disposition: form-data; name="password"\r\n\r\n{a}\r\n--XyZ--\r\n'],
                      {"multipart password": a}))
    a = tok()
    x.append(Exchange(["POST", "/verify", "", f"otp={a}"], {"form otp (--redact-names)": a},
                      {"form otp (--redact-names)": (b"otp=" + stars(a),)}))

    # names as people write them
    a, b, c = tok(), tok(), tok()
    x.append(Exchange(["POST", "/api/session", JSON,
                       f'{{"accessToken":"{a}","refreshToken":"{b}","clientSecret":"{c}"}}'],
                      {"json accessToken": a, "json refreshToken": b, "json clientSecret": c},
                      {"json accessToken": (b'"accessToken":"' + stars(a) + b'"',),
                       "json refreshToken": (b'"refreshToken":"' + stars(b) + b'"',),
                       "json clientSecret": (b'"clientSecret":"' + stars(c) + b'"',)}))
    a, b = tok(), tok()
    x.append(Exchange(["POST", "/api/keys", JSON, f'{{"idToken":"{a}","privateKey":"{b}"}}'],
                      {"json idToken": a, "json privateKey": b},
                      {"json idToken": (b'"idToken":"' + stars(a) + b'"',),
                       "json privateKey": (b'"privateKey":"' + stars(b) + b'"',)}))
    a, b = tok(), tok()
    x.append(Exchange(["POST", "/api/tokens", JSON, f'{{"access_token":["{a}","{b}"]}}'],
                      {"json access_token array [0]": a, "json access_token array [1]": b},
                      {"json access_token array [0]": (b'"access_token":["' + stars(a) + b'","',),
                       "json access_token array [1]": (b'","' + stars(b) + b'"]',)}))
    a, b = tok(), tok()
    x.append(Exchange(["POST", "/api/forward", JSON, f'{{"Authorization":"Bearer {a}","cookie":"sid={b}"}}'],
                      {"json key Authorization": a, "json key cookie": b},
                      {"json key Authorization": (b'"Authorization":"Bearer ' + stars(a) + b'"',
                                                  b'"Authorization":"' + stars("Bearer " + a) + b'"'),
                       "json key cookie": (b'"cookie":"sid=' + stars(b) + b'"',
                                           b'"cookie":"' + stars("sid=" + b) + b'"')}))
    for name in ("user[password]", "user%5Bpassword%5D", "pass%77ord", "access%5Ftoken", "api-key", "token[]"):
        a = tok()
        x.append(Exchange(["POST", "/account", FORM, f"user=bob&{name}={a}&lang=en"], {f"form {name}": a},
                          {f"form {name}": (f"{name}=".encode() + stars(a) + b"&lang=en",)}))

    # presigned URLs, URL userinfo, an OAuth callback's code
    a = secrets.token_hex(32)
    x.append(Exchange(["GET", f"/b/report.pdf?X-Amz-Expires=300&X-Amz-Signature={a}"], {"query X-Amz-Signature": a},
                      {"query X-Amz-Signature": (b"X-Amz-Signature=" + stars(a) + b" HTTP/1.1",)}))
    a = "ASIA" + rand(16, string.ascii_uppercase + string.digits)
    rest = "%2F20250101%2Fus-east-1%2Fs3%2Faws4_request"
    x.append(Exchange(["GET", f"/b/report.pdf?X-Amz-Credential={a}{rest}&X-Amz-Expires=300"],
                      {"query X-Amz-Credential": a},
                      {"query X-Amz-Credential": (b"X-Amz-Credential=" + stars(a) + rest.encode() + b"&X-Amz-Expires",
                                                  b"X-Amz-Credential=" + stars(a + rest) + b"&X-Amz-Expires")}))
    a = rand(96)
    x.append(Exchange(["GET", f"/b/report.pdf?X-Amz-Security-Token={a}&X-Amz-Expires=300"],
                      {"query X-Amz-Security-Token": a},
                      {"query X-Amz-Security-Token": (b"X-Amz-Security-Token=" + stars(a) + b"&X-Amz-Expires=300",)}))
    a = secrets.token_hex(32)
    x.append(Exchange(["GET", f"/g/report.pdf?X-Goog-Expires=300&X-Goog-Signature={a}"],
                      {"query X-Goog-Signature": a},
                      {"query X-Goog-Signature": (b"X-Goog-Signature=" + stars(a) + b" HTTP/1.1",)}))
    a = tok()
    x.append(Exchange(["POST", "/proxies", JSON, f'{{"name":"corp","url":"http://alice:{a}@proxy.test:3128/"}}'],
                      {"userinfo in a JSON body": a},
                      {"userinfo in a JSON body": (b"http://alice:" + stars(a) + b"@proxy.test:3128/",
                                                   b"http://" + stars("alice:" + a) + b"@proxy.test:3128/")}))
    a = tok()
    x.append(Exchange(["GET", "/fetch", f"X-Upstream: http://alice:{a}@proxy.test:3128/\r\n"],
                      {"userinfo in a header": a},
                      {"userinfo in a header": (b"http://alice:" + stars(a) + b"@proxy.test:3128/",
                                                b"http://" + stars("alice:" + a) + b"@proxy.test:3128/")}))
    a = tok()
    x.append(Exchange(["GET", f"/callback?code={a}&state=xyz"], {"query code (OAuth callback)": a},
                      {"query code (OAuth callback)": (b"?code=" + stars(a) + b"&state=xyz",)}))

    # vendor headers
    vendor = ["X-Goog-Api-Key", "Private-Token", "X-Vault-Token", "X-Auth-Token", "Ocp-Apim-Subscription-Key",
              "X-Amzn-Oidc-Accesstoken", "X-Forwarded-Access-Token"]
    for group in (vendor[:3], vendor[3:5], vendor[5:]):
        creds = {f"header {h}": tok() for h in group}
        x.append(Exchange(["GET", "/vendor", "".join(f"{h}: {creds[f'header {h}']}\r\n" for h in group)], creds,
                          {n: (f"{n[7:]}: ".encode() + stars(v) + b"\r\n",) for n, v in creds.items()}))

    # a stray quote in a header before a JSON body
    a = tok()
    x.append(Exchange(["POST", "/api/login", f'User-Agent: a"b\r\n{JSON}', f'{{"user":"bob","password":"{a}"}}'],
                      {"json password after a stray quote in a header": a},
                      {"json password after a stray quote in a header": (b'"password":"' + stars(a) + b'"',)}))

    # values known by their shape, under names that say nothing; the kind's marker (eyJ, AKIA, ghp_...)
    # is no secret: kept or starred, either will do; what follows it is the credential
    def shaped(name: str, marker: str, a: str, request: Callable[[str], list[str]], before: str, after: str) -> None:
        x.append(Exchange(request(marker + a), {name: a},
                          {name: ((before + marker).encode() + stars(a) + after.encode(),
                                  before.encode() + stars(marker + a) + after.encode())}))

    a = jwt()
    shaped("shape JWT in a header", a[:3], a[3:], lambda v: ["GET", "/jobs", f"X-Trace: {v}\r\n"],
           "X-Trace: ", "\r\n")
    a = jwt()
    shaped("shape JWT in a JSON body", a[:3], a[3:], lambda v: ["POST", "/jobs", JSON, f'{{"data":"{v}"}}'],
           '{"data":"', '"}')
    shaped("shape AKIA key id in a form", "AKIA", rand(16, string.ascii_uppercase + string.digits),
           lambda v: ["POST", "/notes", FORM, f"note={v}&region=eu-west-1"], "note=", "&region=eu-west-1")
    shaped("shape ghp_ in a header", "ghp_", rand(36), lambda v: ["GET", "/repos", f"X-Note: {v}\r\n"],
           "X-Note: ", "\r\n")
    shaped("shape glpat- in a JSON body", "glpat-", rand(20), lambda v: ["POST", "/ci", JSON, f'{{"remote":"{v}"}}'],
           '{"remote":"', '"}')
    shaped("shape xoxb- in a form", "xoxb-", f"{rand(12, string.digits)}-{rand(13, string.digits)}-{rand(24)}",
           lambda v: ["POST", "/chat", FORM, f"hook={v}&channel=ops"], "hook=", "&channel=ops")
    shaped("shape sk_live_ in a header", "sk_live_", rand(24), lambda v: ["GET", "/billing", f"X-Meta: {v}\r\n"],
           "X-Meta: ", "\r\n")
    shaped("shape AIza in the query", "AIza", rand(35), lambda v: ["GET", f"/maps?address=Paris&ref={v}"],
           "&ref=", " HTTP/1.1")
    a, b = base64.b64encode(secrets.token_bytes(48)).decode(), base64.b64encode(secrets.token_bytes(18)).decode()
    begin, end = "-----BEGIN PRIVATE KEY-----\n", "\n-----END PRIVATE KEY-----\n"
    whole = (begin.encode() + stars(a) + b"\n" + stars(b) + end.encode(),  # the lines' breaks kept or not
             begin.encode() + stars(f"{a}\n{b}") + end.encode(),
             lines_kept(begin + a + "\n" + b + end), stars(begin + a + "\n" + b + end[:-1]) + b"\n")
    x.append(Exchange(["POST", "/keys", "", f"{begin}{a}\n{b}{end}"],
                      {"shape PEM private key block in a body (line 1)": a,
                       "shape PEM private key block in a body (line 2)": b},
                      {"shape PEM private key block in a body (line 1)": whole,
                       "shape PEM private key block in a body (line 2)": whole}))
    a = secrets.token_urlsafe(32)
    name = "shape high-entropy token as a path segment"
    x.append(Exchange(["GET", f"/reset/{a}/confirm"], {name: a},
                      {name: (b"GET /reset/" + stars(a) + b"/confirm HTTP/1.1",)}))

    # answers
    a = tok()
    x.append(Exchange(["GET", "/session"], {"answer Set-Cookie": a},
                      {"answer Set-Cookie": (b"Set-Cookie: sid=" + stars(a) + b"; Path=/; HttpOnly\r\n",
                                             b"Set-Cookie: " + stars(f"sid={a}; Path=/; HttpOnly") + b"\r\n")},
                      answer(f"HTTP/1.1 200 OK\r\nSet-Cookie: sid={a}; Path=/; HttpOnly", "ok")))
    a = tok()
    x.append(Exchange(["GET", "/authorize?response_type=token&client_id=app"], {"answer Location #access_token": a},
                      {"answer Location #access_token": (b"#access_token=" + stars(a) + b"&token_type=bearer",)},
                      answer(f"HTTP/1.1 302 Found\r\nLocation: https://app.test/cb#access_token={a}&token_type=bearer"
                             "&expires_in=3600")))
    a = tok()
    x.append(Exchange(["GET", "/authorize?response_type=code&client_id=app"], {"answer Location ?code": a},
                      {"answer Location ?code": (b"?code=" + stars(a) + b"&state=xyz",)},
                      answer(f"HTTP/1.1 302 Found\r\nLocation: https://app.test/cb?code={a}&state=xyz")))
    a, b = tok(), tok()
    x.append(Exchange(["POST", "/oauth2/token", FORM, "grant_type=client_credentials&client_id=app"],
                      {"answer JSON access_token": a, "answer JSON refresh_token": b},
                      {"answer JSON access_token": (b'"access_token":"' + stars(a) + b'"',),
                       "answer JSON refresh_token": (b'"refresh_token":"' + stars(b) + b'"',)},
                      answer("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store",
                             f'{{"access_token":"{a}","token_type":"Bearer","expires_in":3600,"refresh_token":"{b}"}}')))
    return x


# nothing secret: captured byte for byte as sent
CONTROL = Exchange(["GET", "/v1/orders/1042/items?page=2&sort=desc", "Accept: application/json\r\n"
                    "User-Agent: curl/8.5.0\r\n"], {},
                   answer=answer("HTTP/1.1 200 OK\r\nContent-Type: application/json",
                                 '{"id":1042,"status":"shipped","items":3,"carrier":"UPS"}'))
# what must stay readable in the topic
READABLE = (b'"client_id": "app"', b"GET /me HTTP/1.1\r\nHost: api.shop.test\r\n",
            b"Content-Type: application/json\r\n", b'"token_type":"Bearer","expires_in":3600',
            b"Location: https://app.test/cb", b'Content-Disposition: form-data; name="password"')


def starred(sent: bytes, seen: bytes) -> bool:
    """Is seen the sent bytes with some of them replaced by '*', its length kept?"""
    return len(seen) == len(sent) and all(s == t or t == 0x2A for s, t in zip(sent, seen, strict=True))


def verdict(xs: list[Exchange], seen_as: list[tuple[bytes, bytes]],
            payloads: list[bytes]) -> tuple[list[str], list[str], list[bytes]]:
    """The placements whose credential is in the topic (whole, or in part where its request or answer
    is), those redacted but not shown as expected, and what should be readable and is not. seen_as:
    each exchange's request and answer as captured; CONTROL comes last."""
    leaked: list[str] = []
    not_shown: list[str] = []
    for x, seen in zip(xs, seen_as, strict=True):
        for name, secret in x.creds.items():
            sb = secret.encode()
            m = 0 if sb in x.sent else 1
            at = (x.sent, x.answer)[m].index(sb)
            if any(sb in p for p in payloads):
                leaked.append(name)
            elif seen[m][at:at + len(sb)] != stars(secret):
                leaked.append(f"{name} (in part)")
            elif not any(alt in seen[m] for alt in x.shown.get(name, (b"",))):
                not_shown.append(name)
    blob = b"\n".join(payloads)
    unreadable = [r for r in READABLE if r not in blob]
    if seen_as[-1] != (CONTROL.sent, CONTROL.answer):
        unreadable.append(b"the request and answer that carry no credential, as sent")
    return leaked, not_shown, unreadable


def test_no_credential_reaches_the_topic(kafka_bootstrap: str, make_host: Callable[..., NetnsHost]) -> None:
    h = make_host()
    xs = [*exchanges(), CONTROL]
    messages = [m for x in xs for m in (x.sent, x.answer)]
    too_long = [m for m in messages if len(m) > PREFIX]
    assert not too_long, f"messages longer than the captured prefix: {too_long}"
    for x in xs:
        for name, secret in x.creds.items():
            assert sum(m.count(secret.encode()) for m in messages) == 1, f"{name}: not once in one message"
    scripted = {f"{x.request[0]} {x.request[1]}": x.answer for x in xs if x.answer != PLAIN_ANSWER}
    assert len(scripted) == sum(x.answer != PLAIN_ANSWER for x in xs)

    topic = f"privacy-{uuid.uuid4().hex[:8]}"
    prod = ProducerProcess("--interface", h.host_if, "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                           "--payload-bytes", str(PREFIX), "--redact-names", "otp")  # both directions: the default
    try:
        prod.wait_event("producer_started")
        with scripted_server(scripted):
            done = run_clients(h, [{"src": h.peer_ip, "server": h.host_ip, "port": SCRIPTED_PORT, "kind": "http",
                                    "host": HOST, "requests": [x.request], "keep_answers": True} for x in xs])
    finally:
        assert prod.stop() == 0
    assert prod.event("producer_started")["directions"] == ["ingress", "egress"]
    # each client read the whole answer the server was scripted to give
    assert [d["answers"] for d in done] == [[x.answer.decode("latin-1")] for x in xs]

    payloads: list[bytes] = []
    for _key, value, _headers in read_messages(kafka_bootstrap, topic):
        for rec in avro.datafile.DataFileReader(io.BytesIO(value), avro.io.DatumReader()):
            assert isinstance(rec, dict)
            payloads.append(rec["payload"])
    stopped = prod.event("producer_stopped")
    assert stopped["records_delivered"] == len(payloads)
    requests_seen = [p for p in payloads if p.startswith((b"GET /", b"POST /"))]
    answers_seen = [p for p in payloads if p.startswith(b"HTTP/1.1 ")]
    assert (len(requests_seen), len(answers_seen)) == (len(xs), len(xs))  # every request and every answer

    # each request and answer, where it is in the topic: as sent, but for bytes replaced by '*'
    free = list(payloads)

    def captured(sent: bytes) -> bytes:
        seen = next((p for p in free if p == sent), None) or next((p for p in free if starred(sent, p)), None)
        assert seen is not None, f"not in the topic as sent, but for '*': {sent!r}"
        free.remove(seen)
        return seen

    seen_as = [(captured(x.sent), captured(x.answer)) for x in xs]

    leaked, not_shown, unreadable = verdict(xs, seen_as, payloads)
    assert (leaked, not_shown, unreadable) == ([], [], []), (
        f"{len(leaked)} of {sum(len(x.creds) for x in xs)} credentials leaked: {leaked}; "
        f"redacted but not shown as expected around them: {not_shown}; not readable: {unreadable}")
