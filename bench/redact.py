"""The credential-redaction loop alone: nanoseconds per record over a payload mix.

    .venv/bin/python -m bench.redact [--records 20000] [--rounds 30] [--throughput-mix]

Batches of kernel records with 256-byte payload prefixes, cycling through HTTP requests with
credentials (a header, a form body, a JSON token request), an HTTP request without any, a TLS
record of random bytes, and two other payloads; the best of the rounds. It runs against an older
checkout too (``python bench/redact.py`` with that checkout's venv), to compare builds.
``--throughput-mix``: the payloads of ``bench.throughput --credentials``'s frames instead (run it
from this tree, ``PYTHONPATH=.`` with an older checkout's venv).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

try:
    from pktstream.schemas.record import record_dtype
except ImportError:  # a build from before the package layout change
    from pktstream.producer.record import record_dtype  # type: ignore[no-redef]
from pktstream.producer.privacy import redact

PAYLOADS = [
    b"GET /v1/users/17 HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer x\r\n\r\n",
    b"POST /v2/orders HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: 120\r\n\r\n{\"sku\": 1}",
    b"POST /login HTTP/1.1\r\nHost: shop.example.com\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 42\r\n\r\nusername=bob&password=hunter2&remember=1",
    b"POST /oauth/token HTTP/1.1\r\nHost: auth.example.com\r\nContent-Type: application/json\r\n\r\n"
    b'{"grant_type":"client_credentials","client_id":"app","client_secret":"s3cr3t-value","scope":"a b"}',
    b"\x17\x03\x03" + bytes(np.random.default_rng(1).integers(0, 256, 253, dtype=np.uint8)),
    b"t" * 256,
    b"q" * 18,
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--throughput-mix", action="store_true", help="the payloads of bench.throughput --credentials")
    a = ap.parse_args()
    payloads = PAYLOADS
    if a.throughput_mix:
        from scapy.layers.l2 import Ether
        from scapy.packet import Raw

        from bench.throughput import frame_mix

        payloads = [bytes(f[Raw].load) if Raw in f else b"" for f in map(Ether, frame_mix(True))]
    recs = np.zeros(a.records, dtype=record_dtype(256))
    for i in range(a.records):
        p = payloads[i % len(payloads)][:256]
        recs["payload"][i, : len(p)] = np.frombuffer(p, np.uint8)
        recs["cap_len"][i] = len(p)
    best = float("inf")
    for _ in range(a.rounds):
        r = recs.copy()
        t = time.perf_counter()
        redact(r)
        best = min(best, time.perf_counter() - t)
    print(f"redact: {best / a.records * 1e9:.0f} ns/record ({a.records / best / 1e6:.2f} M records/s), "
          f"{a.records:,} records, best of {a.rounds}")


if __name__ == "__main__":
    main()
