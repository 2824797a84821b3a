"""The page-forking model's report: `OUT/report.json` (`nbdfork.model-report/1`), defined once.

These msgspec structures are what `nbdfork model` builds from its runs (run.py, summary.py,
compare.py), what report.py encodes into report.json and renders report.md, report.html and
the plots from, and what `load_model_report` decodes and validates: a bad file is one
`ReportError` naming the file and the field (`report.json: runs[0].torn: expected int >= 0`).

The JSON field names and shapes are those of the first release, so existing reports load.
Latency summaries and histograms are the run report's own (nbdfork.experiments.matrix.schema).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from nbdfork.report.codec import REPORT_FILE, Record, read_json
from nbdfork.report.measures import Count, Histogram, LatencySummary

__all__ = [
    "MODEL_SCHEMA",
    "REPORT_FILE",
    "KernelRow",
    "ModelDevice",
    "ModelPlan",
    "ModelReport",
    "ModelRun",
    "ModelWorkload",
    "PolicyName",
    "PolicyRatio",
    "TableRow",
    "WritebackSettings",
    "load_model_report",
]

MODEL_SCHEMA = "nbdfork.model-report/1"

PolicyName = Literal["none", "stable", "fork", "fork-unordered"]
"""A writeback policy as named on the command line (nbdfork.experiments.model.policy.Policy)."""
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
"""A duration (ms), a rate, a median of counts, a ratio: never negative."""


class ModelWorkload(Record, frozen=True, kw_only=True):
    """What the writers did (nbdfork.experiments.model.writer.Workload)."""

    writers: Annotated[int, msgspec.Meta(ge=1)]
    pages_per_writer: Annotated[int, msgspec.Meta(ge=1)]
    think_ms: NonNegative  # mean pause between two stores of one writer
    fsync_every: Count  # a writer fsyncs its pages every this many stores (0: never)


class WritebackSettings(Record, frozen=True, kw_only=True):
    """The writeback knobs (nbdfork.experiments.model.writeback.WritebackTuning), in ms."""

    dirty_expire_ms: NonNegative
    writeback_interval_ms: NonNegative
    send_pace_ms: NonNegative
    queue_depth: Annotated[int, msgspec.Meta(ge=1)]


class ModelDevice(Record, frozen=True, kw_only=True):
    """One run's emulated device: its median write latency, reordering, seed and parameters."""

    latency_ms: NonNegative
    reorder: str  # in the --reorder syntax: off, jitter:0.9, lognormal:0.5, window:8
    device_seed: int
    nbdkit_threads: Annotated[int, msgspec.Meta(ge=1)]
    params: dict[str, str] = msgspec.field(default_factory=dict)  # the plugin's parameters


class ModelPlan(Record, frozen=True, kw_only=True):
    """The sweep (experiments.model.sweep.SweepPlan): every policy x latency x reordering."""

    policies: tuple[PolicyName, ...]
    latencies_ms: tuple[NonNegative, ...]
    reorders: tuple[str, ...]
    seed: int
    seeds: Annotated[int, msgspec.Meta(ge=1)]  # repetitions per setting
    seconds: NonNegative  # writing time per run
    nbdkit_threads: Annotated[int, msgspec.Meta(ge=1)]
    workload: ModelWorkload
    writeback: WritebackSettings


class ModelRun(Record, frozen=True, kw_only=True):
    """One run: one policy on one device setting and seed; the client's measurements and the
    device oracle's verdicts (torn, stale, overlapping, writes, stamped_pages)."""

    policy: PolicyName
    latency_ms: NonNegative
    reorder: str
    seed: int  # the sweep's seed
    rep: Count  # repetition: (seed, rep) seeds the device and the writers
    torn: Count
    stale: Count
    overlapping: Count
    writes: Count  # device WRITEs
    stamped_pages: Count
    stale_phases: dict[str, Count]  # stale_write events per phase: arrival / reply
    writer_ops: Count  # stores by every writer
    seconds: NonNegative  # the writing phase, until the last writer stopped
    throughput: NonNegative  # writer stores per second
    writer_latency_ms: LatencySummary  # stall per store
    writer_latency_hist: Histogram  # every store's stall: the stall CDF is drawn from it
    fsyncs: Count
    fsync_latency_ms: LatencySummary
    copies: Count
    bytes_copied: Count
    fork_bytes_peak: Count
    waits: Count
    unstable_stores: Count
    writebacks: Count
    deferrals: Count
    deferral_ms: LatencySummary
    device_write_ms: LatencySummary  # round trip: hand-over to the I/O thread to completion
    loadavg: tuple[float, float]  # 1-minute load average before and after the writing phase
    in_flight_per_block_peak: Count
    device: ModelDevice
    workload: ModelWorkload
    writeback: WritebackSettings
    dir: str  # the run's device report directory (events.jsonl, summary.json)


