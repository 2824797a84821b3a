"""What every experiment's guest side shares: progress lines for the host's watchdog, the
restricted network to the host device, nbd-client's command line, a fetched kernel's modules,
and CPU accounting. An experiment's guest module (e.g. nbdfork.experiments.matrix.guest) is a
step runner built from these and nbdfork.harness.steps.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from nbdfork.harness.protocol import MARKER
from nbdfork.harness.steps import StepError, run_step

__all__ = [
    "GUEST_ADDR",
    "Reporter",
    "cpu_sample",
    "cpu_usage",
    "link_modules",
    "nbd_client_argv",
    "network_up",
    "now_iso",
    "uptime_s",
]

GUEST_ADDR = "10.0.2.15"


def now_iso() -> str:
    """The current UTC time, to the millisecond, as report files record it."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def uptime_s() -> float:
    """Seconds since the guest kernel booted (-1 when /proc/uptime cannot be read)."""
    with contextlib.suppress(OSError, ValueError):
        return float(Path("/proc/uptime").read_text().split()[0])
    return -1.0


class Reporter:
    """Progress lines on stdout for the host, and a timestamped log file."""

    def __init__(self, log_path: Path, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stdout
        self._log = log_path.open("a", buffering=1, encoding="utf-8")
        self._t0 = time.monotonic()
        # The first bytes a guest writes to its console can be lost: pad before the first line.
        self._stream.write("\n")

    def emit(self, event: str, **fields: object) -> None:
        """One progress event, to stdout and to the log."""
        line = json.dumps({"event": event, "t": round(time.monotonic() - self._t0, 3), **fields})
        self._stream.write(MARKER + line + "\n")
        self._stream.flush()
        self.log(f"event {line}")

    def log(self, message: str) -> None:
        """One line in guest.log."""
        self._log.write(f"{time.monotonic() - self._t0:9.3f} {message}\n")

    def close(self) -> None:
        """Close the log."""
        self._log.close()


def nbd_client_argv(target: list[str], device: str, *, export: str = "") -> list[str]:
    """nbd-client to `target` (["-unix", SOCKET] or [HOST, PORT]), 4 KiB blocks, one
    connection, no request timeout (a timeout would resend requests, and resends are stale
    writes the kernel did not mean); `export` is the NBD export name."""
    name = ["-N", export] if export else []
    return ["nbd-client", *name, *target, device, "-b", "4096"]


def link_modules(modules_dir: str | None) -> None:
    """A user's or a fetched kernel's module tree, seen at /lib/modules/RELEASE (the guest's
    /lib is an overlay, so this changes nothing on the host)."""
    if not modules_dir:
        return
    target = Path("/lib/modules") / os.uname().release
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(modules_dir)


def network_up(log: Callable[[str], None], sys_root: Path, timeouts: Mapping[str, float]) -> None:
    """The one interface of qemu's restricted user network, configured by hand (vng's --exec
    mode runs no DHCP): 10.0.2.15/24; the host device's forwards are at 10.0.2.100."""
    run_step(log, "modprobe", ["modprobe", "virtio_net"], timeouts["modprobe"])
    net = sys_root / "class" / "net"
    deadline = time.monotonic() + timeouts["sysfs"]
    while not (devices := sorted(d.name for d in net.iterdir() if d.name != "lo")):
        if time.monotonic() > deadline:
            raise StepError("network", "no network interface appeared (virtio_net)")
        time.sleep(0.05)
    dev, t = devices[0], timeouts["connect"]
    run_step(log, "network", ["ip", "link", "set", dev, "up"], t)
    run_step(log, "network", ["ip", "addr", "add", f"{GUEST_ADDR}/24", "dev", dev], t)


def _proc_cpu_s(pid: int | str) -> float:
    """utime + stime of a process, in seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_sample(nbdkit_pid: int | None) -> dict[str, float]:
    """CPU seconds so far: this process, nbdkit, and the whole guest (busy and total)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return {
        "self": _proc_cpu_s("self"),
        "nbdkit": _proc_cpu_s(nbdkit_pid) if nbdkit_pid else 0.0,
        "busy": (sum(fields) - idle) / tick,
        "total": sum(fields) / tick,
    }


def cpu_usage(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Where the guest's CPU went between two samples: seconds of the workload process and of
    nbdkit, and the fraction of all vCPU time that was busy (starved runs show it)."""
    delta = {k: after[k] - before[k] for k in before}
    total = delta["total"] or 1.0
    return {
        "workload_cpu_s": round(delta["self"], 3),
        "nbdkit_cpu_s": round(delta["nbdkit"], 3),
        "guest_busy_fraction": round(delta["busy"] / total, 3),
    }


