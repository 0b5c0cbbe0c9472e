"""agg.Groups (the C hash group-by of the alerts tables) against a plain Python reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pktstream.consumers.engine.agg import Groups, batch, first_rows, group_index

REC = np.dtype([("id", "<i8")])

# batches of rows: key drawn from a few values (so that groups repeat), item, origin, n, b, t
ROWS = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(-1, 2), st.integers(0, 9),
                          st.integers(0, 1000), st.integers(0, 50)), max_size=300)


def reference(batches: list[list[tuple[int, ...]]]) -> dict[tuple[int, int, int], dict[str, int]]:
    out: dict[tuple[int, int, int], dict[str, int]] = {}
    seq = 0
    for rows in batches:
        for k, item, o, n, b, t in rows:
            key = (k * 0x9E3779B97F4A7C15 % 2**64, item, o)
            g = out.get(key)
            if g is None:
                out[key] = {"n": n, "b": b, "t0": t, "t1": t, "sub": t * 7, "s": seq, "rec": seq, "r": b % 17,
                            "f": (b * 31) % 23 - 11}
            else:
                g["n"] += n
                g["b"] += b
                g["r"] = max(g["r"], b % 17)  # the greatest rank
                g["f"] = min(g["f"], (b * 31) % 23 - 11)  # the least flow hash (as int64)
                g["t1"] = max(g["t1"], t)
                if t < g["t0"]:  # the earliest row's fields; the first of equally early rows
                    g.update(t0=t, sub=t * 7, s=seq, rec=seq)
            seq += 1
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(ROWS, max_size=6))
def test_groups_sum_and_keep_the_earliest_sample(batches: list[list[tuple[int, ...]]]) -> None:
    g = Groups(REC)
    seq = 0
    for rows in batches:
        a = np.array(rows, dtype=np.int64).reshape(-1, 6)
        m = len(a)
        recs = np.zeros(m, REC)
        recs["id"] = np.arange(seq, seq + m)
        k = (a[:, 0].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        g.add(k, a[:, 1].astype(np.uint64), a[:, 2], a[:, 3], a[:, 4], a[:, 5], sub=a[:, 5] * 7,
              s=np.arange(seq, seq + m), rows=recs, r=a[:, 4] % 17,
              f=(a[:, 4] * 31) % 23 - 11)
        seq += m
    ref = reference(batches)
    v = g.view()
    got = {(int(v["k"][i]), int(v["item"][i]), int(v["o"][i])): {
        "n": int(v["n"][i]), "b": int(v["b"][i]), "t0": int(v["t0"][i]), "t1": int(v["t1"][i]),
        "sub": int(v["sub"][i]), "s": int(v["s"][i]), "rec": int(v["rec"]["id"][i]), "r": int(v["r"][i]),
        "f": int(v["f"][i])}
        for i in range(len(g))}
    assert got == ref
    assert len(g) == len(ref)
    keys = list(ref)
    if keys:
        found = g.find(np.array([k for k, _i, _o in keys], dtype=np.uint64), np.array([i for _k, i, _o in keys],
                       dtype=np.uint64), np.array([o for _k, _i, o in keys]))
        assert (found >= 0).all() and len(set(found.tolist())) == len(keys)
    assert (g.find(np.array([1], dtype=np.uint64), 99, 99) == -1).all()


def test_a_sample_table_keeps_one_row_per_key_and_capture_point() -> None:
    """key_only (the light tables' samples): grouped by (k, o), the earliest row of each, nothing summed."""
    k = np.array([1, 1, 1, 2, 2], dtype=np.uint64)
    o = np.array([0, 3, 3, 3, 3])
    t = np.array([50, 40, 30, 20, 25])
    recs = np.zeros(5, REC)
    recs["id"] = np.arange(5)
    g = Groups(REC)
    g.add_batch(batch(5, k=k, item=np.array([9, 9, 8, 7, 7], dtype=np.uint64), o=o, n=5, b=6, t=t, r=4, f=-3),
                recs, key_only=True)
    v = g.view()
    got = {(int(v["k"][i]), int(v["o"][i])): (int(v["rec"]["id"][i]), int(v["t0"][i]), int(v["item"][i]),
                                              int(v["n"][i]), int(v["r"][i]), int(v["f"][i])) for i in range(len(g))}
    assert got == {(1, 0): (0, 50, 0, 0, 0, 0), (1, 3): (2, 30, 0, 0, 0, 0), (2, 3): (3, 20, 0, 0, 0, 0)}


def test_groups_grow_through_many_rows_in_one_batch() -> None:
    rng = np.random.default_rng(3)
    k = rng.integers(0, 50_000, 200_000).astype(np.uint64)
    g = Groups()
    gid = g.add(k, want_gid=True)
    assert gid is not None
    assert len(g) == len(np.unique(k))
    v = g.view()
    assert (v["k"][gid] == k).all()  # every row's group holds its key
    assert int(v["n"].sum()) == len(k)
    assert np.array_equal(np.sort(v["n"]), np.sort(np.unique(k, return_counts=True)[1]))


def test_group_index_numbers_groups_in_order_of_first_appearance() -> None:
    keys = np.array([7, 3, 7, 9, 3, 3, 1], dtype=np.uint64)
    gid, g = group_index(keys)
    assert gid.tolist() == [0, 1, 0, 2, 1, 1, 3]
    assert g.view()["k"].tolist() == [7, 3, 9, 1]
    assert first_rows(gid).tolist() == [0, 1, 3, 6]
    assert first_rows(np.zeros(0, np.int64)).tolist() == []


def test_compact_and_concat_keep_every_rows_strings() -> None:
    """A routed batch keeps only the strings its rows use, renumbered (in place or in a copy),
    and batches concatenated read the same strings as before."""
    from pktstream.consumers.engine.features import FEATURE_DTYPE, Features, compact, concat

    def batch(strings: list[str], refs: list[tuple[int, int, int]]) -> Features:
        rows = np.zeros(len(refs), FEATURE_DTYPE)
        for i, (o, nm, p) in enumerate(refs):
            rows[i]["origin"], rows[i]["name"], rows[i]["path"] = o, nm, p
        return Features(rows, strings)

    def texts(f: Features) -> list[tuple[str, str, str]]:
        return [(f.text(int(r["origin"])), f.text(int(r["name"])), f.text(int(r["path"]))) for r in f.rows]

    a = batch(["h/eth0", "x.test", "/unused", "/a", "y.test"], [(0, 1, 3), (0, -1, -1), (0, 4, 3)])
    want = texts(a)
    copy = compact(a)
    assert copy.strings == ["h/eth0", "x.test", "/a", "y.test"] and texts(copy) == want
    assert texts(a) == want  # not in place: the original rows are unchanged
    b = batch(["g/eth1", "/a", "/b"], [(0, -1, 2), (0, -1, 1)])
    both = concat([compact(a, inplace=True), b])
    assert texts(both) == want + texts(b)
    assert sorted(both.strings) == sorted({"h/eth0", "x.test", "/a", "y.test", "g/eth1", "/b"})
