"""The stamped-page format: encode a 4 KiB page, decode one page or a whole WRITE payload.

A stamped page is 8 sectors of 512 bytes; every sector carries a tag (magic, version, sector
index, stream, page, generation, crc32c of the page) and 59 fill words derived from the tag, so
a page spliced from two generations is detected and located to the byte. docs/stamp-format.md
is the normative spec; this module is its reference implementation.

Verdicts: UNSTAMPED (no sector starts with the magic), VALID (all 8 sector headers agree and
the stored crc32c matches the page), TORN (anything else with the magic). The crc is the
normative check: a VALID page needs no fill rebuilt; the exact fill comparison only locates the
first damaged byte of a TORN page. ``find_stamps`` is the inline oracle's entry point (a 4 KiB
unstamped WRITE costs one struct unpack); ``decode_pages`` is the vectorized one for images.
"""

from __future__ import annotations

import enum
import operator
import struct
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import crc32c
import numpy as np
import numpy.typing as npt

__all__ = [
    "FILL_WORDS",
    "FORMAT_VERSION",
    "MAGIC",
    "NOTHING",
    "NO_STAMPS",
    "PAGE_SIZE",
    "SECTORS_PER_PAGE",
    "SECTOR_SIZE",
    "PageDecode",
    "PageStamp",
    "PageStatus",
    "PagesDecode",
    "Stamps",
    "decode_page",
    "decode_pages",
    "encode_page",
    "encode_pages",
    "find_pages",
    "find_stamps",
    "mix64",
    "sector_generations",
    "Found",
    "Piece",
]

PAGE_SIZE: Final = 4096
SECTOR_SIZE: Final = 512
SECTORS_PER_PAGE: Final = PAGE_SIZE // SECTOR_SIZE
HEADER_SIZE: Final = 40
FILL_WORDS: Final = (SECTOR_SIZE - HEADER_SIZE) // 8  # 59 u64 words per sector
FORMAT_VERSION: Final = 1
# "nbdFORK1": as a little-endian u32 its first word is 0x4664626e (big-endian 0x6e626446), never
# jbd2's 0xc03b3998, which jbd2 zeroes in the journal copy of a block.
MAGIC: Final = b"nbdFORK1"
CRC_OFFSET: Final = 32

_U64: Final = (1 << 64) - 1
_GOLDEN: Final = 0x9E3779B97F4A7C15
_MIX1: Final = 0xBF58476D1CE4E5B9
_MIX2: Final = 0x94D049BB133111EB
_MAGIC_U64: Final = int.from_bytes(MAGIC, "little")  # also the seed of the fill key

U64Array = npt.NDArray[np.uint64]
Buffer = bytes | bytearray | memoryview | npt.NDArray[np.uint8]
"""Anything exposing the buffer protocol as bytes: a WRITE payload, an mmap slice, an array."""
_Bytes = bytes | bytearray | memoryview  # what struct and crc32c are typed to take

# The vectorized paths view payloads as native uint64 in place; the format is little-endian.
assert sys.byteorder == "little", "nbdfork.oracle.stamp needs a little-endian host"


class PageStatus(enum.Enum):
    """What one 4 KiB page is: not ours, a whole stamped page, or a damaged stamped page."""

    UNSTAMPED = "unstamped"
    VALID = "valid"
    TORN = "torn"


@dataclass(frozen=True, slots=True)
class PageDecode:
    """The full verdict on one page; identity fields are None only when UNSTAMPED."""

    status: PageStatus
    stream: int | None
    page: int | None
    generation: int | None
    sector_generations: tuple[int | None, ...]
    crc_ok: bool
    first_mismatch: int | None


class PageStamp(NamedTuple):
    """A VALID page found in a payload, at `offset` bytes (base_offset included)."""

    offset: int
    stream: int
    page: int
    generation: int


_new_tuple = tuple.__new__

