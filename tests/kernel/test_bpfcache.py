"""The compiled capture programs kept on disk (producer/bpfcache.py): a restart loads them without
compiling, and what it loads records exactly what the compiled programs record; an entry that does
not load, or that another user could have written, is compiled again."""

from __future__ import annotations

import base64
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from pktstream.bpf import BPF_DIR
from pktstream.producer import bpfcache
from pktstream.producer.capture import Capture, load_cached, program_flags
from tests.support.frames import build_cases, kernel_refuses, read_records

pytestmark = pytest.mark.kernel

TC_ACT_UNSPEC = 0xFFFFFFFF  # (-1 as the u32 the test run returns)
FLAGS = {"payload_bytes": 64, "ringbuf_bytes": 1 << 20}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: None) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("PKTSTREAM_CACHE_DIR", str(d))
    return d


def records_of(cap: Capture, frames: list[bytes]) -> np.ndarray:
    """The records of the frames (in-kernel test runs, ingress then egress), timestamps zeroed."""
    for f in frames:
        assert cap.test_run(f).retval == 2  # XDP_PASS
        assert cap.test_run_egress(f, gso_segs=3).retval == TC_ACT_UNSPEC  # passed on
    recs = np.array(read_records(cap, 2 * len(frames)))
    recs["ts_ns"] = 0
    return recs


def test_a_restart_loads_the_stored_programs_and_they_record_what_the_compiled_ones_do(cache: Path) -> None:
    frames = [c.frame for c in build_cases(dst_mac="02:00:00:00:00:01", src_mac="02:00:00:00:00:02")
              if not kernel_refuses(c.frame)]
    with Capture(**FLAGS) as first:
        assert not first.from_cache
        compiled = records_of(first, frames)
        compiled_counters = first.counters()
    (entry,) = (cache / "bpf").glob("*.json")
    assert entry.stat().st_mode & 0o077 == 0
    with Capture(**FLAGS) as again:
        assert again.from_cache
        assert again.prog_id != first.prog_id  # programs of its own, loaded again
        cached = records_of(again, frames)
        assert again.counters() == compiled_counters
    assert len(compiled) == 2 * len(frames) and compiled.tobytes() == cached.tobytes()
    # (other flags are other code, stored apart: test_the_key_follows_the_source_the_flags_...)


def cached(**flags: int) -> bool:
    """Does the cache load the programs of these flags (without compiling)?"""
    got = load_cached(program_flags(**flags))
    for fd in got[0] if got else []:
        os.close(fd)
    return got is not None


def test_an_entry_that_does_not_load_or_that_others_could_write_is_compiled_again(cache: Path) -> None:
    with Capture(**FLAGS):
        pass
    (entry,) = (cache / "bpf").glob("*.json")
    good = entry.read_text()
    assert cached(**FLAGS)
    doc = json.loads(good)
    for bad in ("{not json", json.dumps({**doc, "maps": doc["maps"][:1]}), json.dumps({**doc, "format": 0})):
        entry.write_text(bad)
        assert not cached(**FLAGS)
    # code the verifier refuses (the first instruction becomes an unknown opcode): compiled and stored again
    code = bytearray(base64.b64decode(doc["programs"][0]["insns"]))
    code[0] = 0xFF
    doc["programs"][0]["insns"] = base64.b64encode(bytes(code)).decode()
    entry.write_text(json.dumps(doc))
    with Capture(**FLAGS) as cap:
        assert not cap.from_cache
        assert cap.test_run(b"\0" * 60).retval == 2
    assert entry.read_text() == good
    # whatever else the file holds: not loaded, nothing left open
    fds_before = len(os.listdir("/proc/self/fd"))
    for bad in ("[]", json.dumps({**doc, "programs": [{**p, "insns": 7} for p in doc["programs"]]}),
                json.dumps({**doc, "kern_version": None}), json.dumps({**doc, "maps": [{**doc["maps"][0], "fd": []}]})):
        entry.write_text(bad)
        assert not cached(**FLAGS)
    assert len(os.listdir("/proc/self/fd")) == fds_before
    entry.write_text(good)
    assert cached(**FLAGS)
    # code another user could have written is not loaded into the kernel
    os.chmod(entry, 0o620)
    assert not cached(**FLAGS)
    os.chmod(entry, 0o600)
    os.chown(entry, 65534, 65534)
    assert not cached(**FLAGS)
    os.chown(entry, 0, 0)
    os.chmod(cache / "bpf", 0o777)
    assert not cached(**FLAGS)
    os.chmod(cache / "bpf", 0o700)
    os.chmod(cache.parent, 0o777)  # a directory above: not sticky, writable by all
    assert not cached(**FLAGS)
    os.chmod(cache.parent, 0o1777)  # sticky, as /tmp: others cannot move what is not theirs
    assert cached(**FLAGS)
    os.chmod(cache.parent, 0o700)
    os.rename(entry, cache / "elsewhere.json")
    os.symlink(cache / "elsewhere.json", entry)  # an entry that is a link: not followed
    assert not cached(**FLAGS)
    os.unlink(entry)
    os.rename(cache / "elsewhere.json", entry)
    assert cached(**FLAGS)


