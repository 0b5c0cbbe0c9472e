"""The bytes of a state snapshot (a consumer's ``APP.state`` topic).

A processor's ``dump`` gives JSON-like data in which numpy arrays may stand anywhere; they travel
as raw bytes after a small JSON header instead of as base64 text inside JSON:

    b"PSS1" | u32 header length | header JSON | the arrays' bytes, one after another

The header is the data with each array replaced by {"$nd": [byte length, dtype descr, shape]}.
``unpack`` also reads the earlier form, plain JSON, so a state written by an older version is
still restored.

A snapshot travels as parts (``split``: at most a megabyte each by default), so no message comes
near the broker's limit whatever the state's size; they are written in one transaction, part i
keyed ``q`` (i = 0) or ``q.i``, each with the header ``pktstream.snapshot.part`` =
``GENERATION/i/PARTS``, after tombstones for the keys of a previous, larger snapshot's parts (the
compacted topic keeps the latest generation whole). ``Parts`` puts the last complete generation back
together while the partition is read (a message without the header is a snapshot of one part, as
earlier versions wrote them).

``pack_within`` bounds the whole: while a state packs to more than its budget it asks the processor
to ``degrade`` it (less detail: see the processors) and packs again, logging ``state_degraded`` with
what was dropped; a state over the budget with nothing left to drop is logged as
``state_over_limit`` and written as it is.
"""

from __future__ import annotations

import base64
import json
import struct
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
from numpy.lib import format as npformat

from pktstream.schemas.decode import DecodeError

MAGIC = b"PSS1"
_KEY = "$nd"
MAX_DEGRADE_STEPS = 64  # each step drops something; a processor's steps end long before this

log = structlog.get_logger("pktstream.stream")


class Packed:
    """A packed snapshot as the buffers it is made of (the header, then each array's own memory:
    nothing copied until the parts are cut), and its length."""

    def __init__(self, buffers: list[bytes | memoryview]) -> None:
        self.buffers = buffers
        self.size = sum(len(b) for b in buffers)

    def __len__(self) -> int:
        return self.size

    def joined(self) -> bytes:
        return b"".join(self.buffers)