_UNSTAMPED: Final = PageDecode(
    PageStatus.UNSTAMPED, None, None, None, (None,) * SECTORS_PER_PAGE, False, None
)


# --- the mix function ---------------------------------------------------------------------


def _fmix_py(z: int) -> int:
    """splitmix64's finalizer on a Python int (reference for other tools)."""
    z = ((z ^ (z >> 30)) * _MIX1) & _U64
    z = ((z ^ (z >> 27)) * _MIX2) & _U64
    return z ^ (z >> 31)


def _page_key_py(stream: int, page: int, generation: int) -> int:
    """The per-page splitmix64 seed: a bijection of `generation` for a fixed stream and page."""
    return _fmix_py(_fmix_py(_fmix_py(_MAGIC_U64 ^ stream) ^ page) ^ generation)


def mix64(stream: int, page: int, generation: int, word: int) -> int:
    """Fill word `word` (0..471, = sector*59 + j) of a page: splitmix64 output `word` of its key."""
    key = _page_key_py(stream, page, generation)
    return _fmix_py((key + (word + 1) * _GOLDEN) & _U64)


# A page as uint64 words, shape (8, 64) per page: word 0 magic, 1 version | sector << 16 |
# stream << 32, 2 page, 3 generation, 4 crc | reserved << 32, 5..63 fill.
_WORDS_PER_SECTOR: Final = SECTOR_SIZE // 8
_W_MAGIC, _W_TAG, _W_PAGE, _W_GEN, _W_CRC = 0, 1, 2, 3, 4
_LOW32: Final = np.uint64(0xFFFF_FFFF)
_HIGH32: Final = np.uint64(0xFFFF_FFFF_0000_0000)
_MAGIC_WORD: Final = np.uint64(_MAGIC_U64)
_TAG_BASE: Final = (np.arange(SECTORS_PER_PAGE, dtype=np.uint64) << np.uint64(16)) | np.uint64(
    FORMAT_VERSION
)
_WORD_STEPS: Final = np.arange(1, SECTORS_PER_PAGE * FILL_WORDS + 1, dtype=np.uint64) * np.uint64(
    _GOLDEN
)


def _fmix(z: U64Array) -> U64Array:
    """splitmix64's finalizer over a uint64 array, in place (wrap-around arithmetic)."""
    t = z >> np.uint64(30)
    z ^= t
    z *= np.uint64(_MIX1)
    np.right_shift(z, np.uint64(27), out=t)
    z ^= t
    z *= np.uint64(_MIX2)
    np.right_shift(z, np.uint64(31), out=t)
    z ^= t
    return z


# Below this many pages, per-page keys in Python ints beat 27 numpy calls on tiny arrays: a
# 4 KiB WRITE is the common case, and the plugin shares the guest's CPUs with the kernel.
_PY_KEYS_MAX: Final = 16


def _keys(stream: U64Array, page: U64Array, generation: U64Array) -> U64Array:
    """The splitmix64 seed of each of k pages."""
    if len(page) <= _PY_KEYS_MAX:
        ids = zip(stream.tolist(), page.tolist(), generation.tolist(), strict=True)
        return np.array([_page_key_py(*i) for i in ids], dtype=np.uint64)
    key = _fmix(stream ^ _MAGIC_WORD)
    key = _fmix(key ^ page)
    return _fmix(key ^ generation)


def _fill(stream: U64Array, page: U64Array, generation: U64Array) -> U64Array:
    """Fill words of k pages, shape (k, 8, 59)."""
    words = _fmix(_keys(stream, page, generation)[:, None] + _WORD_STEPS[None, :])
    return words.reshape(-1, SECTORS_PER_PAGE, FILL_WORDS)


