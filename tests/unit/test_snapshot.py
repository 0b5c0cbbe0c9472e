"""State snapshots: arrays as raw bytes after a JSON header, cut into blocks named by their content
(a commit writes the blocks that changed); the earlier forms (parts, plain JSON) still read."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pktstream.consumers.alerts.tables import Table
from pktstream.consumers.engine.features import FEATURE_DTYPE
from pktstream.consumers.engine.snapshot import (
    MAX_BLOCKS,
    Chain,
    Parts,
    block_size,
    blocks,
    digest,
    manifest,
    pack,
    packed,
    part_key,
    unpack,
)
from pktstream.consumers.engine.statestore import PartState, StateStore
from pktstream.schemas import headers as H
from pktstream.schemas.decode import DecodeError
from tests.support.snapshots import Verbatim, split


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


def state(n: int, grown: int = 0) -> dict[str, object]:
    """A state of the alerts tables' shape: columns and sample rows of n groups (``grown`` more
    appended), a small array and a JSON value between them."""
    rec = np.zeros(n + grown, FEATURE_DTYPE)
    rec["ts_ns"] = np.arange(n + grown)
    return {"k": np.arange(n + grown, dtype=np.uint64), "n": np.ones(n + grown, np.int64), "rec": rec,
            "small": np.arange(7), "watermark": 5}


@pytest.mark.parametrize("block_bytes", [64, 4096, 65536])
def test_blocks_join_to_the_packed_bytes_each_large_array_from_its_own_start(block_bytes: int) -> None:
    pk = packed(state(3000))
    bs = blocks(pk, block_bytes)
    assert b"".join(bytes(b) for b in bs) == pk.joined()
    assert all(len(b) <= block_bytes for b in bs)
    # a large array's first block begins at the array's first byte
    rec_bytes = np.ascontiguousarray(state(3000)["rec"]).tobytes()  # type: ignore[call-overload]
    assert any(bytes(b) == rec_bytes[:block_bytes] for b in bs)


def test_a_table_that_grows_or_changes_a_column_keeps_its_other_blocks() -> None:
    """What a commit writes follows what changed: 100 groups appended to 20,000 change the blocks at
    the arrays' ends; counts changed in place change the count column's blocks, not the samples'."""
    bb = block_size(0, 1 << 20)
    before = {digest(b) for b in blocks(packed(state(20_000)), bb)}
    grown = blocks(packed(state(20_000, grown=100)), bb)
    new = [b for b in grown if digest(b) not in before]
    assert sum(len(b) for b in new) < 0.1 * sum(len(b) for b in grown)
    s = state(20_000)
    s["n"][::50] += 1  # type: ignore[index]
    changed = [b for b in blocks(packed(s), bb) if digest(b) not in before]
    total = packed(s).size
    assert sum(len(b) for b in changed) < 0.2 * total, (sum(len(b) for b in changed), total)


def test_a_huge_state_takes_larger_blocks_not_more_than_a_manifest_names() -> None:
    assert block_size(1 << 20, 1 << 20) == 64 << 10 and block_size(10, 4096) == 4096
    assert block_size(MAX_BLOCKS * 200_000, 1 << 20) == 200_000


def chain_of(value: bytes, block_bytes: int, gen: str = "g") -> list[tuple[bytes | None, dict[str, str]]]:
    """A snapshot as the messages a commit writes: its blocks, then its manifest."""
    bs = [bytes(b) for b in blocks(packed(unpack(value)), block_bytes)]
    ds = [digest(b) for b in bs]
    assert b"".join(bs) == value
    return [*((b, {H.SNAPSHOT_BLOCK: d.hex()}) for b, d in zip(bs, ds, strict=True)),
            (manifest(gen, len(value), ds), {H.SNAPSHOT_MANIFEST: gen})]


