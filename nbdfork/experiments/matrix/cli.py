"""`nbdfork run` on the terminal: the options' values to RunOptions, a progress display, the
results table and the exit status; the work is nbdfork.experiments.matrix.session.RunSession.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from nbdfork.errors import VMError, VMLost
from nbdfork.experiments.matrix.schema import MatrixReport, RunResult
from nbdfork.experiments.matrix.session import (
    DEFAULT_DEVICE,
    MultiKernelSession,
    RunOptions,
    RunSession,
    kernel_list,
)
from nbdfork.report.codec import encode

__all__ = ["main", "options_from_args", "results_table"]

def options_from_args(args: argparse.Namespace) -> RunOptions:
    """RunOptions from the parsed option values (nbdfork.experiments.matrix.experiment)."""
    out = args.out or Path("results") / time.strftime("run-%Y%m%d-%H%M%S")
    return RunOptions(
        out=out,
        kernel=args.kernel,
        modules=args.modules,
        filesystems=args.fs,
        stable_writes=args.stable_writes,
        workloads=args.workload,
        stacks=args.stack,
        seconds=args.seconds,
        seed=args.seed,
        device={**DEFAULT_DEVICE, **dict(args.device)},
        device_params=tuple(args.device_param),
        sysctls=dict(args.sysctl) or None,
        workload_options={"pages": args.pages, "threads": args.threads, "kick": args.kick},
        no_vm=args.no_vm,
        mkfs_each_run=args.mkfs_each_run,
        accel=args.accel,
        cpus=args.cpus,
        memory=args.memory,
        device_location=args.device_location,
        nbdkit_threads=args.nbdkit_threads,
    )


def _formats_cell(run: RunResult) -> str:
    """Torn/stale/overlapping over the formats besides the stamp (metadata, fio), or -."""
    others = [v for name, v in run.formats.items() if name not in ("stamp", "none")]
    if not others:
        return "-"
    return "/".join(str(sum(getattr(v, k) for v in others))
                    for k in ("torn", "stale", "overlapping"))  # fmt: skip


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def results_table(report: MatrixReport) -> Table:
    """The short end-of-run table: one row per configuration."""
    where = "in the guest" if report.device_location == "guest" else "on the host"
    table = Table(
        title=f"nbdfork run: kernel {report.kernel} ({report.accel}), device {where}, "
        f"seed {report.seed}",
        caption="p50/p99/max: the writer's pwrite latency; device p99: the device's own WRITE "
        "service time (arrival to reply)",
    )
    for name in (
        "run",
        "outcome",
        "torn/stamped",
        "stale",
        "overlap",
        "formats t/s/o",
        "p50 ms",
        "p99 ms",
        "max ms",
        "device p99 ms",
    ):
        table.add_column(name, justify="left" if name in ("run", "outcome") else "right")
    styles = {"passed": "green", "violations": "yellow", "harness_error": "red", "vm_lost": "red",
              "skipped": "dim"}
    for run in report.runs:
        lat = run.writer_latency_ms
        table.add_row(
            run.id,
            Text(run.outcome, style=styles.get(run.outcome, "")),
            f"{run.torn}/{run.stamped_pages}",
            str(run.stale),
            str(run.overlapping),
            _formats_cell(run),
            _ms(lat.p50),
            _ms(lat.p99),
            _ms(lat.max),
            _ms(run.device_service_p99_ms),
        )
    return table


class _Progress:
    """A one-line live status fed by the guest's progress events."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.plain = not console.is_terminal
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.phase_started = self.started
        self.status = "booting the kernel"
        self.live = Live(
            self._render(),
            console=console,
            refresh_per_second=4,
            transient=True,
            get_renderable=self._render,
        )

    def _render(self) -> Text:
        now = time.monotonic()
        phase, total = now - self.phase_started, now - self.started
        return Text(f"[{self.done}/{self.total}] {self.status} ({phase:.0f}s, total {total:.0f}s)")

    def on_event(self, event: dict[str, Any]) -> None:
        name = event["event"]
        self.phase_started = time.monotonic()
        if name == "hello":
            self.status = f"kernel {event.get('kernel')} up; modules, network or device"
        elif name == "run-start":
            self.status = f"{event['id']}: nbd-client, stable_writes, mkfs, mount"
        elif name == "workload-start":
            self.status = f"{event['id']}: workload"
        elif name == "run-end":
            self.done += 1
            status = event.get("status")
            mark = "ok" if status == "ok" else f"{'skipped' if status == 'skipped' else 'error'}: "
            mark = mark if status == "ok" else mark + str(event.get("error"))
            self.console.print(f"  {event['id']}: {mark}", highlight=False)
            self.status = "next configuration"
        elif name == "fatal":
            self.console.print(f"  guest: {event.get('error')}", style="red", highlight=False)
        elif name == "done":
            self.status = "shutting down"
        if self.plain and name in ("hello", "run-start", "workload-start", "done"):
            # no live line without a terminal (a log, a campaign cell): one line per step
            self.console.print(f"  [{self.done}/{self.total}] {self.status}", highlight=False)


def _exit_status(report: MatrixReport, fail_on_violation: bool) -> int:
    failed = [r for r in report.runs if r.outcome in ("harness_error", "vm_lost")]
    if failed:
        first = failed[0]
        message = (
            f"{len(failed)} of {len(report.runs)} configurations did not complete "
            f"({first.id}: {first.outcome}: {first.error})"
        )
        if any(r.outcome == "vm_lost" for r in failed):
            raise VMLost(message)
        raise VMError(message)
    if fail_on_violation and any(r.outcome == "violations" for r in report.runs):
        return 1
    return 0


def main(args: argparse.Namespace) -> int:
    """Run the matrix with a progress line, print the table (or report.json), exit status."""
    options = options_from_args(args)
    console = Console(stderr=True)
    kernels = kernel_list(options.kernel)
    session: RunSession | MultiKernelSession
    if len(kernels) > 1:
        session = MultiKernelSession(options, [k for k in kernels if k])
        plans = session.prepare()
        where = "kernels " + ", ".join(
            f"{s.kernel.release} ({s.accel})" for s in session.sessions if s.kernel
        )
        out_dir = session.out
    else:
        session = RunSession(options)
        plans = [session.prepare()]
        kernel = session.kernel.release if session.kernel else "?"
        where = "this host's kernel" if options.no_vm else f"kernel {kernel} under {session.accel}"
        out_dir = Path(plans[0].out)
    plan = plans[0]
    sysctls = " ".join(f"{k}={v}" for k, v in plan.sysctls.items()) or "none"
    total = sum(len(p.runs) for p in plans)
    console.print(
        f"nbdfork run: {total} configurations on {where}, seed {plan.seed}\n"
        f"  guest sysctls: {sysctls}\n  results: {out_dir}",
        highlight=False,
    )
    progress = _Progress(console, total)
    for each in session.sessions if isinstance(session, MultiKernelSession) else [session]:
        each.on_event = progress.on_event
    with progress.live:
        report = session.execute()
    problem = session.render_problem
    if args.json:
        sys.stdout.write(encode(report).decode())
    else:
        out = Console()
        if not out.is_terminal:
            out = Console(width=120)
        out.print(results_table(report))
        print(f"report: {out_dir / 'report.json'}")
    if problem:
        print(f"nbdfork run: note: {problem}", file=sys.stderr)
    return _exit_status(report, args.fail_on_violation)
