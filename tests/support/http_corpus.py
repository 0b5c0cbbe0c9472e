"""Ordinary HTTP traffic, for measuring what the redaction masks that it should not
(docs/operations.md "Payload privacy" gives the rate): REST requests and answers with the ids real
APIs carry (numbers, UUIDs, hex digests, slugs, camel-case names, dates, hashed asset names), the
headers browsers and services send (User-Agent, ETag and If-None-Match digests, request ids,
traceparent, Cache-Control, and Cookie, Authorization and Set-Cookie, whose values alone must be
masked: ``expected``), JSON bodies with ids, timestamps and base64 images, form posts, multipart
uploads, chunked bodies and HTTP/2 DATA frames. Deterministic for a seed."""

from __future__ import annotations

import base64
import json
import random
import string
import uuid

USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 "
    "Safari/605.1.15",
    "curl/8.5.0", "python-requests/2.32.3", "Go-http-client/1.1", "okhttp/4.12.0",
    "kube-probe/1.31", "Prometheus/2.54.1", "aws-sdk-go-v2/1.32.4 os/linux lang/go#1.23.2 md/GOOS#linux",
]
WORDS = ["orders", "users", "items", "invoices", "products", "catalog", "search", "health", "metrics", "v1", "v2",
         "api", "static", "assets", "reports", "customers", "shipments", "accounts", "profile", "settings",
         "notifications", "inventory", "payments", "checkout", "cart", "reviews", "images", "thumbnails"]
CAMEL = ["getUserProfileSettings", "listAllOrdersForCustomer", "OrderManagementController", "InventoryServiceV2",
         "updateShippingAddressDetails", "ProductRecommendationEngine2024", "downloadMonthlyInvoiceReport"]


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _segment(rng: random.Random) -> str:
    k = rng.randrange(11)
    if k == 0:
        return str(rng.randrange(1, 10**rng.randrange(1, 12)))
    if k == 1:
        return str(uuid.UUID(int=rng.getrandbits(128)))
    if k == 2:
        return _hex(rng, rng.choice((32, 40, 64)))  # md5, sha1, sha256 digests
    if k == 3:
        return "-".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 8)))  # slugs
    if k == 4:
        return rng.choice(CAMEL)
    if k == 5:
        return f"20{rng.randrange(10, 27)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    if k == 6:
        return f"app.{_hex(rng, 8)}.{rng.choice(('js', 'css', 'woff2'))}"
    if k == 7:
        return f"{rng.choice(WORDS)}_{rng.choice(WORDS)}_{rng.randrange(100)}"
    return rng.choice(WORDS)


def _path(rng: random.Random) -> str:
    path = "/" + "/".join(_segment(rng) for _ in range(rng.randrange(1, 5)))
    if rng.random() < 0.4:
        names = ["page", "limit", "sort", "q", "filter", "lang", "since", "fields"]
        q = [f"{rng.choice(names)}={rng.choice([str(rng.randrange(100)), rng.choice(WORDS), _hex(rng, 12)])}"
             for _ in range(rng.randrange(1, 4))]
        path += "?" + "&".join(q)
    return path


def _headers(rng: random.Random) -> str:
    h = [f"Host: {rng.choice(WORDS)}.example.com", f"User-Agent: {rng.choice(USER_AGENTS)}",
         f"Accept: {rng.choice(['*/*', 'application/json', 'text/html,application/xhtml+xml'])}"]
    if rng.random() < 0.5:
        h.append(f"X-Request-Id: {uuid.UUID(int=rng.getrandbits(128))}")
    if rng.random() < 0.4:
        h.append(f"traceparent: 00-{_hex(rng, 32)}-{_hex(rng, 16)}-01")
    if rng.random() < 0.3:
        h.append(f'If-None-Match: "{_hex(rng, 32)}"')
    if rng.random() < 0.2:
        h.append("Accept-Encoding: gzip, deflate, br")
    rng.shuffle(h)
    # credential headers, often last (as browsers send Cookie): their values are redacted, what
    # follows them must not be (CREDENTIAL_HEADERS)
    if rng.random() < 0.3:
        h.append(f"Cookie: _ga=GA1.2.{rng.randrange(10**9)}.{rng.randrange(10**9)}; theme=dark")
    if rng.random() < 0.2:
        h.append(f"Authorization: Bearer {random_token(rng, 32)}")
    return "\r\n".join(h) + "\r\n"