def _expected(stream: U64Array, page: U64Array, generation: U64Array) -> U64Array:
    """Words of k stamped pages, shape (k, 8, 64), with every crc field zero."""
    words = np.empty((len(page), SECTORS_PER_PAGE, _WORDS_PER_SECTOR), dtype=np.uint64)
    words[:, :, _W_MAGIC] = _MAGIC_WORD
    words[:, :, _W_TAG] = _TAG_BASE[None, :] | (stream << np.uint64(32))[:, None]
    words[:, :, _W_PAGE] = page[:, None]
    words[:, :, _W_GEN] = generation[:, None]
    words[:, :, _W_CRC] = 0
    words[:, :, _W_CRC + 1 :] = _fill(stream, page, generation)
    return words


def _crcs(words: U64Array) -> U64Array:
    """crc32c of each page of `words` (k, 8, 64): one C call per page."""
    return np.array([crc32c.crc32c(page.data) for page in words], dtype=np.uint64)


# --- encoding -----------------------------------------------------------------------------


def _checked(name: str, value: int, bits: int) -> int:
    """`value` as an int in [0, 2**bits), else a ValueError naming the argument."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    number = operator.index(value)
    if not 0 <= number < (1 << bits):
        raise ValueError(f"{name}={number} is out of range: must be 0 <= {name} < 2**{bits}")
    return number


def _encoded(stream: U64Array, page: U64Array, generation: U64Array) -> U64Array:
    """Words of k stamped pages, shape (k, 8, 64), crc included."""
    words = _expected(stream, page, generation)
    words[:, :, _W_CRC] = _crcs(words)[:, None]
    return words


def _encode(stream: U64Array, page: U64Array, generation: U64Array) -> bytes:
    """The bytes of k stamped pages."""
    return _encoded(stream, page, generation).tobytes()


def encode_page(stream: int, page: int, generation: int) -> bytes:
    """The 4096 bytes of `page` of `stream` at `generation` (stream u32, page/generation u64)."""
    return _encode(*_identity_arrays(stream, [page], [generation]))


def encode_pages(stream: int, first_page: int, generations: Sequence[int]) -> bytes:
    """Pages first_page, first_page + 1, ... of `stream` at the given generations, concatenated."""
    pages = [first_page + i for i in range(len(generations))]
    return _encode(*_identity_arrays(stream, pages, generations))


def _identity_arrays(
    stream: int, pages: Sequence[int], generations: Sequence[int]
) -> tuple[U64Array, U64Array, U64Array]:
    """Validated uint64 arrays (stream repeated) for `_encode`."""
    s = _checked("stream", stream, 32)
    p = [_checked("page", x, 64) for x in pages]
    g = [_checked("generation", x, 64) for x in generations]
    return (
        np.full(len(p), s, dtype=np.uint64),
        np.array(p, dtype=np.uint64),
        np.array(g, dtype=np.uint64),
    )


# --- the VALID rule: consistent headers and a matching crc -----------------------------------

# A page's 8 sector headers in one C call. Per sector: magic + version (10 bytes), the sector
# index (2 bytes), then stream, page, generation, crc, reserved (28 bytes) — the part every
# sector of a VALID page shares.
_HEADERS: Final = struct.Struct("<" + "10s2s28s472x" * (SECTORS_PER_PAGE - 1) + "10s2s28s")
_SHARED: Final = struct.Struct("<IQQII")  # stream, page, generation, crc, reserved
_FIRST_WORDS: Final = struct.Struct("<" + "Q504x" * (SECTORS_PER_PAGE - 1) + "Q")
_VALID_HEADS: Final = (MAGIC + FORMAT_VERSION.to_bytes(2, "little"),) * SECTORS_PER_PAGE
_SECTOR_FIELDS: Final = tuple(s.to_bytes(2, "little") for s in range(SECTORS_PER_PAGE))

Tag = tuple[int, int, int]


def _crc_tables() -> tuple[tuple[int, ...], ...]:
    """Byte tables of W(c), the crc32c of a whole page whose 8 crc fields hold its crc c.

    crc32c is affine, so for a page P whose crc fields all hold c and Z, P with them zeroed:
    crc32c(P) = crc32c(Z) ^ L(c) with L linear. The stored crc is right (c == crc32c(Z)) iff
    crc32c(P) == c ^ L(c) =: W(c), also linear: one crc32c over the page as received, no copy.
    """
    zeros = crc32c.crc32c(bytes(PAGE_SIZE))

    def w(c: int) -> int:
        page = bytearray(PAGE_SIZE)
        for s in range(SECTORS_PER_PAGE):
            at = s * SECTOR_SIZE + CRC_OFFSET
            page[at : at + 4] = c.to_bytes(4, "little")
        return int(c ^ crc32c.crc32c(page) ^ zeros)

    bits = [w(1 << b) for b in range(32)]
    tables = []
    for byte in range(4):
        table = [0] * 256
        for v in range(1, 256):
            low = v & -v
            table[v] = table[v ^ low] ^ bits[8 * byte + low.bit_length() - 1]
        tables.append(tuple(table))
    return tuple(tables)


_W0, _W1, _W2, _W3 = _crc_tables()
_W_TABLES: Final = np.array([_W0, _W1, _W2, _W3], dtype=np.uint64)


def _valid_identity(page: _Bytes) -> Tag | None:
    """(stream, page, generation) if the 4096-byte `page` is VALID, else None.

    VALID: every sector has the magic, version 1, its own index and the same stream, page,
    generation, crc and zero reserved field, and the crc is crc32c of the page with the crc
    fields zeroed. The crc covers the fill, so the fill is not rebuilt.
    """
    h = _HEADERS.unpack_from(page)
    shared = h[2]
    if (
        h[0::3] != _VALID_HEADS
        or h[1::3] != _SECTOR_FIELDS
        or h[2::3].count(shared) != SECTORS_PER_PAGE
    ):
        return None
    stream, number, generation, crc, reserved = _SHARED.unpack(shared)
    whole = _W0[crc & 0xFF] ^ _W1[crc >> 8 & 0xFF] ^ _W2[crc >> 16 & 0xFF] ^ _W3[crc >> 24]
    if reserved or crc32c.crc32c(page) != whole:
        return None
    return stream, number, generation


# --- decoding one page (the exact path) ----------------------------------------------------


def _bytes(buf: Buffer) -> npt.NDArray[np.uint8]:
    """`buf` as a flat uint8 array, without copying; its length must be a multiple of 4096."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    if raw.size % PAGE_SIZE:
        raise ValueError(f"payload length {raw.size} is not a multiple of {PAGE_SIZE}")
    return raw


