"""The producer's configuration: one documented structure, validated at start.

Sources, later ones winning: defaults, a TOML file (``--config``), environment
variables ``PKTSTREAM_<FIELD>`` (upper case), command-line flags. librdkafka
properties (SASL, TLS, ...) pass through from the file's ``[kafka]`` table, a
properties file (``kafka_config``), ``PKTSTREAM_KAFKA__<PROP>`` variables (``__``
stands for ``.``, e.g. ``PKTSTREAM_KAFKA__SASL__PASSWORD``) and ``-X prop=value``
flags, in that order. Every invalid value is reported at once, secrets never
reach the logs, and Kubernetes service-link variables (``PKTSTREAM_..._SERVICE_HOST``)
are not taken for settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pktstream.runtime.errors import ConfigError
from pktstream.runtime.kafka import KAFKA_ENV_PREFIX, env_properties, masked, read_properties
from pktstream.schemas.container import CODECS

KAFKA_COMPRESSION = ("none", "gzip", "snappy", "lz4", "zstd")
XDP_MODES = ("auto", "native", "generic")
DIRECTIONS = ("both", "ingress", "egress")
EGRESS_HOOKS = ("auto", "tcx", "tc")
LOG_FORMATS = ("auto", "json", "console")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # what the redaction loop takes for a name


HOST_ID_APP = b"pktstream host id"  # the application id of machine-id(5)'s app-specific ids


def _machine_id() -> str | None:
    """The machine id (machine-id(5); D-Bus's copy where systemd's is missing), None without one."""
    for p in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            mid = Path(p).read_text().strip()
        except OSError:
            continue
        if mid:
            return mid
    return None


def default_host_id() -> str:
    """A stable host id: the host name and 12 hex digits of an id derived from the machine id the
    way machine-id(5) asks applications to (HMAC-SHA256 keyed by the machine id, as systemd's
    sd_id128_get_machine_app_specific), which reveals nothing of the machine id itself; the host
    name alone where there is no machine id."""
    mid = _machine_id()
    if mid is None:
        return socket.gethostname()
    return f"{socket.gethostname()}-{hmac.new(mid.encode(), HOST_ID_APP, hashlib.sha256).hexdigest()[:12]}"


def legacy_host_id() -> str | None:
    """The default host id of builds before 2026-12-06 (the machine id's first 12 digits), whose
    spool and run-state files an upgraded producer takes over; None without a machine id."""
    mid = _machine_id()
    return None if mid is None else f"{socket.gethostname()}-{mid[:12]}"


# the variables Kubernetes injects for every Service of the namespace (enableServiceLinks): a
# Service named pktstream-metrics gives PKTSTREAM_METRICS_SERVICE_HOST, PKTSTREAM_METRICS_PORT=tcp://...
_SERVICE_LINK = re.compile(r"PKTSTREAM_(?:[A-Z0-9_]+_)?(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?"
                           r"|PORT(?:_\d+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)?)")
_SERVICE_LINK_VALUE = re.compile(r"(?:tcp|udp|sctp)(?://\S*)?|\d{1,3}(?:\.\d{1,3}){3}|[0-9a-fA-F:]*:[0-9a-fA-F:]+|\d+")


def service_link_variables(env: Mapping[str, str]) -> list[str]:
    """PKTSTREAM_* variables that are Kubernetes service links, not settings: their name has the
    service-link form and their value is an address, a port or a tcp:// URL where the name is not a
    setting's, a tcp:// URL where it is (PKTSTREAM_METRICS_PORT=tcp://10.0.0.1:9464)."""
    out = []
    for k, v in env.items():
        if not _SERVICE_LINK.fullmatch(k):
            continue
        setting = k[len("PKTSTREAM_"):].lower() in _FIELDS
        if re.fullmatch(r"(?:tcp|udp|sctp)://\S*", v) or (not setting and _SERVICE_LINK_VALUE.fullmatch(v)):
            out.append(k)
    return sorted(out)


@dataclass
class ProducerConfig:
    interface: str = field(default="", metadata={"doc": "interface to capture on; default: the default route's"})
    xdp_mode: str = field(default="auto", metadata={"doc": "auto | native | generic"})
    direction: str = field(default="both", metadata={
        "doc": "both | ingress | egress: packets arriving (XDP), leaving (egress classifier), or both"})
    egress_hook: str = field(default="auto", metadata={
        "doc": "auto | tcx | tc: attach the egress classifier by a TCX link (kernel 6.6+) or a clsact filter; "
               "auto = TCX where the kernel has it"})
    payload_bytes: int = field(default=64, metadata={"doc": "L4 payload prefix per record, 0..256"})
    redact: bool = field(default=True, metadata={"doc": "redact credentials in payload prefixes before publishing"})
    redact_names: str = field(
        default="", metadata={"doc": "comma-separated names to redact besides the built-in ones (docs/operations.md): "
                                     "query parameters, form and multipart fields, JSON members"}
    )
    redact_http2_headers: bool = field(default=True, metadata={
        "doc": "clear HTTP/2 and gRPC header blocks (HPACK: names and values that per-packet rules cannot judge); "
               "false keeps them (only with redact)"})
    payload_ports: str = field(
        default="", metadata={"doc": "comma-separated ports whose packets keep payload; empty = all"}
    )
    payload_networks: str = field(
        default="", metadata={"doc": "comma-separated CIDRs whose packets keep payload; empty = all"}
    )
    ringbuf_bytes: int = field(default=16 << 20, metadata={"doc": "ring buffer size, power of two >= 64 KiB"})
    sample_rate: int = field(default=1, metadata={"doc": "capture 1 packet in N (1 = all); adaptive sampling floor"})
    adaptive_sampling: bool = field(
        default=True, metadata={"doc": "raise the sampling rate while the ring buffer overflows, lower it after"}
    )
    max_sample_rate: int = field(default=1024, metadata={"doc": "ceiling of adaptive sampling"})
    bootstrap_servers: str = field(
        default="", metadata={"doc": "Kafka bootstrap servers; empty = start the local broker"}
    )
    local_kafka_port: int = field(default=9092, metadata={"doc": "port of the local broker"})
    topic: str = field(default="pktstream.packets", metadata={"doc": "packet topic"})
    stats_topic: str = field(default="pktstream.stats", metadata={"doc": "loss-accounting topic"})
    stats_publish_s: float = field(default=10.0, metadata={"doc": "seconds between loss-accounting reports"})
    metrics_port: int = field(default=9464, metadata={"doc": "Prometheus /metrics and /healthz port; 0 = off"})
    metrics_address: str = field(default="0.0.0.0", metadata={
        "doc": "address the metrics endpoint binds (127.0.0.1 keeps it to the host; docs/operations.md)"})
    kafka_config: str = field(default="", metadata={
        "doc": "Kafka properties file (name=value lines), read before PKTSTREAM_KAFKA__* variables and -X; "
               "where secrets belong"})
    create_topic: bool = field(default=True, metadata={"doc": "create the topics if they are missing"})
    partitions: int = field(default=6, metadata={"doc": "partitions of a topic pktstream creates"})
    replication_factor: int = field(default=-1, metadata={"doc": "-1 = the broker's default"})
    retention_ms: int = field(default=7 * 24 * 3600 * 1000, metadata={"doc": "retention of created topics"})
    host_id: str = field(default="", metadata={"doc": "message key and host header; default: derived"})
    batch_records: int = field(default=20000, metadata={"doc": "records per Kafka message, at most"})
    batch_bytes: int = field(default=4 << 20, metadata={"doc": "encoded bytes per Kafka message, at most"})
    batch_age_ms: int = field(default=100, metadata={"doc": "oldest record waits at most this long"})
    batch_quiet_ms: int = field(default=2000, metadata={
        "doc": "a batch under 16 KiB at batch_age_ms waits for more up to this age (quiet hosts: fewer, longer "
               "messages); 0 = never longer than batch_age_ms"})
    codec: str = field(default="null", metadata={"doc": "Avro container codec: " + " | ".join(CODECS)})
    compression: str = field(default="zstd", metadata={"doc": "Kafka compression: " + " | ".join(KAFKA_COMPRESSION)})
    queue_max_kbytes: int = field(default=65536, metadata={"doc": "producer memory queue (KiB)"})
    pin_dir: str = field(
        default="/sys/fs/bpf/pktstream",
        metadata={"doc": "bpffs directory for the counters, so a killed run is accounted exactly; empty = off"},
    )
    spool_dir: str = field(
        default="", metadata={"doc": "on-disk spool for batches Kafka cannot take; default: state dir"}
    )
    spool_max_bytes: int = field(default=1 << 30, metadata={"doc": "spool size bound; 0 = no spool"})
    stats_interval_s: float = field(default=1.0, metadata={"doc": "seconds between figures lines"})
    log_format: str = field(default="auto", metadata={"doc": "auto | json | console"})
    log_level: str = field(default="info", metadata={"doc": "debug | info | warning | error"})
    kafka: dict[str, str] = field(default_factory=dict, metadata={"doc": "librdkafka properties"})

    def redacted(self) -> dict[str, Any]:
        """The configuration as logged: librdkafka secrets replaced by ***."""
        out = dataclasses.asdict(self)
        out["kafka"] = masked(self.kafka)
        return out


_FIELDS = {f.name: f for f in fields(ProducerConfig)}


def _coerce(name: str, raw: Any, problems: list[str]) -> Any:
    f = _FIELDS[name]
    typ = f.type
    try:
        if typ == "int":
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if typ == "float":
            return float(raw)
        if typ == "bool":
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ == "str":
            return str(raw)
    except (TypeError, ValueError):
        problems.append(f"{name}: {raw!r} is not a valid {typ}")
        return None
    return raw


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    kafka_overrides: Mapping[str, str] | None = None,
) -> ProducerConfig:
    """Merge defaults, file, environment and flags; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    problems: list[str] = []
    values: dict[str, Any] = {}
    kafka: dict[str, str] = {}
    links = set(service_link_variables(env))  # said by the caller once logging is set up

    config_file = config_file or env.get("PKTSTREAM_CONFIG") or None
    if config_file:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except OSError as e:
            raise ConfigError([f"config file {config_file}: {e.strerror}"]) from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError([f"config file {config_file}: {e}"]) from e
        for k, v in data.items():
            if k == "kafka" and isinstance(v, dict):
                kafka.update({str(a): str(b) for a, b in v.items()})
            elif k in _FIELDS and k != "kafka":
                values[k] = v
            else:
                problems.append(f"config file: unknown setting {k!r}")

    for k, v in env.items():
        if not k.startswith("PKTSTREAM_") or k in ("PKTSTREAM_CONFIG",) or k.startswith("PKTSTREAM_TEST"):
            continue
        if k.startswith(KAFKA_ENV_PREFIX) or k in links:
            continue
        name = k[len("PKTSTREAM_") :].lower()
        if name in _FIELDS and name != "kafka":
            values[name] = v
        elif name not in ("venv", "home", "cache_dir"):
            problems.append(f"environment: unknown variable {k}")

    for k, v in (flags or {}).items():
        if v is not None:
            values[k] = v
    if values.get("kafka_config"):  # under the variables and flags that name single properties
        kafka.update(read_properties(str(values["kafka_config"]), problems))
    kafka.update(env_properties(env))
    kafka.update(kafka_overrides or {})

    coerced = {k: _coerce(k, v, problems) for k, v in values.items()}
    cfg = ProducerConfig(**{k: v for k, v in coerced.items() if v is not None}, kafka=kafka)
    problems.extend(validate(cfg))
    if problems:
        raise ConfigError(problems)
    if not cfg.host_id:
        cfg.host_id = default_host_id()
    return cfg


def validate(cfg: ProducerConfig) -> list[str]:
    p: list[str] = []
    if cfg.xdp_mode not in XDP_MODES:
        p.append(f"xdp_mode: {cfg.xdp_mode!r} is not one of {', '.join(XDP_MODES)}")
    if cfg.direction not in DIRECTIONS:
        p.append(f"direction: {cfg.direction!r} is not one of {', '.join(DIRECTIONS)}")
    if cfg.egress_hook not in EGRESS_HOOKS:
        p.append(f"egress_hook: {cfg.egress_hook!r} is not one of {', '.join(EGRESS_HOOKS)}")
    if not 0 <= cfg.payload_bytes <= 256:
        p.append(f"payload_bytes: {cfg.payload_bytes} is outside 0..256")
    rb = cfg.ringbuf_bytes
    if rb < 65536 or rb & (rb - 1) or rb > 1 << 30:
        p.append(f"ringbuf_bytes: {rb} must be a power of two between 65536 and 1073741824")
    for name in filter(None, (x.strip() for x in cfg.redact_names.split(","))):
        if not _NAME_RE.match(name):
            p.append(f"redact_names: {name!r} is not a field name (letters, digits, _ - ., at most 64)")
    for port in filter(None, (x.strip() for x in cfg.payload_ports.split(","))):
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            p.append(f"payload_ports: {port!r} is not a port")
    for net in filter(None, (x.strip() for x in cfg.payload_networks.split(","))):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            p.append(f"payload_networks: {net!r} is not a network (CIDR)")
    if cfg.sample_rate < 1:
        p.append(f"sample_rate: {cfg.sample_rate} must be >= 1")
    if cfg.max_sample_rate < max(1, cfg.sample_rate):
        p.append(f"max_sample_rate: {cfg.max_sample_rate} must be >= sample_rate ({cfg.sample_rate})")
    if not 1 <= cfg.local_kafka_port <= 65534:
        p.append(f"local_kafka_port: {cfg.local_kafka_port} is not a port (1..65534)")
    if not _TOPIC_RE.match(cfg.topic) or cfg.topic in (".", ".."):
        p.append(f"topic: {cfg.topic!r} is not a valid Kafka topic name")
    if not _TOPIC_RE.match(cfg.stats_topic) or cfg.stats_topic == cfg.topic:
        p.append(f"stats_topic: {cfg.stats_topic!r} is not a valid Kafka topic name distinct from topic")
    if not 0.1 <= cfg.stats_publish_s <= 3600:
        p.append(f"stats_publish_s: {cfg.stats_publish_s} is outside 0.1..3600")
    if not 0 <= cfg.metrics_port <= 65535:
        p.append(f"metrics_port: {cfg.metrics_port} is not a port (0 = off)")
    if cfg.partitions < 1:
        p.append(f"partitions: {cfg.partitions} must be >= 1")
    if cfg.replication_factor == 0 or cfg.replication_factor < -1:
        p.append(f"replication_factor: {cfg.replication_factor} must be >= 1 or -1")
    if cfg.retention_ms < -1 or cfg.retention_ms == 0:
        p.append(f"retention_ms: {cfg.retention_ms} must be > 0 or -1 (forever)")
    if not 1 <= cfg.batch_records <= 1_000_000:
        p.append(f"batch_records: {cfg.batch_records} is outside 1..1000000")
    if not 1024 <= cfg.batch_bytes <= 64 << 20:
        p.append(f"batch_bytes: {cfg.batch_bytes} is outside 1024..67108864")
    if not 1 <= cfg.batch_age_ms <= 60000:
        p.append(f"batch_age_ms: {cfg.batch_age_ms} is outside 1..60000")
    if cfg.batch_quiet_ms and not cfg.batch_age_ms <= cfg.batch_quiet_ms <= 60000:
        p.append(f"batch_quiet_ms: {cfg.batch_quiet_ms} is outside batch_age_ms..60000 (or 0: off)")
    if cfg.codec not in CODECS:
        p.append(f"codec: {cfg.codec!r} is not one of {', '.join(CODECS)}")
    if cfg.compression not in KAFKA_COMPRESSION:
        p.append(f"compression: {cfg.compression!r} is not one of {', '.join(KAFKA_COMPRESSION)}")
    if cfg.spool_max_bytes < 0:
        p.append(f"spool_max_bytes: {cfg.spool_max_bytes} must be >= 0 (0 = no spool)")
    if cfg.queue_max_kbytes < 1024:
        p.append(f"queue_max_kbytes: {cfg.queue_max_kbytes} must be >= 1024")
    if not 0.05 <= cfg.stats_interval_s <= 3600:
        p.append(f"stats_interval_s: {cfg.stats_interval_s} is outside 0.05..3600")
    if cfg.log_format not in LOG_FORMATS:
        p.append(f"log_format: {cfg.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    if cfg.log_level not in ("debug", "info", "warning", "error"):
        p.append(f"log_level: {cfg.log_level!r} is not one of debug, info, warning, error")
    return p
