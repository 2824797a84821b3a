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
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from nbdfork.oracle.stamp import PAGE_SIZE, SECTOR_SIZE, Buffer, PagesDecode, decode_pages

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


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One NBD WRITE as the device saw it arrive."""

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


@dataclass(frozen=True, slots=True)
class InFlight:
    """A WRITE that arrived and has not been replied to, with the VALID pages it carries."""

    req: WriteRequest
    valid: tuple[tuple[PageKey, int], ...]  # ((lba, stream, page), generation)


def aligned_window(offset: int, length: int) -> tuple[int, int]:
    """(start, end) byte offsets of the device-aligned 4096-byte pages fully inside a write."""
    start = -(-offset // PAGE_SIZE) * PAGE_SIZE
    end = (offset + length) // PAGE_SIZE * PAGE_SIZE
    return start, max(start, end)


def _where(req: WriteRequest) -> Event:
    """The fields every verdict on `req` carries."""
    return {"time": req.time, "connection": req.connection, "request_id": req.request_id}


def validate_torn(req: WriteRequest, decoded: PagesDecode) -> list[Event]:
    """One torn_write event per TORN page in the write's decoded payload."""
    events: list[Event] = []
    for offset, d in decoded.torn_pages():
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


def _decode(req: WriteRequest, data: Buffer) -> PagesDecode:
    """Decode the aligned pages of a WRITE payload."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size != req.length:
        raise ValueError(f"write {req.request_id}: payload {raw.size} bytes, length {req.length}")
    start, end = aligned_window(req.offset, req.length)
    return decode_pages(raw[start - req.offset : end - req.offset], base_offset=start)


def _valid_keys(decoded: PagesDecode) -> tuple[tuple[PageKey, int], ...]:
    """((lba, stream, page), generation) of each VALID page."""
    return tuple(
        ((s.offset // SECTOR_SIZE, s.stream, s.page), s.generation) for s in decoded.valid_pages()
    )


class Oracle:
    """Judges every WRITE: call write_arrived on arrival and write_replied on reply."""

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._in_flight: dict[int, InFlight] = {}
        self._replied: dict[PageKey, int] = {}
        self._counts: Counter[str] = Counter({name: 0 for name in COUNTED})

    def write_arrived(self, req: WriteRequest, data: Buffer) -> None:
        """Decode the payload, emit its verdicts and register it as in flight."""
        decoded = _decode(req, data)  # outside the lock: pure and the costly part
        valid = _valid_keys(decoded) if decoded.stamped_count else ()
        with self._lock:
            if req.request_id in self._in_flight:
                raise ValueError(f"write {req.request_id} is already in flight")
            others = (f.req for f in self._in_flight.values())
            events = validate_overlap(req, others) + validate_torn(req, decoded)
            stale = validate_stale(req, valid, self._replied)
            events += stale
            if stale:  # reported once: not again when this copy lands
                valid = tuple(v for v in valid if v[1] >= self._replied.get(v[0], -1))
            self._in_flight[req.request_id] = InFlight(req, valid)
            self._count(decoded, events)
        self._emit(events)

    def write_replied(self, request_id: int, *, ok: bool, time: float) -> None:
        """The device replied: on success, its VALID pages' generations become the replied ones.

        `time` is accepted for symmetry with write_arrived and future verdicts; a reply to an
        unknown request is counted as `unknown_replies` and otherwise ignored.
        """
        events: list[Event] = []
        with self._lock:
            flight = self._in_flight.pop(request_id, None)
            if flight is None:
                self._counts["unknown_replies"] += 1
            elif not ok:
                self._counts["failed_writes"] += 1
            else:
                reply = replace(flight.req, time=time)
                events = validate_stale(reply, flight.valid, self._replied, phase="reply")
                self._count_events(events)
                self._advance(flight.valid)
        self._emit(events)

    def counts(self) -> dict[str, int]:
        """Events per verdict, plus writes, stamped/valid/torn pages, failed writes."""
        with self._lock:
            return dict(self._counts)

    def in_flight(self) -> list[WriteRequest]:
        """The WRITEs arrived and not yet replied to, in arrival order."""
        with self._lock:
            return [f.req for f in self._in_flight.values()]

    def _advance(self, valid: Iterable[tuple[PageKey, int]]) -> None:
        """Raise each key's replied generation to `gen` if newer (lock held)."""
        replied = self._replied
        for key, gen in valid:
            if gen > replied.get(key, -1):
                replied[key] = gen

    def _count(self, decoded: PagesDecode, events: list[Event]) -> None:
        """Account one WRITE and its events (lock held)."""
        c = self._counts
        c["writes"] += 1
        c["stamped_pages"] += decoded.stamped_count
        c["valid_pages"] += decoded.valid_count
        c["torn_pages"] += decoded.torn_count
        self._count_events(events)

    def _count_events(self, events: list[Event]) -> None:
        """Count verdicts by kind (lock held)."""
        for e in events:
            self._counts[str(e["event"])] += 1

    def _emit(self, events: list[Event]) -> None:
        """Hand the events to the sink, in order."""
        for e in events:
            self._sink.emit(e)
