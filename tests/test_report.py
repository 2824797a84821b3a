"""Report schema, rendering and `nbdfork report`, against the golden run in tests/golden/report.

Regenerate the golden report.md after an intended change with NBDFORK_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from matplotlib.image import imread

from nbdfork.commands import report as report_command
from nbdfork.errors import ReportError
from nbdfork.experiments.matrix.events import read_tears, tear_offset
from nbdfork.experiments.matrix.findings import findings, p99_stall_ratio
from nbdfork.experiments.matrix.render import fmt_ms, render_report
from nbdfork.experiments.matrix.schema import (
    SCHEMA,
    FioCheck,
    FormatVerdicts,
    load_report,
    write_report,
)
from nbdfork.report.document import Bullets, Paragraph, Table, to_html, to_markdown

GOLDEN = Path(__file__).parent / "golden" / "report"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("writer_latency_cdf.png", "torn_over_time.png", "tear_offsets.png")


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A writable copy of the golden run directory."""
    target = tmp_path / "out"
    shutil.copytree(GOLDEN, target)
    return target


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The golden run rendered once (drawing takes seconds), with the paths it returned."""
    target = tmp_path_factory.mktemp("rendered") / "out"
    shutil.copytree(GOLDEN, target)
    return target, render_report(target)


def _golden_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / "report.json").read_text())
    return data


def _edit(out: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    data = _golden_json()
    change(data)
    path = out / "report.json"
    path.write_text(json.dumps(data))
    return path


def _run(data: dict[str, Any], run_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in data["runs"] if r["id"] == run_id)
    return found


# Rendering ------------------------------------------------------------------------------------


def test_markdown_matches_golden(rendered: tuple[Path, list[Path]]) -> None:
    """report.md rendered from the golden run equals tests/golden/report/report.md byte for byte."""
    markdown = (rendered[0] / "report.md").read_text()
    if os.environ.get("NBDFORK_UPDATE_GOLDEN") == "1":
        (GOLDEN / "report.md").write_text(markdown)
    assert markdown == (GOLDEN / "report.md").read_text()


def test_render_returns_written_files(rendered: tuple[Path, list[Path]]) -> None:
    """render_report returns report.md, report.html, then the plots, all of them in OUT."""
    out, paths = rendered
    assert [p.name for p in paths] == ["report.md", "report.html", *PLOTS]
    assert all(p.parent == out and p.is_file() for p in paths)


def test_plots_are_valid_pngs(rendered: tuple[Path, list[Path]]) -> None:
    """Each plot is a non-empty PNG that decodes to a picture of a readable size."""
    out = rendered[0]
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        height, width = imread(out / name).shape[:2]
        assert width >= 600 and height >= 300, name


def test_html_is_self_contained_with_relative_images(rendered: tuple[Path, list[Path]]) -> None:
    """report.html carries its CSS inline and links each plot by its bare file name."""
    out = rendered[0]
    page = (out / "report.html").read_text()
    assert "<style>" in page and "<link" not in page and "http" not in page
    for name in PLOTS:
        assert f'<img src="{name}"' in page
    assert str(out) not in page
    assert "<code>-q -f</code>" in page


def test_plots_without_data_are_not_drawn(out: Path) -> None:
    """Without torn events, no tear plots are written, stale ones are removed and not linked."""
    for name in PLOTS:
        (out / name).write_bytes(b"from an earlier render")
    for events in out.glob("runs/*/events.jsonl"):
        events.unlink()
    paths = render_report(out)
    assert [p.name for p in paths] == ["report.md", "report.html", "writer_latency_cdf.png"]
    assert not (out / "torn_over_time.png").exists()
    assert not (out / "tear_offsets.png").exists()
    markdown = (out / "report.md").read_text()
    assert "torn_over_time.png" not in markdown and "writer_latency_cdf.png" in markdown


def test_no_latency_plot_without_histograms(out: Path) -> None:
    """Runs whose latency histograms are empty give no latency CDF plot."""
    def empty(data: dict[str, Any]) -> None:
        for run in data["runs"]:
            run["writer_latency_hist"] = {"edges_ms": [], "counts": []}
    _edit(out, empty)
    assert "writer_latency_cdf.png" not in [p.name for p in render_report(out)]


def test_findings_follow_the_data(out: Path) -> None:
    """The "what this shows" line changes when the data does: xfs tearing with 1 is reported."""
    path = _edit(out, lambda d: _run(d, "xfs-sw1-pwrite").update(torn=3))
    line = findings(load_report(path).runs)[0]
    assert line.startswith("pwrite tears only with stable_writes=0 on ext4; "
                           "with stable_writes=0 and 1 on xfs;")


def test_findings_of_the_golden_run() -> None:
    """Golden run: pwrite tears only with 0, stall ratios per fs, other violations, lost run."""
    report = load_report(GOLDEN)
    assert findings(report.runs) == [
        "pwrite tears only with stable_writes=0 on ext4, xfs; "
        "writer p99 with stable_writes=1: x5.0 on ext4, x10.8 on xfs",
        "mmap tears with stable_writes=0 and 1 on ext4; writer p99 with stable_writes=1: "
        "x4.6 on ext4",
        "odirect tears with stable_writes=0 and 1 on xfs; writer p99 with stable_writes=1: "
        "x1.1 on xfs",
        "stale writes: ext4-sw0-pwrite 1",
        "overlapping writes: xfs-sw0-odirect 1",
        "filesystem metadata: no torn, stale or overlapping block (1302 ext4, 1574 xfs blocks "
        "judged)",
        "not measured: xfs-sw1-mmap (vm_lost)",
    ]


def test_findings_name_a_metadata_verdict_and_fio_beside_the_device() -> None:
    """A torn ext4 block in one run is named with its counts; a fio run says fio's read-back
    result beside the torn fio blocks the device saw."""
    report = load_report(GOLDEN)
    run = report.runs[0]
    meta = msgspec.structs.replace(run.formats["ext4"], torn=2, torn_blocks=2)
    fio = FioCheck(job="j.fio", write_exit=0, write_errors=(0,), write_ios=10, verify_exit=0,
                   verify_errors=(0,), read_back_ios=10, passed=True)  # fmt: skip
    torn = msgspec.structs.replace(
        run, formats={**run.formats, "ext4": meta, "fio": FormatVerdicts(torn=3, blocks=9)},
        fio=fio)  # fmt: skip
    lines = findings([torn])
    assert lines[-2:] == [
        "filesystem metadata verdicts (torn/stale/overlapping): ext4-sw0-pwrite 2/0/0 "
        "(300 ext4 blocks judged): a kernel bug or an oracle error, see events.jsonl",
        "ext4-sw0-pwrite: fio read-back passed, device saw 3 torn fio blocks",
    ]


def test_findings_claim_no_only_when_one_setting_ran() -> None:
    """With only stable_writes=0 measured, tears are reported without claiming "only"."""
    report = load_report(GOLDEN)
    runs = [r for r in report.runs if r.stable_writes == 0 and r.workload == "pwrite"]
    assert findings(runs) == ["pwrite tears with stable_writes=0 on ext4, xfs",
                              "stale writes: ext4-sw0-pwrite 1",
                              "filesystem metadata: no torn, stale or overlapping block "
                              "(300 ext4, 368 xfs blocks judged)"]


def test_p99_stall_ratio_needs_both_settings() -> None:
    """The stall ratio is p99(1)/p99(0) on one fs, and None when a setting is missing."""
    runs = [r for r in load_report(GOLDEN).runs if r.workload == "pwrite"]
    assert p99_stall_ratio(runs, "ext4") == pytest.approx(5.5 / 1.1)
    assert p99_stall_ratio([r for r in runs if r.stable_writes == 0], "ext4") is None


def test_fmt_ms_never_uses_exponents() -> None:
    """Latencies print with about three significant digits and a dash when unknown."""
    assert [fmt_ms(v) for v in (0.0213, 1.1, 14.24, 1234.5, None)] == [
        "0.021", "1.10", "14.2", "1234", "-"]


# Document markup ------------------------------------------------------------------------------


def test_markdown_table_escapes_pipes() -> None:
    """A pipe inside a cell cannot split a markdown table row."""
    table = Table(("a", "b"), (("x|y", "1"),), ("l", "r"))
    assert to_markdown([table]) == "| a | b |\n|---|--:|\n| x\\|y | 1 |\n"


def test_html_escapes_text_and_renders_code_spans() -> None:
    """HTML escapes data and turns backtick spans into <code>."""
    page = to_html([Paragraph("a <b> `x&y`"), Bullets(("`k=v`",))], "t")
    assert "<p>a &lt;b&gt; <code>x&amp;y</code></p>" in page
    assert "<li><code>k=v</code></li>" in page


# Schema ---------------------------------------------------------------------------------------


def test_round_trip_keeps_every_field_of_the_golden_report(tmp_path: Path) -> None:
    """What the golden report.json says survives a load and a write: every field it holds is
    written back with the same value (fields it predates are added with their defaults)."""
    data = _golden_json()
    written = json.loads(write_report(load_report(GOLDEN), tmp_path).read_text())
    assert written["device_location"] == "guest" and written["kernels"] == []
    assert _kept(data, written)


def _kept(old: object, new: object) -> bool:
    """Every field of `old` is in `new` with an equal value (recursively)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(k in new and _kept(v, new[k]) for k, v in old.items())
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(map(_kept, old, new))
    return old == new


