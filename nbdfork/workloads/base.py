"""The workload engine: writer threads rewriting a hot set of stamped pages, a writeback kicker,
per-write latency and the ledger of what was written and made durable.

Each writer thread owns one file of `pages` stamped 4 KiB pages (stream `stream_base + thread`,
page = index in the file). Round r rewrites every page once at generation r, in an order drawn
from the seed, so a page is rewritten while the previous generation may be under writeback:
exactly where stable_writes decides between waiting and tearing. A workload subclass supplies
only the store operation (pwrite, a store into a shared mapping, an O_DIRECT write).
"""

from __future__ import annotations

import ctypes
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from nbdfork.errors import ConfigError
from nbdfork.oracle.stamp import encode_pages
from nbdfork.workloads.latency import LatencySamples, histogram, percentiles

__all__ = [
    "KICK_MODES",
    "PAGE_SIZE",
    "KickMode",
    "Ledger",
    "Target",
    "Workload",
    "WorkloadConfig",
    "WorkloadResult",
    "WorkloadSkipped",
    "sync_file_range",
]

PAGE_SIZE = 4096
KickMode = Literal["sync_file_range", "fdatasync", "none"]
KICK_MODES: tuple[KickMode, ...] = ("sync_file_range", "fdatasync", "none")
_MAX_FSYNC_RECORDS = 5000
_SYNC_FILE_RANGE_WRITE = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_libc.sync_file_range.restype = ctypes.c_int


class WorkloadSkipped(Exception):  # noqa: N818 (a reason to skip, not an error)
    """The workload cannot run on this kernel or filesystem; the message says why."""


def sync_file_range(fd: int) -> None:
    """Start writeback of every dirty page of `fd` (SYNC_FILE_RANGE_WRITE); no flush, no wait."""
    if _libc.sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sync_file_range: {os.strerror(err)}")


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """The knobs of one workload run; validated by `validate()`."""

    directory: Path
    seconds: float = 10.0
    pages: int = 8
    threads: int = 1
    kick: KickMode = "sync_file_range"
    kick_interval_s: float = 0.0
    seed: int = 0
    stream_base: int = 1
    max_writes: int | None = None

    def validate(self) -> None:
        """Raise ConfigError naming the first bad knob."""
        if not self.seconds > 0:
            raise ConfigError("seconds", f"{self.seconds} must be > 0")
        if not 1 <= self.pages <= 1 << 20:
            raise ConfigError("pages", f"{self.pages} must be between 1 and 1048576")
        if not 1 <= self.threads <= 64:
            raise ConfigError("threads", f"{self.threads} must be between 1 and 64")
        if self.kick not in KICK_MODES:
            raise ConfigError("kick", f"{self.kick!r} is not one of {', '.join(KICK_MODES)}")
        if self.kick_interval_s < 0:
            raise ConfigError("kick-interval", f"{self.kick_interval_s} must be >= 0")
        if not (self.stream_base >= 0 and self.stream_base + self.threads <= 1 << 32):
            raise ConfigError("stream_base", f"{self.stream_base} does not fit a u32 stream")
        if self.max_writes is not None and self.max_writes < 1:
            raise ConfigError("max_writes", f"{self.max_writes} must be >= 1")

    def as_dict(self) -> dict[str, object]:
        """JSON-ready knobs."""
        data = asdict(self)
        data["directory"] = str(self.directory)
        return data


