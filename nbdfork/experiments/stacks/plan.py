"""Build plans: the exact steps that assemble a stack over given devices, and undo it.

Pure: a plan is data (argv lists, sysfs writes), computed on the host or in the guest and
replayed by `guest.build` / `guest.teardown`. Plans assume fresh, zeroed devices (a new nbdfork
export, a new brd): md arrays are created `--assume-clean`, so a later `check` counts only what
the run made differ, and no resync traffic reaches the devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from nbdfork.errors import ConfigError
from nbdfork.experiments.stacks.catalogue import Filesystem, StackSpec

__all__ = ["TIMEOUTS", "BuildPlan", "LayerSpec", "Run", "SysfsWrite", "plan_stack"]

TIMEOUTS: dict[str, float] = {
    "assemble": 120.0,
    "mkfs": 300.0,
    "mount": 120.0,
    "umount": 180.0,
    "teardown": 120.0,
}
"""Seconds per kind of plan step."""

MD_DEVICE = "/dev/md0"
INTEGRITY_NAME = "nbdfork-integrity"
_INTEGRITY_FLAGS = {"J": (), "D": ("--integrity-no-journal",), "B": ("--integrity-bitmap-mode",)}


class Run(msgspec.Struct, frozen=True, tag="run"):
    """Run a tool: argv (never a shell string) with a timeout."""

    step: str
    argv: tuple[str, ...]
    timeout_s: float


class SysfsWrite(msgspec.Struct, frozen=True, tag="sysfs"):
    """Write `value` to a sysfs attribute of the block device `device` (`md/skip_copy`)."""

    step: str
    device: str
    attribute: str
    value: str


Action = Run | SysfsWrite


class LayerSpec(msgspec.Struct, frozen=True):
    """One block layer of a stack: the device path and what it is."""

    path: str
    kind: str  # "md-raid1", "dm-integrity", "device", ...


class BuildPlan(msgspec.Struct, frozen=True):
    """How to build one stack over `devices` with `filesystem` mounted at `mountpoint`.

    `layers` run top-down; `top` are the devices the filesystem sits on (the run's
    stable_writes goes there: every member for btrfs, the md/dm device otherwise)."""

    stack: str
    mode: str
    filesystem: Filesystem
    devices: tuple[str, ...]
    mountpoint: str
    layers: tuple[LayerSpec, ...]
    top: tuple[str, ...]
    assemble: tuple[Action, ...]
    mkfs: tuple[Run, ...]
    mount: Run
    umount: Run
    teardown: tuple[Run, ...]
    checks: tuple[str, ...]
    md_device: str | None = None
    integrity_name: str | None = None


def plan_stack(spec: StackSpec, devices: Sequence[str], fs: str, mountpoint: str) -> BuildPlan:
    """The build plan of `spec` over exactly `spec.devices` device paths."""
    devs = tuple(devices)
    if len(devs) != spec.devices:
        raise ConfigError("stack", f"{spec.label} needs {spec.devices} device(s), got {len(devs)}")
    if len(set(devs)) != len(devs):
        raise ConfigError("stack", f"{spec.label}: a device is named twice: {', '.join(devs)}")
    filesystem = spec.filesystem(fs)
    builder = _BUILDERS[spec.name]
    return builder(spec, devs, filesystem, mountpoint)


def _mkfs(filesystem: Filesystem, top: tuple[str, ...], profile: str = "") -> tuple[Run, ...]:
    t = TIMEOUTS["mkfs"]
    if filesystem == "ext4":
        return (Run("mkfs", ("mkfs.ext4", "-F", "-q", "-b", "4096", top[0]), t),)
    if filesystem == "xfs":
        return (Run("mkfs", ("mkfs.xfs", "-f", "-q", top[0]), t),)
    data, meta = ("raid1", "raid1") if profile == "raid1" else ("single", "dup")
    return (Run("mkfs", ("mkfs.btrfs", "-f", "-q", "-d", data, "-m", meta, *top), t),)


def _mount(filesystem: Filesystem, top: tuple[str, ...], mountpoint: str) -> Run:
    options: tuple[str, ...] = ()
    if filesystem == "btrfs" and len(top) > 1:
        # name every member: no reliance on a device scan having registered them
        options = ("-o", ",".join(f"device={d}" for d in top))
    return Run("mount", ("mount", *options, top[0], mountpoint), TIMEOUTS["mount"])


def _umount(mountpoint: str) -> Run:
    return Run("umount", ("umount", mountpoint), TIMEOUTS["umount"])


def _plan(
    spec: StackSpec, devs: tuple[str, ...], fs: Filesystem, mnt: str, *,
    layers: tuple[LayerSpec, ...], top: tuple[str, ...], checks: tuple[str, ...],
    assemble: tuple[Action, ...] = (), teardown: tuple[Run, ...] = (), profile: str = "",
    md_device: str | None = None, integrity_name: str | None = None,
) -> BuildPlan:  # fmt: skip
    """A stack's plan: its own layers, assembly and teardown; mkfs and mount on its top."""
    return BuildPlan(
        spec.name, spec.mode, fs, devs, mnt, layers=layers, top=top, assemble=assemble,
        mkfs=_mkfs(fs, top, profile), mount=_mount(fs, top, mnt), umount=_umount(mnt),
        teardown=teardown, checks=checks, md_device=md_device, integrity_name=integrity_name,
    )  # fmt: skip


