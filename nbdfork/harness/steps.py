"""Guest steps: running a tool with a timeout, the one error type, the step timeouts.

Shared by the matrix guest script and anything else that drives tools inside the guest.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["DEFAULT_TIMEOUTS", "StepError", "run_command", "run_step", "terminate"]

DEFAULT_TIMEOUTS: dict[str, float] = {
    "modprobe": 120.0,
    "nbdkit_start": 400.0,
    "connect": 30.0,
    "mkfs": 180.0,
    "mount": 60.0,
    "umount": 120.0,
    "disconnect": 30.0,
    "release": 30.0,
    "summary": 30.0,
    "nbdkit_stop": 60.0,
    "sysfs": 10.0,
}
"""Seconds per guest step (plan.timeouts overrides). A run's steps add up to less than the
host's per-run deadline, so a stuck step is that run's harness error, not a lost VM."""


class StepError(Exception):
    """A guest step failed; `step` names it, the message says how (one line)."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


def terminate(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace`; never waits unbounded (a D-state child is left)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)


def run_command(
    log: Callable[[str], None], step: str, argv: Sequence[str], timeout: float
) -> tuple[int, str]:
    """Run `argv` (stdout and stderr merged) with a timeout, its output to the log; (exit
    status, output). StepError only if it cannot start or does not finish in time."""
    started = time.monotonic()
    log(f"$ {' '.join(argv)}")
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise StepError(step, f"cannot run {argv[0]}: {exc.strerror}") from exc
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        terminate(proc, 2.0)
        raise StepError(step, f"{argv[0]} did not finish in {timeout:g} s") from None
    for line in output.splitlines():
        log(f"  | {line}")
    log(f"  -> exit {proc.returncode} in {time.monotonic() - started:.2f} s")
    return proc.returncode, output


def run_step(log: Callable[[str], None], step: str, argv: Sequence[str], timeout: float) -> str:
    """Run `argv` with a timeout; its output goes to the log; StepError if it fails."""
    code, output = run_command(log, step, argv, timeout)
    if code != 0:
        tail = output.strip().splitlines()[-1:] or [""]
        raise StepError(step, f"{argv[0]} exited {code}: {tail[0][:200]}")
    return output
