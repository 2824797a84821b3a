"""The model's report: OUT/report.json (every run, the summary rows, the ratios, the kernel
rows when compared) and OUT/report.md with its plots.

Verdict columns come from the oracle inside nbdkit (each run's summary.json); the model only
measures the client side: throughput, stalls, copies and fork memory.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from nbdfork import __version__
from nbdfork.pageforking.compare import KernelRow
from nbdfork.pageforking.plots import STALL_CDF, THROUGHPUT, plot_stall_cdf, plot_throughput
from nbdfork.pageforking.run import RunResult
from nbdfork.pageforking.summary import Ratio, Row, ratios, rows
from nbdfork.pageforking.sweep import SweepPlan
from nbdfork.report.document import (
    Block,
    Bullets,
    Heading,
    Image,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)

__all__ = ["REPORT_SCHEMA", "write_report"]

REPORT_SCHEMA = "nbdfork.model-report/1"


def _json(
    plan: SweepPlan, results: Sequence[RunResult], table: Sequence[Row],
    kernel: Sequence[KernelRow] | None,
) -> dict[str, object]:  # fmt: skip
    return {
        "schema": REPORT_SCHEMA, "version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(), "seed": plan.seed, "plan": plan.describe(),
        "runs": [r.to_json() for r in results], "table": [r.to_json() for r in table],
        "fork_vs_stable": [r.to_json() for r in ratios(table, "fork", "stable")],
        "fork_vs_fork_unordered": [r.to_json() for r in ratios(table, "fork", "fork-unordered")],
        "kernel": [k.to_json() for k in kernel] if kernel is not None else None,
    }  # fmt: skip


def write_report(
    out: Path, plan: SweepPlan, results: Sequence[RunResult],
    kernel: Sequence[KernelRow] | None = None,
) -> list[Path]:  # fmt: skip
    """Write report.json, the plots and report.md into `out`; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    table = rows(results)
    path = out / "report.json"
    path.write_text(json.dumps(_json(plan, results, table, kernel), indent=1) + "\n")
    written = [path]
    plots = [plot_stall_cdf(results, out / STALL_CDF), plot_throughput(table, out / THROUGHPUT)]
    written += [p for p in plots if p is not None]
    blocks = build_blocks(plan, table, kernel, [p.name for p in plots if p])
    md, page = out / "report.md", out / "report.html"
    md.write_text(to_markdown(blocks))
    page.write_text(to_html(blocks, "nbdfork page-forking model"))
    return [*written, md, page]


def _fmt(value: float) -> str:
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


_R: Final = "r"


def _table(table: Sequence[Row]) -> Table:
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


def _writeback_table(table: Sequence[Row]) -> Table:
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


def _fork_lines(items: Sequence[Ratio]) -> list[str]:
    return [
        f"{r.latency_ms:g} ms, {r.reorder}: fork makes {r.throughput_ratio:.2f}x the writer "
        f"throughput of stable; stable's p99 stall is {r.p99_ratio:.0f}x fork's "
        f"(p99.9: {r.p999_ratio:.0f}x)."
        for r in items
    ]


def _ordering_lines(table: Sequence[Row]) -> list[str]:
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


def _kernel_blocks(kernel: Sequence[KernelRow], table: Sequence[Row]) -> list[Block]:
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


def build_blocks(
    plan: SweepPlan, table: Sequence[Row], kernel: Sequence[KernelRow] | None,
    plots: Sequence[str],
) -> list[Block]:  # fmt: skip
    """The report: settings, the results table, the ratios, the kernel comparison, the plots."""
    w, t = plan.workload, plan.tuning
    blocks: list[Block] = [
        Heading("Page forking model: none / stable / fork / fork-unordered", 1),
        Paragraph(
            f"Seed {plan.seed}, {plan.seeds} seed(s) per setting, {plan.seconds:g} s per run; "
            f"{w.writers} writers x {w.pages} hot pages, think {w.think * 1e3:g} ms, fsync "
            f"every {w.fsync_every or 'never'}; dirty expire {t.dirty_expire * 1e3:g} ms, "
            f"flusher every {t.interval * 1e3:g} ms, queue depth {t.queue_depth}; nbdkit "
            f"--threads {plan.threads}. Rates and stalls are medians over seeds (max: the "
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
        Bullets(tuple(_fork_lines(ratios(table, "fork", "stable"))) or ("no pairs",)),
        Heading("The cost of ordering fork writes (fork vs fork-unordered)"),
        Paragraph(
            "Writers never wait for the ordering; a fork's write waits for its predecessor's "
            "instead (the deferral), which delays durability, not the writer."
        ),
        Bullets(tuple(_ordering_lines(table)) or ("no pairs",)),
    ]
    if kernel is not None:
        blocks += _kernel_blocks(kernel, table)
    return blocks + [Image(name, name) for name in plots]


def render_markdown(
    plan: SweepPlan, table: Sequence[Row], kernel: Sequence[KernelRow] | None,
    plots: Sequence[str],
) -> str:  # fmt: skip
    """report.md (the same blocks also make report.html)."""
    return to_markdown(build_blocks(plan, table, kernel, plots))
