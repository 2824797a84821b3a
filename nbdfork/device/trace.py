"""Request traces: record every request to a compact file; replay it; export dm-log-writes.

Format (little-endian): the 16-byte header b"NBDFTRC1", u32 version (1), u32 sector size
(512); then one record per request in reply order: a 48-byte head
(op u8, flags u8, connection u16, length u32, offset u64, request_id u64, seq u64,
arrival f64, reply f64) followed, for a successful WRITE, by its `length` bytes of data.
`seq` is the write's reply sequence number; for a FLUSH it is the number of writes replied
before the FLUSH arrived, which is exactly what the FLUSH makes durable. Each record is one
os.writev(), so a killed server leaves whole records behind.
"""

from __future__ import annotations

import enum
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nbdfork.device.cache import CacheModel
from nbdfork.device.store import Store
from nbdfork.errors import OracleError

__all__ = [
    "FLAG_FAILED",
    "FLAG_FUA",
    "Op",
    "Record",
    "TraceWriter",
    "export_log_writes",
    "read_trace",
    "replay",
    "replay_cache",
]

MAGIC = b"NBDFTRC1\x01\x00\x00\x00\x00\x02\x00\x00"  # magic, version 1, sector size 512
_HEAD = struct.Struct("<BBHIQQQdd")
FLAG_FUA = 1
FLAG_FAILED = 2


class Op(enum.IntEnum):
    """Request types in a trace."""

    READ = 1
    WRITE = 2
    FLUSH = 3
    TRIM = 4
    ZERO = 5


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

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        os.write(self._fd, MAGIC)
        self._lock = threading.Lock()
        self.records = 0

    def record(self, rec: Record, data: bytes | memoryview = b"") -> None:
        """Append `rec` (with `data` for a successful write)."""
        head = _HEAD.pack(
            rec.op, rec.flags, rec.connection, rec.length, rec.offset, rec.request_id,
            rec.seq, rec.arrival, rec.reply,
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


def read_trace(path: Path) -> Iterator[Record]:
    """The records of a trace file, in reply order; a bad file raises OracleError."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise OracleError(f"{path}: cannot read trace: {exc.strerror}") from None
    with handle:
        if handle.read(len(MAGIC)) != MAGIC:
            raise OracleError(f"{path}: not an nbdfork trace (bad magic)")
        yield from _records(path, handle)


def _records(path: Path, handle: BinaryIO) -> Iterator[Record]:
    index = 0
    while head := handle.read(_HEAD.size):
        if len(head) < _HEAD.size:
            raise OracleError(f"{path}: record {index} is cut short")
        op, flags, conn, length, offset, rid, seq, arrival, reply = _HEAD.unpack(head)
        has_data = op == Op.WRITE and not flags & FLAG_FAILED
        data = handle.read(length) if has_data else b""
        if len(data) < (length if has_data else 0):
            raise OracleError(f"{path}: record {index} data is cut short")
        yield Record(Op(op), flags, conn, offset, length, rid, seq, arrival, reply, data)
        index += 1


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
            _apply(cache, rec)
        yield rec


def _apply(cache: CacheModel, rec: Record) -> None:
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
    if rec.failed or rec.op == Op.READ:
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
