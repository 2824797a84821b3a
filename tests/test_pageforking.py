"""The page-forking model: its page cache state machine, writeback engine and options without
nbdkit, then each policy against the real device, whose oracle gives every verdict."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from nbdfork.errors import ConfigError, ReportError
from nbdfork.experiments.matrix import schema as run_schema
from nbdfork.experiments.model.cache import PAGE_SIZE, CacheStats, Page, PageCache
from nbdfork.experiments.model.compare import load_kernel_rows
from nbdfork.experiments.model.device import (
    DeviceSettings,
    Verdicts,
    parse_latencies,
    parse_reorder,
)
from nbdfork.experiments.model.experiment import EXPERIMENT as MODEL
from nbdfork.experiments.model.export import Done
from nbdfork.experiments.model.policy import Policy, parse_policies
from nbdfork.experiments.model.report import (
    model_report,
    render_markdown,
    render_model_report,
    write_report,
)
from nbdfork.experiments.model.run import RunResult, RunSpec, WriterPhase, derive_seeds, run_model
from nbdfork.experiments.model.schema import MODEL_SCHEMA, ModelReport, load_model_report
from nbdfork.experiments.model.summary import ratios, rows
from nbdfork.experiments.model.sweep import SweepPlan, run_sweep
from nbdfork.experiments.model.writeback import WritebackEngine, WritebackTuning, send_copy
from nbdfork.experiments.model.writer import Workload
from nbdfork.oracle.stamp import PageStatus, decode_page, encode_page

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


def _kernel_run(fs: str, stable_writes: int, torn: int, stamped: int, *, p50: float | None,
                p99: float | None, outcome: str = "violations") -> dict[str, object]:  # fmt: skip
    """One configuration of `nbdfork run`'s report.json, as JSON values."""
    run_id = f"{fs}-sw{stable_writes}-pwrite"
    return {
        "id": run_id, "kernel": "6.1.0-57-amd64", "fs": fs, "mkfs_options": [],
        "stable_writes": stable_writes, "workload": "pwrite", "seconds": 10.0,
        "writes": stamped, "stamped_pages": stamped, "torn": torn, "stale": 0,
        "overlapping": 0,
        "writer_latency_ms": {"p50": p50, "p99": p99, "p999": p99, "max": p99},
        "writer_latency_hist": {}, "writer_ops": stamped, "outcome": outcome, "error": None,
        "seed": 1, "device": {}, "durations": {}, "dir": f"runs/{run_id}",
    }  # fmt: skip


