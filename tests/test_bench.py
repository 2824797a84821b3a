"""bench/throughput.py: it runs end to end on a tiny configuration and emits what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, nbdkit_env

BENCH = ROOT / "bench" / "throughput.py"
TARGETS = ("c_memory", "minimal_python", "oracle_off", "oracle_on")
WORKLOADS = ("4k_randwrite", "4k_randread", "1m_write", "4k_write_stamped",
             "4k_write_unstamped", "1m_write_stamped")  # fmt: skip
FORMATS = ("fio", "xfs", "btrfs", "ext4")
FORMAT_RATIOS = (
    "oracle_on_vs_minimal_python_4k_randwrite",  # formats=stamp, the default
    *(f"oracle_{name}_vs_minimal_python_4k_randwrite" for name in FORMATS),
    "oracle_formats_vs_minimal_python_4k_randwrite",
)
ISSUE_RATIOS = (
    "oracle_on_vs_minimal_python_4k_randwrite",
    "oracle_on_vs_c_memory_4k_randwrite",
    "oracle_on_vs_c_memory_1m_write",
    "oracle_on_vs_off_4k_randwrite",
)


@pytest.mark.slow
def test_tiny_run_prints_the_ratios_and_writes_every_json_key(tmp_path: Path) -> None:
    """A 0.2 s run on 32 MiB devices emits every cell, ratio, goal and RSS; its JSON re-renders."""
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(BENCH), "--quick", "--reps", "1", "--runtime", "0.2",
            "--device-size", "32", "--memory-written", "8", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=nbdkit_env(),
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "nbdfork.bench.throughput/1"
    for target in TARGETS:
        for workload in WORKLOADS:
            cell = doc["results"][target][workload]
            assert len(cell["runs_iops"]) == 1 and cell["iops"] > 0 and cell["mb_s"] > 0
            assert cell["cpu_us_per_op"] >= 0  # clock ticks: a tiny run may round to zero
    assert set(ISSUE_RATIOS) <= set(doc["ratios"]) and set(doc["goals"]) == set(ISSUE_RATIOS)
    assert set(FORMAT_RATIOS) <= set(doc["ratios"])  # issue 20: the cost of each format
    for name in FORMATS:  # a server per format alone, measured at 4k randwrite only
        assert list(doc["results"][f"oracle_{name}"]) == ["4k_randwrite"]
        assert doc["targets"][f"oracle_{name}"].endswith(f"oracle=on formats={name}")
    assert set(doc["format_costs"]) == {*FORMATS, "oracle_stamp", "oracle_all_formats"}
    assert all(ratio > 0 for ratio in doc["ratios"].values())
    memory = doc["memory"]
    assert (memory["device_size"], memory["written"]) == (64 << 30, 8 << 20)
    assert memory["rss_after"] >= memory["rss_before"] > 0
    assert all(name in proc.stdout for name in ISSUE_RATIOS)
    again = [sys.executable, str(BENCH), "--from-json", str(out), "--markdown"]
    table = subprocess.run(again, capture_output=True, text=True, timeout=60, check=True).stdout
    assert table.startswith("| median IOPS (MB/s) | `c_memory` |")
    assert all(f"| `{name}` | {doc['ratios'][name]:.3f} |" in table for name in ISSUE_RATIOS)
    assert "| fio 4k randwrite QD32 |" in table and "| - |" in table  # cells not measured


def test_unknown_workload_is_a_usage_error() -> None:
    """--workloads names only known workloads; a wrong one stops the bench with the list."""
    argv = [sys.executable, str(BENCH), "--workloads", "4k_randwrite,8k_nope"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "unknown workload '8k_nope'" in proc.stderr and "4k_randread" in proc.stderr


def test_bad_option_is_a_usage_error() -> None:
    """A non-positive --reps stops the bench before any server starts, with a usage error."""
    argv = [sys.executable, str(BENCH), "--reps", "0"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "--reps must be positive" in proc.stderr


def test_percost_runs_every_cell_and_ratio(tmp_path: Path) -> None:
    """bench/percost.py times every window and backlog and writes both flatness ratios."""
    out = tmp_path / "percost.json"
    argv = [sys.executable, str(ROOT / "bench" / "percost.py"), "--writes", "256",
            "--json", str(out)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert set(doc["gate_us_per_write"]) == {"2", "8", "64", "256", "1024"}
    assert set(doc["cache_us_per_write"]) == {"10", "100", "1000", "16000"}
    assert set(doc["ratios"]) == {"gate_window_1024_vs_2", "cache_pending_16000_vs_10"}
    assert "gate_window_1024_vs_2" in proc.stdout