def test_write_report_then_load(tmp_path: Path) -> None:
    """write_report into a directory writes report.json that load_report reads back equal."""
    report = load_report(GOLDEN / "report.json")
    path = write_report(report, tmp_path)
    assert path == tmp_path / "report.json"
    assert load_report(tmp_path) == report


def test_typed_fields() -> None:
    """Loaded runs carry typed values: literals, tuples for argv mkfs options, None latencies."""
    runs = {r.id: r for r in load_report(GOLDEN).runs}
    assert runs["ext4-sw0-pwrite"].mkfs_options[:2] == ("-q", "-F")
    assert runs["xfs-sw0-pwrite"].mkfs_options == "-q -f"
    assert runs["xfs-sw1-mmap"].writer_latency_ms.p99 is None
    assert not runs["xfs-sw1-mmap"].completed
    assert runs["ext4-sw1-pwrite"].writer_latency_hist.total == 23500


def test_missing_run_field_is_named(out: Path) -> None:
    """A missing nested field raises ReportError naming the file and the field's path."""
    path = _edit(out, lambda d: d["runs"][1]["writer_latency_ms"].pop("p99"))
    with pytest.raises(ReportError, match=r"report\.json: runs\[1\]\.writer_latency_ms\.p99: "
                                          r"missing required field") as caught:
        load_report(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_missing_top_level_field_is_named(out: Path) -> None:
    """A missing top-level field raises ReportError naming it."""
    path = _edit(out, lambda d: d.pop("kernel"))
    with pytest.raises(ReportError, match=r": kernel: missing required field"):
        load_report(path)


@pytest.mark.parametrize("schema", ["nbdfork.run/2", "something/1"])
def test_wrong_schema_is_rejected(out: Path, schema: str) -> None:
    """A report of another schema version is refused, naming both versions."""
    path = _edit(out, lambda d: d.update(schema=schema))
    with pytest.raises(ReportError, match=rf"unknown schema '{schema}'.*'{SCHEMA}'"):
        load_report(path)


def test_missing_schema_is_rejected(out: Path) -> None:
    """A report without a schema field is refused."""
    path = _edit(out, lambda d: d.pop("schema"))
    with pytest.raises(ReportError, match=r": schema: missing required field"):
        load_report(path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("stable_writes", 2,
         r"runs\[0\]\.stable_writes: invalid enum value 2 \(expected one of 0, 1\)$"),
        ("stable_writes", True, r"runs\[0\]\.stable_writes: expected `int`, got `bool`$"),
        ("outcome", "ok", r"runs\[0\]\.outcome: invalid enum value 'ok' \(expected one of "
                          r"'harness_error', 'passed', 'skipped', 'violations', 'vm_lost'\)$"),
        ("torn", True, r"runs\[0\]\.torn: expected `int`, got `bool`$"),
        ("torn", -1, r"runs\[0\]\.torn: expected `int` >= 0$"),
        ("seconds", "10", r"runs\[0\]\.seconds: expected `float`, got `str`$"),
        ("device", [], r"runs\[0\]\.device: expected `object`, got `array`$"),
        ("mkfs_options", 3, r"runs\[0\]\.mkfs_options: expected `str \| array`, got `int`$"),
    ],
)
def test_bad_values_are_named(out: Path, field: str, value: object, message: str) -> None:
    """A field of the wrong type or outside its values raises ReportError naming it."""
    path = _edit(out, lambda d: d["runs"][0].update({field: value}))
    with pytest.raises(ReportError, match=message):
        load_report(path)


