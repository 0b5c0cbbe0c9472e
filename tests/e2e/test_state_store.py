"""The state store on a real broker: snapshots written as blocks within transactions (only the
blocks a commit changed, a whole image now and then), read back as the last committed one whole,
whatever came before (earlier builds' one-message and in-parts snapshots, whose part keys get
tombstones) or after (an aborted transaction of more blocks than the first window reads); and a
restarted app that waits for the snapshot its committed offset names when that snapshot is not
readable yet."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from confluent_kafka import Consumer, ConsumerGroupState, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pktstream.consumers.engine import snapshot
from pktstream.consumers.engine.statestore import PartState, StateStore
from pktstream.consumers.engine.topics import transactional_producer
from pktstream.runtime.kafka import ensure_topic
from pktstream.schemas import headers as H
from tests.support.apps import key, log_events, read_usage, run_usage, usage_cmd
from tests.support.helpers import read_messages
from tests.support.snapshots import Verbatim, split
from tests.support.traffic import CATALOG, containers, generate

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


def write(p: Producer, store: StateStore, st: PartState, commit: bool = True) -> list[tuple[bytes, bool]]:
    """st's snapshot written in a transaction (aborted unless ``commit``); the messages it took, as
    (key, whether it had a value)."""
    sent: list[tuple[bytes, bool]] = []

    def produce(topic: str, value: bytes | None, **kw: Any) -> None:
        sent.append((kw["key"], value is not None))
        p.produce(topic, value, **kw)

    st.token = uuid.uuid4().hex[:16]
    p.begin_transaction()
    store.write(produce, 0, st)
    if commit:
        p.commit_transaction(30)
        store.settle([st])
    else:
        p.flush(30)
        p.abort_transaction(30)
    return sent


def restore(store: StateStore, token: str) -> PartState:
    """The partition's snapshot once the one named ``token`` is readable (a commit's markers reach
    the partition a moment after commit_transaction returns)."""
    deadline = time.monotonic() + 30
    while True:
        st, found = store.restore(0)
        if found and st.token == token:
            return st
        assert time.monotonic() < deadline, f"snapshot {token} never readable (read {st.token!r})"
        time.sleep(0.2)


def blocks_written(sent: list[tuple[bytes, bool]]) -> int:
    return sum(1 for k, v in sent if v and b".b" in k)


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

        # the builds of 2026-12-06: parts keyed 0, 0.1 ... 0.9
        p = transactional_producer(conf, f"{app}-writer")
        p.init_transactions(30)
        p.begin_transaction()
        old = snapshot.pack({"data": {"n": np.arange(5000)}, "sources": {"0": 1}, "watermark": 10})
        for i, (part, header) in enumerate(split(old, PART)):
            p.produce(topic, part, key=snapshot.part_key(0, i), partition=0, headers=[(H.SNAPSHOT_PART, header)])
        p.commit_transaction(30)
        deadline = time.monotonic() + 30
        while (st := store.restore(0)[0]).watermark != 10:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert st.data["n"].tolist() == list(range(5000)) and st.parts == 10 and not st.blocks

        # this build: blocks and a manifest; the old part keys 0.1 ... 0.9 tombstoned
        st.data["n"] = np.arange(6000)  # 48 KB: 12 blocks of 4 KB, and the header's
        sent = write(p, store, st)
        assert {k for k, v in sent if not v} == {f"0.{i}".encode() for i in range(1, 10)}
        assert blocks_written(sent) == 13 and st.parts == 1 and len(st.blocks) == 13
        back = restore(store, st.token)
        assert back.data["n"].tolist() == list(range(6000)) and back.blocks == st.blocks

        # a commit writes the blocks that changed: values at the end, and the header (watermark)
        st.since_full = 0
        st.data["n"][-10:] += 1
        st.watermark = 20
        sent = write(p, store, st)
        assert blocks_written(sent) == 2 and sum(1 for _k, v in sent if not v) == 2  # 2 new, 2 named no more
        assert store.unchanged >= 11 * PART

        # 392 blocks, never committed
        aborted = PartState({"n": np.arange(200_000)}, {0: 3}, 30, st.parts, blocks=set(st.blocks), since_full=0)
        write(p, store, aborted, commit=False)
        back = restore(store, st.token)  # the first 64 offsets hold only the aborted transaction
        want = np.arange(6000)
        want[-10:] += 1
        assert back.data["n"].tolist() == want.tolist() and back.watermark == 20 and back.blocks == st.blocks

        # after a restore, and when the blocks written since reach FULL_EVERY states, a whole image
        sent = write(p, store, back)
        assert blocks_written(sent) == 13 and back.since_full == 0
        back.data["n"][:3] = -1
        back.since_full = snapshot.FULL_EVERY * 50_000
        assert blocks_written(write(p, store, back)) == 13

        after = PartState({"n": np.arange(7)}, {0: 4}, 40, back.parts, blocks=set(back.blocks), since_full=0)
        write(p, store, after)
        st = restore(store, after.token)
        assert st.data["n"].tolist() == list(range(7)) and st.sources == {0: 4} and st.parts == 1

        # what compaction keeps of each key: the last manifest and the blocks it names; tombstones for the rest
        latest: dict[bytes, bytes] = {}
        for k, v, _h in read_messages(kafka_bootstrap, topic):
            latest[k] = v
        live = {k for k, v in latest.items() if v != b""}
        assert live == {b"0"} | {snapshot.block_key(0, d) for d in after.blocks}, sorted(live)
        p.flush(10)
    finally:
        store.close()


def wait_group_empty(bootstrap: str, group: str, timeout_s: float = 60) -> None:
    """Until a static member that closed has timed out of the group (librdkafka's close does not
    leave a group for a static member): only an empty group takes offsets from outside."""
    adm = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while adm.describe_consumer_groups([group])[group].result(30).state != ConsumerGroupState.EMPTY:
        assert time.monotonic() < deadline, "the group did not empty"
        time.sleep(0.5)


def test_a_restart_waits_for_the_snapshot_its_offset_names(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A repartition partition's committed offset names (in its metadata) the snapshot it was
    committed with. The commit's markers reach the group's offsets and the state topic's partition
    at different moments (seconds apart after a broker's death, or when a partition's leader has
    just moved): an app that takes the partition over in between used to restore the snapshot
    before, resume from the newer offset, and lose the rows in between. Made here with another
    writer's open transaction on the state partition, which holds its last stable offset before a
    newer committed snapshot: the restarted app waits (committed_offsets_not_visible), then, once
    the transaction ends, restores the snapshot the offset names; nothing is published twice."""
    b = kafka_bootstrap
    conf = {"bootstrap.servers": b}
    topic = f"t-stale-{uuid.uuid4().hex[:6]}"
    ensure_topic(conf, topic, 1)
    t0 = (time.time_ns() - 600 * 10**9) // 10**9 * 10**9
    p = Producer(conf)
    for m in containers(generate(400, t0, 90 * 10**9, clients=40, seed=3, responses=True), batch=500):
        p.produce(topic, m, partition=0)
    assert p.flush(30) == 0
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG))
    app, out = f"t-stale-u-{uuid.uuid4().hex[:6]}", f"{topic}.usage"
    cmd = usage_cmd(b, topic, app, out, catalog, "--instance-id", "s", "--commit-interval-s", "0.2")
    first = run_usage(cmd)
    assert len(first) > 3
    rt, state_topic = f"{app}.repartition", f"{app}.state"
    wait_group_empty(b, app)
    group = Consumer({**conf, "group.id": app, "isolation.level": "read_committed"})
    (tp,) = group.committed([TopicPartition(rt, 0)], timeout=30)
    store = StateStore(conf, app, state_topic, Verbatim(), 1 << 20)
    blocker = transactional_producer(conf, f"{app}-blocker")
    try:
        st, found = store.restore(0)
        assert found and tp.offset > 0 and tp.metadata and st.token == tp.metadata  # what a commit leaves
        # another writer's open transaction on the state partition holds its last stable offset...
        blocker.init_transactions(30)
        blocker.begin_transaction()
        blocker.produce(state_topic, b"x", key=b"blocker", partition=0)
        assert blocker.flush(30) == 0
        # ...before a newer snapshot, committed, whose offset (the same position) names it and is readable
        writer = transactional_producer(conf, f"{app}-writer")
        writer.init_transactions(30)
        writer.begin_transaction()
        st.token = f"t2-{uuid.uuid4().hex[:8]}"
        store.write(lambda t, v, **kw: writer.produce(t, v, **kw), 0, st)
        writer.commit_transaction(30)
        group.commit(offsets=[TopicPartition(rt, 0, tp.offset, st.token)], asynchronous=False)

        log = tmp_path / "restart.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            deadline = time.monotonic() + 60
            while "committed_offsets_not_visible" not in log.read_text():
                assert proc.poll() is None, f"it went on with the snapshot before: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)
            time.sleep(2)
            assert proc.poll() is None  # still waiting
            blocker.abort_transaction(30)
            stdout, _ = proc.communicate(timeout=120)
        finally:
            proc.kill()
            proc.wait(30)
        assert proc.returncode == 0, log.read_text()[-3000:]
    finally:
        store.close()
        group.close()
    restored = [e for e in log_events(log.read_text()) if e["event"] == "state_restored" and e["partition"] == 0]
    assert restored and restored[-1]["token"] == st.token
    assert stdout.strip() == ""  # every window was closed before: none again
    assert sorted(read_usage(b, out), key=key) == sorted(first, key=key)
