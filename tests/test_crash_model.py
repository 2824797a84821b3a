"""The volatile cache and crash states against the NBD durability rule (a state machine)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from nbdfork.config import parse_params
from nbdfork.device.clock import FakeClock
from nbdfork.device.crash import build_image, choose_state, state_bytes
from nbdfork.device.device import Device
from nbdfork.oracle.events import NullSink
from nbdfork.oracle.verify import judge

SECTOR = 512
SECTORS = 16


def _device(*pairs: tuple[str, str]) -> Device:
    config = parse_params([("size", str(SECTORS * SECTOR)), ("seed", "5"), *pairs])
    return Device(config, judge(NullSink()), FakeClock())


class DurabilityMachine(RuleBasedStateMachine):
    """Writes, FUA writes, flushes and crashes on a device with a volatile cache."""

    def __init__(self) -> None:
        super().__init__()
        self.device = _device(("cache", "volatile"), ("oracle", "off"))
        self.latest = [bytes(SECTOR)] * SECTORS  # what reads must return
        # per sector: values a crash may leave = last durable value + every later write
        self.allowed: list[list[bytes]] = [[bytes(SECTOR)] for _ in range(SECTORS)]
        self.unflushed: list[list[bytes]] = [[] for _ in range(SECTORS)]
        self.crashes = 0

    @rule(
        first=st.integers(0, SECTORS - 1),
        count=st.integers(1, 4),
        fill=st.integers(1, 255),
        fua=st.booleans(),
    )
    def write(self, first: int, count: int, fill: int, fua: bool) -> None:
        """A write of `count` sectors of byte `fill`, with or without FUA."""
        count = min(count, SECTORS - first)
        value = bytes([fill]) * SECTOR
        self.device.pwrite(1, value * count, first * SECTOR, fua=fua)
        for s in range(first, first + count):
            self.latest[s] = value
            if fua:  # durable now: older values can no longer be what a crash leaves
                self.allowed[s] = [value]
                self.unflushed[s] = []
            else:
                self.allowed[s].append(value)
                self.unflushed[s].append(value)

    @rule()
    def flush(self) -> None:
        """A flush makes every replied write durable."""
        self.device.flush()
        self.allowed = [[v] for v in self.latest]
        self.unflushed = [[] for _ in range(SECTORS)]

    @rule(index=st.integers(0, 1000))
    def crash(self, index: int) -> None:
        """Every crash state keeps, per sector, the durable value or a later acked one."""
        cache = self.device.cache
        assert cache is not None
        state = choose_state(cache.pending.values(), seed=9, point=self.crashes, index=index)
        image = state_bytes(cache, state)
        for s in range(SECTORS):
            assert bytes(image[s * SECTOR : (s + 1) * SECTOR]) in self.allowed[s], s
        self.crashes += 1

    @precondition(lambda self: self.crashes > 0)
    @rule()
    def crash_is_reproducible(self) -> None:
        """The same (seed, point, index) gives the same state."""
        cache = self.device.cache
        assert cache is not None
        a = choose_state(cache.pending.values(), seed=3, point=1, index=2)
        b = choose_state(cache.pending.values(), seed=3, point=1, index=2)
        assert a == b

    @invariant()
    def reads_see_latest_acknowledged(self) -> None:
        """Before any crash, reads return the latest acknowledged data."""
        buf = bytearray(SECTORS * SECTOR)
        self.device.pread(buf, 0)
        assert bytes(buf) == b"".join(self.latest)

    def teardown(self) -> None:
        """Release the device."""
        self.device.close()


TestDurability = DurabilityMachine.TestCase
TestDurability.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_flush_covers_only_writes_replied_before_it() -> None:
    """A FLUSH leaves writes replied after its arrival volatile (checked on the cache)."""
    device = _device(("cache", "volatile"))
    cache = device.cache
    assert cache is not None
    device.pwrite(1, b"\x01" * SECTOR, 0, fua=False)
    cache.flush(covered=0)  # a flush that arrived before that write replied
    assert list(cache.pending) == [0]
    device.flush()
    assert cache.pending == {} and cache.media.read(0, SECTOR) == b"\x01" * SECTOR


def test_fua_write_is_durable_at_reply() -> None:
    """A FUA write is on the media as soon as it replies; a plain one is not."""
    device = _device(("cache", "volatile"))
    cache = device.cache
    assert cache is not None
    device.pwrite(1, b"\x02" * SECTOR, 0, fua=True)
    device.pwrite(1, b"\x03" * SECTOR, SECTOR, fua=False)
    assert cache.media.read(0, 2 * SECTOR) == b"\x02" * SECTOR + bytes(SECTOR)


def test_ignore_flush_makes_nothing_durable() -> None:
    """The known-bad control: FLUSH and FUA are acknowledged, the media stays empty."""
    device = _device(("cache", "volatile"), ("ignore-flush", "on"))
    cache = device.cache
    assert cache is not None
    device.pwrite(1, b"\x04" * SECTOR, 0, fua=True)
    device.flush()
    assert cache.media.read(0, SECTOR) == bytes(SECTOR)
    assert len(cache.pending) == 1


def test_newer_write_supersedes_older_pending_sectors() -> None:
    """Destaging an older write never overwrites a newer durable one."""
    device = _device(("cache", "volatile"))
    cache = device.cache
    assert cache is not None
    device.pwrite(1, b"\x05" * (2 * SECTOR), 0, fua=False)
    device.pwrite(1, b"\x06" * SECTOR, SECTOR, fua=True)
    device.flush()
    assert cache.media.read(0, 2 * SECTOR) == b"\x05" * SECTOR + b"\x06" * SECTOR


def test_cache_size_destages_in_seeded_order() -> None:
    """Over cache-size, seeded random writes are destaged; the same seed picks the same ones."""

    def media_after(seed: str) -> bytes:
        config = parse_params([("size", "64K"), ("seed", seed), ("cache", "volatile"),
                               ("cache-size", "2048"), ("oracle", "off")])  # fmt: skip
        device = Device(config, judge(NullSink()), FakeClock())
        for i in range(16):
            device.pwrite(1, bytes([i + 1]) * SECTOR, i * SECTOR, fua=False)
        assert device.cache is not None
        return device.cache.media.read(0, 16 * SECTOR)

    assert media_after("1") == media_after("1")
    assert media_after("1") != media_after("2")
    assert media_after("1").count(bytes(SECTOR)) >= 4  # about 4 sectors still cached


def test_torn_crash_states_keep_a_strict_subset_of_sectors() -> None:
    """Some crash states tear a multi-sector write: only part of its sectors reach media."""
    device = _device(("cache", "volatile"))
    device.pwrite(1, b"\x07" * (8 * SECTOR), 0, fua=False)
    assert device.cache is not None
    states = [choose_state(device.cache.pending.values(), seed=1, point=0, index=i)
              for i in range(200)]  # fmt: skip
    kept = {len(s.applied[0].sectors) for s in states if s.applied}
    assert 8 in kept and any(0 < k < 8 for k in kept)
    assert any(not s.applied for s in states)


def test_build_image_writes_the_state(tmp_path: Path) -> None:
    """The image file of a state equals its in-memory bytes."""
    device = _device(("cache", "volatile"))
    device.pwrite(1, b"\x08" * SECTOR, 0, fua=True)
    device.pwrite(1, b"\x09" * (4 * SECTOR), 4 * SECTOR, fua=False)
    assert device.cache is not None
    state = choose_state(device.cache.pending.values(), seed=4, point=0, index=3)
    path = tmp_path / "crash.img"
    build_image(device.cache, state, path)
    assert path.read_bytes() == bytes(state_bytes(device.cache, state))
