"""The model report's plots (matplotlib Agg, no pyplot state): the writer stall CDF per policy
and per device setting, and writer throughput against device latency per policy.

Both are drawn from report.json alone (each run's writer_latency_hist, the summary table), so
`nbdfork report OUT` redraws them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from nbdfork.experiments.model.schema import ModelRun, TableRow

__all__ = ["STALL_CDF", "THROUGHPUT", "plot_stall_cdf", "plot_throughput"]

STALL_CDF = "stall_cdf.png"
THROUGHPUT = "throughput_vs_latency.png"
_DPI = 110
_COLORS = {"none": "C3", "stable": "C0", "fork": "C2", "fork-unordered": "C1"}
_STYLES = ("-", "--", ":", "-.")


def _cdf(runs: Sequence[ModelRun]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(stall ms, fraction of stores at most that slow) over every run in `runs`, from their
    writer_latency_hist (bins of equal upper edges pooled)."""
    uppers = np.concatenate([np.asarray(r.writer_latency_hist.edges_ms[1:]) for r in runs])
    weights = np.concatenate([np.asarray(r.writer_latency_hist.counts, dtype=np.float64)
                              for r in runs])  # fmt: skip
    x, where = np.unique(uppers, return_inverse=True)
    counts = np.zeros(len(x))
    np.add.at(counts, where, weights)
    cdf = np.cumsum(counts) / max(counts.sum(), 1.0)
    return x, cdf


def _setting(run: ModelRun) -> tuple[float, str]:
    return (run.latency_ms, run.reorder)


def _cdf_panel(ax: Axes, title: str, runs: Sequence[ModelRun]) -> None:
    for policy in dict.fromkeys(r.policy for r in runs):
        x, y = _cdf([r for r in runs if r.policy == policy])
        keep = (y > 0) & (y < 1)
        ax.plot(x[keep], y[keep], color=_COLORS.get(policy), label=policy)
    ax.set_xscale("log")
    ax.set_yscale("logit")
    ax.set_yticks([0.1, 0.5, 0.9, 0.99, 0.999], ["p10", "p50", "p90", "p99", "p99.9"])
    ax.set_title(f"device {title}")
    ax.set_xlabel("writer stall per store (ms)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def plot_stall_cdf(runs: Sequence[ModelRun], path: Path) -> Path | None:
    """A panel per device setting (latencies across, reorderings down), a curve per policy."""
    with_data = [r for r in runs if r.writer_latency_hist.total]
    latencies = sorted({r.latency_ms for r in with_data})
    reorders = list(dict.fromkeys(r.reorder for r in with_data))
    if not with_data:
        return None
    fig = Figure(figsize=(4.4 * len(latencies), 3.8 * len(reorders)), layout="constrained")
    grid = fig.subplots(len(reorders), len(latencies), squeeze=False, sharey=True)
    for row, reorder in zip(grid, reorders, strict=True):
        for ax, latency in zip(row, latencies, strict=True):
            panel = [r for r in with_data if _setting(r) == (latency, reorder)]
            _cdf_panel(ax, f"{latency:g} ms, {reorder}", panel)
        row[0].set_ylabel("fraction of stores at most this slow")
    fig.savefig(path, dpi=_DPI)
    return path


def plot_throughput(table: Sequence[TableRow], path: Path) -> Path | None:
    """Writer stores/s against device latency: one line per policy and reordering."""
    if not table:
        return None
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    reorders = list(dict.fromkeys(r.reorder for r in table))
    for policy in dict.fromkeys(r.policy for r in table):
        for style, reorder in zip(_STYLES * len(reorders), reorders, strict=False):
            line = sorted((r for r in table if r.policy == policy and r.reorder == reorder),
                          key=lambda r: r.latency_ms)  # fmt: skip
            x = [r.latency_ms for r in line]
            y = np.asarray([r.throughput for r in line])
            err = [y - [r.throughput_min for r in line], [r.throughput_max for r in line] - y]
            ax.errorbar(x, y, yerr=err, color=_COLORS.get(policy), linestyle=style,
                        marker="o", capsize=3, label=f"{policy} ({reorder})")  # fmt: skip
    ax.set_xscale("log")
    ticks = sorted({r.latency_ms for r in table})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("device write latency, median (ms)")
    ax.set_ylabel("writer stores per second")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=_DPI)
    return path
