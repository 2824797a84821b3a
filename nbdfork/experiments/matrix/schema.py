"""The results of a real-kernel matrix run: `OUT/report.json` (`nbdfork.run/1`), defined once.

These msgspec structures are what the harness builds (vm/results.py), what `write_report`
encodes and what `load_report` decodes and validates: a bad file is one `ReportError` naming
the file and the field. Fields added since the first release have defaults, so older reports
still load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec

from nbdfork.experiments.stacks.results import LayerReport, StackChecks
from nbdfork.harness.protocol import Outcome
from nbdfork.report.codec import REPORT_FILE, Record, read_json, write_json
from nbdfork.report.measures import Count, Histogram, JSONValue, LatencySummary, ServiceTime

__all__ = [
    "REPORT_FILE",
    "SCHEMA",
    "Count",
    "DeviceVerdicts",
    "FioCheck",
    "FormatVerdicts",
    "Durations",
    "GuestCpu",
    "HarnessTimings",
    "Histogram",
    "JSONValue",
    "KernelInfo",
    "LatencySummary",
    "MatrixReport",
    "Outcome",
    "RunResult",
    "ServiceTime",
    "VMShape",
    "Workload",
    "load_report",
    "write_report",
]

SCHEMA = "nbdfork.run/1"

Workload = Literal[
    "pwrite", "mmap", "odirect", "odirect_inflight", "odirect_churn", "atomic", "fio"
]


class Durations(Record, frozen=True, kw_only=True):
    """Wall-clock seconds of one configuration's stages inside the guest."""

    setup_s: float = 0.0
    workload_s: float = 0.0
    teardown_s: float = 0.0


class GuestCpu(Record, frozen=True, kw_only=True):
    """CPU the guest spent during the workload (TCG makes it the scarce resource)."""

    workload_cpu_s: float | None = None
    nbdkit_cpu_s: float | None = None
    guest_busy_fraction: float | None = None


class DeviceVerdicts(Record, frozen=True, kw_only=True):
    """What one device of a run's stack received, as its own oracle judged it."""

    device: int  # 0 .. devices-1: /dev/nbdN in the guest
    writes: Count
    stamped_pages: Count
    torn: Count
    stale: Count
    overlapping: Count


class FormatVerdicts(Record, frozen=True, kw_only=True):
    """What the oracle found of one format in a run (summed over the stack's devices): its
    verdicts, and its blocks as found, ok, torn and unchecked (docs/formats.md)."""

    torn: Count = 0
    stale: Count = 0
    overlapping: Count = 0
    blocks: Count = 0
    ok_blocks: Count = 0
    torn_blocks: Count = 0
    unchecked_blocks: Count = 0

    @property
    def violations(self) -> int:
        """torn + stale + overlapping."""
        return self.torn + self.stale + self.overlapping


class FioCheck(Record, frozen=True, kw_only=True):
    """fio's own result for a fio:JOBFILE run: the job, then fio's read-back from the device
    (--verify_only after sync and dropped caches)."""

    job: str
    write_exit: int | None
    write_errors: tuple[int, ...]  # per job: fio's error (0: none; 84 EILSEQ: verify failed)
    write_ios: Count
    verify_exit: int | None
    verify_errors: tuple[int, ...]
    read_back_ios: Count
    passed: bool  # the read-back: exit 0, every job error 0
    messages: tuple[str, ...] = ()  # the tail of fio's output of the read-back
    kicks: Count | None = None  # writeback started by the kicker while the job ran


