"""Loss accounting in the stream itself: the producer's reports on the stats topic."""

from __future__ import annotations

import io
from typing import Any

import fastavro

from pktstream.schemas import load_schema_json

STATS_SCHEMA = "stats"
_PARSED = fastavro.parse_schema(load_schema_json(STATS_SCHEMA))


def encode_report(report: dict[str, Any]) -> bytes:
    """One report as an Avro Object Container File (one record; a few per minute, so fastavro)."""
    buf = io.BytesIO()
    fastavro.writer(buf, _PARSED, [report])
    return buf.getvalue()


def decode_reports(value: bytes) -> list[dict[str, Any]]:
    """The reports of a stats-topic message, through tail's bounded reader (the stats topic is
    written by every host: a container of another schema, or one that would inflate or recurse
    without bound, is a DecodeError)."""
    from pktstream.schemas.decode import DecodeError, iter_container

    meta, records = iter_container(value)
    if "ProducerStats" not in meta.get("avro.schema", ""):
        raise DecodeError("not a stats report")
    return list(records)


def stats_key(host_id: str, run_id: str) -> bytes:
    """Key of a run's reports: with compaction the stats topic keeps the latest report of every run."""
    return f"{host_id}/{run_id}".encode()
