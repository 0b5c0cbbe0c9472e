"""The bytes of a state snapshot (a consumer's ``APP.state`` topic).

A processor's ``dump`` gives JSON-like data in which numpy arrays may stand anywhere; they travel
as raw bytes after a small JSON header instead of as base64 text inside JSON:

    b"PSS1" | u32 header length | header JSON | the arrays' bytes, one after another

The header is the data with each array replaced by {"$nd": [byte length, dtype descr, shape]}.
``unpack`` also reads the earlier form, plain JSON, so a state written by an older version is
still restored.

A snapshot travels as blocks named by their content (``blocks``, ``manifest``): the packed bytes cut
into pieces of at most 64 KiB (``--state-part-bytes`` when smaller), each array of the state cut from
its own start (a table that grows at its end, or changes some columns in place, leaves its other
blocks as they were), small arrays and the JSON header gathered into shared blocks. Each block is a
message keyed ``q.b<digest>`` (16 bytes of its BLAKE3 hash, hex) with the header
``pktstream.snapshot.block`` = the digest; the snapshot itself is a manifest keyed ``q`` with the
header ``pktstream.snapshot.manifest`` = its generation:

    b"PSM1" | u32 header length | header JSON {"gen", "size", "n", "hash": "blake3-128"} | n digests of 16 bytes

A commit writes only the blocks the partition's last manifest does not name, tombstones those it
named and the new one does not, and the manifest last, all in one transaction: what a commit costs
the broker follows what changed, not the state's size. The compacted topic keeps each live block's
one message. Every few commits (when the blocks written since the last whole image exceed
``FULL_EVERY`` times the state's size, and after every restore) the manifest's blocks are all
written again, so that a restore finds the latest snapshot's blocks within a few images of the
partition's end, however long ago a block was first written. ``Chain`` reads a partition in order
and puts the newest snapshot back together, checking each block against its digest.

Earlier builds wrote a snapshot as parts (``split``: keys ``q``, ``q.i``, header
``pktstream.snapshot.part`` = ``GENERATION/i/PARTS``; ``Parts`` reads them) or as one message
without a header; both are still read. The first manifest tombstones an earlier snapshot's part keys.

``pack_within`` bounds the whole: while a state packs to more than its budget it asks the processor
to ``degrade`` it (less detail: see the processors) and packs again, logging ``state_degraded`` with
what was dropped; a state over the budget with nothing left to drop is logged as
``state_over_limit`` and written as it is.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
from blake3 import blake3
from numpy.lib import format as npformat

from pktstream.schemas.decode import DecodeError
from pktstream.schemas.headers import SNAPSHOT_BLOCK as H_BLOCK
from pktstream.schemas.headers import SNAPSHOT_MANIFEST as H_MANIFEST
from pktstream.schemas.headers import SNAPSHOT_PART as H_PART

MAGIC = b"PSS1"
_KEY = "$nd"
MAX_DEGRADE_STEPS = 64  # each step drops something; a processor's steps end long before this

log = structlog.get_logger("pktstream.stream")


class Packed:
    """A packed snapshot as the buffers it is made of (the header, then each array's own memory:
    nothing copied until the blocks are cut), and its length."""

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
        elif n != self.n:
            raise DecodeError(f"state snapshot {gen}: parts disagree on their count ({self.n}, {n})")
        self.parts[i] = value

    @property
    def complete(self) -> bool:
        return self.n > 0 and len(self.parts) == self.n  # (indices below n, one count per generation)

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


BLOCK_BYTES = 64 << 10  # the most a block takes (less where --state-part-bytes is less)
MAX_BLOCKS = 1 << 16  # blocks of one snapshot (more: larger blocks); a manifest names at most this many
DIGEST = 16  # bytes of a block's name: 16 of its BLAKE3 hash
FULL_EVERY = 4  # the blocks written since the last whole image, in states' sizes, before the next whole image
MANIFEST_MAGIC = b"PSM1"


def digest(block: bytes | memoryview) -> bytes:
    """A block's name: 16 bytes of its BLAKE3 hash."""
    return blake3(block).digest(DIGEST)


def block_key(q: int, d: bytes) -> bytes:
    """The key of a block of partition q's snapshots (its content's digest: the same bytes, the same key)."""
    return f"{q}.b{d.hex()}".encode()


