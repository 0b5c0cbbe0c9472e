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
