"""Stage three of the producer: one batch of kernel records becomes one packet-topic message.

Payload scope and redaction run in place on the batch, ``schemas.packets.to_columns`` maps the
records to the schema's columns (sequence numbers, wall-clock time), and the container writer
encodes them as one Avro Object Container; the message's headers carry the sequence range.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pktstream.producer.privacy import PayloadScope, names_buffer, redact
from pktstream.schemas import headers as H
from pktstream.schemas import packets
from pktstream.schemas.container import ContainerWriter


@dataclass
class Message:
    value: bytes
    headers: list[tuple[str, bytes]]
    records: int
    ts_first_ns: int
    ts_last_ns: int


class BatchEncoder:
    def __init__(self, writer: ContainerWriter, static_headers: list[tuple[str, bytes]], payload_bytes: int,
                 scope: PayloadScope, redact_credentials: bool, redact_names: Sequence[str] = (),
                 keep_http2_headers: bool = False) -> None:
        self.writer = writer
        self.static_headers = static_headers
        self.payload_bytes = payload_bytes
        self.scope = scope
        self.redact_credentials = redact_credentials
        self.extra_names = names_buffer(redact_names)
        self.keep_http2_headers = keep_http2_headers
        self.next_seq = 0
        self.redacted = 0  # records whose payload had credentials replaced
        self.payload_cleared = 0  # records whose payload was out of scope

    def encode(self, recs: npt.NDArray[np.void], ringbuf_full: int = 0) -> Message:
        """One message of the records; ``ringbuf_full``: the records the kernel could not queue since
        the previous message was cut (the header is absent when there were none)."""
        n = len(recs)
        if self.payload_bytes:
            self.payload_cleared += self.scope.apply(recs)
            if self.redact_credentials:
                self.redacted += redact(recs, self.extra_names, self.keep_http2_headers)
        seq_first = self.next_seq
        offset = time.time_ns() - time.monotonic_ns()
        cols = packets.to_columns(recs, seq_first, offset)
        value = self.writer.container(cols, n)
        headers = [
            *self.static_headers,
            (H.RECORDS, str(n).encode()),
            (H.SEQ_FIRST, str(seq_first).encode()),
            (H.SEQ_LAST, str(seq_first + n - 1).encode()),
            (H.TS_LAST, str(int(cols["ts_ns"].max())).encode()),
        ]
        egress = int(np.count_nonzero(recs["direction"]))
        if egress:
            headers.append((H.RECORDS_EGRESS, str(egress).encode()))
        if ringbuf_full > 0:
            headers.append((H.RINGBUF_FULL, str(ringbuf_full).encode()))
        self.next_seq += n
        return Message(value, headers, n, int(cols["ts_ns"][0]), int(cols["ts_ns"][-1]))
