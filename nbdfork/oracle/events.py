"""events.jsonl: the oracle's verdicts as JSON lines — writing, reading back, summarizing.

One JSON object per line, with its kind in `event`. The log is line-buffered so that each event
reaches the OS as soon as it is emitted: a run whose nbdkit dies still leaves every verdict.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TextIO

from nbdfork.errors import OracleError
from nbdfork.files import read_bounded
from nbdfork.verdicts import Verdict

__all__ = ["MAX_EVENTS_BYTES", "VERDICTS", "EventLog", "NullSink", "read_events", "summarize"]

MAX_EVENTS_BYTES = 1 << 30
"""The largest events.jsonl read back: millions of verdicts, far more than any run gives."""

VERDICTS = tuple(str(v) for v in Verdict)
"""Every verdict kind; summarize() reports each, even at zero."""


class EventLog:
    """A thread-safe EventSink appending one JSON line per event to `path`.

    Given `fd` (a file the caller created safely, see nbdfork.files), it writes there; else it
    opens `path` itself, mode 0640, never through a symbolic link.
    """

    def __init__(self, path: str | Path, *, fd: int | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o640) if fd is None else fd
        except OSError as e:
            raise OracleError(f"{self.path}: cannot open the event log: {e.strerror}") from e
        self._file: TextIO | None = os.fdopen(fd, "a", buffering=1, encoding="utf-8")

    def emit(self, event: Mapping[str, object]) -> None:
        """Append `event` as one line, written through to the OS before returning."""
        line = json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n"
        with self._lock:
            if self._file is None:
                raise OracleError(f"{self.path}: event log is closed")
            self._file.write(line)

    def close(self) -> None:
        """Close the file; closing twice is harmless."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _parse_line(path: Path, number: int, line: str) -> dict[str, object]:
    """One event line, or an OracleError naming the file and line."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError as e:
        raise OracleError(f"{path}:{number}: bad JSON: {e.msg} (column {e.colno})") from e
    except RecursionError:
        raise OracleError(f"{path}:{number}: bad JSON: nested too deeply") from None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        raise OracleError(f"{path}:{number}: not an event (a JSON object with an 'event' key)")
    return event


def read_events(path: str | Path) -> list[dict[str, object]]:
    """Every event of an events.jsonl file, in order; blank lines are skipped. Only a regular
    file of at most MAX_EVENTS_BYTES is read (a FIFO is refused, never waited on)."""
    path = Path(path)
    data = read_bounded(path, MAX_EVENTS_BYTES, OracleError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise OracleError(f"{path}: cannot read the event log: {e}") from None
    return [
        _parse_line(path, number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def summarize(events: Iterable[Mapping[str, object]]) -> dict[str, object]:
    """Counts per verdict (every verdict present), the total, and per stream for paged events.

    Shape: {"events": N, "torn_write": n, ..., "per_stream": {"<stream>": {"torn_write": n}}}.
    """
    totals: Counter[str] = Counter(dict.fromkeys(VERDICTS, 0))
    per_stream: dict[str, Counter[str]] = {}
    for event in events:
        kind = str(event["event"])
        totals[kind] += 1
        if event.get("stream") is not None:
            per_stream.setdefault(str(event["stream"]), Counter())[kind] += 1
    streams = {s: dict(c) for s, c in sorted(per_stream.items(), key=lambda kv: _key(kv[0]))}
    return {"events": sum(totals.values()), **totals, "per_stream": streams}


def _key(stream: str) -> tuple[int, str]:
    """Sort streams numerically when they are numbers."""
    numeric = stream.isascii() and stream.isdigit() and len(stream) <= 20
    return (int(stream), "") if numeric else (1 << 64, stream)


class NullSink:
    """Drops events (no report directory): the counts still reach the summary and the log."""

    def emit(self, event: Mapping[str, object]) -> None:
        """Discard `event`."""

    def close(self) -> None:
        """Nothing to close."""
