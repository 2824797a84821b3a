"""What a stack's checkers found, in the few words a report cell has room for.

One reading of StackChecks for every report (a run's, a campaign's): the counts per checker
that ran (`tally`), the damage the stack's own checkers found (`own_damage`: btrfs scrub, md
check, dm-integrity's read-back, fsck; not the legs' byte comparison, which is ours), a short
verdict (`describe`: "scrub csum 13 (13 uncorr.)", "mismatch 896, 7 pages differ", "clean")
and a longer one per run (`describe_fully`). A checker that could not run is never "clean".
"""

from __future__ import annotations

from collections.abc import Sequence

from nbdfork.experiments.stacks.results import (
    FsckResult,
    IntegrityResult,
    LayerReport,
    MdCheckResult,
    MirrorDiff,
    ScrubResult,
    StackChecks,
)

__all__ = [
    "CHECKERS",
    "OWN_CHECKERS",
    "describe",
    "describe_fully",
    "describe_layers",
    "failed_checkers",
    "own_damage",
    "scrub_errors",
    "tally",
]

CHECKERS: dict[str, str] = {
    "scrub_errors": "scrub errors",
    "md_mismatch": "md mismatch_cnt",
    "integrity_errors": "integrity blocks failed",
    "fsck_unclean": "fsck not clean",
    "mirror_diff_pages": "pages legs differ",
    "checks_failed": "checkers failed",
}
"""Every count `tally` gives and its short name: btrfs scrub's errors, md's mismatch_cnt (in
sectors), dm-integrity's blocks that failed their tag, fscks not clean, 4 KiB pages that
differ between a mirror's legs, checkers that could not run."""

OWN_CHECKERS = ("scrub_errors", "md_mismatch", "integrity_errors", "fsck_unclean")
"""The counts that are the stack's own checkers' verdicts (the legs' comparison is ours)."""


def scrub_errors(scrub: ScrubResult) -> int:
    """Every error btrfs scrub counted (csum, verify, read, super), over its devices."""
    per_device = sum(d.csum_errors + d.verify_errors + d.read_errors + d.super_errors
                     for d in scrub.devices)  # fmt: skip
    return max(scrub.csum_errors, per_device)


def failed_checkers(checks: StackChecks) -> list[str]:
    """The names of the checkers that could not run (each `errors` line starts with one)."""
    return [line.partition(":")[0] for line in checks.errors]


def tally(checks: StackChecks) -> dict[str, int]:
    """The counts of the checkers that ran, keyed as in CHECKERS; `checks_failed` always."""
    found: dict[str, int] = {}
    if checks.btrfs_scrub is not None:
        found["scrub_errors"] = scrub_errors(checks.btrfs_scrub)
    if checks.md_check is not None:
        found["md_mismatch"] = checks.md_check.mismatch_cnt
    if checks.dm_integrity is not None:
        found["integrity_errors"] = checks.dm_integrity.integrity_errors
    if checks.fsck is not None:
        found["fsck_unclean"] = 0 if checks.fsck.clean else 1
    if checks.mirror_diff is not None:
        found["mirror_diff_pages"] = checks.mirror_diff.diff_pages
    found["checks_failed"] = len(checks.errors)
    return found


def own_damage(checks: StackChecks) -> int:
    """What the stack's own checkers found, summed in their own units (a stack has one
    checker of its layers plus fsck, so the sum is that checker's count, +1 for a bad fsck)."""
    counts = tally(checks)
    return sum(counts.get(name, 0) for name in OWN_CHECKERS)


def _scrub(scrub: ScrubResult) -> str | None:
    if scrub_errors(scrub) == 0:
        return None
    kinds = {
        "csum": scrub.csum_errors,
        "verify": sum(d.verify_errors for d in scrub.devices),
        "read": sum(d.read_errors for d in scrub.devices),
        "super": sum(d.super_errors for d in scrub.devices),
    }
    what = ", ".join(f"{name} {n:,}" for name, n in kinds.items() if n)
    fixed = [f"{n:,} {label}" for n, label in ((scrub.corrected, "corr."),
                                               (scrub.uncorrectable, "uncorr.")) if n]  # fmt: skip
    return f"scrub {what}" + (f" ({', '.join(fixed)})" if fixed else "")


