"""Measures every report shares: counts, latency percentiles, histograms, JSON values.

Kept apart from any one report's schema so that each experiment's report (run, crash, model,
campaign) builds on them without importing another experiment.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, TypeAlias

import msgspec

from nbdfork.report.codec import Record

__all__ = ["Count", "Histogram", "JSONValue", "LatencySummary", "ServiceTime"]

JSONValue: TypeAlias = (
    bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None
)
Count = Annotated[int, msgspec.Meta(ge=0)]


class LatencySummary(Record, frozen=True, kw_only=True):
    """Per-write latency percentiles in milliseconds; None when nothing was measured."""

    p50: float | None
    p99: float | None
    p999: float | None
    max: float | None

    @classmethod
    def empty(cls) -> LatencySummary:
        return cls(p50=None, p99=None, p999=None, max=None)


class ServiceTime(Record, frozen=True, kw_only=True):
    """The device's own WRITE service time (arrival to reply), per connection, in ms."""

    count: Count = 0
    p50: float | None = None
    p99: float | None = None
    p999: float | None = None
    max: float | None = None


class Histogram(Record, frozen=True, kw_only=True):
    """Writer latency histogram: `counts[i]` writes took [edges_ms[i], edges_ms[i+1]) ms."""

    edges_ms: tuple[float, ...] = ()
    counts: tuple[Count, ...] = ()

    def __post_init__(self) -> None:
        # An empty histogram (no edges, no counts) is what a run without writes records.
        edges, counts = self.edges_ms, self.counts
        if (edges or counts) and len(edges) != len(counts) + 1:
            raise ValueError(f"edges_ms: expected len(counts)+1 = {len(counts) + 1} edges, "
                             f"got {len(edges)}")  # fmt: skip
        if any(b < a for a, b in pairwise(edges)):
            raise ValueError("edges_ms: edges must not decrease")

    @property
    def total(self) -> int:
        return sum(self.counts)
