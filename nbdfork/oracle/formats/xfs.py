"""XFS v5 metadata: every block that starts with a CRC-enabled magic, and log records.

Read from Linux 6.1.192 fs/xfs/libxfs/xfs_format.h, xfs_da_format.h, xfs_log_format.h,
xfs_cksum.h and fs/xfs/xfs_log.c (docs/formats.md#xfs). Every checksum is the standard
CRC-32C (seed ~0, final inversion: xfs_end_cksum) of the block read with its crc field as zero,
stored little-endian. Blocks are recognised by magic plus the filesystem uuid they carry, so
the superblock must be seen first; until then only the superblock itself is judged.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

from nbdfork.oracle.formats.base import (
    SECTOR,
    FormatBlock,
    Probes,
    Verdict,
    crc32c_std,
    crc32c_std_skip,
    sector_candidates,
)

__all__ = ["XfsFormat", "XfsGeometry"]

_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_LE32: Final = struct.Struct("<I")

SB_MAGIC: Final = b"XFSB"
LOG_MAGIC: Final = 0xFEEDBABE
_DINODE_MAGIC: Final = b"IN"
_INCOMPAT_META_UUID: Final = 1 << 7  # XFS_SB_FEAT_INCOMPAT_META_UUID

# Which bytes of the geometry size a block: its checksum covers that many bytes.
_SECT, _BLOCK, _DIRBLK = "sect", "block", "dirblk"


@dataclass(frozen=True, slots=True)
class _Kind:
    """Where a kind of block keeps its crc, uuid, lsn and self address (-1: none)."""

    name: str
    size: str
    crc: int
    uuid: int
    lsn: int
    blkno: int = -1


# 4-byte magics at offset 0 (struct offsets from the 6.1.192 headers, checked on mkfs images)
_AT0: Final[dict[bytes, _Kind]] = {
    b"XAGF": _Kind("xfs.agf", _SECT, crc=216, uuid=64, lsn=208),
    b"XAGI": _Kind("xfs.agi", _SECT, crc=312, uuid=296, lsn=320),
    b"XAFL": _Kind("xfs.agfl", _SECT, crc=32, uuid=8, lsn=24),
    **{
        m: _Kind(f"xfs.btree.{m.decode().lower()}", _BLOCK, crc=52, uuid=32, lsn=24, blkno=16)
        for m in (b"AB3B", b"AB3C", b"IAB3", b"FIB3", b"RMB3", b"R3FC")
    },
    b"BMA3": _Kind("xfs.btree.bma3", _BLOCK, crc=64, uuid=40, lsn=32, blkno=24),
    b"XDB3": _Kind("xfs.dir3.block", _DIRBLK, crc=4, uuid=24, lsn=16, blkno=8),
    b"XDD3": _Kind("xfs.dir3.data", _DIRBLK, crc=4, uuid=24, lsn=16, blkno=8),
    b"XDF3": _Kind("xfs.dir3.free", _DIRBLK, crc=4, uuid=24, lsn=16, blkno=8),
    b"XARM": _Kind("xfs.attr3.remote", _BLOCK, crc=12, uuid=40, lsn=32, blkno=24),
    b"XSLM": _Kind("xfs.symlink", _BLOCK, crc=12, uuid=40, lsn=32, blkno=24),
}
# 2-byte magics at offset 8: struct xfs_da3_blkinfo (forw, back, magic, pad, crc, blkno, ...)
_AT8: Final[dict[bytes, _Kind]] = {
    b"\x3e\xbe": _Kind("xfs.da3.node", _DIRBLK, crc=12, uuid=32, lsn=24, blkno=16),
    b"\x3d\xf1": _Kind("xfs.dir3.leaf1", _DIRBLK, crc=12, uuid=32, lsn=24, blkno=16),
    b"\x3d\xff": _Kind("xfs.dir3.leafn", _DIRBLK, crc=12, uuid=32, lsn=24, blkno=16),
    b"\x3b\xee": _Kind("xfs.attr3.leaf", _BLOCK, crc=12, uuid=32, lsn=24, blkno=16),
}
_SB: Final = _Kind("xfs.sb", _SECT, crc=224, uuid=32, lsn=240)
_DINODE: Final = _Kind("xfs.dinode", "inode", crc=100, uuid=160, lsn=112, blkno=152)

_FIRST0: Final = re.compile(b"[XAIFRBN\xfe]")
_FIRST8: Final = re.compile(b"[\x3e\x3d\x3b]")
# The pre-pass's view of the two scans: before the superblock only its magic is looked for.
_PROBES_UNKNOWN: Final[Probes] = {0: (SB_MAGIC[:2],)}
_PROBES: Final[Probes] = {
    0: {m[:2] for m in (SB_MAGIC, _DINODE_MAGIC, LOG_MAGIC.to_bytes(4, "big"), *_AT0)},
    8: tuple(_AT8),
}

# xlog_rec_header (xfs_log_format.h): h_cycle 4, h_version 8, h_len 12, h_lsn 16, h_crc 32,
# h_cycle_data 44 (64 words), h_fmt 300, h_fs_uuid 304, h_size 320; 328 bytes on x86-64
_LOG_CRC: Final = 32
_LOG_UUID: Final = 304
_LOG_REC_SIZES: Final = (328, 324)  # XLOG_REC_SIZE and XLOG_REC_SIZE_OTHER (i386)
_CYCLE_SIZE: Final = 32 * 1024  # XLOG_HEADER_CYCLE_SIZE
_EXT_HDR: Final = 4 + 4 * 64  # struct xlog_rec_ext_header


@dataclass(frozen=True, slots=True)
class XfsGeometry:
    """What the superblock says that other blocks need."""

    uuid: bytes
    sectsize: int
    blocksize: int
    inodesize: int
    dirblksize: int
    logv2: bool = True

    def size(self, which: str) -> int:
        """Bytes covered by a block whose size is named `which`."""
        return {
            _SECT: self.sectsize,
            _BLOCK: self.blocksize,
            _DIRBLK: self.dirblksize,
            "inode": self.inodesize,
        }[which]


def _geometry(sb: memoryview) -> XfsGeometry:
    """The geometry a v5 superblock declares (meta_uuid when the META_UUID feature is on)."""
    blocksize = _U32.unpack_from(sb, 4)[0]
    incompat = _U32.unpack_from(sb, 216)[0]
    uuid_at = 248 if incompat & _INCOMPAT_META_UUID else 32
    return XfsGeometry(
        uuid=bytes(sb[uuid_at : uuid_at + 16]),
        sectsize=_U16.unpack_from(sb, 102)[0],
        blocksize=blocksize,
        inodesize=_U16.unpack_from(sb, 104)[0],
        dirblksize=blocksize << sb[192],
    )


def _crc_ok(block: memoryview, length: int, field: int) -> bool:
    """Does the stored crc at `field` match the block's first `length` bytes?"""
    stored: int = _LE32.unpack_from(block, field)[0]
    return stored == crc32c_std_skip(block, length, field)


