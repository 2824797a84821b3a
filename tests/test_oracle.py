"""The verdict engine (torn, stale, overlapping writes) and the offline image scan."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import pytest

from nbdfork.oracle.image import scan_file, scan_image
from nbdfork.oracle.stamp import encode_page, encode_pages
from nbdfork.oracle.verify import Oracle, WriteRequest


class ListSink:
    """An EventSink keeping events in memory."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []

    def emit(self, event: Mapping[str, object]) -> None:
        self.events.append(dict(event))

    def kinds(self) -> list[object]:
        return [e["event"] for e in self.events]


@pytest.fixture
def sink() -> ListSink:
    """A fresh in-memory sink."""
    return ListSink()


@pytest.fixture
def oracle(sink: ListSink) -> Oracle:
    """An Oracle writing to `sink`."""
    return Oracle(sink)


class Writer:
    """Issues numbered WRITEs to an oracle, on connection 0 unless told otherwise."""

    def __init__(self, oracle: Oracle) -> None:
        self.oracle = oracle
        self.next_id = 0

    def arrive(self, offset: int, data: bytes, *, time: float = 1.0, conn: int = 0) -> int:
        self.next_id += 1
        req = WriteRequest(self.next_id, conn, offset, len(data), False, time)
        self.oracle.write_arrived(req, data)
        return self.next_id

    def write(self, offset: int, data: bytes, *, ok: bool = True) -> int:
        """Arrive and reply at once."""
        rid = self.arrive(offset, data)
        self.oracle.write_replied(rid, ok=ok, time=2.0)
        return rid


@pytest.fixture
def w(oracle: Oracle) -> Writer:
    """A Writer on `oracle`."""
    return Writer(oracle)


def test_valid_writes_are_counted(oracle: Oracle, sink: ListSink, w: Writer) -> None:
    """Valid stamped writes and zero writes: no event; counts give writes and stamped pages."""
    w.write(0, encode_pages(1, 0, [1, 1, 1, 1]))
    w.write(1 << 20, bytes(64 << 10))
    w.write(0, encode_pages(1, 0, [2, 2, 2, 2]))
    assert sink.events == []
    counts = oracle.counts()
    assert (counts["writes"], counts["stamped_pages"], counts["valid_pages"]) == (3, 8, 8)
    assert (counts["torn_write"], counts["stale_write"], counts["overlapping_write"]) == (0, 0, 0)


def test_torn_page_gives_torn_write_with_sector_map(
    oracle: Oracle, sink: ListSink, w: Writer
) -> None:
    """A page with sectors 0-2 of generation 5 and 3-7 of 4 gives one exact torn_write event."""
    torn = encode_page(7, 3, 5)[:1536] + encode_page(7, 3, 4)[1536:]
    payload = encode_page(7, 2, 5) + torn
    w.arrive(8192, payload, time=3.5, conn=2)
    assert sink.events == [{
        "event": "torn_write", "format": "stamp", "offset": 12288, "lba": 24, "length": 4096,
        "write_offset": 8192, "write_length": 8192, "stream": 7, "page": 3,
        "generations": [4, 5], "sector_map": [5, 5, 5, 4, 4, 4, 4, 4],
        "first_mismatch": 1536 + 24, "crc_ok": False, "phase": "write", "time": 3.5,
        "connection": 2,
        "request_id": 1,
    }]  # fmt: skip
    assert (oracle.counts()["torn_write"], oracle.counts()["torn_pages"]) == (1, 1)


def test_older_generation_after_newer_replied_is_stale(sink: ListSink, w: Writer) -> None:
    """Generation 3 written after generation 4 was replied at the same lba: one stale_write."""
    w.write(4096, encode_page(1, 9, 4))
    w.arrive(4096, encode_page(1, 9, 3), time=7.0)
    assert sink.events == [{
        "event": "stale_write", "format": "stamp", "offset": 4096, "lba": 8, "length": 4096,
        "stream": 1,
        "page": 9, "generation": 3, "replied_generation": 4, "generations": [3, 4],
        "phase": "arrival", "time": 7.0, "connection": 0, "request_id": 2,
    }]  # fmt: skip


