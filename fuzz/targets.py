"""The Python fuzz targets (run by ``run_atheris.py`` under atheris, over a sanitizer build of the C
loops; see ``campaign.py``). Each takes the fuzzer's bytes. DecodeError is the documented answer
to a malformed message and ends the input quietly; any other exception is a finding, and so is a
failed check (AssertionError): each check is a property the callers rely on.

- ``container``: ``read_container``, the consumers' one door for packet-topic messages: the
  fuzzer's bytes as the message (first byte even), or as the blocks of a container whose header
  (schema, codec, width) the target writes (odd; ``synthesized_container``).
- ``features``: stage one of the usage and alerts consumers (``featurize``, ``route``, the
  repartition encoding) on a batch decoded from a fuzzed container (first byte even, then as
  ``container``) or on fuzzed columns shaped as ``read_container`` returns them (odd).
- ``relayed``: the consumers' and query's reading of ``pktstream relay``'s topic
  (engine/wirein.WireReader.relayed, schemas/columns.read_relayed): a run of messages cut from the
  fuzzer's bytes, each under the relayed schema's id or one that names no schema of ours.
- ``payloads``: the payload parsers and the attack prefilter through consumers/engine/parse.py
  and consumers/alerts/attacks.py, redaction through producer/privacy.py on kernel records, and
  the DNS message parser (consumers/engine/dns.py).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from pktstream.consumers.activity.processor import ActivityProcessor
from pktstream.consumers.alerts import attacks
from pktstream.consumers.alerts.processor import AlertsProcessor
from pktstream.consumers.alerts.rules import load_rules
from pktstream.consumers.catalog import Catalog
from pktstream.consumers.engine import dns
from pktstream.consumers.engine import features as F
from pktstream.consumers.engine import parse as P
from pktstream.consumers.usage.processor import UsageProcessor
from pktstream.producer.privacy import names_buffer, redact
from pktstream.schemas import SCHEMA_DIR, load_schema_json, wire
from pktstream.schemas import headers as H
from pktstream.schemas.columns import Batch, read_container
from pktstream.schemas.container import CODECS, MAGIC, compress, embedded_schema, encode_long
from pktstream.schemas.decode import DecodeError
from pktstream.schemas.record import PAYLOAD_OFFSET, record_dtype

ORIGIN = "fuzz-host/eth0"
NPARTS = 3
WIDTHS = (1, 8, 13, 64, 100, 256, 512, 1024)  # payload widths (columns.py allows 1..1024)
PACKET_FIELDS: list[tuple[str, str]] = [  # (name, "int" | "long" | "fixed" | "bytes")
    (f["name"], f["type"] if isinstance(f["type"], str) else f["type"]["type"])
    for f in load_schema_json("packet")["fields"]
]
INT32 = (-(1 << 31), (1 << 31) - 1)


class Input:
    """The fuzzer's bytes read from the front; past the end everything reads as 0 (like libFuzzer's
    FuzzedDataProvider, without needing atheris to replay an input)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def u8(self) -> int:
        b = self.take(1)
        return b[0] if b else 0

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes).ljust(nbytes, b"\0"), "little")

    def sint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes).ljust(nbytes, b"\0"), "little", signed=True)

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def left(self) -> int:
        return len(self.data) - self.pos


# -- container --------------------------------------------------------------------------------


def check_batch(batch: Batch) -> None:
    """What every consumer reads off a decoded batch without looking: every column one value per
    record, every reader field there, int fields within 32 bits, bytes lengths not negative."""
    n = batch.n
    assert n >= 0, n
    for name, col in batch.columns.items():
        assert len(col) == n, f"column {name} has {len(col)} rows for {n} records"
    for name, kind in PACKET_FIELDS:
        assert name in batch.columns, f"reader field {name} missing"
        col = batch.columns[name]
        if kind == "int" and n:
            assert INT32[0] <= int(col.min()) and int(col.max()) <= INT32[1], f"int field {name} out of range"
        if kind == "fixed":
            assert col.ndim == 2, f"fixed field {name} has shape {col.shape}"
        if kind == "bytes":
            assert col.ndim == 2 and (not n or int(batch.columns[name + "__len"].min()) >= 0), name


