"""Compile, load and attach the capture programs (XDP on ingress, a classifier on egress);
expose their ring buffer and counters."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from pktstream.bpf import BPF_DIR, PROGRAM
from pktstream.producer import bpfcache, bpfloader, sysbpf
from pktstream.producer.ringbuf import RingReader
from pktstream.runtime.errors import BpfLoadError, InterfaceError, PrivilegeError
from pktstream.schemas import record

log = structlog.get_logger("pktstream.capture")

# The clsact path (kernels without TCX): the filter's priority on the egress hook, by which a
# later run finds one a killed producer left behind, and where the program is pinned for tc(8).
TC_PREF = 0xC0DE
TC_PIN_DIR = "/sys/fs/bpf"

# Capabilities needed to load an XDP program, attach it and use the ring
# buffer (kernel >= 5.8 splits them out of CAP_SYS_ADMIN).
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
REQUIRED_CAPS = {"CAP_BPF": CAP_BPF, "CAP_NET_ADMIN": CAP_NET_ADMIN, "CAP_PERFMON": CAP_PERFMON}


def effective_capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges() -> None:
    """Raise PrivilegeError naming every missing capability."""
    eff = effective_capabilities()
    missing = [name for name, bit in REQUIRED_CAPS.items() if not eff & (1 << bit)]
    # CAP_SYS_ADMIN implies the BPF and perfmon powers on every kernel.
    if missing and eff & (1 << CAP_SYS_ADMIN):
        missing = [m for m in missing if m == "CAP_NET_ADMIN"]
    if missing:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        raise PrivilegeError(
            f"running as {who} without {', '.join(missing)}; loading and attaching the XDP program needs "
            f"{', '.join(REQUIRED_CAPS)}. Run as root (sudo) or grant them, e.g. "
            "setpriv --inh-caps=+bpf,+net_admin,+perfmon --ambient-caps=+bpf,+net_admin,+perfmon"
        )


def interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def ifindex_of(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise InterfaceError(
            f"unknown interface {name!r}; interfaces on this host: {', '.join(interfaces())}"
        ) from None


def default_route_interface() -> str | None:
    """The interface of the IPv4 (else IPv6) default route, if any."""
    try:
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            cols = line.split()
            if len(cols) > 2 and cols[1] == "00000000" and int(cols[3], 16) & 0x2:
                return cols[0]
        for line in Path("/proc/net/ipv6_route").read_text().splitlines():
            cols = line.split()
            if len(cols) >= 10 and cols[0] == "0" * 32 and cols[1] == "00" and cols[9] != "lo":
                return cols[9]
    except OSError:
        return None
    return None


@dataclass
class Counters:
    """The kernel's counters: both directions together, and the egress share of each."""

    packets: int = 0
    records: int = 0
    ringbuf_full: int = 0
    sampled_out: int = 0
    ringbuf_full_per_cpu: tuple[int, ...] = ()
    egress_packets: int = 0
    egress_records: int = 0
    egress_ringbuf_full: int = 0
    egress_sampled_out: int = 0


def program_flags(payload_bytes: int, ringbuf_bytes: int, bpf_dir: Path = BPF_DIR,
                  pin_counters: str | None = None) -> list[str]:
    """The capture programs' compile flags."""
    pages = ringbuf_bytes // os.sysconf("SC_PAGE_SIZE")
    cflags = [f"-I{bpf_dir}", f"-DPAYLOAD_BYTES={payload_bytes}", f"-DRINGBUF_PAGES={pages}"]
    if pin_counters:
        cflags.append(f'-DPIN_COUNTERS="{pin_counters}"')
    return cflags


def load_cached(cflags: list[str], bpf_dir: Path = BPF_DIR, pin_counters: str | None = None,
                key: str | None = None) -> tuple[list[int], int] | None:
    """The programs' and maps' fds (bpfloader's order) and the ring size from the cache, else None."""
    return bpfcache.load(key or bpfcache.cache_key(PROGRAM, Path(bpf_dir), cflags), pin_counters,
                         tuple(p for p, _ in bpfloader.PROGRAMS), bpfloader.MAPS)


