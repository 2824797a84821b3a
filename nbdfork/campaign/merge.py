"""The campaign's merged report: DIR/report.json (typed, "nbdfork.campaign/1"), DIR/report.md
and report.html with per-axis tables and spread across seeds, and PNG plots.

report.json is written from the journal and the spec, and read back through the same types;
report.md is rendered from report.json plus each done cell's own report.json, so
`nbdfork campaign report DIR` re-renders it without running anything.

Spread: a setting is every axis but `seed`. For run cells the tear rate pools torn/stamped
pages over the seeds with a Wilson 95% interval, and the writer's p99 stall is given as
min/median/max over the seeds; for model cells, throughput and stall p99 as min/median/max
over the seeds and verdicts as totals (a violation seen under one seed is never hidden).
Runs on a storage stack (`--stack`) are rows of their own, and their stack's checkers
(btrfs scrub, md check, dm-integrity, fsck, the mirror's legs) are totalled per row and per
stack x kernel x stable_writes.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import msgspec

from nbdfork import __version__
from nbdfork.campaign.journal import JournalState
from nbdfork.campaign.orchestrator import Budget
from nbdfork.campaign.paths import cell_dir
from nbdfork.campaign.spec import CampaignSpec, Cell
from nbdfork.errors import ConfigError, ReportError
from nbdfork.experiments.crash.schema import load_crash_report
from nbdfork.experiments.matrix.findings import stack_label
from nbdfork.experiments.matrix.schema import RunResult
from nbdfork.experiments.matrix.schema import load_report as load_run_report
from nbdfork.experiments.model.schema import load_model_report
from nbdfork.experiments.stacks.summary import CHECKERS, own_damage, tally
from nbdfork.report.codec import Record, read_json, write_json
from nbdfork.report.document import (
    Block,
    Heading,
    Image,
    Paragraph,
    Table,
    code,
    write_document,
)
from nbdfork.report.measures import Count

__all__ = [
    "SCHEMA",
    "CampaignReport",
    "CellRecord",
    "build_report",
    "campaign_blocks",
    "load_report",
    "render",
    "wilson",
    "write_report",
]

SCHEMA = "nbdfork.campaign/1"
STATUSES = ("done", "failed", "interrupted", "pending")
TEAR_PLOT = "tear_rates.png"
MODEL_PLOT = "model_spread.png"
CellStatus = Literal["done", "failed", "interrupted", "pending"]


class CellRecord(Record, frozen=True, kw_only=True):
    """One cell in report.json."""

    id: str
    kind: str  # run | crash | model (another: cells built in Python, by tests)
    status: CellStatus
    axes: dict[str, str]
    seed: int
    dir: str  # relative to the campaign directory
    exit_status: int | None = None
    error: str | None = None
    duration_s: float | None = None
    started: float | None = None  # Unix time of the last start
    ended: float | None = None
    node: str | None = None
    attempts: Count = 0


class CampaignReport(Record, frozen=True, kw_only=True):
    """DIR/report.json."""

    schema: str = SCHEMA
    name: str
    seed: int
    spec_hash: str
    executor: str
    jobs: int
    wall_s: float
    cells: tuple[CellRecord, ...]
    counts: dict[str, Count] = msgspec.field(default_factory=dict)
    cpus: int | None = None  # the local executor's budget (None: Ray packed the cells)
    memory: int | None = None
    created: str = ""
    version: str = __version__


def _cell_record(cell: Cell, state: JournalState | None) -> CellRecord:
    status = "pending" if state is None or state.key != cell.key else state.event
    status = "interrupted" if status == "start" else status  # killed without a last word
    last = state.last if state is not None and status != "pending" else {}
    timed = state if state is not None and last else None
    return CellRecord(
        id=cell.id, kind=cell.kind, status=cast(CellStatus, status), axes=dict(cell.axes),
        seed=cell.seed, dir=f"cells/{cell.id}", exit_status=last.get("exit_status"),
        error=last.get("error"), duration_s=last.get("duration_s"),
        started=timed.started if timed else None, ended=timed.ended if timed else None,
        node=last.get("node"), attempts=state.attempts if state else 0,
    )  # fmt: skip


def build_report(
    spec: CampaignSpec, states: Mapping[str, JournalState], executor: str, jobs: int,
    wall_s: float, *, budget: Budget | None = None,
) -> CampaignReport:  # fmt: skip
    """The report of every cell of `spec`, as the journal has it."""
    cells = tuple(_cell_record(c, states.get(c.id)) for c in spec.cells)
    counts = {k: sum(c.status == k for c in cells) for k in STATUSES}
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return CampaignReport(name=spec.name, seed=spec.seed, spec_hash=spec.hash, executor=executor,
                          jobs=jobs, wall_s=round(wall_s, 3), cells=cells, counts=counts,
                          cpus=budget.cpus if budget else None,
                          memory=budget.memory if budget else None, created=created)  # fmt: skip


def load_report(directory: Path) -> CampaignReport:
    """DIR/report.json through CampaignReport; a missing or bad file raises ReportError."""
    return read_json(directory, CampaignReport, SCHEMA)


def write_report(directory: Path, report: CampaignReport) -> list[Path]:
    """Write report.json, the plots, report.md and report.html; return the files written."""
    return [write_json(report, directory), *render(directory, report)]


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
class Tears:
    """Torn of stamped pages pooled over samples, as a rate with its Wilson 95% interval."""

    torn: int
    stamped: int

    @classmethod
    def pooled(cls, samples: Sequence[Sample]) -> Tears:
        return cls(sum(int(s.metrics["torn"]) for s in samples),
                   sum(int(s.metrics["stamped"]) for s in samples))  # fmt: skip

    @property
    def rate(self) -> float:
        return self.torn / self.stamped if self.stamped else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.torn, self.stamped)


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured configuration of one cell (a cell may hold several)."""

    setting: dict[str, str]  # every axis but seed, plus the configuration inside the cell
    metrics: dict[str, float]


