"""Crash states of a storage stack: every member device cut at one instant.

Each member of a stack is its own nbdfork device (one nbdkit each on the host) with its own
trace; a trace's times are seconds since its device started, and its clock file names that
start on the host's CLOCK_MONOTONIC (nbdfork.device.trace.read_clock_origin). Origin + reply
time puts every record of every member on one clock, so the members' records merge into one
timeline in the order their replies left the devices: a guest that saw member A's reply before
it wrote to member B finds A's write earlier on the timeline than B's.

A crash point is an instant of that timeline (right after one record of one member). Each
member's state at the instant is what its own volatile-cache model holds after every record of
that member up to the instant: its durable media plus a seeded subset of its acknowledged,
not yet flushed writes, each possibly torn (nbdfork.device.crash, the single-device model).
State `index` at point `point` is the same bytes on every replay of the same traces and seed.

Checkpoints come from a separate *clock device* that the workload reads after every fsync
returned (the single-device campaign's marker reads, on a device outside the stack, so that no
layer of the stack remaps or repeats them); the checkpoint in force at an instant is the last
marker read that had replied by then.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nbdfork.device.cache import CacheModel
from nbdfork.device.crash import CrashState, build_image, choose_state
from nbdfork.device.store import Store
from nbdfork.device.trace import (
    Record,
    apply_record,
    read_clock_origin,
    read_trace,
    trace_device_size,
)
from nbdfork.errors import OracleError
from nbdfork.experiments.crash.states import CampaignPlan, is_marker, is_point, pick_points
from nbdfork.experiments.crash.workload import Checkpoint, Ledger
from nbdfork.seeds import derive_seed

__all__ = [
    "MemberTrace",
    "StackChecker",
    "StackStateResult",
    "member_seed",
    "marker_times",
    "stack_points",
    "run_stack_campaign",
    "timeline",
]

StackChecker = Callable[[list[Path], Checkpoint], dict[str, object]]
"""Checks one crash state: the members' images (in stack order) and the checkpoint in force."""


@dataclass(frozen=True, slots=True)
class MemberTrace:
    """One device's trace, its device size and its clock origin."""

    path: Path
    size: int
    origin: float

    @classmethod
    def open(cls, path: Path) -> MemberTrace:
        """The trace at `path` with the size from its header and the origin from its clock
        file (OracleError when either is missing or wrong)."""
        return cls(path, trace_device_size(path), read_clock_origin(path))


@dataclass(slots=True)
class StackStateResult:
    """One crash state of a stack: where, which writes each member kept, what recovery found."""

    point: int  # timeline index after which power was cut
    instant_s: float  # its time, seconds after the first member started
    checkpoint: int
    index: int
    reproducer: dict[str, object]
    recovery: dict[str, object] = field(default_factory=dict)


def member_seed(seed: int, member: int) -> int:
    """The crash-state seed of member `member`: the campaign's for the first member (a stack
    of one cuts as the single-device campaign does), a derived one for the others (as the host
    derives each member device's own seed)."""
    return seed if member == 0 else derive_seed(seed, f"dev{member}")


def timeline(members: Sequence[MemberTrace]) -> Iterator[tuple[float, int, Record]]:
    """(host monotonic time of the reply, member, record) of every record of every member,
    in time order (ties: the lower member first). Each trace is in reply order already."""

    def stream(member: int, trace: MemberTrace) -> Iterator[tuple[float, int, Record]]:
        for rec in read_trace(trace.path):
            yield trace.origin + rec.reply, member, rec

    streams = [stream(m, t) for m, t in enumerate(members)]
    return heapq.merge(*streams, key=lambda item: (item[0], item[1]))


def marker_times(clock: MemberTrace, marker_offset: int) -> list[float]:
    """Host monotonic reply times of the clock device's checkpoint marker reads, in order."""
    return [clock.origin + rec.reply for rec in read_trace(clock.path)
            if is_marker(rec, marker_offset)]  # fmt: skip


