"""Areas of the device where a storage layer keeps its own copies of the writer's blocks, in a
form that is not the writer's: WRITEs there are not judged.

dm-integrity in journal mode (J) first writes every data sector into its journal, with the
sector's last 8 bytes replaced by the journal's commit id (the displaced bytes go to the
journal entry); only the later copy to the data area is the writer's block as written. Judged
as they arrive, those journal copies are torn stamped pages and torn filesystem metadata that
nobody wrote: in issue 19's 6.1 crash campaign on dm-integrity:J the oracle called 148 of 222
stamped pages torn, every one inside the journal.

The journal's extent is read from the dm-integrity superblock (drivers/md/dm-integrity.c,
struct superblock, calculate_journal_section_size() and calculate_device_limits(), Linux
6.1): the superblock is SB_SECTORS (8) sectors at sector 0, the journal follows it and ends at
`initial_sectors` = 8 + journal_sections * journal_section_sectors, where

    entry size       = roundup(8 + 8 * sectors_per_block + tag_size, 8)
    entries / sector = (504 - (8 if the journal has a MAC)) // entry size
    section sectors  = (entries / sector * 8) << log2_sectors_per_block, + 8

The layout is learned when a WRITE starting at device offset 0 carries the superblock and
forgotten when offset 0 is written without it, or when the connection that wrote it closes
(a stack is rebuilt by each run's own client; the next run's stack may be another one).
Learning happens in the per-WRITE decode, before the oracle's lock: a journal WRITE in flight
at the very moment the superblock arrives may be judged either way (integritysetup writes the
superblock long before the target journals anything).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from nbdfork.device.requests import SECTOR_SIZE
from nbdfork.oracle.stamp import Buffer

__all__ = ["INTEGRITY_MAGIC", "Layers", "integrity_journal"]

INTEGRITY_MAGIC: Final = b"integrt\x00"
_SB_SECTORS: Final = 8
_JOURNAL_SECTOR_DATA: Final = SECTOR_SIZE - 8  # a journal sector ends with its commit id
_JOURNAL_BLOCK_SECTORS: Final = 8
_JOURNAL_MAC_PER_SECTOR: Final = 8
_FLAG_HAVE_JOURNAL_MAC: Final = 0x1
# magic[8], version u8, log2_interleave_sectors u8, integrity_tag_size le16,
# journal_sections le32, provided_data_sectors le64, flags le32, log2_sectors_per_block u8
_SB: Final = struct.Struct("<8sBBHIQIB")


@dataclass(frozen=True, slots=True)
class Journal:
    """dm-integrity's journal: bytes [start, end) of the device, written by `connection`."""

    start: int
    end: int
    connection: int


def integrity_journal(sb: bytes) -> tuple[int, int] | None:
    """The byte range of the journal a dm-integrity superblock describes, or None when `sb` is
    not one (or describes no journal)."""
    if len(sb) < _SB.size or not sb.startswith(INTEGRITY_MAGIC):
        return None
    _, _, _, tag_size, sections, _, flags, log2_spb = _SB.unpack_from(sb)
    if sections == 0 or tag_size == 0 or log2_spb > 7:
        return None
    entry = -(-(8 + 8 * (1 << log2_spb) + tag_size) // 8) * 8
    mac = _JOURNAL_MAC_PER_SECTOR if flags & _FLAG_HAVE_JOURNAL_MAC else 0
    space = _JOURNAL_SECTOR_DATA - mac
    per_sector = space // entry
    if per_sector == 0:
        return None
    section = ((per_sector * _JOURNAL_BLOCK_SECTORS) << log2_spb) + _JOURNAL_BLOCK_SECTORS
    return _SB_SECTORS * SECTOR_SIZE, (_SB_SECTORS + sections * section) * SECTOR_SIZE


class Layers:
    """What the device has learned of the layers written onto it (one device's, per oracle)."""

    def __init__(self) -> None:
        self.journal: Journal | None = None

    def saw(self, data: Buffer, connection: int) -> None:
        """A WRITE at device offset 0: learn (or forget) the layer whose superblock it is."""
        extent = integrity_journal(bytes(data[: _SB.size]))
        if extent is None:
            self.journal = None
        else:
            self.journal = Journal(*extent, connection)

    def inside(self, offset: int, length: int) -> bool:
        """Whether the WRITE lies wholly in a layer's journal."""
        journal = self.journal
        return journal is not None and journal.start <= offset and offset + length <= journal.end

    def closed(self, connection: int) -> None:
        """`connection` closed: what it wrote of a layer's layout no longer holds."""
        if self.journal is not None and self.journal.connection == connection:
            self.journal = None
