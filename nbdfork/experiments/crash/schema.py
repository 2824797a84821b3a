"""The crash campaign's results: `OUT/report.json` (`nbdfork.crash/1`), defined once.

`nbdfork crash` builds a `CrashReport` from the states the guest checked (campaign/ and
control/states.json) and writes it through nbdfork.report.codec; the renderer, the campaign
merge and `nbdfork report` read it back through the same structures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import msgspec

from nbdfork.errors import ReportError
from nbdfork.report.codec import Record, read_bytes, read_json, write_json
from nbdfork.report.measures import Count

__all__ = [
    "SCHEMA",
    "ControlSummary",
    "StackExpectation",
    "StackState",
    "StackSummary",
    "CrashOutcome",
    "CrashDevice",
    "CrashReport",
    "CrashWorkload",
    "StateOutcome",
    "StateRow",
    "StatesSummary",
    "load_crash_report",
    "load_states",
    "summarize_stack",
    "summarize_states",
    "write_crash_report",
]

SCHEMA = "nbdfork.crash/1"
StateOutcome = Literal["passed", "ledger_violation", "fsck_failure", "torn"]
CrashOutcome = Literal["passed", "violations", "control_failed", "vm_lost"]


class StackState(Record, frozen=True, kw_only=True):
    """A crash state of a storage stack, recovered by the stack's own tools and judged against
    what its layers document (nbdfork.experiments.crash.expectations)."""

    verdict: Literal["clean", "exposure", "violation"]
    instant_s: float  # the crash instant, seconds after the first member device started
    findings: dict[str, Count]  # per finding: what the checker counted (0: looked, none)
    documented: tuple[str, ...] = ()  # findings the layers say a crash may leave
    violations: tuple[str, ...] = ()  # findings nothing documents
    checks: dict[str, Any] = msgspec.field(default_factory=dict)  # each checker's result


class StateRow(Record, frozen=True, kw_only=True):
    """One crash state: where power was cut, what the checks found, how to rebuild it."""

    point: Count  # trace record index after which power was cut
    checkpoint: int
    index: Count
    outcome: StateOutcome
    reproducer: dict[str, Any]
    lost_pages: tuple[dict[str, Any], ...] = ()
    torn_unexplained: tuple[int, ...] = ()
    torn_explained: Count = 0
    fs: dict[str, Any] = msgspec.field(default_factory=dict)  # mount, fsck, ledger checks
    stack: StackState | msgspec.UnsetType = msgspec.UNSET  # only with --stack (not plain)


class StatesSummary(Record, frozen=True, kw_only=True):
    """Counts per outcome and the totals a reader looks at first."""

    states_checked: Count
    outcomes: dict[str, Count]
    ledger_violations: Count
    fsck_failures: Count  # counted on their own: a state with lost writes may fail fsck too
    mount_failures: Count
    torn_unexplained: Count

    @property
    def failures(self) -> int:
        return self.ledger_violations + self.fsck_failures + self.torn_unexplained


class ControlSummary(StatesSummary, frozen=True, kw_only=True):
    """The same trace replayed on a device that ignores FLUSH/FUA."""

    ignore_flush: bool = True


class CrashDevice(Record, frozen=True, kw_only=True):
    size: str
    cache: str
    ignore_flush: bool


class CrashWorkload(Record, frozen=True, kw_only=True):
    kind: Literal["fsync", "atomic"]
    seconds: float
    files: Count
    pages: Count


class StackExpectation(Record, frozen=True, kw_only=True):
    """One row of the expectation table the states were judged by."""

    finding: str
    documented: bool
    why: str


class StackSummary(Record, frozen=True, kw_only=True):
    """A stack's campaign: its members, the verdicts, and per finding how many states had it
    (documented: how many of those the layers account for)."""

    name: str
    members: Count
    member_size: str
    verdicts: dict[str, Count]
    exposures: Count
    violations: Count
    findings: dict[str, Count]
    documented: dict[str, Count]
    expectations: tuple[StackExpectation, ...]
    control_verdicts: dict[str, Count] | None = None


class CrashReport(StatesSummary, frozen=True, kw_only=True):
    """One `nbdfork crash`: its settings, the states checked and the control's."""

    kernel: str
    accel: str
    fs: str
    seed: int
    started: str
    duration_s: float
    device: CrashDevice
    workload: CrashWorkload
    states: tuple[StateRow, ...]
    outcome: CrashOutcome
    control: ControlSummary | None = None
    device_location: str = "guest"
    points: str = "checkpoint"
    guest_error: str | None = None
    schema: str = SCHEMA
    stack: StackSummary | msgspec.UnsetType = msgspec.UNSET  # only with --stack (not plain)


def summarize_states(rows: Iterable[StateRow]) -> StatesSummary:
    """Counts per outcome and the totals of `rows`."""
    rows = list(rows)
    outcomes = Counter(r.outcome for r in rows)
    return StatesSummary(
        states_checked=len(rows),
        outcomes=dict(sorted(outcomes.items())),
        ledger_violations=outcomes["ledger_violation"],
        fsck_failures=sum(r.fs.get("fsck_ok") is False for r in rows),
        mount_failures=sum(r.fs.get("mount_ok") is False for r in rows),
        torn_unexplained=outcomes["torn"],
    )


def summarize_stack(
    rows: Iterable[StateRow], *, name: str, members: int, member_size: str,
    expectations: tuple[StackExpectation, ...], control: Iterable[StateRow] | None = None,
) -> StackSummary:  # fmt: skip
    """The verdicts and findings of a stack's states (rows without `stack` are not counted)."""
    states = [r.stack for r in rows if not isinstance(r.stack, msgspec.UnsetType)]
    verdicts = Counter(s.verdict for s in states)
    findings: Counter[str] = Counter()
    documented: Counter[str] = Counter()
    for state in states:
        findings.update(n for n, count in state.findings.items() if count)
        documented.update(state.documented)
    control_verdicts: dict[str, int] | None = None
    if control is not None:
        control_verdicts = dict(sorted(Counter(
            str(r.stack.verdict) for r in control if not isinstance(r.stack, msgspec.UnsetType)
        ).items()))  # fmt: skip
    return StackSummary(
        name=name, members=members, member_size=member_size,
        verdicts={v: verdicts[v] for v in ("clean", "exposure", "violation")},
        exposures=verdicts["exposure"], violations=verdicts["violation"],
        findings=dict(sorted(findings.items())), documented=dict(sorted(documented.items())),
        expectations=expectations, control_verdicts=control_verdicts,
    )  # fmt: skip


def load_states(path: Path) -> tuple[StateRow, ...] | None:
    """The crash states the guest wrote to `path` (a states.json); None when it wrote none,
    a ReportError naming the file when they cannot be read."""
    if not path.exists():
        return None
    data = read_bytes(path)  # bounded: never a FIFO, never endless or too deep
    try:
        return msgspec.json.decode(data, type=tuple[StateRow, ...])
    except msgspec.MsgspecError as exc:
        raise ReportError(f"{path}: the guest's states are not readable: {exc}") from None


def load_crash_report(path: Path) -> CrashReport:
    """Read and validate a crash report.json (or the directory holding one)."""
    return read_json(path, CrashReport, SCHEMA)


def write_crash_report(report: CrashReport, path: Path) -> Path:
    """Write `report` as report.json (into `path` when it is a directory); returns the file."""
    return write_json(report, path)
