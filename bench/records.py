"""Copying feature rows: numpy's structured copy (field by field) against features.take
(the same bytes as opaque records).

    .venv/bin/python -m bench.records [--rows 400000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from pktstream.consumers.engine.features import FEATURE_DTYPE, as_records, take


def best_ms(f: Callable[[], object], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400_000)
    n = ap.parse_args().rows
    rows = np.zeros(n, FEATURE_DTYPE)
    order = np.random.default_rng(1).permutation(n)
    parts = [rows[i : i + 5000] for i in range(0, n, 5000)]
    print(f"{n:,} feature rows of {FEATURE_DTYPE.itemsize} bytes, best of 5")
    print(f"gather   structured {best_ms(lambda: rows[order]):7.1f} ms   "
          f"take    {best_ms(lambda: take(rows, order)):7.1f} ms")
    print(f"concat   structured {best_ms(lambda: np.concatenate(parts)):7.1f} ms   "
          f"records {best_ms(lambda: np.concatenate([as_records(p) for p in parts]).view(FEATURE_DTYPE)):7.1f} ms")


if __name__ == "__main__":
    main()
