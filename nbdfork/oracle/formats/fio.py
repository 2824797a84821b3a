"""fio's verify blocks: a header (magic 0xacca) at the start of every verify interval, then the
data checksum of the rest of the interval (docs/formats.md#fio).

Two header layouts exist: fio <= 3.40 (40 bytes; u16 verify_type, u16 numberio) and fio >= 3.41
(48 bytes; u8 version 0x81, u8 verify_type, u64 numberio; fio commits 05fd3c4f and e1a250c2,
July 2025). Both are read. The header carries its own crc32c, so a tear through the header is
located to the header's sector; a tear in the data is known only to lie after the header.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from nbdfork.oracle.formats.base import (
    SECTOR,
    FormatBlock,
    Probes,
    Verdict,
    crc32c_raw,
    sector_candidates,
)

__all__ = ["MAGIC", "FioFormat"]

MAGIC: Final = 0xACCA
VERSIONED: Final = 0x81
_MASK: Final = 0xFFFF_FFFF
_MAX_LEN: Final = 1 << 26  # a verify interval is at most fio's largest block size
_FIRST: Final = re.compile(b"\xca")
_PROBES: Final[Probes] = {0: (MAGIC.to_bytes(2, "little"),)}


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where one header revision keeps its fields."""

    size: int
    crc: int
    numberio: struct.Struct
    thread: int


_OLD: Final = _Layout(size=40, crc=36, numberio=struct.Struct("<H"), thread=32)
_NEW: Final = _Layout(size=48, crc=44, numberio=struct.Struct("<Q"), thread=40)
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")


def _crc32c(data: memoryview) -> bytes:
    """fio_crc32c(): crc32c_sw with seed ~0 and no final inversion, stored little-endian."""
    return _U32.pack(crc32c_raw(_MASK, data))


def _words_swapped(digest: bytes) -> bytes:
    """fio keeps SHA-1's five state words in host (little-endian) order."""
    return b"".join(digest[i : i + 4][::-1] for i in range(0, len(digest), 4))


def _hash(name: str) -> Callable[[memoryview], bytes]:
    return lambda data: hashlib.new(name, data).digest()


# verify_type -> (name, bytes of its checksum header, checker or None, checked for old headers)
_CheckFn = Callable[[memoryview], bytes]
_TYPES: Final[dict[int, tuple[str, int, _CheckFn | None, bool]]] = {
    1: ("meta", 0, None, True),
    2: ("md5", 16, _hash("md5"), True),
    3: ("crc64", 8, None, True),
    4: ("crc32", 4, None, True),
    5: ("crc32c", 4, _crc32c, True),
    6: ("crc32c", 4, _crc32c, True),  # crc32c-intel: the same checksum
    7: ("crc16", 2, None, True),
    8: ("crc7", 1, None, True),
    9: ("sha256", 64, None, True),  # fio's context layout, not the standard digest
    10: ("sha512", 128, _hash("sha512"), False),  # matches from 3.41 on only
    11: ("sha3-224", 28, _hash("sha3_224"), True),
    12: ("sha3-256", 32, _hash("sha3_256"), True),
    13: ("sha3-384", 48, _hash("sha3_384"), True),
    14: ("sha3-512", 64, _hash("sha3_512"), True),
    15: ("xxhash", 4, None, True),
    16: ("sha1", 20, lambda d: _words_swapped(hashlib.sha1(d).digest()), True),
    17: ("pattern", 0, None, True),
}


@dataclass(frozen=True, slots=True)
class _Header:
    """The fields of one header that judge and identify its block."""

    layout: _Layout
    verify_type: int
    length: int
    offset: int
    numberio: int
    thread: int


def _header_at(data: memoryview, p: int) -> _Header | None:
    """The header starting at `p`, or None if the bytes there are not one (magic, type, len)."""
    if len(data) - p < _OLD.size or _U16.unpack_from(data, p)[0] != MAGIC:
        return None
    if data[p + 2] == VERSIONED:
        layout, vtype = _NEW, data[p + 3]
    elif data[p + 3] == 0:
        layout, vtype = _OLD, data[p + 2]
    else:
        return None
    length = _U32.unpack_from(data, p + 4)[0]
    if vtype not in _TYPES or not layout.size < length <= _MAX_LEN or len(data) - p < layout.size:
        return None
    return _Header(
        layout,
        vtype,
        length,
        offset=_U64.unpack_from(data, p + 16)[0],
        numberio=layout.numberio.unpack_from(data, p + 34 if layout is _OLD else p + 32)[0],
        thread=_U16.unpack_from(data, p + layout.thread)[0],
    )


class FioFormat:
    """fio verify blocks (stateless: every header says its type and length)."""

    name = "fio"
    places = False

    def probes(self) -> Probes:
        """The magic at a sector start."""
        return _PROBES

    def scan_placed(self, data: memoryview, device_offset: int) -> list[FormatBlock]:
        """Nothing: a fio block is found by its magic alone."""
        return []

    def scan(self, data: memoryview, device_offset: int) -> list[FormatBlock]:
        """Every fio header at a sector start of `data`, judged."""
        found = []
        for p in sector_candidates(data, _FIRST):
            hdr = _header_at(data, p)
            if hdr is not None:
                found.append(self._judge(data, p, hdr, device_offset))
        return found

    def _judge(self, data: memoryview, p: int, hdr: _Header, device_offset: int) -> FormatBlock:
        name, vsize, check, old_ok = _TYPES[hdr.verify_type]
        at = device_offset + p

        def block(verdict: Verdict, torn_at: int | None = None, reason: str = "") -> FormatBlock:
            return FormatBlock(
                "fio", f"fio.{name}", at, hdr.length, hdr.numberio,
                (hdr.offset, hdr.thread), verdict, torn_at, reason,
                16 if hdr.layout is _OLD else 64,
            )  # fmt: skip

        lay = hdr.layout
        if _U32.unpack_from(data, p + lay.crc)[0] != crc32c_raw(_MASK, data[p : p + lay.crc]):
            return block(Verdict.TORN, at, "header crc32c mismatch")
        if p + hdr.length > len(data):
            return block(Verdict.UNCHECKED, reason="block extends beyond this WRITE")
        if check is None or not (old_ok or lay is _NEW):
            return block(Verdict.UNCHECKED, reason=f"verify={name} is not checked")
        start = p + lay.size
        want = data[start : start + vsize]
        got = check(data[start + vsize : p + hdr.length])
        if bytes(want[: len(got)]) != got:
            return block(Verdict.TORN, None, f"{name} of the data mismatch")
        return block(Verdict.OK)


assert SECTOR == 512  # headers sit at sector starts: fio offsets are sector multiples
