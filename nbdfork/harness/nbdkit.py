"""The one way nbdfork starts nbdkit with its plugin: argv, environment, readiness, stop.

Every caller (serve, run on the host or in a guest, crash, tests, benchmarks) builds the
command with `plugin_argv`, starts it with `start`, waits for the unix socket with
`wait_ready` and ends it with `stop`, so a flag or a fix lands everywhere at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from nbdfork import PLUGIN
from nbdfork.errors import NbdforkError

__all__ = [
    "PLUGIN",
    "NbdkitError",
    "plugin_argv",
    "plugin_env",
    "private_server",
    "server_argv",
    "start",
    "stop",
    "wait_ready",
]


class NbdkitError(NbdforkError):
    """nbdkit could not be started, or stopped serving."""


def server_argv(
    plugin_args: Sequence[str],
    *,
    unix: Path | str | None = None,
    single: bool = False,
    threads: int | None = None,
    nbdkit: str = "nbdkit",
) -> list[str]:
    """nbdkit serving `plugin_args` (e.g. ["python", PLUGIN, "size=1M"], or ["memory",
    "size=1M"] for a baseline): on a unix socket (`unix`), or on stdin/stdout (`single`),
    always in the foreground and exiting with its parent; `threads` caps nbdkit's threads."""
    argv = [nbdkit, "--exit-with-parent"]
    if single:
        argv.append("-s")
    else:
        if unix is None:
            raise ValueError("plugin_argv: a unix socket or single=True is needed")
        argv += ["--unix", str(unix), "--foreground"]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return [*argv, *plugin_args]


def plugin_argv(
    params: Mapping[str, str],
    *,
    unix: Path | str | None = None,
    single: bool = False,
    threads: int | None = None,
    plugin: Path | str = PLUGIN,
    nbdkit: str = "nbdkit",
) -> list[str]:
    """nbdkit serving our plugin with `params` (see server_argv for the rest)."""
    args = ["python", str(plugin), *(f"{k}={v}" for k, v in params.items())]
    return server_argv(args, unix=unix, single=single, threads=threads, nbdkit=nbdkit)


def plugin_env(venv: str | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """nbdkit's environment: VIRTUAL_ENV names the venv the plugin imports from; our own
    PYTHONPATH would put the venv before nbdkit's standard library; one BLAS thread."""
    env = {k: v for k, v in (base if base is not None else os.environ).items() if k != "PYTHONPATH"}
    env.update(
        VIRTUAL_ENV=venv or sys.prefix,
        PYTHONDONTWRITEBYTECODE="1",
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
    )
    return env


def start(
    argv: list[str], *, log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start nbdkit with stdout and stderr appended to `log`."""
    if "--unix" in argv:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(argv[argv.index("--unix") + 1])
    with log.open("ab") as err:
        try:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                env=dict(env) if env is not None else plugin_env(),
            )  # fmt: skip
        except OSError as exc:
            raise NbdkitError(f"cannot run {argv[0]}: {exc.strerror}") from exc


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = log.read_text(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else ""
    return ""


def wait_ready(
    proc: subprocess.Popen[bytes], socket: Path | str, *, log: Path, timeout: float
) -> float:
    """Wait until nbdkit listens on `socket`; its start-up time in seconds. NbdkitError (with
    nbdkit's last message) if it exits first or `timeout` passes."""
    started = time.monotonic()
    while not Path(socket).exists():
        if proc.poll() is not None:
            raise NbdkitError(f"nbdkit exited with status {proc.returncode}: {_tail(log)}")
        if time.monotonic() - started > timeout:
            raise NbdkitError(f"nbdkit: socket {socket} not up after {timeout:g} s")
        time.sleep(0.02)
    return time.monotonic() - started


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    """SIGTERM (the plugin writes its final report), then SIGKILL after `timeout`; the exit
    status, or None if it had to be killed."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return None


@contextlib.contextmanager
def private_server(
    params: Mapping[str, str],
    *,
    log: Path,
    threads: int | None = None,
    plugin: Path | str = PLUGIN,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> Iterator[tuple[Path, float]]:
    """The plugin served on a unix socket in a fresh 0700 directory (nobody else can reach or
    replace it); yields (socket, seconds nbdkit took to listen), then stops nbdkit — its final
    report is written — and removes the directory."""
    home = Path(tempfile.mkdtemp(prefix="nbdfork-"))
    socket = home / "nbd.sock"
    proc = start(plugin_argv(params, unix=socket, threads=threads, plugin=plugin), log=log,
                 env=env)  # fmt: skip
    try:
        yield socket, wait_ready(proc, socket, log=log, timeout=timeout)
    finally:
        stop(proc)
        shutil.rmtree(home, ignore_errors=True)