def test_the_newest_manifest_comes_back_from_blocks_read_before_it_in_any_order() -> None:
    first, second = pack(state(5000)), pack(state(5000, grown=10))
    c = Chain()
    msgs1, msgs2 = chain_of(first, 4096, "g1"), chain_of(second, 4096, "g2")
    for v, h in msgs1:
        c.add(v, h)
    assert c.complete and c.value() == first
    # the second commit writes only the blocks the first did not have, and the manifest
    have = {h.get(H.SNAPSHOT_BLOCK) for _v, h in msgs1}
    for v, h in msgs2:
        if h.get(H.SNAPSHOT_BLOCK) not in have or H.SNAPSHOT_MANIFEST in h:
            c.add(v, h)
    c.add(None, {})  # a tombstone of a block no longer named
    assert c.complete and c.value() == second and c.live_keys() == 1
    assert c.digests() == {digest(bytes(b)) for b in blocks(packed(unpack(second)), 4096)}
    # a reader that began after some of its blocks: incomplete, and says how many are missing
    late = Chain()
    for v, h in msgs2[3:]:
        late.add(v, h)
    assert not late.complete and late.missing() == 3
    with pytest.raises(DecodeError, match="3 of"):
        late.value()
    # parts written after a manifest (an earlier build, going back) are the newest snapshot
    legacy = Chain()
    for v, h in msgs1:
        legacy.add(v, h)
    for part, header in split(first, 1000):
        legacy.add(part, {H.SNAPSHOT_PART: header.decode()})
    assert legacy.last == "parts" and legacy.value() == first and legacy.digests() == set()


def test_a_block_that_is_not_what_its_name_says_is_an_error() -> None:
    value = pack(state(100))
    msgs = chain_of(value, 256)
    c = Chain()
    for v, h in msgs:
        if H.SNAPSHOT_BLOCK in h and v is not None:
            v = v[:-1] + bytes([v[-1] ^ 1])
        c.add(v, h)
    with pytest.raises(DecodeError, match="not what its name says"):
        c.value()
    with pytest.raises(DecodeError):
        Chain().add(b"nonsense", {H.SNAPSHOT_MANIFEST: "g"})
    with pytest.raises(DecodeError):
        Chain().add(b"x", {H.SNAPSHOT_BLOCK: "not hex"})


@pytest.mark.parametrize("part_bytes", [1, 7, 4096, 1 << 20])
def test_an_earlier_builds_parts_cut_across_the_arrays_join_to_the_packed_bytes(part_bytes: int) -> None:
    rec = np.zeros(300, FEATURE_DTYPE)
    rec["ts_ns"] = np.arange(300)
    doc = {"w": [np.arange(1000, dtype=np.int64), rec[::2], np.zeros(0, np.uint64), np.full((3, 5), 2.5)], "s": "x"}
    pk = packed(doc)
    value = pack(doc)
    parts = list(split(pk, part_bytes))
    assert all(len(p) <= max(part_bytes, 1) for p, _ in parts[:-1]) and b"".join(p for p, _ in parts) == value
    back = unpack(b"".join(p for p, _ in parts))
    assert back["w"][1]["ts_ns"].tolist() == list(range(0, 300, 2)) and unpack(pk)["s"] == "x"


def test_a_manifest_never_names_more_blocks_than_a_reader_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every array of half a block or more begins a block: a state of many such arrays cuts into
    more blocks than size / block size; the store then takes larger blocks."""
    from pktstream.consumers.engine import snapshot

    monkeypatch.setattr(snapshot, "MAX_BLOCKS", 64)
    doc = {"a": [np.full(300, i, np.int64) for i in range(100)]}  # 2,400-byte arrays, 4,096-byte blocks
    pk = packed(doc)
    assert len(blocks(pk, block_size(pk.size, 4096))) > 64
    store, sent = fake_store(4096)
    st = PartState({"n": doc})
    store.write(sent.append, 0, st)
    c = Chain()
    for _t, v, kw in sent.calls:
        c.add(v, {k: (x.decode() if isinstance(x, bytes) else x) for k, x in kw.get("headers") or []})
    assert len(c.digests()) <= 64 and unpack(c.value() or b"")["data"]["n"]["a"][99].tolist() == [99] * 300


class Sent:
    """A produce() that records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes | None, dict[str, object]]] = []

    def append(self, topic: str, value: bytes | None, **kw: object) -> None:
        self.calls.append((topic, value, kw))

    def blocks(self) -> list[bytes]:
        return [v for _t, v, kw in self.calls if v is not None and b".b" in kw["key"]]  # type: ignore[operator]

    def tombstones(self) -> list[bytes]:
        return [kw["key"] for _t, v, kw in self.calls if v is None]  # type: ignore[misc]


