"""result.json: what the guest records of one configuration as it runs it. The guest runner is
its one writer (it fills a RunRecord step by step and writes it at the end, whatever
happened); the host reads it only through `read_record`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec

from nbdfork.errors import ReportError
from nbdfork.experiments.stacks.results import LayerReport, StackChecks

__all__ = ["RunDurations", "RunRecord", "read_record"]

Status = Literal["ok", "error", "skipped"]


class RunDurations(msgspec.Struct, kw_only=True):
    """Wall-clock seconds of the configuration's stages."""

    setup_s: float = 0.0
    workload_s: float = 0.0
    teardown_s: float = 0.0


class RunRecord(msgspec.Struct, kw_only=True):
    """One configuration as the guest ran it."""

    id: str = ""
    status: Status = "ok"
    error: str | None = None
    failed_step: str | None = None
    kernel: str | None = None
    started: str | None = None
    stable_writes: int | None = None
    stable_writes_read: int | None = None
    stable_writes_after_mount: int | None = None
    mkfs_argv: list[str] = msgspec.field(default_factory=list)
    mkfs: Literal["fresh", "reused"] | None = None
    mount_options: list[str] = msgspec.field(default_factory=list)
    durations: RunDurations = msgspec.field(default_factory=RunDurations)
    connected_wall: float | None = None  # guest clock when nbd-client connected
    workload_wall: float | None = None  # guest clock when the workload started
    cpu: dict[str, float] | None = None
    connection: int | None = None  # the device's connection number (device in the guest)
    layers: list[LayerReport] = msgspec.field(default_factory=list)
    checks: StackChecks | None = None

    def fail(self, step: str, error: str) -> None:
        """Record the first failure (a later one does not hide it)."""
        if self.status == "ok":
            self.status, self.error, self.failed_step = "error", error, step

    def summary(self) -> dict[str, Any]:
        """The fields a progress event carries."""
        return {"status": self.status, "error": self.error,
                "durations": msgspec.to_builtins(self.durations)}  # fmt: skip


def read_record(path: Path) -> RunRecord | None:
    """A run's result.json (None when the guest left none); ReportError naming the field of
    one that is not a run record."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return msgspec.json.decode(data, type=RunRecord)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ReportError(f"{path}: {exc}") from None
