"""Numbers of one run: latency percentiles and log-binned histograms (numpy), in milliseconds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nbdfork.report.measures import Histogram, LatencySummary

__all__ = ["HIST_EDGES_MS", "histogram", "latency_summary", "percentiles"]

HIST_EDGES_MS: tuple[float, ...] = tuple(float(x) for x in np.logspace(-3, 4, 141))
"""Histogram bin edges: 1 µs to 10 s, 20 bins per decade."""


def percentiles(samples_s: Sequence[float]) -> dict[str, float | None]:
    """p50, p99, p99.9 and max of `samples_s` (seconds) in ms; None for no samples."""
    keys = ("p50", "p99", "p999", "max")
    if not samples_s:
        return dict.fromkeys(keys)
    values = np.percentile(np.asarray(samples_s, dtype=np.float64) * 1e3, [50, 99, 99.9, 100])
    return {k: round(float(v), 6) for k, v in zip(keys, values, strict=True)}


def latency_summary(samples_s: Sequence[float]) -> LatencySummary:
    """The percentiles of `samples_s` as report.json holds them."""
    p = percentiles(samples_s)
    return LatencySummary(p50=p["p50"], p99=p["p99"], p999=p["p999"], max=p["max"])


def histogram(samples_s: Sequence[float]) -> Histogram:
    """Counts of `samples_s` in HIST_EDGES_MS bins (values outside go to the end bins)."""
    edges = np.asarray(HIST_EDGES_MS)
    ms = np.clip(np.asarray(samples_s, dtype=np.float64) * 1e3, edges[0], edges[-1])
    counts, _ = np.histogram(ms, bins=edges)
    return Histogram(edges_ms=tuple(round(e, 9) for e in HIST_EDGES_MS),
                     counts=tuple(int(c) for c in counts))  # fmt: skip
