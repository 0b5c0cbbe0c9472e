"""The egress classifier in the real kernel: the crafted frames of the ingress tests, sent from the
host into a namespace, come out as egress records with every field asserted, through both attach
paths (a TCX link, and a clsact filter as on kernels before 6.6); BPF_PROG_TEST_RUN shows the
classifier parses every frame and every truncated prefix as XDP does, never drops, and records
the segment count of a GSO buffer; a SIGKILLed producer leaves nothing attached on either hook
(the clsact filter it leaves is found and removed by the next start, which says so)."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import structlog

from pktstream.producer import sysbpf
from pktstream.producer.capture import TC_PREF, Capture
from pktstream.schemas import record as R
from tests.support.frames import build_cases, check_record, kernel_refuses, read_records, record_dict
from tests.support.helpers import NetnsHost

pytestmark = pytest.mark.kernel

TC_ACT_UNSPEC = 0xFFFFFFFF  # -1: the next program (TCX) or the default action decides; never a drop
SENDER = Path(__file__).resolve().parents[1] / "support" / "send_frames.py"


def send_from_host(interface: str, frames: list[bytes]) -> None:
    """Raw frames out of the host's end of the veth (through its egress path, into the namespace)."""
    with tempfile.NamedTemporaryFile(delete=False) as f:
        for fr in frames:
            f.write(struct.pack("<I", len(fr)) + fr)
    try:
        subprocess.run([sys.executable, str(SENDER), interface, f.name], check=True, timeout=60)
    finally:
        os.unlink(f.name)


def tc_filters(interface: str) -> str:
    return subprocess.run(["tc", "filter", "show", "dev", interface, "egress"], capture_output=True,
                          text=True).stdout


def xdp_attached(interface: str) -> bool:
    out = subprocess.run(["ip", "-d", "link", "show", "dev", interface], capture_output=True, text=True).stdout
    return "prog/xdp" in out or " xdp" in out


@pytest.mark.parametrize("hook", ["tcx", "tc"])
def test_frames_sent_from_the_host_are_egress_records(capture: Capture, test_host: NetnsHost, hook: str) -> None:
    cases = build_cases(dst_mac=test_host.peer_mac, src_mac=test_host.host_mac)
    capture.attach(test_host.host_if, direction="egress", egress_hook=hook)
    assert capture.directions == ["egress"] and capture.egress_hook == hook
    if hook == "tcx":
        assert sysbpf.tcx_programs(test_host.ifindex) == [capture.tc_prog_id]
    else:
        assert f"pref {TC_PREF}" in tc_filters(test_host.host_if)
    t0 = time.monotonic_ns()
    send_from_host(test_host.host_if, [c.frame for c in cases])
    recs = read_records(capture, len(cases))
    t1 = time.monotonic_ns()
    c = capture.counters()
    capture.detach()

    assert len(recs) == len(cases), [c.name for c in cases][len(recs):]
    for case, rec in zip(cases, recs, strict=True):
        d = record_dict(rec)
        # the transmit queue is the stack's choice (veth: one per CPU)
        expect = {**case.expect, "rx_queue": d["rx_queue"], "direction": R.DIR_EGRESS, "segments": 1}
        check_record(type(case)(case.name, case.frame, expect, case.payload), d, capture.payload_bytes,
                     test_host.ifindex)
        assert t0 <= d["ts_ns"] <= t1, case.name
    n = len(cases)
    assert (c.packets, c.records, c.egress_packets, c.egress_records, c.ringbuf_full, c.sampled_out) == \
        (n, n, n, n, 0, 0)
    # detached: nothing of pktstream's left on the egress hook
    assert sysbpf.tcx_programs(test_host.ifindex) == []
    assert "bpf" not in tc_filters(test_host.host_if)


def test_classifier_parses_like_xdp_and_never_drops(root: None) -> None:
    """Every crafted frame through both programs (BPF_PROG_TEST_RUN): the records are equal but for
    direction and segments; the classifier's verdict is always TC_ACT_UNSPEC."""
    with Capture(payload_bytes=64, ringbuf_bytes=1 << 20) as cap:
        for case in build_cases(dst_mac="02:00:00:00:00:01", src_mac="02:00:00:00:00:02"):
            if kernel_refuses(case.frame):
                continue
            assert cap.test_run(case.frame).retval == 2, case.name  # XDP_PASS
            assert cap.test_run_egress(case.frame, gso_segs=7).retval == TC_ACT_UNSPEC, case.name
            ing, eg = cap.reader.read(10)
            a, b = record_dict(ing), record_dict(eg)
            assert (a["direction"], a["segments"], b["direction"], b["segments"]) == (0, 1, 1, 7), case.name
            for k in a:
                if k not in ("ts_ns", "direction", "segments", "ifindex", "rx_queue"):
                    assert a[k] == b[k] if k != "payload" else bytes(a[k]) == bytes(b[k]), (case.name, k)
        c = cap.counters()
        n = c.egress_packets
        assert n > 0 and (c.packets, c.records, c.egress_records) == (2 * n, 2 * n, n)


