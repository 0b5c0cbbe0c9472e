"""Packet containers to columns, a whole message at a time (the consumers' hot path).

``read_container`` parses the Object Container File's header in Python (a few
hundred bytes), decompresses each block with the codec the header names, and
decodes all of a block's records with one compiled loop (``pkt_avro_decode``
in schemas/_codec.c) into numpy columns: one int64 array per int/long field,
an (n, size) uint8 matrix per fixed field, an (n, width) matrix plus a length
array per bytes field.

This is the consumers' one door for untrusted input (any host of the fleet writes the packet
topic): a message decodes only under a writer schema that resolves against the reader's
(schemas/packet.avsc, by Avro's rules: same record name, every reader field present with a
promotable type or given a default, only the types the packet contract uses, bounded sizes); the
resolution is checked once per schema text and cached. Sizes are bounded before anything is
allocated: the schema text, the payload width, each block's decompressed size (streamed, capped at
the declared records times the largest record the schema allows, and at MAX_DECODED_BYTES per
message), and the column matrices. Every malformed input raises DecodeError (nothing else); the C
loop checks the layout against its destination and never reads past the data. Behind the door the
columns hold every reader field (defaults filled in) and every ``int`` field fits 32 bits.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from pktstream.runtime.native import load_native
from pktstream.schemas import headers as H
from pktstream.schemas import load_schema_json
from pktstream.schemas.container import KIND_BYTES, KIND_FIXED, KIND_VARINT, MAGIC, FieldSpec, zstd_module
from pktstream.schemas.decode import DecodeError

_native = load_native()
_ERRORS = {-1: "data ends inside a record", -2: "varint longer than 10 bytes", -3: "negative bytes length",
           -4: "field layout does not fit its columns", -5: "an int field's value is outside 32 bits"}
KIND_INT = 3  # a varint that must fit 32 bits (schemas/_codec.c)
DEFAULT_BYTES_WIDTH = 256

# Bounds on what a message may make us parse or allocate (docs/operations.md, "Trust boundary")
MAX_SCHEMA_CHARS = 64 << 10  # the packet schema is 3.4 KB, 0.9 KB in canonical form
MAX_FIELDS = 256
MAX_FIXED_SIZE = 64  # bytes of a fixed field (addresses are 16)
MAX_WIDTH = 1024  # payload bytes per record (the producer captures at most 256)
MAX_METADATA = 1024  # container metadata entries
MAX_DECODED_BYTES = 128 << 20  # a message's records, decompressed (twice the producer's largest batch)
MAX_COLUMN_BYTES = 512 << 20  # the column matrices of one message (the producer's 1 M records: 480 MB)
MAX_FRAMES = 16  # zstandard frames in a block (writers write one)
INFLATE_CHUNK = 8 << 20  # what a deflate or zstandard block is inflated by at a time


@dataclass
class Batch:
    metadata: dict[str, str]
    n: int
    columns: dict[str, npt.NDArray[Any]] = field(default_factory=dict)


class ByteReader:
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


def read_header(r: ByteReader) -> tuple[dict[str, str], memoryview]:
    """A container's metadata and sync marker (any schema: the tools read other topics too)."""
    if r.take(4) != MAGIC:
        raise DecodeError("not an Avro object container (bad magic)")
    meta: dict[str, str] = {}
    entries = 0
    while True:
        count = r.long()
        if count == 0:
            break
        if count < 0:
            count = -count
            r.long()  # block size in bytes
        entries += count
        if entries > MAX_METADATA:
            raise DecodeError(f"container header has more than {MAX_METADATA} metadata entries")
        for _ in range(count):
            k = bytes(r.take(r.long())).decode(errors="replace")
            meta[k] = bytes(r.take(r.long())).decode(errors="replace")
    return meta, r.take(16)