class RunResult(Record, frozen=True, kw_only=True):
    """One configuration (fs x stable_writes x workload) of a matrix run and what the oracle saw."""

    id: str
    kernel: str
    fs: str
    mkfs_options: str | tuple[str, ...]  # an argv list, or one command line (older reports)
    stable_writes: Literal[0, 1]
    workload: Workload
    seconds: float
    writes: Count
    stamped_pages: Count
    torn: Count
    stale: Count
    overlapping: Count
    writer_latency_ms: LatencySummary
    writer_latency_hist: Histogram
    writer_ops: Count
    outcome: Outcome
    error: str | None
    seed: int
    device: dict[str, Any]
    durations: Durations
    dir: str
    mkfs: str | None = None  # "fresh" or "reused"
    mount_options: tuple[str, ...] = ()
    stable_writes_read: int | None = None  # what the queue attribute read back
    workload_options: dict[str, Any] = msgspec.field(default_factory=dict)
    device_write_service_ms: ServiceTime | None = None
    device_write_sizes: dict[str, Count] | None = None  # WRITE bytes -> how many
    guest_cpu: GuestCpu | None = None
    stack: str = "plain"  # the storage stack between the filesystem and the devices
    layers: tuple[LayerReport, ...] = ()  # top down: stable_writes (kernel's, the run's)
    checks: StackChecks | None = None  # every layer's own checker after the workload
    devices: tuple[DeviceVerdicts, ...] = ()  # per device of the stack (counts above: the sum)
    # plugin parameters of one device only (--device-param N:KEY=VALUE), by device index:
    # a damaged leg is a control, not a finding, and the report must say which runs had one
    device_overrides: dict[str, dict[str, str]] = msgspec.field(default_factory=dict)
    # per format the device judged (stamp, the filesystem's metadata, fio): torn, stale,
    # overlapping and blocks; `torn`/`stale` above are the stamp's, as before formats
    formats: dict[str, FormatVerdicts] = msgspec.field(default_factory=dict)
    fio: FioCheck | None = None  # fio's own verification of a fio:JOBFILE run

    @property
    def completed(self) -> bool:
        """True when the workload ran to the end, so its counts are a measurement."""
        return self.outcome in ("passed", "violations")

    @property
    def mkfs_command(self) -> str:
        """The mkfs options as one line for humans."""
        opts = self.mkfs_options
        return opts if isinstance(opts, str) else " ".join(opts)

    @property
    def device_service_p99_ms(self) -> float | None:
        """p99 of the device's WRITE service time (None before the host device recorded it)."""
        service = self.device_write_service_ms
        return None if service is None else service.p99


class HarnessTimings(Record, frozen=True, kw_only=True):
    """The harness's fixed costs: VM boot and overhead per configuration beyond the workload."""

    boot_s: float
    per_config_overhead_s: tuple[float, ...]
    host_device_start_s: float | None = None
    vm_boot_s: float | None = None
    device_start_s: float | None = None
    shutdown_s: float | None = None
    per_kernel: dict[str, HarnessTimings] | None = None  # a report of several kernels


class KernelInfo(Record, frozen=True, kw_only=True):
    """Where the booted kernel came from."""

    release: str
    image: str
    modules: str | None = None
    source: str = ""
    series: str | None = None
    packages: dict[str, str] = msgspec.field(default_factory=dict)
    suite: str | None = None
    fetched: str | None = None


class VMShape(Record, frozen=True, kw_only=True):
    cpus: int
    memory: str


class MatrixReport(Record, frozen=True, kw_only=True):
    """One command's matrix (one boot per kernel): where and how it ran, and every result."""

    schema: str = SCHEMA  # first in the file, so a reader sees at once what it holds
    kernel: str
    accel: str
    seed: int
    started: str
    duration_s: float
    harness: HarnessTimings
    versions: dict[str, str | None]
    runs: tuple[RunResult, ...] = ()
    device_location: str = "guest"  # reports before the host device ran it in the guest
    transport: str = ""
    sysctls: dict[str, str] = msgspec.field(default_factory=dict)
    mode: str = "vm"
    nbdkit_threads: int | None = None
    guest_sysctls_read: dict[str, str] = msgspec.field(default_factory=dict)
    accel_reason: str | None = None
    kernels: tuple[str, ...] = ()  # in the order they booted (a report of several kernels)
    # One kernel's details, or (a report of several kernels) each one's, in boot order.
    kernel_info: KernelInfo | tuple[KernelInfo | None, ...] | None = None
    vm: VMShape | None = None
    vm_lost: str | None = None
    # console tails of boots that panicked before the guest script started, booted again
    boot_panics: tuple[str, ...] = ()
    plan: str | None = None

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, run in enumerate(self.runs):
            if run.id in seen:
                raise ValueError(f"runs[{i}].id: duplicate run id {run.id!r}")
            seen.add(run.id)



def load_report(path: Path) -> MatrixReport:
    """Read and validate a report.json (or the report directory holding one)."""
    return read_json(path, MatrixReport, SCHEMA)


def write_report(report: MatrixReport, path: Path) -> Path:
    """Write `report` as report.json (into `path` when it is a directory); returns the file."""
    return write_json(report, path)
