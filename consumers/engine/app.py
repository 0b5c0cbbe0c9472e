"""What ``pktstream usage`` and ``pktstream alerts`` share: options, start-up, metrics, signals."""

from __future__ import annotations

import argparse
import gc
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from pktstream.consumers.engine.runner import Output, Processor, StreamConfig, StreamRunner
from pktstream.consumers.engine.topics import SNAPSHOT_PART_BYTES
from pktstream.consumers.engine.wirein import wire_reader
from pktstream.runtime.cli import time_ms
from pktstream.runtime.errors import ConfigError
from pktstream.runtime.kafka import client_config, ensure_topic, kafka_properties
from pktstream.runtime.registry import COMPATIBILITY, Registry, registry_properties
from pktstream.schemas import wire

log = structlog.get_logger("pktstream.app")

COUNTERS = {
    "messages_in": "Messages read (packet and repartition topics).",
    "records_in": "Packet records read from the packet topic.",
    "dead_lettered": "Messages set aside as undecodable.",
    "outputs": "Records published to the output topic.",
    "transactions": "Transactions committed.",
    "aborted": "Transactions aborted (state and offsets rewound).",
    "records_out_of_order": "Records older than their packet partition's event time minus the grace, "
                            "set aside when read.",
    "records_clock_skewed": "Records stamped further ahead of (or behind) the broker's time than the "
                            "tolerance, set aside when read.",
    "undecodable": "Packet messages that did not decode or featurize (dead-lettered).",
    "intake_waits": "Times stage one stopped reading the packet topic until stage two had read what it wrote two "
                    "commits before.",
    "partitions_held": "Times a packet partition waited, more than --align-s of event time ahead of the slowest "
                       "one this process reads with unread input.",
    "barriers_retaken": "Watermark checks taken again because a commit was not yet readable in a repartition "
                        "partition (its markers on their way after a broker's death or a leader's move).",
    "state_bytes_written": "Bytes of state snapshot blocks committed to the state topic (the blocks a commit "
                           "changed, and whole images now and then).",
    "state_bytes_unchanged": "Bytes of state snapshot blocks a committed snapshot named that the state topic held "
                             "already (not written again).",
    "late_records": "Records that arrived after their window had closed (counted, not added).",
    "apis_folded": "Uncatalogued API names a minute window counted in an _OTHER row instead of their own "
                   "(usage: --max-apis, --max-apis-per-server; each batch's decisions).",
    "requests_folded": "Requests counted in a minute's _OTHER row instead of their API's own (usage).",
    "capture_point_overlaps": "Sides of a (minute, API, capture point) that shared some but not all of their "
                              "connections with points nearer the server: counted if fewer than half (usage, "
                              "docs/usage.md).",
    "capture_point_duplicates": "Counters of a closed tumbling window (detector key, item, capture point) left out "
                                "because another point counted the same flows of that key and item, as many packets "
                                "or more: the same packets seen along a path count once (alerts, docs/alerts.md).",
    "loss_marks_dropped": "Capture points' ring-buffer loss marks a partition gave up past its bounds (usage, "
                          "alerts): the records_lost of windows they fell in reads lower (docs/usage.md, "
                          "Completeness).",
    "waiting_names_folded": "Connections and waiting requests whose API name was taken as its server's _OTHER "
                            "row, the table of names they refer to being full (usage).",
    "red_folded": "Answers counted under an _OTHER label in the RED histograms (usage: --metrics-max-*).",
    "conversations_reopened": "Conversations ended by a later packet of the same endpoints that begins another: a "
                              "client's SYN after a close (port reuse), or a packet after the timeout (activity).",
    "conversations_evicted": "Open conversations ended early because the table held --max-conversations (per "
                             "partition): their records say evicted (activity).",
    "paths_folded": "Request paths of attack-string samples read as _OTHER, --max-paths being reached (alerts).",
}
GAUGES = {
    "open_windows": "Windows open in this process's partitions.",
    "flows": "Connections in the flow table (activity: conversations open).",
    "waiting_requests": "Requests waiting for their answers (usage).",
    "open_alerts": "Alerts open (firing) in this process's partitions.",
    "capture_points_skewed": "Capture points whose records were set aside for their clock.",
    "api_rows": "Rows (API and server) of the open minute and hour windows (usage).",
    "red_label_sets": "Label sets of the RED histograms (usage).",
    "paths": "Request paths kept for the open windows' attack-string samples (alerts).",
}


