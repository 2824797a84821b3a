"""The report's PNG plots, drawn with matplotlib's Agg renderer and no pyplot global state.

This module owns the figures: writer latency CDF (per workload, one curve per fs x
stable_writes), torn writes over time per run, and where in the page tears start. Each
`plot_*` returns the file it wrote, or None when there is nothing to draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from nbdfork.experiments.matrix.events import PAGE_SIZE, SECTOR_SIZE, TearSamples
from nbdfork.experiments.matrix.findings import ordered, workloads
from nbdfork.experiments.matrix.schema import Histogram, RunResult

__all__ = [
    "KERNELS",
    "LATENCY_CDF",
    "PLOT_FILES",
    "TEAR_OFFSETS",
    "TORN_OVER_TIME",
    "latency_cdf",
    "plot_kernels",
    "plot_tear_offsets",
    "plot_torn_over_time",
    "plot_writer_latency_cdf",
]

KERNELS = "kernels.png"
LATENCY_CDF = "writer_latency_cdf.png"
TORN_OVER_TIME = "torn_over_time.png"
TEAR_OFFSETS = "tear_offsets.png"
PLOT_FILES = (LATENCY_CDF, TORN_OVER_TIME, TEAR_OFFSETS, KERNELS)

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
