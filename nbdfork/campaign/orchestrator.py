"""The campaign orchestrator: a spec's cells run N at a time, resumable, into one directory.

    DIR/campaign.json   the spec (and its hash) this directory belongs to
    DIR/journal.jsonl   one line per cell event (nbdfork.campaign.journal)
    DIR/cells/<id>/     each cell's --out: cell.log and the subcommand's report
    DIR/.running/<name> a running cell's --out (no `=` or `,` for qemu), moved to cells/<id>
    DIR/.running/<name>.owner   the process group running it (nbdfork.campaign.orphans)
    DIR/previous/<id>/  the partial directory of a cell that is being run again

Every cell path is made by nbdfork.campaign.paths (a cell id is one safe name, and the path is
checked to be a direct child of its folder); a campaign moves or deletes only its cells' own
folders. A campaign that was killed leaves its running cells' owner records: the next one in
DIR stops those cells before it starts any (`reclaim`), so a cell never runs twice at once.
    DIR/report.json, report.md, *.png   the merged report (nbdfork.campaign.merge)

asyncio is here because there is real concurrency to wait on: cell subprocesses (local) or Ray
tasks. SIGINT/SIGTERM stop the campaign cleanly: running cells are stopped and journalled as
`interrupted`, the report is written for what finished, and the command exits 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nbdfork.campaign.executors import ERROR_MAX, CellOutcome, Executor
from nbdfork.campaign.journal import Journal, JournalState, read_journal
from nbdfork.campaign.orphans import reclaim
from nbdfork.campaign.paths import CELLS, PREVIOUS, RUNNING, cell_dir, previous_dir
from nbdfork.campaign.spec import CampaignSpec, Cell
from nbdfork.errors import ConfigError
from nbdfork.files import write_json
from nbdfork.inputs import read_bounded

__all__ = [
    "CAMPAIGN_FILE",
    "Budget",
    "CELLS",
    "Display",
    "Outcome",
    "claim_directory",
    "pending_cells",
    "run_cells",
]

CAMPAIGN_FILE = "campaign.json"
CAMPAIGN_SCHEMA = "nbdfork.campaign-spec/1"


class Display(Protocol):
    """Told about each cell as it starts and ends (a progress bar, a log)."""

    def started(self, cell: Cell) -> None: ...

    def finished(self, cell: Cell, event: str, outcome: CellOutcome | None) -> None: ...

    def progress(self, cell: Cell, line: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one `campaign run` did."""

    ran: int
    skipped: int
    interrupted: bool
    wall_s: float


