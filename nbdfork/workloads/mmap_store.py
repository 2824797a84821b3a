"""`mmap`: stores of whole stamped pages into a MAP_SHARED mapping of the hot-set file.

Writeback write-protects the page and captures it at that instant; the next store faults
into page_mkwrite, which waits for writeback only with stable_writes=1. A store is a memcpy, so
even a waited-for page can be captured mid-store: its tears are reported apart (KERNEL.md).
"""

from __future__ import annotations

import mmap
import os

from nbdfork.workloads.base import PAGE_SIZE, Target, Workload

__all__ = ["MmapWorkload"]


class MmapWorkload(Workload):
    """memcpy of stamped pages into a shared file mapping; msync + fdatasync to make durable."""

    name = "mmap"

    def open(self, target: Target, initial: bytes) -> None:
        """Create and fsync the file, then map it shared and writable."""
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        target.fd = os.open(target.path, flags, 0o644)
        if os.pwrite(target.fd, initial, 0) != len(initial):
            raise OSError(f"short write creating {target.path}")
        os.fsync(target.fd)
        target.extra["map"] = mmap.mmap(target.fd, len(initial), mmap.MAP_SHARED)

    def store(self, target: Target, page: int, data: memoryview, previous: memoryview) -> None:
        """Copy `data` into the mapping (page fault and page_mkwrite included)."""
        lo = page * PAGE_SIZE
        target.extra["map"][lo : lo + PAGE_SIZE] = data

    def sync(self, target: Target) -> None:
        """msync(MS_SYNC) the mapping, then fdatasync."""
        target.extra["map"].flush()
        os.fdatasync(target.fd)

    def close(self, target: Target) -> None:
        """Unmap, then close."""
        target.extra["map"].close()
        super().close(target)
