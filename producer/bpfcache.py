"""The compiled capture programs, kept on disk so that a restart loads them without bcc or clang.

Compiling capture.c with bcc costs a few seconds of CPU (4.3 s on a 2-core EPYC VM) and about
200 MB of memory in a child process (bpfloader.py). The bytecode it produces depends only on the
source files, the compile flags (payload prefix, ring size), the kernel it was built against and
the maps' file descriptors, which bcc writes into the code (``ld_imm64`` with ``BPF_PSEUDO_MAP_FD``).
So the first start stores, besides loading, each program's instructions and each map's definition
(``bpfloader.save``); a later start with the same key creates the maps (or opens the pinned
counters map, as bcc does), writes their new descriptors into the instructions and loads them with
bpf(2) directly: a fraction of a second, no LLVM.

The key is a SHA-256 of the cache format, the source compiled, every file of its include
directory, the flags (the pinned counters' path only as "pinned": it names a map, not code) and the
toolchain (bcc's library and package files, the kernel headers' directory, the kernel release and
machine). Anything that does not read, match or load falls back to compiling (and rewrites the
entry); the verifier judges cached code as it judges fresh code. The directory is pktstream's cache
(``$PKTSTREAM_CACHE_DIR``, else ``/var/cache/pktstream`` for root, else ``$XDG_CACHE_HOME/pktstream``
or ``~/.cache/pktstream``), ``bpf/KEY.json``. The code is loaded into the kernel, so an entry is
read only when it is a regular file of this user that nobody else may write, and every directory
above it belongs to root or this user and is writable by nobody else (sticky ones aside); it is
written through a fresh temporary file in a directory of this user's, made 0700.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import importlib.util
import json
import os
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

from pktstream.producer import sysbpf

log = structlog.get_logger("pktstream.capture")

FORMAT = 1
BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_FUNC = 4  # (a bpf-to-bpf function's address: relative, nothing to rewrite)
LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW
PIN_FLAG = "-DPIN_COUNTERS="


def cache_dir() -> Path:
    """$PKTSTREAM_CACHE_DIR, else /var/cache/pktstream for root (whatever HOME a sudo kept), else
    $XDG_CACHE_HOME/pktstream or ~/.cache/pktstream; relative values are ignored."""
    base = os.environ.get("PKTSTREAM_CACHE_DIR", "")
    if os.path.isabs(base):
        return Path(base)
    if os.geteuid() == 0:
        return Path("/var/cache/pktstream")
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg if os.path.isabs(xdg) else Path.home() / ".cache") / "pktstream"


def _signature(path: str) -> str:
    """Which file a path is now (its real path, size and modification time), or that it is absent."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
        return f"{real}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return f"{path}:absent"


def _toolchain() -> str:
    """What compiles the program besides its source: bcc (its library and Python package, LLVM being
    linked into the library), the kernel headers it builds against, the machine, bcc's variables."""
    release = os.uname().release
    parts = [release, os.uname().machine, _signature(f"/lib/modules/{release}/build"),
             _signature(f"/lib/modules/{release}/build/include/generated/uapi/linux/version.h")]
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
              "/usr/local/lib", "/usr/local/lib64"):
        if os.path.exists(f"{d}/libbcc.so.0"):
            parts.append(_signature(f"{d}/libbcc.so.0"))
            break
    spec = importlib.util.find_spec("bcc")
    if spec is not None and spec.origin:
        parts.append(_signature(spec.origin))  # (the package's __init__.py: a new bcc, a new file)
    parts += [f"{k}={os.environ.get(k, '')}" for k in ("BCC_KERNEL_SOURCE", "BCC_LINUX_VERSION_CODE")]
    return "\0".join(parts)


def cache_key(source: Path, bpf_dir: Path, cflags: list[str]) -> str:
    """What the bytecode depends on: the source compiled, the files of its include directory, the
    flags (the pinned counters' path only as "pinned": it names a map, not code), the toolchain."""
    h = hashlib.sha256(f"pktstream-bpf-{FORMAT}\0{_toolchain()}\0".encode())
    h.update(str(source).encode() + b"\0" + source.read_bytes() + b"\0")
    for p in sorted(bpf_dir.iterdir()):
        if p.suffix in (".c", ".h") and p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    for f in cflags:
        h.update((PIN_FLAG + "pinned" if f.startswith(PIN_FLAG) else f).encode() + b"\0")
    return h.hexdigest()[:32]


def entry_path(key: str) -> Path:
    return cache_dir() / "bpf" / f"{key}.json"


