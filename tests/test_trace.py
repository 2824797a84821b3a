"""Traces: record through the device, read back, replay, dm-log-writes export, golden files."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from nbdfork.config import parse_params
from nbdfork.device.cache import CacheModel
from nbdfork.device.clock import FakeClock
from nbdfork.device.device import Device
from nbdfork.device.store import Store
from nbdfork.device.trace import Op, export_log_writes, read_trace, replay, replay_cache
from nbdfork.errors import OracleError
from nbdfork.oracle.events import NullSink
from nbdfork.oracle.verify import judge

GOLDEN = Path(__file__).parent / "golden" / "trace"
SIZE = 64 << 10


def _record_session(path: Path) -> Device:
    """A fixed request sequence on a traced device with a fake clock."""
    config = parse_params([("size", str(SIZE)), ("seed", "1"), ("trace", str(path)),
                           ("write-latency", "1ms")])  # fmt: skip
    device = Device(config, judge(NullSink()), FakeClock())
    device.pwrite(1, b"\x11" * 4096, 0, fua=False)
    device.pwrite(1, b"\x22" * 1024, 8192, fua=True)
    device.flush(1)
    device.trim(4096, 16384, fua=False)
    device.pwrite(2, b"\x33" * 512, 512, fua=False)
    device.pread(bytearray(512), 0)
    device.close()
    return device


def test_trace_records_every_request_in_reply_order(tmp_path: Path) -> None:
    """Writes, FUA, flush (with the writes it covers) and trim are recorded in order."""
    _record_session(tmp_path / "t.trace")
    records = list(read_trace(tmp_path / "t.trace"))
    ops = [Op.WRITE, Op.WRITE, Op.FLUSH, Op.TRIM, Op.WRITE, Op.READ, Op.CLOSE]
    assert [r.op for r in records] == ops  # CLOSE of connection 0: the device stopped
    assert [r.fua for r in records] == [False, True, False, False, False, False, False]
    assert records[-1].connection == 0 and records[-1].tick > records[4].tick
    assert records[2].seq == 2  # the flush covers the two writes replied before it
    assert records[4].connection == 2 and records[4].data == b"\x33" * 512
    assert records[0].reply - records[0].arrival == pytest.approx(0.001)


def test_replay_rebuilds_the_device_contents(tmp_path: Path) -> None:
    """Replaying the whole trace gives what the device held; replaying 1 record, the first."""
    _record_session(tmp_path / "t.trace")
    image = Store(SIZE)
    assert replay(tmp_path / "t.trace", image) == 7
    assert image.read(0, 1024) == b"\x11" * 512 + b"\x33" * 512
    assert image.read(8192, 1024) == b"\x22" * 1024
    partial = Store(SIZE)
    replay(tmp_path / "t.trace", partial, until=1)
    assert partial.read(512, 512) == b"\x11" * 512


def test_replay_through_cache_applies_the_durability_rule(tmp_path: Path) -> None:
    """Fed through the cache model, the trace leaves only the write after the flush pending."""
    _record_session(tmp_path / "t.trace")
    cache = CacheModel(Store(SIZE))
    records = list(replay_cache(tmp_path / "t.trace", cache))
    assert len(records) == 7
    assert [(e.offset, len(e.data)) for e in cache.pending.values()] == [(512, 512)]
    assert cache.media.read(0, 512) == b"\x11" * 512


def test_log_writes_export_layout(tmp_path: Path) -> None:
    """The dm-log-writes log: super block, then one sector per entry header plus data."""
    _record_session(tmp_path / "t.trace")
    log = tmp_path / "t.log"
    assert export_log_writes(tmp_path / "t.trace", log) == 5
    raw = log.read_bytes()
    magic, version, entries, sectorsize = struct.unpack_from("<QQQI", raw, 0)
    assert (magic, version, entries, sectorsize) == (0x6A736677736872, 1, 5, 512)
    first = struct.unpack_from("<QQQQ", raw, 512)
    assert first == (0, 8, 0, 0)  # sector 0, 8 sectors, no flags
    assert raw[1024 : 1024 + 4096] == b"\x11" * 4096
    second = struct.unpack_from("<QQQQ", raw, 1024 + 4096)
    assert second == (16, 2, 2, 0)  # FUA flag
    assert len(raw) == 512 * (1 + 1 + 8 + 1 + 2 + 1 + 1 + 1 + 1)


def test_golden_trace_and_log(tmp_path: Path) -> None:
    """The trace and log of the fixed session match the golden files byte for byte."""
    _record_session(tmp_path / "t.trace")
    export_log_writes(tmp_path / "t.trace", tmp_path / "t.log")
    if os.environ.get("NBDFORK_UPDATE_GOLDEN"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        (GOLDEN / "session.trace").write_bytes((tmp_path / "t.trace").read_bytes())
        (GOLDEN / "session.log.sha256").write_text(_sha(tmp_path / "t.log") + "\n")
    assert (tmp_path / "t.trace").read_bytes() == (GOLDEN / "session.trace").read_bytes()
    assert _sha(tmp_path / "t.log") == (GOLDEN / "session.log.sha256").read_text().strip()
    records = list(read_trace(GOLDEN / "session.trace"))
    assert [r.request_id for r in records] == [1, 2, 3, 4, 5, 6, 0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cut_trace_is_a_clear_error(tmp_path: Path) -> None:
    """A truncated trace names the record that is cut short; a non-trace names the magic."""
    _record_session(tmp_path / "t.trace")
    data = (tmp_path / "t.trace").read_bytes()
    (tmp_path / "cut.trace").write_bytes(data[: -2 * 64 - 100])  # into record 4's data
    with pytest.raises(OracleError, match=r"record 4 data is cut short"):
        list(read_trace(tmp_path / "cut.trace"))
    (tmp_path / "bad.trace").write_bytes(b"hello")
    with pytest.raises(OracleError, match="bad magic"):
        list(read_trace(tmp_path / "bad.trace"))
