"""Crash states of a storage stack: several devices' traces cut at one instant on one clock."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import msgspec
import nbd
import pytest

from nbdfork.config import parse_params
from nbdfork.device.clock import FakeClock
from nbdfork.device.device import Device
from nbdfork.device.trace import Op, read_clock_origin
from nbdfork.errors import OracleError
from nbdfork.experiments.crash.cut import (
    MemberTrace,
    marker_times,
    run_stack_campaign,
    stack_points,
    timeline,
)
from nbdfork.experiments.crash.expectations import EXPECTATIONS, FINDINGS, judge_state
from nbdfork.experiments.crash.plan import CrashPlan
from nbdfork.experiments.crash.render import render_crash_report
from nbdfork.experiments.crash.schema import (
    CrashDevice,
    CrashReport,
    CrashWorkload,
    StackExpectation,
    StackState,
    StateRow,
    summarize_stack,
    summarize_states,
)
from nbdfork.experiments.crash.states import CampaignPlan
from nbdfork.experiments.crash.workload import Checkpoint, Ledger
from nbdfork.experiments.stacks.catalogue import STACKS
from nbdfork.oracle.events import NullSink
from nbdfork.oracle.verify import judge
from tests.conftest import close_handle

SIZE = 1 << 20
MARKER = 64 << 10  # the clock device's marker slots
A, B, C, D = (bytes([v]) * 4096 for v in (0xA1, 0xB2, 0xC3, 0xD4))


def _ledger(count: int) -> Ledger:
    return Ledger(MARKER, [Checkpoint(i, {}) for i in range(count)])


def _record(tmp: Path, connect: Callable[..., nbd.NBD]) -> tuple[list[MemberTrace], MemberTrace]:
    """Two member devices and a clock device, each its own real nbdkit, driven in one order:
    dev0 A, clock marker 0, dev1 B, dev1 flush, dev0 C, clock marker 1, dev1 D (FUA)."""
    handles = []
    for name in ("m0", "m1", "clock"):
        handles.append(connect(f"size={SIZE}", f"trace={tmp / name}.trace", "cache=volatile",
                               "oracle=off", "seed=3"))  # fmt: skip
    m0, m1, clock = handles
    m0.pwrite(A, 0)
    clock.pread(4096, MARKER)
    m1.pwrite(B, 0)
    m1.flush()
    m0.pwrite(C, 8192)
    clock.pread(4096, MARKER + 4096)
    m1.pwrite(D, 8192, nbd.CMD_FLAG_FUA)
    for handle in handles:
        handle.shutdown()
        close_handle(handle)
    traces = [MemberTrace.open(tmp / f"{n}.trace") for n in ("m0", "m1", "clock")]
    return traces[:2], traces[2]


@pytest.fixture
def recorded(
    tmp_path: Path, connect: Callable[..., nbd.NBD]
) -> tuple[list[MemberTrace], MemberTrace]:
    """The traces of _record."""
    return _record(tmp_path, connect)


def test_real_traces_merge_in_the_order_the_client_saw_replies(
    recorded: tuple[list[MemberTrace], MemberTrace],
) -> None:
    """Three nbdkit processes, one host clock: the merged timeline of the members is the
    order in which one client issued (and saw replied) its requests across them."""
    members, clock = recorded
    ops = [(m, r.op, r.offset) for _, m, r in timeline(members) if r.op != Op.CLOSE]
    assert ops == [(0, Op.WRITE, 0), (1, Op.WRITE, 0), (1, Op.FLUSH, 0), (0, Op.WRITE, 8192),
                   (1, Op.WRITE, 8192)]  # fmt: skip
    markers = marker_times(clock, MARKER)
    times = [t for t, _, r in timeline(members) if r.op != Op.CLOSE]
    assert times[0] < markers[0] < times[1] and times[3] < markers[1] < times[4]
    assert len({m.origin for m in (*members, clock)}) == 3  # each nbdkit started on its own


def test_points_carry_the_checkpoint_in_force_across_devices(
    recorded: tuple[list[MemberTrace], MemberTrace],
) -> None:
    """`flush`, `fua` and `any` points are records of any member, each with the last
    checkpoint whose marker replied before it; `checkpoint` cuts right before each marker."""
    members, clock = recorded
    markers = marker_times(clock, MARKER)
    assert stack_points(members, markers, "any") == [(1, 0), (2, 0), (3, 0), (4, 1)]
    assert stack_points(members, markers, "flush") == [(2, 0)]
    assert stack_points(members, markers, "fua") == [(4, 1)]
    assert stack_points(members, markers, "checkpoint") == [(0, 0), (3, 1)]


def test_each_member_keeps_its_own_durable_writes_at_the_instant(
    recorded: tuple[list[MemberTrace], MemberTrace], tmp_path: Path
) -> None:
    """After dev1's FUA write: dev1 holds B (flushed) and D (FUA) in every state; dev0's A and
    C were never flushed, so some states keep them and some do not."""
    members, clock = recorded
    plan = CampaignPlan(states=40, seed=5, device_size=SIZE, points="fua", per_point=40)
    seen: dict[int, set[bytes]] = {0: set(), 8192: set()}

    def check(images: list[Path], checkpoint: Checkpoint) -> dict[str, object]:
        m0, m1 = (p.read_bytes() for p in images)
        assert m1[:4096] == B and m1[8192:12288] == D and checkpoint.index == 1
        for offset, kept in seen.items():
            kept.add(m0[offset : offset + 4096][:512])  # a tear keeps whole sectors
        return {"ok": True}

    results = list(run_stack_campaign(members, clock, _ledger(2), plan, tmp_path, check=check))
    assert len(results) == 40 and all(r.recovery == {"ok": True} for r in results)
    assert seen == {0: {A[:512], bytes(512)}, 8192: {C[:512], bytes(512)}}
    assert [len(r.reproducer["members"]) for r in results[:1]] == [2]  # type: ignore[arg-type]
    again = list(run_stack_campaign(members, clock, _ledger(2), plan, tmp_path))
    assert [r.reproducer for r in again] == [r.reproducer for r in results]


def test_marker_count_must_match_the_ledger(
    recorded: tuple[list[MemberTrace], MemberTrace], tmp_path: Path
) -> None:
    """A clock trace whose markers do not match the ledger's checkpoints is refused."""
    members, clock = recorded
    plan = CampaignPlan(states=1, seed=5, device_size=SIZE)
    with pytest.raises(OracleError, match="2 checkpoint markers in the clock trace but 3"):
        list(run_stack_campaign(members, clock, _ledger(3), plan, tmp_path))