def _schema_texts() -> list[str]:
    """Writer schemas a container may embed: the packet schema as producers embed it (canonical
    form), its full text (fastavro, Java), the older versions kept in schemas/history."""
    packet = load_schema_json("packet")
    texts = [embedded_schema(packet), json.dumps(packet)]
    texts += [embedded_schema(json.loads(p.read_text())) for p in sorted((SCHEMA_DIR / "history" / "packet").iterdir())]
    return texts


SCHEMA_TEXTS = _schema_texts()
# a field added to the packet schema by a fuzzed writer: names (one a reader field's, one the
# decoder's own length column's) and types
_EXTRA_NAMES = ("extra", "seq", "payload__len", "Payload", "src_addr__len")
_EXTRA_TYPES: tuple[Any, ...] = ("int", "long", "bytes", {"type": "fixed", "name": "Addr16", "size": 16},
                                 {"type": "fixed", "name": "F", "size": 64}, {"type": "long", "logicalType": "x"})


def _writer_schema(inp: Input) -> str:
    """The packet schema with one field dropped, one added and the fields rotated."""
    fields = list(load_schema_json("packet")["fields"])
    drop, extra, turn = inp.u8(), inp.u8(), inp.u8()
    if drop < len(fields):
        del fields[drop]
    if extra < 0xF0:
        fields.append({"name": _EXTRA_NAMES[extra % len(_EXTRA_NAMES)],
                       "type": _EXTRA_TYPES[(extra // len(_EXTRA_NAMES)) % len(_EXTRA_TYPES)]})
    k = turn % len(fields)
    return json.dumps({**load_schema_json("packet"), "fields": fields[k:] + fields[:k]})


def synthesized_container(inp: Input) -> bytes:
    """A container whose header the target writes (so that the fuzzer's bytes reach the blocks):
    byte 0 codec (bits 0-1), schema (bits 2-4: SCHEMA_TEXTS, else an edited packet schema), a
    wrong sync marker (bit 5), blocks left uncompressed (bit 6); the payload width (u16, 0xFFFF:
    none); 1-3 blocks, each a record count (u16) and the records' bytes (u16 length; the last
    block takes the rest), compressed with the codec."""
    b = inp.u8()
    codec = CODECS[b & 3]
    variant = (b >> 2) & 7
    schema = SCHEMA_TEXTS[variant] if variant < len(SCHEMA_TEXTS) else _writer_schema(inp)
    width = inp.uint(2)
    meta = {"avro.schema": schema, "avro.codec": codec}
    if width != 0xFFFF:
        meta[H.PAYLOAD_BYTES] = str(width % 1100)
    sync = b"\x5a" * 16
    out = bytearray(MAGIC) + encode_long(len(meta))
    for k, v in meta.items():
        kb, vb = k.encode(), v.encode()
        out += encode_long(len(kb)) + kb + encode_long(len(vb)) + vb
    out += encode_long(0) + sync
    blocks = 1 + inp.u8() % 3
    for i in range(blocks):
        n = inp.uint(2)
        raw = inp.rest() if i == blocks - 1 else inp.take(inp.uint(2))
        data = raw if b & 0x40 else compress(codec, raw)
        out += encode_long(n) + encode_long(len(data)) + data + (b"\xa5" * 16 if b & 0x20 else sync)
    return bytes(out)


def container_batch(inp: Input) -> Batch | None:
    """Byte 0 even: the rest is the message; odd: a synthesized_container. None: DecodeError."""
    msg = inp.rest() if inp.u8() & 1 == 0 else synthesized_container(inp)
    try:
        return read_container(msg)
    except DecodeError:
        return None


def container(data: bytes) -> None:
    batch = container_batch(Input(data))
    if batch is not None:
        check_batch(batch)


# -- features ---------------------------------------------------------------------------------

_INTERESTING = (0, 1, 2, 3, 4, 6, 17, 58, 53, 80, 443, 8080, 0x02, 0x12, 0x10, 0x18, 0x11, 0x14, 0x29, 0x03, 255,
                256, 1024, 32768, 40000, 65535, 65536, (1 << 31) - 1, -1, -(1 << 31))
_INTERESTING_LONG = (*_INTERESTING, (1 << 63) - 1, -(1 << 63), 1_796_000_000_000_000_000, 60_000_000_000)
_ADDRS = (bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1]), bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 2]),
          bytes.fromhex("20010db8000000000000000000000001"), bytes(16))
