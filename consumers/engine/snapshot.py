"""The bytes of a state snapshot (a consumer's ``APP.state`` topic).

A processor's ``dump`` gives JSON-like data in which numpy arrays may stand anywhere; they travel
as raw bytes after a small JSON header instead of as base64 text inside JSON:

    b"PSS1" | u32 header length | header JSON | the arrays' bytes, one after another

The header is the data with each array replaced by {"$nd": [byte length, dtype descr, shape]}.
``unpack`` also reads the earlier form, plain JSON, so a state written by an older version is
still restored.

A snapshot is one Kafka message, so it has a size limit. ``pack_within`` packs a state and, while
it is over the limit, asks the processor to ``degrade`` it (less detail: see the processors) and
packs again, logging ``state_degraded`` with what was dropped; a state over the limit with nothing
left to drop is logged as ``state_over_limit`` and returned as it is (the producer then refuses it).
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
from numpy.lib import format as npformat

from pktstream.schemas.decode import DecodeError

MAGIC = b"PSS1"
_KEY = "$nd"
MAX_DEGRADE_STEPS = 64  # each step drops something; a processor's steps end long before this

log = structlog.get_logger("pktstream.stream")


def pack(doc: Any) -> bytes:
    arrays: list[bytes] = []

    def walk(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            b = np.ascontiguousarray(x).tobytes()
            arrays.append(b)
            return {_KEY: [len(b), npformat.dtype_to_descr(x.dtype), list(x.shape)]}
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        return x

    head = json.dumps(walk(doc), separators=(",", ":")).encode()
    return b"".join([MAGIC, struct.pack("<I", len(head)), head, *arrays])


def pack_within(doc: Callable[[], Any], degrade: Callable[[], dict[str, Any]], limit: int,
                **context: Any) -> bytes:
    """``pack(doc())``, with ``degrade()`` (a processor's, on the state doc() dumps) called and the
    state dumped again for as long as the bytes exceed ``limit`` and degrade finds something to drop
    (it returns what it dropped; {} when nothing is left). ``context`` goes into the log lines."""
    value = pack(doc())
    for _ in range(MAX_DEGRADE_STEPS):
        if len(value) <= limit:
            return value
        dropped = degrade()
        if not dropped:
            break
        before = len(value)
        value = pack(doc())
        log.warning("state_degraded", bytes_before=before, bytes=len(value), limit=limit, **context, **dropped)
    if len(value) > limit:
        log.error("state_over_limit", bytes=len(value), limit=limit, **context)
    return value


def unpack(value: bytes) -> Any:
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
