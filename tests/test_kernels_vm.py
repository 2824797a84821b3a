"""Two kernels side by side (vm tier): Debian's 6.1 and the newest fetched 7.x differ in what
they offer a direct writer — untorn (RWF_ATOMIC) writes on XFS exist only on the newer one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from nbdfork.errors import NbdforkError
from nbdfork.experiments.matrix.session import MultiKernelSession, RunOptions
from nbdfork.harness.kernel import find_kernel

pytestmark = [pytest.mark.vm, pytest.mark.slow]

REQUIRED = os.environ.get("NBDFORK_VM_TESTS") == "1" or os.environ.get("CI") == "true"


def require_kernel_7() -> None:
    """A fetched 7.x kernel, or a failure in CI (setup fetches one) and a skip elsewhere."""
    try:
        find_kernel("7")
    except NbdforkError as exc:
        if REQUIRED:
            pytest.fail(f"no 7.x kernel fetched (scripts/setup fetches one): {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `nbdfork run --kernel 6.1,7 --fs xfs --stable-writes 1 --workload atomic`."""
    require_kernel_7()
    out = tmp_path_factory.mktemp("kernels") / "out"
    options = RunOptions(out=out, kernel="6.1,7", filesystems=("xfs",), stable_writes=(1,),
                         workloads=("atomic",), seconds=3.0, seed=12)  # fmt: skip
    session = MultiKernelSession(options, ["6.1", "7"])
    return {**msgspec.to_builtins(session.execute()), "out": str(out)}


def _run(report: dict[str, Any], series: str) -> dict[str, Any]:
    return next(r for r in report["runs"] if r["kernel"].startswith(series + "."))


def test_untorn_writes_exist_only_on_the_newer_kernel(report: dict[str, Any]) -> None:
    """6.1: the atomic workload is skipped (statx offers no atomic write unit); 7.x XFS: it
    runs, RWF_ATOMIC writes of stamped pages reach the device (software atomic writes)."""
    old, new = _run(report, "6"), _run(report, "7")
    assert old["outcome"] == "skipped" and "statx atomic write unit min 0" in old["error"]
    assert new["outcome"] in ("passed", "violations"), new["error"]
    assert new["stamped_pages"] > 0
    workload = json.loads((Path(report["out"]) / new["dir"] / "workload.json").read_text())
    assert workload["atomic_write_unit_min"] <= 4096 <= workload["atomic_write_unit_max"]


def test_one_report_names_both_kernels(report: dict[str, Any]) -> None:
    """report.json lists both kernels in order; each run names its kernel; device on host."""
    assert [k.split(".")[0] for k in report["kernels"]] == ["6", "7"]
    assert {r["kernel"] for r in report["runs"]} == set(report["kernels"])
    assert report["device_location"] == "host"
    assert (Path(report["out"]) / "report.md").is_file()


def test_no_crash_state_holds_half_of_an_atomic_write(tmp_path: Path) -> None:
    """7.x XFS, whole files rewritten by RWF_ATOMIC: crash states cut anywhere pass (no file
    half old, half new; nothing fsynced lost) and the ignore-flush control loses writes."""
    from nbdfork.experiments.crash.host import CrashOptions, run_crash  # noqa: PLC0415

    require_kernel_7()
    options = CrashOptions(out=tmp_path / "crash", fs="xfs", states=4, control_states=2,
                           seconds=2, seed=8, kernel="7", points="any",
                           workload="atomic")  # fmt: skip
    report = msgspec.to_builtins(run_crash(options))
    assert report["workload"]["kind"] == "atomic" and report["guest_error"] is None
    assert (report["states_checked"], report["outcome"]) == (4, "passed")
    assert report["control"]["ledger_violations"] > 0
    ledger = json.loads((tmp_path / "crash" / "campaign" / "ledger.json").read_text())
    assert len(ledger["checkpoints"]) > 8  # creations plus atomic rewrites
    assert all(v[2:] == [True] for v in ledger["checkpoints"][-1]["files"].values())
