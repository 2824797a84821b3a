"""Offline scans of a device image: which stamped pages, at which generations, lie where.

Used for crash-state checks (what survived on the media) with the same decoder as the inline
oracle. Chunks are decoded with `decode_pages`, so an unstamped chunk costs one strided compare
of the first word of each sector.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nbdfork.errors import OracleError
from nbdfork.oracle.stamp import PAGE_SIZE, Buffer, PageDecode, PagesDecode, decode_pages

__all__ = ["DEFAULT_CHUNK", "ImageScan", "scan_file", "scan_image"]

DEFAULT_CHUNK = 16 << 20
"""Bytes decoded per numpy pass: big enough to amortize overhead, small enough for the cache."""

Found = dict[tuple[int, int], dict[int, list[int]]]


@dataclass(frozen=True, slots=True)
class ImageScan:
    """Stamped pages of an image; `found` maps (stream, page) -> generation -> byte offsets.

    Only VALID pages are in `found`; TORN ones are in `torn` as (offset, decode). A trailing
    partial page (image size not a multiple of 4096) is not scanned.
    """

    size: int
    page_count: int
    stamped_pages: int
    valid_pages: int
    torn_pages: int
    found: Mapping[tuple[int, int], Mapping[int, list[int]]]
    torn: tuple[tuple[int, PageDecode], ...]

    def generations(self, stream: int, page: int) -> list[int]:
        """The generations of (stream, page) present as VALID pages, ascending."""
        return sorted(self.found.get((stream, page), {}))

    def latest(self, stream: int, page: int) -> int | None:
        """The newest VALID generation of (stream, page) in the image, or None."""
        gens = self.found.get((stream, page))
        return max(gens) if gens else None


def _collect(decoded: PagesDecode, found: Found) -> None:
    """Add the VALID pages of one chunk to `found`."""
    for offset, stream, page, gen in decoded.valid_pages():
        found.setdefault((stream, page), {}).setdefault(gen, []).append(offset)


def _check_chunk(chunk: int) -> None:
    """A chunk must be a positive multiple of the page size."""
    if chunk <= 0 or chunk % PAGE_SIZE:
        raise ValueError(f"chunk={chunk} must be a positive multiple of {PAGE_SIZE}")


def scan_image(data: Buffer | mmap.mmap, *, chunk: int = DEFAULT_CHUNK) -> ImageScan:
    """Decode every 4096-byte page of `data` (bytes, mmap, array) chunk by chunk."""
    _check_chunk(chunk)
    raw = np.frombuffer(data, dtype=np.uint8)
    usable = raw.size - raw.size % PAGE_SIZE
    found: Found = {}
    torn: list[tuple[int, PageDecode]] = []
    stamped = valid = 0
    for start in range(0, usable, chunk):
        decoded = decode_pages(raw[start : min(start + chunk, usable)], base_offset=start)
        if decoded.stamped_count:
            stamped += decoded.stamped_count
            valid += decoded.valid_count
            torn += decoded.torn_pages()
            _collect(decoded, found)
    return ImageScan(raw.size, usable // PAGE_SIZE, stamped, valid, len(torn), found, tuple(torn))


def scan_file(path: str | Path, *, chunk: int = DEFAULT_CHUNK) -> ImageScan:
    """scan_image over a file, memory-mapped read-only."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            if path.stat().st_size == 0:
                return scan_image(b"", chunk=chunk)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return scan_image(m, chunk=chunk)
    except OSError as e:
        raise OracleError(f"{path}: cannot read the image: {e.strerror}") from e
