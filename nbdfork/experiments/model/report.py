"""The model's report: OUT/report.json (nbdfork.model-report/1: every run, the summary rows,
the ratios, the kernel rows when compared) and, rendered from it alone, OUT/report.md,
OUT/report.html and the plots.

Verdict columns come from the oracle inside nbdkit (each run's summary.json); the model only
measures the client side: throughput, stalls, copies and fork memory. `write_report` builds
the ModelReport and writes report.json; `render_model_report` (what `nbdfork report OUT` runs)
turns a ModelReport, or OUT/report.json, into the rest.
"""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from nbdfork import __version__
from nbdfork.experiments.model.plots import STALL_CDF, THROUGHPUT, plot_stall_cdf, plot_throughput
from nbdfork.experiments.model.run import RunResult
from nbdfork.experiments.model.schema import (
    REPORT_FILE,
    KernelRow,
    ModelReport,
    PolicyRatio,
    TableRow,
    load_model_report,
)
from nbdfork.experiments.model.summary import ratios, rows
from nbdfork.experiments.model.sweep import SweepPlan
from nbdfork.report.codec import write_json
from nbdfork.report.document import (
    Block,
    Bullets,
    Heading,
    Image,
    Paragraph,
    Table,
    to_markdown,
    write_document,
)

__all__ = [
    "build_blocks",
    "model_report",
    "render_markdown",
    "render_model_report",
    "write_report",
]

_TITLE = "nbdfork page-forking model"


def model_report(
    plan: SweepPlan, results: Sequence[RunResult], kernel: Sequence[KernelRow] | None = None,
) -> ModelReport:  # fmt: skip
    """The report of `plan`'s runs (and the real-kernel rows, when compared)."""
    table = tuple(rows(results))
    return ModelReport(
        version=__version__, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        python=platform.python_version(), seed=plan.seed, plan=plan.to_record(),
        runs=tuple(r.to_record() for r in results), table=table,
        fork_vs_stable=tuple(ratios(table, "fork", "stable")),
        fork_vs_fork_unordered=tuple(ratios(table, "fork", "fork-unordered")),
        kernel=tuple(kernel) if kernel is not None else None,
    )  # fmt: skip


