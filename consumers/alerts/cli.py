"""``pktstream alerts``."""

from __future__ import annotations

import argparse
import json
import socket

from pktstream.consumers.alerts.tables import MAX_PATHS
from pktstream.consumers.engine.app import (
    WireSchema,
    add_stream_options,
    conf_from,
    json_schema,
    run_app,
    stream_config,
)
from pktstream.consumers.engine.runner import Output
from pktstream.runtime.cli import Verb
from pktstream.runtime.errors import ConfigError
from pktstream.runtime.log import configure_logging


def add_arguments(al: argparse.ArgumentParser) -> None:
    add_stream_options(al, "pktstream-alerts", 9466)
    al.add_argument("--rules", default=None, help="detector settings (YAML); see docs/alerts.md")
    al.add_argument("--alerts-topic", default="pktstream.alerts")
    al.add_argument("--format", choices=["json", "avro"], default="json",
                    help="OCSF 1.3.0 Detection Finding JSON, or its Avro variant (schemas/alert.avsc)")
    al.add_argument("--output", choices=["lines", "json", "none"], default="lines",
                    help="what to print as alerts fire: one line each, the OCSF documents, nothing")
    al.add_argument("--max-paths", type=int, default=MAX_PATHS,
                    help="request paths (attack strings' evidence) kept per partition at once; the samples of "
                         "further ones read _OTHER")
    al.set_defaults(grace_s=5.0, commit_interval_s=5.0)


def run(args: argparse.Namespace) -> int:
    from pktstream.consumers.alerts.ocsf import render
    from pktstream.consumers.alerts.processor import AlertsProcessor
    from pktstream.consumers.alerts.rules import load_rules
    from pktstream.consumers.catalog import Catalog

    configure_logging(args.log_format, "info")
    cfg = stream_config(args, "pktstream-alerts")
    if args.max_paths < 1:
        raise ConfigError([f"--max-paths must be >= 1, got {args.max_paths}"])
    rules = load_rules(args.rules)
    proc = AlertsProcessor(rules, Catalog.load(args.catalog), args.alerts_topic, args.grace_s, args.format,
                           socket.gethostname(), max_paths=args.max_paths)

    def show(outputs: list[Output]) -> None:
        for o in outputs:
            if args.output == "lines":
                print(render(o.record), flush=True)
            elif args.output == "json":
                print(json.dumps(o.record, separators=(",", ":"), sort_keys=True), flush=True)

    return run_app(args, conf_from(args), cfg, proc, args.alerts_topic, show,
                   schemas={args.alerts_topic: alerts_wire_schema(args.format)})


def alerts_wire_schema(fmt: str) -> WireSchema:
    """The alerts in the registry format: OCSF Detection Finding JSON by OCSF's JSON Schema, or (with
    --format avro) one Avro datum of schemas/alert.avsc each."""
    if fmt == "json":
        return json_schema("detection_finding")
    from pktstream.consumers.alerts.ocsf import avro_record
    from pktstream.consumers.alerts.processor import _PARSED
    from pktstream.schemas import load_schema_json, wire

    return WireSchema("AVRO", json.dumps(load_schema_json("alert")),
                      lambda sid, o: wire.avro_datum(sid, _PARSED, avro_record(o.record)))


VERBS = {"alerts": Verb("detections from the packet topic, to the alerts topic (OCSF JSON)", add_arguments, run)}
