"""Reports of storage-stack runs: the checkers' verdicts in a few words, the "Storage stacks"
table and plot, the findings per stack and kernel, and the campaign's pooling per stack —
against the reports of real runs in tests/golden/stackreport (see its README).

Regenerate the golden report.md after an intended change with NBDFORK_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec
import pytest
from matplotlib.image import imread

from nbdfork.campaign.merge import CampaignReport, CellRecord, campaign_blocks, collect
from nbdfork.experiments.matrix.findings import findings, stack_findings
from nbdfork.experiments.matrix.plots import plot_stack_checkers, stack_damage
from nbdfork.experiments.matrix.render import render_report
from nbdfork.experiments.matrix.schema import RunResult, load_report
from nbdfork.experiments.matrix.stacktable import stack_table, verdict_cell
from nbdfork.experiments.stacks.results import FsckResult, StackChecks
from nbdfork.experiments.stacks.summary import describe, own_damage, tally
from nbdfork.harness.protocol import Outcome
from nbdfork.report.document import to_markdown

GOLDEN = Path(__file__).parent / "golden" / "stackreport"
KERNELS = GOLDEN / "kernels-6.12-7.2"  # btrfs, md-raid1 on 6.12 and 7.2
DAMAGED = GOLDEN / "6.1-btrfs-md-raid1"  # 6.1, md-raid1's leg 1 damaged on purpose
STABLE = GOLDEN / "6.1-integrity-raid5"  # 6.1, dm-integrity:D and md-raid5:skip_copy, sw=1
K612, K72 = "6.12.117+deb13-amd64", "7.2.13+deb14-amd64"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OVERRIDE = "md-raid1 (device 1: corrupt-op=write, corrupt-probability=0.02)"


def _runs(directory: Path) -> dict[str, RunResult]:
    return {r.id: r for r in load_report(directory).runs}


def _checks(run: RunResult) -> StackChecks:
    assert run.checks is not None
    return run.checks


def _with_checks(run: RunResult, **changes: object) -> RunResult:
    return msgspec.structs.replace(run, checks=msgspec.structs.replace(_checks(run), **changes))


# The checkers' verdicts ------------------------------------------------------------------------


def test_each_checker_is_said_in_a_few_words() -> None:
    """btrfs scrub, md check with the legs' diff, dm-integrity and md raid5 of real runs read
    as the cell of the table says them; a stack whose checkers found nothing is `clean`."""
    damaged, stable = _runs(DAMAGED), _runs(STABLE)
    said = [describe(_checks(r)) for r in (
        damaged["btrfs-btrfs-sw0-odirect_churn"], damaged["md-raid1-ext4-sw0-pwrite"],
        stable["dm-integrity.D-ext4-sw1-odirect_churn"],
        stable["md-raid5.skip_copy-ext4-sw1-odirect_churn"], damaged["btrfs-btrfs-sw0-pwrite"])]
    assert said == ["scrub csum 13 (13 uncorr.)", "mismatch 896, 7 pages differ",
                    "2 blocks EILSEQ", "mismatch 9,568", "clean"]  # fmt: skip


def test_own_damage_is_the_stacks_checkers_not_the_legs_comparison() -> None:
    """A mirror whose legs differ while md check counts nothing has no damage of its own
    checkers; its verdict still says the pages differ."""
    run = _runs(DAMAGED)["md-raid1-ext4-sw0-odirect_churn"]
    md = _checks(run).md_check
    assert md is not None
    quiet = _with_checks(run, md_check=msgspec.structs.replace(md, mismatch_cnt=0))
    assert own_damage(_checks(run)) == 768 and own_damage(_checks(quiet)) == 0
    assert describe(_checks(quiet)) == "6 pages differ"
    assert tally(_checks(quiet)) == {"md_mismatch": 0, "fsck_unclean": 0,
                                     "mirror_diff_pages": 6, "checks_failed": 0}  # fmt: skip


def test_a_checker_that_could_not_run_is_never_clean() -> None:
    """A checker's error is named in the verdict, counted, and is no damage found."""
    checks = StackChecks(errors=["md_check: sync_action stayed 'check' past 900 s"])
    assert describe(checks) == "md_check failed"
    assert tally(checks) == {"checks_failed": 1} and own_damage(checks) == 0


