"""Guest side: build a stack from its plan, set stable_writes, mount, tear down.

Runs as root in the guest (Debian python + the venv). Every tool runs from an argv list with
a timeout; a failing step raises StackError naming the step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from nbdfork.errors import VMError
from nbdfork.experiments.stacks.plan import Action, BuildPlan, Run, SysfsWrite
from nbdfork.experiments.stacks.results import LayerReport
from nbdfork.harness.steps import StepError, run_command

__all__ = [
    "BuiltStack",
    "Log",
    "StackError",
    "block_name",
    "build",
    "make_filesystem",
    "mount",
    "read_attribute",
    "run_tool",
    "set_stable_writes",
    "teardown",
    "umount",
]

Log = Callable[[str], None]
SYS_BLOCK = Path("/sys/dev/block")


class StackError(VMError):
    """A stack step failed in the guest; the message names the step and the tool's last line."""


class BuiltStack(msgspec.Struct, frozen=True):
    """A stack assembled over its devices: the plan and its layers top-down."""

    plan: BuildPlan
    layers: list[LayerReport]


def run_tool(log: Log, step: str, argv: Sequence[str], timeout: float) -> tuple[int, str]:
    """Run `argv` (stdout and stderr merged) with a timeout; (exit code, output).
    StackError only if it cannot start or does not finish (harness.steps.run_command)."""
    try:
        return run_command(log, step, argv, timeout)
    except StepError as exc:
        raise StackError(str(exc)) from exc


def _checked(log: Log, run: Run) -> str:
    code, output = run_tool(log, run.step, run.argv, run.timeout_s)
    if code != 0:
        last = (output.strip().splitlines() or [""])[-1][:200]
        raise StackError(f"{run.step}: {run.argv[0]} exited {code}: {last}")
    return output


def block_name(path: str) -> str:
    """The kernel's name of a block device node (`/dev/mapper/x` -> `dm-3`), from its
    major:minor, so symlinks and udev-less /dev nodes both work."""
    st = os.stat(path)
    link = SYS_BLOCK / f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return Path(os.readlink(link)).name


def _attribute_path(device: str, attribute: str) -> Path:
    return Path("/sys/block") / block_name(device) / attribute


def read_attribute(device: str, attribute: str) -> str:
    """A sysfs attribute of a block device (`queue/stable_writes`, `md/mismatch_cnt`)."""
    return _attribute_path(device, attribute).read_text().strip()


def _write_attribute(device: str, attribute: str, value: str) -> None:
    path = _attribute_path(device, attribute)
    path.write_text(f"{value}\n")
    if (now := path.read_text().strip()) != value:
        raise StackError(f"sysfs: {path} reads {now!r} after writing {value!r}")


def _apply(log: Log, action: Action) -> None:
    if isinstance(action, SysfsWrite):
        log(f"# echo {action.value} > /sys/block/{block_name(action.device)}/{action.attribute}")
        _write_attribute(action.device, action.attribute, action.value)
    else:
        _checked(log, action)


def _wait_for_nodes(paths: Sequence[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while missing := [p for p in paths if not os.path.exists(p)]:
        if time.monotonic() > deadline:
            raise StackError(f"assemble: {', '.join(missing)} did not appear in {timeout:g} s")
        time.sleep(0.05)


def build(plan: BuildPlan, log: Log) -> BuiltStack:
    """Assemble the block layers (no filesystem yet) and read every layer's stable_writes as
    the kernel set it. On failure, what was assembled is torn down before StackError."""
    try:
        for action in plan.assemble:
            _apply(log, action)
        _wait_for_nodes([layer.path for layer in plan.layers], 30.0)
        layers = [
            LayerReport(
                layer.path,
                layer.kind,
                block_name(layer.path),
                int(read_attribute(layer.path, "queue/stable_writes")),
            )
            for layer in plan.layers
        ]
    except BaseException:
        teardown(plan, log)
        raise
    return BuiltStack(plan, layers)


def set_stable_writes(built: BuiltStack, value: int) -> BuiltStack:
    """Write the run's stable_writes to the top device(s), before mkfs and mount (the
    filesystem copies it at mount); the layers record it."""
    for path in built.plan.top:
        _write_attribute(path, "queue/stable_writes", str(value))
    layers = [
        msgspec.structs.replace(
            layer, stable_writes_run=value if layer.path in built.plan.top else None
        )
        for layer in built.layers
    ]
    return BuiltStack(built.plan, layers)


def make_filesystem(plan: BuildPlan, log: Log) -> None:
    """mkfs on the top device(s)."""
    for run in plan.mkfs:
        _checked(log, run)


def mount(plan: BuildPlan, log: Log) -> None:
    """Mount the filesystem at the plan's mountpoint (created if missing)."""
    Path(plan.mountpoint).mkdir(parents=True, exist_ok=True)
    _checked(log, plan.mount)


def umount(plan: BuildPlan, log: Log) -> None:
    """Unmount (which writes back and flushes everything the run left dirty)."""
    _checked(log, plan.umount)


def teardown(plan: BuildPlan, log: Log) -> list[str]:
    """Undo the assembly in reverse, every step attempted; returns the steps that failed."""
    failed = []
    for run in plan.teardown:
        try:
            _checked(log, run)
        except StackError as exc:
            failed.append(str(exc))
    return failed
