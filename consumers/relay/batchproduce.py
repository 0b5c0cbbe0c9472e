"""Many messages of one buffer into a confluent-kafka Producer's librdkafka handle with one call.

confluent-kafka's ``Producer.produce`` costs about a microsecond per message in the calling thread
(argument parsing, a per-message state allocated, ``rd_kafka_producev``): for the relay, which
writes one message per packet record, that is most of its time. librdkafka's own
``rd_kafka_produce_batch`` enqueues a whole array of messages to one partition in one call; this
module calls it, through ctypes, on the same ``rd_kafka_t`` the Producer object wraps (so the
messages belong to the Producer's open transaction like any other), with the message array built by
numpy from the framed buffer's record ends.

The ``rd_kafka_t`` pointer is the first field after the object header of confluent-kafka's C
``Handle`` struct (src/confluent_kafka/src/confluent_kafka.h, unchanged through the 2.x releases).
That is an implementation detail of confluent-kafka, so it is checked before it is used: the
confluent-kafka major version, the handle's type (a producer), its name (``...#producer-N``), and
its queue length against ``len(producer)``; when any check fails, ``BatchProducer.attach`` returns
None and the caller produces message by message. ``PKTSTREAM_RELAY_PRODUCE=python`` turns it off.

Messages are copied by librdkafka (RD_KAFKA_MSG_F_COPY) and carry no per-message state, which
confluent-kafka's delivery callback skips (a failed delivery still fails the transaction). A batch
is only enqueued whole: room in the producer's queue is waited for first, and a batch librdkafka
takes in part raises BatchRefused (the caller aborts the transaction and goes back to its last
commit), so a partition's records never change order.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from pktstream.runtime.errors import PktstreamError

log = structlog.get_logger("pktstream.relay")

RD_KAFKA_PRODUCER = 0
# what a later try may not meet again: the local queue full, the transaction in a state to abort
RETRIABLE = {-184, -172}  # RD_KAFKA_RESP_ERR__QUEUE_FULL, RD_KAFKA_RESP_ERR__STATE
RD_KAFKA_MSG_F_COPY = 0x2
ENV = "PKTSTREAM_RELAY_PRODUCE"

# rd_kafka_message_t (librdkafka's public ABI, rdkafka.h) on a 64-bit platform
MESSAGE = np.dtype({"names": ["err", "rkt", "partition", "payload", "len", "key", "key_len", "offset", "private"],
                    "formats": ["<i4", "<u8", "<i4", "<u8", "<u8", "<u8", "<u8", "<i8", "<u8"],
                    "offsets": [0, 8, 16, 24, 32, 40, 48, 56, 64], "itemsize": 72})


class BatchRefused(Exception):
    """librdkafka took part of a batch only (the transaction must be aborted)."""


class Interrupted(Exception):
    """A stop was asked for while waiting for room in the producer's queue."""


def _librdkafka() -> ctypes.CDLL | None:
    """The librdkafka the confluent_kafka module loaded (the same library, so the same handles)."""
    import confluent_kafka  # noqa: F401  (loads it)

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "librdkafka" in line and "/" in line}
    except OSError:
        return None
    if len(paths) != 1:
        return None
    lib = ctypes.CDLL(paths.pop())
    vp, i32 = ctypes.c_void_p, ctypes.c_int32
    lib.rd_kafka_type.restype, lib.rd_kafka_type.argtypes = ctypes.c_int, [vp]
    lib.rd_kafka_name.restype, lib.rd_kafka_name.argtypes = ctypes.c_char_p, [vp]
    lib.rd_kafka_outq_len.restype, lib.rd_kafka_outq_len.argtypes = ctypes.c_int, [vp]
    lib.rd_kafka_topic_new.restype, lib.rd_kafka_topic_new.argtypes = vp, [vp, ctypes.c_char_p, vp]
    lib.rd_kafka_topic_destroy.restype, lib.rd_kafka_topic_destroy.argtypes = None, [vp]
    lib.rd_kafka_produce_batch.restype = ctypes.c_int
    lib.rd_kafka_produce_batch.argtypes = [vp, i32, ctypes.c_int, vp, ctypes.c_int]
    return lib


class BatchProducer:
    def __init__(self, lib: ctypes.CDLL, producer: Any, rk: int, topic: str, max_queue: int) -> None:
        self.lib, self.producer, self.rk, self.max_queue = lib, producer, rk, max_queue
        self.rkt = lib.rd_kafka_topic_new(rk, topic.encode(), None)
        if not self.rkt:
            raise OSError(f"rd_kafka_topic_new({topic!r}) failed")

    @classmethod
    def attach(cls, producer: Any, topic: str, max_queue: int) -> BatchProducer | None:
        """A batch producer on ``producer``'s handle, or None when it cannot be had safely."""
        if os.environ.get(ENV, "") == "python":
            return None
        try:
            import confluent_kafka

            v = confluent_kafka.version()
            if not str(v[0] if isinstance(v, tuple) else v).startswith("2.") or ctypes.sizeof(ctypes.c_void_p) != 8:
                return None
            lib = _librdkafka()
            if lib is None:
                return None
            if type(producer).__basicsize__ < object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p):
                return None  # not an object with a pointer after its header
            rk = ctypes.c_void_p.from_address(id(producer) + object.__basicsize__).value
            if not rk or lib.rd_kafka_type(rk) != RD_KAFKA_PRODUCER:
                return None
            if b"#producer-" not in (lib.rd_kafka_name(rk) or b"") or lib.rd_kafka_outq_len(rk) != len(producer):
                return None
            return cls(lib, producer, rk, topic, max_queue)
        except (OSError, AttributeError, ValueError) as e:
            log.warning("batch_produce_unavailable", error=str(e)[:200])
            return None

    def produce(self, partition: int, buf: bytes, ends: npt.NDArray[np.int64], key: bytes | None,
                should_stop: Callable[[], bool] = lambda: False) -> None:
        """The messages buf[ends[i-1]:ends[i]] (the first from 0) to the partition, in order, whole."""
        data = np.frombuffer(buf, dtype=np.uint8)
        base = data.ctypes.data
        kb = ctypes.create_string_buffer(key, len(key)) if key is not None else None
        chunk = max(1, self.max_queue // 2)  # (a block larger than the queue goes in parts, in order)
        for lo in range(0, len(ends), chunk):
            part = ends[lo : lo + chunk]
            n = len(part)
            while len(self.producer) + n > self.max_queue:  # room first: a batch is never taken in part
                if should_stop():
                    raise Interrupted
                self.producer.poll(0.05)
            msgs = np.zeros(n, dtype=MESSAGE)
            msgs["payload"][0] = base + (int(ends[lo - 1]) if lo else 0)
            msgs["payload"][1:] = base + part[:-1]
            msgs["len"][0] = int(part[0]) - (int(ends[lo - 1]) if lo else 0)
            msgs["len"][1:] = np.diff(part)
            if kb is not None:
                msgs["key"] = ctypes.addressof(kb)
                msgs["key_len"] = len(kb.raw)
            took = self.lib.rd_kafka_produce_batch(self.rkt, partition, RD_KAFKA_MSG_F_COPY, msgs.ctypes.data, n)
            if took != n:
                errs = sorted({int(e) for e in msgs["err"] if e})
                if not set(errs) <= RETRIABLE:
                    raise PktstreamError(f"librdkafka refused messages to the output topic: errors {errs}")
                raise BatchRefused(f"librdkafka took {took} of {n} messages (errors {errs})")

    def close(self) -> None:
        if self.rkt:
            self.lib.rd_kafka_topic_destroy(self.rkt)
            self.rkt = None
