"""No credential leaves the host: real HTTP clients in a namespace send credentials in headers, the
query, form, JSON and multipart bodies, through the producer and the real broker; the packet topic,
read with Apache's avro package, holds none of them."""

from __future__ import annotations

import io
import json
import secrets
import uuid
from collections.abc import Callable
from pathlib import Path

import avro.datafile
import avro.io
import pytest

from tests.support.apps import HTTP_PORT, run_clients, servers
from tests.support.helpers import NetnsHost, read_messages
from tests.support.producer_proc import ProducerProcess

pytestmark = [pytest.mark.kernel, pytest.mark.kafka]


def test_no_credential_reaches_the_topic(kafka_bootstrap: str, make_host: Callable[..., NetnsHost],
                                         tmp_path: Path) -> None:
    h = make_host()
    s = {k: f"S{k}x{secrets.token_hex(6)}" for k in range(1, 10)}  # unique strings, easy to find
    requests = [
        ["GET", "/me", f"Authorization: Bearer {s[1]}\r\nX-Api-Key: {s[2]}\r\nCookie: sid={s[3]}\r\n", ""],
        ["GET", f"/login?user=bob&access_token={s[4]}&lang=en"],
        ["POST", "/login", "Content-Type: application/x-www-form-urlencoded\r\n", f"username=bob&password={s[5]}"],
        ["POST", "/oauth/token", "Content-Type: application/json\r\n",
         json.dumps({"client_id": "app", "client_secret": s[6], "nested": {"refresh_token": s[7]}})],
        ["POST", "/upload", "Content-Type: multipart/form-data; boundary=XyZ\r\n",
         f'--XyZ\r\nContent-Disposition: form-data; name="password"\r\n\r\n{s[8]}\r\n--XyZ--\r\n'],
        ["POST", "/verify", "", f"otp={s[9]}"],  # a name the user added (--redact-names otp)
    ]
    topic = f"privacy-{uuid.uuid4().hex[:8]}"
    prod = ProducerProcess("--interface", h.host_if, "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                           "--payload-bytes", "256", "--redact-names", "otp")
    try:
        prod.wait_event("producer_started")
        with servers(tmp_path):
            run_clients(h, [{"src": h.peer_ip, "server": h.host_ip, "port": HTTP_PORT, "kind": "http",
                             "host": "api.shop.test", "requests": [r]} for r in requests])
    finally:
        assert prod.stop() == 0
    payloads = []
    for _key, value, _headers in read_messages(kafka_bootstrap, topic):
        for rec in avro.datafile.DataFileReader(io.BytesIO(value), avro.io.DatumReader()):
            payloads.append(rec["payload"])
    requests_seen = [p for p in payloads if p.startswith((b"GET /", b"POST /"))]
    assert len(requests_seen) == len(requests)  # every request is in the topic, its prefix redacted
    leaked = [k for k, v in s.items() if any(v.encode() in p for p in payloads)]
    assert leaked == []
    blob = b"\n".join(payloads)
    for shown in (b"password=" + b"*" * len(s[5]), b'"client_secret": "' + b"*" * len(s[6]) + b'"',
                  b"otp=" + b"*" * len(s[9]), b"access_token=" + b"*" * len(s[4]) + b"&lang=en"):
        assert shown in blob  # lengths kept, the rest of the message as it was
    stopped = prod.event("producer_stopped")
    assert stopped["records_delivered"] == len(payloads)