def _snappy_length(data: memoryview) -> int:
    """The uncompressed length a raw snappy block declares (its first varint)."""
    z = shift = 0
    for i in range(min(len(data), 5)):
        z |= (data[i] & 0x7F) << shift
        if not data[i] & 0x80:
            return z
        shift += 7
    raise DecodeError("snappy block has no valid length")


def _too_big(codec: str, cap: int) -> DecodeError:
    return DecodeError(f"{codec} block inflates to more than {cap:,} bytes (the most its records can take)")


class _Sink:
    """Where a block inflates to: one buffer of the cap, written a chunk at a time (its pages are
    touched only as far as the data goes; a chunk is freed once copied, so a bomb's memory is the
    cap and is handed back whole, never left behind as heap fragments)."""

    def __init__(self, codec: str, cap: int) -> None:
        self.codec, self.cap = codec, cap
        self.buf = np.empty(cap, dtype=np.uint8)
        self.n = 0

    def add(self, chunk: bytes) -> None:
        end = self.n + len(chunk)
        if end > self.cap:
            raise _too_big(self.codec, self.cap)
        self.buf[self.n : end] = np.frombuffer(chunk, dtype=np.uint8)
        self.n = end

    def data(self) -> memoryview:
        """The inflated bytes; the buffer shrunk to them in place (realloc: no copy, and what was
        reserved for the cap is handed back)."""
        self.buf.resize(self.n, refcheck=False)
        return memoryview(self.buf)  # type: ignore[arg-type]


def decompress(codec: str, data: memoryview, cap: int) -> bytes | memoryview:
    """A block's bytes, decompressed as a stream that stops past ``cap`` bytes: a block that would
    inflate to more is a DecodeError, before the memory is spent."""
    try:
        if codec == "null":
            if len(data) > cap:
                raise _too_big(codec, cap)
            return data
        if codec == "deflate":
            d = zlib.decompressobj(-15)
            sink = _Sink(codec, cap)
            tail = bytes(data)
            while not d.eof:  # a chunk at a time: a bomb stops at the cap, never past it
                chunk = d.decompress(tail, INFLATE_CHUNK)
                sink.add(chunk)
                tail = d.unconsumed_tail
                if not chunk and not tail:
                    raise DecodeError("deflate block is truncated")
            return sink.data()
        if codec == "snappy":
            import cramjam

            if len(data) < 5:
                raise DecodeError("snappy block is too short")
            if _snappy_length(data) > cap:
                raise _too_big(codec, cap)
            out = bytes(cramjam.snappy.decompress_raw(bytes(data[:-4])))
            if zlib.crc32(out).to_bytes(4, "big") != data[-4:]:
                raise DecodeError("snappy block checksum mismatch")
            return out
        if codec == "zstandard":
            zstd = zstd_module()
            sink = _Sink(codec, cap)
            rest = bytes(data)
            frames = 0
            while rest:  # frame after frame (few: writers write one), a chunk at a time within the cap
                frames += 1
                if frames > MAX_FRAMES:
                    raise DecodeError(f"zstandard block has more than {MAX_FRAMES} frames")
                z = zstd.ZstdDecompressor()
                feed = rest
                while not z.eof:
                    chunk = z.decompress(feed, max_length=INFLATE_CHUNK)
                    feed = b""
                    sink.add(chunk)
                    if not chunk and z.needs_input:
                        raise DecodeError("zstandard block is truncated")
                rest = z.unused_data
            return sink.data()
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"{codec} block does not decompress: {type(e).__name__}: {e}") from None
    raise DecodeError(f"unknown codec {codec!r}")


