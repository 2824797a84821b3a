"""Campaign throughput: cells per hour of the example model spec at --jobs 1 and --jobs 2, and
the orchestrator's own cost per cell, measured in the same run.

Run: .venv/bin/python bench/campaign.py [--quick] [--noop-cells 8] [--json FILE]

Each measurement is one `nbdfork campaign run` subprocess into a fresh directory, so the wall
time includes the CLI's start, the journal, the merged report and its plot. Overhead per cell
is (campaign wall time - the sum of the cells' own durations from the journal) / cells at
--jobs 1; the no-op campaign runs `nbdfork --version` as each cell (Python cells built by
tests/campaign_driver.py: a spec runs only the experiments' kinds), so its wall time per cell
is the floor of what one cell costs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NBDFORK = Path(sys.executable).parent / "nbdfork"
ROOT = Path(__file__).resolve().parent.parent


def _campaign(spec: str, work: Path, name: str, jobs: int) -> dict[str, Any]:
    python_cells = spec.startswith("{")
    spec_path, out = work / f"{name}.{'json' if python_cells else 'toml'}", work / name
    spec_path.write_text(spec)
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix, PYTHONPATH=str(ROOT))
    started = time.monotonic()
    head = [sys.executable, "-m", "tests.campaign_driver"] if python_cells else [str(NBDFORK)]
    argv = [*head, "campaign", "run", str(spec_path), "--out", str(out), "--jobs", str(jobs)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"bench: {name} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    lines = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    durations = [x["duration_s"] for x in lines if x["event"] == "done"]
    cells = len(durations)
    return {"jobs": jobs, "cells": cells, "wall_s": round(wall, 3),
            "cell_s_sum": round(sum(durations), 3),
            "cell_s_median": round(statistics.median(durations), 3),
            "cells_per_hour": round(3600 * cells / wall, 1),
            "overhead_per_cell_s": round((wall * jobs - sum(durations)) / cells, 3)}  # fmt: skip


def _model_spec(quick: bool) -> str:
    out = subprocess.run([str(NBDFORK), "campaign", "example", "model"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return out.replace("seconds = 2", "seconds = 1") if quick else out


def _noop_spec(cells: int) -> str:
    code = f"import subprocess; subprocess.run([{str(NBDFORK)!r}, '--version'], check=True)"
    return json.dumps({"name": "noop", "seed": 0, "code": code, "axis": list(range(cells))})


def main() -> None:
    """Measure, print the figures and ratios, optionally write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s model cells instead of 2 s")
    parser.add_argument("--noop-cells", type=int, default=8, help="cells of the no-op campaign")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if args.noop_cells < 1:
        parser.error("--noop-cells must be positive")
    with tempfile.TemporaryDirectory(prefix="nbdfork-bench-campaign-") as tmp:
        work = Path(tmp)
        spec = _model_spec(args.quick)
        results = {f"model_jobs{j}": _campaign(spec, work, f"model{j}", j) for j in (1, 2)}
        results["noop_jobs1"] = _campaign(_noop_spec(args.noop_cells), work, "noop", 1)
    j1, j2, noop = results["model_jobs1"], results["model_jobs2"], results["noop_jobs1"]
    ratios = {
        "jobs2_vs_jobs1_cells_per_hour": round(j2["cells_per_hour"] / j1["cells_per_hour"], 3),
        "overhead_vs_model_cell": round(j1["overhead_per_cell_s"] / j1["cell_s_median"], 3),
        "noop_cell_wall_vs_model_cell": round(
            noop["wall_s"] / noop["cells"] / j1["cell_s_median"], 3
        ),
    }
    doc = {"schema": "nbdfork.bench.campaign/1", "cores": os.cpu_count(), "results": results,
           "ratios": ratios}  # fmt: skip
    for name, r in results.items():
        print(f"{name:>12}: {r['cells']} cells in {r['wall_s']:.1f} s -> "
              f"{r['cells_per_hour']:.0f} cells/hour; cell median {r['cell_s_median']:.2f} s; "
              f"overhead {r['overhead_per_cell_s']:.2f} s/cell")  # fmt: skip
    for name, value in ratios.items():
        print(f"{name}: {value}")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
