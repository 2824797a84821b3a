"""Other writers' blocks in the per-WRITE path: the formats a device judges besides its stamp.

`FormatJudge` owns the device's format instances (nbdfork.oracle.formats: stateful, they learn
geometry from superblocks, so scans are serialised under one lock) and what the verdicts need
beyond one WRITE: the newest version replied per block. The Oracle calls it on arrival (scan,
torn and stale-on-arrival verdicts) and on landing (stale-on-reply, replied versions), under its
own lock, so format verdicts follow the same NBD ordering rules as the stamp's.

A block's version is compared only with versions of the same format, place and ident. Two rules
keep a legal rewrite from looking stale: a new filesystem (the format's learned geometry
changes: mkfs) forgets that format's versions, and fio's numberio, which restarts at 0 with
every fio invocation, is compared only within one NBD connection (one client run).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np

from nbdfork.device.requests import SECTOR_SIZE, WriteRequest
from nbdfork.oracle.formats import FormatBlock, Verdict, formats_for
from nbdfork.oracle.formats.prepass import Prepass
from nbdfork.oracle.stamp import Buffer
from nbdfork.verdicts import Verdict as Kind

__all__ = ["BLOCK_COUNTS", "CONNECTION_SCOPED", "BlockKey", "FormatJudge", "block_event"]

BLOCK_COUNTS: Final = ("blocks", "ok_blocks", "torn_blocks", "unchecked_blocks")
"""Per format, besides the verdict counts: blocks found and how each was judged."""
CONNECTION_SCOPED: Final = frozenset({"fio"})
"""Formats whose versions restart with each client (fio's numberio per invocation)."""

BlockKey = tuple[str, int, tuple[int, ...], int]
"""(format, device offset, ident, connection or 0): where a replied version is kept."""

_COUNT_OF: Final = {Verdict.OK: "ok_blocks", Verdict.TORN: "torn_blocks",
                    Verdict.UNCHECKED: "unchecked_blocks"}  # fmt: skip


def _where(req: WriteRequest) -> dict[str, object]:
    return {"time": req.time, "connection": req.connection, "request_id": req.request_id}


def block_event(
    kind: str, req: WriteRequest, block: FormatBlock, **extra: object
) -> dict[str, object]:
    """A verdict on a format block: where it lies, what it is and which version it carries."""
    return {
        "event": kind, "format": block.format, "kind": block.kind, "offset": block.offset,
        "lba": block.offset // SECTOR_SIZE, "length": block.length, "version": block.version,
        "ident": list(block.ident), **extra, **_where(req),
    }  # fmt: skip


class FormatJudge:
    """The format half of one device's oracle (callers hold the Oracle's lock except in scan)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.formats = formats_for(names)
        self.names = tuple(f.name for f in self.formats)
        self._scan_lock = threading.Lock()
        self._geometry: list[object] = [None] * len(self.formats)  # each format's, as seen
        self._replied: dict[BlockKey, int] = {}
        self.prepass = Prepass(f.probes() for f in self.formats)
        self._placing = [(i, f) for i, f in enumerate(self.formats) if f.places]

    def scan(self, data: Buffer, offset: int) -> tuple[FormatBlock, ...]:
        """Every block of every format in one WRITE (formats learn as they go: one at a time).

        The shared pre-pass first: when no sector holds a word any format probes for, the
        formats that place blocks only look there (`scan_placed`), which finds the same."""
        found: list[FormatBlock] = []
        raw = data.data if isinstance(data, np.ndarray) else data
        with self._scan_lock:
            if self.prepass.clear(raw, offset):
                if not self._placing:
                    return ()
                view = _view(raw)
                for i, fmt in self._placing:
                    found += fmt.scan_placed(view, offset)
                    if getattr(fmt, "geometry", None) is not self._geometry[i]:
                        self._learned(i, getattr(fmt, "geometry", None))
            else:
                view = _view(raw)
                for i, fmt in enumerate(self.formats):
                    found += fmt.scan(view, offset)
                    if getattr(fmt, "geometry", None) is not self._geometry[i]:
                        self._learned(i, getattr(fmt, "geometry", None))
        return tuple(found)

    def _learned(self, index: int, geometry: object) -> None:
        """Format `index` read a superblock: its probes may have changed, and if the geometry
        differs (mkfs), its old versions describe nothing now."""
        known, self._geometry[index] = self._geometry[index], geometry
        self.prepass = Prepass(f.probes() for f in self.formats)
        # identity first (in scan): the dataclass __eq__ runs only when a superblock was read
        if geometry != known:
            name = self.formats[index].name
            stale = [key for key in self._replied if key[0] == name]
            for key in stale:
                del self._replied[key]

    @staticmethod
    def _key(block: FormatBlock, connection: int) -> BlockKey:
        scope = connection if block.format in CONNECTION_SCOPED else 0
        return (block.format, block.offset, block.ident, scope)

    def arrived(
        self, req: WriteRequest, blocks: Iterable[FormatBlock], counts: Sequence[Counter[str]]
    ) -> tuple[list[dict[str, object]], tuple[FormatBlock, ...]]:
        """Torn and stale-on-arrival verdicts on `blocks` (counted into each of `counts`, keys
        `format.name`), and the versioned blocks to record when the WRITE lands."""
        events: list[dict[str, object]] = []
        track: list[FormatBlock] = []
        for block in blocks:
            for c in counts:
                c[f"{block.format}.blocks"] += 1
                c[f"{block.format}.{_COUNT_OF[block.verdict]}"] += 1
            if block.verdict is Verdict.TORN:
                events.append(block_event(
                    Kind.TORN.value, req, block, torn_at=block.torn_at, reason=block.reason,
                    write_offset=req.offset, write_length=req.length, phase="write",
                ))  # fmt: skip
            elif block.verdict is Verdict.OK and block.version is not None:
                newer = self._replied.get(self._key(block, req.connection))
                if newer is not None and block.older_than(newer):
                    events.append(self._stale(req, block, newer, "arrival"))
                else:
                    track.append(block)
        return events, tuple(track)

    def landed(self, req: WriteRequest, track: Iterable[FormatBlock]) -> list[dict[str, object]]:
        """The WRITE reached the media: its versions become the replied ones; a version older
        than the one standing there is a stale_write of phase "reply"."""
        events = []
        replied = self._replied
        for block in track:
            assert block.version is not None
            key = self._key(block, req.connection)
            newer = replied.get(key)
            if newer is not None and block.older_than(newer):
                events.append(self._stale(req, block, newer, "reply"))
            else:
                replied[key] = block.version
        return events

    @staticmethod
    def _stale(req: WriteRequest, block: FormatBlock, newer: int, phase: str) -> dict[str, object]:
        return block_event(Kind.STALE.value, req, block, replied_version=newer,
                           generations=[block.version, newer], phase=phase)  # fmt: skip


def _view(data: bytes | bytearray | memoryview) -> memoryview:
    """A payload as a flat byte view (nbdkit hands a memoryview; tests bytes or arrays)."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def covering(
    blocks: Iterable[FormatBlock], start: int, end: int
) -> FormatBlock | None:
    """The first block of `blocks` sharing a byte with the device range [start, end)."""
    for block in blocks:
        if block.offset < end and start < block.offset + block.length:
            return block
    return None
