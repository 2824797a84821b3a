"""What every format shares: the verdict on one block, the format protocol, and crc32c in the
two conventions the kernel and fio use.

A format finds the blocks of one writer (fio, a filesystem) inside the bytes of one WRITE and
judges each: ``ok`` (its checksum matches what arrived), ``torn`` (it does not), or
``unchecked`` (recognised, but this format cannot check it here; the reason says why). A WRITE
with no recognisable block yields an empty list and must cost almost nothing: formats reject
data by looking at a few bytes per sector before they parse anything, and declare those bytes
(`BlockFormat.probes`) so that one pre-pass (nbdfork.oracle.formats.prepass) looks at them for
every format at once.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import crc32c as _crc32c

__all__ = [
    "SECTOR",
    "BlockFormat",
    "FormatBlock",
    "Probes",
    "Verdict",
    "crc32c_raw",
    "crc32c_std",
    "crc32c_std_skip",
    "older",
    "sector_candidates",
]

SECTOR: Final = 512
_MASK: Final = 0xFFFF_FFFF


class Verdict(enum.StrEnum):
    """The judgement on one recognised block."""

    OK = "ok"
    TORN = "torn"
    UNCHECKED = "unchecked"


@dataclass(frozen=True, slots=True)
class FormatBlock:
    """One block of another writer's format found in a WRITE, and its verdict.

    `offset` is the device byte offset of the block's first byte and `length` the bytes its
    checksum covers. `version` grows with every rewrite of the block (fio numberio, XFS LSN,
    btrfs generation, jbd2 sequence) and is None where the format carries none; `ident` is what
    the block says it is besides its place (fio's file offset and thread, btrfs bytenr and
    owner, XFS daddr or inode number), so that versions are compared only between blocks of the
    same ident. `torn_at` is the device byte offset of the first byte known bad when the layout
    locates a tear (a sub-block checksum, a per-sector stamp), else None. `version_bits` is
    the width of `version` on disk: a narrow counter (fio <= 3.40's 16-bit numberio, jbd2's
    32-bit tid) wraps, and is compared in serial-number arithmetic (`older`).
    """

    format: str
    kind: str
    offset: int
    length: int
    version: int | None
    ident: tuple[int, ...]
    verdict: Verdict
    torn_at: int | None = None
    reason: str = ""
    version_bits: int = 64

    def older_than(self, other: int) -> bool:
        """Whether this block's version is older than `other` (a version of the same ident)."""
        assert self.version is not None
        return older(self.version, other, self.version_bits)


def older(version: int, than: int, bits: int = 64) -> bool:
    """`version` < `than`, in serial-number arithmetic (RFC 1982) when `bits` < 64: a counter
    that wrapped is newer, not older, when it is less than half its range behind."""
    if bits >= 64:
        return version < than
    diff = (than - version) % (1 << bits)
    return 0 < diff < 1 << (bits - 1)


Probes = Mapping[int, Collection[bytes]]
"""Byte offset in a sector -> the 2-byte words a format's content scan needs to see there."""


class BlockFormat(Protocol):
    """A format: finds and judges its blocks in one WRITE; may learn geometry as it goes.

    Instances are per device (a superblock seen on one device says nothing about another).
    The pre-pass contract: for a WRITE of whole sectors at a sector-aligned device offset in
    which no sector holds, at any offset of `probes()`, one of the words listed there,
    `scan_placed` returns what `scan` would, with the same effect on the format's state.
    """

    name: str
    places: bool
    """Whether `scan_placed` can find anything (False: it returns [], and is not called)."""

    def scan(self, data: memoryview, device_offset: int) -> list[FormatBlock]:
        """The blocks of this format in `data`, a WRITE landing at byte `device_offset`."""
        ...

    def probes(self) -> Probes | None:
        """Where `scan` looks for content, as the pre-pass reads it (None: every WRITE needs the
        full scan). May change only when the format's `geometry` attribute does."""
        ...

    def scan_placed(self, data: memoryview, device_offset: int) -> list[FormatBlock]:
        """`scan` of a WRITE in which the pre-pass found no probe word: blocks found by place."""
        ...


def crc32c_std(data: bytes | memoryview, prev: int = 0) -> int:
    """The standard CRC-32C (init ~0, final xor ~0), continuing from the standard crc `prev`."""
    return int(_crc32c.crc32c(data, value=prev))


def crc32c_raw(seed: int, data: bytes | memoryview) -> int:
    """The kernel's crc32c(seed, data): the register update alone, no inversion on either side.

    ext4_chksum(), jbd2_chksum() and fio's crc32c_sw() compute this; the standard crc is
    ``crc32c_raw(~0, data) ^ ~0``.
    """
    return int(_crc32c.crc32c(data, value=seed ^ _MASK)) ^ _MASK


def crc32c_std_skip(data: memoryview, length: int, field: int, width: int = 4) -> int:
    """Standard CRC-32C of data[:length] read with `width` bytes at `field` as zeros."""
    crc = crc32c_std(data[:field])
    crc = crc32c_std(bytes(width), crc)
    return crc32c_std(data[field + width : length], crc)


def sector_candidates(
    data: memoryview, first_bytes: re.Pattern[bytes], at: int = 0, step: int = SECTOR
) -> list[int]:
    """Offsets p (multiples of `step`, +`at`) in `data` whose byte p may start a magic.

    One C-level strided copy and one regex scan over a byte per sector: a 128 KiB WRITE costs
    two calls whatever it holds.
    """
    heads = bytes(data[at::step])
    return [m.start() * step + at for m in first_bytes.finditer(heads)]
