"""The files the device's server writes into its report directory, as types: summary.json
(`DeviceSummary`, the whole device) and connection-<n>.json (`ConnectionReport`, one client).
nbdfork.server is their one writer; every reader (the harness cutting a run's share, the
run's results, the model, `nbdfork verify`) decodes them through these types with `read`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import msgspec

from nbdfork.errors import ReportError

__all__ = [
    "CONNECTION_SCHEMA",
    "SUMMARY_SCHEMA",
    "ConnectionReport",
    "DeviceStats",
    "DeviceSummary",
    "RunSplit",
    "read",
]

SUMMARY_SCHEMA = "nbdfork.summary/1"
CONNECTION_SCHEMA = "nbdfork.connection/1"
T = TypeVar("T", bound="_Counters")


class DeviceStats(msgspec.Struct, kw_only=True):
    """Request counters: kept by the device as it serves (per device and per connection) and
    written, flat, into every report below."""

    reads: int = 0
    bytes_read: int = 0
    writes: int = 0
    bytes_written: int = 0
    fua_writes: int = 0
    write_errors: int = 0
    flushes: int = 0
    trims: int = 0
    zeros: int = 0
    errors_injected: int = 0
    corruptions_injected: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return msgspec.structs.asdict(self)


class _Counters(DeviceStats, kw_only=True):
    """What every report of the device counts: its requests (DeviceStats) and the oracle's
    verdicts."""

    schema: str
    version: str
    started: str
    seed: int
    settings: dict[str, Any]
    counts: dict[str, int]  # per verdict: torn_write, stale_write, overlapping_write
    stamped_pages: int = 0
    oracle: dict[str, int] = msgspec.field(default_factory=dict)
    # per format judged (stamp, fio, xfs, btrfs, ext4; `none`: an overlap holding no block):
    # torn_write, stale_write, overlapping_write, blocks, ok_blocks, torn_blocks, unchecked_blocks
    formats: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)


class DeviceSummary(_Counters, kw_only=True):
    """summary.json: the device since it started, over every connection."""

    duration_s: float
    seed_given: bool
    connections: int
    cache_pending_bytes: int = 0
    trace_records: int = 0


class RunSplit(msgspec.Struct, kw_only=True):
    """Where a run's share of a device report came from (the harness adds it)."""

    connection: int
    events: int
    device_report: str


class ConnectionReport(_Counters, kw_only=True):
    """connection-<n>.json: one client's connection (a run of the matrix is one per device),
    and, copied into the run's directory, how the run's share was cut out."""

    connection: int
    export: str
    opened_s: float
    closed_s: float
    write_service_ms: dict[str, float | int | None] | None = None
    write_sizes: dict[str, int] = msgspec.field(default_factory=dict)
    run_split: RunSplit | None = None


def read(path: Path, kind: type[T]) -> T:
    """`path` decoded as `kind`; ReportError naming the file and the field otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ReportError(f"{path}: {exc}") from None