def test_fake_clocks_put_devices_on_one_timeline(tmp_path: Path) -> None:
    """Devices that started at different instants: origin + reply time orders their records
    (a device started later but written earlier comes first)."""
    clocks = [FakeClock(start=100.0), FakeClock(start=40.0)]
    devices = []
    for m, clock in enumerate(clocks):
        config = parse_params([("size", str(SIZE)), ("trace", str(tmp_path / f"{m}.trace")),
                               ("cache", "volatile"), ("oracle", "off")])  # fmt: skip
        devices.append(Device(config, judge(NullSink()), clock))
    clocks[1].sleep(70.0)  # device 1 at 110
    devices[1].pwrite(1, A, 0, fua=False)
    clocks[0].sleep(20.0)  # device 0 at 120
    devices[0].pwrite(1, B, 0, fua=False)
    for device in devices:
        device.close()
    assert read_clock_origin(tmp_path / "0.trace") == 100.0
    members = [MemberTrace.open(tmp_path / f"{m}.trace") for m in range(2)]
    merged = [(t, m, r.op) for t, m, r in timeline(members)]
    assert merged[:2] == [(110.0, 1, Op.WRITE), (120.0, 0, Op.WRITE)]


def test_a_trace_without_its_clock_file_is_refused(tmp_path: Path) -> None:
    """No clock file, no place on the shared timeline: OracleError naming the file."""
    config = parse_params([("size", str(SIZE)), ("trace", str(tmp_path / "t.trace"))])
    Device(config, None, FakeClock()).close()
    (tmp_path / "t.trace.clock").unlink()
    with pytest.raises(OracleError, match=r"t\.trace\.clock: no clock origin"):
        MemberTrace.open(tmp_path / "t.trace")


@pytest.mark.parametrize(
    ("stack", "findings", "verdict"),
    [
        ("md-raid1", {"md_members_differ_before_resync": 0, "md_mismatch_after_resync": 0},
         "clean"),
        ("md-raid1", {"md_members_differ_before_resync": 128, "md_mismatch_after_resync": 0},
         "exposure"),
        ("md-raid5:skip_copy", {"md_mismatch_after_resync": 8}, "violation"),
        ("dm-integrity:D", {"integrity_errors": 3, "ledger_violations": 1}, "exposure"),
        ("dm-integrity:D", {"integrity_errors": 0, "ledger_violations": 1}, "violation"),
        ("dm-integrity:J", {"integrity_errors": 1}, "violation"),
        ("dm-integrity:B", {"integrity_errors": 1}, "violation"),
        ("btrfs-raid1", {"scrub_csum_errors": 2}, "violation"),
        ("md-raid1", {"recovery_failed": 1}, "violation"),
    ],
)  # fmt: skip
def test_states_are_judged_by_what_each_layer_documents(
    stack: str, findings: dict[str, int], verdict: str
) -> None:
    """md's mismatch before its resync and dm-integrity D's unmatched tags (and the damage on
    top of them) are documented exposures; J, B, btrfs, md after resync: violations."""
    judged = judge_state(stack, findings)
    assert judged.verdict == verdict
    assert set(judged.documented) | set(judged.violations) == {k for k, v in findings.items() if v}


