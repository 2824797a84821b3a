"""`nbdfork verify DIR`: re-read a report directory's events and summary, print what they say."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nbdfork.errors import ReportError
from nbdfork.oracle.events import read_events, summarize

__all__ = ["register"]

_VERDICTS = ("torn_write", "stale_write", "overlapping_write")
_EPILOG = """\
examples:
  nbdfork verify out/
  nbdfork verify out/ --fail-on-violation     exit 1 if any verdict was recorded
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `verify` subcommand."""
    parser = sub.add_parser(
        "verify",
        help="summarise the events recorded in a report directory",
        description="Read DIR/events.jsonl (and DIR/summary.json) and print the verdicts.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", type=Path, help="a report directory (report=DIR of the plugin)")
    parser.add_argument("--fail-on-violation", action="store_true", help="exit 1 on any verdict")
    parser.set_defaults(handler=_handle)


def _load_summary(directory: Path) -> dict[str, object] | None:
    path = directory / "summary.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: unreadable summary ({exc})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: not a JSON object")
    return data


def _handle(args: argparse.Namespace) -> int:
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
