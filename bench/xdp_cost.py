"""The XDP program's own cost per packet, measured in the kernel with BPF_PROG_TEST_RUN.

    sudo .venv/bin/python -m bench.xdp_cost [--payload 128] [--repeat 200000]

Each frame is run ``repeat`` times, ``rounds`` times over; the kernel reports
the mean duration per run and the median of the rounds is printed. The ring
buffer is drained between rounds so that no reservation fails.
"""

from __future__ import annotations

import argparse
import statistics

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from pktstream.producer.capture import Capture

HTTP = b"GET /v1/users/12345/orders?limit=10 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench\r\n\r\n"
FRAMES = {
    "ipv4_tcp_http": Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80, flags="PA")
    / Raw(HTTP + b"x" * 200),
    "ipv4_udp_64": Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5353, dport=53) / Raw(b"q" * 22),
    "ipv6_tcp_1500": Ether() / IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1, dport=443, flags="A")
    / Raw(b"z" * 1426),
    "vlan_ipv4_tcp_syn": Ether() / Dot1Q(vlan=10) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--payload", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=7, help="runs per frame; the median is reported")
    a = ap.parse_args()
    ring = 1 << 26
    with Capture(payload_bytes=a.payload, ringbuf_bytes=ring) as cap:
        per_run = min(a.repeat, ring // cap.reader.stride - 1)
        print(f"payload_bytes={a.payload} repeat={per_run}")
        for name, pkt in FRAMES.items():
            frame = bytes(pkt)
            cap.test_run(frame, repeat=1000)
            cap.reader.read(10**7)
            durations = []
            for _ in range(a.rounds):
                durations.append(cap.test_run(frame, repeat=per_run).duration_ns)
                n = len(cap.reader.read(10**7))
                assert n == per_run
            c = cap.counters()
            print(f"{name:20s} {len(frame):5d} B  median {statistics.median(durations):5.0f} ns/packet  "
                  f"min {min(durations):4d}  max {max(durations):4d}  ringbuf_full={c.ringbuf_full}")


if __name__ == "__main__":
    main()
