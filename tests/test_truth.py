"""Verdicts true to the media, through real nbdkit: the cases that used to tell a wrong story."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbd
import pytest

from nbdfork.cli import main
from nbdfork.oracle.rejudge import rejudge_trace
from nbdfork.oracle.stamp import decode_page, encode_page
from tests.conftest import disconnect

Connect = Callable[..., Any]
PAGE = 4096
PART = 63 * 512  # a partition starting at sector 63: every block 3584 bytes past a page


class ListSink:
    """Keeps events in memory."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []

    def emit(self, event: dict[str, object]) -> None:
        self.events.append(dict(event))


def _events(report: Path) -> list[dict[str, Any]]:
    lines = (report / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line]


def _aio_pair(h: Any, offset: int, first: bytes, second: bytes) -> None:
    """Send two writes of one place back to back, without waiting in between."""
    for data in (first, second):
        h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), offset)


@pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "volatile-cache"])
def test_stale_verdicts_name_the_copy_on_the_media(
    connect: Connect, tmp_path: Path, cache: bool
) -> None:
    """64 pairs g8 then g10 under reorder-window=2: a page holds g8 iff it got a stale verdict."""
    report = tmp_path / "r"
    params = ["size=16M", f"report={report}", "reorder-window=2", "seed=5"]
    h = connect(*params, *(["cache=volatile"] if cache else []))
    for i in range(64):
        _aio_pair(h, i * PAGE, encode_page(1, i, 8), encode_page(1, i, 10))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    h.flush()
    held = {i: decode_page(h.pread(PAGE, i * PAGE)).generation for i in range(64)}
    disconnect(h)
    stale = {e["lba"] // 8 for e in _events(report) if e["event"] == "stale_write"}
    assert {i for i, g in held.items() if g == 8} == stale
    assert set(held.values()) == {8, 10}  # the window really reordered some pairs


def test_pages_are_found_at_any_alignment(connect: Connect, tmp_path: Path) -> None:
    """Partition at sector 63: block 0 torn is reported; valid blocks 1-2 are not."""
    report = tmp_path / "r"
    h = connect("size=16M", f"report={report}")
    torn = encode_page(2, 0, 5)[:1536] + encode_page(2, 0, 4)[1536:]
    h.pwrite(torn, PART)
    h.pwrite(encode_page(2, 1, 1) + encode_page(2, 2, 1), PART + PAGE)
    disconnect(h)
    events = _events(report)
    assert [(e["event"], e["offset"], e["sector_map"]) for e in events] == [
        ("torn_write", PART, [5, 5, 5, 4, 4, 4, 4, 4])
    ]


def test_page_assembled_from_pieces_is_judged(connect: Connect, tmp_path: Path) -> None:
    """7 sectors of g11 then the 8th of g10: torn; 7 + 1 sectors of one generation: nothing."""
    report = tmp_path / "r"
    h = connect("size=16M", f"report={report}")
    h.pwrite(encode_page(1, 0, 11)[:3584], 0)
    h.pwrite(encode_page(1, 0, 10)[3584:], 3584)
    h.pwrite(encode_page(1, 1, 11)[:3584], PART)
    h.pwrite(encode_page(1, 1, 11)[3584:], PART + 3584)
    disconnect(h)
    events = _events(report)
    assert [(e["event"], e["offset"], e["phase"]) for e in events] == [
        ("torn_write", 0, "assembled")
    ]
    assert events[0]["sector_map"] == [11] * 7 + [10]


def test_page_left_torn_in_pieces_is_judged_at_disconnect(
    connect: Connect, tmp_path: Path
) -> None:
    """g10 whole, then 4 sectors of g11, then the client leaves: the media holds a torn page."""
    report = tmp_path / "r"
    h = connect("size=16M", f"report={report}")
    h.pwrite(encode_page(1, 0, 10), 0)
    h.pwrite(encode_page(1, 0, 11)[:2048], 0)
    h.pwrite(encode_page(1, 1, 3)[:2048], PAGE)  # half a page, nothing under it: incomplete
    disconnect(h)
    events = _events(report)
    assert [(e["event"], e["offset"], e["phase"]) for e in events] == [
        ("torn_write", 0, "disconnect")
    ]
    summary = json.loads((report / "summary.json").read_text())
    assert summary["oracle"]["incomplete_pages"] == 1


@pytest.mark.parametrize("mode", [[], ["cache=volatile"], ["cache=volatile", "ignore-flush=on"]])
def test_unaligned_and_sub_sector_writes_work(
    connect: Connect, tmp_path: Path, mode: list[str]
) -> None:
    """Byte-granular writes succeed in every mode, read back, and leave nothing in flight."""
    report = tmp_path / "r"
    h = connect("size=16M", f"report={report}", *mode)
    h.pwrite(b"\xaa" * 4096, 0)
    h.pwrite(b"\x55" * 100, 1000)
    h.pwrite(b"\x77" * 3, 511)
    h.flush()
    expected = bytearray(b"\xaa" * 4096)
    expected[1000:1100] = b"\x55" * 100
    expected[511:514] = b"\x77" * 3
    assert h.pread(4096, 0) == bytes(expected)
    h.pwrite(encode_page(1, 0, 1), 0)  # overlaps the earlier writes: none is still in flight
    disconnect(h)
    assert _events(report) == []
    summary = json.loads((report / "summary.json").read_text())
    assert (summary["write_errors"], summary["oracle"]["failed_writes"]) == (0, 0)


def test_trace_rejudged_offline_gives_the_live_verdicts(connect: Connect, tmp_path: Path) -> None:
    """nbdfork's offline judge on a trace= recording reproduces events.jsonl exactly."""
    report, trace = tmp_path / "r", tmp_path / "t.trace"
    h = connect("size=16M", f"report={report}", f"trace={trace}", "reorder-window=4", "seed=2")
    for i in range(32):
        _aio_pair(h, (i % 8) * PAGE + PART, encode_page(1, i % 8, i + 1), encode_page(1, i % 8, i))
    h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(encode_page(1, 9, 1)[:1024])), 9 * PAGE)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    disconnect(h)
    live = _events(report)
    assert {e["event"] for e in live} >= {"overlapping_write", "stale_write"}
    sink = ListSink()
    rejudged = rejudge_trace(trace, sink)
    assert rejudged.ticked
    assert sink.events == live


