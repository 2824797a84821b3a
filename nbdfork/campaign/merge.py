"""The campaign's merged report: DIR/report.json (typed, "nbdfork.campaign/1"), DIR/report.md
with per-axis tables and spread across seeds, and PNG plots.

report.json is written from the journal and the spec, and read back through the same types;
report.md is rendered from report.json plus each done cell's own report.json, so
`nbdfork campaign report DIR` re-renders it without running anything.

Spread: a setting is every axis but `seed`. For run cells the tear rate pools torn/stamped
pages over the seeds with a Wilson 95% interval, and the writer's p99 stall is given as
min/median/max over the seeds; for model cells, throughput and stall p99 as min/median/max
over the seeds and verdicts as totals (a violation seen under one seed is never hidden).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nbdfork import __version__
from nbdfork.campaign.journal import JournalState
from nbdfork.campaign.spec import CampaignSpec
from nbdfork.errors import ReportError

__all__ = [
    "SCHEMA",
    "CampaignReport",
    "CellRecord",
    "build_report",
    "load_report",
    "wilson",
    "write_report",
]

SCHEMA = "nbdfork.campaign/1"
STATUSES = ("done", "failed", "interrupted", "pending")
TEAR_PLOT = "tear_rates.png"
MODEL_PLOT = "model_spread.png"


@dataclass(frozen=True, slots=True)
class CellRecord:
    """One cell in report.json."""

    id: str
    kind: str
    status: str  # done | failed | interrupted | pending
    axes: dict[str, str]
    seed: int
    dir: str  # relative to the campaign directory
    exit_status: int | None = None
    error: str | None = None
    duration_s: float | None = None
    started: float | None = None  # Unix time of the last start
    ended: float | None = None
    node: str | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class CampaignReport:
    """DIR/report.json."""

    name: str
    seed: int
    spec_hash: str
    executor: str
    jobs: int
    wall_s: float
    cells: list[CellRecord]
    counts: dict[str, int] = field(default_factory=dict)
    created: str = ""
    version: str = __version__
    schema: str = SCHEMA

    def to_json(self) -> dict[str, Any]:
        """The report as JSON values."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CampaignReport:
        """Read a report back; a wrong schema or shape raises ReportError."""
        if data.get("schema") != SCHEMA:
            raise ReportError(f"not a campaign report (schema {data.get('schema')!r})")
        try:
            cells = [CellRecord(**c) for c in data["cells"]]
            rest = {k: v for k, v in data.items() if k != "cells"}
            return cls(cells=cells, **rest)
        except (KeyError, TypeError) as exc:
            raise ReportError(f"campaign report: {exc}") from None


def build_report(
    spec: CampaignSpec, states: Mapping[str, JournalState], executor: str, jobs: int,
    wall_s: float,
) -> CampaignReport:  # fmt: skip
    """The report of every cell of `spec`, as the journal has it."""
    cells = []
    for cell in spec.cells:
        s = states.get(cell.id)
        status = "pending" if s is None or s.key != cell.key else s.event
        status = "interrupted" if status == "start" else status  # killed without a last word
        last = s.last if s is not None and status != "pending" else {}
        cells.append(CellRecord(
            id=cell.id, kind=cell.kind, status=status, axes=dict(cell.axes), seed=cell.seed,
            dir=f"cells/{cell.id}", exit_status=last.get("exit_status"), error=last.get("error"),
            duration_s=last.get("duration_s"), started=s.started if s and last else None,
            ended=s.ended if s and last else None, node=last.get("node"),
            attempts=s.attempts if s else 0,
        ))  # fmt: skip
    counts = {k: sum(c.status == k for c in cells) for k in STATUSES}
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return CampaignReport(spec.name, spec.seed, spec.hash, executor, jobs, round(wall_s, 3),
                          cells, counts, created)  # fmt: skip


def load_report(directory: Path) -> CampaignReport:
    """DIR/report.json through CampaignReport; a missing or bad file raises ReportError."""
    path = directory / "report.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: {exc}") from None
    return CampaignReport.from_json(data)


def write_report(directory: Path, report: CampaignReport) -> list[Path]:
    """Write report.json, the plots and report.md; return the files written."""
    path = directory / "report.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    tmp.replace(path)
    return [path, *render(directory, report)]


