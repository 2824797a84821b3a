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
from nbdfork.seeds import derive_seed

__all__ = ["GUEST_SYSCTLS_FILE", "HostDevice", "read_sysctls", "report_dir"]

GUEST_SYSCTLS_FILE = "guest-sysctls.json"
_START_TIMEOUT = 120.0


def report_dir(out: Path, device: int) -> Path:
    """Where device `device` of a plan reports: OUT/device, OUT/device-1, OUT/device-2 ..."""
    return out / ("device" if device == 0 else f"device-{device}")


class HostDevice:
    """nbdkit + plugin on the host for one plan: one server per device of the plan (a storage
    stack of N devices needs N media, each with its own oracle and report directory)."""

    def __init__(self, plan: DevicePlan, sockets: list[Path], start_s: float) -> None:
        self.plan = plan
        self.sockets = sockets
        self.reports = [report_dir(Path(plan.out), d) for d in range(len(sockets))]
        self.start_s = start_s  # how long the slowest nbdkit took to listen

    @property
    def socket(self) -> Path:
        """The first device's socket."""
        return self.sockets[0]

    @property
    def report(self) -> Path:
        """The first device's report directory."""
        return self.reports[0]

    @classmethod
    @contextlib.contextmanager
    def maybe(cls, plan: DevicePlan, threads: int | None = None) -> Iterator[HostDevice | None]:
        """A serving HostDevice for a plan whose device runs on the host, else None."""
        if plan.device_location != "host":
            yield None
            return
        with contextlib.ExitStack() as stack:
            sockets, slowest = [], 0.0
            for device in range(max(1, plan.devices)):
                report = report_dir(Path(plan.out), device)
                report.mkdir(parents=True, exist_ok=True)
                params = {"size": "512M", **plan.device, "report": str(report)}
                if device:  # each medium its own seeded schedule
                    params["seed"] = str(derive_seed(int(params.get("seed", 0)), f"dev{device}"))
                params.update(plan.device_overrides.get(str(device), {}))
                socket, start_s = stack.enter_context(launch.private_server(
                    params, log=report / "nbdkit.log", threads=threads, plugin=plan.plugin,
                    env=launch.plugin_env(plan.venv), timeout=_START_TIMEOUT,
                ))  # fmt: skip
                sockets.append(socket)
                slowest = max(slowest, start_s)
            yield cls(plan, sockets, slowest)


def read_sysctls(out: Path) -> dict[str, str]:
    """The guest's socket-buffer and writeback sysctls as it read them back (or {})."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((out / GUEST_SYSCTLS_FILE).read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
    return {}