class Capture:
    """The loaded programs: attach/detach per direction, ring-buffer reader, counters, config.

    The program is compiled and loaded by a short-lived child process (see
    bpfloader.py), so this process holds only file descriptors; a restart with the same
    source, flags and kernel loads the bytecode that compile stored (bpfcache.py).
    """

    def __init__(
        self,
        payload_bytes: int = 64,
        ringbuf_bytes: int = 16 << 20,
        bpf_dir: Path = BPF_DIR,
        pin_counters: str | None = None,
    ) -> None:
        self.payload_bytes = payload_bytes
        self.dtype = record.record_dtype(payload_bytes)
        cflags = program_flags(payload_bytes, ringbuf_bytes, bpf_dir, pin_counters)
        try:
            key = bpfcache.cache_key(PROGRAM, Path(bpf_dir), cflags)
        except OSError as e:  # the sources cannot be read: the compile says so, no cache
            log.warning("bpf_cache_unreadable", error=str(e))
            key = ""
        cached = load_cached(cflags, bpf_dir, pin_counters, key) if key else None
        self.from_cache = cached is not None  # loaded without compiling (bpfcache.py)
        if cached is None:
            fds, ring_size = _load_program(str(PROGRAM), cflags, key)
            if key and not bpfcache.entry_path(key).exists():  # (the child's own log goes nowhere)
                log.warning("bpf_cache_not_written", directory=str(bpfcache.cache_dir()),
                            hint="the next start compiles again; is the cache directory this user's?")
        else:
            fds, ring_size = cached
        self.prog_fd, self.tc_prog_fd, self._events_fd, self._counters_fd, self._config_fd = fds
        self.prog_id = sysbpf.prog_id(self.prog_fd)
        self.tc_prog_id = sysbpf.prog_id(self.tc_prog_fd)
        self.reader = RingReader(self._events_fd, ring_size, self.dtype)
        self._ncpus = sysbpf.possible_cpus()
        self.link_fd: int | None = None  # the XDP link
        self.egress_link_fd: int | None = None  # the TCX link
        self.egress_hook = ""  # "tcx" or "tc" while the egress classifier is attached
        self.ifindex = 0
        self.interface = ""
        self.mode = ""

    @property
    def directions(self) -> list[str]:
        """The directions being captured now."""
        return [d for d, on in (("ingress", self.link_fd is not None), ("egress", bool(self.egress_hook))) if on]

    def attach(self, interface: str, mode: str = "auto", direction: str = "ingress", egress_hook: str = "auto") -> None:
        """Attach to the interface: XDP for ingress, the classifier for egress, or both.

        With ``both``, an egress hook that cannot attach is said in the log and the run goes on
        with ingress alone (``directions`` shows it); with ``egress`` it is an error."""
        self.ifindex = ifindex_of(interface)
        self.interface = interface
        if direction in ("ingress", "both"):
            self._attach_xdp(interface, mode)
        if direction in ("egress", "both"):
            try:
                self._attach_egress(egress_hook)
            except BpfLoadError as e:
                if direction == "egress":
                    raise
                log.warning("egress_unavailable", interface=interface, error=str(e), capturing="ingress only")

    def _attach_xdp(self, interface: str, mode: str) -> None:
        try:
            try:
                self.link_fd = sysbpf.xdp_link_create(self.prog_fd, self.ifindex, mode)
            except OSError as e:
                # auto lets the kernel pick native XDP, which some drivers (virtio_net
                # with guest offloads on, for one) refuse; generic XDP works everywhere.
                if mode != "auto" or e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                log.info("xdp_native_refused", interface=interface, error=str(e), fallback="generic")
                mode = "generic"
                self.link_fd = sysbpf.xdp_link_create(self.prog_fd, self.ifindex, mode)
        except OSError as e:
            hint = ""
            if e.errno == errno.EBUSY:
                hint = " (another XDP program is attached; `ip link set dev IF xdp off` removes a stale one)"
            elif e.errno in (errno.EOPNOTSUPP, errno.EINVAL) and mode == "native":
                hint = " (the driver has no native XDP; use xdp_mode=generic or auto)"
            raise BpfLoadError(f"attaching XDP to {interface} in {mode} mode failed: {e}{hint}") from e
        self.mode = mode
        log.info("xdp_attached", interface=interface, ifindex=self.ifindex, mode=mode, prog_id=self.prog_id)

    def _attach_egress(self, hook: str) -> None:
        iface = self.interface
        self._remove_stale_tc_filter()
        if hook in ("auto", "tcx"):
            try:
                self.egress_link_fd = sysbpf.link_create(self.tc_prog_fd, self.ifindex, sysbpf.BPF_TCX_EGRESS)
                self.egress_hook = "tcx"
            except OSError as e:
                if hook == "tcx":
                    raise BpfLoadError(f"attaching the egress classifier to {iface} by a TCX link failed: {e} "
                                       "(TCX needs kernel 6.6 or later; egress_hook=tc uses a clsact filter)") from e
                log.info("tcx_unavailable", interface=iface, error=str(e), fallback="tc")
        if not self.egress_hook:
            self._attach_tc_filter()
            self.egress_hook = "tc"
        log.info("egress_attached", interface=iface, ifindex=self.ifindex, hook=self.egress_hook,
                 prog_id=self.tc_prog_id)

    def _attach_tc_filter(self) -> None:
        """A clsact qdisc (created if missing, left in place) with pktstream's filter at TC_PREF."""
        iface = self.interface
        if not sysbpf.is_bpffs(TC_PIN_DIR):
            raise BpfLoadError(f"attaching the egress classifier to {iface} with tc needs bpffs at {TC_PIN_DIR} "
                               "(mount -t bpf bpf /sys/fs/bpf)")
        if "clsact" not in _tc("qdisc", "show", "dev", iface).stdout:
            r = _tc("qdisc", "add", "dev", iface, "clsact")
            if r.returncode != 0 and "exists" not in r.stderr.lower():
                raise BpfLoadError(f"adding a clsact qdisc to {iface} failed: {r.stderr.strip()}")
        pin = f"{TC_PIN_DIR}/pktstream-egress-{os.getpid()}-{self.ifindex}"
        try:
            sysbpf.obj_pin(self.tc_prog_fd, pin)
        except OSError as e:
            raise BpfLoadError(f"pinning the egress classifier at {pin} failed: {e}") from e
        try:
            r = _tc("filter", "add", "dev", iface, "egress", "pref", str(TC_PREF), "handle", "1", "bpf",
                    "direct-action", "pinned", pin)
        finally:
            os.unlink(pin)  # the filter holds the program now
        if r.returncode != 0:
            raise BpfLoadError(f"adding the egress filter to {iface} failed: {r.stderr.strip()}")

    def _remove_stale_tc_filter(self) -> None:
        """A filter at TC_PREF is what a producer killed on the clsact path left attached: remove it."""
        shown = _tc("filter", "show", "dev", self.interface, "egress", "pref", str(TC_PREF)).stdout
        if "bpf" not in shown:
            return
        r = self._del_tc_filter()
        log.warning("stale_egress_filter_removed", interface=self.interface, pref=TC_PREF,
                    ok=r.returncode == 0, error=r.stderr.strip() or None,
                    reason="a previous producer did not detach it (killed on the clsact path)")

    def _del_tc_filter(self) -> subprocess.CompletedProcess[str]:
        return _tc("filter", "del", "dev", self.interface, "egress", "pref", str(TC_PREF))

    def detach(self) -> None:
        if self.link_fd is not None:
            os.close(self.link_fd)
            self.link_fd = None
            log.info("xdp_detached", interface=self.interface)
        if self.egress_link_fd is not None:
            os.close(self.egress_link_fd)
            self.egress_link_fd = None
        elif self.egress_hook == "tc":
            self._del_tc_filter()
        if self.egress_hook:
            log.info("egress_detached", interface=self.interface, hook=self.egress_hook)
            self.egress_hook = ""

    def set_sample_rate(self, rate: int) -> None:
        sysbpf.map_update(self._config_fd, struct.pack("=I", record.CFG_SAMPLE_RATE),
                          struct.pack("=I", max(1, rate)))

    def counters(self) -> Counters:
        return read_counters(self._counters_fd, self._ncpus)

    def ringbuf_full(self) -> int:
        """Records the kernel could not queue so far, both directions (one map lookup)."""
        return sum(per_cpu(self._counters_fd, record.CNT_RINGBUF_FULL, self._ncpus))

    def reset_counters(self) -> None:
        """Zero the counters (a pinned map keeps the previous run's totals until then)."""
        zero = bytes(8 * self._ncpus)
        for idx in range(record.CNT_MAX):
            sysbpf.map_update(self._counters_fd, struct.pack("=I", idx), zero)

    def test_run(self, frame: bytes, repeat: int = 1, ifindex: int = 0) -> sysbpf.TestRunResult:
        return sysbpf.prog_test_run(self.prog_fd, frame, repeat=repeat, ifindex=ifindex)

    def test_run_egress(self, frame: bytes, repeat: int = 1, ifindex: int = 0,
                        gso_segs: int = 0) -> sysbpf.TestRunResult:
        return sysbpf.prog_test_run(self.tc_prog_fd, frame, repeat=repeat, ifindex=ifindex, gso_segs=gso_segs,
                                    skb=True)

    def close(self) -> None:
        self.detach()
        self.reader.close()
        for fd in (self.prog_fd, self.tc_prog_fd, self._events_fd, self._counters_fd, self._config_fd):
            os.close(fd)

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def per_cpu(counters_fd: int, idx: int, ncpus: int) -> list[int]:
    """One counter of the per-CPU counters map, CPU by CPU."""
    raw = sysbpf.map_lookup(counters_fd, struct.pack("=I", idx), 8 * ncpus)
    return list(struct.unpack(f"={ncpus}Q", raw))


