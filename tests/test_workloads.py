"""Workloads on a host directory: stamped pages at page-aligned offsets, ledger, latency, seeds."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from nbdfork.errors import ConfigError
from nbdfork.oracle.stamp import PAGE_SIZE, PageStatus, decode_page, decode_pages
from nbdfork.workloads import WORKLOADS, WorkloadConfig, run_workload, workload_class
from nbdfork.workloads.atomic import atomic_limits
from nbdfork.workloads.base import Ledger, WorkloadSkipped, sync_file_range
from nbdfork.workloads.latency import HIST_EDGES_MS, histogram, percentiles
from nbdfork.workloads.pwrite import PwriteWorkload


def config(tmp_path: Path, **overrides: object) -> WorkloadConfig:
    """A short, bounded workload config in tmp_path."""
    knobs: dict[str, object] = {
        "seconds": 30.0,
        "pages": 4,
        "threads": 2,
        "seed": 7,
        "stream_base": 100,
        "max_writes": 40,
    }
    knobs.update(overrides)
    return WorkloadConfig(directory=tmp_path / "w", **knobs)  # type: ignore[arg-type]


def pages_of(path: Path) -> list[bytes]:
    """The file's 4 KiB pages."""
    data = path.read_bytes()
    return [data[i : i + PAGE_SIZE] for i in range(0, len(data), PAGE_SIZE)]


