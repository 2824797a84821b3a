"""The real-kernel tier: one boot of Debian's kernel runs ext4,xfs x stable_writes 0,1 x pwrite.

Missing prerequisites (vng, qemu, nbdkit, a kernel with nbd) skip this tier, unless
NBDFORK_VM_TESTS=1 or CI=true: then they fail it, so CI cannot pass without running it.
NBDFORK_VM_SECONDS sets the workload seconds per configuration (default 10).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest

from nbdfork.errors import NbdforkError
from nbdfork.experiments.matrix.session import RunOptions, RunSession
from nbdfork.harness.boot import find_vng
from nbdfork.harness.kernel import find_kernel, validate_kernel

pytestmark = [pytest.mark.vm, pytest.mark.slow]

REQUIRED = os.environ.get("NBDFORK_VM_TESTS") == "1" or os.environ.get("CI") == "true"
SECONDS = float(os.environ.get("NBDFORK_VM_SECONDS", "10"))
FILESYSTEMS = ("ext4", "xfs")


def missing_prerequisite() -> str | None:
    """What the VM tier lacks on this machine, or None."""
    for tool in ("qemu-system-x86_64", "nbdkit"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run scripts/setup)"
    try:
        find_vng()
        validate_kernel(find_kernel(None), needs=("nbd", *FILESYSTEMS))
    except NbdforkError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def vm_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The results directory of the module's one boot."""
    return tmp_path_factory.mktemp("vm") / "out"


def require_vm() -> None:
    """Fail (NBDFORK_VM_TESTS=1 or CI=true) or skip when the VM tier lacks a prerequisite."""
    missing = missing_prerequisite()
    if missing is not None:
        message = f"VM tier prerequisite missing: {missing}"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def matrix(vm_out: Path) -> dict[str, Any]:
    """One boot running the default matrix; its report.json content."""
    require_vm()
    options = RunOptions(out=vm_out, filesystems=FILESYSTEMS, seconds=SECONDS, seed=2026)
    report: dict[str, Any] = msgspec.to_builtins(RunSession(options).execute())
    return report


def run(report: dict[str, Any], fs: str, stable_writes: int) -> dict[str, Any]:
    """The pwrite run of `fs` at `stable_writes`, which must have completed."""
    found = next(r for r in report["runs"] if r["id"] == f"{fs}-sw{stable_writes}-pwrite")
    assert found["outcome"] in ("passed", "violations"), found["error"]
    return found


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_pwrite_tears_only_without_stable_writes(matrix: dict[str, Any], fs: str) -> None:
    """stable_writes=0: the device receives torn stamped pages; stable_writes=1: none."""
    sw0, sw1 = run(matrix, fs, 0), run(matrix, fs, 1)
    assert sw0["torn"] > 0, f"{fs}: no tear in {sw0['stamped_pages']} stamped pages"
    assert sw1["stamped_pages"] > 0
    assert sw1["torn"] == 0, f"{fs}: {sw1['torn']} tears with stable_writes=1"


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_stable_writes_stalls_the_writer(matrix: dict[str, Any], fs: str) -> None:
    """The price of stable pages shows: the writer's p99 latency is higher with stable_writes=1."""
    sw0, sw1 = run(matrix, fs, 0), run(matrix, fs, 1)
    assert sw1["writer_latency_ms"]["p99"] > sw0["writer_latency_ms"]["p99"]


def test_every_run_leaves_its_files(matrix: dict[str, Any], vm_out: Path) -> None:
    """Each configuration has its events, summary, workload ledger and guest log, stable_writes
    read back as set, and the harness timings cover the boot and every configuration."""
    assert (vm_out / "report.json").is_file()
    for entry in matrix["runs"]:
        for name in ("events.jsonl", "summary.json", "workload.json", "guest.log"):
            assert (vm_out / entry["dir"] / name).is_file(), f"{entry['id']}: no {name}"
    assert matrix["accel"] in ("kvm", "tcg") and matrix["kernel"]
    assert matrix["harness"]["boot_s"] > 0
    assert len(matrix["harness"]["per_config_overhead_s"]) == 4
    for entry in matrix["runs"]:
        assert entry["stable_writes_read"] == entry["stable_writes"]
