"""State snapshots: arrays as raw bytes after a JSON header, the earlier plain-JSON form still read."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from pktstream.consumers.alerts.tables import Table
from pktstream.consumers.engine.features import FEATURE_DTYPE
from pktstream.consumers.engine.snapshot import MAX_PARTS, Parts, pack, packed, part_key, parts_of, split, unpack
from pktstream.schemas.decode import DecodeError


def test_round_trip_keeps_values_dtypes_and_shapes() -> None:
    rec = np.zeros(3, FEATURE_DTYPE)
    rec["src_addr"][1] = [5, 6]
    rec["ts_ns"] = [1, 2, 3]
    doc = {"w": {"10": [np.arange(5, dtype=np.int64), np.full((2, 3), 1.5)]}, "rec": rec, "s": "x", "n": 7,
           "empty": np.zeros(0, np.uint64)}
    back = unpack(pack(doc))
    assert back["s"] == "x" and back["n"] == 7
    assert back["w"]["10"][0].tolist() == [0, 1, 2, 3, 4] and back["w"]["10"][0].dtype == np.int64
    assert back["w"]["10"][1].shape == (2, 3) and float(back["w"]["10"][1].sum()) == 9.0
    assert back["rec"].dtype == FEATURE_DTYPE and back["rec"]["src_addr"][1].tolist() == [5, 6]
    assert back["empty"].dtype == np.uint64 and len(back["empty"]) == 0
    back["w"]["10"][0][0] = 9  # restored arrays are writable (tables grow in them)


def test_plain_json_snapshots_are_still_read() -> None:
    assert unpack(json.dumps({"a": [1, 2]}).encode()) == {"a": [1, 2]}


@pytest.mark.parametrize("cut", [5, 9, -1])
def test_a_cut_snapshot_is_an_error(cut: int) -> None:
    value = pack({"a": np.arange(10)})
    with pytest.raises(DecodeError):
        unpack(value[:cut])


def test_alert_tables_of_either_form_load_the_same() -> None:
    t = Table(light=True)
    rows = np.zeros(4, FEATURE_DTYPE)
    rows["ts_ns"] = [30, 10, 20, 40]
    a = np.array([[1, 1, 2, 2], [7, 8, 7, 7], [0, 0, 0, 0], [1, 1, 1, 1], [60, 60, 60, 60], [30, 10, 20, 40],
                  [0, 0, 0, 0], [-1, -1, -1, -1]], dtype=np.int64)
    t.add(a, rows)
    new = Table.load(unpack(pack(t.dump())))

    def b64(x: object) -> object:
        if isinstance(x, dict):
            return {k: b64(v) for k, v in x.items()}
        assert isinstance(x, np.ndarray)
        return base64.b64encode(np.ascontiguousarray(x).tobytes()).decode()

    old = Table.load(json.loads(json.dumps(b64(t.dump()))))  # how 0.1 wrote them
    for got in (new, old):
        for k, v in t.g.view().items():
            assert got.g.view()[k].tolist() == v.tolist(), k
        assert got.with_samples()["rec"]["ts_ns"].tolist() == t.with_samples()["rec"]["ts_ns"].tolist() == [10, 10, 20]


def test_a_snapshot_written_before_a_field_rename_is_restored() -> None:
    """Feature rows snapshotted with the old field names (src, sport, proto, ...) restore as today's
    rows (same bytes); an array of another layout is still refused."""
    from pktstream.consumers.engine.snapshot import array, same_layout

    old_names = {"src_addr": "src", "dst_addr": "dst", "src_port": "sport", "dst_port": "dport", "protocol": "proto"}
    old = np.dtype({"names": [old_names.get(n, n) for n in FEATURE_DTYPE.names or ()],
                    "formats": [FEATURE_DTYPE.fields[n][0] for n in FEATURE_DTYPE.names or ()],  # type: ignore[index]
                    "offsets": [FEATURE_DTYPE.fields[n][1] for n in FEATURE_DTYPE.names or ()],  # type: ignore[index]
                    "itemsize": FEATURE_DTYPE.itemsize})
    rows = np.zeros(3, dtype=old)
    rows["sport"] = [1, 2, 3]
    rows["proto"] = 6
    back = array(unpack(pack({"rec": rows}))["rec"], FEATURE_DTYPE)
    assert back["src_port"].tolist() == [1, 2, 3] and back["protocol"].tolist() == [6, 6, 6]
    assert same_layout(old, FEATURE_DTYPE)
    with pytest.raises(ValueError):
        array(np.zeros(3, dtype=[("a", "<u8")]), FEATURE_DTYPE)


def test_a_snapshot_in_parts_is_put_back_together_from_its_last_generation() -> None:
    value = pack({"a": np.arange(100_000)})
    old, new = list(split(pack({"a": np.arange(10)}), 64)), list(split(value, 100_000))
    assert len(new) == 9 and all(len(p) <= 100_000 for p, _ in new) and b"".join(p for p, _ in new) == value
    r = Parts()
    r.add(b"{}", None)  # an earlier version's one-message snapshot
    for part, header in old:
        r.add(part, header.decode())
    r.add(None, None)  # tombstones of stale parts' keys
    for part, header in new:
        r.add(part, header.decode())
    assert r.complete and r.n == 9 and r.value() == value and r.live_keys() == 9
    assert unpack(r.value() or b"")["a"].tolist() == list(range(100_000))
    assert [part_key(3, i) for i in range(3)] == [b"3", b"3.1", b"3.2"]


def test_reading_that_begins_inside_a_snapshot_says_where_to_begin() -> None:
    parts = list(split(pack({"a": np.arange(50_000)}), 10_000))
    r = Parts()
    for part, header in parts[30:]:
        r.add(part, header.decode())
    assert not r.complete and r.n == len(parts) and r.live_keys() == len(parts)
    with pytest.raises(DecodeError, match=f"{len(parts) - 30} of {len(parts)} parts"):
        r.value()
    assert Parts().value() is None
    legacy = Parts()
    legacy.add(b"x", None)
    assert legacy.complete and legacy.value() == b"x"


@pytest.mark.parametrize("header", ["x", "g/1", "g/a/2", "g/2/2", "g/-1/2", "g/0/999999999"])
def test_a_part_header_that_is_not_ours_is_an_error(header: str) -> None:
    with pytest.raises(DecodeError):
        Parts().add(b"x", header)


def test_keys_of_an_older_larger_snapshot_are_counted_for_their_tombstones() -> None:
    r = Parts()
    for part, header in [*split(bytes(10_000), 1000), *split(bytes(3000), 1000)]:
        r.add(part, header.decode())
    assert r.n == 3 and r.live_keys() == 10


def test_a_snapshot_past_the_most_parts_takes_larger_parts() -> None:
    parts = list(split(bytes(MAX_PARTS * 2 + 1), 1))
    assert len(parts) <= MAX_PARTS and sum(len(p) for p, _ in parts) == MAX_PARTS * 2 + 1


@pytest.mark.parametrize("part_bytes", [1, 7, 4096, 1 << 20])
def test_parts_cut_across_the_arrays_join_to_the_packed_bytes(part_bytes: int) -> None:
    rec = np.zeros(300, FEATURE_DTYPE)
    rec["ts_ns"] = np.arange(300)
    doc = {"w": [np.arange(1000, dtype=np.int64), rec[::2], np.zeros(0, np.uint64), np.full((3, 5), 2.5)], "s": "x"}
    pk = packed(doc)
    value = pack(doc)
    parts = list(split(pk, part_bytes))
    assert len(parts) == parts_of(len(value), part_bytes) == parts_of(pk.size, part_bytes)
    assert all(len(p) <= max(part_bytes, 1) for p, _ in parts[:-1]) and b"".join(p for p, _ in parts) == value
    back = unpack(b"".join(p for p, _ in parts))
    assert back["w"][1]["ts_ns"].tolist() == list(range(0, 300, 2)) and unpack(pk)["s"] == "x"
