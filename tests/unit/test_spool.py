from __future__ import annotations

from pathlib import Path

import pytest

from pktstream.producer.spool import Spool
from pktstream.runtime.errors import PktstreamError


def test_put_replay_done_and_bound(tmp_path: Path) -> None:
    s = Spool(tmp_path / "sp", max_bytes=1000)
    assert s.put("t", b"k", [("pktstream.run_id", b"r1")], b"x" * 300, records=3)
    assert s.put("t", b"k", [], b"y" * 300, records=4)
    assert not s.put("t", b"k", [], b"z" * 600, records=5)  # over the bound: dropped, counted
    assert (s.records_spooled, s.records_dropped, len(s)) == (7, 5, 2)
    first = s.oldest(1)
    assert [b.value for b in first] == [b"x" * 300] and first[0].headers == [("pktstream.run_id", b"r1")]
    assert [b.value for b in s.oldest(5)] == [b"y" * 300]  # the first is in flight
    s.done(first[0], delivered=False)  # kept for the next round
    assert [b.records for b in s.oldest(5)] == [3]
    s.done(first[0], delivered=True)
    assert len(s) == 1 and s.bytes < 1000


def test_survives_a_restart_and_cleans_half_writes(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=10_000)
    s.put("t", b"k", [], b"v", records=1)
    (tmp_path / "123.tmp").write_bytes(b"half")
    s.close()
    s2 = Spool(tmp_path, max_bytes=10_000)
    assert len(s2) == 1 and not list(tmp_path.glob("*.tmp"))


def test_one_producer_per_spool(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=10_000)
    with pytest.raises(PktstreamError, match="in use by another producer"):
        Spool(tmp_path, max_bytes=10_000)
    assert s.dir == tmp_path
