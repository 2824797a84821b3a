"""Guest side: every layer's own checker, run on the quiesced stack after a workload.

`run_checks` is called with the filesystem unmounted and the block layers still assembled.
The order keeps each verdict unspoiled by the one before: the mirror legs are compared
before anything reads or repairs them, and btrfs scrub (which repairs a mirror from its good
copy, so that corrected / uncorrectable mean something) comes last.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from nbdfork.experiments.stacks.guest import (
    Log,
    StackError,
    block_name,
    mount,
    read_attribute,
    run_tool,
    umount,
)
from nbdfork.experiments.stacks.parse import (
    ParseError,
    fsck_verdict,
    parse_chunk_tree,
    parse_dev_item_devid,
    parse_device_stats,
    parse_integrity_status,
    parse_kmsg_record,
    parse_scrub_status,
)
from nbdfork.experiments.stacks.plan import BuildPlan
from nbdfork.experiments.stacks.results import (
    FsckResult,
    IntegrityResult,
    MdCheckResult,
    MirrorDiff,
    ScrubResult,
    StackChecks,
)

__all__ = [
    "check_btrfs_scrub",
    "check_dm_integrity",
    "check_fsck",
    "check_md",
    "check_mirror",
    "run_checks",
]

PAGE = 4096
_CHUNK = 1 << 20
_TIMEOUT_S = 900.0
_KEPT_LINES = 50
_FIRST_DIFFS = 20
_BTRFS_SUPERBLOCKS = frozenset((64 << 10, 64 << 20, 256 << 30))


T = TypeVar("T")


def run_checks(plan: BuildPlan, log: Log) -> StackChecks:
    """Every checker the plan names, in the order that leaves each verdict unspoiled;
    a checker that fails is one line in `errors`, never a clean verdict."""
    errors: list[str] = []

    def attempt(name: str, checker: Callable[[BuildPlan, Log], T]) -> T | None:
        if name not in plan.checks:
            return None
        try:
            return checker(plan, log)
        except (StackError, ParseError, OSError) as exc:
            errors.append(f"{name}: {exc}")
            log(f"# checker {name} failed: {exc}")
            return None

    mirror = attempt("mirror_diff", check_mirror)
    md = attempt("md_check", check_md)
    integrity = attempt("dm_integrity", check_dm_integrity)
    fsck = attempt("fsck", check_fsck)
    scrub = attempt("btrfs_scrub", check_btrfs_scrub)
    return StackChecks(
        btrfs_scrub=scrub,
        md_check=md,
        dm_integrity=integrity,
        fsck=fsck,
        mirror_diff=mirror,
        mirror_diff_pages=mirror.diff_pages if mirror else None,
        errors=errors,
    )


# --- btrfs scrub ------------------------------------------------------------------------


def check_btrfs_scrub(plan: BuildPlan, log: Log) -> ScrubResult:
    """Mount, `btrfs scrub start -B -d -R` (repairing: a mirror's good copy is what makes an
    error `corrected`), `btrfs device stats`, unmount."""
    mount(plan, log)
    try:
        code, out = run_tool(
            log,
            "btrfs_scrub",
            ("btrfs", "scrub", "start", "-B", "-d", "-R", plan.mountpoint),
            _TIMEOUT_S,
        )
        devices = parse_scrub_status(out)
        _, stats_out = run_tool(
            log, "btrfs_scrub", ("btrfs", "device", "stats", plan.mountpoint), 60.0
        )
        stats = parse_device_stats(stats_out)
    finally:
        umount(plan, log)
    return ScrubResult(
        csum_errors=sum(d.csum_errors for d in devices),
        corrected=sum(d.corrected_errors for d in devices),
        uncorrectable=sum(d.uncorrectable_errors for d in devices),
        devices=devices,
        corruption_errs={dev: c.get("corruption_errs", 0) for dev, c in stats.items()},
        exit_code=code,
    )


# --- md check -------------------------------------------------------------------------


def check_md(plan: BuildPlan, log: Log) -> MdCheckResult:
    """`echo check > md/sync_action`, wait for idle, read mismatch_cnt."""
    md = _require(plan.md_device, "md_check")
    started = time.monotonic()
    action = Path("/sys/block") / block_name(md) / "md" / "sync_action"
    log(f"# echo check > {action}")
    action.write_text("check\n")
    deadline = started + _TIMEOUT_S
    while action.read_text().strip() != "idle":
        if time.monotonic() > deadline:
            raise StackError(f"md_check: {md} still checking after {_TIMEOUT_S:g} s")
        time.sleep(0.2)
    return MdCheckResult(
        md,
        read_attribute(md, "md/level"),
        int(read_attribute(md, "md/mismatch_cnt")),
        round(time.monotonic() - started, 3),
    )


def _require(value: str | None, checker: str) -> str:
    if value is None:
        raise StackError(f"{checker}: the plan has no such layer")
    return value


# --- dm-integrity read-back -------------------------------------------------------------


def check_dm_integrity(plan: BuildPlan, log: Log) -> IntegrityResult:
    """Read every 4 KiB block of the dm-integrity device with O_DIRECT; count the blocks the
    target refuses and keep the kernel's lines about it, then the target's own counter."""
    name = _require(plan.integrity_name, "dm_integrity")
    device = plan.top[0]
    with _kmsg_tail() as new_lines:
        blocks, failed = _read_back(device)
        lines = [line for line in new_lines() if "integrity" in line]
    _, status = run_tool(log, "dm_integrity", ("dmsetup", "status", name), 60.0)
    log(f"# read back {blocks} blocks of {device}: failed {failed}")
    return IntegrityResult(
        device,
        plan.mode,
        blocks,
        sum(failed.values()),
        failed,
        parse_integrity_status(status),
        lines[:_KEPT_LINES],
        len(lines),
    )


# A checksum mismatch completes the bio with BLK_STS_PROTECTION, which reaches a reader as
# EILSEQ (blk_status_to_errno); EIO is what other failures of the target look like.
_READ_ERRORS = (errno.EILSEQ, errno.EIO)


def _read_back(device: str) -> tuple[int, dict[str, int]]:
    """(blocks, {errno name: blocks failing with it}): 1 MiB reads, each failing one re-read
    block by block."""
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    buf = mmap.mmap(-1, _CHUNK)  # page aligned, as O_DIRECT needs; freed with its views
    failed: dict[str, int] = {}
    try:
        end = os.lseek(fd, 0, os.SEEK_END) // PAGE * PAGE
        for offset in range(0, end, _CHUNK):
            length = min(_CHUNK, end - offset)
            if _read_error(fd, memoryview(buf)[:length], offset) is None:
                continue
            for block in range(offset, offset + length, PAGE):
                if (err := _read_error(fd, memoryview(buf)[:PAGE], block)) is not None:
                    failed[errno.errorcode[err]] = failed.get(errno.errorcode[err], 0) + 1
        return end // PAGE, failed
    finally:
        os.close(fd)


def _read_error(fd: int, buf: memoryview, offset: int) -> int | None:
    """The errno of a read the target refused, None if it read."""
    try:
        os.preadv(fd, [buf], offset)
    except OSError as exc:
        if exc.errno not in _READ_ERRORS:
            raise
        return exc.errno
    return None


@contextlib.contextmanager
def _kmsg_tail() -> Iterator[Callable[[], list[str]]]:
    """The kernel's messages logged from now on (from /dev/kmsg, positioned at its end)."""
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    os.lseek(fd, 0, os.SEEK_END)

    def read() -> list[str]:
        lines: list[str] = []
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                return lines
            except BrokenPipeError:  # records overwritten before we read them: go on
                continue
            lines.append(parse_kmsg_record(record).text)

    try:
        yield read
    finally:
        os.close(fd)


