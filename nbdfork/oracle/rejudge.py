"""Re-judge a recorded trace offline with the live oracle's code: the same verdicts, again.

A trace (device `trace=PATH`) holds every WRITE with its payload, in the order writes reached
the media, and the oracle's *ticks*: where each write's arrival and landing fell in the
oracle's one history. Replaying the arrivals, landings, trims and disconnects in tick order
against a fresh media image gives the oracle exactly the states it saw live, so the events
are the live events. A trace recorded with the oracle off has no ticks: arrivals are then
placed by arrival time, which can differ from the live order for writes that raced.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from nbdfork.device.store import Store
from nbdfork.device.trace import Op, Record, read_trace, trace_device_size
from nbdfork.errors import OracleError
from nbdfork.oracle.verify import EventSink, Oracle, WriteRequest

__all__ = ["Rejudged", "rejudge_trace"]


@dataclass(frozen=True, slots=True)
class Rejudged:
    """What an offline judgement saw: records, writes and the oracle's counts."""

    records: int
    writes: int
    counts: dict[str, int]
    ticked: bool  # the trace carried the live oracle's ticks (verdicts are then exact)


# Step kinds, ordered so that without ticks an arrival precedes a landing of the same time.
_ARRIVE, _LAND, _DISCARD, _CLOSE = 0, 1, 2, 3


def _steps(records: list[Record], ticked: bool) -> Iterator[tuple[int, Record]]:
    """(kind, record) in the oracle's order: by tick, else arrivals by time among landings."""
    keyed: list[tuple[float, int, int, Record]] = []
    for position, rec in enumerate(records):
        if rec.op == Op.WRITE:
            arrive = rec.arrival_tick if ticked else rec.arrival
            land = rec.tick if ticked else position + 0.5
            keyed.append((arrive, _ARRIVE, rec.request_id, rec))
            keyed.append((land, _LAND, rec.request_id, rec))
        elif rec.op in (Op.TRIM, Op.ZERO):
            keyed.append((rec.tick if ticked else position + 0.5, _DISCARD, 0, rec))
        elif rec.op == Op.CLOSE:
            keyed.append((rec.tick if ticked else position + 0.5, _CLOSE, 0, rec))
    if not ticked:  # landings keep trace order; arrivals go by their recorded time
        keyed = _untimed(keyed)
    keyed.sort(key=lambda k: (k[0], k[1], k[2]))
    for _, kind, _, rec in keyed:
        yield kind, rec


def _untimed(keyed: list[tuple[float, int, int, Record]]) -> list[tuple[float, int, int, Record]]:
    """Without ticks, put each arrival before the first landing recorded after its time."""
    landings = sorted((k for k in keyed if k[1] != _ARRIVE), key=lambda k: k[0])
    times = sorted(k[3].reply if k[1] == _LAND else k[3].arrival for k in landings)
    out = [(float(i), k[1], k[2], k[3]) for i, k in enumerate(landings)]
    for k in keyed:
        if k[1] == _ARRIVE:  # after every landing recorded before it arrived
            out.append((bisect.bisect_left(times, k[3].arrival) - 0.5, _ARRIVE, k[2], k[3]))
    return out


def rejudge_trace(
    path: Path, sink: EventSink, formats: Sequence[str] = ("stamp",)
) -> Rejudged:
    """Judge the trace at `path` with a fresh Oracle for `formats` (those the live device
    judged), sending its events to `sink`."""
    records = list(read_trace(path))
    _check_ids(path, records)
    ticked = any(r.tick for r in records)
    media = Store(trace_device_size(path))
    oracle = Oracle(sink, media, formats)
    try:
        for kind, rec in _steps(records, ticked):
            _apply(oracle, media, kind, rec)
        if not any(r.op == Op.CLOSE and r.connection == 0 for r in records):  # killed server
            oracle.finish(time=max((r.reply for r in records), default=0.0))
    finally:
        media.close()
    writes = sum(1 for r in records if r.op == Op.WRITE)
    return Rejudged(len(records), writes, oracle.counts(), ticked)


def _check_ids(path: Path, records: list[Record]) -> None:
    """The device numbers its requests once each: a repeated WRITE id is a forged trace."""
    seen: set[int] = set()
    for index, rec in enumerate(records):
        if rec.op != Op.WRITE:
            continue
        if rec.request_id in seen:
            raise OracleError(f"{path}: record {index} repeats the request id "
                              f"{rec.request_id} of an earlier write")  # fmt: skip
        seen.add(rec.request_id)


def _apply(oracle: Oracle, media: Store, kind: int, rec: Record) -> None:
    """One step of the history: the same calls, in the same order, as the live device."""
    if kind == _ARRIVE:
        req = WriteRequest(rec.request_id, rec.connection, rec.offset, rec.length, rec.fua,
                           rec.arrival)  # fmt: skip
        oracle.write_arrived(req, rec.data)
    elif kind == _LAND:
        if not rec.failed:
            media.write(rec.offset, rec.data)
        oracle.write_replied(rec.request_id, ok=not rec.failed, time=rec.reply)
    elif kind == _DISCARD:
        media.discard(rec.offset, rec.length)
        oracle.discarded(rec.offset, rec.length)
    elif rec.connection:
        oracle.connection_closed(rec.connection, time=rec.arrival)
    else:  # connection 0: the device stopped
        oracle.finish(time=rec.arrival)
