"""Exactly once through broker failures, on a real three-broker KRaft cluster (``pktstream kafka up
--brokers 3``): a broker SIGKILLed under the producer, a rolling restart of all three under load,
the stateful consumers (two instances each) through a broker's death, and the coordinators' brokers
killed in the middle of a transaction. Every record is in the topic exactly once (the audit's
per-producer batch sequence numbers), and the consumers' outputs equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin import AdminClient, ConfigResource
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from pktstream.runtime.kafka_local import LocalCluster
from tests.support.apps import (
    alerts_cmd,
    committed,
    key,
    read_alerts,
    read_usage,
    restart_scenario,
    run_alerts,
    run_usage,
    usage_cmd,
)
from tests.support.helpers import NetnsHost
from tests.support.producer_proc import ProducerProcess, single_run_audit
from tests.support.traffic import CATALOG as GEN_CATALOG

pytestmark = [pytest.mark.kernel, pytest.mark.kafka]

CLUSTER_PORT = int(os.environ.get("PKTSTREAM_TEST_CLUSTER_PORT", "19410"))  # clients 19410-12, quorum 19413-15


@pytest.fixture(scope="module")
def cluster(root: None) -> Iterator[LocalCluster]:
    c = LocalCluster(port=CLUSTER_PORT, brokers=3, data_dir=Path(tempfile.mkdtemp(prefix="pktstream-test-cluster-")))
    c.down()  # one left by an interrupted run
    c.up()
    try:
        yield c
    finally:
        c.down(timeout_s=15)  # (a node left waiting for a quorum that is gone: its data goes anyway)


@pytest.fixture
def healthy(cluster: LocalCluster) -> LocalCluster:
    """The cluster with every node up and every partition fully replicated, whatever the test before did."""
    cluster.up()
    cluster.in_sync()
    return cluster


def admin(c: LocalCluster) -> AdminClient:
    return AdminClient({"bootstrap.servers": c.bootstrap, "log_level": 0})


def leaders(c: LocalCluster, topic: str) -> dict[int, int]:
    md = admin(c).list_topics(topic, timeout=10).topics[topic]
    return {p: pm.leader for p, pm in md.partitions.items()}


class SteadyTraffic:
    """UDP frames into the host's interface at a steady rate from a thread until stopped; counts them."""

    def __init__(self, host: NetnsHost) -> None:
        self.host, self.sent, self._stop = host, 0, threading.Event()
        self.frame = bytes(Ether(dst=host.host_mac, src=host.peer_mac) / IP(src=host.peer_ip, dst="198.18.0.60")
                           / UDP(sport=4000, dport=7) / Raw(b"c" * 16))
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.host.send_frames([self.frame] * 400, pause_s=0.001)
            self.sent += 400

    def __enter__(self) -> SteadyTraffic:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(120)



def produce_through(c: LocalCluster, host: NetnsHost, disturb: Callable[[str], None]) -> None:
    """A producer on the host at a steady rate while ``disturb(topic)`` runs; then every packet the
    interface got must be in the topic exactly once, and the audit exact."""
    topic, stats = f"fail-{uuid.uuid4().hex[:8]}", f"fail-stats-{uuid.uuid4().hex[:8]}"
    prod = ProducerProcess("--interface", host.host_if, "--bootstrap-servers", c.bootstrap, "--topic", topic,
                           "--stats-topic", stats, "--payload-bytes", "0", "--batch-age-ms", "100",
                           "--no-adaptive-sampling", "--stats-publish", "1")
    prod.wait_event("producer_started")
    # topics on a cluster of three: replication factor 3, min.insync.replicas 2 (the broker's defaults)
    md = admin(c).list_topics(topic, timeout=10).topics[topic]
    assert {len(pm.replicas) for pm in md.partitions.values()} == {3}
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    adm = admin(c)  # kept: a future outlives no client
    conf = adm.describe_configs([res])[res].result(30)
    assert conf["min.insync.replicas"].value == "2"
    with SteadyTraffic(host) as traffic:
        time.sleep(2)
        disturb(topic)
        time.sleep(2)
    assert prod.stop(timeout=180) == 0, prod.events[-5:]
    run = single_run_audit(c.bootstrap, topic, stats)
    rep = run["report"]
    assert traffic.sent > 0 and rep["final"] and rep["packets_seen"] == traffic.sent and rep["ringbuf_full"] == 0
    assert run["unique"] == traffic.sent and run["duplicates"] == 0 and run["missing"] == 0
    assert run["exact"] and run["unexplained"] == 0
    assert rep["records_failed"] == 0 and rep["records_pending"] == 0