def read_counters(counters_fd: int, ncpus: int | None = None) -> Counters:
    """Sum the per-CPU counters map (also one pinned by a producer that is gone)."""
    n = ncpus or sysbpf.possible_cpus()

    def cpus(idx: int) -> list[int]:
        return per_cpu(counters_fd, idx, n)

    full = cpus(record.CNT_RINGBUF_FULL)
    e = record.CNT_EGRESS
    return Counters(
        packets=sum(cpus(record.CNT_PACKETS)),
        records=sum(cpus(record.CNT_RECORDS)),
        ringbuf_full=sum(full),
        sampled_out=sum(cpus(record.CNT_SAMPLED_OUT)),
        ringbuf_full_per_cpu=tuple(full),
        egress_packets=sum(cpus(e + record.CNT_PACKETS)),
        egress_records=sum(cpus(e + record.CNT_RECORDS)),
        egress_ringbuf_full=sum(cpus(e + record.CNT_RINGBUF_FULL)),
        egress_sampled_out=sum(cpus(e + record.CNT_SAMPLED_OUT)),
    )


def _tc(*args: str) -> subprocess.CompletedProcess[str]:
    """tc(8) from iproute2 (the clsact path)."""
    exe = shutil.which("tc") or "/usr/sbin/tc"
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return subprocess.CompletedProcess([exe, *args], 127, "", "tc (iproute2) is not installed")