def test_older_before_newer_replied_is_not_stale(oracle: Oracle, sink: ListSink, w: Writer) -> None:
    """Generation 1 arriving while generation 2 is still in flight is an overlap, not stale."""
    newer = w.arrive(0, encode_page(1, 0, 2))
    older = w.arrive(0, encode_page(1, 0, 1))
    oracle.write_replied(older, ok=True, time=2.0)
    oracle.write_replied(newer, ok=True, time=2.0)
    assert sink.kinds() == ["overlapping_write"]  # the newer one landed last: media is right
    w.write(0, encode_page(1, 0, 1))
    assert sink.kinds() == ["overlapping_write", "stale_write"]


@pytest.mark.parametrize(
    "writes",
    [
        pytest.param([(0, 1, 0, 5), (0, 1, 0, 5)], id="same-generation-twice"),
        pytest.param([(0, 1, 0, 1), (0, 1, 0, 4), (0, 1, 0, 9)], id="skipped-generations"),
        pytest.param([(0, 1, 0, 9), (1 << 20, 1, 0, 3)], id="older-copy-at-another-lba"),
        pytest.param([(0, 1, 0, 9), (0, 2, 0, 3)], id="two-streams-at-one-lba"),
        pytest.param([(0, 1, 0, 9), (0, 1, 5, 3)], id="two-pages-of-a-stream-at-one-lba"),
    ],
)
def test_legal_sequences_emit_nothing(
    sink: ListSink, w: Writer, writes: list[tuple[int, int, int, int]]
) -> None:
    """Rewrites, skipped generations, journal-style copies, shared lbas: never reported."""
    for offset, stream, page, gen in writes:
        w.write(offset, encode_page(stream, page, gen))
    assert sink.events == []


def test_overlapping_in_flight_writes_give_one_event(sink: ListSink, w: Writer) -> None:
    """Writes [0, 8192) and [4608, 12288) in flight together: one event for the shared sectors."""
    first = w.arrive(0, bytes(8192), conn=1)
    second = w.arrive(4608, bytes(7680), time=1.5, conn=2)
    assert sink.events == [{
        "event": "overlapping_write", "format": "none", "offset": 4608, "lba": 9,
        "length": 3584,
        "request_id": second, "other_request_id": first, "connection": 2,
        "other_connection": 1, "time": 1.5,
    }]  # fmt: skip


def test_sub_sector_overlap_counts_the_shared_sector(sink: ListSink, w: Writer) -> None:
    """Writes [0, 100) and [200, 300) both touch sector 0: an overlap of one sector."""
    w.arrive(0, bytes(100))
    w.arrive(200, bytes(100))
    assert [(e["lba"], e["length"]) for e in sink.events] == [(0, 512)]


def test_non_overlapping_concurrent_writes_emit_nothing(
    oracle: Oracle, sink: ListSink, w: Writer
) -> None:
    """Adjacent and disjoint writes in flight together, and a write after a reply: no event."""
    a = w.arrive(0, bytes(4096))
    w.arrive(4096, bytes(4096))
    w.arrive(1 << 20, bytes(4096))
    oracle.write_replied(a, ok=True, time=2.0)
    w.arrive(0, bytes(4096))
    assert sink.events == []
    assert len(oracle.in_flight()) == 3


def test_failed_write_does_not_advance_replied_generation(
    oracle: Oracle, sink: ListSink, w: Writer
) -> None:
    """A newer generation whose WRITE failed does not make the older one stale."""
    w.write(0, encode_page(1, 0, 8), ok=False)
    w.write(0, encode_page(1, 0, 7))
    assert sink.events == []
    assert oracle.counts()["failed_writes"] == 1


def test_replied_generation_is_the_newest_not_the_last(sink: ListSink, w: Writer) -> None:
    """Generation 6 replied after 8: 7 is still stale against 8."""
    w.write(0, encode_page(1, 0, 8))
    w.write(0, encode_page(1, 0, 6))
    w.write(0, encode_page(1, 0, 7))
    assert [(e["generation"], e["replied_generation"]) for e in sink.events] == [(6, 8), (7, 8)]


def test_unaligned_write_judges_whole_pages_from_the_payload(sink: ListSink, w: Writer) -> None:
    """A write at 512 of 8 KiB holds one whole page at [4096, 8192): only it is judged now."""
    torn = encode_page(1, 0, 2)[:512] + encode_page(1, 0, 1)[512:]
    payload = torn[512:] + torn + torn[:512]  # the torn page sits at device offset 4096
    w.arrive(512, payload)
    assert [(e["event"], e["offset"]) for e in sink.events] == [("torn_write", 4096)]


