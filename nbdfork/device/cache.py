"""The volatile write cache: what is durable, what is only acknowledged, per the NBD rule.

NBD's durability rule (proto.md, "Ordering of messages and writes"): a write the server
replied to before it processed a FLUSH is durable when the FLUSH replies; a FUA write is
durable when it replies; nothing else is ordered. The cache keeps the media image (durable
data) and the acknowledged-but-volatile writes in reply order. A newer write supersedes the
sectors it covers in older pending writes, so destaging in any order never lets old data
overwrite newer data — the one ordering a real disk keeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from nbdfork.device.rng import DeviceRng
from nbdfork.device.store import Store

__all__ = ["SECTOR", "CacheModel", "PendingWrite"]

SECTOR = 512
_PURPOSE_EVICT = 401


@dataclass(slots=True)
class PendingWrite:
    """An acknowledged write not yet durable; `live` marks sectors no newer write superseded."""

    seq: int
    request_id: int
    offset: int
    data: bytes
    live: npt.NDArray[np.bool_] = field(repr=False)

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.offset + len(self.data)

    def live_runs(self) -> Iterator[tuple[int, bytes]]:
        """(offset, bytes) of each run of live sectors."""
        yield from _runs(self.offset, self.data, self.live)


def _runs(offset: int, data: bytes, mask: npt.NDArray[np.bool_]) -> Iterator[tuple[int, bytes]]:
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        yield offset + int(start) * SECTOR, data[int(start) * SECTOR : int(end) * SECTOR]


class CacheModel:
    """Media plus pending writes; fed in reply order, it knows what a power cut may keep."""

    def __init__(
        self,
        media: Store,
        *,
        rng: DeviceRng | None = None,
        capacity: int | None = None,
        ignore_flush: bool = False,
    ) -> None:
        self.media = media
        self.pending: dict[int, PendingWrite] = {}
        self.replied = 0  # writes replied so far: a FLUSH covers those replied before it arrived
        self.ignore_flush = ignore_flush
        self._rng = rng
        self._capacity = capacity
        self._bytes = 0  # data held by pending writes (superseded sectors included)

    def write(self, request_id: int, offset: int, data: bytes | memoryview, *, fua: bool) -> int:
        """A write was acknowledged; returns its reply sequence number."""
        if offset % SECTOR or len(data) % SECTOR:
            raise ValueError(f"write {request_id}: {offset}+{len(data)} is not sector aligned")
        self._supersede(offset, offset + len(data))
        seq = self.replied
        self.replied += 1
        if fua and not self.ignore_flush:
            self.media.write(offset, data)
        else:
            live = np.ones(len(data) // SECTOR, dtype=np.bool_)
            self.pending[seq] = PendingWrite(seq, request_id, offset, bytes(data), live)
            self._bytes += len(data)
            self._evict(seq)
        return seq

    def _evict(self, seq: int) -> None:
        """Over capacity: destage seeded random pending writes, as a disk frees its cache."""
        if self._capacity is None or self._rng is None:
            return
        draw = 0
        while self._bytes > self._capacity and self.pending:
            seqs = sorted(self.pending)
            pick = seqs[int(self._rng.uniform(_PURPOSE_EVICT, seq, draw) * len(seqs))]
            self.destage(pick)
            draw += 1

    def discard(self, offset: int, length: int) -> None:
        """A trim/zero was acknowledged: modelled as a durable write of zeroes."""
        start, end = offset // SECTOR * SECTOR, -(-(offset + length) // SECTOR) * SECTOR
        self._supersede(start, end)
        self.media.discard(offset, length)

    def _supersede(self, start: int, end: int) -> None:
        for entry in list(self.pending.values()):
            lo, hi = max(start, entry.offset), min(end, entry.end)
            if lo < hi:
                first, last = (lo - entry.offset) // SECTOR, -(-(hi - entry.offset) // SECTOR)
                entry.live[first:last] = False
                if not entry.live.any():
                    del self.pending[entry.seq]
                    self._bytes -= len(entry.data)

    def flush(self, covered: int) -> list[int]:
        """A FLUSH that arrived after `covered` replies completed: destage those writes."""
        if self.ignore_flush:
            return []
        done = [seq for seq in self.pending if seq < covered]
        for seq in done:
            self.destage(seq)
        return done

    def destage(self, seq: int) -> None:
        """Move one pending write's live sectors to the media."""
        entry = self.pending.pop(seq)
        self._bytes -= len(entry.data)
        for offset, chunk in entry.live_runs():
            self.media.write(offset, chunk)

    def pending_bytes(self) -> int:
        """Bytes held in the cache."""
        return sum(int(e.live.sum()) * SECTOR for e in self.pending.values())

    def close(self) -> None:
        """Release the media mapping."""
        self.media.close()
