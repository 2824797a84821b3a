"""`nbdfork campaign`: run a spec's cells (run / crash / model subprocesses) N at a time,
resumably, here or on a Ray cluster, into one merged report.

Argument parsing and display only; the work is nbdfork.campaign.orchestrator.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nbdfork.campaign.executors import (
    GRACE,
    CellOutcome,
    Executor,
    LocalExecutor,
    default_jobs,
    memory_bytes,
)
from nbdfork.campaign.journal import read_journal
from nbdfork.campaign.merge import build_report, load_report, render, write_report
from nbdfork.campaign.orchestrator import Budget, claim_directory, run_cells
from nbdfork.campaign.spec import MAX_CELLS, Cell, example_kinds, example_spec, load_spec
from nbdfork.config import parse_size
from nbdfork.errors import ConfigError
from nbdfork.options import check_out_dir, parse_bounded_float, parse_bounded_int

__all__ = ["register"]

INTERRUPTED = 130
_EPILOG = """\
examples:
  nbdfork campaign example model > spec.toml      a small host-only spec (no VM)
  nbdfork campaign run spec.toml --out results/c  run it; rerun the same command to resume
  nbdfork campaign run spec.toml --out results/c --executor ray --address HEAD:6379
  nbdfork campaign report results/c               re-render report.md and plots

exit status: 0 when every cell is done (violations found are results), 1 when a cell failed,
2 on a bad spec, 130 when interrupted (rerun to resume).