def _words(raw: npt.NDArray[np.uint8]) -> U64Array:
    """Pages as uint64 words, shape (pages, 8, 64), without copying (little-endian host)."""
    return raw.view(np.uint64).reshape(-1, SECTORS_PER_PAGE, _WORDS_PER_SECTOR)


def _sector_tags(page: U64Array) -> list[Tag | None]:
    """(stream, page, generation) of each sector that starts with the magic, else None."""
    return [
        (int(w[_W_TAG]) >> 32, int(w[_W_PAGE]), int(w[_W_GEN]))
        if w[_W_MAGIC] == _MAGIC_WORD
        else None
        for w in page
    ]


def _reference(tags: list[Tag | None]) -> Tag:
    """The page's identity: sector 0's tag, else the most common tag (earliest on ties)."""
    if tags[0] is not None:
        return tags[0]
    return Counter(t for t in tags if t is not None).most_common(1)[0][0]


def _sector_generations(page: U64Array, ref: Tag) -> tuple[int | None, ...]:
    """Generation of each sector whose tag is well-formed and names this stream and page."""
    tag_ok = page[:, _W_TAG] == (_TAG_BASE | np.uint64(ref[0] << 32))
    ok = (page[:, _W_MAGIC] == _MAGIC_WORD) & tag_ok & (page[:, _W_PAGE] == np.uint64(ref[1]))
    gens = page[:, _W_GEN].tolist()
    return tuple(g if good else None for g, good in zip(gens, ok.tolist(), strict=True))