def _json_body(rng: random.Random) -> str:
    doc = {"id": rng.randrange(10**9), "uuid": str(uuid.UUID(int=rng.getrandbits(128))),
           "name": " ".join(rng.choice(WORDS) for _ in range(2)), "created_at": "2026-12-06T13:49:58Z",
           "sha256": _hex(rng, 64), "status": rng.choice(["active", "pending", "shipped"]),
           "tags": [rng.choice(WORDS) for _ in range(3)], "amount": round(rng.random() * 1000, 2)}
    if rng.random() < 0.3:
        raw = bytes(rng.getrandbits(8) for _ in range(120))
        doc["thumbnail"] = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + raw).decode()
    keys = list(doc)
    rng.shuffle(keys)
    return json.dumps({k: doc[k] for k in keys})


def request(rng: random.Random) -> bytes:
    method = rng.choice(["GET", "GET", "GET", "POST", "PUT", "DELETE"])
    head = f"{method} {_path(rng)} HTTP/1.1\r\n{_headers(rng)}"
    if method in ("POST", "PUT"):
        if rng.random() < 0.7:
            body = _json_body(rng)
            return (head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n" + body).encode()
        body = "&".join(f"{rng.choice(WORDS)}={rng.choice(WORDS)}{rng.randrange(100)}" for _ in range(4))
        return (head + "Content-Type: application/x-www-form-urlencoded\r\n\r\n" + body).encode()
    return (head + "\r\n").encode()


def answer(rng: random.Random) -> bytes:
    status = rng.choice(["200 OK", "201 Created", "304 Not Modified", "404 Not Found", "500 Internal Server Error"])
    h = [f"Content-Type: {rng.choice(['application/json', 'text/html; charset=utf-8'])}",
         *([f"Set-Cookie: sid={random_token(rng, 24)}; Path=/; HttpOnly"] if rng.random() < 0.3 else []),
         f'ETag: "{_hex(rng, rng.choice((16, 32, 40)))}"', "Cache-Control: max-age=3600, public",
         f"Date: Sun, 06 Dec 2026 13:{rng.randrange(60):02d}:00 GMT",
         f"X-Request-Id: {uuid.UUID(int=rng.getrandbits(128))}",
         "Vary: Accept-Encoding", "Server: nginx/1.27.2"]
    rng.shuffle(h)
    body = _json_body(rng) if rng.random() < 0.7 else "<!doctype html><html><head><title>" + rng.choice(WORDS)
    return (f"HTTP/1.1 {status}\r\n" + "\r\n".join(h) + f"\r\nContent-Length: {len(body)}\r\n\r\n" + body).encode()


def multipart(rng: random.Random) -> bytes:
    """An upload's body segment: a part with a file name, a field, the boundary first."""
    b = f"----WebKitFormBoundary{random_token(rng, 16)}"
    return (f"--{b}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n{rng.choice(WORDS)}\r\n--{b}\r\n"
            f"Content-Disposition: form-data; name=\"file\"; filename=\"{rng.choice(WORDS)}.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + bytes(rng.getrandbits(8) for _ in range(60))


def chunked(rng: random.Random) -> bytes:
    """A chunked body's segment: chunk sizes, JSON lines, the last chunk."""
    line = _json_body(rng)[:60]
    return f"{len(line):x}\r\n{line}\r\n0\r\n\r\n".encode()


CREDENTIAL_HEADERS = (b"cookie:", b"authorization:", b"set-cookie:")


def expected(payload: bytes) -> bytes:
    """What redaction must make of a corpus payload: the values of its credential headers starred
    (after the colon and white space, to the line end), nothing else changed."""
    out = []
    for line in payload.split(b"\n"):
        low = line.lower()
        name = next((h for h in CREDENTIAL_HEADERS if low.startswith(h)), None)
        if name is not None:
            head = len(name) + (len(line[len(name):]) - len(line[len(name):].lstrip(b" \t")))
            cr = line.endswith(b"\r")
            value = line[head : len(line) - cr]
            line = line[:head] + b"*" * len(value) + (b"\r" if cr else b"")
        out.append(line)
    return b"\n".join(out)


def body_segment(rng: random.Random) -> bytes:
    """A later TCP segment of a message: body bytes with no headers before them."""
    whole = _json_body(rng) * 3
    at = rng.randrange(len(whole) // 2)
    return whole[at:].encode()


def h2_data(rng: random.Random) -> bytes:
    """An HTTP/2 DATA frame (a gRPC message in it), as a segment of a connection under way."""
    payload = b"\x00" + len(b"x" * 40).to_bytes(4, "big") + bytes(rng.getrandbits(8) for _ in range(40))
    return len(payload).to_bytes(3, "big") + b"\x00\x00" + (2 * rng.randrange(1, 1000) + 1).to_bytes(4, "big") + payload


def corpus(n: int = 20000, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    kinds = [request, request, request, answer, answer, body_segment, h2_data, multipart, chunked]
    return [rng.choice(kinds)(rng) for _ in range(n)]


def random_token(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))
