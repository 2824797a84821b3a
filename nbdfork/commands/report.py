"""`nbdfork report OUT`: re-render a run's report.md, report.html and plots from its saved files."""

from __future__ import annotations

import argparse
from pathlib import Path

from nbdfork.report.render import render_report

__all__ = ["handler", "register"]

_DESCRIPTION = """\
Re-render OUT/report.md, OUT/report.html and the PNG plots from OUT/report.json and
OUT/runs/*/events.jsonl, as `nbdfork run` wrote them. Prints the files written."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `report` subcommand."""
    parser = subparsers.add_parser(
        "report",
        help="re-render a run's report (markdown, html, plots) from its saved files",
        description=_DESCRIPTION,
    )
    parser.add_argument("out", metavar="OUT", type=Path,
                        help="the output directory of `nbdfork run` (holds report.json)")
    parser.set_defaults(handler=handler)


def handler(args: argparse.Namespace) -> int:
    """Render, then print each written path; errors surface as ReportError for the CLI."""
    for path in render_report(args.out):
        print(path)
    return 0