def test_verify_cli_rejudges_a_trace_against_a_report(
    connect: Connect, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`nbdfork verify TRACE --against DIR` says identical, and exits 1 once the log differs."""
    report, trace = tmp_path / "r", tmp_path / "t.trace"
    h = connect("size=16M", f"report={report}", f"trace={trace}")
    h.pwrite(encode_page(1, 0, 2), 0)
    h.pwrite(encode_page(1, 0, 1), 0)  # stale
    h.pwrite(encode_page(1, 1, 11)[:3584], PAGE)
    h.pwrite(encode_page(1, 1, 10)[3584:], PAGE + 3584)  # torn, assembled
    disconnect(h)
    argv = ["verify", str(trace), "--against", str(report), "--events", str(tmp_path / "e")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "identical to" in out and "stale_write        1" in out and "torn_write         1" in out
    assert (tmp_path / "e").read_text() == (report / "events.jsonl").read_text()
    lines = (report / "events.jsonl").read_text().splitlines()
    (report / "events.jsonl").write_text(lines[0] + "\n")
    assert main(["verify", str(trace), "--against", str(report)]) == 1
    assert "DIFFERS" in capsys.readouterr().out
    assert main(["verify", str(trace), "--events", str(tmp_path / "e")]) == 2  # no clobbering


def test_a_trace_recorded_without_the_oracle_is_judged_by_arrival_times(tmp_path: Path) -> None:
    """oracle=off records no ticks: arrivals are placed by their recorded time among the
    landings, so a sequential history still gets its verdicts (a stale copy, a torn page)."""
    from nbdfork.config import parse_params  # noqa: PLC0415
    from nbdfork.device.device import Device  # noqa: PLC0415
    from nbdfork.oracle.events import NullSink  # noqa: PLC0415
    from nbdfork.oracle.verify import judge  # noqa: PLC0415

    trace = tmp_path / "t.trace"
    params = [("size", "1M"), ("oracle", "off"), ("trace", str(trace))]
    device = Device(parse_params(params), judge(NullSink()))
    device.pwrite(1, encode_page(1, 0, 2), 0, fua=False)
    device.pwrite(1, encode_page(1, 0, 1), 0, fua=False)
    device.pwrite(1, encode_page(1, 1, 2)[:2048] + encode_page(1, 1, 1)[2048:], PAGE, fua=False)
    device.close()
    sink = ListSink()
    rejudged = rejudge_trace(trace, sink)
    assert not rejudged.ticked
    assert [(e["event"], e.get("phase")) for e in sink.events] == [
        ("stale_write", "arrival"), ("torn_write", "write")
    ]
