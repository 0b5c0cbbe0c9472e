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


def test_a_full_disk_drops_and_counts_never_raises(tmp_path: Path) -> None:
    """A spool on a 64 KiB tmpfs: writes past its room fail with ENOSPC, each batch is counted as
    dropped for that cause, the error is said once, and the spool goes on (and takes batches
    again once room is made)."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("needs to mount a tmpfs (root)")
    try:
        s = Spool(mnt / "spool", max_bytes=10 << 20)  # the bound is not what stops it: the disk is
        results = [s.put("t", b"k", [], b"x" * 20_000, records=10) for _ in range(6)]
        assert results[0] and not results[-1]
        kept = sum(results)
        assert s.records_spooled == 10 * kept and s.records_dropped == 10 * (6 - kept)
        assert s.dropped_by_cause == {"disk_enospc": 10 * (6 - kept)}
        assert not list((mnt / "spool").glob("*.tmp"))  # no half-written file left behind
        for b in s.oldest(10):
            s.done(b, delivered=True)
        assert s.put("t", b"k", [], b"y" * 20_000, records=1)  # room again: spooled again
        s.close()
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_corrupt_file_is_quarantined_and_the_replay_goes_on(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=1 << 20)
    s.put("t", b"k", [], b"first", records=1)
    s.put("t", b"k", [], b"second", records=2)
    s.put("t", b"k", [], b"third", records=3)
    first, second, third = sorted(tmp_path.glob("*.batch"))
    second.write_bytes(b"\x00\xffnot a batch")  # a disk error, a hand edit
    got = s.oldest(10)
    assert [b.value for b in got] == [b"first", b"third"]
    assert s.files_quarantined == 1 and second.with_suffix(".corrupt").exists() and len(s) == 2
    for b in got:
        s.done(b, delivered=True)
    assert len(s) == 0 and s.bytes == 0
    s.close()
    assert len(Spool(tmp_path, max_bytes=1 << 20)) == 0  # and it stays out of the next run's spool
    assert first.name < third.name


def test_replay_order_follows_the_sequence_not_the_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock stepped back during an outage: files keep the order the batches were spooled in,
    across a restart too (numbers continue from the highest, also after files an earlier build
    named by nanoseconds)."""
    import time

    legacy = tmp_path / f"{time.time_ns():020d}-99-000001.batch"  # an earlier build's name
    legacy.write_bytes(b'{"topic": "t", "key": "k", "records": 1, "headers": []}\nlegacy')
    s = Spool(tmp_path, max_bytes=1 << 20)
    monkeypatch.setattr(time, "time_ns", lambda: 1)  # the clock back to 1970
    s.put("t", b"k", [], b"a", records=1)
    s.put("t", b"k", [], b"b", records=1)
    s.close()
    s2 = Spool(tmp_path, max_bytes=1 << 20)
    s2.put("t", b"k", [], b"c", records=1)
    assert [b.value for b in s2.oldest(10)] == [b"legacy", b"a", b"b", b"c"]


def test_a_batch_refused_for_good_leaves_the_spool(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=1 << 20)
    s.put("t", b"k", [], b"too big for the topic", records=7)
    s.put("t", b"k", [], b"fine", records=1)
    big, fine = s.oldest(2)
    s.failed(big, "rejected_msg_size_too_large")
    s.done(fine, delivered=True)
    assert len(s) == 0 and s.bytes == 0
    assert s.dropped_by_cause == {"rejected_msg_size_too_large": 7}


def test_a_flipped_byte_in_a_batch_is_caught_by_its_checksum(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=1 << 20)
    s.put("t", b"k", [], b"first batch", records=1)
    s.put("t", b"k", [], b"second batch", records=2)
    first, _second = sorted(tmp_path.glob("*.batch"))
    data = bytearray(first.read_bytes())
    data[-3] ^= 0x01  # a bit gone bad on disk: still a well-formed file
    first.write_bytes(bytes(data))
    assert [b.value for b in s.oldest(10)] == [b"second batch"]
    assert s.files_quarantined == 1 and first.with_suffix(".corrupt").exists()


