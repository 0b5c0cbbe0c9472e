"""Loading the capture programs: compiled by bcc (the first start) against loaded from the cache
(producer/bpfcache.py, every later start with the same program, flags and kernel). Needs root.

    sudo .venv/bin/python -m bench.startup [--runs 5]

Uses a cache directory of its own (removed afterwards); prints the seconds each load took and the
median of the cached ones.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="cached loads after the compile")
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="pktstream-bench-cache-")
    os.environ["PKTSTREAM_CACHE_DIR"] = cache
    from pktstream.producer.capture import Capture

    try:
        times: list[tuple[bool, float]] = []
        for _ in range(1 + args.runs):
            t = time.perf_counter()
            cap = Capture(payload_bytes=64, ringbuf_bytes=16 << 20)
            times.append((cap.from_cache, time.perf_counter() - t))
            cap.close()
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    for cached, s in times:
        print(f"{'cache  ' if cached else 'compile'} {s:.3f} s")
    cached_s = [s for c, s in times if c]
    if cached_s and not times[0][0]:
        median = statistics.median(cached_s)
        print(f"compile {times[0][1]:.2f} s, from the cache {median:.3f} s (median of {len(cached_s)})")


if __name__ == "__main__":
    main()
