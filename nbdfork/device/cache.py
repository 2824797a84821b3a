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
_Data = bytes | bytearray | memoryview
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
    """Media plus pending writes; fed in reply order, it knows what a power cut may keep.

    Every sector that pending writes hold has one owner, the newest write that covers it, so a
    write supersedes older data in O(its sectors) and a read of the cache's view is exact. Per
    write cost depends on the write's size only, never on how many writes are pending.
    """

    def __init__(
        self,
        media: Store,
        *,
        rng: DeviceRng | None = None,
        capacity: int | None = None,
        ignore_flush: bool = False,
    ) -> None:
        self.media = media
        self.pending: dict[int, PendingWrite] = {}  # by reply sequence number, in reply order
        self.replied = 0  # writes replied so far: a FLUSH covers those replied before it arrived
        self.ignore_flush = ignore_flush
        self._rng = rng
        self._capacity = capacity
        self._bytes = 0  # data held by pending writes (superseded sectors included)
        self._live_sectors = 0
        self._owner: dict[int, int] = {}  # device sector -> seq of the pending write holding it
        self._live_count: dict[int, int] = {}  # seq -> live sectors
        self._order: list[int] = []  # pending seqs, for a seeded O(1) pick (swap-remove)
        self._slot: dict[int, int] = {}  # seq -> index in _order

    def write(self, request_id: int, offset: int, data: _Data, *, fua: bool) -> int:
        """A write was acknowledged; returns its reply sequence number.

        Any byte range is accepted: partial sectors at either end are completed with what the
        device holds there (the newest pending data, else the media), so the cache holds whole
        sectors and destaging a sector never moves bytes the write did not change.
        """
        offset, data = self._whole_sectors(offset, data)
        first, count = offset // SECTOR, len(data) // SECTOR
        self._supersede(first, first + count)
        seq = self.replied
        self.replied += 1
        if fua and not self.ignore_flush:
            self.media.write(offset, data)
            return seq
        entry = PendingWrite(seq, request_id, offset, bytes(data), np.ones(count, dtype=np.bool_))
        self.pending[seq] = entry
        self._bytes += len(data)
        self._live_sectors += count
        self._live_count[seq] = count
        owner = self._owner
        for sector in range(first, first + count):
            owner[sector] = seq
        self._slot[seq] = len(self._order)
        self._order.append(seq)
        self._evict(seq)
        return seq

    def _whole_sectors(self, offset: int, data: _Data) -> tuple[int, _Data]:
        """(offset, data) widened to whole sectors with the bytes the device holds around it."""
        head, end = offset % SECTOR, offset + len(data)
        tail = -end % SECTOR
        if not head and not tail:
            return offset, data
        start, stop = offset - head, end + tail
        buf = bytearray(stop - start)
        # Only the two edge sectors hold bytes the write does not bring: read just those.
        buf[:SECTOR] = self.read(start, SECTOR)
        buf[-SECTOR:] = self.read(stop - SECTOR, SECTOR)
        buf[head : head + len(data)] = data
        return start, buf

    def read(self, offset: int, length: int) -> bytes:
        """What the device holds (pending data over the media) for whole sectors."""
        buf = bytearray(self.media.read(offset, length))
        for sector in range(offset // SECTOR, (offset + length) // SECTOR):
            seq = self._owner.get(sector)
            if seq is not None:
                entry = self.pending[seq]
                at, src = sector * SECTOR - offset, sector * SECTOR - entry.offset
                buf[at : at + SECTOR] = entry.data[src : src + SECTOR]
        return bytes(buf)

    def _evict(self, seq: int) -> None:
        """Over capacity: destage seeded random pending writes, as a disk frees its cache."""
        if self._capacity is None or self._rng is None:
            return
        draw = 0
        while self._bytes > self._capacity and self._order:
            pick = self._order[int(self._rng.uniform(_PURPOSE_EVICT, seq, draw) * len(self._order))]
            self.destage(pick)
            draw += 1

    def discard(self, offset: int, length: int) -> None:
        """A trim/zero was acknowledged: modelled as a durable write of zeroes."""
        start, end = offset // SECTOR, -(-(offset + length) // SECTOR)
        self._supersede(start, end)
        self.media.discard(offset, length)

    def _supersede(self, start: int, end: int) -> None:
        """Sectors [start, end) get newer data: older pending writes lose them."""
        owner = self._owner
        for sector in range(start, end):
            seq = owner.pop(sector, None)
            if seq is None:
                continue
            entry = self.pending[seq]
            entry.live[sector - entry.offset // SECTOR] = False
            self._live_sectors -= 1
            self._live_count[seq] -= 1
            if not self._live_count[seq]:
                self._drop(seq)

    def _drop(self, seq: int) -> PendingWrite:
        """Forget pending write `seq` (its live sectors are no longer owned by it)."""
        entry = self.pending.pop(seq)
        self._bytes -= len(entry.data)
        del self._live_count[seq]
        slot, last = self._slot.pop(seq), self._order.pop()
        if last != seq:
            self._order[slot] = last
            self._slot[last] = slot
        return entry

    def flush(self, covered: int) -> list[int]:
        """A FLUSH that arrived after `covered` replies completed: destage those writes."""
        if self.ignore_flush:
            return []
        done: list[int] = []
        for seq in self.pending:  # reply order: stop at the first write the FLUSH does not cover
            if seq >= covered:
                break
            done.append(seq)
        for seq in done:
            self.destage(seq)
        return done

    def destage(self, seq: int) -> None:
        """Move one pending write's live sectors to the media."""
        entry = self.pending[seq]
        first = entry.offset // SECTOR
        for offset, chunk in entry.live_runs():
            self.media.write(offset, chunk)
        for index in np.flatnonzero(entry.live).tolist():
            del self._owner[first + index]
        self._live_sectors -= self._live_count[seq]
        self._drop(seq)

    def pending_bytes(self) -> int:
        """Bytes held in the cache (live sectors); safe to read from any thread."""
        return self._live_sectors * SECTOR

    def close(self) -> None:
        """Release the media mapping."""
        self.media.close()