class XfsFormat:
    """XFS v5 metadata blocks and log records, judged against the learned superblock."""

    name = "xfs"
    places = False

    def __init__(self) -> None:
        self.geometry: XfsGeometry | None = None

    def probes(self) -> Probes:
        """Magics at a sector start and, once the superblock is known, at byte 8."""
        return _PROBES_UNKNOWN if self.geometry is None else _PROBES

    def scan_placed(self, data: memoryview, device_offset: int) -> list[FormatBlock]:
        """Nothing: every XFS block is found by its magic."""
        return []

    def scan(self, data: memoryview, device_offset: int) -> list[FormatBlock]:
        """Every XFS block starting at a sector start of `data`, judged."""
        found: list[FormatBlock] = []
        for p in sector_candidates(data, _FIRST0):
            found.extend(self._at0(data, p, device_offset))
        if self.geometry is not None:
            for p in sector_candidates(data, _FIRST8, at=8):
                kind = _AT8.get(bytes(data[p : p + 2]))
                if kind is not None:
                    found.extend(self._judge(data, p - 8, kind, device_offset))
        found.sort(key=lambda b: b.offset)
        return found

    def _at0(self, data: memoryview, p: int, base: int) -> list[FormatBlock]:
        head = bytes(data[p : p + 4])
        if head == SB_MAGIC:
            return self._superblock(data, p, base)
        if self.geometry is None:
            return []
        if head[:2] == _DINODE_MAGIC and len(head) == 4 and data[p + 4] == 3:
            return self._judge(data, p, _DINODE, base)
        if len(head) == 4 and _U32.unpack(head)[0] == LOG_MAGIC:
            return self._log_record(data, p, base)
        kind = _AT0.get(head)
        return [] if kind is None else self._judge(data, p, kind, base)

    def _superblock(self, data: memoryview, p: int, base: int) -> list[FormatBlock]:
        sb = data[p:]
        if len(sb) < SECTOR or _U16.unpack_from(sb, 100)[0] & 0xF != 5:
            return []  # only v5 superblocks carry a crc
        sectsize = _U16.unpack_from(sb, 102)[0]
        if len(sb) < sectsize:
            return [self._block(_SB, base + p, sectsize, sb, Verdict.UNCHECKED,
                                reason="block extends beyond this WRITE")]  # fmt: skip
        ok = _crc_ok(sb, sectsize, _SB.crc)
        if ok and base + p == 0:
            self.geometry = _geometry(sb)
        verdict = Verdict.OK if ok else Verdict.TORN
        return [self._block(_SB, base + p, sectsize, sb, verdict)]

    def _judge(self, data: memoryview, p: int, kind: _Kind, base: int) -> list[FormatBlock]:
        geo = self.geometry
        assert geo is not None
        block = data[p:]
        if bytes(block[kind.uuid : kind.uuid + 16]) != geo.uuid:
            return []  # a magic in someone else's data, or another filesystem's block
        length = geo.size(kind.size)
        if len(block) < length:
            return [self._block(kind, base + p, length, block, Verdict.UNCHECKED,
                                reason="block extends beyond this WRITE")]  # fmt: skip
        ok = _crc_ok(block, length, kind.crc)
        return [self._block(kind, base + p, length, block, Verdict.OK if ok else Verdict.TORN)]

    @staticmethod
    def _block(
        kind: _Kind,
        at: int,
        length: int,
        block: memoryview,
        verdict: Verdict,
        *,
        torn_at: int | None = None,
        reason: str = "",
    ) -> FormatBlock:
        # LSN 0: a buffer written outside the log (mkfs, a new inode chunk): no version.
        lsn = _U64.unpack_from(block, kind.lsn)[0] or None
        ident = () if kind.blkno < 0 else (_U64.unpack_from(block, kind.blkno)[0],)
        return FormatBlock("xfs", kind.name, at, length, lsn, ident, verdict, torn_at, reason)

    def _log_record(self, data: memoryview, p: int, base: int) -> list[FormatBlock]:
        geo = self.geometry
        assert geo is not None
        rec = data[p:]
        if len(rec) < SECTOR or bytes(rec[_LOG_UUID : _LOG_UUID + 16]) != geo.uuid:
            return []
        cycle = bytes(rec[4:8])
        h_len = _U32.unpack_from(rec, 12)[0]
        h_size = _U32.unpack_from(rec, 320)[0]
        hblks = max(1, -(-h_size // _CYCLE_SIZE)) if geo.logv2 else 1
        data_at = hblks * SECTOR
        length = data_at + -(-h_len // SECTOR) * SECTOR
        lsn = _U64.unpack_from(rec, 16)[0]

        def block(verdict: Verdict, torn_at: int | None = None, reason: str = "") -> FormatBlock:
            return FormatBlock("xfs", "xfs.log.record", base + p, length, lsn, (),
                               verdict, torn_at, reason)  # fmt: skip

        if len(rec) < length:
            return [block(Verdict.UNCHECKED, reason="record extends beyond this WRITE")]
        if _LE32.unpack_from(rec, _LOG_CRC)[0] == 0:
            # xlog_recover_process(): mkfs writes its records with h_crc 0, valid on v5
            return [block(Verdict.UNCHECKED, reason="h_crc is 0 (written by mkfs)")]
        xheads = -(-h_len // _CYCLE_SIZE)
        payload = rec[data_at : data_at + h_len]
        for rec_size in _LOG_REC_SIZES:
            crc = crc32c_std_skip(rec, rec_size, _LOG_CRC) ^ 0xFFFF_FFFF
            for i in range(1, xheads):
                crc = crc32c_std(rec[i * SECTOR : i * SECTOR + _EXT_HDR], crc ^ 0xFFFF_FFFF)
                crc ^= 0xFFFF_FFFF
            if crc32c_std(payload, crc ^ 0xFFFF_FFFF) == _LE32.unpack_from(rec, _LOG_CRC)[0]:
                return [block(Verdict.OK)]
        # Every data sector starts with the record's cycle (xlog_pack_data): the first that
        # does not is where an older record shows through.
        for s in range(data_at, length, SECTOR):
            if bytes(rec[s : s + 4]) != cycle:
                return [block(Verdict.TORN, base + p + s, "sector of another cycle")]
        return [block(Verdict.TORN, reason="log record crc32c mismatch")]
