"""Render a report directory: report.json + runs/*/events.jsonl -> report.md, report.html, PNGs.

This module owns the report's content and layout: the header (where and how it ran), the
computed findings, the storage stacks' checkers (nbdfork.experiments.matrix.stacktable), a
table per filesystem, the mmap caveat, the plots and the per-run details.
Rendering depends only on the saved files, so `nbdfork report OUT` can redo it at any time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nbdfork.experiments.matrix.events import EVENTS_FILE, TearSamples, read_tears
from nbdfork.experiments.matrix.findings import findings, ordered, stack_label, workloads
from nbdfork.experiments.matrix.plots import (
    KERNELS,
    LATENCY_CDF,
    PLOT_FILES,
    STACK_CHECKERS,
    TEAR_OFFSETS,
    TORN_OVER_TIME,
    plot_kernels,
    plot_stack_checkers,
    plot_tear_offsets,
    plot_torn_over_time,
    plot_writer_latency_cdf,
)
from nbdfork.experiments.matrix.schema import (
    REPORT_FILE,
    JSONValue,
    MatrixReport,
    RunResult,
    load_report,
)
from nbdfork.experiments.matrix.stacktable import stack_section
from nbdfork.report.document import (
    Block,
    Bullets,
    Heading,
    Image,
    Paragraph,
    Table,
    code,
    write_document,
)

__all__ = ["build_document", "fmt_ms", "render_report"]

_NONE = "-"
_PLOT_TITLES = {
    LATENCY_CDF: "Writer latency CDF",
    TORN_OVER_TIME: "Torn writes over time",
    TEAR_OFFSETS: "Where in the page tears start",
    KERNELS: "Kernels side by side: torn pages per workload (each panel one question)",
    STACK_CHECKERS: "Damage each stack's own checkers found, per kernel",
}


def fmt_ms(value: float | None) -> str:
    """A latency in ms with about three significant digits, never in exponent form."""
    if value is None:
        return _NONE
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _fmt_s(value: float) -> str:
    return f"{value:.1f} s"


def _overhead(per_config: Sequence[float]) -> str:
    if not per_config:
        return "no configurations"
    mean = sum(per_config) / len(per_config)
    return (f"per-configuration overhead mean {_fmt_s(mean)}, max {_fmt_s(max(per_config))} "
            f"({len(per_config)} configurations)")


def _versions(versions: Mapping[str, str | None]) -> str:
    return ", ".join(f"{name} {version or 'unknown'}" for name, version in versions.items())


def _header(report: MatrixReport) -> list[Block]:
    return [
        Heading(f"nbdfork report: {report.kernel}", 1),
        Bullets((
            f"Kernel: {code(report.kernel)}, accel {report.accel}",
            f"Device: {_where(report.device_location)}"
            + (f" ({report.transport})" if report.transport else ""),
            "Guest sysctls: "
            + (", ".join(f"{code(k)}={v}" for k, v in report.sysctls.items()) or "none set"),
            _tear_window(report),
            f"Seed: {report.seed}",
            f"Started: {report.started}; total {_fmt_s(report.duration_s)}",
            f"Harness: boot {_fmt_s(report.harness.boot_s)}, "
            + _overhead(report.harness.per_config_overhead_s)
            + _panics(report.boot_panics),
            f"Versions: {_versions(report.versions)}",
            f"Schema: {code(report.schema)}",
        )),
    ]


def _panics(panics: Sequence[str]) -> str:
    """Boots retried after an early kernel panic (before the guest script ran)."""
    if not panics:
        return ""
    return f"; booted again after {len(panics)} early kernel panic(s): " + "; ".join(
        code(p[-120:]) for p in panics
    )


def _findings(report: MatrixReport) -> list[Block]:
    lines = findings(report.runs)
    return [Heading("What this shows"), Bullets(tuple(lines) or ("no runs",))]


_FS_HEADER = ("stable_writes", "workload", "outcome", "torn / stamped", "stale", "overlapping",
              "metadata torn / stale / overlap", "writer p50 ms", "p99 ms", "p99.9 ms", "max ms",
              "device p99 ms")


_LEFT: tuple[Literal["l", "r"]] = ("l",)
_FS_ALIGN: tuple[Literal["l", "r"], ...] = ("r", "l", "l", *("r",) * 9)


def metadata_cell(run: RunResult) -> str:
    """The run's filesystem metadata verdicts (torn / stale / overlapping of its blocks), or
    `-` when the device did not judge that format (an older report, formats= without it)."""
    meta = run.formats.get(run.fs)
    if meta is None:
        return "-"
    return f"{meta.torn} / {meta.stale} / {meta.overlapping} of {meta.blocks}"


def _fs_row(run: RunResult) -> tuple[str, ...]:
    lat = run.writer_latency_ms
    return (str(run.stable_writes), run.workload, run.outcome,
            f"{run.torn} / {run.stamped_pages}", str(run.stale), str(run.overlapping),
            metadata_cell(run),
            fmt_ms(lat.p50), fmt_ms(lat.p99), fmt_ms(lat.p999), fmt_ms(lat.max),
            fmt_ms(run.device_service_p99_ms))


def _by_workload(runs: Sequence[RunResult]) -> list[RunResult]:
    # Stack, then workload, so the stable_writes 0/1 pair of a workload sits on adjacent rows.
    order = {w: i for i, w in enumerate(workloads(runs))}
    stacks = ordered(stack_label(r) for r in runs)
    return sorted(runs, key=lambda r: (stacks.index(stack_label(r)), order[r.workload],
                                       r.stable_writes))  # fmt: skip


def _fs_tables(runs: Sequence[RunResult]) -> list[Block]:
    """One table per filesystem; with several kernels, a kernel column keeps them side by side
    (kernel-major, so each kernel's stable_writes pair sits together); a stack column when
    some run is on a stack."""
    blocks: list[Block] = []
    kernels = ordered(r.kernel for r in runs)
    stacked = any(r.stack != "plain" for r in runs)
    for fs in ordered(r.fs for r in runs):
        mine = [r for r in runs if r.fs == fs]
        keys: list[tuple[str, Callable[[RunResult], str]]] = []
        if len(kernels) > 1:
            keys.append(("kernel", lambda r: r.kernel))
        if stacked:
            keys.append(("stack", stack_label))
        rows = tuple(
            (*(cell(r) for _, cell in keys), *_fs_row(r))
            for k in kernels for r in _by_workload([x for x in mine if x.kernel == k])
        )  # fmt: skip
        align = _LEFT * len(keys) + _FS_ALIGN
        blocks += [Heading(fs), Table((*(name for name, _ in keys), *_FS_HEADER), rows, align)]
    return blocks


_FORMATS_HEADER = ("run", "format", "blocks", "ok", "torn blocks", "unchecked", "torn", "stale",
                   "overlapping")


def _formats_section(runs: Sequence[RunResult]) -> list[Block]:
    """Every format the device judged besides the stamp, per run, and fio's own read-back."""
    rows = tuple(
        (r.id, name, str(v.blocks), str(v.ok_blocks), str(v.torn_blocks), str(v.unchecked_blocks),
         str(v.torn), str(v.stale), str(v.overlapping))
        for r in runs for name, v in r.formats.items() if name != "stamp"
    )  # fmt: skip
    fio = [r for r in runs if r.fio is not None]
    if not rows and not fio:
        return []
    blocks: list[Block] = [
        Heading("Formats judged at the device"),
        Paragraph("Blocks of other writers that carry their own checksum, judged as each WRITE "
                  "arrived (docs/formats.md): filesystem metadata (expected: no verdict; one is "
                  "a kernel bug or an oracle error) and fio's verify blocks. `none`: overlaps "
                  "over no recognised block."),
        Table(_FORMATS_HEADER, rows, ("l", "l") + ("r",) * 7),
    ]
    if fio:
        fio_rows = tuple(
            (r.id, code(r.fio.job), "passed" if r.fio.passed else "FAILED",
             str(r.fio.read_back_ios), str(r.fio.write_ios),
             f"{r.formats['fio'].torn if 'fio' in r.formats else '-'}",
             f"{r.formats['fio'].blocks if 'fio' in r.formats else '-'}")
            for r in fio if r.fio is not None
        )  # fmt: skip
        blocks += [
            Heading("fio: its own verification beside the device's", 3),
            Table(("run", "job", "fio read-back", "blocks read back", "writes",
                   "device: torn fio blocks", "fio blocks seen"), fio_rows,
                  ("l", "l", "l") + ("r",) * 4),
        ]  # fmt: skip
    return blocks


def _mmap_section(runs: Sequence[RunResult]) -> list[Block]:
    mmap = [r for r in runs if r.workload == "mmap" and r.completed]
    if not mmap:
        return []
    counts = "; ".join(
        f"{fs}: " + ", ".join(f"{r.torn} with stable_writes={r.stable_writes}"
                              for r in _by_workload([r for r in mmap if r.fs == fs]))
        for fs in ordered(r.fs for r in mmap))
    return [
        Heading("mmap tears"),
        Paragraph(
            "mmap stores reach the device as they were at the instant writeback write-protected "
            "the page, so an update the application had half finished (several stores to one "
            "page) looks torn with stable_writes=0 and 1 alike (KERNEL.md). mmap tears are "
            "therefore not stable-page violations by themselves; compare them across settings. "
            f"Torn mmap writes: {counts}."),
    ]


def _plots(plots: Sequence[str]) -> list[Block]:
    if not plots:
        return []
    blocks: list[Block] = [Heading("Plots")]
    for name in plots:
        blocks += [Heading(_PLOT_TITLES[name], 3), Image(name, _PLOT_TITLES[name])]
    return blocks


def _setting(value: JSONValue) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _device(settings: Mapping[str, JSONValue]) -> str:
    return " ".join(code(f"{key}={_setting(value)}") for key, value in settings.items()) or _NONE


@dataclass(frozen=True, slots=True)
class _Column:
    header: str
    align: Literal["l", "r"]
    cell: Callable[[RunResult], str]


_RUN_COLUMNS = (
    _Column("id", "l", lambda r: r.id),
    _Column("kernel", "l", lambda r: r.kernel),
    _Column("mkfs options", "l", lambda r: code(r.mkfs_command) if r.mkfs_command else _NONE),
    _Column("seed", "r", lambda r: str(r.seed)),
    _Column("seconds", "r", lambda r: f"{r.seconds:g}"),
    _Column("writes", "r", lambda r: str(r.writes)),
    _Column("writer ops", "r", lambda r: str(r.writer_ops)),
    _Column("setup s", "r", lambda r: f"{r.durations.setup_s:.1f}"),
    _Column("workload s", "r", lambda r: f"{r.durations.workload_s:.1f}"),
    _Column("teardown s", "r", lambda r: f"{r.durations.teardown_s:.1f}"),
    _Column("device", "l", lambda r: _device(r.device)),
)


def _run_table(runs: Sequence[RunResult], omit: set[str]) -> Table:
    cols = [c for c in _RUN_COLUMNS if c.header not in omit]
    rows = tuple(tuple(c.cell(r) for c in cols) for r in runs)
    return Table(tuple(c.header for c in cols), rows, tuple(c.align for c in cols))


def _runs(report: MatrixReport) -> list[Block]:
    runs = report.runs
    if not runs:
        return []
    blocks: list[Block] = [Heading("Runs")]
    # A setting shared by every run is said once instead of repeated on every row.
    omit: set[str] = set()
    if all(r.kernel == report.kernel for r in runs):
        omit.add("kernel")
    if all(r.device == runs[0].device for r in runs):
        omit.add("device")
        blocks.append(Paragraph(f"Device settings (all runs): {_device(runs[0].device)}"))
    blocks.append(_run_table(runs, omit))
    errors = tuple(f"{r.id} ({r.outcome}): {r.error}" for r in runs if r.error)
    if errors:
        blocks += [Heading("Errors", 3), Bullets(errors)]
    return blocks


def build_document(report: MatrixReport, plots: Sequence[str]) -> list[Block]:
    """The whole report as blocks; `plots` are the PNG names that were drawn, in order."""
    return [
        *_header(report),
        *_findings(report),
        *stack_section(report.runs),
        *_fs_tables(report.runs),
        *_formats_section(report.runs),
        *_mmap_section(report.runs),
        *_plots(plots),
        *_runs(report),
    ]


def _read_tears(out_dir: Path, runs: Sequence[RunResult]) -> dict[str, TearSamples]:
    return {run.id: read_tears(out_dir / run.dir / EVENTS_FILE) for run in runs}


def _write_plots(out_dir: Path, report: MatrixReport) -> list[Path]:
    tears = _read_tears(out_dir, report.runs)
    drawn = [
        plot_writer_latency_cdf(report.runs, out_dir / LATENCY_CDF),
        plot_torn_over_time(report.runs, tears, out_dir / TORN_OVER_TIME),
        plot_tear_offsets(report.runs, tears, out_dir / TEAR_OFFSETS),
        plot_kernels(report.runs, out_dir / KERNELS),
        plot_stack_checkers(report.runs, out_dir / STACK_CHECKERS),
    ]
    written = [p for p in drawn if p is not None]
    # A plot left over from an earlier render would no longer match this report's data.
    for name in PLOT_FILES:
        if out_dir / name not in written:
            (out_dir / name).unlink(missing_ok=True)
    return written


def render_report(out_dir: Path) -> list[Path]:
    """Re-render OUT from its saved files; returns report.md, report.html, then the PNGs."""
    report = load_report(out_dir / REPORT_FILE)
    plots = _write_plots(out_dir, report)
    blocks = build_document(report, [p.name for p in plots])
    md, page = write_document(out_dir, blocks, f"nbdfork report: {report.kernel}")
    return [md, page, *plots]


def _where(location: str) -> str:
    """`on the host` or `in the guest`, as a reader says it."""
    return "in the guest" if location == "guest" else f"on the {location}"


def _tear_window(report: MatrixReport) -> str:
    """Which setting opened the tear window, and what it stands for (docs/tear-window.md)."""
    if report.device_location == "host":
        return ("Tear window: the writer's copy into a page under writeback racing nbd's copy "
                "of it into the socket, at emulated-CPU speed (wider than on hardware), plus any "
                "wait of the send path when the device stops reading (see "
                "docs/tear-window.md; the device's write service time is in the tables).")
    return ("Tear window: device in the guest, whose emulated oracle (10-25 ms per WRITE) and "
            "socket settings above set it; the device's own service time shows the emulator.")
