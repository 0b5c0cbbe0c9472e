"""The schema-registry wire format (Confluent's, which Kafka Connect, Flink's ``avro-confluent``,
ksqlDB, ClickHouse's ``AvroConfluent`` and most of the Kafka ecosystem read): one record per message,

    0x00 | schema id (4 bytes, big-endian) | the record

the record being one Avro datum (binary encoding, no container) or one JSON document, by the
schema's type, the schema in a registry under the id.

pktstream's own forms never begin with 0x00: an Avro Object Container begins ``Obj\\x01``, a JSON
document with ``{`` (or white space), so a reader tells them apart by the first byte.
"""

from __future__ import annotations

import io
import struct
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import numpy.typing as npt

from pktstream.runtime.native import load_native
from pktstream.schemas.container import KIND_BYTES, KIND_FIXED, KIND_VARINT, encode_long, field_specs

MAGIC = 0
_HEAD = struct.Struct(">bI")
HEAD_BYTES = _HEAD.size  # 5


def head(schema_id: int) -> bytes:
    """The five bytes before a record of schema ``schema_id``."""
    return _HEAD.pack(MAGIC, schema_id)


def frame(schema_id: int, body: bytes) -> bytes:
    return _HEAD.pack(MAGIC, schema_id) + body


def avro_datum(schema_id: int, parsed_schema: Any, record: Any) -> bytes:
    """One record as a message of the wire format (``parsed_schema``: fastavro's parsed form)."""
    buf = io.BytesIO()
    buf.write(_HEAD.pack(MAGIC, schema_id))
    fastavro.schemaless_writer(buf, parsed_schema, record)
    return buf.getvalue()


def framed(value: bytes | None) -> bool:
    """Is the message in the wire format (by its first byte; its id may still name no schema)?"""
    return value is not None and len(value) >= HEAD_BYTES and value[0] == MAGIC


def unframe(value: bytes) -> tuple[int, memoryview]:
    """(schema id, the record's bytes) of a message in the wire format; ValueError when it is not one."""
    if not framed(value):
        raise ValueError("not in the schema-registry wire format (0x00 and a 4-byte schema id)")
    _, sid = _HEAD.unpack_from(value)
    return int(sid), memoryview(value)[HEAD_BYTES:]


OCSF_VERSION = "1.3.0"


@cache
def ocsf_json_schema(cls: str, version: str = OCSF_VERSION) -> str:
    """The JSON Schema of an OCSF class (``network_activity``, ``detection_finding``, ...) as
    scripts/ocsf_schemas.py generated it from OCSF's published schema: what a JSON topic registers."""
    return (Path(__file__).parent / "ocsf" / f"{cls}-{version}.json").read_text()


_FRAME_ERRORS = {-1: "data ends inside a record", -2: "varint longer than 10 bytes", -3: "negative bytes length",
                 -4: "bad field layout", -5: "bytes after the last record",
                 -6: "an int field's value is outside 32 bits"}
KIND_INT = 3  # a varint that must fit 32 bits (schemas/_codec.c)


def avro_string(text: str) -> bytes:
    """An Avro string's binary encoding (zig-zag varint length, then UTF-8)."""
    b = text.encode()
    return encode_long(len(b)) + b


def layout(schema: dict[str, Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A flat record schema's field encodings as pkt_avro_frame walks them: each field's kind (int,
    long, fixed, bytes) and size (fixed fields)."""
    specs = field_specs(schema)
    types = [f["type"] for f in schema["fields"]]
    kinds = np.array([KIND_INT if t == "int" else KIND_VARINT if s.kind == "varint" else
                      KIND_FIXED if s.kind == "fixed" else KIND_BYTES for s, t in zip(specs, types, strict=True)],
                     dtype=np.int64)
    return kinds, np.array([s.size for s in specs], dtype=np.int64)


def frame_block(block: bytes | memoryview, n: int, kinds: npt.NDArray[np.int64], sizes: npt.NDArray[np.int64],
                head_bytes: bytes, tail: bytes = b"") -> tuple[bytes, npt.NDArray[np.int64]]:
    """The n records of an Avro block (the record layout ``layout`` gives: int, long, fixed and bytes
    fields) each as a message of the wire format: ``head_bytes`` | the record | ``tail`` (further
    fields' encoding, the same for every record), one after another, and the end of each. One
    compiled loop (schemas/_codec.c) that checks the block's structure (and that int fields fit 32
    bits) as it goes; ValueError when the block is not n records of the layout."""
    cap = len(block) + n * (len(head_bytes) + len(tail))
    out = np.empty(max(cap, 1), dtype=np.uint8)
    ends = np.empty(max(n, 1), dtype=np.int64)
    got = _native.pkt_avro_frame(np.frombuffer(block, dtype=np.uint8) if len(block) else np.zeros(1, np.uint8),
                                 len(block), n, len(kinds), kinds, sizes, head_bytes, len(head_bytes), tail,
                                 len(tail), out, cap, ends)
    if got < 0:
        raise ValueError(_FRAME_ERRORS.get(int(got), f"frame error {got}"))
    return out[:got].tobytes(), ends[:n]


_native = load_native()
