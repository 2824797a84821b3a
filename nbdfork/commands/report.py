"""`nbdfork report DIR`: re-render any nbdfork report (run, crash, model or campaign) from the
files it saved: report.md, report.html and the plots, from DIR/report.json and what it names."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgspec

from nbdfork.errors import ReportError
from nbdfork.experiments import registry
from nbdfork.harness.experiment import ReportKind, resolve
from nbdfork.report.codec import report_file, schema_of

__all__ = ["handler", "json_schema", "kinds", "register", "render_any"]

_DESCRIPTION = """\
Re-render DIR/report.md, DIR/report.html and the PNG plots from DIR/report.json (and the
files it refers to), whichever command wrote it: `nbdfork run`, `crash`, `model` or
`campaign run`. The report's `schema` picks the renderer. Prints the files written."""


def _campaign(out: Path) -> list[Path]:
    from nbdfork.campaign.merge import load_report, render  # noqa: PLC0415

    return render(out, load_report(out))


def kinds() -> dict[str, ReportKind]:
    """Every kind of report: each experiment's, then the campaign's."""
    found = {name: e.report for name, e in registry().items()}
    found["campaign"] = ReportKind("nbdfork.campaign/1", "nbdfork.campaign.merge:CampaignReport",
                                   "nbdfork.commands.report:_campaign")
    return found


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one kind of report.json, generated from its structures."""
    found = kinds()[kind]
    document: dict[str, Any] = msgspec.json.schema(resolve(found.structure))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"nbdfork {kind} report ({found.schema})", **document}  # fmt: skip


def render_any(out: Path) -> list[Path]:
    """Render the report in `out` by the schema its report.json declares."""
    source = report_file(out)
    schema = schema_of(source)
    known_kinds = kinds().values()
    kind = next((k for k in known_kinds if k.schema == schema), None)
    if kind is None:
        known = ", ".join(repr(k.schema) for k in known_kinds)
        raise ReportError(f"{source}: schema: unknown schema {schema!r}; this nbdfork renders "
                          f"{known}")  # fmt: skip
    return kind.render(source.parent)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `report` subcommand."""
    parser = subparsers.add_parser(
        "report",
        help="re-render any report (run, crash, model, campaign) from its saved files",
        description=_DESCRIPTION,
    )
    parser.add_argument("out", metavar="DIR", type=Path, nargs="?",
                        help="a report directory (holds report.json), or the report.json itself")
    names = tuple(kinds())
    parser.add_argument("--json-schema", choices=names, metavar="KIND",
                        help="print the JSON Schema of one kind of report.json "
                        f"({', '.join(names)}) instead of rendering")
    parser.set_defaults(handler=handler)


def handler(args: argparse.Namespace) -> int:
    """Render, then print each written path; errors surface as ReportError for the CLI."""
    if args.json_schema:
        if args.out is not None:
            raise ReportError("--json-schema prints a schema: give no DIR with it")
        print(json.dumps(json_schema(args.json_schema), indent=2))
        return 0
    if args.out is None:
        raise ReportError("give the report directory (DIR) to re-render, or --json-schema KIND")
    for path in render_any(args.out):
        print(path)
    return 0