def _axes(cell: CellRecord) -> dict[str, str]:
    return {k: v for k, v in cell.axes.items() if k != "seed"}


def _model_samples(cell: CellRecord, path: Path) -> list[Sample]:
    samples = []
    for run in load_model_report(path).runs:
        inner = {"policy": run.policy, "latency": f"{run.latency_ms:g}ms",
                 "reorder": run.reorder}  # fmt: skip
        samples.append(Sample({**inner, **_axes(cell)}, {
            "throughput": run.throughput, "stall_p99_ms": run.writer_latency_ms.p99 or 0.0,
            "torn": run.torn, "stale": run.stale, "overlapping": run.overlapping,
        }))  # fmt: skip
    return samples


def _checker_metrics(run: RunResult) -> dict[str, float]:
    """A stack run's checker counts (`checked`, `damaged` by its own checkers, then each
    count of `tally`); nothing for a plain run or one that did not complete."""
    if run.checks is None or not run.completed:
        return {}
    counts = {name: float(n) for name, n in tally(run.checks).items()}
    return {"checked": 1.0, "damaged": float(own_damage(run.checks) > 0), **counts}


def _run_samples(cell: CellRecord, path: Path) -> list[Sample]:
    samples = []
    for run in load_run_report(path).runs:
        # What the run was wins over a cell axis of the same name: a cell may run several
        # stacks, kernels or filesystems (`stack = "btrfs,md-raid1"`), each its own row.
        inner = {"kernel": run.kernel, "stack": stack_label(run), "fs": run.fs,
                 "stable_writes": str(run.stable_writes), "workload": run.workload}  # fmt: skip
        axes = {k: v for k, v in _axes(cell).items() if k not in inner}
        p99 = run.writer_latency_ms.p99
        samples.append(Sample({**inner, **axes}, {
            "torn": run.torn, "stamped": run.stamped_pages, "stale": run.stale,
            "overlapping": run.overlapping,
            "stall_p99_ms": float("nan") if p99 is None else p99,
            **_checker_metrics(run),
        }))  # fmt: skip
    return samples


def _crash_samples(cell: CellRecord, path: Path) -> list[Sample]:
    report = load_crash_report(path)
    setting = {"kernel": report.kernel, "fs": report.fs, **_axes(cell)}
    return [Sample(setting, {
        "states_checked": report.states_checked, "ledger_violations": report.ledger_violations,
        "fsck_failures": report.fsck_failures, "torn_unexplained": report.torn_unexplained,
    })]  # fmt: skip


_SAMPLERS: dict[str, Callable[[CellRecord, Path], list[Sample]]] = {
    "model": _model_samples, "run": _run_samples, "crash": _crash_samples,
}  # fmt: skip


