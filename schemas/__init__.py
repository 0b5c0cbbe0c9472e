"""Avro schemas: the wire contract of pktstream's topics."""

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / f"{name}.avsc"


@cache
def load_schema_json(name: str) -> dict[str, Any]:
    """The schema as parsed JSON (for fastavro.parse_schema and for the OCF header)."""
    data: dict[str, Any] = json.loads(schema_path(name).read_text())
    return data
