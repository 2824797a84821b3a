"""The emulated block device: faults, latency, store, cache, reordering, trace — and the oracle.

A WRITE is observed twice: on arrival (its payload is decoded and checked, and it joins the
in-flight set) and on reply (its generations become the ones the device has acknowledged).
The latency sits between the two, occupying the nbdkit thread as a slow disk would. Reads
see every acknowledged write (the `store`); with `cache=volatile` the media (`cache.media`)
holds only what the NBD durability rule makes durable.
"""

from __future__ import annotations

import itertools
import threading
from array import array
from collections import Counter
from dataclasses import dataclass, replace

from nbdfork.config import DeviceConfig, Op
from nbdfork.device.cache import CacheModel
from nbdfork.device.clock import Clock, MonotonicClock
from nbdfork.device.faults import Corrupter, FaultInjector
from nbdfork.device.latency import LatencyModel
from nbdfork.device.reorder import ReorderGate
from nbdfork.device.requests import JudgeFactory, WriteRequest
from nbdfork.device.rng import DeviceRng
from nbdfork.device.store import Store
from nbdfork.device.summary import DeviceStats
from nbdfork.device.trace import FLAG_FAILED, FLAG_FUA, Record, TraceWriter
from nbdfork.device.trace import Op as TraceOp
from nbdfork.errors import DeviceError
from nbdfork.verdicts import WRITE_VERDICTS

__all__ = ["Device", "DeviceStats", "ArrivedWrite", "service_percentiles"]

_new_tuple = tuple.__new__
_LATENCY_OP: dict[str, Op] = {
    "read": "read", "write": "write", "flush": "flush", "trim": "trim", "zero": "trim"
}


@dataclass(slots=True)
class ArrivedWrite:
    """A WRITE between arrival and landing (or failure); not the cache's PendingWrite, which
    is a write already acknowledged and not yet durable."""

    request_id: int
    connection: int
    offset: int
    data: memoryview | bytes
    fua: bool
    arrival: float
    arrival_tick: int = 0


