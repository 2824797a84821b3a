"""The crash campaign under a real kernel (vm tier): ext4 and xfs, correct device and control;
md raid1 cut across its two members at one instant and recovered by md itself."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from nbdfork.experiments.crash.host import CrashOptions, run_crash
from nbdfork.experiments.crash.render import render_crash_report
from tests.test_vm import require_vm

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_crash_campaign_passes_and_control_fails(fs: str, tmp_path: Path) -> None:
    """Crash states of a correct device keep every fsynced generation and pass fsck; the
    ignore-flush control replaying the same trace loses writes."""
    require_vm()
    options = CrashOptions(out=tmp_path / fs, fs=fs, states=4, control_states=3, seconds=2,
                           seed=11)  # fmt: skip
    report = msgspec.to_builtins(run_crash(options))
    assert report["states_checked"] == 4
    assert report["ledger_violations"] == 0 and report["fsck_failures"] == 0
    assert all(row["fs"]["mount_ok"] and row["fs"]["fsck_ok"] for row in report["states"])
    assert report["control"]["states_checked"] == 3
    assert report["control"]["ledger_violations"] > 0
    assert report["outcome"] == "passed"
    md, page, png = render_crash_report(options.out.absolute())  # from report.json
    assert "ignore-flush control" in page.read_text()
    assert "ignore-flush control | 3 |" in md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_md_raid1_crash_states_are_recovered_by_md(tmp_path: Path) -> None:
    """md raid1 over two traced devices: every state is assembled by mdadm (dirty, read-auto),
    its members compared before md's own resync and md's check run after it, then mounted,
    ledger-checked and fsck'd; after
    the resync no member disagrees and nothing fsynced is lost; the control loses writes."""
    require_vm()
    options = CrashOptions(out=tmp_path / "md", stack="md-raid1", states=2, control_states=1,
                           seconds=1, seed=7, points="any")  # fmt: skip
    report = msgspec.to_builtins(run_crash(options))
    assert report["states_checked"] == 2 and report["guest_error"] is None
    for row in report["states"]:
        findings, md = row["stack"]["findings"], row["stack"]["checks"]["md"]
        assert "recovery_failed" not in findings, row["stack"]["checks"].get("error")
        assert md["array_state"] == "read-auto"  # assembled dirty, before any resync
        assert md["before_resync"]["compared_pages"] > 16000  # every page of 64M legs
        assert md["after_resync"]["level"] == "raid1"
        assert findings["md_mismatch_after_resync"] == 0
        assert findings["ledger_violations"] == 0 and findings["fsck_failed"] == 0
        assert row["stack"]["verdict"] in ("clean", "exposure")
    stack = report["stack"]
    assert stack["name"] == "md-raid1" and stack["members"] == 2 and stack["violations"] == 0
    assert sum(stack["verdicts"].values()) == 2
    # ignore-flush: md's own superblocks were never durable, the control cannot even assemble
    assert stack["control_verdicts"] == {"violation": 1} and report["outcome"] == "passed"
    md, _, _ = render_crash_report(options.out.absolute())
    assert "## Stack md-raid1: 2 members of 64M" in md.read_text()