_PAYLOADS = (
    b"GET /api/v1/users/12345?id=7 HTTP/1.1\r\nHost: api.example.com:8080\r\nUser-Agent: x\r\n\r\n",
    b"POST /login HTTP/1.1\r\nHost: Example.ORG\r\nContent-Length: 17\r\n\r\nuser=a&password=b",
    b"GET /../../etc/passwd?q=1' OR '1'='1 HTTP/1.1\r\nHost: x\r\nX-A: ${${lower:j}ndi:ldap://e/a}\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
    b"HTTP/1.0 404 Not Found\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    bytes.fromhex("16030100a5010000a10303") + bytes(32) + bytes.fromhex(
        "000004130113020100007400000010000e00000b6578616d706c652e636f6d000b000201000a00040002001d"),
    # an ICMP port unreachable's quoted IPv4 header and UDP ports
    bytes.fromhex("4500001c00004000401100000a0000020a000001d4310035"),
)


def _column_values(inp: Input, n: int, kind: str) -> list[int]:
    """One int/long column: a constant, small values, any value of the type, or values that mean
    something to the consumers (protocols, ports, flags, time stamps, the type's extremes)."""
    style = inp.u8() % 4
    table = _INTERESTING if kind == "int" else _INTERESTING_LONG
    if style == 0:
        return [table[inp.u8() % len(table)]] * n
    if style == 1:
        return [inp.u8() for _ in range(n)]
    if style == 2:
        return [inp.sint(4 if kind == "int" else 8) for _ in range(n)]
    return [table[inp.u8() % len(table)] for _ in range(n)]


def _payload_row(inp: Input, width: int) -> tuple[bytes, int]:
    """A payload prefix and its full length as the decoder keeps it (more than the width when the
    writer wrote more)."""
    style = inp.u8()
    if style % 3 == 0:
        p = _PAYLOADS[(style >> 2) % len(_PAYLOADS)]
        if style & 0x80:  # a fuzzed tail after a real start
            p = p[: inp.u8()] + inp.take(inp.u8() % 64)
    else:
        p = inp.take(inp.u8() if style % 3 == 1 else inp.uint(2) % 1100)
    full = len(p) + (inp.u8() if style & 0x40 else 0)
    return p[:width], full


def columns_batch(inp: Input) -> Batch:
    """A batch shaped as read_container returns one: int/long values in (n, k) int64 matrices and
    the columns views of them, fixed fields (n, size) uint8 views, the payload an (n, width) view
    with its full lengths; or every column contiguous (several blocks, concatenated)."""
    n = 1 + inp.u8() % 48
    width = WIDTHS[inp.u8() % len(WIDTHS)]
    contiguous = inp.u8() & 1
    ints_fields = [(name, kind) for name, kind in PACKET_FIELDS if kind in ("int", "long")]
    ints = np.zeros((n, len(ints_fields)), dtype=np.int64)
    for j, (_, kind) in enumerate(ints_fields):
        ints[:, j] = _column_values(inp, n, kind)
    fixed = np.zeros((n, 32), dtype=np.uint8)
    for j in range(2):
        pool = inp.u8() & 1
        for i in range(n):
            fixed[i, 16 * j : 16 * (j + 1)] = np.frombuffer(
                _ADDRS[inp.u8() % len(_ADDRS)] if pool else inp.take(16).ljust(16, b"\0"), dtype=np.uint8)
    byts = np.zeros((n, width), dtype=np.uint8)
    blens = np.zeros((n, 1), dtype=np.int64)
    for i in range(n):
        p, full = _payload_row(inp, width)
        byts[i, : len(p)] = np.frombuffer(p, dtype=np.uint8)
        blens[i, 0] = full
    cols: dict[str, npt.NDArray[Any]] = {name: ints[:, j] for j, (name, _) in enumerate(ints_fields)}
    cols["src_addr"], cols["dst_addr"] = fixed[:, :16], fixed[:, 16:]
    cols["payload"], cols["payload__len"] = byts, blens[:, 0]
    if contiguous:
        cols = {k: np.ascontiguousarray(v) for k, v in cols.items()}
    return Batch({}, n, cols)


