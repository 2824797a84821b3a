"""Offline crash-state checks: lost writes against the ledger, tears the state explains."""

from __future__ import annotations

from nbdfork.config import parse_params
from nbdfork.device.clock import FakeClock
from nbdfork.device.crash import choose_state, state_bytes
from nbdfork.device.device import Device
from nbdfork.oracle.crashcheck import CrashChecker, StateVerdict
from nbdfork.oracle.events import NullSink
from nbdfork.oracle.image import scan_image
from nbdfork.oracle.ledger import validate_ledger
from nbdfork.oracle.stamp import PAGE_SIZE, encode_page
from nbdfork.oracle.verify import judge


def _device(*pairs: tuple[str, str]) -> Device:
    config = parse_params([("size", "1M"), ("seed", "2"), ("cache", "volatile"), *pairs])
    return Device(config, judge(NullSink()), FakeClock())


def _workload(device: Device) -> dict[tuple[int, int], int]:
    """Pages 0-7: generation 1 made durable by a flush, generation 2 written after."""
    for page in range(8):
        device.pwrite(1, encode_page(1, page, 1), page * PAGE_SIZE, fua=False)
    device.flush()
    for page in range(8):
        device.pwrite(1, encode_page(1, page, 2), page * PAGE_SIZE, fua=False)
    return {(1, page): 1 for page in range(8)}


def _verdicts(device: Device, count: int) -> list[StateVerdict]:
    """Run the workload, then check `count` crash states of the result."""
    durable = _workload(device)
    assert device.cache is not None
    checker = CrashChecker(device.cache)
    pending = device.cache.pending.values()
    return [checker.check(choose_state(pending, seed=1, point=0, index=i), durable)
            for i in range(count)]  # fmt: skip


def test_ledger_reports_a_missing_or_older_generation() -> None:
    """validate_ledger flags keys whose newest copy is older than durable, or absent."""
    lost = validate_ledger({(1, 0): 3, (1, 1): 2, (1, 2): 1}, {(1, 0): 2, (1, 1): 5})
    assert [(w.page, w.durable, w.found) for w in lost] == [(0, 3, 2), (2, 1, None)]
    assert lost[0].event()["event"] == "lost_write"


def test_correct_device_loses_nothing_and_tears_are_explained() -> None:
    """With a correct cache no state loses a flushed generation; tears come from the state."""
    verdicts = _verdicts(_device(), 100)
    assert all(v.ok for v in verdicts)
    assert sum(v.torn_explained for v in verdicts) > 0


def test_ignore_flush_control_loses_writes() -> None:
    """The known-bad control (flush ignored) gives lost writes in some crash states."""
    verdicts = _verdicts(_device(("ignore-flush", "on")), 50)
    assert sum(len(v.lost) for v in verdicts) > 0


def test_checker_agrees_with_a_full_image_scan() -> None:
    """The incremental check finds the same newest generations as scanning the whole image."""
    device = _device()
    _workload(device)
    assert device.cache is not None
    checker = CrashChecker(device.cache)
    for index in range(20):
        state = choose_state(device.cache.pending.values(), seed=5, point=0, index=index)
        scan = scan_image(bytes(state_bytes(device.cache, state)))
        strict = {(1, p): 2 for p in range(8)}  # demand generation 2 everywhere
        lost = {(w.stream, w.page) for w in checker.check(state, strict).lost}
        missing = {(1, p) for p in range(8) if (scan.latest(1, p) or 0) < 2}
        assert lost == missing
