"""The ``pktstream`` command: one parser, one error path, verbs contributed by each side.

The dispatcher knows the verbs' modules by name only (``VERB_MODULES``), so the shared runtime
imports neither side: each module has a ``VERBS`` table of ``Verb`` entries. Every command ends
the same way: exit 0, 2 with every configuration problem listed, or 1 with what went wrong in
words (an unreachable broker, a missing topic, a missing privilege), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pktstream.runtime.errors import ConfigError, PktstreamError
from pktstream.runtime.log import configure_logging

# the modules whose VERBS make up the command, in the order `pktstream --help` lists them
VERB_MODULES = (
    "pktstream.producer.cli",
    "pktstream.consumers.tools.cli",
    "pktstream.consumers.usage.cli",
    "pktstream.consumers.alerts.cli",
    "pktstream.consumers.activity.cli",
    "pktstream.consumers.relay.cli",
    "pktstream.runtime.cli",
)


def time_ms(text: str) -> int:
    """An ISO 8601 time (2026-11-26T10:00:00Z) as epoch milliseconds; ValueError when it is not one."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass(frozen=True)
class Verb:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _kafka_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--port", type=int, default=9092,
                   help="the first client port (brokers on PORT..PORT+N-1, controllers on the N ports after)")
    p.add_argument("--brokers", type=int, default=None, metavar="N",
                   help="nodes in the cluster (default: 1 for up, the running cluster's size for down and status)")
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.add_argument("--acls", action="store_true",
                   help="up: one node with a SASL_SSL listener on PORT+2, Kafka's StandardAuthorizer and a SCRAM "
                        "user per role (producer, usage, alerts, reader) with its ACLs; prints each role's "
                        "properties file (docs/deployment.md, Least privilege)")


def _kafka(args: argparse.Namespace) -> int:
    from pktstream.runtime.kafka_local import LocalCluster

    configure_logging("auto", "info")
    if args.brokers is not None and args.brokers < 1:
        raise ConfigError([f"--brokers {args.brokers}: must be at least 1"])
    if args.acls:
        if args.action != "up" or (args.brokers or 1) != 1:
            raise ConfigError(["--acls: with up, on one node"])
        from pktstream.runtime.kafka_local import LocalKafka, default_dir, setup_roles, write_private

        secret = default_dir(args.port) / "admin.password"
        if not secret.exists():
            secret.parent.mkdir(parents=True, exist_ok=True)
            write_private(secret, uuid.uuid4().hex)
        lk = LocalKafka(port=args.port, sasl_port=args.port + 2, sasl_password=secret.read_text().strip(),
                        authorizer=True)
        print(lk.up())
        for role, path in setup_roles(lk).items():
            print(f"{role}: --bootstrap-servers {lk.sasl_bootstrap} --kafka-config {path}")
        return 0
    cluster = LocalCluster(port=args.port, brokers=args.brokers) if args.brokers else \
        LocalCluster.existing(args.port)
    if args.action == "up":
        print(cluster.up())
    elif args.action == "down":
        stopped = cluster.down()
        print(f"stopped node {', '.join(map(str, stopped))}" if stopped else "not running")
    else:
        rows = cluster.status()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'node':>4}  {'port':>5}  {'pid':>7}  {'accepting':9}  data")
            for r in rows:
                print(f"{r['node']:>4}  {r['port']:>5}  {r['pid'] or '-':>7}  {'yes' if r['accepting'] else 'no':9}"
                      f"  {r['data_dir']}")
    return 0


def _registry_arguments(p: argparse.ArgumentParser) -> None:
    from pktstream.runtime.registry import DEFAULT_PORT

    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="its HTTP port on 127.0.0.1")
    p.add_argument("--data-dir", default=None, help="where its schemas are kept (default: the state directory)")
    p.add_argument("--json", action="store_true", help="status as JSON")


def _registry(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pktstream.runtime.registry_local import LocalRegistry

    configure_logging("auto", "info")
    if not 0 < args.port < 65536:
        raise ConfigError([f"--port {args.port}: must be 1..65535"])
    reg = LocalRegistry(port=args.port, data_dir=Path(args.data_dir) if args.data_dir else None)
    if args.action == "up":
        print(reg.up())
    elif args.action == "down":
        print("stopped" if reg.down() else "not running")
    else:
        st = reg.status()
        if args.json:
            print(json.dumps(st, indent=2))
        else:
            print(f"{'running' if st['running'] else 'not running'}  {st['url']}  pid {st['pid'] or '-'}  "
                  f"answering {'yes' if st['answering'] else 'no'}  data {st['data_dir']}")
    return 0


VERBS = {
    "kafka": Verb("the local Kafka broker, or a local cluster of N (--brokers)", _kafka_arguments, _kafka),
    "registry": Verb("the local schema registry (Apicurio, Confluent-compatible API)", _registry_arguments,
                     _registry),
}


def verbs() -> dict[str, Verb]:
    out: dict[str, Verb] = {}
    for name in VERB_MODULES:
        out.update(importlib.import_module(name).VERBS)
    return out


def build_parser(table: dict[str, Verb] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pktstream", description="Every incoming packet, from XDP to Kafka as Avro.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, verb in (table or verbs()).items():
        verb.add_arguments(sub.add_parser(name, help=verb.help))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    table = verbs()
    args = build_parser(table).parse_args(argv)
    try:
        return table[args.command].run(args)
    except ConfigError as e:
        print(f"pktstream: {e}", file=sys.stderr)
        return 2
    except PktstreamError as e:
        print(f"pktstream: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
