"""The campaign journal: DIR/journal.jsonl, one JSON line per cell event, append-only.

Every line names its `cell` and `event` (`start`, `done`, `failed`, `interrupted`) and carries
the time `t` (Unix seconds). Lines are written whole with one write() on an O_APPEND file and
fsync'd, so a killed campaign leaves at most a torn last line. A cell's state is its last
event: rerunning a campaign skips cells whose last event is `done` (under the same cell key)
and runs the rest again.

Reading checks every line against JournalLine (the type of each field, finite times): a line
that is not JSON (torn by a kill), not an object, or has a field of the wrong type is skipped,
and `on_skip` hears one line naming it (`journal.jsonl line 7: duration_s: expected float,
got str: skipped`). Skipping only ever makes a cell run again; it never reaches report.json.
The journal is a regular file of at most 64 MiB, opened without blocking or following a link.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from nbdfork.errors import ConfigError, ReportError
from nbdfork.inputs import MAX_JSON_BYTES, check_depth, read_bounded
from nbdfork.report.codec import validation_error

__all__ = ["EVENTS", "Journal", "JournalLine", "JournalState", "read_journal"]

EVENTS = ("start", "done", "failed", "interrupted")
JOURNAL = "journal.jsonl"
_Seconds = Annotated[float, msgspec.Meta(ge=0, le=1e12)]  # finite: JSON has no NaN anyway
_Small = Annotated[int, msgspec.Meta(ge=-(1 << 31), lt=1 << 31)]
_Text = Annotated[str, msgspec.Meta(max_length=4096)]


class JournalLine(msgspec.Struct, frozen=True, kw_only=True):
    """One journal line as read back: what report.json takes from it has these types."""

    t: _Seconds
    cell: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    event: Literal["start", "done", "failed", "interrupted"]
    key: _Text | None = None
    kind: _Text | None = None
    executor: _Text | None = None
    seed: Annotated[int, msgspec.Meta(ge=0)] | None = None  # msgspec: at most 2**64-1
    exit_status: _Small | None = None
    error: _Text | None = None
    duration_s: _Seconds | None = None
    node: _Text | None = None


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
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            self._fd = os.open(self.path, flags | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise ConfigError(str(self.path), f"cannot append: {exc.strerror or exc}") from None
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self._fd)
            raise ConfigError(str(self.path), "is not a regular file")
        size = st.st_size
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


OnSkip = Callable[[str], None]
"""Told one line for each journal line skipped, naming it and why."""


def _decode(raw: bytes) -> JournalLine:
    """One line; msgspec errors (and a line nested too deep to decode) raise."""
    check_depth(raw, ReportError)
    return msgspec.json.decode(raw, type=JournalLine)


def _lines(path: Path, on_skip: OnSkip | None) -> Iterator[JournalLine]:
    if not os.path.lexists(path):
        return
    data = read_bounded(path, MAX_JSON_BYTES, lambda problem: ConfigError(str(path), problem))
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            yield _decode(raw)
        except msgspec.ValidationError as exc:
            problem = str(validation_error(f"{path.name} line {number}", exc))
            if on_skip is not None:
                on_skip(f"{problem}: skipped")
        except (msgspec.DecodeError, ReportError):
            if on_skip is not None:
                on_skip(f"{path.name} line {number}: not a JSON line (cut by a kill?): skipped")


def read_journal(directory: Path, on_skip: OnSkip | None = None) -> dict[str, JournalState]:
    """Each cell's state from DIR/journal.jsonl (empty when there is none); each line that is
    not a well-typed event is skipped, and `on_skip` hears one line about it."""
    states: dict[str, JournalState] = {}
    for typed in _lines(directory / JOURNAL, on_skip):
        line = {k: v for k, v in msgspec.structs.asdict(typed).items() if v is not None}
        cell, event, t = typed.cell, typed.event, typed.t
        old = states.get(cell)
        if event == "start":
            attempts = (old.attempts if old else 0) + 1
            states[cell] = JournalState(cell, event, typed.key, t, None, line, attempts)
        else:
            started = old.started if old else None
            key = old.key if old else typed.key
            attempts = old.attempts if old else 0
            states[cell] = JournalState(cell, event, key, started, t, line, attempts)
    return states
