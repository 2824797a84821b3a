"""The plan: what one boot runs, written by the host as plan.json and executed by the guest.

Every random choice of a run derives from the one seed: `derive_seed(seed, name)` hashes the
seed with a stable name (the run id, "device"), so a run's seed does not depend on which other
runs share the matrix.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from nbdfork.errors import ConfigError
from nbdfork.experiments.stacks.catalogue import STACKS, StackSpec, parse_stack
from nbdfork.files import write_atomic
from nbdfork.harness.protocol import CONNECTS_PER_RUN, FIRST_PORT, GUEST_FORWARD_ADDR
from nbdfork.seeds import derive_seed, new_seed

__all__ = [
    "CONNECTS_PER_RUN",
    "FILESYSTEMS",
    "FIRST_PORT",
    "GUEST_FORWARD_ADDR",
    "MKFS",
    "MOUNT_OPTIONS",
    "PLAN_SCHEMA",
    "Plan",
    "RunSpec",
    "build_runs",
    "derive_seed",
    "new_seed",
    "parse_list",
    "run_id",
    "stack_id",
    "STACK_MODULES",
]

PLAN_SCHEMA = "nbdfork.plan/1"
FIO_PREFIX = "fio:"
"""`--workload fio:JOBFILE` (nbdfork.workloads.fio; not imported here: the guest reads plans
long before it may import the workloads' numpy)."""
MKFS: dict[str, list[str]] = {
    "ext4": ["mkfs.ext4", "-F", "-q", "-b", "4096"],
    "xfs": ["mkfs.xfs", "-f", "-q"],
    "btrfs": ["mkfs.btrfs", "-f", "-q"],
    "raw": [],
}
"""mkfs argv per filesystem (the device is appended). btrfs is the negative control: it waits
for writeback on its own. `raw`: no filesystem, a fio job writes the device itself."""
FILESYSTEMS = tuple(MKFS)
MOUNT_OPTIONS: dict[str, list[str]] = {
    "ext4": ["noinit_itable"], "xfs": [], "btrfs": [], "raw": []
}  # fmt: skip
"""ext4 would otherwise zero its lazily initialised inode tables from a kernel thread during the
workload: writes and CPU that are not the experiment's."""
_STREAMS_PER_RUN = 64  # a run's writer threads use streams base .. base+63


def run_id(fs: str, stable_writes: int, workload: str) -> str:
    """`ext4-sw0-pwrite`: the run's name, directory and key in report.json (a fio job's
    workload is `fio.STEM`, after its job file)."""
    return f"{fs}-sw{stable_writes}-{workload_label(workload)}"


def workload_label(workload: str) -> str:
    """`pwrite`, or `fio.randwrite` for fio:PATH/randwrite.fio."""
    if not workload.startswith(FIO_PREFIX):
        return workload
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(workload.removeprefix(FIO_PREFIX)).stem)
    return f"fio.{stem or 'job'}"


def filesystems_of(runs: list[RunSpec]) -> list[str]:
    """The filesystems the runs make (raw is none), in order."""
    return list(dict.fromkeys(r.fs for r in runs if r.fs != "raw"))


