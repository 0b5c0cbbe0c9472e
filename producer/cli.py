"""The ``pktstream`` command: produce, tail, kafka up|down|status."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog

from pktstream.producer.config import ProducerConfig, load_config
from pktstream.producer.errors import ConfigError, PktstreamError
from pktstream.producer.log import configure_logging

log = structlog.get_logger("pktstream")

# produce flags: (flag, config field, type, help)
_PRODUCE_FLAGS: list[tuple[str, str, type, str]] = [
    ("--interface", "interface", str, "interface to capture on (default: the default route's)"),
    ("--bootstrap-servers", "bootstrap_servers", str, "Kafka to publish to (default: start the local broker)"),
    ("--local-kafka-port", "local_kafka_port", int, "port of the local broker (default 9092)"),
    ("--topic", "topic", str, "packet topic (default pktstream.packets)"),
    ("--stats-topic", "stats_topic", str, "loss-accounting topic (default pktstream.stats)"),
    ("--stats-publish", "stats_publish_s", float, "seconds between loss-accounting reports (default 10)"),
    ("--metrics-port", "metrics_port", int, "Prometheus /metrics and /healthz port, 0 = off (default 9464)"),
    ("--partitions", "partitions", int, "partitions when creating the topic"),
    ("--payload-bytes", "payload_bytes", int, "payload prefix per packet, 0..256 (default 64)"),
    ("--ringbuf-bytes", "ringbuf_bytes", int, "ring buffer size (power of two)"),
    ("--payload-ports", "payload_ports", str, "ports whose packets keep payload, e.g. 80,8080 (default all)"),
    ("--payload-networks", "payload_networks", str, "CIDRs whose packets keep payload (default all)"),
    ("--xdp-mode", "xdp_mode", str, "auto | native | generic"),
    ("--sample-rate", "sample_rate", int, "capture 1 packet in N"),
    ("--max-sample-rate", "max_sample_rate", int, "ceiling of adaptive sampling (default 1024)"),
    ("--stats-interval", "stats_interval_s", float, "seconds between figures lines"),
    ("--codec", "codec", str, "Avro codec: null | deflate | snappy | zstandard"),
    ("--compression", "compression", str, "Kafka compression: none | gzip | snappy | lz4 | zstd"),
    ("--batch-records", "batch_records", int, "records per Kafka message, at most"),
    ("--batch-age-ms", "batch_age_ms", int, "oldest record waits at most this long"),
    ("--host-id", "host_id", str, "host id (message key)"),
    ("--queue-max-kbytes", "queue_max_kbytes", int, "producer memory queue in KiB (default 65536)"),
    ("--spool-dir", "spool_dir", str, "on-disk spool directory"),
    ("--pin-dir", "pin_dir", str, "bpffs directory for pinned counters, empty = off"),
    ("--spool-max-bytes", "spool_max_bytes", int, "spool size bound, 0 = no spool (default 1 GiB)"),
    ("--log-format", "log_format", str, "auto | json | console"),
    ("--log-level", "log_level", str, "debug | info | warning | error"),
]


def _kv(items: Sequence[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError([f"-X {it!r}: expected property=value"])
        k, v = it.split("=", 1)
        out[k.strip()] = v
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pktstream", description="Every incoming packet, from XDP to Kafka as Avro.")
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("produce", help="capture packets on an interface and publish them to Kafka")
    pr.add_argument("--config", help="TOML configuration file")
    for flag, field, typ, help_ in _PRODUCE_FLAGS:
        pr.add_argument(flag, dest=field, type=typ, default=None, help=help_)
    pr.add_argument("--no-redact", dest="redact", action="store_false", default=None,
                    help="publish payload prefixes as captured, credentials included")
    pr.add_argument("--no-adaptive-sampling", dest="adaptive_sampling", action="store_false", default=None,
                    help="never raise the sampling rate under overload (losses then show as kernel drops)")
    pr.add_argument("-X", dest="kafka_props", action="append", metavar="PROP=VALUE",
                    help="librdkafka property (repeatable), e.g. -X security.protocol=SASL_SSL")
    pr.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    pr.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")

    ta = sub.add_parser("tail", help="print the packet topic as JSON lines")
    ta.add_argument("--bootstrap-servers", default=None, help="Kafka (default: the local broker's port)")
    ta.add_argument("--local-kafka-port", type=int, default=9092)
    ta.add_argument("--topic", default="pktstream.packets")
    g = ta.add_mutually_exclusive_group()
    g.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    g.add_argument("--since", help="start at this time (ISO 8601, e.g. 2026-11-26T10:00:00Z)")
    ta.add_argument("--no-follow", action="store_true", help="stop at the end of the topic")
    ta.add_argument("--max", type=int, default=None, help="stop after this many records")
    ta.add_argument("--payload", choices=["text", "base64", "hex", "none"], default="text")
    ta.add_argument("--dead-letter-topic", default=None,
                    help="set messages that do not decode aside in this topic (with the reason) instead of only "
                         "counting them")
    ta.add_argument("-X", dest="kafka_props", action="append", metavar="PROP=VALUE")

    au = sub.add_parser("audit", help="reconcile the packet topic with the producers' loss accounting")
    au.add_argument("--bootstrap-servers", default=None, help="Kafka (default: the local broker's port)")
    au.add_argument("--local-kafka-port", type=int, default=9092)
    au.add_argument("--topic", default="pktstream.packets")
    au.add_argument("--stats-topic", default="pktstream.stats")
    au.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    au.add_argument("-X", dest="kafka_props", action="append", metavar="PROP=VALUE")

    from pktstream.consumers.app import add_stream_options

    us = sub.add_parser("usage", help="per-API usage per minute from the packet topic, to the usage topic")
    add_stream_options(us, "pktstream-usage", 9465)
    us.add_argument("--usage-topic", default="pktstream.usage")
    us.add_argument("--output", choices=["table", "json", "none"], default="table",
                    help="what to print as windows close: the live table, the records as JSON lines, nothing")
    us.add_argument("--top", type=int, default=15, help="rows of the table")
    us.add_argument("--top-clients", type=int, default=10, help="clients listed per API and window")
    us.add_argument("--no-hours", action="store_true", help="do not publish the hourly roll-up")

    al = sub.add_parser("alerts", help="detections from the packet topic, to the alerts topic (OCSF JSON)")
    add_stream_options(al, "pktstream-alerts", 9466)
    al.add_argument("--rules", default=None, help="detector settings (YAML); see docs/alerts.md")
    al.add_argument("--alerts-topic", default="pktstream.alerts")
    al.add_argument("--format", choices=["json", "avro"], default="json",
                    help="OCSF 1.3.0 Detection Finding JSON, or its Avro variant (schemas/alert.avsc)")
    al.add_argument("--output", choices=["lines", "json", "none"], default="lines",
                    help="what to print as alerts fire: one line each, the OCSF documents, nothing")
    al.set_defaults(grace_s=5.0, commit_interval_s=5.0)

    oa = sub.add_parser("catalog-from-openapi", help="print an API catalog (YAML) made from an OpenAPI 3 document")
    oa.add_argument("spec", help="OpenAPI 3 document (YAML or JSON)")
    oa.add_argument("--host", default=None, help="Host header / TLS name (default: from the first server URL)")
    oa.add_argument("--port", type=int, default=None)

    ka = sub.add_parser("kafka", help="the local single-node Kafka broker")
    ka.add_argument("action", choices=["up", "down", "status"])
    ka.add_argument("--port", type=int, default=9092)
    return p


def _bootstrap(explicit: str | None, port: int) -> str:
    if explicit:
        return explicit
    from pktstream.producer.kafka_local import LocalKafka

    return LocalKafka(port=port).up()


def _reader_bootstrap(args: argparse.Namespace) -> str:
    """tail and audit read the named cluster or the local broker's port; they never start a broker
    (an empty new one would have nothing to show)."""
    return str(args.bootstrap_servers or f"127.0.0.1:{args.local_kafka_port}")


def cmd_produce(args: argparse.Namespace) -> int:
    from pktstream.producer.pipeline import ProducerRun, install_signal_handlers

    flags = {field: getattr(args, field) for _, field, _, _ in _PRODUCE_FLAGS}
    flags["adaptive_sampling"] = args.adaptive_sampling
    flags["redact"] = args.redact
    cfg: ProducerConfig = load_config(flags=flags, config_file=args.config, kafka_overrides=_kv(args.kafka_props))
    configure_logging(cfg.log_format, cfg.log_level)
    if not cfg.interface:
        from pktstream.producer.capture import default_route_interface

        cfg.interface = default_route_interface() or ""
    if args.print_config:
        print(json.dumps(cfg.redacted(), indent=2))
        return 0
    log.info("config_effective", **cfg.redacted())
    stop = threading.Event()
    install_signal_handlers(stop)
    bootstrap = _bootstrap(cfg.bootstrap_servers, cfg.local_kafka_port)
    run = ProducerRun(cfg, bootstrap, stop)
    run.prepare()
    run.run(duration_s=args.duration)
    s = run.publisher.stats if run.publisher else None
    return 0 if s is None or s.records_failed == 0 else 3


def cmd_tail(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from pktstream.consumers.tail import tail
    from pktstream.producer.kafka import client_config

    configure_logging("auto", "warning")
    since_ms = None
    start = "beginning" if args.from_beginning else "end"
    if args.since:
        try:
            since_ms = int(datetime.fromisoformat(args.since.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            raise ConfigError([f"--since: {args.since!r} is not an ISO 8601 time"]) from None
        start = "time"
    conf = client_config(_reader_bootstrap(args), _kv(args.kafka_props))
    try:
        stats = tail(conf, args.topic, start=start, since_ms=since_ms, follow=not args.no_follow,
                     max_records=args.max, payload=args.payload, dead_letter_topic=args.dead_letter_topic)
    except KeyboardInterrupt:
        return 0
    except KafkaException as e:
        print(f"pktstream tail: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    if stats.corrupt:
        print(f"pktstream tail: {stats.corrupt} corrupt message(s) skipped", file=sys.stderr)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from pktstream.consumers.audit import audit, render
    from pktstream.producer.kafka import client_config

    configure_logging("auto", "warning")
    conf = client_config(_reader_bootstrap(args), _kv(args.kafka_props))
    try:
        runs = audit(conf, args.topic, args.stats_topic)
    except KafkaException as e:
        print(f"pktstream audit: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r.as_dict() for r in runs], indent=1))
    else:
        print(render(runs))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from pktstream.consumers.app import conf_from, run_app, stream_config
    from pktstream.consumers.catalog import Catalog
    from pktstream.consumers.table import UsageView
    from pktstream.consumers.usage import UsageProcessor

    configure_logging(args.log_format, "info")
    cfg = stream_config(args, "pktstream-usage")
    catalog = Catalog.load(args.catalog)
    proc = UsageProcessor(catalog, args.usage_topic, args.grace_s, args.top_clients, hours=not args.no_hours)
    view = UsageView(args.output, args.top)
    return run_app(args, conf_from(args, _kv(args.kafka_props)), cfg, proc, args.usage_topic, view)


def cmd_alerts(args: argparse.Namespace) -> int:
    import socket

    from pktstream.consumers.alerts import AlertsProcessor, load_rules, render
    from pktstream.consumers.app import conf_from, run_app, stream_config
    from pktstream.consumers.catalog import Catalog
    from pktstream.consumers.stream import Output

    configure_logging(args.log_format, "info")
    cfg = stream_config(args, "pktstream-alerts")
    rules = load_rules(args.rules)
    proc = AlertsProcessor(rules, Catalog.load(args.catalog), args.alerts_topic, args.grace_s, args.format,
                           socket.gethostname())

    def show(outputs: list[Output]) -> None:
        for o in outputs:
            if args.output == "lines":
                print(render(o.record), flush=True)
            elif args.output == "json":
                print(json.dumps(o.record, separators=(",", ":"), sort_keys=True), flush=True)

    return run_app(args, conf_from(args, _kv(args.kafka_props)), cfg, proc, args.alerts_topic, show)


def cmd_catalog_from_openapi(args: argparse.Namespace) -> int:
    import yaml

    from pktstream.consumers.catalog import import_openapi, read_yaml

    doc = read_yaml(args.spec, args.spec, kind="YAML or JSON")
    print(yaml.safe_dump(import_openapi(doc, args.host, args.port), sort_keys=False), end="")
    return 0


def cmd_kafka(args: argparse.Namespace) -> int:
    from pktstream.producer.kafka_local import LocalKafka

    configure_logging("auto", "info")
    lk = LocalKafka(port=args.port)
    if args.action == "up":
        print(lk.up())
    elif args.action == "down":
        print("stopped" if lk.down() else "not running")
    else:
        print(json.dumps(lk.status(), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers: dict[str, Any] = {"produce": cmd_produce, "tail": cmd_tail, "audit": cmd_audit, "kafka": cmd_kafka,
                                "usage": cmd_usage, "alerts": cmd_alerts,
                                "catalog-from-openapi": cmd_catalog_from_openapi}
    try:
        rc: int = handlers[args.command](args)
        return rc
    except ConfigError as e:
        print(f"pktstream: {e}", file=sys.stderr)
        return 2
    except PktstreamError as e:
        print(f"pktstream: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
