"""Fixtures of the kernel tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pktstream.producer.capture import Capture


@pytest.fixture(params=[0, 64, 256], ids=lambda n: f"payload{n}")
def capture(request: pytest.FixtureRequest, root: None) -> Iterator[Capture]:
    """The capture programs loaded (not attached) with each payload prefix length."""
    cap = Capture(payload_bytes=request.param, ringbuf_bytes=1 << 20)
    try:
        yield cap
    finally:
        cap.close()
