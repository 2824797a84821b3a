"""A new experiment is one package: it appears in the CLI, `nbdfork report` and campaigns
without an edit to the harness, the CLI or the campaign."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The smallest experiment: options, a main that writes a typed report.json, its renderer.
HELLO = '''\
"""`nbdfork hello`: writes how many pages it was asked to count."""

from pathlib import Path

import msgspec

from nbdfork.harness.experiment import Experiment, ReportKind
from nbdfork.options import Option, parse_bounded_int, parse_path
from nbdfork.report.codec import Record, read_json, write_json


class HelloReport(Record, frozen=True, kw_only=True):
    schema: str = "hello/1"
    pages: int


def main(args):
    write_json(HelloReport(pages=args.pages), args.out)
    return 0


def render(out: Path) -> list[Path]:
    report = read_json(out / "report.json", HelloReport, "hello/1")
    (out / "report.md").write_text(f"# hello\\n\\n{report.pages} pages\\n")
    return [out / "report.md"]


EXPERIMENT = Experiment(
    name="hello", help="count pages", description="Count pages.",
    options=(Option("pages", "pages", parse=parse_bounded_int(1, 9), default=1),
             Option("out", "where", parse=parse_path, campaign=False, required=True)),
    main="hello_experiment:main",
    report=ReportKind("hello/1", "hello_experiment:HelloReport", "hello_experiment:render"),
)
'''


@pytest.fixture
def plugin_path(tmp_path: Path) -> dict[str, str]:
    """A distribution on sys.path declaring the `hello` experiment by entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello_experiment.py").write_text(HELLO)
    info = site / "hello_experiment-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hello-experiment\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[nbdfork.experiments]\nhello = hello_experiment:EXPERIMENT\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(site)])
    return env


def _nbdfork(env: dict[str, str], *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nbdfork.cli", *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_a_plugged_in_experiment_runs_reports_and_joins_campaigns(
    plugin_path: dict[str, str], tmp_path: Path
) -> None:
    """`nbdfork hello` parses its own options (one line for a bad one), writes its report,
    `nbdfork report` re-renders it, and a campaign checks and runs its cells."""
    bad = _nbdfork(plugin_path, "hello", "--pages", "10", "--out", "x", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "nbdfork hello: error: --pages: 10 must be in [1, 9]")
    out = tmp_path / "one"
    out.mkdir()
    assert _nbdfork(plugin_path, "hello", "--pages", "3", "--out", str(out),
                    cwd=tmp_path).returncode == 0  # fmt: skip
    assert json.loads((out / "report.json").read_text()) == {"schema": "hello/1", "pages": 3}
    rendered = _nbdfork(plugin_path, "report", str(out), cwd=tmp_path)
    assert rendered.returncode == 0 and (out / "report.md").read_text().endswith("3 pages\n")
    spec = tmp_path / "spec.toml"
    spec.write_text(textwrap.dedent("""\
        [[cells]]
        kind = "hello"
        [cells.axes]
        pages = [2, 12]
        """))
    refused = _nbdfork(plugin_path, "campaign", "run", str(spec), "--out", str(tmp_path / "c"),
                       cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "cells[0].axes.pages: 12 must be in [1, 9]" in refused.stderr
    spec.write_text(spec.read_text().replace("12", "4"))
    ran = _nbdfork(plugin_path, "campaign", "run", str(spec), "--out", str(tmp_path / "c"),
                   cwd=tmp_path)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    cells = sorted((tmp_path / "c" / "cells").iterdir())
    assert [json.loads((c / "report.json").read_text())["pages"] for c in cells] == [2, 4]
