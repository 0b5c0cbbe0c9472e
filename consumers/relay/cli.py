"""``pktstream relay``."""

from __future__ import annotations

import argparse
import signal
import threading

from pktstream.runtime.cli import Verb
from pktstream.runtime.errors import ConfigError
from pktstream.runtime.log import configure_logging
from pktstream.runtime.registry import COMPATIBILITY


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", default=None, help="Kafka (default: the local broker's port)")
    p.add_argument("--local-kafka-port", type=int, default=9092)
    p.add_argument("--topic", default="pktstream.packets", help="the packet topic")
    p.add_argument("--to", dest="out_topic", default="pktstream.packet-records",
                   help="the topic of one packet record per message (schema-registry wire format)")
    p.add_argument("--app-id", default="pktstream-relay",
                   help="consumer group and transactional id prefix; run more instances with the same one to share "
                        "the partitions")
    p.add_argument("--instance-id", default="", help="this process's name within the app (default: the hostname)")
    p.add_argument("--from-beginning", action="store_true",
                   help="a partition without a committed offset starts at its oldest record (default: its end)")
    p.add_argument("--until-end", action="store_true", help="stop once every assigned partition is read to its end")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--commit-interval-s", type=float, default=1.0, help="how often a transaction commits")
    p.add_argument("--commit-records", type=int, default=1_000_000,
                   help="a transaction commits once it holds this many records, before --commit-interval-s")
    p.add_argument("--compression", choices=["zstd", "lz4", "snappy", "gzip", "none"], default="zstd",
                   help="the output topic's compression (producer side)")
    p.add_argument("--dead-letter-topic", default="pktstream-relay.dead-letters",
                   help="where undecodable packet messages go ('' to only count and log them)")
    p.add_argument("--schema-registry", default=None, metavar="URL",
                   help="a Confluent-compatible schema registry (default: $PKTSTREAM_SCHEMA_REGISTRY_URL, else the "
                        "local one: pktstream registry up)")
    p.add_argument("--schema-registry-config", default=None, metavar="FILE",
                   help="the registry client's settings (basic.auth.user.info, bearer.auth.*, ssl.*)")
    p.add_argument("--schema-compatibility", default=None, choices=COMPATIBILITY,
                   help="the compatibility level set on the subject (default: leave the subject's or the registry's "
                        "level in force, BACKWARD where none checks anything)")
    p.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    p.add_argument("-X", dest="kafka_props", action="append", metavar="PROP=VALUE", help="librdkafka property")
    p.add_argument("--kafka-config", default=None, metavar="FILE",
                   help="Kafka properties file (name=value lines; default: $PKTSTREAM_KAFKA_CONFIG)")


def run(args: argparse.Namespace) -> int:
    from pktstream.consumers.relay.relay import Relay, RelayConfig
    from pktstream.runtime.kafka import client_config, kafka_properties
    from pktstream.runtime.registry import Registry, registry_properties

    configure_logging(args.log_format, "info")
    problems = []
    if args.commit_interval_s <= 0:
        problems.append(f"--commit-interval-s must be > 0, got {args.commit_interval_s}")
    if args.commit_records < 1:
        problems.append(f"--commit-records must be >= 1, got {args.commit_records}")
    if args.out_topic == args.topic:
        problems.append(f"--to {args.out_topic!r} is the packet topic itself")
    if args.dead_letter_topic and args.dead_letter_topic in (args.topic, args.out_topic):
        problems.append(f"--dead-letter-topic {args.dead_letter_topic!r} is the packet topic or the output topic")
    if args.duration is not None and args.duration <= 0:
        problems.append(f"--duration must be > 0, got {args.duration}")
    props: dict[str, str] = {}
    reg_conf: dict[str, str] = {}
    try:
        props = kafka_properties(args.kafka_props, args.kafka_config)
    except ConfigError as e:
        problems += e.problems
    try:
        reg_conf = registry_properties(args.schema_registry, args.schema_registry_config)
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ConfigError(problems)
    conf = client_config(args.bootstrap_servers, props, default=f"127.0.0.1:{args.local_kafka_port}")
    cfg = RelayConfig(app_id=args.app_id, packet_topic=args.topic, out_topic=args.out_topic,
                      start="beginning" if args.from_beginning else "end", until_end=args.until_end,
                      commit_interval_s=args.commit_interval_s, commit_records=args.commit_records,
                      dead_letter_topic=args.dead_letter_topic or None, instance_id=args.instance_id,
                      compression=args.compression, compatibility=args.schema_compatibility)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    registry = Registry(reg_conf)
    try:
        relay = Relay(conf, cfg, registry, stop)
        relay.prepare()
        relay.run(args.duration)
    finally:
        registry.close()
    return 0


VERBS = {"relay": Verb("the packet topic as one record per message in the schema-registry wire format",
                       add_arguments, run)}
