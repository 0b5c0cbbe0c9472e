"""The few bpf(2) commands bcc does not wrap the way pktstream needs them.

* BPF_LINK_CREATE for XDP and TCX: a link detaches by itself when its last
  file descriptor closes, so the program cannot stay attached after the
  producer dies (even by SIGKILL), unlike a netlink attachment.
* BPF_PROG_QUERY: which programs are attached to an interface's TCX hooks.
* BPF_OBJ_PIN: a program in bpffs, for tc(8) to attach on kernels without TCX.
* BPF_PROG_TEST_RUN: runs the real program on a given frame inside the kernel,
  used by tests and benchmarks as a packet generator with no NIC limit.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from dataclasses import dataclass
from pathlib import Path

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280}
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
BPF_XDP = 37  # enum bpf_attach_type
BPF_TCX_INGRESS = 46  # kernel 6.6+
BPF_TCX_EGRESS = 47

XDP_FLAGS_SKB_MODE = 1 << 1  # generic
XDP_FLAGS_DRV_MODE = 1 << 2  # native
XDP_MODES = {"auto": 0, "generic": XDP_FLAGS_SKB_MODE, "native": XDP_FLAGS_DRV_MODE}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(f"bpf syscall number unknown for {platform.machine()}")
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def xdp_link_create(prog_fd: int, ifindex: int, mode: str = "auto") -> int:
    """Attach an XDP program to an interface through a BPF link; returns the link fd."""
    return link_create(prog_fd, ifindex, BPF_XDP, XDP_MODES[mode])


def link_create(prog_fd: int, ifindex: int, attach_type: int, flags: int = 0) -> int:
    """Attach a program to an interface's hook through a BPF link; returns the link fd."""
    attr = ctypes.create_string_buffer(struct.pack("=IIII", prog_fd, ifindex, attach_type, flags), 64)
    return _bpf(BPF_LINK_CREATE, attr)


def tcx_programs(ifindex: int, attach_type: int = BPF_TCX_EGRESS) -> list[int]:
    """Ids of the programs attached to an interface's TCX hook (empty where the kernel has no TCX)."""
    ids = (ctypes.c_uint32 * 64)()
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("=IIIIQI", attr, 0, ifindex, attach_type, 0, 0, ctypes.addressof(ids), 64)
    try:
        _bpf(BPF_PROG_QUERY, attr)
    except OSError:
        return []
    (count,) = struct.unpack_from("=I", attr, 24)
    return list(ids[: min(count, 64)])


def obj_pin(fd: int, path: str) -> None:
    """Pin an object (a program) at a bpffs path (BPF_OBJ_PIN)."""
    p = ctypes.create_string_buffer(path.encode())
    attr = ctypes.create_string_buffer(struct.pack("=QII", ctypes.addressof(p), fd, 0), 16)
    _bpf(BPF_OBJ_PIN, attr)


def possible_cpus() -> int:
    """Number of possible CPUs: the length of a per-CPU map's value array."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    attr = ctypes.create_string_buffer(struct.pack("=IIQQQ", map_fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0),
                                       32)
    _bpf(BPF_MAP_LOOKUP_ELEM, attr)
    return v.raw


def map_update(map_fd: int, key: bytes, value: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    attr = ctypes.create_string_buffer(struct.pack("=IIQQQ", map_fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0),
                                       32)
    _bpf(BPF_MAP_UPDATE_ELEM, attr)


def obj_get(path: str) -> int:
    """An fd for an object pinned in bpffs (BPF_OBJ_GET)."""
    p = ctypes.create_string_buffer(path.encode())
    attr = ctypes.create_string_buffer(struct.pack("=QII", ctypes.addressof(p), 0, 0), 16)
    return _bpf(BPF_OBJ_GET, attr)


def is_bpffs(path: str) -> bool:
    """Is path on a mounted BPF file system (where maps can be pinned)?"""
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "bpf" and path.rstrip("/").startswith(parts[1].rstrip("/")):
            return True
    return False


def prog_id(prog_fd: int) -> int:
    """The kernel's id of a loaded program (what bpftool lists)."""
    info = ctypes.create_string_buffer(256)  # struct bpf_prog_info; id is at offset 4
    attr = ctypes.create_string_buffer(struct.pack("=IIQ", prog_fd, len(info), ctypes.addressof(info)), 16)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return int(struct.unpack_from("=I", info, 4)[0])


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd for a program another process loaded (for BPF_PROG_TEST_RUN from outside)."""
    attr = ctypes.create_string_buffer(struct.pack("=I", prog_id), 16)
    return _bpf(BPF_PROG_GET_FD_BY_ID, attr)


@dataclass
class TestRunResult:
    retval: int
    duration_ns: int
    data_out: bytes


def prog_test_run(
    prog_fd: int,
    frame: bytes,
    repeat: int = 1,
    ifindex: int = 0,
    rx_queue: int = 0,
    gso_segs: int = 0,
    skb: bool = False,
) -> TestRunResult:
    """Run an XDP program (``skb``: a classifier) on ``frame`` ``repeat`` times (BPF_PROG_TEST_RUN).

    ``duration_ns`` is the kernel's mean time per run. With ``ifindex`` the
    program sees that interface (it must exist); a classifier also sees ``gso_segs``.
    """
    data_in = ctypes.create_string_buffer(frame, len(frame))
    out_size = len(frame) + 512
    data_out = ctypes.create_string_buffer(out_size)
    ctx = None
    ctx_size = 0
    if skb:
        # struct __sk_buff (192 bytes); the test run takes ifindex (40), gso_segs (164) and a few more
        ctx = ctypes.create_string_buffer(192)
        struct.pack_into("=I", ctx, 40, ifindex)
        struct.pack_into("=I", ctx, 164, gso_segs)
        ctx_size = 192
    elif ifindex:
        # struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        ctx = ctypes.create_string_buffer(struct.pack("=IIIIII", 0, 0, 0, ifindex, rx_queue, 0), 24)
        ctx_size = 24
    attr = ctypes.create_string_buffer(80)
    struct.pack_into(
        "=IIIIQQIIIIQQ",
        attr,
        0,
        prog_fd,
        0,
        len(frame),
        out_size,
        ctypes.addressof(data_in),
        ctypes.addressof(data_out),
        repeat,
        0,
        ctx_size,
        0,
        ctypes.addressof(ctx) if ctx is not None else 0,
        0,
    )
    _bpf(BPF_PROG_TEST_RUN, attr)
    retval, _, size_out = struct.unpack_from("=III", attr, 4)
    (duration,) = struct.unpack_from("=I", attr, 36)
    return TestRunResult(retval=retval, duration_ns=duration, data_out=data_out.raw[:size_out])