def sector_generations(data: Buffer, stream: int, page: int) -> tuple[int | None, ...]:
    """For one 4096-byte page: each sector's generation if its header is well formed and names
    `stream` and `page` at its own index, else None (the sector map of a TORN decode, for a
    given identity instead of the one the page's own sectors suggest)."""
    return _sector_generations(_words(_bytes(data))[0], (stream, page, 0))


def _crc_ok(page: U64Array) -> bool:
    """Whether all 8 stored crcs equal the crc32c of the page with its crc fields zeroed."""
    zeroed = page.copy()
    zeroed[:, _W_CRC] &= _HIGH32
    crc = crc32c.crc32c(zeroed.data)
    return bool(np.all((page[:, _W_CRC] & _LOW32) == np.uint64(crc)))


def _first_mismatch(raw: npt.NDArray[np.uint8], ref: Tag) -> int | None:
    """Byte offset of the first byte of `raw` that differs from encode_page(*ref)."""
    expected = np.frombuffer(encode_page(*ref), dtype=np.uint8)
    diff = np.flatnonzero(raw != expected)
    return int(diff[0]) if diff.size else None


def decode_page(data: Buffer) -> PageDecode:
    """The verdict on one 4096-byte page (see the module docstring)."""
    raw = _bytes(data)
    if raw.size != PAGE_SIZE:
        raise ValueError(f"a page is {PAGE_SIZE} bytes, got {raw.size}")
    return _decode_raw(raw)


def _decode_raw(raw: npt.NDArray[np.uint8]) -> PageDecode:
    """decode_page on one page already viewed as 4096 uint8."""
    ident = _valid_identity(raw.data)
    if ident is not None:
        return PageDecode(PageStatus.VALID, *ident, (ident[2],) * SECTORS_PER_PAGE, True, None)
    page = _words(raw)[0]
    tags = _sector_tags(page)
    if all(t is None for t in tags):
        return _UNSTAMPED
    # Not VALID, so the page differs from encode_page(*ref) somewhere: locate the first byte.
    ref = _reference(tags)
    first = _first_mismatch(raw, ref)
    return PageDecode(PageStatus.TORN, *ref, _sector_generations(page, ref), _crc_ok(page), first)


# --- decoding a whole payload (the vectorized path) ----------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class PagesDecode:
    """Verdicts on every 4096-byte page of a payload; arrays are aligned with `index`.

    `index` holds the payload page numbers (0-based) of the stamped pages; `valid`, `stream`,
    `page` and `generation` describe those pages (for a TORN page, its reference identity);
    `torn` maps the payload page number of every TORN page to its exact PageDecode.
    """

    base_offset: int
    page_count: int
    index: npt.NDArray[np.intp]
    valid: npt.NDArray[np.bool_]
    stream: U64Array
    page: U64Array
    generation: U64Array
    torn: dict[int, PageDecode] = field(default_factory=dict)

    @property
    def stamped_count(self) -> int:
        """Pages carrying the magic in at least one sector."""
        return int(self.index.size)

    @property
    def valid_count(self) -> int:
        """VALID pages."""
        return int(np.count_nonzero(self.valid))

    @property
    def torn_count(self) -> int:
        """Stamped pages that are not VALID."""
        return len(self.torn)

    def offset(self, i: int) -> int:
        """Byte offset of payload page `i` (base_offset included)."""
        return self.base_offset + i * PAGE_SIZE

    def valid_pages(self) -> list[PageStamp]:
        """Every VALID page as (offset, stream, page, generation), in payload order."""
        sel = self.valid
        cols = (
            (self.index[sel] * PAGE_SIZE + self.base_offset).tolist(),
            self.stream[sel].tolist(),
            self.page[sel].tolist(),
            self.generation[sel].tolist(),
        )
        # tuple.__new__ skips the NamedTuple's Python-level __new__: 256 pages per 1 MiB WRITE
        return [_new_tuple(PageStamp, row) for row in zip(*cols, strict=True)]

    def torn_pages(self) -> list[tuple[int, PageDecode]]:
        """Every TORN page as (offset, decode), in payload order."""
        return [(self.offset(i), d) for i, d in sorted(self.torn.items())]


