"""The batch encoder writes exactly what fastavro writes; fastavro and Apache avro read its containers."""

from __future__ import annotations

import io
import json
from typing import Any

import avro.datafile
import avro.io
import avro.schema
import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pktstream.producer.avro import CODECS, ContainerWriter, encode_long, encode_records, field_specs
from pktstream.schemas import load_schema_json

SCHEMA = load_schema_json("packet")
PARSED = fastavro.parse_schema(SCHEMA)
SPECS = field_specs(SCHEMA)
INT_FIELDS = [f["name"] for f in SCHEMA["fields"] if f["type"] == "int"]
LONG_FIELDS = [f["name"] for f in SCHEMA["fields"] if f["type"] == "long"]

INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
EDGE32 = st.sampled_from([0, 1, -1, 63, 64, -64, -65, 127, 128, 2**31 - 1, -(2**31)])
EDGE64 = st.sampled_from([0, -1, 2**63 - 1, -(2**63), 2**56, 1795700937082086353])

record_st = st.fixed_dictionaries({
    **{n: st.one_of(INT32, EDGE32) for n in INT_FIELDS},
    **{n: st.one_of(INT64, EDGE64) for n in LONG_FIELDS},
    "src_addr": st.binary(min_size=16, max_size=16),
    "dst_addr": st.sampled_from([bytes(16), bytes(10) + b"\xff\xff\x0a\x00\x00\x01", b"\xff" * 16]),
    "payload": st.one_of(st.binary(max_size=256), st.just(b""), st.just(b"\x00" * 256)),
})


def columns_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    width = max([len(r["payload"]) for r in records] + [0])
    cols: dict[str, Any] = {}
    for f in SCHEMA["fields"]:
        name = f["name"]
        if name in ("src_addr", "dst_addr"):
            cols[name] = np.frombuffer(b"".join(r[name] for r in records), dtype=np.uint8).reshape(n, 16)
        elif name == "payload":
            arr = np.zeros((n, width), dtype=np.uint8)
            for i, r in enumerate(records):
                arr[i, : len(r["payload"])] = np.frombuffer(r["payload"], dtype=np.uint8)
            cols["payload"] = arr
            cols["payload__len"] = np.array([len(r["payload"]) for r in records])
        else:
            cols[name] = np.array([r[name] for r in records], dtype=np.int64)
    return cols


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


def test_header_schema_is_the_file_schema() -> None:
    w = ContainerWriter(SCHEMA)
    fr = fastavro.reader(io.BytesIO(w.container({}, 0)))
    assert json.loads(fr.metadata["avro.schema"]) == SCHEMA
