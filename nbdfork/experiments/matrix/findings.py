"""The report's "what this shows" lines, computed from the runs and never written by hand.

This module owns the reading of a matrix: per workload, on which filesystems and with which
stable_writes settings pages tore, how much stable_writes=1 slowed the writer at p99, which
stacks' own checkers found damage on which kernels, which other violations appeared and which
runs did not complete.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from nbdfork.experiments.matrix.schema import RunResult
from nbdfork.experiments.stacks.summary import describe, own_damage

__all__ = ["findings", "fs_label", "ordered", "p99_stall_ratio", "stack_findings", "stack_label",
           "workloads"]

_WORKLOAD_ORDER = (
    "pwrite", "mmap", "odirect", "odirect_inflight", "odirect_churn", "atomic", "fio",
)  # fmt: skip


def ordered(items: Iterable[str]) -> list[str]:
    """Distinct `items` in order of first appearance."""
    return list(dict.fromkeys(items))


def workloads(runs: Sequence[RunResult]) -> list[str]:
    """The workloads present, in the order the contract lists them."""
    present = {run.workload for run in runs}
    return [w for w in _WORKLOAD_ORDER if w in present]


def torn_of(run: RunResult) -> int:
    """The run's torn writes of its workload's own blocks: fio's for a fio job, else the
    stamp's."""
    if run.workload == "fio":
        fio = run.formats.get("fio")
        return fio.torn if fio is not None else 0
    return run.torn


def _tear_phrase(tested: set[int], tore: set[int]) -> str:
    if not tore:
        return "not at all"
    if tore == tested == {0, 1}:
        return "with stable_writes=0 and 1"
    if tested == {0, 1}:
        return f"only with stable_writes={min(tore)}"
    # Only one setting was measured on this fs: say what it showed, claim nothing about "only".
    return f"with stable_writes={min(tore)}"


def stack_label(run: RunResult) -> str:
    """The run's stack, with the plugin parameters any of its devices had alone
    (`md-raid1 (device 1: corrupt-op=write)`): a damaged leg is a control, not a finding."""
    given = "; ".join(f"device {n}: " + ", ".join(f"{k}={v}" for k, v in params.items())
                      for n, params in sorted(run.device_overrides.items()))  # fmt: skip
    return f"{run.stack} ({given})" if given else run.stack


def fs_label(run: RunResult) -> str:
    """The run's filesystem, and the stack under it unless plain (`ext4 on md-raid1`); a
    stack that is its filesystem (btrfs) by its label."""
    if run.stack == run.fs:
        return stack_label(run)
    if run.stack == "plain" and not run.device_overrides:
        return run.fs
    return f"{run.fs} on {stack_label(run)}"


def _tears(workload: str, runs: Sequence[RunResult]) -> str:
    phrases: dict[str, list[str]] = {}
    for fs in ordered(fs_label(r) for r in runs):
        mine = [r for r in runs if fs_label(r) == fs]
        tested: set[int] = {r.stable_writes for r in mine}
        tore: set[int] = {r.stable_writes for r in mine if torn_of(r) > 0}
        phrases.setdefault(_tear_phrase(tested, tore), []).append(fs)
    clauses = [f"{phrase} on {', '.join(fss)}" for phrase, fss in phrases.items()]
    return f"{workload} tears " + "; ".join(clauses)


def p99_stall_ratio(runs: Sequence[RunResult], fs: str) -> float | None:
    """Writer p99 with stable_writes=1 over p99 with 0 on `fs`, or None if not both measured."""
    p99 = {r.stable_writes: r.writer_latency_ms.p99 for r in runs if r.fs == fs}
    base, stable = p99.get(0), p99.get(1)
    if base is None or stable is None or base <= 0:
        return None
    return stable / base


def _stall(runs: Sequence[RunResult]) -> str | None:
    labels = {fs_label(r): r.fs for r in runs}
    ratios = [(label, p99_stall_ratio([r for r in runs if fs_label(r) == label], fs))
              for label, fs in labels.items()]  # fmt: skip
    parts = [f"x{ratio:.1f} on {fs}" for fs, ratio in ratios if ratio is not None]
    return "writer p99 with stable_writes=1: " + ", ".join(parts) if parts else None


def _workload_line(workload: str, completed: Sequence[RunResult]) -> str | None:
    runs = [r for r in completed if r.workload == workload]
    if not runs:
        return None
    stall = _stall(runs)
    return _tears(workload, runs) + (f"; {stall}" if stall else "")


def _violations(runs: Sequence[RunResult], kind: str) -> str | None:
    hits = [f"{r.id} {getattr(r, kind)}" for r in runs if getattr(r, kind) > 0]
    return f"{kind} writes: " + ", ".join(hits) if hits else None