def _empty(base_offset: int, page_count: int) -> PagesDecode:
    """A PagesDecode with no stamped page."""
    none = np.zeros(0, dtype=np.uint64)
    index = np.zeros(0, dtype=np.intp)
    return PagesDecode(base_offset, page_count, index, np.zeros(0, np.bool_), none, none, none)


Identities = tuple[U64Array, U64Array, U64Array]

# Sector s of a VALID page repeats sector 0's header words 0..4 with s added to its index.
_HEAD_STEPS: Final = np.zeros((SECTORS_PER_PAGE, _W_CRC + 1), dtype=np.uint64)
_HEAD_STEPS[:, _W_TAG] = np.arange(SECTORS_PER_PAGE, dtype=np.uint64) << np.uint64(16)


def _identities(stamped: U64Array) -> Identities:
    """(stream, page, generation) arrays named by sector 0 of each page (fresh copies)."""
    s0 = stamped[:, 0, :]
    return s0[:, _W_TAG] >> np.uint64(32), s0[:, _W_PAGE].copy(), s0[:, _W_GEN].copy()


def _valid_mask(
    raw: npt.NDArray[np.uint8], index: npt.NDArray[np.intp], stamped: U64Array
) -> npt.NDArray[np.bool_]:
    """_valid_identity on each page of `stamped` (k, 8, 64): headers vectorized, crc per page."""
    heads = stamped[:, :, : _W_CRC + 1]
    first = heads[:, 0, :]
    ok: npt.NDArray[np.bool_] = (heads == first[:, None, :] + _HEAD_STEPS).all(axis=(1, 2))
    ok &= first[:, _W_MAGIC] == _MAGIC_WORD
    ok &= (first[:, _W_TAG] & _LOW32) == _TAG_BASE[0]  # version 1, sector index 0
    ok &= (first[:, _W_CRC] >> np.uint64(32)) == 0  # reserved
    crc = (first[:, _W_CRC] & _LOW32).astype(np.intp)  # intp: fast table indexing
    whole = _W_TABLES[0][crc & 0xFF] ^ _W_TABLES[1][crc >> 8 & 0xFF]
    whole ^= _W_TABLES[2][crc >> 16 & 0xFF] ^ _W_TABLES[3][crc >> 24]
    candidates = np.flatnonzero(ok)
    view = raw.data
    got = [crc32c.crc32c(view[i : i + PAGE_SIZE]) for i in (index[candidates] * PAGE_SIZE).tolist()]
    ok[candidates] = np.array(got, dtype=np.uint64) == whole[candidates]
    return ok


def _decode_torn(
    raw: npt.NDArray[np.uint8],
    index: npt.NDArray[np.intp],
    valid: npt.NDArray[np.bool_],
    ids: Identities,
) -> dict[int, PageDecode]:
    """decode_page on each stamped page that is not VALID; corrects `ids` to its identity."""
    torn: dict[int, PageDecode] = {}
    for k in np.flatnonzero(~valid).tolist():
        i = int(index[k])
        d = torn[i] = _decode_raw(raw[i * PAGE_SIZE : (i + 1) * PAGE_SIZE])
        for array, value in zip(ids, (d.stream, d.page, d.generation), strict=True):
            assert value is not None  # a stamped page always has an identity
            array[k] = value
    return torn


