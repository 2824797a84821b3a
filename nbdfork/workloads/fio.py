"""A user's fio job file as a workload: checked on the host before anything boots, run
unmodified in the guest on the mounted filesystem (or the raw device), then read back by fio's
own verification, whose result the report puts beside the device's verdicts.

In the guest, fio runs twice:

1. the job as written (`fio --output-format=json JOB`), with `--directory=` the mount (or
   `--filename=` the device for `--fs raw`) given as a global option and `NBDFORK_DIR`,
   `NBDFORK_DEVICE` in its environment (a job may name `${NBDFORK_DIR}/file`);
2. after `sync` and dropping the page cache, the same job with `--verify_only`: every block
   is read back from the device and checked by fio itself (fio skips numberio checks there).

A job may not name a file outside the device (an absolute `filename=` or `directory=` that is
not `${NBDFORK_...}`): its blocks would never reach the device.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nbdfork.errors import ConfigError

__all__ = [
    "FIO_PREFIX",
    "FioJob",
    "Kicker",
    "fio_argv",
    "fio_outcome",
    "parse_fio_json",
    "run_phase",
    "validate_jobfile",
]

FIO_PREFIX: Final = "fio:"
"""`--workload fio:JOBFILE`."""
_MAX_JOB_BYTES: Final = 1 << 20
_PATH_KEYS: Final = ("filename", "directory", "filename_format")
_SECTION: Final = re.compile(r"^\[([^\]]+)\]\s*$")
_OPTION = "--workload"


@dataclass(frozen=True, slots=True)
class FioJob:
    """A checked job file: its path, job sections, and whether it asks fio to verify."""

    path: Path
    jobs: tuple[str, ...]
    verify: str | None  # the verify= of the first section that sets one (None: no verify)
    raw: bool  # the job names the device itself (filename=${NBDFORK_DEVICE})

    @property
    def stem(self) -> str:
        """The job file's name without suffix: the run id's workload label `fio.STEM`."""
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.path.stem) or "job"


def _options(text: str) -> tuple[list[str], dict[str, str]]:
    """Section names (in order) and every key=value (the last one wins) of a fio job file."""
    sections: list[str] = []
    options: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        match = _SECTION.match(line)
        if match:
            sections.append(match.group(1).strip())
            continue
        key, _, value = line.partition("=")
        options[key.strip().lower()] = value.strip()
    return sections, options


def validate_jobfile(text: str) -> FioJob:
    """`fio:JOBFILE` checked: a readable file that fio parses (`fio --parse-only`), with at
    least one job section and no file outside the device; ConfigError (one line) if not."""
    path = Path(text.removeprefix(FIO_PREFIX)).expanduser()
    where = f"fio:{path}"
    if not text.removeprefix(FIO_PREFIX):
        raise ConfigError(_OPTION, "fio: needs a job file, e.g. fio:jobs/randwrite.fio")
    try:
        if not path.is_file():
            raise ConfigError(_OPTION, f"{where}: no such job file")
        if path.stat().st_size > _MAX_JOB_BYTES:
            raise ConfigError(_OPTION, f"{where}: larger than 1 MiB, not a fio job file")
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(_OPTION, f"{where}: cannot read: {exc}") from None
    sections, options = _options(content)
    jobs = tuple(s for s in sections if s.lower() != "global")
    if not jobs:
        raise ConfigError(_OPTION, f"{where}: not a fio job file (no [job] section)")
    for key in _PATH_KEYS:
        value = options.get(key, "")
        if value.startswith("/"):
            raise ConfigError(_OPTION, f"{where}: {key}={value} lies outside the nbdfork device "
                              "(use a relative name or ${NBDFORK_DIR}, ${NBDFORK_DEVICE})")
    _fio_parses(path, where)
    verify = options.get("verify")
    raw = "${NBDFORK_DEVICE}" in options.get("filename", "")
    return FioJob(path.resolve(), jobs, verify if verify not in (None, "0", "null") else None,
                  raw)  # fmt: skip


def _fio_parses(path: Path, where: str) -> None:
    """`fio --parse-only` accepts the job (with the variables nbdfork sets defined)."""
    fio = shutil.which("fio")
    if fio is None:
        raise ConfigError(_OPTION, f"{where}: fio is not installed (Debian package fio)")
    env = {**os.environ, "NBDFORK_DIR": "/nonexistent", "NBDFORK_DEVICE": "/dev/null"}
    try:
        proc = subprocess.run([fio, "--parse-only", str(path)], capture_output=True, text=True,
                              timeout=30, env=env, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(_OPTION, f"{where}: fio --parse-only failed: {exc}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise ConfigError(_OPTION, f"{where}: fio rejects it: {lines[0] if lines else 'exit 1'}")


def fio_argv(
    job: Path, *, directory: Path | None, device: str, output: Path, verify_only: bool = False
) -> list[str]:
    """fio's argv for the job on a mounted directory (or on `device` when None)."""
    place = f"--directory={directory}" if directory is not None else f"--filename={device}"
    extra = ["--verify_only"] if verify_only else []
    return ["fio", "--output-format=json", f"--output={output}", place, *extra, str(job)]