def odirect_supported(directory: Path) -> bool:
    """Whether `directory`'s filesystem accepts O_DIRECT (tmpfs does not)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(directory / "probe", os.O_RDWR | os.O_CREAT | os.O_DIRECT)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    os.close(fd)
    return True


@pytest.mark.parametrize("name", ["pwrite", "mmap"])
def test_files_hold_the_ledgers_last_generation(tmp_path: Path, name: str) -> None:
    """After a run every page on disk is the VALID stamp the ledger says was written last."""
    result = run_workload(name, config(tmp_path))
    assert result.error is None
    ledger = result.ledger.as_dict()
    for entry in ledger["pages"]:  # type: ignore[union-attr]
        page = pages_of(tmp_path / "w" / entry["file"])[entry["page"]]
        decoded = decode_page(page)
        assert decoded.status is PageStatus.VALID
        assert (decoded.stream, decoded.page) == (entry["stream"], entry["page"])
        assert decoded.generation == entry["last_generation"] == entry["durable_generation"]


def test_writers_use_their_own_streams_and_stop_at_max_writes(tmp_path: Path) -> None:
    """Thread t writes stream stream_base+t; each writer stops after max_writes stores."""
    result = run_workload("pwrite", config(tmp_path, threads=3, max_writes=10))
    assert result.writer_ops == 30
    streams = sorted({p["stream"] for p in result.ledger.as_dict()["pages"]})  # type: ignore[union-attr]
    assert streams == [100, 101, 102]


def test_odirect_pages_are_stamps_of_the_last_two_generations(tmp_path: Path) -> None:
    """O_DIRECT pages carry the page's stamp at the last generation or the one before (the
    mutator may have flipped the buffer during the last write)."""
    if not odirect_supported(tmp_path / "w"):
        pytest.skip("tmp_path's filesystem does not support O_DIRECT")
    result = run_workload("odirect", config(tmp_path, threads=1))
    assert result.error is None
    for entry in result.ledger.as_dict()["pages"]:  # type: ignore[union-attr]
        decoded = decode_page(pages_of(tmp_path / "w" / entry["file"])[entry["page"]])
        assert decoded.status in (PageStatus.VALID, PageStatus.TORN)
        gens = {g for g in decoded.sector_generations if g is not None}
        assert gens <= {entry["last_generation"], entry["last_generation"] - 1}
    assert "buffer_mutations" in result.summary()


class RecordingPwrite(PwriteWorkload):
    """pwrite that also records the order of the pages it stores."""

    def __init__(self, cfg: WorkloadConfig) -> None:
        super().__init__(cfg)
        self.order: list[int] = []

    def store(self, target, page, data, previous):  # type: ignore[no-untyped-def]
        self.order.append(page)
        super().store(target, page, data, previous)


def page_order(tmp_path: Path, seed: int) -> list[int]:
    """The page order one seeded single-writer run uses."""
    workload = RecordingPwrite(config(tmp_path / str(seed), threads=1, seed=seed, kick="none"))
    workload.run()
    return workload.order


def test_page_order_is_the_seeds(tmp_path: Path) -> None:
    """The same seed gives the same page order; another seed gives another."""
    assert page_order(tmp_path / "a", 1) == page_order(tmp_path / "b", 1)
    assert page_order(tmp_path / "c", 1) != page_order(tmp_path / "d", 2)


def test_every_round_rewrites_every_page_once(tmp_path: Path) -> None:
    """Round r writes each hot page exactly once (at generation r)."""
    order = page_order(tmp_path, 3)
    rounds = [sorted(order[i : i + 4]) for i in range(0, len(order), 4)]
    assert all(r == [0, 1, 2, 3] for r in rounds)


def test_fdatasync_kick_records_what_became_durable(tmp_path: Path) -> None:
    """With kick=fdatasync the ledger records fsyncs whose generations were written before."""
    result = run_workload("pwrite", config(tmp_path, kick="fdatasync", max_writes=200))
    ledger = result.ledger.as_dict()
    assert int(ledger["fsync_count"]) >= 3  # type: ignore[call-overload]
    for t, row in enumerate(result.ledger.durable):
        assert all(d <= w for d, w in zip(row, result.ledger.written[t], strict=True))


def test_summary_is_json_with_latency_and_ledger(tmp_path: Path) -> None:
    """workload.json has ops, p50..max, a histogram over the fixed edges and the ledger."""
    summary = run_workload("pwrite", config(tmp_path)).summary()
    text = json.loads(json.dumps(summary))
    assert text["writer_ops"] == 80
    assert set(text["writer_latency_ms"]) >= {"p50", "p99", "p999", "max"}
    assert sum(text["writer_latency_hist"]["counts"]) == 80
    assert len(text["writer_latency_hist"]["edges_ms"]) == len(HIST_EDGES_MS)
    assert text["ledger"]["page_size"] == PAGE_SIZE


def test_percentiles_in_milliseconds() -> None:
    """Percentiles are computed from nanosecond samples and reported in ms."""
    samples = np.arange(1, 1001, dtype=np.int64) * 1_000_000  # 1..1000 ms
    p = percentiles(samples)
    assert p["p50"] == pytest.approx(500.5)
    assert p["p99"] == pytest.approx(990.01)
    assert p["max"] == 1000.0
    assert percentiles(np.zeros(0, dtype=np.int64))["p99"] is None


def test_histogram_clips_out_of_range_samples_into_end_bins() -> None:
    """Samples below 1 us land in the first bin and above 10 s in the last; none are lost."""
    samples = np.array([1, 500_000, 2_000_000, 10**12], dtype=np.int64)
    counts = histogram(samples)["counts"]
    assert sum(counts) == 4
    assert counts[0] == 1 and counts[-1] == 1


def test_bad_knobs_name_themselves(tmp_path: Path) -> None:
    """An invalid knob raises ConfigError naming it."""
    for knob, value in [("pages", 0), ("threads", 100), ("kick", "sometimes"), ("seconds", 0)]:
        with pytest.raises(ConfigError, match=knob):
            config(tmp_path, **{knob: value}).validate()
    with pytest.raises(ConfigError, match="--workload"):
        workload_class("fio")
    assert set(WORKLOADS) == {"pwrite", "mmap", "odirect", "odirect_inflight", "odirect_churn",
                              "atomic"}  # fmt: skip


def test_sync_file_range_raises_oserror_on_a_bad_fd() -> None:
    """The ctypes sync_file_range turns errno into OSError."""
    with pytest.raises(OSError) as info:
        sync_file_range(-1)
    assert info.value.errno == errno.EBADF


class FailingPwrite(PwriteWorkload):
    """pwrite whose store fails after 5 writes."""

    calls = 0

    def store(self, target, page, data, previous):  # type: ignore[no-untyped-def]
        FailingPwrite.calls += 1
        if FailingPwrite.calls > 5:
            raise OSError(errno.EIO, "injected")
        super().store(target, page, data, previous)


def test_a_failing_store_ends_the_run_with_its_error(tmp_path: Path) -> None:
    """A writer's exception stops the run and becomes result.error; run() does not raise."""
    result = FailingPwrite(config(tmp_path, threads=1, max_writes=None)).run()
    assert result.error is not None and "injected" in result.error
    assert result.writer_ops == 5


