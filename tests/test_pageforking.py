"""The page-forking model: its page cache state machine, writeback engine and options without
nbdkit, then each policy against the real device, whose oracle gives every verdict."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from nbdfork.commands import model as model_command
from nbdfork.errors import ConfigError
from nbdfork.oracle.stamp import PageStatus, decode_page, encode_page
from nbdfork.pageforking.cache import PAGE_SIZE, Page, PageCache
from nbdfork.pageforking.compare import load_kernel_rows
from nbdfork.pageforking.device import parse_latencies, parse_reorder
from nbdfork.pageforking.export import Done
from nbdfork.pageforking.policy import Policy, parse_policies
from nbdfork.pageforking.report import write_report
from nbdfork.pageforking.run import RunResult, RunSpec, derive_seeds, run_model
from nbdfork.pageforking.sweep import SweepPlan, run_sweep
from nbdfork.pageforking.writeback import WritebackEngine, WritebackTuning, send_copy
from nbdfork.pageforking.writer import Workload

BLOCKS = 3
WAIT = 10.0  # seconds a test waits for another thread before failing


def _page(generation: int, page: int = 0) -> bytes:
    return encode_page(1, page, generation)


# --- the page cache, one policy at a time, without threads ---------------------------------


def test_none_stores_into_the_page_under_writeback() -> None:
    """none: a store lands in the very page being written, and redirties it."""
    cache = PageCache(Policy.NONE, BLOCKS)
    cache.store(0, _page(1), now=0.0)
    in_flight = cache.start_writeback(0, now=0.0)
    assert in_flight is not None and in_flight.writeback and not in_flight.dirty
    result = cache.store(0, _page(2), now=0.0)
    assert result.unstable and cache.page(0) is in_flight
    assert bytes(in_flight.data) == _page(2) and in_flight.dirty


def test_a_due_page_waits_for_the_write_of_its_block_in_flight() -> None:
    """none/fork: a block's next write is deferred until its write in flight completes."""
    for policy in (Policy.NONE, Policy.FORK):
        cache = PageCache(policy, BLOCKS)
        cache.store(0, _page(1), now=0.0)
        first = cache.start_writeback(0, now=0.0)
        assert first is not None
        cache.store(0, _page(2), now=1.0)
        assert cache.start_writeback(0, now=2.0) is None
        assert cache.end_writeback(first, ok=True)  # the deferred write may go now
        second = cache.start_writeback(0, now=5.0)
        assert second is not None and bytes(second.data) == _page(2)
        stats = cache.stats()
        assert (stats.deferrals, stats.deferral_s, stats.writebacks) == (1, [3.0], 2)


def test_fork_copies_and_leaves_the_page_in_flight_alone() -> None:
    """fork: a store to a page under writeback gets a copy; the old page keeps its bytes."""
    cache = PageCache(Policy.FORK, BLOCKS)
    cache.store(1, _page(1), now=0.0)
    old = cache.start_writeback(1, now=0.0)
    assert old is not None
    result = cache.store(1, _page(2), now=0.0)
    assert result.forked and cache.page(1) is not old and old.detached
    assert bytes(old.data) == _page(1) and bytes(cache.page(1).data) == _page(2)
    stats = cache.stats()
    assert (stats.copies, stats.bytes_copied, stats.fork_bytes, stats.fork_bytes_peak) == (
        1, PAGE_SIZE, PAGE_SIZE, PAGE_SIZE,
    )  # fmt: skip
    cache.end_writeback(old, ok=True)
    assert cache.stats().fork_bytes == 0


def test_fork_unordered_puts_two_copies_of_a_block_in_flight() -> None:
    """fork-unordered: a fork's write is sent while its predecessor is still in flight."""
    cache = PageCache(Policy.FORK_UNORDERED, BLOCKS)
    cache.store(2, _page(1), now=0.0)
    first = cache.start_writeback(2, now=0.0)
    cache.store(2, _page(2), now=0.0)
    second = cache.start_writeback(2, now=0.0)
    assert first is not None and second is not None and first is not second
    assert cache.in_flight(2) == 2 and cache.stats().in_flight_per_block_peak == 2
    assert not cache.end_writeback(first, ok=True)


