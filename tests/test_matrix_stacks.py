"""The matrix on storage stacks: runs, ids, devices, forwards and per-device collection."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nbdfork.errors import ConfigError
from nbdfork.experiments.matrix.experiment import EXPERIMENT
from nbdfork.experiments.matrix.plan import Plan, build_runs
from nbdfork.experiments.matrix.session import RunOptions
from nbdfork.experiments.stacks.catalogue import parse_stack


def _runs(stacks: str, fs: tuple[str, ...] = ("ext4", "xfs")) -> list[str]:
    specs = build_runs(filesystems=list(fs), stable_writes=[0, 1], workloads=["odirect"],
                       seconds=1.0, seed=1,
                       stacks=[parse_stack(s) for s in stacks.split(",")])  # fmt: skip
    return [f"{r.id}/{r.devices}" for r in specs]


def test_plain_runs_keep_their_ids_and_stacks_prefix_theirs() -> None:
    """plain keeps `ext4-sw0-odirect`; a stack's runs are `STACK-fs-swN-workload` with the
    stack's device count; btrfs (its own filesystem) runs once whatever --fs lists."""
    assert _runs("plain", ("ext4",)) == ["ext4-sw0-odirect/1", "ext4-sw1-odirect/1"]
    assert _runs("md-raid5:skip_copy", ("xfs",)) == [
        "md-raid5.skip_copy-xfs-sw0-odirect/3", "md-raid5.skip_copy-xfs-sw1-odirect/3"]
    assert _runs("btrfs-raid1") == ["btrfs-raid1-btrfs-sw0-odirect/2",
                                    "btrfs-raid1-btrfs-sw1-odirect/2"]


def test_the_stack_option_checks_names_and_modes() -> None:
    """--stack takes known names and modes, one line naming the option otherwise."""
    option = EXPERIMENT.options_by_name["stack"]
    assert option.parse("--stack", "plain,dm-integrity:D,btrfs") == (
        "plain", "dm-integrity:D", "btrfs")
    assert option.parse("--stack", "dm-integrity") == ("dm-integrity:J",)
    for bad, why in (("zfs", "unknown stack 'zfs'"), ("dm-integrity:X", "no mode 'X'"),
                     ("", "no stack named")):
        with pytest.raises(ConfigError, match=f"^--stack: .*{why}"):
            option.parse("--stack", bad)


def test_a_multi_device_stack_needs_the_devices_on_the_host(tmp_path: Path) -> None:
    """md-raid1 in a guest-side device is refused before anything boots."""
    options = RunOptions(out=tmp_path, stacks=("md-raid1",), device_location="guest")
    with pytest.raises(ConfigError, match=r"^--stack: a stack of several devices"):
        options.validate()


def test_each_device_has_its_own_forwards() -> None:
    """Connection attempt k to device d uses port d * per_device + k, never another's."""
    runs = build_runs(filesystems=["ext4"], stable_writes=[0], workloads=["pwrite"], seconds=1,
                      seed=1, stacks=[parse_stack("md-raid5")])  # fmt: skip
    plan = Plan(out="/o", project="/p", python="py", venv="/v", plugin="pl", seed=1, device={},
                runs=runs, device_location="host", devices=3,
                nbd_ports=list(range(10809, 10809 + 9)))  # fmt: skip
    assert plan.ports_per_device == 3
    assert plan.connect_target(0, device=0) == ["10.0.2.100", "10809"]
    assert plan.connect_target(2, device=2) == ["10.0.2.100", "10817"]
    with pytest.raises(ConfigError, match="no forward left"):
        plan.connect_target(3, device=1)
    guest = dataclasses.replace(plan, device_location="guest")
    assert guest.connect_target(0, device=1) == ["-unix", f"{plan.socket}.1"]
