"""State snapshots in tests: as the builds of 2026-12-06 wrote them (``split``: in parts, each a
message keyed ``q`` or ``q.i`` with the header ``pktstream.snapshot.part`` = ``GENERATION/i/PARTS``,
what the reader of today's builds must still restore), and a processor whose state is the data it
dumps (``Verbatim``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from pktstream.consumers.engine.snapshot import MAX_PARTS, Packed


def split(value: bytes | Packed, part_bytes: int) -> Iterator[tuple[bytes, bytes]]:
    """A packed snapshot as (part, its header's value) in order, each part at most ``part_bytes``
    (larger where that would take more than MAX_PARTS parts)."""
    pk = value if isinstance(value, Packed) else Packed([value])
    part_bytes = max(part_bytes, -(-pk.size // MAX_PARTS))
    n = max(1, -(-pk.size // part_bytes))
    gen = uuid.uuid4().hex[:16]
    data = b"".join(pk.buffers)
    for i in range(n):
        yield data[i * part_bytes : (i + 1) * part_bytes], f"{gen}/{i}/{n}".encode()


class Verbatim:
    """A processor whose state is a snapshot's data as read (to write a snapshot again unchanged)."""

    def new_state(self) -> Any:
        return {}

    def dump(self, state: Any) -> Any:
        return state

    def load(self, data: Any) -> Any:
        return data

    def degrade(self, state: Any) -> dict[str, Any]:
        return {}
