"""The device as nbdkit serves it: connections, the report directory and its lifecycle.

summary.json is rewritten (atomically) whenever a client disconnects and when the server
stops, and events.jsonl is written through per event. A background thread also rewrites the
summary within a second of any change: nbdkit (1.32) answers SIGTERM by refusing requests
(ESHUTDOWN) but waits for an idle client to leave, and a client that never leaves, or a
SIGKILL, must not cost the user what was recorded. Every file in the report directory is
made through nbdfork.files.ReportDir: no link planted there is ever followed.
"""

from __future__ import annotations

import datetime as dt
import threading

import msgspec

from nbdfork import __version__
from nbdfork.config import DeviceConfig
from nbdfork.device.clock import Clock
from nbdfork.device.device import Device, DeviceStats, service_percentiles
from nbdfork.device.paths import validate_paths
from nbdfork.device.summary import (
    CONNECTION_SCHEMA,
    SUMMARY_SCHEMA,
    ConnectionReport,
    DeviceSummary,
)
from nbdfork.errors import ConfigError
from nbdfork.files import LOG_FILE, ReportDir, encode_json
from nbdfork.log import get_logger
from nbdfork.oracle.events import EventLog, NullSink
from nbdfork.oracle.verify import judge
from nbdfork.verdicts import WRITE_VERDICTS

__all__ = [
    "SUMMARY_SCHEMA",
    "DeviceService",
]

VERDICTS = tuple(map(str, WRITE_VERDICTS))


class DeviceService:
    """One emulated device shared by every connection of one nbdkit process."""

    def __init__(self, config: DeviceConfig, clock: Clock | None = None) -> None:
        self.config = config
        self._log = get_logger("nbdfork.device")
        self._events: EventLog | NullSink = NullSink()
        self._dir: ReportDir | None = None
        validate_paths(config)  # every path problem before anything is created or moved
        if config.report is not None:
            self._dir = ReportDir.open(config.report)
            self._dir.set_aside()
            fd = self._dir.create("events.jsonl")
            self._events = EventLog(config.report / "events.jsonl", fd=fd)
        try:
            self.device = Device(config, judge(self._events, config.formats), clock)
        except OSError as exc:  # the store's open, ftruncate or mmap
            self._events.close()
            key = "file" if config.file else "size"
            raise ConfigError(key, f"cannot set up the device's media: {exc.strerror}") from None
        self.started_at = dt.datetime.now(dt.UTC)
        self._open = 0
        self._total = 0
        self._opened: dict[int, tuple[str, float]] = {}  # connection -> (export, device time)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._last_written: dict[str, object] | None = None

    def open_log(self) -> int | None:
        """DIR/nbdfork.log, new (an earlier run's was set aside), opened for appending (the
        caller owns the descriptor), or None."""
        return self._dir.create(LOG_FILE) if self._dir is not None else None

    def start_background(self, interval: float = 1.0) -> None:
        """Start the thread that keeps summary.json current (call after nbdkit forks)."""
        if self.config.report is None:
            return
        thread = threading.Thread(
            target=self._refresh_loop, args=(interval,), name="nbdfork-summary", daemon=True
        )
        thread.start()

    def _refresh_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            summary = self.summary()
            summary.pop("duration_s")
            if summary != self._last_written:
                self.write_summary()

    def open_connection(self, *, readonly: bool, export: str = "") -> int:
        """Register a client connection (`export`: the NBD export name it asked for)."""
        with self._lock:
            self._open += 1
            self._total += 1
            connection = self._total
            self._opened[connection] = (export, self.device.elapsed())
        self._log.info("connect", connection=connection, readonly=readonly, export=export)
        return connection

    def close_connection(self, connection: int) -> None:
        """A client went away: write the summary now, in case the server never stops cleanly."""
        self.device.close_connection(connection)  # judge the pages it left in pieces
        with self._lock:
            self._open -= 1
        self.write_connection_report(connection)
        summary = self.write_summary()
        self._log.info("disconnect", connection=connection, counts=summary["counts"])

    def summary(self) -> dict[str, object]:
        """Everything summary.json records."""
        device = self.device
        counts = device.counts()
        stamped = counts.pop("stamped_pages", 0)
        return {
            "schema": SUMMARY_SCHEMA,
            "version": __version__,
            "started": self.started_at.isoformat(),
            "duration_s": round(device.elapsed(), 6),
            "seed": self.config.seed,
            "seed_given": self.config.seed_given,
            "settings": self.config.settings(),
            "connections": self._total,
            "counts": {k: counts.pop(k, 0) for k in VERDICTS},
            "stamped_pages": stamped,
            "oracle": counts,
            "formats": device.format_counts(),
            "cache_pending_bytes": device.cache.pending_bytes() if device.cache else 0,
            "trace_records": device.trace.records if device.trace else 0,
            **device.stats.as_dict(),
        }

    def connection_report(self, connection: int) -> dict[str, object]:
        """One connection's report: its own counters, export name and device times."""
        device = self.device
        counts = device.connection_counts(connection)
        stamped = counts.pop("stamped_pages", 0)
        export, opened = self._opened.get(connection, ("", 0.0))
        stats = device.connection_stats.get(connection)
        return {
            "schema": CONNECTION_SCHEMA,
            "version": __version__,
            "started": self.started_at.isoformat(),
            "seed": self.config.seed,
            "settings": self.config.settings(),
            "connection": connection,
            "export": export,
            "opened_s": round(opened, 6),
            "closed_s": round(device.elapsed(), 6),
            "counts": {k: counts.pop(k, 0) for k in VERDICTS},
            "stamped_pages": stamped,
            "oracle": counts,
            "formats": device.format_counts(connection),
            "write_service_ms": service_percentiles(device.service_times.get(connection)),
            "write_sizes": {str(k): v for k, v in
                            sorted(device.write_sizes.get(connection, {}).items())},
            **(stats.as_dict() if stats is not None else DeviceStats().as_dict()),
        }

    def write_connection_report(self, connection: int) -> dict[str, object]:
        """Write DIR/connection-<n>.json when the connection closes: nobody has to subtract
        running totals or cut events.jsonl by byte offset to know what one client did."""
        report = self.connection_report(connection)
        if self._dir is not None:
            data = encode_json(msgspec.convert(report, ConnectionReport))
            with self._write_lock:
                self._dir.replace(f"connection-{connection}.json", data)
        return report

    def write_summary(self) -> dict[str, object]:
        """Write DIR/summary.json (if there is a report directory) and return the summary."""
        summary = self.summary()
        if self._dir is not None:
            data = encode_json(msgspec.convert(summary, DeviceSummary))
            with self._write_lock:
                self._dir.replace("summary.json", data)
                self._last_written = {k: v for k, v in summary.items() if k != "duration_s"}
        return summary

    def shutdown(self) -> None:
        """The server is stopping: final summary, close the event log and the store."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        # The device first: its close judges what clients left in pieces (events) and ends the
        # trace, and the final summary must count both.
        self.device.close()
        summary = self.write_summary()
        self._events.close()
        if self._dir is not None:
            self._dir.close()
        self._log.info("shutdown", writes=summary["writes"], counts=summary["counts"])
