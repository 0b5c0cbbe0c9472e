"""Keeping secrets out of Kafka: payload redaction and where payload is captured at all.

Both work on a whole batch of kernel records, in place, before encoding:
``redact`` runs one C loop over the payload prefixes (producer/_redact.c: credential headers by
name and by ending, the values of credential names wherever they sit — query and fragment
parameters, form fields, JSON members at any depth, multipart fields — URL userinfo, tokens and
keys by their shape, HTTP/2 header blocks; values replaced by ``*``, lengths unchanged;
docs/operations.md "Payload privacy" lists every rule); ``PayloadScope`` clears the
payload of records outside the configured ports and networks with numpy
masks (their ``payload_len`` stays, only the bytes go).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from pktstream.runtime.native import load_native
from pktstream.schemas.record import PAYLOAD_OFFSET

_native = load_native()


def names_buffer(names: Sequence[str]) -> bytes:
    """Extra credential names as the C loop takes them: lower case, each ended by a NUL, then an
    empty one."""
    return b"".join(n.strip().lower().encode() + b"\0" for n in names if n.strip()) + b"\0"


KEEP_HTTP2_HEADERS = 1  # _redact.c's flag


def redact(records: npt.NDArray[np.void], extra: bytes = b"\0", keep_http2_headers: bool = False) -> int:
    """Redact the payload prefixes of a batch in place; returns how many records changed.
    ``extra``: more credential names (``names_buffer``); ``keep_http2_headers``: leave HTTP/2 header
    blocks (HPACK) as captured."""
    if len(records) == 0 or records.dtype.names is None or "payload" not in records.dtype.names:
        return 0
    if not records.flags.c_contiguous:
        raise ValueError("redact needs a contiguous batch")
    fields = records.dtype.fields
    assert fields is not None
    stride = records.dtype.itemsize
    width = fields["payload"][0].itemsize
    base = records.ctypes.data
    cap_off = fields["cap_len"][1]
    return int(_native.pkt_redact(base + PAYLOAD_OFFSET, len(records), stride, width, base + cap_off, stride // 2,
                                  extra, KEEP_HTTP2_HEADERS if keep_http2_headers else 0))


class PayloadScope:
    """Which records may carry payload: by port (either side) and by network (either address)."""

    def __init__(self, ports: Sequence[int] = (), networks: Sequence[str] = ()) -> None:
        self.ports = np.array(sorted(set(ports)), dtype=np.uint16)
        self.nets: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]] = []
        for text in networks:
            net = ipaddress.ip_network(text, strict=False)
            if net.version == 4:
                net = ipaddress.IPv6Network((b"\0" * 10 + b"\xff\xff" + net.network_address.packed,
                                             96 + net.prefixlen))
            mask = np.frombuffer(net.netmask.packed, dtype=np.uint8)
            self.nets.append((mask, np.frombuffer(net.network_address.packed, dtype=np.uint8)))

    @property
    def everything(self) -> bool:
        return self.ports.size == 0 and not self.nets

    def allowed(self, records: npt.NDArray[np.void]) -> npt.NDArray[np.bool_]:
        ok = np.ones(len(records), dtype=np.bool_)
        if self.ports.size:
            ok &= np.isin(records["src_port"], self.ports) | np.isin(records["dst_port"], self.ports)
        if self.nets:
            in_net = np.zeros(len(records), dtype=np.bool_)
            for mask, net in self.nets:
                for field in ("src_addr", "dst_addr"):
                    in_net |= ((records[field] & mask) == net).all(axis=1)
            ok &= in_net
        return ok

    def apply(self, records: npt.NDArray[np.void]) -> int:
        """Clear the payload of records out of scope, in place; returns how many were cleared."""
        if self.everything or records.dtype.names is None or "payload" not in records.dtype.names:
            return 0
        out = ~self.allowed(records)
        records["cap_len"][out] = 0
        records["payload"][out] = 0
        return int(out.sum())
