"""What a built stack and its checkers report: the typed results that go into report.json."""

from __future__ import annotations

import msgspec

__all__ = [
    "BtrfsChunk",
    "BtrfsStripe",
    "FsckResult",
    "IntegrityResult",
    "LayerReport",
    "MdCheckResult",
    "MirrorDiff",
    "ScrubDevice",
    "ScrubResult",
    "StackChecks",
]


class LayerReport(msgspec.Struct, frozen=True):
    """One block layer, top-down: stable_writes as the kernel set it when the stack was built,
    and what the run set (None where the run left the layer alone: below the top)."""

    path: str
    kind: str
    sysfs_name: str
    stable_writes_kernel: int
    stable_writes_run: int | None = None


class ScrubDevice(msgspec.Struct, frozen=True):
    """`btrfs scrub status -R -d` of one device (counters as btrfs names them)."""

    device: str
    devid: int
    data_bytes_scrubbed: int
    read_errors: int
    csum_errors: int
    verify_errors: int
    super_errors: int
    uncorrectable_errors: int
    unverified_errors: int
    corrected_errors: int


class ScrubResult(msgspec.Struct, frozen=True):
    """A read-only scrub (`-r`: nothing repaired) of every device, summed, plus per device and
    the kernel's per-device `corruption_errs` from `btrfs device stats`."""

    csum_errors: int
    corrected: int
    uncorrectable: int
    devices: list[ScrubDevice]
    corruption_errs: dict[str, int]
    exit_code: int


class MdCheckResult(msgspec.Struct, frozen=True):
    """`echo check > md/sync_action` until idle: mismatch_cnt in 512-byte sectors, as md counts."""

    device: str
    level: str
    mismatch_cnt: int
    seconds: float


class IntegrityResult(msgspec.Struct, frozen=True):
    """Every 4 KiB block of the dm-integrity device read back with O_DIRECT.

    `integrity_errors` counts blocks the target refused to read (`failed_with`: per errno,
    EILSEQ for a checksum mismatch); `kernel_mismatches` is the target's own counter
    (`dmsetup status`, cumulative since activation); `kernel_lines` are the kernel's messages
    about integrity during the read-back (the first 50 of `kernel_lines_total`)."""

    device: str
    mode: str
    blocks: int
    integrity_errors: int
    failed_with: dict[str, int]
    kernel_mismatches: int
    kernel_lines: list[str]
    kernel_lines_total: int


class FsckResult(msgspec.Struct, frozen=True):
    """A read-only fsck of the unmounted top: `clean` is the tool's own exit status saying so."""

    tool: str
    device: str
    exit_code: int
    clean: bool
    output_tail: list[str]


class MirrorDiff(msgspec.Struct, frozen=True):
    """4 KiB pages whose bytes differ between the legs of a mirror, after the run.

    `method` says how the legs were lined up: `md-members` (each member past its data offset)
    or `btrfs-chunks` (every stripe of every mirrored chunk, from the chunk tree)."""

    method: str
    compared_pages: int
    diff_pages: int
    first_diffs: list[str]


class BtrfsStripe(msgspec.Struct, frozen=True):
    """Where one copy of a chunk lives: device id and byte offset on it."""

    devid: int
    offset: int


class BtrfsChunk(msgspec.Struct, frozen=True):
    """A chunk tree item: logical start, length, type flags (`DATA|RAID1`), stripes."""

    logical: int
    length: int
    type: str
    stripes: list[BtrfsStripe]

    @property
    def mirrored(self) -> bool:
        """Every stripe holds the whole chunk (RAID1*, DUP): the stripes must be identical."""
        profile = self.type.split("|")[-1]
        return profile.startswith("RAID1") or profile == "DUP"


class StackChecks(msgspec.Struct, frozen=True, omit_defaults=True):
    """Every checker's verdict after one workload (absent where the stack has no such layer);
    `errors` are checkers that could not run, one line each."""

    btrfs_scrub: ScrubResult | None = None
    md_check: MdCheckResult | None = None
    dm_integrity: IntegrityResult | None = None
    fsck: FsckResult | None = None
    mirror_diff: MirrorDiff | None = None
    mirror_diff_pages: int | None = None
    errors: list[str] = msgspec.field(default_factory=list)
