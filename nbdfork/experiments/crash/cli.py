"""`nbdfork crash` on the terminal: the options' values to CrashOptions, the run, the counts."""

from __future__ import annotations

import argparse

import msgspec

from nbdfork.experiments.crash.host import CrashOptions, run_crash
from nbdfork.experiments.crash.render import render_crash_report

__all__ = ["main"]

def main(args: argparse.Namespace) -> int:
    """Run the crash campaign, render it, print the counts; the exit status."""
    options = CrashOptions(
        out=args.out, fs=args.fs, states=args.states, control_states=args.control_states,
        seconds=args.seconds, seed=args.seed, ignore_flush=args.ignore_flush, kernel=args.kernel,
        points=args.points, device_location=args.device_location, workload=args.workload,
        stack=args.stack,
    )  # fmt: skip
    report = run_crash(options)
    paths = render_crash_report(options.out.absolute(), report)
    print(f"{report.fs}: {report.states_checked} states, ledger violations "
          f"{report.ledger_violations}, fsck failures {report.fsck_failures}, "
          f"unexplained tears {report.torn_unexplained} -> {report.outcome}")  # fmt: skip
    if not isinstance(report.stack, msgspec.UnsetType):
        v = report.stack.verdicts
        print(f"stack {report.stack.name}: clean {v['clean']}, exposure (documented) "
              f"{v['exposure']}, violation {v['violation']}")  # fmt: skip
    if report.control:
        c = report.control
        print(f"control (ignore-flush): {c.states_checked} states, "
              f"ledger violations {c.ledger_violations}")  # fmt: skip
    if report.guest_error:
        print(f"guest error: {report.guest_error}")
    for path in paths:
        print(f"  {path}")
    failed = report.outcome != "passed"
    return 1 if args.fail_on_violation and failed else 0
