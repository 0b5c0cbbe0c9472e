"""Packet-topic records for property tests: a hypothesis strategy over every field of
schemas/packet.avsc, and the encoder's column form of such records."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from pktstream.schemas import load_schema_json

SCHEMA = load_schema_json("packet")


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
        elif all(name in r for r in records):  # (a record of an older schema lacks the newer fields)
            cols[name] = np.array([r[name] for r in records], dtype=np.int64)
    return cols