def test_an_fsck_that_is_not_clean_is_damage() -> None:
    """fsck is the filesystem's own checker: not clean counts one and names the tool's exit."""
    run = _runs(STABLE)["md-raid5.skip_copy-ext4-sw1-odirect_churn"]
    bad = FsckResult(tool="e2fsck", device="/dev/md0", exit_code=4, clean=False, output_tail=[])
    checks = _checks(_with_checks(run, fsck=bad))
    assert describe(checks) == "mismatch 9,568, e2fsck exit 4"
    assert own_damage(checks) == 9568 + 1


# The "Storage stacks" table -----------------------------------------------------------------


def test_the_table_puts_kernels_side_by_side() -> None:
    """One row per stack x fs x workload x stable_writes, a checker and an oracle column per
    kernel, the top device's stable_writes as the kernel set it / as the run set it."""
    table = stack_table(load_report(KERNELS).runs)
    assert table.header == (
        "stack", "fs", "workload", "stable_writes (top: kernel's / run's)",
        f"{K612}: checker", f"{K612}: torn / stamped", f"{K72}: checker", f"{K72}: torn / stamped",
    )  # fmt: skip
    assert table.rows == (
        ("btrfs", "btrfs", "odirect_churn", "0 / 0", "clean", "33 / 625", "clean", "26 / 323"),
        ("md-raid1", "ext4", "odirect_churn", "0 / 0", "mismatch 640, 14 pages differ",
         "31 / 256", "mismatch 512, 12 pages differ", "99 / 632"),
    )  # fmt: skip


def test_one_kernel_gets_one_pair_and_a_damaged_leg_is_named() -> None:
    """With one kernel the columns are `checker` and `oracle torn / stamped`; a device given
    its own plugin parameters is named beside the stack, so a control never reads as a
    finding; stable_writes=1 set by md shows as the kernel's 1."""
    damaged = stack_table(load_report(DAMAGED).runs)
    assert damaged.header[4:] == ("checker", "oracle torn / stamped")
    assert [row[0] for row in damaged.rows] == ["btrfs", "btrfs", OVERRIDE, OVERRIDE]
    assert damaged.rows[2][2:] == ("pwrite", "0 / 0", "mismatch 896, 7 pages differ", "1 / 532")
    stable = stack_table(load_report(STABLE).runs)
    assert stable.rows == (
        ("dm-integrity:D", "ext4", "odirect_churn", "1 / 1", "2 blocks EILSEQ", "25 / 327"),
        ("md-raid5:skip_copy", "ext4", "odirect_churn", "1 / 1", "mismatch 9,568", "146 / 632"),
    )  # fmt: skip


def test_kernels_that_disagree_on_stable_writes_are_each_named() -> None:
    """When the kernels set the top's stable_writes differently, the cell says which set what."""
    report = load_report(KERNELS)
    runs = [msgspec.structs.replace(r, layers=(msgspec.structs.replace(
        r.layers[0], stable_writes_kernel=1), *r.layers[1:])) if r.kernel == K72 else r
        for r in report.runs]  # fmt: skip
    assert stack_table(runs).rows[0][3] == f"0 on {K612}, 1 on {K72} / 0"


def test_a_lost_or_missing_run_says_so_instead_of_a_verdict() -> None:
    """A run that did not complete shows its outcome and no oracle count; a kernel that did
    not run a setting shows `not run`."""
    report = load_report(KERNELS)
    lost = [msgspec.structs.replace(r, outcome=Outcome.VM_LOST, checks=None)
            if r.kernel == K72 and r.stack == "btrfs" else r for r in report.runs]  # fmt: skip
    assert stack_table(lost).rows[0][4:] == ("clean", "33 / 625", "vm_lost", "-")
    only = [r for r in report.runs if not (r.kernel == K72 and r.stack == "btrfs")]
    assert stack_table(only).rows[0][4:] == ("clean", "33 / 625", "not run", "-")
    assert verdict_cell(None) == "not run"


# The rendered report and its plot ------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-kernel stack report rendered once (drawing takes seconds)."""
    target = tmp_path_factory.mktemp("stacks") / "out"
    shutil.copytree(KERNELS, target)
    (target / "report.md").unlink(missing_ok=True)
    render_report(target)
    return target


def test_markdown_matches_golden(rendered: Path) -> None:
    """report.md of the two-kernel stack run equals its golden copy byte for byte."""
    markdown = (rendered / "report.md").read_text()
    if os.environ.get("NBDFORK_UPDATE_GOLDEN") == "1":
        (KERNELS / "report.md").write_text(markdown)
    assert markdown == (KERNELS / "report.md").read_text()