def _kernel_report(directory: Path, runs: list[dict[str, object]]) -> Path:
    """A real-kernel report.json holding `runs`, written through its own types."""
    report = run_schema.MatrixReport(
        kernel="6.1.0-57-amd64", accel="tcg", seed=1, started="2026-01-01T00:00:00+00:00",
        duration_s=60.0, harness=run_schema.HarnessTimings(boot_s=1.0, per_config_overhead_s=()),
        versions={}, runs=msgspec.convert(runs, tuple[run_schema.RunResult, ...]),
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    return run_schema.write_report(report, directory)


def test_kernel_report_rows_load(tmp_path: Path) -> None:
    """--compare reads the completed runs of `nbdfork run`'s report.json through its types."""
    _kernel_report(tmp_path, [
        _kernel_run("ext4", 0, 505, 21866, p50=0.1, p99=1.1),
        _kernel_run("xfs", 1, 0, 22295, p50=None, p99=5.2, outcome="passed"),
        _kernel_run("btrfs", 1, 0, 0, p50=None, p99=None, outcome="harness_error"),
    ])  # fmt: skip
    rows = load_kernel_rows(tmp_path)
    assert [(r.fs, r.model_policy, r.torn, r.p50_ms, r.p99_ms, r.kernel) for r in rows] == [
        ("ext4", "none", 505, 0.1, 1.1, "6.1.0-57-amd64"),
        ("xfs", "stable", 0, None, 5.2, "6.1.0-57-amd64"),
    ]  # fmt: skip


def test_kernel_report_that_is_not_one_is_refused(tmp_path: Path) -> None:
    """--compare on a bad real-kernel report names the file and the field."""
    path = _kernel_report(tmp_path, [_kernel_run("ext4", 0, 5, 100, p50=0.1, p99=1.1)])
    data = json.loads(path.read_text())
    data["runs"][0]["stable_writes"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=r"report\.json: runs\[0\]\.stable_writes: "):
        load_kernel_rows(tmp_path)
    _kernel_report(tmp_path, [_kernel_run("ext4", 0, 0, 0, p50=None, p99=None, outcome="vm_lost")])
    with pytest.raises(ReportError, match="no run of `nbdfork run` completed"):
        load_kernel_rows(tmp_path)


# --- report.json and its rendering, from synthetic runs (no nbdkit) -------------------------

PLAN = SweepPlan(tuple(Policy), (0.004,), (parse_reorder("jitter:0.9"),), seed=11,
                 seconds=2.0)  # fmt: skip


def _fake_result(spec: RunSpec, out: Path) -> RunResult:
    """A run with made-up but plausible numbers: stable stalls, none tears, fork copies."""
    rng = np.random.default_rng(list(spec.policy.value.encode()))
    scale = {"none": 1e-5, "stable": 2e-3, "fork": 2e-5, "fork-unordered": 2e-5}
    stalls = list(rng.exponential(scale[spec.policy.value], 2000))
    forks = spec.policy.forks
    cache = CacheStats(
        stores=2000, waits=300 if spec.policy.waits else 0, copies=150 if forks else 0,
        bytes_copied=150 * PAGE_SIZE if forks else 0, writebacks=900, deferrals=40,
        fork_bytes_peak=3 * PAGE_SIZE if forks else 0,
        in_flight_per_block_peak=2 if spec.policy.overlaps else 1,
        deferral_s=list(rng.exponential(2e-3, 40)),
    )  # fmt: skip
    phase = WriterPhase(spec.seconds, stalls, [], list(rng.exponential(4e-3, 900)), cache,
                        (0.5, 0.75))  # fmt: skip
    verdicts = Verdicts(
        torn=37 if spec.policy is Policy.NONE else 0,
        stale=3 if spec.policy.overlaps else 0, overlapping=5 if spec.policy.overlaps else 0,
        writes=900, stamped_pages=880, stale_phases={"reply": 3} if spec.policy.overlaps else {},
    )  # fmt: skip
    device = DeviceSettings(spec.latency, spec.reorder, 1234, spec.threads)
    return RunResult(spec, device, phase, verdicts, out / "runs" / spec.name)


@pytest.fixture
def fake_report(tmp_path: Path) -> tuple[Path, list[RunResult], list[Path]]:
    """write_report over synthetic runs of PLAN: the directory, the runs, the files written."""
    results = [_fake_result(spec, tmp_path) for spec in PLAN.specs()]
    return tmp_path, results, write_report(tmp_path, PLAN, results)


def test_report_json_loads_back_equal(
    fake_report: tuple[Path, list[RunResult], list[Path]],
) -> None:
    """report.json decodes into the very ModelReport that was written, field for field."""
    out, results, written = fake_report
    assert [p.name for p in written] == ["report.json", "stall_cdf.png",
                                         "throughput_vs_latency.png", "report.md",
                                         "report.html"]  # fmt: skip
    loaded = load_model_report(out)
    assert loaded.schema == MODEL_SCHEMA and loaded.seed == 11
    assert loaded == msgspec.structs.replace(model_report(PLAN, results), created=loaded.created)
    assert [r.policy for r in loaded.runs] == ["none", "stable", "fork", "fork-unordered"]
    assert loaded.runs[0].torn == 37 and loaded.runs[0].writer_latency_hist.total == 2000
    assert loaded.runs[3].stale_phases == {"reply": 3}
    assert loaded.kernel is None and len(loaded.fork_vs_stable) == 1
    again = msgspec.json.format(msgspec.json.encode(loaded), indent=2) + b"\n"
    assert again == (out / "report.json").read_bytes()


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("torn", -1, "expected `int` >= 0"),
    ("writes", "many", "expected `int`, got `str`"),
    ("policy", "forked", "invalid enum value 'forked'"),
    ("writer_latency_ms", {"p50": 1.0}, "missing required field"),
])  # fmt: skip
def test_a_broken_run_field_is_named(
    fake_report: tuple[Path, list[RunResult], list[Path]], field: str, value: object,
    problem: str,
) -> None:  # fmt: skip
    """A report.json with one bad field in runs[0] is one ReportError naming file and field."""
    path = fake_report[0] / "report.json"
    data = json.loads(path.read_text())
    data["runs"][0][field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError) as info:
        load_model_report(path)
    assert str(info.value).startswith(f"{path}: runs[0].{field}")
    assert problem in str(info.value)


