"""The device of a plan: the guest's nbdkit, and each run's share of the device's report.

Each run is one NBD connection whose export name is the run id. When a connection closes the
plugin writes its own report, DIR/connection-<n>.json (the counters of that connection, its
export name and the device time it opened); every event in DIR/events.jsonl names its
connection. A run's summary.json and events.jsonl are cut from those, wherever the device ran.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from nbdfork.device.summary import ConnectionReport, RunSplit, read
from nbdfork.errors import ReportError
from nbdfork.files import write_json
from nbdfork.harness import nbdkit as launch
from nbdfork.harness.protocol import DevicePlan
from nbdfork.harness.steps import DEFAULT_TIMEOUTS, StepError, terminate

__all__ = ["DeviceServer", "collect_run", "connection_report", "nbdkit_argv"]


def nbdkit_argv(plan: DevicePlan, report: Path, socket: str | None = None) -> list[str]:
    """nbdkit serving the plugin on `socket` (the plan's, in the guest), exiting with its
    parent."""
    params = {"size": "512M", **plan.device, "report": str(report)}
    return launch.plugin_argv(params, unix=socket or plan.socket, plugin=plan.plugin)


def connection_report(report: Path, export: str) -> ConnectionReport | None:
    """The report of the last connection named `export` (None if there is none yet; a file
    still being written, or not a connection report, is passed over)."""
    found: ConnectionReport | None = None
    for path in sorted(report.glob("connection-*.json")):
        with contextlib.suppress(ReportError):
            data = read(path, ConnectionReport)
            if data.export == export and (found is None or data.connection > found.connection):
                found = data
    return found


def collect_run(
    report: Path, run_id: str, run_dir: Path, connected: float | None, started: float | None,
    *, timeout: float,
) -> ConnectionReport:
    """Write the run's summary.json (its connection's report) and events.jsonl (the events
    naming that connection, each with `run_time_s` since the workload started); waits up to
    `timeout` for the connection's report. StepError if it never comes."""
    deadline = time.monotonic() + timeout
    while (summary := connection_report(report, run_id)) is None:
        if time.monotonic() > deadline:
            raise StepError("summary", f"no report of connection {run_id!r} in {timeout:g} s")
        time.sleep(0.05)
    connection = summary.connection
    origin = _workload_origin(summary, connected, started)
    count = 0
    with (run_dir / "events.jsonl").open("w", encoding="utf-8") as out:
        for raw in _lines(report / "events.jsonl"):
            event = json.loads(raw)
            if isinstance(event, dict) and event.get("connection") == connection:
                if origin is not None and isinstance(event.get("time"), int | float):
                    event["run_time_s"] = round(float(event["time"]) - origin, 6)
                out.write(json.dumps(event, separators=(",", ":")) + "\n")
                count += 1
    summary = msgspec.structs.replace(
        summary, run_split=RunSplit(connection=connection, events=count, device_report=str(report))
    )
    write_json(run_dir / "summary.json", summary)
    return summary


def _lines(path: Path) -> list[bytes]:
    with contextlib.suppress(FileNotFoundError):
        data = path.read_bytes()
        return [line for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]
    return []


def _workload_origin(
    summary: ConnectionReport, connected: float | None, started: float | None
) -> float | None:
    """The workload's start on the device clock: the connection opened at `opened_s`, and the
    guest measured the time from its connect (`connected`) to the workload start (`started`)
    on its own clock."""
    if connected is None or started is None:
        return None
    return summary.opened_s + started - connected


class DeviceServer:
    """The one nbdkit of a plan, and the cutting of its report into per-run pieces."""

    def __init__(self, plan: DevicePlan, report: Path, log: Callable[[str], None]) -> None:
        self.plan = plan
        self.report = report
        self._log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._summary: dict[str, Any] = {}
        self._events_offset = 0
        self._timeouts = {**DEFAULT_TIMEOUTS, **plan.timeouts}

    def start(self) -> None:
        """Start nbdkit (it loads the plugin in the background of whatever we do next)."""
        self.report.mkdir(parents=True, exist_ok=True)
        argv = nbdkit_argv(self.plan, self.report)
        self._log(f"$ {' '.join(argv)} &")
        try:
            self.proc = launch.start(
                argv, log=self.report / "nbdkit.log", env=launch.plugin_env(self.plan.venv)
            )
        except launch.NbdkitError as exc:
            raise StepError("nbdkit", str(exc)) from exc

    def wait_ready(self) -> None:
        """Wait for the socket; StepError if nbdkit exits or the timeout passes."""
        timeout = self._timeouts["nbdkit_start"]
        deadline = time.monotonic() + timeout
        while not Path(self.plan.socket).exists():
            self.check_alive()
            if time.monotonic() > deadline:
                raise StepError("nbdkit", f"socket {self.plan.socket} not up after {timeout:g} s")
            time.sleep(0.05)

    def check_alive(self) -> None:
        """StepError (with nbdkit's last message) if nbdkit has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = ""
            with contextlib.suppress(OSError):
                lines = (self.report / "nbdkit.log").read_text(errors="replace").splitlines()
                tail = lines[-1] if lines else ""
            raise StepError("nbdkit", f"exited with status {self.proc.returncode}: {tail[:200]}")

    def collect(
        self, run_id: str, run_dir: Path, connected: float | None, started: float | None
    ) -> ConnectionReport:
        """The run's summary.json and events.jsonl, from its connection's report."""
        self.check_alive()
        return collect_run(self.report, run_id, run_dir, connected, started,
                           timeout=self._timeouts["summary"])  # fmt: skip

    def stop(self) -> int | None:
        """SIGTERM nbdkit (it writes its final summary) and wait; the exit status or None."""
        if self.proc is None:
            return None
        terminate(self.proc, self._timeouts["nbdkit_stop"])
        return self.proc.returncode


