"""SYN flood seen from the server's side: its SYN-ACKs that no ACK follows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import Add, Detector, Evidence, View, Window, addr_text
from pktstream.consumers.alerts.tables import AlertsState
from pktstream.consumers.engine.features import flow_hash, mix
from pktstream.schemas.protocols import ACK, PROTO_TCP, SYN

SYNACK = 1 << 20  # a connection's group counts its SYN-ACKs in the high part of n, the client's ACKs below


class SynAckUnanswered(Detector, name="synack_unanswered", order=32, severity_id=4,
                       technique=("T1499.001", "OS Exhaustion Flood"), tactic=("TA0040", "Impact")):
    """SYN flood (server side): the host answered at least min_unanswered connection attempts to one address
    within a window with a SYN-ACK that no ACK of the client followed, and they are at least min_ratio of the
    SYN-ACKs it sent (unlike syn_flood, SYNs to closed ports, which are answered by resets, do not count)."""

    defaults: ClassVar[dict[str, Any]] = {"enabled": True, "window_s": 10, "min_unanswered": 500, "min_ratio": 0.8}
    columns = ("src_addr", "dst_addr", "src_port", "dst_port", "protocol", "flags_or", "fh", "direction")
    answers = True

    def source_rows(self, rows: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """The host's SYN-ACKs go to its own (the server's) partition."""
        out: npt.NDArray[np.bool_] = (rows["direction"] == 1) & (rows["protocol"] == PROTO_TCP) \
            & ((rows["flags_or"] & (SYN | ACK)) == (SYN | ACK))
        return out

    def select(self, v: View, state: AlertsState) -> Iterable[Add]:
        r = v.rows
        tcp = v.protocol == PROTO_TCP
        # the server's SYN-ACKs, keyed by the server, counted per connection (the client's flow hash)
        sa = np.flatnonzero(v.egress_src & tcp & ((v.flags_or & (SYN | ACK)) == (SYN | ACK)))
        client_flow = flow_hash(r["dst_addr"][sa], r["src_addr"][sa], v.dst_port[sa], v.src_port[sa],
                                v.protocol[sa])
        yield Add(sa, mix(v.hs[sa]), item=client_flow, n=SYNACK, f=client_flow)  # (f: the connection's, as the ACKs')
        # the clients' packets with ACK on those connections (a completed handshake, or more)
        ack = np.flatnonzero(v.dst_rows & tcp & ((v.flags_or & ACK) != 0))
        yield Add(ack, mix(v.hd[ack]), item=v.fh[ack], n=1)

    def fire(self, w: Window) -> npt.NDArray[np.bool_]:
        n = w.c["n"]
        synacked = n >= SYNACK
        unanswered = synacked & ((n % SYNACK) == 0)
        un = w.per_key(unanswered.astype(np.int64))
        sent = w.per_key(synacked.astype(np.int64))
        out: npt.NDArray[np.bool_] = (un >= self.settings["min_unanswered"]) \
            & (un >= self.settings["min_ratio"] * np.maximum(sent, 1))
        return out

    def describe(self, e: Evidence) -> tuple[str, str]:
        n = e.c["n"][e.rows]
        un = int(((n >= SYNACK) & (n % SYNACK == 0)).sum())
        sent = int((n >= SYNACK).sum())
        # the server: the source of a SYN-ACK group's sample (an ACK group's is a client)
        server = addr_text(e.c["src_addr"][e.rows[int(np.argmax(n >= SYNACK))]])
        return server, f"{un} of {sent} SYN-ACKs {server} sent got no ACK"
