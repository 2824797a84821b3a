"""The real-kernel check of the metadata oracle: one boot runs mkfs, mount, the pwrite workload
and unmount on ext4, xfs and btrfs (stable_writes=0), every WRITE judged with formats
stamp,ext4,xfs,btrfs -- and no metadata block may be called torn, stale or overlapping.

Skipped without the VM prerequisites unless NBDFORK_VM_TESTS=1 or CI=true (see test_vm.py).
NBDFORK_VM_SECONDS sets the workload seconds per filesystem (default here 3).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from nbdfork.experiments.matrix.session import RunOptions, RunSession
from tests.test_vm import require_vm

pytestmark = [pytest.mark.vm, pytest.mark.slow]

SECONDS = float(os.environ.get("NBDFORK_VM_SECONDS", "3"))
FILESYSTEMS = ("ext4", "xfs", "btrfs")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One boot: ext4, xfs, btrfs x stable_writes=0 x pwrite; OUT and its report.json."""
    require_vm()
    out = tmp_path_factory.mktemp("vmformats") / "out"
    options = RunOptions(out=out, filesystems=FILESYSTEMS, stable_writes=(0,), seconds=SECONDS,
                         seed=2027, mkfs_each_run=True)  # fmt: skip
    return out, msgspec.to_builtins(RunSession(options).execute())


def test_mkfs_mount_workload_unmount_give_no_metadata_verdict(
    report: tuple[Path, dict[str, Any]],
) -> None:
    """On each of ext4, xfs, btrfs: the run completed, the device judged dozens of its metadata
    blocks (ok), and none torn, stale or overlapping -- no such event in events.jsonl."""
    out, data = report
    assert data["runs"][0]["device"]["formats"] == "stamp,ext4,xfs,btrfs"
    for fs in FILESYSTEMS:
        run = next(r for r in data["runs"] if r["fs"] == fs)
        assert run["outcome"] in ("passed", "violations"), run["error"]
        meta = run["formats"][fs]
        assert meta["ok_blocks"] >= 10, (fs, meta)
        assert (meta["torn"], meta["stale"], meta["overlapping"], meta["torn_blocks"]) == (
            0, 0, 0, 0), (fs, meta)  # fmt: skip
        events = (out / run["dir"] / "events.jsonl").read_text().splitlines()
        assert [e for e in map(json.loads, events) if e["format"] == fs] == []
