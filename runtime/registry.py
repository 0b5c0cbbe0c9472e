"""A schema registry (Confluent's REST API: Confluent Schema Registry, Apicurio's ccompat API,
Redpanda, Karapace, ...) as pktstream's commands use it: through confluent-kafka's own
``SchemaRegistryClient`` (URL, basic or bearer auth, TLS: its settings, not ours), with the errors
every command reports in words.

Settings, later ones winning: a properties file (``--schema-registry-config``, else the one
``PKTSTREAM_SCHEMA_REGISTRY_CONFIG`` names), ``PKTSTREAM_SCHEMA_REGISTRY__*`` variables
(``__`` for ``.``: ``PKTSTREAM_SCHEMA_REGISTRY__BASIC__AUTH__USER__INFO``), then the URL flag. The
names are the client's: ``url``, ``basic.auth.user.info`` (USER:PASSWORD),
``bearer.auth.credentials.source`` and the ``bearer.auth.*`` it needs, ``ssl.ca.location``,
``ssl.certificate.location``, ``ssl.key.location``, ``timeout`` and so on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import structlog

from pktstream.runtime.errors import ConfigError, PktstreamError
from pktstream.runtime.kafka import env_properties, read_properties

log = structlog.get_logger("pktstream.registry")

REGISTRY_ENV_PREFIX = "PKTSTREAM_SCHEMA_REGISTRY__"
REGISTRY_CONFIG_ENV = "PKTSTREAM_SCHEMA_REGISTRY_CONFIG"
REGISTRY_URL_ENV = "PKTSTREAM_SCHEMA_REGISTRY_URL"
DEFAULT_PORT = 8081  # the local registry's (pktstream registry up)
CCOMPAT = "/apis/ccompat/v7"  # where Apicurio serves Confluent's API
COMPATIBILITY = ("BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE",
                 "NONE")


def registry_properties(url: str | None, file: str | None = None,
                        environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The client's settings every way they can be given (see the module's text); the local
    registry's URL when none is named. Every problem at once."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    out: dict[str, str] = {}
    path = file or env.get(REGISTRY_CONFIG_ENV)
    if path:
        out.update(read_properties(path, problems))
    out.update(env_properties(env, REGISTRY_ENV_PREFIX))
    url = url or env.get(REGISTRY_URL_ENV)
    if url:
        out["url"] = url
    out.setdefault("url", f"http://127.0.0.1:{DEFAULT_PORT}{CCOMPAT}")
    for u in out["url"].split(","):
        if not u.strip().startswith(("http://", "https://")):
            problems.append(f"schema registry URL {u.strip()[:100]!r}: expected http:// or https://")
    if problems:
        raise ConfigError(problems)
    return out


class RegistryFailure(PktstreamError):
    """The registry could not be reached (``status`` None), failed, or refused us (its HTTP status)."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


DEFAULT_TIMEOUT_S = 30.0  # a request's timeout unless one is set (the client's own default is none)
NUMBERS: dict[str, Any] = {"timeout": float, "max.retries": int, "retries.wait.ms": int, "retries.max.wait.ms": int,
                           "cache.capacity": int, "cache.latest.ttl.sec": float}


def _words(e: Exception) -> str:
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    if isinstance(e, SchemaRegistryError):
        if e.http_status_code == 404 and e.error_code not in (40401, 40402, 40403, 40408):
            return ("HTTP 404 without a registry's answer: is the URL the registry's Confluent-compatible API? "
                    f"(Apicurio's is {CCOMPAT})")
        return f"HTTP {e.http_status_code}, error {e.error_code}: {e.error_message}"
    return f"{type(e).__name__}: {e}"[:500]


