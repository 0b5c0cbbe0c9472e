"""A packet-topic message as the mainstream Avro readers open it: fastavro, Apache avro, polars and
ClickHouse (chDB) each read every record of one the encoder wrote, with the values written; and a
message written with the previous schema (Addr16 reused by name) is still read by our decoder,
fastavro and Apache avro (polars never could: that is why the schema changed)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import avro.datafile
import avro.io
import chdb
import fastavro
import polars

from pktstream.schemas import SCHEMA_DIR
from pktstream.schemas.columns import read_container
from pktstream.schemas.container import ContainerWriter
from tests.support.avro_records import SCHEMA, columns_of

V2 = json.loads((SCHEMA_DIR / "history" / "packet" / "v2.avsc").read_text())


def records() -> list[dict[str, Any]]:
    out = []
    for i in range(50):
        r: dict[str, Any] = {f["name"]: (i * 7 + j) % 60000 for j, f in enumerate(SCHEMA["fields"])
                             if f["type"] in ("int", "long")}
        r["seq"], r["ts_ns"] = i, 1_796_000_000_000_000_000 + i * 1000
        r["src_addr"] = bytes(10) + b"\xff\xff" + bytes([10, 0, i // 256, i % 256])
        r["dst_addr"] = bytes([0x20, 0x01, 0x0D, 0xB8]) + bytes(11) + bytes([i])
        r["payload"] = b"GET /%d HTTP/1.1\r\n\x00\xff" % i if i % 3 else b""
        out.append(r)
    return out


def message(schema: dict[str, Any], recs: list[dict[str, Any]]) -> bytes:
    # deflate: a codec every one of them has (polars: null, deflate, snappy; the producer default is null)
    return ContainerWriter(schema, codec="deflate" if schema is SCHEMA else "null",
                           metadata={"pktstream.payload_bytes": "64"}).container(columns_of(recs), len(recs))


def test_fastavro_apache_polars_and_clickhouse_read_a_message(tmp_path: Path) -> None:
    recs = records()
    data = message(SCHEMA, recs)
    assert list(fastavro.reader(io.BytesIO(data))) == recs
    assert list(avro.datafile.DataFileReader(io.BytesIO(data), avro.io.DatumReader())) == recs

    df = polars.read_avro(io.BytesIO(data))
    assert df.height == len(recs) and df.columns == [f["name"] for f in SCHEMA["fields"]]
    assert df.to_dicts() == recs

    f = tmp_path / "m.avro"
    f.write_bytes(data)
    got = chdb.query(f"SELECT seq, ts_ns, hex(src_addr), hex(dst_addr), wire_len, hex(payload) "
                     f"FROM file('{f}', 'Avro') ORDER BY seq", "JSONCompact")
    rows = json.loads(str(got))["data"]
    assert [(int(r[0]), int(r[1]), r[2], r[3], int(r[4]), r[5]) for r in rows] == [
        (r["seq"], r["ts_ns"], r["src_addr"].hex().upper(), r["dst_addr"].hex().upper(), r["wire_len"],
         r["payload"].hex().upper()) for r in recs]


def test_messages_of_the_previous_schema_stay_readable() -> None:
    v2_fields = {f["name"] for f in V2["fields"]}
    recs = [{k: v for k, v in r.items() if k in v2_fields} for r in records()]
    old = message(V2, recs)
    assert list(fastavro.reader(io.BytesIO(old))) == recs
    assert list(avro.datafile.DataFileReader(io.BytesIO(old), avro.io.DatumReader())) == recs
    new_reader = fastavro.parse_schema(SCHEMA)  # a reader holding the new schema, old data: the defaults
    assert list(fastavro.reader(io.BytesIO(old), reader_schema=new_reader)) == [
        {**r, "direction": 0, "segments": 1} for r in recs]
    b = read_container(old)
    assert b.n == len(recs) and bytes(b.columns["dst_addr"][7]) == recs[7]["dst_addr"]