# --- fsck -------------------------------------------------------------------------------

_FSCK = {
    "ext4": ("e2fsck", "-fn"),
    "xfs": ("xfs_repair", "-n"),
    "btrfs": ("btrfs", "check", "--readonly"),
}


def check_fsck(plan: BuildPlan, log: Log) -> FsckResult:
    """The filesystem's own read-only check of the unmounted top."""
    argv = (*_FSCK[plan.filesystem], plan.top[0])
    code, out = run_tool(log, "fsck", argv, _TIMEOUT_S)
    return fsck_verdict(argv[0], plan.top[0], code, out)


# --- mirror legs ------------------------------------------------------------------------


def check_mirror(plan: BuildPlan, log: Log) -> MirrorDiff:
    """4 KiB pages that differ between the legs of the plan's mirror."""
    if plan.md_device is not None:
        return _md_mirror(plan.md_device, log)
    return _btrfs_mirror(plan, log)


def _md_mirror(md: str, log: Log) -> MirrorDiff:
    """The members of an md raid1 past their data offsets (md/rdN/offset, in sectors)."""
    base = Path("/sys/block") / block_name(md) / "md"
    legs = []
    for rd in sorted(base.glob("rd[0-9]*")):
        member = "/dev/" + rd.resolve().name.removeprefix("dev-")
        legs.append((member, int((rd / "offset").read_text()) * 512))
    size = int(read_attribute(md, "md/component_size")) * 1024
    log(f"# compare {size} bytes of {', '.join(f'{d}@{o}' for d, o in legs)}")
    compared, diffs = _differing_pages([(d, o, size) for d, o in legs])
    return MirrorDiff("md-members", compared, len(diffs), [str(d) for d in diffs[:_FIRST_DIFFS]])