def test_the_key_follows_the_source_the_flags_and_the_cache_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: None) -> None:
    src = tmp_path / "bpf"
    shutil.copytree(BPF_DIR, src)
    flags = program_flags(64, 1 << 20, src)
    key = bpfcache.cache_key(src / "capture.c", src, flags)
    assert bpfcache.cache_key(src / "capture.c", src, flags) == key
    # the pinned counters' path names a map, not code
    assert bpfcache.cache_key(src / "capture.c", src, program_flags(64, 1 << 20, src, "/sys/fs/bpf/x/a")) == \
        bpfcache.cache_key(src / "capture.c", src, program_flags(64, 1 << 20, src, "/sys/fs/bpf/y/b"))
    assert bpfcache.cache_key(src / "capture.c", src, program_flags(128, 1 << 20, src)) != key
    with (src / "pktstream.h").open("a") as f:
        f.write("\n/* an edit */\n")
    assert bpfcache.cache_key(src / "capture.c", src, flags) != key
    monkeypatch.setenv("PKTSTREAM_CACHE_DIR", "relative/dir")  # ignored: root's cache
    assert bpfcache.cache_dir() == Path("/var/cache/pktstream")
    # a reference to a kernel object that is not a map descriptor is not relocated blindly
    ld_map_value = bytes([0x18, 0x21, 0, 0, 5, 0, 0, 0]) + bytes(8)  # ld_imm64 r1, BPF_PSEUDO_MAP_VALUE
    with pytest.raises(ValueError):
        bpfcache.relocate(ld_map_value, {5: 9})
    ld_map_fd = bytes([0x18, 0x11, 0, 0, 5, 0, 0, 0]) + bytes(8)
    assert bpfcache.relocate(ld_map_fd + bytes([0x95]) + bytes(7), {5: 9}) == \
        bytes([0x18, 0x11, 0, 0, 9, 0, 0, 0]) + bytes(8) + bytes([0x95]) + bytes(7)
    with pytest.raises(KeyError):
        bpfcache.relocate(ld_map_fd, {6: 9})


def test_a_cached_load_keeps_the_pinned_counters_of_the_run_before(cache: Path) -> None:
    pin = f"/sys/fs/bpf/pktstream-test-{uuid.uuid4().hex[:8]}"
    try:
        with Capture(**FLAGS, pin_counters=pin) as first:
            assert not first.from_cache
            for _ in range(5):
                first.test_run(b"\0" * 60)
        assert os.path.exists(pin)
        with Capture(**FLAGS, pin_counters=pin) as again:  # the killed run's counters live on
            assert again.from_cache
            assert again.counters().packets == 5
            again.test_run(b"\0" * 60)
            assert again.counters().packets == 6
        os.unlink(pin)
        with Capture(**FLAGS, pin_counters=pin) as fresh:  # no pinned map: a new one, pinned
            assert fresh.from_cache and fresh.counters().packets == 0 and os.path.exists(pin)
    finally:
        if os.path.exists(pin):
            os.unlink(pin)
