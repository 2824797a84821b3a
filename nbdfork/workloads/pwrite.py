"""`pwrite`: page-aligned 4 KiB pwrite() rewrites of a hot set through the page cache.

With stable_writes=0 a rewrite copies straight into a page under writeback (a torn WRITE at the
device); with stable_writes=1 the writer waits in folio_wait_stable() (the latency cost).
"""

from __future__ import annotations

import os

from nbdfork.workloads.base import PAGE_SIZE, Target, Workload

__all__ = ["PwriteWorkload"]


class PwriteWorkload(Workload):
    """pwrite() of whole stamped pages; a kicker starts writeback with sync_file_range()."""

    name = "pwrite"

    def open(self, target: Target, initial: bytes) -> None:
        """Create the file with generation 0 of every page, fsynced."""
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        target.fd = os.open(target.path, flags, 0o644)
        _write_all(target.fd, initial, 0)
        os.fsync(target.fd)

    def store(self, target: Target, page: int, data: memoryview, previous: memoryview) -> None:
        """One pwrite() of `data` at the page's offset."""
        _write_all(target.fd, data, page * PAGE_SIZE)


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """pwrite() all of `data`; a short write is an error (a page must never be split)."""
    done = os.pwrite(fd, data, offset)
    if done != len(data):
        raise OSError(f"short pwrite at offset {offset}: {done} of {len(data)} bytes")