class Ledger:
    """What each writer wrote (last completed generation per page) and what fsync made durable."""

    def __init__(self, streams: list[int], pages: int, files: list[str]) -> None:
        self.streams = streams
        self.files = files
        self.pages = pages
        self.written = [[0] * pages for _ in streams]
        self.writes = [[0] * pages for _ in streams]
        self.durable = [[0] * pages for _ in streams]
        self.fsyncs: list[dict[str, object]] = []
        self.fsync_count = 0
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def wrote(self, thread: int, page: int, generation: int) -> None:
        """A write of `page` at `generation` completed (returned to the writer)."""
        self.written[thread][page] = generation
        self.writes[thread][page] += 1

    def snapshot(self, thread: int) -> list[int]:
        """The generations completed so far: what an fsync started now makes durable."""
        return list(self.written[thread])

    def synced(self, thread: int, generations: list[int], reason: str) -> None:
        """An fsync/fdatasync started after `generations` completed has returned."""
        with self._lock:
            self.durable[thread] = [
                max(a, b) for a, b in zip(self.durable[thread], generations, strict=True)
            ]
            self.fsync_count += 1
            if len(self.fsyncs) < _MAX_FSYNC_RECORDS:
                t = round(time.monotonic() - self._t0, 6)
                self.fsyncs.append(
                    {
                        "t_s": t,
                        "stream": self.streams[thread],
                        "reason": reason,
                        "generations": generations,
                    }
                )

    def as_dict(self) -> dict[str, object]:
        """The ledger as JSON: per page its offset, writes, last and last durable generation."""
        pages = [
            {
                "file": self.files[t],
                "stream": stream,
                "page": p,
                "offset": p * PAGE_SIZE,
                "writes": self.writes[t][p],
                "last_generation": self.written[t][p],
                "durable_generation": self.durable[t][p],
            }
            for t, stream in enumerate(self.streams)
            for p in range(self.pages)
        ]
        return {
            "page_size": PAGE_SIZE,
            "pages": pages,
            "fsync_count": self.fsync_count,
            "fsyncs": self.fsyncs,
            "fsyncs_truncated": self.fsync_count > len(self.fsyncs),
        }


@dataclass(slots=True)
class Target:
    """One writer's file: its descriptor and whatever the workload keeps beside it."""

    index: int
    stream: int
    path: Path
    fd: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class WorkloadResult:
    """Everything a run produced: latencies, ledger, counters and the first error, if any."""

    workload: str
    config: WorkloadConfig
    samples_ns: npt.NDArray[np.int64]
    ledger: Ledger
    kicks: int
    duration_s: float
    error: str | None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def writer_ops(self) -> int:
        """Measured writer operations."""
        return int(self.samples_ns.size)

    def summary(self) -> dict[str, object]:
        """workload.json: knobs, latency percentiles and histogram, ledger, counters."""
        return {
            "schema": "nbdfork.workload/1",
            "workload": self.workload,
            "config": self.config.as_dict(),
            "duration_s": round(self.duration_s, 6),
            "writer_ops": self.writer_ops,
            "writer_latency_ms": percentiles(self.samples_ns),
            "writer_latency_hist": histogram(self.samples_ns),
            "kicks": self.kicks,
            "error": self.error,
            **self.extra,
            "ledger": self.ledger.as_dict(),
        }


