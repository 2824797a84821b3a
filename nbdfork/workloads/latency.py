"""Writer latency: per-operation samples in nanoseconds, summarised as percentiles and a histogram.

The histogram has fixed log-spaced edges (1 us .. 10 s, ten bins per decade) so that runs,
filesystems and stable_writes settings can be overlaid without rebinning.
"""

from __future__ import annotations

from array import array

import numpy as np
import numpy.typing as npt

__all__ = ["HIST_EDGES_MS", "LatencySamples", "histogram", "percentiles"]

HIST_EDGES_MS: npt.NDArray[np.float64] = np.logspace(-3, 4, 71)
"""Histogram bin edges in milliseconds: 10**-3 .. 10**4, ten bins per decade."""


class LatencySamples:
    """An append-only record of one thread's operation latencies (ns); cheap to append to."""

    def __init__(self) -> None:
        self._ns = array("q")

    def add(self, nanoseconds: int) -> None:
        """Record one operation."""
        self._ns.append(nanoseconds)

    def __len__(self) -> int:
        return len(self._ns)

    def as_array(self) -> npt.NDArray[np.int64]:
        """The samples as an int64 array (a copy)."""
        return np.frombuffer(self._ns.tobytes(), dtype=np.int64).copy()

    @staticmethod
    def merged(parts: list[LatencySamples]) -> npt.NDArray[np.int64]:
        """Every thread's samples in one array."""
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([p.as_array() for p in parts])


def percentiles(samples_ns: npt.NDArray[np.int64]) -> dict[str, float | None]:
    """p50/p99/p999/max/mean in milliseconds (None for every key when there are no samples)."""
    keys = ("p50", "p99", "p999", "max", "mean")
    if samples_ns.size == 0:
        return dict.fromkeys(keys)
    ms = samples_ns.astype(np.float64) / 1e6
    p50, p99, p999 = np.percentile(ms, [50.0, 99.0, 99.9])
    values = (p50, p99, p999, ms.max(), ms.mean())
    return {k: round(float(v), 6) for k, v in zip(keys, values, strict=True)}


def histogram(samples_ns: npt.NDArray[np.int64]) -> dict[str, list[float] | list[int]]:
    """Counts per HIST_EDGES_MS bin; samples outside the range land in the first or last bin."""
    lo, hi = HIST_EDGES_MS[0], HIST_EDGES_MS[-1]
    ms = np.clip(samples_ns.astype(np.float64) / 1e6, lo, np.nextafter(hi, 0.0))
    counts, _ = np.histogram(ms, bins=HIST_EDGES_MS)
    return {
        "edges_ms": [float(f"{e:.6g}") for e in HIST_EDGES_MS],
        "counts": [int(c) for c in counts],
    }