# --------------------------------------------------------------------------------- statistics


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (95% by default)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured configuration of one cell (a cell may hold several)."""

    setting: dict[str, str]  # every axis but seed, plus the configuration inside the cell
    metrics: dict[str, float]


def _cell_report(directory: Path, cell: CellRecord) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((directory / cell.dir / "report.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def _axes(cell: CellRecord) -> dict[str, str]:
    return {k: v for k, v in cell.axes.items() if k != "seed"}


def _model_samples(cell: CellRecord, data: Mapping[str, Any]) -> list[Sample]:
    samples = []
    for run in data.get("runs", []):
        inner = {"policy": str(run["policy"]), "latency": f"{run['latency_ms']:g}ms",
                 "reorder": str(run["reorder"])}  # fmt: skip
        p99 = (run.get("writer_latency_ms") or {}).get("p99") or 0.0
        samples.append(Sample({**inner, **_axes(cell)}, {
            "throughput": float(run.get("throughput", 0.0)), "stall_p99_ms": float(p99),
            "torn": run.get("torn", 0), "stale": run.get("stale", 0),
            "overlapping": run.get("overlapping", 0),
        }))  # fmt: skip
    return samples


def _run_samples(cell: CellRecord, data: Mapping[str, Any]) -> list[Sample]:
    samples = []
    for run in data.get("runs", []):
        inner = {"kernel": str(run.get("kernel")), "fs": str(run.get("fs")),
                 "stable_writes": str(run.get("stable_writes")),
                 "workload": str(run.get("workload"))}  # fmt: skip
        p99 = (run.get("writer_latency_ms") or {}).get("p99")
        samples.append(Sample({**inner, **_axes(cell)}, {
            "torn": run.get("torn", 0), "stamped": run.get("stamped_pages", 0),
            "stale": run.get("stale", 0), "overlapping": run.get("overlapping", 0),
            "stall_p99_ms": float("nan") if p99 is None else float(p99),
        }))  # fmt: skip
    return samples


def _crash_samples(cell: CellRecord, data: Mapping[str, Any]) -> list[Sample]:
    setting = {"kernel": str(data.get("kernel")), "fs": str(data.get("fs")), **_axes(cell)}
    keys = ("states_checked", "ledger_violations", "fsck_failures", "torn_unexplained")
    return [Sample(setting, {k: float(data.get(k) or 0) for k in keys})]


_SAMPLERS: dict[str, Callable[[CellRecord, Mapping[str, Any]], list[Sample]]] = {
    "model": _model_samples, "run": _run_samples, "crash": _crash_samples,
}  # fmt: skip


def collect(directory: Path, report: CampaignReport) -> dict[str, list[Sample]]:
    """Samples per kind from every done cell's report.json."""
    by_kind: dict[str, list[Sample]] = {}
    for cell in report.cells:
        sampler = _SAMPLERS.get(cell.kind)
        data = _cell_report(directory, cell) if cell.status == "done" and sampler else None
        if sampler is not None and data is not None:
            by_kind.setdefault(cell.kind, []).extend(sampler(cell, data))
    return by_kind


def _group(samples: Sequence[Sample], keys: Sequence[str]) -> dict[tuple[str, ...], list[Sample]]:
    groups: dict[tuple[str, ...], list[Sample]] = {}
    for s in samples:
        groups.setdefault(tuple(s.setting.get(k, "-") for k in keys), []).append(s)
    return groups


