"""The bulk ring-buffer reader and the kernel counters, driven by BPF_PROG_TEST_RUN."""

from __future__ import annotations

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from pktstream.producer.capture import Capture

pytestmark = pytest.mark.kernel

FRAME = bytes(Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=1, dport=2) / Raw(b"abcdefgh"))


@pytest.mark.parametrize("payload_bytes", [0, 13, 256])
def test_reads_across_the_wrap_exactly(root: None, payload_bytes: int) -> None:
    with Capture(payload_bytes=payload_bytes, ringbuf_bytes=1 << 16) as cap:
        stride = cap.reader.stride
        per_round = (1 << 16) // stride // 2 + 7  # not a divisor of the ring: batches straddle the end
        total = 0
        last_ts = 0
        for _ in range(25):
            cap.test_run(FRAME, repeat=per_round)
            recs = cap.reader.read(10**6)
            assert len(recs) == per_round
            ts = recs["ts_ns"].astype(np.int64)
            assert (np.diff(ts) >= 0).all() and ts[0] >= last_ts
            last_ts = int(ts[-1])
            assert (recs["dst_port"] == 2).all() and (recs["payload_len"] == 8).all()
            assert (recs["cap_len"] == min(8, payload_bytes)).all()
            total += per_round
        assert total * stride > 4 * (1 << 16)
        c = cap.counters()
        assert (c.packets, c.records, c.ringbuf_full) == (total, total, 0)


def test_overflow_is_counted_to_the_record(root: None) -> None:
    with Capture(payload_bytes=0, ringbuf_bytes=1 << 16) as cap:
        capacity = (1 << 16) // cap.reader.stride
        cap.test_run(FRAME, repeat=capacity + 500)
        got = len(cap.reader.read(10**6))
        c = cap.counters()
        assert got == capacity
        assert c.ringbuf_full == 500
        assert c.packets == got + c.ringbuf_full


def test_sampling_is_stamped_and_counted(root: None) -> None:
    with Capture(payload_bytes=0, ringbuf_bytes=1 << 22) as cap:
        cap.set_sample_rate(4)
        cap.test_run(FRAME, repeat=40_000)
        recs = cap.reader.read(10**6)
        c = cap.counters()
        assert (recs["sample_rate"] == 4).all()
        assert c.packets == 40_000 == len(recs) + c.sampled_out
        assert 9_000 < len(recs) < 11_000  # 1 in 4, random
        cap.set_sample_rate(1)
        cap.test_run(FRAME, repeat=100)
        assert (cap.reader.read(1000)["sample_rate"] == 1).all()