def _load_program(src: str, cflags: list[str], cache_key: str = "",
                  timeout_s: float = 120.0) -> tuple[list[int], int]:
    """Run bpfloader in a child; returns [xdp, classifier, events, counters, config] fds and the ring size.
    With a cache key, the child also stores the compiled programs (bpfcache.py) after sending them."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with parent:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pktstream.producer.bpfloader", str(child.fileno()),
                 json.dumps({"src": src, "cflags": cflags, "cache_key": cache_key})],
                pass_fds=(child.fileno(),), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
        finally:
            child.close()
        parent.settimeout(timeout_s)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(parent, 1 << 16, bpfloader.FDS)
        except TimeoutError:
            proc.kill()
            raise BpfLoadError(f"compiling the capture programs took more than {timeout_s:.0f}s") from None
        _, err = proc.communicate(timeout=timeout_s)
    if not msg:
        raise BpfLoadError(f"the capture programs' loader died: {err.strip()[-2000:]}")
    meta = json.loads(msg)
    if not meta.get("ok") or len(fds) != bpfloader.FDS:
        for fd in fds:
            os.close(fd)
        detail = meta.get("error", "no file descriptors received")
        raise BpfLoadError(f"loading the capture programs failed: {detail}\n{err.strip()[-3000:]}")
    return fds, int(meta["ringbuf_size"])


def empty_records(payload_bytes: int, n: int = 0) -> np.ndarray[Any, np.dtype[np.void]]:
    return np.zeros(n, dtype=record.record_dtype(payload_bytes))
