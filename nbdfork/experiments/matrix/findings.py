"""The report's "what this shows" lines, computed from the runs and never written by hand.

This module owns the reading of a matrix: per workload, on which filesystems and with which
stable_writes settings pages tore, how much stable_writes=1 slowed the writer at p99, which
other violations appeared and which runs did not complete.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from nbdfork.experiments.matrix.schema import RunResult

__all__ = ["findings", "ordered", "p99_stall_ratio", "workloads"]

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


def _tears(workload: str, runs: Sequence[RunResult]) -> str:
    phrases: dict[str, list[str]] = {}
    for fs in ordered(r.fs for r in runs):
        mine = [r for r in runs if r.fs == fs]
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
    ratios = [(fs, p99_stall_ratio(runs, fs)) for fs in ordered(r.fs for r in runs)]
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


def _prefixed(prefix: str, line: str | None) -> str | None:
    return prefix + line if line else None


def findings(runs: Sequence[RunResult]) -> list[str]:
    """One line per workload (tears, p99 stall) — per kernel when there are several — then
    other violations and incomplete runs."""
    completed = [r for r in runs if r.completed]
    kernels = ordered(r.kernel for r in runs)
    lines: list[str | None] = []
    for kernel in kernels:
        mine = [r for r in completed if r.kernel == kernel]
        prefix = f"{kernel}: " if len(kernels) > 1 else ""
        lines += [_prefixed(prefix, _workload_line(w, mine)) for w in workloads(runs)]
    lines += [_violations(completed, "stale"), _violations(completed, "overlapping")]
    lines += [_metadata(completed), _fio(completed)]
    lines.append(_incomplete(runs))
    return [line for line in lines if line]
