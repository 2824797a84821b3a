"""The verdict engine: every WRITE on arrival and on reply -> torn, stale and overlapping events.

Synchronous and thread-safe (one lock); no nbdkit import, so the plugin, a trace replay and the
tests drive the same code. Pages are tracked per (lba, stream, page), never per lba alone, so
journal copies, reflinks and several streams sharing a block are legal. The pure checkers
`validate_torn`, `validate_stale` and `validate_overlap` return the events a WRITE deserves.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, NamedTuple, Protocol

from nbdfork.device.requests import Media, WriteRequest
from nbdfork.errors import ConfigError
from nbdfork.oracle.blocks import BLOCK_COUNTS, FormatJudge, covering
from nbdfork.oracle.formats import FORMATS, FormatBlock
from nbdfork.oracle.layers import Layers
from nbdfork.oracle.stamp import (
    NO_STAMPS,
    NOTHING,
    PAGE_SIZE,
    SECTOR_SIZE,
    SECTORS_PER_PAGE,
    Buffer,
    Found,
    PageDecode,
    PageStatus,
    Piece,
    Stamps,
    decode_page,
    find_pages,
    sector_generations,
)
from nbdfork.verdicts import WRITE_VERDICTS, Verdict

__all__ = [
    "FORMAT_NAMES",
    "Event",
    "EventSink",
    "InFlight",
    "Oracle",
    "PageKey",
    "WriteRequest",
    "Media",
    "validate_overlap",
    "validate_stale",
    "judge",
    "validate_torn",
]

Event = dict[str, object]
"""One verdict: JSON-serialisable, its kind in the key `event`."""

PageKey = tuple[int, int, int]
"""(lba, stream, page): where the oracle tracks replied generations."""

COUNTED = (
    *map(str, WRITE_VERDICTS),
    "writes", "stamped_pages", "valid_pages", "torn_pages", "failed_writes", "unknown_replies",
    "incomplete_pages", "layer_journal_writes",
)  # fmt: skip
"""The keys of Oracle.counts(): events per verdict, then per-write and per-page tallies."""

STAMP: Final = "stamp"
FORMAT_NAMES: Final = (STAMP, *sorted(FORMATS))
"""Every name `formats=` takes: the stamp and each format of nbdfork.oracle.formats."""
_OVERLAPPING: Final = Verdict.OVERLAPPING.value
NO_FORMAT: Final = "none"
"""The `format` of an overlapping_write whose range holds no recognised block."""


def validate_formats(names: Sequence[str]) -> tuple[str, ...]:
    """`names` checked against FORMAT_NAMES, duplicates dropped; a ConfigError on `formats`."""
    for name in names:
        if name not in FORMAT_NAMES:
            known = ",".join(FORMAT_NAMES)
            raise ConfigError("formats", f"unknown format {name!r} (known: {known})")
    if not names:
        raise ConfigError("formats", "is empty (e.g. formats=stamp)")
    return tuple(dict.fromkeys(names))


class EventSink(Protocol):
    """Where verdicts go (an EventLog, a list in tests)."""

    def emit(self, event: Mapping[str, object]) -> None: ...


class InFlight(NamedTuple):
    """A WRITE that arrived and has not landed, with the pages it carries."""

    req: WriteRequest
    valid: tuple[tuple[PageKey, int], ...]  # ((lba, stream, page), generation)
    first_sector: int  # req.first_sector, kept for the overlap scan on every arrival
    end_sector: int
    stamps: Stamps | None  # the pages judged whole from the payload (None: no stamped page)
    pieces: tuple[Piece, ...]
    blocks: tuple[FormatBlock, ...] = ()  # other formats' blocks it carries
    track: tuple[FormatBlock, ...] = ()  # those whose version counts once it lands


def _where(req: WriteRequest) -> Event:
    """The fields every verdict on `req` carries."""
    return {"time": req.time, "connection": req.connection, "request_id": req.request_id}


def validate_torn(
    req: WriteRequest, torn: Iterable[tuple[int, PageDecode]], *, phase: str = "write"
) -> list[Event]:
    """One torn_write event per TORN page, given as (device offset, decode).

    phase "write": the page lies whole inside one WRITE, judged from its payload on arrival.
    phase "assembled": the WRITE `req` completed a page written in pieces; judged on the media.
    phase "disconnect": a page left in pieces when its connection closed; judged on the media.
    """
    events: list[Event] = []
    for offset, d in torn:
        gens = sorted({g for g in d.sector_generations if g is not None})
        events.append({
            "event": Verdict.TORN.value, "format": STAMP, "offset": offset,
            "lba": offset // SECTOR_SIZE,
            "length": PAGE_SIZE, "write_offset": req.offset, "write_length": req.length,
            "stream": d.stream, "page": d.page, "generations": gens,
            "sector_map": list(d.sector_generations), "first_mismatch": d.first_mismatch,
            "crc_ok": d.crc_ok, "phase": phase, **_where(req),
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
                "event": Verdict.STALE.value, "format": STAMP, "offset": lba * SECTOR_SIZE,
                "lba": lba,
                "length": PAGE_SIZE, "stream": stream, "page": page, "generation": gen,
                "replied_generation": newer, "generations": [gen, newer], "phase": phase,
                **_where(req),
            })  # fmt: skip
    return events


def validate_overlap(
    req: WriteRequest,
    in_flight: Iterable[WriteRequest],
    name: Callable[[WriteRequest, int, int], dict[str, object]] | None = None,
) -> list[Event]:
    """An overlapping_write event per in-flight WRITE sharing a 512-byte sector with `req`;
    `name(other, start, end)` gives the format (and block kind) the shared bytes hold."""
    events: list[Event] = []
    for other in in_flight:
        start = max(req.first_sector, other.first_sector)
        end = min(req.end_sector, other.end_sector)
        if start < end:
            what = {"format": STAMP} if name is None else name(
                other, start * SECTOR_SIZE, end * SECTOR_SIZE)
            events.append({
                "event": Verdict.OVERLAPPING.value, **what, "offset": start * SECTOR_SIZE,
                "lba": start,
                "length": (end - start) * SECTOR_SIZE, "request_id": req.request_id,
                "other_request_id": other.request_id, "connection": req.connection,
                "other_connection": other.connection, "time": req.time,
            })  # fmt: skip
    return events


_new_tuple = tuple.__new__
_FULL = (1 << SECTORS_PER_PAGE) - 1


def _valid_keys(stamps: Stamps) -> tuple[tuple[PageKey, int], ...]:
    """((lba, stream, page), generation) of each VALID page (transposed: no per-page frame)."""
    offsets, streams, pages, gens = zip(*stamps.valid, strict=True)
    lbas = [o // SECTOR_SIZE for o in offsets]
    return tuple(zip(zip(lbas, streams, pages, strict=True), gens, strict=True))


def _whole_anchors(stamps: Stamps) -> tuple[int, ...]:
    """The anchor sector of every page judged whole from a payload."""
    return tuple(v.offset // SECTOR_SIZE for v in stamps.valid) + tuple(
        o // SECTOR_SIZE for o, _ in stamps.torn
    )


class _Assembly:
    """A stamped page being written in pieces: which of its sectors have landed since."""

    __slots__ = ("connection", "mask", "page", "stream")

    def __init__(self, piece: Piece, connection: int) -> None:
        self.stream, self.page, self.mask, self.connection = (
            piece.stream, piece.page, piece.mask, connection,
        )  # fmt: skip


class Oracle:
    """Judges every WRITE: write_arrived on arrival, write_replied when it reaches the media.

    The device calls write_replied (and discarded) in the order writes reach its media, under
    the lock that orders them there, so replied generations, stale verdicts and the pages
    assembled from pieces all follow the media. Every call returns a *tick*: the position of
    the call in the oracle's one history, which a trace records so that the same verdicts can
    be given offline. The common case — an aligned unstamped or VALID payload with nothing in
    flight beside it — takes one lock, no event and no per-page object.
    """

    def __init__(
        self, sink: EventSink, media: Media | None = None, formats: Sequence[str] = (STAMP,)
    ) -> None:
        self._sink = sink
        self._media = media
        self.formats = validate_formats(formats)
        self._stamp = STAMP in self.formats
        others = [f for f in self.formats if f != STAMP]
        self._blocks = FormatJudge(others) if others else None
        self._fmt: Counter[str] = Counter()  # "format.key" -> n, for format_counts()
        self._fmt_by_conn: dict[int, Counter[str]] = {}
        self._lock = threading.Lock()
        self._in_flight: dict[int, InFlight] = {}
        self._replied: dict[PageKey, int] = {}
        self._assembling: dict[int, _Assembly] = {}  # anchor sector -> page in pieces
        self._counts: Counter[str] = Counter({name: 0 for name in COUNTED})
        self._writes = self._stamped = self._valid = 0  # per-WRITE tallies, kept out of _counts
        self._by_conn: dict[int, Counter[str]] = {}  # every count again, per connection
        self._conn_writes: dict[int, int] = {}  # but writes, kept out of _by_conn
        self._tick = 0
        self._layers = Layers()  # a layer's journal: its WRITEs are not the writer's blocks

    def write_arrived(self, req: WriteRequest, data: Buffer) -> int:
        """Decode the payload, emit its verdicts and register it as in flight; returns the tick."""
        offset, length = req.offset, req.length
        if len(data) != length:
            raise ValueError(f"write {req.request_id}: payload {len(data)} bytes, length {length}")
        layers = self._layers
        if offset == 0:
            layers.saw(data, req.connection)
        journal = layers.journal is not None and layers.inside(offset, length)
        blocks: tuple[FormatBlock, ...]
        if journal:  # a layer's own copy (docs/stacks.md): nothing of it is judged
            found, blocks = NOTHING, ()
        else:
            found = find_pages(data, offset) if self._stamp else NOTHING
            blocks = () if self._blocks is None else self._blocks.scan(data, offset)
        stamps, pieces = found
        valid = _valid_keys(stamps) if stamps.valid else ()
        first, end = offset // SECTOR_SIZE, -(-(offset + length) // SECTOR_SIZE)
        with self._lock:
            in_flight = self._in_flight
            if req.request_id in in_flight:
                raise ValueError(f"write {req.request_id} is already in flight")
            if stamps.stamped or pieces or blocks or in_flight:
                self._arrive(req, (first, end), found, valid, blocks)
            else:  # the common WRITE: nothing to judge, nothing beside it
                flight = (req, (), first, end, None, (), (), ())
                in_flight[req.request_id] = _new_tuple(InFlight, flight)
            self._writes += 1
            if journal:
                self._counts["layer_journal_writes"] += 1
                self._conn(req.connection)["layer_journal_writes"] += 1
            writes = self._conn_writes
            writes[req.connection] = writes.get(req.connection, 0) + 1
            self._tick += 1
            return self._tick

    def _arrive(
        self,
        req: WriteRequest,
        sectors: tuple[int, int],
        found: Found,
        valid: tuple[tuple[PageKey, int], ...],
        blocks: tuple[FormatBlock, ...],
    ) -> None:
        """write_arrived of a WRITE carrying pages, pieces or blocks, or with others in flight:
        its verdicts and its InFlight entry, pages counted (lock held)."""
        in_flight = self._in_flight
        (first, end), (stamps, pieces) = sectors, found
        events: list[Event] = []
        others = [f for f in in_flight.values() if f[2] < end and first < f[3]]
        if others:
            events += self._overlaps(req, others, blocks, stamps, pieces)
        track: tuple[FormatBlock, ...] = ()
        if blocks:
            assert self._blocks is not None
            conn_fmt = self._fmt_conn(req.connection)
            judged, track = self._blocks.arrived(req, blocks, (self._fmt, conn_fmt))
            events += judged
        if stamps.torn:
            events += validate_torn(req, stamps.torn)
        if valid:
            stale = validate_stale(req, valid, self._replied)
            if stale:  # reported once: not again when this copy lands
                events += stale
                valid = tuple(v for v in valid if v[1] >= self._replied.get(v[0], -1))
        whole = stamps if stamps.stamped else None
        # tuple.__new__ builds the NamedTuple without running its Python-level __new__
        flight = (req, valid, first, end, whole, pieces, blocks, track)
        in_flight[req.request_id] = _new_tuple(InFlight, flight)
        if stamps.stamped:
            conn = self._conn(req.connection)
            self._stamped += stamps.stamped
            self._valid += len(stamps.valid)
            self._counts["torn_pages"] += len(stamps.torn)
            conn["stamped_pages"] += stamps.stamped
            conn["valid_pages"] += len(stamps.valid)
            conn["torn_pages"] += len(stamps.torn)
        if events:  # emitted under the lock: events.jsonl follows the oracle's history
            self._count_events(events)
            self._emit(events)

    def write_replied(self, request_id: int, *, ok: bool, time: float) -> int:
        """The WRITE reached the media (ok) or failed (nothing of it landed); returns the tick.

        On success its VALID pages' generations become the replied ones (a copy older than the
        one standing there is a stale_write of phase "reply"), and its pieces join the pages
        being assembled. A reply to an unknown request is counted as `unknown_replies`.
        """
        events: list[Event] = []
        with self._lock:
            tick = self._next_tick()
            flight = self._in_flight.pop(request_id, None)
            if flight is None:
                self._counts["unknown_replies"] += 1
                self._conn(0)["unknown_replies"] += 1
            elif not ok:
                self._counts["failed_writes"] += 1
                self._conn(flight.req.connection)["failed_writes"] += 1
            elif flight.valid or flight.stamps or flight.pieces or flight.track:
                events = self._land(flight, time)
            if events:  # emitted under the lock: events.jsonl follows the oracle's history
                self._count_events(events)
                self._emit(events)
        return tick

    def _land(self, flight: InFlight, time: float) -> list[Event]:
        """Replied generations and assemblies after `flight` landed (lock held)."""
        replied = self._replied
        late: list[tuple[PageKey, int]] = []
        for key, gen in flight.valid:  # keys are distinct: one lba per page of a write
            newer = replied.get(key, -1)
            if gen > newer:
                replied[key] = gen
            elif gen < newer:
                late.append((key, gen))
        req = flight.req._replace(time=time)
        events = validate_stale(req, late, replied, phase="reply") if late else []
        if self._assembling and flight.stamps is not None:  # a whole page ends an assembly
            for anchor in _whole_anchors(flight.stamps):
                self._assembling.pop(anchor, None)
        for piece in flight.pieces:
            events += self._add_piece(req, piece)
        if flight.track:
            assert self._blocks is not None
            events += self._blocks.landed(req, flight.track)
        return events

    def _overlaps(
        self,
        req: WriteRequest,
        others: list[InFlight],
        blocks: tuple[FormatBlock, ...],
        stamps: Stamps,
        pieces: tuple[Piece, ...],
    ) -> list[Event]:
        """overlapping_write events of `req` against in-flight `others`, each naming the format
        of a block in the shared range (the arriving WRITE's first), else `none`."""
        flights = {f.req.request_id: f for f in others}

        def name(other: WriteRequest, start: int, end: int) -> dict[str, object]:
            theirs = flights[other.request_id]
            block = covering(blocks, start, end) or covering(theirs.blocks, start, end)
            if block is not None:
                return {"format": block.format, "kind": block.kind}
            if _stamped_in(stamps, pieces, start, end) or _stamped_in(
                theirs.stamps or NO_STAMPS, theirs.pieces, start, end
            ):
                return {"format": STAMP}
            return {"format": NO_FORMAT}

        return validate_overlap(req, [f.req for f in others], name)

    def _add_piece(self, req: WriteRequest, piece: Piece) -> list[Event]:
        """A piece of a page landed: judge the page on the media once all 8 sectors have."""
        media = self._media
        if media is None or piece.anchor < 0 or (piece.anchor + 8) * SECTOR_SIZE > media.size:
            return []  # no media to judge on, or a page that cannot fit on the device
        page = self._assembling.get(piece.anchor)
        if page is None or (page.stream, page.page) != (piece.stream, piece.page):
            page = self._assembling[piece.anchor] = _Assembly(piece, req.connection)
        else:
            page.mask |= piece.mask
            page.connection = req.connection
        if page.mask != _FULL:
            return []
        del self._assembling[piece.anchor]
        return self._judge_media(req, piece.anchor, page, phase="assembled")

    def _judge_media(
        self, req: WriteRequest, anchor: int, page: _Assembly, *, phase: str
    ) -> list[Event]:
        """Decode the page the media holds at `anchor` (lock held): torn or stale verdicts."""
        assert self._media is not None
        data = self._media.read(anchor * SECTOR_SIZE, PAGE_SIZE)
        decoded = decode_page(data)
        if decoded.status is PageStatus.UNSTAMPED:
            return []
        conn = self._conn(req.connection)
        if phase == "disconnect" and not _evidence(data, page.stream, page.page):
            self._counts["incomplete_pages"] += 1
            conn["incomplete_pages"] += 1
            return []
        self._stamped += 1
        conn["stamped_pages"] += 1
        assert decoded.stream is not None and decoded.page is not None
        if decoded.status is PageStatus.TORN:
            self._counts["torn_pages"] += 1
            conn["torn_pages"] += 1
            return validate_torn(req, [(anchor * SECTOR_SIZE, decoded)], phase=phase)
        self._valid += 1
        conn["valid_pages"] += 1
        assert decoded.generation is not None
        key, gen = (anchor, decoded.stream, decoded.page), decoded.generation
        newer = self._replied.get(key, -1)
        if gen >= newer:
            self._replied[key] = gen
            return []
        return validate_stale(req, [(key, gen)], self._replied, phase="reply")

    def discarded(self, offset: int, length: int) -> int:
        """A trim or zero reached the media (it only changes what assembled pages hold)."""
        with self._lock:
            return self._next_tick()

    def connection_closed(self, connection: int, *, time: float) -> int:
        """Judge the pages `connection` left in pieces: the client can add nothing to them; forget
        the layer layout it wrote."""
        self._layers.closed(connection)
        return self._judge_left(lambda page: page.connection == connection, connection, time)

    def finish(self, *, time: float) -> int:
        """The device stops: judge every page still in pieces."""
        return self._judge_left(lambda page: True, 0, time)

    def _judge_left(self, which: Callable[[_Assembly], bool], connection: int, time: float) -> int:
        events: list[Event] = []
        req = WriteRequest(0, connection, 0, 0, False, time)
        with self._lock:
            tick = self._next_tick()
            for anchor, page in sorted(self._assembling.items()):
                if which(page):
                    del self._assembling[anchor]
                    events += self._judge_media(req, anchor, page, phase="disconnect")
            if events:  # emitted under the lock: events.jsonl follows the oracle's history
                self._count_events(events)
                self._emit(events)
        return tick

    def _next_tick(self) -> int:
        self._tick += 1
        return self._tick

    def _conn(self, connection: int) -> Counter[str]:
        """The counts of one connection (lock held)."""
        counts = self._by_conn.get(connection)
        if counts is None:
            counts = self._by_conn[connection] = Counter()
        return counts

    def counts(self, connection: int | None = None) -> dict[str, int]:
        """Events per verdict, plus writes, stamped/valid/torn pages, failed writes: of the
        whole device, or of one connection (whose `assembling_pages` are the device's)."""
        with self._lock:
            if connection is not None:
                counts = {name: 0 for name in COUNTED} | dict(self._conn(connection))
                counts["writes"] = self._conn_writes.get(connection, 0)
                counts["assembling_pages"] = len(self._assembling)
                return counts
            counts = dict(self._counts)
            counts.update(writes=self._writes, stamped_pages=self._stamped)
            counts["valid_pages"] = self._valid
            counts["assembling_pages"] = len(self._assembling)
        return counts

    def in_flight(self) -> list[WriteRequest]:
        """The WRITEs arrived and not yet landed, in arrival order."""
        with self._lock:
            return [f.req for f in self._in_flight.values()]

    def _count_events(self, events: list[Event]) -> None:
        """Count verdicts by format, and in the top-level counts as before formats existed:
        the stamp's torn and stale pages, and every overlap (lock held)."""
        for e in events:
            kind = str(e["event"])
            connection = int(e["connection"])  # type: ignore[call-overload]
            fmt = e.get("format", STAMP)
            if fmt == STAMP or kind == _OVERLAPPING:
                self._counts[kind] += 1
                self._conn(connection)[kind] += 1
            key = f"{fmt}.{kind}"
            self._fmt[key] += 1
            self._fmt_conn(connection)[key] += 1

    def _fmt_conn(self, connection: int) -> Counter[str]:
        """The per-format counts of one connection (lock held)."""
        counts = self._fmt_by_conn.get(connection)
        if counts is None:
            counts = self._fmt_by_conn[connection] = Counter()
        return counts

    def format_counts(self, connection: int | None = None) -> dict[str, dict[str, int]]:
        """Per format (each of `formats`, and `none` once an overlap held no block): its
        verdict counts and its blocks found, ok, torn and unchecked; of the whole device or of
        one connection. The stamp's blocks are its stamped pages."""
        with self._lock:
            fmt = Counter(self._fmt if connection is None else self._fmt_conn(connection))
            pages = self._counts if connection is None else self._conn(connection)
            stamped = self._stamped if connection is None else pages["stamped_pages"]
            valid = self._valid if connection is None else pages["valid_pages"]
            torn_pages = pages["torn_pages"]
        if self._stamp:
            fmt.update({f"{STAMP}.blocks": stamped, f"{STAMP}.ok_blocks": valid,
                        f"{STAMP}.torn_blocks": torn_pages})  # fmt: skip
        names = list(self.formats)
        if any(k.startswith(f"{NO_FORMAT}.") for k in fmt):
            names.append(NO_FORMAT)
        keys = (*map(str, WRITE_VERDICTS), *BLOCK_COUNTS)
        return {n: {k: fmt.get(f"{n}.{k}", 0) for k in keys} for n in names}

    def _emit(self, events: list[Event]) -> None:
        """Hand the events to the sink, in order."""
        for e in events:
            self._sink.emit(e)


def _evidence(data: bytes, stream: int, page: int) -> bool:
    """Whether a page left in pieces is torn on evidence: the sectors that name it (its
    stream, page and their own index) disagree on the generation, or all eight name it (and
    the page is not VALID). Sectors holding other data are not a tear: the page was replaced."""
    gens = [g for g in sector_generations(data, stream, page) if g is not None]
    return len(set(gens)) > 1 or len(gens) == SECTORS_PER_PAGE


def _stamped_in(stamps: Stamps, pieces: Iterable[Piece], start: int, end: int) -> bool:
    """Whether a stamped page (whole or a piece) of one WRITE shares a byte with [start, end)."""
    offsets = [v.offset for v in stamps.valid] + [o for o, _ in stamps.torn]
    offsets += [p.anchor * SECTOR_SIZE for p in pieces]
    return any(o < end and start < o + PAGE_SIZE for o in offsets)


def judge(
    sink: EventSink, formats: Sequence[str] = (STAMP,)
) -> Callable[[Media], Oracle]:
    """The factory a Device takes to have its writes judged by an Oracle reporting to `sink`,
    for the formats named (default: the stamp alone)."""
    return lambda media: Oracle(sink, media, formats)
