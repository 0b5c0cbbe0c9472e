"""A bounded on-disk spool for batches Kafka cannot take now.

A batch goes to the spool instead of being dropped when the producer's
memory queue is full (the broker is down or slow for longer than the queue
holds) or when it is still undelivered at shutdown. Each batch is one file
(written to a temporary name, then renamed, so a crash never leaves half a
batch); the files survive a producer restart and are replayed oldest first
once Kafka accepts messages again, each deleted only when Kafka has
acknowledged it. When the spool would exceed its size bound, or the disk
refuses the write (full, read-only, an I/O error), the batch is dropped and
counted (``records_dropped``, with the cause in ``dropped_by_cause``): the only
ways a record captured by the producer is lost, and never silent.

Files are named by a sequence number that continues from the highest in the
directory, not by the clock, so a clock stepped back during an outage cannot
reorder the replay. Each file carries a CRC-32 of its batch. A file that is no batch
(truncated, corrupt, a checksum that does not match) is renamed ``*.corrupt``, counted and
logged (its records, when its header says how many, counted as dropped), and the replay goes
on; one the disk cannot read now (an I/O error, permissions) is tried again on later turns (the
files after it go meanwhile) and set aside only after READ_ATTEMPTS failures over READ_RETRY_S.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from pktstream.runtime.errors import PktstreamError

log = structlog.get_logger("pktstream.spool")

_SUFFIX = ".batch"
_CORRUPT = ".corrupt"
READ_ATTEMPTS = 5  # a file the disk cannot read is set aside after this many failed reads ...
READ_RETRY_S = 60.0  # ... over at least this long (the replay tries every loop turn)


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
        self.dropped_by_cause: dict[str, int] = {}
        self.files_quarantined = 0
        # the next file's number: after every one there (earlier builds named files by the clock's
        # nanoseconds, which stay below the numbers that continue from them)
        self._seq = max((_number(p) for p in files), default=0)
        self._inflight: set[Path] = set()
        self._gone: set[Path] = set()  # delivered or given up, but the disk would not let them be removed
        self._unreadable: dict[Path, tuple[float, int]] = {}  # files the disk would not read: since, times
        self._set_aside: set[Path] = set()  # quarantined, but the disk would not let them be renamed
        # told of the records of a file set aside whose header could be read (headers, records),
        # so that the publisher counts them as given up for their run
        self.on_lost: Callable[[list[tuple[str, bytes]], int], None] | None = None

    def __len__(self) -> int:
        return max(0, self._files)

    def _drop(self, records: int, cause: str) -> bool:
        self.records_dropped += records
        self.dropped_by_cause[cause] = self.dropped_by_cause.get(cause, 0) + records
        return False

    def put(self, topic: str, key: bytes, headers: list[tuple[str, bytes]], value: bytes, records: int) -> bool:
        """Store a batch; False (and counted as dropped, with its cause) when the spool is full or
        the disk refuses the write."""
        meta = json.dumps({"topic": topic, "key": key.decode("latin-1"), "records": records,
                           "headers": [[k, v.decode("latin-1")] for k, v in headers],
                           "crc32": zlib.crc32(value)}).encode()
        size = len(meta) + 1 + len(value)
        if self.bytes + size > self.max_bytes:
            return self._drop(records, "spool_full")
        self._seq += 1
        name = f"{self._seq:020d}-{os.getpid()}"
        tmp = self.dir / f"{name}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(meta + b"\n" + value)
                f.flush()
                os.fsync(f.fileno())
            tmp.rename(self.dir / f"{name}{_SUFFIX}")
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            cause = errno.errorcode.get(e.errno or 0, "EIO").lower()  # enospc, erofs, eio, edquot...
            if not self.dropped_by_cause.get(f"disk_{cause}"):
                log.error("spool_write_failed", directory=str(self.dir), error=e.strerror or str(e), records=records)
            return self._drop(records, f"disk_{cause}")
        self.bytes += size
        self._files += 1
        self.records_spooled += records
        return True

    def oldest(self, limit: int) -> list[SpooledBatch]:
        """Up to ``limit`` spooled batches not already being replayed, oldest first."""
        out: list[SpooledBatch] = []
        for p in sorted(self.dir.glob(f"*{_SUFFIX}"), key=_number):
            if p in self._inflight or p in self._gone or p in self._set_aside:
                continue
            try:
                data = p.read_bytes()
            except FileNotFoundError:  # removed by hand since the listing
                self._recount()
                continue
            except OSError as e:
                # the disk, not the file, may be at fault: tried again, in order, for a while
                since, n = self._unreadable.get(p, (time.monotonic(), 0))
                self._unreadable[p] = (since, n + 1)
                if n + 1 < READ_ATTEMPTS or time.monotonic() - since < READ_RETRY_S:
                    if n == 0:
                        log.warning("spool_file_unreadable", file=p.name, error=e.strerror or str(e),
                                    retry_for_s=READ_RETRY_S)
                    continue  # the files after it go meanwhile: one bad sector never stalls the replay
                self._unreadable.pop(p, None)
                self._quarantine(p, f"unreadable for {READ_RETRY_S:.0f} s: {e.strerror or e}")
                continue
            self._unreadable.pop(p, None)
            meta: Any = {}
            try:
                head, _, value = data.partition(b"\n")
                meta = json.loads(head)
                b = SpooledBatch(p, str(meta["topic"]), str(meta["key"]).encode("latin-1"),
                                 [(str(k), str(v).encode("latin-1")) for k, v in meta["headers"]], value,
                                 int(meta["records"]))
                if "crc32" in meta and int(meta["crc32"]) != zlib.crc32(value):  # files before it had none
                    raise ValueError("the batch's CRC-32 does not match (the file changed after it was written)")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                self._quarantine(p, str(e), meta)
                continue
            out.append(b)
            self._inflight.add(p)
            if len(out) >= limit:
                break
        return out

    def _quarantine(self, p: Path, why: str, meta: Any = None) -> None:
        """A file that is no batch (truncated, edited, written by something else) or that the disk
        would not read: set aside as *.corrupt, out of the replay and the spool's size, and said.
        Its records, when its header could be read, are counted as dropped (``quarantined``) and
        told to the publisher (on_lost)."""
        moved = True
        try:
            p.rename(p.with_suffix(_CORRUPT))
        except OSError:
            self._set_aside.add(p)  # a disk gone read-only: skipped from now on, never retried
            moved = False
        self._recount()
        self.files_quarantined += 1
        log.error("spool_file_quarantined", file=p.name, error=why[:200],
                  moved_to=p.with_suffix(_CORRUPT).name if moved else None)
        if not moved:
            return  # still a batch file: counted by the run that manages to move it, never twice
        try:  # the header of a file whose batch is damaged may still say whose records it held
            records = int(meta["records"]) if isinstance(meta, dict) and "records" in meta else 0
            headers = [(str(k), str(v).encode("latin-1")) for k, v in meta["headers"]] if records > 0 else []
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeEncodeError):
            records, headers = 0, []
        if records > 0:
            self._drop(records, "quarantined")
            if self.on_lost is not None:
                self.on_lost(headers, records)

    def _recount(self) -> None:
        """The spool's size counted afresh (rare): a file may have changed or gone since it was
        written (files delivered or set aside that the disk would not let go are not counted)."""
        sizes = []
        for f in self.dir.glob(f"*{_SUFFIX}"):
            if f in self._gone or f in self._set_aside:
                continue
            with contextlib.suppress(OSError):
                sizes.append(f.stat().st_size)
        self.bytes, self._files = sum(sizes), len(sizes)

    def failed(self, batch: SpooledBatch, cause: str) -> bool:
        """A replayed batch Kafka refused for good (too large, not authorised, topic gone): it
        leaves the spool, counted as dropped with its cause, so that it never blocks the batches
        behind it. False when the disk would not let the file go: then it is not counted (the run
        that removes it counts it, never two)."""
        self.done(batch, delivered=True)
        if batch.path in self._gone:
            return False
        self._drop(batch.records, cause)
        return True

    def done(self, batch: SpooledBatch, delivered: bool) -> None:
        """After Kafka's answer on a replayed batch: delete it, or leave it for the next attempt."""
        self._inflight.discard(batch.path)
        if delivered:
            try:
                size = batch.path.stat().st_size
                batch.path.unlink()
            except FileNotFoundError:  # removed by hand meanwhile: counted afresh, not twice
                self._recount()
                return
            except OSError as e:  # a disk gone read-only: never sent twice, never a crash in a callback
                if not self._gone:
                    log.error("spool_file_not_removed", file=batch.path.name, error=e.strerror or str(e))
                self._gone.add(batch.path)
                self._recount()
                return
            self.bytes -= size
            self._files -= 1
            if self._files < 0 or self.bytes < 0:  # a file came that put() did not write: count afresh
                self._recount()

    def skipped(self, path: Path) -> bool:
        """A file the replay no longer offers (delivered or set aside, but still on a disk that
        would not let it go)."""
        return path in self._gone or path in self._set_aside

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def close(self) -> None:
        """Release the spool for the next producer (the files stay)."""
        self._lock.close()


def _number(p: Path) -> int:
    """The sequence number a spool file's name starts with (0 for a name without one)."""
    head = p.name.split("-", 1)[0].split(".", 1)[0]
    return int(head) if head.isdigit() else 0
