"""Feature batches: what the stateful consumers need of each packet record, as one numpy array.

Stage one of a consumer (see ``stream.py``) turns a packet-topic message into a feature batch:
the packet columns it needs plus what the payload prefix says (HTTP method, Host header or TLS
server name, request target), with strings kept once in a table the rows point into. The batch
travels through the consumer's internal repartition topic as one Kafka message:

    b"PSFB" | u32 header length | header JSON {"v": 1, "n": rows, "strings": [...]} | rows

The rows are ``FEATURE_DTYPE`` records, little-endian, packed. Only pktstream writes these
messages; a message that does not read as one raises DecodeError (and is dead-lettered).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pktstream.consumers.columns import Batch
from pktstream.consumers.decode import DecodeError
from pktstream.consumers.parse import FLAGS as PFLAGS
from pktstream.consumers.parse import (
    HOST_LEN,
    HOST_OFF,
    KIND,
    KIND_H2_PREFACE,
    KIND_HTTP1,
    KIND_TLS_HELLO,
    METHOD,
    PATH_LEN,
    PATH_OFF,
    parse_payloads,
)

MAGIC = b"PSFB"
VERSION = 1

FEATURE_DTYPE = np.dtype([
    ("ts_ns", "<i8"),
    ("src", "<u8", (2,)),  # the 16 address bytes as two words (equality and hashing only)
    ("dst", "<u8", (2,)),
    ("sport", "<u2"),
    ("dport", "<u2"),
    ("proto", "u1"),
    ("ip_version", "u1"),
    ("tcp_flags", "u1"),
    ("ttl", "u1"),
    ("wire_len", "<u4"),
    ("sample_rate", "<u4"),
    ("kind", "u1"),  # parse.KIND_*: what the payload prefix is
    ("method", "u1"),  # index into parse.METHODS
    ("pflags", "u1"),  # parse.F_*: request line / headers / ClientHello cut short
    ("view", "u1"),  # which keying brought the row to this partition (VIEW_*)
    ("origin", "<i2"),  # string index: "host/interface" that captured the packet
    ("name", "<i4"),  # string index: Host header or TLS server name; -1 when none
    ("path", "<i4"),  # string index: request target without its query; -1 when none
    ("attack", "<u2"),  # ATTACK_* bits found in the payload prefix (alerts consumer)
    ("frag_flags", "u1"),
    ("rflags", "u1"),
], align=False)

VIEW_DST, VIEW_SRC = 0, 1
REQUEST_KINDS = (KIND_HTTP1, KIND_H2_PREFACE, KIND_TLS_HELLO)


@dataclass
class Features:
    rows: npt.NDArray[Any]
    strings: list[str] = field(default_factory=list)

    def text(self, idx: int) -> str:
        return self.strings[idx] if 0 <= idx < len(self.strings) else ""


class _Strings:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.index: dict[str, int] = {}

    def add(self, s: str) -> int:
        i = self.index.get(s)
        if i is None:
            i = self.index[s] = len(self.items)
            self.items.append(s)
        return i


def addr_words(col: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    """(n, 16) address bytes to (n, 2) words."""
    return np.ascontiguousarray(col, dtype=np.uint8).view("<u8").reshape(-1, 2)


def words_bytes(w: npt.NDArray[Any]) -> bytes:
    return np.ascontiguousarray(w, dtype="<u8").tobytes()


def featurize(batch: Batch, origin: str, attack_scan: Any = None) -> Features:
    """One packet container's records as feature rows (the strings they need included).

    ``attack_scan`` (bytes -> int) marks HTTP request payloads with attack bits; it is
    called once per distinct payload prefix."""
    n = batch.n
    c = batch.columns
    rows = np.zeros(n, dtype=FEATURE_DTYPE)
    strings = _Strings()
    rows["origin"] = strings.add(origin)
    rows["name"] = -1
    rows["path"] = -1
    if n == 0:
        return Features(rows, strings.items)
    rows["ts_ns"] = c["ts_ns"]
    rows["src"] = addr_words(c["src_addr"])
    rows["dst"] = addr_words(c["dst_addr"])
    rows["sport"] = c["src_port"]
    rows["dport"] = c["dst_port"]
    rows["proto"] = c["protocol"]
    rows["ip_version"] = c["ip_version"]
    rows["tcp_flags"] = c["tcp_flags"]
    rows["ttl"] = c["ttl"]
    rows["wire_len"] = c["wire_len"]
    rows["sample_rate"] = np.maximum(c["sample_rate"], 1)
    rows["frag_flags"] = c["frag_flags"]
    rows["rflags"] = c["flags"] & 0xFF
    payload = c.get("payload")
    if payload is None or payload.shape[1] == 0:
        return Features(rows, strings.items)
    plen = c["payload__len"]
    parsed = parse_payloads(payload, plen)
    kind = parsed[:, KIND]
    rows["kind"] = kind
    rows["method"] = parsed[:, METHOD]
    rows["pflags"] = parsed[:, PFLAGS]
    req = np.flatnonzero(np.isin(kind, (KIND_HTTP1, KIND_TLS_HELLO)))
    if req.size == 0:
        return Features(rows, strings.items)
    # identical prefixes (the same request again) are read once: group request rows by a hash
    # of their payload bytes
    plen_r = plen[req]
    pw = payload[req]
    if pw.shape[1] % 8:
        pw = np.pad(pw, ((0, 0), (0, 8 - pw.shape[1] % 8)))
    words = np.ascontiguousarray(pw).view("<u8")
    with np.errstate(over="ignore"):
        h = plen_r.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        for j in range(words.shape[1]):
            h = (h ^ words[:, j]) * np.uint64(0x100000001B3)
            h ^= h >> np.uint64(31)
    _u, first, inv = np.unique(h, return_index=True, return_inverse=True)
    u_name = np.full(len(first), -1, dtype=np.int32)
    u_path = np.full(len(first), -1, dtype=np.int32)
    u_attack = np.zeros(len(first), dtype=np.uint16)
    for j, i in enumerate(req[first].tolist()):
        p = parsed[i]
        ho, hl, po, pl = int(p[HOST_OFF]), int(p[HOST_LEN]), int(p[PATH_OFF]), int(p[PATH_LEN])
        if hl > 0:
            host = bytes(payload[i, ho : ho + hl]).decode("latin-1").lower()
            if ":" in host and not host.startswith("["):
                host = host.rsplit(":", 1)[0]
            u_name[j] = strings.add(host)
        if pl > 0:
            target = bytes(payload[i, po : po + pl]).decode("latin-1")
            u_path[j] = strings.add(target.split("?", 1)[0])
        if attack_scan is not None and kind[i] == KIND_HTTP1:
            u_attack[j] = int(attack_scan(bytes(payload[i, : int(plen[i])])))
    inv = inv.ravel()
    rows["name"][req] = u_name[inv]
    rows["path"][req] = u_path[inv]
    rows["attack"][req] = u_attack[inv]
    return Features(rows, strings.items)


def encode(f: Features) -> bytes:
    header = json.dumps({"v": VERSION, "n": len(f.rows), "strings": f.strings}, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + np.ascontiguousarray(f.rows).tobytes()


def decode(value: bytes | None) -> Features:
    if not value or len(value) < 8 or value[:4] != MAGIC:
        raise DecodeError("not a pktstream feature batch (bad magic)")
    (hlen,) = struct.unpack_from("<I", value, 4)
    if 8 + hlen > len(value):
        raise DecodeError("feature batch header runs past the message")
    try:
        header = json.loads(value[8 : 8 + hlen])
        n = int(header["n"])
        strings = [str(s) for s in header["strings"]]
        version = int(header["v"])
    except (ValueError, KeyError, TypeError) as e:
        raise DecodeError(f"feature batch header unreadable: {e}") from None
    if version != VERSION:
        raise DecodeError(f"feature batch version {version} (this consumer reads {VERSION})")
    body = memoryview(value)[8 + hlen :]
    if n < 0 or len(body) != n * FEATURE_DTYPE.itemsize:
        raise DecodeError(f"feature batch claims {n} rows in {len(body)} bytes")
    rows = np.frombuffer(body, dtype=FEATURE_DTYPE, count=n)
    return Features(rows, strings)


def subset(f: Features, idx: npt.NDArray[np.intp], view: int | None = None) -> Features:
    """Rows idx of f; the string table is shared (it is small), not compacted."""
    rows = f.rows[idx]
    if view is not None:
        rows = rows.copy()
        rows["view"] = view
    return Features(rows, f.strings)


def addr_hash(words: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    """A stable 64-bit hash of (n, 2) address words (splitmix64 of their xor-rotate)."""
    with np.errstate(over="ignore"):
        w = np.asarray(words, dtype=np.uint64)
        z: npt.NDArray[np.uint64] = w[:, 0] ^ ((w[:, 1] << np.uint64(17)) | (w[:, 1] >> np.uint64(47)))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return np.asarray(z ^ (z >> np.uint64(31)), dtype=np.uint64)
