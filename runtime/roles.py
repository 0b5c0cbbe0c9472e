"""Least privilege on Kafka: the principals pktstream's parts run as and the exact ACLs each needs.

Four roles, each its own SCRAM user (or mTLS principal), so that one compromised node reaches only
what its role may:

- **producer** (one per node, or one for all nodes): writes the packet and stats topics (creating
  them when asked to), idempotently; reads nothing.
- **app** (one per consumer app, app id ``pktstream-usage`` or ``pktstream-alerts`` by default):
  reads the packet topic; owns the topics, consumer groups and transactional ids whose names start
  with its app id (``APP.repartition``, ``APP.state``, ``APP.dead-letters``, a replay's
  ``APP-...``, the group ``APP``, transactional ids ``APP-...``); writes its output topic.
- **reader** (``query``, ``export``, ``tail``, ``audit``): reads the topics it is given, with
  the tools' consumer groups (``pktstream-tail-...``, ``pktstream-query-...``,
  ``pktstream-audit-...``, not the apps'); writes nothing (``tail --dead-letter-topic`` needs a
  grant of its own).

``acls`` gives the bindings (confluent-kafka ``AclBinding``) that ``grant`` creates with an admin
client and ``kafka_acls_commands`` prints as Kafka's own ``kafka-acls.sh`` commands
(docs/deployment.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from pktstream.runtime.errors import ConfigError

ROLES = ("producer", "app", "reader")

_LIT, _PRE = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
_T, _G, _X, _C = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID, ResourceType.BROKER
Grant = tuple[ResourceType, str, ResourcePatternType, AclOperation]


def _grants(role: str, packets: str, stats: str, app: str, output: str, topics: Sequence[str]) -> list[Grant]:
    op_ = AclOperation
    if role == "producer":
        return [*[(_T, t, _LIT, op) for t in (packets, stats)
                  for op in (op_.WRITE, op_.DESCRIBE, op_.CREATE, op_.DESCRIBE_CONFIGS)],
                (_C, "kafka-cluster", _LIT, op_.IDEMPOTENT_WRITE)]
    if role == "app":
        if not app:
            raise ConfigError(["role app: name the app id (usage, alerts, ...)"])
        out = [(_T, packets, _LIT, op_.READ), (_T, packets, _LIT, op_.DESCRIBE),
               (_T, packets, _LIT, op_.DESCRIBE_CONFIGS),
               *[(_T, app, _PRE, op)
                 for op in (op_.READ, op_.WRITE, op_.CREATE, op_.DESCRIBE, op_.DESCRIBE_CONFIGS)],
               (_G, app, _PRE, op_.READ), (_G, app, _PRE, op_.DESCRIBE),
               (_G, "pktstream-md", _LIT, op_.READ),  # the metadata probe's consumer
               (_X, app, _PRE, op_.WRITE), (_X, app, _PRE, op_.DESCRIBE),
               (_C, "kafka-cluster", _LIT, op_.IDEMPOTENT_WRITE)]
        if output:
            out += [(_T, output, _LIT, op) for op in (op_.WRITE, op_.DESCRIBE, op_.CREATE, op_.DESCRIBE_CONFIGS)]
        return out
    if role == "reader":
        # the tools' own groups only (pktstream-tail-..., -query-..., -audit-...): not the apps'
        # groups, which a reader could otherwise join or commit to
        return [*[(_T, t, _LIT, op) for t in topics for op in (op_.READ, op_.DESCRIBE)],
                *[(_G, g, _PRE, op) for g in ("pktstream-tail-", "pktstream-query-", "pktstream-audit-")
                  for op in (op_.READ, op_.DESCRIBE)]]
    raise ConfigError([f"role {role!r}: one of {', '.join(ROLES)}"])


def acls(role: str, principal: str, *, packets: str = "pktstream.packets", stats: str = "pktstream.stats",
         app: str = "", output: str = "", topics: Sequence[str] = ()) -> list[AclBinding]:
    """The ALLOW bindings of a role for ``principal`` (``User:NAME``), from any host."""
    return [AclBinding(rt, name, pt, principal, "*", op, AclPermissionType.ALLOW)
            for rt, name, pt, op in _grants(role, packets, stats, app, output, topics or (packets, stats))]


def grant(conf: Mapping[str, Any], bindings: Sequence[AclBinding], timeout_s: float = 30.0) -> None:
    """Create the bindings (with an admin's client: a super user, or one allowed to alter ACLs)."""
    admin = AdminClient(dict(conf))
    for f in admin.create_acls(list(bindings), request_timeout=timeout_s).values():
        f.result(timeout=timeout_s)


def kafka_acls_commands(bindings: Sequence[AclBinding], bootstrap: str = "BROKER:9093",
                        admin_config: str = "admin.properties") -> list[str]:
    """The same bindings as commands of Kafka's own kafka-acls.sh, one per principal and resource
    (what docs/deployment.md shows)."""
    kinds = {_T: "--topic", _G: "--group", _X: "--transactional-id", _C: "--cluster"}
    names = {AclOperation.DESCRIBE_CONFIGS: "DescribeConfigs", AclOperation.IDEMPOTENT_WRITE: "IdempotentWrite"}
    grouped: dict[tuple[Any, ...], list[str]] = {}
    b: Any
    for b in bindings:
        key = (b.principal, b.restype, b.name, b.resource_pattern_type)
        grouped.setdefault(key, []).append(names.get(b.operation, b.operation.name.title()))
    out = []
    for (principal, restype, name, pattern), ops in grouped.items():
        target = kinds[restype] if restype == _C else f"{kinds[restype]} '{name}'"
        prefixed = " --resource-pattern-type prefixed" if pattern == _PRE else ""
        out.append(f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config {admin_config} --add "
                   f"--allow-principal {principal} {' '.join(f'--operation {o}' for o in ops)} {target}{prefixed}")
    return out
