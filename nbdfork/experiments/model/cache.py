"""The model's page cache: one 4 KiB page per block, its dirty and writeback state, its forks.

This module owns the state machine every policy runs through (kernel names in brackets):
`store` (write_begin .. write_end under the page lock), `start_writeback`
(clear_page_dirty_for_io + set_page_writeback) and `end_writeback` (end_page_writeback).
It does no I/O and never sleeps on its own: a `stable` writer blocks on the cache's condition
until the write it waits for ends, and callers pass the time in, so unit tests drive it with
threads and no clock.

A block has at most one write in flight, except under `fork-unordered`: a due page whose block
still has a write in flight is *deferred* and handed back by `end_writeback` (for `fork` this
is the ordering fix; for `none` it is the redirtied page written again after its writeback).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from nbdfork.errors import DeviceError
from nbdfork.experiments.model.policy import Policy

__all__ = ["PAGE_SIZE", "CacheStats", "Page", "PageCache", "StoreResult"]

PAGE_SIZE = 4096


def _zero_page() -> bytearray:
    return bytearray(PAGE_SIZE)


@dataclass(eq=False, slots=True)
class Page:
    """A page's memory and state; `detached` once a fork replaced it (only its write holds it)."""

    block: int
    data: bytearray = field(default_factory=_zero_page)
    dirty: bool = False
    dirtied_at: float = 0.0
    writeback: bool = False
    detached: bool = False


@dataclass(eq=False, slots=True)
class _Slot:
    """The cache's entry for one block: the current page and every copy of it in flight."""

    current: Page
    in_flight: list[Page] = field(default_factory=list)  # oldest submission first
    deferred_at: float | None = None  # a due write waits for the one in flight, since then


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What one store had to do besides copying the writer's bytes in."""

    waited: bool = False  # waited for writeback to end (stable)
    forked: bool = False  # copied the page under writeback first (fork policies)
    unstable: bool = False  # wrote into a page under writeback (none)


@dataclass(slots=True)
class CacheStats:
    """Counters of one run; `fork_bytes` is the memory detached pages hold right now."""

    stores: int = 0
    waits: int = 0
    copies: int = 0
    bytes_copied: int = 0
    unstable_stores: int = 0
    writebacks: int = 0
    write_errors: int = 0
    deferrals: int = 0
    fork_bytes: int = 0
    fork_bytes_peak: int = 0
    in_flight_per_block_peak: int = 0
    deferral_s: list[float] = field(default_factory=list)