def test_a_file_the_disk_cannot_read_now_is_retried_in_order_then_set_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pktstream.producer import spool as spool_mod

    s = Spool(tmp_path, max_bytes=1 << 20)
    s.put("t", b"k", [], b"first", records=1)
    s.put("t", b"k", [], b"second", records=2)
    first, _second = sorted(tmp_path.glob("*.batch"))
    real = Path.read_bytes
    failing = {first: 2}  # file -> reads left that fail

    def flaky(self: Path) -> bytes:
        if failing.get(self, 0) > 0:
            failing[self] -= 1
            raise OSError(5, "Input/output error")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", flaky)
    got = s.oldest(10)
    assert [b.value for b in got] == [b"second"]  # the files after it go meanwhile
    assert s.oldest(10) == [] and s.files_quarantined == 0  # tried again, not set aside
    got += s.oldest(10)
    assert [b.value for b in got] == [b"second", b"first"]  # the disk came back
    for b in got:
        s.done(b, delivered=True)
    s.put("t", b"k", [], b"third", records=3)
    (third,) = tmp_path.glob("*.batch")
    failing[third] = 10**6  # a bad sector: never readable
    for _ in range(3 * spool_mod.READ_ATTEMPTS):  # many turns, but within READ_RETRY_S: kept
        assert s.oldest(10) == [] and s.files_quarantined == 0
    monkeypatch.setattr(spool_mod, "READ_RETRY_S", 0.0)  # the retry time has passed
    assert s.oldest(10) == [] and s.files_quarantined == 1 and third.with_suffix(".corrupt").exists()
    assert len(s) == 0 and s.bytes == 0


def test_a_file_removed_by_hand_while_replayed_never_makes_the_count_negative(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=1 << 20)
    s.put("t", b"k", [], b"a", records=1)
    s.put("t", b"k", [], b"b", records=1)
    (a,) = s.oldest(1)
    for f in tmp_path.glob("*.batch"):  # an operator empties the spool
        f.unlink()
    assert s.oldest(10) == []
    s.done(a, delivered=True)  # then Kafka acknowledges the batch in flight
    assert len(s) == 0 and s.bytes == 0


def test_a_damaged_file_that_cannot_be_renamed_is_skipped_and_counted_by_whoever_moves_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Spool(tmp_path, max_bytes=1 << 20)
    lost: list[tuple[list[tuple[str, bytes]], int]] = []
    s.on_lost = lambda headers, records: lost.append((headers, records))
    s.put("t", b"k", [("pktstream.run_id", b"run-1")], b"payload of 40 records", records=40)
    s.put("t", b"k", [], b"fine", records=1)
    damaged, _fine = sorted(tmp_path.glob("*.batch"))
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0x01
    damaged.write_bytes(bytes(data))

    def read_only(self: Path, target: Path) -> Path:
        raise OSError(30, "Read-only file system")

    real_rename = Path.rename
    monkeypatch.setattr(Path, "rename", read_only)
    assert [b.value for b in s.oldest(10)] == [b"fine"]
    assert s.files_quarantined == 1 and damaged.exists()  # not renamed...
    assert s.oldest(10) == [] and s.files_quarantined == 1  # ...but skipped from then on
    # its records are not counted while its file stays: the run that can move it counts them, once
    assert lost == [] and s.dropped_by_cause == {}
    assert len(s) == 1  # the one in flight
    s.close()
    monkeypatch.setattr(Path, "rename", real_rename)  # the next run, the disk writable again
    s2 = Spool(tmp_path, max_bytes=1 << 20)
    s2.on_lost = lambda headers, records: lost.append((headers, records))
    assert [b.value for b in s2.oldest(10)] == [b"fine"]
    assert lost == [([("pktstream.run_id", b"run-1")], 40)] and s2.dropped_by_cause == {"quarantined": 40}
    assert damaged.with_suffix(".corrupt").exists()
