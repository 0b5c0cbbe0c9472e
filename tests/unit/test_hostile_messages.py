"""The packet topic is untrusted input: every hostile message a broken or malicious writer can make
is refused with a DecodeError by the consumers' decoder and by tail's, within a bounded memory, and
what a well-formed writer of an older or newer schema writes still decodes."""

from __future__ import annotations

import copy
import json
import time
import tracemalloc

import numpy as np
import pytest

from pktstream.consumers.engine.features import featurize
from pktstream.schemas import SCHEMA_DIR, load_schema_json
from pktstream.schemas.columns import read_container
from pktstream.schemas.decode import DecodeError, decode_container
from tests.support.hostile import hostile, record, valid

T0 = 1_800_000_000 * 10**9
HOSTILE = hostile(T0)
TAIL_SHOWS = {"stats_report_on_the_packet_topic"}  # tail reads the stats topic's reports too
PEAK_BOUND = 256 << 20  # what decoding one hostile message may allocate (tracemalloc sees numpy too)


@pytest.mark.parametrize("name,value", HOSTILE, ids=[n for n, _ in HOSTILE])
def test_each_hostile_message_is_a_decode_error_in_bounded_memory(name: str, value: bytes) -> None:
    tracemalloc.start()
    try:
        t = time.monotonic()
        with pytest.raises(DecodeError) as e:
            read_container(value)
        assert str(e.value)
        if name in TAIL_SHOWS:
            decode_container(value)
        else:
            with pytest.raises(DecodeError):  # tail's decoder: at the call or while iterating
                decode_container(value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BOUND, f"{name}: {peak >> 20} MiB"
    assert time.monotonic() - t < 10, name


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
