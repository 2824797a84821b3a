"""Writer threads: each rewrites the stamped pages of its own stream, as fast as its think time
allows, and records how long every store into the page cache took (its stall).

A writer's page choices and pauses come from its own generator, spawned from the run's seed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from nbdfork.experiments.model.cache import PageCache
from nbdfork.experiments.model.schema import ModelWorkload
from nbdfork.experiments.model.writeback import WritebackEngine
from nbdfork.oracle.stamp import encode_page

__all__ = ["Workload", "Writer"]

_BATCH = 4096  # random draws made at a time


@dataclass(frozen=True, slots=True)
class Workload:
    """What the writers do: `writers` threads, each rewriting its own `pages` hot pages."""

    writers: int = 4
    pages: int = 2
    think: float = 0.0005  # mean pause between two writes of one writer (exponential), s
    fsync_every: int = 0  # a writer fsyncs its pages after this many writes (0: never)

    @property
    def blocks(self) -> int:
        """Pages in the cache: every writer's hot set."""
        return self.writers * self.pages

    def to_record(self) -> ModelWorkload:
        """The workload as report.json holds it."""
        return ModelWorkload(writers=self.writers, pages_per_writer=self.pages,
                             think_ms=self.think * 1e3, fsync_every=self.fsync_every)  # fmt: skip


class Writer:
    """One writer thread: stream `stream`, cache blocks `first_block` .. + workload.pages."""

    def __init__(
        self, stream: int, cache: PageCache, engine: WritebackEngine, workload: Workload, *,
        rng: np.random.Generator, stop: threading.Event,
    ) -> None:  # fmt: skip
        self.stream = stream
        self.first_block = (stream - 1) * workload.pages
        self._cache = cache
        self._engine = engine
        self._workload = workload
        self._rng = rng
        self._stop = stop
        self.stalls: list[float] = []
        self.fsyncs: list[float] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"nbdfork-writer-{stream}")

    def start(self) -> None:
        """Start writing."""
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end after the stop event; False if it did not."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _draws(self) -> tuple[list[int], list[float]]:
        w = self._workload
        pages = self._rng.integers(0, w.pages, size=_BATCH).tolist()
        pauses = self._rng.exponential(w.think, size=_BATCH) if w.think > 0 else np.zeros(_BATCH)
        return pages, pauses.tolist()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # surfaced by the run, which checks every writer
            self.error = exc

    def _loop(self) -> None:
        generations = [0] * self._workload.pages
        while not self._stop.is_set():
            pages, pauses = self._draws()
            for page, pause in zip(pages, pauses, strict=True):
                generations[page] += 1
                self._write(page, generations[page])
                if self._stop.wait(pause):
                    return

    def _write(self, page: int, generation: int) -> None:
        data = encode_page(self.stream, page, generation)
        start = time.perf_counter()
        self._cache.store(self.first_block + page, data, time.monotonic())
        self.stalls.append(time.perf_counter() - start)
        every = self._workload.fsync_every
        if every and len(self.stalls) % every == 0:
            start = time.perf_counter()
            self._engine.fsync(range(self.first_block, self.first_block + self._workload.pages))
            self.fsyncs.append(time.perf_counter() - start)
