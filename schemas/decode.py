"""Decoding of packet-topic messages (Avro containers) and presentation helpers."""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import fastavro
from fastavro.schema import parse_schema, to_parsing_canonical_form

from pktstream.schemas import SCHEMA_DIR


class DecodeError(ValueError):
    """A message that is not a readable packet container; ``reason`` says why."""


@dataclass
class Container:
    metadata: dict[str, str]
    records: list[dict[str, Any]]


MAX_SCHEMA_DEPTH = 32  # nesting of a writer schema fastavro is given (the packet schema's is 3)


def _depth(text: str) -> int:
    """The deepest nesting of JSON brackets in a schema's text (no recursion, no parsing)."""
    depth = deepest = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


OTHER_SCHEMAS = {"io.pktstream.ProducerStats": "stats", "io.pktstream.ApiUsage": "usage"}  # what else tail shows


@cache
def _known_forms(kind: str) -> frozenset[str]:
    """The Parsing Canonical Forms of a schema of ours, now and in every version before."""
    paths = [SCHEMA_DIR / f"{kind}.avsc", *sorted((SCHEMA_DIR / "history" / kind).glob("*.avsc"))]
    return frozenset(str(to_parsing_canonical_form(parse_schema(json.loads(p.read_text())))) for p in paths)


def _is_ours(schema: str, kind: str) -> bool:
    try:
        return str(to_parsing_canonical_form(parse_schema(json.loads(schema)))) in _known_forms(kind)
    except Exception:  # fastavro refuses it in its own ways
        return False


def _full_name(schema: str) -> str:
    """A container schema's full name (namespace.name), "" when it is not a named record."""
    try:
        doc = json.loads(schema)
    except (ValueError, RecursionError):
        raise DecodeError("container schema is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        return ""
    name, ns = doc["name"], doc.get("namespace")
    return name if "." in name or not isinstance(ns, str) else f"{ns}.{name}"


def iter_container(value: bytes | None) -> tuple[dict[str, str], Iterator[dict[str, Any]]]:
    """One Avro Object Container File (``pktstream tail`` reads the stats topic too): its metadata
    and its records, decoded lazily by fastavro. Only pktstream's own schemas are read, and a
    packet container must pass the consumers' door (columns.read_container). The header and the
    blocks go through the packet decoder's bounded reader first (schema size and nesting, metadata
    entries, each block decompressed with a cap), and fastavro reads the result with the null
    codec, so a hostile container can neither recurse nor inflate without bound. Malformed input:
    DecodeError (here, or from the iterator)."""
    from pktstream.schemas.columns import (
        MAX_DECODED_BYTES,
        MAX_SCHEMA_CHARS,
        ByteReader,
        decompress,
        read_container,
        read_header,
    )
    from pktstream.schemas.container import MAGIC, encode_long

    if not value:
        raise DecodeError("empty message")
    r = ByteReader(value)
    meta, sync = read_header(r)
    schema = meta.get("avro.schema", "")
    if not schema or len(schema) > MAX_SCHEMA_CHARS:
        raise DecodeError(f"container schema missing or longer than {MAX_SCHEMA_CHARS:,} characters")
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise DecodeError(f"container schema nests deeper than {MAX_SCHEMA_DEPTH}")
    name = _full_name(schema)
    if name == "io.pktstream.Packet":
        read_container(value)  # the consumers' door: the packet contract and every bound (DecodeError)
    elif name not in OTHER_SCHEMAS or not _is_ours(schema, OTHER_SCHEMAS[name]):
        raise DecodeError(f"container schema {name[:100]!r} is none that pktstream writes")
    codec = meta.get("avro.codec", "null")
    head = bytes(value[: r.pos - 16])
    if codec != "null":  # the same header with the null codec: the blocks are given decompressed
        rebuilt = {**meta, "avro.codec": "null"}
        head = MAGIC + encode_long(len(rebuilt)) + b"".join(
            encode_long(len(k.encode())) + k.encode() + encode_long(len(v.encode())) + v.encode()
            for k, v in rebuilt.items()) + encode_long(0)
    out = [head, bytes(sync)]
    left = MAX_DECODED_BYTES
    while r.pos < len(value):
        n = r.long()
        if n < 0:
            raise DecodeError(f"block claims {n} records")
        block = decompress(codec, r.take(r.long()), left)
        left -= len(block)
        if n > len(block):  # a record of ours takes a byte at least
            raise DecodeError(f"block claims {n} records in {len(block)} bytes")
        if r.take(16) != sync:
            raise DecodeError("block sync marker mismatch")
        out += [encode_long(n), encode_long(len(block)), bytes(block), bytes(sync)]
    try:
        reader = fastavro.reader(io.BytesIO(b"".join(out)))
    except Exception as e:  # fastavro raises many types on corrupt input
        raise DecodeError(f"{type(e).__name__}: {e}"[:500]) from None

    def records() -> Iterator[dict[str, Any]]:
        try:
            for rec in reader:
                if isinstance(rec, dict):
                    yield rec
        except Exception as e:
            raise DecodeError(f"{type(e).__name__}: {e}"[:500]) from None

    return meta, records()


def decode_container(value: bytes | None) -> Container:
    """Read one Avro Object Container File whole; raise DecodeError on anything malformed."""
    meta, records = iter_container(value)
    return Container(metadata=meta, records=list(records))


_MAPPED = bytes(10) + b"\xff\xff"
_ZERO12 = bytes(12)


def addr_text(addr: bytes) -> str:
    """A 16-byte address as text; IPv4-mapped addresses as dotted quads. The text of Python's
    ipaddress (RFC 5952), formatted by the C library where the two agree (all but the deprecated
    IPv4-compatible ::a.b.c.d form, which ipaddress writes in hex)."""
    if addr[:12] == _MAPPED:
        return socket.inet_ntop(socket.AF_INET, addr[12:])
    if addr[:12] == _ZERO12:
        return str(ipaddress.IPv6Address(addr))
    return socket.inet_ntop(socket.AF_INET6, addr)


def escape_payload(b: bytes) -> str:
    """Printable ASCII as is, everything else as \\xNN (and \\r, \\n, \\t, \\\\)."""
    out = []
    for c in b:
        if c == 0x5C:
            out.append("\\\\")
        elif c == 0x0D:
            out.append("\\r")
        elif c == 0x0A:
            out.append("\\n")
        elif c == 0x09:
            out.append("\\t")
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        else:
            out.append(f"\\x{c:02x}")
    return "".join(out)


def present(rec: dict[str, Any], payload: str = "text") -> dict[str, Any]:
    """A record made readable: addresses as text, payload escaped, base64 or hex."""
    out = dict(rec)
    for k in ("src_addr", "dst_addr"):
        if isinstance(rec.get(k), bytes) and len(rec[k]) == 16:
            out[k] = addr_text(rec[k])
    if "payload" not in rec:  # another topic's records (stats): bytes as base64, the rest as is
        return {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in out.items()}
    p: bytes = rec["payload"]
    if payload == "base64":
        out["payload"] = base64.b64encode(p).decode()
    elif payload == "hex":
        out["payload"] = p.hex()
    elif payload == "none":
        out.pop("payload")
    else:
        out["payload"] = escape_payload(p)
    return out


def message_headers(msg: Any) -> dict[str, str]:
    """A Kafka message's headers as text (a header without a value reads as "")."""
    return {k: (v.decode(errors="replace") if v is not None else "") for k, v in (msg.headers() or [])}
