"""The report's PNG plots, drawn with matplotlib's Agg renderer and no pyplot global state.

This module owns the figures: writer latency CDF (per workload, one curve per fs x
stable_writes), torn writes over time per run, where in the page tears start, kernels side by
side, and the damage each storage stack's own checkers found (stack x kernel). Each
`plot_*` returns the file it wrote, or None when there is nothing to draw.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from nbdfork.experiments.matrix.events import PAGE_SIZE, SECTOR_SIZE, TearSamples
from nbdfork.experiments.matrix.findings import ordered, workloads
from nbdfork.experiments.matrix.schema import Histogram, RunResult
from nbdfork.experiments.matrix.stacktable import (
    Setting,
    setting_of,
    settings,
    stack_runs,
    verdict_cell,
)
from nbdfork.experiments.stacks.summary import own_damage

__all__ = [
    "KERNELS",
    "LATENCY_CDF",
    "PLOT_FILES",
    "STACK_CHECKERS",
    "TEAR_OFFSETS",
    "TORN_OVER_TIME",
    "latency_cdf",
    "plot_kernels",
    "plot_stack_checkers",
    "stack_damage",
    "plot_tear_offsets",
    "plot_torn_over_time",
    "plot_writer_latency_cdf",
]

KERNELS = "kernels.png"
LATENCY_CDF = "writer_latency_cdf.png"
TORN_OVER_TIME = "torn_over_time.png"
TEAR_OFFSETS = "tear_offsets.png"
STACK_CHECKERS = "stack_checkers.png"
PLOT_FILES = (LATENCY_CDF, TORN_OVER_TIME, TEAR_OFFSETS, KERNELS, STACK_CHECKERS)

_DPI = 110
_LINESTYLE = {0: "-", 1: "--"}  # stable_writes: solid off, dashed on
_PERCENTILES = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
_MAX_STEPS = 4000  # points per torn-over-time curve; more is invisible and slow to draw
_OFFSET_BIN = 64


def _colors(names: Sequence[str]) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI)
    return path


def latency_cdf(hist: Histogram) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(latency ms, fraction of writes at most that slow) at each bin's upper edge."""
    counts = np.asarray(hist.counts, dtype=np.float64)
    cdf = np.cumsum(counts) / counts.sum()
    return np.asarray(hist.edges_ms[1:], dtype=np.float64), cdf


def _log_ticks(ax: Axes, lo: float, hi: float) -> None:
    # Plain numbers; a narrow range gets 1-2-5 ticks, since a single decade tick says little
    # and matplotlib's own minor labels (2x10^-1 ...) overlap.
    narrow = hi / lo < 10**2.5
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))


def _cdf_panel(ax: Axes, workload: str, runs: Sequence[RunResult], colors: dict[str, str]) -> None:
    lo, hi = np.inf, 0.0
    for run in runs:
        x, y = latency_cdf(run.writer_latency_hist)
        # Log axes cannot show 0 ms, and a CDF of exactly 1 sits at infinity on a logit axis.
        keep = (x > 0) & (y > 0) & (y < 1)
        ax.plot(x[keep], y[keep], color=colors[run.fs], linestyle=_LINESTYLE[run.stable_writes],
                label=f"{run.fs} stable_writes={run.stable_writes}")
        if keep.any():
            lo, hi = min(lo, float(x[keep].min())), max(hi, float(x[keep].max()))
    ax.set_xscale("log")
    if hi > 0:
        _log_ticks(ax, lo, hi)
    ax.xaxis.set_minor_formatter(NullFormatter())
    # Logit stretches both ends, so p50 and p99.9 are both readable on one axis.
    ax.set_yscale("logit")
    ax.set_yticks(_PERCENTILES, [f"p{100 * p:g}" for p in _PERCENTILES])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title(workload)
    ax.set_xlabel("writer latency per write (ms)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")


def plot_writer_latency_cdf(runs: Sequence[RunResult], path: Path) -> Path | None:
    """Writer latency CDF, one panel per workload, one curve per (fs, stable_writes)."""
    with_data = [r for r in runs if r.completed and r.writer_latency_hist.total > 0]
    names = workloads(with_data)
    if not names:
        return None
    fig = Figure(figsize=(5.2 * len(names), 4.4), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False, sharey=True)[0]
    colors = _colors(ordered(r.fs for r in with_data))
    for ax, workload in zip(axes, names, strict=True):
        _cdf_panel(ax, workload, [r for r in with_data if r.workload == workload], colors)
    axes[0].set_ylabel("fraction of writes at most this slow")
    fig.suptitle("Writer latency CDF: stable_writes=1 (dashed) vs 0 (solid)")
    return _save(fig, path)


