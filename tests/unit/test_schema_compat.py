"""Schema evolution: every schema in schemas/ reads data written with each of its earlier
versions (schemas/history/<name>/v*.avsc), and readers of those versions read new data.

Before changing a schema, copy the released version into its history folder; this test
then fails if the change would break consumers or old data in the topics.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pktstream.schemas import SCHEMA_DIR

HISTORY = sorted((SCHEMA_DIR / "history").glob("*/v*.avsc"))


def records_for(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    named: dict[str, int] = {}
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in schema["fields"]:
        t = f["type"]
        if isinstance(t, dict) and t["type"] == "fixed":
            named[t["name"]] = t["size"]
            fields[f["name"]] = st.binary(min_size=t["size"], max_size=t["size"])
        elif isinstance(t, str) and t in named:
            fields[f["name"]] = st.binary(min_size=named[t], max_size=named[t])
        elif t == "int":
            fields[f["name"]] = st.integers(-(2**31), 2**31 - 1)
        elif t == "long":
            fields[f["name"]] = st.integers(-(2**63), 2**63 - 1)
        elif t == "bytes":
            fields[f["name"]] = st.binary(max_size=64)
        elif t == "string":
            fields[f["name"]] = st.text(max_size=20)
        elif t == "boolean":
            fields[f["name"]] = st.booleans()
        elif isinstance(t, dict) and t["type"] == "array" and t["items"] == "long":
            fields[f["name"]] = st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4)
        else:
            raise AssertionError(f"extend records_for() to type {t!r}")
    return st.fixed_dictionaries(fields)


def roundtrip(writer: dict[str, Any], reader: dict[str, Any], recs: list[dict[str, Any]]) -> list[Any]:
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(writer), recs)
    buf.seek(0)
    return list(fastavro.reader(buf, reader_schema=fastavro.parse_schema(reader)))


def test_there_is_history_for_every_schema() -> None:
    names = {p.stem for p in SCHEMA_DIR.glob("*.avsc")}
    assert names and names <= {p.parent.name for p in HISTORY}


@pytest.mark.parametrize("old_path", HISTORY, ids=lambda p: f"{p.parent.name}/{p.stem}")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_backward_and_forward_compatible(old_path: Path, data: st.DataObject) -> None:
    old = json.loads(old_path.read_text())
    new = json.loads((SCHEMA_DIR / f"{old_path.parent.name}.avsc").read_text())
    old_recs = data.draw(st.lists(records_for(old), min_size=1, max_size=5))
    got = roundtrip(old, new, old_recs)  # new readers, old data
    for before, after in zip(old_recs, got, strict=True):
        assert {k: after[k] for k in before} == before
    new_recs = data.draw(st.lists(records_for(new), min_size=1, max_size=5))
    got_old = roundtrip(new, old, new_recs)  # old readers, new data
    for before, after in zip(new_recs, got_old, strict=True):
        assert after == {k: before[k] for k in after}