def test_a_report_of_another_kind_is_refused(
    fake_report: tuple[Path, list[RunResult], list[Path]],
) -> None:
    """The run report's schema is not the model's, and render says so."""
    out = fake_report[0]
    data = json.loads((out / "report.json").read_text())
    (out / "report.json").write_text(json.dumps({**data, "schema": "nbdfork.run/1"}))
    with pytest.raises(ReportError, match=r"schema: unknown schema 'nbdfork\.run/1'"):
        render_model_report(out)


def test_render_from_report_json_alone_gives_the_same_report(
    fake_report: tuple[Path, list[RunResult], list[Path]],
) -> None:
    """render_model_report(OUT) redraws report.md, report.html and the plots from report.json:
    the same markdown and page as write_report made."""
    out, _, written = fake_report
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for path in written[1:]:
        path.unlink()
    again = render_model_report(out)
    assert again == written[1:]
    assert (out / "report.md").read_text() == markdown
    assert (out / "report.html").read_text() == page
    assert render_model_report(out / "report.json") == written[1:]
    assert all(p.stat().st_size > 10_000 for p in again if p.suffix == ".png")
    assert "| 4 ms | jitter:0.9 | fork-unordered |" in markdown
    assert "- 4 ms, jitter:0.9: fork makes " in markdown


def test_a_ratio_without_denominator_is_none_and_reads_inf() -> None:
    """fork against a stable that never stored: an infinite ratio is None in report.json."""
    results = [_fake_result(spec, Path("/nonexistent")) for spec in PLAN.specs()]
    stable = next(r for r in results if r.spec.policy is Policy.STABLE)
    results[results.index(stable)] = RunResult(
        stable.spec, stable.device, WriterPhase(2.0, [], [], [], CacheStats(), (0.0, 0.0)),
        stable.verdicts, stable.dir,
    )  # fmt: skip
    table = rows(results)
    (ratio,) = ratios(table, "fork", "stable")
    assert ratio.throughput_ratio is None and ratio.p99_ratio == 0.0
    report = model_report(PLAN, results)
    markdown = render_markdown(report, [])
    assert "fork makes infx the writer throughput of stable" in markdown
    decoded = msgspec.json.decode(msgspec.json.encode(report), type=ModelReport)
    assert decoded.fork_vs_stable == (ratio,)


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
    report = load_model_report(out)
    assert [r.policy for r in report.runs] == ["none", "stable", "fork", "fork-unordered"]
    for run, result in zip(report.runs, results.values(), strict=True):
        assert run == result.to_record()
        assert run.writer_latency_hist.total == run.writer_ops == len(result.phase.stalls)
    assert report.runs[0].torn == results["none"].verdicts.torn
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
    _kernel_report(kernel, [_kernel_run("ext4", 1, 0, 100, p50=0.2, p99=5.5)])
    parser = argparse.ArgumentParser()
    MODEL.register(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(["model", "--policy", "none,stable", "--seconds", "0.5",
                              "--latency", "1ms", "--seed", "3", "--compare", str(kernel),
                              "--out", str(out)])  # fmt: skip
    assert args.handler(args) == 0
    markdown = (out / "report.md").read_text()
    assert "## Model vs real kernel" in markdown
    assert "| ext4 pwrite stable_writes=1 | stable | 100 | 0 |" in markdown
    report = load_model_report(out)
    assert report.seed == 3 and [r.policy for r in report.runs] == ["none", "stable"]
    assert report.kernel is not None and report.kernel[0].kernel == "6.1.0-57-amd64"
    again = msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"
    assert again == (out / "report.json").read_bytes()  # loads back equal, field for field
    render_model_report(out)
    assert (out / "report.md").read_text() == markdown
