"""Where a cell's subprocess runs: here (asyncio) or in a Ray task on some node of a cluster.

Both executors give the orchestrator the same thing for a cell: its result directory filled
(DIR/cells/<id>/ with cell.log and the subcommand's report) and a CellOutcome. The local one
starts `nbdfork KIND ... --out CELLDIR` with asyncio in its own process group (so qemu and
nbdkit children die with it) and streams its output line by line into cell.log through
aiofiles. The Ray one runs the same argv inside a Ray task on a worker, in a directory of
that node's own (its TMPDIR), and returns the directory as a tar.gz: workers share no
filesystem with the driver. Ray is imported only by RayExecutor (the optional extra `.[ray]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiofiles

from nbdfork.campaign.orphans import record_owner, release_owner
from nbdfork.campaign.paths import running_dir, safe_name
from nbdfork.campaign.spec import NBDFORK, OUT, Cell
from nbdfork.errors import ConfigError

__all__ = [
    "CELL_LOG",
    "CellOutcome",
    "Executor",
    "OnLine",
    "LocalExecutor",
    "RayExecutor",
    "default_jobs",
    "memory_bytes",
    "resolve_argv",
]

CELL_LOG = "cell.log"
ERROR_MAX = 500  # characters of a failed cell's last stderr line kept in the journal
GRACE = 30.0
"""Seconds between SIGTERM and SIGKILL of a cell's process group: a run cell stops its VM
(SIGTERM, up to 10 s, then SIGKILL: its own process group) and nbdkit in that time."""


@dataclass(frozen=True, slots=True)
class CellOutcome:
    """How one cell's subprocess ended."""

    exit_status: int | None  # None: it never ran (could not start, timed out)
    error: str | None  # the last stderr line when it failed, or why it did not run
    duration_s: float
    node: str
    ok: bool  # the exit status is one of the cell's ok_statuses


OnLine = Callable[[str], None]
"""Told each line a running cell prints on stdout, as it prints it (its progress)."""


class Executor(Protocol):
    """Runs one cell into `directory` and says how it ended; cancellation stops the cell.
    `on_line` hears the cell's output as it comes, where the executor can stream it."""

    name: str

    async def run(self, cell: Cell, directory: Path, on_line: OnLine | None = None
                  ) -> CellOutcome: ...  # fmt: skip

    def close(self) -> None: ...


def resolve_argv(argv: Sequence[str], out: Path) -> list[str]:
    """The cell's argv for this machine: `nbdfork` from this interpreter's venv, OUT filled in."""
    resolved = [a.replace(OUT, str(out)) for a in argv]
    if resolved and resolved[0] == NBDFORK:
        script = Path(sys.executable).parent / NBDFORK
        head = [str(script)] if script.exists() else [sys.executable, "-m", "nbdfork.cli"]
        resolved = [*head, *resolved[1:]]
    return resolved


