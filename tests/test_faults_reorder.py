"""Error injection and reply reordering, through the device and through real nbdkit."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbd
import pytest

from nbdfork.config import parse_params
from nbdfork.device.clock import MonotonicClock
from nbdfork.device.reorder import ReorderGate
from nbdfork.device.rng import DeviceRng
from nbdfork.errors import ConfigError
from nbdfork.oracle.stamp import encode_page
from tests.conftest import disconnect

Connect = Callable[..., Any]


def test_reorder_schedule_is_seeded() -> None:
    """Different seeds give different reply orders, the same seed the same one."""
    clock = MonotonicClock()
    orders = [ReorderGate(8, DeviceRng(s), clock).order(0) for s in (1, 1, 2)]
    assert orders[0] == orders[1]
    assert orders[0] != orders[2]
    assert sorted(orders[0]) == list(range(8))


def test_reorder_gate_releases_in_permuted_order() -> None:
    """Four writes of one window, arriving together, reply in the window's permutation."""
    gate = ReorderGate(4, DeviceRng(7), MonotonicClock(), timeout=5.0)
    replies: list[int] = []
    lock = threading.Lock()

    def write(request_id: int) -> None:
        gate.wait(request_id)
        with lock:
            replies.append(request_id)

    threads = [threading.Thread(target=write, args=(rid,)) for rid in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert replies == [1 + p for p in gate.order(0)]
    assert replies != [1, 2, 3, 4] or gate.order(0) == [0, 1, 2, 3]


def test_reorder_through_nbdkit_changes_completion_order(connect: Connect) -> None:
    """With reorder-window=8, eight aio writes on one connection complete out of order."""
    h = connect("size=16M", "reorder-window=8", "seed=3")
    done: list[int] = []

    def completed(index: int) -> Callable[[int], int]:
        def callback(error: int) -> int:
            done.append(index)
            return 1
        return callback

    for i in range(8):
        buf = nbd.Buffer.from_bytearray(bytearray(4096))
        h.aio_pwrite(buf, i * 4096, completion=completed(i))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    assert sorted(done) == list(range(8))
    assert done != list(range(8))


@pytest.mark.parametrize(
    ("pairs", "needle"),
    [([("error-probability", "0.5")], "error-probability: needs error-op="),
     ([("error-op", "write,fly")], "error-op: 'write,fly'"),
     ([("error-op", "write"), ("error-errno", "EWHAT")], "error-errno: 'EWHAT'"),
     ([("error-op", "write"), ("error-range", "5M-1M")], "error-range: '5M-1M' ends before")],
)
def test_bad_fault_specs_name_the_key(pairs: list[tuple[str, str]], needle: str) -> None:
    """Incomplete or bad error injection settings are refused naming the key."""
    with pytest.raises(ConfigError) as info:
        parse_params([("size", "1M"), *pairs])
    assert needle in str(info.value)


def test_injected_write_error_in_range(connect: Connect, tmp_path: Path) -> None:
    """Writes touching the error range fail with the errno; others succeed; both counted."""
    h = connect("size=16M", f"report={tmp_path}", "error-op=write", "error-range=0-8K",
                "error-errno=ENOSPC")  # fmt: skip
    with pytest.raises(nbd.Error) as info:
        h.pwrite(bytes(4096), 4096)
    assert info.value.errno == "ENOSPC"
    h.pwrite(bytes(4096), 1 << 20)
    disconnect(h)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["write_errors"], summary["errors_injected"], summary["bytes_written"]) == (
        1, 1, 4096
    )


def test_failed_write_is_never_counted_durable(connect: Connect, tmp_path: Path) -> None:
    """A failed generation-5 write does not make a later generation-4 write stale."""
    trigger = tmp_path / "fail-now"
    report = tmp_path / "report"
    h = connect("size=16M", f"report={report}", "error-op=write", f"error-trigger={trigger}")
    trigger.touch()
    with pytest.raises(nbd.Error):
        h.pwrite(encode_page(1, 0, 5), 0)
    trigger.unlink()
    h.pwrite(encode_page(1, 0, 4), 0)
    disconnect(h)
    assert (report / "events.jsonl").read_text() == ""
    assert json.loads((report / "summary.json").read_text())["write_errors"] == 1


def test_flush_error_is_reported_to_the_client(connect: Connect) -> None:
    """error-op=flush makes FLUSH fail with EIO."""
    h = connect("size=1M", "error-op=flush")
    with pytest.raises(nbd.Error) as info:
        h.flush()
    assert info.value.errno == "EIO"
