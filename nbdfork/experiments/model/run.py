"""One run of the model: one policy on one device setting, against a fresh nbdkit.

The run starts nbdkit with the plugin (its oracle writes the run's report directory), the
page cache, the writeback engine and the writers; lets the writers go for `seconds`; syncs
every page to the device like an unmount; disconnects; and reads the oracle's verdicts back.
Every random choice comes from (seed, rep): the device's seed and each writer's generator.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nbdfork.errors import DeviceError
from nbdfork.experiments.model.cache import CacheStats, PageCache
from nbdfork.experiments.model.device import (
    DeviceSettings,
    ReorderSpec,
    Verdicts,
    nbdkit_argv,
    read_verdicts,
)
from nbdfork.experiments.model.export import Export
from nbdfork.experiments.model.metrics import histogram, latency_summary, percentiles
from nbdfork.experiments.model.policy import Policy
from nbdfork.experiments.model.schema import ModelRun
from nbdfork.experiments.model.writeback import WritebackEngine, WritebackTuning
from nbdfork.experiments.model.writer import Workload, Writer

__all__ = ["RunResult", "RunSpec", "WriterPhase", "derive_seeds", "run_model"]

Tick = Callable[[float], None]
"""Progress: called with the fraction of the run's writing time elapsed."""


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything one run depends on."""

    policy: Policy
    latency: float  # median device write latency, seconds
    reorder: ReorderSpec
    seed: int  # the sweep's seed
    rep: int = 0  # repetition: (seed, rep) seeds the device and the writers
    seconds: float = 5.0
    workload: Workload = field(default_factory=Workload)
    tuning: WritebackTuning = field(default_factory=WritebackTuning)
    threads: int = 16

    @property
    def name(self) -> str:
        """A directory name unique within a sweep."""
        reorder = self.reorder.describe().replace(":", "")
        return f"{self.policy.value}_{self.latency * 1e3:g}ms_{reorder}_r{self.rep}"


def derive_seeds(seed: int, rep: int, writers: int) -> tuple[int, list[np.random.Generator]]:
    """The device seed and one generator per writer, all from (seed, rep)."""
    sequence = np.random.SeedSequence([seed, rep])
    device_seed = int(sequence.generate_state(1, np.uint64)[0]) >> 1
    return device_seed, [np.random.default_rng(s) for s in sequence.spawn(writers)]


@dataclass(frozen=True, slots=True)
class WriterPhase:
    """What the writing phase measured on the client side."""

    seconds: float
    stalls: list[float]
    fsyncs: list[float]
    round_trips: list[float]  # device writes, from hand-over to completion
    cache: CacheStats
    load: tuple[float, float]  # 1-minute load average before and after: a busy host shows


@dataclass(frozen=True, slots=True)
class RunResult:
    """One run's measurements and the oracle's verdicts."""

    spec: RunSpec
    device: DeviceSettings
    phase: WriterPhase
    verdicts: Verdicts
    dir: Path

    @property
    def throughput(self) -> float:
        """Writer stores per second."""
        return len(self.phase.stalls) / self.phase.seconds

    def stall_ms(self) -> dict[str, float]:
        """Writer stall percentiles (p50, p99, p999, max) in ms; zeros when nothing was written."""
        return {k: v or 0.0 for k, v in percentiles(self.phase.stalls).items()}

    def to_record(self) -> ModelRun:
        """The run's entry in report.json."""
        s, c, v = self.spec, self.phase.cache, self.verdicts
        return ModelRun(
            policy=s.policy.value, latency_ms=s.latency * 1e3, reorder=s.reorder.describe(),
            seed=s.seed, rep=s.rep, torn=v.torn, stale=v.stale, overlapping=v.overlapping,
            writes=v.writes, stamped_pages=v.stamped_pages, stale_phases=dict(v.stale_phases),
            writer_ops=len(self.phase.stalls), seconds=round(self.phase.seconds, 6),
            throughput=round(self.throughput, 3),
            writer_latency_ms=latency_summary(self.phase.stalls),
            writer_latency_hist=histogram(self.phase.stalls),
            fsyncs=len(self.phase.fsyncs), fsync_latency_ms=latency_summary(self.phase.fsyncs),
            copies=c.copies, bytes_copied=c.bytes_copied, fork_bytes_peak=c.fork_bytes_peak,
            waits=c.waits, unstable_stores=c.unstable_stores, writebacks=c.writebacks,
            deferrals=c.deferrals, deferral_ms=latency_summary(c.deferral_s),
            device_write_ms=latency_summary(self.phase.round_trips), loadavg=self.phase.load,
            in_flight_per_block_peak=c.in_flight_per_block_peak,
            device=self.device.to_record(), workload=s.workload.to_record(),
            writeback=s.tuning.to_record(), dir=str(self.dir),
        )  # fmt: skip


