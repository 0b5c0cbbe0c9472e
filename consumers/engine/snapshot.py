"""The bytes of a state snapshot (a consumer's ``APP.state`` topic).

A processor's ``dump`` gives JSON-like data in which numpy arrays may stand anywhere; they travel
as raw bytes after a small JSON header instead of as base64 text inside JSON:

    b"PSS1" | u32 header length | header JSON | the arrays' bytes, one after another

The header is the data with each array replaced by {"$nd": [byte length, dtype descr, shape]}.
``unpack`` also reads the earlier form, plain JSON, so a state written by an older version is
still restored.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib import format as npformat

from pktstream.schemas.decode import DecodeError

MAGIC = b"PSS1"
_KEY = "$nd"


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
