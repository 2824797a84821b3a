"""report.md/html and the outcomes plot of a crash campaign (matplotlib, Agg), through the
document model every nbdfork report shares (nbdfork.report.document)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import msgspec

from nbdfork.errors import ReportError
from nbdfork.experiments.crash.expectations import FINDINGS
from nbdfork.experiments.crash.schema import (
    CrashReport,
    StackSummary,
    StateRow,
    StatesSummary,
    load_crash_report,
    load_states,
)
from nbdfork.report.document import (
    Block,
    Heading,
    Image,
    Paragraph,
    Table,
    code,
    write_document,
)

__all__ = ["crash_blocks", "render_crash_report"]

_OUTCOMES = ("passed", "ledger_violation", "fsck_failure", "torn")
_COLORS = {"passed": "#4c9a2a", "ledger_violation": "#c0392b", "fsck_failure": "#8e44ad",
           "torn": "#e67e22"}  # fmt: skip


def _plot(rows: Sequence[StateRow], control: Sequence[StateRow], path: Path) -> None:
    from matplotlib.figure import Figure  # noqa: PLC0415 - keep the guest free of matplotlib

    fig = Figure(figsize=(8, 3.6), layout="constrained")
    axes = fig.subplots(1, 2 if control else 1, squeeze=False)[0]
    for ax, (title, data) in zip(axes, (("device", rows), ("ignore-flush control", control)),
                                 strict=False):  # fmt: skip
        per_point: dict[int, Counter[str]] = defaultdict(Counter)
        for row in data:
            per_point[row.checkpoint][row.outcome] += 1
        points = sorted(per_point)
        bottom = [0] * len(points)
        for outcome in _OUTCOMES:
            heights = [per_point[p][outcome] for p in points]
            ax.bar([str(p) for p in points], heights, bottom=bottom, label=outcome,
                   color=_COLORS[outcome])  # fmt: skip
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_title(f"crash states per crash point ({title})")
        ax.set_xlabel("checkpoint (fsync returned)")
        ax.set_ylabel("states")
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=110)


def _row(title: str, summary: StatesSummary) -> tuple[str, ...]:
    return (title, str(summary.states_checked), str(summary.ledger_violations),
            str(summary.fsck_failures), str(summary.torn_unexplained))  # fmt: skip


def crash_blocks(report: CrashReport, plot: str) -> list[Block]:
    """The crash report as document blocks (the same model `nbdfork run`'s report uses)."""
    control = report.control
    rows = (_row("device", report), *([_row("ignore-flush control", control)] if control else []))
    blocks: list[Block] = [
        Heading(f"nbdfork crash campaign: {report.fs} on Linux {report.kernel}", 1),
        Paragraph(f"Outcome: {code(report.outcome)} — seed {report.seed}, accel "
                  f"{report.accel}, {report.duration_s} s, device {_where(report.device_location)} "
                  f"{code(_json(report.device))}, workload {code(_json(report.workload))}, "
                  f"crash points {code(report.points)}."),
        Table(("run", "states", "ledger violations", "fsck failures", "unexplained tears"),
              rows, ("l", "r", "r", "r", "r")),
        Paragraph("The control replays the same trace on a device that acknowledges FLUSH and "
                  "FUA without making anything durable: it must show ledger violations, or the "
                  "check proves nothing. No state is cut before the workload's first "
                  "checkpoint (mkfs, mount and the first fsync done)."),
    ]  # fmt: skip
    if not isinstance(report.stack, msgspec.UnsetType):
        blocks += _stack_blocks(report.stack)
    if report.guest_error:
        blocks.append(Paragraph(f"Guest error: {code(report.guest_error)}"))
    return [*blocks, Image(plot, "outcomes per crash point"),
            Paragraph("Every state is reproducible from (trace, seed, point, index): see "
                      "report.json `states`.")]  # fmt: skip


def _stack_blocks(stack: StackSummary) -> list[Block]:
    """The stack's verdicts, and per finding how many states had it, judged by the table."""
    v = stack.verdicts
    control = ""
    if stack.control_verdicts is not None:
        control = f" Ignore-flush control: {code(_json(stack.control_verdicts))}."
    table = {e.finding: e for e in stack.expectations}
    rows = []
    for finding in sorted(set(FINDINGS) & (set(stack.findings) | set(table))):
        expected = table.get(finding)
        judged = ("documented" if expected is not None and expected.documented
                  else "violation")  # fmt: skip
        why = expected.why if expected is not None else "nothing documents it"
        rows.append((code(finding), str(stack.findings.get(finding, 0)),
                     str(stack.documented.get(finding, 0)), judged, why))  # fmt: skip
    return [
        Heading(f"Stack {stack.name}: {stack.members} members of {stack.member_size}", 2),
        Paragraph(f"Every member cut at one instant and recovered by the stack's own tools: "
                  f"**{v.get('clean', 0)} clean, {v.get('exposure', 0)} exposure (documented), "
                  f"{v.get('violation', 0)} violation**.{control}"),
        Table(("finding", "states", "of them documented", "judged", "why"), tuple(rows),
              ("l", "r", "r", "l", "l")),
    ]  # fmt: skip


def render_crash_report(out: Path, report: CrashReport | None = None) -> list[Path]:
    """Write OUT/report.md, OUT/report.html and OUT/crash_outcomes.png from `report` (else
    from OUT/report.json); return their paths."""
    report = report if report is not None else load_crash_report(out)
    control_rows = _control_rows(out) if report.control else ()
    png = out / "crash_outcomes.png"
    _plot(report.states, control_rows, png)
    blocks = crash_blocks(report, png.name)
    md, page = write_document(out, blocks, f"nbdfork crash campaign: {report.fs}")
    return [md, page, png]


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _control_rows(out: Path) -> tuple[StateRow, ...]:
    """The control's states (kept beside the report, not in it); none when unreadable."""
    try:
        return load_states(out / "control" / "states.json") or ()
    except ReportError:
        return ()


def _where(location: str) -> str:
    """`on the host` or `in the guest`, as a reader says it."""
    return "in the guest" if location == "guest" else f"on the {location}"
