"""``pktstream produce``: capture packets on an interface and publish them to Kafka."""

from __future__ import annotations

import argparse
import json
import os
import threading

import structlog

from pktstream.producer.config import ProducerConfig, load_config, service_link_variables
from pktstream.runtime.cli import Verb
from pktstream.runtime.kafka import parse_props
from pktstream.runtime.log import configure_logging

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
    ("--redact-names", "redact_names", str, "more names whose values are redacted, e.g. pin,otp (comma-separated)"),
    ("--payload-networks", "payload_networks", str, "CIDRs whose packets keep payload (default all)"),
    ("--xdp-mode", "xdp_mode", str, "auto | native | generic"),
    ("--direction", "direction", str, "both | ingress | egress (default both)"),
    ("--egress-hook", "egress_hook", str, "auto | tcx | tc: how the egress classifier attaches"),
    ("--sample-rate", "sample_rate", int, "capture 1 packet in N"),
    ("--max-sample-rate", "max_sample_rate", int, "ceiling of adaptive sampling (default 1024)"),
    ("--stats-interval", "stats_interval_s", float, "seconds between figures lines"),
    ("--codec", "codec", str, "Avro codec: null | deflate | snappy | zstandard"),
    ("--compression", "compression", str, "Kafka compression: none | gzip | snappy | lz4 | zstd"),
    ("--batch-records", "batch_records", int, "records per Kafka message, at most"),
    ("--batch-age-ms", "batch_age_ms", int, "oldest record waits at most this long"),
    ("--batch-quiet-ms", "batch_quiet_ms", int, "a small batch waits for more up to this age (0 = off; default 2000)"),
    ("--host-id", "host_id", str, "host id (message key)"),
    ("--kafka-config", "kafka_config", str, "Kafka properties file (name=value lines): where secrets belong"),
    ("--queue-max-kbytes", "queue_max_kbytes", int, "producer memory queue in KiB (default 65536)"),
    ("--spool-dir", "spool_dir", str, "on-disk spool directory"),
    ("--pin-dir", "pin_dir", str, "bpffs directory for pinned counters, empty = off"),
    ("--spool-max-bytes", "spool_max_bytes", int, "spool size bound, 0 = no spool (default 1 GiB)"),
    ("--log-format", "log_format", str, "auto | json | console"),
    ("--log-level", "log_level", str, "debug | info | warning | error"),
]


def add_arguments(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("--config", help="TOML configuration file")
    for flag, field, typ, help_ in _PRODUCE_FLAGS:
        pr.add_argument(flag, dest=field, type=typ, default=None, help=help_)
    pr.add_argument("--no-redact", dest="redact", action="store_false", default=None,
                    help="publish payload prefixes as captured, credentials included")
    pr.add_argument("--keep-http2-headers", dest="redact_http2_headers", action="store_false", default=None,
                    help="publish HTTP/2 and gRPC header blocks as captured (other credentials still redacted)")
    pr.add_argument("--no-adaptive-sampling", dest="adaptive_sampling", action="store_false", default=None,
                    help="never raise the sampling rate under overload (losses then show as kernel drops)")
    pr.add_argument("-X", dest="kafka_props", action="append", metavar="PROP=VALUE",
                    help="librdkafka property (repeatable), e.g. -X security.protocol=SASL_SSL")
    pr.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    pr.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")


def _bootstrap(explicit: str | None, props: dict[str, str], port: int) -> str:
    """The flag's servers, else a bootstrap.servers among the Kafka properties, else the local
    broker, started when it is not running."""
    if explicit or props.get("bootstrap.servers"):
        return explicit or props["bootstrap.servers"]
    from pktstream.runtime.kafka_local import LocalKafka

    return LocalKafka(port=port).up()


def run(args: argparse.Namespace) -> int:
    from pktstream.producer.pipeline import ProducerRun, install_signal_handlers

    flags = {field: getattr(args, field) for _, field, _, _ in _PRODUCE_FLAGS}
    flags["adaptive_sampling"] = args.adaptive_sampling
    flags["redact"] = args.redact
    flags["redact_http2_headers"] = args.redact_http2_headers
    cfg: ProducerConfig = load_config(flags=flags, config_file=args.config,
                                      kafka_overrides=parse_props(args.kafka_props))
    configure_logging(cfg.log_format, cfg.log_level)
    os.umask(0o077)  # spool, run state and pinned paths readable by this user only (payload prefixes)
    links = service_link_variables(os.environ)
    if links:
        log.warning("service_link_variables_ignored", variables=links,
                    hint="Kubernetes service links; set enableServiceLinks: false in the pod spec")
    if not cfg.interface:
        from pktstream.producer.capture import default_route_interface

        cfg.interface = default_route_interface() or ""
    if args.print_config:
        print(json.dumps(cfg.redacted(), indent=2))
        return 0
    log.info("config_effective", **cfg.redacted())
    stop = threading.Event()
    install_signal_handlers(stop)
    bootstrap = _bootstrap(cfg.bootstrap_servers, cfg.kafka, cfg.local_kafka_port)
    prun = ProducerRun(cfg, bootstrap, stop)
    prun.prepare()
    prun.run(duration_s=args.duration)
    s = prun.publisher.stats if prun.publisher else None
    return 0 if s is None or s.records_failed == 0 else 3


VERBS = {"produce": Verb("capture packets on an interface and publish them to Kafka", add_arguments, run)}