def test_every_stack_has_an_expectation_entry_and_every_finding_a_meaning() -> None:
    """The table covers every stack label `--stack` accepts and names only known findings."""
    labels = {f"{name}:{mode}" if mode else name
              for name, entry in STACKS.items() for mode in entry.modes}  # fmt: skip
    assert labels == set(EXPECTATIONS)
    assert {e.finding for table in EXPECTATIONS.values() for e in table} <= set(FINDINGS)


def test_a_plain_plan_is_written_as_before(tmp_path: Path) -> None:
    """Without a stack the guest's plan has exactly the fields it always had; with one, the
    stack's fields round-trip."""
    plan = CrashPlan(out="o", plugin="p", venv="v", fs="ext4", states=1, control_states=0,
                     seconds=1.0, seed=1)  # fmt: skip
    plan.write(tmp_path / "plain.json")
    assert not {"stack", "nbd_targets", "host_traces"} & set(
        json.loads((tmp_path / "plain.json").read_text()))
    stacked = dataclasses.replace(plan, stack="md-raid1", host_traces=("a", "b", "c"),
                                  nbd_targets=(("h", "1"), ("h", "2"), ("h", "3")))  # fmt: skip
    stacked.write(tmp_path / "stack.json")
    assert CrashPlan.read(tmp_path / "stack.json") == stacked


def test_a_plain_report_has_no_stack_fields() -> None:
    """A single-device report encodes no `stack` (UNSET), so its bytes are what they were."""
    row = StateRow(point=1, checkpoint=0, index=0, outcome="passed", reproducer={})
    assert b"stack" not in msgspec.json.encode(row)


def _stack_row(point: int, verdict: str, findings: dict[str, int], documented: tuple[str, ...],
               violations: tuple[str, ...] = ()) -> StateRow:  # fmt: skip
    state = StackState(verdict=verdict, instant_s=1.5, findings=findings,  # type: ignore[arg-type]
                       documented=documented, violations=violations)  # fmt: skip
    return StateRow(point=point, checkpoint=0, index=0, outcome="passed", reproducer={},
                    stack=state)  # fmt: skip


def test_a_stack_report_counts_verdicts_and_renders_the_table(tmp_path: Path) -> None:
    """summarize_stack counts verdicts and, per finding, states and documented ones; the
    report renders them with the table's judgement."""
    rows = (
        _stack_row(1, "clean", {"integrity_errors": 0}, ()),
        _stack_row(2, "exposure", {"integrity_errors": 4, "fsck_failed": 1},
                   ("fsck_failed", "integrity_errors")),
    )  # fmt: skip
    table = tuple(StackExpectation(finding=e.finding, documented=e.documented, why=e.why)
                  for e in EXPECTATIONS["dm-integrity:D"])  # fmt: skip
    stack = summarize_stack(rows, name="dm-integrity:D", members=1, member_size="96M",
                            expectations=table, control=(_stack_row(3, "violation", {}, ()),))
    assert stack.verdicts == {"clean": 1, "exposure": 1, "violation": 0}
    assert stack.findings == {"fsck_failed": 1, "integrity_errors": 1} == stack.documented
    assert stack.control_verdicts == {"violation": 1}
    report = CrashReport(
        kernel="6.1", accel="tcg", fs="ext4", seed=1, started="t", duration_s=1.0,
        device=CrashDevice(size="96M", cache="volatile", ignore_flush=False),
        workload=CrashWorkload(kind="fsync", seconds=1.0, files=8, pages=4), states=rows,
        outcome="passed", stack=stack, **msgspec.structs.asdict(summarize_states(rows)),
    )  # fmt: skip
    md = render_crash_report(tmp_path, report)[0].read_text()
    assert "**1 clean, 1 exposure (documented), 0 violation**" in md
    assert "| `integrity_errors` | 1 | 1 | documented |" in md