class Device:
    """Serves pread/pwrite/flush/trim/zero for any number of connections and threads."""

    def __init__(
        self, config: DeviceConfig, judge: JudgeFactory | None, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.clock: Clock = clock or MonotonicClock()
        self.rng = DeviceRng(config.seed)
        self.store = Store(config.size, None if config.cache else config.file)
        self.cache = self._make_cache(config)
        self.latency = LatencyModel(config, self.rng)
        self.oracle = judge(self.store) if judge is not None and config.oracle else None
        self.reorder = self._make_reorder(config)
        self.faults = FaultInjector(config.faults, self.rng) if config.faults.ops else None
        self.corrupter = Corrupter(config.corrupt, self.rng) if config.corrupt.enabled else None
        self.corruptions: list[tuple[int, int]] = []  # (request id, device offset) per byte
        self.stats = DeviceStats()
        self.connection_stats: dict[int, DeviceStats] = {}  # the same counters per connection
        # Seconds from arrival to landing of each WRITE, per connection: the device's own
        # service time (latency, reorder wait, queueing on its locks), beside the writer's stall.
        self.service_times: dict[int, array[float]] = {}
        # WRITE lengths per connection: how the kernel's writeback sizes its requests (large
        # folios show as WRITEs of whole multi-page folios).
        self.write_sizes: dict[int, Counter[int]] = {}
        self.started = self.clock.now()
        # The trace's clock file names `started`: several devices' traces then share a clock
        # (the real one is the host's CLOCK_MONOTONIC; a fake clock's origin is its own).
        self.trace = TraceWriter(config.trace, config.size, self.started) if config.trace else None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._reply_lock = threading.Lock()  # reply order = trace order = cache order
        self._write_seq = 0

    def _make_cache(self, config: DeviceConfig) -> CacheModel | None:
        if not config.cache:
            return None
        media = Store(config.size, config.file)
        return CacheModel(
            media, rng=self.rng, capacity=config.cache_size, ignore_flush=config.ignore_flush
        )

    def _make_reorder(self, config: DeviceConfig) -> ReorderGate | None:
        if config.reorder_window < 2:
            return None
        return ReorderGate(config.reorder_window, self.rng, self.clock)

    def elapsed(self) -> float:
        """Seconds since the device started."""
        return self.clock.now() - self.started

    def _begin(self, op: str, request_id: int, offset: int, length: int) -> None:
        """Inject a configured error, else wait the op's latency (zero counts as trim)."""
        if self.faults is not None:
            try:
                self.faults.check(op, request_id, offset, length)
            except DeviceError:
                with self._lock:
                    self.stats.errors_injected += 1
                raise
        if self.latency.active:
            delay = self.latency.delay(_LATENCY_OP[op], request_id, length)
            self.clock.sleep(delay)

    def _conn(self, connection: int) -> DeviceStats:
        """The counters of one connection (taken under _lock or _reply_lock: setdefault is
        atomic, so both see one object)."""
        stats = self.connection_stats.get(connection)
        if stats is None:
            stats = self.connection_stats.setdefault(connection, DeviceStats())
        return stats

    def pread(self, buf: memoryview | bytearray, offset: int, connection: int = 0) -> None:
        """Fill `buf` from `offset` after the read latency."""
        request_id = next(self._ids)
        arrival = self.elapsed()
        try:
            self._begin("read", request_id, offset, len(buf))
            self.store.read_into(buf, offset)
        finally:
            if self.reorder is not None:
                self.reorder.release(request_id)
        if self.trace is not None:  # reads carry no data but mark positions (checkpoints)
            with self._reply_lock:
                self._trace(Record(TraceOp.READ, 0, 0, offset, len(buf), request_id, 0,
                                   arrival, 0.0))  # fmt: skip
        with self._lock:
            for stats in (self.stats, self._conn(connection)):
                stats.reads += 1
                stats.bytes_read += len(buf)

    def pwrite(self, connection: int, data: memoryview | bytes, offset: int, *, fua: bool) -> None:
        """Check `data` with the oracle, wait the write latency, land it; durable if `fua`."""
        w = self.write_arrive(connection, data, offset, fua=fua)
        try:
            self._begin("write", w.request_id, offset, len(data))
            if self.reorder is not None:
                self.reorder.wait(w.request_id)
        except BaseException:
            self.write_fail(w)
            raise
        self.write_land(w)

    def write_arrive(
        self, connection: int, data: memoryview | bytes, offset: int, *, fua: bool
    ) -> ArrivedWrite:
        """A WRITE arrived: the oracle judges its payload and it joins the in-flight set."""
        self.store.check(offset, len(data))
        w = ArrivedWrite(next(self._ids), connection, offset, data, fua, self.elapsed())
        if self.corrupter is not None:
            data = w.data = self._corrupt(w)
        if self.oracle is not None:
            # tuple.__new__ builds the NamedTuple without running its Python-level __new__
            request = (w.request_id, connection, offset, len(data), fua, w.arrival)
            w.arrival_tick = self.oracle.write_arrived(_new_tuple(WriteRequest, request), data)
        with self._lock:
            self.stats.writes += 1
            self._conn(connection).writes += 1
        return w

    def _corrupt(self, w: ArrivedWrite) -> memoryview | bytes:
        """The payload as it arrives: one byte changed in flight when `corrupt-*` says so."""
        assert self.corrupter is not None
        hit = self.corrupter.corrupt(w.request_id, w.offset, w.data)
        if hit is None:
            return w.data
        with self._lock:
            self.stats.corruptions_injected += 1
            self._conn(w.connection).corruptions_injected += 1
            self.corruptions.append((w.request_id, hit[1]))
        return hit[0]

    def format_counts(self, connection: int | None = None) -> dict[str, dict[str, int]]:
        """Verdicts and blocks per format the oracle judges (empty when the oracle is off)."""
        if self.oracle is None:
            return {}
        return self.oracle.format_counts(connection)

    def write_land(self, w: ArrivedWrite) -> None:
        """The WRITE reaches the media: store, cache, trace and oracle in one order."""
        with self._reply_lock:
            reply = self.elapsed()
            self.store.write(w.offset, w.data)
            if self.cache is not None:
                self.cache.write(w.request_id, w.offset, w.data, fua=w.fua)
            elif w.fua:
                self.store.sync(w.offset, len(w.data))
            seq = self._write_seq
            self._write_seq += 1
            tick = self._oracle_reply(w, ok=True, time=reply)
            if self.trace is not None:
                flags = FLAG_FUA if w.fua else 0
                self._record(w, flags, seq, reply, tick)
            # Counted under the reply lock already held (these fields change only here).
            for stats in (self.stats, self._conn(w.connection)):
                stats.bytes_written += len(w.data)
                stats.fua_writes += w.fua
            service = self.service_times.get(w.connection)
            if service is None:
                service = self.service_times[w.connection] = array("d")
                self.write_sizes[w.connection] = Counter()
            service.append(reply - w.arrival)
            sizes = self.write_sizes[w.connection]  # a Counter: get and set cost less than +=
            sizes[len(w.data)] = sizes.get(len(w.data), 0) + 1

    def write_fail(self, w: ArrivedWrite) -> None:
        """The WRITE failed: nothing of it reaches the media; it leaves the in-flight set."""
        if self.reorder is not None:
            self.reorder.release(w.request_id)
        with self._reply_lock:
            reply = self.elapsed()
            tick = self._oracle_reply(w, ok=False, time=reply)
            if self.trace is not None:
                flags = (FLAG_FUA if w.fua else 0) | FLAG_FAILED
                self._record(w, flags, self._write_seq, reply, tick)
        with self._lock:
            self.stats.write_errors += 1
            self._conn(w.connection).write_errors += 1

    def _oracle_reply(self, w: ArrivedWrite, *, ok: bool, time: float) -> int:
        """Tell the oracle the write landed or failed (reply lock held); its tick, or 0."""
        if self.oracle is None:
            return 0
        return self.oracle.write_replied(w.request_id, ok=ok, time=time)

    def _record(self, w: ArrivedWrite, flags: int, seq: int, reply: float, tick: int) -> None:
        """Trace one WRITE with its data (reply lock held)."""
        assert self.trace is not None
        rec = Record(TraceOp.WRITE, flags, w.connection, w.offset, len(w.data), w.request_id,
                     seq, w.arrival, reply, b"", w.arrival_tick, tick)  # fmt: skip
        self.trace.record(rec, w.data)

    def flush(self, connection: int = 0) -> None:
        """Make every write replied to before this FLUSH arrived durable."""
        request_id = next(self._ids)
        arrival = self.elapsed()
        with self._reply_lock:
            covered = self._write_seq
        try:
            self._begin("flush", request_id, 0, 0)
            with self._reply_lock:
                if self.cache is not None:
                    self.cache.flush(covered)
                else:
                    self.store.sync()
                self._trace(Record(TraceOp.FLUSH, 0, connection, 0, 0, request_id, covered,
                                   arrival, 0.0))  # fmt: skip
        finally:
            if self.reorder is not None:
                self.reorder.release(request_id)
        with self._lock:
            self.stats.flushes += 1
            self._conn(connection).flushes += 1

    def trim(self, length: int, offset: int, *, fua: bool, connection: int = 0) -> None:
        """Discard a range; it reads back as zeroes."""
        self._discard(TraceOp.TRIM, length, offset, fua=fua, connection=connection)
        with self._lock:
            self.stats.trims += 1
            self._conn(connection).trims += 1

    def zero(self, length: int, offset: int, *, fua: bool, connection: int = 0) -> None:
        """Write zeroes to a range (by discarding it: the store reads holes as zeroes)."""
        self._discard(TraceOp.ZERO, length, offset, fua=fua, connection=connection)
        with self._lock:
            self.stats.zeros += 1
            self._conn(connection).zeros += 1

    def _discard(
        self, op: TraceOp, length: int, offset: int, *, fua: bool, connection: int
    ) -> None:
        request_id = next(self._ids)
        arrival = self.elapsed()
        try:
            self._begin("trim" if op == TraceOp.TRIM else "zero", request_id, offset, length)
            with self._reply_lock:
                self.store.discard(offset, length)
                if self.cache is not None:
                    self.cache.discard(offset, length)
                elif fua:
                    self.store.sync(offset, length)
                tick = self.oracle.discarded(offset, length) if self.oracle else 0
                flags = FLAG_FUA if fua else 0
                self._trace(Record(op, flags, connection, offset, length, request_id, 0,
                                   arrival, 0.0, b"", 0, tick))  # fmt: skip
        finally:
            if self.reorder is not None:
                self.reorder.release(request_id)

    def _trace(self, rec: Record) -> None:
        """Record a request without data, stamped with its reply time (reply lock held)."""
        if self.trace is not None:
            self.trace.record(replace(rec, reply=self.elapsed()))

    def connection_counts(self, connection: int) -> dict[str, int]:
        """The oracle's counts for one connection (zeroes when the oracle is off)."""
        if self.oracle is None:
            return dict.fromkeys(map(str, WRITE_VERDICTS), 0)
        return self.oracle.counts(connection)

    def counts(self) -> dict[str, int]:
        """The oracle's verdict counts (zeroes when the oracle is off)."""
        if self.oracle is None:
            return dict.fromkeys(map(str, WRITE_VERDICTS), 0)
        return self.oracle.counts()

    def close_connection(self, connection: int) -> None:
        """A client disconnected: the oracle judges the pages it left in pieces."""
        with self._reply_lock:
            now = self.elapsed()
            tick = self.oracle.connection_closed(connection, time=now) if self.oracle else 0
            self._trace(Record(TraceOp.CLOSE, 0, connection, 0, 0, 0, 0, now, 0.0, b"", 0, tick))

    def close(self) -> None:
        """Clean shutdown: a disk empties its cache on power-down; close trace and store."""
        if self.oracle is not None:
            with self._reply_lock:  # connection 0 in the trace: the device stopped
                now = self.elapsed()
                tick = self.oracle.finish(time=now)
                self._trace(Record(TraceOp.CLOSE, 0, 0, 0, 0, 0, 0, now, 0.0, b"", 0, tick))
        if self.cache is not None:
            with self._reply_lock:
                if not self.config.ignore_flush:
                    self.cache.flush(self._write_seq)
                self.cache.media.sync()
                self.cache.close()
        if self.trace is not None:
            self.trace.close()
        self.store.close()


def service_percentiles(times: array[float] | None) -> dict[str, float | int | None]:
    """p50/p99/p999/max of WRITE service times in milliseconds, and how many there were."""
    if not times:
        return {"count": 0, "p50": None, "p99": None, "p999": None, "max": None}
    ordered = sorted(times)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 4)

    return {"count": len(ordered), "p50": at(0.5), "p99": at(0.99), "p999": at(0.999),
            "max": round(ordered[-1] * 1e3, 4)}  # fmt: skip
