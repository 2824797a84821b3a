"""The writeback engine: the flusher thread (dirty expiry), the send path, fsync and sync.

The send path is where `none` tears happen for real: like nbd.ko's sock_sendmsg, it reads the
page while the page is under writeback, sector by sector, yielding between sectors, and a
writer allowed to store into the page meanwhile lands in the middle of the copy. Nothing here
decides whether a write was torn or stale; the device's oracle does.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from nbdfork.errors import DeviceError
from nbdfork.experiments.model.cache import PAGE_SIZE, Page, PageCache
from nbdfork.experiments.model.export import Done
from nbdfork.experiments.model.schema import WritebackSettings

__all__ = ["SECTOR_SIZE", "Device", "WritebackEngine", "WritebackTuning", "send_copy"]

SECTOR_SIZE = 512
_SECTORS = PAGE_SIZE // SECTOR_SIZE


class Device(Protocol):
    """What the engine needs from an export: an Export, or a fake in unit tests."""

    def write(self, payload: bytearray, offset: int, done: Done) -> None:
        """Queue a write; `done(ok)` is called when it completes."""
        ...

    def flush(self, done: Done) -> None:
        """Queue a flush; `done(ok)` is called when it completes."""
        ...


def send_copy(pages: Sequence[bytearray], pause: Callable[[], None]) -> list[bytearray]:
    """Copy live pages sector by sector, all pages' sector 0, then all pages' sector 1, ...,
    calling `pause` between sectors: a writer that runs meanwhile lands mid-copy."""
    out = [bytearray(PAGE_SIZE) for _ in pages]
    for sector in range(_SECTORS):
        start, end = sector * SECTOR_SIZE, (sector + 1) * SECTOR_SIZE
        for page, copy in zip(pages, out, strict=True):
            copy[start:end] = page[start:end]
        if sector < _SECTORS - 1:
            pause()
    return out


@dataclass(frozen=True, slots=True)
class WritebackTuning:
    """The writeback knobs, scaled from the kernel's seconds to the device's milliseconds."""

    dirty_expire: float = 0.003  # dirty_expire_centisecs: age at which a dirty page is due
    interval: float = 0.001  # dirty_writeback_centisecs: how often the flusher wakes
    send_pace: float = 0.0  # pause between sectors of the send copy (0: just yield)
    queue_depth: int = 128  # writes in flight at most (nbd.ko's tag_set.queue_depth)
    base_block: int = 0  # device block (4 KiB) of cache block 0

    def to_record(self) -> WritebackSettings:
        """The knobs as report.json holds them."""
        return WritebackSettings(
            dirty_expire_ms=self.dirty_expire * 1e3, writeback_interval_ms=self.interval * 1e3,
            send_pace_ms=self.send_pace * 1e3, queue_depth=self.queue_depth,
        )  # fmt: skip


class WritebackEngine:
    """Writes dirty pages of `cache` to `device`: a flusher thread, fsync and sync."""

    def __init__(self, cache: PageCache, device: Device, tuning: WritebackTuning) -> None:
        self.cache = cache
        self.device = device
        self.tuning = tuning
        self._ready: list[int] = []  # deferred blocks whose predecessor completed
        self._lock = threading.Lock()
        self._tags = threading.BoundedSemaphore(tuning.queue_depth)
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flusher, name="nbdfork-flusher", daemon=True)
        self.flusher_error: BaseException | None = None
        self.round_trips: list[float] = []  # seconds from handing a write over to completion

    def start(self) -> None:
        """Start the flusher thread."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the flusher (call sync() first to leave nothing dirty)."""
        self._stop.set()
        self._kick.set()
        self._thread.join(timeout)

    def _flusher(self) -> None:
        try:
            while not self._stop.is_set():
                self._kick.wait(self.tuning.interval)
                self._kick.clear()
                self._flush_round()
        except BaseException as exc:  # surfaced by the run, which checks flusher_error
            self.flusher_error = exc

    def _flush_round(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        due = self.cache.due_blocks(time.monotonic(), self.tuning.dirty_expire)
        self.submit([*ready, *due])

    def _pause(self) -> None:
        time.sleep(self.tuning.send_pace)

    def submit(self, blocks: Iterable[int]) -> int:
        """Start writeback of each block that is dirty and may go now; the writes sent."""
        now = time.monotonic()
        pages = [p for b in blocks if (p := self.cache.start_writeback(b, now)) is not None]
        if not pages:
            return 0
        payloads = send_copy([p.data for p in pages], self._pause)
        for page, payload in zip(pages, payloads, strict=True):
            self._get_tag()
            offset = (self.tuning.base_block + page.block) * PAGE_SIZE
            self.device.write(payload, offset, self._completion(page, time.perf_counter()))
        return len(pages)

    def _get_tag(self, timeout: float = 30.0) -> None:
        # A full queue blocks the submitter, its pages still under writeback, as blk-mq does.
        if not self._tags.acquire(timeout=timeout):
            raise DeviceError(f"no request slot freed within {timeout:g} s", errno.ETIMEDOUT)

    def _completion(self, page: Page, sent: float) -> Done:
        return lambda ok: self._completed(page, ok, sent)

    def _completed(self, page: Page, ok: bool, sent: float) -> None:
        # Runs on the I/O thread: hand a deferred block to the flusher, never send from here.
        self.round_trips.append(time.perf_counter() - sent)
        self._tags.release()
        if self.cache.end_writeback(page, ok=ok):
            with self._lock:
                self._ready.append(page.block)
            self._kick.set()

    def fsync(self, blocks: Iterable[int]) -> None:
        """Write `blocks` back and wait for them (WB_SYNC_ALL), then FLUSH the device."""
        blocks = list(blocks)
        self.submit(blocks)
        self.cache.wait_clean(blocks)
        self._flush_device()

    def sync(self) -> None:
        """fsync of every block: what unmount does before the device goes away."""
        self.fsync(range(self.cache.blocks))

    def _flush_device(self, timeout: float = 30.0) -> None:
        done = threading.Event()
        result: list[bool] = []

        def flushed(ok: bool) -> None:
            result.append(ok)
            done.set()

        self.device.flush(flushed)
        if not done.wait(timeout):
            raise DeviceError(f"FLUSH did not complete within {timeout:g} s", errno.ETIMEDOUT)
        if not result[0]:
            raise DeviceError("FLUSH failed")