def fake_store(part_bytes: int) -> tuple[StateStore, Sent]:
    store = StateStore({"bootstrap.servers": "127.0.0.1:9"}, "t", "t.state", Verbatim(), part_bytes)
    store.loader.close()  # (never reads: no broker here)
    return store, Sent()


def test_the_store_writes_what_changed_and_settles_what_committed() -> None:
    zeros = np.zeros(4096 * 4 // 8, np.int64)  # four identical 4 KB blocks: written once, named four times
    st = PartState({"z": zeros, "n": np.arange(2048)})
    store, sent = fake_store(4096)
    store.write(sent.append, 3, st)
    assert len(sent.blocks()) == 1 + 1 + 4 and st.pending is not None and not st.blocks  # header, zeros, n
    store.settle([st])
    first = set(st.blocks)
    assert len(first) == 6 and st.since_full == 0 and store.written == sum(map(len, sent.blocks()))

    st.data["n"][-1] = -1  # the last of n's blocks changes
    sent2 = Sent()
    store.write(sent2.append, 3, st)
    assert len(sent2.blocks()) == 1 and len(sent2.tombstones()) == 1
    assert sent2.tombstones()[0].startswith(b"3.b")
    assert st.blocks == first  # (until the commit is known to have succeeded)
    store.settle([st])
    assert len(st.blocks & first) == 5 and st.pending is None and st.since_full == len(sent2.blocks()[0])
    store.settle([st])  # (nothing pending: nothing changes)
    assert len(st.blocks) == 6


@pytest.mark.parametrize("head", [b'{"gen":"g","size":1e400,"n":1}', b'{"gen":"g","size":Infinity,"n":1}',
                                  b"[" * 100_000 + b"]" * 100_000, b'{"gen":1,"size":1,"n":1}',
                                  b'{"gen":"g","size":1,"n":true}'])
def test_a_manifest_header_that_is_not_ours_is_an_error(head: bytes) -> None:
    import struct

    value = b"PSM1" + struct.pack("<I", len(head)) + head + bytes(16)
    with pytest.raises(DecodeError):
        Chain().add(value, {H.SNAPSHOT_MANIFEST: "g"})


def test_parts_of_one_generation_that_disagree_on_their_count_are_an_error() -> None:
    """(found by the snapshot fuzz target: two parts numbered 1 and 2 of a generation that first said 2
    parts read as complete without part 0)"""
    r = Parts()
    r.add(b"b", "g/1/2")
    with pytest.raises(DecodeError, match="disagree"):
        r.add(b"c", "g/2/3")
    assert not r.complete


def test_a_snapshot_that_does_not_unpack_is_a_decode_error() -> None:
    """(a dtype text numpy cannot parse raises SyntaxError inside numpy; a size of the wrong type)"""
    import json as js
    import struct

    for head in ({"a": {"$nd": [8, "(,1)i8", [1]]}}, {"a": {"$nd": ["8", "<i8", [1]]}},
                 {"a": {"$nd": [8, "<i8", [3]]}}):
        h = js.dumps(head).encode()
        with pytest.raises(DecodeError):
            unpack(b"PSS1" + struct.pack("<I", len(h)) + h + bytes(8))
    with pytest.raises(DecodeError):
        unpack(b"[" * 100_000)


def test_a_manifest_of_blocks_named_by_another_hash_is_refused() -> None:
    import json as js
    import struct

    head = js.dumps({"gen": "g", "size": 1, "n": 1, "hash": "sha256-128"}).encode()
    with pytest.raises(DecodeError, match="sha256-128"):
        Chain().add(b"PSM1" + struct.pack("<I", len(head)) + head + bytes(16), {H.SNAPSHOT_MANIFEST: "g"})


def test_a_snapshot_whose_commit_was_never_settled_is_followed_by_a_whole_image() -> None:
    """A commit whose outcome is not known (written, neither settled nor restored): the next snapshot
    writes every block, and tombstones what either the settled or the unsettled one named."""
    st = PartState({"n": np.arange(4096)})
    store, sent = fake_store(4096)
    store.write(sent.append, 0, st)
    store.settle([st])
    settled = set(st.blocks)
    st.data["n"][:512] = -1  # the first block changes
    store.write(Sent().append, 0, st)  # its outcome never known
    unsure = st.pending
    assert unsure is not None and len(unsure.blocks - settled) == 1
    st.data["n"][:512] = -2
    again = Sent()
    store.write(again.append, 0, st)
    assert len(again.blocks()) == len(st.pending.blocks) == len(settled)  # type: ignore[union-attr]
    gone = {k for k in again.tombstones()}
    assert gone == {snapshot_block_key(0, d) for d in (settled | unsure.blocks) - st.pending.blocks}  # type: ignore[union-attr]
    assert len(gone) == 2


def snapshot_block_key(q: int, d: bytes) -> bytes:
    from pktstream.consumers.engine.snapshot import block_key

    return block_key(q, d)


OUTCOMES = ("commit", "abort", "commit_unknown", "abort_unknown", "abort_restore")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# a block named, then not named by a commit whose outcome the writer never learns, then named again
@example(steps=[("commit", 3, 3000, False), ("commit_unknown", 3, 100, False), ("commit", 3, 3000, False)])
@given(steps=st.lists(st.tuples(st.sampled_from(OUTCOMES), st.integers(0, 5), st.integers(0, 3000),
                                st.booleans()), min_size=1, max_size=25))
def test_whatever_commits_abort_or_stay_unknown_the_topic_restores_the_last_committed_state(
        steps: list[tuple[str, int, int, bool]]) -> None:
    """The state topic as a log of committed transactions, compacted now and then: after any run of
    commits, aborts (with the state rewound from the topic, or kept as a cooperative rebalance keeps
    it) and commits whose outcome the writer never learns, the newest manifest reads back whole and
    is the last snapshot that really committed."""
    store, _ = fake_store(4096)
    st_ = PartState({"n": np.zeros(0, np.int64), "m": np.arange(700)})
    log: list[Any] = []  # (key, value, headers) committed
    last: bytes | None = None
    for i, (outcome, change, size, compact) in enumerate(steps):
        n = st_.data["n"]
        if change == 0:
            st_.data["n"] = np.concatenate([n, np.arange(size, dtype=np.int64)])  # grows
        elif change == 1 and len(n):
            n[size % len(n)] += 1  # one value changes
        elif change == 2:
            st_.data["n"] = n[: len(n) // 2].copy()  # shrinks
        elif change == 3:
            st_.data["n"] = np.zeros(size, np.int64)  # identical blocks
        st_.watermark = i
        sent = Sent()
        store.write(sent.append, 0, st_)
        txn = [(kw["key"], v, {k: x for k, x in kw.get("headers") or []}) for _t, v, kw in sent.calls]  # type: ignore[attr-defined]
        image = snapshot_value(st_, store)
        if outcome in ("commit", "commit_unknown"):
            log.extend(txn)
            last = image
        if outcome == "commit":
            store.settle([st_])
        elif outcome == "abort_restore":  # the runner's rewind: the state as the topic has it
            back = read_back(log)
            data = {"n": np.zeros(0, np.int64), "m": np.arange(700)} if back is None else unpack(back)["data"]
            st_ = PartState(data, blocks=chain_digests(log) if back is not None else set())
        if compact:  # the cleaner keeps each key's last record; tombstones go later
            keep: dict[bytes, int] = {k: j for j, (k, _v, _h) in enumerate(log)}
            log = [r for j, r in enumerate(log) if keep[r[0]] == j and (r[1] is not None or change % 2)]
        assert read_back(log) == last


def snapshot_value(st_: PartState, store: StateStore) -> bytes:
    """What the snapshot just written holds (the doc the store packs)."""
    return pack(store._doc(st_))


def read_back(log: list[Any]) -> bytes | None:
    c = Chain()
    for _k, v, h in log:
        c.add(v, h)
    return c.value()


def chain_digests(log: list[Any]) -> set[bytes]:
    c = Chain()
    for _k, v, h in log:
        c.add(v, h)
    return c.digests()
