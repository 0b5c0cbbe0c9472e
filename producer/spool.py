"""A bounded on-disk spool for batches Kafka cannot take now.

A batch goes to the spool instead of being dropped when the producer's
memory queue is full (the broker is down or slow for longer than the queue
holds) or when it is still undelivered at shutdown. Each batch is one file
(written to a temporary name, then renamed, so a crash never leaves half a
batch); the files survive a producer restart and are replayed oldest first
once Kafka accepts messages again, each deleted only when Kafka has
acknowledged it. When the spool would exceed its size bound, the batch is
dropped and counted (``records_dropped``): the only way a record captured by
the producer is lost, and it is never silent.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pktstream.runtime.errors import PktstreamError

_SUFFIX = ".batch"


@dataclass
class SpooledBatch:
    path: Path
    topic: str
    key: bytes
    headers: list[tuple[str, bytes]]
    value: bytes
    records: int


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir.chmod(0o700)  # batches hold payload prefixes: this user's only, a spool from before too
        # one producer per spool: a second one would replay the same files (duplicates)
        self._lock = open(self.dir / ".lock", "w")  # noqa: SIM115 - held for the spool's life
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise PktstreamError(f"spool {self.dir} is in use by another producer; give this one its own "
                                 "spool_dir") from None
        for tmp in self.dir.glob("*.tmp"):  # a write interrupted by a crash
            tmp.unlink(missing_ok=True)
        files = list(self.dir.glob(f"*{_SUFFIX}"))
        self.bytes = sum(p.stat().st_size for p in files)
        # the spool is locked to this producer, so only put() and done() change the files:
        # count them here instead of listing the directory on every batch and loop turn
        self._files = len(files)
        self.records_spooled = 0
        self.records_dropped = 0
        self._seq = 0
        self._inflight: set[Path] = set()

    def __len__(self) -> int:
        return self._files

    def put(self, topic: str, key: bytes, headers: list[tuple[str, bytes]], value: bytes, records: int) -> bool:
        """Store a batch; False (and counted as dropped) when the spool is full."""
        meta = json.dumps({"topic": topic, "key": key.decode(), "records": records,
                           "headers": [[k, v.decode()] for k, v in headers]}).encode()
        size = len(meta) + 1 + len(value)
        if self.bytes + size > self.max_bytes:
            self.records_dropped += records
            return False
        self._seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}"
        tmp = self.dir / f"{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(meta + b"\n" + value)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(self.dir / f"{name}{_SUFFIX}")
        self.bytes += size
        self._files += 1
        self.records_spooled += records
        return True

    def oldest(self, limit: int) -> list[SpooledBatch]:
        """Up to ``limit`` spooled batches not already being replayed, oldest first."""
        out: list[SpooledBatch] = []
        for p in sorted(self.dir.glob(f"*{_SUFFIX}")):
            if p in self._inflight:
                continue
            data = p.read_bytes()
            head, _, value = data.partition(b"\n")
            meta = json.loads(head)
            out.append(SpooledBatch(p, meta["topic"], meta["key"].encode(),
                                    [(k, v.encode()) for k, v in meta["headers"]], value, int(meta["records"])))
            self._inflight.add(p)
            if len(out) >= limit:
                break
        return out

    def done(self, batch: SpooledBatch, delivered: bool) -> None:
        """After Kafka's answer on a replayed batch: delete it, or leave it for the next attempt."""
        self._inflight.discard(batch.path)
        if delivered:
            size = batch.path.stat().st_size
            batch.path.unlink(missing_ok=True)
            self.bytes -= size
            self._files -= 1

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def close(self) -> None:
        """Release the spool for the next producer (the files stay)."""
        self._lock.close()