def decode_pages(buf: Buffer, *, base_offset: int = 0) -> PagesDecode:
    """Verdicts on every page of `buf` (length a multiple of 4096), vectorized.

    Unstamped data costs one strided compare of each sector's first word; stamped pages one
    vectorized header check and a crc32c call per page; only pages that are not VALID go
    through the exact `decode_page`.
    """
    raw = _bytes(buf)
    words = _words(raw)
    hit = words[:, :, _W_MAGIC] == _MAGIC_WORD
    if not hit.any():
        return _empty(base_offset, len(words))
    stamped_page = hit.any(axis=1)
    if stamped_page.all():  # the usual stamped WRITE: no gather
        index, stamped = np.arange(len(words)), words
    else:
        index = np.flatnonzero(stamped_page)
        stamped = words[index]
    ids = _identities(stamped)
    valid = _valid_mask(raw, index, stamped)
    torn = _decode_torn(raw, index, valid, ids) if not valid.all() else {}
    return PagesDecode(base_offset, len(words), index, valid, *ids, torn)


# --- the inline oracle's entry point -----------------------------------------------------------


class Stamps(NamedTuple):
    """The stamped pages of a WRITE payload: how many, the VALID ones, the TORN ones."""

    stamped: int
    valid: tuple[PageStamp, ...]
    torn: tuple[tuple[int, PageDecode], ...]  # (offset, decode), in payload order


NO_STAMPS: Final = Stamps(0, (), ())

# Up to this many pages, stamped pages are checked one by one (a struct unpack and a crc32c
# call each): numpy's fixed cost per call (~20 calls in decode_pages) only pays off above it.
_PY_PAGES_MAX: Final = 16


def find_stamps(buf: Buffer, *, base_offset: int = 0) -> Stamps:
    """The stamped pages of `buf` (a whole number of pages): decode_pages' verdicts, cheaper.

    `buf` is a flat byte buffer (bytes, a "B" memoryview, a uint8 array). A 4 KiB unstamped
    payload costs one struct unpack, a larger one a strided compare; a VALID page costs a
    header unpack and one crc32c call.
    """
    data = buf.data if isinstance(buf, np.ndarray) else buf
    if len(data) == PAGE_SIZE:  # the common WRITE: no numpy at all
        if _MAGIC_U64 not in _FIRST_WORDS.unpack_from(data):
            return NO_STAMPS
        return _page_stamps(data, base_offset)
    raw = _bytes(data)
    if not (raw.view(np.uint64)[::_WORDS_PER_SECTOR] == _MAGIC_WORD).any():
        return NO_STAMPS
    if raw.size > _PY_PAGES_MAX * PAGE_SIZE:
        decoded = decode_pages(raw, base_offset=base_offset)
        valid, torn = tuple(decoded.valid_pages()), tuple(decoded.torn_pages())
        return Stamps(decoded.stamped_count, valid, torn)
    view = memoryview(data)
    found = [
        _page_stamps(view[at : at + PAGE_SIZE], base_offset + at)
        for at in range(0, raw.size, PAGE_SIZE)
        if _MAGIC_U64 in _FIRST_WORDS.unpack_from(view, at)
    ]
    return Stamps(
        len(found),
        tuple(v for f in found for v in f.valid),
        tuple(t for f in found for t in f.torn),
    )


def _page_stamps(page: _Bytes, offset: int) -> Stamps:
    """Stamps of one page known to carry the magic in some sector."""
    ident = _valid_identity(page)
    if ident is not None:
        return Stamps(1, (PageStamp(offset, *ident),), ())
    return Stamps(1, (), ((offset, _decode_raw(np.frombuffer(page, dtype=np.uint8))),))


# --- pages at any 512-byte alignment -----------------------------------------------------------


class Piece(NamedTuple):
    """Part of a stamped page in one WRITE: the page starts at device sector `anchor`, and the
    write covers its sectors in `mask` (bit i = sector i of the page) but not all eight."""

    anchor: int
    stream: int
    page: int
    mask: int


class Found(NamedTuple):
    """What one WRITE payload carries: whole pages (judged from the payload) and pieces."""

    stamps: Stamps
    pieces: tuple[Piece, ...]


