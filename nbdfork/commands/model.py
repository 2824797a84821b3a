"""`nbdfork model`: the page-forking model — none / stable / fork / fork-unordered writeback
policies swept over device latency and reordering, with a progress display and a report.

Argument parsing and display only; the work is nbdfork.pageforking.
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from nbdfork.config import parse_duration
from nbdfork.errors import ConfigError
from nbdfork.pageforking.compare import KernelRow, load_kernel_rows
from nbdfork.pageforking.device import parse_latencies, parse_reorders
from nbdfork.pageforking.policy import Policy, parse_policies
from nbdfork.pageforking.report import write_report
from nbdfork.pageforking.run import RunResult, RunSpec
from nbdfork.pageforking.sweep import SweepPlan, run_sweep
from nbdfork.pageforking.writeback import WritebackTuning
from nbdfork.pageforking.writer import Workload

__all__ = ["handler", "plan_from_args", "register"]

_DEFAULTS = {"latency": "1ms,4ms", "reorder": "jitter:0.9"}
_EPILOG = """\
examples:
  nbdfork model --out results/model               4 policies x 1ms,4ms, about a minute
  nbdfork model --latency 0.5ms,2ms,8ms --reorder off,jitter:0.9 --seeds 3 --out results/sweep
  nbdfork model --policy stable,fork --seconds 10 --seed 7 --out results/two
  nbdfork model --out results/model --compare results/kernel    beside `nbdfork run`'s report

--reorder: off (fixed latency), jitter:F (uniform in [L(1-F), L(1+F)]), lognormal:S
(median L, sigma S), window:N (the device's seeded reply reordering within N writes).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `model` subcommand."""
    parser = subparsers.add_parser(
        "model",
        help="page-forking model: none/stable/fork/fork-unordered on the emulated device",
        description="Run a userspace page cache with writeback over the emulated device, one "
        "writeback policy at a time, and report writer throughput, stalls, copies, fork "
        "memory and the device oracle's verdicts.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _sweep_options(parser)
    _model_options(parser)
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help="a real-kernel report (`nbdfork run` DIR/report.json) to set "
                             "beside the none/stable rows")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="where report.json, report.md, plots and runs/ go")  # fmt: skip
    parser.set_defaults(handler=handler)


def _sweep_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        default=",".join(p.value for p in Policy),
        help="policies to run, comma-separated (default: all four)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="writing time per run (5)")
    parser.add_argument("--seed", type=int, help="seed of every random choice (default: random)")
    parser.add_argument("--seeds", type=int, default=1, help="repetitions per setting (1)")
    parser.add_argument(
        "--latency",
        default=_DEFAULTS["latency"],
        help="median device write latencies, comma-separated (1ms,4ms)",
    )
    parser.add_argument("--reorder", default=_DEFAULTS["reorder"],
                        help="device reorderings, comma-separated (jitter:0.9)")  # fmt: skip


def _model_options(parser: argparse.ArgumentParser) -> None:
    w, t = Workload(), WritebackTuning()
    group = parser.add_argument_group("model")
    group.add_argument("--writers", type=int, default=w.writers, help="writer threads (4)")
    group.add_argument("--pages", type=int, default=w.pages, help="hot pages per writer (2)")
    group.add_argument(
        "--think",
        default=f"{w.think * 1e3:g}ms",
        help="mean pause between a writer's stores (0.5ms)",
    )
    group.add_argument(
        "--fsync-every",
        type=int,
        default=w.fsync_every,
        help="a writer fsyncs its pages every N stores (0: never)",
    )
    group.add_argument(
        "--dirty-expire",
        default=f"{t.dirty_expire * 1e3:g}ms",
        help="age at which a dirty page is written back (3ms)",
    )
    group.add_argument(
        "--writeback-interval",
        default=f"{t.interval * 1e3:g}ms",
        help="how often the flusher wakes (1ms)",
    )
    group.add_argument("--send-pace", default="0", help="pause between sectors of a send (0)")
    group.add_argument(
        "--queue-depth",
        type=int,
        default=t.queue_depth,
        help="writes in flight at most (128, as nbd.ko)",
    )
    group.add_argument("--threads", type=int, default=16, help="nbdkit worker threads (16)")


def _positive(key: str, value: float, low: float = 1) -> None:
    if value < low:
        raise ConfigError(key, f"{value:g} must be at least {low:g}")


def _workload(args: argparse.Namespace) -> Workload:
    _positive("--writers", args.writers)
    _positive("--pages", args.pages)
    _positive("--fsync-every", args.fsync_every, 0)
    think = parse_duration("--think", args.think)
    return Workload(args.writers, args.pages, think, args.fsync_every)


def _tuning(args: argparse.Namespace) -> WritebackTuning:
    _positive("--queue-depth", args.queue_depth)
    interval = parse_duration("--writeback-interval", args.writeback_interval)
    _positive("--writeback-interval", interval, 1e-5)
    return WritebackTuning(
        dirty_expire=parse_duration("--dirty-expire", args.dirty_expire), interval=interval,
        send_pace=parse_duration("--send-pace", args.send_pace), queue_depth=args.queue_depth,
    )  # fmt: skip


def plan_from_args(args: argparse.Namespace) -> SweepPlan:
    """Validate the options into a SweepPlan; a bad option raises ConfigError naming it."""
    _positive("--seconds", args.seconds, 0.1)
    _positive("--seeds", args.seeds)
    _positive("--threads", args.threads)
    seed = args.seed if args.seed is not None else secrets.randbits(63)
    if not 0 <= seed < 1 << 63:
        raise ConfigError("--seed", f"{seed} must be an integer from 0 to 2**63-1")
    return SweepPlan(
        policies=parse_policies(args.policy), latencies=parse_latencies(args.latency),
        reorders=parse_reorders(args.reorder), seed=seed, seeds=args.seeds,
        seconds=args.seconds, workload=_workload(args), tuning=_tuning(args),
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


def handler(args: argparse.Namespace) -> int:
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
