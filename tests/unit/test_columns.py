"""The consumers' batch decoder: same values as fastavro, and never crashes on corrupt input."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pktstream.schemas import load_schema_json
from pktstream.schemas.columns import read_container
from pktstream.schemas.container import CODECS, ContainerWriter
from pktstream.schemas.decode import DecodeError
from tests.support.avro_records import SCHEMA, columns_of, record_st


@settings(max_examples=150, deadline=None)
@given(st.lists(record_st, min_size=1, max_size=30), st.sampled_from(CODECS))
def test_columns_equal_what_fastavro_reads(records: list[dict[str, Any]], codec: str) -> None:
    data = ContainerWriter(SCHEMA, codec=codec, metadata={"pktstream.payload_bytes": "256"}).container(
        columns_of(records), len(records))
    batch = read_container(data)
    ref = list(fastavro.reader(io.BytesIO(data)))
    assert batch.n == len(ref) == len(records)
    for i, rec in enumerate(ref):
        for name, value in rec.items():
            col = batch.columns[name]
            if name == "payload":
                got = bytes(col[i, : batch.columns["payload__len"][i]])
            elif col.ndim == 2:
                got = bytes(col[i])
            else:
                got = int(col[i])
            assert got == value, name


def test_several_blocks_are_concatenated() -> None:
    buf = io.BytesIO()
    recs = [{f["name"]: (b"\x00" * 16 if "addr" in f["name"] else b"p" if f["name"] == "payload" else i)
             for f in SCHEMA["fields"]} for i in range(10)]
    fastavro.writer(buf, fastavro.parse_schema(SCHEMA), recs, sync_interval=50)
    batch = read_container(buf.getvalue())
    assert batch.n == 10 and list(batch.columns["seq"]) == list(range(10))


@settings(max_examples=800, deadline=None)
@given(st.data())
def test_corrupt_containers_raise_decode_error_only(data: st.DataObject) -> None:
    recs = data.draw(st.lists(record_st, min_size=1, max_size=5))
    raw = bytearray(ContainerWriter(SCHEMA).container(columns_of(recs), len(recs)))
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        batch = read_container(bytes(raw[:cut]))
    except DecodeError:
        return
    assert batch.n >= 0  # a mutation that still parses is fine; a crash or another exception is not


@pytest.mark.parametrize("value", [b"", None, b"Obj\x01", b"garbage!" * 4])
def test_garbage(value: bytes | None) -> None:
    with pytest.raises(DecodeError):
        read_container(value)


def test_packet_schema_layout() -> None:
    schema = load_schema_json("packet")
    data = ContainerWriter(schema).container({}, 0)
    assert read_container(data).n == 0
    assert np.asarray(read_container(data).columns["seq"]).shape == (0,)
