"""Kafka client helpers both sides use: client configuration, reachability, topic creation."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from pktstream.runtime.errors import ConfigError, KafkaUnavailableError, PktstreamError
from pktstream.runtime.log import librdkafka_logger

log = structlog.get_logger("pktstream.kafka")

T = TypeVar("T")

# errors that a cluster's failover causes and cures: a leader or coordinator moving, a broker gone
# for a while. librdkafka marks few of them retriable when a call of the application's fails.
_TRANSIENT = {
    KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._WAIT_COORD,
    KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError._UNKNOWN_PARTITION,  # metadata without the partition's leader for a moment
    KafkaError._DESTROY_BROKER,  # a request in flight to a broker that just left the metadata
    # librdkafka's other states of a cluster in motion: a broker's address or id changing, metadata
    # being refreshed, a request to be sent again, too few in-sync replicas for a moment
    KafkaError._NODE_UPDATE, KafkaError._UNKNOWN_BROKER, KafkaError._WAIT_CACHE, KafkaError._RETRY,
    KafkaError._TIMED_OUT_QUEUE, KafkaError._OUTDATED, KafkaError._ISR_INSUFF, KafkaError._RESOLVE,
}


def transient(err: object) -> bool:
    """Does this error pass once the cluster has failed over (worth trying the call again)?"""
    return isinstance(err, KafkaError) and not err.fatal() and (err.retriable() or err.code() in _TRANSIENT)


def retriable(err: object) -> bool:
    """What librdkafka's transactional calls say may be called again (a coordinator moving)."""
    return isinstance(err, KafkaError) and err.retriable()