class TableRow(Record, frozen=True, kw_only=True):
    """One policy on one device setting: medians over the seeds (max_ms, fork_bytes_peak and
    in_flight_peak the largest), verdict counts totals over the seeds."""

    latency_ms: NonNegative
    reorder: str
    policy: PolicyName
    runs: Annotated[int, msgspec.Meta(ge=1)]
    throughput: NonNegative  # writer stores per second (median)
    throughput_min: NonNegative
    throughput_max: NonNegative
    p50_ms: NonNegative
    p99_ms: NonNegative
    p999_ms: NonNegative
    max_ms: NonNegative  # the largest over the seeds
    copies: NonNegative
    bytes_copied: NonNegative
    fork_bytes_peak: Count  # the largest over the seeds
    deferrals: NonNegative
    deferral_p50_ms: NonNegative  # how long a due write waited for its block's write in flight
    deferral_p99_ms: NonNegative
    write_p50_ms: NonNegative  # device write round trip seen by the client
    write_p99_ms: NonNegative
    in_flight_peak: Count  # most writes of one block in flight together (the largest)
    fsyncs: NonNegative
    fsync_p50_ms: NonNegative
    fsync_p99_ms: NonNegative
    writes: NonNegative  # device WRITEs (median)
    stamped_pages: NonNegative
    torn: Count  # totals over the seeds
    stale: Count
    overlapping: Count

    def __post_init__(self) -> None:
        if not self.throughput_min <= self.throughput <= self.throughput_max:
            raise ValueError(f"throughput: the median {self.throughput:g} is outside "
                             f"[{self.throughput_min:g}, {self.throughput_max:g}]")  # fmt: skip


class PolicyRatio(Record, frozen=True, kw_only=True):
    """Policy `a` against policy `b` on one device setting. A ratio is None when its
    denominator is zero (b wrote nothing, or a never stalled): infinitely better."""

    latency_ms: NonNegative
    reorder: str
    a: PolicyName
    b: PolicyName
    throughput_ratio: NonNegative | None  # a's stores/s over b's
    p99_ratio: NonNegative | None  # b's p99 stall over a's (> 1: a stalls less)
    p999_ratio: NonNegative | None


class KernelRow(Record, frozen=True, kw_only=True):
    """One real-kernel configuration (fs x stable_writes x workload) of `nbdfork run`'s report,
    set beside the model's none (stable_writes=0) and stable (stable_writes=1) rows."""

    fs: str
    workload: str
    stable_writes: Literal[0, 1]
    torn: Count
    stamped_pages: Count
    p50_ms: NonNegative | None  # writer latency; None when nothing was measured
    p99_ms: NonNegative | None
    kernel: str | None = None

    @property
    def model_policy(self) -> PolicyName:
        """The model policy this setting corresponds to."""
        return "stable" if self.stable_writes else "none"


class ModelReport(Record, frozen=True, kw_only=True):
    """One `nbdfork model` invocation: the plan, every run, the summary table, the ratios, and
    the real-kernel rows when --compare was given (None when it was not)."""

    schema: str = MODEL_SCHEMA
    version: str = ""  # nbdfork's
    created: str = ""  # ISO 8601, UTC
    python: str = ""
    seed: int
    plan: ModelPlan
    runs: tuple[ModelRun, ...] = ()
    table: tuple[TableRow, ...] = ()
    fork_vs_stable: tuple[PolicyRatio, ...] = ()
    fork_vs_fork_unordered: tuple[PolicyRatio, ...] = ()
    kernel: tuple[KernelRow, ...] | None = None

    def __post_init__(self) -> None:
        seen: set[tuple[float, str, str, int]] = set()
        for i, run in enumerate(self.runs):
            key = (run.latency_ms, run.reorder, run.policy, run.rep)
            if key in seen:
                raise ValueError(f"runs[{i}]: a second run of {run.policy} at "
                                 f"{run.latency_ms:g} ms {run.reorder}, rep {run.rep}")  # fmt: skip
            seen.add(key)


def load_model_report(path: Path) -> ModelReport:
    """Read and validate a model report.json (or the report directory holding one)."""
    return read_json(path, ModelReport, MODEL_SCHEMA)
