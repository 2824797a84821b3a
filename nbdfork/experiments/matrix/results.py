"""report.json: the runs of one `nbdfork run`, assembled from the files the guest left in OUT
into the typed report of nbdfork.experiments.matrix.schema (which also writes and reads it).

Per run the guest writes runs/<id>/result.json (steps, timings, its error), workload.json
(latency and ledger), and the device's summary.json and events.jsonl for that run's connection.
A run whose files are missing was cut short: vm_lost if the VM died, harness_error otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec

from nbdfork import __version__
from nbdfork.device.summary import ConnectionReport, read
from nbdfork.errors import ReportError
from nbdfork.experiments.matrix.plan import Plan, RunSpec
from nbdfork.experiments.matrix.record import RunRecord, read_record
from nbdfork.experiments.matrix.schema import (
    DeviceVerdicts,
    Durations,
    FioCheck,
    FormatVerdicts,
    GuestCpu,
    HarnessTimings,
    Histogram,
    LatencySummary,
    MatrixReport,
    RunResult,
    ServiceTime,
    Workload,
)
from nbdfork.harness.guestdevice import collect_run
from nbdfork.harness.protocol import Outcome
from nbdfork.harness.steps import StepError
from nbdfork.verdicts import COLUMNS

__all__ = ["build_report", "outcome_of", "run_record", "run_records", "tool_versions"]

T = TypeVar("T")
_VERDICT_KEYS = {column: str(verdict) for column, verdict in COLUMNS.items()}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def outcome_of(
    result: RunRecord | None,
    verdicts: Mapping[str, int],
    missing: tuple[Outcome, str] | None = None,
    *,
    has_summary: bool = True,
) -> tuple[Outcome, str | None]:
    """The run's outcome and error from its result.json and verdict counts; `missing` says
    what became of a run that left no result (the VM was lost, the guest failed before it)."""
    if result is None:
        return missing or (Outcome.HARNESS_ERROR, "the guest left no result for this run")
    if result.status == "skipped":
        return Outcome.SKIPPED, result.error or "skipped"
    if result.status != "ok":
        return Outcome.HARNESS_ERROR, result.error or "failed"
    if not has_summary:
        return Outcome.HARNESS_ERROR, "the device left no report for this run's connection"
    if any(verdicts.values()):
        return Outcome.VIOLATIONS, None
    return Outcome.PASSED, None


def _typed(kind: type[T], data: object, what: str) -> T | None:
    """`data` (a file the guest or the device wrote) as `kind`; None when it is absent."""
    if data is None:
        return None
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise ReportError(f"{what}: {exc}") from None


def run_record(
    spec: RunSpec,
    out: Path,
    *,
    kernel: str,
    device: Mapping[str, Any],
    missing: tuple[Outcome, str] | None = None,
    collect_error: str | None = None,
    overrides: Mapping[str, Mapping[str, str]] | None = None,
) -> RunResult:
    """One entry of report.json's `runs`, from the run's directory; `overrides` are the
    plugin parameters of single devices (`--device-param`), kept for the run's own devices."""
    run_dir = out / "runs" / spec.id
    result = read_record(run_dir / "result.json")
    found = _summary(run_dir)
    workload = _read_json(run_dir / "workload.json") or {}
    devices = _device_verdicts(run_dir, spec.devices)
    verdicts = {k: sum(getattr(d, k) for d in devices) for k in _VERDICT_KEYS}
    formats = _format_verdicts(run_dir, spec.devices)
    every = {**verdicts, **{f"{n}.{k}": getattr(v, k) for n, v in formats.items()
                            for k in _VERDICT_KEYS}}  # fmt: skip
    outcome, error = outcome_of(result, every, missing, has_summary=found is not None)
    if collect_error is not None and result is not None and result.status == "ok":
        outcome, error = Outcome.HARNESS_ERROR, collect_error
    record = result or RunRecord()
    latency = _typed(LatencySummary, workload.get("writer_latency_ms"), f"{run_dir}/workload.json")
    hist = _typed(Histogram, workload.get("writer_latency_hist"), f"{run_dir}/workload.json")
    return RunResult(
        id=spec.id,
        kernel=record.kernel or kernel,
        fs=spec.fs,
        mkfs_options=tuple(spec.mkfs[1:]),
        mkfs=record.mkfs,
        mount_options=tuple(spec.mount_options),
        stable_writes=1 if spec.stable_writes else 0,
        stable_writes_read=record.stable_writes_read,
        workload=cast(Workload, spec.workload),
        workload_options=workload.get("config") or dict(spec.workload_options),
        seconds=spec.seconds,
        writes=sum(d.writes for d in devices),
        stamped_pages=sum(d.stamped_pages for d in devices),
        **verdicts,
        writer_latency_ms=latency or LatencySummary.empty(),
        device_write_service_ms=_typed(ServiceTime, found.write_service_ms if found else None,
                                       f"{run_dir}/summary.json"),
        device_write_sizes=found.write_sizes if found else None,
        writer_latency_hist=hist or Histogram(),
        writer_ops=int(workload.get("writer_ops", 0)),
        outcome=outcome,
        error=error,
        seed=spec.seed,
        device=dict(device),
        device_overrides={k: dict(v) for k, v in (overrides or {}).items()
                          if int(k) < spec.devices},
        guest_cpu=_typed(GuestCpu, record.cpu, f"{run_dir}/result.json"),
        durations=Durations(setup_s=record.durations.setup_s,
                            workload_s=record.durations.workload_s,
                            teardown_s=record.durations.teardown_s),
        dir=f"runs/{spec.id}",
        stack=spec.stack,
        layers=tuple(record.layers),
        checks=record.checks,
        devices=devices if spec.devices > 1 else (),
        formats=formats,
        fio=_fio_check(run_dir) if spec.workload == "fio" else None,
    )  # fmt: skip