def test_the_report_has_the_stack_section_and_its_plot(rendered: Path) -> None:
    """The section follows the findings, the per-fs tables gain a stack column, and the plot
    is a PNG of a readable size linked from the report."""
    markdown = (rendered / "report.md").read_text()
    assert markdown.index("## What this shows") < markdown.index("## Storage stacks") \
        < markdown.index("## btrfs")  # fmt: skip
    assert "| kernel | stack | stable_writes | workload |" in markdown
    assert "![Damage each stack's own checkers found, per kernel](stack_checkers.png)" in markdown
    png = rendered / "stack_checkers.png"
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    height, width = imread(png).shape[:2]
    assert width >= 600 and height >= 300


def test_the_plot_sets_stable_writes_side_by_side(tmp_path: Path) -> None:
    """Runs of stable_writes 0 and 1 give two panels side by side: a wider picture than one
    setting alone; no stack run, no plot."""
    sw0 = [r for r in load_report(DAMAGED).runs if r.stack == "btrfs"]
    both = [*sw0, *load_report(STABLE).runs]
    one = plot_stack_checkers(sw0, tmp_path / "one.png")
    two = plot_stack_checkers(both, tmp_path / "two.png")
    assert one is not None and two is not None
    assert imread(two).shape[1] > imread(one).shape[1] + 200  # a panel is 2.2 in at 110 dpi
    plain = [msgspec.structs.replace(r, stack="plain", checks=None) for r in sw0]
    assert plot_stack_checkers(plain, tmp_path / "none.png") is None


def test_the_plot_colours_what_the_checkers_counted() -> None:
    """The heatmap's value is the count of the stack's own checkers; nan when not measured."""
    runs = _runs(DAMAGED)
    assert stack_damage(runs["btrfs-btrfs-sw0-odirect_churn"]) == 13
    assert stack_damage(runs["btrfs-btrfs-sw0-pwrite"]) == 0
    lost = msgspec.structs.replace(runs["btrfs-btrfs-sw0-pwrite"], outcome=Outcome.VM_LOST)
    assert stack_damage(lost) != stack_damage(lost)  # nan


# Findings ------------------------------------------------------------------------------------


def test_findings_say_which_stacks_checkers_found_damage_on_which_kernel() -> None:
    """Per stack: one clause per kernel with the runs and their verdicts, or one line when
    the checkers found nothing on any kernel."""
    lines = findings(load_report(KERNELS).runs)
    assert lines[2:4] == [
        f"stack btrfs, its own checkers: nothing in 2 runs (on {K612}, {K72})",
        f"stack md-raid1, its own checkers: on {K612} damage in ext4 odirect_churn "
        "stable_writes=0 [mismatch 640, 14 pages differ]; "
        f"on {K72} damage in ext4 odirect_churn stable_writes=0 [mismatch 512, 12 pages differ]",
    ]
    assert lines[0] == (f"{K612}: odirect_churn tears with stable_writes=0 on btrfs, "
                        "ext4 on md-raid1")  # fmt: skip


def test_findings_of_one_kernel_name_the_damaged_leg_and_unseen_differences() -> None:
    """One kernel: no kernel named; a device with its own parameters is named with the stack;
    legs that differ while md check counted nothing are called out, as are failed checkers."""
    report = load_report(DAMAGED)
    assert stack_findings(report.runs)[1] == (
        f"stack {OVERRIDE}, its own checkers: damage in ext4 odirect_churn stable_writes=0 "
        "[mismatch 768, 6 pages differ], ext4 pwrite stable_writes=0 "
        "[mismatch 896, 7 pages differ]")  # fmt: skip
    def silenced(run: RunResult) -> RunResult:
        md = _checks(run).md_check
        if md is None:
            return run
        return _with_checks(run, md_check=msgspec.structs.replace(md, mismatch_cnt=0),
                            errors=["fsck: e2fsck timed out"])  # fmt: skip

    quiet = [silenced(r) for r in report.runs]
    assert stack_findings(quiet)[1] == (
        f"stack {OVERRIDE}, its own checkers: nothing in 2 runs; legs differ where they saw "
        "nothing: ext4 odirect_churn stable_writes=0 (6 pages), ext4 pwrite stable_writes=0 "
        "(7 pages); could not run: md-raid1-ext4-sw0-odirect_churn (fsck: e2fsck timed out), "
        "md-raid1-ext4-sw0-pwrite (fsck: e2fsck timed out)")  # fmt: skip


# The campaign's merged report ----------------------------------------------------------------