def test_stable_store_waits_until_writeback_ends() -> None:
    """stable: a store to a page under writeback blocks until end_writeback, then lands."""
    cache = PageCache(Policy.STABLE, BLOCKS)
    cache.store(0, _page(1), now=0.0)
    page = cache.start_writeback(0, now=0.0)
    assert page is not None
    returned = threading.Event()

    def writer() -> None:
        assert cache.store(0, _page(2), now=0.0).waited
        returned.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert not returned.wait(0.2)  # still waiting: the in-flight bytes are untouched
    assert bytes(page.data) == _page(1)
    cache.end_writeback(page, ok=True)
    assert returned.wait(WAIT)
    thread.join(WAIT)
    assert bytes(cache.page(0).data) == _page(2) and cache.stats().waits == 1


def test_due_blocks_follow_dirty_expiry_oldest_first() -> None:
    """The flusher picks pages dirty for at least dirty_expire, the oldest first."""
    cache = PageCache(Policy.NONE, BLOCKS)
    cache.store(2, _page(1), now=1.0)
    cache.store(0, _page(1), now=2.0)
    cache.store(1, _page(1), now=2.5)
    assert cache.due_blocks(now=3.0, expire=1.0) == [2, 0]
    assert cache.due_blocks(now=10.0, expire=1.0) == [2, 0, 1]


class CacheMachine(RuleBasedStateMachine):
    """Stores, writeback starts and completions in any order, checked against the policy."""

    policy = Policy.FORK

    def __init__(self) -> None:
        super().__init__()
        self.cache = PageCache(self.policy, BLOCKS)
        self.in_flight: list[tuple[Page, bytes]] = []  # each write and the bytes it started with
        self.generation = 0
        self.now = 0.0

    def _start(self, block: int) -> None:
        page = self.cache.start_writeback(block, self.now)
        if page is not None:
            self.in_flight.append((page, bytes(page.data)))

    @rule(block=st.integers(0, BLOCKS - 1))
    def store(self, block: int) -> None:
        """A writer stores a new generation (stable: only when it would not block)."""
        if self.policy.waits and self.cache.page(block).writeback:
            return
        self.generation += 1
        self.now += 1.0
        self.cache.store(block, _page(self.generation, block), self.now)
        assert bytes(self.cache.page(block).data) == _page(self.generation, block)

    @rule(block=st.integers(0, BLOCKS - 1))
    def start(self, block: int) -> None:
        """The flusher starts writeback of a block."""
        self._start(block)

    @precondition(lambda self: bool(self.in_flight))
    @rule(index=st.integers(0, 100))
    def complete(self, index: int) -> None:
        """Some write completes, in any order; a deferred write then goes, as the engine does."""
        page, _ = self.in_flight.pop(index % len(self.in_flight))
        if self.cache.end_writeback(page, ok=True):
            self._start(page.block)

    @invariant()
    def in_flight_bytes_are_stable_unless_none(self) -> None:
        """Only `none` lets a page change while its write is in flight."""
        if self.policy is not Policy.NONE:
            for page, sent in self.in_flight:
                assert bytes(page.data) == sent

    @invariant()
    def one_write_per_block_unless_unordered(self) -> None:
        """Only fork-unordered has two writes of one block in flight."""
        if not self.policy.overlaps:
            blocks = [page.block for page, _ in self.in_flight]
            assert len(blocks) == len(set(blocks))

    @invariant()
    def fork_memory_is_the_detached_pages_in_flight(self) -> None:
        """fork_bytes counts exactly the replaced pages still held by their writes."""
        detached = sum(PAGE_SIZE for page, _ in self.in_flight if page.detached)
        assert self.cache.stats().fork_bytes == detached


def _machine_test(policy: Policy) -> type:
    machine = type(f"CacheMachine_{policy.name}", (CacheMachine,), {"policy": policy})
    case: type = machine.TestCase
    case.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
    return case