class ClockCollector:
    """Each capture point's clock as Prometheus series: its offset against the broker's time and
    the records set aside for it (at most ClockReporter.MAX_POINTS capture points)."""

    def __init__(self, runner: StreamRunner) -> None:
        self.runner = runner

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rep = self.runner.clock_reporter
        off = GaugeMetricFamily("pktstream_consumer_capture_clock_offset_seconds",
                                "A capture point's newest record against the broker's append time.",
                                labels=["capture_point"])
        for origin, v in list(rep.offsets.items()):
            off.add_metric([origin], v)
        yield off
        skew = CounterMetricFamily("pktstream_consumer_capture_records_clock_skewed",
                                   "Records of a capture point set aside for its clock.", labels=["capture_point"])
        for origin, n in list(rep.totals.items()):
            skew.add_metric([origin], n)
        yield skew


def add_stream_options(p: argparse.ArgumentParser, app: str, metrics_port: int) -> None:
    p.add_argument("--bootstrap-servers", default=None, help="Kafka (default: the local broker's port)")
    p.add_argument("--local-kafka-port", type=int, default=9092)
    p.add_argument("--topic", default="pktstream.packets", help="the packet topic")
    p.add_argument("--app-id", default=None,
                   help=f"consumer group and prefix of the internal topics (default {app}; a replay with "
                        "--since or --from-beginning gets a new one)")
    p.add_argument("--instance-id", default="",
                   help="this process's name within the app (default: the hostname); give each process "
                        "on one machine its own")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--from-beginning", action="store_true", help="process the whole topic")
    g.add_argument("--since", help="process from this time (ISO 8601, e.g. 2026-11-26T10:00:00Z)")
    p.add_argument("--until-end", action="store_true",
                   help="stop once everything in the topic is processed, closing the open windows")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--partitions", type=int, default=0,
                   help="partitions of the internal topics (default: as many as the packet topic)")
    p.add_argument("--grace-s", type=float, default=10.0,
                   help="how long after its end a window waits for late records (event time)")
    p.add_argument("--clock-tolerance-s", type=float, default=300.0,
                   help="a record stamped further ahead of the broker's time is set aside (a host's clock)")
    p.add_argument("--max-behind-s", type=float, default=3600.0,
                   help="a record stamped further behind the broker's time is set aside")
    p.add_argument("--idle-s", type=float, default=60.0,
                   help="a capture point this far behind (event time, or wall-clock time once its partition "
                        "is read) no longer holds windows open")
    p.add_argument("--commit-interval-s", type=float, default=1.0, help="how often a transaction commits")
    p.add_argument("--commit-records", type=int, default=500_000,
                   help="a transaction commits once it has read this many packet records, before "
                        "--commit-interval-s when the input is a backlog (bounds the rows in flight)")
    p.add_argument("--align-s", type=float, default=10.0,
                   help="how far (event time) a packet partition may be read ahead of the slowest one with "
                        "unread input (a backlog's partitions are read side by side; 0: no limit)")
    p.add_argument("--state-part-bytes", type=int, default=SNAPSHOT_PART_BYTES,
                   help="the most one block of a state snapshot takes (64 KiB at most are used; a commit "
                        "writes the blocks that changed)")
    p.add_argument("--dead-letter-topic", default=f"{app}.dead-letters",
                   help="where undecodable messages go ('' to only count and log them)")
    p.add_argument("--metrics-port", type=int, default=metrics_port, help="Prometheus /metrics port (0: off)")
    p.add_argument("--metrics-address", default="0.0.0.0")
    p.add_argument("--catalog", default=None, help="API catalog (YAML); see docs/usage.md")
    p.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    p.add_argument("-X", dest="kafka_props", action="append", metavar="PROP=VALUE",
                   help="librdkafka property (security.protocol=SASL_SSL, ...); secrets belong in "
                        "--kafka-config or PKTSTREAM_KAFKA__* variables, not on a command line")
    p.add_argument("--kafka-config", default=None, metavar="FILE",
                   help="Kafka properties file (name=value lines; default: $PKTSTREAM_KAFKA_CONFIG)")
    p.add_argument("--wire-format", action="append", default=None, metavar="[TOPIC=]FORMAT",
                   help="how the output topics' records are written: native (the default: docs/topics.md) or "
                        "registry (the schema-registry wire format, one record per message, its schema "
                        "registered; docs/registry.md); TOPIC=FORMAT for one topic, repeatable")
    p.add_argument("--schema-registry", default=None, metavar="URL",
                   help="a Confluent-compatible schema registry (default: $PKTSTREAM_SCHEMA_REGISTRY_URL, else the "
                        "local one: pktstream registry up)")
    p.add_argument("--schema-registry-config", default=None, metavar="FILE",
                   help="the registry client's settings (basic.auth.user.info, bearer.auth.*, ssl.*; name=value "
                        "lines; default: $PKTSTREAM_SCHEMA_REGISTRY_CONFIG)")
    p.add_argument("--schema-compatibility", default=None, choices=COMPATIBILITY,
                   help="the compatibility level set on the subject (default: leave the subject's or the registry's "
                        "level in force, BACKWARD where none checks anything)")