@dataclass(frozen=True)
class Layout:
    """How a writer's records decode into the reader's columns."""

    specs: list[FieldSpec]
    kinds: npt.NDArray[np.int64]
    slots: npt.NDArray[np.int64]
    defaults: dict[str, int]  # reader fields the writer lacks: their defaults
    kept_bytes: frozenset[str]  # the bytes fields the reader has (the writer's others are skipped)
    named_widths: Mapping[str, int] = field(default_factory=dict)  # kept bytes fields of a width of their own

    def widths(self, width: int) -> npt.NDArray[np.int64]:
        """Each bytes field's column width: the payload width for the reader's (or its own), 0 for
        the writer's own (read past, never stored)."""
        return np.array([self.named_widths.get(s.name, width) if s.name in self.kept_bytes else 0
                         for s in self.specs if s.kind == "bytes"] or [0], dtype=np.int64)

    def record_bounds(self, width: int) -> tuple[int, int, int]:
        """(fewest, most) bytes a record takes in a block, and the bytes of its columns."""
        nv = int(((self.kinds == KIND_VARINT) | (self.kinds == KIND_INT)).sum())
        nb = int((self.kinds == KIND_BYTES).sum())
        nfixed = sum(s.size for s in self.specs if s.kind == "fixed")
        # (a writer may write a payload longer than its metadata's width: cut to the width on
        # decoding, so it is allowed up to MAX_WIDTH in the most a record may take)
        return (max(1, nv + nb + nfixed), 10 * (nv + nb) + nfixed + nb * max(width, MAX_WIDTH),
                8 * (max(nv, 1) + max(nb, 1)) + max(nfixed, 1) + max(int(self.widths(width).sum()), 1))