def test_histogram_shape_is_checked(out: Path) -> None:
    """A histogram needs one more edge than counts."""
    path = _edit(out, lambda d: d["runs"][0]["writer_latency_hist"]["counts"].append(1))
    with pytest.raises(ReportError, match=r"runs\[0\]\.writer_latency_hist\.edges_ms: expected"):
        load_report(path)


def test_duplicate_run_ids_are_rejected(out: Path) -> None:
    """Two runs with one id would share an events directory: refused."""
    path = _edit(out, lambda d: d["runs"][1].update(id=d["runs"][0]["id"]))
    with pytest.raises(ReportError, match=r"runs\[1\]\.id: duplicate run id"):
        load_report(path)


def test_unreadable_reports_name_the_file(tmp_path: Path) -> None:
    """A missing report.json or one that is not JSON raises ReportError naming the file."""
    with pytest.raises(ReportError, match=r"report\.json: cannot read"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("{\n  nope")
    with pytest.raises(ReportError, match=r"report\.json: not JSON: line 2"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("[]")
    with pytest.raises(ReportError, match=r"report\.json: top level: expected `object`, got"):
        load_report(tmp_path)


# Events ---------------------------------------------------------------------------------------


def test_read_tears_keeps_only_torn_writes_sorted(tmp_path: Path) -> None:
    """Only torn_write lines count; times come back sorted with their offsets."""
    path = tmp_path / "events.jsonl"
    lines = [
        {"event": "torn_write", "time": 2.5, "first_mismatch": 1024, "sector_map": []},
        {"event": "stale_write", "time": 1.0, "note": "mentions torn_write in a field"},
        {"event": "torn_write", "time": 0.5, "first_mismatch": 64, "sector_map": []},
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    tears = read_tears(path)
    assert tears.times_s.tolist() == [0.5, 2.5]
    assert tears.offsets.tolist() == [64, 1024]


def test_tear_offset_falls_back_to_sector_map() -> None:
    """Without first_mismatch the tear starts at the first sector whose generation differs."""
    assert tear_offset({"first_mismatch": None, "sector_map": [7, 7, 7, 6, 6, 6, 6, 6]}) == 1536
    assert tear_offset({"first_mismatch": 100, "sector_map": [7, 6]}) == 100
    assert tear_offset({"first_mismatch": None, "sector_map": [7] * 8}) == -1


def test_malformed_event_line_is_named(tmp_path: Path) -> None:
    """A broken torn_write line raises ReportError naming the file and line number."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "torn_write", "time": 1}\n{"event": "torn_write", "time": \n')
    with pytest.raises(ReportError, match=r"events\.jsonl:2: not a JSON object"):
        read_tears(path)
    path.write_text('{"event": "torn_write", "time": "soon"}\n')
    with pytest.raises(ReportError, match=r"events\.jsonl:1: torn_write\.time: expected a number"):
        read_tears(path)


def test_missing_events_file_means_no_tears(tmp_path: Path) -> None:
    """A run without events.jsonl (e.g. the VM was lost) has no tears to plot."""
    assert len(read_tears(tmp_path / "events.jsonl")) == 0


# CLI ------------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nbdfork")
    report_command.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_report_command_prints_written_paths(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`nbdfork report OUT` re-renders, prints each written path and exits 0."""
    args = _parse(["report", str(out)])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [str(out / n) for n in ("report.md", "report.html", *PLOTS)]


def test_report_command_on_a_bad_directory_raises_report_error(tmp_path: Path) -> None:
    """`nbdfork report` on a directory without report.json raises ReportError for the CLI."""
    args = _parse(["report", str(tmp_path)])
    with pytest.raises(ReportError, match=r"report\.json: cannot read"):
        args.handler(args)


def test_report_command_refuses_a_report_it_does_not_know(tmp_path: Path) -> None:
    """A report.json of another schema is one error naming it and the schemas rendered."""
    (tmp_path / "report.json").write_text(json.dumps({"schema": "nbdfork.other/9"}))
    args = _parse(["report", str(tmp_path)])
    with pytest.raises(ReportError, match=r"unknown schema 'nbdfork.other/9'.*'nbdfork.run/1'"):
        args.handler(args)


def test_kernels_plot_only_with_several_kernels(tmp_path: Path) -> None:
    """plot_kernels draws one panel per workload when runs come from two kernels; with one
    kernel there is nothing to set side by side."""
    import msgspec  # noqa: PLC0415

    from nbdfork.experiments.matrix.plots import plot_kernels  # noqa: PLC0415

    report = load_report(GOLDEN / "report.json")
    assert plot_kernels(report.runs, tmp_path / "one.png") is None
    other = [msgspec.structs.replace(r, kernel="7.2.13+deb14-amd64") for r in report.runs]
    path = plot_kernels([*report.runs, *other], tmp_path / "two.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind", ["run", "crash", "model", "campaign"])
def test_published_json_schemas_are_those_of_the_code(kind: str) -> None:
    """docs/schemas/KIND.schema.json is what `nbdfork report --json-schema KIND` prints now
    (regenerate with that command after changing a report's structures)."""
    published = Path(__file__).parent.parent / "docs" / "schemas" / f"{kind}.schema.json"
    generated = json.loads(json.dumps(report_command.json_schema(kind)))
    assert json.loads(published.read_text()) == generated
    assert generated["title"].startswith(f"nbdfork {kind} report")


def test_the_run_schema_names_every_field_the_golden_report_holds() -> None:
    """Every field of the golden report.json (top level and a run) is in the JSON Schema."""
    schema = report_command.json_schema("run")["$defs"]
    data = _golden_json()
    assert set(data) <= set(schema["MatrixReport"]["properties"])
    assert set(data["runs"][0]) <= set(schema["RunResult"]["properties"])
