"""`nbdfork run`: the stable_writes matrix under a real Linux kernel, with a progress display.

Argument parsing and display only; the work is nbdfork.vm.session.RunSession.
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

from nbdfork.errors import ConfigError, VMError, VMLost
from nbdfork.report.codec import encode
from nbdfork.report.schema import MatrixReport
from nbdfork.vm.plan import FILESYSTEMS, parse_list
from nbdfork.vm.session import (
    DEFAULT_DEVICE,
    MultiKernelSession,
    RunOptions,
    RunSession,
    kernel_list,
)
from nbdfork.workloads import KICK_MODES, WORKLOADS

__all__ = ["options_from_args", "register", "results_table"]

_EPILOG = """\
examples:
  nbdfork run                                   ext4,xfs x stable_writes 0,1 x pwrite, ~2 min
  nbdfork run --fs ext4 --seconds 30 --seed 7   one filesystem, longer, reproducible
  nbdfork run --workload pwrite,mmap,odirect --out results/all
  nbdfork run --kernel 6.12                     another packaged kernel
  nbdfork run --kernel ~/linux/arch/x86/boot/bzImage --modules /tmp/mods/lib/modules/6.13.0
  nbdfork run --device write-latency=lognormal:2ms:0.5 --device size=1G
  sudo nbdfork run --no-vm                      this host's kernel (needs the nbd driver)

exit status: 0 when every configuration ran (violations found are a result),
1 with --fail-on-violation when any configuration found one, 2 on a harness error or lost VM.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `run` subcommand."""
    parser = sub.add_parser(
        "run",
        help="boot a real kernel and run the fs x stable_writes x workload matrix",
        description="Boot a real Linux kernel under qemu (KVM when it works, else TCG), attach "
        "/dev/nbd0 to the nbdfork device, and run every configuration of the matrix in one "
        "boot. Writes OUT/report.json (and report.md/html and plots when the renderer is "
        "installed) and prints a table.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--kernel",
        metavar="K",
        help="a packaged release or series (6.1, 6.12, "
        "6.1.0-57-amd64) or a bzImage/vmlinuz path (default: Debian's 6.1)",
    )
    add(
        "--modules",
        type=Path,
        metavar="DIR",
        help="module tree of a --kernel PATH (default: ROOT/lib/modules/RELEASE above the image)",
    )
    add("--fs", default="ext4,xfs", help=f"filesystems, from {','.join(FILESYSTEMS)}")
    add("--stable-writes", default="0,1", metavar="0,1", help="stable_writes settings")
    add("--workload", default="pwrite", help=f"workloads, from {','.join(WORKLOADS)}")
    add("--seconds", type=float, default=10.0, metavar="N", help="workload seconds per run")
    add("--seed", type=int, help="seed of every random choice (default: a fresh one, recorded)")
    add("--out", type=Path, help="results directory (default: results/run-YYYYmmdd-HHMMSS)")
    add(
        "--device",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="plugin parameter, repeatable (default: size=512M write-latency=2ms)",
    )
    add("--pages", type=int, default=8, help="hot-set pages per writer thread")
    add("--threads", type=int, default=1, help="writer threads")
    add("--kick", choices=KICK_MODES, default="sync_file_range", help="how writeback is started")
    add(
        "--mkfs-each-run",
        action="store_true",
        help="mkfs before every run (default: once per filesystem; stable_writes is still set "
        "before every mount)",
    )
    add(
        "--sysctl",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="guest sysctl set before anything runs, repeatable (default: "
        "net.core.wmem_default=4608, a small nbd socket buffer; 212992 is Linux's default)",
    )
    add(
        "--device-location",
        choices=("host", "guest"),
        default="host",
        help="run nbdkit + the plugin on the host (default; the guest reaches it over qemu's "
        "restricted user network) or inside the guest, for comparison",
    )
    add("--nbdkit-threads", type=int, metavar="N", help="nbdkit --threads (default: nbdkit's)")
    add("--fail-on-violation", action="store_true", help="exit 1 if any run found a violation")
    add("--no-vm", action="store_true", help="run on this host's kernel (root, nbd driver)")
    add("--accel", choices=("auto", "kvm", "tcg"), default="auto", help=argparse.SUPPRESS)
    add("--cpus", type=int, default=2, help="guest vCPUs")
    add("--memory", default="2G", help="guest memory")
    add("--json", action="store_true", help="print report.json instead of the table")
    parser.set_defaults(handler=_handle)


def _pairs(option: str, pairs: list[str], base: dict[str, str] | None = None) -> dict[str, str]:
    result = dict(base or {})
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(option, f"{pair!r} is not KEY=VALUE")
        result[key.strip()] = value.strip()
    return result


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """RunOptions from parsed arguments (lists split and checked)."""
    stable = parse_list("--stable-writes", args.stable_writes, ("0", "1"))
    out = args.out or Path("results") / time.strftime("run-%Y%m%d-%H%M%S")
    return RunOptions(
        out=out,
        kernel=args.kernel,
        modules=args.modules,
        filesystems=tuple(parse_list("--fs", args.fs, FILESYSTEMS)),
        stable_writes=tuple(int(s) for s in stable),
        workloads=tuple(parse_list("--workload", args.workload, tuple(WORKLOADS))),
        seconds=args.seconds,
        seed=args.seed,
        device=_pairs("--device", args.device, DEFAULT_DEVICE),
        sysctls=_pairs("--sysctl", args.sysctl) or None,
        workload_options={"pages": args.pages, "threads": args.threads, "kick": args.kick},
        no_vm=args.no_vm,
        mkfs_each_run=args.mkfs_each_run,
        accel=args.accel,
        cpus=args.cpus,
        memory=args.memory,
        device_location=args.device_location,
        nbdkit_threads=args.nbdkit_threads,
    )


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


def _handle(args: argparse.Namespace) -> int:
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
