"""`odirect`: O_DIRECT writes whose user buffer another thread rewrites during the I/O.

The bio points at user memory and nbd copies it into the socket at send time, so a buffer
changed during the I/O tears the WRITE whatever stable_writes says (xfstests generic/761) —
unless the kernel bounces the buffer: XFS from 7.0 copies a direct write into a kernel buffer
at submission when the device requires stable writes (iomap IOMAP_DIO_BOUNCE). A change made
*during* that copy still tears, and no kernel can prevent it; so `odirect` mutates from the
moment the syscall starts (submission included), while `odirect_inflight` waits
`mutate_after_s` before its first change — long after submission, while the WRITE is still on
its way to the device — and records when each I/O's first change came, against the syscall.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time

from nbdfork.workloads.base import PAGE_SIZE, Target, Workload

__all__ = ["OdirectChurnWorkload", "OdirectInflightWorkload", "OdirectWorkload"]

_FLIP_PAUSE_S = 0.0002
_NS = 1_000_000_000


class OdirectWorkload(Workload):
    """pwrite() with O_DIRECT from a page-aligned buffer; a mutator flips it during the I/O."""

    name = "odirect"
    mutate_after_s = 0.0  # from the syscall's start: 0 changes the buffer during submission
    write_flags = 0  # pwritev2 flags (RWF_ATOMIC for `atomic`)

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
            started_ns=0,
            mutated_ios=0,
            first_change_ns=[],
            syscall_ns=[],
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
        x["started_ns"] = time.perf_counter_ns()
        x["inflight"].set()
        try:
            if self.write_flags:
                done = os.pwritev(target.fd, [buf], page * PAGE_SIZE, self.write_flags)
            else:
                done = os.pwrite(target.fd, buf, page * PAGE_SIZE)
        finally:
            x["inflight"].clear()
            if len(x["syscall_ns"]) < _MAX_TIMES:
                x["syscall_ns"].append(time.perf_counter_ns() - x["started_ns"])
            x["idle"].set()
        if done != PAGE_SIZE:
            raise OSError(f"short O_DIRECT write at page {page}: {done} bytes")

    def start_helpers(self, targets: list[Target]) -> list[threading.Thread]:
        """One mutator per writer."""
        return [self._thread(f"mutator-{t.index}", self._mutate, t) for t in targets]

    def _mutate(self, target: Target) -> None:
        x = target.extra
        delay_ns = int(self.mutate_after_s * _NS)
        while not self._stop.is_set():
            if not x["inflight"].wait(0.05):
                continue
            buf, current, previous = x["buf"], x["current"], x["previous"]
            started = x["started_ns"]
            if delay_ns:
                wait = (started + delay_ns - time.perf_counter_ns()) / _NS
                if wait > 0:
                    time.sleep(wait)
                if x["started_ns"] != started:  # that I/O ended meanwhile: wait for the next
                    continue
            first = True
            # Flip until the write returns: whenever the driver copies, the buffer is either
            # generation or a mix. The pause hands the GIL back and leaves the vCPU to the I/O.
            while x["inflight"].is_set() and x["started_ns"] == started:
                buf[:] = previous
                buf[:] = current
                x["mutations"] += 1
                if first:
                    first = False
                    x["mutated_ios"] += 1
                    if len(x["first_change_ns"]) < _MAX_TIMES:
                        x["first_change_ns"].append(time.perf_counter_ns() - started)
                time.sleep(_FLIP_PAUSE_S)
            x["idle"].wait(0.5)

    def extra_summary(self, targets: list[Target]) -> dict[str, object]:
        """How often the buffers were rewritten during an I/O, and when, against the syscall:
        `first_change_ms` is when an I/O's buffer first changed after its syscall began."""
        first = sorted(v for t in targets for v in t.extra["first_change_ns"])
        calls = sorted(v for t in targets for v in t.extra["syscall_ns"])
        return {
            "buffer_mutations": sum(int(t.extra["mutations"]) for t in targets),
            "mutated_ios": sum(int(t.extra["mutated_ios"]) for t in targets),
            "mutate_after_ms": self.mutate_after_s * 1e3,
            "first_change_ms": _quantiles(first),
            "syscall_ms": _quantiles(calls),
        }

    def close(self, target: Target) -> None:
        """Release the buffer, then close."""
        target.extra["buf"].close()
        super().close(target)


_MAX_TIMES = 100_000


def _quantiles(values_ns: list[int]) -> dict[str, float | None]:
    """min / p50 / p99 / max in milliseconds of sorted nanosecond values."""
    if not values_ns:
        return {"min": None, "p50": None, "p99": None, "max": None}

    def at(q: float) -> float:
        return round(values_ns[min(len(values_ns) - 1, int(q * len(values_ns)))] / 1e6, 4)

    return {"min": at(0.0), "p50": at(0.5), "p99": at(0.99), "max": round(values_ns[-1] / 1e6, 4)}


class OdirectInflightWorkload(OdirectWorkload):
    """`odirect` whose buffer changes only from `mutate_after_s` after the syscall began: long
    after the kernel submitted (and, where it bounces, copied) the buffer."""

    name = "odirect_inflight"
    mutate_after_s = 0.0015


_SECTOR = 512
_CHURN_AT = 40  # byte of each sector the counter goes to: the stamp's first fill word
_CHURN_YIELD = 8  # counter rounds between two GIL hand-overs


class OdirectChurnWorkload(OdirectWorkload):
    """`odirect` whose buffer never holds one version while the I/O is in the kernel: the
    mutator writes a fresh counter into every 512-byte sector, again and again, until the
    syscall returns. A layer that checksums, mirrors or computes parity from the buffer at one
    instant and a device copy taken at another then see different bytes (the stamp's tags stay
    whole: the device's oracle sees a page whose crc fails, located at the counter).

    `odirect` only swaps two whole versions, so a checksum and a copy usually both catch the
    same one; churn is what makes btrfs (6.1) write data whose own checksum fails."""

    name = "odirect_churn"

    def _mutate(self, target: Target) -> None:
        x = target.extra
        counter = 0
        while not self._stop.is_set():
            if not x["inflight"].wait(0.05):
                continue
            buf, started, first = x["buf"], x["started_ns"], True
            while x["inflight"].is_set() and x["started_ns"] == started:
                counter += 1
                for offset in range(_CHURN_AT, PAGE_SIZE, _SECTOR):
                    struct.pack_into("<Q", buf, offset, counter)
                x["mutations"] += 1
                if first:
                    first = False
                    x["mutated_ios"] += 1
                    if len(x["first_change_ns"]) < _MAX_TIMES:
                        x["first_change_ns"].append(time.perf_counter_ns() - started)
                if counter % _CHURN_YIELD == 0:
                    time.sleep(0)
            x["idle"].wait(0.5)