def _cell_env() -> dict[str, str]:
    # The plugin finds the venv through VIRTUAL_ENV; no colours or live displays in cell.log.
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix, NO_COLOR="1", TERM="dumb")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def memory_bytes() -> int:
    """This machine's physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # pragma: no cover - not Linux
        return 4 << 30


def default_jobs(cells: Sequence[Cell]) -> int:
    """Cells at once on this machine: VM cells by cores/2 and memory/3 GiB, others min(cores, 4)."""
    cores = os.cpu_count() or 1
    if any(c.cpus > 1 for c in cells):  # a VM cell
        return max(1, min(cores // 2, memory_bytes() // (3 << 30)))
    return max(1, min(cores, 4))


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class LocalExecutor:
    """Cells as asyncio subprocesses on this machine."""

    name = "local"

    def __init__(self, grace: float = GRACE) -> None:
        self.grace = grace
        self.node = socket.gethostname()

    async def run(self, cell: Cell, directory: Path, on_line: OnLine | None = None
                  ) -> CellOutcome:  # fmt: skip
        """Run `cell` into DIRECTORY (cell.log and its --out); cancelled: stop its process group;
        each stdout line also goes to `on_line` as it comes.

        The subprocess writes into DIR/.running/<safe name>, moved to DIRECTORY (made empty by
        the orchestrator) when it ends: a cell id's `=` and `,` must not reach virtme-ng's and
        qemu's path options. While it runs, DIR/.running/<safe name>.owner names its process
        group (nbdfork.campaign.orphans)."""
        out = directory.parent.parent
        work = running_dir(out, cell.id)  # this cell's own: an earlier attempt's leftovers
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            return await self._run(cell, work, on_line, out)
        finally:
            with contextlib.suppress(FileNotFoundError):
                directory.rmdir()  # the empty placeholder; anything in it stays (and fails here)
            work.rename(directory)

    async def _run(self, cell: Cell, work: Path, on_line: OnLine | None, out: Path
                   ) -> CellOutcome:  # fmt: skip
        started = time.monotonic()
        argv = resolve_argv(cell.argv, work)
        async with aiofiles.open(work / CELL_LOG, "w") as log:
            await log.write(f"# {' '.join(argv)}\n")
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, start_new_session=True, env=_cell_env(),
                )  # fmt: skip
            except OSError as exc:
                return CellOutcome(None, f"cannot start {argv[0]}: {exc.strerror}",
                                   time.monotonic() - started, self.node, False)  # fmt: skip
            try:
                record_owner(out, cell.id, proc.pid)
                return await self._wait(cell, proc, log, on_line, started)
            finally:
                if proc.returncode is not None:  # its group is stopped or left on its own
                    release_owner(out, cell.id)

    async def _wait(self, cell: Cell, proc: asyncio.subprocess.Process, log: Any,
                    on_line: OnLine | None, started: float) -> CellOutcome:  # fmt: skip
        """Wait for the cell's process (its timeout), copying its output into `log`."""
        last: list[str] = []
        pumps = asyncio.gather(
            _pump(proc.stdout, log, None, on_line), _pump(proc.stderr, log, last, None)
        )
        try:
            await asyncio.wait_for(proc.wait(), cell.timeout)
        except TimeoutError:
            await self._stop(proc, pumps)
            return CellOutcome(None, f"timed out after {cell.timeout:g} s",
                               time.monotonic() - started, self.node, False)  # fmt: skip
        except asyncio.CancelledError:
            await self._stop(proc, pumps)  # what it says while stopping reaches cell.log
            raise
        await _drain(pumps)
        status = proc.returncode
        ok = status in cell.ok_statuses
        error = None if ok else (last[0][:ERROR_MAX] if last else f"exit status {status}")
        return CellOutcome(status, error, time.monotonic() - started, self.node, ok)

    async def _stop(self, proc: asyncio.subprocess.Process, pumps: asyncio.Future[Any]) -> None:
        """SIGTERM the cell's process group, SIGKILL it after the grace period; keep copying
        its output into cell.log meanwhile."""
        _kill_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), self.grace)
        _kill_group(proc.pid, signal.SIGKILL)  # children that outlived their parent too
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()
        await _drain(pumps)

    def close(self) -> None:
        """Nothing to release."""


async def _drain(pumps: asyncio.Future[Any], timeout: float = 5.0) -> None:
    """Let the output pumps reach the end of the cell's pipes; a grandchild that still holds
    them open does not keep the campaign waiting."""
    try:
        await asyncio.wait_for(pumps, timeout)
    except TimeoutError:
        pumps.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumps


async def _pump(
    stream: asyncio.StreamReader | None, log: Any, last: list[str] | None, on_line: OnLine | None
) -> None:
    """Copy `stream` line by line into the cell log (flushed per line, so `tail -f` follows a
    running cell); remember its last non-empty line; hand each line to `on_line`."""
    if stream is None:
        return
    while line := await stream.readline():
        text = line.decode(errors="replace")
        await log.write(text if text.endswith("\n") else text + "\n")
        await log.flush()
        if text.strip():
            if last is not None:
                last[:] = [text.strip()]
            if on_line is not None:
                on_line(text.strip())


# ---------------------------------------------------------------------------------------- Ray


def run_cell_here(cell_id: str, argv: Sequence[str], timeout: float | None,
                  ok_statuses: Sequence[int]) -> dict[str, Any]:  # fmt: skip
    """The body of a Ray task: run the cell in a temp dir; return its outcome and a tar.gz.
    Its node is the host and the Ray node id: several raylets can share a host."""
    import ray  # noqa: PLC0415 - this runs only on a Ray worker

    node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:12]}"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nbdfork-cell-") as tmp:
        out = Path(tmp) / safe_name(cell_id)
        out.mkdir()
        full = resolve_argv(argv, out)
        status, error = _run_blocking(full, out / CELL_LOG, timeout)
        ok = status in ok_statuses
        if not ok and error is None:
            error = f"exit status {status}"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(out, arcname=".")
        return {"exit_status": status, "error": None if ok else error, "ok": ok,
                "duration_s": time.monotonic() - started, "node": node,
                "tar": buffer.getvalue()}  # fmt: skip


