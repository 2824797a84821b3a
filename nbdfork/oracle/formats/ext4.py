"""ext4 with metadata_csum: superblocks, group descriptors, inode tables, extent tree blocks,
directory leaf blocks, and the jbd2 journal's blocks (module jbd2).

Read from Linux 6.1.192 fs/ext4/ext4.h, super.c (ext4_superblock_csum, ext4_group_desc_csum),
inode.c (ext4_inode_csum, the seed in __ext4_iget), extents.c (ext4_extent_block_csum) and
namei.c (ext4_dirblock_csum). ext4_chksum() is crc32c_raw (no inversion). The superblock
(magic 0xef53) is recognised anywhere and teaches the geometry; group descriptors are found
where the geometry puts them, inode tables where the descriptors say; extent and directory
blocks are checked with their owner inode's seed once that inode has been seen. ext4 metadata
carries no version number: `version` is None except for jbd2 blocks (the transaction).
"""

from __future__ import annotations

import bisect
import re
import struct
from dataclasses import dataclass, field
from typing import Final

from nbdfork.oracle.formats.base import (
    SECTOR,
    FormatBlock,
    Probes,
    Verdict,
    crc32c_raw,
    sector_candidates,
)
from nbdfork.oracle.formats.jbd2 import PROBES as _JBD2_PROBES
from nbdfork.oracle.formats.jbd2 import Jbd2Journal

__all__ = ["Ext4Format", "Ext4Geometry"]

_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_MASK: Final = 0xFFFF_FFFF
SB_OFFSET: Final = 1024
_SB_SIZE: Final = 1024
_SB_CSUM: Final = 0x3FC
_RO_METADATA_CSUM: Final = 0x400
_MAX_LOG_BLOCK: Final = 6  # s_log_block_size: 1 KiB << 6 = 64 KiB, the largest ext4 block
_DYNAMIC_REV: Final = 1  # s_rev_level: metadata_csum needs the dynamic revision
_CRC32C: Final = 1  # s_checksum_type: the one metadata_csum type
_RO_SPARSE_SUPER: Final = 0x1
_INCOMPAT_64BIT: Final = 0x80
_INCOMPAT_META_BG: Final = 0x10
_INCOMPAT_CSUM_SEED: Final = 0x2000
_EXTENT_MAGIC: Final = b"\x0a\xf3"
_DIR_TAIL: Final = b"\x00\x00\x00\x00\x0c\x00\x00\xde"  # ext4_dir_entry_tail, first 8 bytes
_GOOD_OLD_INODE: Final = 128
_FIRST_SB: Final = re.compile(b"\x53")
_SB_MAGIC_AT: Final = 0x38  # s_magic, 0xef53
# The pre-pass's view of the scans (superblock magic, journal magic; once the geometry is
# known, an extent header at a block start and a directory tail's last two bytes, which end
# 6 bytes before the block's end: both at fixed offsets of a sector, blocks being sectors).
_PROBES_UNKNOWN: Final[Probes] = {_SB_MAGIC_AT: (b"\x53\xef",), **_JBD2_PROBES}
_PROBES: Final[Probes] = {
    **_PROBES_UNKNOWN,
    0: (*_JBD2_PROBES[0], _EXTENT_MAGIC),
    SECTOR - 6: (_DIR_TAIL[6:8],),
}
_GDT, _GDT_PRIMARY, _ITABLE = "gdt", "gdt0", "itable"
_PENDING_MAX: Final = 4096  # blocks waiting for their owner inode, at most (oldest dropped)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A tail-checksummed block that failed with its owner's last seen seed: the inode may
    have been freed and reused (a new i_generation, a new seed) before its new inode-table
    block reached the device. Judged once the owner's seed is confirmed."""

    kind: str
    at: int
    block: bytes
    tail: int
    seed: int  # the seed it failed with


