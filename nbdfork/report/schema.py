"""The typed, versioned results of a real-kernel matrix run: `OUT/report.json` (`nbdfork.run/1`).

This module owns the schema: the frozen dataclasses, `load_report` (read + validate, one
`ReportError` naming the file and the field) and the `to_json` / `from_json` round trip. The
harness builds these objects and writes them; the renderer and `nbdfork report` read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Literal, TypeAlias, cast, get_args

from nbdfork.errors import ReportError

__all__ = [
    "REPORT_FILE",
    "SCHEMA",
    "Durations",
    "HarnessTimings",
    "Histogram",
    "JSONValue",
    "LatencySummary",
    "MatrixReport",
    "Outcome",
    "RunResult",
    "Workload",
    "load_report",
    "write_report",
]

SCHEMA = "nbdfork.run/1"
REPORT_FILE = "report.json"

JSONValue: TypeAlias = (
    bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None
)
JSONObject: TypeAlias = dict[str, JSONValue]
Outcome = Literal["passed", "violations", "harness_error", "vm_lost", "skipped"]
Workload = Literal["pwrite", "mmap", "odirect", "odirect_inflight", "atomic"]


class _Reader:
    """Typed access to one JSON object; every error names the source file and the field path."""

    def __init__(self, data: object, source: str, where: str) -> None:
        self.source = source
        self.where = where
        if not isinstance(data, dict):
            raise ReportError(f"{source}: {where or 'top level'}: expected a JSON object")
        self.data: dict[str, object] = data

    def fail(self, key: str, problem: str) -> ReportError:
        """The error for `key` of this object."""
        path = f"{self.where}.{key}" if self.where else key
        return ReportError(f"{self.source}: {path}: {problem}")

    def raw(self, key: str) -> object:
        """The value of a required field."""
        if key not in self.data:
            raise self.fail(key, "missing required field")
        return self.data[key]

    def str_(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {value!r}")
        return value

    def opt_str(self, key: str) -> str | None:
        return None if self.raw(key) is None else self.str_(key)

    def int_(self, key: str) -> int:
        value = self.raw(key)
        # bool is an int subclass; true/false is never a count.
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(key, f"expected an integer, got {value!r}")
        return value

    def count(self, key: str) -> int:
        value = self.int_(key)
        if value < 0:
            raise self.fail(key, f"expected a count >= 0, got {value}")
        return value

    def float_(self, key: str) -> float:
        value = self.raw(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.fail(key, f"expected a number, got {value!r}")
        return float(value)

    def opt_float(self, key: str) -> float | None:
        return None if self.raw(key) is None else self.float_(key)

    def choice(self, key: str, allowed: tuple[object, ...]) -> object:
        value = self.raw(key)
        if value not in allowed or isinstance(value, bool):
            raise self.fail(key, f"expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value

    def obj(self, key: str) -> _Reader:
        path = f"{self.where}.{key}" if self.where else key
        value = self.raw(key)
        if not isinstance(value, dict):
            raise self.fail(key, "expected a JSON object")
        return _Reader(value, self.source, path)

    def list_(self, key: str) -> list[object]:
        value = self.raw(key)
        if not isinstance(value, list):
            raise self.fail(key, "expected a list")
        return value

    def numbers(self, key: str) -> tuple[float, ...]:
        items = self.list_(key)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
            raise self.fail(key, "expected a list of numbers")
        return tuple(float(cast(float, v)) for v in items)

    def counts(self, key: str) -> tuple[int, ...]:
        items = self.list_(key)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in items):
            raise self.fail(key, "expected a list of counts >= 0")
        return tuple(cast(int, v) for v in items)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Writer per-write latency percentiles in milliseconds; None when the writer never ran."""

    p50: float | None
    p99: float | None
    p999: float | None
    max: float | None

    @classmethod
    def from_json(cls, r: _Reader) -> LatencySummary:
        return cls(r.opt_float("p50"), r.opt_float("p99"), r.opt_float("p999"), r.opt_float("max"))

    def to_json(self) -> JSONObject:
        return {"p50": self.p50, "p99": self.p99, "p999": self.p999, "max": self.max}