def _spread(values: Sequence[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{_fmt(mid)} ({_fmt(lo)}-{_fmt(hi)})" if len(values) > 1 else _fmt(mid)


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _keys(samples: Sequence[Sample]) -> list[str]:
    keys: list[str] = []
    for s in samples:
        keys += [k for k in s.setting if k not in keys]
    return keys


def _varying(samples: Sequence[Sample], keys: Sequence[str]) -> list[str]:
    return [k for k in keys if len({s.setting.get(k) for s in samples}) > 1]


def _model_table(samples: Sequence[Sample], keys: Sequence[str]) -> list[str]:
    head = " | ".join(keys)
    lines = [f"| {head} | seeds | writer stores/s median (min-max) | stall p99 ms median "
             "(min-max) | torn | stale | overlapping |",
             "|" + "---|" * (len(keys) + 6)]  # fmt: skip
    for key, group in _group(samples, keys).items():
        m = [s.metrics for s in group]
        lines.append(f"| {' | '.join(key)} | {len(group)} "
                     f"| {_spread([x['throughput'] for x in m])} "
                     f"| {_spread([x['stall_p99_ms'] for x in m])} "
                     f"| {sum(int(x['torn']) for x in m)} | {sum(int(x['stale']) for x in m)} "
                     f"| {sum(int(x['overlapping']) for x in m)} |")  # fmt: skip
    return lines


def _run_table(samples: Sequence[Sample], keys: Sequence[str]) -> list[str]:
    head = " | ".join(keys)
    lines = [f"| {head} | seeds | torn/stamped | tear rate % | 95% CI % | stale | overlapping "
             "| writer p99 ms median (min-max) |", "|" + "---|" * (len(keys) + 7)]  # fmt: skip
    for key, group in _group(samples, keys).items():
        m = [s.metrics for s in group]
        torn, stamped = sum(int(x["torn"]) for x in m), sum(int(x["stamped"]) for x in m)
        lo, hi = wilson(torn, stamped)
        rate = 100 * torn / stamped if stamped else 0.0
        lines.append(f"| {' | '.join(key)} | {len(group)} | {torn}/{stamped} | {rate:.3g} "
                     f"| {100 * lo:.3g}-{100 * hi:.3g} | {sum(int(x['stale']) for x in m)} "
                     f"| {sum(int(x['overlapping']) for x in m)} "
                     f"| {_spread([x['stall_p99_ms'] for x in m])} |")  # fmt: skip
    return lines


def _crash_table(samples: Sequence[Sample], keys: Sequence[str]) -> list[str]:
    names = ("states_checked", "ledger_violations", "fsck_failures", "torn_unexplained")
    lines = [f"| {' | '.join(keys)} | seeds | {' | '.join(n.replace('_', ' ') for n in names)} |",
             "|" + "---|" * (len(keys) + 5)]  # fmt: skip
    for key, group in _group(samples, keys).items():
        sums = [sum(int(s.metrics[n]) for s in group) for n in names]
        lines.append(f"| {' | '.join(key)} | {len(group)} | {' | '.join(map(str, sums))} |")
    return lines


_TABLES = {"model": _model_table, "run": _run_table, "crash": _crash_table}
_TITLES = {"model": "Page-forking model cells", "run": "Real-kernel cells (`nbdfork run`)",
           "crash": "Crash cells (`nbdfork crash`)"}  # fmt: skip


def _kind_section(kind: str, samples: Sequence[Sample]) -> list[str]:
    keys = _keys(samples)
    table = _TABLES[kind]
    lines = [f"## {_TITLES[kind]}", "", "Every setting (all axes but the seed):", "",
             *table(samples, keys), ""]  # fmt: skip
    varying = _varying(samples, keys)
    for axis in varying if len(varying) > 1 else ():
        lines += [f"### By {axis} (pooled over the other axes)", "", *table(samples, [axis]), ""]
    return lines


def _cells_table(report: CampaignReport) -> list[str]:
    lines = ["| cell | status | seconds | exit | node | error |", "|---|---|---|---|---|---|"]
    for c in report.cells:
        seconds = "-" if c.duration_s is None else f"{c.duration_s:.1f}"
        error = (c.error or "").replace("|", "\\|")[:120]
        exit_status = "-" if c.exit_status is None else str(c.exit_status)
        lines.append(f"| {c.id} | {c.status} | {seconds} | {exit_status} | {c.node or '-'} "
                     f"| {error} |")  # fmt: skip
    return lines


def render(directory: Path, report: CampaignReport) -> list[Path]:
    """report.md and plots from `report` and the done cells' own reports; the files written."""
    samples = collect(directory, report)
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items() if v)
    lines = [f"# Campaign {report.name}", "",
             f"Seed {report.seed}, {len(report.cells)} cells ({counts}); executor "
             f"{report.executor}, {report.jobs} at once; spec {report.spec_hash[:12]}; "
             f"nbdfork {report.version}. Medians with (min-max) are over seeds; verdict "
             "counts are totals; tear-rate intervals are Wilson 95% on torn/stamped pages "
             "pooled over seeds.", ""]  # fmt: skip
    for kind in ("run", "model", "crash"):
        if samples.get(kind):
            lines += _kind_section(kind, samples[kind])
    plots = _plots(directory, samples)
    lines += [f"![{p.name}]({p.name})" for p in plots]
    lines += ["", "## Cells", "", *_cells_table(report), ""]
    md = directory / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return [*plots, md]


def _plots(directory: Path, samples: Mapping[str, Sequence[Sample]]) -> list[Path]:
    import matplotlib  # noqa: PLC0415 - plotting is optional work at the end

    matplotlib.use("Agg")
    written = []
    if samples.get("run"):
        written.append(_tear_plot(samples["run"], directory / TEAR_PLOT))
    if samples.get("model"):
        written.append(_model_plot(samples["model"], directory / MODEL_PLOT))
    return written


def _label(key: Sequence[str], keys: Sequence[str]) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(keys, key, strict=True))


def _tear_plot(samples: Sequence[Sample], path: Path) -> Path:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    keys = _varying(samples, _keys(samples)) or _keys(samples)[:1]
    groups = _group(samples, keys)
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.4 * len(groups)))
    for y, group in enumerate(groups.values()):
        torn = sum(int(s.metrics["torn"]) for s in group)
        stamped = sum(int(s.metrics["stamped"]) for s in group)
        lo, hi = wilson(torn, stamped)
        rate = torn / stamped if stamped else 0.0
        ax.errorbar([100 * rate], [y], xerr=[[100 * (rate - lo)], [100 * (hi - rate)]],
                    fmt="o", capsize=3)  # fmt: skip
    ax.set_yticks(range(len(groups)), [_label(k, keys) for k in groups])
    ax.set_xlabel("torn / stamped pages, % (Wilson 95% interval, seeds pooled)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _model_plot(samples: Sequence[Sample], path: Path) -> Path:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    keys = _varying(samples, _keys(samples)) or ["policy"]
    groups = _group(samples, keys)
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.8 + 0.4 * len(groups)), sharey=True)
    for y, group in enumerate(groups.values()):
        for ax, metric in zip(axes, ("throughput", "stall_p99_ms"), strict=True):
            values = [s.metrics[metric] for s in group]
            ax.plot(values, [y] * len(values), "o", alpha=0.5, color="tab:blue")
            ax.plot([statistics.median(values)], [y], "|", markersize=14, color="black")
    axes[0].set_yticks(range(len(groups)), [_label(k, keys) for k in groups])
    axes[0].set_xlabel("writer stores/s (each seed; bar: median)")
    axes[1].set_xlabel("writer stall p99, ms")
    axes[1].set_xscale("symlog", linthresh=0.01)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
