"""schemas/packet.avsc: valid for fastavro and for Apache's reference avro, and documented."""

from __future__ import annotations

import json

import avro.schema
import fastavro

from pktstream.schemas import schema_path


def test_packet_schema_parses_in_both_implementations() -> None:
    text = schema_path("packet").read_text()
    fastavro.parse_schema(json.loads(text))
    parsed = avro.schema.parse(text)
    assert parsed.fullname == "io.pktstream.Packet"


def test_every_field_is_documented() -> None:
    schema = json.loads(schema_path("packet").read_text())
    assert schema["doc"]
    for f in schema["fields"]:
        assert len(f.get("doc", "")) > 10, f["name"]
    names = [f["name"] for f in schema["fields"]]
    assert names[:2] == ["seq", "ts_ns"]
    assert len(names) == len(set(names))
