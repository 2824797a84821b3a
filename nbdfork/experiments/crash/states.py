"""The crash campaign over a recorded trace: crash points, states, images, checks.

Crash points are the workload's checkpoint markers (after an fsync returned: everything the
ledger lists must survive) — seeded choices among them when there are more than needed.
At each point the trace so far is fed through the volatile-cache model; each crash state is
checked at the stamp level (CrashChecker: lost and unexplained torn pages), then, when a
`FsChecker` is given, written out as an image that the filesystem mounts (journal replay),
whose files are verified against the ledger, and that its checker (e2fsck -fn, xfs_repair -n)
must find clean.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nbdfork.device.cache import CacheModel
from nbdfork.device.crash import CrashState, build_image, choose_state
from nbdfork.device.store import Store
from nbdfork.device.trace import Op, Record, read_trace, replay_cache
from nbdfork.errors import OracleError
from nbdfork.experiments.crash.workload import MARKER_SLOTS, Checkpoint, Ledger
from nbdfork.oracle.crashcheck import CrashChecker
from nbdfork.oracle.ledger import PageKey
from nbdfork.oracle.stamp import PAGE_SIZE

__all__ = [
    "POINT_KINDS",
    "CampaignPlan",
    "FsChecker",
    "StateResult",
    "candidate_points",
    "durable_pages",
    "is_marker",
    "is_point",
    "pick_points",
    "run_campaign",
]


@dataclass(frozen=True, slots=True)
class CampaignPlan:
    """How many states, at how many points, under which seed; ignore_flush for the control."""

    states: int
    seed: int
    device_size: int
    ignore_flush: bool = False
    per_point: int = 2
    points: str = "checkpoint"  # one of POINT_KINDS


@dataclass(slots=True)
class StateResult:
    """One crash state's outcome, with its reproducer."""

    point: int  # trace record index after which power was cut
    checkpoint: int
    index: int
    reproducer: dict[str, object]
    lost_pages: list[dict[str, object]] = field(default_factory=list)
    torn_unexplained: list[int] = field(default_factory=list)
    torn_explained: int = 0
    fs: dict[str, object] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        """passed, ledger_violation, fsck_failure or torn."""
        if self.lost_pages or self.fs.get("ledger_violations"):
            return "ledger_violation"
        if self.fs.get("fsck_ok") is False or self.fs.get("mount_ok") is False:
            return "fsck_failure"
        if self.torn_unexplained:
            return "torn"
        return "passed"

    def to_json(self) -> dict[str, object]:
        """The row of report.json."""
        return {
            "point": self.point, "checkpoint": self.checkpoint, "index": self.index,
            "outcome": self.outcome, "reproducer": self.reproducer,
            "lost_pages": self.lost_pages, "torn_unexplained": self.torn_unexplained,
            "torn_explained": self.torn_explained, "fs": self.fs,
        }  # fmt: skip


FsChecker = Callable[[Path, Checkpoint], dict[str, object]]


def durable_pages(checkpoint: Checkpoint) -> dict[PageKey, int]:
    """(stream, page) -> generation that must survive, from one checkpoint (generations
    start at 1; 0 means nothing of that page was durable yet)."""
    return {
        (f.stream, page): gen
        for f in checkpoint.files.values()
        for page, gen in enumerate(f.generations)
        if gen > 0
    }


def is_marker(rec: Record, marker_offset: int) -> bool:
    """The record is one of the workload's checkpoint marker reads."""
    # Exactly the workload's 4 KiB reads of its slots: partition scans and blkid probes read
    # the device's last sectors, which lie beyond the slots.
    end = marker_offset + MARKER_SLOTS * PAGE_SIZE
    return rec.op == Op.READ and rec.length == PAGE_SIZE and marker_offset <= rec.offset < end


POINT_KINDS = ("checkpoint", "flush", "fua", "any")


def candidate_points(trace: Path, marker_offset: int, kind: str) -> list[tuple[int, int]]:
    """(record index, checkpoint in force) of every place a crash of `kind` may be cut:
    right after a checkpoint marker, a FLUSH, a FUA write, or any write/flush. The checkpoint
    in force is the last marker at or before the record. Nothing before the first marker is
    a candidate: the workload marks its first checkpoint after mkfs, mount and its first
    fsync, and a power cut in the middle of mkfs is no filesystem's broken promise."""
    return _scan(trace, marker_offset, kind)[0]


