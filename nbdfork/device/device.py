"""The emulated block device: latency, then the store; every WRITE shown to the oracle.

A WRITE is observed twice: on arrival (its payload is decoded and checked, and it joins the
in-flight set) and on reply (its generations become the ones the device has acknowledged).
The latency sits between the two, occupying the nbdkit thread as a slow disk would.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import asdict, dataclass

from nbdfork.config import DeviceConfig, Op
from nbdfork.device.clock import Clock, MonotonicClock
from nbdfork.device.latency import LatencyModel
from nbdfork.device.rng import DeviceRng
from nbdfork.device.store import Store
from nbdfork.oracle.verify import EventSink, Oracle, WriteRequest

__all__ = ["Device", "DeviceStats"]


@dataclass(slots=True)
class DeviceStats:
    """Request counters, reported in summary.json."""

    reads: int = 0
    bytes_read: int = 0
    writes: int = 0
    bytes_written: int = 0
    fua_writes: int = 0
    write_errors: int = 0
    flushes: int = 0
    trims: int = 0
    zeros: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


class Device:
    """Serves pread/pwrite/flush/trim/zero for any number of connections and threads."""

    def __init__(self, config: DeviceConfig, sink: EventSink, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or MonotonicClock()
        self.store = Store(config.size, config.file)
        self.rng = DeviceRng(config.seed)
        self.latency = LatencyModel(config, self.rng)
        self.oracle = Oracle(sink) if config.oracle else None
        self.stats = DeviceStats()
        self.started = self.clock.now()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _wait(self, op: Op, request_id: int, length: int) -> None:
        if self.latency.active:
            self.clock.sleep(self.latency.delay(op, request_id, length))

    def elapsed(self) -> float:
        """Seconds since the device started."""
        return self.clock.now() - self.started

    def pread(self, buf: memoryview | bytearray, offset: int) -> None:
        """Fill `buf` from `offset` after the read latency."""
        request_id = next(self._ids)
        self._wait("read", request_id, len(buf))
        self.store.read_into(buf, offset)
        with self._lock:
            self.stats.reads += 1
            self.stats.bytes_read += len(buf)

    def pwrite(self, connection: int, data: memoryview | bytes, offset: int, *, fua: bool) -> None:
        """Check `data` with the oracle, wait the write latency, store it; durable if `fua`."""
        request_id = next(self._ids)
        if self.oracle is not None:
            request = WriteRequest(request_id, connection, offset, len(data), fua, self.elapsed())
            self.oracle.write_arrived(request, data)
        ok = False
        try:
            self._wait("write", request_id, len(data))
            self.store.write(offset, data)
            if fua:
                self.store.sync(offset, len(data))
            ok = True
        finally:
            self._count_write(len(data), fua=fua, ok=ok)
            if self.oracle is not None:
                self.oracle.write_replied(request_id, ok=ok, time=self.elapsed())

    def _count_write(self, length: int, *, fua: bool, ok: bool) -> None:
        with self._lock:
            self.stats.writes += 1
            if ok:
                self.stats.bytes_written += length
                self.stats.fua_writes += fua
            else:
                self.stats.write_errors += 1

    def flush(self) -> None:
        """Make every write replied to so far durable."""
        self._wait("flush", next(self._ids), 0)
        self.store.sync()
        with self._lock:
            self.stats.flushes += 1

    def trim(self, length: int, offset: int, *, fua: bool) -> None:
        """Discard a range; it reads back as zeroes."""
        self._discard(length, offset, fua=fua)
        with self._lock:
            self.stats.trims += 1

    def zero(self, length: int, offset: int, *, fua: bool) -> None:
        """Write zeroes to a range (by discarding it: the store reads holes as zeroes)."""
        self._discard(length, offset, fua=fua)
        with self._lock:
            self.stats.zeros += 1

    def _discard(self, length: int, offset: int, *, fua: bool) -> None:
        self._wait("trim", next(self._ids), length)
        self.store.discard(offset, length)
        if fua:
            self.store.sync(offset, length)

    def counts(self) -> dict[str, int]:
        """The oracle's verdict counts (zeroes when the oracle is off)."""
        if self.oracle is None:
            return {"torn_write": 0, "stale_write": 0, "overlapping_write": 0}
        return self.oracle.counts()

    def close(self) -> None:
        """Release the store."""
        self.store.close()