bounds: at most --max-cells cells (default 10,000, counted before any is made); --jobs and
--cpus from 1 to 4096; a spec's timeout in (0, 604800] s (docs/parameters.md).
"""
MAX_JOBS = 4096
MAX_CELLS_LIMIT = 10_000_000


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `campaign` subcommand and its `run`, `example` and `report` actions."""
    parser = sub.add_parser(
        "campaign", help="many run/crash/model cells from a spec, concurrent and resumable",
        description="Expand a TOML spec (kinds x axes x seeds) into cells, run each as an "
        "nbdfork subprocess, N at a time here or as Ray tasks, journal every cell event, and "
        "merge the cells' reports into one (docs/campaigns.md).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="run (or resume) the cells of SPEC into DIR")
    run.add_argument("spec", type=Path, metavar="SPEC.toml")
    run.add_argument("--out", type=Path, required=True, metavar="DIR", help="campaign directory")
    run.add_argument("--jobs", metavar="N",
                     help="cells at once (default: from cores and memory; ray: every cell)")
    run.add_argument("--cpus", metavar="N",
                     help="local: CPUs to pack cells into (a VM cell takes 2, others 1; "
                     "default: this machine's cores)")
    run.add_argument("--memory", metavar="SIZE",
                     help="local: memory to pack cells into (a VM cell takes 2.5G, others 512M; "
                     "default: 90%% of this machine's)")
    run.add_argument("--executor", choices=("local", "ray"), default="local")
    run.add_argument("--address", metavar="ADDR",
                     help="Ray cluster address (default: a private local Ray runtime)")
    run.add_argument("--force", action="store_true",
                     help="run a changed spec in DIR (done cells whose argv is unchanged stay)")
    run.add_argument("--max-cells", metavar="N", default=str(MAX_CELLS),
                     help=f"refuse a spec of more cells than this (default {MAX_CELLS:,})")
    run.add_argument("--grace", default=str(GRACE), help=argparse.SUPPRESS)
    run.set_defaults(handler=_run)
    example = actions.add_parser("example", help="print a runnable example spec (TOML)")
    example.add_argument("kind", choices=example_kinds())
    example.set_defaults(handler=_example)
    report = actions.add_parser("report", help="re-render DIR/report.md from its saved files")
    report.add_argument("out", type=Path, metavar="DIR")
    report.set_defaults(handler=_report)


def _example(args: argparse.Namespace) -> int:
    print(example_spec(args.kind), end="")
    return 0


def _report(args: argparse.Namespace) -> int:
    for path in render(args.out, load_report(args.out)):
        print(path)
    return 0


class _Display:
    """One rich progress bar for the campaign (with what each running cell last printed: its
    guest's progress) and one line per finished cell."""

    def __init__(self, progress: Progress, total: int) -> None:
        self._progress = progress
        self._task = progress.add_task("campaign", total=total)
        self._running: dict[str, str] = {}  # cell id -> its latest output line
        self.failed = 0

    def _describe(self) -> None:
        shown = [f"{cell} ({line})" if line else cell
                 for cell, line in list(self._running.items())[:2]]  # fmt: skip
        more = " ..." if len(self._running) > 2 else ""
        self._progress.update(self._task, description=f"running {', '.join(shown) or '-'}{more}")

    def started(self, cell: Cell) -> None:
        self._running[cell.id] = ""
        self._describe()

    def progress(self, cell: Cell, line: str) -> None:
        if cell.id in self._running:
            self._running[cell.id] = line[:60]
            self._describe()

    def finished(self, cell: Cell, event: str, outcome: CellOutcome | None) -> None:
        self._running.pop(cell.id, None)
        self._describe()
        if event == "interrupted" or outcome is None:
            self._progress.console.print(f"  interrupted {cell.id}", highlight=False)
            return
        self._progress.advance(self._task)
        self.failed += event == "failed"
        detail = "" if outcome.ok else f": {outcome.error}"
        self._progress.console.print(f"  {event:<6} {cell.id} ({outcome.duration_s:.1f} s, "
                                     f"{outcome.node}){detail}", highlight=False)  # fmt: skip


def _executor(args: argparse.Namespace, grace: float) -> Executor:
    if args.executor == "ray":
        from nbdfork.campaign.executors import RayExecutor  # noqa: PLC0415

        return RayExecutor(args.address)
    if args.address:
        raise ConfigError("--address", "is for --executor ray")
    return LocalExecutor(grace=grace)


def _budget(args: argparse.Namespace) -> Budget | None:
    """The local executor's CPUs and memory (Ray packs its tasks itself)."""
    if args.executor == "ray":
        for option, value in (("--cpus", args.cpus), ("--memory", args.memory)):
            if value is not None:
                raise ConfigError(option, "is for the local executor (Ray sizes its tasks)")
        return None
    cpus = _count("--cpus", args.cpus)
    if args.memory is not None and len(args.memory) > 30:
        raise ConfigError("--memory", f"{args.memory[:30]!r}... is not a size")
    memory = parse_size("--memory", args.memory) if args.memory is not None else None
    if memory is not None and memory < 1:
        raise ConfigError("--memory", f"{args.memory!r} must be more than 0")
    return Budget(cpus=cpus or os.cpu_count() or 1,
                  memory=memory or int(0.9 * memory_bytes()))  # fmt: skip


def _count(option: str, text: str | None) -> int | None:
    """--jobs or --cpus: an integer from 1 to MAX_JOBS, or None when not given."""
    return None if text is None else int(parse_bounded_int(1, MAX_JOBS)(option, text))


def _warn(line: str) -> None:
    print(f"nbdfork campaign: warning: {line}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    max_cells = parse_bounded_int(1, MAX_CELLS_LIMIT)("--max-cells", args.max_cells)
    grace = parse_bounded_float(0, 3600, low_open=False)("--grace", args.grace)
    given_jobs = _count("--jobs", args.jobs)
    budget = _budget(args)
    check_out_dir("--out", args.out)
    spec = load_spec(args.spec, max_cells=max_cells)
    console = Console(stderr=True)
    with claim_directory(args.out, spec, args.spec, args.force):
        jobs = given_jobs or min(MAX_JOBS, len(spec.cells) if args.executor == "ray"
                                 else default_jobs(spec.cells))  # fmt: skip
        states = read_journal(args.out, on_skip=_warn)  # a bad journal: before anything runs
        executor = _executor(args, grace)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())  # fmt: skip
        console.print(f"nbdfork campaign {spec.name}: {len(spec.cells)} cells, {jobs} at once "
                      f"({executor.name}), results in {args.out}", highlight=False,
                      soft_wrap=True)  # fmt: skip
        with Progress(*columns, console=console, transient=True) as progress:
            display = _Display(progress, len(spec.cells))
            progress.update(display._task, completed=sum(
                1 for c in spec.cells
                if (s := states.get(c.id)) and s.event == "done" and s.key == c.key))  # fmt: skip
            outcome = run_cells(spec, args.out, executor, jobs, display, budget=budget,
                                grace=grace, say=_warn)  # fmt: skip
        report = build_report(spec, read_journal(args.out), executor.name, jobs, outcome.wall_s,
                              budget=budget)
        paths = write_report(args.out, report)
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items() if v)
    print(f"campaign {spec.name}: {counts} ({outcome.skipped} already done, "
          f"{outcome.wall_s:.1f} s)")  # fmt: skip
    for path in paths:
        print(path)
    if outcome.interrupted:
        print("nbdfork campaign: interrupted (rerun the same command to resume)")
        return INTERRUPTED
    return 0 if report.counts.get("done") == len(report.cells) else 1