_SECTOR_HEAD: Final = struct.Struct("<QHHIQ")  # magic, version, sector index, stream, page
NOTHING: Final = Found(NO_STAMPS, ())
"""What a WRITE without a stamped sector carries."""


def find_pages(buf: Buffer, offset: int) -> Found:
    """Stamped pages of a WRITE of `buf` at device byte `offset`, at any 512-byte alignment.

    Every sector names its index in its page, so a sector holding the magic at device sector
    p with index i belongs to the page that starts at sector p - i (its *anchor*). A page whose
    eight sectors all lie inside the write is judged from the payload; a page the write covers
    only in part is returned as a Piece, to be judged on the media once it is whole.
    """
    data = buf.data if isinstance(buf, np.ndarray) else buf
    length = len(data)
    # The common WRITE: 4 KiB at a sector boundary, no sector starting with the magic.
    if (
        length == PAGE_SIZE
        and not offset % SECTOR_SIZE
        and _MAGIC_U64 not in _FIRST_WORDS.unpack_from(data)
    ):
        return NOTHING
    if not (offset | length) % PAGE_SIZE:  # page-aligned: the fast vectorized path
        stamps = find_stamps(data, base_offset=offset) if length else NO_STAMPS
        if not stamps.torn:  # every magic sector belongs to a VALID page in place
            return Found(stamps, ())
    return _find_any(memoryview(data).cast("B"), offset)


def _magic_sectors(view: memoryview, skip: int, count: int) -> list[int]:
    """Positions (in sectors from `skip` bytes) of the full sectors that start with the magic."""
    if not count:
        return []
    raw = np.frombuffer(view, dtype=np.uint8, count=count * SECTOR_SIZE, offset=skip)
    first = raw.view(np.uint64)[:: SECTOR_SIZE // 8]
    hits: list[int] = np.flatnonzero(first == _MAGIC_WORD).tolist()
    return hits


def _find_any(view: memoryview, offset: int) -> Found:
    """find_pages for any alignment: group magic sectors by anchor, judge whole pages."""
    skip = -offset % SECTOR_SIZE
    first_sector = (offset + skip) // SECTOR_SIZE
    count = max(0, (len(view) - skip) // SECTOR_SIZE)
    groups: dict[int, tuple[int, int]] = {}  # anchor -> (stream, page) of its first sector
    loose: list[tuple[int, tuple[int, int]]] = []
    for k in _magic_sectors(view, skip, count):
        _, version, index, stream, page = _SECTOR_HEAD.unpack_from(view, skip + k * SECTOR_SIZE)
        if version == FORMAT_VERSION and index < SECTORS_PER_PAGE:
            groups.setdefault(first_sector + k - index, (stream, page))
        else:
            loose.append((first_sector + k, (stream, page)))
    for sector, ident in loose:  # a damaged header joins a page around it, else starts one
        if not any(a <= sector < a + SECTORS_PER_PAGE for a in groups):
            groups[sector] = ident
    return _judge_groups(view, skip, first_sector, count, groups)


def _judge_groups(
    view: memoryview, skip: int, first: int, count: int, groups: dict[int, tuple[int, int]]
) -> Found:
    """Whole pages decoded from the payload, the rest as pieces."""
    found: list[Stamps] = []
    pieces: list[Piece] = []
    end = first + count
    for anchor in sorted(groups):
        if first <= anchor and anchor + SECTORS_PER_PAGE <= end:
            at = skip + (anchor - first) * SECTOR_SIZE
            found.append(_page_stamps(view[at : at + PAGE_SIZE], anchor * SECTOR_SIZE))
            continue
        lo, hi = max(anchor, first), min(anchor + SECTORS_PER_PAGE, end)
        mask = ((1 << (hi - lo)) - 1) << (lo - anchor)
        pieces.append(Piece(anchor, *groups[anchor], mask))
    stamps = Stamps(
        len(found),
        tuple(v for f in found for v in f.valid),
        tuple(t for f in found for t in f.torn),
    )
    return Found(stamps, tuple(pieces))
