"""The plugin through real nbdkit: data path, oracle verdicts, report files, errors."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbd
import pytest

from nbdfork.oracle.stamp import encode_page
from tests.conftest import Server, disconnect, nbdkit_env, plugin_argv

Connect = Callable[..., Any]
PAGE = 4096


def _events(report: Path) -> list[dict[str, Any]]:
    text = (report / "events.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line]


def _summary(report: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((report / "summary.json").read_text())
    return data


def _splice(stream: int, page: int, old: int, new: int, sectors_new: int) -> bytes:
    """A page whose first `sectors_new` sectors are generation `new`, the rest `old`."""
    cut = sectors_new * 512
    return encode_page(stream, page, new)[:cut] + encode_page(stream, page, old)[cut:]


def test_reads_return_what_was_written(connect: Connect) -> None:
    """Data written at any offset reads back unchanged; unwritten space reads as zeroes."""
    h = connect("size=64M")
    payload = bytes(range(256)) * 64
    h.pwrite(payload, 12345 * 512)
    assert h.pread(len(payload), 12345 * 512) == payload
    assert h.pread(4096, 32 << 20) == bytes(4096)
    assert h.get_size() == 64 << 20


def test_trim_and_zero_read_back_as_zeroes(connect: Connect) -> None:
    """Trimmed and zeroed ranges read back as zeroes, neighbours intact."""
    h = connect("size=16M")
    h.pwrite(b"\x5a" * (1 << 20), 0)
    h.trim(8192, 4096)
    h.zero(20000, 1000)  # libnbd: (count, offset)
    data = h.pread(1 << 20, 0)
    assert data[:1000] == b"\x5a" * 1000
    assert data[1000:21000] == bytes(20000)
    assert data[21000:] == b"\x5a" * ((1 << 20) - 21000)


def test_fua_is_native_and_flush_is_advertised(connect: Connect) -> None:
    """The export advertises flush, FUA, trim, zero and multi-conn."""
    h = connect("size=1M")
    assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero()
    assert h.can_multi_conn()


def test_valid_pages_give_no_events_and_are_counted(connect: Connect, tmp_path: Path) -> None:
    """Valid stamped pages, rewritten with newer generations, give no verdicts."""
    h = connect("size=16M", f"report={tmp_path}")
    for generation in range(1, 4):
        batch = b"".join(encode_page(7, p, generation) for p in range(8))
        h.pwrite(batch, 1 << 20)
    disconnect(h)
    assert _events(tmp_path) == []
    summary = _summary(tmp_path)
    assert summary["stamped_pages"] == 24
    assert summary["counts"] == {"torn_write": 0, "stale_write": 0, "overlapping_write": 0}
    assert summary["writes"] == 3 and summary["bytes_written"] == 3 * 8 * PAGE


def test_torn_page_is_reported_with_its_sector_map(connect: Connect, tmp_path: Path) -> None:
    """A page whose first 3 sectors are generation 5 and the rest 4 gives one torn_write."""
    h = connect("size=16M", f"report={tmp_path}")
    h.pwrite(_splice(1, 9, old=4, new=5, sectors_new=3), 9 * PAGE)
    disconnect(h)
    (event,) = _events(tmp_path)
    assert event["event"] == "torn_write"
    assert event["offset"] == 9 * PAGE and event["stream"] == 1 and event["page"] == 9
    assert event["sector_map"] == [5, 5, 5, 4, 4, 4, 4, 4]
    assert event["generations"] == [4, 5]
    assert event["first_mismatch"] == 3 * 512 + 24  # the generation field of sector 3
    assert _summary(tmp_path)["counts"]["torn_write"] == 1


def test_older_generation_after_newer_reply_is_stale(connect: Connect, tmp_path: Path) -> None:
    """Generation 2 written after generation 3 was replied to at that lba is a stale_write."""
    h = connect("size=16M", f"report={tmp_path}")
    h.pwrite(encode_page(2, 0, 3), 0)
    h.pwrite(encode_page(2, 0, 2), 0)
    disconnect(h)
    (event,) = _events(tmp_path)
    assert event["event"] == "stale_write"
    assert (event["generation"], event["replied_generation"]) == (2, 3)


def test_concurrent_overlapping_writes_are_reported(connect: Connect, tmp_path: Path) -> None:
    """Two aio writes sharing sectors, both in flight (200 ms latency), give overlapping_write."""
    h = connect("size=16M", f"report={tmp_path}", "write-latency=200ms")
    first = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(8192)), 0)
    second = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(4096)), 4096)
    third = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(4096)), 65536)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    assert all(h.aio_command_completed(c) for c in (first, second, third))
    disconnect(h)
    (event,) = _events(tmp_path)
    assert event["event"] == "overlapping_write"
    assert event["offset"] == 4096 and event["length"] == 4096


def test_fua_and_flush_are_counted(connect: Connect, tmp_path: Path) -> None:
    """A FUA write and a flush reach the device as such and are counted in the summary."""
    h = connect("size=16M", f"report={tmp_path}")
    h.pwrite(encode_page(1, 0, 1), 0, nbd.CMD_FLAG_FUA)
    h.pwrite(encode_page(1, 1, 1), PAGE)
    h.flush()
    disconnect(h)
    summary = _summary(tmp_path)
    assert (summary["fua_writes"], summary["flushes"], summary["writes"]) == (1, 1, 2)


def test_summary_records_seed_and_settings(connect: Connect, tmp_path: Path) -> None:
    """summary.json records the seed and the device settings given."""
    h = connect("size=16M", f"report={tmp_path}", "seed=99", "write-latency=uniform:0ms:1ms")
    h.pwrite(bytes(4096), 0)
    disconnect(h)
    summary = _summary(tmp_path)
    assert summary["seed"] == 99 and summary["seed_given"] is True
    assert summary["settings"]["latency"]["write"] == "uniform:0ms:1ms"


@pytest.mark.parametrize(
    ("param", "needle"),
    [("size=12x", "size:"), ("colour=red", "colour: unknown parameter"),
     ("write-latency=9", "write-latency:"), ("oracle=maybe", "oracle:")],
)
def test_bad_parameter_fails_with_one_line_naming_it(param: str, needle: str) -> None:
    """A bad key or value makes nbdkit exit non-zero with one error line naming the key."""
    params = [param] if param.startswith("size=") else ["size=1M", param]
    argv = [a for a in plugin_argv(*params, single=False) if a != "--exit-with-parent"]
    result = subprocess.run(
        [argv[0], "--run", "true", *argv[1:]], env=nbdkit_env(), capture_output=True, text=True,
        timeout=30, check=False,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]


def test_sigterm_keeps_the_report(server: Callable[..., Server], tmp_path: Path) -> None:
    """SIGTERM with a client connected: nbdkit waits for it to leave, then the report is final."""
    report = tmp_path / "report"
    srv = server("size=16M", f"report={report}")
    h = nbd.NBD()
    h.connect_unix(str(srv.socket))
    h.pwrite(_splice(3, 1, old=1, new=2, sectors_new=5), PAGE)
    srv.proc.terminate()
    time.sleep(0.5)  # let nbdkit take the signal
    with pytest.raises(nbd.Error) as refused:
        h.pwrite(bytes(PAGE), 0)  # nbdkit's graceful shutdown refuses new requests
    # ESHUTDOWN; on a loaded machine nbdkit may already have dropped the idle connection
    assert refused.value.errno in ("ESHUTDOWN", "ENOTCONN", "ECONNRESET")
    with contextlib.suppress(nbd.Error):
        h.shutdown()
    assert srv.proc.wait(20) == 0
    assert [e["event"] for e in _events(report)] == ["torn_write"]
    summary = _summary(report)
    assert summary["counts"]["torn_write"] == 1 and summary["writes"] == 1


def test_sigkill_loses_nothing_recorded(server: Callable[..., Server], tmp_path: Path) -> None:
    """Even a SIGKILL keeps the events and a summary at most a second old."""
    report = tmp_path / "report"
    srv = server("size=16M", f"report={report}")
    h = nbd.NBD()
    h.connect_unix(str(srv.socket))
    h.pwrite(_splice(3, 1, old=1, new=2, sectors_new=5), PAGE)
    h.pwrite(encode_page(3, 2, 1), 2 * PAGE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (report / "summary.json").exists() and _summary(report)["writes"] == 2:
            break
        time.sleep(0.1)
    srv.proc.kill()
    srv.proc.wait(10)
    assert [e["event"] for e in _events(report)] == ["torn_write"]
    summary = _summary(report)
    assert (summary["writes"], summary["stamped_pages"]) == (2, 2)


def test_64g_device_with_a_few_mib_written_stays_small(server: Callable[..., Server]) -> None:
    """A 64 GiB device holding 16 MiB grows nbdkit's RSS by well under 64 MiB."""
    srv = server("size=64G")
    h = nbd.NBD()
    h.connect_unix(str(srv.socket))
    time.sleep(0.2)
    before = srv.rss()
    chunk = b"\x01" * (1 << 20)
    for i in range(16):
        h.pwrite(chunk, i * (4 << 30))
    grown = srv.rss() - before
    assert grown < 48 << 20, grown
    assert h.pread(16, 15 * (4 << 30)) == b"\x01" * 16
    h.shutdown()


def test_reused_report_dir_keeps_the_previous_run(connect: Connect, tmp_path: Path) -> None:
    """A second server on the same report dir sets the first run's files aside, unmixed."""
    h = connect("size=16M", f"report={tmp_path}")
    h.pwrite(_splice(1, 0, old=1, new=2, sectors_new=1), 0)
    disconnect(h)
    h = connect("size=16M", f"report={tmp_path}")
    h.pwrite(encode_page(1, 0, 3), 0)
    disconnect(h)
    assert _events(tmp_path) == []
    (previous,) = (tmp_path / "previous").iterdir()
    assert [e["event"] for e in _events(previous)] == ["torn_write"]
    assert _summary(previous)["writes"] == 1
