"""The page-forking model: a userspace page cache with writeback over the emulated device,
run under one writeback policy at a time (none, stable, fork, fork-unordered).

`policy` names the policies, `cache` owns the page state machine, `writeback` the flusher,
send path and fsync, `writer` the writer threads, `export` the libnbd connection, `device`
the device settings and the oracle's verdicts, `run` one run, `sweep` many, `summary`,
`plots`, `compare` and `report` the results. docs/page-forking.md says what it can and
cannot show.
"""

from nbdfork.pageforking.cache import PageCache
from nbdfork.pageforking.device import DeviceSettings, ReorderSpec, Verdicts
from nbdfork.pageforking.policy import Policy
from nbdfork.pageforking.report import write_report
from nbdfork.pageforking.run import RunResult, RunSpec, run_model
from nbdfork.pageforking.sweep import SweepPlan, run_sweep

__all__ = [
    "DeviceSettings",
    "PageCache",
    "Policy",
    "ReorderSpec",
    "RunResult",
    "RunSpec",
    "SweepPlan",
    "Verdicts",
    "run_model",
    "run_sweep",
    "write_report",
]
