"""``pktstream alerts``: detections from the packet stream, as OCSF Detection Findings.

Runs on ``stream.StreamRunner`` (exactly once, scaled out, replayable). Stage one folds each
connection's packets per second into rows (packets with odd TCP flags, and requests, stay rows
of their own), marks attack strings in HTTP requests (``attacks.py``) and routes each row to the
partition of its destination address; rows that start connections, and per-source packet totals,
also go to the partition of their source address (address sweeps and per-source volumes need
everything one source sent). Each partition then keeps, per detector and event-time window, a
table of (key, item, capture point) counters in a C hash table (``agg.Groups``): a batch is one C
pass, and Python only looks at the keys that crossed a threshold when the window closes.

An alert is an ongoing condition: the first window a key crosses the threshold creates it (OCSF
activity Create) with an id derived from (rule, key, that window's start); each later window in
which it still fires updates it (Update, same id); the first window it does not fire closes it
(Close). Ids, counts and evidence depend only on the input, so a replay gives the same alerts and
a restarted consumer (state and offsets committed together) neither repeats nor misses one.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts import attacks
from pktstream.consumers.catalog import PROTO_TCP, PROTO_UDP, Catalog, read_yaml
from pktstream.consumers.engine.agg import COLS as AGG_COLS
from pktstream.consumers.engine.agg import Groups, first_rows, group_index
from pktstream.consumers.engine.agg import batch as agg_batch
from pktstream.consumers.engine.features import (
    FEATURE_DTYPE,
    VIEW_DST,
    VIEW_SRC,
    Features,
    StringTable,
    addr_hash,
    featurize,
    mix,
    take,
    words_bytes,
)
from pktstream.consumers.engine.parse import KIND_HTTP1, METHODS
from pktstream.consumers.engine.runner import FOREVER, Output
from pktstream.consumers.engine.snapshot import array as snapshot_array
from pktstream.runtime.errors import ConfigError
from pktstream.schemas import load_schema_json
from pktstream.schemas.columns import Batch
from pktstream.schemas.decode import addr_text as decode_addr_text

OCSF_VERSION = "1.3.0"
PROTO_ICMP, PROTO_ICMP6 = 1, 58
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
SEC = 1_000_000_000
_PARSED = fastavro.parse_schema(load_schema_json("alert"))

# rule -> title, severity_id (OCSF: 1 informational .. 5 critical), ATT&CK technique, tactic, rule text
RULES: dict[str, dict[str, Any]] = {
    "port_scan": {"title": "Port scan", "severity_id": 3, "technique": ("T1046", "Network Service Discovery"),
                  "tactic": ("TA0007", "Discovery"),
                  "rule": "one source tries at least min_ports distinct destination ports on one host within a "
                          "window (TCP SYN or flag probes without ACK, UDP from an ephemeral port)"},
    "address_sweep": {"title": "Address sweep", "severity_id": 3,
                      "technique": ("T1595.001", "Active Scanning: Scanning IP Blocks"),
                      "tactic": ("TA0043", "Reconnaissance"),
                      "rule": "one source tries one destination port on at least min_hosts distinct hosts "
                              "within a window"},
    "syn_flood": {"title": "SYN flood", "severity_id": 4, "technique": ("T1499.001", "OS Exhaustion Flood"),
                  "tactic": ("TA0040", "Impact"),
                  "rule": "at least min_half_open connections to one host in a window sent nothing but SYNs, "
                          "and they are at least min_ratio of the connections opened to it"},
    "udp_flood": {"title": "UDP flood", "severity_id": 4, "technique": ("T1498.001", "Direct Network Flood"),
                  "tactic": ("TA0040", "Impact"),
                  "rule": "at least min_packets UDP packets towards one host in a window (reflection "
                          "traffic from amplification ports counts as amplification instead)"},
    "icmp_flood": {"title": "ICMP flood", "severity_id": 4, "technique": ("T1498.001", "Direct Network Flood"),
                   "tactic": ("TA0040", "Impact"),
                   "rule": "at least min_packets ICMP or ICMPv6 echo requests towards one host in a window"},
    "amplification": {"title": "Reflection/amplification attack", "severity_id": 4,
                      "technique": ("T1498.002", "Reflection Amplification"), "tactic": ("TA0040", "Impact"),
                      "rule": "at least min_packets UDP packets from amplification service ports (53, 123, 1900, "
                              "11211, 19, 389) towards one host in a window, min_mean_bytes or more on average"},
    "spoofed_source": {"title": "Spoofed or impossible source address", "severity_id": 3,
                       "technique": ("T1498", "Network Denial of Service"), "tactic": ("TA0040", "Impact"),
                       "rule": "packets whose source is the destination itself (LAND), a multicast or broadcast "
                               "address, or (on an interface listed in external_interfaces) a bogon or martian "
                               "address; at least min_packets per destination and kind in a window"},
    "tcp_flags": {"title": "TCP flag anomaly", "severity_id": 3, "technique": ("T1046", "Network Service Discovery"),
                  "tactic": ("TA0007", "Discovery"),
                  "rule": "TCP packets with no flags (NULL), FIN+PSH+URG (XMAS), SYN+FIN, SYN+RST, or FIN "
                          "without ACK; at least min_packets per source, destination and kind in a window"},
    "http_attack": {"title": "Attack string in HTTP request", "severity_id": 4,
                    "technique": ("T1190", "Exploit Public-Facing Application"),
                    "tactic": ("TA0001", "Initial Access"),
                    "rule": "an HTTP/1.x request line or header in the payload prefix carries SQL injection, "
                            "path traversal, a ${jndi: lookup (obfuscations resolved) or shell injection; at least "
                            "min_requests per source, destination, port and kind in a window"},
    "rate_limit": {"title": "Client request rate above the API's limit", "severity_id": 2,
                   "technique": ("T1499.003", "Application Exhaustion Flood"), "tactic": ("TA0040", "Impact"),
                   "rule": "one client sends an API more requests in a window than the catalog's "
                           "rate_limit_per_min allows for that window"},
    "volumetric": {"title": "Traffic volume far above its baseline", "severity_id": 3,
                   "technique": ("T1498", "Network Denial of Service"), "tactic": ("TA0040", "Impact"),
                   "rule": "packets of one destination (or one source) in a window exceed min_packets, factor "
                           "times its average and its average plus sigmas standard deviations over the windows "
                           "seen before (after warmup_windows of history), spread over at least min_flows "
                           "connections (one bulk transfer is not an anomaly)"},
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "port_scan": {"enabled": True, "window_s": 300, "min_ports": 15},
    "address_sweep": {"enabled": True, "window_s": 300, "min_hosts": 25},
    "syn_flood": {"enabled": True, "window_s": 10, "min_half_open": 1000, "min_ratio": 0.8},
    "udp_flood": {"enabled": True, "window_s": 10, "min_packets": 20000},
    "icmp_flood": {"enabled": True, "window_s": 10, "min_packets": 5000},
    "amplification": {"enabled": True, "window_s": 10, "min_packets": 500, "min_mean_bytes": 512,
                      "ports": [53, 123, 1900, 11211, 19, 389]},
    "spoofed_source": {"enabled": True, "window_s": 60, "min_packets": 1},
    "tcp_flags": {"enabled": True, "window_s": 60, "min_packets": 1},
    "http_attack": {"enabled": True, "window_s": 60, "min_requests": 1},
    "rate_limit": {"enabled": True, "window_s": 60},
    "volumetric": {"enabled": True, "window_s": 10, "warmup_windows": 30, "factor": 10.0, "sigmas": 6.0,
                   "min_packets": 20000, "min_flows": 50, "max_keys": 100000},
}
TOP_EVIDENCE = 10
LIGHT = {"syn_flood", "udp_flood", "icmp_flood", "amplification", "volumetric"}  # big tables: a sample per key

FLAG_NAMES = {1: "NULL", 2: "XMAS", 3: "SYN+FIN", 4: "SYN+RST", 5: "FIN without ACK"}
SPOOF_NAMES = {1: "LAND (source is the destination)", 2: "multicast or broadcast source", 3: "bogon or martian source"}

_BOGONS_V4 = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
              "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
              "203.0.113.0/24", "240.0.0.0/4"]
_BOGONS_V6 = ["::/128", "::1/128", "fc00::/7", "2001:db8::/32", "100::/64"]


@dataclass
class Rules:
    detectors: dict[str, dict[str, Any]]
    external_interfaces: list[str] = field(default_factory=list)
    close_after_windows: int = 1

    def on(self, name: str) -> bool:
        return bool(self.detectors[name]["enabled"])

    def window_ns(self, name: str) -> int:
        return int(self.detectors[name]["window_s"] * SEC)


def load_rules(path: str | Path | None, data: Any = None) -> Rules:
    """Detector settings: the defaults, overridden by the YAML file's values; every problem listed."""
    if data is None and path:
        data = read_yaml(path, f"alerts config {path}")
    data = data or {}
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"alerts config {path}: expected a mapping"])
    unknown = set(data) - {"detectors", "external_interfaces", "close_after_windows"}
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)} (expected detectors, external_interfaces, "
                        "close_after_windows)")
    dets = {k: dict(v) for k, v in DEFAULTS.items()}
    given = data.get("detectors") or {}
    if not isinstance(given, dict):
        problems.append("detectors: expected a mapping of detector name to settings")
        given = {}
    for name, over in given.items():
        if name not in DEFAULTS:
            problems.append(f"detectors.{name}: no such detector (one of {', '.join(DEFAULTS)})")
            continue
        if not isinstance(over, dict):
            problems.append(f"detectors.{name}: expected a mapping")
            continue
        for k, v in over.items():
            if k not in DEFAULTS[name]:
                problems.append(f"detectors.{name}.{k}: unknown setting (known: {', '.join(DEFAULTS[name])})")
                continue
            want = DEFAULTS[name][k]
            if isinstance(want, bool):
                ok = isinstance(v, bool)
            elif isinstance(want, list):
                ok = isinstance(v, list) and all(isinstance(x, int) and 0 < x < 65536 for x in v)
            elif isinstance(want, float):
                ok = isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
            else:
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= (1 if k == "window_s" else 0)
            if not ok:
                problems.append(f"detectors.{name}.{k}: {v!r} is not a valid {type(want).__name__}"
                                + (" >= 1" if k == "window_s" else ""))
            else:
                dets[name][k] = v
    ext = data.get("external_interfaces") or []
    if not isinstance(ext, list) or not all(isinstance(x, str) for x in ext):
        problems.append("external_interfaces: expected a list of interface names (or host/interface)")
        ext = []
    close_after = data.get("close_after_windows", 1)
    if not isinstance(close_after, int) or close_after < 1:
        problems.append(f"close_after_windows: expected a whole number >= 1, got {close_after!r}")
        close_after = 1
    if problems:
        raise ConfigError(problems)
    return Rules(dets, list(ext), close_after)