def _format_verdicts(run_dir: Path, count: int) -> dict[str, FormatVerdicts]:
    """Per format, its counts summed over the run's devices (each device's summary.json)."""
    totals: dict[str, Counter[str]] = {}
    for device in range(count):
        summary = _summary(device_dir(run_dir, device))
        for name, counts in (summary.formats if summary else {}).items():
            totals.setdefault(name, Counter()).update(counts)
    keys = {**{v: k for k, v in _VERDICT_KEYS.items()},
            **{k: k for k in ("blocks", "ok_blocks", "torn_blocks", "unchecked_blocks")}}
    return {name: FormatVerdicts(**{keys[k]: v for k, v in c.items() if k in keys})
            for name, c in totals.items()}  # fmt: skip


def _fio_check(run_dir: Path) -> FioCheck | None:
    """fio's own result of a fio:JOBFILE run (RUN/fio.json), or None if the guest left none."""
    data = _read_json(run_dir / "fio.json")
    if data is None or "verify" not in data:
        return None
    write, verify = data["write"], data["verify"]
    return FioCheck(
        job=Path(str(data.get("job", ""))).name,
        write_exit=write.get("exit"), write_errors=tuple(j["error"] for j in write["jobs"]),
        write_ios=sum(j["write_ios"] for j in write["jobs"]),
        verify_exit=verify.get("exit"), verify_errors=tuple(j["error"] for j in verify["jobs"]),
        read_back_ios=sum(j["read_ios"] for j in verify["jobs"]),
        passed=bool(data.get("passed")), messages=tuple(verify.get("messages", ())[-5:]),
        kicks=data.get("kicks"),
    )  # fmt: skip


def _device_verdicts(run_dir: Path, count: int) -> tuple[DeviceVerdicts, ...]:
    """Each device's verdict counts from its share of the reports (zeroes when missing)."""
    found = []
    for device in range(count):
        summary = _summary(device_dir(run_dir, device))
        counts = summary.counts if summary else {}
        found.append(DeviceVerdicts(
            device=device, writes=summary.writes if summary else 0,
            stamped_pages=summary.stamped_pages if summary else 0,
            **{k: int(counts.get(v, 0)) for k, v in _VERDICT_KEYS.items()},
        ))  # fmt: skip
    return tuple(found)


def _summary(directory: Path) -> ConnectionReport | None:
    """A run's (or one device's) summary.json as the harness cut it out; None if absent."""
    path = directory / "summary.json"
    return read(path, ConnectionReport) if path.exists() else None


def _version_of(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else None


def tool_versions() -> dict[str, str | None]:
    """Versions of what a run depends on, for the record."""
    try:
        from importlib.metadata import version  # noqa: PLC0415

        vng: str | None = version("virtme-ng")
    except Exception:
        vng = None
    nbdkit = _version_of(["nbdkit", "--version"])
    return {
        "nbdfork": __version__,
        "nbdkit": nbdkit.split()[-1] if nbdkit else None,
        "python": platform.python_version(),
        "qemu": _version_of(["qemu-system-x86_64", "--version"]),
        "virtme-ng": vng,
    }


def device_dir(run_dir: Path, device: int) -> Path:
    """Where a run keeps device `device`'s share of the reports: the run's own directory for
    the first device, DIR/device-N for the others of a stack."""
    return run_dir if device == 0 else run_dir / f"device-{device}"


def collect_host_runs(plan: Plan, reports: Sequence[Path]) -> dict[str, str]:
    """The host devices' reports cut into each run's summary.json and events.jsonl (one pair
    per device of its stack); the runs whose connection left no report, with why (they
    become harness errors)."""
    problems: dict[str, str] = {}
    for spec in plan.runs:
        run_dir = Path(plan.out) / "runs" / spec.id
        record = read_record(run_dir / "result.json")
        if record is None or not record.connected_wall:
            continue
        for device in range(spec.devices):
            target = device_dir(run_dir, device)
            target.mkdir(parents=True, exist_ok=True)
            try:
                collect_run(reports[device], spec.id, target, record.connected_wall,
                            record.workload_wall, timeout=5.0)
            except StepError as exc:
                problems.setdefault(spec.id, f"{exc.step}: device {device}: {exc}")
    return problems


def run_records(
    plan: Plan,
    *,
    kernel: str,
    missing: tuple[Outcome, str] | None = None,
    collect_errors: Mapping[str, str] | None = None,
) -> tuple[RunResult, ...]:
    """Every run of `plan`, from the files the guest and the device left in its OUT; a run in
    `collect_errors` (its device report could not be cut out) is a harness error."""
    device = {k: v for k, v in plan.device.items() if k != "report"}
    errors = collect_errors or {}
    return tuple(run_record(s, Path(plan.out), kernel=kernel, device=device, missing=missing,
                            collect_error=errors.get(s.id), overrides=plan.device_overrides)
                 for s in plan.runs)  # fmt: skip


def build_report(
    plan: Plan,
    runs: tuple[RunResult, ...],
    *,
    kernel: str,
    accel: str,
    started: dt.datetime,
    duration_s: float,
    harness: HarnessTimings,
    versions: Mapping[str, str | None],
    extra: Mapping[str, Any] | None = None,
) -> MatrixReport:
    """report.json's content: `runs` (from run_records) and how they ran; `extra` holds the
    session's further MatrixReport fields."""
    return MatrixReport(
        kernel=kernel,
        accel=accel,
        seed=plan.seed,
        started=started.isoformat(timespec="seconds"),
        duration_s=round(duration_s, 3),
        harness=harness,
        versions=dict(versions),
        runs=runs,
        **(extra or {}),
    )
