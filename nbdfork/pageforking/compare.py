"""A real-kernel report (`nbdfork run`'s DIR/report.json) read for comparison with the model.

Only the fields the comparison shows are read, leniently, so that a report from an older or
newer `nbdfork run` still lines up: fs, workload, stable_writes, torn, stamped_pages and
writer_latency_ms. Runs without stable_writes 0 or 1 are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from nbdfork.errors import ReportError

__all__ = ["KernelRow", "load_kernel_rows"]


@dataclass(frozen=True, slots=True)
class KernelRow:
    """One real-kernel configuration: fs x stable_writes x workload."""

    fs: str
    workload: str
    stable_writes: int
    torn: int
    stamped_pages: int
    p50_ms: float | None
    p99_ms: float | None
    kernel: str | None = None

    @property
    def model_policy(self) -> str:
        """The model policy this setting corresponds to."""
        return "stable" if self.stable_writes else "none"

    def to_json(self) -> dict[str, object]:
        """The row as JSON values."""
        return asdict(self)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _row(run: Mapping[str, object]) -> KernelRow | None:
    if run.get("stable_writes") not in (0, 1):
        return None
    latency = run.get("writer_latency_ms")
    latency = latency if isinstance(latency, Mapping) else {}
    kernel = run.get("kernel")
    return KernelRow(
        fs=str(run.get("fs", "?")), workload=str(run.get("workload", "?")),
        stable_writes=int(str(run["stable_writes"])), torn=int(str(run.get("torn", 0))),
        stamped_pages=int(str(run.get("stamped_pages", 0))),
        p50_ms=_number(latency.get("p50")), p99_ms=_number(latency.get("p99")),
        kernel=str(kernel) if kernel is not None else None,
    )  # fmt: skip


def load_kernel_rows(directory: Path) -> list[KernelRow]:
    """The stable_writes 0/1 runs of DIR/report.json (DIR may also be the file itself)."""
    path = directory / "report.json" if directory.is_dir() else directory
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        runs = data["runs"]
        rows = [_row(run) for run in runs if isinstance(run, Mapping)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"{path}: not a real-kernel report from `nbdfork run` ({exc})") from None
    found = [row for row in rows if row is not None]
    if not found:
        raise ReportError(f"{path}: no runs with stable_writes 0 or 1")
    return found
