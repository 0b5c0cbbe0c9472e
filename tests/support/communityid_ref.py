"""The Community ID as Corelight's reference implementation (the ``communityid`` package from PyPI)
computes it: what the tests compare pktstream's with."""

from __future__ import annotations

import communityid


def reference(src: str, dst: str, proto: int, sport: int, dport: int, seed: int = 0) -> str:
    cid = communityid.CommunityID(seed=seed)
    if proto == 6:
        tpl = communityid.FlowTuple.make_tcp(src, dst, sport, dport)
    elif proto == 17:
        tpl = communityid.FlowTuple.make_udp(src, dst, sport, dport)
    elif proto == 132:
        tpl = communityid.FlowTuple.make_sctp(src, dst, sport, dport)
    elif proto == 1:
        tpl = communityid.FlowTuple.make_icmp(src, dst, sport, dport)
    elif proto == 58:
        tpl = communityid.FlowTuple.make_icmp6(src, dst, sport, dport)
    else:
        tpl = communityid.FlowTuple.make_ip(src, dst, proto)
    return str(cid.calc(tpl))
