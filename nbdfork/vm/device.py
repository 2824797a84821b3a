"""The guest's one nbdkit: starting it with the plugin, and cutting its report per connection.

The plugin writes one events.jsonl (appended per event) and rewrites summary.json (cumulative
counters) at every client disconnect. A plan's runs are successive connections, so a run's
share is the events appended since the previous cut and the counters' difference since the
previous summary.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nbdfork.vm.plan import Plan
from nbdfork.vm.steps import DEFAULT_TIMEOUTS, StepError, terminate, write_json

__all__ = ["DeviceServer", "nbdkit_argv", "split_summary"]

_SUMMARY_SKIP = frozenset(
    {
        "seed",
        "seed_given",
        "connections",
        "duration_s",
        "schema",
        "version",
        "started",
        "settings",
        "size",
    }
)


def nbdkit_argv(plan: Plan, report: Path) -> list[str]:
    """nbdkit serving the plugin on the plan's socket, exiting with its parent."""
    params = {"size": "512M", **plan.device, "report": str(report)}
    return [
        "nbdkit",
        "--unix",
        plan.socket,
        "--foreground",
        "--exit-with-parent",
        "python",
        plan.plugin,
        *(f"{k}={v}" for k, v in params.items()),
    ]


def split_summary(previous: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """One connection's summary: counters of `current` minus `previous`, settings kept."""
    out: dict[str, Any] = {}
    for key, value in current.items():
        before = previous.get(key)
        if key in _SUMMARY_SKIP:
            out[key] = value
        elif isinstance(value, Mapping):
            out[key] = split_summary(before if isinstance(before, Mapping) else {}, value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = value - (before if isinstance(before, int | float) else 0)
        else:
            out[key] = value
    return out


class DeviceServer:
    """The one nbdkit of a plan, and the cutting of its report into per-run pieces."""

    def __init__(self, plan: Plan, report: Path, log: Callable[[str], None]) -> None:
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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.plan.socket)
        # The plugin finds the venv itself (VIRTUAL_ENV); our own PYTHONPATH would put the venv
        # before nbdkit's standard library.
        inherited = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env = dict(
            inherited,
            VIRTUAL_ENV=self.plan.venv,
            PYTHONDONTWRITEBYTECODE="1",
            OPENBLAS_NUM_THREADS="1",
            OMP_NUM_THREADS="1",
        )
        argv = nbdkit_argv(self.plan, self.report)
        self._log(f"$ {' '.join(argv)} &")
        stderr = (self.report / "nbdkit.log").open("ab")
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=env
            )
        except OSError as exc:
            raise StepError("nbdkit", f"cannot run nbdkit: {exc.strerror}") from exc
        finally:
            stderr.close()

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

    def _read_summary(self) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads((self.report / "summary.json").read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else None
        return None

    def cut(self, run_dir: Path, workload_wall: float | None) -> dict[str, Any]:
        """After a disconnect: wait for the summary of that connection, then write the run's
        summary.json (its counters only) and events.jsonl (its events only, each with
        `run_time_s`: seconds since the workload started, when `workload_wall` is known)."""
        seen = int(self._summary.get("connections", 0))
        timeout = self._timeouts["summary"]
        deadline = time.monotonic() + timeout
        while True:
            current = self._read_summary()
            if current is not None and int(current.get("connections", 0)) > seen:
                break
            self.check_alive()
            if time.monotonic() > deadline:
                raise StepError("summary", f"no summary.json for the connection in {timeout:g} s")
            time.sleep(0.05)
        run_summary = split_summary(self._summary, current)
        origin = _device_time(current, workload_wall)
        start, end = self._cut_events(run_dir / "events.jsonl", origin)
        run_summary["run_split"] = {
            "connection": int(current.get("connections", 0)),
            "events_bytes": [start, end],
            "device_report": str(self.report),
        }
        write_json(run_dir / "summary.json", run_summary)
        self._summary = current
        return run_summary

    def _cut_events(self, dest: Path, time_origin: float | None) -> tuple[int, int]:
        """Copy the device's new events to `dest`, each with `run_time_s` since the workload."""
        src = self.report / "events.jsonl"
        start = self._events_offset
        data = b""
        with contextlib.suppress(FileNotFoundError), src.open("rb") as f:
            f.seek(start)
            data = f.read()
        end = start + data.rfind(b"\n") + 1  # a partial last line belongs to the next cut
        with dest.open("w", encoding="utf-8") as out:
            for raw in data[: end - start].splitlines():
                out.write(_with_run_time(raw, time_origin) + "\n")
        self._events_offset = end
        return start, end

    def stop(self) -> int | None:
        """SIGTERM nbdkit (it writes its final summary) and wait; the exit status or None."""
        if self.proc is None:
            return None
        terminate(self.proc, self._timeouts["nbdkit_stop"])
        return self.proc.returncode


def _device_time(summary: Mapping[str, Any], wall: float | None) -> float | None:
    """`wall` (time.time()) on the device clock: seconds since the summary's `started`."""
    started = summary.get("started")
    if wall is None or not isinstance(started, str):
        return None
    with contextlib.suppress(ValueError):
        return wall - dt.datetime.fromisoformat(started).timestamp()
    return None


def _with_run_time(raw: bytes, origin: float | None) -> str:
    """An event line with `run_time_s` (device time minus the workload start) added."""
    text = raw.decode("utf-8", "replace")
    if origin is None:
        return text
    try:
        event = json.loads(text)
    except ValueError:
        return text
    if isinstance(event, dict) and isinstance(event.get("time"), int | float):
        event["run_time_s"] = round(float(event["time"]) - origin, 6)
        return json.dumps(event, separators=(",", ":"))
    return text