_usage: UsageProcessor | None = None
_alerts: AlertsProcessor | None = None
_activity = ActivityProcessor()


def processors() -> list[tuple[str, Callable[[Batch, str], F.Features], Callable[[F.Features, int], Any]]]:
    """Stage one as the consumers run it: the usage and alerts processors' featurize and route
    (default configuration: every detector on), and featurize with its defaults."""
    global _usage, _alerts
    if _usage is None or _alerts is None:
        _usage = UsageProcessor(Catalog())
        _alerts = AlertsProcessor(load_rules(None), Catalog())
    return [("usage", _usage.featurize, _usage.route), ("alerts", _alerts.featurize, _alerts.route),
            ("activity", _activity.featurize, _activity.route), ("plain", F.featurize, _usage.route)]


def stage_one(batch: Batch) -> None:
    """featurize, route and the repartition message, as runner._rekey does them."""
    for name, featurize, route in processors():
        try:
            f = featurize(batch, ORIGIN)
        except DecodeError:
            continue
        # (activity: a DNS message's row beside its packet's)
        assert len(f.rows) <= batch.n * (2 if name == "activity" else 1), \
            f"{name}: {len(f.rows)} rows from {batch.n} records"
        for q, part in route(f, NPARTS).items():
            assert 0 <= q < NPARTS, f"{name}: partition {q}"
            data = F.encode(F.compact(part, inplace=True))
            try:
                back = F.decode(data)
            except DecodeError as e:  # our own message, refused by our own reader
                raise AssertionError(f"{name}: repartition message unreadable: {e}") from None
            assert len(back.rows) == len(part.rows), name


def features(data: bytes) -> None:
    """Byte 0 even: a batch from a container (container_batch reads on); odd: fuzzed columns."""
    inp = Input(data)
    batch = container_batch(inp) if inp.u8() & 1 == 0 else columns_batch(inp)
    if batch is not None:
        stage_one(batch)


# -- payloads ---------------------------------------------------------------------------------


def payload_rows(inp: Input) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """The payload matrix and lengths of fuzz/c/fuzz_parse.c's shapes: one row as wide as the
    input (byte 0 < 0x80), else 1 + (byte 0 & 7) rows of a width from WIDTHS, the rest cut in
    equal parts, each row's length its part's (more than the width when cut)."""
    shape = inp.u8()
    rest = inp.rest()
    if shape < 0x80:
        n, width = 1, max(len(rest), 1)
    else:
        n, width = 1 + (shape & 7), WIDTHS[(shape >> 3) & 7]
    pay = np.zeros((n, width), dtype=np.uint8)
    lens = np.zeros(n, dtype=np.int64)
    part = len(rest) // n
    for r in range(n):
        chunk = rest[r * part :] if r == n - 1 else rest[r * part : (r + 1) * part]
        pay[r, : min(len(chunk), width)] = np.frombuffer(chunk[:width], dtype=np.uint8)
        lens[r] = len(chunk)
    return pay, lens