@dataclass(slots=True)
class Collected:
    """Samples per kind from the done cells, and the cells whose report could not be read."""

    samples: dict[str, list[Sample]]
    unreadable: dict[str, str]  # cell id -> the one-line reason


def collect(directory: Path, report: CampaignReport) -> Collected:
    """Samples per kind from every done cell's report.json."""
    found = Collected({}, {})
    for cell in report.cells:
        sampler = _SAMPLERS.get(cell.kind)
        if sampler is None or cell.status != "done":
            continue
        try:  # read from the cell's own folder, whatever a tampered `dir` says
            samples = sampler(cell, cell_dir(directory, cell.id) / "report.json")
        except (ReportError, ConfigError) as exc:
            found.unreadable[cell.id] = str(exc)
            continue
        found.samples.setdefault(cell.kind, []).extend(samples)
    return found


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
    # A campaign without a storage stack says nothing of stacks.
    if all(s.setting.get("stack", "plain") == "plain" for s in samples):
        keys = [k for k in keys if k != "stack"]
    return keys


def _varying(samples: Sequence[Sample], keys: Sequence[str]) -> list[str]:
    return [k for k in keys if len({s.setting.get(k) for s in samples}) > 1]


def _model_table(samples: Sequence[Sample], keys: Sequence[str]) -> Table:
    header = (*keys, "seeds", "writer stores/s median (min-max)",
              "stall p99 ms median (min-max)", "torn", "stale", "overlapping")  # fmt: skip
    rows = []
    for key, group in _group(samples, keys).items():
        m = [s.metrics for s in group]
        rows.append((*key, str(len(group)), _spread([x["throughput"] for x in m]),
                     _spread([x["stall_p99_ms"] for x in m]), _total(m, "torn"),
                     _total(m, "stale"), _total(m, "overlapping")))  # fmt: skip
    return Table(header, tuple(rows), _align(keys, 6))


def _total(metrics: Sequence[Mapping[str, float]], name: str) -> str:
    return str(sum(int(x[name]) for x in metrics))


def _align(keys: Sequence[str], numbers: int) -> tuple[Literal["l", "r"], ...]:
    sides: list[Literal["l", "r"]] = ["l"] * len(keys)
    sides += ["r"] * numbers
    return tuple(sides)


def _checker_names(samples: Sequence[Sample]) -> list[str]:
    """The stack checkers' counts some sample has, in CHECKERS order."""
    return [name for name in CHECKERS if any(name in s.metrics for s in samples)]


def _checker_cells(group: Sequence[Sample], names: Sequence[str]) -> tuple[str, ...]:
    """Runs whose stack's own checkers found damage / runs checked, then each count's total
    over the runs that had that checker (`-`: none had it)."""
    if not names:
        return ()
    checked = [s.metrics for s in group if "checked" in s.metrics]
    if not checked:
        return ("-",) * (len(names) + 1)
    cells = [f"{_total(checked, 'damaged')}/{len(checked)}"]
    for name in names:
        have = [m for m in checked if name in m]
        cells.append(_total(have, name) if have else "-")
    return tuple(cells)


def _checker_header(names: Sequence[str]) -> tuple[str, ...]:
    if not names:
        return ()
    return ("stack checkers found damage (runs)", *(CHECKERS[n] for n in names))


def _run_table(samples: Sequence[Sample], keys: Sequence[str]) -> Table:
    names = _checker_names(samples)
    header = (*keys, "seeds", "torn/stamped", "tear rate %", "95% CI %", "stale", "overlapping",
              "writer p99 ms median (min-max)", *_checker_header(names))  # fmt: skip
    rows = []
    for key, group in _group(samples, keys).items():
        m = [s.metrics for s in group]
        tears = Tears.pooled(group)
        lo, hi = tears.interval
        rows.append((*key, str(len(group)), f"{tears.torn}/{tears.stamped}",
                     f"{100 * tears.rate:.3g}",
                     f"{100 * lo:.3g}-{100 * hi:.3g}", _total(m, "stale"),
                     _total(m, "overlapping"),
                     _spread([x["stall_p99_ms"] for x in m]),
                     *_checker_cells(group, names)))  # fmt: skip
    return Table(header, tuple(rows), _align(keys, len(header) - len(keys)))


_STACK_KEYS = ("stack", "kernel", "stable_writes")