def fio_env(directory: Path | None, device: str) -> dict[str, str]:
    """The environment fio runs in: NBDFORK_DIR (the mount, or /) and NBDFORK_DEVICE."""
    return {**os.environ, "NBDFORK_DIR": str(directory or "/"), "NBDFORK_DEVICE": device}


def parse_fio_json(text: str) -> list[dict[str, Any]]:
    """Per job of fio's JSON output: name, error, ios and bytes written and read (fio may print
    notices before the JSON object)."""
    start = text.find("{")
    if start < 0:
        return []
    try:
        data = json.loads(text[start:])
    except ValueError:
        return []
    jobs = []
    for job in data.get("jobs", []):
        write, read = job.get("write", {}), job.get("read", {})
        jobs.append({
            "name": job.get("jobname"), "error": int(job.get("error", 0)),
            "write_ios": int(write.get("total_ios", 0)),
            "write_bytes": int(write.get("io_bytes", 0)),
            "read_ios": int(read.get("total_ios", 0)),
            "read_bytes": int(read.get("io_bytes", 0)),
        })  # fmt: skip
    return jobs


def fio_outcome(phase: Mapping[str, Any]) -> bool:
    """Whether fio's read-back passed: exit 0, every job without error and having read
    something back (a job with do_verify=0 verifies nothing, even with --verify_only)."""
    jobs = phase.get("jobs") or []
    return phase.get("exit") == 0 and bool(jobs) and all(
        j["error"] == 0 and j["read_ios"] > 0 for j in jobs
    )


class Kicker:
    """Starts writeback of fio's files while fio runs, as nbdfork's own workloads' kicker does
    (`--kick sync_file_range`): sync_file_range(SYNC_FILE_RANGE_WRITE) over every regular file
    under the directory (or the device), in a tight loop from its own thread -- writeback racing
    the writer, which fio's own `sync_file_range=` (called in the writer's thread) cannot do.
    Files stay open between kicks; the directory is searched again for new files every
    `RESCAN_S` (a search per kick made the loop ten times slower than the stamped workloads'
    kicker, and so the window for a tear narrower)."""

    RESCAN_S: Final = 0.2

    def __init__(self, directory: Path | None, device: str) -> None:
        self._directory, self._device = directory, device
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fio-kicker", daemon=True)
        self._fds: dict[Path, int] = {}
        self.kicks = 0

    def __enter__(self) -> Kicker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _rescan(self) -> None:
        """Open the files not yet open (fio creates its files after it starts)."""
        paths = [Path(self._device)] if self._directory is None else []
        if self._directory is not None:
            with contextlib.suppress(OSError):
                paths = [p for p in self._directory.rglob("*") if p.is_file()]
        for path in paths:
            if path not in self._fds:
                with contextlib.suppress(OSError):
                    self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def _loop(self) -> None:
        from nbdfork.workloads.base import sync_file_range  # noqa: PLC0415 (numpy: guest only)

        rescan_at = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() >= rescan_at:
                    self._rescan()
                    rescan_at = time.monotonic() + self.RESCAN_S
                for fd in list(self._fds.values()):
                    with contextlib.suppress(OSError):
                        sync_file_range(fd)
                        self.kicks += 1
                if not self._fds:
                    self._stop.wait(0.01)
        finally:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _latency_ms(text: str) -> dict[str, float | None]:
    """The write completion latency percentiles of fio's JSON output, in ms (all jobs: the
    first that wrote), as the report's writer latency."""
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        data = {}
    for job in data.get("jobs", []):
        clat = job.get("write", {}).get("clat_ns", {})
        pct = clat.get("percentile") or {}
        if clat.get("N"):
            ms = {k: round(pct[k] / 1e6, 4) if k in pct else None
                  for k in ("50.000000", "99.000000", "99.900000")}  # fmt: skip
            return {"p50": ms["50.000000"], "p99": ms["99.000000"], "p999": ms["99.900000"],
                    "max": round(clat.get("max", 0) / 1e6, 4)}  # fmt: skip
    return {"p50": None, "p99": None, "p999": None, "max": None}


def run_phase(
    argv: list[str], env: Mapping[str, str], output: Path, timeout: float
) -> dict[str, Any]:
    """One fio invocation: its exit status, per-job results and the tail of what it printed
    (fio names a verification failure there: "verify: bad header", "crc32c: verify failed")."""
    try:
        proc = subprocess.run(argv, env=dict(env), capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"argv": argv, "exit": None, "jobs": [], "messages": [f"timeout {timeout:g} s"]}
    text = output.read_text(encoding="utf-8", errors="replace") if output.exists() else ""
    messages = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return {"argv": argv, "exit": proc.returncode, "jobs": parse_fio_json(text),
            "messages": messages[-20:], "writer_latency_ms": _latency_ms(text)}  # fmt: skip
