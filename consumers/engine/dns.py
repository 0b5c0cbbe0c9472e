"""DNS messages in a payload prefix (RFC 1035): the header, the question and the answers the prefix
holds, each answer's data in presentation form.

A prefix is untrusted bytes and often cut short: ``parse`` never raises and never reads past the
bytes it is given; it returns None for what is not a DNS message with one question (or one whose
question the prefix cuts), and says when the prefix ended before the answers the header announces
(``cut``). Compression pointers must point backwards and past the header (so a name is read in
bounded steps, and a message's text never depends on its id); a name is at most 255 bytes, as the
RFC says; a name in an answer's data ends within the data.

Only the packets of port 53 reach it (the caller's filter), a small part of most traffic; it is
plain Python, and its cost per DNS packet is in docs/benchmarks.md.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field

# resource record types by name (RFC 3597's TYPEnnn for the others)
TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT", 28: "AAAA",
         33: "SRV", 35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY",
         50: "NSEC3", 52: "TLSA", 64: "SVCB", 65: "HTTPS", 99: "SPF", 251: "IXFR", 252: "AXFR", 255: "ANY",
         257: "CAA"}
CLASSES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
# header rcode -> (OCSF rcode_id, its caption); 12-15 are unassigned
RCODES = {0: (0, "NoError"), 1: (1, "FormError"), 2: (2, "ServError"), 3: (3, "NXDomain"), 4: (4, "NotImp"),
          5: (5, "Refused"), 6: (6, "YXDomain"), 7: (7, "YXRRSet"), 8: (8, "NXRRSet"), 9: (9, "NotAuth"),
          10: (10, "NotZone"), 11: (11, "DSOTYPENI")}
UNASSIGNED_RCODE = (24, "Unassigned")
# opcode -> (OCSF opcode_id, caption)
OPCODES = {0: (0, "Query"), 1: (1, "Inverse Query"), 2: (2, "Status"), 3: (3, "Reserved"), 4: (4, "Notify"),
           5: (5, "Update"), 6: (6, "DSO Message")}
OTHER_OPCODE = (99, "Other")
# header flag bit -> (OCSF flag_id, caption)
FLAGS = ((0x0400, 1, "Authoritative Answer"), (0x0200, 2, "Truncated Response"), (0x0100, 3, "Recursion Desired"),
         (0x0080, 4, "Recursion Available"), (0x0020, 5, "Authentic Data"), (0x0010, 6, "Checking Disabled"))
QR = 0x8000
MAX_ANSWERS = 64  # answers read from one message (a 256-byte prefix holds fewer)
MAX_RDATA_TEXT = 512  # characters of one answer's data kept (a long TXT record is cut)
_NAME_NAMES = (2, 5, 12, 39)  # NS, CNAME, PTR, DNAME: the data is a name


@dataclass
class Message:
    id: int
    flags: int  # the header's second 16 bits: QR, opcode, AA, TC, RD, RA, Z, AD, CD, rcode
    qdcount: int
    ancount: int
    qname: str  # presentation form ("." for the root)
    qtype: int
    qclass: int
    answers: list[tuple[int, int, int, str]] = field(default_factory=list)  # type, class, TTL, data
    cut: bool = False  # the prefix ended before an answer the header counts

    @property
    def response(self) -> bool:
        return bool(self.flags & QR)

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


class _Cut(Exception):
    """The prefix ended inside what was being read."""


class _Bad(Exception):
    """Not a well-formed name or record."""


def type_name(t: int) -> str:
    return TYPES.get(t) or f"TYPE{t}"


def class_name(c: int) -> str:
    return CLASSES.get(c) or f"CLASS{c}"


# bytes a label shows as they are: printable ASCII but "." and "\\" (deleting them leaves nothing)
_PLAIN = bytes(b for b in range(0x21, 0x7F) if b not in (0x2E, 0x5C))


def _label(raw: bytes) -> str:
    if not raw.translate(None, _PLAIN):
        return raw.decode("ascii")
    out = []
    for b in raw:
        if b in (0x2E, 0x5C):  # "." and "\" inside a label
            out.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def _name(buf: bytes, off: int) -> tuple[str, int]:
    """The name at ``off`` and the offset after it (where the message goes on, past a pointer)."""
    labels: list[str] = []
    end = -1
    size = 0
    lim = len(buf)
    while True:
        if off >= lim:
            raise _Cut
        n = buf[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= lim:
                raise _Cut
            ptr = ((n & 0x3F) << 8) | buf[off + 1]
            if ptr >= off or ptr < 12:  # only backwards (bounded steps, no loop), never into the header
                raise _Bad
            if end < 0:
                end = off + 2
            off = ptr
            continue
        if n & 0xC0:
            raise _Bad  # extended label types (RFC 6891 retired them)
        if n == 0:
            return (".".join(labels) if labels else "."), (end if end >= 0 else off + 1)
        if off + 1 + n > lim:
            raise _Cut
        size += n + 1
        if size > 255:
            raise _Bad
        labels.append(_label(buf[off + 1 : off + 1 + n]))
        off += 1 + n


def _u16(buf: bytes, off: int) -> int:
    if off + 2 > len(buf):
        raise _Cut
    return (buf[off] << 8) | buf[off + 1]


def _u32(buf: bytes, off: int) -> int:
    if off + 4 > len(buf):
        raise _Cut
    return int.from_bytes(buf[off : off + 4], "big")


def _txt(raw: bytes) -> str:
    parts = []
    i = 0
    while i < len(raw):
        n = raw[i]
        s = raw[i + 1 : i + 1 + n]
        i += 1 + n
        parts.append('"' + "".join(chr(b) if 0x20 <= b <= 0x7E and b not in (0x22, 0x5C) else
                                   ("\\" + chr(b) if b in (0x22, 0x5C) else f"\\{b:03d}") for b in s) + '"')
    return " ".join(parts)


def _rdata(buf: bytes, rtype: int, off: int, rdlen: int) -> str:
    """An answer's data in presentation form (RFC 3597's generic form for types not named here).
    A name in it must end within the data's declared length."""
    raw = buf[off : off + rdlen]
    end = off + rdlen

    def name_at(o: int) -> tuple[str, int]:
        text, after = _name(buf, o)
        if after > end:
            raise _Bad
        return text, after

    if rtype == 1 and rdlen == 4:
        return ".".join(str(b) for b in raw)
    if rtype == 28 and rdlen == 16:
        return ipaddress.IPv6Address(raw).compressed
    if rtype in _NAME_NAMES:
        return name_at(off)[0]
    if rtype == 15 and rdlen >= 3:
        return f"{_u16(buf, off)} {name_at(off + 2)[0]}"
    if rtype == 33 and rdlen >= 7:
        return f"{_u16(buf, off)} {_u16(buf, off + 2)} {_u16(buf, off + 4)} {name_at(off + 6)[0]}"
    if rtype == 6:
        mname, o = name_at(off)
        rname, o = name_at(o)
        if o + 20 > end:
            raise _Bad
        return f"{mname} {rname} " + " ".join(str(_u32(buf, o + 4 * k)) for k in range(5))
    if rtype in (16, 99):
        return _txt(raw)
    return f"\\# {rdlen} {raw.hex()}" if rdlen else "\\# 0"


