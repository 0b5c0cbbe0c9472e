"""Reading what is written in the schema-registry wire format (docs/registry.md): an output topic's
records, and pktstream relay's copy of the packet topic (one record per message), beside
pktstream's own forms.

A message in the wire format names its writer schema by an id; the id is looked up in the
registry (once, cached) and must name one of our schemas of the kind expected: usage records now
or in an earlier version (schemas/history), the relay's packet record exactly. A message whose id
names no such schema is set aside like any other message that does not read. The registry is
asked only once such a message is met, and for at most MAX_LOOKUPS_PER_S new ids a second (ids no
one registered, one after another, are a hostile writer's: they must not stall the reader).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fastavro
import numpy as np
import numpy.typing as npt
import structlog

from pktstream.runtime.errors import PktstreamError
from pktstream.runtime.registry import RegistryFailure
from pktstream.schemas import wire
from pktstream.schemas.columns import MAX_SCHEMA_CHARS, Batch, read_relayed, relayed_origins
from pktstream.schemas.decode import _is_ours

log = structlog.get_logger("pktstream.wirein")

MAX_WRITER_SCHEMAS = 1024  # ids that read as nothing, remembered (ours are all kept)
MAX_LOOKUPS_PER_S = 20  # new schema ids looked up in the registry per second at most
MAX_LOOKUPS_PER_CALL = 4  # ... and per run of messages read at once (a slow registry's answers add up)
UNREACHABLE_RETRY_S = 60.0  # how long an unnamed registry that could not be reached is left alone
UNKNOWN_TTL_S = 300.0  # how long an id that read as nothing is not asked again (a registry may lag)
SUBJECT_RETRY_S = 10.0  # how often the relayed schema's subject is asked while it does not hold it
READER_TIMEOUT_S = 5.0  # a registry request's timeout for readers (unless the settings give one)


def _known(text: str, kind: str) -> bool:
    """Is a registry's schema text one of ours of this kind (usage: now or earlier; relayed: the relay's
    packet record)?"""
    if kind == "relayed":
        from pktstream.consumers.relay.relay import is_relayed

        return is_relayed(text)
    return _is_ours(text, kind)


@dataclass
class Origin:
    """The records of relayed messages from one capture point."""

    host: str
    interface: str
    batch: Batch
    messages: list[int]  # the indices of the messages they came from
    row_message: npt.NDArray[np.int64]  # each row's message


class WireReader:
    """Values in either form: pktstream's own (an Avro container, a JSON document) or the
    schema-registry wire format. A JSON document after the five bytes is read as it is (its schema
    id is not looked up). An Avro record's writer schema is looked up by its id in the registry
    (``registry_conf()``). A registry that cannot be reached stops the reader (PktstreamError) when
    it was named (``named``); else (the local default) its records are set aside, with a warning."""

    def __init__(self, registry_conf: Callable[[], Mapping[str, str]] | None = None, named: bool = False) -> None:
        self.registry_conf, self.named = registry_conf, named
        self._registry: Any = None
        self._writers: dict[tuple[int, str], Any] = {}  # (id, kind) -> parsed Avro schema: ours, never forgotten
        self._unknown: dict[tuple[int, str], float] = {}  # ids that read as nothing -> until when (monotonic)
        self._subjects: dict[str, float] = {}  # topics whose subject was asked for the relayed id -> when to ask again
        self.unreachable_until = 0.0  # (monotonic) an unnamed registry that could not be reached is not asked again
        self._lookups: deque[float] = deque()  # when the latest lookups were made (monotonic)
        self.miss = ""  # why the last id looked up reads as nothing
        self._call_lookups = 0  # ids looked up in this call of relayed()
        self.set_aside = 0

    @property
    def unreachable(self) -> bool:
        return time.monotonic() < self.unreachable_until

    def json_bytes(self, value: bytes) -> bytes:
        """The JSON document of a message: after the five bytes of the wire format, or the whole."""
        return bytes(wire.unframe(value)[1]) if wire.framed(value) else value

    def avro_records(self, value: bytes, kind: str, reader_schema: Any) -> list[Any]:
        """The records of a message: one datum in the wire format, or an Avro container's."""
        if not wire.framed(value):
            return list(fastavro.reader(io.BytesIO(value), reader_schema))
        sid, body = wire.unframe(value)
        writer = self._writer(sid, kind)
        if writer is None:
            self.set_aside += 1
            raise ValueError(f"schema id {sid} names no {kind} schema of ours")
        return [fastavro.schemaless_reader(io.BytesIO(body), writer, reader_schema)]

    def relayed(self, values: Sequence[bytes], topic: str | None = None) -> tuple[list[Origin], dict[int, str], int]:
        """Messages of pktstream relay's topic (each in the wire format: wire.framed), decoded at once
        (schemas/columns.read_relayed): a batch per capture point (host, interface) with the messages
        its records came from (and each row's message), the messages that do not read (their index ->
        why) and how many records the batches hold. ``topic``: the topic they were read from, whose
        subject (TOPIC-value, where the relay registers) is asked once for the relayed schema's id, so
        that ids a hostile writer makes up never stand between the reader and the real one."""
        self._call_lookups = 0
        if topic is not None and time.monotonic() >= self._subjects.get(topic, 0.0) and not self.unreachable:
            self._subject_id(topic)
        sids = [int.from_bytes(v[1:wire.HEAD_BYTES], "big") for v in values]
        why: dict[int, str] = {}  # each id that reads as nothing, and why (asked once per run)
        for sid in set(sids):
            if self._writer(sid, "relayed") is None:
                why[sid] = f"schema id {sid}: {self.miss}"
        bad = {i: why[sid] for i, sid in enumerate(sids) if sid in why} if why else {}
        ok = [i for i, sid in enumerate(sids) if sid not in why] if why else list(range(len(values)))
        self.set_aside += len(bad)
        if not ok:
            return [], bad, 0
        r = read_relayed(values if not why else [values[i] for i in ok], skip=wire.HEAD_BYTES)
        for j, reason in r.bad.items():
            bad[ok[j]] = reason
        self.set_aside += len(r.bad)
        out = []
        at = np.array(ok, dtype=np.int64)[r.index]  # each row's message
        for host, iface, rows in relayed_origins(r.batch):
            if rows is None:
                out.append(Origin(host, iface, r.batch, sorted(set(at.tolist())), at))
            else:
                cols = {k: v[rows] for k, v in r.batch.columns.items()}
                out.append(Origin(host, iface, Batch({}, len(rows), cols), sorted(set(at[rows].tolist())), at[rows]))
        return out, bad, r.batch.n

    def _connect(self) -> Any:
        if self._registry is None:
            from pktstream.runtime.registry import Registry, registry_properties

            conf: dict[str, Any] = dict(self.registry_conf() if self.registry_conf else registry_properties(None))
            # a reader asks in its loop: a short wait and one retry (the runner retries the run itself)
            conf.setdefault("timeout", READER_TIMEOUT_S)
            conf.setdefault("max.retries", 0)
            self._registry = Registry(conf)
        return self._registry

    def _unreachable(self, e: PktstreamError) -> None:
        """A registry that could not be reached (or failed, or refused us): a named one stops the
        reader (PktstreamError); the unnamed default is left alone for UNREACHABLE_RETRY_S."""
        if self.named:
            raise e
        log.warning("registry_unreachable", error=str(e)[:300], retry_s=UNREACHABLE_RETRY_S,
                    hint="records in the registry's wire format are set aside; name it with --schema-registry")
        self.unreachable_until = time.monotonic() + UNREACHABLE_RETRY_S
        self.miss = "the schema registry could not be reached (name one with --schema-registry)"

    def _subject_id(self, topic: str) -> None:
        """The relayed schema's id, asked of the topic's subject (not charged to the lookups' budget);
        asked again after SUBJECT_RETRY_S until found (the relay may register it later)."""
        from pktstream.consumers.relay.relay import relayed_schema

        schema = relayed_schema()
        self._subjects[topic] = time.monotonic() + SUBJECT_RETRY_S
        try:
            sid = self._connect().lookup(f"{topic}-value", json.dumps(schema))
        except RegistryFailure as e:
            if e.status in (401, 403, 407):  # the one subject this reader needs: the credentials are wrong
                from pktstream.runtime.errors import ConfigError

                raise ConfigError([f"{e} (reading subject {topic}-value: check basic.auth.user.info or "
                                   "bearer.auth.*)"]) from None
            self._unreachable(e)
            return
        if sid is not None:
            self._writers[(sid, "relayed")] = fastavro.parse_schema(schema)
            self._unknown.pop((sid, "relayed"), None)
            self._subjects[topic] = float("inf")

    def _writer(self, sid: int, kind: str) -> Any:
        known = self._writers.get((sid, kind))
        if known is not None:
            return known
        self.miss = f"names no {kind} schema of ours"
        now = time.monotonic()
        if self._unknown.get((sid, kind), 0.0) > now:
            return None
        if not 0 <= sid < 1 << 31:  # registries number schemas with Java ints: no need to ask
            return None
        if self.unreachable:
            self.miss = "the schema registry could not be reached (name one with --schema-registry)"
            return None
        while self._lookups and now - self._lookups[0] > 1.0:
            self._lookups.popleft()
        if len(self._lookups) >= MAX_LOOKUPS_PER_S or self._call_lookups >= MAX_LOOKUPS_PER_CALL:
            # ids no one registered, one after another: a hostile writer must not stall the reader
            self.miss = "too many new schema ids at once, not looked up"
            return None
        self._lookups.append(now)
        self._call_lookups += 1
        parsed = None
        try:
            stype, text = self._connect().schema(sid)
            if stype == "AVRO" and len(text) <= MAX_SCHEMA_CHARS and _known(text, kind):
                parsed = fastavro.parse_schema(json.loads(text))
        except LookupError:
            pass
        except RegistryFailure as e:
            if e.status not in (401, 403):  # the registry is down or failing: not the id's fault
                self._unreachable(e)
                return None
            self.miss = f"the registry would not answer for it: {str(e)[:200]}"  # (another team's, say)
        except Exception as e:
            log.warning("registry_schema_unreadable", id=sid, error=f"{type(e).__name__}: {e}"[:200])
        if parsed is not None:
            self._writers[(sid, kind)] = parsed  # ours: a handful of ids, kept
            return parsed
        self._unknown.pop((sid, kind), None)
        if len(self._unknown) >= MAX_WRITER_SCHEMAS:
            self._unknown.pop(next(iter(self._unknown)))
        self._unknown[(sid, kind)] = time.monotonic() + UNKNOWN_TTL_S
        return None


def wire_reader(url: str | None, config_file: str | None) -> WireReader:
    """How messages in the registry's wire format are read: the registry named (a URL, a settings
    file or their variables; one that cannot be reached stops the reader: PktstreamError), else the
    local one (pktstream registry up; when it cannot be reached, such messages are set aside)."""
    from pktstream.runtime.registry import REGISTRY_CONFIG_ENV, REGISTRY_URL_ENV, registry_properties

    named = bool(url or config_file or os.environ.get(REGISTRY_URL_ENV) or os.environ.get(REGISTRY_CONFIG_ENV))
    wr = WireReader(lambda: registry_properties(url, config_file), named)
    wr._connect()  # settings the client refuses are told now (ConfigError), not at the first such message
    return wr


