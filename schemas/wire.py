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