_CACHE: dict[bytes, Message | None] = {}
_CACHE_MAX = 20_000


def parse(buf: bytes, tcp: bool = False) -> Message | None:
    """The DNS message a payload prefix begins with (``tcp``: after its two-byte length), or None
    when it is not one with exactly one question. Messages equal but for their id (the same query
    again, the same answer) are read once while they are among the last few thousand."""
    key = b"\x01" + buf[:2] + buf[4:] if tcp else b"\x00" + buf[2:]
    if key in _CACHE:
        hit = _CACHE[key]
        if hit is None:
            return None
        o = 2 if tcp else 0
        return dataclasses.replace(hit, id=(buf[o] << 8) | buf[o + 1], answers=list(hit.answers))
    m = _parse(buf, tcp)
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[key] = m
    return m


def _parse(buf: bytes, tcp: bool) -> Message | None:
    if tcp:
        if len(buf) < 14:
            return None
        declared = (buf[0] << 8) | buf[1]
        if declared < 12:
            return None
        buf = buf[2 : 2 + declared]
    if len(buf) < 12:
        return None
    ident, flags, qd, an = (buf[0] << 8) | buf[1], (buf[2] << 8) | buf[3], (buf[4] << 8) | buf[5], \
        (buf[6] << 8) | buf[7]
    if qd != 1 or (flags >> 11) & 0xF > 6:
        return None
    if not flags & QR and an > 0 and (flags >> 11) & 0xF == 0:
        return None  # a standard query with answers: not DNS (or not one worth a record)
    try:
        qname, off = _name(buf, 12)
        qtype, qclass = _u16(buf, off), _u16(buf, off + 2)
    except (_Cut, _Bad):
        return None  # a question cut by the prefix, or malformed: no lookup to record
    msg = Message(ident, flags, qd, an, qname, qtype, qclass)
    off += 4
    for _ in range(min(an, MAX_ANSWERS)):
        try:
            _owner, off = _name(buf, off)
            rtype, rclass, ttl, rdlen = _u16(buf, off), _u16(buf, off + 2), _u32(buf, off + 4), _u16(buf, off + 8)
            off += 10
            if off + rdlen > len(buf):
                raise _Cut
            data = _rdata(buf, rtype, off, rdlen)
        except _Cut:
            msg.cut = True
            break
        except _Bad:
            break  # what follows a malformed record cannot be found
        msg.answers.append((rtype, rclass, ttl, data[:MAX_RDATA_TEXT]))
        off += rdlen
    return msg
