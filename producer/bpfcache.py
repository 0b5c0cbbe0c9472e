"""The compiled capture programs, kept on disk so that a restart loads them without bcc or clang.

Compiling capture.c with bcc costs a few seconds of CPU (4.3 s on a 2-core EPYC VM) and about
200 MB of memory in a child process (bpfloader.py). The bytecode it produces depends only on the
source files, the compile flags (payload prefix, ring size), the kernel it was built against and
the maps' file descriptors, which bcc writes into the code (``ld_imm64`` with ``BPF_PSEUDO_MAP_FD``).
So the first start stores, besides loading, each program's instructions and each map's definition
(``bpfloader.save``); a later start with the same key creates the maps (or opens the pinned
counters map, as bcc does), writes their new descriptors into the instructions and loads them with
bpf(2) directly: a fraction of a second, no LLVM.

The key is a SHA-256 of the cache format, the kernel release, every file of the program's
directory and the flags (the pinned counters' path only as "pinned": it names a map, not code).
Anything that does not read, match or load falls back to compiling (and rewrites the entry); the
verifier judges cached code as it judges fresh code. The directory is pktstream's cache
(``$PKTSTREAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/pktstream``, else ``~/.cache/pktstream``),
``bpf/KEY.json``; an entry is used only when it and its directory belong to this user and nobody
else may write them (the code is loaded into the kernel).
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from pktstream.producer import sysbpf

log = structlog.get_logger("pktstream.capture")

FORMAT = 1
BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_PSEUDO_MAP_FD = 1
LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW
PIN_FLAG = "-DPIN_COUNTERS="


def cache_dir() -> Path:
    base = os.environ.get("PKTSTREAM_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pktstream"


def cache_key(bpf_dir: Path, cflags: list[str]) -> str:
    """What the bytecode depends on (the pinned counters' path is not code)."""
    h = hashlib.sha256(f"pktstream-bpf-{FORMAT}\0{os.uname().release}\0".encode())
    for p in sorted(bpf_dir.iterdir()):
        if p.suffix in (".c", ".h") and p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    for f in cflags:
        h.update((PIN_FLAG + "pinned" if f.startswith(PIN_FLAG) else f).encode() + b"\0")
    return h.hexdigest()[:32]


def entry_path(key: str) -> Path:
    return cache_dir() / "bpf" / f"{key}.json"


@dataclass(frozen=True)
class MapDef:
    name: str
    fd: int  # the descriptor the cached code names
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


def map_info(fd: int) -> tuple[int, int, int, int, int]:
    """(type, key_size, value_size, max_entries, flags) of a map (struct bpf_map_info)."""
    info = ctypes.create_string_buffer(88)
    attr = ctypes.create_string_buffer(struct.pack("=IIQ", fd, len(info), ctypes.addressof(info)), 16)
    sysbpf._bpf(sysbpf.BPF_OBJ_GET_INFO_BY_FD, attr)
    t, _id, ks, vs, me, fl = struct.unpack_from("=IIIIII", info, 0)
    return t, ks, vs, me, fl


def save(key: str, maps: dict[str, int], programs: list[tuple[str, int, bytes]], license: str,
         kern_version: int, ringbuf_size: int) -> None:
    """Store what bcc compiled (called by bpfloader, after a successful load). Best effort."""
    try:
        defs = []
        for name, fd in maps.items():
            t, ks, vs, me, fl = map_info(fd)
            defs.append({"name": name, "fd": fd, "type": t, "key_size": ks, "value_size": vs, "max_entries": me,
                         "flags": fl})
        doc = {"format": FORMAT, "key": key, "license": license, "kern_version": kern_version,
               "ringbuf_size": ringbuf_size, "maps": defs,
               "programs": [{"name": n, "type": t, "insns": base64.b64encode(code).decode()}
                            for n, t, code in programs]}
        path = entry_path(key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except Exception as e:  # a cache that cannot be written costs the next start a compile, nothing else
        log.warning("bpf_cache_not_written", error=f"{type(e).__name__}: {e}"[:300])


def _trusted(path: Path) -> bool:
    """Owned by this user and writable by nobody else, the file and every directory up to the
    cache's own (code loaded into the kernel must not come from a file another user could change)."""
    uid = os.geteuid()
    for p in (path, path.parent):
        st = os.lstat(p)
        if st.st_uid != uid or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or stat.S_ISLNK(st.st_mode):
            return False
    return True


def _create_map(m: MapDef) -> int:
    attr = ctypes.create_string_buffer(struct.pack("=IIIIIII16s", m.type, m.key_size, m.value_size, m.max_entries,
                                                   m.flags, 0, 0, m.name.encode()[:15]), 128)
    return sysbpf._bpf(BPF_MAP_CREATE, attr)


def _load_prog(name: str, ptype: int, insns: bytes, license: str, kern_version: int, log_level: int = 0) -> int:
    """BPF_PROG_LOAD; when the verifier refuses, again with its log for the error's message."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log_buf = ctypes.create_string_buffer(1 << 20 if log_level else 1)
    attr = ctypes.create_string_buffer(struct.pack(
        "=IIQQIIQII16s", ptype, len(insns) // 8, ctypes.addressof(code), ctypes.addressof(lic), log_level,
        len(log_buf) if log_level else 0, ctypes.addressof(log_buf) if log_level else 0, kern_version, 0,
        name.encode()[:15]), 144)
    try:
        return sysbpf._bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        if not log_level:
            return _load_prog(name, ptype, insns, license, kern_version, 1)
        raise OSError(e.errno, f"{e.strerror}: {log_buf.value.decode(errors='replace')[-500:]}") from None


def relocate(insns: bytes, fds: dict[int, int]) -> bytes:
    """The code with each map descriptor it names (old) replaced by the new one; KeyError when it
    names a descriptor that is not one of the maps."""
    out = bytearray(insns)
    i = 0
    while i + 16 <= len(out):
        if out[i] == LD_IMM64:
            if out[i + 1] >> 4 == BPF_PSEUDO_MAP_FD:
                (old,) = struct.unpack_from("=i", out, i + 4)
                struct.pack_into("=i", out, i + 4, fds[old])
            i += 16
        else:
            i += 8
    return bytes(out)


def load(bpf_dir: Path, cflags: list[str], pin_counters: str | None, order: tuple[str, ...],
         maps_order: tuple[str, ...]) -> tuple[list[int], int] | None:
    """The programs' and maps' descriptors (programs in ``order``, then maps in ``maps_order``) and
    the ring size, from the cache; None when there is no usable entry (the caller compiles)."""
    key = cache_key(bpf_dir, cflags)
    path = entry_path(key)
    try:
        if not path.exists():
            return None
        if not _trusted(path):
            log.warning("bpf_cache_untrusted", path=str(path), action="compiling instead")
            return None
        doc: dict[str, Any] = json.loads(path.read_text())
        if doc.get("format") != FORMAT or doc.get("key") != key:
            return None
        defs = {d["name"]: MapDef(**d) for d in doc["maps"]}
        progs = {p["name"]: p for p in doc["programs"]}
        if set(defs) != set(maps_order) or set(progs) != set(order):
            return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("bpf_cache_unreadable", path=str(path), error=f"{type(e).__name__}: {e}"[:300])
        return None
    opened: list[int] = []
    try:
        new: dict[str, int] = {}
        for name in maps_order:
            m = defs[name]
            fd = _pinned(m, pin_counters) if name == "counters" and pin_counters else _create_map(m)
            opened.append(fd)
            new[name] = fd
        fds = {m.fd: new[m.name] for m in defs.values()}
        prog_fds = []
        for name in order:
            p = progs[name]
            fd = _load_prog(name, int(p["type"]), relocate(base64.b64decode(p["insns"]), fds), str(doc["license"]),
                            int(doc["kern_version"]))
            opened.append(fd)
            prog_fds.append(fd)
        log.info("bpf_programs_from_cache", key=key)
        return prog_fds + [new[n] for n in maps_order], int(doc["ringbuf_size"])
    except (OSError, KeyError, ValueError, struct.error) as e:
        for fd in opened:
            os.close(fd)
        log.warning("bpf_cache_not_loaded", path=str(path), error=f"{type(e).__name__}: {e}"[:600],
                    action="compiling instead")
        return None


def _pinned(m: MapDef, path: str) -> int:
    """The pinned counters map as bcc's BPF_TABLE_PINNED has it: the one at the path when there is
    one (the counters of a killed run live on), else a new one pinned there."""
    if os.path.exists(path):
        fd = sysbpf.obj_get(path)
        if map_info(fd)[:4] != (m.type, m.key_size, m.value_size, m.max_entries):
            os.close(fd)
            raise ValueError(f"the map pinned at {path} is not the counters map this program needs")
        return fd
    fd = _create_map(m)
    try:
        sysbpf.obj_pin(fd, path)
    except OSError:
        os.close(fd)
        raise
    return fd