def block_size(size: int, part_bytes: int) -> int:
    """The most one block of a snapshot of ``size`` bytes takes."""
    return max(min(part_bytes, BLOCK_BYTES), -(-size // MAX_BLOCKS), 64)


def blocks(value: Packed, block_bytes: int) -> list[bytes | memoryview]:
    """A packed snapshot cut into blocks: an array of half a block or more starts a block of its own
    and is cut from its start into blocks of ``block_bytes`` (its last block may be shorter); what
    lies between such arrays (the header, small arrays) is gathered into blocks of at most
    ``block_bytes``. Joined in order, the blocks are the packed bytes."""
    out: list[bytes | memoryview] = []
    pending: list[memoryview] = []
    have = 0

    def flush() -> None:
        nonlocal pending, have
        if pending:
            out.append(pending[0] if len(pending) == 1 else b"".join(pending))
        pending, have = [], 0

    for buf in value.buffers:
        view = memoryview(buf).cast("B")
        if len(view) * 2 >= block_bytes:
            flush()
            out.extend(view[i : i + block_bytes] for i in range(0, len(view), block_bytes))
            continue
        while len(view):
            take = min(len(view), block_bytes - have)
            pending.append(view[:take])
            view, have = view[take:], have + take
            if have == block_bytes:
                flush()
    flush()
    return out or [b""]


HASH = "blake3-128"  # how a manifest's blocks are named (its header says so)


def manifest(gen: str, size: int, digests: list[bytes]) -> bytes:
    head = json.dumps({"gen": gen, "size": size, "n": len(digests), "hash": HASH}, separators=(",", ":")).encode()
    return b"".join([MANIFEST_MAGIC, struct.pack("<I", len(head)), head, *digests])


def read_manifest(value: bytes) -> tuple[str, int, list[bytes]]:
    """A manifest's generation, snapshot size and block digests; DecodeError when it is not one."""
    if value[:4] != MANIFEST_MAGIC or len(value) < 8:
        raise DecodeError("state snapshot manifest: bad magic")
    (hlen,) = struct.unpack_from("<I", value, 4)
    try:
        head = json.loads(value[8 : 8 + hlen])
        gen, size, n = head["gen"], head["size"], head["n"]
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise DecodeError(f"state snapshot manifest header unreadable: {type(e).__name__}") from None
    if not (isinstance(gen, str) and type(size) is int and type(n) is int):
        raise DecodeError("state snapshot manifest header: gen, size or n of the wrong type")
    if head.get("hash") != HASH:
        raise DecodeError(f"state snapshot manifest names its blocks by {str(head.get('hash'))[:40]!r}; this build "
                          f"reads {HASH}")
    body = value[8 + hlen :]
    if not 0 < n <= MAX_BLOCKS or len(body) != n * DIGEST or size < 0:
        raise DecodeError(f"state snapshot manifest names {n} blocks in {len(body)} bytes")
    return gen, size, [body[i : i + DIGEST] for i in range(0, len(body), DIGEST)]


class Chain:
    """A state topic's partition read in order (``add`` each message): the newest snapshot, in
    whichever form it was written (a manifest and its blocks, parts, one message). Blocks are kept
    by digest as they come (a block's bytes are the same wherever it was read), so the newest
    manifest is whole once every block it names has been read, before or after it."""

    def __init__(self) -> None:
        self.parts = Parts()
        self.blocks: dict[bytes, bytes] = {}
        self.manifest: tuple[str, int, list[bytes]] | None = None
        self.last = ""  # the form of the newest snapshot read: "manifest", "parts" or ""

    def add(self, value: bytes | None, headers: dict[str, str]) -> None:
        if value is None:
            return  # a tombstone: of an earlier snapshot's part or block
        block = headers.get(H_BLOCK)
        if block is not None:
            try:
                d = bytes.fromhex(block)
            except ValueError:
                raise DecodeError(f"state snapshot block named {block[:40]!r}") from None
            self.blocks[d] = value
            return
        if H_MANIFEST in headers:
            self.manifest, self.last = read_manifest(value), "manifest"
            # a later manifest names only blocks this one names or its own transaction writes: the
            # others read so far are of older snapshots (what a restore holds stays near one image)
            names = set(self.manifest[2])
            self.blocks = {d: b for d, b in self.blocks.items() if d in names}
            return
        self.parts.add(value, headers.get(H_PART))
        self.last = "parts"

    def missing(self) -> int:
        """Blocks the newest manifest names that were not read (0 when it is not a manifest)."""
        if self.last != "manifest" or self.manifest is None:
            return 0
        return sum(d not in self.blocks for d in set(self.manifest[2]))

    @property
    def complete(self) -> bool:
        if self.last == "manifest":
            return self.missing() == 0
        return self.parts.complete

    @property
    def found(self) -> bool:
        return bool(self.last)

    def digests(self) -> set[bytes]:
        """The blocks of the newest snapshot (none when it is not a manifest)."""
        return set(self.manifest[2]) if self.last == "manifest" and self.manifest is not None else set()

    def live_keys(self) -> int:
        """How many part keys (``q``, ``q.i``) may hold a part: a manifest's partition has tombstoned them."""
        return 1 if self.last == "manifest" else self.parts.live_keys()

    def value(self) -> bytes | None:
        """The newest snapshot, its blocks or parts joined; None when none was read. DecodeError when it
        is not whole or a block is not what its name says."""
        if self.last != "manifest" or self.manifest is None:
            return self.parts.value() if self.last else None
        gen, size, ds = self.manifest
        missing = self.missing()
        if missing:
            raise DecodeError(f"state snapshot {gen}: {missing} of {len(set(ds))} blocks not found")
        checked: set[bytes] = set()
        for d in ds:
            if d not in checked:
                if digest(self.blocks[d]) != d:
                    raise DecodeError(f"state snapshot {gen}: block {d.hex()} is not what its name says")
                checked.add(d)
        out = b"".join(self.blocks[d] for d in ds)
        if len(out) != size:
            raise DecodeError(f"state snapshot {gen}: {len(out)} bytes, its manifest says {size}")
        return out


def unpack(value: bytes | Packed) -> Any:
    """A snapshot's data; DecodeError for anything that does not read as one (a state topic's
    content is checked like any other input)."""
    if isinstance(value, Packed):
        value = value.joined()
    try:
        return _unpack(value)
    except DecodeError:
        raise
    except Exception as e:  # (a dtype text numpy cannot parse raises SyntaxError; nesting RecursionError)
        raise DecodeError(f"state snapshot unreadable: {type(e).__name__}: {str(e)[:200]}") from e


def _unpack(value: bytes) -> Any:
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
                if type(size) is not int or size < 0 or at + size > len(value):
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
