"""Reflection/amplification: the answers of abused UDP services (DNS, NTP, SSDP, memcached, CLDAP,
CharGEN, ...) converging on one host, judged by each service's own answer size.

A reflected attack is many UDP answers from one service port, each much larger than the request
that provoked it. What "large" means differs by service (an NTP monlist answer is a 510-byte
frame where a time answer is 90; SSDP answers are about 300 bytes; DNS and CLDAP answers of an
attack are several kilobytes and arrive as IP fragments), so each port has its own minimum mean
size (``min_mean_bytes_by_port``; ``min_mean_bytes`` for the others), and a host's traffic fires
when its bytes reach the sum of those minimums over its packets. Non-first fragments carry no
ports: the UDP fragments towards the host count with its amplification traffic (at most
``MAX_FRAGMENTS`` per datagram from a service port), so a fragmented answer counts whole.
Defaults and their sources: docs/alerts.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import Add, Detector, Evidence, Setup, View, Window
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import mix
from pktstream.schemas.protocols import PROTO_UDP
from pktstream.schemas.record import F_FRAGMENT, F_L4_SKIPPED

FRAGMENT = 1 << 16  # the item of non-first UDP fragments (no port: the IP header is all they have)
MAX_FRAGMENTS = 44  # a 65,507-byte datagram in 1,480-byte fragments: the first and 44 more

SERVICES = {17: "QOTD", 19: "CharGEN", 53: "DNS", 111: "Portmap", 123: "NTP", 137: "NetBIOS", 161: "SNMP",
            389: "CLDAP", 520: "RIPv1", 1900: "SSDP", 3283: "ARMS", 3702: "WS-Discovery", 5353: "mDNS",
            5683: "CoAP", 10001: "Ubiquiti discovery", 11211: "memcached"}


class Amplification(Detector, name="amplification", order=60, severity_id=4,
                    technique=("T1498.002", "Reflection Amplification"), tactic=("TA0040", "Impact"), light=True):
    """Reflection/amplification attack: at least min_packets UDP packets from amplification service ports
    (ports: DNS, NTP, SSDP, memcached, CLDAP, CharGEN, SNMP, NetBIOS, Portmap, RIPv1, QOTD, mDNS, CoAP,
    WS-Discovery, ARMS, Ubiquiti) towards one host in a window, their fragments included, and at least the
    service's answer size on average (min_mean_bytes_by_port, min_mean_bytes for other ports)."""

    defaults: ClassVar[dict[str, Any]] = {
        "enabled": True, "window_s": 10, "min_packets": 500, "min_mean_bytes": 512,
        "ports": sorted(SERVICES),
        # the least mean frame size (bytes on the wire) of an attack's answers per service: below
        # the answers of the abused request, above the service's everyday answers (docs/alerts.md)
        "min_mean_bytes_by_port": {17: 150, 19: 200, 53: 512, 111: 200, 123: 200, 137: 180, 161: 1000, 389: 512,
                                   520: 300, 1900: 200, 3283: 512, 3702: 512, 5353: 300, 5683: 300, 10001: 150,
                                   11211: 512},
    }
    columns = ("dst_addr", "protocol", "src_port", "packets", "nbytes", "rflags")

    def __init__(self, settings: dict[str, Any], setup: Setup) -> None:
        super().__init__(settings, setup)
        self.ports = np.array(sorted(settings["ports"]), dtype=np.int64)
        # a table of each port's minimum mean size, indexed by port (the fragment item: 0)
        self.min_mean = np.full(FRAGMENT + 1, int(settings["min_mean_bytes"]), dtype=np.int64)
        for port, size in settings["min_mean_bytes_by_port"].items():
            self.min_mean[int(port)] = int(size)
        self.min_mean[FRAGMENT] = 0

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        udp = v.dst_rows & (v.protocol == PROTO_UDP)
        sel = np.flatnonzero(udp & np.isin(v.src_port, self.ports))
        yield Add(sel, mix(v.hd[sel]), item=v.src_port[sel])
        rest = (v.rows["rflags"] & (F_FRAGMENT | F_L4_SKIPPED)) == (F_FRAGMENT | F_L4_SKIPPED)
        sel = np.flatnonzero(udp & rest)
        yield Add(sel, mix(v.hd[sel]), item=FRAGMENT)

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        cfg = self.settings
        item = w.c["item"].astype(np.int64)
        frag = item == FRAGMENT
        n_g, b_g = w.c["n"].astype(np.float64), w.c["b"].astype(np.float64)
        n_ports = w.per_key(np.where(frag, 0, n_g))
        b_ports = w.per_key(np.where(frag, 0, b_g))
        n_frag = w.per_key(np.where(frag, n_g, 0))
        b_frag = w.per_key(np.where(frag, b_g, 0))
        # fragments count with a host's service answers, at most MAX_FRAGMENTS per answer
        share = np.minimum(n_frag, n_ports * MAX_FRAGMENTS) / np.maximum(n_frag, 1)
        n = n_ports + n_frag * share
        b = b_ports + b_frag * share
        need = w.per_key(np.where(frag, 0, n_g * self.min_mean[np.minimum(item, FRAGMENT)]))
        out: npt.NDArray[np.bool_] = (n_ports > 0) & (n >= cfg["min_packets"]) & (b >= need)
        return out

    def item_text(self, c: dict[str, Any], r: int, item: int) -> str:
        return "fragments" if item == FRAGMENT else str(item)  # the service port (its name: the message)

    def describe(self, e: Evidence) -> tuple[str, str]:
        items = e.c["item"][e.rows].astype(np.int64)
        ports = sorted({int(i) for i in items.tolist() if i != FRAGMENT})
        names = ", ".join(SERVICES.get(p, str(p)) for p in ports)
        return e.dst, f"{e.n} packets ({e.b} bytes) from amplification ports ({names}) to {e.dst}"
