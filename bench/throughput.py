"""Throughput benchmark: the production producer against the straightforward design.

    sudo .venv/bin/python -m bench.throughput            # full sweep, writes docs/benchmarks.md + PNG
    sudo .venv/bin/python -m bench.throughput --quick    # fewer, shorter points

The real XDP program is driven through BPF_PROG_TEST_RUN: the benchmark opens
the program that ``pktstream produce`` (started exactly as in production, on a
veth of its own) loaded, by its id, and runs a realistic mix of frames
through it at a controlled offered rate or flat out. Both producers publish
into a real local Kafka broker the benchmark starts. For every point it
reports the offered and delivered rate, losses (kernel drops), producer CPU
seconds per million records, bytes per record stored by Kafka, latency
from capture to acknowledgement and the producer's peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from pktstream.producer import sysbpf
from pktstream.runtime.kafka_local import LocalKafka

ROOT = Path(__file__).resolve().parents[1]
PKTSTREAM = str(Path(sys.executable).with_name("pktstream"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
IF_A, IF_B = "pstbench0", "pstbench1"


def frame_mix(credentials: bool = False) -> list[bytes]:
    """IPv4 and IPv6, TCP/UDP/ICMP, 64 to 1500 bytes, HTTP requests (``credentials``: also a form
    login, a JSON token request and a multipart upload, bodies the redaction has to read)."""
    http = [
        b"GET /v1/users/%d HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer x\r\n\r\n" % i
        for i in (17, 4242)
    ] + [b"POST /v2/orders HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: 120\r\n\r\n{\"sku\": 1}"]
    if credentials:
        http += [
            b"POST /login HTTP/1.1\r\nHost: shop.example.com\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 42\r\n\r\nusername=bob&password=hunter2&remember=1",
            b"POST /oauth/token HTTP/1.1\r\nHost: auth.example.com\r\nContent-Type: application/json\r\n\r\n"
            b'{"grant_type":"client_credentials","client_id":"app","client_secret":"s3cr3t-value","scope":"a b"}',
            b"POST /upload HTTP/1.1\r\nHost: shop.example.com\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
            b'\r\n--XyZ\r\nContent-Disposition: form-data; name="api_key"\r\n\r\nk-123456\r\n--XyZ--\r\n',
        ]
    f: list[Any] = []
    for i, req in enumerate(http):
        f.append(Ether() / IP(src=f"10.1.0.{i + 1}", dst="10.2.0.1") / TCP(sport=40000 + i, dport=80, flags="PA")
                 / Raw(req))
        f.append(Ether() / IPv6(src=f"fd00::{i + 1}", dst="fd00::99") / TCP(sport=50000 + i, dport=8080,
                 flags="PA") / Raw(req))
    f.append(Ether() / IP(src="10.1.0.9", dst="10.2.0.1") / TCP(sport=41000, dport=443, flags="S"))
    f.append(Ether() / IP(src="10.1.0.9", dst="10.2.0.1") / TCP(sport=41000, dport=443, flags="A")
             / Raw(b"\x17\x03\x03" + b"t" * 1443))
    f.append(Ether() / IP(src="10.1.0.7", dst="10.2.0.53") / UDP(sport=5353, dport=53) / Raw(b"q" * 18))
    f.append(Ether() / IPv6(src="fd00::7", dst="fd00::53") / UDP(sport=5353, dport=53) / Raw(b"q" * 600))
    f.append(Ether() / IP(src="10.1.0.8", dst="10.2.0.1") / ICMP() / Raw(b"p" * 56))
    f.append(Ether() / IPv6(src="fd00::8", dst="fd00::99") / TCP(sport=1, dport=22, flags="A") / Raw(b"s" * 1426))
    return [bytes(x) for x in f]


@dataclass
class Point:
    design: str
    payload_bytes: int
    offered_rate: float  # records/s asked for; 0 = flat out
    duration_s: float
    sent: int = 0
    achieved_offered: float = 0.0
    delivered: int = 0
    delivered_rate: float = 0.0
    ringbuf_full: int = 0
    sampled_out: int = 0
    failed: int = 0
    lost: int = 0
    cpu_s: float = 0.0
    cpu_s_per_million: float = 0.0
    peak_rss_mb: float = 0.0
    bytes_per_record: float = 0.0
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def zero_loss(self) -> bool:
        return self.lost == 0 and self.sent > 0


STATE = Path(tempfile.gettempdir()) / f"pktstream-bench-state-{os.getpid()}"


class Proc:
    """A producer subprocess whose JSON log events are collected."""

    def __init__(self, cmd: list[str]) -> None:
        self.events: list[dict[str, Any]] = []
        # the producer's state (spool, run files) in the benchmark's own directory, removed at the end
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PKTSTREAM_LOG_FORMAT": "json", "PKTSTREAM_HOME": str(STATE)})
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with contextlib.suppress(json.JSONDecodeError):
                self.events.append(json.loads(line))

    def wait(self, name: str, timeout: float = 120) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for e in self.events:
                if e.get("event") == name:
                    return e
            if self.proc.poll() is not None:
                self._t.join(2)
                raise RuntimeError(f"producer exited {self.proc.returncode} before {name}: {self.events[-5:]}")
            time.sleep(0.02)
        raise RuntimeError(f"no {name} in {timeout}s")

    def cpu_and_rss(self) -> tuple[float, float]:
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK
        hwm = 0.0
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
        return cpu, hwm

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(180)
        self._t.join(5)
        return self.wait("producer_stopped", 1)


def generate(prog_fd: int, frames: list[bytes], rate: float, duration: float, chunk: int = 4096,
             egress_fd: int | None = None) -> int:
    """Run frames through the program at ``rate`` records/s (0 = flat out) for ``duration`` seconds;
    with ``egress_fd``, every other chunk through the egress classifier (both directions, half each)."""
    sent = 0
    i = 0
    t0 = time.monotonic()
    while True:
        now = time.monotonic()
        if now - t0 >= duration:
            return sent
        k = chunk if rate <= 0 else min(chunk, int(rate * (now - t0)) - sent)
        if k <= 0:
            time.sleep(0.0005)
            continue
        if egress_fd is not None and i % 2:
            sysbpf.prog_test_run(egress_fd, frames[i % len(frames)], repeat=k, skb=True)
        else:
            sysbpf.prog_test_run(prog_fd, frames[i % len(frames)], repeat=k)
        sent += k
        i += 1


def topic_bytes(kafka: LocalKafka, topic: str) -> int:
    return sum(f.stat().st_size for f in (kafka.dir / "data").glob(f"{topic}-*/*.log"))


def run_point(design: str, payload: int, rate: float, duration: float, bootstrap: str, kafka: LocalKafka,
              frames: list[bytes]) -> Point:
    topic = f"bench-{design}-{uuid.uuid4().hex[:6]}"
    if design in ("pktstream", "adaptive", "both"):
        cmd = [PKTSTREAM, "produce", "--interface", IF_A, "--bootstrap-servers", bootstrap, "--topic", topic,
               "--partitions", "1", "--payload-bytes", str(payload), "--stats-interval", "3600",
               "--direction", "both" if design == "both" else "ingress"]
        if design in ("pktstream", "both"):
            cmd.append("--no-adaptive-sampling")
    else:
        subprocess.run([PKTSTREAM, "produce", "--print-config"], capture_output=True)  # warm imports
        from pktstream.runtime.kafka import ensure_topic

        ensure_topic({"bootstrap.servers": bootstrap}, topic, 1)
        cmd = [sys.executable, "-m", "bench.baseline", "--interface", IF_A, "--bootstrap-servers", bootstrap,
               "--topic", topic, "--payload-bytes", str(payload)]
    p = Proc(cmd)
    prog_id = int(p.wait("xdp_attached")["prog_id"])
    egress_fd = sysbpf.prog_fd_by_id(int(p.wait("egress_attached")["prog_id"])) if design == "both" else None
    p.wait("producer_started")
    fd = sysbpf.prog_fd_by_id(prog_id)
    pt = Point(design, payload, rate, duration)
    try:
        cpu0, _ = p.cpu_and_rss()
        pt.sent = generate(fd, frames, rate, duration, egress_fd=egress_fd)
        # let the producer catch up (bounded), then take its CPU and memory before it stops
        time.sleep(2.0 if design in ("pktstream", "both") else 5.0)
        cpu1, pt.peak_rss_mb = p.cpu_and_rss()
    finally:
        os.close(fd)
        if egress_fd is not None:
            os.close(egress_fd)
        stopped = p.stop()
    pt.cpu_s = cpu1 - cpu0
    pt.achieved_offered = pt.sent / duration
    pt.delivered = int(stopped["records_delivered"])
    pt.delivered_rate = pt.delivered / duration
    pt.ringbuf_full = int(stopped["ringbuf_full"])
    pt.sampled_out = int(stopped["sampled_out"])
    pt.failed = int(stopped["records_failed"])
    # the kernel's own count is the truth (it also sees any stray frame on the veth)
    seen = int(stopped["packets_seen"])
    assert seen >= pt.sent, (seen, pt.sent)
    pt.lost = seen - pt.delivered
    pt.cpu_s_per_million = pt.cpu_s / max(pt.delivered, 1) * 1e6
    pt.bytes_per_record = topic_bytes(kafka, topic) / max(pt.delivered, 1)
    pt.latency_p50_ms = float(stopped.get("latency_p50_ms") or float("nan"))  # null: nothing delivered
    pt.latency_p99_ms = float(stopped.get("latency_p99_ms") or float("nan"))
    pt.extra = {"packets_seen": seen, "final_sample_rate": stopped.get("sample_rate", 1)}
    print(f"  {design:9s} payload={payload:3d} offered={rate / 1e3 if rate else float('inf'):7.0f}k/s "
          f"sent={pt.achieved_offered / 1e3:7.0f}k/s delivered={pt.delivered_rate / 1e3:7.0f}k/s "
          f"lost={pt.lost} (ring full {pt.ringbuf_full}, sampled out {pt.sampled_out}) "
          f"cpu={pt.cpu_s_per_million:.2f}s/M "
          f"bytes/rec={pt.bytes_per_record:.1f} p99={pt.latency_p99_ms:.0f}ms rss={pt.peak_rss_mb:.0f}MB",
          flush=True)
    return pt


def sustained(points: list[Point], design: str, payload: int) -> Point | None:
    ok = [p for p in points if p.design == design and p.payload_bytes == payload and p.zero_loss]
    return max(ok, key=lambda p: p.delivered_rate, default=None)


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.5))
    for (design, payload), style in {("pktstream", 0): "o-", ("pktstream", 64): "s-",
                                     ("baseline", 0): "x--"}.items():
        pts = sorted((p for p in points if p.design == design and p.payload_bytes == payload),
                     key=lambda p: p.achieved_offered)
        if not pts:
            continue
        x = [p.achieved_offered / 1e6 for p in pts]
        label = f"{design}, payload {payload}"
        ax1.plot(x, [p.delivered_rate / 1e6 for p in pts], style, label=label)
        ax2.plot(x, [100 * p.lost / max(p.sent, 1) for p in pts], style, label=label)
    ad = sorted((p for p in points if p.design == "adaptive"), key=lambda p: p.achieved_offered)
    if ad:
        x = [p.achieved_offered / 1e6 for p in ad]
        ax3.plot(x, [p.delivered_rate / 1e6 for p in ad], "o-", label="delivered (M/s)")
        ax3.plot(x, [100 * p.sampled_out / max(p.sent, 1) for p in ad], "s--", label="sampled out, counted (%)")
        ax3.plot(x, [100 * p.ringbuf_full / max(p.sent, 1) for p in ad], "x:", label="ring full, lost (%)")
        ax3.set_xlabel("offered (M records/s)")
        ax3.set_title("overload, adaptive sampling on (payload 0)")
    ax1.set_xlabel("offered (M records/s)")
    ax1.set_ylabel("delivered to Kafka (M records/s)")
    ax2.set_xlabel("offered (M records/s)")
    ax2.set_ylabel("lost (% of offered)")
    ax1.set_title("zero-loss sweep, sampling off")
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log")  # flat-out points sit an order of magnitude above the rest
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("pktstream producer: delivered rate and loss against offered rate (BPF_PROG_TEST_RUN)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(points: list[Point], args: argparse.Namespace, elapsed: float) -> str:
    s0 = sustained(points, "pktstream", 0)
    s64 = sustained(points, "pktstream", 64)
    sb = sustained(points, "baseline", 0)
    lat = [p for p in points if p.design == "pktstream" and p.payload_bytes == 0 and p.offered_rate == 100_000]

    ours = [p for p in points if p.design == "pktstream"]

    def rate(p: Point | None) -> str:
        return f"{p.delivered_rate:,.0f} records/s" if p else "none without loss"

    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}), "
        f"`sudo .venv/bin/python -m bench.throughput{' --quick' if args.quick else ''}`, "
        f"{args.duration:g} s per point, {elapsed / 60:.1f} min in all. Producer, generator and broker share "
        "the machine's cores.",
        "",
        "| figure | target | measured |",
        "| --- | --- | --- |",
        f"| sustained, zero loss, payload off | >= 1,000,000 records/s | {rate(s0)} |",
        f"| sustained, zero loss, 64-byte payload | >= 500,000 records/s | {rate(s64)} |",
        f"| straightforward baseline, zero loss, payload off | | {rate(sb)} |",
        f"| ratio | >= 10x | {f'{s0.delivered_rate / sb.delivered_rate:.1f}x' if s0 and sb else 'n/a'} |",
        f"| bytes per record in Kafka, payload off | <= 20 | {s0.bytes_per_record:.1f} |" if s0 else "",
        f"| latency capture to ack at 100k records/s, p50 / p99 | p99 <= 250 ms | "
        f"{lat[0].latency_p50_ms:.0f} / {lat[0].latency_p99_ms:.0f} ms |" if lat else "",
        f"| producer peak RSS | <= 200 MB | {max(p.peak_rss_mb for p in ours):.0f} MB |",
        f"| producer CPU per million records, payload off | | {s0.cpu_s_per_million:.2f} s |" if s0 else "",
        "",
        "| design | payload | offered (records/s) | sent | delivered (records/s) | lost | kernel drops | "
        "CPU s / M records | bytes / record | p50 / p99 ms | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        lines.append(
            f"| {p.design} | {p.payload_bytes} | {'flat out' if not p.offered_rate else f'{p.offered_rate:,.0f}'} | "
            f"{p.sent:,} | {p.delivered_rate:,.0f} | {p.lost:,} | {p.ringbuf_full:,} | {p.cpu_s_per_million:.2f} | "
            f"{p.bytes_per_record:.1f} | {p.latency_p50_ms:.0f} / {p.latency_p99_ms:.0f} | {p.peak_rss_mb:.0f} |")
    lines += ["", "![delivered and lost against offered](throughput.png)", ""]
    return "\n".join(x for x in lines if x is not None)


def update_doc(section: str) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text()
    start, end = "<!-- throughput:start -->", "<!-- throughput:end -->"
    block = f"{start}\n{section}\n{end}"
    if start in text:
        text = text.split(start)[0] + block + text.split(end, 1)[1]
    else:
        text += f"\n## Producer throughput (bench/throughput.py)\n\n{block}\n"
    doc.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer and shorter points")
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--replot", action="store_true", help="only redraw docs/throughput.png from the last results")
    ap.add_argument("--plan", default=None,
                    help="only these points, design:payload:rate,... (rate 0: flat out); implies --no-doc")
    ap.add_argument("--bin", default=None, help="the pktstream command to measure (default: this venv's)")
    ap.add_argument("--credentials", action="store_true",
                    help="add HTTP requests with credentials in form, JSON and multipart bodies to the mix")
    args = ap.parse_args()
    if args.bin:
        global PKTSTREAM
        PKTSTREAM = args.bin
    results = ROOT / "bench" / "results" / "throughput.json"
    if args.replot:
        plot([Point(**{k: v for k, v in d.items()}) for d in json.loads(results.read_text())],
             ROOT / "docs" / "throughput.png")
        return
    if os.geteuid() != 0:
        sys.exit("bench.throughput: run as root (it loads XDP programs)")
    args.duration = args.duration or (5.0 if args.quick else 10.0)
    plan: list[tuple[str, int, float]] = [("pktstream", 0, 100_000)]
    if args.plan:
        args.no_doc = True
        plan = [(d, int(p), float(r)) for d, p, r in (x.split(":") for x in args.plan.split(","))]
    elif args.quick:
        plan += [("pktstream", 0, r) for r in (1_000_000, 0)] + [("pktstream", 64, r) for r in (500_000, 0)]
        plan += [("baseline", 0, r) for r in (50_000, 100_000)] + [("adaptive", 0, 0)]
    else:
        plan += [("pktstream", 0, r) for r in (500_000, 1_000_000, 1_250_000, 1_500_000, 2_000_000, 0)]
        plan += [("pktstream", 64, r) for r in (250_000, 500_000, 750_000, 1_000_000, 0)]
        plan += [("baseline", 0, r) for r in (25_000, 50_000, 100_000, 150_000, 200_000, 0)]
        plan += [("adaptive", 0, r) for r in (2_000_000, 3_000_000, 4_000_000, 0)]
    frames = frame_mix(args.credentials)
    data_dir = Path(tempfile.mkdtemp(prefix="pktstream-bench-kafka-"))
    STATE.mkdir(parents=True, exist_ok=True)
    kafka = LocalKafka(port=int(os.environ.get("PKTSTREAM_BENCH_KAFKA_PORT", "19192")), data_dir=data_dir)
    subprocess.run(["ip", "link", "del", IF_A], capture_output=True)
    subprocess.run(["ip", "link", "add", IF_A, "type", "veth", "peer", "name", IF_B], check=True)
    for ifname in (IF_A, IF_B):  # no IPv6 router solicitations or DAD on the bench link
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{ifname}.disable_ipv6=1"], check=True)
    subprocess.run(["ip", "link", "set", IF_A, "up"], check=True)
    subprocess.run(["ip", "link", "set", IF_B, "up"], check=True)
    points: list[Point] = []
    t0 = time.monotonic()
    try:
        bootstrap = kafka.up()
        for design, payload, rate in plan:
            points.append(run_point(design, payload, rate, args.duration, bootstrap, kafka, frames))
    finally:
        kafka.down()
        shutil.rmtree(data_dir, ignore_errors=True)  # the broker's data: nothing left under /tmp
        shutil.rmtree(STATE, ignore_errors=True)
        subprocess.run(["ip", "link", "del", IF_A], capture_output=True)
        shutil.rmtree(Path("/sys/fs/bpf/pktstream") / IF_A, ignore_errors=True)
    elapsed = time.monotonic() - t0
    if args.plan:  # a few points: printed above, the full run's results and plot stay as they are
        return
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "throughput.json").write_text(json.dumps([asdict(p) for p in points], indent=1))
    plot(points, ROOT / "docs" / "throughput.png")
    section = write_report(points, args, elapsed)
    print(section)
    if not args.no_doc:
        update_doc(section)


if __name__ == "__main__":
    main()
