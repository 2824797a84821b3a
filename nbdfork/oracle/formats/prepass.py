"""The shared per-WRITE pre-pass: one look at every sector of a WRITE for all formats at once.

Every format finds its blocks by content at a few fixed offsets of a sector (a magic, a tail,
a learned fsid) and by place (superblock offsets, learned tables). Each declares the first
half of those content clues as *probes*: the 2-byte words its blocks may hold at a given
offset of a sector (`BlockFormat.probes`). `Prepass` reads the word at each probe offset of
every sector of a WRITE in one C call (a struct unpack; numpy for large WRITEs) and tests them
all against the union of every format's words. When none matches, no format can find a block
by content, and each runs only its `scan_placed`; when one matches anywhere, every format runs
its full `scan`, as without the pre-pass. Most WRITEs are data, not metadata: for them the
formats cost one unpack and a set test instead of a scan each.

The test is exact only for WRITEs of whole sectors at a sector-aligned device offset (every
WRITE the kernel sends); any other WRITE gets the full scans.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

import numpy as np
import numpy.typing as npt

from nbdfork.oracle.formats.base import SECTOR, Probes

__all__ = ["Prepass"]

_WORD: Final = 2
_STRUCT_SECTORS: Final = 64  # up to 32 KiB a struct unpack is cheaper than numpy's calls


def _word(raw: bytes) -> int:
    """A probe word as the pre-pass reads it (little-endian u16)."""
    if len(raw) != _WORD:
        raise ValueError(f"a probe word is {_WORD} bytes, not {raw!r}")
    return int.from_bytes(raw, "little")


class Prepass:
    """Which WRITEs can hold a block of any of a set of formats, from their probes.

    Built from the probes the formats declare now: a format whose probes change (it learned
    a geometry) needs a new Prepass.
    """

    def __init__(self, probes: Iterable[Probes | None]) -> None:
        by_offset: dict[int, set[int]] = {}
        self.always_scan = False  # a format that cannot say where it looks
        for declared in probes:
            if declared is None:
                self.always_scan = True
                continue
            for offset, words in declared.items():
                if offset % _WORD or not 0 <= offset <= SECTOR - _WORD:
                    raise ValueError(f"probe offset {offset} is not an even offset in a sector")
                by_offset.setdefault(offset, set()).update(map(_word, words))
        self.offsets = tuple(sorted(o for o, words in by_offset.items() if words))
        self._each = tuple(frozenset(by_offset[o]) for o in self.offsets)
        self._words = frozenset().union(*self._each)
        self._first = frozenset(w & 0xFF for w in self._words)  # their first bytes
        self._columns: list[tuple[int, npt.NDArray[np.bool_]]] = []
        for offset in self.offsets:
            table = np.zeros(1 << 16, dtype=np.bool_)
            table[sorted(by_offset[offset])] = True
            self._columns.append((offset // _WORD, table))
        self._layouts: dict[int, tuple[struct.Struct, struct.Struct]] = {}

    def clear(self, data: bytes | bytearray | memoryview, device_offset: int) -> bool:
        """True when no format can find a block in `data` (a WRITE at `device_offset`, a flat
        byte buffer) by its content: no sector holds a probe word at its offset. False also
        when the WRITE is not whole sectors at an aligned offset, or a format cannot be
        pre-passed."""
        length = len(data)
        if length % SECTOR or device_offset % SECTOR or self.always_scan or not length:
            return False
        layouts = self._layouts.get(length)
        if layouts is None:
            if not self.offsets:
                return True
            if length > _STRUCT_SECTORS * SECTOR:
                return self._clear_numpy(data)
            layouts = self._layouts[length] = (
                _layout(self.offsets, "B", length),
                _layout(self.offsets, "H", length),
            )
        bytes_at, words_at = layouts
        # First the first byte of every probed word (small ints: nothing allocated), then,
        # where one could start a probe word, the words themselves, offset by offset.
        if self._first.isdisjoint(bytes_at.unpack_from(data)):
            return True
        found = words_at.unpack_from(data)  # the words at each probe offset of sector 0, 1...
        if self._words.isdisjoint(found):
            return True
        count = len(self._each)
        return all(words.isdisjoint(found[i::count]) for i, words in enumerate(self._each))

    def _clear_numpy(self, data: bytes | bytearray | memoryview) -> bool:
        """clear() of a large WRITE: one column of words per probe offset, looked up."""
        words = np.frombuffer(data, dtype="<u2").reshape(-1, SECTOR // _WORD)
        return not any(table[words[:, column]].any() for column, table in self._columns)


def _layout(offsets: Iterable[int], code: str, length: int) -> struct.Struct:
    """The struct of the `code` field ("B": a byte, "H": a word) at each of `offsets` in
    every sector of a WRITE of `length` bytes, sector after sector."""
    layout, at = [], 0
    size = struct.calcsize(code)
    for offset in offsets:
        layout.append(f"{offset - at}x{code}" if offset > at else code)
        at = offset + size
    layout.append(f"{SECTOR - at}x" if at < SECTOR else "")
    return struct.Struct("<" + "".join(layout) * (length // SECTOR))
