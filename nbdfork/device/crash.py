"""Crash states: what a power cut may leave on the media, reproducible from a seed.

A crash state is the durable data plus a seeded random subset of the writes that were
acknowledged but not yet durable, applied in reply order, each possibly torn at 512-byte
sector granularity (CrashMonkey's model). State `index` at crash point `point` under `seed`
is always the same image.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nbdfork.device.cache import SECTOR, CacheModel, PendingWrite
from nbdfork.device.rng import DeviceRng

__all__ = [
    "AppliedWrite",
    "CrashState",
    "build_image",
    "choose_state",
    "kept_sectors",
    "state_bytes",
]

_PURPOSE_PICK = 101
_PURPOSE_TEAR = 102
_PURPOSE_SECTOR = 103
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class AppliedWrite:
    """One pending write that a crash state keeps, with the sectors of it that reached media."""

    seq: int
    request_id: int
    offset: int
    sectors: tuple[int, ...]  # indices into the write; all its live sectors unless torn
    torn: bool


@dataclass(frozen=True, slots=True)
class CrashState:
    """Which pending writes a crash state keeps; `image` reproduces its bytes."""

    point: int
    index: int
    seed: int
    pending: int
    applied: tuple[AppliedWrite, ...]

    def describe(self) -> dict[str, object]:
        """The reproducer, as JSON values."""
        return {
            "point": self.point,
            "index": self.index,
            "seed": self.seed,
            "pending_writes": self.pending,
            "kept_writes": len(self.applied),
            "torn_writes": sum(a.torn for a in self.applied),
            "kept": [[a.request_id, a.offset, list(a.sectors)] for a in self.applied],
        }


def choose_state(
    pending: Iterable[PendingWrite],
    *,
    seed: int,
    point: int,
    index: int,
    keep: float = 0.5,
    tear: float = 0.25,
) -> CrashState:
    """Pick the writes (and sectors) crash state `index` at `point` keeps."""
    rng = DeviceRng(seed ^ (point << 20) ^ index)
    entries = sorted(pending, key=lambda e: e.seq)
    applied = [_choose(rng, e, keep, tear) for e in entries]
    kept = tuple(a for a in applied if a is not None)
    return CrashState(point, index, seed, len(entries), kept)


def _choose(rng: DeviceRng, entry: PendingWrite, keep: float, tear: float) -> AppliedWrite | None:
    if rng.uniform(_PURPOSE_PICK, entry.seq) >= keep:
        return None
    live = [int(i) for i in np.flatnonzero(entry.live)]
    torn = len(live) > 1 and rng.uniform(_PURPOSE_TEAR, entry.seq) < tear
    if torn:
        picked = [s for s in live if rng.uniform(_PURPOSE_SECTOR, entry.seq, s) < 0.5]
        live = picked if 0 < len(picked) < len(live) else live[: len(live) // 2]
    return AppliedWrite(entry.seq, entry.request_id, entry.offset, tuple(live), torn)


def build_image(cache: CacheModel, state: CrashState, path: Path) -> None:
    """Write crash `state` of `cache` to the image file `path` (sparse where media is zero)."""
    media = cache.media
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, media.size)
        view = media.view()
        for offset in range(0, media.size, _CHUNK):
            chunk = view[offset : offset + _CHUNK]
            if np.frombuffer(chunk, dtype=np.uint64).any():
                os.pwrite(fd, chunk, offset)
        for offset, data in kept_sectors(cache, state):
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def kept_sectors(cache: CacheModel, state: CrashState) -> Iterator[tuple[int, bytes]]:
    """(offset, 512 bytes) of every sector the state keeps beyond the media, in reply order."""
    for applied in state.applied:
        entry = cache.pending[applied.seq]
        for sector in applied.sectors:
            start = sector * SECTOR
            yield entry.offset + start, entry.data[start : start + SECTOR]


def state_bytes(cache: CacheModel, state: CrashState) -> bytearray:
    """Crash `state` as an in-memory image (for small devices: tests and offline checks)."""
    image = bytearray(cache.media.read(0, cache.media.size))
    for offset, data in kept_sectors(cache, state):
        image[offset : offset + SECTOR] = data
    return image
