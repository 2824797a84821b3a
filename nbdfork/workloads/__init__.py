"""Workloads that write stamped pages under a filesystem and measure the writer's latency.

`run_workload(name, config)` runs one in the calling process (the guest script, or a test);
its result serialises to workload.json via `WorkloadResult.summary()`.
"""

from __future__ import annotations

from nbdfork.errors import ConfigError
from nbdfork.workloads.atomic import AtomicWorkload
from nbdfork.workloads.base import (
    KICK_MODES,
    KickMode,
    Workload,
    WorkloadConfig,
    WorkloadResult,
    WorkloadSkipped,
)
from nbdfork.workloads.mmap_store import MmapWorkload
from nbdfork.workloads.odirect import (
    OdirectChurnWorkload,
    OdirectInflightWorkload,
    OdirectWorkload,
)
from nbdfork.workloads.pwrite import PwriteWorkload

__all__ = [
    "KICK_MODES",
    "WORKLOADS",
    "KickMode",
    "Workload",
    "WorkloadConfig",
    "WorkloadResult",
    "WorkloadSkipped",
    "run_workload",
    "workload_class",
]

WORKLOADS: dict[str, type[Workload]] = {
    cls.name: cls
    for cls in (
        PwriteWorkload, MmapWorkload, OdirectWorkload, OdirectInflightWorkload,
        OdirectChurnWorkload, AtomicWorkload,
    )
}


def workload_class(name: str) -> type[Workload]:
    """The workload called `name`, or ConfigError listing the known ones."""
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ConfigError("--workload", f"{name!r} is not one of {', '.join(WORKLOADS)}") from None


def run_workload(name: str, config: WorkloadConfig) -> WorkloadResult:
    """Run workload `name` with `config` and return its result (errors are in the result)."""
    return workload_class(name)(config).run()
