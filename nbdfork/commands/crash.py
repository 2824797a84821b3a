"""`nbdfork crash`: crash states of a real filesystem's fsync workload, checked with fsck and
the ledger, with the ignore-flush control."""

from __future__ import annotations

import argparse
from pathlib import Path

from nbdfork.campaign.host import CrashOptions, run_crash
from nbdfork.campaign.render import render_crash_report

__all__ = ["register"]

_EPILOG = """\
examples:
  nbdfork crash --fs ext4 --states 20 --out results/crash-ext4
  nbdfork crash --fs xfs --states 20 --out results/crash-xfs
  nbdfork crash --fs ext4 --ignore-flush --out results/control   (must report violations)
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `crash` subcommand."""
    parser = sub.add_parser(
        "crash",
        help="crash-state campaign: fsync ledger, fsck and mount checks under a real kernel",
        description="Boot a real kernel, run an fsync workload on ext4/xfs over a traced device "
        "with a volatile write cache, then check seeded crash states at checkpoints: mount, "
        "ledger, fsck. A control that ignores FLUSH/FUA must fail.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--fs", default="ext4", help="ext4, xfs or btrfs (default ext4)")
    parser.add_argument("--states", type=int, default=20, help="crash states to check")
    parser.add_argument("--control-states", type=int, default=6,
                        help="states of the ignore-flush control (0: none)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=5.0, help="workload seconds")
    parser.add_argument(
        "--points", default="checkpoint",
        help="where to cut power: checkpoint (after each fsync returned, default), flush, "
        "fua, or any (after any write or flush)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, help="seed (default: random, recorded)")
    parser.add_argument(
        "--ignore-flush", action="store_true",
        help="known-bad device: FLUSH/FUA acknowledged, nothing durable",
    )  # fmt: skip
    parser.add_argument("--kernel", help="6.1, 6.12, a release, or a bzImage/vmlinuz path")
    parser.add_argument(
        "--workload", choices=("fsync", "atomic"), default="fsync",
        help="fsync: pages rewritten and fsynced; atomic: whole files rewritten as one "
        "RWF_ATOMIC write (XFS on 6.16+): no state may hold half of one",
    )  # fmt: skip
    parser.add_argument(
        "--device-location", choices=("host", "guest"), default="host",
        help="run the traced device on the host (default) or in the guest",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("results/crash"))
    parser.add_argument("--fail-on-violation", action="store_true",
                        help="exit 1 when any state fails")  # fmt: skip
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    options = CrashOptions(
        out=args.out, fs=args.fs, states=args.states, control_states=args.control_states,
        seconds=args.seconds, seed=args.seed, ignore_flush=args.ignore_flush, kernel=args.kernel,
        points=args.points, device_location=args.device_location, workload=args.workload,
    )  # fmt: skip
    report = run_crash(options)
    paths = render_crash_report(options.out.absolute(), report)
    print(f"{report.fs}: {report.states_checked} states, ledger violations "
          f"{report.ledger_violations}, fsck failures {report.fsck_failures}, "
          f"unexplained tears {report.torn_unexplained} -> {report.outcome}")  # fmt: skip
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
