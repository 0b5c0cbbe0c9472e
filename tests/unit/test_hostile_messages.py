"""The packet topic is untrusted input: every hostile message a broken or malicious writer can make
is refused with a DecodeError by the consumers' decoder and by tail's, within a bounded memory, and
what a well-formed writer of an older or newer schema writes still decodes."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pktstream.consumers.engine.features import featurize
from pktstream.schemas import SCHEMA_DIR, load_schema_json
from pktstream.schemas.columns import MAX_COLUMN_BYTES, read_container
from pktstream.schemas.decode import DecodeError, iter_container
from tests.support.hostile import hostile, record, valid

T0 = 1_800_000_000 * 10**9
HOSTILE = hostile(T0)
TAIL_SHOWS = {"stats_report_on_the_packet_topic"}  # tail reads the stats topic's reports too
PEAK_BOUND = (128 + 32) << 20  # decoding one hostile message: at most the 128 MiB cap, and some
# (tracemalloc sees numpy's and zlib's buffers too)
# ... except where the message fills the column bound: tracemalloc counts the columns' calloc whole,
# though only the pages records write are touched (resident memory: the test after this one)
COLUMN_FILLING = {"430k_tiny_records_at_width_1024_then_a_bad_block"}


def refusal(decode: Callable[[bytes], object], value: bytes) -> tuple[str | None, int]:
    """(DecodeError's text or None, the peak of traced memory) of decoding value; nothing of the
    failed call is kept (a traceback would hold its buffers)."""
    tracemalloc.start()
    try:
        decode(value)
        return None, tracemalloc.get_traced_memory()[1]
    except DecodeError as e:
        return str(e) or "?", tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def tail_decode(value: bytes) -> object:
    _meta, records = iter_container(value)
    return list(records)


@pytest.mark.parametrize("name,value", HOSTILE, ids=[n for n, _ in HOSTILE])
def test_each_hostile_message_is_a_decode_error_in_bounded_memory(name: str, value: bytes) -> None:
    t = time.monotonic()
    bound = MAX_COLUMN_BYTES + PEAK_BOUND if name in COLUMN_FILLING else PEAK_BOUND
    reason, peak = refusal(read_container, value)
    assert reason, f"{name} decoded"
    assert peak < bound, f"{name}: {peak >> 20} MiB"
    reason, peak = refusal(tail_decode, value)  # tail's decoder: at the call or while iterating
    assert (reason is None) == (name in TAIL_SHOWS), name
    assert peak < bound, f"{name} (tail): {peak >> 20} MiB"
    assert time.monotonic() - t < 10, name


def test_resident_memory_of_columns_that_fill_the_bound_is_what_the_records_write() -> None:
    """Blocks of tiny records at the widest payload: the columns of all blocks are allocated once
    (no join doubling them) and the payload pages no record writes stay untouched. The message
    corrupt in its last block is refused, the same without the corruption decodes whole."""
    script = """if True:
        import os, sys
        from pktstream.schemas.columns import MAX_COLUMN_BYTES, read_container
        from pktstream.schemas.decode import DecodeError
        from tests.support.hostile import column_filling
        try:
            print(read_container(column_filling(int(sys.argv[1]), corrupt=sys.argv[2] != "whole")).n)
        except DecodeError as e:
            print(e)
        from tests.support.helpers import peak_rss_mb
        print(peak_rss_mb(os.getpid()))  # (not ru_maxrss: it holds pytest's size at the fork)
    """
    for how in ("as sent", "whole"):
        p = subprocess.run([sys.executable, "-c", script, str(T0), how], capture_output=True,
                           text=True, check=True, cwd=Path(__file__).parents[2])
        outcome, rss = p.stdout.split("\n")[:2]
        assert outcome == ("block has 1 bytes after its 215000 records" if how == "as sent" else "430000"), p.stdout
        assert int(rss) < 256, f"{how}: peak RSS {rss} MB (columns of 533 MB allocated, 1 in 5 touched)"


def test_the_reasons_say_what_is_wrong() -> None:
    reasons = {}
    for name, value in HOSTILE:
        try:
            read_container(value)
        except DecodeError as e:
            reasons[name] = str(e)
    assert "pktstream.payload_bytes" in reasons["payload_bytes_not_a_number"]
    assert "characters" in reasons["schema_5000_deep"]  # refused by its size before it is parsed
    assert "RecursionError" in reasons["schema_2000_deep_within_the_size_limit"]
    assert "Other" in reasons["container_of_another_schema"]
    assert "ts_ns" in reasons["packet_record_without_ts_ns"]
    assert "fixed size -4090" in reasons["negative_fixed_size"]
    assert "inflates to more than" in reasons["deflate_1MB_to_1GiB"]
    assert "inflates to more than" in reasons["zstd_to_1GiB"]
    assert "inflates to more than" in reasons["snappy_declaring_2GiB"]
    assert "32 bits" in reasons["int_field_beyond_32_bits"]
    assert "metadata entries" in reasons["metadata_claiming_a_billion_entries"]
    assert "frames" in reasons["zstd_of_100000_skippable_frames"]
    assert "payload__len" in reasons["a_field_named_payload__len"]


def test_older_and_newer_writers_resolve_and_defaults_fill_the_rest() -> None:
    recs = [record(i, T0 + i) for i in range(3)]
    v3 = json.loads((SCHEMA_DIR / "history" / "packet" / "v3.avsc").read_text())  # before direction, segments
    old = [{k: v for k, v in r.items() if k not in ("direction", "segments")} for r in recs]
    b = read_container(valid(old, "old-writer", schema=v3, codec="deflate"))
    assert b.n == 3 and b.columns["direction"].tolist() == [0, 0, 0] and b.columns["segments"].tolist() == [1] * 3
    newer = copy.deepcopy(load_schema_json("packet"))
    newer["fields"].append({"name": "future_field", "type": "long", "default": 7})
    b = read_container(valid([{**r, "future_field": 9} for r in recs], "new-writer", schema=newer, codec="zstandard"))
    assert b.n == 3 and b.columns["ts_ns"].tolist() == [T0, T0 + 1, T0 + 2]
    assert bytes(b.columns["payload"][1, : b.columns["payload__len"][1]]) == recs[1]["payload"]


def test_featurize_behind_the_door_takes_every_message_that_decodes() -> None:
    """What decodes has every reader field in range: feature extraction takes it (usage and
    alerts both featurize through engine.features)."""
    for proto, kws in ((17, ({"transport_only": True, "coalesce_ns": 60 * 10**9, "answers": True}, {})),
                       (255, ({},))):
        recs = [record(i, T0 + i, src_port=65535, dst_port=0, protocol=proto, payload=b"\xff" * 7, ttl=255,
                       wire_len=2**31 - 1, payload_len=2**31 - 1, sample_rate=0, vlan_outer=-1)
                for i in range(50)]
        b = read_container(valid(recs, "edge"))
        for kw in kws:
            f = featurize(b, "edge/eth0", **kw)  # type: ignore[arg-type]
            assert int(np.asarray(f.rows["packets"]).sum()) == 50, (proto, kw)


def test_a_newer_writer_with_many_fields_of_its_own_decodes_in_bounded_memory() -> None:
    """Fields only the writer has are read past, not stored: 230 extra bytes fields and the widest
    payload cost the reader no more columns than the packet schema's own."""
    newer = copy.deepcopy(load_schema_json("packet"))
    newer["fields"] += [{"name": f"x{i}", "type": "bytes"} for i in range(230)]
    recs = [{**record(i, T0 + i), **{f"x{k}": b"" for k in range(230)}} for i in range(4000)]
    value = valid(recs, "newer", schema=newer, codec="deflate", payload_bytes="1024")
    reason, peak = refusal(read_container, value)
    assert reason is None and peak < 48 << 20, (reason, peak >> 20)
    b = read_container(value)
    assert b.n == 4000 and "x0" not in b.columns and b.columns["payload"].shape == (4000, 1024)
