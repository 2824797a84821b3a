"""Per-write cost of the reorder gate and the volatile cache against window size and backlog.

Run: .venv/bin/python bench/percost.py [--writes 20000] [--json FILE]

Issue 9: the cost of one write must not grow with the reorder window (2 .. 1024) or with the
number of writes pending in the cache (10 .. 16,000), or the device's own bookkeeping distorts
the latencies it models. Each cell times `--writes` 4 KiB writes in one thread, without
sleeping (the gate's timeout never fires: requests are released in arrival order, so each
write in turn waits for the ones ranked before it to be released by a helper that releases a
window at a time). The figure reported per axis is the ratio of the largest setting's cost to
the smallest's, measured in the same run: 1.0 is flat.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from nbdfork.device.cache import CacheModel
from nbdfork.device.clock import FakeClock
from nbdfork.device.reorder import ReorderGate
from nbdfork.device.rng import DeviceRng
from nbdfork.device.store import Store

WINDOWS = (2, 8, 64, 256, 1024)
BACKLOGS = (10, 100, 1_000, 16_000)
PAGE = 4096


def gate_cost(window: int, writes: int) -> float:
    """Microseconds per write through a ReorderGate of `window`: each window's requests are
    released in their permuted order, as the waiting writers would be."""
    gate = ReorderGate(window, DeviceRng(1), FakeClock(), timeout=0.0)
    writes = -(-writes // window) * window
    start = time.perf_counter()
    for index in range(writes // window):
        base = index * window + 1
        for position in gate.order(index):
            gate.wait(base + position)  # everything ranked before it is released: no wait
    return (time.perf_counter() - start) / writes * 1e6


def cache_cost(backlog: int, writes: int) -> float:
    """Microseconds per write into a cache holding `backlog` pending writes (capacity-bound,
    so every write also destages a seeded random one)."""
    size = (backlog + 2 * writes) * PAGE
    cache = CacheModel(Store(size), rng=DeviceRng(1), capacity=backlog * PAGE)
    data = bytes(PAGE)
    for i in range(backlog):
        cache.write(i, i * PAGE, data, fua=False)
    start = time.perf_counter()
    for i in range(backlog, backlog + writes):
        cache.write(i, (i % (backlog + writes)) * PAGE, data, fua=False)
    elapsed = time.perf_counter() - start
    cache.close()
    return elapsed / writes * 1e6


def measure(writes: int) -> dict[str, object]:
    """Every cell, then the flatness ratios."""
    gate = {str(w): round(gate_cost(w, writes), 3) for w in WINDOWS}
    cache = {str(b): round(cache_cost(b, writes), 3) for b in BACKLOGS}
    return {
        "schema": "nbdfork.bench.percost/1",
        "writes_per_cell": writes,
        "gate_us_per_write": gate,
        "cache_us_per_write": cache,
        "ratios": {
            "gate_window_1024_vs_2": round(gate["1024"] / gate["2"], 3),
            "cache_pending_16000_vs_10": round(cache["16000"] / cache["10"], 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Run the cells, print a table, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=20_000, help="writes timed per cell")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.writes <= 0:
        parser.error("--writes must be positive")
    doc = measure(args.writes)
    print("| reorder window | µs per write |\n|---:|---:|")
    for window, cost in doc["gate_us_per_write"].items():  # type: ignore[attr-defined]
        print(f"| {window} | {cost} |")
    print("\n| pending writes | µs per write |\n|---:|---:|")
    for backlog, cost in doc["cache_us_per_write"].items():  # type: ignore[attr-defined]
        print(f"| {backlog} | {cost} |")
    for name, ratio in doc["ratios"].items():  # type: ignore[attr-defined]
        print(f"{name}: {ratio}")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
