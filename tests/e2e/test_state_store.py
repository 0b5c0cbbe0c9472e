"""The state store on a real broker: snapshots written in parts within transactions, read back as
the last committed one whole, whatever came before (an earlier build's one-message snapshot, a
larger snapshot whose extra keys were tombstoned) or after (an aborted transaction of more
parts than the first window reads)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer

from pktstream.consumers.engine import snapshot
from pktstream.consumers.engine.statestore import PartState, StateStore
from pktstream.consumers.engine.topics import transactional_producer
from pktstream.runtime.kafka import ensure_topic
from tests.support.helpers import read_messages

pytestmark = pytest.mark.kafka

PART = 4096


class Counts:
    """A processor's state as the store sees it: an array of counters (degrade halves it)."""

    def new_state(self) -> dict[str, Any]:
        return {"n": np.zeros(0, np.int64)}

    def dump(self, state: dict[str, Any]) -> Any:
        return {"n": state["n"]}

    def load(self, data: Any) -> dict[str, Any]:
        return {"n": snapshot.array(data["n"], np.int64)}

    def degrade(self, state: dict[str, Any]) -> dict[str, Any]:
        return {}


def write(p: Producer, store: StateStore, st: PartState, commit: bool = True) -> None:
    def produce(topic: str, value: bytes | None, **kw: Any) -> None:
        p.produce(topic, value, **kw)

    p.begin_transaction()
    store.write(produce, 0, st)
    if commit:
        p.commit_transaction(30)
    else:
        p.flush(30)
        p.abort_transaction(30)


def test_the_last_committed_snapshot_comes_back_whole(kafka_bootstrap: str) -> None:
    conf = {"bootstrap.servers": kafka_bootstrap}
    app = f"t-store-{uuid.uuid4().hex[:6]}"
    topic = f"{app}.state"
    ensure_topic(conf, topic, 1, config={"cleanup.policy": "compact"})
    store = StateStore(conf, app, topic, Counts(), PART)
    try:
        st, found = store.restore(0)
        assert not found and len(st.data["n"]) == 0 and st.parts == 1

        # an earlier build's snapshot: one message keyed "0", no part header
        legacy = Producer(conf)
        legacy.produce(topic, snapshot.pack({"data": {"n": np.arange(5)}, "sources": {"2": 7}, "watermark": 9}),
                       key=b"0", partition=0)
        legacy.flush(30)
        st, found = store.restore(0)
        assert found and st.data["n"].tolist() == list(range(5)) and st.sources == {2: 7} and st.parts == 1

        p = transactional_producer(conf, f"{app}-writer")
        p.init_transactions(30)
        big = PartState({"n": np.arange(5000)}, {0: 1}, 10, st.parts)  # 40 KB: 10 parts
        write(p, store, big)
        assert big.parts == 10
        st, _ = store.restore(0)
        assert st.data["n"].tolist() == list(range(5000)) and st.parts == 10

        small = PartState({"n": np.arange(1000, 2500)}, {0: 2}, 20, st.parts)  # 3 parts, keys 3..9 tombstoned
        write(p, store, small)
        aborted = PartState({"n": np.arange(200_000)}, {0: 3}, 30, small.parts)  # 196 parts, never committed
        write(p, store, aborted, commit=False)
        st, _ = store.restore(0)  # the first 64 offsets hold only the aborted transaction
        assert st.data["n"].tolist() == list(range(1000, 2500)) and st.watermark == 20 and st.parts >= 3

        after = PartState({"n": np.arange(7)}, {0: 4}, 40, st.parts)
        write(p, store, after)
        st, _ = store.restore(0)
        assert st.data["n"].tolist() == list(range(7)) and st.sources == {0: 4} and st.parts == 1

        # what compaction keeps of each key: the last snapshot's one part, tombstones for the rest
        latest: dict[bytes, bytes] = {}
        for k, v, _h in read_messages(kafka_bootstrap, topic):
            latest[k] = v
        assert all(v == b"" for k, v in latest.items() if k != b"0"), sorted(latest)
        assert len(latest[b"0"]) <= PART
        p.flush(10)
    finally:
        store.close()
