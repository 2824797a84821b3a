"""btrfs: the superblock copies (64 KiB, 64 MiB, 256 GiB) and tree blocks (nodes and leaves).

Read from Linux 6.1.192 fs/btrfs/ctree.h (struct btrfs_super_block, struct btrfs_header) and
fs/btrfs/disk-io.c (csum_tree_block, btrfs_check_super_csum). The checksum in the first bytes
of `csum[32]` covers everything after those 32 bytes: 4096 bytes for the superblock, nodesize
for a tree block. Tree blocks carry no magic: they are recognised by the fsid (or
metadata_uuid) at byte 32, learned from a superblock, so none is found before one is seen.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from nbdfork.oracle.formats.base import SECTOR, FormatBlock, Probes, Verdict, crc32c_std

__all__ = ["SUPER_OFFSETS", "BtrfsFormat", "BtrfsGeometry"]

SUPER_MAGIC: Final = b"_BHRfS_M"
SUPER_SIZE: Final = 4096
SUPER_OFFSETS: Final = (64 << 10, 64 << 20, 256 << 30)  # btrfs_sb_offset(0..2)
_CSUM_START: Final = 32
_INCOMPAT_METADATA_UUID: Final = 1 << 10
_LE16: Final = struct.Struct("<H")
_LE32: Final = struct.Struct("<I")
_LE64: Final = struct.Struct("<Q")


def _crc32c(data: memoryview) -> bytes:
    return _LE32.pack(crc32c_std(data))


def _blake2b(data: memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def _sha256(data: memoryview) -> bytes:
    return hashlib.sha256(data).digest()


# csum_type (BTRFS_CSUM_TYPE_*) -> name, checker (None: xxhash64, not in the stdlib)
_CSUMS: Final[dict[int, tuple[str, Callable[[memoryview], bytes] | None]]] = {
    0: ("crc32c", _crc32c),
    1: ("xxhash64", None),
    2: ("sha256", _sha256),
    3: ("blake2b", _blake2b),
}


@dataclass(frozen=True, slots=True)
class BtrfsGeometry:
    """What a superblock says that tree blocks need."""

    fsid: bytes
    sectorsize: int
    nodesize: int
    csum_type: int


def _geometry(sb: memoryview) -> BtrfsGeometry:
    incompat = _LE64.unpack_from(sb, 188)[0]
    fsid_at = 571 if incompat & _INCOMPAT_METADATA_UUID else 32
    return BtrfsGeometry(
        fsid=bytes(sb[fsid_at : fsid_at + 16]),
        sectorsize=_LE32.unpack_from(sb, 144)[0],
        nodesize=_LE32.unpack_from(sb, 148)[0],
        csum_type=_LE16.unpack_from(sb, 196)[0],
    )


def _judge(block: memoryview, length: int, csum_type: int) -> tuple[Verdict, str]:
    name, check = _CSUMS.get(csum_type, (f"type {csum_type}", None))
    if check is None:
        return Verdict.UNCHECKED, f"csum {name} is not checked"
    got = check(block[_CSUM_START:length])
    if bytes(block[: len(got)]) != got:
        return Verdict.TORN, f"{name} mismatch"
    return Verdict.OK, ""


class BtrfsFormat:
    """btrfs superblocks and tree blocks of one filesystem (single device)."""

    name = "btrfs"
    places = True

    def __init__(self) -> None:
        self.geometry: BtrfsGeometry | None = None

    def probes(self) -> Probes | None:
        """The fsid's first bytes where a tree block (aligned to the sector size) keeps it;
        none before a superblock. Superblocks are found by place (`scan_placed`)."""
        geo = self.geometry
        if geo is None:
            return {}
        if geo.sectorsize % SECTOR:
            return None  # tree blocks could start inside a 512-byte sector
        return {_CSUM_START: (geo.fsid[:2],)}

    def scan_placed(self, data: memoryview, device_offset: int) -> list[FormatBlock]:
        """The full scan when `data` holds a superblock copy's place (the superblock may teach
        a new fsid to look for in the same WRITE), else nothing."""
        end = device_offset + len(data)
        for at in SUPER_OFFSETS:
            if device_offset <= at and at + SUPER_SIZE <= end:
                return self.scan(data, device_offset)
        return []

    def scan(self, data: memoryview, device_offset: int) -> list[FormatBlock]:
        """Superblock copies and tree blocks (once the fsid is known) in `data`, judged."""
        end = device_offset + len(data)
        found = []
        for at in SUPER_OFFSETS:
            if device_offset <= at and at + SUPER_SIZE <= end:
                sb = self._superblock(data[at - device_offset :], at)
                found += [] if sb is None else [sb]
        if self.geometry is not None:
            found.extend(self._tree_blocks(data, device_offset))
        return found

    def _superblock(self, sb: memoryview, at: int) -> FormatBlock | None:
        if bytes(sb[64:72]) != SUPER_MAGIC:
            return None
        verdict, reason = _judge(sb, SUPER_SIZE, _LE16.unpack_from(sb, 196)[0])
        if verdict is Verdict.OK and at == SUPER_OFFSETS[0]:
            self.geometry = _geometry(sb)
        generation = _LE64.unpack_from(sb, 72)[0]
        return FormatBlock("btrfs", "btrfs.super", at, SUPER_SIZE, generation, (at,),
                           verdict, None, reason)  # fmt: skip

    def _tree_blocks(self, data: memoryview, base: int) -> list[FormatBlock]:
        geo = self.geometry
        assert geo is not None
        found = []
        raw = data.obj if isinstance(data.obj, bytes) and data.nbytes == len(data.obj) else None
        hay = raw if raw is not None else bytes(data)
        p = hay.find(geo.fsid, _CSUM_START)
        while p >= 0:
            start = p - _CSUM_START
            if (base + start) % geo.sectorsize == 0 and base + start not in SUPER_OFFSETS:
                found.append(self._tree_block(data, start, base + start, geo))
            p = hay.find(geo.fsid, p + 1)
        return found

    @staticmethod
    def _tree_block(data: memoryview, p: int, at: int, geo: BtrfsGeometry) -> FormatBlock:
        block = data[p:]
        generation = _LE64.unpack_from(block, 80)[0]
        ident = (_LE64.unpack_from(block, 48)[0], _LE64.unpack_from(block, 88)[0])
        kind = "btrfs.node" if block[100] else "btrfs.leaf"
        if len(block) < geo.nodesize:
            cut = "block extends beyond this WRITE"
            return FormatBlock("btrfs", kind, at, geo.nodesize, generation, ident,
                               Verdict.UNCHECKED, None, cut)  # fmt: skip
        verdict, reason = _judge(block, geo.nodesize, geo.csum_type)
        return FormatBlock("btrfs", kind, at, geo.nodesize, generation, ident,
                           verdict, None, reason)  # fmt: skip