class PageCache:
    """Pages of `blocks` consecutive blocks under one writeback `policy`; thread-safe."""

    def __init__(self, policy: Policy, blocks: int, *, wait_timeout: float = 30.0) -> None:
        if blocks < 1:
            raise ValueError(f"a page cache needs at least one block, not {blocks}")
        self.policy = policy
        self.blocks = blocks
        self._slots = [_Slot(Page(block)) for block in range(blocks)]
        self._cond = threading.Condition()
        self._stats = CacheStats()
        self._wait_timeout = wait_timeout

    def page(self, block: int) -> Page:
        """The page the cache holds for `block` now (a fork replaces it)."""
        with self._cond:
            return self._slots[block].current

    def in_flight(self, block: int) -> int:
        """How many writes of `block` are in flight."""
        with self._cond:
            return len(self._slots[block].in_flight)

    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        with self._cond:
            return replace(self._stats, deferral_s=list(self._stats.deferral_s))

    def store(self, block: int, data: bytes, now: float) -> StoreResult:
        """A writer replaces the page of `block` with `data` (4096 bytes), as its policy allows."""
        if len(data) != PAGE_SIZE:
            raise ValueError(f"a store is one page of {PAGE_SIZE} bytes, not {len(data)}")
        with self._cond:
            slot = self._slots[block]
            result = StoreResult()
            if slot.current.writeback:
                result = self._under_writeback(slot)
            page = slot.current
            page.data[:] = data
            self._dirty(page, now)
            self._stats.stores += 1
        return result

    def _under_writeback(self, slot: _Slot) -> StoreResult:
        """The page is being written: wait, fork or write through it (lock held)."""
        if self.policy.waits:
            self._stats.waits += 1
            self._wait(lambda: not slot.current.writeback, f"block {slot.current.block}")
            return StoreResult(waited=True)
        if self.policy.forks:
            self._fork(slot)
            return StoreResult(forked=True)
        self._stats.unstable_stores += 1
        return StoreResult(unstable=True)

    def _fork(self, slot: _Slot) -> None:
        """Give the cache a private copy of the page; the old one stays with its write."""
        old = slot.current
        slot.current = Page(old.block, bytearray(old.data))
        old.detached = True
        s = self._stats
        s.copies += 1
        s.bytes_copied += PAGE_SIZE
        s.fork_bytes += PAGE_SIZE
        s.fork_bytes_peak = max(s.fork_bytes_peak, s.fork_bytes)

    def _dirty(self, page: Page, now: float) -> None:
        if not page.dirty:
            page.dirty = True
            page.dirtied_at = now

    def _wait(self, predicate: Callable[[], bool], what: str) -> None:
        if not self._cond.wait_for(predicate, self._wait_timeout):
            raise DeviceError(
                f"{what}: writeback did not end within {self._wait_timeout:g} s", errno.ETIMEDOUT
            )

    def due_blocks(self, now: float, expire: float) -> list[int]:
        """Blocks whose page has been dirty for `expire` seconds and is not deferred, oldest
        first (the flusher's pick: dirty_expire_interval)."""
        with self._cond:
            due = [
                s for s in self._slots
                if s.current.dirty and s.deferred_at is None
                and now - s.current.dirtied_at >= expire
            ]  # fmt: skip
            due.sort(key=lambda s: s.current.dirtied_at)
            return [s.current.block for s in due]

    def start_writeback(self, block: int, now: float) -> Page | None:
        """Mark the dirty page of `block` clean and under writeback and return it for sending;
        None when it is clean, or deferred behind the write of `block` in flight."""
        with self._cond:
            slot = self._slots[block]
            page = slot.current
            if not page.dirty:
                return None
            if slot.in_flight and not self.policy.overlaps:
                self._defer(slot, now)
                return None
            self._submit(slot, page, now)
            return page

    def _defer(self, slot: _Slot, now: float) -> None:
        if slot.deferred_at is None:
            slot.deferred_at = now
            self._stats.deferrals += 1

    def _submit(self, slot: _Slot, page: Page, now: float) -> None:
        if slot.deferred_at is not None:
            self._stats.deferral_s.append(now - slot.deferred_at)
            slot.deferred_at = None
        page.dirty = False
        page.writeback = True
        slot.in_flight.append(page)
        s = self._stats
        s.writebacks += 1
        s.in_flight_per_block_peak = max(s.in_flight_per_block_peak, len(slot.in_flight))

    def end_writeback(self, page: Page, *, ok: bool) -> bool:
        """The write of `page` completed; True when its block has a deferred write to submit."""
        with self._cond:
            slot = self._slots[page.block]
            slot.in_flight.remove(page)
            page.writeback = False
            if page.detached:
                self._stats.fork_bytes -= PAGE_SIZE
            if not ok:
                self._stats.write_errors += 1
            self._cond.notify_all()
            return slot.deferred_at is not None and not slot.in_flight

    def is_clean(self, block: int) -> bool:
        """True when `block` has nothing dirty and nothing in flight."""
        with self._cond:
            return self._clean(self._slots[block])

    def _clean(self, slot: _Slot) -> bool:
        return not slot.current.dirty and not slot.in_flight

    def wait_clean(self, blocks: Iterable[int]) -> None:
        """Block until every block in `blocks` is clean with nothing in flight (fsync's wait)."""
        slots = [self._slots[b] for b in blocks]
        with self._cond:
            self._wait(lambda: all(self._clean(s) for s in slots), f"{len(slots)} blocks")
