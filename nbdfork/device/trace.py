"""Request traces: record every request to a compact file; replay it; export dm-log-writes.

Format (little-endian): the 16-byte header b"NBDFTRC1", u32 version (2), u32 sector size
(512), then u64 the device size; then one record per request in the order requests reached
the media (reply order): a 64-byte head (op u8, flags u8, connection u16, length u32,
offset u64, request_id u64, seq u64, arrival f64, reply f64, arrival_tick u64, tick u64)
followed, for every WRITE (a failed one too: the oracle judged its payload on arrival), by
its `length` bytes of data. `seq` is the
write's reply sequence number; for a FLUSH it is the number of writes replied before the FLUSH
arrived, which is exactly what the FLUSH makes durable. `arrival_tick` and `tick` place the
write's arrival and its landing in the oracle's history (0 when the oracle was off), so that
`nbdfork verify --trace` gives the verdicts the live oracle gave. A CLOSE record marks a client
disconnecting. Each record is one os.writev(), so a killed server leaves whole records behind.
The file is created 0600 without following a link; an existing file is replaced only if it is
empty or a trace (nbdfork.files.create_replacing).

Record times are seconds since the device started. Beside the trace, `TRACE.clock` (JSON,
written once when the trace is created) names that start on the host's CLOCK_MONOTONIC, which
every process on the machine shares: origin + time puts the records of several devices (one
nbdkit each, a storage stack's members) on one clock (`read_clock_origin`).
"""

from __future__ import annotations

import enum
import json
import math
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nbdfork.config import MAX_SIZE
from nbdfork.device.cache import CacheModel
from nbdfork.device.store import Store
from nbdfork.errors import OracleError
from nbdfork.files import create_replacing, open_regular, read_bounded, write_json

__all__ = [
    "FLAG_FAILED",
    "FLAG_FUA",
    "Op",
    "Record",
    "TraceWriter",
    "apply_record",
    "clock_path",
    "export_log_writes",
    "is_trace_file",
    "read_clock_origin",
    "read_trace",
    "trace_device_size",
    "replay",
    "replay_cache",
]

MAGIC = b"NBDFTRC1\x02\x00\x00\x00\x00\x02\x00\x00"  # magic, version 2, sector size 512
_HEAD = struct.Struct("<BBHIQQQddQQ")
_SIZE = struct.Struct("<Q")  # the device size, right after the 16-byte header
_HEADER = len(MAGIC) + _SIZE.size
_VERSION = struct.Struct("<II")  # version and sector size, after the 8-byte magic
FLAG_FUA = 1
FLAG_FAILED = 2
_FLAGS = FLAG_FUA | FLAG_FAILED
_MAX_WRITE = 64 << 20  # nbdkit's largest request (MAX_REQUEST_SIZE): a longer write is forged


class Op(enum.IntEnum):
    """Request types in a trace."""

    READ = 1
    WRITE = 2
    FLUSH = 3
    TRIM = 4
    ZERO = 5
    CLOSE = 6


@dataclass(frozen=True, slots=True)
class Record:
    """One request as recorded; `data` only for successful writes."""

    op: Op
    flags: int
    connection: int
    offset: int
    length: int
    request_id: int
    seq: int
    arrival: float
    reply: float
    data: bytes = b""
    arrival_tick: int = 0
    tick: int = 0

    @property
    def fua(self) -> bool:
        """The request carried FUA."""
        return bool(self.flags & FLAG_FUA)

    @property
    def failed(self) -> bool:
        """The device answered with an error: nothing of it is durable."""
        return bool(self.flags & FLAG_FAILED)


class TraceWriter:
    """Appends records to a trace file; thread-safe, each record written whole."""

    def __init__(self, path: Path, size: int, origin: float | None = None) -> None:
        self.path = path
        self._fd = create_replacing("trace", path, may_replace=is_trace_file, mode=0o600)
        os.write(self._fd, MAGIC + _SIZE.pack(size))
        if origin is not None:  # the device's start on the host's monotonic clock
            write_json(clock_path(path), {"clock": "CLOCK_MONOTONIC", "origin": origin})
        self._lock = threading.Lock()
        self.records = 0

    def record(self, rec: Record, data: bytes | memoryview = b"") -> None:
        """Append `rec` (with `data` for a successful write)."""
        head = _HEAD.pack(
            rec.op, rec.flags, rec.connection, rec.length, rec.offset, rec.request_id,
            rec.seq, rec.arrival, rec.reply, rec.arrival_tick, rec.tick,
        )  # fmt: skip
        with self._lock:
            os.writev(self._fd, [head, data] if len(data) else [head])
            self.records += 1

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


