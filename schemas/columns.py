"""Packet containers to columns, a whole message at a time (the consumers' hot path).

``read_container`` parses the Object Container File's header in Python (a few
hundred bytes), decompresses each block with the codec the header names, and
decodes all of a block's records with one compiled loop (``pkt_avro_decode``
in schemas/_codec.c) into numpy columns: one int64 array per int/long field,
an (n, size) uint8 matrix per fixed field, an (n, width) matrix plus a length
array per bytes field. Every malformed input raises DecodeError; the C loop
never reads past the data.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from pktstream.runtime.native import load_native
from pktstream.schemas import headers as H
from pktstream.schemas.container import (
    KIND_BYTES,
    KIND_FIXED,
    KIND_VARINT,
    MAGIC,
    AvroEncodeError,
    field_specs,
    zstd_module,
)
from pktstream.schemas.decode import DecodeError

_native = load_native()
_ERRORS = {-1: "data ends inside a record", -2: "varint longer than 10 bytes", -3: "negative bytes length"}
DEFAULT_BYTES_WIDTH = 256


@dataclass
class Batch:
    metadata: dict[str, str]
    n: int
    columns: dict[str, npt.NDArray[Any]] = field(default_factory=dict)


class _Reader:
    """Reads a container without copying it: take() gives views of its bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def long(self) -> int:
        z = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise DecodeError("container ends inside a number")
            b = self.data[self.pos]
            self.pos += 1
            z |= (b & 0x7F) << shift
            if not b & 0x80:
                return (z >> 1) ^ -(z & 1)
            shift += 7
            if shift > 63:
                raise DecodeError("varint longer than 10 bytes")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise DecodeError("container ends early")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def _decompress(codec: str, data: memoryview) -> bytes | memoryview:
    try:
        if codec == "null":
            return data
        if codec == "deflate":
            return zlib.decompress(data, -15)
        if codec == "snappy":
            import cramjam

            out = bytes(cramjam.snappy.decompress_raw(bytes(data[:-4])))
            if zlib.crc32(out).to_bytes(4, "big") != data[-4:]:
                raise DecodeError("snappy block checksum mismatch")
            return out
        if codec == "zstandard":
            return bytes(zstd_module().decompress(data))
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"{codec} block does not decompress: {e}") from None
    raise DecodeError(f"unknown codec {codec!r}")


@lru_cache(maxsize=16)
def _layout(schema_json: str) -> tuple[list[Any], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    try:
        specs = field_specs(json.loads(schema_json))
    except (ValueError, KeyError, TypeError, AvroEncodeError) as e:
        raise DecodeError(f"schema not readable as columns: {e}") from None
    kinds = np.array([{"varint": KIND_VARINT, "fixed": KIND_FIXED, "bytes": KIND_BYTES}[s.kind] for s in specs],
                     dtype=np.int64)
    counters = {KIND_VARINT: 0, KIND_FIXED: 0, KIND_BYTES: 0}
    slots = np.empty(len(specs), dtype=np.int64)
    for i, k in enumerate(kinds):
        slots[i] = counters[int(k)]
        counters[int(k)] += 1
    return specs, kinds, slots


def _decode_block(specs: list[Any], kinds: npt.NDArray[np.int64], slots: npt.NDArray[np.int64],
                  data: bytes | memoryview, n: int, width: int) -> dict[str, npt.NDArray[Any]]:
    nv = int((kinds == KIND_VARINT).sum())
    fixed_size = np.array([s.size for s in specs if s.kind == "fixed"] or [0], dtype=np.int64)
    # a record takes at least a byte per varint and bytes field plus its fixed fields: a corrupt
    # count must not make us allocate more than the data could hold
    min_record = max(1, nv + int((kinds == KIND_BYTES).sum()) + int(fixed_size.sum()))
    if n < 0 or n * min_record > len(data):
        raise DecodeError(f"block claims {n} records in {len(data)} bytes")
    fixed_off = np.concatenate(([0], np.cumsum(fixed_size)[:-1])).astype(np.int64)
    nb = int((kinds == KIND_BYTES).sum())
    byts_width = np.full(max(nb, 1), width, dtype=np.int64)
    byts_off = np.arange(max(nb, 1), dtype=np.int64) * width
    ints = np.zeros((n, max(nv, 1)), dtype=np.int64)
    fixed = np.zeros((n, max(int(fixed_size.sum()), 1)), dtype=np.uint8)
    byts = np.zeros((n, max(nb * width, 1)), dtype=np.uint8)
    blens = np.zeros((n, max(nb, 1)), dtype=np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    used = _native.pkt_avro_decode(buf, len(data), n, len(specs), kinds, slots, ints, ints.shape[1], fixed,
                                   fixed.shape[1], fixed_off, fixed_size, byts, byts.shape[1], byts_off, byts_width,
                                   blens, blens.shape[1])
    if used < 0:
        raise DecodeError(_ERRORS.get(int(used), f"decode error {used}"))
    if used != len(data):
        raise DecodeError(f"block has {len(data) - used} bytes after its {n} records")
    cols: dict[str, npt.NDArray[Any]] = {}
    for spec, kind, slot in zip(specs, kinds, slots, strict=True):
        if kind == KIND_VARINT:
            cols[spec.name] = ints[:, slot]
        elif kind == KIND_FIXED:
            o = int(fixed_off[slot])
            cols[spec.name] = fixed[:, o : o + spec.size]
        else:
            cols[spec.name] = byts[:, slot * width : (slot + 1) * width]
            cols[spec.name + "__len"] = blens[:, slot]
    return cols


def read_container(value: bytes | None) -> Batch:
    """Decode one Object Container File (a packet-topic message) into columns."""
    if not value:
        raise DecodeError("empty message")
    r = _Reader(value)
    if r.take(4) != MAGIC:
        raise DecodeError("not an Avro object container (bad magic)")
    meta: dict[str, str] = {}
    while True:
        count = r.long()
        if count == 0:
            break
        if count < 0:
            count = -count
            r.long()  # block size in bytes
        for _ in range(count):
            k = bytes(r.take(r.long())).decode(errors="replace")
            meta[k] = bytes(r.take(r.long())).decode(errors="replace")
    sync = r.take(16)
    if "avro.schema" not in meta:
        raise DecodeError("container header has no schema")
    specs, kinds, slots = _layout(meta["avro.schema"])
    codec = meta.get("avro.codec", "null")
    width = int(meta.get(H.PAYLOAD_BYTES, DEFAULT_BYTES_WIDTH) or DEFAULT_BYTES_WIDTH)
    width = max(1, min(width, 1 << 16))
    parts: list[dict[str, npt.NDArray[Any]]] = []
    total = 0
    while r.pos < len(value):
        n = r.long()
        size = r.long()
        block = _decompress(codec, r.take(size))
        if r.take(16) != sync:
            raise DecodeError("block sync marker mismatch")
        parts.append(_decode_block(specs, kinds, slots, block, n, width))
        total += n
    if not parts:
        return Batch(meta, 0, _decode_block(specs, kinds, slots, b"", 0, width))
    cols = parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return Batch(meta, total, cols)