def _run_blocking(argv: list[str], log_path: Path, timeout: float | None
                  ) -> tuple[int | None, str | None]:  # fmt: skip
    with log_path.open("w") as log:
        log.write(f"# {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.PIPE, start_new_session=True,
                                env=_cell_env(), text=True, errors="replace")  # fmt: skip
        last: list[str] = []
        reader = threading.Thread(target=_copy_lines, args=(proc.stderr, log, last), daemon=True)
        reader.start()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout:g} s"
        finally:
            if proc.poll() is None:  # timed out, or the task is being cancelled
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
            reader.join(5.0)
    return proc.returncode, (last[0] if last else None)


def _copy_lines(stream: Any, log: Any, last: list[str]) -> None:
    for line in stream:
        log.write(line)
        if line.strip():
            last[:] = [line.strip()]


def _unpack(data: bytes, directory: Path) -> None:
    """Extract a cell's tar.gz: regular files and directories only, never outside `directory`."""
    root = directory.resolve()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            target = (root / member.name).resolve()
            if not target.is_relative_to(root):
                raise ValueError(f"cell archive member {member.name!r} leaves its directory")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
            # links, devices and fifos from a worker are dropped


class RayExecutor:
    """Each cell a Ray task (num_cpus 2 and memory for VM cells, 1 CPU otherwise, plus the
    custom resources its spec group names), retried when its node or worker is lost; the
    driver unpacks each returned tar.gz into the cell dir."""

    name = "ray"
    MAX_RETRIES = 3

    def __init__(self, address: str | None) -> None:
        try:
            import ray  # noqa: PLC0415 - optional extra, never imported by the local executor
        except ImportError:
            raise ConfigError("--executor", "ray is not installed: pip install -e '.[ray]' "
                              "(the `ray` extra)") from None  # fmt: skip
        self._ray: Any = ray
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:  # a private local runtime, never someone else's cluster
                ray.init(address="local", include_dashboard=False, log_to_driver=False,
                         object_store_memory=128 << 20)  # fmt: skip
        self._remote = ray.remote(run_cell_here)

    async def run(self, cell: Cell, directory: Path, on_line: OnLine | None = None
                  ) -> CellOutcome:  # fmt: skip
        """Submit `cell` as a task, await it, unpack its directory; cancelled: cancel the task.
        The cell's output reaches cell.log when the task returns (no streaming from a node)."""
        started = time.monotonic()
        options: dict[str, Any] = {"num_cpus": cell.cpus, "max_retries": self.MAX_RETRIES,
                                   "name": cell.id}  # fmt: skip
        if cell.cpus > 1:  # a VM cell: reserve its memory too
            options["memory"] = cell.memory
        if cell.resources:
            if unplaceable := await asyncio.to_thread(self._unplaceable, cell.resources):
                return CellOutcome(None, unplaceable, time.monotonic() - started, "?", False)
            options["resources"] = dict(cell.resources)
        ref = self._remote.options(**options).remote(
            cell.id, list(cell.argv), cell.timeout, list(cell.ok_statuses)
        )
        try:
            result: dict[str, Any] = await ref
        except asyncio.CancelledError:
            self._ray.cancel(ref, force=True)
            raise
        except Exception as exc:  # a task that failed after its retries (RayError & co)
            message = str(exc).strip().splitlines()
            return CellOutcome(None, f"ray: {message[-1] if message else type(exc).__name__}",
                               time.monotonic() - started, "?", False)  # fmt: skip
        directory.mkdir(parents=True, exist_ok=True)  # the orchestrator's empty placeholder
        await asyncio.to_thread(_unpack, result["tar"], directory)
        return CellOutcome(result["exit_status"], result["error"], float(result["duration_s"]),
                           str(result["node"]), bool(result["ok"]))  # fmt: skip

    def _unplaceable(self, resources: Mapping[str, float]) -> str | None:
        """Why no live node has `resources` (Ray would queue such a task forever), or None."""
        nodes = [n["Resources"] for n in self._ray.nodes() if n.get("Alive")]
        if any(all(n.get(k, 0.0) >= v for k, v in resources.items()) for n in nodes):
            return None
        return "ray: no live node has " + ", ".join(f"{k}={v:g}" for k, v in resources.items())

    def close(self) -> None:
        """Disconnect from (or stop) the Ray runtime."""
        self._ray.shutdown()
