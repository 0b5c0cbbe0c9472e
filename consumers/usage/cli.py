"""``pktstream usage`` and ``pktstream catalog-from-openapi``."""

from __future__ import annotations

import argparse

from pktstream.consumers.engine.app import WireSchema, add_stream_options, conf_from, run_app, stream_config
from pktstream.consumers.usage.caps import MAX_APIS, MAX_APIS_PER_SERVER
from pktstream.consumers.usage.red import MAX_APIS as RED_MAX_APIS
from pktstream.consumers.usage.red import MAX_LABEL_SETS as RED_MAX_LABEL_SETS
from pktstream.consumers.usage.red import MAX_SERVERS as RED_MAX_SERVERS
from pktstream.runtime.cli import Verb
from pktstream.runtime.log import configure_logging


def usage_arguments(us: argparse.ArgumentParser) -> None:
    add_stream_options(us, "pktstream-usage", 9465)
    us.add_argument("--usage-topic", default="pktstream.usage")
    us.add_argument("--output", choices=["table", "json", "none"], default="table",
                    help="what to print as windows close: the live table, the records as JSON lines, nothing")
    us.add_argument("--top", type=int, default=15, help="rows of the table")
    us.add_argument("--top-clients", type=int, default=10, help="clients listed per API and window")
    us.add_argument("--no-hours", action="store_true", help="do not publish the hourly roll-up")
    us.add_argument("--response-timeout-s", type=float, default=30.0,
                    help="a request no answer follows within this is counted as unanswered")
    us.add_argument("--metrics-max-apis", type=int, default=RED_MAX_APIS,
                    help="API label values per server in the /metrics RED histograms; the rest are _OTHER")
    us.add_argument("--metrics-max-servers", type=int, default=RED_MAX_SERVERS,
                    help="server_address label values in the RED histograms; the rest are _OTHER")
    us.add_argument("--metrics-max-label-sets", type=int, default=RED_MAX_LABEL_SETS,
                    help="label sets per RED histogram; the answers of the rest share one set of _OTHER labels")
    us.add_argument("--max-apis-per-server", type=int, default=MAX_APIS_PER_SERVER,
                    help="uncatalogued API names with a row of their own per server (address:port), window and "
                         "partition; the rest share the server's '<address>:<port>/_OTHER' row")
    us.add_argument("--max-apis", type=int, default=MAX_APIS,
                    help="uncatalogued API names with a row of their own (and servers with an _OTHER row) per "
                         "window and partition; the rest share one '_OTHER' row")


def usage_run(args: argparse.Namespace) -> int:
    from pktstream.consumers.catalog import Catalog
    from pktstream.consumers.usage.processor import UsageProcessor
    from pktstream.consumers.usage.red import RedMetrics
    from pktstream.consumers.usage.table import UsageView

    configure_logging(args.log_format, "info")
    problems = []
    if not args.response_timeout_s > 0:
        problems.append(f"--response-timeout-s must be > 0, got {args.response_timeout_s}")
    for flag in ("metrics_max_apis", "metrics_max_servers", "metrics_max_label_sets", "max_apis_per_server",
                 "max_apis"):
        if getattr(args, flag) < 1:
            problems.append(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    cfg = stream_config(args, "pktstream-usage", problems)
    catalog = Catalog.load(args.catalog)
    red = RedMetrics(args.metrics_max_apis, args.metrics_max_servers, args.metrics_max_label_sets) \
        if args.metrics_port else None
    proc = UsageProcessor(catalog, args.usage_topic, args.grace_s, args.top_clients, hours=not args.no_hours,
                          response_timeout_s=args.response_timeout_s, red=red,
                          max_apis_per_server=args.max_apis_per_server, max_apis=args.max_apis)
    view = UsageView(args.output, args.top)
    return run_app(args, conf_from(args), cfg, proc, args.usage_topic, view, collectors=[red] if red else None,
                   schemas={args.usage_topic: usage_wire_schema()})


def usage_wire_schema() -> WireSchema:
    """The usage records in the registry format: one Avro datum of schemas/usage.avsc each."""
    import json

    from pktstream.consumers.usage.processor import _PARSED, _SCHEMA
    from pktstream.schemas import wire

    return WireSchema("AVRO", json.dumps(_SCHEMA), lambda sid, o: wire.avro_datum(sid, _PARSED, o.record))


def openapi_arguments(oa: argparse.ArgumentParser) -> None:
    oa.add_argument("spec", help="OpenAPI 3 document (YAML or JSON)")
    oa.add_argument("--host", default=None, help="Host header / TLS name (default: from the first server URL)")
    oa.add_argument("--port", type=int, default=None)


def openapi_run(args: argparse.Namespace) -> int:
    import yaml

    from pktstream.consumers.catalog import import_openapi, read_yaml

    doc = read_yaml(args.spec, args.spec, kind="YAML or JSON")
    print(yaml.safe_dump(import_openapi(doc, args.host, args.port), sort_keys=False), end="")
    return 0


VERBS = {
    "usage": Verb("per-API usage per minute from the packet topic, to the usage topic", usage_arguments, usage_run),
    "catalog-from-openapi": Verb("print an API catalog (YAML) made from an OpenAPI 3 document", openapi_arguments,
                                 openapi_run),
}
