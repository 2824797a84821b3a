"""The sweep's results reduced to rows: one per (device setting, policy), medians over seeds,
plus fork-vs-stable and fork-vs-fork-unordered ratios per device setting.

Rates and latencies are medians over the seeds (report.json keeps every run); verdict counts
are totals over the seeds, so a violation seen under one seed is never hidden by a median.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from nbdfork.experiments.model.metrics import percentiles
from nbdfork.experiments.model.run import RunResult
from nbdfork.experiments.model.schema import PolicyName, PolicyRatio, TableRow

__all__ = ["ratios", "rows"]


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _p(samples: Sequence[Sequence[float]], key: str) -> float:
    """The median over runs of one percentile of each run's samples (seconds -> ms)."""
    return _median([percentiles(s)[key] or 0.0 for s in samples])


def _row(group: Sequence[RunResult]) -> TableRow:
    spec = group[0].spec
    stalls = [r.stall_ms() for r in group]
    caches = [r.phase.cache for r in group]
    trips = [r.phase.round_trips for r in group]
    deferrals = [c.deferral_s for c in caches]
    verdicts = [r.verdicts for r in group]
    throughputs = [r.throughput for r in group]
    return TableRow(
        latency_ms=spec.latency * 1e3, reorder=spec.reorder.describe(),
        policy=spec.policy.value, runs=len(group), throughput=_median(throughputs),
        throughput_min=min(throughputs), throughput_max=max(throughputs),
        p50_ms=_median([s["p50"] for s in stalls]), p99_ms=_median([s["p99"] for s in stalls]),
        p999_ms=_median([s["p999"] for s in stalls]), max_ms=max(s["max"] for s in stalls),
        copies=_median([c.copies for c in caches]),
        bytes_copied=_median([c.bytes_copied for c in caches]),
        fork_bytes_peak=max(c.fork_bytes_peak for c in caches),
        deferrals=_median([c.deferrals for c in caches]),
        deferral_p50_ms=_p(deferrals, "p50"), deferral_p99_ms=_p(deferrals, "p99"),
        write_p50_ms=_p(trips, "p50"), write_p99_ms=_p(trips, "p99"),
        in_flight_peak=max(c.in_flight_per_block_peak for c in caches),
        fsyncs=_median([len(r.phase.fsyncs) for r in group]),
        fsync_p50_ms=_p([r.phase.fsyncs for r in group], "p50"),
        fsync_p99_ms=_p([r.phase.fsyncs for r in group], "p99"),
        writes=_median([v.writes for v in verdicts]),
        stamped_pages=_median([v.stamped_pages for v in verdicts]),
        torn=sum(v.torn for v in verdicts), stale=sum(v.stale for v in verdicts),
        overlapping=sum(v.overlapping for v in verdicts),
    )  # fmt: skip


def rows(results: Sequence[RunResult]) -> list[TableRow]:
    """One row per (latency, reorder, policy), in the order the sweep ran them."""
    groups: dict[tuple[float, str, str], list[RunResult]] = {}
    for result in results:
        s = result.spec
        groups.setdefault((s.latency, s.reorder.describe(), s.policy.value), []).append(result)
    return [_row(group) for group in groups.values()]


def _safe(numerator: float, denominator: float) -> float | None:
    """numerator / denominator; None (infinitely more) when the denominator is zero."""
    return numerator / denominator if denominator > 0 else None


def ratios(table: Sequence[TableRow], a: PolicyName, b: PolicyName) -> list[PolicyRatio]:
    """`a` against `b` at every device setting where both ran."""
    by_key = {(r.latency_ms, r.reorder, r.policy): r for r in table}
    out: list[PolicyRatio] = []
    for row in table:
        other = by_key.get((row.latency_ms, row.reorder, b))
        if row.policy != a or other is None:
            continue
        out.append(PolicyRatio(
            latency_ms=row.latency_ms, reorder=row.reorder, a=a, b=b,
            throughput_ratio=_safe(row.throughput, other.throughput),
            p99_ratio=_safe(other.p99_ms, row.p99_ms), p999_ratio=_safe(other.p999_ms, row.p999_ms),
        ))  # fmt: skip
    return out