TestCacheNone = _machine_test(Policy.NONE)
TestCacheStable = _machine_test(Policy.STABLE)
TestCacheFork = _machine_test(Policy.FORK)
TestCacheForkUnordered = _machine_test(Policy.FORK_UNORDERED)


# --- the send path and the engine, with a fake device ---------------------------------------


def test_send_copy_reads_the_live_page_so_a_store_mid_copy_tears() -> None:
    """A store between two sectors of the send copy gives a torn page, per the oracle."""
    page = bytearray(_page(1))
    pauses: list[int] = []

    def pause() -> None:
        if not pauses:
            page[:] = _page(2)
        pauses.append(1)

    torn = decode_page(send_copy([page], pause)[0])
    assert torn.status is PageStatus.TORN
    assert torn.sector_generations == (1, 2, 2, 2, 2, 2, 2, 2) and len(pauses) == 7
    assert decode_page(send_copy([page], lambda: None)[0]).status is PageStatus.VALID


@dataclass
class FakeDevice:
    """Records writes; the test completes them one by one."""

    writes: list[tuple[bytes, int, Done]] = field(default_factory=list)
    arrived: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def write(self, payload: bytearray, offset: int, done: Done) -> None:
        self.writes.append((bytes(payload), offset, done))
        self.arrived.release()

    def flush(self, done: Done) -> None:
        done(True)


EngineFor = Callable[[Policy], tuple[PageCache, FakeDevice, WritebackEngine]]


@pytest.fixture
def engine_for() -> Iterator[EngineFor]:
    """Engines with a running flusher (that only wakes when kicked) over a FakeDevice."""
    engines: list[WritebackEngine] = []

    def make(policy: Policy) -> tuple[PageCache, FakeDevice, WritebackEngine]:
        cache, device = PageCache(policy, BLOCKS), FakeDevice()
        engine = WritebackEngine(cache, device, WritebackTuning(dirty_expire=60, interval=60))
        engines.append(engine)
        engine.start()
        return cache, device, engine

    yield make
    for engine in engines:
        engine.stop()


def test_engine_sends_a_fork_only_after_its_predecessor_completed(engine_for: EngineFor) -> None:
    """fork: the engine holds the fork's write and the flusher sends it on completion."""
    cache, device, engine = engine_for(Policy.FORK)
    cache.store(1, _page(1, 1), now=0.0)
    assert engine.submit([1]) == 1
    cache.store(1, _page(2, 1), now=0.0)
    assert engine.submit([1]) == 0 and len(device.writes) == 1
    device.writes[0][2](True)  # the first write completes
    assert device.arrived.acquire(timeout=WAIT) and device.arrived.acquire(timeout=WAIT)
    payload, offset, _ = device.writes[1]
    assert (payload, offset) == (_page(2, 1), PAGE_SIZE)


def test_engine_fork_unordered_sends_both_copies_at_once(engine_for: EngineFor) -> None:
    """fork-unordered: two writes of one block are handed to the device together."""
    cache, device, engine = engine_for(Policy.FORK_UNORDERED)
    cache.store(0, _page(1), now=0.0)
    engine.submit([0])
    cache.store(0, _page(2), now=0.0)
    assert engine.submit([0]) == 1
    assert [w[0] for w in device.writes] == [_page(1), _page(2)]


def test_fsync_waits_for_every_copy_in_flight(engine_for: EngineFor) -> None:
    """fsync returns only when the block is clean and no copy of it is in flight."""
    cache, device, engine = engine_for(Policy.FORK_UNORDERED)
    cache.store(0, _page(1), now=0.0)
    engine.submit([0])
    cache.store(0, _page(2), now=0.0)
    returned = threading.Event()
    thread = threading.Thread(target=lambda: (engine.fsync([0]), returned.set()))
    thread.start()
    assert device.arrived.acquire(timeout=WAIT) and device.arrived.acquire(timeout=WAIT)
    device.writes[1][2](True)  # the newer copy completes first
    assert not returned.wait(0.2)
    device.writes[0][2](True)
    assert returned.wait(WAIT)
    thread.join(WAIT)


# --- options and seeds ----------------------------------------------------------------------