@contextlib.contextmanager
def claim_directory(out: Path, spec: CampaignSpec, spec_path: Path, force: bool) -> Iterator[None]:
    """Lock DIR for this process and check (or record) the spec it belongs to."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / CELLS).mkdir(exist_ok=True)
        fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise ConfigError("--out", f"cannot use {out}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError("--out", f"{out} is in use by another campaign") from None
        _check_spec(out, spec, spec_path, force)
        yield
    finally:
        os.close(fd)


def _check_spec(out: Path, spec: CampaignSpec, spec_path: Path, force: bool) -> None:
    path = out / CAMPAIGN_FILE
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    record: dict[str, Any] = {"created": now}
    if path.exists():
        data = read_bounded(path, 1 << 20, lambda problem: ConfigError(str(path), problem))
        try:
            record = json.loads(data)
        except (ValueError, RecursionError):
            raise ConfigError(str(path), "is not JSON: not a campaign directory?") from None
        if not isinstance(record, dict):
            raise ConfigError(str(path), "is not a campaign record: not a campaign directory?")
        if record.get("spec_hash") != spec.hash and not force:
            raise ConfigError(str(spec_path), f"differs from the spec {out} was started with "
                              f"({path}); use --force to run it there anyway")  # fmt: skip
    record.update(schema=CAMPAIGN_SCHEMA, name=spec.name, seed=spec.seed, spec_hash=spec.hash,
                  spec_path=str(spec_path), spec=json.loads(spec.source), updated=now,
                  cells=[c.id for c in spec.cells])  # fmt: skip
    write_json(path, record)


def pending_cells(cells: Sequence[Cell], states: dict[str, JournalState]) -> list[Cell]:
    """The cells to run: all but those whose last event is `done` under the same key."""
    return [
        c for c in cells
        if not ((s := states.get(c.id)) and s.event == "done" and s.key == c.key)
    ]  # fmt: skip


def _set_aside(out: Path, cell: Cell) -> Path:
    """An empty DIR/cells/<id>/; a partial one from an earlier attempt goes to
    previous/<id>/, replacing the attempt before it (both this cell's own)."""
    directory = cell_dir(out, cell.id)
    if os.path.lexists(directory):
        (out / PREVIOUS).mkdir(exist_ok=True)
        aside = previous_dir(out, cell.id)
        if aside.is_dir():
            shutil.rmtree(aside)
        directory.rename(aside)
    directory.mkdir(parents=True)
    return directory


async def _run_one(
    cell: Cell, out: Path, executor: Executor, journal: Journal, display: Display
) -> None:
    directory = _set_aside(out, cell)
    common = {"key": cell.key, "kind": cell.kind, "executor": executor.name}
    journal.append(cell.id, "start", **common, seed=cell.seed)
    display.started(cell)
    try:
        outcome = await executor.run(cell, directory, lambda line: display.progress(cell, line))
    except asyncio.CancelledError:
        journal.append(cell.id, "interrupted", **common)
        display.finished(cell, "interrupted", None)
        raise
    except Exception as exc:  # the executor itself broke (unpacking, a full disk)
        outcome = CellOutcome(None, f"{type(exc).__name__}: {exc}", 0.0, "?", False)
    event = "done" if outcome.ok else "failed"
    error = None if outcome.error is None else outcome.error[:ERROR_MAX]  # any executor's
    journal.append(cell.id, event, **common, exit_status=outcome.exit_status,
                   error=error, duration_s=round(outcome.duration_s, 3),
                   node=outcome.node)  # fmt: skip
    display.finished(cell, event, outcome)


@dataclass(frozen=True, slots=True)
class Budget:
    """What the local executor packs running cells into: CPUs and bytes of memory. A cell
    starts when it fits beside those running (each declares `cpus` and `memory`); a cell
    bigger than the whole budget still runs, alone."""

    cpus: int
    memory: int

    def fits(self, cell: Cell, running: Sequence[Cell]) -> bool:
        if not running:
            return True
        cpus = sum(c.cpus for c in running) + cell.cpus
        memory = sum(c.memory for c in running) + cell.memory
        return cpus <= self.cpus and memory <= self.memory


def _next_cells(
    queue: list[Cell], running: Sequence[Cell], jobs: int, budget: Budget | None
) -> list[Cell]:
    """The queued cells to start now, in queue order (first fit: a smaller cell may start
    ahead of a bigger one that must wait)."""
    chosen: list[Cell] = []
    for cell in queue:
        if len(running) + len(chosen) >= jobs:
            break
        if budget is None or budget.fits(cell, [*running, *chosen]):
            chosen.append(cell)
    for cell in chosen:
        queue.remove(cell)
    return chosen


async def _run_all(
    cells: Sequence[Cell], out: Path, executor: Executor, journal: Journal, *, jobs: int,
    display: Display, budget: Budget | None = None,
) -> bool:  # fmt: skip
    """Run `cells`, at most `jobs` at a time and packed into `budget`; True when a signal
    stopped the campaign."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    queue = list(cells)
    running: dict[asyncio.Task[None], Cell] = {}
    stopped = asyncio.create_task(stop.wait())
    try:
        while (queue or running) and not stop.is_set():
            for cell in _next_cells(queue, list(running.values()), jobs, budget):
                running[asyncio.create_task(_run_one(cell, out, executor, journal, display))] = cell
            waiting: set[asyncio.Future[Any]] = {*running, stopped}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in [t for t in running if t in done]:
                del running[task]
                task.result()  # an unexpected error in the orchestrator itself
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    finally:
        stopped.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return stop.is_set()


def run_cells(
    spec: CampaignSpec, out: Path, executor: Executor, jobs: int, display: Display, *,
    budget: Budget | None = None, grace: float = 30.0, say: Callable[[str], None] = print,
) -> Outcome:  # fmt: skip
    """Run the cells of `spec` that the journal of `out` does not have as `done`, at most
    `jobs` at once and (local executor) packed into `budget`; first stop the cells a killed
    campaign left running in `out` (`say` tells which, `grace` seconds after SIGTERM)."""
    started = time.monotonic()
    reclaim(out, grace, say)
    todo = pending_cells(spec.cells, read_journal(out))
    journal = Journal(out)
    try:
        main = _run_all(todo, out, executor, journal, jobs=jobs, display=display, budget=budget)
        interrupted = asyncio.run(main)
    finally:
        journal.close()
        executor.close()
        with contextlib.suppress(OSError):
            (out / RUNNING).rmdir()  # empty unless a cell could not be moved into place
    return Outcome(len(todo), len(spec.cells) - len(todo), interrupted,
                   time.monotonic() - started)  # fmt: skip
