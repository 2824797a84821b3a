"""A campaign's VM cell (vm tier): one `run` cell, as a Ray task on a private local runtime,
boots a kernel, and its results come back to the driver's directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.slow]

NBDFORK = Path(sys.executable).parent / "nbdfork"
SPEC = """\
[campaign]
name = "one-vm-cell"
seed = 3

[[cells]]
kind = "run"
seeds = 1
timeout = 900

[cells.axes]
stable_writes = [0]

[cells.options]
fs = "ext4"
seconds = 4
workload = "pwrite"
"""


def test_a_run_cell_as_a_ray_task_ships_its_results_back(tmp_path: Path) -> None:
    """The run cell is done; its report.json (torn/stamped from a real kernel) and cell.log
    are in DIR/cells/<id>/, unpacked from the task's archive; report.json lists the cell."""
    try:
        import ray  # noqa: F401, PLC0415
    except ImportError:
        if os.environ.get("NBDFORK_RAY_TESTS") == "1" or os.environ.get("CI") == "true":
            pytest.fail("ray is not installed: pip install -e '.[ray]' (scripts/setup with "
                        "NBDFORK_RAY_TESTS=1)")  # fmt: skip
        pytest.skip("ray is not installed")
    spec, out = tmp_path / "spec.toml", tmp_path / "out"
    spec.write_text(SPEC)
    argv = [str(NBDFORK), "campaign", "run", str(spec), "--out", str(out), "--executor", "ray"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1500, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    [cell] = report["cells"]
    assert cell["status"] == "done", cell
    run = json.loads((out / "cells" / cell["id"] / "report.json").read_text())
    [entry] = run["runs"]
    assert (entry["fs"], entry["stable_writes"], entry["outcome"]) in {
        ("ext4", 0, "passed"), ("ext4", 0, "violations")
    }
    assert entry["stamped_pages"] > 0 and run["device_location"] == "host"
