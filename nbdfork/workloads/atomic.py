"""`atomic`: RWF_ATOMIC (untorn) O_DIRECT writes of stamped pages, buffers changed in flight.

An untorn write promises all or nothing of its range on the media (Linux 6.11+; pwritev2 flag
RWF_ATOMIC, limits in statx's stx_atomic_write_unit_min/max). nbd advertises no atomic write
limits, but XFS from 6.16 offers software atomic writes on any device when the filesystem has
reflink (out-of-place writes). The workload probes statx first and is skipped, with the
reason, where the kernel or filesystem offers no unit that fits a page; otherwise it writes
each page as one atomic write while a mutator changes the buffer from `mutate_after_s` on, as
`odirect_inflight` does. A torn stamped page from an atomic write is a verdict like any other.
"""

from __future__ import annotations

import ctypes
import os
import struct

from nbdfork.workloads.base import PAGE_SIZE, Target, WorkloadSkipped
from nbdfork.workloads.odirect import OdirectWorkload

__all__ = ["RWF_ATOMIC", "AtomicLimits", "AtomicWorkload", "atomic_limits"]

RWF_ATOMIC = 0x40  # include/uapi/linux/fs.h; Python 3.11's os module does not name it
_STATX_WRITE_ATOMIC = 0x0001_0000
_AT_EMPTY_PATH = 0x1000
_SYS_STATX = 332  # x86_64
_STATX_SIZE = 256
_MASK = struct.Struct("<I")
_ATOMIC = struct.Struct("<III")  # unit_min, unit_max, segments_max at offset 0xa8
_ATOMIC_OFFSET = 0xA8

_libc = ctypes.CDLL(None, use_errno=True)


AtomicLimits = tuple[int, int, int]
"""(unit_min, unit_max, segments_max) in bytes; (0, 0, 0) when not offered."""


def atomic_limits(fd: int) -> AtomicLimits:
    """statx(STATX_WRITE_ATOMIC) of an open file; OSError if statx fails, zeros if the kernel
    or filesystem does not report atomic write limits."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _libc.syscall(_SYS_STATX, fd, b"", _AT_EMPTY_PATH, _STATX_WRITE_ATOMIC, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"statx: {os.strerror(err)}")
    (mask,) = _MASK.unpack_from(buf.raw, 0)
    if not mask & _STATX_WRITE_ATOMIC:
        return (0, 0, 0)
    limits: AtomicLimits = _ATOMIC.unpack_from(buf.raw, _ATOMIC_OFFSET)
    return limits


class AtomicWorkload(OdirectWorkload):
    """O_DIRECT + RWF_ATOMIC page writes where statx offers a unit that fits a page."""

    name = "atomic"
    mutate_after_s = 0.0015
    write_flags = RWF_ATOMIC

    def open(self, target: Target, initial: bytes) -> None:
        """Create the file, then require an atomic write unit that covers one page."""
        super().open(target, initial)
        limits = atomic_limits(target.fd)
        target.extra["atomic_limits"] = limits
        unit_min, unit_max, _ = limits
        if not unit_min <= PAGE_SIZE <= unit_max:
            os.close(target.fd)
            raise WorkloadSkipped(
                "no atomic write of one 4 KiB page here: statx atomic write unit "
                f"min {unit_min} / max {unit_max} bytes (kernel {os.uname().release})"
            )

    def extra_summary(self, targets: list[Target]) -> dict[str, object]:
        """The odirect counters and the atomic limits statx reported."""
        limits = targets[0].extra.get("atomic_limits", (0, 0, 0)) if targets else (0, 0, 0)
        return {**super().extra_summary(targets),
                "atomic_write_unit_min": limits[0], "atomic_write_unit_max": limits[1],
                "atomic_write_segments_max": limits[2]}  # fmt: skip