# -- address classes ------------------------------------------------------------------------------

def _nets(texts: list[str]) -> list[tuple[int, int, int, int]]:
    """Networks as (hi, lo, mask_hi, mask_lo) over the 16-byte (IPv4-mapped) address, big-endian words."""
    out = []
    for t in texts:
        net = ipaddress.ip_network(t)
        if isinstance(net, ipaddress.IPv4Network):
            net6 = ipaddress.IPv6Network(f"::ffff:{net.network_address}/{96 + net.prefixlen}")
        else:
            net6 = net
        a = int(net6.network_address)
        m = int(net6.netmask)
        out.append((a >> 64, a & (2**64 - 1), m >> 64, m & (2**64 - 1)))
    return out


_BOGON_NETS = _nets(_BOGONS_V4 + _BOGONS_V6)
_MCAST_NETS = _nets(["224.0.0.0/4", "255.255.255.255/32", "ff00::/8"])


def _be_words(words: npt.NDArray[Any]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """(n, 2) little-endian address words to big-endian (hi, lo) integers, for prefix tests."""
    b = np.ascontiguousarray(words, dtype="<u8").view(np.uint8).reshape(-1, 16)
    be = b.view(">u8").reshape(-1, 2)
    return be[:, 0].astype(np.uint64), be[:, 1].astype(np.uint64)


def _in_nets(words: npt.NDArray[Any], nets: list[tuple[int, int, int, int]]) -> npt.NDArray[np.bool_]:
    hi, lo = _be_words(words)
    out = np.zeros(len(hi), dtype=bool)
    for a, b, mh, ml in nets:
        out |= ((hi & np.uint64(mh)) == np.uint64(a)) & ((lo & np.uint64(ml)) == np.uint64(b))
    return out


def _flag_code(f: int) -> int:
    if (f & 0x3F) == 0:
        return 1  # NULL
    if (f & (FIN | PSH | URG)) == (FIN | PSH | URG):
        return 2  # XMAS
    if (f & (SYN | FIN)) == (SYN | FIN):
        return 3
    if (f & (SYN | RST)) == (SYN | RST):
        return 4
    if (f & ACK) == 0 and (f & FIN) != 0 and (f & SYN) == 0:
        return 5  # FIN without ACK
    return 0


_FLAG_CODES = np.array([_flag_code(f) for f in range(256)], dtype=np.uint8)


def flag_anomaly(flags: npt.NDArray[Any], proto: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """FLAG_NAMES code of each TCP packet's flags (0: nothing odd), from a table of all 256."""
    code: npt.NDArray[np.uint8] = _FLAG_CODES[np.asarray(flags, dtype=np.uint8)]
    code[proto != PROTO_TCP] = 0
    return code


def addr_text(words_row: npt.NDArray[Any] | bytes) -> str:
    return decode_addr_text(words_row if isinstance(words_row, bytes) else words_bytes(words_row))


# -- per-window tables ------------------------------------------------------------------------------

class Table:
    """Counters of (key, item, capture point) groups in one C hash table (agg.Groups), with
    sample feature rows: one per group, or, in a light table, one per key (``side``), which is
    all that the detectors with large tables (floods, volume) need."""

    __slots__ = ("g", "light", "side")

    def __init__(self, light: bool = False) -> None:
        self.light = light
        self.g = Groups(None if light else FEATURE_DTYPE)
        self.side = Groups(FEATURE_DTYPE) if light else None

    def add(self, a: npt.NDArray[np.int64], rows: npt.NDArray[Any], idx: npt.NDArray[np.intp] | None = None) -> None:
        """A batch (agg.batch) added; its row i came from rows[idx[i]] (rows[i] without idx)."""
        if a.shape[1] == 0:
            return
        self.g.add_batch(a, None if self.light else rows, idx)
        if self.side is not None:
            self.side.add_batch(a, rows, idx, key_only=True)

    @property
    def cols(self) -> dict[str, npt.NDArray[Any]]:
        return self.g.view()

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.g.view())
        if self.side is not None:
            sv = self.side.view()
            out["side"] = {"k": sv["k"], "t0": sv["t0"], "rec": sv["rec"]}
        return out

    @classmethod
    def load(cls, d: dict[str, Any]) -> Table:
        dec = snapshot_array

        cols = {k: dec(d[k], t) for k, t in AGG_COLS.items()}
        light = "side" in d
        t = cls(light)
        rec = None if light else dec(d["rec"], FEATURE_DTYPE)
        n = len(cols["k"])
        if any(len(v) != n for v in cols.values()) or (rec is not None and len(rec) != n):
            raise ValueError("snapshot: alert table columns differ in length")
        t.g.add(cols["k"], cols["item"], cols["o"], cols["n"], cols["b"], cols["t0"], cols["sub"], cols["s"], rows=rec)
        if len(t.g) != n:
            raise ValueError("snapshot: alert table has repeated keys")
        t.g.data[list(AGG_COLS).index("t1"), :n] = cols["t1"]
        if t.side is not None:
            sk, st0, srec = (dec(d["side"]["k"], np.uint64), dec(d["side"]["t0"], np.int64),
                             dec(d["side"]["rec"], FEATURE_DTYPE))
            if not len(sk) == len(st0) == len(srec):
                raise ValueError("snapshot: alert table columns differ in length")
            t.side.add_batch(agg_batch(len(sk), k=sk, t=st0), srec, key_only=True)
        return t

    def with_samples(self) -> dict[str, Any]:
        """The groups' columns, each with a sample feature row (a light table's is its key's)."""
        c = self.g.view()
        if self.side is None:
            return c
        idx = self.side.find(c["k"])
        rec = self.side.view()["rec"]
        return {**c, "rec": take(rec, np.maximum(idx, 0)) if len(rec) else np.zeros(len(idx), FEATURE_DTYPE)}


def _expand(c: dict[str, Any]) -> dict[str, Any]:
    """A table's sample fields as columns."""
    r = c["rec"]
    return {**c, "src": r["src"], "dst": r["dst"], "sport": r["sport"].astype(np.int64),
            "dport": r["dport"].astype(np.int64), "proto": r["proto"].astype(np.int64),
            "flags": r["tcp_flags"].astype(np.int64), "ttl": r["ttl"].astype(np.int64),
            "len": r["wire_len"].astype(np.int64)}


@dataclass
class OpenAlert:
    uid: str
    rule: str
    key: str
    first_window: int
    last_window: int  # start of the last window it fired in
    first_seen: int
    last_seen: int
    count: int  # packets (or requests) over its life
    windows: int = 1


class Baselines:
    """Per-key traffic history of the volume detector: window count, mean, sum of squared deviations."""

    def __init__(self, keys: npt.NDArray[np.uint64] | None = None, cnt: npt.NDArray[np.float64] | None = None,
                 mean: npt.NDArray[np.float64] | None = None, m2: npt.NDArray[np.float64] | None = None) -> None:
        self.keys = keys if keys is not None else np.zeros(0, np.uint64)
        self.cnt = cnt if cnt is not None else np.zeros(0)
        self.mean = mean if mean is not None else np.zeros(0)
        self.m2 = m2 if m2 is not None else np.zeros(0)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, keys: npt.NDArray[np.uint64], cnt: npt.NDArray[np.float64], mean: npt.NDArray[np.float64],
            m2: npt.NDArray[np.float64]) -> None:
        k = np.concatenate([self.keys, keys])
        order = np.argsort(k, kind="stable")
        self.keys = k[order]
        self.cnt = np.concatenate([self.cnt, cnt])[order]
        self.mean = np.concatenate([self.mean, mean])[order]
        self.m2 = np.concatenate([self.m2, m2])[order]

    def cap(self, max_keys: int) -> None:
        if len(self.keys) > max_keys:  # keep the busiest
            keep = np.sort(np.argsort(-self.mean, kind="stable")[:max_keys])
            self.keys, self.cnt, self.mean, self.m2 = self.keys[keep], self.cnt[keep], self.mean[keep], self.m2[keep]

    def dump(self) -> list[npt.NDArray[Any]]:
        return [self.keys, self.cnt, self.mean, self.m2]

    @classmethod
    def load(cls, d: list[Any]) -> Baselines:
        keys = snapshot_array(d[0], np.uint64)
        rest = [snapshot_array(x, np.float64) for x in d[1:]]
        if any(len(r) != len(keys) for r in rest):
            raise ValueError("snapshot: baseline columns differ in length")
        return cls(keys, *rest)