def parse_checks(pay: npt.NDArray[np.uint8], lens: npt.NDArray[np.int64]) -> None:
    n, width = pay.shape
    out = P.parse_payloads(pay, lens)
    assert out.shape == (n, P.OUT_COLS)
    for r in range(n):
        o = out[r].tolist()
        valid = min(int(lens[r]), width)
        if o[P.KIND] == P.KIND_HTTP1:
            assert o[P.PATH_OFF] >= 0 and o[P.PATH_OFF] + o[P.PATH_LEN] <= valid, (r, o)
            P.normalize_path(P.slice_text(pay, r, o[P.PATH_OFF], o[P.PATH_LEN]))
        if o[P.HOST_LEN] > 0:
            assert o[P.HOST_OFF] >= 0 and o[P.HOST_OFF] + o[P.HOST_LEN] <= valid, (r, o)
    # the C prefilter gives the regular expression's answer (attacks.suspects' contract)
    sus = attacks.suspects(pay, lens)
    for r in range(n):
        head = bytes(pay[r, : max(0, min(int(lens[r]), width))]).split(b"\r\n\r\n", 1)[0]
        want = attacks._SUSPECT.search(head) is not None
        assert bool(sus[r]) == want, f"row {r}: C prefilter says {bool(sus[r])}, the expression {want}: {head!r}"
    attacks.scan_batch(pay, lens)


REDACT_PAYLOAD_BYTES = (1, 8, 13, 64, 100, 128, 200, 256)