@dataclass(frozen=True)
class WireSchema:
    """What an output topic's records are in the registry format: the schema's type (AVRO or JSON),
    its text, and how a record is written given the id the registry gave the schema."""

    schema_type: str
    text: str
    encode: Callable[[int, Output], bytes]


def json_schema(cls: str) -> WireSchema:
    """A JSON topic's records (the OCSF class ``cls``) in the JSON Schema wire format: the document as
    the native form has it, after the five bytes."""
    return WireSchema("JSON", wire.ocsf_json_schema(cls), lambda sid, o: wire.head(sid) + o.value)


def wire_formats(items: Sequence[str] | None, topics: Sequence[str] | None) -> set[str]:
    """The output topics written in the registry format; ConfigError with every problem (``topics``
    None: the formats alone are checked)."""
    problems: list[str] = []
    chosen: set[str] = set()
    for it in items or []:
        topic, _, fmt = it.rpartition("=")
        if fmt not in ("native", "registry"):
            problems.append(f"--wire-format {it!r}: the format is native or registry")
            continue
        if topics is None:
            continue
        if topic and topic not in topics:
            problems.append(f"--wire-format {it!r}: {topic!r} is not one of this app's output topics "
                            f"({', '.join(topics)})")
            continue
        for t in [topic] if topic else topics:
            (chosen.add if fmt == "registry" else chosen.discard)(t)
    if problems:
        raise ConfigError(problems)
    return chosen


def registry_encoders(args: argparse.Namespace, topics: Sequence[str],
                      schemas: dict[str, WireSchema]) -> tuple[dict[str, Callable[[Output], bytes]], Registry | None]:
    """Each output topic that --wire-format puts in the registry format, and how its records are
    written: its schema registered first (subject TOPIC-value), so a schema the registry refuses stops
    the app before anything is published."""
    chosen = wire_formats(args.wire_format, topics)
    if not chosen:
        return {}, None
    reg = Registry(registry_properties(args.schema_registry, args.schema_registry_config))
    out: dict[str, Callable[[Output], bytes]] = {}
    for t in sorted(chosen):
        ws = schemas[t]
        sid = reg.register(f"{t}-value", ws.text, ws.schema_type, args.schema_compatibility)
        out[t] = (lambda enc, i: lambda o: enc(i, o))(ws.encode, sid)
    return out, reg


