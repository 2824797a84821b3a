"""The crash campaign's workload: stamped files made durable with fsync, a ledger of what was.

Files are created under a temporary name, filled with stamped pages (stream = file id),
fsynced, renamed into place and the directory fsynced; then pages of random files are
rewritten with newer generations and fsynced. After every fsync returns, the workload reads
one 4 KiB block of the raw device beyond the filesystem's end with O_DIRECT: that read is a
*checkpoint marker* in the device's trace, so a crash point can be matched to exactly what
the ledger says was durable by then, with no clock to correlate. With `atomic`, a rewrite
replaces the whole file (all its pages, one generation) in one RWF_ATOMIC direct write: no
crash state may then hold a file half old, half new.
"""

from __future__ import annotations

import mmap
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdfork.files import write_json
from nbdfork.oracle.stamp import PAGE_SIZE, encode_page, encode_pages
from nbdfork.workloads.atomic import RWF_ATOMIC, atomic_limits

__all__ = ["MARKER_GAP",
    "MARKER_SLOTS", "Checkpoint", "FsyncLedgerWorkload", "Ledger", "LedgerFile"]

MARKER_SLOTS = 16
MARKER_GAP = 64 << 10  # slots start this far past the filesystem's end (probes read the edges)
STREAM_BASE = 1000


@dataclass(slots=True)
class LedgerFile:
    """A file the workload made durable: its final name, stream and durable generations."""

    name: str
    stream: int
    generations: list[int]
    atomic: bool = False  # rewritten whole, as one RWF_ATOMIC write: never half old, half new


@dataclass(slots=True)
class Checkpoint:
    """What was durable when checkpoint `index` was marked."""

    index: int
    files: dict[str, LedgerFile]


@dataclass(slots=True)
class Ledger:
    """Every checkpoint, in order; JSON-serialisable."""

    marker_offset: int
    checkpoints: list[Checkpoint] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """The ledger as plain JSON values."""
        return {
            "marker_offset": self.marker_offset,
            "checkpoints": [
                {"index": c.index,
                 "files": {n: [f.stream, f.generations, *([True] if f.atomic else [])]
                           for n, f in c.files.items()}}
                for c in self.checkpoints
            ],
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ledger:
        """Inverse of to_json."""
        checkpoints = []
        for raw in data["checkpoints"]:
            files = {n: LedgerFile(n, int(v[0]), [int(x) for x in v[1]], bool(v[2:]))
                     for n, v in raw["files"].items()}  # fmt: skip
            checkpoints.append(Checkpoint(int(raw["index"]), files))
        return cls(int(data["marker_offset"]), checkpoints)


class FsyncLedgerWorkload:
    """Writes, fsyncs, renames and marks; runs inside the guest against a mounted fs."""

    def __init__(
        self, mount: Path, device: Path, marker_offset: int, *, files: int = 8,
        pages: int = 4, seconds: float = 5.0, seed: int = 0, atomic: bool = False,
    ) -> None:  # fmt: skip
        self.mount = mount
        self.device = device
        self.ledger = Ledger(marker_offset)
        self.files = files
        self.pages = pages
        self.seconds = seconds
        self.rng = random.Random(seed)
        self._durable: dict[str, LedgerFile] = {}
        self._marker = mmap.mmap(-1, PAGE_SIZE)  # page-aligned buffer for O_DIRECT
        self.atomic = atomic
        self._unit = mmap.mmap(-1, pages * PAGE_SIZE) if atomic else None

    def run(self) -> Ledger:
        """Create the files, then rewrite pages until the time is up; return the ledger."""
        for index in range(self.files):
            self._create(index)
        if self.atomic:
            self._require_atomic(self.mount / "f000")
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            self._rewrite(self.rng.randrange(self.files))
        return self.ledger

    def _create(self, index: int) -> None:
        name, stream = f"f{index:03d}", STREAM_BASE + index
        tmp = self.mount / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for page in range(self.pages):
                os.pwrite(fd, encode_page(stream, page, 1), page * PAGE_SIZE)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.mount / name)
        self._fsync_dir()
        self._durable[name] = LedgerFile(name, stream, [1] * self.pages, self.atomic)
        self._checkpoint()

    def _require_atomic(self, path: Path) -> None:
        """The whole file must fit one untorn write here (statx), or the campaign is moot."""
        fd = os.open(path, os.O_RDONLY)
        try:
            unit_min, unit_max, _ = atomic_limits(fd)
        finally:
            os.close(fd)
        size = self.pages * PAGE_SIZE
        if not unit_min <= size <= unit_max:
            raise OSError(f"no atomic write of {size} bytes here: statx atomic write unit min "
                          f"{unit_min} / max {unit_max} (kernel {os.uname().release})")

    def _rewrite_atomic(self, entry: LedgerFile) -> None:
        """Every page of the file at the next generation, as ONE RWF_ATOMIC direct write."""
        assert self._unit is not None
        generation = max(entry.generations) + 1
        self._unit[:] = encode_pages(entry.stream, 0, [generation] * self.pages)
        fd = os.open(self.mount / entry.name, os.O_WRONLY | os.O_DIRECT)
        try:
            if os.pwritev(fd, [self._unit], 0, RWF_ATOMIC) != len(self._unit):
                raise OSError(f"short atomic write to {entry.name}")
            os.fsync(fd)
        finally:
            os.close(fd)
        entry.generations = [generation] * self.pages
        self._checkpoint()

    def _rewrite(self, index: int) -> None:
        name = f"f{index:03d}"
        entry = self._durable[name]
        if self.atomic:
            self._rewrite_atomic(entry)
            return
        page = self.rng.randrange(self.pages)
        generation = entry.generations[page] + 1
        fd = os.open(self.mount / name, os.O_WRONLY)
        try:
            os.pwrite(fd, encode_page(entry.stream, page, generation), page * PAGE_SIZE)
            os.fsync(fd)
        finally:
            os.close(fd)
        entry.generations[page] = generation
        self._checkpoint()

    def _fsync_dir(self) -> None:
        fd = os.open(self.mount, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _checkpoint(self) -> None:
        index = len(self.ledger.checkpoints)
        files = {n: LedgerFile(n, f.stream, list(f.generations), f.atomic)
                 for n, f in self._durable.items()}  # fmt: skip
        self.ledger.checkpoints.append(Checkpoint(index, files))
        offset = self.ledger.marker_offset + (index % MARKER_SLOTS) * PAGE_SIZE
        fd = os.open(self.device, os.O_RDONLY | os.O_DIRECT)
        try:
            os.preadv(fd, [self._marker], offset)
        finally:
            os.close(fd)


def write_ledger(ledger: Ledger, path: Path) -> None:
    """Save the ledger as JSON."""
    write_json(path, ledger.to_json())