def _metadata(runs: Sequence[RunResult]) -> str | None:
    """Filesystem metadata judged at the device: expected zero verdicts; any run with one is
    named (a kernel bug or an oracle error, to be told apart from the events)."""
    judged = [r for r in runs if r.fs in r.formats]
    if not judged:
        return None
    hits = [f"{r.id} {r.formats[r.fs].torn}/{r.formats[r.fs].stale}/"
            f"{r.formats[r.fs].overlapping}" for r in judged if r.formats[r.fs].violations]
    blocks = {fs: sum(r.formats[fs].blocks for r in judged if r.fs == fs)
              for fs in ordered(r.fs for r in judged)}  # fmt: skip
    seen = ", ".join(f"{n} {fs}" for fs, n in blocks.items())
    if not hits:
        return f"filesystem metadata: no torn, stale or overlapping block ({seen} blocks judged)"
    return ("filesystem metadata verdicts (torn/stale/overlapping): " + ", ".join(hits)
            + f" ({seen} blocks judged): a kernel bug or an oracle error, see events.jsonl")


def _fio(runs: Sequence[RunResult]) -> str | None:
    """fio's own read-back beside the device's verdicts on fio's blocks."""
    parts = []
    for r in runs:
        if r.fio is None:
            continue
        torn = r.formats["fio"].torn if "fio" in r.formats else 0
        verdict = "passed" if r.fio.passed else "FAILED"
        parts.append(f"{r.id}: fio read-back {verdict}, device saw {torn} torn fio blocks")
    return "; ".join(parts) if parts else None


def _incomplete(runs: Sequence[RunResult]) -> str | None:
    lost = [f"{r.id} ({r.outcome}: {r.error})" if r.outcome == "skipped" else
            f"{r.id} ({r.outcome})" for r in runs if not r.completed]  # fmt: skip
    return "not measured: " + ", ".join(lost) if lost else None


def _where(run: RunResult) -> str:
    return f"{run.fs} {run.workload} stable_writes={run.stable_writes}"


def _stack_clause(runs: Sequence[RunResult]) -> str:
    """What the checkers found in `runs` (one stack on one kernel): the runs with damage and
    their verdicts, else how many runs they found nothing in."""
    hits = [f"{_where(r)} [{describe(r.checks)}]" for r in runs
            if r.checks is not None and own_damage(r.checks) > 0]  # fmt: skip
    if hits:
        return "damage in " + ", ".join(hits)
    return f"nothing in {len(runs)} run" + ("" if len(runs) == 1 else "s")


def _unseen(runs: Sequence[RunResult], named: bool) -> str | None:
    """Mirrors whose legs differ while the stack's own checkers found nothing."""
    missed = [(f"{r.kernel} " if named else "") + f"{_where(r)} ({r.checks.mirror_diff_pages} "
              "pages)" for r in runs if r.checks is not None and r.checks.mirror_diff_pages
              and own_damage(r.checks) == 0]  # fmt: skip
    return "legs differ where they saw nothing: " + ", ".join(missed) if missed else None


def _stack_line(stack: str, runs: Sequence[RunResult], kernels: Sequence[str]) -> str:
    checked = [r for r in runs if r.checks is not None]
    several = len(kernels) > 1
    on = [k for k in kernels if any(r.kernel == k for r in checked)]
    if several and not any(own_damage(r.checks) for r in checked if r.checks is not None):
        clauses = [_stack_clause(checked) + f" (on {', '.join(on)})"]  # one line says it all
    else:
        clauses = [(f"on {k} " if several else "")
                   + _stack_clause([r for r in checked if r.kernel == k]) for k in on]
    failed = [f"{r.id} ({'; '.join(r.checks.errors)})" for r in checked
              if r.checks is not None and r.checks.errors]  # fmt: skip
    extra = [_unseen(checked, several),
             "could not run: " + ", ".join(failed) if failed else None]  # fmt: skip
    said = [*clauses, *(e for e in extra if e)] or ["did not run"]
    return f"stack {stack}, its own checkers: " + "; ".join(said)


def stack_findings(runs: Sequence[RunResult]) -> list[str]:
    """Per stack (plain has no checker): on which kernels its own checkers found damage, in
    which runs and what; mirrors whose legs differ unseen; checkers that could not run."""
    completed = [r for r in runs if r.completed and r.stack != "plain"]
    kernels = ordered(r.kernel for r in runs)
    return [_stack_line(stack, [r for r in completed if stack_label(r) == stack], kernels)
            for stack in ordered(stack_label(r) for r in completed)]  # fmt: skip


def _prefixed(prefix: str, line: str | None) -> str | None:
    return prefix + line if line else None


def findings(runs: Sequence[RunResult]) -> list[str]:
    """One line per workload (tears, p99 stall) — per kernel when there are several — then
    one per stack (what its own checkers found), other violations and incomplete runs."""
    completed = [r for r in runs if r.completed]
    kernels = ordered(r.kernel for r in runs)
    lines: list[str | None] = []
    for kernel in kernels:
        mine = [r for r in completed if r.kernel == kernel]
        prefix = f"{kernel}: " if len(kernels) > 1 else ""
        lines += [_prefixed(prefix, _workload_line(w, mine)) for w in workloads(runs)]
    lines += stack_findings(runs)
    lines += [_violations(completed, "stale"), _violations(completed, "overlapping")]
    lines += [_metadata(completed), _fio(completed)]
    lines.append(_incomplete(runs))
    return [line for line in lines if line]
