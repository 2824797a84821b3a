"""One configuration of the matrix on a storage stack (`--stack md-raid1`, `btrfs`, ...), in the
guest: connect one nbd device per medium of the stack (each its own nbdfork device and
oracle on the host), build the stack (nbdfork.experiments.stacks), set stable_writes on its
top, mkfs, mount, the workload, unmount, every layer's own checker, tear down, disconnect.

The guest runner (nbdfork.experiments.matrix.guest) calls `setup` and `teardown` around the
workload for any run whose stack is not `plain`; result.json gets `layers` (top down, with
stable_writes as the kernel set it and as the run set it) and `checks` (each checker's
verdict).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from nbdfork.experiments.matrix.plan import Plan, RunSpec
from nbdfork.experiments.matrix.record import RunRecord
from nbdfork.experiments.stacks import (
    BuildPlan,
    StackChecks,
    StackError,
    build,
    make_filesystem,
    mount,
    parse_stack,
    plan_stack,
    run_checks,
    set_stable_writes,
    teardown,
    umount,
)
from nbdfork.harness.guest import nbd_client_argv
from nbdfork.harness.protocol import CONNECTS_PER_RUN
from nbdfork.harness.steps import StepError, run_step

__all__ = ["StackRun", "nbd_devices"]

Log = Callable[[str], None]


def nbd_devices(count: int) -> list[str]:
    """/dev/nbd0 .. /dev/nbd{count-1}: one per medium of the stack."""
    return [f"/dev/nbd{i}" for i in range(count)]


class StackRun:
    """The stack of one run: its devices connected, its layers built, its checkers run."""

    def __init__(
        self, plan: Plan, spec: RunSpec, connects: list[int], timeouts: dict[str, float],
        sys_root: Path = Path("/sys"),
    ) -> None:  # fmt: skip
        self.plan, self.spec, self.timeouts = plan, spec, timeouts
        self.connects = connects  # per device: connection attempts so far (host forwards)
        self.sys_root = sys_root
        self.devices = nbd_devices(spec.devices)
        self.connected: list[str] = []
        self.build: BuildPlan | None = None
        self.built = self.mounted = False

    def setup(self, record: RunRecord, log: Log) -> None:
        """Connect every device, build the stack, stable_writes on top, mkfs, mount."""
        for index, device in enumerate(self.devices):
            self._connect(index, device, log)
        record.connected_wall = time.time()
        stack = parse_stack(self.spec.stack)
        self.build = plan_stack(stack, self.devices, self.spec.fs, self.plan.mountpoint)
        try:
            built = build(self.build, log)
        except StackError as exc:
            raise StepError("stack", str(exc)) from None
        self.built = True
        built = set_stable_writes(built, self.spec.stable_writes)
        record.layers = list(built.layers)
        record.stable_writes_read = self.spec.stable_writes
        log(f"stack {self.spec.stack}: layers {msgspec.to_builtins(record.layers)}")
        try:
            make_filesystem(self.build, log)
            record.mkfs = "fresh"
            mount(self.build, log)
        except StackError as exc:
            raise StepError("mkfs", str(exc)) from None
        self.mounted = True

    def teardown(self, record: RunRecord, log: Log) -> str | None:
        """Unmount, run every checker, tear the stack down, disconnect; the first failure
        that leaves an nbd device unusable (None when all is released)."""
        if self.build is not None and self.mounted:
            try:
                umount(self.build, log)
            except StackError as exc:
                return f"umount: {exc}"
            self.mounted = False
        if self.build is not None and self.built:
            if record.status == "ok":
                record.checks = self._checks(log)
                log(f"checks: {msgspec.to_builtins(record.checks)}")
            failed = teardown(self.build, log)
            if failed:
                return f"stack teardown: {failed[0]}"
        for device in reversed(self.connected):
            problem = self._disconnect(device, log)
            if problem:
                return problem
        return None

    def _checks(self, log: Log) -> StackChecks:
        """Every layer's checker; one that breaks is an error in the result, never the end
        of the plan (the stack must still be torn down and the next run run)."""
        assert self.build is not None
        try:
            return run_checks(self.build, log)
        except Exception as exc:
            log(f"checks failed: {type(exc).__name__}: {exc}")
            return StackChecks(errors=[f"checks: {type(exc).__name__}: {exc}"])

    def _connect(self, index: int, device: str, log: Log) -> None:
        for attempt in range(1, CONNECTS_PER_RUN + 1):
            target = self.plan.connect_target(self.connects[index], device=index)
            self.connects[index] += 1
            argv = nbd_client_argv(target, device, export=self.spec.id)
            try:
                run_step(log, "connect", argv, self.timeouts["connect"])
                self.connected.append(device)
                self._wait_size(device)
                return
            except StepError:
                if attempt == CONNECTS_PER_RUN:
                    raise
                time.sleep(attempt * 0.5)

    def _block(self, device: str) -> Path:
        return self.sys_root / "block" / Path(device).name

    def _wait_size(self, device: str) -> None:
        deadline = time.monotonic() + self.timeouts["sysfs"]
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if int((self._block(device) / "size").read_text()) > 0:
                    return
            time.sleep(0.05)
        raise StepError("connect", f"{device} has no size after nbd-client")

    def _disconnect(self, device: str, log: Log) -> str | None:
        try:
            run_step(log, "disconnect", ["nbd-client", "-d", device], self.timeouts["disconnect"])
        except StepError as exc:
            return str(exc)
        deadline = time.monotonic() + self.timeouts["release"]
        while (self._block(device) / "pid").exists():
            if time.monotonic() > deadline:
                return f"{device} still in use after nbd-client -d"
            time.sleep(0.05)
        return None