def packed(doc: Any) -> Packed:
    arrays: list[memoryview] = []

    def walk(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            b = np.ascontiguousarray(x).reshape(-1).view(np.uint8).data  # the array's bytes, not a copy
            arrays.append(b)
            return {_KEY: [len(b), npformat.dtype_to_descr(x.dtype), list(x.shape)]}
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        return x

    head = json.dumps(walk(doc), separators=(",", ":")).encode()
    return Packed([MAGIC + struct.pack("<I", len(head)) + head, *arrays])


def pack(doc: Any) -> bytes:
    return packed(doc).joined()


def pack_within(doc: Callable[[], Any], degrade: Callable[[], dict[str, Any]], limit: int,
                **context: Any) -> Packed:
    """``packed(doc())``, with ``degrade()`` (a processor's, on the state doc() dumps) called and the
    state dumped again for as long as the bytes exceed ``limit`` and degrade finds something to drop
    (it returns what it dropped; {} when nothing is left). ``context`` goes into the log lines."""
    value = packed(doc())
    for _ in range(MAX_DEGRADE_STEPS):
        if len(value) <= limit:
            return value
        dropped = degrade()
        if not dropped:
            break
        before = len(value)
        value = packed(doc())
        log.warning("state_degraded", bytes_before=before, bytes=len(value), limit=limit, **context, **dropped)
    if len(value) > limit:
        log.error("state_over_limit", bytes=len(value), limit=limit, **context)
    return value


MAX_PARTS = 1 << 16  # parts of one snapshot (a header naming more is not ours)


def split(value: bytes | Packed, part_bytes: int) -> Iterator[tuple[bytes, bytes]]:
    """A packed snapshot as (part, its header's value) in order, each part at most ``part_bytes``
    (larger where that would take more than MAX_PARTS parts), cut as they are taken: what is held
    besides the state's own arrays is one part."""
    pk = value if isinstance(value, Packed) else Packed([value])
    part_bytes = max(part_bytes, -(-pk.size // MAX_PARTS))
    n = max(1, -(-pk.size // part_bytes))
    gen = uuid.uuid4().hex[:16]
    pieces: list[memoryview] = []
    have = i = 0
    for buf in pk.buffers:
        view = memoryview(buf).cast("B")
        while len(view):
            take = min(len(view), part_bytes - have)
            pieces.append(view[:take])
            view, have = view[take:], have + take
            if have == part_bytes:
                yield b"".join(pieces), f"{gen}/{i}/{n}".encode()
                pieces, have, i = [], 0, i + 1
    if pieces or i == 0:
        yield b"".join(pieces), f"{gen}/{i}/{n}".encode()


def parts_of(size: int, part_bytes: int) -> int:
    """How many parts ``split`` cuts a snapshot of ``size`` bytes into."""
    return max(1, -(-size // max(part_bytes, -(-size // MAX_PARTS))))


def part_key(q: int, i: int) -> bytes:
    """The key of part i of partition q's snapshot (compaction keeps the latest of each)."""
    return str(q).encode() if i == 0 else f"{q}.{i}".encode()


class Parts:
    """The state topic's partition read in order, keeping only the newest generation's parts: a
    generation that starts drops the one before it (each is written whole in one transaction,
    so the last one read is complete unless reading began inside it: then ``n`` says how many
    parts to read back for)."""

    def __init__(self) -> None:
        self.gen: str | None = None
        self.parts: dict[int, bytes] = {}
        self.n = 0
        self.keys = 0  # one past the highest part index read with a value, of any generation

    def add(self, value: bytes | None, header: str | None) -> None:
        if value is None:
            return  # a tombstone of an earlier snapshot's part
        if header is None:  # one message, as earlier versions wrote it
            self.gen, self.parts, self.n = None, {0: value}, 1
            return
        try:
            gen, i_text, n_text = header.split("/")
            i, n = int(i_text), int(n_text)
        except ValueError:
            raise DecodeError(f"state snapshot part header {header[:80]!r} is not GENERATION/INDEX/PARTS") from None
        if not 0 <= i < n <= MAX_PARTS:
            raise DecodeError(f"state snapshot part {i} of {n}")
        self.keys = max(self.keys, i + 1)
        if gen != self.gen:
            self.gen, self.parts, self.n = gen, {}, n
        self.parts[i] = value

    @property
    def complete(self) -> bool:
        return self.n > 0 and len(self.parts) == self.n

    def live_keys(self) -> int:
        """How many part keys may hold a value (the next snapshot tombstones those it does not use)."""
        return max(self.n, self.keys)

    def value(self) -> bytes | None:
        """The snapshot, its parts joined; None when none was read."""
        if not self.n:
            return None
        if not self.complete:
            raise DecodeError(f"state snapshot {self.gen}: {len(self.parts)} of {self.n} parts found")
        return self.parts[0] if self.n == 1 else b"".join(self.parts[i] for i in range(self.n))


def unpack(value: bytes | Packed) -> Any:
    if isinstance(value, Packed):
        value = value.joined()
    if value[:4] != MAGIC:
        return json.loads(value)  # the earlier form
    if len(value) < 8:
        raise DecodeError("state snapshot cut short")
    (hlen,) = struct.unpack_from("<I", value, 4)
    if 8 + hlen > len(value):
        raise DecodeError("state snapshot header runs past the message")
    head = json.loads(value[8 : 8 + hlen])
    at = 8 + hlen
    view = memoryview(value)

    def walk(x: Any) -> Any:
        nonlocal at
        if isinstance(x, dict):
            if set(x) == {_KEY}:
                size, descr, shape = x[_KEY]
                if at + size > len(value):
                    raise DecodeError("state snapshot arrays run past the message")
                spec: Any = descr if isinstance(descr, str) else [tuple(d) for d in descr]
                dtype = npformat.descr_to_dtype(spec)
                a = np.frombuffer(view[at : at + size], dtype=dtype).reshape(shape).copy()
                at += size
                return a
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    doc = walk(head)
    if at != len(value):
        raise DecodeError(f"state snapshot has {len(value) - at} bytes after its arrays")
    return doc


def array(v: Any, dtype: Any, shape: tuple[int, ...] = (-1,)) -> npt.NDArray[Any]:
    """An array of a restored snapshot: as unpack gives it, or base64 text (how pktstream 0.1
    wrote arrays, inside plain JSON), checked against the dtype it must have."""
    if isinstance(v, np.ndarray):
        want = np.dtype(dtype)
        if v.dtype != want:
            if not same_layout(v.dtype, want):
                raise ValueError(f"snapshot: array of {v.dtype}, expected {want}")
            v = v.view(want)  # a field renamed since the snapshot was written: same bytes, new names
        out: npt.NDArray[Any] = v.reshape(shape)
        return out
    if not isinstance(v, str):
        raise ValueError("snapshot: expected an array")
    return np.frombuffer(base64.b64decode(v), dtype=dtype).reshape(shape).copy()


def same_layout(a: np.dtype[Any], b: np.dtype[Any]) -> bool:
    """Do two structured dtypes lay out the same fields (types, shapes, offsets) under any names?"""
    if a.names is None or b.names is None or a.itemsize != b.itemsize or len(a.names) != len(b.names):
        return False
    fa = [a.fields[n] for n in a.names]  # type: ignore[index]
    fb = [b.fields[n] for n in b.names]  # type: ignore[index]
    return all(x[0] == y[0] and x[1] == y[1] for x, y in zip(fa, fb, strict=True))
