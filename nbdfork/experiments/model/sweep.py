"""A sweep: every policy on every device setting (latency x reordering), for several seeds.

Policies vary fastest, so the runs of one device setting are neighbours in time and share
that setting's seed: the device draws the same latency for the same request id under every
policy, and the writers make the same choices.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from nbdfork.experiments.model.device import ReorderSpec
from nbdfork.experiments.model.policy import Policy
from nbdfork.experiments.model.run import RunResult, RunSpec, run_model
from nbdfork.experiments.model.schema import ModelPlan
from nbdfork.experiments.model.writeback import WritebackTuning
from nbdfork.experiments.model.writer import Workload

__all__ = ["Progress", "SweepPlan", "run_sweep"]


@dataclass(frozen=True, slots=True)
class SweepPlan:
    """The runs of one `nbdfork model` invocation."""

    policies: tuple[Policy, ...]
    latencies: tuple[float, ...]  # median write latencies, seconds
    reorders: tuple[ReorderSpec, ...]
    seed: int
    seeds: int = 1  # repetitions, each with its own (seed, rep) stream
    seconds: float = 5.0
    workload: Workload = field(default_factory=Workload)
    tuning: WritebackTuning = field(default_factory=WritebackTuning)
    threads: int = 16

    def specs(self) -> list[RunSpec]:
        """Every run, policies varying fastest."""
        grid = itertools.product(range(self.seeds), self.latencies, self.reorders, self.policies)
        return [
            RunSpec(policy, latency, reorder, self.seed, rep, self.seconds, self.workload,
                    self.tuning, self.threads)
            for rep, latency, reorder, policy in grid
        ]  # fmt: skip

    def to_record(self) -> ModelPlan:
        """The plan as report.json holds it."""
        return ModelPlan(
            policies=tuple(p.value for p in self.policies),
            latencies_ms=tuple(x * 1e3 for x in self.latencies),
            reorders=tuple(r.describe() for r in self.reorders), seed=self.seed,
            seeds=self.seeds, seconds=float(self.seconds), nbdkit_threads=self.threads,
            workload=self.workload.to_record(), writeback=self.tuning.to_record(),
        )  # fmt: skip


class Progress(Protocol):
    """Told about each run as it starts, advances and ends (a progress bar, a log)."""

    def started(self, index: int, total: int, spec: RunSpec) -> None: ...

    def advanced(self, fraction: float) -> None: ...

    def finished(self, result: RunResult) -> None: ...


def run_sweep(plan: SweepPlan, out: Path, progress: Progress | None = None) -> list[RunResult]:
    """Run every spec of `plan`; each run's device report goes to OUT/runs/<name>/."""
    specs: Sequence[RunSpec] = plan.specs()
    results: list[RunResult] = []
    for index, spec in enumerate(specs):
        if progress is not None:
            progress.started(index, len(specs), spec)
        tick = progress.advanced if progress is not None else None
        result = run_model(spec, out / "runs" / spec.name, tick)
        results.append(result)
        if progress is not None:
            progress.finished(result)
    return results
