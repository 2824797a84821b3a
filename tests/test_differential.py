"""Differential test: the device and its oracle against a brute-force reference model.

Hypothesis generates schedules of WRITEs on two connections — stamped pages at any 512-byte
alignment (a partition offset of 0..7 sectors), whole, in pieces, torn by sector or by byte,
unaligned and sub-sector carriers — that arrive, land in any order (any reordering a window
or a cache could produce) or fail, with trims, FLUSHes and disconnects between them, on a
device with or without a volatile cache. After every step the reference, written here from
the rules in docs/device.md and not from the oracle's code, must agree with the device on
every verdict, on what a read returns and, after a FLUSH, on what the media holds; at the
end a trace re-judged offline must give the live verdicts.
"""

from __future__ import annotations

import functools
import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from nbdfork.config import parse_params
from nbdfork.device.clock import FakeClock
from nbdfork.device.device import ArrivedWrite, Device
from nbdfork.oracle.rejudge import rejudge_trace
from nbdfork.oracle.stamp import MAGIC, encode_page
from nbdfork.oracle.verify import judge

SIZE = 64 << 10
SECTORS = SIZE // 512
STREAM = 3

Verdict = tuple[object, ...]


@functools.cache
def page_bytes(page: int, generation: int) -> bytes:
    """The stamped page `page` of the test stream at `generation`."""
    return encode_page(STREAM, page, generation)


class ListSink:
    """Keeps the device's events."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []

    def emit(self, event: Mapping[str, object]) -> None:
        self.events.append(dict(event))


def verdict(e: Mapping[str, object]) -> Verdict:
    """What must agree between device and reference: kind, place, writes, generations."""
    kind = e["event"]
    if kind == "overlapping_write":
        return (kind, e["lba"], e["request_id"], e["other_request_id"])
    if kind == "stale_write":
        return (kind, e["lba"], e["request_id"], e["phase"], e["generation"],
                e["replied_generation"])  # fmt: skip
    return (kind, e["lba"], e["request_id"], e["phase"])


# --- the reference: per-sector brute force -------------------------------------------------------


def sector_head(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(version, index, stream, page, generation) of a sector starting with the magic."""
    if data[:8] != MAGIC:
        return None
    version, index, stream, page, generation = struct.unpack_from("<HHIQQ", data, 8)
    return version, index, stream, page, generation


def page_status(data: bytes) -> str:
    """'unstamped', 'valid' (equal to the encoding named by sector 0) or 'torn'."""
    heads = [sector_head(data[i * 512 : i * 512 + 512]) for i in range(8)]
    if all(h is None for h in heads):
        return "unstamped"
    h0 = heads[0]
    if h0 is not None and data == encode_page(h0[2], h0[3], h0[4]):
        return "valid"
    return "torn"