def write_report(
    out: Path, plan: SweepPlan, results: Sequence[RunResult],
    kernel: Sequence[KernelRow] | None = None,
) -> list[Path]:  # fmt: skip
    """Write report.json, then the plots, report.md and report.html from it, into `out`;
    return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    report = model_report(plan, results, kernel)
    return [write_json(report, out / REPORT_FILE), *render_model_report(out, report)]


def render_model_report(out: Path, report: ModelReport | None = None) -> list[Path]:
    """(Re)write the plots, report.md and report.html of `report` into `out` (a directory;
    given its report.json, the directory holding it); without `report`, from OUT/report.json.
    Returns the files written; a missing or bad report.json raises ReportError."""
    if out.is_file():
        out = out.parent
    if report is None:
        report = load_model_report(out)
    plots = [plot_stall_cdf(report.runs, out / STALL_CDF),
             plot_throughput(report.table, out / THROUGHPUT)]  # fmt: skip
    written = [p for p in plots if p is not None]
    blocks = build_blocks(report, [p.name for p in written])
    md, page = write_document(out, blocks, _TITLE)
    return [*written, md, page]


def _fmt(value: float) -> str:
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


_R: Final = "r"


def _table(table: Sequence[TableRow]) -> Table:
    header = ("device latency", "reorder", "policy", "writer stores/s", "stall p50 ms",
              "p99 ms", "p99.9 ms", "max ms", "copies", "fork peak KiB", "device writes",
              "torn", "stale", "overlapping")  # fmt: skip
    rows = tuple(
        (f"{r.latency_ms:g} ms", r.reorder, r.policy, _fmt(r.throughput), _fmt(r.p50_ms),
         _fmt(r.p99_ms), _fmt(r.p999_ms), _fmt(r.max_ms), f"{r.copies:,.0f}",
         f"{r.fork_bytes_peak / 1024:,.0f}", f"{r.writes:,.0f}", str(r.torn), str(r.stale),
         str(r.overlapping))
        for r in table
    )  # fmt: skip
    return Table(header, rows, ("l", "l", "l") + (_R,) * 11)


def _writeback_table(table: Sequence[TableRow]) -> Table:
    header = ("device latency", "reorder", "policy", "device write round trip p50 ms",
              "p99 ms", "deferred writes", "deferral p50 ms", "p99 ms",
              "writes of one block in flight, max", "bytes copied", "fsyncs", "fsync p50 ms",
              "p99 ms")  # fmt: skip
    rows = tuple(
        (f"{r.latency_ms:g} ms", r.reorder, r.policy, _fmt(r.write_p50_ms),
         _fmt(r.write_p99_ms), f"{r.deferrals:,.0f}", _fmt(r.deferral_p50_ms),
         _fmt(r.deferral_p99_ms), str(r.in_flight_peak), f"{r.bytes_copied:,.0f}",
         f"{r.fsyncs:,.0f}", _fmt(r.fsync_p50_ms), _fmt(r.fsync_p99_ms))
        for r in table
    )  # fmt: skip
    return Table(header, rows, ("l", "l", "l") + (_R,) * 10)


def _ratio(value: float | None, spec: str) -> str:
    """A ratio; None (a zero denominator) is infinite."""
    return format(float("inf") if value is None else value, spec)


def _fork_lines(items: Sequence[PolicyRatio]) -> list[str]:
    return [
        f"{r.latency_ms:g} ms, {r.reorder}: fork makes {_ratio(r.throughput_ratio, '.2f')}x "
        f"the writer throughput of stable; stable's p99 stall is {_ratio(r.p99_ratio, '.0f')}x "
        f"fork's (p99.9: {_ratio(r.p999_ratio, '.0f')}x)."
        for r in items
    ]


def _ordering_lines(table: Sequence[TableRow]) -> list[str]:
    by_key = {(r.latency_ms, r.reorder, r.policy): r for r in table}
    lines = []
    for fork in (r for r in table if r.policy == "fork"):
        other = by_key.get((fork.latency_ms, fork.reorder, "fork-unordered"))
        if other is None:
            continue
        lines.append(
            f"{fork.latency_ms:g} ms, {fork.reorder}: writer throughput "
            f"{_fmt(fork.throughput)} vs {_fmt(other.throughput)} stores/s; "
            f"{fork.deferrals:,.0f} deferred writes waited p50 {_fmt(fork.deferral_p50_ms)} ms "
            f"(p99 {_fmt(fork.deferral_p99_ms)}); device writes {fork.writes:,.0f} vs "
            f"{other.writes:,.0f}; fork memory peak {fork.fork_bytes_peak // 1024} vs "
            f"{other.fork_bytes_peak // 1024} KiB; stale {fork.stale} vs {other.stale}."
        )
    return lines


def _kernel_blocks(kernel: Sequence[KernelRow], table: Sequence[TableRow]) -> list[Block]:
    rows: list[tuple[str, ...]] = []
    for k in kernel:
        rate = 100 * k.torn / k.stamped_pages if k.stamped_pages else 0.0
        p50 = "-" if k.p50_ms is None else _fmt(k.p50_ms)
        p99 = "-" if k.p99_ms is None else _fmt(k.p99_ms)
        rows.append((f"kernel {k.kernel or ''}".strip(),
                     f"{k.fs} {k.workload} stable_writes={k.stable_writes}", k.model_policy,
                     f"{k.stamped_pages:,}", str(k.torn), f"{rate:.2f}", p50, p99))  # fmt: skip
    for r in table:
        if r.policy in ("none", "stable"):
            rate = 100 * r.torn / (r.stamped_pages * r.runs) if r.stamped_pages else 0.0
            rows.append(("model", f"{r.latency_ms:g} ms {r.reorder}", r.policy,
                         f"{r.stamped_pages * r.runs:,.0f}", str(r.torn), f"{rate:.2f}",
                         _fmt(r.p50_ms), _fmt(r.p99_ms)))  # fmt: skip
    header = ("source", "setting", "policy", "stamped pages", "torn", "torn %", "stall p50 ms",
              "p99 ms")  # fmt: skip
    return [
        Heading("Model vs real kernel"),
        Paragraph("stable_writes=0 corresponds to the model's `none`, stable_writes=1 to "
                  "`stable`. Tear *rates* are not calibrated: the model's send copy yields "
                  "between sectors, a much wider window than the kernel's memcpy into a socket "
                  "buffer."),
        Table(header, tuple(rows), ("l", "l", "l", _R, _R, _R, _R, _R)),
    ]  # fmt: skip


def build_blocks(report: ModelReport, plots: Sequence[str]) -> list[Block]:
    """The report: settings, the results table, the ratios, the kernel comparison, the plots."""
    plan, table = report.plan, report.table
    w, t = plan.workload, plan.writeback
    blocks: list[Block] = [
        Heading("Page forking model: none / stable / fork / fork-unordered", 1),
        Paragraph(
            f"Seed {plan.seed}, {plan.seeds} seed(s) per setting, {plan.seconds:g} s per run; "
            f"{w.writers} writers x {w.pages_per_writer} hot pages, think {w.think_ms:g} ms, "
            f"fsync every {w.fsync_every or 'never'}; dirty expire {t.dirty_expire_ms:g} ms, "
            f"flusher every {t.writeback_interval_ms:g} ms, queue depth {t.queue_depth}; nbdkit "
            f"--threads {plan.nbdkit_threads}. Rates and stalls are medians over seeds (max: the "
            "largest); torn/stale/overlapping are totals over seeds, read from the device "
            "oracle's per-run summary."
        ),
        _table(table),
        Heading("Writeback side"),
        Paragraph(
            "A deferred write is a due page whose block still has a write in flight: it is "
            "sent when that write completes (fork's ordering; for none, the page redirtied "
            "under writeback). Round trip: from handing the write to the I/O thread to its "
            "completion, so it includes queueing in nbdkit, not only the configured latency."
        ),
        _writeback_table(table),
        Heading("Fork against stable"),
        Bullets(tuple(_fork_lines(report.fork_vs_stable)) or ("no pairs",)),
        Heading("The cost of ordering fork writes (fork vs fork-unordered)"),
        Paragraph(
            "Writers never wait for the ordering; a fork's write waits for its predecessor's "
            "instead (the deferral), which delays durability, not the writer."
        ),
        Bullets(tuple(_ordering_lines(table)) or ("no pairs",)),
    ]
    if report.kernel is not None:
        blocks += _kernel_blocks(report.kernel, table)
    return blocks + [Image(name, name) for name in plots]


def render_markdown(report: ModelReport, plots: Sequence[str]) -> str:
    """report.md (the same blocks also make report.html)."""
    return to_markdown(build_blocks(report, plots))
