"""The device on the host: nbdkit with the plugin beside qemu, reached from the guest over a
restricted user-mode network whose only way out is one forward per NBD connection into the
device's unix socket (no TCP port is opened on the host).

The oracle costs 10-25 ms of CPU per WRITE under TCG and ~50 µs natively, so a device in the
guest measures the emulator; on the host its latencies are the configured ones.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from nbdfork.harness import nbdkit as launch
from nbdfork.harness.protocol import DevicePlan

__all__ = ["GUEST_SYSCTLS_FILE", "HostDevice", "read_sysctls"]

GUEST_SYSCTLS_FILE = "guest-sysctls.json"
_START_TIMEOUT = 120.0


class HostDevice:
    """nbdkit + plugin on the host for one plan; OUT/device is its report directory."""

    def __init__(self, plan: DevicePlan, socket: Path, start_s: float) -> None:
        self.plan = plan
        self.report = Path(plan.out) / "device"
        self.socket = socket
        self.start_s = start_s  # how long nbdkit took to listen

    @classmethod
    @contextlib.contextmanager
    def maybe(cls, plan: DevicePlan, threads: int | None = None) -> Iterator[HostDevice | None]:
        """A serving HostDevice for a plan whose device runs on the host, else None."""
        if plan.device_location != "host":
            yield None
            return
        report = Path(plan.out) / "device"
        report.mkdir(parents=True, exist_ok=True)
        params = {"size": "512M", **plan.device, "report": str(report)}
        with launch.private_server(
            params, log=report / "nbdkit.log", threads=threads, plugin=plan.plugin,
            env=launch.plugin_env(plan.venv), timeout=_START_TIMEOUT,
        ) as (socket, start_s):  # fmt: skip
            yield cls(plan, socket, start_s)


def read_sysctls(out: Path) -> dict[str, str]:
    """The guest's socket-buffer and writeback sysctls as it read them back (or {})."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((out / GUEST_SYSCTLS_FILE).read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
    return {}
