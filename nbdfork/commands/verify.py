"""`nbdfork verify DIR|TRACE`: a report directory's verdicts, or a trace re-judged offline.

On a trace (the device's `trace=` file) the oracle runs again, with the same code, over the
recorded history; given a report directory too (`--against DIR`), its events.jsonl must be
what the live oracle wrote, line for line: a difference is printed and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from nbdfork.config import parse_formats
from nbdfork.errors import ConfigError, ReportError
from nbdfork.files import read_bounded
from nbdfork.oracle.events import EventLog, read_events, summarize
from nbdfork.oracle.rejudge import rejudge_trace
from nbdfork.verdicts import WRITE_VERDICTS

__all__ = ["register"]

_VERDICTS = tuple(map(str, WRITE_VERDICTS))
_MAX_SUMMARY = 16 << 20  # summary.json is a few KiB; a larger one is not ours
_EPILOG = """\
examples:
  nbdfork verify out/
  nbdfork verify out/ --fail-on-violation     exit 1 if any verdict was recorded
  nbdfork verify run.trace --against out/     re-judge a trace; must equal out/events.jsonl
  nbdfork verify run.trace --events new.jsonl write the re-judged events (a new file)
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `verify` subcommand."""
    parser = sub.add_parser(
        "verify",
        help="summarise the events recorded in a report directory",
        description="Read DIR/events.jsonl (and DIR/summary.json) and print the verdicts, "
        "or re-judge a recorded trace offline with the live oracle's code.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dir", type=Path, help="a report directory (report=DIR) or a trace file (trace=PATH)"
    )
    parser.add_argument("--fail-on-violation", action="store_true", help="exit 1 on any verdict")
    parser.add_argument(
        "--against", type=Path, metavar="DIR", help="with a trace: compare with DIR/events.jsonl"
    )
    parser.add_argument(
        "--events", type=Path, metavar="FILE", help="with a trace: write the events to FILE (new)"
    )
    parser.set_defaults(handler=_handle)


def _load_summary(directory: Path) -> dict[str, object] | None:
    path = directory / "summary.json"
    if not path.exists():
        return None
    data = read_bounded(path, _MAX_SUMMARY, ReportError)
    try:
        summary = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: unreadable summary ({exc})") from None
    except RecursionError:
        raise ReportError(f"{path}: unreadable summary (nested too deeply)") from None
    if not isinstance(summary, dict):
        raise ReportError(f"{path}: not a JSON object")
    return summary


def _is_trace(path: Path) -> bool:
    """A regular file is read as a trace, a directory as a report; anything else is refused
    here, before it is opened (a FIFO would block the reader)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ReportError(f"{path}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        return False
    if stat.S_ISREG(mode):
        return True
    raise ReportError(f"{path} is neither a report directory nor a trace file")


def _handle(args: argparse.Namespace) -> int:
    if _is_trace(args.dir):
        return _handle_trace(args)
    if args.against or args.events:
        raise ReportError(f"{args.dir}: --against and --events need a trace file, not a directory")
    directory: Path = args.dir
    events_path = directory / "events.jsonl"
    if not events_path.exists():
        raise ReportError(f"{events_path}: no events file (was report={directory} given?)")
    counts = summarize(read_events(events_path))
    summary = _load_summary(directory)
    print(f"{directory}:")
    if summary is not None:
        print(
            f"  writes {summary.get('writes')}, stamped pages {summary.get('stamped_pages')}, "
            f"flushes {summary.get('flushes')}, fua writes {summary.get('fua_writes')}, "
            f"seed {summary.get('seed')}"
        )
    for verdict in _VERDICTS:
        print(f"  {verdict:<18} {counts.get(verdict, 0)}")
    violations = sum(int(str(counts.get(v, 0))) for v in _VERDICTS)
    return 1 if args.fail_on_violation and violations else 0


class _Collect:
    """Keeps the re-judged events (and writes them on, if asked)."""

    def __init__(self, log: EventLog | None) -> None:
        self.events: list[dict[str, object]] = []
        self._log = log

    def emit(self, event: Mapping[str, object]) -> None:
        self.events.append(dict(event))
        if self._log is not None:
            self._log.emit(event)


def _open_new(path: Path) -> EventLog:
    if path.exists() or path.is_symlink():
        raise ReportError(f"{path}: already exists (choose a new file for --events)")
    return EventLog(path)


def _handle_trace(args: argparse.Namespace) -> int:
    trace: Path = args.dir
    log = _open_new(args.events) if args.events else None
    sink = _Collect(log)
    try:
        result = rejudge_trace(trace, sink, _recorded_formats(args.against))
    finally:
        if log is not None:
            log.close()
    counts = result.counts
    print(f"{trace}: re-judged {result.records} records, {result.writes} writes"
          + ("" if result.ticked else " (no oracle ticks: arrival order approximated)"))
    for verdict in _VERDICTS:
        print(f"  {verdict:<18} {counts.get(verdict, 0)}")
    status = 0
    if args.against is not None:
        status = _compare(sink.events, args.against / "events.jsonl")
    violations = sum(counts.get(v, 0) for v in _VERDICTS)
    return 1 if status or (args.fail_on_violation and violations) else 0


def _recorded_formats(report: Path | None) -> tuple[str, ...]:
    """The formats the live device judged (its summary.json's settings), else the stamp."""
    if report is None:
        return ("stamp",)
    try:
        summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
        formats = summary["settings"]["formats"]
    except (TypeError, OSError, ValueError, KeyError):
        return ("stamp",)
    try:
        return parse_formats("formats", ",".join(map(str, formats)))
    except ConfigError as exc:
        raise ReportError(f"{report / 'summary.json'}: settings.{exc}") from None


def _compare(events: list[dict[str, object]], path: Path) -> int:
    """Print whether the re-judged events equal the recorded ones; 1 if not."""
    if not path.exists():
        raise ReportError(f"{path}: no events file to compare with")
    recorded = list(read_events(path))
    if recorded == events:
        print(f"  identical to {path} ({len(events)} events)")
        return 0
    first = next((i for i, (a, b) in enumerate(zip(recorded, events, strict=False)) if a != b),
                 min(len(recorded), len(events)))  # fmt: skip
    print(f"  DIFFERS from {path}: {len(recorded)} recorded, {len(events)} re-judged, "
          f"first difference at event {first}")
    return 1