def test_broker_sigkilled_under_the_producer(healthy: LocalCluster, make_host: Callable[..., NetnsHost]) -> None:
    def kill_a_leader(topic: str) -> None:
        victim = healthy.node(leaders(healthy, topic)[0])
        assert victim.kill()
        time.sleep(8)  # past the controller's session timeout: leadership moves
        healthy.up()

    produce_through(healthy, make_host(), kill_a_leader)


def test_rolling_restart_of_all_brokers_under_load(healthy: LocalCluster,
                                                   make_host: Callable[..., NetnsHost]) -> None:
    def rolling(_topic: str) -> None:
        for node in healthy.nodes:  # as an operator does it: one at a time, back in sync before the next
            assert node.down()
            node.up()
            healthy.in_sync()

    produce_through(healthy, make_host(), rolling)


def java_hash(s: str) -> int:
    """Java's String.hashCode, which Kafka uses to place a group or a transactional id."""
    h = 0
    for ch in s:
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    return h


def coordinator(c: LocalCluster, internal_topic: str, ident: str) -> int:
    """The node that coordinates a group (``__consumer_offsets``) or a transactional id
    (``__transaction_state``): the leader of the partition the id hashes to."""
    md = admin(c).list_topics(internal_topic, timeout=10).topics[internal_topic]
    return int(md.partitions[(java_hash(ident) & 0x7FFFFFFF) % len(md.partitions)].leader)


def wait_commit(bootstrap: str, app: str, topic: str, procs: list[subprocess.Popen[bytes]]) -> None:
    base = committed(bootstrap, app, topic, f"{app}.repartition")
    deadline = time.monotonic() + 120
    while committed(bootstrap, app, topic, f"{app}.repartition") == base:
        assert all(p.poll() is None for p in procs), "an instance ended before the disturbance"
        assert time.monotonic() < deadline, "no commit before the deadline"
        time.sleep(0.02)


class Apps:
    """Consumer apps as subprocesses, each one's log in a file (shown when one fails)."""

    def __init__(self, logs: Path, *cmds: list[str]) -> None:
        self.logs = logs
        self.files = [logs / f"app{i}.log" for i in range(len(cmds))]
        self.procs = []
        for cmd, f in zip(cmds, self.files, strict=True):
            with open(f, "w") as err:
                self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err))

    def finish(self, timeout_s: float = 150) -> None:
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        rcs = [p.poll() for p in self.procs]
        spy = Path(sys.executable).with_name("py-spy")
        for p, f in zip(self.procs, self.files, strict=True):
            if p.poll() is None and spy.exists():  # where a hung app is stuck (debugging aid)
                dump = subprocess.run([str(spy), "dump", "--pid", str(p.pid)], capture_output=True, text=True)
                with open(f, "a") as out:
                    out.write(dump.stdout + dump.stderr)
        self.keep()
        assert rcs == [0] * len(self.procs), [(rc, f.read_text()[-2000:])
                                              for rc, f in zip(rcs, self.files, strict=True)]

    def __enter__(self) -> Apps:
        return self

    def keep(self) -> None:
        """The apps' logs copied under PKTSTREAM_TEST_KEEP_LOGS (debugging aid), named by test."""
        if os.environ.get("PKTSTREAM_TEST_KEEP_LOGS"):
            keep = Path(os.environ["PKTSTREAM_TEST_KEEP_LOGS"]) / self.logs.parent.name / self.logs.name
            keep.mkdir(parents=True, exist_ok=True)
            for f in self.files:
                (keep / f.name).write_bytes(f.read_bytes())

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.wait(30)
        if exc[0] is not None:  # failed before finish(): keep what the apps said
            self.keep()