def redact_checks(inp: Input) -> None:
    """privacy.redact on kernel records: bytes change only within a record's valid payload prefix
    (cap_len, cut to the payload area), each to '*'; the count is the rows that changed."""
    shape = inp.u8()
    n = 1 + (shape & 7)
    pb = REDACT_PAYLOAD_BYTES[(shape >> 3) & 7]
    extra = names_buffer(["otp", " PIN ", "x-secret"]) if shape & 0x40 else b"\0"
    recs = np.zeros(n, dtype=record_dtype(pb))
    width = recs.dtype.fields["payload"][0].itemsize if recs.dtype.fields else 0
    for i in range(n):
        recs["cap_len"][i] = inp.uint(2) if shape & 0x80 else width
        chunk = inp.take(inp.left() // (n - i))[:width]
        recs["payload"][i, : len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
    before = recs.view(np.uint8).reshape(n, -1).copy()
    count = redact(recs, extra, keep_http2_headers=bool(shape & 0x20))
    after = recs.view(np.uint8).reshape(n, -1)
    changed = 0
    for i in range(n):
        diff = np.flatnonzero(before[i] != after[i])
        if len(diff):
            valid = min(int(recs["cap_len"][i]), width)
            assert diff.min() >= PAYLOAD_OFFSET and diff.max() < PAYLOAD_OFFSET + valid, (i, diff.tolist(), valid)
            assert (after[i, diff] == ord("*")).all(), i
            changed += 1
    assert count == changed, f"redact returned {count}, {changed} rows changed"


def dns_checks(inp: Input) -> None:
    """dns.parse on a prefix (byte 0 odd: over TCP): it returns None or a message whose answers are
    no more than the header counts, each within its bounds, and a shorter prefix of the same bytes
    reads a prefix of those answers."""
    tcp = bool(inp.u8() & 1)
    buf = inp.rest()
    m = dns.parse(buf, tcp)
    if m is None:
        return
    assert 0 <= m.id < 65536 and 0 <= m.flags < 65536 and m.qdcount == 1
    assert len(m.answers) <= min(m.ancount, dns.MAX_ANSWERS)
    assert len(m.qname) <= 255 * 4
    for rtype, rclass, ttl, data in m.answers:
        assert 0 <= rtype < 65536 and 0 <= rclass < 65536 and 0 <= ttl < (1 << 32)
        assert isinstance(data, str) and len(data) <= dns.MAX_RDATA_TEXT
    json.dumps(m.answers)
    for cut in (len(buf) // 2, len(buf) - 1):
        short = dns.parse(buf[:cut], tcp)
        if short is not None and short.qname:
            assert short.answers == m.answers[: len(short.answers)], (cut, short.answers, m.answers)


def payloads(data: bytes) -> None:
    """Byte 0 mod 3: 0 the payload parsers, 1 redaction, 2 the DNS parser."""
    inp = Input(data)
    which = inp.u8() % 3
    if which == 0:
        parse_checks(*payload_rows(inp))
    elif which == 1:
        redact_checks(inp)
    else:
        dns_checks(inp)


# -- relayed ----------------------------------------------------------------------------------

RELAYED_ID, OTHER_ID = 5, 6
MAX_RELAYED_MESSAGES = 64


def relayed_values(inp: Input) -> list[bytes]:
    """Messages of the relay's topic: per message a control byte (bit 0: under an id that names no
    relayed schema), its body's length (u16) and the body, after the wire format's five bytes."""
    values = []
    while inp.left() and len(values) < MAX_RELAYED_MESSAGES:
        ctl, n = inp.u8(), inp.uint(2)
        values.append(wire.head(OTHER_ID if ctl & 1 else RELAYED_ID) + inp.take(n))
    return values


def relayed(data: bytes) -> None:
    from pktstream.consumers.engine.wirein import WireReader
    from pktstream.consumers.relay.relay import relayed_schema

    values = relayed_values(Input(data))
    wr = WireReader()
    wr._writers[(RELAYED_ID, "relayed")] = relayed_schema()
    wr._unknown[(OTHER_ID, "relayed")] = float("inf")
    origins, bad, n = wr.relayed(values)
    assert all(0 <= i < len(values) for i in bad), bad
    assert all(i in bad for i, v in enumerate(values) if v[1:5] == wire.head(OTHER_ID)[1:5])
    seen: list[int] = []
    for o in origins:
        check_batch(o.batch)
        assert "host" not in o.batch.columns and "interface" not in o.batch.columns
        assert len(o.messages) == o.batch.n, (len(o.messages), o.batch.n)  # one record per message
        assert sorted(o.row_message.tolist()) == o.messages
        seen += o.messages
    assert sum(o.batch.n for o in origins) == n
    assert sorted(seen) == [i for i in range(len(values)) if i not in bad], (seen, bad)
    assert len({(o.host, o.interface) for o in origins}) == len(origins)


# -- state snapshots ----------------------------------------------------------------------------

MAX_SNAPSHOT_MESSAGES = 64


def snapshot_messages(inp: Input) -> list[tuple[bytes | None, dict[str, str]]]:
    """A state topic's partition: per message a kind byte (mod 5: 0 a block named by its digest,
    1 a block under a digest the input gives, 2 a manifest, 3 a part with a header the input
    gives, 4 a tombstone), a length (u16) and the value."""
    from pktstream.consumers.engine import snapshot

    out: list[tuple[bytes | None, dict[str, str]]] = []
    while inp.left() and len(out) < MAX_SNAPSHOT_MESSAGES:
        kind, n = inp.u8() % 5, inp.uint(2)
        if kind == 1:
            name = inp.take(16).hex()
        elif kind == 3:
            name = inp.take(inp.u8() % 40).decode("latin-1")
        value = inp.take(n)
        if kind == 0:
            out.append((value, {H.SNAPSHOT_BLOCK: snapshot.digest(value).hex()}))
        elif kind == 1:
            out.append((value, {H.SNAPSHOT_BLOCK: name}))
        elif kind == 2:
            out.append((value, {H.SNAPSHOT_MANIFEST: "g"}))
        elif kind == 3:
            out.append((value, {H.SNAPSHOT_PART: name} if name else {}))
        else:
            out.append((None, {}))
    return out


def state_snapshot(data: bytes) -> None:
    """A state topic's partition read back (snapshot.Chain), then the snapshot unpacked: DecodeError
    only, from either."""
    from pktstream.consumers.engine import snapshot

    c = snapshot.Chain()
    try:
        for value, headers in snapshot_messages(Input(data)):
            c.add(value, headers)
        value = c.value()
    except DecodeError:
        return
    assert c.missing() == 0 or c.last != "manifest"
    if value is None:
        return
    if c.last == "manifest":
        assert c.manifest is not None and len(value) == c.manifest[1]
    with contextlib.suppress(DecodeError):
        snapshot.unpack(value)


TARGETS: dict[str, Callable[[bytes], None]] = {"container": container, "features": features, "payloads": payloads,
                                               "relayed": relayed, "snapshot": state_snapshot}