def test_ledger_durable_never_goes_backwards() -> None:
    """A later fsync with older generations does not lower what is already durable."""
    ledger = Ledger([1], 2, ["f"])
    ledger.synced(0, [5, 5], "kick")
    ledger.synced(0, [3, 6], "kick")
    assert ledger.durable[0] == [5, 6]


def test_odirect_inflight_never_changes_the_buffer_before_its_delay(tmp_path: Path) -> None:
    """odirect_inflight records each I/O's first buffer change against the syscall start: none
    comes before mutate_after_s (submission is left alone); odirect starts at once."""
    if not odirect_supported(tmp_path / "w"):
        pytest.skip("tmp_path's filesystem does not support O_DIRECT")
    result = run_workload("odirect_inflight", config(tmp_path, threads=1, seconds=0.5))
    assert result.error is None
    summary = result.summary()
    assert summary["mutate_after_ms"] == 1.5
    first = summary["first_change_ms"]
    assert first["min"] is None or first["min"] >= 1.5  # type: ignore[index]
    assert summary["syscall_ms"]["p50"] is not None  # type: ignore[index]
    assert run_workload("odirect", config(tmp_path / "b", threads=1, seconds=0.2)).summary()[
        "mutate_after_ms"
    ] == 0.0


def test_odirect_churn_leaves_no_version_whole_while_the_write_is_in_the_kernel(
    tmp_path: Path,
) -> None:
    """odirect_churn writes a fresh counter into every sector's first fill word while each
    O_DIRECT write is in the kernel: writes get mutated, and every page that reached the file
    is stamped, either whole or with its tags whole and its crc failing at byte 40."""
    if not odirect_supported(tmp_path / "w"):
        pytest.skip("tmp_path's filesystem does not support O_DIRECT")
    result = run_workload("odirect_churn", config(tmp_path, threads=1, seconds=0.5))
    assert result.error is None
    summary = result.summary()
    assert summary["mutated_ios"] > 0 and summary["buffer_mutations"] >= summary["mutated_ios"]
    data = b"".join(p.read_bytes() for p in sorted((tmp_path).rglob("*.dat")))
    decoded = decode_pages(data)
    # Whether a page reaches the file mid-change depends on the host kernel's timing (the VM
    # tier shows the tears); what did reach it is whole or damaged only at the counter.
    assert decoded.stamped_count == decoded.page_count > 0
    torn = list(decoded.torn.values())
    assert all(d.first_mismatch is not None and d.first_mismatch % 512 == 40 for d in torn)


def test_atomic_runs_only_where_statx_offers_a_page(tmp_path: Path) -> None:
    """atomic probes statx: where no atomic unit covers 4 KiB it is skipped with the limits it
    saw; where one does, every write is RWF_ATOMIC and the limits are in the summary."""
    if not odirect_supported(tmp_path / "w"):
        pytest.skip("tmp_path's filesystem does not support O_DIRECT")
    fd = os.open(tmp_path / "w" / "probe", os.O_RDONLY)
    try:
        unit_min, unit_max, _ = atomic_limits(fd)
    finally:
        os.close(fd)
    if not unit_min <= PAGE_SIZE <= unit_max:
        with pytest.raises(WorkloadSkipped, match=r"statx atomic write unit min \d+ / max \d+"):
            run_workload("atomic", config(tmp_path, threads=1, seconds=0.2))
        return
    summary = run_workload("atomic", config(tmp_path, threads=1, seconds=0.2)).summary()
    assert summary["atomic_write_unit_max"] >= PAGE_SIZE  # type: ignore[operator]
