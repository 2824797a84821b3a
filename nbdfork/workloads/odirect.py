"""`odirect`: O_DIRECT writes whose user buffer another thread rewrites while the I/O is in flight.

The bio points at user memory and nbd copies it into the socket at send time, so a buffer
changed during the I/O tears the WRITE whatever stable_writes says (xfstests generic/761).
"""

from __future__ import annotations

import mmap
import os
import threading
import time

from nbdfork.workloads.base import PAGE_SIZE, Target, Workload

__all__ = ["OdirectWorkload"]

_FLIP_PAUSE_S = 0.0002


class OdirectWorkload(Workload):
    """pwrite() with O_DIRECT from a page-aligned buffer; a mutator flips it during the I/O."""

    name = "odirect"

    def open(self, target: Target, initial: bytes) -> None:
        """Create the file through O_DIRECT, one page at a time from an aligned buffer."""
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_DIRECT
        target.fd = os.open(target.path, flags, 0o644)
        buf = mmap.mmap(-1, PAGE_SIZE)  # anonymous mappings are page aligned, as O_DIRECT needs
        target.extra.update(
            buf=buf,
            inflight=threading.Event(),
            idle=threading.Event(),
            current=memoryview(initial[:PAGE_SIZE]),
            previous=memoryview(initial[:PAGE_SIZE]),
            mutations=0,
        )
        target.extra["idle"].set()
        for page in range(len(initial) // PAGE_SIZE):
            lo = page * PAGE_SIZE
            buf[:] = initial[lo : lo + PAGE_SIZE]
            if os.pwrite(target.fd, buf, lo) != PAGE_SIZE:
                raise OSError(f"short O_DIRECT write creating {target.path}")
        os.fsync(target.fd)

    def store(self, target: Target, page: int, data: memoryview, previous: memoryview) -> None:
        """Fill the buffer with `data`, then write it while the mutator may rewrite it."""
        x = target.extra
        buf = x["buf"]
        buf[:] = data
        x["current"], x["previous"] = data, previous
        x["idle"].clear()
        x["inflight"].set()
        try:
            done = os.pwrite(target.fd, buf, page * PAGE_SIZE)
        finally:
            x["inflight"].clear()
            x["idle"].set()
        if done != PAGE_SIZE:
            raise OSError(f"short O_DIRECT write at page {page}: {done} bytes")

    def start_helpers(self, targets: list[Target]) -> list[threading.Thread]:
        """One mutator per writer."""
        return [self._thread(f"mutator-{t.index}", self._mutate, t) for t in targets]

    def _mutate(self, target: Target) -> None:
        x = target.extra
        while not self._stop.is_set():
            if not x["inflight"].wait(0.05):
                continue
            buf, current, previous = x["buf"], x["current"], x["previous"]
            # Flip until the write returns: whenever the driver copies, the buffer is either
            # generation or a mix. The pause hands the GIL back and leaves the vCPU to the I/O.
            while x["inflight"].is_set():
                buf[:] = previous
                buf[:] = current
                x["mutations"] += 1
                time.sleep(_FLIP_PAUSE_S)
            x["idle"].wait(0.5)

    def extra_summary(self, targets: list[Target]) -> dict[str, object]:
        """How many times the buffers were rewritten during an I/O."""
        return {"buffer_mutations": sum(int(t.extra["mutations"]) for t in targets)}

    def close(self, target: Target) -> None:
        """Release the buffer, then close."""
        target.extra["buf"].close()
        super().close(target)
