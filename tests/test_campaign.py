"""The crash campaign over a trace: correct device loses nothing, ignore-flush loses writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from nbdfork.cli import main
from nbdfork.config import parse_params
from nbdfork.device.clock import FakeClock
from nbdfork.device.device import Device
from nbdfork.errors import ConfigError, ReportError
from nbdfork.experiments.crash.guest import mkfs_argv
from nbdfork.experiments.crash.host import CrashOptions
from nbdfork.experiments.crash.schema import (
    ControlSummary,
    CrashDevice,
    CrashReport,
    CrashWorkload,
    StateOutcome,
    StateRow,
    load_crash_report,
    summarize_states,
    write_crash_report,
)
from nbdfork.experiments.crash.states import (
    CampaignPlan,
    candidate_points,
    pick_points,
    run_campaign,
)
from nbdfork.experiments.crash.workload import Checkpoint, Ledger, LedgerFile
from nbdfork.oracle.events import NullSink
from nbdfork.oracle.stamp import PAGE_SIZE, encode_page
from nbdfork.oracle.verify import judge

SIZE = 4 << 20
MARKER = SIZE - (1 << 20)


def _traced_session(trace: Path, *extra: tuple[str, str]) -> Ledger:
    """Mimic the workload on a traced device: write, fsync (write + flush), mark; the
    `fsync` writes go to a 'journal' area too, as a filesystem's would."""
    config = parse_params([("size", str(SIZE)), ("seed", "1"), ("trace", str(trace)),
                           ("cache", "volatile"), *extra])  # fmt: skip
    device = Device(config, judge(NullSink()), FakeClock())
    ledger = Ledger(MARKER)
    generations = [0] * 8
    for step in range(40):
        page = step % 8
        generations[page] += 1
        device.pwrite(1, encode_page(1000, page, generations[page]), page * PAGE_SIZE, fua=False)
        device.pwrite(1, bytes(4096), (64 + step % 16) * PAGE_SIZE, fua=False)  # metadata
        device.flush()
        durable = {"f000": LedgerFile("f000", 1000, [g for g in generations])}
        ledger.checkpoints.append(Checkpoint(step, durable))
        device.pread(bytearray(4096), MARKER + (step % 16) * PAGE_SIZE)
    device.pwrite(1, encode_page(1000, 0, 99), 0, fua=False)  # never fsynced
    device.close()
    return ledger


def test_ledger_round_trips_through_json() -> None:
    """Ledger.to_json / from_json keep every checkpoint."""
    ledger = Ledger(123, [Checkpoint(0, {"a": LedgerFile("a", 5, [1, 2])})])
    again = Ledger.from_json(json.loads(json.dumps(ledger.to_json())))
    assert again == ledger


