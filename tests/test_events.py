"""events.jsonl: the EventLog writes lines that read back; bad files give located errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nbdfork.errors import OracleError
from nbdfork.oracle.events import EventLog, read_events, summarize
from nbdfork.oracle.stamp import encode_page
from nbdfork.oracle.verify import Oracle, WriteRequest

TORN = {"event": "torn_write", "lba": 8, "stream": 1, "sector_map": [2, 2, 1, 1, 1, 1, 1, 1]}
STALE = {"event": "stale_write", "lba": 0, "stream": 2, "generations": [3, 4]}
OVERLAP = {"event": "overlapping_write", "lba": 0, "request_id": 1, "other_request_id": 2}


def test_event_log_round_trip_one_line_each(tmp_path: Path) -> None:
    """Three events become three JSON lines that read back equal, in order."""
    path = tmp_path / "events.jsonl"
    with EventLog(path) as log:
        for event in (TORN, STALE, OVERLAP):
            log.emit(event)
    assert len(path.read_text().splitlines()) == 3
    assert read_events(path) == [TORN, STALE, OVERLAP]


def test_event_log_writes_through_before_close(tmp_path: Path) -> None:
    """An emitted event is in the file before close (nothing lost if the process dies)."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.emit(TORN)
    assert read_events(path) == [TORN]
    log.close()
    log.close()
    with pytest.raises(OracleError, match="closed"):
        log.emit(TORN)


def test_event_log_appends(tmp_path: Path) -> None:
    """Reopening a log appends to the existing lines."""
    path = tmp_path / "events.jsonl"
    for event in (TORN, STALE):
        with EventLog(path) as log:
            log.emit(event)
    assert read_events(path) == [TORN, STALE]


def test_bad_json_error_names_file_and_line(tmp_path: Path) -> None:
    """A broken second line: OracleError naming the path and line 2."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "torn_write"}\n{"event": "stale_wr\n')
    with pytest.raises(OracleError, match=f"^{re.escape(str(path))}:2: bad JSON"):
        read_events(path)


def test_line_that_is_not_an_event_is_an_error(tmp_path: Path) -> None:
    """A JSON line without an 'event' key is rejected with its line number; blanks are skipped."""
    path = tmp_path / "events.jsonl"
    path.write_text('\n{"event": "torn_write"}\n[1, 2]\n')
    with pytest.raises(OracleError, match=f"^{re.escape(str(path))}:3: not an event"):
        read_events(path)


def test_missing_files_are_oracle_errors(tmp_path: Path) -> None:
    """Reading a missing file or opening a log in a missing directory: OracleError with the path."""
    with pytest.raises(OracleError, match=r"nope\.jsonl"):
        read_events(tmp_path / "nope.jsonl")
    with pytest.raises(OracleError, match="missing"):
        EventLog(tmp_path / "missing" / "events.jsonl")


def test_summarize_counts_per_verdict_and_stream() -> None:
    """Counts per verdict (zeros included), the total, and per stream for paged verdicts."""
    summary = summarize([TORN, TORN, STALE, OVERLAP, {**TORN, "stream": 10}])
    assert summary == {
        "events": 5,
        "torn_write": 3,
        "stale_write": 1,
        "overlapping_write": 1,
        "lost_write": 0,
        "per_stream": {"1": {"torn_write": 2}, "2": {"stale_write": 1}, "10": {"torn_write": 1}},
    }


def test_oracle_events_through_event_log(tmp_path: Path) -> None:
    """A torn page judged by the Oracle lands in events.jsonl as one torn_write line."""
    path = tmp_path / "events.jsonl"
    torn = encode_page(3, 1, 2)[:4000] + encode_page(3, 1, 1)[4000:]
    with EventLog(path) as log:
        Oracle(log).write_arrived(WriteRequest(5, 0, 0, 4096, True, 0.25), torn)
    [event] = read_events(path)
    assert (event["event"], event["sector_map"], event["first_mismatch"]) == (
        "torn_write",
        [2, 2, 2, 2, 2, 2, 2, 2],
        4000,
    )
    assert summarize([event])["per_stream"] == {"3": {"torn_write": 1}}