class Workload(ABC):
    """A store operation on a file of stamped pages; `run()` drives writers and the kicker."""

    name: ClassVar[str]

    def __init__(self, config: WorkloadConfig) -> None:
        config.validate()
        self.config = config
        self._stop = threading.Event()
        self._errors: list[str] = []
        self._kicks = 0

    # --- what a workload defines ---------------------------------------------------------

    @abstractmethod
    def open(self, target: Target, initial: bytes) -> None:
        """Create target.path holding `initial` (generation 0 of every page), durable."""

    @abstractmethod
    def store(self, target: Target, page: int, data: memoryview, previous: memoryview) -> None:
        """The measured operation: put `data` at `page`; `previous` is its last generation."""

    def kick(self, target: Target) -> None:
        """Start writeback of the target's dirty pages."""
        sync_file_range(target.fd)

    def sync(self, target: Target) -> None:
        """Make every completed store durable."""
        os.fdatasync(target.fd)

    def close(self, target: Target) -> None:
        """Release the target."""
        os.close(target.fd)

    def start_helpers(self, targets: list[Target]) -> list[threading.Thread]:
        """Threads a workload needs beside writers and kicker (none by default)."""
        return []

    def extra_summary(self, targets: list[Target]) -> dict[str, object]:
        """Workload-specific counters for workload.json."""
        return {}

    # --- the engine ----------------------------------------------------------------------

    def run(self) -> WorkloadResult:
        """Prepare the files, write for `seconds` (or `max_writes`), sync; never raises for a
        failure inside the run: the first error is returned in the result."""
        cfg = self.config
        targets = self._prepare()
        streams = [t.stream for t in targets]
        ledger = Ledger(streams, cfg.pages, [t.path.name for t in targets])
        samples = [LatencySamples() for _ in targets]
        writers = [
            self._thread(f"writer-{t.index}", self._writer, t, ledger, samples[t.index])
            for t in targets
        ]
        threads = list(writers)
        if cfg.kick != "none":
            threads.append(self._thread("kicker", self._kicker, targets, ledger))
        threads += self.start_helpers(targets)
        started = time.monotonic()
        for thread in threads:
            thread.start()
        deadline = started + cfg.seconds
        while (
            time.monotonic() < deadline
            and not self._stop.is_set()
            and any(w.is_alive() for w in writers)
        ):
            self._stop.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        self._stop.set()
        for thread in threads:
            thread.join(timeout=60.0)
            if thread.is_alive():
                self._errors.append(f"{thread.name}: still blocked 60 s after the deadline")
        duration = time.monotonic() - started
        self._finish(targets, ledger)
        return WorkloadResult(
            self.name,
            cfg,
            LatencySamples.merged(samples),
            ledger,
            self._kicks,
            duration,
            self._errors[0] if self._errors else None,
            self.extra_summary(targets),
        )

    def _prepare(self) -> list[Target]:
        cfg = self.config
        cfg.directory.mkdir(parents=True, exist_ok=True)
        targets = []
        for index in range(cfg.threads):
            stream = cfg.stream_base + index
            path = cfg.directory / f"nbdfork-{self.name}-{index}.dat"
            target = Target(index, stream, path, -1)
            self.open(target, encode_pages(stream, 0, [0] * cfg.pages))
            targets.append(target)
        return targets

    def _finish(self, targets: list[Target], ledger: Ledger) -> None:
        for target in targets:
            try:
                before = ledger.snapshot(target.index)
                self.sync(target)
                ledger.synced(target.index, before, "final")
            except OSError as exc:
                self._errors.append(f"final sync of {target.path.name}: {exc}")
            finally:
                self.close(target)

    def _thread(self, name: str, fn: Callable[..., None], *args: Any) -> threading.Thread:
        def body() -> None:
            try:
                fn(*args)
            except Exception as exc:  # the run reports it; the thread must not die silently
                self._errors.append(f"{name}: {type(exc).__name__}: {exc}")
                self._stop.set()

        return threading.Thread(target=body, name=name, daemon=True)

    def _writer(self, target: Target, ledger: Ledger, samples: LatencySamples) -> None:
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:{self.name}:{target.index}")
        order = list(range(cfg.pages))
        previous = memoryview(encode_pages(target.stream, 0, [0] * cfg.pages))
        generation = 0
        clock = time.perf_counter_ns
        limit = cfg.max_writes
        while not self._stop.is_set():
            generation += 1
            block = memoryview(encode_pages(target.stream, 0, [generation] * cfg.pages))
            rng.shuffle(order)
            for page in order:
                if self._stop.is_set() or (limit is not None and len(samples) >= limit):
                    return
                lo = page * PAGE_SIZE
                data, prev = block[lo : lo + PAGE_SIZE], previous[lo : lo + PAGE_SIZE]
                t0 = clock()
                self.store(target, page, data, prev)
                samples.add(clock() - t0)
                ledger.wrote(target.index, page, generation)
            previous = block

    def _kicker(self, targets: list[Target], ledger: Ledger) -> None:
        cfg = self.config
        while not self._stop.is_set():
            for target in targets:
                if cfg.kick == "fdatasync":
                    before = ledger.snapshot(target.index)
                    self.sync(target)
                    ledger.synced(target.index, before, "kick")
                else:
                    self.kick(target)
            self._kicks += 1
            if cfg.kick_interval_s:
                self._stop.wait(cfg.kick_interval_s)
