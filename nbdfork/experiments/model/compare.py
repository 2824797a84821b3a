"""A real-kernel report (`nbdfork run`'s DIR/report.json) read for comparison with the model.

The report is read and validated through its own types (experiments.matrix.schema.load_report);
each configuration that ran to the end becomes a KernelRow: fs, workload, stable_writes
(0 sits beside the model's `none`, 1 beside `stable`), torn, stamped_pages and the writer's
p50/p99 latency. Runs that did not complete (harness error, VM lost, skipped) measured nothing
and are left out.
"""

from __future__ import annotations

from pathlib import Path

from nbdfork.errors import ReportError
from nbdfork.experiments.matrix.schema import RunResult, load_report
from nbdfork.experiments.model.schema import KernelRow
from nbdfork.report.codec import report_file

__all__ = ["KernelRow", "kernel_row", "load_kernel_rows"]


def kernel_row(run: RunResult) -> KernelRow:
    """One configuration of a real-kernel report as the model report shows it."""
    latency = run.writer_latency_ms
    return KernelRow(
        fs=run.fs, workload=run.workload, stable_writes=run.stable_writes, torn=run.torn,
        stamped_pages=run.stamped_pages, p50_ms=latency.p50, p99_ms=latency.p99,
        kernel=run.kernel,
    )  # fmt: skip


def load_kernel_rows(directory: Path) -> list[KernelRow]:
    """The completed runs of DIR/report.json (DIR may also be the file itself)."""
    report = load_report(directory)
    found = [kernel_row(run) for run in report.runs if run.completed]
    if not found:
        raise ReportError(f"{report_file(directory)}: no run of `nbdfork run` completed")
    return found