def stack_points(
    members: Sequence[MemberTrace], markers: Sequence[float], kind: str
) -> list[tuple[int, int]]:
    """(timeline index, checkpoint in force) of every instant a crash of `kind` may be cut:
    `checkpoint`: the last member record before each marker read replied; `flush`, `fua`,
    `any`: right after such a record of any member. None before the first checkpoint."""
    points: list[tuple[int, int]] = []
    records = list(_instants(members))
    if kind == "checkpoint":
        times = [t for t, _ in records]
        for number, marker in enumerate(markers):
            index = bisect.bisect_right(times, marker) - 1
            if index >= 0 and (not points or points[-1][0] != index):
                points.append((index, number))
            elif points and points[-1][0] == index:
                points[-1] = (index, number)  # two checkpoints, no write between: the later
        return points
    for index, (time, rec) in enumerate(records):
        checkpoint = bisect.bisect_right(markers, time) - 1
        if checkpoint >= 0 and is_point(rec, kind, marker=False):
            points.append((index, checkpoint))
    return points


def _instants(members: Sequence[MemberTrace]) -> Iterator[tuple[float, Record]]:
    for time, _, rec in timeline(members):
        yield time, _stripped(rec)


def _stripped(rec: Record) -> Record:
    """The record without its data (the point scan holds the whole timeline)."""
    return Record(rec.op, rec.flags, rec.connection, rec.offset, rec.length, rec.request_id,
                  rec.seq, rec.arrival, rec.reply)  # fmt: skip


def run_stack_campaign(
    members: Sequence[MemberTrace], clock: MemberTrace, ledger: Ledger, plan: CampaignPlan,
    workdir: Path, *, check: StackChecker | None = None,
) -> Iterator[StackStateResult]:  # fmt: skip
    """Yield one StackStateResult per crash state, instant by instant along the timeline."""
    markers = marker_times(clock, ledger.marker_offset)
    if len(markers) != len(ledger.checkpoints):
        raise OracleError(
            f"{clock.path}: {len(markers)} checkpoint markers in the clock trace but "
            f"{len(ledger.checkpoints)} checkpoints in the ledger"
        )
    points = pick_points(stack_points(members, markers, plan.points), plan)
    if not points:
        return
    caches = [CacheModel(Store(m.size), ignore_flush=plan.ignore_flush) for m in members]
    start = min(m.origin for m in members)
    remaining = plan.states
    try:
        for index, (time, member, rec) in enumerate(timeline(members)):
            if not rec.failed:
                apply_record(caches[member], rec)
            if index not in points or remaining <= 0:
                continue
            checkpoint = ledger.checkpoints[points[index]]
            count = min(plan.per_point, remaining)
            remaining -= count
            for state_index in range(count):
                where = (index, round(time - start, 6), checkpoint, state_index)
                yield _state(caches, plan, where, workdir, check)
    finally:
        for cache in caches:
            cache.close()


def _state(
    caches: list[CacheModel], plan: CampaignPlan, where: tuple[int, float, Checkpoint, int],
    workdir: Path, check: StackChecker | None,
) -> StackStateResult:  # fmt: skip
    point, instant, checkpoint, index = where
    states = [choose_state(cache.pending.values(), seed=member_seed(plan.seed, m),
                           point=point, index=index)
              for m, cache in enumerate(caches)]  # fmt: skip
    result = StackStateResult(point, instant, checkpoint.index, index,
                              _reproducer(plan.seed, point, index, states))  # fmt: skip
    if check is None:
        return result
    images = [workdir / f"crash-{point}-{index}-m{m}.img" for m in range(len(caches))]
    try:
        for cache, state, image in zip(caches, states, images, strict=True):
            build_image(cache, state, image)
        result.recovery = check(images, checkpoint)
    finally:
        for image in images:
            image.unlink(missing_ok=True)
    return result


def _reproducer(seed: int, point: int, index: int, states: list[CrashState]) -> dict[str, object]:
    """(traces, seed, point, index) rebuild the state; per member what it kept, for reading."""
    return {"point": point, "index": index, "seed": seed,
            "members": [s.describe() for s in states]}  # fmt: skip
