"""The report's "Storage stacks" section: what each stack's own checkers found, per kernel.

This module owns the reading of a run of `--stack`: one row per stack x fs x workload x
stable_writes, one pair of columns per kernel (the checkers' verdict in a few words, the
oracle's torn / stamped pages over the stack's devices), and one row per run with every
layer's stable_writes and every checker's full verdict. Plain runs have no checker and stay
in the per-filesystem tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from nbdfork.experiments.matrix.findings import ordered, stack_label, workloads
from nbdfork.experiments.matrix.plan import FIO_PREFIX, workload_label
from nbdfork.experiments.matrix.schema import RunResult
from nbdfork.experiments.stacks.summary import describe, describe_fully, describe_layers
from nbdfork.report.document import Block, Heading, Paragraph, Table

__all__ = [
    "Setting",
    "oracle_cell",
    "setting_of",
    "settings",
    "stack_runs",
    "stack_section",
    "stack_table",
    "top_stable_writes",
    "verdict_cell",
]

Setting = tuple[str, str, str]  # stack_label, fs, workload (a fio job by its file's stem)


def stack_runs(runs: Sequence[RunResult]) -> list[RunResult]:
    """The runs on a stack that has checkers (every stack but `plain`)."""
    return [r for r in runs if r.stack != "plain"]


def setting_of(run: RunResult) -> Setting:
    """What a row of the stack table stands for, beside stable_writes."""
    job = run.workload_options.get("jobfile") if run.workload == "fio" else None
    workload = workload_label(FIO_PREFIX + str(job)) if job else run.workload
    return stack_label(run), run.fs, workload


def settings(runs: Sequence[RunResult]) -> list[Setting]:
    """Every setting: stacks in the order they ran (a stack with a device of its own
    parameters after the same stack without), then fs, then workload as listed."""
    rank = {w: i for i, w in enumerate(workloads(runs))}
    stacks, labels = ordered(r.stack for r in runs), ordered(stack_label(r) for r in runs)
    fss = ordered(r.fs for r in runs)
    found = {setting_of(r): r for r in runs}  # a damaged leg's rows beside the stack's others
    return sorted(found, key=lambda s: (stacks.index(found[s].stack),
                                        bool(found[s].device_overrides), labels.index(s[0]),
                                        fss.index(s[1]), rank[found[s].workload], s[2]))


def verdict_cell(run: RunResult | None) -> str:
    """The checkers' verdict in a few words, or why there is none."""
    if run is None:
        return "not run"
    if not run.completed:
        return str(run.outcome)
    return "no checks" if run.checks is None else describe(run.checks)


def oracle_cell(run: RunResult | None) -> str:
    """Torn / stamped pages over the stack's devices (the oracle's own verdict)."""
    if run is None or not run.completed:
        return "-"
    return f"{run.torn:,} / {run.stamped_pages:,}"


def top_stable_writes(runs: Sequence[RunResult], stable_writes: int) -> str:
    """The top device's stable_writes as the kernel set it / as the run set it; when the
    kernels disagree, each one's value is named."""
    values = {r.kernel: r.layers[0].stable_writes_kernel for r in runs if r.layers}
    distinct = ordered(str(v) for v in values.values())
    if len(distinct) == 1:
        kernel = distinct[0]
    elif distinct:
        kernel = ", ".join(f"{v} on {k}" for k, v in values.items())
    else:
        kernel = "?"
    return f"{kernel} / {stable_writes}"


def _grid(runs: Sequence[RunResult]) -> dict[tuple[Setting, int], dict[str, RunResult]]:
    grid: dict[tuple[Setting, int], dict[str, RunResult]] = {}
    for setting in settings(runs):
        mine = [r for r in runs if setting_of(r) == setting]
        for sw in sorted({r.stable_writes for r in mine}):
            grid[setting, sw] = {r.kernel: r for r in mine if r.stable_writes == sw}
    return grid


def stack_table(runs: Sequence[RunResult]) -> Table:
    """One row per stack x fs x workload x stable_writes; a checker column and an oracle
    column per kernel (kernel-prefixed headers when there are several)."""
    kernels = ordered(r.kernel for r in runs)
    several = len(kernels) > 1
    per_kernel = [(f"{k}: checker", f"{k}: torn / stamped") if several else
                  ("checker", "oracle torn / stamped") for k in kernels]  # fmt: skip
    header = ("stack", "fs", "workload", "stable_writes (top: kernel's / run's)",
              *(h for pair in per_kernel for h in pair))  # fmt: skip
    rows = []
    for ((stack, fs, workload), sw), by_kernel in _grid(runs).items():
        cells = [(verdict_cell(by_kernel.get(k)), oracle_cell(by_kernel.get(k)))
                 for k in kernels]  # fmt: skip
        rows.append((stack, fs, workload, top_stable_writes(list(by_kernel.values()), sw),
                     *(c for pair in cells for c in pair)))  # fmt: skip
    align: tuple[Literal["l", "r"], ...] = ("l", "l", "l", "r") + ("l", "r") * len(kernels)
    return Table(header, tuple(rows), align)


def _devices_cell(run: RunResult) -> str:
    if not run.devices:
        return "-"
    return ", ".join(f"{d.torn}/{d.stamped_pages}" for d in run.devices)


def _details(runs: Sequence[RunResult]) -> Table:
    rows = tuple(
        (r.id, describe_layers(r.layers) or "-",
         describe_fully(r.checks) if r.checks is not None else verdict_cell(r),
         _devices_cell(r))
        for r in runs
    )  # fmt: skip
    return Table(("run", "layers top down (stable_writes kernel's/run's)", "checkers",
                  "oracle per device torn/stamped"), rows, ("l", "l", "l", "l"))  # fmt: skip


def stack_section(runs: Sequence[RunResult]) -> list[Block]:
    """The "Storage stacks" section, or nothing when every run is plain."""
    mine = stack_runs(runs)
    if not mine:
        return []
    return [
        Heading("Storage stacks"),
        Paragraph("What each stack's own checkers found after the workload, the filesystem "
                  "unmounted (btrfs scrub, md check's mismatch_cnt in sectors, dm-integrity's "
                  "read-back of every block, fsck; `pages differ`: the mirror's legs compared "
                  "byte for byte; docs/stacks.md), beside the oracle's torn / stamped pages "
                  "summed over the stack's devices. stable_writes: the top device's, as the "
                  "kernel set it when the stack was built / as the run set it."),
        stack_table(mine),
        Heading("Stack checks per run", 3),
        _details(mine),
    ]