def _scan(trace: Path, marker_offset: int, kind: str) -> tuple[list[tuple[int, int]], int]:
    """One pass over the trace: the candidate points and the number of checkpoint markers."""
    points: list[tuple[int, int]] = []
    checkpoint = -1
    for index, rec in enumerate(read_trace(trace)):
        marker = is_marker(rec, marker_offset)
        checkpoint += marker
        if checkpoint >= 0 and is_point(rec, kind, marker=marker):
            points.append((index, checkpoint))
    return points, checkpoint + 1


def is_point(rec: Record, kind: str, *, marker: bool) -> bool:
    """A crash of `kind` may be cut right after the record (`marker`: it is a marker read)."""
    if kind == "checkpoint":
        return marker
    if kind == "flush":
        return rec.op == Op.FLUSH
    if kind == "fua":
        return rec.op == Op.WRITE and rec.fua
    return rec.op in (Op.WRITE, Op.FLUSH)


def pick_points(candidates: list[tuple[int, int]], plan: CampaignPlan) -> dict[int, int]:
    """Record index -> checkpoint number of the chosen crash points: seeded, sorted."""
    wanted = max(1, -(-plan.states // plan.per_point))
    chosen = candidates
    if len(candidates) > wanted:
        chosen = random.Random(plan.seed).sample(candidates, wanted)
    return dict(sorted(chosen))


def run_campaign(
    trace: Path, ledger: Ledger, plan: CampaignPlan, workdir: Path,
    fs_check: FsChecker | None = None,
) -> Iterator[StateResult]:  # fmt: skip
    """Yield one StateResult per crash state, point by point along the trace."""
    candidates, markers = _scan(trace, ledger.marker_offset, plan.points)
    if markers != len(ledger.checkpoints):
        raise OracleError(
            f"{trace}: {markers} checkpoint markers in the trace but "
            f"{len(ledger.checkpoints)} checkpoints in the ledger"
        )
    points = pick_points(candidates, plan)
    if not points:
        return
    cache = CacheModel(Store(plan.device_size), ignore_flush=plan.ignore_flush)
    remaining = plan.states
    for index, _ in enumerate(replay_cache(trace, cache)):
        if index not in points or remaining <= 0:
            continue
        number = points[index]
        checkpoint = ledger.checkpoints[number] if number >= 0 else Checkpoint(-1, {})
        count = min(plan.per_point, remaining)
        remaining -= count
        yield from _states_at(
            cache, plan, (index, checkpoint), count, workdir=workdir, fs_check=fs_check
        )
    cache.close()


def _states_at(
    cache: CacheModel, plan: CampaignPlan, where: tuple[int, Checkpoint], count: int, *,
    workdir: Path, fs_check: FsChecker | None,
) -> Iterator[StateResult]:  # fmt: skip
    point, checkpoint = where
    checker = CrashChecker(cache)
    durable = durable_pages(checkpoint)
    for state_index in range(count):
        state = choose_state(cache.pending.values(), seed=plan.seed, point=point,
                             index=state_index)  # fmt: skip
        result = _check_state(checker, state, durable, checkpoint)
        if fs_check is not None:
            image = workdir / f"crash-{point}-{state_index}.img"
            build_image(cache, state, image)
            try:
                result.fs = fs_check(image, checkpoint)
            finally:
                image.unlink(missing_ok=True)
        yield result


def _check_state(
    checker: CrashChecker, state: CrashState, durable: dict[PageKey, int], checkpoint: Checkpoint
) -> StateResult:
    verdict = checker.check(state, durable)
    return StateResult(
        point=state.point,
        checkpoint=checkpoint.index,
        index=state.index,
        reproducer=state.describe(),
        lost_pages=[w.event() for w in verdict.lost],
        torn_unexplained=list(verdict.torn_unexplained),
        torn_explained=verdict.torn_explained,
    )
