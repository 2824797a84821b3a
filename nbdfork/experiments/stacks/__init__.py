"""Storage stacks in the guest, judged by their own checkers (issue 19).

Host or guest, pure:  `parse_stacks("btrfs,md-raid5:skip_copy")`, `plan_stack(spec, devices,
fs, mountpoint)`. Guest, as root, per run:

    built = build(plan, log)                 # block layers; stable_writes as the kernel set it
    built = set_stable_writes(built, value)  # the run's value, on the top device(s)
    make_filesystem(plan, log); mount(plan, log)
    ... workload in plan.mountpoint ...
    umount(plan, log)
    checks = run_checks(plan, log)           # unmounted, layers still assembled
    teardown(plan, log)
"""

from __future__ import annotations

from nbdfork.experiments.stacks.catalogue import (
    FILESYSTEMS,
    STACKS,
    StackDef,
    StackSpec,
    parse_stack,
    parse_stacks,
)
from nbdfork.experiments.stacks.checks import run_checks
from nbdfork.experiments.stacks.guest import (
    BuiltStack,
    StackError,
    build,
    make_filesystem,
    mount,
    set_stable_writes,
    teardown,
    umount,
)
from nbdfork.experiments.stacks.plan import BuildPlan, LayerSpec, plan_stack
from nbdfork.experiments.stacks.results import LayerReport, StackChecks

__all__ = [
    "FILESYSTEMS",
    "STACKS",
    "BuildPlan",
    "BuiltStack",
    "LayerReport",
    "LayerSpec",
    "StackChecks",
    "StackDef",
    "StackError",
    "StackSpec",
    "build",
    "make_filesystem",
    "mount",
    "parse_stack",
    "parse_stacks",
    "plan_stack",
    "run_checks",
    "set_stable_writes",
    "teardown",
    "umount",
]