def test_truncated_prefixes_through_the_classifier(root: None) -> None:
    """Every prefix of every frame (from the Ethernet header on): one record each, never a read past
    the end, never a drop."""
    with Capture(payload_bytes=64, ringbuf_bytes=1 << 22) as cap:
        runs = 0
        for case in build_cases(dst_mac="02:00:00:00:00:01", src_mac="02:00:00:00:00:02"):
            for n in range(14, len(case.frame) + 1):
                if kernel_refuses(case.frame[:n]):
                    with pytest.raises(OSError, match="Invalid argument"):
                        cap.test_run_egress(case.frame[:n])
                    continue
                assert cap.test_run_egress(case.frame[:n]).retval == TC_ACT_UNSPEC, f"{case.name}[:{n}]"
                runs += 1
                (r,) = cap.reader.read(10)
                assert r["wire_len"] == n and r["direction"] == R.DIR_EGRESS
                assert r["cap_len"] <= r["payload_len"] <= n
        c = cap.counters()
        assert c.egress_packets == c.egress_records == runs


CHILD = """
import sys, time
from pktstream.producer.capture import Capture
cap = Capture(payload_bytes=0, ringbuf_bytes=1 << 16)
cap.attach(sys.argv[1], direction="both", egress_hook=sys.argv[2])
print("ATTACHED", cap.egress_hook, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("hook", ["tcx", "tc"])
def test_sigkill_leaves_nothing_attached(test_host: NetnsHost, hook: str, root: None) -> None:
    iface = test_host.host_if
    p = subprocess.Popen([sys.executable, "-c", CHILD, iface, hook], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        line = ""
        for line in p.stdout:  # the capture's log lines come first
            if line.startswith("ATTACHED"):
                break
        assert line.split() == ["ATTACHED", hook]
        assert xdp_attached(iface)
        assert (sysbpf.tcx_programs(test_host.ifindex) != []) == (hook == "tcx")
        assert ("bpf" in tc_filters(iface)) == (hook == "tc")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    time.sleep(0.5)  # the links' release runs after the process's files close
    assert not xdp_attached(iface)
    assert sysbpf.tcx_programs(test_host.ifindex) == []
    if hook == "tcx":
        assert "bpf" not in tc_filters(iface)
        return
    # a clsact filter outlives its process: the next start finds it, removes it and says so
    assert f"pref {TC_PREF}" in tc_filters(iface)
    with structlog.testing.capture_logs() as logs, Capture(payload_bytes=0, ringbuf_bytes=1 << 16) as cap:
        cap.attach(iface, direction="egress", egress_hook="tc")
        shown = tc_filters(iface)
        assert shown.count("direct-action") == 1 and f"id {cap.tc_prog_id} name tc_egress" in shown  # ours, once
    assert [e["event"] for e in logs if e["event"] == "stale_egress_filter_removed"] == \
        ["stale_egress_filter_removed"]
    assert "bpf" not in tc_filters(iface)


def test_a_kernel_without_tcx(test_host: NetnsHost, root: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a kernel before 6.6 (the TCX link refused with EINVAL): auto falls back to the clsact
    filter and says so; egress_hook=tcx with direction=both goes on with ingress alone and says why;
    with direction=egress it is an error naming the way out."""
    import errno

    from pktstream.runtime.errors import BpfLoadError

    real = sysbpf.link_create

    def no_tcx(prog_fd: int, ifindex: int, attach_type: int, flags: int = 0) -> int:
        if attach_type == sysbpf.BPF_TCX_EGRESS:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(prog_fd, ifindex, attach_type, flags)

    monkeypatch.setattr(sysbpf, "link_create", no_tcx)
    iface = test_host.host_if
    with Capture(payload_bytes=0, ringbuf_bytes=1 << 16) as cap, structlog.testing.capture_logs() as logs:
        cap.attach(iface, direction="both")
        assert cap.directions == ["ingress", "egress"] and cap.egress_hook == "tc"
        cap.detach()
        cap.attach(iface, direction="both", egress_hook="tcx")
        assert cap.directions == ["ingress"]
        cap.detach()
        with pytest.raises(BpfLoadError, match=r"kernel 6\.6 or later; egress_hook=tc"):
            cap.attach(iface, direction="egress", egress_hook="tcx")
    events = [e["event"] for e in logs]
    assert "tcx_unavailable" in events and "egress_unavailable" in events
    assert "bpf" not in tc_filters(iface) and not xdp_attached(iface)
