"""What each layer of a storage stack documents about a crash, in one table, and the verdict
on one crash state of a stack measured against it.

A stack's recovery (nbdfork.experiments.crash.recovery) reports *findings*: counts of what a
checker saw, by name. A finding the layer says a crash may leave (md's members disagree until
md's own resync; dm-integrity without a journal may leave data and tag unmatched) is a
documented *exposure*; anything else a checker finds is a *violation*: damage that the layer,
or the filesystem on top, promises a crash cannot cause. A state is `clean` with no finding,
`exposure` with documented findings only, `violation` with any other.

Sources: md(4) "UNCLEAN SHUTDOWN" and Documentation/admin-guide/md.rst (an array found dirty
at startup is resynced; until then mirrors or parity may disagree), and
Documentation/admin-guide/device-mapper/dm-integrity.rst (modes J, D, B); btrfs writes
copy-on-write with checksums and commits a transaction by its superblock, so no checksum error
is expected after a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

__all__ = [
    "EXPECTATIONS",
    "FILESYSTEM_FINDINGS",
    "FINDINGS",
    "Expectation",
    "StateVerdict",
    "Verdict",
    "judge_state",
]

Verdict = Literal["clean", "exposure", "violation"]

FINDINGS: dict[str, str] = {
    "recovery_failed": "a step of the stack's own recovery failed (assemble, open, resync)",
    "md_degraded": "md assembled the array without a member (its superblock was stale)",
    "md_members_differ_before_resync": "4 KiB pages where md's members disagree (mirror "
    "copies differ, raid5 stripe does not XOR to zero) before md's own resync",
    "md_mismatch_after_resync": "md `check` after md's own resync: mismatch_cnt (sectors)",
    "scrub_csum_errors": "btrfs scrub: checksum errors",
    "scrub_uncorrectable": "btrfs scrub: errors no copy could correct",
    "integrity_errors": "dm-integrity: 4 KiB blocks refused (EILSEQ/EIO) at read-back after "
    "activation",
    "mount_failed": "the filesystem on top did not mount",
    "ledger_violations": "files or pages the ledger says were fsynced, missing or older",
    "fsck_failed": "the filesystem's checker did not pass",
}
"""Every finding a stack's recovery may report, and what it counts."""

FILESYSTEM_FINDINGS = ("mount_failed", "ledger_violations", "fsck_failed")


class Expectation(msgspec.Struct, frozen=True):
    """What one layer says about one finding after a crash."""

    finding: str
    documented: bool  # the layer says a crash may leave this
    why: str


_MD_RESYNC = Expectation(
    "md_members_differ_before_resync", True,
    "md(4) UNCLEAN SHUTDOWN: writes to the members do not happen at once, so after a crash "
    "the array may be inconsistent; md marks it dirty and resyncs it when it starts",
)  # fmt: skip
_MD_AFTER = Expectation(
    "md_mismatch_after_resync", False,
    "md's resync makes the members agree again: a mismatch after it is md's failure",
)  # fmt: skip
_MD_DEGRADED = Expectation(
    "md_degraded", True,
    "a member whose superblock did not get the last event count is left out by mdadm and "
    "must be re-added (md(4), mdadm(8) --assemble)",
)  # fmt: skip
_SCRUB = (
    Expectation("scrub_csum_errors", False,
                "btrfs is copy-on-write with data checksums: a crash leaves the last "
                "committed transaction, whose checksums match"),
    Expectation("scrub_uncorrectable", False, "as above, on every copy"),
)  # fmt: skip
_INTEGRITY = {
    "J": Expectation("integrity_errors", False,
                     "dm-integrity.rst, J: data and tags are written through the journal, "
                     "atomically; the journal is replayed at activation"),
    "D": Expectation("integrity_errors", True,
                     "dm-integrity.rst, D: no journal, data and tags are written separately; "
                     "after a crash they may not match"),
    "B": Expectation("integrity_errors", False,
                     "dm-integrity.rst, B: a bitmap marks regions whose data and tags may "
                     "differ; after a crash those regions are recalculated"),
}  # fmt: skip

EXPECTATIONS: dict[str, tuple[Expectation, ...]] = {
    "plain": (),
    "btrfs": _SCRUB,
    "btrfs-raid1": _SCRUB,
    "md-raid1": (_MD_RESYNC, _MD_AFTER, _MD_DEGRADED),
    "md-raid5:copy": (_MD_RESYNC, _MD_AFTER, _MD_DEGRADED),
    "md-raid5:skip_copy": (_MD_RESYNC, _MD_AFTER, _MD_DEGRADED),
    **{f"dm-integrity:{mode}": (e,) for mode, e in _INTEGRITY.items()},
}
"""Per stack (label as `--stack` names it): the findings its layers document or forbid. A
finding not listed is a violation. The filesystem's own findings (mount, ledger, fsck) are a
violation too, except where `attributed`: with dm-integrity D, a state whose read-back found
blocks refused has its filesystem damage counted with that documented exposure."""

_ATTRIBUTED = {"dm-integrity:D": "integrity_errors"}


class StateVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """One crash state of a stack, judged: the verdict and which findings made it."""

    verdict: Verdict
    documented: tuple[str, ...] = ()
    violations: tuple[str, ...] = ()


def judge_state(stack: str, findings: Mapping[str, int]) -> StateVerdict:
    """The verdict on a state of `stack` (its label) whose recovery found `findings`."""
    table = {e.finding: e for e in EXPECTATIONS.get(stack, ())}
    found = sorted(name for name, count in findings.items() if count)
    cause = _ATTRIBUTED.get(stack)
    documented, violations = [], []
    for name in found:
        expected = table.get(name)
        attributed = name in FILESYSTEM_FINDINGS and cause is not None and findings.get(cause)
        if (expected is not None and expected.documented) or attributed:
            documented.append(name)
        else:
            violations.append(name)
    verdict: Verdict = "violation" if violations else "exposure" if documented else "clean"
    return StateVerdict(verdict=verdict, documented=tuple(documented),
                        violations=tuple(violations))  # fmt: skip
