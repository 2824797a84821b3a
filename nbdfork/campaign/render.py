"""report.md and the outcomes plot of a crash campaign (matplotlib, Agg)."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

__all__ = ["render_crash_report"]

_OUTCOMES = ("passed", "ledger_violation", "fsck_failure", "torn")
_COLORS = {"passed": "#4c9a2a", "ledger_violation": "#c0392b", "fsck_failure": "#8e44ad",
           "torn": "#e67e22"}  # fmt: skip


def _plot(rows: list[dict[str, Any]], control: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure  # noqa: PLC0415 - keep the guest free of matplotlib

    fig = Figure(figsize=(8, 3.6), layout="constrained")
    axes = fig.subplots(1, 2 if control else 1, squeeze=False)[0]
    for ax, (title, data) in zip(axes, (("device", rows), ("ignore-flush control", control)),
                                 strict=False):  # fmt: skip
        per_point: dict[int, Counter[str]] = defaultdict(Counter)
        for row in data:
            per_point[int(row["checkpoint"])][str(row["outcome"])] += 1
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


def _table(title: str, summary: dict[str, Any]) -> list[str]:
    return [
        f"| {title} | {summary['states_checked']} | {summary['ledger_violations']} | "
        f"{summary['fsck_failures']} | {summary['torn_unexplained']} |"
    ]


def render_crash_report(out: Path, report: dict[str, Any]) -> list[Path]:
    """Write OUT/report.md and OUT/crash_outcomes.png; return their paths."""
    rows, control = report["states"], report.get("control")
    control_rows = _control_rows(out) if control else []
    png = out / "crash_outcomes.png"
    _plot(rows, control_rows, png)
    lines = [
        f"# nbdfork crash campaign: {report['fs']} on Linux {report['kernel']}",
        "",
        f"Outcome: **{report['outcome']}** — seed {report['seed']}, accel {report['accel']}, "
        f"{report['duration_s']} s, device {report['device']}, workload {report['workload']}.",
        "",
        "| run | states | ledger violations | fsck failures | unexplained tears |",
        "|---|---|---|---|---|",
        *_table("device", report),
        *(_table("ignore-flush control", control) if control else []),
        "",
        "The control replays the same trace on a device that acknowledges FLUSH and FUA without "
        "making anything durable: it must show ledger violations, or the check proves nothing.",
        "",
        f"![outcomes per crash point]({png.name})",
        "",
        "Every state is reproducible from (trace, seed, point, index): see report.json `states`.",
    ]
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [md, png]


def _control_rows(out: Path) -> list[dict[str, Any]]:
    import json  # noqa: PLC0415

    path = out / "control" / "states.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []
    return rows
