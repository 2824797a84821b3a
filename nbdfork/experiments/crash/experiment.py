"""`nbdfork crash` declared: its options, main function and report."""

from __future__ import annotations

from pathlib import Path

from nbdfork.errors import ConfigError
from nbdfork.experiments.crash.states import POINT_KINDS
from nbdfork.experiments.stacks.catalogue import parse_stack
from nbdfork.harness.experiment import Experiment, ReportKind
from nbdfork.options import (
    Option,
    parse_bounded_float,
    parse_bounded_int,
    parse_choice,
    parse_out_dir,
)
from nbdfork.seeds import SEED_LIMIT

__all__ = ["EXPERIMENT", "FILESYSTEMS", "OPTIONS"]

FILESYSTEMS = ("ext4", "xfs", "btrfs")

_EPILOG = """\
examples:
  nbdfork crash --fs ext4 --states 20 --out results/crash-ext4
  nbdfork crash --fs xfs --states 20 --out results/crash-xfs
  nbdfork crash --fs ext4 --ignore-flush --out results/control   (must report violations)
  nbdfork crash --stack md-raid1 --points any --states 20 --out results/crash-md
"""



def _stack(option: str, text: str) -> str:
    """One stack name (`NAME[:MODE]`), as its label."""
    try:
        return parse_stack(text).label
    except ConfigError as exc:
        raise ConfigError(option, exc.problem) from None


OPTIONS: tuple[Option, ...] = (
    Option("fs", "ext4, xfs or btrfs (default ext4)", parse=parse_choice(FILESYSTEMS),
           default="ext4"),
    Option("states", "crash states to check, in [1, 10000]", parse=parse_bounded_int(1, 10000),
           default=20),
    Option("control_states", "states of the ignore-flush control (0: none), in [0, 1000]",
           parse=parse_bounded_int(0, 1000), default=6),
    Option("seconds", "workload seconds, in (0, 600]", parse=parse_bounded_float(0, 600),
           default=5.0),
    Option("points", "where to cut power: checkpoint (after each fsync returned, default), "
           "flush, fua, or any (after any write or flush)", parse=parse_choice(POINT_KINDS),
           default="checkpoint"),
    Option("seed", "seed (default: random, recorded)", parse=parse_bounded_int(0, SEED_LIMIT - 1),
           campaign=False),
    Option("ignore_flush", "known-bad device: FLUSH/FUA acknowledged, nothing durable",
           kind="flag"),
    Option("kernel", "6.1, 6.12, a release, or a bzImage/vmlinuz path"),
    Option("workload", "fsync: pages rewritten and fsynced; atomic: whole files rewritten as one "
           "RWF_ATOMIC write (XFS on 6.16+): no state may hold half of one",
           parse=parse_choice(("fsync", "atomic")), default="fsync"),
    Option("stack", "a storage stack under the filesystem (plain, btrfs, btrfs-raid1, md-raid1, "
           "md-raid5[:copy|skip_copy], dm-integrity[:J|D|B]): every member cut at one instant, "
           "each state recovered and checked by the stack's own tools (default plain)",
           parse=_stack, default="plain"),
    Option("device_location", "run the traced device on the host (default) or in the guest",
           parse=parse_choice(("host", "guest")), default="host"),
    Option("out", "results directory (default results/crash)", parse=parse_out_dir,
           default=Path("results/crash"), campaign=False),
    Option("fail_on_violation", "exit 1 when any state fails", kind="flag"),
)  # fmt: skip

EXPERIMENT = Experiment(
    name="crash",
    help="crash-state campaign: fsync ledger, fsck and mount checks under a real kernel",
    description="Boot a real kernel, run an fsync workload on ext4/xfs over a traced device "
    "with a volatile write cache, then check seeded crash states at checkpoints: mount, "
    "ledger, fsck. A control that ignores FLUSH/FUA must fail.",
    epilog=_EPILOG,
    options=OPTIONS,
    main="nbdfork.experiments.crash.cli:main",
    report=ReportKind("nbdfork.crash/1", "nbdfork.experiments.crash.schema:CrashReport",
                      "nbdfork.experiments.crash.render:render_crash_report"),
    boots_vm=True,
    ok_statuses=(0, 1),
)
