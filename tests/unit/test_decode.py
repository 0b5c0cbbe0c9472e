from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pktstream.consumers.tools.history import addresses, binaries
from pktstream.schemas import load_schema_json
from pktstream.schemas.container import ContainerWriter
from pktstream.schemas.decode import DecodeError, addr_text, decode_container, escape_payload, present
from pktstream.schemas.packets import to_columns
from pktstream.schemas.record import record_dtype


def test_addr_text() -> None:
    assert addr_text(bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])) == "192.0.2.1"
    assert addr_text(bytes.fromhex("20010db8000000000000000000000001")) == "2001:db8::1"


# 16 bytes built from 16-bit groups that are often zero (runs of zeros are where formatters differ)
_groups = st.lists(st.one_of(st.just(0), st.just(0xFFFF), st.integers(0, 0xFFFF)), min_size=8, max_size=8)


@given(_groups)
def test_addr_text_is_the_text_of_pythons_ipaddress(groups: list[int]) -> None:
    raw = b"".join(g.to_bytes(2, "big") for g in groups)
    ip = ipaddress.IPv6Address(raw)
    assert addr_text(raw) == (str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip))


_v4 = st.binary(min_size=4, max_size=4).map(lambda b: bytes(10) + b"\xff\xff" + b)


@given(st.lists(st.one_of(_v4, _groups.map(lambda gs: b"".join(g.to_bytes(2, "big") for g in gs))), max_size=40))
def test_address_columns_are_addr_text_row_by_row(addrs: list[bytes]) -> None:
    """The query and export tables' address column (IPv4 formatted by Arrow, the rest per distinct
    address) holds what addr_text gives for each row, in any mix."""
    m = np.frombuffer(b"".join(addrs), np.uint8).reshape(len(addrs), 16)
    assert addresses(m).to_pylist() == [addr_text(a) for a in addrs]


@given(st.lists(st.binary(max_size=12), max_size=30), st.integers(0, 12))
def test_payload_columns_are_each_rows_prefix(payloads: list[bytes], width: int) -> None:
    """The tables' payload column: each row's bytes up to its length, cut at the matrix's width."""
    m = np.zeros((len(payloads), width), np.uint8)
    for i, p in enumerate(payloads):
        m[i, : min(len(p), width)] = np.frombuffer(p[:width], np.uint8)
    lens = np.array([len(p) for p in payloads], np.int64)
    assert binaries(m, lens).to_pylist() == [p[:width] for p in payloads]


def test_escape_payload() -> None:
    assert escape_payload(b"GET /\r\n\x00\xff\\") == "GET /\\r\\n\\x00\\xff\\\\"


def test_kernel_records_round_trip_through_container() -> None:
    recs = np.zeros(3, dtype=record_dtype(8))
    recs["ts_ns"] = [10, 20, 30]
    recs["src_addr"][:, 10:12] = 0xFF
    recs["src_addr"][:, 12:] = [10, 0, 0, 1]
    recs["src_port"] = [1, 2, 65535]
    recs["wire_len"] = 60
    recs["cap_len"] = [0, 3, 8]
    recs["payload"][1, :3] = list(b"abc")
    recs["payload"][2, :] = list(b"12345678")
    recs["payload_len"] = [0, 3, 100]
    w = ContainerWriter(load_schema_json("packet"), metadata={"pktstream.host": "h"})
    c = decode_container(w.container(to_columns(recs, seq_first=5, wall_offset_ns=1000), 3))
    assert [r["seq"] for r in c.records] == [5, 6, 7]
    assert [r["ts_ns"] for r in c.records] == [1010, 1020, 1030]
    assert [r["payload"] for r in c.records] == [b"", b"abc", b"12345678"]
    assert [r["src_port"] for r in c.records] == [1, 2, 65535]
    assert c.metadata["pktstream.host"] == "h"
    p = present(c.records[1], "base64")
    assert p["src_addr"] == "10.0.0.1" and p["payload"] == "YWJj"


@pytest.mark.parametrize("value", [b"", b"garbage", b"Obj\x01\x00", None])
def test_corrupt_messages_raise_decode_error(value: bytes | None) -> None:
    with pytest.raises(DecodeError):
        decode_container(value)


def test_truncated_container_raises_decode_error() -> None:
    recs = np.zeros(50, dtype=record_dtype(0))
    data = ContainerWriter(load_schema_json("packet")).container(to_columns(recs, 0, 0), 50)
    with pytest.raises(DecodeError):
        decode_container(data[: len(data) - 30])
