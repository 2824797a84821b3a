"""The crash campaign's plan: what the host asks the guest to record and check (one typed file,
OUT/crash-plan.json, written by the host, read by the guest)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from nbdfork.files import write_json

__all__ = ["CrashPlan"]

# left out of a plain campaign's plan file, which stays what it was before stacks
_STACK_FIELDS = ("stack", "nbd_targets", "host_traces")


@dataclass(frozen=True, slots=True)
class CrashPlan:
    """What the guest runs; written by the host as JSON."""

    out: str
    plugin: str
    venv: str
    fs: str
    states: int
    control_states: int
    seconds: float
    seed: int
    size: str = "320M"
    size_bytes: int = 320 << 20
    ignore_flush: bool = False
    files: int = 8
    pages: int = 4
    points: str = "checkpoint"
    workload: str = "fsync"  # or "atomic": whole-file RWF_ATOMIC rewrites (7.x XFS)
    modules_dir: str | None = None  # a fetched or user kernel's module tree
    device_location: str = "guest"  # "host": nbdkit on the host, trace written there
    nbd_target: tuple[str, ...] = ()  # host device: (address, port) of the guest's forward
    host_trace: str = ""  # host device: where the host's nbdkit writes the trace (shared)
    # A storage stack (nbdfork.experiments.crash.stackguest): its name, and per member device
    # then the clock device, the guest's forward and the trace the host's nbdkit writes.
    stack: str = "plain"
    nbd_targets: tuple[tuple[str, ...], ...] = ()
    host_traces: tuple[str, ...] = ()

    def write(self, path: Path) -> None:
        """Save as JSON (without the stack's fields when there is no stack: the plan of a
        single-device campaign reads as it always did)."""
        data = asdict(self)
        if self.stack == "plain":
            for name in _STACK_FIELDS:
                del data[name]
        write_json(path, data)

    @classmethod
    def read(cls, path: Path) -> CrashPlan:
        """Load from JSON."""
        data = json.loads(path.read_text(encoding="utf-8"))
        data["nbd_target"] = tuple(data.get("nbd_target", ()))
        data["nbd_targets"] = tuple(tuple(t) for t in data.get("nbd_targets", ()))
        data["host_traces"] = tuple(data.get("host_traces", ()))
        return cls(**data)
