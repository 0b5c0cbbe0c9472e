"""The kernel record as a numpy dtype.

This mirrors ``struct pkt_record`` in ``bpf/pktstream.h``; the unit test
``test_record_layout`` compiles the header with the C compiler and proves that
the size and every offset are equal, for several payload sizes.
"""

from __future__ import annotations

import numpy as np

MAX_PAYLOAD_BYTES = 256

# record.flags (PKT_F_* in pktstream.h)
F_TRUNCATED = 0x0001
F_MALFORMED = 0x0002
F_VLAN = 0x0004
F_IP_OPTIONS = 0x0008
F_IPV6_EXT = 0x0010
F_FRAGMENT = 0x0020
F_L4_SKIPPED = 0x0040
F_MULTIBUF = 0x0080

FRAG_MF = 0x01
FRAG_DF = 0x02

# per-CPU counter indices (CNT_* in pktstream.h)
CNT_PACKETS = 0
CNT_RECORDS = 1
CNT_RINGBUF_FULL = 2
CNT_SAMPLED_OUT = 3
CNT_EGRESS = 4  # CNT_EGRESS + i: the egress share of counter i (0-3 count both directions)
CNT_MAX = 8

# record.direction (DIR_* in pktstream.h)
DIR_INGRESS = 0
DIR_EGRESS = 1
DIRECTIONS = {"ingress": DIR_INGRESS, "egress": DIR_EGRESS}

CFG_SAMPLE_RATE = 0

HEADER_FIELDS: list[tuple[str, str, int]] = [
    # name, numpy type, offset
    ("ts_ns", "<u8", 0),
    ("src_addr", "16u1", 8),
    ("dst_addr", "16u1", 24),
    ("ifindex", "<u4", 40),
    ("rx_queue", "<u2", 44),
    ("segments", "<u2", 46),
    ("wire_len", "<u4", 48),
    ("sample_rate", "<u4", 52),
    ("src_port", "<u2", 56),
    ("dst_port", "<u2", 58),
    ("payload_len", "<u2", 60),
    ("frag_offset", "<u2", 62),
    ("vlan_outer", "<u2", 64),
    ("vlan_inner", "<u2", 66),
    ("flags", "<u2", 68),
    ("cap_len", "<u2", 70),
    ("ip_version", "u1", 72),
    ("protocol", "u1", 73),
    ("ttl", "u1", 74),
    ("tcp_flags", "u1", 75),
    ("frag_flags", "u1", 76),
    ("direction", "u1", 77),
    ("ethertype", "<u2", 78),
]
PAYLOAD_OFFSET = 80


def payload_area(payload_bytes: int) -> int:
    """PAYLOAD_AREA: the payload array rounded up to 8 bytes."""
    return (payload_bytes + 7) & ~7


def record_size(payload_bytes: int) -> int:
    return PAYLOAD_OFFSET + payload_area(payload_bytes)


def record_dtype(payload_bytes: int) -> np.dtype[np.void]:
    """The structured dtype of one kernel record for a given PAYLOAD_BYTES."""
    if not 0 <= payload_bytes <= MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload_bytes must be 0..{MAX_PAYLOAD_BYTES}, got {payload_bytes}")
    names = [n for n, _, _ in HEADER_FIELDS]
    formats = [f for _, f, _ in HEADER_FIELDS]
    offsets = [o for _, _, o in HEADER_FIELDS]
    area = payload_area(payload_bytes)
    if area:
        names.append("payload")
        formats.append(f"{area}u1")
        offsets.append(PAYLOAD_OFFSET)
    return np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": record_size(payload_bytes)}
    )