def test_bad_payload_and_duplicate_id_are_rejected(oracle: Oracle) -> None:
    """A payload shorter than the request, or a request id already in flight: ValueError."""
    with pytest.raises(ValueError, match="payload"):
        oracle.write_arrived(WriteRequest(1, 0, 0, 4096, False, 0.0), bytes(512))
    oracle.write_arrived(WriteRequest(1, 0, 0, 4096, False, 0.0), bytes(4096))
    with pytest.raises(ValueError, match="in flight"):
        oracle.write_arrived(WriteRequest(1, 0, 8192, 4096, False, 0.0), bytes(4096))


def test_unknown_reply_is_counted_not_fatal(oracle: Oracle) -> None:
    """A reply for a request the oracle never saw is counted as unknown_replies."""
    oracle.write_replied(42, ok=True, time=0.0)
    assert oracle.counts()["unknown_replies"] == 1


def test_concurrent_writers_are_all_accounted(oracle: Oracle, sink: ListSink) -> None:
    """8 threads x 50 disjoint valid writes: 400 writes, 400 stamped pages, no event."""

    def run(t: int) -> None:
        for i in range(50):
            rid = t * 1000 + i
            data = encode_page(t, i, 1)
            oracle.write_arrived(WriteRequest(rid, t, (t * 50 + i) * 4096, 4096, False, 0.0), data)
            oracle.write_replied(rid, ok=True, time=0.0)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sink.events == []
    assert (oracle.counts()["writes"], oracle.counts()["stamped_pages"]) == (400, 400)


# --- offline image scan ------------------------------------------------------------------------


def make_image() -> bytes:
    """1 MiB: page (1, 0) at generations 3 (offset 0) and 5 (8192), a torn page at 65536."""
    image = bytearray(1 << 20)
    image[0:4096] = encode_page(1, 0, 3)
    image[8192:12288] = encode_page(1, 0, 5)
    image[12288:16384] = encode_page(2, 7, 1)
    image[65536:69632] = encode_page(1, 4, 2)[:2048] + encode_page(1, 4, 1)[2048:]
    return bytes(image) + bytes(100)  # a trailing partial page


def test_scan_image_finds_generations_and_offsets() -> None:
    """Every VALID (stream, page) with its generations and offsets; torn pages apart."""
    scan = scan_image(make_image(), chunk=64 << 10)
    assert (scan.size, scan.page_count) == ((1 << 20) + 100, 256)
    assert (scan.stamped_pages, scan.valid_pages, scan.torn_pages) == (4, 3, 1)
    assert scan.found == {(1, 0): {3: [0], 5: [8192]}, (2, 7): {1: [12288]}}
    assert (scan.generations(1, 0), scan.latest(1, 0), scan.latest(9, 9)) == ([3, 5], 5, None)
    [(offset, decode)] = scan.torn
    assert (offset, decode.sector_generations) == (65536, (2, 2, 2, 2, 1, 1, 1, 1))


def test_scan_file_equals_scan_image(tmp_path: Path) -> None:
    """scan_file (mmap) finds what scan_image finds on the same bytes; chunk must be aligned."""
    path = tmp_path / "image"
    path.write_bytes(make_image())
    assert scan_file(path).found == scan_image(make_image()).found
    with pytest.raises(ValueError, match="chunk"):
        scan_image(b"", chunk=1000)


def test_older_copy_landing_after_newer_is_stale_at_reply() -> None:
    """Two copies of a page in flight that complete out of order: the older one lands last."""
    sink = ListSink()
    oracle = Oracle(sink)
    oracle.write_arrived(WriteRequest(1, 1, 0, 4096, False, 0.0), encode_page(4, 0, 1))
    oracle.write_arrived(WriteRequest(2, 1, 0, 4096, False, 0.1), encode_page(4, 0, 2))
    oracle.write_replied(2, ok=True, time=0.2)
    oracle.write_replied(1, ok=True, time=0.3)
    kinds = [(e["event"], e.get("phase")) for e in sink.events]
    assert kinds == [("overlapping_write", None), ("stale_write", "reply")]
    stale = sink.events[1]
    assert (stale["generation"], stale["replied_generation"], stale["time"]) == (1, 2, 0.3)
