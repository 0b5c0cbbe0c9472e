"""cluster.sql from single-node.sql: the same statements for a ClickHouse cluster.

Each stored table becomes a ReplicatedMergeTree table ``<name>_local`` (on every node, ON CLUSTER)
with a Distributed table ``<name>`` over them; the materialized views write to and read from the
local tables; the Kafka queues stay as they are (one consumer group per topic across the nodes).
Edit single-node.sql, then run ``python3 deploy/clickhouse/make_cluster.py`` (a test checks that
cluster.sql is what this writes).
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
ON = "ON CLUSTER '${CLUSTER}'"
HEADER = """\
-- pktstream into a ClickHouse cluster: the tables of single-node.sql (docs/clickhouse.md), each one
-- a ReplicatedMergeTree table `<name>_local` on every node and a Distributed table `<name>` over them
-- for queries. Every node runs the Kafka engine tables in one consumer group per topic, so the
-- topics' partitions are shared out among the nodes: each node writes what it reads into its own
-- shard's local tables, and the replicas of a shard copy it. Keep a topic's partitions at least at
-- the number of nodes. Needs ClickHouse Keeper (or ZooKeeper), the macros {shard} and {replica}
-- in each server's configuration, and the cluster defined in remote_servers.
-- Placeholders as in single-node.sql, plus CLUSTER (the cluster's name in remote_servers):
--   KAFKA_BROKERS=... PACKETS_TOPIC=... USAGE_TOPIC=... ALERTS_TOPIC=... CONNECTIONS_TOPIC=... DNS_TOPIC=... \\
--   HTTP_TOPIC=... \\
--   CONSUMER_GROUP=... CLUSTER=pktstream \\
--   envsubst < cluster.sql | clickhouse-client --multiquery
-- Rollups and the Replacing tables merge within a shard only: query rollups with sum() and GROUP BY,
-- usage and alerts through the Distributed tables with FINAL (the rows of one key land on one
-- shard as long as one topic partition feeds one node at a time).
-- Generated from single-node.sql by make_cluster.py: edit that file, then run this script.
"""


def cluster_sql(single: str) -> str:
    body = single[single.index("CREATE DATABASE"):]
    statements = [st.rstrip() for st in body.split(";\n") if st.strip()]
    stored = [m.group(1) for st in statements
              for m in [re.search(r"CREATE TABLE pktstream\.(\w+)\n(?:.|\n)*ENGINE = \w*MergeTree", st)] if m]
    out = []
    for st in statements:
        m = re.search(r"CREATE (TABLE|DATABASE IF NOT EXISTS|MATERIALIZED VIEW) (pktstream(?:\.\w+)?)", st)
        if m is None:
            raise ValueError(f"not a CREATE statement: {st[:80]!r}")
        kind, name = m.group(1), m.group(2)
        short = name.split(".")[-1]
        if kind == "TABLE" and short in stored:
            st = st.replace(f"CREATE TABLE {name}\n", f"CREATE TABLE {name}_local {ON}\n")

            def replicated(e: re.Match[str], short: str = short) -> str:
                extra = e.group(2)[1:-1] if e.group(2) else ""
                args = f"'/clickhouse/tables/{{shard}}/pktstream/{short}_local', '{{replica}}'"
                return f"ENGINE = Replicated{e.group(1)}({args}{', ' + extra if extra else ''})"

            st = re.sub(r"ENGINE = (\w*MergeTree)(\([^)]*\))?", replicated, st)
            st += (f";\n\nCREATE TABLE {name} {ON} AS {name}_local\n"
                   f"ENGINE = Distributed('${{CLUSTER}}', pktstream, {short}_local, rand())")
        elif kind == "MATERIALIZED VIEW":
            st = st.replace(f"CREATE MATERIALIZED VIEW {name} TO ", f"CREATE MATERIALIZED VIEW {name} {ON} TO ")
            for t in stored:
                st = re.sub(rf"(TO|FROM) pktstream\.{t}( |\n|$)", rf"\1 pktstream.{t}_local\2", st)
        else:
            st = st.replace(name, f"{name} {ON}", 1)
        out.append(st + ";")
    return HEADER + "\n" + "\n\n".join(out) + "\n"


if __name__ == "__main__":
    text = cluster_sql((HERE / "single-node.sql").read_text())
    (HERE / "cluster.sql").write_text(text)
