"""Streaming reads of a run's `events.jsonl` into the numpy arrays the plots need.

This module owns how the renderer reads oracle verdicts: one line at a time (event files can be
large), only `torn_write` lines parsed, the values kept in compact arrays rather than dicts.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from nbdfork.errors import ReportError
from nbdfork.verdicts import Verdict

__all__ = ["EVENTS_FILE", "PAGE_SIZE", "SECTOR_SIZE", "TearSamples", "read_tears", "tear_offset"]

EVENTS_FILE = "events.jsonl"
PAGE_SIZE = 4096
SECTOR_SIZE = 512
_TORN = Verdict.TORN.encode()


@dataclass(frozen=True, slots=True)
class TearSamples:
    """Every torn_write of one run: when it arrived and where in the page the tear starts."""

    times_s: npt.NDArray[np.float64]
    """Seconds since device start, sorted."""
    offsets: npt.NDArray[np.int64]
    """Byte offset of the first mismatch within the 4 KiB page (-1 when the event has none)."""

    @classmethod
    def empty(cls) -> TearSamples:
        return cls(np.empty(0, np.float64), np.empty(0, np.int64))

    def __len__(self) -> int:
        return int(self.times_s.size)


def _first_torn_sector(sector_map: object) -> int | None:
    # The tear starts at the first sector whose generation differs from sector 0's.
    if not isinstance(sector_map, list) or not sector_map:
        return None
    for index, generation in enumerate(sector_map):
        if generation != sector_map[0]:
            return index
    return None


def tear_offset(event: dict[str, object]) -> int:
    """Where the tear starts in the page: first_mismatch, else the first torn sector, else -1."""
    mismatch = event.get("first_mismatch")
    if isinstance(mismatch, int) and not isinstance(mismatch, bool) and 0 <= mismatch < PAGE_SIZE:
        return mismatch
    sector = _first_torn_sector(event.get("sector_map"))
    return -1 if sector is None else sector * SECTOR_SIZE


def _torn_events(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    with path.open("rb") as lines:
        for lineno, line in enumerate(lines, 1):
            # Most lines of a big file are other verdicts: skip them without parsing.
            if _TORN not in line:
                continue
            try:
                event = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ReportError(f"{path}:{lineno}: not a JSON object: {exc}") from exc
            if not isinstance(event, dict):
                raise ReportError(f"{path}:{lineno}: not a JSON object")
            if event.get("event") == Verdict.TORN:
                yield lineno, event


def _event_time(path: Path, lineno: int, event: dict[str, object]) -> float:
    value = event.get("time")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ReportError(f"{path}:{lineno}: torn_write.time: expected a number, got {value!r}")
    return float(value)


def read_tears(path: Path) -> TearSamples:
    """The torn_write events of one events.jsonl; a missing file means no events were saved."""
    if not path.exists():
        return TearSamples.empty()
    times, offsets = array("d"), array("q")
    try:
        for lineno, event in _torn_events(path):
            times.append(_event_time(path, lineno, event))
            offsets.append(tear_offset(event))
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    t = np.frombuffer(times, dtype=np.float64)
    o = np.frombuffer(offsets, dtype=np.int64)
    order = np.argsort(t, kind="stable")
    return TearSamples(t[order], o[order])