def parse_list(option: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    """A comma-separated option value, each item checked against `allowed`; order kept."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ConfigError(option, "is empty")
    for item in items:
        if item not in allowed:
            raise ConfigError(option, f"{item!r} is not one of {', '.join(allowed)}")
    return list(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One configuration of the matrix."""

    id: str
    fs: str
    stable_writes: int
    workload: str
    seconds: float
    seed: int
    stream_base: int
    mkfs: list[str]
    mount_options: list[str] = field(default_factory=list)
    workload_options: dict[str, Any] = field(default_factory=dict)
    stack: str = "plain"  # the storage stack between the filesystem and the devices
    devices: int = 1  # nbdfork devices the stack is built on (/dev/nbd0 .. nbdN-1)


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the guest needs; paths are absolute and valid in the guest (shared root)."""

    out: str
    project: str
    python: str
    venv: str
    plugin: str
    seed: int
    device: dict[str, str]
    runs: list[RunSpec]
    modules_dir: str | None = None
    mkfs_each_run: bool = False
    sysctls: dict[str, str] = field(default_factory=dict)
    nbd_device: str = "/dev/nbd0"
    mountpoint: str = "/tmp/nbdfork-mnt"
    socket: str = "/tmp/nbdfork-nbd.sock"
    timeouts: dict[str, float] = field(default_factory=dict)
    device_location: str = "guest"  # "host": nbdkit on the host, reached over qemu user net
    nbd_host: str = GUEST_FORWARD_ADDR
    nbd_ports: list[int] = field(default_factory=list)  # one guestfwd per NBD connection
    devices: int = 1  # device servers: the most any run's stack needs
    device_overrides: dict[str, dict[str, str]] = field(default_factory=dict)  # per device
    schema: str = PLAN_SCHEMA

    @property
    def ports_per_device(self) -> int:
        """Forwards of each device: device d has nbd_ports[d * this : (d + 1) * this]."""
        return len(self.nbd_ports) // max(1, self.devices)

    def connect_target(self, attempt: int, device: int = 0) -> list[str]:
        """nbd-client's address arguments for connection attempt `attempt` (0-based, counted
        over the whole plan) to device `device`: a host device's forwards each carry ONE
        connection; a device in the guest listens on socket, socket.1, socket.2 ..."""
        if self.device_location == "host":
            per = self.ports_per_device
            if attempt >= per:
                raise ConfigError("plan", f"no forward left for connection attempt {attempt + 1}")
            return [self.nbd_host, str(self.nbd_ports[device * per + attempt])]
        return ["-unix", self.device_socket(device)]

    def device_socket(self, device: int) -> str:
        """The unix socket of device `device` when the devices run in the guest."""
        return self.socket if device == 0 else f"{self.socket}.{device}"

    def to_json(self) -> str:
        """plan.json text."""
        return json.dumps(asdict(self), indent=2) + "\n"

    def write(self, path: Path) -> None:
        """Write plan.json (atomically)."""
        write_atomic(path, self.to_json().encode())

    @classmethod
    def read(cls, path: Path) -> Plan:
        """Load a plan.json, checking its schema."""
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema") != PLAN_SCHEMA:
            raise ConfigError("plan", f"{path}: schema {data.get('schema')!r} is not {PLAN_SCHEMA}")
        try:
            return msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            raise ConfigError("plan", f"{path}: {exc}") from None


STACK_MODULES: dict[str, tuple[str, ...]] = {
    "plain": (), "btrfs": ("btrfs",), "btrfs-raid1": ("btrfs",), "md-raid1": ("raid1",),
    "md-raid5": ("raid456",), "dm-integrity": ("dm-integrity",),
}  # fmt: skip
"""Kernel modules each stack loads in the guest (beyond nbd and the filesystem)."""


def stack_id(stack: str) -> str:
    """A stack label as it appears in a run id: `md-raid5:skip_copy` -> `md-raid5.skip_copy`."""
    return stack.replace(":", ".")


def build_runs(
    *,
    filesystems: list[str],
    stable_writes: list[int],
    workloads: list[str],
    seconds: float,
    seed: int,
    workload_options: dict[str, Any] | None = None,
    stacks: list[StackSpec] | None = None,
) -> list[RunSpec]:
    """The matrix stack x fs x stable_writes x workload, in that nesting order. The plain
    stack keeps the ids it always had (`ext4-sw0-pwrite`); a stack that is its own
    filesystem (btrfs) runs once whatever --fs says."""
    runs: list[RunSpec] = []
    for stack in stacks or [parse_stack("plain")]:
        own = STACKS[stack.name].filesystem
        for fs in [own] if own else filesystems:
            for sw in stable_writes:
                for workload in workloads:
                    rid = run_id(fs, sw, workload)
                    options = dict(workload_options or {})
                    if workload.startswith(FIO_PREFIX):  # the job's own knobs, and the kick
                        kick = options.get("kick", "sync_file_range")
                        options = {"jobfile": workload.removeprefix(FIO_PREFIX), "kick": kick}
                    if stack.name != "plain":
                        rid = f"{stack_id(stack.label)}-{rid}"
                    runs.append(
                        RunSpec(
                            id=rid,
                            fs=fs,
                            stable_writes=sw,
                            workload="fio" if workload.startswith(FIO_PREFIX) else workload,
                            seconds=seconds,
                            seed=derive_seed(seed, rid),
                            stream_base=1 + len(runs) * _STREAMS_PER_RUN,
                            mkfs=list(MKFS[fs]),
                            mount_options=list(MOUNT_OPTIONS[fs]),
                            workload_options=options,
                            stack=stack.label,
                            devices=stack.devices,
                        )
                    )
    return runs