@dataclass(frozen=True, slots=True)
class Ext4Geometry:
    """What the superblock says that other blocks need."""

    blocksize: int
    first_data_block: int
    blocks_per_group: int
    inodes_per_group: int
    inode_size: int
    desc_size: int
    groups: int
    csum_seed: int
    sparse_super: bool
    meta_bg: bool

    def gdt_ranges(self) -> list[tuple[int, int]]:
        """Byte ranges of the primary and backup group descriptor tables (no meta_bg)."""
        nbytes = self.groups * self.desc_size
        length = -(-nbytes // self.blocksize) * self.blocksize
        return [
            ((g * self.blocks_per_group + self.first_data_block + 1) * self.blocksize, length)
            for g in range(self.groups)
            if self._has_super(g)
        ]

    def _has_super(self, group: int) -> bool:
        if group <= 1 or not self.sparse_super:
            return True
        for base in (3, 5, 7):
            n = base
            while n < group:
                n *= base
            if n == group:
                return True
        return False


def _plausible(sb: memoryview) -> bool:
    """Whether a 1 KiB piece with the magic and the metadata_csum bit is a superblock: those 17
    bits alone turn up in random data (dm-integrity's tag area, a file's contents) once per
    ~128 MiB, and the crc then fails: a torn superblock that nobody wrote. Its block size,
    revision and checksum type must also be what ext4 writes (2^-69 per KiB by chance)."""
    return (
        _U32.unpack_from(sb, 0x18)[0] <= _MAX_LOG_BLOCK
        and _U32.unpack_from(sb, 0x4C)[0] == _DYNAMIC_REV
        and sb[0x175] == _CRC32C
    )


def _geometry(sb: memoryview) -> Ext4Geometry:
    incompat = _U32.unpack_from(sb, 0x60)[0]
    wide = incompat & _INCOMPAT_64BIT
    blocks = _U32.unpack_from(sb, 0x04)[0] | (_U32.unpack_from(sb, 0x150)[0] << 32 if wide else 0)
    first, per_group = _U32.unpack_from(sb, 0x14)[0], _U32.unpack_from(sb, 0x20)[0]
    if incompat & _INCOMPAT_CSUM_SEED:
        seed = _U32.unpack_from(sb, 0x270)[0]
    else:
        seed = crc32c_raw(_MASK, sb[0x68:0x78])
    return Ext4Geometry(
        blocksize=1024 << _U32.unpack_from(sb, 0x18)[0],
        first_data_block=first,
        blocks_per_group=per_group,
        inodes_per_group=_U32.unpack_from(sb, 0x28)[0],
        inode_size=_U16.unpack_from(sb, 0x58)[0],
        desc_size=_U16.unpack_from(sb, 0xFE)[0] if wide else 32,
        groups=-(-(blocks - first) // per_group),
        csum_seed=seed,
        sparse_super=bool(_U32.unpack_from(sb, 0x64)[0] & _RO_SPARSE_SUPER),
        meta_bg=bool(incompat & _INCOMPAT_META_BG),
    )


@dataclass
class _Learned:
    """Locations and owners learned from descriptors and inodes."""

    places: list[tuple[int, int, str, int]] = field(default_factory=list)  # start,end,kind,1st
    starts: list[int] = field(default_factory=list)
    owners: dict[int, tuple[int, int, bool]] = field(default_factory=dict)  # blk -> ino,seed,dir
    dir_seeds: dict[int, int] = field(default_factory=dict)  # directory ino -> seed

    def add(self, start: int, end: int, kind: str, first: int) -> None:
        """Place a region [start, end) holding `kind` (replacing one at the same start)."""
        i = bisect.bisect_left(self.starts, start)
        if i < len(self.starts) and self.starts[i] == start:
            self.places[i] = (start, end, kind, first)
        else:
            self.starts.insert(i, start)
            self.places.insert(i, (start, end, kind, first))


def _placed(
    kind: str, at: int, length: int, first: int, *, checked: int, torn_at: int | None
) -> FormatBlock:
    """The verdict on a block found by its place, not its content (GDT, inode table).

    A tear leaves some units (descriptors, inodes) verifying and some not; when none
    verifies, the place no longer holds this filesystem's metadata (another mkfs, random
    data) and nothing is claimed.
    """
    if checked == 0:
        return FormatBlock("ext4", kind, at, length, None, (first,), Verdict.UNCHECKED,
                           None, "nothing at this place verifies")  # fmt: skip
    verdict = Verdict.OK if torn_at is None else Verdict.TORN
    return FormatBlock("ext4", kind, at, length, None, (first,), verdict, torn_at)


class Ext4Format:
    """ext4 metadata_csum blocks of one filesystem, plus its jbd2 journal."""

    name = "ext4"
    places = True

    def __init__(self) -> None:
        self.geometry: Ext4Geometry | None = None
        self.learned = _Learned()
        self.journal = Jbd2Journal()
        self.pending: dict[int, list[_Pending]] = {}  # owner inode -> blocks to judge
        self._resolved: list[FormatBlock] = []

    def probes(self) -> Probes:
        """Superblock and journal magics; extent and directory tails once the geometry is known."""
        return _PROBES_UNKNOWN if self.geometry is None else _PROBES

    def scan_placed(self, data: memoryview, device_offset: int) -> list[FormatBlock]:
        """Group descriptors and inode tables, where the geometry and descriptors put them."""
        geo = self.geometry
        if geo is None:
            return []
        found = self._placed_blocks(data, device_offset, geo)
        if self._resolved:
            found += self._resolved
            self._resolved = []
        found.sort(key=lambda b: b.offset)
        return found

    def scan(self, data: memoryview, device_offset: int) -> list[FormatBlock]:
        """Every ext4 metadata block in `data` this format can place, judged; and the blocks
        of earlier WRITEs whose owner inode this WRITE confirmed (`reason` says so)."""
        found = self._superblocks(data, device_offset)
        geo = self.geometry
        if geo is not None:
            found += self._placed_blocks(data, device_offset, geo)
            found += self._tailed_blocks(data, device_offset, geo)
        found += self.journal.scan(data, device_offset)
        if self._resolved:
            found += self._resolved
            self._resolved = []
        found.sort(key=lambda b: b.offset)
        return found

    def _defer(self, ino: int, pending: _Pending) -> None:
        waiting = self.pending.setdefault(ino, [])
        waiting.append(pending)
        if sum(len(v) for v in self.pending.values()) > _PENDING_MAX:
            oldest = next(iter(self.pending))
            del self.pending[oldest][0]
            if not self.pending[oldest]:
                del self.pending[oldest]

    def _confirm(self, ino: int, seed: int, *, changed_only: bool) -> None:
        """`seed` is inode `ino`'s current seed: judge its waiting blocks with it (all of
        them, or with `changed_only` only those that failed with this very seed)."""
        waiting = self.pending.get(ino)
        if not waiting:
            return
        keep = []
        for p in waiting:
            if changed_only and p.seed != seed:
                keep.append(p)
                continue
            block = memoryview(p.block)
            field = p.tail if p.kind == "ext4.extent" else p.tail + 8
            ok = crc32c_raw(seed, block[: p.tail]) == _U32.unpack_from(block, field)[0]
            why = f"judged when inode {ino}'s seed was confirmed by a later WRITE"
            self._resolved.append(FormatBlock("ext4", p.kind, p.at, len(p.block), None, (ino,),
                                              Verdict.OK if ok else Verdict.TORN, None, why))
        if keep:
            self.pending[ino] = keep
        else:
            del self.pending[ino]

    # --- superblocks --------------------------------------------------------------------

    def _superblocks(self, data: memoryview, base: int) -> list[FormatBlock]:
        found = []
        first = (-base) % _SB_SIZE  # superblocks sit at 1 KiB-aligned device offsets
        for p in sector_candidates(data[first:], _FIRST_SB, at=_SB_MAGIC_AT, step=_SB_SIZE):
            start = first + p - _SB_MAGIC_AT
            sb = data[start:]
            if len(sb) < _SB_SIZE or sb[0x39] != 0xEF:
                continue
            if not _U32.unpack_from(sb, 0x64)[0] & _RO_METADATA_CSUM or not _plausible(sb):
                continue
            want = _U32.unpack_from(sb, _SB_CSUM)[0]
            ok = crc32c_raw(_MASK, sb[:_SB_CSUM]) == want
            if ok and base + start == SB_OFFSET:
                self._learn_geometry(_geometry(sb))
            group = _U16.unpack_from(sb, 0x5A)[0]
            found.append(FormatBlock("ext4", "ext4.super", base + start, _SB_SIZE, None,
                                     (group,), Verdict.OK if ok else Verdict.TORN))  # fmt: skip
        return found

    def _learn_geometry(self, geo: Ext4Geometry) -> None:
        """A new filesystem (or its first superblock) resets what was learned."""
        if geo == self.geometry:
            return
        self.geometry, self.learned = geo, _Learned()
        if geo.meta_bg:
            return  # descriptors then live in every meta group: not placed (docs)
        primary = (geo.first_data_block + 1) * geo.blocksize
        for start, length in geo.gdt_ranges():
            kind = _GDT_PRIMARY if start == primary else _GDT
            self.learned.add(start, start + length, kind, 0)

    # --- group descriptors --------------------------------------------------------------

    def _placed_blocks(self, data: memoryview, base: int, geo: Ext4Geometry) -> list[FormatBlock]:
        """GDT and inode-table blocks: found by where the geometry and descriptors put them."""
        end = base + len(data)
        places, starts = self.learned.places, self.learned.starts
        found: list[FormatBlock] = []
        i = max(bisect.bisect_right(starts, base) - 1, 0)
        while i < len(places) and places[i][0] < end:
            start, stop, kind, first = places[i]
            lo = start + max(0, -(-(base - start) // geo.blocksize)) * geo.blocksize
            for at in range(lo, min(stop, end - geo.blocksize + 1), geo.blocksize):
                block = data[at - base :]
                if kind in {_GDT, _GDT_PRIMARY}:
                    found.append(self._gdt_block(block, at, start, geo, kind == _GDT_PRIMARY))
                else:
                    ino = first + (at - start) // geo.inode_size
                    found += self._inode_block(block, at, ino, geo)
            i += 1
        return found

    def _gdt_block(
        self, block: memoryview, at: int, table: int, geo: Ext4Geometry, primary: bool
    ) -> FormatBlock:
        first = (at - table) // geo.desc_size
        count = min(geo.blocksize // geo.desc_size, geo.groups - first)
        torn_at, checked = None, 0
        for i in range(count):
            desc = block[i * geo.desc_size : (i + 1) * geo.desc_size]
            if not any(desc):
                continue
            if not self._desc_ok(desc, first + i, geo):
                torn_at = at + i * geo.desc_size if torn_at is None else torn_at
                continue
            checked += 1
            if primary and torn_at is None:
                self._learn_itable(desc, first + i, geo)
        return _placed(
            "ext4.group_desc", at, geo.blocksize, first, checked=checked, torn_at=torn_at
        )

    @staticmethod
    def _desc_ok(desc: memoryview, group: int, geo: Ext4Geometry) -> bool:
        crc = crc32c_raw(geo.csum_seed, _U32.pack(group))
        crc = crc32c_raw(crc, bytes(desc[:0x1E]) + b"\0\0" + bytes(desc[0x20:]))
        return bool(crc & 0xFFFF == _U16.unpack_from(desc, 0x1E)[0])

    def _learn_itable(self, desc: memoryview, group: int, geo: Ext4Geometry) -> None:
        block = _U32.unpack_from(desc, 0x08)[0]
        if geo.desc_size >= 64:
            block |= _U32.unpack_from(desc, 0x28)[0] << 32
        start = block * geo.blocksize
        self.learned.add(start, start + geo.inodes_per_group * geo.inode_size, _ITABLE,
                         group * geo.inodes_per_group + 1)  # fmt: skip

    # --- inode tables -------------------------------------------------------------------

    def _inode_block(
        self, block: memoryview, at: int, first_ino: int, geo: Ext4Geometry
    ) -> list[FormatBlock]:
        size = geo.inode_size
        checked, torn_at = 0, None
        for i in range(geo.blocksize // size):
            raw = block[i * size : (i + 1) * size]
            if not any(raw):
                continue
            seed = self._inode_seed(raw, first_ino + i, geo)
            if not self._inode_ok(raw, seed, size):
                torn_at = at + i * size if torn_at is None else torn_at
                continue
            checked += 1
            self._learn_owner(raw, first_ino + i, seed)
        if checked == 0 and torn_at is None:
            return []  # an unused stretch of the table: nothing checksummed
        return [
            _placed("ext4.inode", at, geo.blocksize, first_ino, checked=checked, torn_at=torn_at)
        ]

    @staticmethod
    def _inode_seed(raw: memoryview, ino: int, geo: Ext4Geometry) -> int:
        return crc32c_raw(crc32c_raw(geo.csum_seed, _U32.pack(ino)), raw[0x64:0x68])

    @staticmethod
    def _inode_ok(raw: memoryview, seed: int, size: int) -> bool:
        """ext4_inode_csum_verify(): i_checksum_lo, and _hi when i_extra_isize covers it."""
        crc = crc32c_raw(seed, bytes(raw[:0x7C]) + b"\0\0" + bytes(raw[0x7E:_GOOD_OLD_INODE]))
        want, has_hi = _U16.unpack_from(raw, 0x7C)[0], False
        if size > _GOOD_OLD_INODE:
            has_hi = _GOOD_OLD_INODE + _U16.unpack_from(raw, 0x80)[0] >= 0x84
            rest = bytes(raw[0x80:0x82]) + (b"\0\0" + bytes(raw[0x84:]) if has_hi
                                             else bytes(raw[0x82:]))  # fmt: skip
            crc = crc32c_raw(crc, rest)
            want |= _U16.unpack_from(raw, 0x82)[0] << 16 if has_hi else 0
        return bool((crc if has_hi else crc & 0xFFFF) == want)

    def _learn_owner(self, raw: memoryview, ino: int, seed: int) -> None:
        """Remember which blocks this inode's seed checks: its extent tree, a dir's blocks."""
        self._confirm(ino, seed, changed_only=False)
        is_dir = _U16.unpack_from(raw, 0)[0] & 0xF000 == 0x4000
        if is_dir:
            self.learned.dir_seeds[ino] = seed
        root = raw[0x28 : 0x28 + 60]
        if bytes(root[:2]) == _EXTENT_MAGIC:
            self._learn_extents(root, ino, seed, is_dir)

    def _learn_extents(self, node: memoryview, ino: int, seed: int, is_dir: bool) -> None:
        entries, depth = _U16.unpack_from(node, 2)[0], _U16.unpack_from(node, 6)[0]
        owners = self.learned.owners
        for e in range(12, min(12 + 12 * entries, len(node) - 11), 12):
            if depth > 0:
                leaf = _U32.unpack_from(node, e + 4)[0] | _U16.unpack_from(node, e + 8)[0] << 32
                owners[leaf] = (ino, seed, is_dir)
            elif is_dir:
                length = _U16.unpack_from(node, e + 4)[0] & 0x7FFF
                start = _U32.unpack_from(node, e + 8)[0] | _U16.unpack_from(node, e + 6)[0] << 32
                owners.update(dict.fromkeys(range(start, start + length), (ino, seed, True)))

    # --- extent tree and directory leaf blocks (a tail checksum, the owner's seed) ------

    def _tailed_blocks(self, data: memoryview, base: int, geo: Ext4Geometry) -> list[FormatBlock]:
        bs = geo.blocksize
        first = (-base) % bs
        found = []
        for p in range(first, len(data) - bs + 1, bs):
            block = data[p : p + bs]
            if bytes(block[:2]) == _EXTENT_MAGIC and _U16.unpack_from(block, 6)[0] < 8:
                found.append(self._extent_block(block, base + p, geo))
            elif bytes(block[bs - 12 : bs - 4]) == _DIR_TAIL:
                found.append(self._dir_block(block, base + p, geo))
        return [b for b in found if b is not None]

    def _owner(self, block: memoryview, at: int, geo: Ext4Geometry) -> tuple[int, int, bool] | None:
        owner = self.learned.owners.get(at // geo.blocksize)
        if owner is None and bytes(block[6:9]) == b"\x01\x02.":  # "." entry names the dir
            ino = _U32.unpack_from(block, 0)[0]
            seed = self.learned.dir_seeds.get(ino)
            owner = None if seed is None else (ino, seed, True)
        return owner

    def _extent_block(self, block: memoryview, at: int, geo: Ext4Geometry) -> FormatBlock | None:
        eh_max = _U16.unpack_from(block, 4)[0]
        tail = 12 + 12 * eh_max
        if tail + 4 > geo.blocksize:
            return None
        return self._tail_checked("ext4.extent", block, at, tail, geo, learn=True)

    def _dir_block(self, block: memoryview, at: int, geo: Ext4Geometry) -> FormatBlock | None:
        return self._tail_checked("ext4.dir", block, at, geo.blocksize - 12, geo, learn=False)

    def _tail_checked(
        self, kind: str, block: memoryview, at: int, tail: int, geo: Ext4Geometry, *, learn: bool
    ) -> FormatBlock:
        owner = self._owner(block, at, geo)
        if owner is None:
            return FormatBlock("ext4", kind, at, geo.blocksize, None, (), Verdict.UNCHECKED,
                               None, "owner inode not seen yet")  # fmt: skip
        ino, seed, is_dir = owner
        field = tail if kind == "ext4.extent" else tail + 8
        ok = crc32c_raw(seed, block[:tail]) == _U32.unpack_from(block, field)[0]
        if not ok:  # a tear, or an owner reused since its seed was seen: wait for the owner
            self._defer(ino, _Pending(kind, at, bytes(block[: geo.blocksize]), tail, seed))
            return FormatBlock("ext4", kind, at, geo.blocksize, None, (ino,), Verdict.UNCHECKED,
                               None, f"waiting for inode {ino}: its last seen seed fails")
        self._confirm(ino, seed, changed_only=True)  # the seed is current: those are torn
        if learn:
            self._learn_extents(block, ino, seed, is_dir)
        return FormatBlock("ext4", kind, at, geo.blocksize, None, (ino,), Verdict.OK)
