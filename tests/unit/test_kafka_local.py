"""The embedded broker's set-up steps that can be checked without starting Java."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from pktstream.runtime import kafka_local


def test_cluster_ids_never_look_like_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """1 in 64 random ids started with '-', which the storage tool read as an option (CI caught it)."""
    ids: list[str] = []
    dashes = iter([b"\xfb" + bytes(15)] * 3 + [bytes(16)])  # base64url of 0xfb... starts with '-'
    monkeypatch.setattr(kafka_local.uuid, "uuid4", lambda: uuid.UUID(bytes=next(dashes)))

    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        ids.append(cmd[cmd.index("-t") + 1])
        raise RuntimeError("stop here")

    monkeypatch.setattr(kafka_local.subprocess, "run", fake_run)
    lk = kafka_local.LocalKafka(port=1, data_dir=tmp_path)
    monkeypatch.setattr(lk, "resolve", lambda: Path("."))
    monkeypatch.setattr(lk, "accepting", lambda: False)
    with pytest.raises(RuntimeError, match="stop here"):
        lk.up()
    assert ids and not ids[0].startswith("-")


def test_a_cluster_of_three_lays_out_ports_quorum_and_replication(tmp_path: Path) -> None:
    c = kafka_local.LocalCluster(port=19700, brokers=3, data_dir=tmp_path)
    nodes = c.nodes
    assert [n.port for n in nodes] == [19700, 19701, 19702]
    assert [n.controller_port for n in nodes] == [19703, 19704, 19705]
    assert c.bootstrap == "127.0.0.1:19700,127.0.0.1:19701,127.0.0.1:19702"
    assert len({n.cluster_id for n in nodes}) == 1 and len({n.dir for n in nodes}) == 3
    props = dict(line.split("=", 1) for line in nodes[1]._properties().splitlines() if "=" in line)
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19703,2@127.0.0.1:19704,3@127.0.0.1:19705"
    assert props["default.replication.factor"] == "3" and props["min.insync.replicas"] == "2"
    assert props["transaction.state.log.min.isr"] == "2" and props["offsets.topic.replication.factor"] == "3"
    # one broker: exactly the single broker (its directory, controller on port+1, replication 1)
    one = kafka_local.LocalCluster(port=19800, brokers=1, data_dir=tmp_path / "one").nodes
    assert len(one) == 1 and one[0].dir == tmp_path / "one" and one[0].controller_port == 19801
    single = dict(line.split("=", 1) for line in one[0]._properties().splitlines() if "=" in line)
    assert single["default.replication.factor"] == "1" and single["min.insync.replicas"] == "1"
    assert "controller.quorum.voters" not in single


def test_a_cluster_of_another_size_than_its_data_is_refused(tmp_path: Path) -> None:
    assert len(kafka_local.LocalCluster(port=19700, brokers=3, data_dir=tmp_path).nodes) == 3  # writes the manifest
    assert kafka_local.LocalCluster.existing(19700, tmp_path).brokers == 3
    with pytest.raises(kafka_local.LocalKafkaError, match="--brokers 3"):
        kafka_local.LocalCluster(port=19700, brokers=1, data_dir=tmp_path).up()
    with pytest.raises(kafka_local.LocalKafkaError, match="at least one"):
        kafka_local.LocalCluster(port=19700, brokers=0, data_dir=tmp_path)