def _stack_section(samples: Sequence[Sample]) -> list[Block]:
    """Per stack (x kernel x stable_writes where those vary), pooled over the other axes
    and seeds: in how many runs its own checkers found damage, their totals, and the
    oracle's tear rate beside them."""
    stacked = [s for s in samples if "checked" in s.metrics]
    if not stacked:
        return []
    keys = ["stack", *(k for k in _STACK_KEYS[1:] if k in _varying(stacked, _keys(stacked)))]
    names = _checker_names(stacked)
    # Stack-major, so that each stack's kernels sit together, in the order they first came.
    firsts = [list(dict.fromkeys(s.setting.get(k, "-") for s in stacked)) for k in keys]
    groups = sorted(_group(stacked, keys).items(),
                    key=lambda item: [f.index(v) for f, v in zip(firsts, item[0], strict=True)])
    rows = []
    for key, group in groups:
        tears = Tears.pooled(group)
        lo, hi = tears.interval
        rows.append((*key, str(len(group)), *_checker_cells(group, names),
                     f"{tears.torn}/{tears.stamped}",
                     f"{100 * tears.rate:.3g} ({100 * lo:.3g}-{100 * hi:.3g})"))  # fmt: skip
    header = (*keys, "runs", *_checker_header(names), "oracle torn/stamped",
              "tear rate % (95% CI)")  # fmt: skip
    return [
        Heading("Storage stacks: what their own checkers found", 3),
        Paragraph("Runs on a storage stack, pooled per stack (and kernel and stable_writes, "
                  "where they vary) over every other axis and seed (plain runs have no "
                  "checker). Totals are in each checker's own unit: "
                  "btrfs scrub errors, md mismatch_cnt in sectors, dm-integrity blocks that "
                  "failed their tag, fscks not clean, 4 KiB pages that differ between a "
                  "mirror's legs (our comparison, not the stack's checker)."),
        Table(header, tuple(rows), _align(keys, len(header) - len(keys))),
    ]


_CRASH_METRICS = ("states_checked", "ledger_violations", "fsck_failures", "torn_unexplained")


def _crash_table(samples: Sequence[Sample], keys: Sequence[str]) -> Table:
    header = (*keys, "seeds", *(n.replace("_", " ") for n in _CRASH_METRICS))
    rows = [(*key, str(len(group)), *(_total([s.metrics for s in group], n)
                                       for n in _CRASH_METRICS))
            for key, group in _group(samples, keys).items()]  # fmt: skip
    return Table(header, tuple(rows), _align(keys, 5))


_TABLES = {"model": _model_table, "run": _run_table, "crash": _crash_table}
_TITLES = {"model": "Page-forking model cells", "run": "Real-kernel cells (`nbdfork run`)",
           "crash": "Crash cells (`nbdfork crash`)"}  # fmt: skip


def _kind_section(kind: str, samples: Sequence[Sample]) -> list[Block]:
    keys = _keys(samples)
    table = _TABLES[kind]
    blocks: list[Block] = [Heading(_TITLES[kind]), Paragraph("Every setting (all axes but the "
                                                             "seed):"), table(samples, keys)]
    varying = _varying(samples, keys)
    for axis in varying if len(varying) > 1 else ():
        blocks += [Heading(f"By {axis} (pooled over the other axes)", 3), table(samples, [axis])]
    if kind == "run":
        blocks += _stack_section(samples)
    return blocks


_ALT = {TEAR_PLOT: "torn / stamped pages per setting, Wilson 95% intervals, seeds pooled",
        MODEL_PLOT: "writer throughput and stall p99 of every seed, per setting"}
_DISCIPLINES = (
    ("no stable pages", "0", "none"),
    ("stable pages (the writer waits)", "1", "stable"),
    ("page forking (a copy is written)", None, "fork"),
    ("page forking, copies sent unordered", None, "fork-unordered"),
)


def _kernel_cells(samples: Sequence[Sample]) -> tuple[str, str, str, str]:
    if not samples:
        return "-", "-", "-", "-"
    m = [s.metrics for s in samples]
    tears = Tears.pooled(samples)
    lo, hi = tears.interval
    rate = f"{100 * tears.rate:.3g} ({100 * lo:.3g}-{100 * hi:.3g})" if tears.stamped else "-"
    return (str(len(samples)), f"{tears.torn}/{tears.stamped}", rate,
            _spread([x["stall_p99_ms"] for x in m]))  # fmt: skip