def _steps(times: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    # Cumulative count at each event, from 0 at device start; thinned evenly when there are
    # more steps than pixels.
    x = np.concatenate(([0.0], times))
    y = np.arange(0, times.size + 1, dtype=np.int64)
    if x.size <= _MAX_STEPS:
        return x, y
    pick = np.unique(np.linspace(0, x.size - 1, _MAX_STEPS).astype(np.int64))
    return x[pick], y[pick]


def plot_torn_over_time(
    runs: Sequence[RunResult], tears: Mapping[str, TearSamples], path: Path
) -> Path | None:
    """Cumulative torn writes against time since device start, one curve per run."""
    with_data = [r for r in runs if len(tears.get(r.id, TearSamples.empty())) > 0]
    if not with_data:
        return None
    fig = Figure(figsize=(8.5, 4.6), layout="constrained")
    ax = fig.subplots()
    colors = _colors([r.id for r in with_data])
    for run in with_data:
        x, y = _steps(tears[run.id].times_s)
        ax.step(x, y, where="post", color=colors[run.id],
                linestyle=_LINESTYLE[run.stable_writes], label=f"{run.id} ({y[-1]})")
    ax.set_xlabel("seconds since device start")
    ax.set_ylabel("torn writes (cumulative)")
    ax.set_xlim(left=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Torn writes over time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_tear_offsets(
    runs: Sequence[RunResult], tears: Mapping[str, TearSamples], path: Path
) -> Path | None:
    """Histogram of where tears start in the page, stacked by workload, sector grid drawn."""
    by_workload: dict[str, list[npt.NDArray[np.int64]]] = {}
    for run in runs:
        offsets = tears.get(run.id, TearSamples.empty()).offsets
        by_workload.setdefault(run.workload, []).append(offsets[offsets >= 0])
    names = [w for w in workloads(runs) if sum(a.size for a in by_workload[w]) > 0]
    if not names:
        return None
    fig = Figure(figsize=(8.5, 4.2), layout="constrained")
    ax = fig.subplots()
    data = [np.concatenate(by_workload[w]) for w in names]
    bins = list(range(0, PAGE_SIZE + _OFFSET_BIN, _OFFSET_BIN))
    ax.hist(data, bins=bins, stacked=True, label=names)
    ax.set_xticks(np.arange(0, PAGE_SIZE + 1, SECTOR_SIZE))
    ax.set_xlim(0, PAGE_SIZE)
    ax.grid(True, axis="x", alpha=0.5)
    ax.set_xlabel(f"first mismatching byte within the 4 KiB page ({_OFFSET_BIN}-byte bins, "
                  f"grid at {SECTOR_SIZE}-byte sectors)")
    ax.set_ylabel("torn writes")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Where tears start")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_kernels(runs: Sequence[RunResult], path: Path) -> Path | None:
    """Kernels side by side: torn per 1,000 stamped pages, one panel per workload (the
    question it asks), a bar per kernel for each fs x stable_writes; skipped runs show as
    gaps. None with fewer than two kernels."""
    kernels = ordered(r.kernel for r in runs)
    names = workloads(runs)
    if len(kernels) < 2 or not names:
        return None
    fig = Figure(figsize=(4.2 * len(names), 3.8), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    colors = _colors(kernels)
    for ax, workload in zip(axes, names, strict=True):
        mine = [r for r in runs if r.workload == workload]
        groups = ordered(f"{r.fs} sw={r.stable_writes}" for r in mine)
        width, top = 0.8 / len(kernels), 0.0
        for k, kernel in enumerate(kernels):
            rates = []
            for group in groups:
                run = next((r for r in mine if r.kernel == kernel
                            and f"{r.fs} sw={r.stable_writes}" == group), None)  # fmt: skip
                ok = run is not None and run.completed and run.stamped_pages > 0
                rates.append(1000 * run.torn / run.stamped_pages if ok and run else np.nan)
            xs = [i + (k - (len(kernels) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(xs, rates, width=width, color=colors[kernel], label=kernel)
            for x, rate in zip(xs, rates, strict=True):  # a zero and a skip must not look alike
                label = "skipped" if np.isnan(rate) else f"{rate:.1f}"
                ax.annotate(label, (x, 0 if np.isnan(rate) else rate), ha="center",
                            va="bottom", fontsize=6, rotation=90)  # fmt: skip
            top = max([top, *[r for r in rates if not np.isnan(r)]])
        ax.set_ylim(0, max(1.0, top * 1.3))
        ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
        ax.set_title(workload)
        ax.set_ylabel("torn per 1,000 stamped pages")
    axes[0].legend(fontsize="small")
    return _save(fig, path)


def stack_damage(run: RunResult | None) -> float:
    """What the run's stack's own checkers counted (nan: the run was not measured)."""
    if run is None or not run.completed or run.checks is None:
        return float("nan")
    return float(own_damage(run.checks))


# The cells where the stack's own checkers counted nothing, by what else is known.
_NOT_MEASURED, _CLEAN, _UNSEEN = 0, 1, 2
_QUIET = ListedColormap(["#e6e6e6", "#cde8c8", "#f3c46b"])
_QUIET_LABELS = ("not measured", "clean", "legs differ or a checker failed; its checkers: 0")
# Reds from a visible pink up, so that a count of 1 never looks like an empty cell.
_DAMAGE = ListedColormap(colormaps["Reds"](np.linspace(0.3, 1.0, 256)))


def _quiet(run: RunResult | None) -> int:
    if run is None or not run.completed or run.checks is None:
        return _NOT_MEASURED
    unseen = bool(run.checks.mirror_diff_pages) or bool(run.checks.errors)
    return _UNSEEN if unseen else _CLEAN


def _row_label(setting: Setting) -> str:
    stack, fs, workload = setting
    label = f"{stack} {workload}" if fs == stack else f"{stack} {fs} {workload}"
    return "\n".join(textwrap.wrap(label, 40))


def _damage_panel(
    ax: Axes, grid: Sequence[Sequence[RunResult | None]], norm: LogNorm, kernels: Sequence[str]
) -> None:
    values = np.array([[stack_damage(run) for run in row] for row in grid], dtype=np.float64)
    quiet = np.array([[_quiet(run) for run in row] for row in grid], dtype=np.float64)
    ax.imshow(np.ma.masked_where(values > 0, quiet), cmap=_QUIET, vmin=-0.5, vmax=2.5,
              aspect="auto")  # fmt: skip
    ax.imshow(np.ma.masked_where(~(values > 0), values), cmap=_DAMAGE, norm=norm, aspect="auto")
    dark = np.sqrt(norm.vmax or 1.0)
    for (i, j), run in np.ndenumerate(np.array(grid, dtype=object)):
        text = "\n".join(textwrap.wrap(verdict_cell(run), 18))
        ax.text(j, i, text, ha="center", va="center", fontsize=7,
                color="white" if values[i, j] > dark else "black")  # fmt: skip
    ax.set_xticks(range(len(kernels)), kernels, rotation=15, ha="right", fontsize=8)
    ax.set_xticks(np.arange(len(kernels) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(grid) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="minor", length=0)


def plot_stack_checkers(runs: Sequence[RunResult], path: Path) -> Path | None:
    """A heatmap per stable_writes setting (side by side): one row per stack x fs x workload,
    one column per kernel, coloured by the damage the stack's own checkers counted (its own
    units, log scale), else green (clean), amber (legs differ or a checker failed while the
    others counted nothing) or grey (not measured), each cell labelled with the verdict.
    None when no run is on a stack."""
    mine = stack_runs(runs)
    if not mine:
        return None
    rows, kernels = settings(mine), ordered(r.kernel for r in mine)
    panels = sorted({r.stable_writes for r in mine})
    found = {(setting_of(r), r.stable_writes, r.kernel): r for r in mine}
    top = max([stack_damage(r) for r in mine if stack_damage(r) > 0], default=1.0)
    norm = LogNorm(vmin=1.0, vmax=max(top, 10.0))
    fig = Figure(figsize=(3.0 + 2.2 * len(kernels) * len(panels), 2.0 + 0.6 * len(rows)),
                 layout="constrained")  # fmt: skip
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, sw in zip(axes, panels, strict=True):
        grid = [[found.get((s, sw, k)) for k in kernels] for s in rows]
        _damage_panel(ax, grid, norm, kernels)
        ax.set_title(f"stable_writes={sw} (the run's, on the top device)", fontsize=9)
    axes[0].set_yticks(range(len(rows)), [_row_label(s) for s in rows], fontsize=8)
    fig.colorbar(ScalarMappable(norm=norm, cmap=_DAMAGE), ax=list(axes),
                 label="found by the stack's own checkers (their units)")  # fmt: skip
    handles = [Patch(color=_QUIET(i), label=label) for i, label in enumerate(_QUIET_LABELS)]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle("Damage each stack's own checkers found, per kernel")
    return _save(fig, path)
