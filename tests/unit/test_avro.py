"""The batch encoder writes exactly what fastavro writes; fastavro and Apache avro read its containers."""

from __future__ import annotations

import io
import json
from typing import Any

import avro.datafile
import avro.io
import avro.schema
import fastavro
import fastavro.schema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pktstream.schemas.container import CODECS, ContainerWriter, encode_long, encode_records, field_specs
from tests.support.avro_records import SCHEMA, columns_of, record_st

PARSED = fastavro.parse_schema(SCHEMA)
SPECS = field_specs(SCHEMA)






def fastavro_bytes(records: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    for r in records:
        fastavro.schemaless_writer(buf, PARSED, r)
    return buf.getvalue()


@settings(max_examples=300, deadline=None)
@given(st.lists(record_st, min_size=1, max_size=40))
def test_records_byte_identical_to_fastavro(records: list[dict[str, Any]]) -> None:
    assert encode_records(SPECS, columns_of(records), len(records)) == fastavro_bytes(records)


@pytest.mark.parametrize("value", [0, 1, -1, 63, -64, 64, 2**63 - 1, -(2**63), 300])
def test_encode_long_matches_fastavro(value: int) -> None:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", value)
    assert encode_long(value) == buf.getvalue()


@settings(max_examples=40, deadline=None)
@given(st.lists(record_st, min_size=1, max_size=20), st.sampled_from(CODECS))
def test_container_read_identically_by_fastavro_and_apache_avro(records: list[dict[str, Any]], codec: str) -> None:
    w = ContainerWriter(SCHEMA, codec=codec, metadata={"pktstream.host": "h1"})
    data = w.container(columns_of(records), len(records))
    fr = fastavro.reader(io.BytesIO(data))
    got_fast = list(fr)
    assert fr.metadata["pktstream.host"] == "h1"
    assert fr.codec == codec
    assert got_fast == records
    if codec in ("null", "deflate", "snappy", "zstandard"):
        rd = avro.datafile.DataFileReader(io.BytesIO(data), avro.io.DatumReader())
        got_apache = list(rd)
        assert got_apache == records
        assert rd.get_meta("pktstream.host") == b"h1"


def test_empty_batch_is_a_header_only_container() -> None:
    w = ContainerWriter(SCHEMA)
    assert list(fastavro.reader(io.BytesIO(w.container({}, 0)))) == []


def test_header_schema_is_the_files_parsing_canonical_form() -> None:
    """The embedded schema is schemas/packet.avsc's Parsing Canonical Form, as fastavro computes it
    (docs stay in schemas/), and a quarter of its size."""
    w = ContainerWriter(SCHEMA)
    fr = fastavro.reader(io.BytesIO(w.container({}, 0)))
    embedded = fr.metadata["avro.schema"]
    assert embedded == fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(SCHEMA))
    assert "doc" not in json.loads(embedded) and len(embedded) < len(json.dumps(SCHEMA)) / 3
