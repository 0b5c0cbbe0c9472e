"""``pktstream tail`` and ``pktstream audit``: tools that read the topics as they are."""

from __future__ import annotations

import argparse
import json
import sys

from confluent_kafka import KafkaException

from pktstream.runtime.cli import Verb, time_ms
from pktstream.runtime.errors import ConfigError, KafkaUnavailableError
from pktstream.runtime.kafka import check_reachable, client_config, parse_props, require_topic
from pktstream.runtime.log import configure_logging


def _reader_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", default=None, help="Kafka (default: the local broker's port)")
    p.add_argument("--local-kafka-port", type=int, default=9092)
    p.add_argument("--topic", default="pktstream.packets")
    p.add_argument("-X", dest="kafka_props", action="append", metavar="PROP=VALUE")


def _reader_conf(args: argparse.Namespace) -> dict[str, object]:
    """tail and audit read the named cluster or the local broker's port; they never start a broker
    (an empty new one would have nothing to show). An unreachable broker or a missing topic is said
    in the same words as every other command's, before any reading starts."""
    conf = client_config(str(args.bootstrap_servers or f"127.0.0.1:{args.local_kafka_port}"),
                         parse_props(args.kafka_props))
    check_reachable(conf)
    require_topic(conf, args.topic)
    return conf


def tail_arguments(ta: argparse.ArgumentParser) -> None:
    _reader_options(ta)
    g = ta.add_mutually_exclusive_group()
    g.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    g.add_argument("--since", help="start at this time (ISO 8601, e.g. 2026-11-26T10:00:00Z)")
    ta.add_argument("--no-follow", action="store_true", help="stop at the end of the topic")
    ta.add_argument("--max", type=int, default=None, help="stop after this many records")
    ta.add_argument("--payload", choices=["text", "base64", "hex", "none"], default="text")
    ta.add_argument("--dead-letter-topic", default=None,
                    help="set messages that do not decode aside in this topic (with the reason) instead of only "
                         "counting them")


def tail_run(args: argparse.Namespace) -> int:
    from pktstream.consumers.tools.tail import tail

    configure_logging("auto", "warning")
    since_ms = None
    start = "beginning" if args.from_beginning else "end"
    if args.since:
        try:
            since_ms = time_ms(args.since)
        except ValueError:
            raise ConfigError([f"--since: {args.since!r} is not an ISO 8601 time"]) from None
        start = "time"
    conf = _reader_conf(args)
    try:
        stats = tail(conf, args.topic, start=start, since_ms=since_ms, follow=not args.no_follow,
                     max_records=args.max, payload=args.payload, dead_letter_topic=args.dead_letter_topic)
    except KeyboardInterrupt:
        return 0
    except KafkaException as e:
        raise KafkaUnavailableError(f"reading {args.topic!r}: {e.args[0] if e.args else e}") from None
    if stats.corrupt:
        print(f"pktstream tail: {stats.corrupt} corrupt message(s) skipped", file=sys.stderr)
    return 0


def audit_arguments(au: argparse.ArgumentParser) -> None:
    _reader_options(au)
    au.add_argument("--stats-topic", default="pktstream.stats")
    au.add_argument("--json", action="store_true", help="one JSON document instead of tables")


def audit_run(args: argparse.Namespace) -> int:
    from pktstream.consumers.tools.audit import audit, render

    configure_logging("auto", "warning")
    try:
        runs = audit(_reader_conf(args), args.topic, args.stats_topic)
    except KafkaException as e:
        raise KafkaUnavailableError(f"reading {args.topic!r}: {e.args[0] if e.args else e}") from None
    if args.json:
        print(json.dumps([r.as_dict() for r in runs], indent=1))
    else:
        print(render(runs))
    return 0


VERBS = {
    "tail": Verb("print the packet topic as JSON lines", tail_arguments, tail_run),
    "audit": Verb("reconcile the packet topic with the producers' loss accounting", audit_arguments, audit_run),
}