def clock_path(trace: Path) -> Path:
    """Where the clock origin of the trace at `trace` is kept: `TRACE.clock`."""
    return trace.with_name(trace.name + ".clock")


def read_clock_origin(trace: Path) -> float:
    """The host CLOCK_MONOTONIC reading at which the trace's times are 0; OracleError when the
    trace has no readable clock file (one recorded by an older nbdfork, or in another VM)."""
    path = clock_path(trace)
    try:
        data = json.loads(read_bounded(path, 4096, OracleError))
    except (OracleError, ValueError) as exc:
        raise OracleError(f"{path}: no clock origin for {trace.name} ({exc})") from None
    if not isinstance(data, dict) or data.get("clock") != "CLOCK_MONOTONIC":
        raise OracleError(f"{path}: not a CLOCK_MONOTONIC origin")
    origin = data.get("origin")
    if not isinstance(origin, float) or not math.isfinite(origin):
        raise OracleError(f"{path}: not a CLOCK_MONOTONIC origin")
    return origin


def is_trace_file(path: Path) -> bool:
    """`path` is empty or starts as a trace: a file trace= may replace (nothing else is)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        head = os.read(fd, 8)
    except OSError:
        return False
    finally:
        os.close(fd)
    return head in (b"", MAGIC[:8])  # any version


def read_trace(path: Path) -> Iterator[Record]:
    """The records of a trace file, in reply order; a bad file raises OracleError naming what
    is wrong (a cut or forged header, an unknown op, a record off the device). Only a regular
    file is read: a FIFO or a device is refused without blocking."""
    with _open(path) as handle:
        size = _header(path, handle)
        yield from _records(path, handle, size)


def trace_device_size(path: Path) -> int:
    """The size of the device that recorded the trace at `path`, from its header."""
    with _open(path) as handle:
        return _header(path, handle)


def _open(path: Path) -> BinaryIO:
    return open_regular(path, OracleError)


def _header(path: Path, handle: BinaryIO) -> int:
    """Check the header and return the device size it names."""
    header = handle.read(_HEADER)
    if not header:
        raise OracleError(f"{path}: empty file, not an nbdfork trace")
    if header[:8] != MAGIC[: min(8, len(header))]:
        raise OracleError(f"{path}: not an nbdfork trace (bad magic)")
    if len(header) < _HEADER:
        raise OracleError(f"{path}: trace header cut short ({len(header)} of {_HEADER} bytes)")
    version, sector = _VERSION.unpack_from(header, 8)
    if version != 2:
        raise OracleError(f"{path}: trace format version {version}; this nbdfork reads 2")
    if sector != 512:
        raise OracleError(f"{path}: trace sector size {sector}; this nbdfork reads 512")
    size: int = _SIZE.unpack_from(header, len(MAGIC))[0]
    if not 0 < size <= MAX_SIZE or size % 512:
        raise OracleError(f"{path}: trace device size {size} is not a multiple of 512 "
                          "from 512 to 64T")  # fmt: skip
    return size


def _records(path: Path, handle: BinaryIO, size: int) -> Iterator[Record]:
    index = 0
    while head := handle.read(_HEAD.size):
        if len(head) < _HEAD.size:
            raise OracleError(f"{path}: record {index} is cut short")
        fields = _HEAD.unpack(head)
        op, flags, conn, length, offset, rid, seq, arrival, reply, atick, tick = fields
        problem = _check_head(fields, size)
        if problem:
            raise OracleError(f"{path}: record {index} {problem}")
        has_data = op == Op.WRITE
        data = handle.read(length) if has_data else b""
        if len(data) < (length if has_data else 0):
            raise OracleError(f"{path}: record {index} data is cut short")
        yield Record(
            Op(op), flags, conn, offset, length, rid, seq, arrival, reply, data, atick, tick
        )
        index += 1


_OPS = frozenset(Op)


def _check_head(fields: tuple[Any, ...], size: int) -> str | None:
    """What is wrong with a record head (its unpacked fields) that the device could not have
    written, or None."""
    op, flags, _, length, offset, _, _, arrival, reply, _, _ = fields
    if op not in _OPS:
        return f"has an unknown op code {op}"
    if flags & ~_FLAGS:
        return f"has unknown flags {flags:#x}"
    if op == Op.WRITE and length > _MAX_WRITE:
        return f"is a write of {length} bytes, more than nbdkit's largest request (64M)"
    if offset + length > size:
        return f"covers {offset}+{length}, beyond the device size {size}"
    if not (math.isfinite(arrival) and math.isfinite(reply)):
        return "has a time that is not a finite number"
    return None


def replay(path: Path, image: Store, *, until: int | None = None) -> int:
    """Apply the trace's writes/trims/zeroes to `image` in reply order, up to record `until`
    (exclusive); returns the number of records read. This is dm-log-writes' replay: the
    image is what the device's media would hold with no volatile cache."""
    count = 0
    for rec in read_trace(path):
        if until is not None and count >= until:
            break
        count += 1
        if rec.failed:
            continue
        if rec.op == Op.WRITE:
            image.write(rec.offset, rec.data)
        elif rec.op in (Op.TRIM, Op.ZERO):
            image.discard(rec.offset, rec.length)
    return count


