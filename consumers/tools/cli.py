"""``pktstream tail``, ``audit``, ``query`` and ``export``: tools that read the topics as they are."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException

from pktstream.runtime.cli import Verb, time_ms
from pktstream.runtime.errors import ConfigError, KafkaUnavailableError, PktstreamError
from pktstream.runtime.kafka import check_reachable, client_config, kafka_properties, require_topic
from pktstream.runtime.log import configure_logging

if TYPE_CHECKING:
    from pktstream.consumers.tools.history import Range


def _reader_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", default=None, help="Kafka (default: the local broker's port)")
    p.add_argument("--local-kafka-port", type=int, default=9092)
    p.add_argument("--topic", default="pktstream.packets")
    p.add_argument("-X", dest="kafka_props", action="append", metavar="PROP=VALUE",
                   help="librdkafka property; secrets belong in --kafka-config or PKTSTREAM_KAFKA__* variables")
    p.add_argument("--kafka-config", default=None, metavar="FILE",
                   help="Kafka properties file (name=value lines; default: $PKTSTREAM_KAFKA_CONFIG)")


def _reader_conf(args: argparse.Namespace, packets: bool = True) -> dict[str, object]:
    """tail and audit read the named cluster or the local broker's port; they never start a broker
    (an empty new one would have nothing to show). An unreachable broker or a missing topic is said
    in the same words as every other command's, before any reading starts."""
    conf = client_config(args.bootstrap_servers, kafka_properties(args.kafka_props, args.kafka_config),
                         default=f"127.0.0.1:{args.local_kafka_port}")
    check_reachable(conf)
    if packets:  # (a query of the output topics alone needs no packet topic)
        require_topic(conf, args.topic)
    return conf


def _registry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schema-registry", default=None, metavar="URL",
                   help="the registry of topics written in its wire format (default: "
                        "$PKTSTREAM_SCHEMA_REGISTRY_URL, else the local one); asked only when such a message is read")
    p.add_argument("--schema-registry-config", default=None, metavar="FILE",
                   help="the registry client's settings (basic.auth.user.info, bearer.auth.*, ssl.*)")


def _wire_reader(args: argparse.Namespace) -> Any:
    """How messages in the registry's wire format are read: the registry named, else the local one."""
    from pktstream.consumers.engine.wirein import wire_reader

    return wire_reader(args.schema_registry, args.schema_registry_config)


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
    _registry_options(ta)


def tail_run(args: argparse.Namespace) -> int:
    from pktstream.consumers.tools.tail import tail

    configure_logging("auto", os.environ.get("PKTSTREAM_LOG_LEVEL", "warning"))
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
                     max_records=args.max, payload=args.payload, dead_letter_topic=args.dead_letter_topic,
                     wire_reader=_wire_reader(args))
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

    configure_logging("auto", os.environ.get("PKTSTREAM_LOG_LEVEL", "warning"))
    skipped: dict[str, int] = {}
    try:
        runs = audit(_reader_conf(args), args.topic, args.stats_topic, skipped)
    except KafkaException as e:
        raise KafkaUnavailableError(f"reading {args.topic!r}: {e.args[0] if e.args else e}") from None
    if args.json:
        print(json.dumps([r.as_dict() for r in runs], indent=1))
    else:
        print(render(runs))
    for topic, n in skipped.items():
        if n:
            print(f"pktstream audit: {n} message(s) of topic {topic!r} skipped (not readable as pktstream's)",
                  file=sys.stderr)
    return 0


def _range_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--from-beginning", action="store_true", help="from the oldest record (the default)")
    g.add_argument("--since", help="from this time (ISO 8601, e.g. 2026-11-26T10:00:00Z)")
    p.add_argument("--until", help="up to this time (ISO 8601); default: the end of the topic now")
    p.add_argument("--host", action="append", metavar="HOST_ID",
                   help="only the records of this capture point (host id); repeat for several")
    p.add_argument("-o", "--output", metavar="FILE", help="write to this file instead of standard output")


def _range(args: argparse.Namespace) -> Range:
    from pktstream.consumers.tools.history import Range

    problems: list[str] = []
    times: dict[str, int | None] = {"since": None, "until": None}
    for name in times:
        text = getattr(args, name)
        if text:
            try:
                times[name] = time_ms(text)
            except ValueError:
                problems.append(f"--{name}: {text!r} is not an ISO 8601 time")
    if times["since"] is not None and times["until"] is not None and times["until"] < times["since"]:
        problems.append(f"--until {args.until} is before --since {args.since}")
    if problems:
        raise ConfigError(problems)
    return Range(times["since"], times["until"], frozenset(args.host) if args.host else None)