def _md(md: MdCheckResult) -> str | None:
    return f"mismatch {md.mismatch_cnt:,}" if md.mismatch_cnt else None


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _integrity(integrity: IntegrityResult) -> str | None:
    if not integrity.integrity_errors:
        return None
    errnos = list(integrity.failed_with.items()) or [("unreadable", integrity.integrity_errors)]
    (first, n), rest = errnos[0], errnos[1:]
    return ", ".join([f"{_count(n, 'block')} {first}", *(f"{m:,} {e}" for e, m in rest)])


def _fsck(fsck: FsckResult) -> str | None:
    return None if fsck.clean else f"{fsck.tool} exit {fsck.exit_code}"


def _mirror(mirror: MirrorDiff) -> str | None:
    n = mirror.diff_pages
    return f"{_count(n, 'page')} differ" + ("s" if n == 1 else "") if n else None


def describe(checks: StackChecks) -> str:
    """The verdict in a few words: what each checker found, or "clean" when none found
    anything and every one ran."""
    parts = [
        _scrub(checks.btrfs_scrub) if checks.btrfs_scrub else None,
        _md(checks.md_check) if checks.md_check else None,
        _integrity(checks.dm_integrity) if checks.dm_integrity else None,
        _mirror(checks.mirror_diff) if checks.mirror_diff else None,
        _fsck(checks.fsck) if checks.fsck else None,
        *(f"{name} failed" for name in failed_checkers(checks)),
    ]
    said = [p for p in parts if p]
    return ", ".join(said) if said else "clean"


def _scrub_fully(scrub: ScrubResult) -> str:
    scrubbed = sum(d.data_bytes_scrubbed for d in scrub.devices)
    found = (_scrub(scrub) or "scrub no error").removeprefix("scrub ")
    return f"scrub: {found} in {scrubbed:,} data bytes (exit {scrub.exit_code})"


def _md_fully(md: MdCheckResult) -> str:
    return f"md {md.level} check: mismatch_cnt {md.mismatch_cnt:,} ({md.seconds:.0f} s)"


def _integrity_fully(integrity: IntegrityResult) -> str:
    return (f"dm-integrity {integrity.mode} read-back: {_integrity(integrity) or 'no error'} "
            f"of {integrity.blocks:,}; target's mismatch counter {integrity.kernel_mismatches:,}")


def _mirror_fully(mirror: MirrorDiff) -> str:
    return (f"legs ({mirror.method}): {mirror.diff_pages:,} of {mirror.compared_pages:,} "
            "pages differ")


def describe_fully(checks: StackChecks) -> str:
    """Every checker's verdict with what it covered, `; `-separated, then the failures."""
    parts = [
        _scrub_fully(checks.btrfs_scrub) if checks.btrfs_scrub else None,
        _md_fully(checks.md_check) if checks.md_check else None,
        _integrity_fully(checks.dm_integrity) if checks.dm_integrity else None,
        _mirror_fully(checks.mirror_diff) if checks.mirror_diff else None,
        (f"{checks.fsck.tool}: {'clean' if checks.fsck.clean else 'NOT clean'} "
         f"(exit {checks.fsck.exit_code})") if checks.fsck else None,
        *(f"failed: {line}" for line in checks.errors),
    ]  # fmt: skip
    return "; ".join(p for p in parts if p) or "no checker ran"


def describe_layers(layers: Sequence[LayerReport]) -> str:
    """Top down, each layer with its stable_writes as the kernel set it / as the run set it
    (`-`: the run left it alone)."""
    return " > ".join(
        f"{layer.sysfs_name} ({layer.kind}) {layer.stable_writes_kernel}/"
        + ("-" if layer.stable_writes_run is None else str(layer.stable_writes_run))
        for layer in layers
    )
