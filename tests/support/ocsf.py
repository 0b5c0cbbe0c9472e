"""OCSF validation by the official schema: the Detection Finding class (2004) of the OCSF version
the alerts declare (or another class: Network Activity for the activity records), as the
ocsf-json-schema package generates it from OCSF's published schema, checked with jsonschema
(Draft 2020-12). Not our own list of required attributes."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema


@cache
def validator(version: str = "1.3.0", cls: str = "detection_finding") -> Draft202012Validator:
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version)).get_class_schema(cls)
    return Draft202012Validator(schema)


def problems(docs: Iterable[dict[str, Any]]) -> list[str]:
    """Every way the documents fail the official schema of the version each one declares."""
    out = []
    for d in docs:
        v = validator(d.get("metadata", {}).get("version", "1.3.0"))
        for e in v.iter_errors(d):
            where = "/".join(map(str, e.absolute_path)) or "(root)"
            out.append(f"{d.get('activity_name')} {d.get('unmapped', {}).get('pktstream', {}).get('rule')}: "
                       f"{where}: {e.message[:200]}")
    return out


def assert_valid(docs: Iterable[dict[str, Any]]) -> None:
    bad = problems(docs)
    assert not bad, f"{len(bad)} OCSF schema violations, e.g. {bad[:5]}"
