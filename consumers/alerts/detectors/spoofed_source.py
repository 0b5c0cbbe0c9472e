"""Spoofed or impossible sources: LAND, multicast/broadcast sources, bogons on external interfaces."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import Add, Detector, Evidence, View, Window, addr_text
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import mix

LAND, MULTICAST, BOGON = 1, 2, 3
KIND_NAMES = {LAND: "LAND (source is the destination)", MULTICAST: "multicast or broadcast source",
              BOGON: "bogon or martian source"}

_BOGONS_V4 = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
              "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
              "203.0.113.0/24", "240.0.0.0/4"]
_BOGONS_V6 = ["::/128", "::1/128", "fc00::/7", "2001:db8::/32", "100::/64"]


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


BOGON_NETS = _nets(_BOGONS_V4 + _BOGONS_V6)
MCAST_NETS = _nets(["224.0.0.0/4", "255.255.255.255/32", "ff00::/8"])


def _be_words(words: npt.NDArray[Any]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """(n, 2) little-endian address words to big-endian (hi, lo) integers, for prefix tests."""
    b = np.ascontiguousarray(words, dtype="<u8").view(np.uint8).reshape(-1, 16)
    be = b.view(">u8").reshape(-1, 2)
    return be[:, 0].astype(np.uint64), be[:, 1].astype(np.uint64)


def in_nets(words: npt.NDArray[Any], nets: list[tuple[int, int, int, int]]) -> npt.NDArray[np.bool_]:
    hi, lo = _be_words(words)
    out = np.zeros(len(hi), dtype=bool)
    for a, b, mh, ml in nets:
        out |= ((hi & np.uint64(mh)) == np.uint64(a)) & ((lo & np.uint64(ml)) == np.uint64(b))
    return out


class SpoofedSource(Detector, name="spoofed_source", order=70, severity_id=3,
                    technique=("T1498", "Network Denial of Service"), tactic=("TA0040", "Impact")):
    """Spoofed or impossible source address: packets whose source is the destination itself (LAND), a multicast
    or broadcast address, or (on an interface listed in external_interfaces) a bogon or martian address; at
    least min_packets per destination and kind in a window."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 60, "min_packets": 1}
    columns = ("src_addr", "dst_addr", "ip_version", "origin", "packets")

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        r = v.rows
        if not len(r):
            return
        ipd = v.ip_dst
        land = ipd & (v.hs == v.hd)
        cand = np.flatnonzero(land)
        if len(cand):
            land[cand] = (r["src_addr"][cand] == r["dst_addr"][cand]).all(axis=1)
        mcast = ipd & in_nets(r["src_addr"], MCAST_NETS)
        code = np.where(land, LAND, np.where(mcast, MULTICAST, 0))
        external = set(self.setup.external_interfaces)
        if external:  # capture points named host/interface or interface
            ext_o = np.array([any(x == e or x.endswith("/" + e) for e in external) for x in v.f.strings] + [False])
            on_ext = ext_o[r["origin"]]
            bogon = ipd & on_ext & (code == 0) & in_nets(r["src_addr"], BOGON_NETS)
            code = np.where(bogon, BOGON, code)
        sel = np.flatnonzero(code > 0)
        yield Add(sel, mix(code[sel], v.hd[sel]), item=v.hs[sel], sub=code[sel])

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = w.n >= self.settings["min_packets"]
        return out

    def item_text(self, c: dict[str, Any], r: int, item: int) -> str:
        return addr_text(c["src_addr"][r])

    def describe(self, e: Evidence) -> tuple[str, str]:
        kind = KIND_NAMES[e.sub]
        return f"{kind.split(' (')[0]}->{e.dst}", f"{e.n} packets to {e.dst} with a {kind}"