MAP_FIELDS = ("fd", "type", "key_size", "value_size", "max_entries", "flags")


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
    """Store what bcc compiled (called by bpfloader, after a successful load). Best effort: the
    parent says when no entry came of it."""
    tmp = None
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
        st = os.lstat(path.parent)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise PermissionError(f"{path.parent} is not a directory of this user")
        os.chmod(path.parent, 0o700)
        if not _trusted_dirs(path.parent):
            raise PermissionError(f"a directory above {path.parent} is writable by other users")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".entry-")  # O_EXCL, mode 0600
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
        tmp = None
    except Exception as e:  # a cache that cannot be written costs the next start a compile, nothing else
        log.warning("bpf_cache_not_written", error=f"{type(e).__name__}: {e}"[:300])
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _trusted_dirs(d: Path) -> bool:
    """Every directory from the root to d is owned by root or this user and writable by nobody
    else (sticky directories such as /tmp aside: others cannot move what is not theirs there)."""
    uid = os.geteuid()
    p = Path(os.path.abspath(d))
    for q in [p, *p.parents]:
        st = os.lstat(q)
        if stat.S_ISLNK(st.st_mode):
            st = os.stat(q)  # (a link owned by root, such as /lib; its target is checked here)
            if st.st_uid not in (0, uid):
                return False
        if st.st_uid not in (0, uid):
            return False
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            return False
    return True


def _read_trusted(path: Path) -> bytes | None:
    """The entry's bytes when it is a regular file of this user that nobody else may write, in a
    directory chain nobody else may change (checked on the open file, not the name); else None."""
    if not _trusted_dirs(path.parent):
        return None
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or st.st_size > 16 << 20):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


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
    """The code with each map descriptor it names (old) replaced by the new one. KeyError when it
    names a descriptor that is not one of the maps, ValueError for any other kind of reference to a
    kernel object (map values, BTF ids, map indexes: bcc writes none of them today)."""
    out = bytearray(insns)
    i = 0
    while i + 16 <= len(out):
        if out[i] == LD_IMM64:
            kind = out[i + 1] >> 4
            if kind == BPF_PSEUDO_MAP_FD:
                (old,) = struct.unpack_from("=i", out, i + 4)
                struct.pack_into("=i", out, i + 4, fds[old])
            elif kind not in (0, BPF_PSEUDO_FUNC):
                raise ValueError(f"instruction {i // 8}: an ld_imm64 of kind {kind}")
            i += 16
        else:
            i += 8
    return bytes(out)


def load(key: str, pin_counters: str | None, order: tuple[str, ...],
         maps_order: tuple[str, ...]) -> tuple[list[int], int] | None:
    """The programs' and maps' descriptors (programs in ``order``, then maps in ``maps_order``) and
    the ring size, from the cache entry of ``key`` (cache_key); None when there is no usable entry
    (the caller compiles, and stores under the same key)."""
    path = entry_path(key)
    try:
        if not path.exists():
            return None
        raw = _read_trusted(path)
        if raw is None:
            log.warning("bpf_cache_untrusted", path=str(path), action="compiling instead")
            return None
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("key") != key:
            return None
        defs = {str(d["name"]): MapDef(str(d["name"]), *(int(d[k]) for k in MAP_FIELDS)) for d in doc["maps"]}
        progs = {str(p["name"]): (int(p["type"]), base64.b64decode(str(p["insns"]), validate=True))
                 for p in doc["programs"]}
        license, kern_version = str(doc["license"]), int(doc["kern_version"])
        if set(defs) != set(maps_order) or set(progs) != set(order) or "events" not in defs:
            return None
    except Exception as e:  # whatever the file holds: compiled instead
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
            ptype, code = progs[name]
            fd = _load_prog(name, ptype, relocate(code, fds), license, kern_version)
            opened.append(fd)
            prog_fds.append(fd)
        ring_size = map_info(new["events"])[3]  # the map's, not the file's word
        log.info("bpf_programs_from_cache", key=key)
        return prog_fds + [new[n] for n in maps_order], ring_size
    except Exception as e:
        for fd in opened:
            os.close(fd)
        log.warning("bpf_cache_not_loaded", path=str(path), error=f"{type(e).__name__}: {e}"[:600],
                    action="compiling instead")
        return None


def _pinned(m: MapDef, path: str) -> int:
    """The pinned counters map as bcc's BPF_TABLE_PINNED has it: the one at the path when there is
    one (the counters of a killed run live on), else a new one pinned there (its directory made)."""
    if os.path.exists(path):
        fd = sysbpf.obj_get(path)
        try:
            same = map_info(fd)[:4] == (m.type, m.key_size, m.value_size, m.max_entries)
        except OSError:
            same = False
        if not same:
            os.close(fd)
            raise ValueError(f"the map pinned at {path} is not the counters map this program needs")
        return fd
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = _create_map(m)
    try:
        sysbpf.obj_pin(fd, path)
    except OSError:
        os.close(fd)
        raise
    return fd
