"""The real-kernel harness's fixed cost: boot time and overhead per configuration.

Run from the project root after scripts/setup:

    .venv/bin/python bench/harness.py                  # ~3 minutes under TCG
    .venv/bin/python bench/harness.py --configs 4 --seconds 5 --json bench-harness.json

Two measurements, one after the other:
1. `vng --exec true`: the bare VM (qemu, the kernel, virtme-ng's init, udev), with the same
   boot trimming the harness uses;
2. one `nbdfork run` boot of `--configs` pwrite configurations (ext4/xfs x stable_writes) of
   `--seconds` each: `boot_s` is the time until the guest can run its first configuration
   (VM + modules + nbdkit with the plugin loaded + the workload imports); a configuration's
   overhead is its wall time beyond its workload seconds (nbd-client, stable_writes, mkfs or
   not, mount, umount, nbd-client -d, cutting the device report).

The goals (issue 3): boot <= 25 s, overhead <= 3 s per configuration, under TCG on 2 cores.
Ratios above 1 miss the goal. The host's load average is printed: these figures are CPU-bound
and another busy process on a 2-core host inflates them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a fresh clone: import nbdfork from here
    sys.path.insert(0, str(ROOT))

from nbdfork.experiments.matrix.session import RunOptions, RunSession  # noqa: E402
from nbdfork.harness.boot import VMConfig, find_vng, vng_argv  # noqa: E402
from nbdfork.harness.kernel import detect_accel, find_kernel  # noqa: E402

SCHEMA = "nbdfork.bench.harness/1"
GOAL_BOOT_S = 25.0
GOAL_OVERHEAD_S = 3.0
MATRIX = [("ext4", 0), ("ext4", 1), ("xfs", 0), ("xfs", 1)]


def bare_boot(out: Path) -> dict[str, Any]:
    """Seconds for `vng --exec true` with the harness's boot options."""
    kernel = find_kernel(None)
    accel, _ = detect_accel(kernel.image)
    argv = vng_argv(VMConfig(kernel, accel, vng=find_vng()), out, ["true"])
    env = dict(os.environ, PATH=f"{Path(find_vng()).parent}:{os.environ.get('PATH', '')}")
    started = time.monotonic()
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=600, check=False
    )
    return {
        "seconds": round(time.monotonic() - started, 3),
        "status": proc.returncode,
        "accel": accel,
    }


def matrix_run(out: Path, configs: int, seconds: float) -> dict[str, Any]:
    """One boot of `configs` pwrite configurations; the harness section of its report."""
    chosen = MATRIX[:configs]
    filesystems = tuple(dict.fromkeys(fs for fs, _ in chosen))
    stable = tuple(dict.fromkeys(sw for _, sw in chosen))
    options = RunOptions(
        out=out, filesystems=filesystems, stable_writes=stable, seconds=seconds, seed=1
    )
    started = time.monotonic()
    report = RunSession(options).execute()
    return {
        "wall_s": round(time.monotonic() - started, 3),
        "harness": msgspec.to_builtins(report.harness),
        "outcomes": [r.outcome for r in report.runs],
        "accel": report.accel,
        "kernel": report.kernel,
    }


def ratio(value: float | None, goal: float) -> str:
    """`value / goal` for the table."""
    return "-" if value is None else f"{value / goal:.2f}"


def main() -> int:
    """Measure, print the table against the goals, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=4, choices=range(1, 5))
    parser.add_argument("--seconds", type=float, default=5.0, help="workload seconds per config")
    parser.add_argument("--skip-bare", action="store_true", help="skip the vng --exec true boot")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="nbdfork-bench-") as tmp:
        bare = None if args.skip_bare else bare_boot(Path(tmp))
        run = matrix_run(Path(tmp) / "out", args.configs, args.seconds)
    harness = run["harness"]
    overhead = harness["per_config_overhead_s"]
    mean = statistics.fmean(overhead) if overhead else None
    rows = [
        ("bare VM boot (vng --exec true)", bare["seconds"] if bare else None, None),
        ("  VM boot to the guest script", harness.get("vm_boot_s"), None),
        ("  nbdkit + plugin + workload imports", harness.get("device_start_s"), None),
        ("boot_s (until the first configuration can run)", harness["boot_s"], GOAL_BOOT_S),
        ("per-configuration overhead, mean", mean, GOAL_OVERHEAD_S),
        ("per-configuration overhead, max", max(overhead) if overhead else None, GOAL_OVERHEAD_S),
        ("shutdown", harness.get("shutdown_s"), None),
        ("whole run (wall)", run["wall_s"], None),
    ]
    print(
        f"nbdfork harness bench: kernel {run['kernel']} ({run['accel']}), {args.configs} "
        f"configurations x {args.seconds:g} s, load average {load_before[0]:.2f} before"
    )
    print(f"{'':50} {'seconds':>9} {'goal':>6} {'ratio':>6}")
    for name, value, goal in rows:
        shown = "-" if value is None else f"{value:.1f}"
        print(f"{name:50} {shown:>9} {goal or '':>6} {ratio(value, goal) if goal else '':>6}")
    print(
        f"per configuration: {', '.join(f'{v:.1f}' for v in overhead)}  outcomes: "
        f"{', '.join(run['outcomes'])}"
    )
    if args.json:
        result = {
            "schema": SCHEMA,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "load_average": load_before,
            "bare_boot": bare,
            "run": run,
            "goals": {"boot_s": GOAL_BOOT_S, "per_config_overhead_s": GOAL_OVERHEAD_S},
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