def test_options_parse_and_name_the_bad_key() -> None:
    """Policies, latencies and reorderings parse; a bad one raises ConfigError with its key."""
    assert parse_policies("fork,stable") == (Policy.FORK, Policy.STABLE)
    assert parse_latencies("0.5ms,2ms") == (0.0005, 0.002)
    for bad, parse in (("fork,fork", parse_policies), ("tear", parse_policies),
                       ("0ms", parse_latencies), ("jitter:2", parse_reorder)):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            parse(bad)
        assert info.value.key in ("--policy", "--latency", "--reorder")


def test_reorder_maps_onto_device_parameters() -> None:
    """--reorder becomes the plugin's write-latency (and reorder-window) parameters."""
    assert parse_reorder("off").device_params(0.002) == [("write-latency", "2ms")]
    assert parse_reorder("jitter:0.9").device_params(0.002) == [
        ("write-latency", "uniform:0.2ms:3.8ms")
    ]
    assert parse_reorder("lognormal:0.5").device_params(0.004) == [
        ("write-latency", "lognormal:4ms:0.5")
    ]
    assert ("reorder-window", "8") in parse_reorder("window:8").device_params(0.001)


def test_same_seed_same_choices_other_rep_differs() -> None:
    """(seed, rep) fixes the device seed and every writer's draws; another rep changes them."""
    a_seed, a = derive_seeds(7, 0, 3)
    b_seed, b = derive_seeds(7, 0, 3)
    c_seed, c = derive_seeds(7, 1, 3)
    draws = [[g.integers(0, 1 << 30, 8).tolist() for g in gens] for gens in (a, b, c)]
    assert a_seed == b_seed and draws[0] == draws[1]
    assert a_seed != c_seed and draws[0] != draws[2]


def test_kernel_report_rows_load(tmp_path: Path) -> None:
    """--compare reads the stable_writes 0/1 runs of `nbdfork run`'s report.json."""
    runs = [
        {"fs": "ext4", "stable_writes": 0, "workload": "pwrite", "torn": 505,
         "stamped_pages": 21866, "writer_latency_ms": {"p50": 0.1, "p99": 1.1}},
        {"fs": "xfs", "stable_writes": 1, "workload": "pwrite", "torn": 0,
         "stamped_pages": 22295, "writer_latency_ms": {"p50": None, "p99": 5.2}},
        {"fs": "btrfs", "stable_writes": None, "workload": "pwrite"},
    ]  # fmt: skip
    (tmp_path / "report.json").write_text(json.dumps({"runs": runs}))
    rows = load_kernel_rows(tmp_path)
    assert [(r.fs, r.model_policy, r.torn, r.p99_ms) for r in rows] == [
        ("ext4", "none", 505, 1.1), ("xfs", "stable", 0, 5.2),
    ]  # fmt: skip


# --- each policy against real nbdkit --------------------------------------------------------

LATENCY = 0.004
JITTER = parse_reorder("jitter:0.9")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, RunResult]]:
    """The four policies on one device setting (4 ms, jitter:0.9), and their report."""
    out = tmp_path_factory.mktemp("model")
    plan = SweepPlan(tuple(Policy), (LATENCY,), (JITTER,), seed=11, seconds=2.0)
    results = run_sweep(plan, out)
    write_report(out, plan, results)
    return out, {r.spec.policy.value: r for r in results}


@pytest.mark.slow
def test_none_tears(sweep: tuple[Path, dict[str, RunResult]]) -> None:
    """none: stores into pages under writeback reach the device torn."""
    none = sweep[1]["none"]
    assert none.verdicts.torn > 0 and none.phase.cache.unstable_stores > 0
    assert none.verdicts.stale == 0 and none.verdicts.overlapping == 0


@pytest.mark.slow
def test_stable_never_tears_but_stalls(sweep: tuple[Path, dict[str, RunResult]]) -> None:
    """stable: no torn page, and writers wait about a device write for pages in flight."""
    stable = sweep[1]["stable"]
    assert stable.verdicts.torn == 0 and stable.verdicts.stale == 0
    assert stable.phase.cache.waits > 0
    assert stable.stall_ms()["p99"] >= 0.5 * LATENCY * 1e3