def query_arguments(q: argparse.ArgumentParser) -> None:
    q.add_argument("sql", help="the SQL (DuckDB's dialect) over the tables packets, usage, alerts, connections, "
                               "dns and http")
    _reader_options(q)
    q.add_argument("--usage-topic", default="pktstream.usage")
    q.add_argument("--alerts-topic", default="pktstream.alerts")
    q.add_argument("--connections-topic", default="pktstream.connections")
    q.add_argument("--dns-topic", default="pktstream.dns")
    q.add_argument("--http-topic", default="pktstream.http")
    _registry_options(q)
    _range_options(q)
    q.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table",
                   help="json: one object per line; parquet needs -o FILE (or a pipe)")


def query_run(args: argparse.Namespace) -> int:
    from pktstream.consumers.tools.query import Sources, names_table, open_output, run_query

    configure_logging("auto", os.environ.get("PKTSTREAM_LOG_LEVEL", "warning"))
    rng = _range(args)
    out = open_output(args.output, args.format)
    conf = _reader_conf(args, packets=names_table(args.sql, "packets"))
    try:
        sources = Sources(args.topic, args.usage_topic, args.alerts_topic, args.connections_topic, args.dns_topic,
                          args.http_topic)
        wr = _wire_reader(args)
        run_query(conf, args.sql, rng, sources, args.format, out, wr=wr)
        if wr.set_aside:
            print(f"pktstream query: {wr.set_aside} record(s) in the registry's wire format set aside (their "
                  "schema id names no schema of ours, or the registry could not be reached)", file=sys.stderr)
    except KafkaException as e:
        raise KafkaUnavailableError(f"reading {args.topic!r}: {e.args[0] if e.args else e}") from None
    finally:
        out.flush()
    return 0


def export_arguments(ex: argparse.ArgumentParser) -> None:
    _reader_options(ex)
    _registry_options(ex)
    _range_options(ex)
    ex.add_argument("--format", choices=["pcap", "pcapng", "parquet"], required=True)


def export_run(args: argparse.Namespace) -> int:
    from pktstream.consumers.tools import export
    from pktstream.consumers.tools.history import (
        Progress,
        packet_batches,
        packet_schema,
        range_has_messages,
        terminal_progress,
    )
    from pktstream.consumers.tools.query import describe, open_output

    configure_logging("auto", os.environ.get("PKTSTREAM_LOG_LEVEL", "warning"))
    rng = _range(args)
    if args.output is None and sys.stdout.isatty():
        raise ConfigError([f"--format {args.format} writes binary: name a file with -o FILE"])
    conf = _reader_conf(args)
    if not range_has_messages(conf, args.topic, rng):
        raise PktstreamError(f"no messages in {describe(rng)} of topic {args.topic!r}")
    out = open_output(args.output, "parquet")
    progress = Progress()
    schema = packet_schema(address_text=args.format == "parquet")  # frames take the addresses' bytes
    batches = packet_batches(conf, args.topic, rng, progress, schema, terminal_progress(), _wire_reader(args))
    try:
        if args.format == "parquet":
            n = export.write_parquet(batches, schema, out)
        elif args.format == "pcap":
            n = export.write_pcap(batches, out)
        else:
            n = export.write_pcapng(batches, out, export.COMMENT)
    except KafkaException as e:
        raise KafkaUnavailableError(f"reading {args.topic!r}: {e.args[0] if e.args else e}") from None
    finally:
        out.flush()
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    if n == 0:
        print(f"pktstream export: no packet records in {describe(rng)} of topic {args.topic!r}", file=sys.stderr)
    print(f"pktstream export: {n:,} records written ({args.format})"
          + (f"; {progress.corrupt} corrupt message(s) skipped" if progress.corrupt else ""), file=sys.stderr)
    return 0


VERBS = {
    "tail": Verb("print the packet topic as JSON lines", tail_arguments, tail_run),
    "audit": Verb("reconcile the packet topic with the producers' loss accounting", audit_arguments, audit_run),
    "query": Verb("SQL over a time range of the packet, usage, alerts, connections, DNS and HTTP topics (DuckDB)",
                  query_arguments, query_run),
    "export": Verb("a time range of the packet topic as a pcap, pcapng or Parquet file", export_arguments, export_run),
}
