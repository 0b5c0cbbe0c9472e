"""The capture programs' C sources (XDP ingress, egress classifier), shipped as package data."""

from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent
PROGRAM = BPF_DIR / "capture.c"
HEADER = BPF_DIR / "pktstream.h"