def _btrfs_mirror(plan: BuildPlan, log: Log) -> MirrorDiff:
    """Every stripe of every mirrored chunk (chunk tree of the first device; devids from
    each device's superblock)."""
    devids = {}
    for device in plan.devices:
        _, sup = run_tool(
            log, "mirror_diff", ("btrfs", "inspect-internal", "dump-super", device), 60.0
        )
        devids[parse_dev_item_devid(sup)] = device
    _, tree = run_tool(
        log,
        "mirror_diff",
        ("btrfs", "inspect-internal", "dump-tree", "-t", "chunk", plan.devices[0]),
        120.0,
    )
    compared = diff = 0
    first: list[str] = []
    for chunk in parse_chunk_tree(tree):
        if not chunk.mirrored:
            continue
        legs = [(devids[s.devid], s.offset, chunk.length) for s in chunk.stripes]
        pages, diffs = _differing_pages(legs)
        # A superblock copy (64 KiB, 64 MiB, 256 GiB into each device) can fall inside a
        # stripe; btrfs leaves that logical range unused, so the legs may differ there.
        diffs = [d for d in diffs if not any(o + d in _BTRFS_SUPERBLOCKS for _, o, _ in legs)]
        compared += pages
        diff += len(diffs)
        first += [f"{chunk.type}@{chunk.logical}+{d}" for d in diffs]
    return MirrorDiff("btrfs-chunks", compared, diff, first[:_FIRST_DIFFS])


def _differing_pages(legs: list[tuple[str, int, int]]) -> tuple[int, list[int]]:
    """Pages compared, and the byte offsets (into the region) of the 4 KiB pages that are not
    identical on every leg of (device, offset, size)."""
    size = min(s for _, _, s in legs) - min(s for _, _, s in legs) % PAGE
    fds = [os.open(d, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC) for d, _, _ in legs]
    bufs = [mmap.mmap(-1, _CHUNK) for _ in legs]  # page aligned; freed with their views
    diffs: list[int] = []
    try:
        for pos in range(0, size, _CHUNK):
            length = min(_CHUNK, size - pos)
            for fd, buf, (_, offset, _) in zip(fds, bufs, legs, strict=True):
                if os.preadv(fd, [memoryview(buf)[:length]], offset + pos) != length:
                    raise StackError(f"mirror_diff: short read at {offset + pos}")
            data = [b[:length] for b in bufs]
            if all(d == data[0] for d in data[1:]):
                continue
            diffs += [
                pos + p
                for p in range(0, length, PAGE)
                if any(d[p : p + PAGE] != data[0][p : p + PAGE] for d in data[1:])
            ]
    finally:
        for fd in fds:
            os.close(fd)
    return size // PAGE, diffs