@dataclass
class RefWrite:
    """A WRITE the reference saw arrive."""

    rid: int
    conn: int
    offset: int
    data: bytes
    whole: list[int]
    valid: list[tuple[tuple[int, int, int], int]]
    pieces: list[tuple[int, int, int, int]]  # anchor, stream, page, mask

    @property
    def sectors(self) -> range:
        return range(self.offset // 512, -(-(self.offset + len(self.data)) // 512))


@dataclass
class Reference:
    """The device as the docs describe it, one sector at a time."""

    media: bytearray = field(default_factory=lambda: bytearray(SIZE))
    in_flight: dict[int, RefWrite] = field(default_factory=dict)
    landed: dict[tuple[int, int, int], int] = field(default_factory=dict)
    assembling: dict[int, list[int]] = field(default_factory=dict)  # anchor -> [s, p, mask, conn]
    out: list[Verdict] = field(default_factory=list)

    def arrive(self, rid: int, conn: int, offset: int, data: bytes) -> None:
        skip = -offset % 512
        first, count = (offset + skip) // 512, max(0, (len(data) - skip) // 512)
        anchors: dict[int, tuple[int, int]] = {}
        for k in range(count):
            head = sector_head(data[skip + k * 512 : skip + k * 512 + 512])
            if head is not None and head[0] == 1 and head[1] < 8:
                anchors.setdefault(first + k - head[1], (head[2], head[3]))
        w = RefWrite(rid, conn, offset, data, [], [], [])
        for other in self.in_flight.values():
            shared = [s for s in w.sectors if s in other.sectors]
            if shared:
                self.out.append(("overlapping_write", shared[0], rid, other.rid))
        stale: list[Verdict] = []
        for a in sorted(anchors):
            if first <= a and a + 8 <= first + count:
                page = data[skip + (a - first) * 512 : skip + (a - first) * 512 + 4096]
                status = page_status(page)
                w.whole.append(a)
                if status == "torn":
                    self.out.append(("torn_write", a, rid, "write"))
                elif status == "valid":
                    h = sector_head(page)
                    assert h is not None
                    key, gen = (a, h[2], h[3]), h[4]
                    if gen < self.landed.get(key, -1):
                        stale.append(("stale_write", a, rid, "arrival", gen, self.landed[key]))
                    else:
                        w.valid.append((key, gen))
            else:
                lo, hi = max(a, first), min(a + 8, first + count)
                w.pieces.append((a, *anchors[a], ((1 << (hi - lo)) - 1) << (lo - a)))
        self.out += stale
        self.in_flight[rid] = w

    def land(self, rid: int) -> None:
        w = self.in_flight.pop(rid)
        self.media[w.offset : w.offset + len(w.data)] = w.data
        for key, gen in w.valid:
            if gen > self.landed.get(key, -1):
                self.landed[key] = gen
            elif gen < self.landed[key]:
                self.out.append(("stale_write", key[0], rid, "reply", gen, self.landed[key]))
        for a in w.whole:
            self.assembling.pop(a, None)
        for a, stream, page, mask in w.pieces:
            if a < 0 or a + 8 > SECTORS:
                continue  # the page cannot fit on the device: never whole
            asm = self.assembling.get(a)
            if asm is None or (asm[0], asm[1]) != (stream, page):
                asm = self.assembling[a] = [stream, page, mask, w.conn]
            else:
                asm[2] |= mask
                asm[3] = w.conn
            if asm[2] == 0xFF:
                del self.assembling[a]
                self.judge(a, rid, "assembled", (stream, page))

    def fail(self, rid: int) -> None:
        del self.in_flight[rid]

    def trim(self, offset: int, length: int) -> None:
        self.media[offset : offset + length] = bytes(length)

    def close(self, conn: int | None) -> None:
        for a in sorted(self.assembling):
            if conn is None or self.assembling[a][3] == conn:
                stream, page = self.assembling.pop(a)[:2]
                self.judge(a, 0, "disconnect", (stream, page))

    def judge(self, a: int, rid: int, phase: str, ident: tuple[int, int]) -> None:
        page = bytes(self.media[a * 512 : a * 512 + 4096])
        status = page_status(page)
        if status == "unstamped":
            return
        heads = [sector_head(page[i * 512 : i * 512 + 512]) for i in range(8)]
        gens = [
            h[4] for i, h in enumerate(heads)
            if h is not None and h[0] == 1 and h[1] == i and (h[2], h[3]) == ident
        ]  # fmt: skip
        incomplete = len(set(gens)) < 2 and len(gens) < 8
        if phase == "disconnect" and status == "torn" and incomplete:
            return  # sectors replaced by other data: incomplete, not torn
        if status == "torn":
            self.out.append(("torn_write", a, rid, phase))
            return
        h = heads[0]
        assert h is not None
        key, gen = (a, h[2], h[3]), h[4]
        if gen >= self.landed.get(key, -1):
            self.landed[key] = gen
        else:
            self.out.append(("stale_write", a, rid, "reply", gen, self.landed[key]))


# --- schedules ---------------------------------------------------------------------------------


def device_sector(shift: int, sector: int, generation: int) -> bytes:
    """What a writer of the whole stream puts in device sector `sector` (pages from `shift`)."""
    if sector < shift or (sector - shift) // 8 >= (SECTORS - shift) // 8:
        return bytes(512)
    page, index = divmod(sector - shift, 8)
    return page_bytes(page, generation)[index * 512 : index * 512 + 512]


@st.composite
def payload(draw: st.DrawFn, shift: int) -> tuple[int, bytes]:
    """(offset, data): stamped sectors of one generation, maybe torn, maybe unaligned."""
    start = draw(st.integers(0, SECTORS - 1))
    count = draw(st.integers(1, min(24, SECTORS - start)))
    gen = draw(st.integers(1, 4))
    other = draw(st.sampled_from([None, gen - 1, gen + 1, 0]))
    sectors = []
    for s in range(start, start + count):
        g = gen
        if other is not None and draw(st.integers(0, 3)) == 0:
            g = other
        sectors.append(bytes(512) if g == 0 else device_sector(shift, s, g))
    data = b"".join(sectors)
    if other is not None and other > 0 and draw(st.booleans()):  # a byte splice
        cut = draw(st.integers(1, len(data) - 1))
        alt = b"".join(device_sector(shift, s, other) for s in range(start, start + count))
        data = data[:cut] + alt[cut:]
    offset = start * 512
    if draw(st.integers(0, 5)) == 0:  # unaligned or sub-sector carrier
        head = draw(st.integers(0, min(511, len(data) - 1)))
        tail = draw(st.integers(0, len(data) - head - 1))
        offset, data = offset + head, data[head : len(data) - tail]
    return offset, data


def make_device(tmp: Path, cache: bool) -> tuple[Device, ListSink]:
    """A 64 KiB device with a trace, maybe a volatile cache, on a fake clock."""
    params = [("size", "64K"), ("seed", "1"), ("trace", str(tmp / "t.trace"))]
    if cache:
        params.append(("cache", "volatile"))
    sink = ListSink()
    return Device(parse_params(params), judge(sink), FakeClock()), sink


# CI explores the same 2,000 schedules every run (a red CI must mean a change broke them);
# elsewhere every run draws new ones.
@settings(max_examples=2000, deadline=None, derandomize=os.environ.get("CI") == "true")
@given(data=st.data(), shift=st.integers(0, 7), cache=st.booleans())
def test_device_and_oracle_agree_with_reference(
    data: st.DataObject, shift: int, cache: bool
) -> None:
    """Every verdict, every read and (after FLUSH) the media match the brute-force reference."""
    with tempfile.TemporaryDirectory() as tmp:
        device, sink = make_device(Path(tmp), cache)
        ref = Reference()
        pending: dict[int, ArrivedWrite] = {}
        for _ in range(data.draw(st.integers(1, 30))):
            step(data, shift, device, ref, pending)
            assert sorted(verdict(e) for e in sink.events) == sorted(ref.out)
            assert device.store.read(0, SIZE) == bytes(ref.media)
            if device.cache is not None:
                assert device.cache.read(0, SIZE) == bytes(ref.media)
        for rid in list(pending):
            device.write_land(pending.pop(rid))
            ref.land(rid)
        device.close()
        ref.close(None)
        assert sorted(verdict(e) for e in sink.events) == sorted(ref.out)
        offline = ListSink()
        rejudge_trace(Path(tmp) / "t.trace", offline)
        assert offline.events == sink.events


def step(
    data: st.DataObject,
    shift: int,
    device: Device,
    ref: Reference,
    pending: dict[int, ArrivedWrite],
) -> None:
    """One generated step: arrive, land, fail, trim, flush or disconnect."""
    kinds = ["arrive", "arrive", "trim", "flush", "close"]
    kinds += ["land", "land", "fail"] * bool(pending)
    kind = data.draw(st.sampled_from(kinds))
    if kind == "arrive":
        offset, payload_ = data.draw(payload(shift))
        conn = data.draw(st.integers(1, 2))
        w = device.write_arrive(conn, payload_, offset, fua=data.draw(st.booleans()))
        pending[w.request_id] = w
        ref.arrive(w.request_id, conn, offset, payload_)
    elif kind in ("land", "fail"):
        rid = data.draw(st.sampled_from(sorted(pending)))
        if kind == "land":
            device.write_land(pending.pop(rid))
            ref.land(rid)
        else:
            device.write_fail(pending.pop(rid))
            ref.fail(rid)
    elif kind == "trim":
        start = data.draw(st.integers(0, SECTORS - 1))
        length = data.draw(st.integers(1, min(16, SECTORS - start))) * 512
        device.trim(length, start * 512, fua=False, connection=1)
        ref.trim(start * 512, length)
    elif kind == "flush":
        device.flush(1)
        if device.cache is not None:  # everything landed so far is durable now
            assert device.cache.media.read(0, SIZE) == bytes(ref.media)
    else:
        conn = data.draw(st.integers(1, 2))
        device.close_connection(conn)
        ref.close(conn)