class Registry:
    """One registry: schemas registered under their subjects (ids cached), and schemas looked up by
    the id a message names (cached by the client)."""

    def __init__(self, conf: Mapping[str, Any]) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.url = conf["url"]
        settings: dict[str, Any] = {"timeout": DEFAULT_TIMEOUT_S, **conf}
        problems = []
        for name, kind in NUMBERS.items():  # a properties file gives text; the client wants numbers
            value = settings.get(name)
            if isinstance(value, str):
                try:
                    settings[name] = kind(value)
                except ValueError:
                    problems.append(f"schema registry setting {name}={value[:40]!r}: not a number")
        for name in ("max.retries", "retries.wait.ms", "retries.max.wait.ms", "cache.capacity"):
            if isinstance(settings.get(name), int) and settings[name] < 0:
                problems.append(f"schema registry setting {name}={settings[name]}: not a count (0 or more)")
        t = settings.get("timeout")
        if isinstance(t, (int, float)) and not (t > 0 and math.isfinite(t)):
            problems.append(f"schema registry setting timeout={t}: not a number of seconds above 0")
        if problems:
            raise ConfigError(problems)
        try:
            self.client = SchemaRegistryClient(settings)
        except (ValueError, TypeError) as e:  # the client checks its settings here
            raise ConfigError([f"schema registry settings: {e}"]) from None
        self.ids: dict[tuple[str, str], int] = {}

    def register(self, subject: str, schema: str, schema_type: str, compatibility: str | None = None) -> int:
        """The schema registered under ``subject``, its id; the registry checks it against the subject's
        earlier versions by the compatibility level in force (see ``level``). PktstreamError, in words,
        when the registry refuses it or cannot be reached."""
        got = self.ids.get((subject, schema))
        if got is not None:
            return got
        from confluent_kafka.schema_registry import Schema
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        level: str | None = None
        try:
            level = self.level(subject, compatibility)
            sid = int(self.client.register_schema(subject, Schema(schema, schema_type)))
        except SchemaRegistryError as e:
            if e.http_status_code == 409:
                raise PktstreamError(
                    f"the schema registry at {self.url} refused the {schema_type} schema of subject {subject!r}: "
                    f"it is not compatible with the subject's earlier versions ({level or 'its level'}): "
                    f"{e.error_message}; nothing was published") from None
            raise PktstreamError(f"the schema registry at {self.url} did not register subject {subject!r}: "
                                 f"{_words(e)}") from None
        except PktstreamError:
            raise
        except Exception as e:  # the HTTP client's own errors: refused connections, TLS, timeouts
            raise PktstreamError(f"the schema registry at {self.url} cannot be reached: {_words(e)} (start one "
                                 "with pktstream registry up, or name yours with --schema-registry)") from None
        self.ids[(subject, schema)] = sid
        log.info("schema_registered", subject=subject, schema_type=schema_type, id=sid, compatibility=level)
        return sid

    def level(self, subject: str, wanted: str | None = None) -> str | None:
        """The compatibility level a new version of ``subject`` is checked by, set first where needed.
        ``wanted`` (--schema-compatibility): set on the subject unless it has that level. None: the
        subject's own level, else the registry's global one (an administrator's policy) are left as
        they are, unless neither checks anything (none set, or NONE: Apicurio's default, and how it
        reports a subject without a rule); then BACKWARD is set on the subject. A registry that does not
        let us set it (401, 403) is told in a warning and the level in force stays."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        def get(name: str | None) -> str | None:
            try:
                return str(self.client.get_compatibility(name)) if name else str(self.client.get_compatibility())
            except SchemaRegistryError as e:
                if e.http_status_code == 404:
                    return None
                if name is None and e.http_status_code in (401, 403):  # the global level is not ours to read
                    log.warning("schema_compatibility_unknown", error=_words(e))
                    return None
                raise

        own = get(subject)
        glob = None
        if wanted is None:
            if own not in (None, "NONE"):
                return own
            glob = get(None)
            if glob not in (None, "NONE"):  # (Apicurio says NONE for a subject without a rule: its global rule holds)
                return glob
            wanted = "BACKWARD"
        if own == wanted:
            return own
        try:
            self.client.set_compatibility(subject, wanted)
        except SchemaRegistryError as e:
            if e.http_status_code in (401, 403):
                log.warning("schema_compatibility_not_set", subject=subject, wanted=wanted, level=own or glob,
                            error=_words(e))
                return own or glob
            raise
        return wanted

    def schema(self, schema_id: int) -> tuple[str, str]:
        """(schema type, schema text) of an id; LookupError when the registry does not have it (or
        refuses the question: an id a message names is untrusted input), PktstreamError when it
        cannot be reached, fails (5xx) or refuses us (401, 403)."""
        if not 0 <= schema_id < 1 << 31:  # registries number schemas with Java ints
            raise LookupError(f"schema id {schema_id} is out of a registry's range")
        try:
            s = self.client.get_schema(schema_id)
        except Exception as e:
            raise self._failure(e, f"schema id {schema_id}") from None
        return str(s.schema_type or "AVRO"), str(s.schema_str)

    def lookup(self, subject: str, schema: str, schema_type: str = "AVRO") -> int | None:
        """The id under which ``subject`` holds this schema, None when it does not (errors as ``schema``)."""
        from confluent_kafka.schema_registry import Schema

        try:
            sid = self.client.lookup_schema(subject, Schema(schema, schema_type)).schema_id
        except Exception as e:
            err = self._failure(e, f"subject {subject!r}")
            if isinstance(err, LookupError):
                return None
            raise err from None
        return int(sid) if sid is not None else None

    def _failure(self, e: Exception, what: str) -> Exception:
        """A failed question as LookupError (the registry answered that it has no such thing, or would not
        take the question: 4xx) or RegistryFailure (it could not be reached, failed, or refused us), with
        the HTTP status where there was one."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        if isinstance(e, SchemaRegistryError):
            status = e.http_status_code or 0
            if (status == 404 and e.error_code in (40401, 40402, 40403)) or \
                    status in (400, 405, 409, 413, 414, 415, 422):  # (a 404 of no registry: a wrong URL, below)
                return LookupError(f"{what}: {_words(e)}")
            return RegistryFailure(f"the schema registry at {self.url}: {_words(e)}", status)
        return RegistryFailure(f"the schema registry at {self.url} cannot be reached: {_words(e)}", None)

    def close(self) -> None:
        close: Any = getattr(self.client, "__exit__", None)
        if close is not None:
            close(None, None, None)