@pytest.mark.slow
def test_fork_is_clean_and_stalls_far_less_than_stable(
    sweep: tuple[Path, dict[str, RunResult]],
) -> None:
    """fork: no torn, stale or overlapping write; p99 stall far below stable's; faster."""
    fork, stable = sweep[1]["fork"], sweep[1]["stable"]
    v = fork.verdicts
    assert (v.torn, v.stale, v.overlapping) == (0, 0, 0)
    assert fork.phase.cache.copies > 0 and fork.phase.cache.deferrals > 0
    assert fork.stall_ms()["p99"] * 5 < stable.stall_ms()["p99"]
    assert fork.throughput > stable.throughput


@pytest.mark.slow
def test_fork_unordered_lets_an_older_copy_land_last(
    sweep: tuple[Path, dict[str, RunResult]],
) -> None:
    """fork-unordered with a reordering device: the oracle sees stale and overlapping writes."""
    unordered = sweep[1]["fork-unordered"]
    assert unordered.verdicts.stale > 0 and unordered.verdicts.overlapping > 0
    assert unordered.verdicts.torn == 0
    assert unordered.phase.cache.in_flight_per_block_peak >= 2


@pytest.mark.slow
def test_report_has_every_policy_and_the_plots(
    sweep: tuple[Path, dict[str, RunResult]],
) -> None:
    """report.json carries the contract fields per run; report.md the table and plots."""
    out, results = sweep
    report = json.loads((out / "report.json").read_text())
    assert [r["policy"] for r in report["runs"]] == ["none", "stable", "fork", "fork-unordered"]
    for run in report["runs"]:
        for key in ("torn", "stale", "overlapping", "writes", "writer_latency_ms", "copies",
                    "fork_bytes_peak", "device", "seed"):  # fmt: skip
            assert key in run, key
        assert set(run["writer_latency_ms"]) == {"p50", "p99", "p999", "max"}
    assert report["runs"][0]["torn"] == results["none"].verdicts.torn
    markdown = (out / "report.md").read_text()
    assert "| 4 ms | jitter:0.9 | fork-unordered |" in markdown
    for png in ("stall_cdf.png", "throughput_vs_latency.png"):
        assert (out / png).stat().st_size > 10_000


@pytest.mark.slow
def test_fork_with_fsync_stays_ordered(tmp_path: Path) -> None:
    """fork with fsync: every fsync completes, and the device sees no stale or torn write."""
    spec = RunSpec(Policy.FORK, LATENCY, JITTER, seed=11, seconds=2.0,
                   workload=Workload(fsync_every=8))  # fmt: skip
    result = run_model(spec, tmp_path)
    assert len(result.phase.fsyncs) > 10
    assert (result.verdicts.torn, result.verdicts.stale, result.verdicts.overlapping) == (0, 0, 0)


@pytest.mark.slow
def test_cli_writes_the_report_beside_a_kernel_report(tmp_path: Path) -> None:
    """`nbdfork model --compare` puts the kernel's stable_writes rows beside none/stable."""
    kernel = tmp_path / "kernel"
    kernel.mkdir()
    run = {"fs": "ext4", "stable_writes": 1, "workload": "pwrite", "torn": 0,
           "stamped_pages": 100, "writer_latency_ms": {"p50": 0.2, "p99": 5.5}}  # fmt: skip
    (kernel / "report.json").write_text(json.dumps({"runs": [run]}))
    parser = argparse.ArgumentParser()
    model_command.register(parser.add_subparsers())
    args = parser.parse_args(["model", "--policy", "none,stable", "--seconds", "0.5",
                              "--latency", "1ms", "--seed", "3", "--compare", str(kernel),
                              "--out", str(tmp_path / "out")])  # fmt: skip
    assert args.handler(args) == 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Model vs real kernel" in markdown
    assert "| ext4 pwrite stable_writes=1 | stable | 100 | 0 |" in markdown
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["seed"] == 3 and [r["policy"] for r in report["runs"]] == ["none", "stable"]
