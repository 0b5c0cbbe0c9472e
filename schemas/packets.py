"""Kernel records -> Avro columns, a whole batch at a time."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def to_columns(records: npt.NDArray[np.void], seq_first: int, wall_offset_ns: int) -> dict[str, Any]:
    """Map a batch of kernel records to the packet schema's columns.

    This is the one place where the kernel layout meets the wire contract
    (schemas/packet.avsc): sequence numbers are assigned here, in capture
    order, and monotonic kernel timestamps become wall-clock time.
    """
    n = len(records)
    cols: dict[str, Any] = {
        "seq": np.arange(seq_first, seq_first + n, dtype=np.int64),
        "ts_ns": records["ts_ns"].astype(np.int64) + np.int64(wall_offset_ns),
        "src_addr": records["src_addr"],
        "dst_addr": records["dst_addr"],
        "frag_offset": records["frag_offset"],
    }
    for name in (
        "ifindex", "rx_queue", "ip_version", "protocol", "src_port", "dst_port", "wire_len", "ttl",
        "tcp_flags", "frag_flags", "vlan_outer", "vlan_inner", "ethertype", "flags", "sample_rate",
        "payload_len", "direction", "segments",
    ):
        cols[name] = records[name]
    if records.dtype.names is not None and "payload" in records.dtype.names:
        cols["payload"] = records["payload"]
        cols["payload__len"] = records["cap_len"]
    else:
        cols["payload"] = np.zeros((n, 0), dtype=np.uint8)
        cols["payload__len"] = np.zeros(n, dtype=np.int64)
    return cols


def estimated_bytes(records: npt.NDArray[np.void]) -> int:
    """Upper-bound estimate of the encoded size, for the batch byte limit."""
    fixed = 80  # 32 bytes of addresses + at most ~48 bytes of varints in practice
    if records.dtype.names is not None and "cap_len" in records.dtype.names:
        return int(len(records) * fixed + int(records["cap_len"].sum()))
    return len(records) * fixed