def retrying(call: Callable[[], T], what: str, timeout_s: float = 120.0,
             when: Callable[[object], bool] = transient) -> T:
    """``call()``, tried again while it fails with a transient error (a broker of the cluster died and
    its partitions' leaders or a coordinator are moving), for up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        try:
            return call()
        except KafkaException as e:
            err = e.args[0] if e.args else None
            if not when(err) or time.monotonic() + delay > deadline:
                raise
            log.warning("kafka_call_retried", call=what, error=str(err))
            time.sleep(delay)
            delay = min(2 * delay, 2.0)


def client_config(bootstrap: str | None, extra: Mapping[str, str], default: str | None = None) -> dict[str, Any]:
    """librdkafka configuration common to admin, producer and consumers (SASL/TLS pass through).
    The servers: ``bootstrap`` (a --bootstrap-servers flag, which wins), else a
    ``bootstrap.servers`` among the properties, else ``default`` (the local broker)."""
    conf: dict[str, Any] = {"logger": librdkafka_logger()}
    conf.update(extra)
    if bootstrap:
        conf["bootstrap.servers"] = bootstrap
    elif not conf.get("bootstrap.servers"):
        conf["bootstrap.servers"] = default or ""
    return conf


def check_reachable(conf: Mapping[str, Any], timeout_s: float = 10.0) -> None:
    errors: list[str] = []

    def on_error(err: KafkaError) -> None:
        # the words, not KafkaError{code=...}; the timing suffix varies between retries of one cause
        errors.append(re.sub(r"\s*\(after \d+ms in state \w+\)", "", err.str()))

    # librdkafka's own log lines (one per refused connection attempt) stay out of the way: the
    # probe's errors come through error_cb and are said once, in the message below
    admin = AdminClient({**conf, "error_cb": on_error, "log_level": 0})  # type: ignore[dict-item]
    try:
        md = admin.list_topics(timeout=timeout_s)
    except KafkaException as e:
        admin.poll(1.0)  # serve error_cb: it says why (authentication, TLS, resolution, refused)
        first = e.args[0] if e.args else None
        detail = "; ".join(dict.fromkeys(errors)) or (first.str() if isinstance(first, KafkaError) else str(e))
        raise KafkaUnavailableError(
            f"cannot reach Kafka at {conf.get('bootstrap.servers')} within {timeout_s:.0f}s: {detail}"
        ) from None
    if not md.brokers:
        raise KafkaUnavailableError(f"Kafka at {conf.get('bootstrap.servers')} reports no brokers")


def ensure_topic(
    conf: Mapping[str, Any],
    topic: str,
    partitions: int,
    replication_factor: int = -1,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> bool:
    """Create the topic unless it exists; returns True when it was created."""
    admin = AdminClient(dict(conf))
    md = admin.list_topics(timeout=timeout_s)
    if topic in md.topics and md.topics[topic].error is None:
        return False
    nt = NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor, config=dict(config or {}))
    fut = admin.create_topics([nt], operation_timeout=timeout_s)[topic]
    try:
        fut.result(timeout=timeout_s)
    except KafkaException as e:
        if e.args and e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise KafkaUnavailableError(f"creating topic {topic!r} failed: {e}") from None
    log.info("topic_created", topic=topic, partitions=partitions, config=dict(config or {}))
    return True


BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1048588  # Kafka's message.max.bytes when no one sets it


def max_message_bytes(conf: Mapping[str, Any], topic: str, timeout_s: float = 30.0) -> int:
    """The largest message (record batch) the topic accepts: its effective ``max.message.bytes``
    (the topic's own setting, else the broker's ``message.max.bytes``); Kafka's default when the
    configuration cannot be read (a principal without DescribeConfigs, say)."""
    from confluent_kafka.admin._config import ConfigResource
    from confluent_kafka.admin._resource import ResourceType

    admin = AdminClient(dict(conf))
    res = ConfigResource(ResourceType.TOPIC, topic)
    try:
        entries = admin.describe_configs([res], request_timeout=timeout_s)[res].result(timeout=timeout_s)
        return int(entries["max.message.bytes"].value)
    except (KafkaException, KeyError, ValueError, TypeError) as e:
        log.warning("topic_config_unreadable", topic=topic, error=str(e),
                    assumed=BROKER_DEFAULT_MAX_MESSAGE_BYTES)
        return BROKER_DEFAULT_MAX_MESSAGE_BYTES


KAFKA_ENV_PREFIX = "PKTSTREAM_KAFKA__"  # PKTSTREAM_KAFKA__SASL__PASSWORD is sasl.password
KAFKA_CONFIG_ENV = "PKTSTREAM_KAFKA_CONFIG"  # a properties file
_SECRET_PROPERTY = re.compile(r"password|secret|jaas|token|credential|private|oauthbearer\.config|\.pem$|\.key$",
                              re.IGNORECASE)


def secret_property(name: str) -> bool:
    """Does this librdkafka property hold a secret (its value never logged)?"""
    return bool(_SECRET_PROPERTY.search(name))


def masked(conf: Mapping[str, Any]) -> dict[str, Any]:
    """Kafka properties as they may be logged: secrets replaced by ***, callables left out."""
    return {k: ("***" if secret_property(k) else v) for k, v in conf.items() if not callable(v)}


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    """java.util.Properties escapes: ``\\t \\n \\r \\f``, ``\\uXXXX``, any other ``\\c`` is c."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            n = text[i + 1]
            if n == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2:i + 6]):
                out.append(chr(int(text[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, logical line): a line ending in an odd number of backslashes continues
    on the next, whose leading white space is dropped (java.util.Properties.load)."""
    out: list[tuple[int, str]] = []
    cur: list[str] = []
    start = 0
    # lines end at \r, \n or \r\n only (str.splitlines would also cut at \f, \v, \x85 ..., which
    # may sit inside a password)
    for n, raw in enumerate(re.split(r"\r\n|\r|\n", text), 1):
        line = raw.lstrip(" \t\f") if cur else raw
        if not cur:
            start = n
            stripped = line.lstrip(" \t\f")
            if not stripped or stripped[0] in "#!":
                continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            cur.append(line[:-1])
            continue
        cur.append(line)
        out.append((start, "".join(cur)))
        cur = []
    if cur:
        out.append((start, "".join(cur)))
    return out


def read_properties(path: str, problems: list[str]) -> dict[str, str]:
    """A Kafka properties file in the syntax of Kafka's own tools (java.util.Properties): ``name=value``
    or ``name: value`` per line (a name and a value apart only by spaces, which Java also takes,
    is refused: it is a typo more often than not), ``#`` and ``!`` comments, a trailing backslash
    continuing a line, backslash escapes. Read as UTF-8 (a byte order mark ignored), where Java's
    tools read ISO-8859-1: the same for ASCII, which is what such files hold. The value is kept to
    its end, trailing spaces included (a password may end in one). A line without a name is added
    to problems with its number, never its text (it may hold a secret)."""
    try:
        text = open(path, encoding="utf-8-sig").read()  # noqa: SIM115 (read whole, closed at once)
    except OSError as e:
        problems.append(f"Kafka properties file {path}: {e.strerror}")
        return {}
    except UnicodeDecodeError:
        problems.append(f"Kafka properties file {path}: not UTF-8 text")
        return {}
    out: dict[str, str] = {}
    for n, line in _logical_lines(text):
        line = line.lstrip(" \t\f")
        # the name ends at the first unescaped =, : or white space; separators around it are skipped
        m = re.match(r"((?:\\.|[^=:\s\\])+)[ \t\f]*[=:][ \t\f]*(.*)$", line, re.S)
        if m is None or not m.group(1):
            problems.append(f"Kafka properties file {path}, line {n}: expected name=value")
            continue
        out[_unescape(m.group(1))] = _unescape(m.group(2))
    return out


def env_properties(environ: Mapping[str, str], prefix: str = KAFKA_ENV_PREFIX) -> dict[str, str]:
    """``PKTSTREAM_KAFKA__<NAME>`` variables (or another ``prefix``'s) as properties (``__`` stands for
    ``.``)."""
    return {k[len(prefix):].lower().replace("__", "."): v for k, v in environ.items()
            if k.startswith(prefix) and len(k) > len(prefix)}


def kafka_properties(flags: Sequence[str] | None, file: str | None = None,
                     environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The librdkafka properties a command runs with, every way they can be given, later ones
    winning: a properties file (``file``, else the one ``PKTSTREAM_KAFKA_CONFIG`` names), then
    ``PKTSTREAM_KAFKA__*`` variables, then ``-X`` flags. Secrets belong in the first two: a
    command line is readable by every user of the host. Every problem is listed at once."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    out: dict[str, str] = {}
    path = file or env.get(KAFKA_CONFIG_ENV)
    if path:
        out.update(read_properties(path, problems))
    out.update(env_properties(env))
    try:
        out.update(parse_props(flags))
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ConfigError(problems)
    return out


def parse_props(items: Sequence[str] | None) -> dict[str, str]:
    """``-X property=value`` flags as a librdkafka dict; every malformed one listed."""
    out: dict[str, str] = {}
    problems = []
    for it in items or []:
        if "=" not in it:
            name = it.split(":", 1)[0].split(" ", 1)[0][:60]  # never the rest: it may be a secret
            problems.append(f"-X {name!r}...: expected property=value")
            continue
        k, v = it.split("=", 1)
        out[k.strip()] = v
    if problems:
        raise ConfigError(problems)
    return out


def require_topic(conf: Mapping[str, Any], topic: str, what: str = "packet topic", timeout_s: float = 10.0) -> int:
    """The topic's partition count; the words every command uses when the topic is missing."""
    probe = AdminClient(dict(conf))
    md = probe.list_topics(topic, timeout=timeout_s)
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        raise PktstreamError(f"{what} {topic!r} does not exist on the broker; "
                             "start a producer first or name the topic with --topic")
    return len(t.partitions)
