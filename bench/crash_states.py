"""Crash states checked per second, offline (oracle over the image, no fsck).

Run: .venv/bin/python bench/crash_states.py [--size 64M] [--states 300] [--json FILE]

A device with a volatile cache gets durable stamped pages and a set of pending ones; then many
crash states are checked against the ledger two ways: the incremental CrashChecker (scan the
media once, re-decode only the pages a state touches) and, as the baseline, building each
state's full image and scanning it. Goal (issue 4): >= 100 states/s for a 64 MiB image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nbdfork.config import parse_params, parse_size
from nbdfork.device.clock import FakeClock
from nbdfork.device.crash import choose_state, state_bytes
from nbdfork.device.device import Device
from nbdfork.oracle.crashcheck import CrashChecker
from nbdfork.oracle.events import NullSink
from nbdfork.oracle.image import scan_image
from nbdfork.oracle.ledger import validate_ledger
from nbdfork.oracle.stamp import PAGE_SIZE, encode_pages
from nbdfork.oracle.verify import judge

GOAL = 100.0


def _prepare(size: int) -> tuple[Device, dict[tuple[int, int], int]]:
    config = parse_params([("size", str(size)), ("seed", "1"), ("cache", "volatile"),
                           ("cache-size", "1G"), ("oracle", "off")])  # fmt: skip
    device = Device(config, judge(NullSink()), FakeClock())
    pages = size // PAGE_SIZE // 8  # stamp an eighth of the device, 32 pages per write
    for first in range(0, pages, 32):
        device.pwrite(1, encode_pages(1, first, [1] * 32), first * PAGE_SIZE * 8, fua=False)
    device.flush()
    for first in range(0, pages, 64):  # rewrite some as pending generation 2
        device.pwrite(1, encode_pages(1, first, [2] * 8), first * PAGE_SIZE * 8, fua=False)
    return device, {(1, p): 1 for p in range(pages)}


def _rate(fn: Callable[[int], object], count: int) -> float:
    start = time.perf_counter()
    for index in range(count):
        fn(index)
    return count / (time.perf_counter() - start)


def main() -> int:
    """Measure and print states/s for both methods and the ratio to the goal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="64M")
    parser.add_argument("--states", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device, durable = _prepare(parse_size("--size", args.size))
    cache = device.cache
    assert cache is not None
    pending = list(cache.pending.values())
    checker = CrashChecker(cache)

    def incremental(index: int) -> None:
        verdict = checker.check(choose_state(pending, seed=1, point=0, index=index), durable)
        assert verdict.ok, verdict

    def full(index: int) -> int:
        # The baseline only counts what a plain scan sees (torn-by-the-state pages included).
        image = state_bytes(cache, choose_state(pending, seed=1, point=0, index=index))
        scan = scan_image(bytes(image))
        newest = {k: max(g) for k, g in scan.found.items()}
        return len(validate_ledger(durable, newest))

    fast = _rate(incremental, args.states)
    slow = _rate(full, max(args.states // 10, 5))
    result = {
        "size": args.size, "pending_writes": len(pending), "stamped_pages": len(durable),
        "states_per_s_incremental": round(fast, 1), "states_per_s_full_image": round(slow, 1),
        "ratios": {"incremental_vs_goal": round(fast / GOAL, 2),
                   "incremental_vs_full_image": round(fast / slow, 2)},
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
