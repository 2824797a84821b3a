"""`nbdfork model` on the terminal: the options' values to a SweepPlan, a progress display and
the report; the work is nbdfork.experiments.model.sweep."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from nbdfork.experiments.model.compare import KernelRow, load_kernel_rows
from nbdfork.experiments.model.report import write_report
from nbdfork.experiments.model.run import RunResult, RunSpec
from nbdfork.experiments.model.sweep import SweepPlan, run_sweep
from nbdfork.experiments.model.writeback import WritebackTuning
from nbdfork.experiments.model.writer import Workload
from nbdfork.seeds import new_seed

__all__ = ["main", "plan_from_args"]

def plan_from_args(args: argparse.Namespace) -> SweepPlan:
    """The SweepPlan of the parsed option values (nbdfork.experiments.model.experiment)."""
    seed = args.seed if args.seed is not None else new_seed()
    workload = Workload(args.writers, args.pages, args.think, args.fsync_every)
    tuning = WritebackTuning(dirty_expire=args.dirty_expire, interval=args.writeback_interval,
                             send_pace=args.send_pace, queue_depth=args.queue_depth)
    return SweepPlan(
        policies=args.policy, latencies=args.latency, reorders=args.reorder, seed=seed,
        seeds=args.seeds, seconds=args.seconds, workload=workload, tuning=tuning,
        threads=args.threads,
    )  # fmt: skip


class _Display:
    """A rich progress bar over the sweep, and one line per finished run."""

    def __init__(self, progress: Progress, total: int) -> None:
        self._progress = progress
        self._task: TaskID = progress.add_task("model", total=total)
        self._index = 0

    def started(self, index: int, total: int, spec: RunSpec) -> None:
        self._index = index
        what = f"{spec.policy.value} @ {spec.latency * 1e3:g} ms {spec.reorder.describe()}"
        self._progress.update(self._task, completed=index,
                              description=f"run {index + 1}/{total}: {what}")  # fmt: skip

    def advanced(self, fraction: float) -> None:
        self._progress.update(self._task, completed=self._index + min(fraction, 0.99))

    def finished(self, result: RunResult) -> None:
        s, v, stall = result.spec, result.verdicts, result.stall_ms()
        self._progress.console.print(
            f"{s.policy.value:>14} {s.latency * 1e3:g} ms {s.reorder.describe():<12} "
            f"{result.throughput:8.0f} stores/s  p99 {stall['p99']:8.3f} ms  "
            f"torn {v.torn} stale {v.stale} overlapping {v.overlapping}",
            soft_wrap=True,
        )


def main(args: argparse.Namespace) -> int:
    """Run the sweep, write the report, print where it is."""
    plan = plan_from_args(args)
    kernel: list[KernelRow] | None = load_kernel_rows(args.compare) if args.compare else None
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        results = run_sweep(plan, args.out, _Display(progress, len(plan.specs())))
    for path in write_report(args.out, plan, results, kernel):
        print(path)
    return 0
