"""The verdict engine: every WRITE on arrival and on reply -> torn, stale and overlapping events.

Synchronous and thread-safe (one lock); no nbdkit import, so the plugin, a trace replay and the
tests drive the same code. Pages are tracked per (lba, stream, page), never per lba alone, so
journal copies, reflinks and several streams sharing a block are legal. The pure checkers
`validate_torn`, `validate_stale` and `validate_overlap` return the events a WRITE deserves.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import NamedTuple, Protocol

import numpy as np

from nbdfork.oracle.stamp import (
    NO_STAMPS,
    PAGE_SIZE,
    SECTOR_SIZE,
    Buffer,
    PageDecode,
    Stamps,
    find_stamps,
)

__all__ = [
    "Event",
    "EventSink",
    "InFlight",
    "Oracle",
    "PageKey",
    "WriteRequest",
    "aligned_window",
    "validate_overlap",
    "validate_stale",
    "validate_torn",
]

Event = dict[str, object]
"""One verdict: JSON-serialisable, its kind in the key `event`."""

PageKey = tuple[int, int, int]
"""(lba, stream, page): where the oracle tracks replied generations."""

COUNTED = (
    "torn_write", "stale_write", "overlapping_write",
    "writes", "stamped_pages", "valid_pages", "torn_pages", "failed_writes", "unknown_replies",
)  # fmt: skip
"""The keys of Oracle.counts(): events per verdict, then per-write and per-page tallies."""


class WriteRequest(NamedTuple):
    """One NBD WRITE as the device saw it arrive (a NamedTuple: one is built per WRITE)."""

    request_id: int
    connection: int
    offset: int  # bytes
    length: int  # bytes
    fua: bool
    time: float  # seconds since the device started

    @property
    def first_sector(self) -> int:
        """The first 512-byte sector the write touches."""
        return self.offset // SECTOR_SIZE

    @property
    def end_sector(self) -> int:
        """One past the last 512-byte sector the write touches."""
        return -(-(self.offset + self.length) // SECTOR_SIZE)


class EventSink(Protocol):
    """Where verdicts go (an EventLog, a list in tests)."""

    def emit(self, event: Mapping[str, object]) -> None: ...


class InFlight(NamedTuple):
    """A WRITE that arrived and has not been replied to, with the VALID pages it carries."""

    req: WriteRequest
    valid: tuple[tuple[PageKey, int], ...]  # ((lba, stream, page), generation)
    first_sector: int  # req.first_sector, kept for the overlap scan on every arrival
    end_sector: int


def aligned_window(offset: int, length: int) -> tuple[int, int]:
    """(start, end) byte offsets of the device-aligned 4096-byte pages fully inside a write."""
    start = -(-offset // PAGE_SIZE) * PAGE_SIZE
    end = (offset + length) // PAGE_SIZE * PAGE_SIZE
    return start, max(start, end)


def _where(req: WriteRequest) -> Event:
    """The fields every verdict on `req` carries."""
    return {"time": req.time, "connection": req.connection, "request_id": req.request_id}


def validate_torn(req: WriteRequest, torn: Iterable[tuple[int, PageDecode]]) -> list[Event]:
    """One torn_write event per TORN page of the write, given as (device offset, decode)."""
    events: list[Event] = []
    for offset, d in torn:
        gens = sorted({g for g in d.sector_generations if g is not None})
        events.append({
            "event": "torn_write", "offset": offset, "lba": offset // SECTOR_SIZE,
            "length": PAGE_SIZE, "write_offset": req.offset, "write_length": req.length,
            "stream": d.stream, "page": d.page, "generations": gens,
            "sector_map": list(d.sector_generations), "first_mismatch": d.first_mismatch,
            "crc_ok": d.crc_ok, **_where(req),
        })  # fmt: skip
    return events


def validate_stale(
    req: WriteRequest,
    valid: Iterable[tuple[PageKey, int]],
    replied: Mapping[PageKey, int],
    *,
    phase: str = "arrival",
) -> list[Event]:
    """A stale_write event per VALID page older than the generation replied at its key.

    phase "arrival": the older copy was sent after the newer one was acknowledged.
    phase "reply": the older copy reached the media after the newer one (two copies were in
    flight together and completed out of order) and now stands on the device.
    """
    events: list[Event] = []
    for (lba, stream, page), gen in valid:
        newer = replied.get((lba, stream, page))
        if newer is not None and gen < newer:
            events.append({
                "event": "stale_write", "offset": lba * SECTOR_SIZE, "lba": lba,
                "length": PAGE_SIZE, "stream": stream, "page": page, "generation": gen,
                "replied_generation": newer, "generations": [gen, newer], "phase": phase,
                **_where(req),
            })  # fmt: skip
    return events


def validate_overlap(req: WriteRequest, in_flight: Iterable[WriteRequest]) -> list[Event]:
    """An overlapping_write event per in-flight WRITE sharing a 512-byte sector with `req`."""
    events: list[Event] = []
    for other in in_flight:
        start = max(req.first_sector, other.first_sector)
        end = min(req.end_sector, other.end_sector)
        if start < end:
            events.append({
                "event": "overlapping_write", "offset": start * SECTOR_SIZE, "lba": start,
                "length": (end - start) * SECTOR_SIZE, "request_id": req.request_id,
                "other_request_id": other.request_id, "connection": req.connection,
                "other_connection": other.connection, "time": req.time,
            })  # fmt: skip
    return events


def _stamps(req: WriteRequest, data: Buffer) -> Stamps:
    """The stamped pages among the device-aligned pages of a WRITE payload."""
    offset, length = req.offset, req.length
    if len(data) != length:
        raise ValueError(f"write {req.request_id}: payload {len(data)} bytes, length {length}")
    if not (offset | length) % PAGE_SIZE:  # the usual aligned WRITE: no slicing
        return find_stamps(data, base_offset=offset) if length else NO_STAMPS
    start, end = aligned_window(offset, length)
    if end == start:
        return NO_STAMPS
    raw = np.frombuffer(data, dtype=np.uint8)
    return find_stamps(raw[start - offset : end - offset], base_offset=start)


_new_tuple = tuple.__new__


def _valid_keys(stamps: Stamps) -> tuple[tuple[PageKey, int], ...]:
    """((lba, stream, page), generation) of each VALID page (transposed: no per-page frame)."""
    offsets, streams, pages, gens = zip(*stamps.valid, strict=True)
    lbas = [o // SECTOR_SIZE for o in offsets]
    return tuple(zip(zip(lbas, streams, pages, strict=True), gens, strict=True))


class Oracle:
    """Judges every WRITE: call write_arrived on arrival and write_replied on reply.

    Runs on every WRITE the device serves, so the common case — an unstamped or VALID payload
    with nothing in flight beside it — takes one lock, no event and no per-page object.
    """

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._in_flight: dict[int, InFlight] = {}
        self._replied: dict[PageKey, int] = {}
        self._counts: Counter[str] = Counter({name: 0 for name in COUNTED})
        self._writes = self._stamped = self._valid = 0  # per-WRITE tallies, kept out of _counts

    def write_arrived(self, req: WriteRequest, data: Buffer) -> None:
        """Decode the payload, emit its verdicts and register it as in flight."""
        offset, length = req.offset, req.length
        if length == len(data) == PAGE_SIZE and not offset % PAGE_SIZE:  # the usual WRITE
            stamps = find_stamps(data, base_offset=offset)  # outside the lock: pure
        else:
            stamps = _stamps(req, data)
        valid = _valid_keys(stamps) if stamps.valid else ()
        first, end = offset // SECTOR_SIZE, -(-(offset + length) // SECTOR_SIZE)
        events: list[Event] = []
        with self._lock:
            in_flight = self._in_flight
            if req.request_id in in_flight:
                raise ValueError(f"write {req.request_id} is already in flight")
            others = [o for o, _, a, b in in_flight.values() if a < end and first < b]
            if others:
                events += validate_overlap(req, others)
            if stamps.torn:
                events += validate_torn(req, stamps.torn)
            if valid:
                stale = validate_stale(req, valid, self._replied)
                if stale:  # reported once: not again when this copy lands
                    events += stale
                    valid = tuple(v for v in valid if v[1] >= self._replied.get(v[0], -1))
            # tuple.__new__ builds the NamedTuple without running its Python-level __new__
            in_flight[req.request_id] = _new_tuple(InFlight, (req, valid, first, end))
            self._writes += 1
            if stamps.stamped:
                self._stamped += stamps.stamped
                self._valid += len(stamps.valid)
                self._counts["torn_pages"] += len(stamps.torn)
            if events:
                self._count_events(events)
        if events:
            self._emit(events)

    def write_replied(self, request_id: int, *, ok: bool, time: float) -> None:
        """The device replied: on success, its VALID pages' generations become the replied ones.

        `time` is accepted for symmetry with write_arrived and future verdicts; a reply to an
        unknown request is counted as `unknown_replies` and otherwise ignored.
        """
        with self._lock:
            flight = self._in_flight.pop(request_id, None)
            if flight is None:
                self._counts["unknown_replies"] += 1
                return
            if not ok:
                self._counts["failed_writes"] += 1
                return
            if not flight.valid:
                return
            replied = self._replied
            late: list[tuple[PageKey, int]] = []
            for key, gen in flight.valid:  # keys are distinct: one lba per page of a write
                newer = replied.get(key, -1)
                if gen > newer:
                    replied[key] = gen
                elif gen < newer:
                    late.append((key, gen))
            if not late:
                return
            reply = flight.req._replace(time=time)  # built only when there is a verdict
            events = validate_stale(reply, late, replied, phase="reply")
            self._count_events(events)
        self._emit(events)

    def counts(self) -> dict[str, int]:
        """Events per verdict, plus writes, stamped/valid/torn pages, failed writes."""
        with self._lock:
            counts = dict(self._counts)
            counts.update(writes=self._writes, stamped_pages=self._stamped)
            counts["valid_pages"] = self._valid
        return counts

    def in_flight(self) -> list[WriteRequest]:
        """The WRITEs arrived and not yet replied to, in arrival order."""
        with self._lock:
            return [f.req for f in self._in_flight.values()]

    def _count_events(self, events: list[Event]) -> None:
        """Count verdicts by kind (lock held)."""
        for e in events:
            self._counts[str(e["event"])] += 1

    def _emit(self, events: list[Event]) -> None:
        """Hand the events to the sink, in order."""
        for e in events:
            self._sink.emit(e)
