"""`nbdfork report DIR`: re-render any nbdfork report (run, crash, model or campaign) from the
files it saved: report.md, report.html and the plots, from DIR/report.json and what it names."""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from nbdfork.errors import ReportError
from nbdfork.report.codec import report_file, schema_of

__all__ = ["KINDS", "Kind", "handler", "json_schema", "register", "render_any"]

_DESCRIPTION = """\
Re-render DIR/report.md, DIR/report.html and the PNG plots from DIR/report.json (and the
files it refers to), whichever command wrote it: `nbdfork run`, `crash`, `model` or
`campaign run`. The report's `schema` picks the renderer. Prints the files written."""


def _run(out: Path) -> list[Path]:
    from nbdfork.report.render import render_report  # noqa: PLC0415

    return render_report(out)


def _crash(out: Path) -> list[Path]:
    from nbdfork.campaign.render import render_crash_report  # noqa: PLC0415

    return render_crash_report(out)


def _model(out: Path) -> list[Path]:
    from nbdfork.pageforking.report import render_model_report  # noqa: PLC0415

    return render_model_report(out)


def _campaign(out: Path) -> list[Path]:
    from nbdfork.campaign.merge import load_report, render  # noqa: PLC0415

    return render(out, load_report(out))


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of report: the schema its report.json declares, the structure that defines
    it ("module:Type", imported only when asked for) and what renders it."""

    schema: str
    structure: str
    render: Callable[[Path], list[Path]]


KINDS: dict[str, Kind] = {
    "run": Kind("nbdfork.run/1", "nbdfork.report.schema:MatrixReport", _run),
    "crash": Kind("nbdfork.crash/1", "nbdfork.campaign.schema:CrashReport", _crash),
    "model": Kind("nbdfork.model-report/1", "nbdfork.pageforking.schema:ModelReport", _model),
    "campaign": Kind("nbdfork.campaign/1", "nbdfork.campaign.merge:CampaignReport", _campaign),
}


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one kind of report.json, generated from its structures."""
    module, name = KINDS[kind].structure.split(":")
    document: dict[str, Any] = msgspec.json.schema(getattr(importlib.import_module(module), name))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"nbdfork {kind} report ({KINDS[kind].schema})", **document}  # fmt: skip


def render_any(out: Path) -> list[Path]:
    """Render the report in `out` by the schema its report.json declares."""
    source = report_file(out)
    schema = schema_of(source)
    kind = next((k for k in KINDS.values() if k.schema == schema), None)
    if kind is None:
        known = ", ".join(repr(k.schema) for k in KINDS.values())
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
    parser.add_argument("--json-schema", choices=tuple(KINDS), metavar="KIND",
                        help="print the JSON Schema of one kind of report.json "
                        f"({', '.join(KINDS)}) instead of rendering")
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
