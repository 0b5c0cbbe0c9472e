"""Writes schemas/ocsf/<class>-<version>.json: the JSON Schemas (Draft 2020-12) of the OCSF classes
pktstream's JSON topics carry, as the ocsf-json-schema package generates them from OCSF's published
schema (the same generator the tests validate every event with). The files are what the consumers
register in a schema registry for the JSON Schema wire format (--wire-format registry); run this
again when a class or the OCSF version changes: python -m scripts.ocsf_schemas."""

from __future__ import annotations

import json
from pathlib import Path

from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

VERSION = "1.3.0"
CLASSES = ("detection_finding", "network_activity", "http_activity", "dns_activity")


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "schemas" / "ocsf"
    out.mkdir(exist_ok=True)
    gen = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=VERSION))
    for cls in CLASSES:
        schema = gen.get_class_schema(cls)
        (out / f"{cls}-{VERSION}.json").write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(out / f"{cls}-{VERSION}.json")


if __name__ == "__main__":
    main()