def replay_cache(path: Path, cache: CacheModel, *, until: int | None = None) -> Iterator[Record]:
    """Feed the trace through a volatile-cache model, yielding each record after applying it;
    the caller may stop anywhere and take crash states of `cache` at that point."""
    for count, rec in enumerate(read_trace(path)):
        if until is not None and count >= until:
            return
        if not rec.failed:
            apply_record(cache, rec)
        yield rec


def apply_record(cache: CacheModel, rec: Record) -> None:
    """One record's effect on a volatile-cache model (a failed request has none: skip it)."""
    if rec.op == Op.WRITE:
        cache.write(rec.request_id, rec.offset, rec.data, fua=rec.fua)
    elif rec.op == Op.FLUSH:
        cache.flush(rec.seq)
    elif rec.op in (Op.TRIM, Op.ZERO):
        cache.discard(rec.offset, rec.length)


# dm-log-writes (drivers/md/dm-log-writes.c; xfstests src/log-writes): a super block in
# sector 0, then per entry one sector holding {sector, nr_sectors, flags, data_len} and the
# data in whole sectors. We write 512-byte sectors so nr_sectors means the same to all readers.
_LOG_MAGIC = 0x6A736677736872
_LOG_SUPER = struct.Struct("<QQQI")
_LOG_ENTRY = struct.Struct("<QQQQ")
_LOG_FLUSH, _LOG_FUA, _LOG_DISCARD = 1, 2, 4


def export_log_writes(path: Path, out: Path) -> int:
    """Write the trace as a dm-log-writes log that xfstests' replay-log reads; returns the
    number of entries. WRITE -> data entry (+FUA flag), FLUSH -> flush entry, TRIM/ZERO ->
    discard entry; reads and failed requests are left out."""
    entries = 0
    with out.open("wb") as log:
        log.write(bytes(512))
        for rec in read_trace(path):
            entry = _log_entry(rec)
            if entry is not None:
                log.write(entry)
                entries += 1
        log.seek(0)
        log.write(_LOG_SUPER.pack(_LOG_MAGIC, 1, entries, 512))
    return entries


def _log_entry(rec: Record) -> bytes | None:
    if rec.failed or rec.op in (Op.READ, Op.CLOSE):
        return None
    if rec.op == Op.FLUSH:
        return _pad(_LOG_ENTRY.pack(0, 0, _LOG_FLUSH, 0))
    if rec.op in (Op.TRIM, Op.ZERO):
        return _pad(_LOG_ENTRY.pack(rec.offset // 512, rec.length // 512, _LOG_DISCARD, 0))
    flags = _LOG_FUA if rec.fua else 0
    head = _pad(_LOG_ENTRY.pack(rec.offset // 512, len(rec.data) // 512, flags, 0))
    return head + _pad(rec.data)


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)