def _model_cells(samples: Sequence[Sample]) -> tuple[str, str, str]:
    if not samples:
        return "-", "-", "-"
    m = [s.metrics for s in samples]
    return str(len(samples)), _total(m, "torn"), _spread([x["stall_p99_ms"] for x in m])


def _beside_section(runs: Sequence[Sample], models: Sequence[Sample]) -> list[Block]:
    """The model's policies beside the kernel's stable_writes settings, pooled over the rest."""
    rows = []
    for name, stable_writes, policy in _DISCIPLINES:
        kernel = [s for s in runs if s.setting.get("stable_writes") == stable_writes]
        model = [s for s in models if s.setting.get("policy") == policy]
        if not kernel and not model:
            continue
        rows.append((name, f"stable_writes={stable_writes}" if stable_writes else "-",
                     *_kernel_cells(kernel), policy, *_model_cells(model)))  # fmt: skip
    header = ("writeback", "kernel", "configurations", "torn/stamped", "tear rate % (95% CI)",
              "writer p99 ms median (min-max)", "model policy", "runs", "torn",
              "stall p99 ms median (min-max)")  # fmt: skip
    return [
        Heading("The model beside the kernel"),
        Paragraph("Each writeback discipline as the kernel runs it (`stable_writes`) and as "
                  "the page-forking model runs it (`policy`), pooled over every other axis "
                  "and seed. The kernel has no page forking; the model's fork rows show what "
                  "it would cost and whether its copies, sent in any order, stay whole."),
        Table(header, tuple(rows), ("l", "l", "r", "r", "r", "r", "l", "r", "r", "r")),
    ]  # fmt: skip


def _cells_table(report: CampaignReport) -> Table:
    rows = tuple(
        (c.id, c.status, "-" if c.duration_s is None else f"{c.duration_s:.1f}",
         "-" if c.exit_status is None else str(c.exit_status), c.node or "-",
         (c.error or "")[:120])
        for c in report.cells
    )  # fmt: skip
    return Table(("cell", "status", "seconds", "exit", "node", "error"), rows,
                 ("l", "l", "r", "r", "l", "l"))  # fmt: skip


def campaign_blocks(report: CampaignReport, found: Collected, plots: Sequence[str]) -> list[Block]:
    """The merged report as document blocks (the model every nbdfork report renders through)."""
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items() if v)
    blocks: list[Block] = [
        Heading(f"Campaign {report.name}", 1),
        Paragraph(f"Seed {report.seed}, {len(report.cells)} cells ({counts}); executor "
                  f"{report.executor}, up to {report.jobs} at once{_packed(report)}; "
                  f"spec {code(report.spec_hash[:12])}; "
                  f"nbdfork {report.version}. Medians with (min-max) are over seeds; verdict "
                  "counts are totals; tear-rate intervals are Wilson 95% on torn/stamped pages "
                  "pooled over seeds."),
    ]  # fmt: skip
    for kind in ("run", "model", "crash"):
        if found.samples.get(kind):
            blocks += _kind_section(kind, found.samples[kind])
    if found.samples.get("run") and found.samples.get("model"):
        blocks += _beside_section(found.samples["run"], found.samples["model"])
    blocks += [Image(name, _ALT.get(name, name)) for name in plots]
    if found.unreadable:
        blocks += [Heading("Cells whose report could not be read"),
                   Table(("cell", "problem"), tuple(found.unreadable.items()), ("l", "l"))]
    return [*blocks, Heading("Cells"), _cells_table(report)]


def _packed(report: CampaignReport) -> str:
    if report.cpus is None or report.memory is None:
        return ""
    return f" packed into {report.cpus} CPUs and {report.memory / (1 << 30):.1f} GiB"


def render(directory: Path, report: CampaignReport) -> list[Path]:
    """report.md, report.html and plots from `report` and the done cells' own reports; the
    files written."""
    found = collect(directory, report)
    plots = _plots(directory, found.samples)
    blocks = campaign_blocks(report, found, [p.name for p in plots])
    md, page = write_document(directory, blocks, f"nbdfork campaign {report.name}")
    return [*plots, md, page]


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
        tears = Tears.pooled(group)
        (lo, hi), rate = tears.interval, tears.rate
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
