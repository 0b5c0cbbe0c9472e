"""Community ID v1 (https://github.com/corelight/community-id-spec): one string per conversation,
the same whichever side a packet came from, that Zeek (``community_id``), Suricata (EVE
``community_id``), Packetbeat (``network.community_id``), Elastic and most SIEMs compute, so that a
finding here joins their records of the same conversation.

The hash input is the seed (2 bytes), the two addresses, the protocol, a zero byte and, for the
protocols with ports (TCP, UDP, SCTP, ICMP, ICMPv6), the two ports, in network byte order; the
endpoint with the lower (address, port) comes first. ICMP has no ports: its type and the type of
the answer (echo and echo reply, and the like) stand for them, so both directions hash alike; a
type without an answer type gives the type and the code, in the packet's order (one way)."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct

from pktstream.schemas.protocols import PROTO_ICMP, PROTO_ICMP6

PROTO_TCP, PROTO_UDP, PROTO_SCTP = 6, 17, 132
_PORTED = {PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_ICMP, PROTO_ICMP6}

# an ICMP type and the type of its answer (the spec's table, after Zeek's)
_ICMP4_ANSWER = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
_ICMP6_ANSWER = {128: 129, 129: 128, 130: 131, 131: 130, 133: 134, 134: 133, 135: 136, 136: 135,
                 139: 140, 140: 139, 144: 145, 145: 144}


def community_id(src: str | bytes, dst: str | bytes, proto: int, sport: int = 0, dport: int = 0,
                 seed: int = 0) -> str:
    """The Community ID ("1:" and a base64 SHA-1) of a packet's conversation. Addresses as text or
    packed (4 or 16 bytes); for ICMP and ICMPv6, ``sport`` is the type and ``dport`` the code (as
    the packet records hold them)."""
    a = src if isinstance(src, bytes) else ipaddress.ip_address(src).packed
    b = dst if isinstance(dst, bytes) else ipaddress.ip_address(dst).packed
    if len(a) != len(b) or len(a) not in (4, 16):
        raise ValueError("community_id: two addresses of one family")
    one_way = False
    if proto in (PROTO_ICMP, PROTO_ICMP6):
        answers = _ICMP4_ANSWER if proto == PROTO_ICMP else _ICMP6_ANSWER
        if sport in answers:
            dport = answers[sport]
        else:
            one_way = True
    if proto in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
        return ported_id(a, b, proto, sport, dport, seed)
    if not one_way and (b < a or (a == b and dport < sport)):
        a, b, sport, dport = b, a, dport, sport
    data = struct.pack("!H", seed & 0xFFFF) + a + b + struct.pack("!BB", proto & 0xFF, 0)
    if proto in _PORTED:
        data += struct.pack("!HH", sport & 0xFFFF, dport & 0xFFFF)
    return "1:" + base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode()


_PROTO_PORTS = struct.Struct("!BxHH")


def ported_id(a: bytes, b: bytes, proto: int, sport: int, dport: int, seed: int = 0) -> str:
    """community_id of a TCP, UDP or SCTP conversation from its packed addresses (4 or 16 bytes each,
    one family: not checked), without the parsing and checks: the per-record path of activity."""
    if b < a or (a == b and dport < sport):
        a, b, sport, dport = b, a, dport, sport
    data = struct.pack("!H", seed & 0xFFFF) + a + b + _PROTO_PORTS.pack(proto & 0xFF, sport & 0xFFFF, dport & 0xFFFF)
    return "1:" + base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode()