def _plain(spec: StackSpec, devs: tuple[str, ...], fs: Filesystem, mnt: str) -> BuildPlan:
    return _plan(spec, devs, fs, mnt, layers=(LayerSpec(devs[0], "device"),), top=devs,
                 checks=("fsck",))


def _btrfs(spec: StackSpec, devs: tuple[str, ...], fs: Filesystem, mnt: str) -> BuildPlan:
    raid1 = spec.name == "btrfs-raid1"
    checks = ("btrfs_scrub", "mirror_diff", "fsck") if raid1 else ("btrfs_scrub", "fsck")
    return _plan(spec, devs, fs, mnt, layers=tuple(LayerSpec(d, "btrfs-device") for d in devs),
                 top=devs, checks=checks, profile="raid1" if raid1 else "")


def _md(spec: StackSpec, devs: tuple[str, ...], fs: Filesystem, mnt: str) -> BuildPlan:
    level = "1" if spec.name == "md-raid1" else "5"
    create = Run(
        "assemble",
        (
            "mdadm",
            "--create",
            MD_DEVICE,
            "--run",
            "--assume-clean",
            "--metadata=1.2",
            f"--level={level}",
            f"--raid-devices={len(devs)}",
            *devs,
        ),
        TIMEOUTS["assemble"],
    )
    assemble: tuple[Action, ...] = (create,)
    if level == "5":
        value = "1" if spec.mode == "skip_copy" else "0"
        assemble += (SysfsWrite("skip_copy", MD_DEVICE, "md/skip_copy", value),)
    top = (MD_DEVICE,)
    checks = ("md_check", "mirror_diff", "fsck") if level == "1" else ("md_check", "fsck")
    return _plan(
        spec, devs, fs, mnt,
        layers=(LayerSpec(MD_DEVICE, spec.name), *(LayerSpec(d, "md-member") for d in devs)),
        top=top, assemble=assemble, checks=checks, md_device=MD_DEVICE,
        teardown=(
            Run("teardown", ("mdadm", "--stop", MD_DEVICE), TIMEOUTS["teardown"]),
            Run("teardown", ("mdadm", "--zero-superblock", *devs), TIMEOUTS["teardown"]),
        ),
    )  # fmt: skip


def _integrity(spec: StackSpec, devs: tuple[str, ...], fs: Filesystem, mnt: str) -> BuildPlan:
    t = TIMEOUTS["assemble"]
    dev, flags = devs[0], _INTEGRITY_FLAGS[spec.mode]
    top = (f"/dev/mapper/{INTEGRITY_NAME}",)
    return _plan(
        spec, devs, fs, mnt,
        layers=(LayerSpec(top[0], f"dm-integrity:{spec.mode}"), LayerSpec(dev, "device")),
        top=top, checks=("dm_integrity", "fsck"), integrity_name=INTEGRITY_NAME,
        assemble=(
            Run("assemble",
                ("integritysetup", "format", "--batch-mode", "--integrity", "crc32c", dev), t),
            Run("assemble",
                ("integritysetup", "open", "--integrity", "crc32c", *flags, dev, INTEGRITY_NAME),
                t),
        ),
        teardown=(
            Run("teardown", ("integritysetup", "close", INTEGRITY_NAME), TIMEOUTS["teardown"]),
        ),
    )  # fmt: skip


_BUILDERS = {
    "plain": _plain,
    "btrfs": _btrfs,
    "btrfs-raid1": _btrfs,
    "md-raid1": _md,
    "md-raid5": _md,
    "dm-integrity": _integrity,
}