def stream_config(args: argparse.Namespace, app: str, more: list[str] | None = None) -> StreamConfig:
    """The engine's settings from the options; ConfigError lists every problem at once, the app's own
    (``more``) after the engine's."""
    problems: list[str] = []
    since_ms = None
    start = "end"
    if args.from_beginning:
        start = "beginning"
    if args.since:
        try:
            since_ms = time_ms(args.since)
            start = "time"
        except ValueError:
            problems.append(f"--since: {args.since!r} is not an ISO 8601 time")
    if args.grace_s < 0:
        problems.append(f"--grace-s must be >= 0, got {args.grace_s}")
    for name in ("clock_tolerance_s", "max_behind_s", "idle_s", "align_s"):
        if getattr(args, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.commit_interval_s <= 0:
        problems.append(f"--commit-interval-s must be > 0, got {args.commit_interval_s}")
    if args.commit_records < 1:
        problems.append(f"--commit-records must be >= 1, got {args.commit_records}")
    if args.state_part_bytes < 4096:
        problems.append(f"--state-part-bytes must be >= 4096, got {args.state_part_bytes}")
    if args.partitions < 0:
        problems.append(f"--partitions must be >= 0, got {args.partitions}")
    if not 0 <= args.metrics_port < 65536:
        problems.append(f"--metrics-port must be 0..65535, got {args.metrics_port}")
    try:
        wire_formats(args.wire_format, None)
    except ConfigError as e:
        problems += e.problems
    problems += more or []
    if problems:
        raise ConfigError(problems)
    app_id = args.app_id
    if not app_id:
        app_id = app if start == "end" else f"{app}-replay-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    return StreamConfig(app_id=app_id, packet_topic=args.topic, partitions=args.partitions, start=start,
                        since_ms=since_ms, commit_interval_s=args.commit_interval_s, until_end=args.until_end,
                        dead_letter_topic=args.dead_letter_topic or None, instance_id=args.instance_id,
                        clock_tolerance_s=args.clock_tolerance_s, max_behind_s=args.max_behind_s, idle_s=args.idle_s,
                        state_part_bytes=args.state_part_bytes, commit_records=args.commit_records,
                        align_s=args.align_s)


def run_app(args: argparse.Namespace, conf: dict[str, Any], cfg: StreamConfig, processor: Processor,
            output_topic: str | list[str], on_outputs: Any, output_partitions: int = 6,
            collectors: list[Any] | None = None, schemas: dict[str, WireSchema] | None = None) -> int:
    # the hot paths allocate many short-lived objects and almost no cycles: a collection every 100,000
    # allocations instead of 700 (bench.consumers: 12-15% more records/s in process, usage and activity)
    gc.set_threshold(100_000, 50, 100)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runner = StreamRunner(conf, cfg, processor, stop)
    runner.on_outputs.append(on_outputs)
    topics = [output_topic] if isinstance(output_topic, str) else output_topic
    wire_formats(args.wire_format, topics)  # a wrong setting is told before anything starts
    runner.prepare()  # checks the broker and the packet topic first: a clear error, not a traceback
    for topic in topics:
        ensure_topic(conf, topic, output_partitions, -1, {"retention.ms": str(30 * 86400_000)})
    runner.encoders, registry = registry_encoders(args, topics, schemas or {})
    # pktstream relay's topic as the packet topic: its schema ids looked up in the same registry
    runner.wire_in = wire_reader(args.schema_registry, args.schema_registry_config)
    server = None
    if args.metrics_port:
        from pktstream.runtime.metrics import MetricsServer

        def health() -> tuple[bool, str]:
            age = time.monotonic() - runner.heartbeat
            return (age < 30, f"loop turned {age:.1f}s ago")

        server = MetricsServer(args.metrics_address, args.metrics_port, runner.figures, health,
                               {"app_id": cfg.app_id}, prefix="pktstream_consumer", counters=COUNTERS, gauges=GAUGES,
                               collectors=[*(collectors or []), ClockCollector(runner)])
        log.info("metrics_listening", address=args.metrics_address, port=server.port)
    try:
        runner.run(duration_s=args.duration)
    finally:
        if server is not None:
            server.close()
        if registry is not None:
            registry.close()
    log.info("stream_stopped", app_id=cfg.app_id, **runner.figures())
    return 0


def conf_from(args: argparse.Namespace) -> dict[str, Any]:
    return client_config(args.bootstrap_servers, kafka_properties(args.kafka_props, args.kafka_config),
                         default=f"127.0.0.1:{args.local_kafka_port}")
