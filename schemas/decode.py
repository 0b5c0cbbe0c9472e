"""Decoding of packet-topic messages (Avro containers) and presentation helpers."""

from __future__ import annotations

import base64
import io
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import fastavro


class DecodeError(ValueError):
    """A message that is not a readable packet container; ``reason`` says why."""


@dataclass
class Container:
    metadata: dict[str, str]
    records: list[dict[str, Any]]


def decode_container(value: bytes | None) -> Container:
    """Read one Avro Object Container File; raise DecodeError on anything malformed."""
    if not value:
        raise DecodeError("empty message")
    try:
        reader = fastavro.reader(io.BytesIO(value))
        records = list(reader)
        meta = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in reader.metadata.items()}
    except Exception as e:  # fastavro raises many types on corrupt input
        raise DecodeError(f"{type(e).__name__}: {e}") from None
    return Container(metadata=meta, records=[r for r in records if isinstance(r, dict)])


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
