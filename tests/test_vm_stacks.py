"""Storage stacks under Debian 12's kernel (6.1), judged by their own checkers, in one boot:
btrfs with O_DIRECT buffers changing in flight (positive control: 6.1 writes data that fails
its own checksum), btrfs with pwrite (negative control: none), and md raid1 whose second leg
has a byte changed in flight by the device's fault injection (the checkers must see it); and,
in a second boot, dm-integrity D whose only device has bytes changed in flight in its data
area (the read-back must refuse blocks).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from nbdfork.experiments.matrix.session import DEFAULT_DEVICE, RunOptions, RunSession
from tests.test_vm import require_vm

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One boot: btrfs and md-raid1 (ext4) x odirect_churn, pwrite; report.json's runs."""
    require_vm()
    options = RunOptions(
        out=tmp_path_factory.mktemp("stacks") / "out", stacks=("btrfs", "md-raid1"),
        filesystems=("ext4",), stable_writes=(0,), workloads=("odirect_churn", "pwrite"),
        seconds=5.0, seed=11, nbdkit_threads=1,
        workload_options={"pages": 64, "threads": 1, "kick": "sync_file_range"},
        device_params=((1, "corrupt-op", "write"), (1, "corrupt-probability", "0.02")),
    )  # fmt: skip
    report: dict[str, Any] = msgspec.to_builtins(RunSession(options).execute())
    return {run["id"]: run for run in report["runs"]}


def test_btrfs_on_6_1_writes_data_that_fails_its_own_checksum(runs: dict[str, Any]) -> None:
    """O_DIRECT with the buffer changing in flight: scrub finds uncorrectable csum errors
    (the bug btrfs fixed upstream in 968f19c5b1b7); the device's oracle saw the tears."""
    run = runs["btrfs-btrfs-sw0-odirect_churn"]
    scrub = run["checks"]["btrfs_scrub"]
    assert run["outcome"] == "violations" and run["torn"] > 0
    assert scrub["csum_errors"] > 0 and scrub["uncorrectable"] == scrub["csum_errors"]
    assert [(x["path"], x["stable_writes_kernel"], x["stable_writes_run"])
            for x in run["layers"]] == [("/dev/nbd0", 0, 0)]  # fmt: skip


def test_btrfs_with_buffered_writes_has_nothing_to_scrub(runs: dict[str, Any]) -> None:
    """pwrite on btrfs: btrfs waits for writeback itself, nothing tears, scrub is clean."""
    run = runs["btrfs-btrfs-sw0-pwrite"]
    assert run["outcome"] == "passed" and run["stamped_pages"] > 0
    assert run["checks"]["btrfs_scrub"]["csum_errors"] == 0
    assert run["checks"]["fsck"]["clean"] is True


def test_a_damaged_leg_is_seen_by_md_check_and_the_mirror_comparison(
    runs: dict[str, Any],
) -> None:
    """Bytes changed in flight on md raid1's second device only: md `check` counts mismatches
    and the legs differ page by page; each device had its own oracle and report."""
    run = runs["md-raid1-ext4-sw0-pwrite"]
    checks = run["checks"]
    assert checks["md_check"]["mismatch_cnt"] > 0 and checks["mirror_diff_pages"] > 0
    assert [d["device"] for d in run["devices"]] == [0, 1]
    assert run["layers"][0]["path"] == "/dev/md0" and run["layers"][0]["stable_writes_run"] == 0


@pytest.fixture(scope="module")
def damaged_integrity(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One boot: dm-integrity D (ext4, pwrite) with 5% of the WRITEs to 16M..120M of its device
    changed in flight (past the superblock and journal, so the target still opens)."""
    require_vm()
    options = RunOptions(
        out=tmp_path_factory.mktemp("integrity") / "out", stacks=("dm-integrity:D",),
        filesystems=("ext4",), stable_writes=(0,), workloads=("pwrite",), seconds=3.0,
        seed=5, nbdkit_threads=1, device={**DEFAULT_DEVICE, "size": "128M"},
        device_params=((0, "corrupt-op", "write"), (0, "corrupt-probability", "0.05"),
                       (0, "corrupt-range", "16M-120M")),
    )  # fmt: skip
    report: dict[str, Any] = msgspec.to_builtins(RunSession(options).execute())
    (run,) = report["runs"]
    return run


def test_a_damaged_integrity_device_is_refused_at_read_back(
    damaged_integrity: dict[str, Any],
) -> None:
    """The read-back counts blocks the target refuses (EILSEQ) and the kernel's own lines say
    which sectors failed; the run names the device's parameters, and fsck is still run."""
    run = damaged_integrity
    assert run["outcome"] in ("passed", "violations"), run["error"]
    check = run["checks"]["dm_integrity"]
    assert check["mode"] == "D" and check["integrity_errors"] > 0
    assert check["failed_with"] == {"EILSEQ": check["integrity_errors"]}
    assert any("Checksum failed" in line for line in check["kernel_lines"])
    assert run["device_overrides"]["0"]["corrupt-op"] == "write"
    assert run["checks"]["fsck"]["tool"] == "e2fsck"
