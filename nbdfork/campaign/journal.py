"""The campaign journal: DIR/journal.jsonl, one JSON line per cell event, append-only.

Every line names its `cell` and `event` (`start`, `done`, `failed`, `interrupted`) and carries
the time `t` (Unix seconds). Lines are written whole with one write() on an O_APPEND file and
fsync'd, so a killed campaign leaves at most a torn last line, which reading skips. A cell's
state is its last event: rerunning a campaign skips cells whose last event is `done` (under the
same cell key) and runs the rest again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EVENTS", "Journal", "JournalState", "read_journal"]

EVENTS = ("start", "done", "failed", "interrupted")
JOURNAL = "journal.jsonl"


@dataclass(frozen=True, slots=True)
class JournalState:
    """What the journal says about one cell."""

    cell: str
    event: str  # the last event
    key: str | None  # the cell key of its last start
    started: float | None  # `t` of the last start
    ended: float | None  # `t` of the last done/failed/interrupted after it
    last: Mapping[str, Any]  # the last line itself
    attempts: int  # how many times it started


class Journal:
    """Appends cell events to DIR/journal.jsonl, each line fsync'd before returning."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / JOURNAL
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        size = os.fstat(self._fd).st_size
        if size and not _ends_with_newline(self.path, size):
            os.write(self._fd, b"\n")  # a torn last line stays one (skipped) line

    def append(self, cell: str, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event line for `cell` and make it durable; return the line's fields."""
        line = {"t": round(time.time(), 6), "cell": cell, "event": event, **fields}
        os.write(self._fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())
        os.fsync(self._fd)
        return line

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _ends_with_newline(path: Path, size: int) -> bool:
    with path.open("rb") as f:
        f.seek(size - 1)
        return f.read(1) == b"\n"


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue  # a line torn by a kill
        if isinstance(line, dict) and isinstance(line.get("cell"), str) and line.get("event"):
            yield line


def read_journal(directory: Path) -> dict[str, JournalState]:
    """Each cell's state from DIR/journal.jsonl (empty when there is none)."""
    states: dict[str, JournalState] = {}
    for line in _lines(directory / JOURNAL):
        cell, event, t = line["cell"], str(line["event"]), line.get("t")
        old = states.get(cell)
        if event == "start":
            attempts = (old.attempts if old else 0) + 1
            states[cell] = JournalState(cell, event, line.get("key"), t, None, line, attempts)
        else:
            started = old.started if old else None
            key = old.key if old else line.get("key")
            attempts = old.attempts if old else 0
            states[cell] = JournalState(cell, event, key, started, t, line, attempts)
    return states