def attempts(proto: npt.NDArray[Any], syns: npt.NDArray[Any], flags_or: npt.NDArray[Any],
             sport: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Rows that try a port: TCP SYN or probe without ACK, UDP from an ephemeral port."""
    probe = (flags_or & ACK) == 0
    tcp_try = (proto == PROTO_TCP) & ((syns > 0) | probe)
    out: npt.NDArray[np.bool_] = tcp_try | ((proto == PROTO_UDP) & (sport >= 1024))
    return out


class _View:
    """Feature rows with the columns the detectors share, extracted once: address hashes, ports,
    protocol, packets, bytes, time, capture point (an index into the state's strings)."""

    __slots__ = ("b", "dport", "fh", "flags_or", "hd", "hs", "n", "o", "proto", "rows", "sport", "syns", "t")

    def __init__(self, rows: npt.NDArray[Any], omap: npt.NDArray[np.int64]) -> None:
        self.rows = rows
        self.hd = addr_hash(rows["dst"])
        self.hs = addr_hash(rows["src"])
        self.sport = rows["sport"].astype(np.int64)
        self.dport = rows["dport"].astype(np.int64)
        self.proto = rows["proto"].astype(np.int64)
        self.n = rows["packets"].astype(np.int64)
        self.b = rows["nbytes"].astype(np.int64)
        self.t = rows["ts_ns"].astype(np.int64)
        self.o = omap[rows["origin"]]
        self.syns = rows["syns"].astype(np.int64)
        self.flags_or = rows["flags_or"]
        self.fh = np.ascontiguousarray(rows["fh"])  # features.flow_hash of the 5-tuple, from stage one

    def attempts(self) -> npt.NDArray[np.bool_]:
        return attempts(self.proto, self.syns, self.flags_or, self.sport)


@dataclass
class AlertsState:
    windows: dict[str, dict[int, Table]] = field(default_factory=dict)  # detector -> window start -> table
    closed_until: dict[str, int] = field(default_factory=dict)
    open: dict[str, OpenAlert] = field(default_factory=dict)  # rule|key -> alert
    baselines: Baselines = field(default_factory=Baselines)  # the volume detector's history per key
    strings: StringTable = field(default_factory=StringTable)  # capture points, paths, API names
    late_records: int = 0
    alerts_raised: int = 0


class AlertsProcessor:
    def __init__(self, rules: Rules, catalog: Catalog | None = None, topic: str = "pktstream.alerts",
                 grace_s: float = 5.0, fmt: str = "json", host: str = "") -> None:
        self.rules = rules
        self.catalog = catalog or Catalog()
        self.topic = topic
        self.grace_ns = int(grace_s * SEC)
        self.fmt = fmt
        self.host = host
        wins = [rules.window_ns(d) for d in DEFAULTS if rules.on(d)] or [SEC]
        self.fold_ns = max(SEC, math.gcd(*wins))
        self.amp_ports = np.array(sorted(rules.detectors["amplification"]["ports"]), dtype=np.int64)
        self.external = set(rules.external_interfaces)
        self.limited = any(e.rate_limit_per_min > 0 for e in self.catalog.entries)

    def _limited_api(self, host: str, dst: bytes, port: int, method: int, path: str) -> str:
        """The name of the rate-limited API a request belongs to, "" when it belongs to none
        (Catalog.match remembers its answers)."""
        ref = self.catalog.match(host, dst, port, METHODS[method] if method < len(METHODS) else "", path, "http")
        return ref.name if ref.matched and ref.rate_limit_per_min > 0 else ""

    # -- stage one ------------------------------------------------------------------------------

    def featurize(self, batch: Batch, origin: str) -> Features:
        return featurize(batch, origin, attack_scan=attacks.scan_batch if self.rules.on("http_attack") else None,
                         coalesce_ns=self.fold_ns, keep_apart=flag_anomaly)

    def route(self, f: Features, nparts: int) -> dict[int, Features]:
        rows = f.rows  # featurize made them: view is VIEW_DST (0) already
        n = len(rows)
        if n == 0:
            return {}
        ip = rows["ip_version"] > 0
        if self.rules.on("volumetric"):  # everything a source sent: its volume, flows and attempts
            src_idx = np.flatnonzero(ip)
        elif self.rules.on("address_sweep"):
            src_idx = np.flatnonzero(ip & attempts(rows["proto"], rows["syns"], rows["flags_or"], rows["sport"]))
        else:
            src_idx = np.zeros(0, np.intp)
        # one gather builds every partition's rows: its destination rows, then its source rows
        part = np.concatenate([addr_hash(rows["dst"]), addr_hash(rows["src"][src_idx])]) % np.uint64(nparts)
        order = np.argsort(part.astype(np.uint8 if nparts <= 256 else np.int64), kind="stable")
        gather = np.concatenate([np.arange(n), src_idx])[order]
        rs = take(rows, gather)
        rs["view"][order >= n] = VIEW_SRC
        bounds = np.searchsorted(part[order], np.arange(nparts + 1, dtype=np.uint64))
        return {q: Features(rs[bounds[q] : bounds[q + 1]], f.strings) for q in range(nparts)
                if bounds[q + 1] > bounds[q]}

    # -- stage two ------------------------------------------------------------------------------

    def new_state(self) -> AlertsState:
        return AlertsState()

    @staticmethod
    def _table(wins: dict[int, Table], det: str, ws: int) -> Table:
        t = wins.get(ws)
        if t is None:
            t = wins[ws] = Table(light=det in LIGHT)
        return t

    def _add(self, st: AlertsState, det: str, v: _View, sel: npt.NDArray[np.intp], k: npt.NDArray[np.uint64],
             item: Any = 0, n: Any = None, sub: Any = 0, s: Any = -1) -> None:
        """Rows sel of a view added to the detector's window tables under key k (one per row)."""
        if not self.rules.on(det) or len(sel) == 0:
            return
        w = self.rules.window_ns(det)
        a = agg_batch(len(sel), k=k, item=item, o=v.o[sel], n=v.n[sel] if n is None else n, b=v.b[sel],
                      t=v.t[sel], sub=sub, s=s)
        win = a[5] - a[5] % w
        closed = st.closed_until.get(det, 0)
        if int(win.min()) < closed:
            late = win < closed
            st.late_records += int(v.n[sel[late]].sum())
            keep = ~late
            a, win, sel = a[:, keep], win[keep], sel[keep]
            if len(sel) == 0:
                return
        wins = st.windows.setdefault(det, {})
        lo, hi = int(win.min()), int(win.max())
        if lo == hi:
            self._table(wins, det, lo).add(a, v.rows, sel)
            return
        order = np.argsort(win, kind="stable")
        ws_sorted = win[order]
        starts = np.flatnonzero(np.r_[True, ws_sorted[1:] != ws_sorted[:-1]])
        for i, j, ws in zip(starts.tolist(), [*starts[1:].tolist(), len(order)], ws_sorted[starts].tolist(),
                            strict=True):
            idx = order[i:j]
            self._table(wins, det, int(ws)).add(a[:, idx], v.rows, sel[idx])

    def process(self, st: AlertsState, f: Features) -> None:
        rows = f.rows
        # capture points as indices into the state's own strings (index -1 stays -1)
        ns = len(f.strings)
        omap = np.full(ns + 1, -1, dtype=np.int64)
        used = np.zeros(ns + 1, dtype=bool)  # index -1 marks the last slot
        used[rows["origin"]] = True
        for i in np.flatnonzero(used[:ns]).tolist():
            omap[i] = st.strings.add(f.strings[i])
        # both keyings' rows in one view: D marks the destination view's, S the source view's
        d = _View(rows, omap)
        D = rows["view"] == VIEW_DST
        S = ~D
        attempt = d.attempts()
        # port scan: (src, dst) -> distinct destination ports
        att = np.flatnonzero(D & attempt)
        self._add(st, "port_scan", d, att, mix(d.hs[att], d.hd[att]), item=d.dport[att])
        # address sweep: (src, dport) -> distinct destinations
        s_att = np.flatnonzero(S & attempt)
        self._add(st, "address_sweep", d, s_att, mix(d.hs[s_att], d.dport[s_att], d.proto[s_att]),
                  item=d.hd[s_att])
        # SYN flood: dst -> connections opened (item 1) and left half-open (item 2)
        tcp = D & (d.proto == PROTO_TCP)
        udp = D & (d.proto == PROTO_UDP)
        opened = np.flatnonzero(tcp & (d.syns > 0))
        self._add(st, "syn_flood", d, opened, mix(d.hd[opened]),
                  item=np.where(d.n[opened] == d.syns[opened], 2, 1), n=1)
        # UDP and ICMP floods, amplification: dst -> packets
        amp = udp & np.isin(d.sport, self.amp_ports)
        sel = np.flatnonzero(udp & ~amp)
        self._add(st, "udp_flood", d, sel, mix(d.hd[sel]))
        sel = np.flatnonzero(amp)
        self._add(st, "amplification", d, sel, mix(d.hd[sel]), item=d.sport[sel])
        sel = np.flatnonzero(D & (((d.proto == PROTO_ICMP) & (d.sport == 8))
                                  | ((d.proto == PROTO_ICMP6) & (d.sport == 128))))
        self._add(st, "icmp_flood", d, sel, mix(d.hd[sel]))
        r = d.rows
        ipd = D & (r["ip_version"] > 0)
        # spoofed and impossible sources
        if self.rules.on("spoofed_source") and len(r):
            land = ipd & (d.hs == d.hd)
            cand = np.flatnonzero(land)
            if len(cand):
                land[cand] = (r["src"][cand] == r["dst"][cand]).all(axis=1)
            mcast = ipd & _in_nets(r["src"], _MCAST_NETS)
            code = np.where(land, 1, np.where(mcast, 2, 0))
            if self.external:
                ext_o = np.array([any(x == e or x.endswith("/" + e) for e in self.external) for x in f.strings]
                                 + [False])
                on_ext = ext_o[r["origin"]]
                bogon = ipd & on_ext & (code == 0) & _in_nets(r["src"], _BOGON_NETS)
                code = np.where(bogon, 3, code)
            sel = np.flatnonzero(code > 0)
            self._add(st, "spoofed_source", d, sel, mix(code[sel], d.hd[sel]), item=d.hs[sel], sub=code[sel])
        # TCP flag anomalies
        if self.rules.on("tcp_flags") and len(r):
            code = flag_anomaly(r["tcp_flags"], d.proto)
            sel = np.flatnonzero(D & (code > 0))
            self._add(st, "tcp_flags", d, sel, mix(code[sel], d.hs[sel], d.hd[sel]), item=d.dport[sel],
                      sub=code[sel])
        # attack strings
        hit = np.flatnonzero(D & (r["kind"] == KIND_HTTP1) & (r["attack"] > 0))
        if len(hit) and self.rules.on("http_attack"):
            bits = r["attack"][hit]
            for bit in attacks.NAMES:
                sel = hit[(bits & bit) != 0]
                if len(sel):
                    # the request target, as an index into the state's own strings
                    path = np.array([st.strings.add(f.text(int(p)) or "/") for p in r["path"][sel].tolist()],
                                    dtype=np.int64)
                    self._add(st, "http_attack", d, sel, mix(np.full(len(sel), bit), d.hs[sel], d.hd[sel],
                                                             d.dport[sel]), item=bit, n=1, sub=bit, s=path)
        # per-client rate against the catalog's limits
        if self.rules.on("rate_limit") and self.limited:
            req = np.flatnonzero(D & (r["kind"] == KIND_HTTP1) & (r["method"] > 0))
            if len(req):
                rr = take(r, req)
                # the catalog is asked once per distinct (Host, address, port, method, path)
                gid, _g = group_index(mix(rr["name"], d.hd[req], rr["dport"], rr["method"], rr["path"]))
                u = take(rr, first_rows(gid))
                apis = []
                dsts = words_bytes(u["dst"])
                texts = [*f.strings, ""]  # index -1: no Host / no path
                limited = self._limited_api
                for j, (nm, port, meth, pth) in enumerate(zip(u["name"].tolist(), u["dport"].tolist(),
                                                              u["method"].tolist(), u["path"].tolist(), strict=True)):
                    name = limited(texts[nm], dsts[16 * j : 16 * j + 16], port, meth, texts[pth])
                    apis.append(st.strings.add(name) if name else -1)
                api = np.array(apis, dtype=np.int64)[gid]
                ok = api >= 0
                sel, api = req[ok], api[ok]  # the API, as an index into the state's own strings
                self._add(st, "rate_limit", d, sel, mix(api, d.hs[sel]), n=1, s=api)
        # volume per destination and per source
        if self.rules.on("volumetric"):
            sel = np.flatnonzero(ipd)
            self._add(st, "volumetric", d, sel, mix(np.zeros(len(sel)), d.hd[sel]), item=d.fh[sel], sub=0)
            sel = np.flatnonzero(S)
            self._add(st, "volumetric", d, sel, mix(np.ones(len(sel)), d.hs[sel]), item=d.fh[sel], sub=1)

    # -- closing windows ------------------------------------------------------------------------

    def close(self, st: AlertsState, watermark_ns: int) -> list[Output]:
        out: list[Output] = []
        final = watermark_ns >= FOREVER
        limit = FOREVER if final else watermark_ns - self.grace_ns
        for det in DEFAULTS:
            if not self.rules.on(det):
                continue
            w = self.rules.window_ns(det)
            wins = st.windows.get(det, {})
            closing = sorted(ws for ws in wins if ws + w <= limit)
            for ws in closing:
                firing = self._evaluate(st, det, ws, wins.pop(ws))
                out.extend(self._lifecycle(st, det, ws, firing))
                st.closed_until[det] = max(st.closed_until.get(det, 0), ws + w)
            if not final:
                st.closed_until[det] = max(st.closed_until.get(det, 0), limit - limit % w)
                # windows without any traffic still close alerts that stopped firing
                last_closed = st.closed_until[det] - w
                out.extend(self._lifecycle(st, det, last_closed, {}))
        if final:  # the end of the input: what is still open is closed
            for key in sorted(st.open):
                a = st.open.pop(key)
                out.append(self._emit(st, a, 3, None))
        return out

    def _evaluate(self, st: AlertsState, det: str, ws: int, t: Table) -> dict[str, dict[str, Any]]:
        """Keys over the detector's threshold in one closed window: key text -> facts."""
        c = t.cols
        if len(c["k"]) == 0:
            return {}
        cfg = self.rules.detectors[det]
        kinv, kg = group_index(c["k"])
        keys = kg.view()["k"]
        nk = len(keys)
        n = np.bincount(kinv, c["n"], nk).astype(np.int64)
        b = np.bincount(kinv, c["b"], nk).astype(np.int64)
        # distinct items per key: the (key, item) pairs over all capture points
        _pinv, pairs = group_index(kinv, c["item"])
        distinct = np.bincount(pairs.view()["k"].astype(np.int64), minlength=nk)
        if det == "port_scan":
            fire = distinct >= cfg["min_ports"]
        elif det == "address_sweep":
            fire = distinct >= cfg["min_hosts"]
        elif det == "syn_flood":
            half = np.bincount(kinv, np.where(c["item"] == 2, c["n"], 0), nk)
            fire = (half >= cfg["min_half_open"]) & (half >= cfg["min_ratio"] * np.maximum(n, 1))
        elif det in ("udp_flood", "icmp_flood"):
            fire = n >= cfg["min_packets"]
        elif det == "amplification":
            fire = (n >= cfg["min_packets"]) & (b >= cfg["min_mean_bytes"] * n)
        elif det == "spoofed_source" or det == "tcp_flags":
            fire = n >= cfg["min_packets"]
        elif det == "http_attack":
            fire = n >= cfg["min_requests"]
        elif det == "rate_limit":
            fire = np.zeros(nk, dtype=bool)
            first = np.zeros(nk, dtype=np.int64)
            first[kinv[::-1]] = np.arange(len(kinv))[::-1]
            win_min = self.rules.detectors["rate_limit"]["window_s"] / 60.0
            for j in range(nk):
                api = st.strings.items[int(c["s"][first[j]])]
                ref = next((e for e in self.catalog.entries if e.name == api), None)
                if ref is not None and ref.rate_limit_per_min > 0:
                    fire[j] = n[j] > ref.rate_limit_per_min * win_min
        elif det == "volumetric":
            fire = self._volumetric(st, c, keys, kinv, n, cfg) & (distinct >= cfg["min_flows"])
        else:  # pragma: no cover
            return {}
        out: dict[str, dict[str, Any]] = {}
        if fire.any():
            c = _expand(t.with_samples())
        fj = np.flatnonzero(fire)
        for j in fj[np.argsort(keys[fj], kind="stable")].tolist():
            rows = np.flatnonzero(kinv == j)
            out_key, facts = self._facts(st, det, c, rows, int(n[j]), int(b[j]), int(distinct[j]))
            out[out_key] = facts
        return out

    def _volumetric(self, st: AlertsState, c: dict[str, Any], keys: npt.NDArray[np.uint64],
                    kinv: npt.NDArray[np.intp], n: npt.NDArray[np.int64], cfg: dict[str, Any]) -> npt.NDArray[np.bool_]:
        """Keys far above their own baseline; the others' baselines learn this window (Welford)."""
        bl = st.baselines
        pos = np.searchsorted(bl.keys, keys)
        posc = np.minimum(pos, max(0, len(bl.keys) - 1))
        found = (pos < len(bl.keys)) & (bl.keys[posc] == keys) if len(bl.keys) else np.zeros(len(keys), bool)
        cnt = np.where(found, bl.cnt[posc] if len(bl.keys) else 0, 0.0)
        mean = np.where(found, bl.mean[posc] if len(bl.keys) else 0, 0.0)
        m2 = np.where(found, bl.m2[posc] if len(bl.keys) else 0, 0.0)
        x = n.astype(np.float64)
        std = np.sqrt(m2 / np.maximum(1.0, cnt - 1))
        fire: npt.NDArray[np.bool_] = found & (cnt >= cfg["warmup_windows"]) & (x >= cfg["min_packets"]) \
            & (x > cfg["factor"] * mean) & (x > mean + cfg["sigmas"] * std)
        learn = ~fire  # an attack does not move the baseline
        cnt1 = cnt + 1
        delta = x - mean
        mean1 = mean + delta / cnt1
        m2_1 = m2 + delta * (x - mean1)
        upd = learn & found
        bl.cnt[pos[upd]], bl.mean[pos[upd]], bl.m2[pos[upd]] = cnt1[upd], mean1[upd], m2_1[upd]
        new = learn & ~found
        if new.any():
            bl.add(keys[new], cnt1[new], mean1[new], m2_1[new])
        bl.cap(int(cfg["max_keys"]))
        return fire

    def _facts(self, st: AlertsState, det: str, c: dict[str, Any], rows: npt.NDArray[np.intp], n: int, b: int,
               distinct: int) -> tuple[str, dict[str, Any]]:
        first = rows[np.argmin(c["t0"][rows])]
        src, dst = addr_text(c["src"][first]), addr_text(c["dst"][first])
        sub = int(c["sub"][first])
        items = c["item"][rows]
        cnts = c["n"][rows]
        iu, iinv = np.unique(items, return_inverse=True)
        isum = np.bincount(iinv.ravel(), cnts, len(iu))
        top = np.lexsort((iu, -isum))[:TOP_EVIDENCE]
        ev_items = list(zip(iu[top].tolist(), isum[top].astype(np.int64).tolist(), strict=True))
        # the item of each evidence row as text
        item_text: dict[int, str] = {}
        for r in rows.tolist():
            it = int(c["item"][r])
            if it in item_text:
                continue
            if det in ("address_sweep",):
                item_text[it] = addr_text(c["dst"][r])
            elif det == "spoofed_source":
                item_text[it] = addr_text(c["src"][r])
            elif det == "http_attack":
                item_text[it] = attacks.NAMES.get(it, str(it))
            else:
                item_text[it] = str(it)
        seen_by = sorted({st.strings.items[int(o)] for o in c["o"][rows].tolist() if 0 <= o < len(st.strings.items)})
        sample = {"src": src, "dst": dst, "src_port": int(c["sport"][first]), "dst_port": int(c["dport"][first]),
                  "protocol": int(c["proto"][first]), "tcp_flags": int(c["flags"][first]),
                  "ttl": int(c["ttl"][first]), "wire_len": int(c["len"][first])}
        if det == "port_scan":
            key, what = f"{src}->{dst}", f"{distinct} ports of {dst} tried by {src}"
        elif det == "address_sweep":
            key = f"{src}->*:{int(c['dport'][first])}/{_proto_name(int(c['proto'][first]))}"
            what = f"{distinct} hosts tried on port {int(c['dport'][first])} by {src}"
        elif det == "syn_flood":
            half = int(np.where(c["item"][rows] == 2, c["n"][rows], 0).sum())
            key, what = dst, f"{half} of {n} connections to {dst} left half-open"
        elif det in ("udp_flood", "icmp_flood"):
            key, what = dst, f"{n} packets to {dst} from {distinct_sources(c, rows)} sources"
        elif det == "amplification":
            key, what = dst, f"{n} packets ({b} bytes) from amplification ports to {dst}"
        elif det == "spoofed_source":
            key, what = f"{SPOOF_NAMES[sub].split(' (')[0]}->{dst}", f"{n} packets to {dst} with a {SPOOF_NAMES[sub]}"
        elif det == "tcp_flags":
            key, what = f"{FLAG_NAMES[sub]}:{src}->{dst}", f"{n} {FLAG_NAMES[sub]} packets from {src} to {dst}"
        elif det == "http_attack":
            name = attacks.NAMES[sub]
            key = f"{name}:{src}->{dst}:{int(c['dport'][first])}"
            path = st.strings.items[int(c["s"][first])] if int(c["s"][first]) >= 0 else ""
            what = f"{n} requests from {src} to {dst}:{int(c['dport'][first])} with {name.replace('_', ' ')}"
            sample["path"] = path
        elif det == "rate_limit":
            api = st.strings.items[int(c["s"][first])]
            key, what = f"{api}:{src}", f"{n} requests from {src} to {api} in one window"
        else:  # volumetric
            scope = "destination" if sub == 0 else "source"
            who = dst if sub == 0 else src
            key, what = f"{scope}:{who}", f"{n} packets for {scope} {who}, far above its baseline"
        facts = {"count": n, "bytes": b, "distinct": distinct, "t0": int(c["t0"][rows].min()),
                 "t1": int(c["t1"][rows].max()), "what": what, "sample": sample, "seen_by": seen_by,
                 "top": [{"value": item_text.get(v, str(v)), "count": k} for v, k in ev_items]}
        return key, facts

    def _lifecycle(self, st: AlertsState, det: str, ws: int, firing: dict[str, dict[str, Any]]) -> list[Output]:
        out: list[Output] = []
        w = self.rules.window_ns(det)
        for key in sorted(firing):
            facts = firing[key]
            ak = f"{det}|{key}"
            a = st.open.get(ak)
            if a is None:
                uid = hashlib.sha256(f"{det}|{key}|{ws}".encode()).hexdigest()[:32]
                a = st.open[ak] = OpenAlert(uid, det, key, ws, ws, facts["t0"], facts["t1"], facts["count"])
                st.alerts_raised += 1
                out.append(self._emit(st, a, 1, facts))
            else:
                a.last_window = ws
                a.last_seen = max(a.last_seen, facts["t1"])
                a.first_seen = min(a.first_seen, facts["t0"])
                a.count += facts["count"]
                a.windows += 1
                out.append(self._emit(st, a, 2, facts))
        # alerts of this detector that stayed quiet long enough: closed
        for ak in sorted(k for k, a in st.open.items() if a.rule == det):
            a = st.open[ak]
            if a.key in firing:
                continue
            if ws - a.last_window >= self.rules.close_after_windows * w:
                del st.open[ak]
                out.append(self._emit(st, a, 3, None))
        return out

    def _emit(self, st: AlertsState, a: OpenAlert, activity: int, facts: dict[str, Any] | None) -> Output:
        doc = ocsf(a, activity, facts, self.rules.window_ns(a.rule), self.host)
        if self.fmt == "avro":
            buf = io.BytesIO()
            fastavro.writer(buf, _PARSED, [avro_record(doc)], codec="null")
            value = buf.getvalue()
        else:
            value = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        return Output(self.topic, a.uid.encode(), value,
                      [("pktstream.rule", a.rule.encode()), ("pktstream.activity", str(activity).encode())], doc)

    # -- state ----------------------------------------------------------------------------------

    def dump(self, st: AlertsState) -> Any:
        return {
            "windows": {d: {str(ws): t.dump() for ws, t in wins.items()} for d, wins in st.windows.items()},
            "closed_until": st.closed_until,
            "open": {k: [a.uid, a.rule, a.key, a.first_window, a.last_window, a.first_seen, a.last_seen, a.count,
                         a.windows] for k, a in st.open.items()},
            "baselines": st.baselines.dump(), "strings": st.strings.items, "late_records": st.late_records,
            "alerts_raised": st.alerts_raised,
        }

    def load(self, d: Any) -> AlertsState:
        return AlertsState(
            windows={det: {int(ws): Table.load(t) for ws, t in wins.items()} for det, wins in d["windows"].items()},
            closed_until={k: int(v) for k, v in d["closed_until"].items()},
            open={k: OpenAlert(v[0], v[1], v[2], int(v[3]), int(v[4]), int(v[5]), int(v[6]), int(v[7]), int(v[8]))
                  for k, v in d["open"].items()},
            baselines=Baselines.load(d["baselines"]),
            strings=StringTable(d["strings"]), late_records=int(d["late_records"]),
            alerts_raised=int(d["alerts_raised"]),
        )

    def figures(self, states: list[AlertsState]) -> dict[str, float]:
        return {"late_records": sum(s.late_records for s in states),
                "open_alerts": sum(len(s.open) for s in states),
                "open_windows": sum(len(w) for s in states for w in s.windows.values())}


def distinct_sources(c: dict[str, Any], rows: npt.NDArray[np.intp]) -> int:
    return len(np.unique(addr_hash(c["src"][rows])))


def _proto_name(p: int) -> str:
    return {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp", PROTO_ICMP6: "icmpv6"}.get(p, str(p))


SEVERITY = {1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}
ACTIVITY = {1: "Create", 2: "Update", 3: "Close"}
STATUS = {1: (1, "New"), 2: (2, "In Progress"), 3: (4, "Resolved")}


def ocsf(a: OpenAlert, activity: int, facts: dict[str, Any] | None, window_ns: int, host: str) -> dict[str, Any]:
    """The alert as an OCSF 1.3.0 Detection Finding (class 2004)."""
    r = RULES[a.rule]
    tech_uid, tech_name = r["technique"]
    tactic_uid, tactic_name = r["tactic"]
    status_id, status = STATUS[activity]
    last_seen = a.last_seen if facts is None else max(a.last_seen, facts["t1"])
    time_ms = (a.last_window + window_ns) // 1_000_000  # the end of the window that decided it
    doc: dict[str, Any] = {
        "activity_id": activity, "activity_name": ACTIVITY[activity],
        "category_uid": 2, "category_name": "Findings",
        "class_uid": 2004, "class_name": "Detection Finding",
        "type_uid": 200400 + activity, "type_name": f"Detection Finding: {ACTIVITY[activity]}",
        "time": time_ms,
        "severity_id": r["severity_id"], "severity": SEVERITY[r["severity_id"]],
        "status_id": status_id, "status": status,
        "message": (facts or {}).get("what") or f"{r['title']} {a.key}: no longer seen",
        "count": a.count,
        "start_time": a.first_seen // 1_000_000, "end_time": last_seen // 1_000_000,
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "pktstream", "vendor_name": "pktstream", "feature": {"name": "alerts"}},
            "uid": hashlib.sha256(f"{a.uid}|{activity}|{a.last_window}".encode()).hexdigest()[:32],
            "correlation_uid": a.uid,
            "log_name": "pktstream.alerts",
        },
        "finding_info": {
            "uid": a.uid, "title": f"{r['title']}: {a.key}", "desc": r["rule"],
            "types": [a.rule],
            "first_seen_time": a.first_seen // 1_000_000, "last_seen_time": last_seen // 1_000_000,
            "analytic": {"name": a.rule, "uid": a.rule, "type_id": 1, "type": "Rule"},
            "attacks": [{"technique": {"uid": tech_uid, "name": tech_name},
                         "tactic": {"uid": tactic_uid, "name": tactic_name}, "version": "v15"}],
        },
        "unmapped": {"pktstream": {"rule": a.rule, "key": a.key, "windows": a.windows,
                                   "window_start": a.last_window // 1_000_000,
                                   "window_s": window_ns // SEC}},
    }
    if facts is not None:
        s = facts["sample"]
        doc["evidences"] = [{
            "src_endpoint": {"ip": s["src"], "port": s["src_port"]},
            "dst_endpoint": {"ip": s["dst"], "port": s["dst_port"]},
            "connection_info": {"protocol_num": s["protocol"], "protocol_name": _proto_name(s["protocol"])},
            "data": {k: v for k, v in s.items() if k not in ("src", "dst", "src_port", "dst_port", "protocol")},
        }]
        doc["observables"] = [{"name": "src_endpoint.ip", "type_id": 2, "type": "IP Address", "value": s["src"]},
                              {"name": "dst_endpoint.ip", "type_id": 2, "type": "IP Address", "value": s["dst"]}]
        doc["unmapped"]["pktstream"].update({"window_count": facts["count"], "window_bytes": facts["bytes"],
                                             "distinct": facts["distinct"], "top": facts["top"],
                                             "seen_by": facts["seen_by"]})
    return doc


def avro_record(doc: dict[str, Any]) -> dict[str, Any]:
    """The Avro variant (schemas/alert.avsc) of an OCSF alert document."""
    p = doc["unmapped"]["pktstream"]
    fi = doc["finding_info"]
    ev = (doc.get("evidences") or [{}])[0]
    att = fi["attacks"][0]
    return {
        "uid": fi["uid"], "rule": p["rule"], "key": p["key"], "activity": doc["activity_name"].lower(),
        "time_ms": doc["time"], "severity_id": doc["severity_id"], "title": fi["title"], "message": doc["message"],
        "technique": att["technique"]["uid"], "technique_name": att["technique"]["name"],
        "tactic": att["tactic"]["uid"], "first_seen_ms": fi["first_seen_time"], "last_seen_ms": fi["last_seen_time"],
        "count": doc["count"], "window_start_ms": p["window_start"], "window_s": p["window_s"],
        "window_count": p.get("window_count", 0), "distinct": p.get("distinct", 0),
        "top": [{"value": str(t["value"]), "count": int(t["count"])} for t in p.get("top", [])],
        "src": (ev.get("src_endpoint") or {}).get("ip", ""), "dst": (ev.get("dst_endpoint") or {}).get("ip", ""),
        "src_port": (ev.get("src_endpoint") or {}).get("port", 0),
        "dst_port": (ev.get("dst_endpoint") or {}).get("port", 0),
        "protocol": (ev.get("connection_info") or {}).get("protocol_num", 0),
        "seen_by": list(p.get("seen_by", [])),
        "ocsf_version": doc["metadata"]["version"],
    }


def render(doc: dict[str, Any]) -> str:
    """One terminal line per alert event."""
    p = doc["unmapped"]["pktstream"]
    tech = doc["finding_info"]["attacks"][0]["technique"]["uid"]
    return (f"{doc['activity_name'].upper():6} {doc['severity'].upper():8} {p['rule']:15} {p['key']}  "
            f"{doc['message']}  [{tech}] id={doc['finding_info']['uid'][:12]}")