def test_points_are_seeded_and_spread() -> None:
    """pick_points picks ceil(states/per_point) points, the same for the same seed."""
    candidates = [(record, record // 10) for record in range(0, 400, 10)]
    plan = CampaignPlan(states=20, seed=4, device_size=SIZE)
    points = pick_points(candidates, plan)
    assert len(points) == 10 and points == pick_points(candidates, plan)
    assert points != pick_points(candidates, CampaignPlan(states=20, seed=5, device_size=SIZE))
    assert all(r // 10 == c for r, c in points.items())


def test_candidate_points_carry_the_checkpoint_in_force(tmp_path: Path) -> None:
    """Flush points map to the last checkpoint marked before them; none before the first."""
    _traced_session(tmp_path / "t.trace")
    flushes = candidate_points(tmp_path / "t.trace", MARKER, "flush")
    markers = candidate_points(tmp_path / "t.trace", MARKER, "checkpoint")
    assert len(markers) == 40 and len(flushes) == 39  # the first flush precedes any promise
    assert [c for _, c in flushes] == list(range(39))  # each flush precedes its marker
    assert [c for _, c in markers] == list(range(40))
    assert len(candidate_points(tmp_path / "t.trace", MARKER, "any")) == 39 * 3 + 1
    assert all(c >= 0 for _, c in candidate_points(tmp_path / "t.trace", MARKER, "any"))


@pytest.mark.parametrize("kind", ["flush", "any"])
def test_other_crash_points_pass_on_a_correct_device(tmp_path: Path, kind: str) -> None:
    """Crash points at flushes or any write keep what the checkpoint in force promised."""
    ledger = _traced_session(tmp_path / "t.trace")
    plan = CampaignPlan(states=20, seed=3, device_size=SIZE, points=kind)
    results = list(run_campaign(tmp_path / "t.trace", ledger, plan, tmp_path))
    assert len(results) == 20 and all(r.outcome == "passed" for r in results)


def test_correct_device_has_no_ledger_violations(tmp_path: Path) -> None:
    """20 crash states of a correct device: every fsynced generation survives."""
    ledger = _traced_session(tmp_path / "t.trace")
    plan = CampaignPlan(states=20, seed=1, device_size=SIZE)
    results = list(run_campaign(tmp_path / "t.trace", ledger, plan, tmp_path))
    assert len(results) == 20
    assert [r.outcome for r in results] == ["passed"] * 20


@pytest.mark.parametrize("seed", [1, 2])
def test_ignore_flush_control_has_ledger_violations(tmp_path: Path, seed: int) -> None:
    """With FLUSH ignored, crash states lose fsynced generations: the check can fail."""
    ledger = _traced_session(tmp_path / "t.trace", ("ignore-flush", "on"))
    plan = CampaignPlan(states=20, seed=seed, device_size=SIZE, ignore_flush=True)
    results = list(run_campaign(tmp_path / "t.trace", ledger, plan, tmp_path))
    assert sum(r.outcome == "ledger_violation" for r in results) > 0
    lost = [p for r in results for p in r.lost_pages]
    assert all(p["event"] == "lost_write" for p in lost)


def test_crash_options_name_bad_values() -> None:
    """CrashOptions.validate names the option at fault."""
    with pytest.raises(ConfigError, match="--fs"):
        CrashOptions(out=Path("x"), fs="ntfs").validate()
    with pytest.raises(ConfigError, match="--states"):
        CrashOptions(out=Path("x"), states=0).validate()


def test_summary_counts_fsck_failures_apart_from_lost_writes() -> None:
    """A state that loses writes and fails fsck counts in both columns."""
    rows = [_state("ledger_violation", fs={"fsck_ok": False, "mount_ok": False}),
            _state("passed", fs={"fsck_ok": True, "mount_ok": True})]  # fmt: skip
    summary = summarize_states(rows)
    assert (summary.ledger_violations, summary.fsck_failures) == (1, 1)
    assert summary.mount_failures == 1 and summary.states_checked == 2


def _state(outcome: StateOutcome, checkpoint: int = 0, **fields: Any) -> StateRow:
    return StateRow(point=checkpoint + 1, checkpoint=checkpoint, index=0, outcome=outcome,
                    reproducer={"seed": 1}, **fields)  # fmt: skip


def _crash_report(**fields: Any) -> CrashReport:
    summary = summarize_states([_state("passed", i) for i in range(4)])
    control = ControlSummary(**{**msgspec.structs.asdict(summary), "ledger_violations": 3,
                                "states_checked": 3})  # fmt: skip
    values: dict[str, Any] = {
        "fs": "ext4", "kernel": "6.1.0-57-amd64", "outcome": "passed", "seed": 1,
        "accel": "tcg", "duration_s": 9.0, "started": "2026-11-30T00:00:00+00:00",
        "device": CrashDevice(size="96M", cache="volatile", ignore_flush=False),
        "workload": CrashWorkload(kind="fsync", seconds=2.0, files=4, pages=4),
        "device_location": "host", "points": "any",
        "states": tuple(_state("passed", i) for i in range(4)),
        **msgspec.structs.asdict(summary), "control": control, **fields,
    }  # fmt: skip
    return CrashReport(**values)


def test_mkfs_leaves_room_for_markers() -> None:
    """mkfs is told the filesystem size, so the marker slots lie beyond it."""
    assert mkfs_argv("ext4", "/dev/nbd0", 95 << 20)[-1] == str((95 << 20) // 4096)
    assert f"size={95 << 20}" in mkfs_argv("xfs", "/dev/nbd0", 95 << 20)


def test_an_unreadable_file_is_a_ledger_violation_not_a_crash(tmp_path: Path) -> None:
    """A ledger file the crashed filesystem cannot read (EBADMSG, here EISDIR) is reported."""
    from nbdfork.experiments.crash.fscheck import check_files  # noqa: PLC0415

    (tmp_path / "f000").mkdir()
    checkpoint = Checkpoint(0, {"f000": LedgerFile("f000", 7, [1])})
    problems = check_files(tmp_path, checkpoint)
    assert problems == [{"file": "f000", "problem": "unreadable: Is a directory"}]


def test_crash_report_renders_through_the_shared_document_model(tmp_path: Path) -> None:
    """report.md and report.html come from one block list: the same table rows in both."""
    from nbdfork.experiments.crash.render import render_crash_report  # noqa: PLC0415

    report = _crash_report()
    md, page, png = render_crash_report(tmp_path, report)
    assert "| ignore-flush control | 3 | 3 | 0 | 0 |" in md.read_text()
    assert '<td class="r">3</td>' in page.read_text() and "device on the host" in md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_crash_report_json_round_trips_and_names_a_bad_field(tmp_path: Path) -> None:
    """report.json is written and read through the same structures; a bad state outcome is
    one error naming the file and the field; re-rendering needs only the saved files."""
    from nbdfork.experiments.crash.render import render_crash_report  # noqa: PLC0415

    report = _crash_report()
    path = write_crash_report(report, tmp_path)
    assert load_crash_report(tmp_path) == report
    first = render_crash_report(tmp_path, report)[0].read_text()
    assert render_crash_report(tmp_path)[0].read_text() == first
    (tmp_path / "report.md").unlink()
    assert main(["report", str(tmp_path)]) == 0  # the one `nbdfork report` for every kind
    assert (tmp_path / "report.md").read_text() == first
    data = json.loads(path.read_text())
    data["states"][2]["outcome"] = "fine"
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=r"report\.json: states\[2\]\.outcome: invalid enum"):
        load_crash_report(tmp_path)


def test_half_of_an_atomic_write_is_a_violation(tmp_path: Path) -> None:
    """A file rewritten only by whole-file atomic writes must hold one generation: pages of
    generations 3 and 4 side by side are reported; the ledger keeps the atomic flag."""
    from nbdfork.experiments.crash.fscheck import check_files  # noqa: PLC0415
    from nbdfork.oracle.stamp import encode_pages  # noqa: PLC0415

    (tmp_path / "f000").write_bytes(encode_pages(1000, 0, [4, 4, 3, 3]))
    (tmp_path / "f001").write_bytes(encode_pages(1001, 0, [4, 4, 4, 4]))
    checkpoint = Checkpoint(0, {"f000": LedgerFile("f000", 1000, [3] * 4, True),
                                "f001": LedgerFile("f001", 1001, [3] * 4, True)})  # fmt: skip
    assert check_files(tmp_path, checkpoint) == [
        {"file": "f000", "problem": "half of an atomic write", "generations": [3, 4]}
    ]
    ledger = Ledger(0, [checkpoint])
    assert Ledger.from_json(json.loads(json.dumps(ledger.to_json()))) == ledger
    plain = Checkpoint(0, {"f000": LedgerFile("f000", 1000, [3] * 4)})
    assert check_files(tmp_path, plain) == []  # without the flag, mixed pages are legal


def test_atomic_ledger_workload_marks_every_file_atomic_or_says_why_not(tmp_path: Path) -> None:
    """With atomic=True the workload rewrites whole files in one RWF_ATOMIC write, and every
    checkpoint records the files as atomic with one generation each; where statx offers no
    unit for a whole file it refuses with the limits it saw."""
    from nbdfork.experiments.crash.workload import FsyncLedgerWorkload  # noqa: PLC0415

    mount, device = tmp_path / "m", tmp_path / "dev"
    mount.mkdir()
    device.write_bytes(bytes(1 << 20))
    workload = FsyncLedgerWorkload(mount, device, 0, files=2, pages=4, seconds=0.3, seed=1,
                                   atomic=True)  # fmt: skip
    try:
        ledger = workload.run()
    except OSError as exc:
        assert "no atomic write of 16384 bytes here: statx atomic write unit" in str(exc)
        return
    last = ledger.checkpoints[-1].files
    assert all(f.atomic and len(set(f.generations)) == 1 for f in last.values())
