"""jbd2 journal blocks (ext4's journal): superblock v2, descriptor, commit and revoke blocks.

Read from Linux 6.1.192 include/linux/jbd2.h, fs/jbd2/journal.c (jbd2_superblock_csum,
jbd2_descriptor_block_csum_set), fs/jbd2/commit.c (jbd2_commit_block_csum_set) and
fs/jbd2/recovery.c. Every block starts with the big-endian magic 0xc03b3998, a block type and
the transaction sequence, which is the block's version. Checksums are crc32c_raw (no
inversion), stored big-endian: the superblock's over its 1024 bytes from seed ~0, the others
over the whole journal block from the seed crc32c_raw(~0, s_uuid) -- so a journal superblock
with a checksum feature must be seen before any other jbd2 block can be checked.

A checked block's ident is its journal's checksum seed (from s_uuid): sequences are compared only
within one journal. A new filesystem on the same device (mkfs, as a storage stack does each run)
starts its journal's sequence again, and where the filesystem's own superblock is not at the
device's start (md, dm-integrity) nothing else tells the oracle that the journal is new.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from nbdfork.oracle.formats.base import (
    FormatBlock,
    Probes,
    Verdict,
    crc32c_raw,
    sector_candidates,
)

__all__ = ["MAGIC", "PROBES", "Jbd2Journal"]

MAGIC: Final = b"\xc0\x3b\x39\x98"
PROBES: Final[Probes] = {0: (MAGIC[:2],)}
"""What the pre-pass looks for: the magic's first bytes at a sector start."""
_BE32: Final = struct.Struct(">I")
_MASK: Final = 0xFFFF_FFFF
_FIRST: Final = re.compile(b"\xc0")
_DESCRIPTOR, _COMMIT, _SB_V1, _SB_V2, _REVOKE = 1, 2, 3, 4, 5
_KINDS: Final = {1: "jbd2.descriptor", 2: "jbd2.commit", 3: "jbd2.super", 4: "jbd2.super",
                 5: "jbd2.revoke"}  # fmt: skip
_SB_SIZE: Final = 1024  # sizeof(journal_superblock_t)
_SB_CSUM: Final = 0xFC
_CSUM_V2_V3: Final = 0x08 | 0x10  # JBD2_FEATURE_INCOMPAT_CSUM_V2 | _V3
_COMMIT_CSUM: Final = 16  # commit_header.h_chksum[0]
_Result = Callable[..., FormatBlock]


@dataclass(frozen=True, slots=True)
class _Journal:
    """What the journal superblock says that other journal blocks need."""

    blocksize: int
    csum_seed: int | None  # None: the journal has no v2/v3 checksums


def _zeroed(block: memoryview, at: int, length: int) -> bytes:
    out = bytearray(block[:length])
    out[at : at + 4] = bytes(4)
    return bytes(out)


class Jbd2Journal:
    """The jbd2 blocks of one journal, judged against its learned superblock."""

    def __init__(self) -> None:
        self.journal: _Journal | None = None

    def scan(self, data: memoryview, device_offset: int) -> list[FormatBlock]:
        """Every jbd2 block starting at a sector start of `data`, judged."""
        found = []
        for p in sector_candidates(data, _FIRST):
            if bytes(data[p : p + 4]) == MAGIC and len(data) - p >= 12:
                btype = _BE32.unpack_from(data, p + 4)[0]
                if btype in _KINDS:
                    found.append(self._judge(data[p:], btype, device_offset + p))
        return found

    def _judge(self, block: memoryview, btype: int, at: int) -> FormatBlock:
        sequence = _BE32.unpack_from(block, 8)[0]

        def result(
            length: int, verdict: Verdict, reason: str = "", journal: int | None = None
        ) -> FormatBlock:
            ident = () if journal is None else (journal,)
            return FormatBlock("ext4", _KINDS[btype], at, length, sequence, ident, verdict,
                               None, reason, 32)  # fmt: skip (tid_t wraps: tid_gt())

        if btype in (_SB_V1, _SB_V2):
            return self._superblock(block, btype, result)
        journal = self.journal
        if journal is None:
            return result(0, Verdict.UNCHECKED, "no journal superblock seen yet")
        size = journal.blocksize
        if journal.csum_seed is None:
            return result(size, Verdict.UNCHECKED, "journal has no checksum feature")
        if len(block) < size:
            return result(size, Verdict.UNCHECKED, "block extends beyond this WRITE")
        field = _COMMIT_CSUM if btype == _COMMIT else size - 4
        want = _BE32.unpack_from(block, field)[0]
        got = crc32c_raw(journal.csum_seed, _zeroed(block, field, size))
        if got != want:
            return result(size, Verdict.TORN, "jbd2 checksum mismatch")
        return result(size, Verdict.OK, journal=journal.csum_seed)

    def _superblock(self, block: memoryview, btype: int, result: _Result) -> FormatBlock:
        if len(block) < _SB_SIZE:
            return result(_SB_SIZE, Verdict.UNCHECKED, "block extends beyond this WRITE")
        blocksize = _BE32.unpack_from(block, 0x0C)[0]
        incompat = _BE32.unpack_from(block, 0x28)[0]
        if btype == _SB_V1 or not incompat & _CSUM_V2_V3:
            self.journal = _Journal(blocksize, None)
            return result(_SB_SIZE, Verdict.UNCHECKED, "journal has no checksum feature")
        want = _BE32.unpack_from(block, _SB_CSUM)[0]
        if crc32c_raw(_MASK, _zeroed(block, _SB_CSUM, _SB_SIZE)) != want:
            return result(_SB_SIZE, Verdict.TORN, "jbd2 superblock checksum mismatch")
        self.journal = _Journal(blocksize, crc32c_raw(_MASK, block[0x30:0x40]))
        return result(_SB_SIZE, Verdict.OK, journal=self.journal.csum_seed)