def run_model(spec: RunSpec, directory: Path, tick: Tick | None = None) -> RunResult:
    """Run `spec` against a fresh device whose oracle reports into `directory`."""
    _fresh(directory)
    device_seed, rngs = derive_seeds(spec.seed, spec.rep, spec.workload.writers)
    settings = DeviceSettings(spec.latency, spec.reorder, device_seed, spec.threads)
    export = Export(nbdkit_argv(settings, directory))
    try:
        phase = _drive(spec, export, rngs, tick)
    finally:
        export.close()
    if export.failures:
        raise DeviceError(f"{len(export.failures)} failed commands, first: {export.failures[0]}")
    return RunResult(spec, settings, phase, read_verdicts(directory), directory)


def _fresh(directory: Path) -> None:
    """An empty report directory: the oracle appends to events.jsonl."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("events.jsonl", "summary.json", "nbdfork.log"):
        (directory / name).unlink(missing_ok=True)


def _drive(
    spec: RunSpec, export: Export, rngs: list[np.random.Generator], tick: Tick | None
) -> WriterPhase:
    cache = PageCache(spec.policy, spec.workload.blocks)
    engine = WritebackEngine(cache, export, spec.tuning)
    stop = threading.Event()
    writers = [Writer(i + 1, cache, engine, spec.workload, rng=rng, stop=stop)
               for i, rng in enumerate(rngs)]  # fmt: skip
    load_before = os.getloadavg()[0]
    engine.start()
    try:
        seconds = _write_for(spec.seconds, writers, stop, tick)
        engine.sync()
    finally:
        stop.set()
        engine.stop()
    _raise_errors(writers, engine)
    stalls = [x for w in writers for x in w.stalls]
    fsyncs = [x for w in writers for x in w.fsyncs]
    load = (load_before, os.getloadavg()[0])
    return WriterPhase(seconds, stalls, fsyncs, list(engine.round_trips), cache.stats(), load)


def _write_for(seconds: float, writers: list[Writer], stop: threading.Event,
               tick: Tick | None) -> float:  # fmt: skip
    """Let the writers run for `seconds`; the time until the last one stopped."""
    start = time.perf_counter()
    for writer in writers:
        writer.start()
    while (elapsed := time.perf_counter() - start) < seconds:
        if tick is not None:
            tick(elapsed / seconds)
        time.sleep(min(0.25, seconds - elapsed))
    stop.set()
    for writer in writers:
        if not writer.join(60.0):
            raise DeviceError(f"writer {writer.stream} did not stop within 60 s")
    if tick is not None:
        tick(1.0)
    return time.perf_counter() - start


def _raise_errors(writers: list[Writer], engine: WritebackEngine) -> None:
    for writer in writers:
        if writer.error is not None:
            raise DeviceError(f"writer {writer.stream} failed: {writer.error}") from writer.error
    if engine.flusher_error is not None:
        raise DeviceError(f"the flusher failed: {engine.flusher_error}") from engine.flusher_error
