"""The API catalog: what an API is, for the usage and alerts consumers.

A YAML file::

    apis:
      - name: users.get            # the API's name in the usage topic
        host: api.example.com      # HTTP Host header or TLS server name; "*.example.com" matches subdomains
        address: 10.0.0.0/24       # destination address or network
        port: 443                  # destination port
        method: GET                # HTTP method
        path: /v1/users/{id}       # route template; {x} matches one path segment
        rate_limit_per_min: 600    # requests per client per minute before the alerts consumer warns
      - name: example.com catch-all
        host: api.example.com      # no method or path: every other request to this host

Every key but ``name`` is optional; an entry matches a request when all the keys it has match.
The most specific entry wins (a path beats a method beats a host beats an address beats a port),
then the longest literal path. Traffic no entry matches is grouped by host (or address) and port,
with IDs, credentials and e-mail addresses in paths made placeholders (``parse.normalize_path``:
``{id}``, ``{token}``, ``{email}``), never dropped.

``import_openapi`` turns an OpenAPI 3 document's operations into entries.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pktstream.consumers.engine.parse import METHODS, normalize_path
from pktstream.runtime.errors import ConfigError
from pktstream.schemas.decode import addr_text

_SEGMENT = re.compile(r"\{[^/{}]+\}")
OTHER = "_OTHER"  # rows of folded names (usage/caps.py) end with it: no catalog entry may


@dataclass(frozen=True)
class ApiRef:
    name: str
    host: str
    port: int
    protocol: str  # http, tls, h2c, tcp, udp
    matched: bool  # named by the catalog
    rate_limit_per_min: int = 0


@dataclass
class Entry:
    name: str
    host: str | None = None
    address: ipaddress.IPv6Network | None = None
    port: int | None = None
    method: str | None = None
    path: str | None = None
    rate_limit_per_min: int = 0
    regex: re.Pattern[str] | None = field(default=None, repr=False)

    def specificity(self) -> tuple[int, ...]:
        literal = len(_SEGMENT.sub("", self.path or ""))
        return (self.path is not None, self.method is not None, self.host is not None,
                self.address is not None, self.port is not None, literal)

    def matches(self, host: str, addr: ipaddress.IPv6Address, port: int, method: str, path: str) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.address is not None and addr not in self.address:
            return False
        if self.host is not None:
            if self.host.startswith("*."):
                if not host.endswith(self.host[1:]):
                    return False
            elif host != self.host:
                return False
        if self.method is not None and method != self.method:
            return False
        return not (self.regex is not None and not self.regex.fullmatch(path))


def _template_regex(path: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in _SEGMENT.finditer(path):
        out.append(re.escape(path[pos : m.start()]))
        out.append(r"[^/]+")
        pos = m.end()
    out.append(re.escape(path[pos:]))
    return re.compile("".join(out) + "/?")


def _network(text: str) -> ipaddress.IPv6Network:
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv4Network):  # records carry IPv4 as IPv4-mapped IPv6
        return ipaddress.IPv6Network(f"::ffff:{net.network_address}/{96 + net.prefixlen}")
    return net


class Catalog:
    def __init__(self, entries: list[Entry] | None = None) -> None:
        self.entries = sorted(entries or [], key=lambda e: e.specificity(), reverse=True)
        self._cache: dict[tuple[Any, ...], ApiRef] = {}
        self._addrs: dict[bytes, ipaddress.IPv6Address] = {}  # a server's requests differ, its address not

    @classmethod
    def from_data(cls, data: Any, source: str = "catalog") -> Catalog:
        problems: list[str] = []
        if data is None:
            return cls()
        if not isinstance(data, dict) or not isinstance(data.get("apis", []), list):
            raise ConfigError([f"{source}: expected a mapping with a list under 'apis'"])
        entries = []
        names: set[str] = set()
        for i, raw in enumerate(data.get("apis") or []):
            where = f"{source}: apis[{i}]"
            if not isinstance(raw, dict):
                problems.append(f"{where}: expected a mapping")
                continue
            unknown = set(raw) - {"name", "host", "address", "port", "method", "path", "rate_limit_per_min"}
            if unknown:
                problems.append(f"{where}: unknown keys {sorted(unknown)}")
            name = raw.get("name")
            if not isinstance(name, str) or not name:
                problems.append(f"{where}: 'name' is required")
                continue
            if name in names:
                problems.append(f"{where}: name {name!r} appears twice")
            if name == OTHER or name.endswith(f"/{OTHER}"):
                problems.append(f"{where}: name {name!r} is reserved (usage rows of folded names, docs/usage.md)")
            names.add(name)
            e = Entry(name=name)
            if raw.get("host") is not None:
                e.host = str(raw["host"]).lower()
            if raw.get("address") is not None:
                try:
                    e.address = _network(str(raw["address"]))
                except ValueError as err:
                    problems.append(f"{where}: address: {err}")
            if raw.get("port") is not None:
                port = raw["port"]
                if not isinstance(port, int) or not 0 < port < 65536:
                    problems.append(f"{where}: port must be 1..65535, got {port!r}")
                else:
                    e.port = port
            if raw.get("method") is not None:
                method = str(raw["method"]).upper()
                if method not in METHODS[1:]:
                    problems.append(f"{where}: method {method!r} is not one of {', '.join(METHODS[1:])}")
                e.method = method
            if raw.get("path") is not None:
                path = str(raw["path"])
                if not path.startswith("/"):
                    problems.append(f"{where}: path must start with '/', got {path!r}")
                e.path = path
                e.regex = _template_regex(path)
            rl = raw.get("rate_limit_per_min", 0)
            if not isinstance(rl, int) or rl < 0:
                problems.append(f"{where}: rate_limit_per_min must be a whole number >= 0")
            else:
                e.rate_limit_per_min = rl
            entries.append(e)
        if problems:
            raise ConfigError(problems)
        return cls(entries)

    @classmethod
    def load(cls, path: str | Path | None) -> Catalog:
        if not path:
            return cls()
        return cls.from_data(read_yaml(path, f"catalog {path}"), str(path))

    def match(self, host: str, addr16: bytes, port: int, method: str, path: str, protocol: str,
              partial: bool = False) -> ApiRef:
        """The API a request (or, with method and path empty, a connection) belongs to.

        ``partial``: the request line was cut (split across packets, or longer than the payload
        prefix), so the path is not known; only entries without a path can match."""
        if partial:
            path = ""
        key = (host, addr16, port, method, path, protocol, partial)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        addr = self._addrs.get(addr16)
        if addr is None:
            if len(self._addrs) > 65536:
                self._addrs.clear()
            addr = self._addrs[addr16] = ipaddress.IPv6Address(addr16)
        for e in self.entries:
            if (e.method is not None or e.path is not None) and not method:
                continue
            if e.path is not None and partial:
                continue
            if e.matches(host, addr, port, method, path):
                ref = ApiRef(e.name, host, port, protocol, True, e.rate_limit_per_min)
                break
        else:
            where = host or addr_text(addr16)
            if protocol == "http" and method and partial:
                name = f"{where}:{port} {method} (partial)"
            elif protocol == "http" and method:
                name = f"{where}:{port} {method} {normalize_path(path or '/')}"
            elif protocol in ("tcp", "udp"):
                name = f"{where}:{port}/{protocol}"
            else:
                name = f"{where}:{port} ({protocol})"
            ref = ApiRef(name, host, port, protocol, False)
        if len(self._cache) > 200_000:
            self._cache.clear()
        self._cache[key] = ref
        return ref


def unmatched_ref(name: str, server: str) -> ApiRef:
    """What ``Catalog.match`` said of traffic no entry names, from the name it gave and the server
    (``address:port``) the traffic went to: the naming in ``match`` read backwards (a Host header equal
    to the server's address reads as no Host)."""
    address, _, port_text = server.rpartition(":")
    port = int(port_text) if port_text.isdigit() else 0
    where, protocol = "", "tcp"
    for proto in ("tcp", "udp"):
        if name.endswith(f":{port}/{proto}"):
            where, protocol = name[: -len(f":{port}/{proto}")], proto
            break
    else:
        m = re.fullmatch(rf"(.*):{port} \(([a-z0-9]+)\)", name, re.DOTALL)
        if m is not None:
            where, protocol = m[1], m[2]
        elif f":{port} " in name:  # host:port METHOD /path, host:port METHOD (partial)
            where, protocol = name.split(f":{port} ", 1)[0], "http"
    return ApiRef(name, "" if where == address else where, port, protocol, False)


def read_yaml(path: str | Path, what: str, kind: str = "valid YAML") -> Any:
    """A YAML file's content; an unreadable file or text that does not parse is a ConfigError
    that starts with ``what``."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError([f"{what}: {e.strerror}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"{what}: not {kind}: {e}"]) from None


def import_openapi(doc: Any, host: str | None = None, port: int | None = None) -> dict[str, Any]:
    """An OpenAPI 3 document's operations as catalog entries (a catalog document).

    The first server URL gives the host, the port and a base path unless ``host``/``port`` are
    given; each operation becomes an entry named by its operationId (else "METHOD path")."""
    from urllib.parse import urlsplit

    if not isinstance(doc, dict) or not str(doc.get("openapi", "")).startswith("3"):
        raise ConfigError(["not an OpenAPI 3 document (no 'openapi: 3.x' key)"])
    base = ""
    servers = doc.get("servers") or []
    if servers and isinstance(servers[0], dict) and servers[0].get("url"):
        u = urlsplit(str(servers[0]["url"]))
        if u.hostname and host is None:
            host = u.hostname
        if port is None and u.hostname:
            port = u.port or (443 if u.scheme == "https" else 80)
        base = u.path.rstrip("/")
    apis: list[dict[str, Any]] = []
    for path, ops in (doc.get("paths") or {}).items():
        if not isinstance(ops, dict):
            continue
        for method, op in ops.items():
            if method.upper() not in METHODS[1:] or not isinstance(op, dict):
                continue
            full = base + str(path)
            entry: dict[str, Any] = {"name": op.get("operationId") or f"{method.upper()} {full}",
                                     "method": method.upper(), "path": full}
            if host:
                entry["host"] = host
            if port:
                entry["port"] = port
            rl = op.get("x-rate-limit-per-min")
            if isinstance(rl, int):
                entry["rate_limit_per_min"] = rl
            apis.append(entry)
    if host:
        apis.append({"name": f"{host} other", "host": host, **({"port": port} if port else {})})
    return {"apis": apis}
