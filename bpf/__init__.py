"""The XDP program's C sources, shipped as package data."""

from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent
PROGRAM = BPF_DIR / "xdp_capture.c"
HEADER = BPF_DIR / "pktstream.h"
