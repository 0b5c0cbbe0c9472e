"""Running the activity consumer's stages in process, as the runner does, for the unit tests."""

from __future__ import annotations

from typing import Any

from pktstream.consumers.activity.processor import ActivityProcessor
from pktstream.consumers.engine import features
from pktstream.consumers.engine.runner import FOREVER, Output
from pktstream.schemas.columns import read_container
from tests.support.traffic import containers, packets


def run(pkts: list[dict[str, Any]], p: ActivityProcessor | None = None, nparts: int = 3, batch: int = 4,
        watermarks: list[int] | None = None, host: str = "h/eth0") -> list[Output]:
    """The packets through stage one (messages of ``batch`` records), the repartition encoding and
    stage two; closes at each watermark, then at the end of input."""
    p = p or ActivityProcessor()
    states = {q: p.new_state() for q in range(nparts)}
    out: list[Output] = []
    msgs = containers(packets(pkts), batch=batch, host=host)
    marks = sorted(watermarks or [])
    for m in msgs:
        b = read_container(m)
        for q, part in p.route(p.featurize(b, host), nparts).items():
            p.process(states[q], features.decode(features.encode(features.compact(part))))
        last = int(b.columns["ts_ns"].max())
        while marks and marks[0] <= last:
            w = marks.pop(0)
            for q in range(nparts):
                out += p.close(states[q], w)
            # a snapshot and a restore between closes (what a restart does)
            for q in range(nparts):
                states[q] = p.load(p.dump(states[q]))
    for w in [*marks, FOREVER]:
        for q in range(nparts):
            out += p.close(states[q], w)
    return out