def _campaign(tmp_path: Path, cells: dict[str, tuple[Path, dict[str, str]]]) -> str:
    """A campaign directory whose done run cells hold the given reports; its report.md text."""
    records = []
    for cell_id, (source, axes) in cells.items():
        (tmp_path / "cells" / cell_id).mkdir(parents=True)
        shutil.copy(source / "report.json", tmp_path / "cells" / cell_id / "report.json")
        records.append(CellRecord(id=cell_id, kind="run", status="done", axes=axes, seed=0,
                                  dir=f"cells/{cell_id}"))  # fmt: skip
    report = CampaignReport(name="c", seed=1, spec_hash="h" * 16, executor="local", jobs=1,
                            wall_s=1.0, cells=tuple(records), counts={"done": len(records)})
    found = collect(tmp_path, report)
    assert not found.unreadable
    return to_markdown(campaign_blocks(report, found, []))


def _table_after(markdown: str, heading: str) -> list[str]:
    """The rows (header first) of the first table after `heading`."""
    lines = markdown[markdown.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return [rows[0], *rows[2:]]


def test_the_campaign_pools_seeds_per_stack_and_kernel(tmp_path: Path) -> None:
    """Two seeds of the two-kernel run and the stable_writes=1 run: one row per stack x kernel
    x stable_writes, seeds pooled, with the runs in which its own checkers found damage and
    each checker's total; a stack's totals never include another stack's."""
    markdown = _campaign(tmp_path, {
        "run-seed=0": (KERNELS, {"seed": "0"}), "run-seed=1": (KERNELS, {"seed": "1"}),
        "sw1-seed=0": (STABLE, {"seed": "0"}),
    })  # fmt: skip
    rows = _table_after(markdown, "### Storage stacks: what their own checkers found")
    assert rows == [
        "| stack | kernel | stable_writes | runs | stack checkers found damage (runs) "
        "| scrub errors | md mismatch_cnt | integrity blocks failed | fsck not clean "
        "| pages legs differ | checkers failed | oracle torn/stamped | tear rate % (95% CI) |",
        f"| btrfs | {K612} | 0 | 2 | 0/2 | 0 | - | - | 0 | - | 0 | 66/1250 | 5.28 (4.17-6.66) |",
        f"| btrfs | {K72} | 0 | 2 | 0/2 | 0 | - | - | 0 | - | 0 | 52/646 | 8.05 (6.19-10.4) |",
        f"| md-raid1 | {K612} | 0 | 2 | 2/2 | - | 1280 | - | 0 | 28 | 0 | 62/512 "
        "| 12.1 (9.56-15.2) |",
        f"| md-raid1 | {K72} | 0 | 2 | 2/2 | - | 1024 | - | 0 | 24 | 0 | 198/1264 "
        "| 15.7 (13.8-17.8) |",
        "| dm-integrity:D | 6.1.0-57-amd64 | 1 | 1 | 1/1 | - | - | 2 | 0 | - | 0 | 25/327 "
        "| 7.65 (5.23-11) |",
        "| md-raid5:skip_copy | 6.1.0-57-amd64 | 1 | 1 | 1/1 | - | 9568 | - | 0 | - | 0 "
        "| 146/632 | 23.1 (20-26.5) |",
    ]
    by_stack = _table_after(markdown, "### By stack (pooled over the other axes)")
    assert by_stack[1].startswith("| btrfs | 4 | 118/1896 |")
    assert by_stack[2].startswith("| md-raid1 | 4 | 260/1776 |")


def test_a_cell_of_several_stacks_keeps_them_apart(tmp_path: Path) -> None:
    """A cell whose `stack` axis names several stacks (`btrfs,md-raid1`) still gives each run
    its own stack: the run's recorded stack wins over the cell's axis of the same name."""
    markdown = _campaign(tmp_path, {"run-stack=btrfs_md-raid1-seed=0": (
        KERNELS, {"stack": "btrfs,md-raid1", "seed": "0"})})  # fmt: skip
    rows = _table_after(markdown, "Every setting")
    assert rows[0].startswith("| kernel | stack | fs | stable_writes | workload | seeds |")
    stacks = [row.split(" | ")[1] for row in rows[1:]]
    assert stacks == ["btrfs", "md-raid1", "btrfs", "md-raid1"]
    assert "btrfs,md-raid1" not in markdown


def test_a_campaign_without_stacks_has_no_stack_column(tmp_path: Path) -> None:
    """Plain runs only: no stack column and no stack section (the tables stay as they were)."""
    golden = Path(__file__).parent / "golden" / "report"
    markdown = _campaign(tmp_path, {"run-seed=0": (golden, {"seed": "0"})})
    assert "stack" not in markdown.lower()