@dataclass(frozen=True, slots=True)
class Histogram:
    """Writer latency histogram: `counts[i]` writes took [edges_ms[i], edges_ms[i+1]) ms."""

    edges_ms: tuple[float, ...]
    counts: tuple[int, ...]

    @classmethod
    def from_json(cls, r: _Reader) -> Histogram:
        edges, counts = r.numbers("edges_ms"), r.counts("counts")
        # An empty histogram (no edges, no counts) is what a run without writes records.
        if (edges or counts) and len(edges) != len(counts) + 1:
            raise r.fail("edges_ms", f"expected len(counts)+1 = {len(counts) + 1} edges, "
                                     f"got {len(edges)}")
        if any(b < a for a, b in pairwise(edges)):
            raise r.fail("edges_ms", "edges must not decrease")
        return cls(edges, counts)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def to_json(self) -> JSONObject:
        return {"edges_ms": list(self.edges_ms), "counts": list(self.counts)}


@dataclass(frozen=True, slots=True)
class Durations:
    """Wall-clock seconds of one configuration's stages inside the guest."""

    setup_s: float
    workload_s: float
    teardown_s: float

    @classmethod
    def from_json(cls, r: _Reader) -> Durations:
        return cls(r.float_("setup_s"), r.float_("workload_s"), r.float_("teardown_s"))

    def to_json(self) -> JSONObject:
        return {"setup_s": self.setup_s, "workload_s": self.workload_s,
                "teardown_s": self.teardown_s}


@dataclass(frozen=True, slots=True)
class HarnessTimings:
    """The harness's fixed costs: VM boot and overhead per configuration beyond the workload."""

    boot_s: float
    per_config_overhead_s: tuple[float, ...]

    @classmethod
    def from_json(cls, r: _Reader) -> HarnessTimings:
        return cls(r.float_("boot_s"), r.numbers("per_config_overhead_s"))

    def to_json(self) -> JSONObject:
        return {"boot_s": self.boot_s, "per_config_overhead_s": list(self.per_config_overhead_s)}


def _mkfs_options(r: _Reader) -> str | tuple[str, ...]:
    # The harness may record an argv list or a command-line string; keep what it wrote.
    value = r.raw("mkfs_options")
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(cast(list[str], value))
    raise r.fail("mkfs_options", f"expected a string or a list of strings, got {value!r}")


def _device(r: _Reader) -> JSONObject:
    r.obj("device")  # validates that it is an object
    return cast(JSONObject, json.loads(json.dumps(r.raw("device"))))


@dataclass(frozen=True, slots=True)
class RunResult:
    """One configuration (fs x stable_writes x workload) of a matrix run and what the oracle saw."""

    id: str
    kernel: str
    fs: str
    mkfs_options: str | tuple[str, ...]
    stable_writes: Literal[0, 1]
    workload: Workload
    seconds: float
    writes: int
    stamped_pages: int
    torn: int
    stale: int
    overlapping: int
    writer_latency_ms: LatencySummary
    writer_latency_hist: Histogram
    writer_ops: int
    outcome: Outcome
    error: str | None
    seed: int
    device: JSONObject
    durations: Durations
    dir: str
    device_service_p99_ms: float | None = None  # the device's own WRITE service time (p99)

    @classmethod
    def from_json(cls, r: _Reader) -> RunResult:
        return cls(
            id=r.str_("id"), kernel=r.str_("kernel"), fs=r.str_("fs"),
            mkfs_options=_mkfs_options(r),
            stable_writes=cast(Literal[0, 1], r.choice("stable_writes", (0, 1))),
            workload=cast(Workload, r.choice("workload", get_args(Workload))),
            seconds=r.float_("seconds"), writes=r.count("writes"),
            stamped_pages=r.count("stamped_pages"), torn=r.count("torn"),
            stale=r.count("stale"), overlapping=r.count("overlapping"),
            writer_latency_ms=LatencySummary.from_json(r.obj("writer_latency_ms")),
            writer_latency_hist=Histogram.from_json(r.obj("writer_latency_hist")),
            writer_ops=r.count("writer_ops"),
            outcome=cast(Outcome, r.choice("outcome", get_args(Outcome))),
            error=r.opt_str("error"), seed=r.int_("seed"), device=_device(r),
            durations=Durations.from_json(r.obj("durations")), dir=r.str_("dir"),
            device_service_p99_ms=_service_p99(r),
        )

    @property
    def completed(self) -> bool:
        """True when the workload ran to the end, so its counts are a measurement."""
        return self.outcome in ("passed", "violations")

    @property
    def mkfs_command(self) -> str:
        """The mkfs options as one line for humans."""
        opts = self.mkfs_options
        return opts if isinstance(opts, str) else " ".join(opts)

    def to_json(self) -> JSONObject:
        opts = self.mkfs_options
        return {
            "id": self.id, "kernel": self.kernel, "fs": self.fs,
            "mkfs_options": opts if isinstance(opts, str) else list(opts),
            "stable_writes": self.stable_writes, "workload": self.workload,
            "seconds": self.seconds, "writes": self.writes, "stamped_pages": self.stamped_pages,
            "torn": self.torn, "stale": self.stale, "overlapping": self.overlapping,
            "writer_latency_ms": self.writer_latency_ms.to_json(),
            "writer_latency_hist": self.writer_latency_hist.to_json(),
            "writer_ops": self.writer_ops, "outcome": self.outcome, "error": self.error,
            "seed": self.seed, "device": json.loads(json.dumps(self.device)),
            "durations": self.durations.to_json(), "dir": self.dir,
            **({} if self.device_service_p99_ms is None
               else {"device_write_service_ms": {"p99": self.device_service_p99_ms}}),
        }