def _short(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise DecodeError(f"a schema name is not a string: {name!r}"[:200])
    return name.rsplit(".", 1)[-1]


def _primitive(t: Any) -> Any:
    """``{"type": "long"}`` is ``"long"`` (a primitive written as an object)."""
    if isinstance(t, dict) and t.get("type") in ("int", "long", "bytes"):  # other properties are allowed
        return t["type"]
    return t


def _field_types(schema: Any, what: str) -> tuple[str, dict[str, tuple[str, int, str]], dict[str, Any]]:
    """A record schema's name and, per field, (kind, fixed size, fixed name) and default; only the
    types the packet contract uses are accepted (int, long, bytes, fixed)."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise DecodeError(f"{what} schema is not a record")
    fields = schema.get("fields")
    if not isinstance(fields, list) or not 0 < len(fields) <= MAX_FIELDS:
        raise DecodeError(f"{what} schema must have 1..{MAX_FIELDS} fields")
    named: dict[str, int] = {}
    out: dict[str, tuple[str, int, str]] = {}
    defaults: dict[str, Any] = {}
    for f in fields:
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise DecodeError(f"{what} schema has a field without a name")
        name = f["name"]
        if name.endswith("__len"):  # the decoder's own length columns are named so
            raise DecodeError(f"{what} schema has a field named {name[:80]!r}")
        if name in out:
            raise DecodeError(f"{what} schema names field {name[:80]!r} twice")
        t = _primitive(f.get("type"))
        if isinstance(t, dict) and t.get("type") == "fixed":
            size, tname = t.get("size"), _short(t.get("name"))
            if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_FIXED_SIZE:
                raise DecodeError(f"field {name[:80]!r}: fixed size {size!r} is outside 1..{MAX_FIXED_SIZE}"[:300])
            named[tname] = size
            out[name] = ("fixed", size, tname)
        elif t in ("int", "long", "bytes"):
            out[name] = (t, 0, "")
        elif isinstance(t, str) and _short(t) in named:
            out[name] = ("fixed", named[_short(t)], _short(t))
        else:
            raise DecodeError(f"field {name[:80]!r}: type {str(t)[:80]!r} is not in the packet contract")
        if "default" in f:
            defaults[name] = f["default"]
    return _short(schema.get("name")), out, defaults


_PROMOTES = {("int", "int"), ("int", "long"), ("long", "long"), ("bytes", "bytes")}  # (writer, reader)


def _layout(schema_json: str) -> Layout:
    """The layout of a writer schema resolved against the packet schema (Avro's rules), or
    DecodeError saying why it does not resolve. Cached per schema text, refusals too."""
    lay = _resolved(schema_json)
    if isinstance(lay, str):
        raise DecodeError(lay)
    return lay


@lru_cache(maxsize=64)
def _resolved(schema_json: str) -> Layout | str:
    try:
        return _resolve(schema_json)
    except DecodeError as e:
        return str(e)


def _resolve(schema_json: str) -> Layout:
    if len(schema_json) > MAX_SCHEMA_CHARS:
        raise DecodeError(f"writer schema is {len(schema_json):,} characters (at most {MAX_SCHEMA_CHARS:,})")
    try:
        writer = json.loads(schema_json)
    except (ValueError, RecursionError) as e:
        raise DecodeError(f"writer schema is not JSON: {type(e).__name__}") from None
    wname, wtypes, _ = _field_types(writer, "writer")
    rname, rtypes, rdefaults = _field_types(load_schema_json("packet"), "reader")
    if wname != rname:
        raise DecodeError(f"writer schema is record {wname[:80]!r}, not {rname!r}")
    defaults: dict[str, int] = {}
    for name, (rkind, rsize, rfixed) in rtypes.items():
        if name not in wtypes:
            d = rdefaults.get(name)
            if not isinstance(d, int) or isinstance(d, bool):
                raise DecodeError(f"writer schema lacks field {name!r}, which has no default")
            defaults[name] = d
            continue
        wkind, wsize, wfixed = wtypes[name]
        if rkind == "fixed":
            ok = wkind == "fixed" and wsize == rsize and wfixed == rfixed
        else:
            ok = (wkind, rkind) in _PROMOTES
        if not ok:
            raise DecodeError(f"field {name!r}: writer type {wkind}{f'({wsize})' if wsize else ''} does not "
                              f"resolve to {rkind}{f'({rsize})' if rsize else ''}")
    specs = [FieldSpec(name, {"int": "varint", "long": "varint"}.get(k, k), size) for name, (k, size, _) in
             wtypes.items()]
    kinds = np.array([KIND_INT if k == "int" else {"long": KIND_VARINT, "fixed": KIND_FIXED, "bytes": KIND_BYTES}[k]
                      for k, _, _ in wtypes.values()], dtype=np.int64)
    slots = np.empty(len(specs), dtype=np.int64)
    counters = {KIND_VARINT: 0, KIND_FIXED: 0, KIND_BYTES: 0}
    for i, k in enumerate(kinds):
        c = KIND_VARINT if k == KIND_INT else int(k)
        slots[i] = counters[c]
        counters[c] += 1
    return Layout(specs, kinds, slots, defaults,
                  frozenset(n for n, (k, _, _) in rtypes.items() if k == "bytes" and n in wtypes))


@dataclass
class _Columns:
    """Every record of a message decodes into one allocation of these (a block into its rows)."""

    lay: Layout
    width: int
    ints: npt.NDArray[np.int64]
    fixed: npt.NDArray[np.uint8]
    byts: npt.NDArray[np.uint8]
    blens: npt.NDArray[np.int64]
    fixed_off: npt.NDArray[np.int64]
    fixed_size: npt.NDArray[np.int64]
    byts_off: npt.NDArray[np.int64]
    byts_width: npt.NDArray[np.int64]

    @classmethod
    def allocate(cls, lay: Layout, n: int, width: int) -> _Columns:
        """Zeroed columns for n records (calloc: pages no record writes are never touched)."""
        kinds = lay.kinds
        nv = int(((kinds == KIND_VARINT) | (kinds == KIND_INT)).sum())
        fixed_size = np.array([s.size for s in lay.specs if s.kind == "fixed"] or [0], dtype=np.int64)
        byts_width = lay.widths(width)
        return cls(lay, width,
                   np.zeros((n, max(nv, 1)), dtype=np.int64),
                   np.zeros((n, max(int(fixed_size.sum()), 1)), dtype=np.uint8),
                   np.zeros((n, max(int(byts_width.sum()), 1)), dtype=np.uint8),
                   np.zeros((n, max(int((kinds == KIND_BYTES).sum()), 1)), dtype=np.int64),
                   np.concatenate(([0], np.cumsum(fixed_size)[:-1])).astype(np.int64), fixed_size,
                   np.concatenate(([0], np.cumsum(byts_width)[:-1])).astype(np.int64), byts_width)

    def decode(self, data: bytes | memoryview, start: int, n: int) -> None:
        """Decode a block of n records (read_container checked n against its size) into rows
        start..start+n."""
        rows = slice(start, start + n)  # row ranges of C-contiguous matrices are C-contiguous
        ints, fixed, byts, blens = self.ints[rows], self.fixed[rows], self.byts[rows], self.blens[rows]
        lay = self.lay
        used = _native.pkt_avro_decode(np.frombuffer(data, dtype=np.uint8), len(data), n, len(lay.specs), lay.kinds,
                                       lay.slots, ints, ints.shape[1], fixed, fixed.shape[1], self.fixed_off,
                                       self.fixed_size, len(self.fixed_size), byts, byts.shape[1], self.byts_off,
                                       self.byts_width, len(self.byts_width), blens, blens.shape[1])
        if used < 0:
            raise DecodeError(_ERRORS.get(int(used), f"decode error {used}"))
        if used != len(data):
            raise DecodeError(f"block has {len(data) - used} bytes after its {n} records")

    def views(self) -> dict[str, npt.NDArray[Any]]:
        """The reader's columns, views of the matrices (the writer's own bytes fields left out)."""
        cols: dict[str, npt.NDArray[Any]] = {}
        for spec, kind, slot in zip(self.lay.specs, self.lay.kinds, self.lay.slots, strict=True):
            if kind == KIND_BYTES and spec.name not in self.lay.kept_bytes:
                continue  # a field of the writer's own, read past
            if kind in (KIND_VARINT, KIND_INT):
                cols[spec.name] = self.ints[:, slot]
            elif kind == KIND_FIXED:
                o = int(self.fixed_off[slot])
                cols[spec.name] = self.fixed[:, o : o + spec.size]
            else:
                o = int(self.byts_off[slot])
                cols[spec.name] = self.byts[:, o : o + int(self.byts_width[slot])]
                cols[spec.name + "__len"] = self.blens[:, slot]
        return cols


def payload_width(meta: dict[str, str]) -> int:
    """The payload column's width: the prefix the writer's run captured (container metadata)."""
    text = meta.get(H.PAYLOAD_BYTES)
    if text is None or text == "":
        return DEFAULT_BYTES_WIDTH
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or int(text) > MAX_WIDTH:
        raise DecodeError(f"metadata {H.PAYLOAD_BYTES} is {text[:40]!r}, not a number of bytes 0..{MAX_WIDTH}")
    return max(1, int(text))


@dataclass
class Blocks:
    """A container's blocks, inflated and checked (sizes bounded), not yet decoded."""

    metadata: dict[str, str]
    lay: Layout
    width: int
    total: int
    blocks: list[tuple[int, bytes | memoryview]]


def container_blocks(value: bytes | None) -> Blocks:
    """One Object Container File (a packet-topic message): its header read, the writer's schema
    resolved against ours, every block inflated within the bounds and checked (DecodeError)."""
    if not value:
        raise DecodeError("empty message")
    r = ByteReader(value)
    meta, sync = read_header(r)
    if "avro.schema" not in meta:
        raise DecodeError("container header has no schema")
    lay = _layout(meta["avro.schema"])
    codec = meta.get("avro.codec", "null")
    width = payload_width(meta)
    min_record, max_record, column_bytes = lay.record_bounds(width)
    blocks: list[tuple[int, bytes | memoryview]] = []
    total = decoded = 0
    while r.pos < len(value):  # every block inflated and checked first: the columns are allocated once
        n = r.long()
        size = r.long()
        if n < 0:
            raise DecodeError(f"block claims {n} records")
        total += n
        if total * column_bytes > MAX_COLUMN_BYTES:
            raise DecodeError(f"{total:,} records of payload width {width} need {total * column_bytes >> 20:,} MiB "
                              f"of columns (at most {MAX_COLUMN_BYTES >> 20:,})")
        block = decompress(codec, r.take(size), min(n * max_record, MAX_DECODED_BYTES - decoded))
        # a record takes at least a byte per varint and bytes field plus its fixed fields: a corrupt
        # count must not make us allocate more than the data could hold
        if n * min_record > len(block):
            raise DecodeError(f"block claims {n} records in {len(block)} bytes")
        decoded += len(block)
        if r.take(16) != sync:
            raise DecodeError("block sync marker mismatch")
        blocks.append((n, block))
    return Blocks(meta, lay, width, total, blocks)


def read_container(value: bytes | None) -> Batch:
    """Decode one Object Container File (a packet-topic message) into columns."""
    b = container_blocks(value)
    lay, total = b.lay, b.total
    out = _Columns.allocate(lay, total, b.width)
    start = 0
    for n, block in b.blocks:
        out.decode(block, start, n)
        start += n
    cols = out.views()
    for name, d in lay.defaults.items():  # reader fields this writer did not have
        cols[name] = np.full(total, d, dtype=np.int64)
    return Batch(b.metadata, total, cols)


# -- pktstream relay's topic: one record per message (the schema-registry wire format) ----------

NAME_WIDTH = 255  # bytes of a relayed record's host id and interface name (the relay writes no longer ones)
RELAYED_NAMES = ("host", "interface")


@lru_cache(maxsize=1)
def _relayed_layout() -> Layout:
    """The relay's record (consumers/relay: schemas/packet.avsc's fields, then the host and interface
    as Avro strings, which are encoded as bytes are) as columns."""
    base = _layout(json.dumps(load_schema_json("packet")))
    nb = int((base.kinds == KIND_BYTES).sum())
    return Layout([*base.specs, *(FieldSpec(n, "bytes") for n in RELAYED_NAMES)],
                  np.append(base.kinds, [KIND_BYTES] * len(RELAYED_NAMES)).astype(np.int64),
                  np.append(base.slots, np.arange(nb, nb + len(RELAYED_NAMES))).astype(np.int64), {},
                  base.kept_bytes | frozenset(RELAYED_NAMES), {n: NAME_WIDTH for n in RELAYED_NAMES})


def _frame_ends(data: bytes | memoryview, n: int, lay: Layout) -> npt.NDArray[np.int64] | str:
    """Where each of n records of the layout ends in ``data`` (schemas/_codec.c's walk), or why the
    data is not n such records."""
    sizes = np.array([s.size for s in lay.specs], dtype=np.int64)
    ends = np.empty(max(n, 1), dtype=np.int64)
    out = np.empty(max(len(data), 1), dtype=np.uint8)
    got = _native.pkt_avro_frame(np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(1, np.uint8),
                                 len(data), n, len(lay.kinds), lay.kinds, sizes, b"", 0, b"", 0, out, len(out), ends)
    if got < 0:
        return {-5: "bytes after the record", -6: "an int field's value is outside 32 bits"}.get(
            int(got), _ERRORS.get(int(got), f"decode error {got}"))
    return ends[:n]


@dataclass
class Relayed:
    """Messages of pktstream relay's topic, decoded: the records of those that are one record each
    (in order, with their host and interface as columns), and why each other one is not."""

    batch: Batch
    bad: dict[int, str]  # index of a message's body -> why it does not read
    index: npt.NDArray[np.int64]  # the body each row of the batch came from


def read_relayed(values: Sequence[bytes | memoryview], skip: int = 0) -> Relayed:
    """Records of the relayed schema, one per value (after its first ``skip`` bytes: a message's bytes
    after the wire format's five), into columns, as read_container does a container's. A value that
    is not exactly one such record is named in ``bad`` and leaves the others alone: one pass of the
    compiled walk checks that every record ends where its message does; only when one does not is
    each message walked alone."""
    lay = _relayed_layout()
    width = DEFAULT_BYTES_WIDTH
    min_record, max_record, column_bytes = lay.record_bounds(width)
    lens = np.fromiter(map(len, values), dtype=np.int64, count=len(values)) - skip
    sized = (lens >= min_record) & (lens <= max_record)
    bad: dict[int, str] = {int(i): f"a relayed record of {int(lens[i]):,} bytes (the schema's take "
                           f"{min_record}..{max_record:,})" for i in np.flatnonzero(~sized)}
    good = np.flatnonzero(sized).tolist()
    if len(good) * column_bytes > MAX_COLUMN_BYTES:
        raise DecodeError(f"{len(good):,} relayed records at once need more than {MAX_COLUMN_BYTES >> 20} MiB")
    data = b"".join([values[i][skip:] for i in good] if bad else [v[skip:] for v in values])
    ends = _frame_ends(data, len(good), lay)
    if isinstance(ends, str) or not np.array_equal(ends, np.cumsum(lens[good])):
        for i in good:  # some message is not one record: find which, alone
            why = _frame_ends(values[i][skip:], 1, lay)
            if isinstance(why, str):
                bad[i] = why
        good = [i for i in good if i not in bad]
        data = b"".join([values[i][skip:] for i in good])
    out = _Columns.allocate(lay, len(good), width)
    out.decode(data, 0, len(good))
    cols = out.views()
    index = np.array(good, dtype=np.int64)
    long_names = np.zeros(len(good), bool)
    for name in RELAYED_NAMES:
        long_names |= cols[name + "__len"] > NAME_WIDTH
    if long_names.any():  # the relay writes none: cut, they could pass for another host's
        for i in index[long_names]:
            bad[int(i)] = f"a host or interface name longer than {NAME_WIDTH} bytes"
        keep = ~long_names
        cols, index = {k: v[keep] for k, v in cols.items()}, index[keep]
    return Relayed(Batch({}, len(index), cols), bad, index)


def relayed_origins(batch: Batch) -> list[tuple[str, str, npt.NDArray[np.int64] | None]]:
    """The (host, interface) of a relayed batch's rows and which rows are each's (None: all of them),
    the columns of the names left out of the batch."""
    if batch.n == 0:
        return []
    cols = batch.columns
    key = np.concatenate([cols["host"], cols["interface"],
                          np.stack([cols["host__len"], cols["interface__len"]], axis=1).astype(np.uint8)], axis=1)
    for name in RELAYED_NAMES:
        del cols[name], cols[name + "__len"]

    def text(row: npt.NDArray[np.uint8]) -> tuple[str, str]:
        hl, il = int(row[-2]), int(row[-1])
        return (bytes(row[:hl]).decode("utf-8", "replace"),
                bytes(row[NAME_WIDTH : NAME_WIDTH + il]).decode("utf-8", "replace"))

    # rows of one capture point come in runs: the runs found by comparing neighbours (one vectorized pass),
    # then grouped by their names' bytes (a step per run, never a sort of wide rows)
    starts = np.flatnonzero(np.concatenate(([True], (key[1:] != key[:-1]).any(axis=1))))
    if len(starts) == 1:
        return [(*text(key[0]), None)]
    ends = np.append(starts[1:], len(key))
    groups: dict[bytes, list[int]] = {}
    for k, row in enumerate(key[starts]):
        groups.setdefault(row.tobytes(), []).append(k)
    out: list[tuple[str, str, npt.NDArray[np.int64] | None]] = []
    for runs in groups.values():
        rows = np.concatenate([np.arange(starts[k], ends[k]) for k in runs]) if len(runs) > 1 else \
            np.arange(starts[runs[0]], ends[runs[0]])
        out.append((*text(key[rows[0]]), np.sort(rows).astype(np.int64)))
    return out
