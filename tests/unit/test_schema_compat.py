"""Schema evolution: every schema in schemas/ reads data written with each of its earlier
versions (schemas/history/<name>/v*.avsc), and readers of those versions read new data.

Before changing a schema, copy the released version into its history folder; this test
then fails if the change would break consumers or old data in the topics.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pktstream.schemas import SCHEMA_DIR

HISTORY = sorted((SCHEMA_DIR / "history").glob("*/v*.avsc"))


def strategy_for(t: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of any Avro type the schemas use (named types remembered as they are defined)."""
    if isinstance(t, str):
        if t in named:
            return strategy_for(named[t], named)
        prim: dict[str, st.SearchStrategy[Any]] = {
            "int": st.integers(-(2**31), 2**31 - 1), "long": st.integers(-(2**63), 2**63 - 1),
            "bytes": st.binary(max_size=64), "string": st.text(max_size=20), "boolean": st.booleans(),
            "null": st.none(), "double": st.floats(allow_nan=False),
        }
        if t not in prim:
            raise AssertionError(f"extend strategy_for() to type {t!r}")
        return prim[t]
    if isinstance(t, list):
        return st.one_of([strategy_for(x, named) for x in t])
    kind = t["type"]
    if t.get("logicalType") == "timestamp-millis":
        return st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
                            timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
    if kind == "fixed":
        named[t["name"]] = t
        return st.binary(min_size=t["size"], max_size=t["size"])
    if kind == "array":
        return st.lists(strategy_for(t["items"], named), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), strategy_for(t["values"], named), max_size=4)
    if kind == "record":
        named[t["name"]] = t
        return st.fixed_dictionaries({f["name"]: strategy_for(f["type"], named) for f in t["fields"]})
    return strategy_for(kind, named)


def records_for(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return strategy_for(schema, {})


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
