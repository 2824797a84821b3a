"""The fio demonstration in a real kernel: an unmodified fio job (bench/fio/hot-4k-psync.fio)
on ext4, judged at the device. fio's own read-back passes at both stable_writes settings while
the device saw torn fio blocks at stable_writes=0 and none at 1.

Skipped without the VM prerequisites unless NBDFORK_VM_TESTS=1 or CI=true (see test_vm.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from nbdfork.experiments.matrix.session import RunOptions, RunSession
from tests.test_vm import require_vm

pytestmark = [pytest.mark.vm, pytest.mark.slow]

JOB = Path(__file__).resolve().parent.parent / "bench" / "fio" / "hot-4k-psync.fio"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One boot: ext4 x stable_writes 0, 1 x the fio job; OUT and its report.json."""
    require_vm()
    out = tmp_path_factory.mktemp("vmfio") / "out"
    options = RunOptions(out=out, filesystems=("ext4",), stable_writes=(0, 1),
                         workloads=(f"fio:{JOB}",), seed=2030, nbdkit_threads=1)  # fmt: skip
    return out, msgspec.to_builtins(RunSession(options).execute())


def _run(data: dict[str, Any], stable_writes: int) -> dict[str, Any]:
    run: dict[str, Any] = next(r for r in data["runs"] if r["stable_writes"] == stable_writes)
    assert run["outcome"] in ("passed", "violations"), run["error"]
    return run


@pytest.mark.parametrize("stable_writes", [0, 1])
def test_fio_read_back_passes_whatever_the_device_saw(
    report: tuple[Path, dict[str, Any]], stable_writes: int
) -> None:
    """fio wrote every block and read each one's last version back without a complaint."""
    run = _run(report[1], stable_writes)
    assert run["fio"]["passed"] is True, run["fio"]
    assert run["formats"]["fio"]["ok_blocks"] >= 100, run["formats"]["fio"]


def test_the_device_sees_torn_fio_blocks_only_without_stable_writes(
    report: tuple[Path, dict[str, Any]],
) -> None:
    """stable_writes=0: torn fio blocks, each a torn_write event of format fio in the run's
    events; stable_writes=1: none, among more fio blocks than at 0."""
    out, data = report
    loose, stable = _run(data, 0), _run(data, 1)
    assert loose["formats"]["fio"]["torn_blocks"] > 0, loose["formats"]["fio"]
    assert stable["formats"]["fio"]["torn_blocks"] == 0, stable["formats"]["fio"]
    assert stable["formats"]["fio"]["blocks"] > 0
    events = [json.loads(line) for line in (out / loose["dir"] / "events.jsonl").open()]
    torn = [e for e in events if e["event"] == "torn_write" and e["format"] == "fio"]
    assert len(torn) == loose["formats"]["fio"]["torn"] > 0
