"""What a detector is: the contract between one module of ``detectors/`` and the engine around it.

A detector declares its name, rule text, defaults, severity, ATT&CK technique and the feature
columns it reads, and supplies three functions over whole batches:

- ``select``: which rows of a batch count, under which key and item (one ``Add`` per table
  insert); the processor adds them to the detector's window tables (a C hash group-by);
- ``fire``: which keys of a closed window cross the thresholds;
- ``describe``: the alert key and message of one firing key, from its evidence.

The processor knows no detector by name: it asks the registry (``detectors/__init__.py``) for
the enabled ones and calls these in registry order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.engine.features import Features, addr_hash, words_bytes
from pktstream.schemas.decode import addr_text as decode_addr_text
from pktstream.schemas.protocols import ACK, PROTO_ICMP, PROTO_ICMP6, PROTO_TCP, PROTO_UDP

if TYPE_CHECKING:
    from pktstream.consumers.alerts.tables import AlertsState
    from pktstream.consumers.catalog import Catalog

SEC = 1_000_000_000


@dataclass
class Setup:
    """What a detector may need besides its own settings, fixed for the life of the processor."""

    catalog: Catalog
    external_interfaces: list[str]
    detectors: dict[str, dict[str, Any]]  # every detector's settings, by name (enabled or not)


@dataclass
class Add:
    """Rows ``sel`` of a view counted under keys ``k`` (one per row) in the detector's window tables.
    ``item`` is what the window counts distinct values of; ``n`` the count added per row (default:
    the row's packets); ``sub`` a kind code; ``s`` an index into the state's strings; ``f`` the flow
    of each row (default: its 5-tuple's hash), the same at every capture point that sees it."""

    sel: npt.NDArray[np.intp]
    k: npt.NDArray[np.uint64]
    item: Any = 0
    n: Any = None
    sub: Any = 0
    s: Any = -1
    f: Any = None  # the flow each row belongs to (default: its own 5-tuple's hash, fh): how capture
    # points that counted the same flows are told apart from points that counted others


class View:
    """Feature rows with the columns the detectors share, extracted once: address hashes, ports,
    protocol, packets, bytes, time, capture point (an index into the state's strings) and its rank, and which
    keying a row belongs to (``dst_rows``: routed by destination; ``src_rows``: by source)."""

    __slots__ = ("_attempts", "b", "dst_port", "dst_rows", "egress_dst", "egress_src", "f", "fh", "flags_or", "hd",
                 "hs", "ip_dst", "n", "o", "protocol", "r", "rows", "src_port", "src_rows", "status", "syns", "t")

    def __init__(self, f: Features, omap: npt.NDArray[np.int64], dst_rows: npt.NDArray[np.bool_]) -> None:
        rows = f.rows
        self.f = f
        self.rows = rows
        self.hd = addr_hash(rows["dst_addr"])
        self.hs = addr_hash(rows["src_addr"])
        self.src_port = rows["src_port"].astype(np.int64)
        self.dst_port = rows["dst_port"].astype(np.int64)
        self.protocol = rows["protocol"].astype(np.int64)
        self.n = rows["packets"].astype(np.int64)
        self.b = rows["nbytes"].astype(np.int64)
        self.t = rows["ts_ns"].astype(np.int64)
        self.o = omap[rows["origin"]]
        # how far along its path each packet was captured: of the points that counted the same flows
        # as much, the nearest the destination gives its evidence (processor._nearest)
        self.r = path_rank(rows["ttl"], rows["direction"])
        self.syns = rows["syns"].astype(np.int64)
        self.flags_or = rows["flags_or"]
        self.fh = np.ascontiguousarray(rows["fh"])  # features.flow_hash of the 5-tuple, from stage one
        # the host's own packets (egress records, direction 1) are for the detectors that read answers
        # (Detector.answers): egress_dst keyed by their destination, egress_src by their source
        egress = rows["direction"] == 1
        self.egress_dst = dst_rows & egress
        self.egress_src = ~dst_rows & egress
        self.dst_rows = dst_rows & ~egress
        self.src_rows = ~dst_rows & ~egress
        self.ip_dst = self.dst_rows & (rows["ip_version"] > 0)
        self.status = rows["status"].astype(np.int64)
        self._attempts: npt.NDArray[np.bool_] | None = None

    def attempts(self) -> npt.NDArray[np.bool_]:
        """Rows that try a port (computed once per batch: scans and sweeps both ask)."""
        if self._attempts is None:
            self._attempts = attempts(self.protocol, self.syns, self.flags_or, self.src_port)
        return self._attempts


@dataclass
class Window:
    """One closed window of a detector's table, grouped by key: the table's columns ``c`` (one row per
    (key, item, capture point) group), each group's key index ``kinv``, and per key its packets
    ``n``, bytes ``b`` and distinct items ``distinct``."""

    c: dict[str, Any]
    kinv: npt.NDArray[np.intp]
    keys: npt.NDArray[np.uint64]
    n: npt.NDArray[np.int64]
    b: npt.NDArray[np.int64]
    distinct: npt.NDArray[Any]
    state: AlertsState

    def per_key(self, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """A column of the groups summed per key."""
        out: npt.NDArray[Any] = np.bincount(self.kinv, values, len(self.keys))
        return out


@dataclass
class Evidence:
    """One firing key of a closed window: its groups (``rows`` of the expanded columns ``c``), the
    earliest one (``first``), and the sample its alert carries (a detector may add to it)."""

    c: dict[str, Any]
    rows: npt.NDArray[np.intp]
    first: int
    src: str
    dst: str
    sub: int
    n: int
    b: int
    distinct: int
    state: AlertsState
    sample: dict[str, Any] = field(default_factory=dict)

    def col(self, name: str) -> int:
        """A column's value in the earliest group."""
        return int(self.c[name][self.first])


class Detector:
    """Base of every detector; a module of ``detectors/`` defines one subclass, declared as

        class PortScan(Detector, name="port_scan", order=10, severity_id=3,
                       technique=("T1046", "Network Service Discovery"), tactic=("TA0007", "Discovery")):
            \"\"\"Port scan: one source tries at least min_ports distinct destination ports ...\"\"\"

            defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 300, "min_ports": 15}
            columns = ("src_addr", "dst_addr", "dst_port", ...)

    Its docstring is its title and rule text ("Title: rule"), as docs and OCSF show them."""

    name: ClassVar[str]
    title: ClassVar[str]
    severity_id: ClassVar[int]  # OCSF: 1 informational .. 5 critical
    technique: ClassVar[tuple[str, str]]  # MITRE ATT&CK (id, name)
    tactic: ClassVar[tuple[str, str]]
    rule: ClassVar[str]  # what fires it, in words (docs, OCSF finding_info.desc)
    defaults: ClassVar[dict[str, Any]]  # every setting with its default; enabled and window_s included
    order: ClassVar[int]  # position among the detectors: the order alerts of one window are emitted in
    columns: ClassVar[tuple[str, ...]] = ()  # the feature columns it reads (features.FEATURE_DTYPE)
    light: ClassVar[bool] = False  # large tables: keep one sample feature row per key, not per group
    answers: ClassVar[bool] = False  # reads the host's answers (egress records): stage one keeps them

    def __init_subclass__(cls, *, name: str = "", order: int = 0, severity_id: int = 0,
                          technique: tuple[str, str] = ("", ""), tactic: tuple[str, str] = ("", ""),
                          light: bool = False, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if not name:  # a base several detectors share (PacketFlood), not a detector
            return
        title, _, rule = " ".join((cls.__doc__ or "").split()).partition(": ")
        if not title or not rule:
            raise TypeError(f"detector {name}: its docstring must read 'Title: rule text'")
        cls.name, cls.order, cls.severity_id, cls.technique, cls.tactic, cls.light = (
            name, order, severity_id, technique, tactic, light)
        cls.title, cls.rule = title, rule.removesuffix(".")

    def __init__(self, settings: dict[str, Any], setup: Setup) -> None:
        self.settings = settings
        self.setup = setup

    @classmethod
    def validate(cls, settings: dict[str, Any]) -> list[str]:
        """Problems beyond the types the defaults imply (each a sentence naming the setting)."""
        return []

    # -- stage one (before re-keying) ----------------------------------------------------------

    @staticmethod
    def keep_apart(flags: npt.NDArray[Any], proto: npt.NDArray[Any]) -> npt.NDArray[np.uint8] | None:
        """A per-row code (0: nothing special) that keeps rows apart when stage one folds a
        connection's packets into one row; asked of every registered detector, enabled or not."""
        return None

    def payload_scan(self) -> Callable[..., Any] | None:
        """A payload scan stage one runs on every batch while this detector is enabled."""
        return None

    def source_rows(self, rows: npt.NDArray[Any]) -> npt.NDArray[np.bool_] | None:
        """Feature rows that must also reach the partition of their source address (everything
        keyed by source: sweeps, per-source volumes); None: none. (Egress rows only go there
        for a detector that reads answers.)"""
        return None

    # -- stage two (per partition) -------------------------------------------------------------

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        raise NotImplementedError

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        raise NotImplementedError

    def item_text(self, c: dict[str, Any], r: int, item: int) -> str:
        """An evidence item (a port, an address, an attack kind) as text."""
        return str(item)

    def describe(self, e: Evidence) -> tuple[str, str]:
        """(alert key, message) of a firing key."""
        raise NotImplementedError


class PacketFlood(Detector):
    """What the floods share: a destination's packets in a window reach min_packets."""

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = w.n >= self.settings["min_packets"]
        return out

    def describe(self, e: Evidence) -> tuple[str, str]:
        return e.dst, f"{e.n} packets to {e.dst} from {distinct_sources(e.c, e.rows)} sources"


# -- helpers several detectors use ---------------------------------------------------------------

def attempts(proto: npt.NDArray[Any], syns: npt.NDArray[Any], flags_or: npt.NDArray[Any],
             sport: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Rows that try a port: TCP SYN or probe without ACK, UDP from an ephemeral port."""
    probe = (flags_or & ACK) == 0
    tcp_try = (proto == PROTO_TCP) & ((syns > 0) | probe)
    out: npt.NDArray[np.bool_] = tcp_try | ((proto == PROTO_UDP) & (sport >= 1024))
    return out


def path_rank(ttl: npt.NDArray[Any], direction: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """How far along its path each packet was captured (higher: nearer its destination): the TTL it
    lost (255 minus its TTL) times two, plus one when it was captured arriving. A packet's rank only
    grows along its path (its sender's egress, each router's ingress then egress, the destination's
    ingress) whatever TTL it started with: random or forged TTLs included, since no initial TTL is
    guessed (a guess would rank a packet lower after it crossed 65 to 64)."""
    out: npt.NDArray[np.int64] = 2 * (255 - ttl.astype(np.int64)) + (direction == 0)
    return out


def addr_text(words_row: npt.NDArray[Any] | bytes) -> str:
    return decode_addr_text(words_row if isinstance(words_row, bytes) else words_bytes(words_row))


def proto_name(p: int) -> str:
    return {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp", PROTO_ICMP6: "icmpv6"}.get(p, str(p))


def distinct_sources(c: dict[str, Any], rows: npt.NDArray[np.intp]) -> int:
    return len(np.unique(addr_hash(c["src_addr"][rows])))


def first_per_key(kinv: npt.NDArray[np.intp], nk: int) -> npt.NDArray[np.int64]:
    """The index of each key's first group."""
    first = np.zeros(nk, dtype=np.int64)
    first[kinv[::-1]] = np.arange(len(kinv))[::-1]
    return first


__all__ = ["SEC", "Add", "Detector", "Evidence", "PacketFlood", "Setup", "View", "Window", "addr_text", "attempts",
           "distinct_sources", "first_per_key", "path_rank", "proto_name"]