def _service_p99(r: _Reader) -> float | None:
    """p99 of `device_write_service_ms`, which reports before the host device lack."""
    if r.data.get("device_write_service_ms") is None:
        return None
    return r.obj("device_write_service_ms").opt_float("p99")


def _versions(r: _Reader) -> dict[str, str | None]:
    versions = r.obj("versions")
    return {key: versions.opt_str(key) for key in versions.data}


def _runs(r: _Reader) -> tuple[RunResult, ...]:
    runs = tuple(RunResult.from_json(_Reader(item, r.source, f"runs[{i}]"))
                 for i, item in enumerate(r.list_("runs")))
    seen: set[str] = set()
    for i, run in enumerate(runs):
        if run.id in seen:
            raise ReportError(f"{r.source}: runs[{i}].id: duplicate run id {run.id!r}")
        seen.add(run.id)
    return runs


@dataclass(frozen=True, slots=True)
class MatrixReport:
    """One boot's whole matrix: where and how it ran, and every configuration's result."""

    kernel: str
    accel: str
    seed: int
    started: str
    duration_s: float
    harness: HarnessTimings
    versions: dict[str, str | None]
    runs: tuple[RunResult, ...] = field(default=())
    schema: str = SCHEMA
    device_location: str = "guest"  # reports before the host device ran it in the guest
    transport: str = ""
    sysctls: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: object, source: str = "<report>") -> MatrixReport:
        """Validate `data` (parsed report.json); a ReportError names `source` and the field."""
        r = _Reader(data, source, "")
        schema = r.str_("schema")
        if schema != SCHEMA:
            raise r.fail("schema", f"unknown schema {schema!r}; this nbdfork reads {SCHEMA!r}")
        return cls(
            kernel=r.str_("kernel"), accel=r.str_("accel"), seed=r.int_("seed"),
            started=r.str_("started"), duration_s=r.float_("duration_s"),
            harness=HarnessTimings.from_json(r.obj("harness")), versions=_versions(r),
            runs=_runs(r), schema=schema,
            device_location=_optional_str(r, "device_location", "guest"),
            transport=_optional_str(r, "transport", ""), sysctls=_sysctls(r),
        )

    def to_json(self) -> JSONObject:
        """The report as report.json holds it; `from_json(to_json())` gives an equal report."""
        versions: JSONObject = dict(self.versions)
        return {
            "schema": self.schema, "kernel": self.kernel, "accel": self.accel, "seed": self.seed,
            "started": self.started, "duration_s": self.duration_s,
            "harness": self.harness.to_json(), "versions": versions,
            "runs": [run.to_json() for run in self.runs],
            "device_location": self.device_location, "transport": self.transport,
            "sysctls": dict(self.sysctls),
        }


def _optional_str(r: _Reader, key: str, default: str) -> str:
    """A string field that older reports lack."""
    return r.str_(key) if key in r.data else default


def _sysctls(r: _Reader) -> dict[str, str]:
    """The guest sysctls the harness set (older reports: none recorded)."""
    if "sysctls" not in r.data:
        return {}
    raw = r.obj("sysctls").data
    return {str(k): str(v) for k, v in raw.items()}


def _report_file(path: Path) -> Path:
    return path / REPORT_FILE if path.is_dir() else path


def load_report(path: Path) -> MatrixReport:
    """Read and validate a report.json (or the report directory holding one)."""
    source = _report_file(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{source}: not JSON: line {exc.lineno}: {exc.msg}") from exc
    return MatrixReport.from_json(data, str(source))


def write_report(report: MatrixReport, path: Path) -> Path:
    """Write `report` as report.json (into `path` when it is a directory); returns the file."""
    target = _report_file(path)
    # Write then rename, so a reader never sees half a report.
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target