@pytest.fixture(scope="module")
def scenario(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The restart scenario's topic (six packet partitions, attacks across windows) and an
    uninterrupted run of usage and alerts over it: the reference outputs."""
    cluster.up()
    cluster.in_sync()
    tmp = tmp_path_factory.mktemp("scenario")
    topic, rules_file, catalog = restart_scenario(cluster.bootstrap, tmp)
    usage_catalog = tmp / "usage-catalog.yaml"
    usage_catalog.write_text(yaml.safe_dump(GEN_CATALOG))
    b = cluster.bootstrap
    t0 = time.monotonic()
    ref_usage = run_usage(usage_cmd(b, topic, f"t-ref-u-{uuid.uuid4().hex[:6]}", f"{topic}.u.ref", usage_catalog))
    ref_alerts = run_alerts(alerts_cmd(b, topic, f"t-ref-a-{uuid.uuid4().hex[:6]}", f"{topic}.a.ref", rules_file,
                                       catalog))
    print(f"reference runs: {time.monotonic() - t0:.1f} s")
    assert len(ref_usage) > 20 and len(ref_alerts) > 3
    return {"topic": topic, "rules": rules_file, "catalog": catalog, "usage_catalog": usage_catalog,
            "usage": ref_usage, "alerts": ref_alerts}


def same_outputs(c: LocalCluster, s: dict[str, Any], usage_topic: str, alerts_topic: str) -> None:
    """The outputs equal the uninterrupted run's. Read once every partition is fully replicated,
    and read again (up to three times) while something is missing: a partition's leader moved back
    to the restarted broker can answer with a high watermark behind what was committed for a
    moment, and a reader stops there. A re-read can only bring what was missing; a window or an
    alert published twice stays twice."""
    c.in_sync()
    want_u = sorted(map(key, s["usage"]))
    want_a = sorted(json.dumps(d, sort_keys=True) for d in s["alerts"])
    for attempt in range(3):
        got_u = read_usage(c.bootstrap, usage_topic)
        got_a = read_alerts(c.bootstrap, alerts_topic)
        short = len(got_u) < len(want_u) or len(got_a) < len(want_a)
        if not short or attempt == 2:
            break
        print(f"outputs read short ({len(got_u)}/{len(want_u)} windows, {len(got_a)}/{len(want_a)} alerts): again")
        time.sleep(5)
    assert sorted(map(key, got_u)) == want_u, "a usage window lost or published twice"
    assert sorted(got_u, key=key) == sorted(s["usage"], key=key)
    assert sorted(json.dumps(d, sort_keys=True) for d in got_a) == want_a


def test_two_instances_of_each_consumer_through_a_broker_kill(healthy: LocalCluster, scenario: dict[str, Any],
                                                              tmp_path: Path) -> None:
    b, topic = healthy.bootstrap, scenario["topic"]
    u_app, a_app = f"t-fu-{uuid.uuid4().hex[:6]}", f"t-fa-{uuid.uuid4().hex[:6]}"
    with Apps(tmp_path,
              *(usage_cmd(b, topic, u_app, f"{topic}.u.two", scenario["usage_catalog"], "--instance-id", i,
                          "--commit-interval-s", "0.2") for i in ("a", "b")),
              *(alerts_cmd(b, topic, a_app, f"{topic}.a.two", scenario["rules"], scenario["catalog"], "--instance-id",
                           i, "--commit-interval-s", "0.2") for i in ("a", "b"))) as apps:
        wait_commit(b, u_app, topic, apps.procs)
        victim = healthy.node(leaders(healthy, topic)[0])
        assert victim.kill()
        time.sleep(8)
        healthy.up()
        apps.finish()
    same_outputs(healthy, scenario, f"{topic}.u.two", f"{topic}.a.two")


@pytest.mark.parametrize("which", ["transaction", "group"])
def test_coordinators_broker_killed_mid_transaction(healthy: LocalCluster, scenario: dict[str, Any], which: str,
                                                    tmp_path: Path) -> None:
    """The broker of a transaction coordinator (usage's) or of a group coordinator (alerts') dies
    while a transaction is open (commits come every 0.2 s): nothing lost, nothing repeated."""
    b, topic = healthy.bootstrap, scenario["topic"]
    u_app, a_app = f"t-cu-{uuid.uuid4().hex[:6]}", f"t-ca-{uuid.uuid4().hex[:6]}"
    with Apps(tmp_path,
              usage_cmd(b, topic, u_app, f"{topic}.u.{which}", scenario["usage_catalog"], "--instance-id", "x",
                        "--commit-interval-s", "0.2"),
              alerts_cmd(b, topic, a_app, f"{topic}.a.{which}", scenario["rules"], scenario["catalog"],
                         "--instance-id", "x", "--commit-interval-s", "0.2")) as apps:
        if which == "transaction":
            wait_commit(b, u_app, topic, apps.procs)
            node = coordinator(healthy, "__transaction_state", f"{u_app}-x")
        else:
            wait_commit(b, a_app, topic, apps.procs)
            # the broker the group's members talk to, as the cluster answers (FindCoordinator). The
            # leader of the group's __consumer_offsets partition can differ from it for a while after
            # the previous test's broker restart (the coordinator moves after the leader): the broker
            # the cluster names is the one to kill
            adm = admin(healthy)
            node = int(adm.describe_consumer_groups([a_app])[a_app].result(30).coordinator.id)
        assert healthy.node(node).kill()
        time.sleep(8)
        healthy.up()
        apps.finish()
    same_outputs(healthy, scenario, f"{topic}.u.{which}", f"{topic}.a.{which}")
