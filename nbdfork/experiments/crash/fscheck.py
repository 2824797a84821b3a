"""Checking a crash image as the filesystem sees it: mount (journal replay), verify the
ledger's files, unmount, then the filesystem's own checker. Runs where loop devices work
(the guest), as root; every command has a timeout."""

from __future__ import annotations

import subprocess
from pathlib import Path

from nbdfork.experiments.crash.states import FsChecker
from nbdfork.experiments.crash.workload import Checkpoint, LedgerFile
from nbdfork.oracle.stamp import PAGE_SIZE, PageStatus, decode_page

__all__ = ["FSCK", "check_files", "make_fs_checker"]

FSCK = {
    "ext4": ["e2fsck", "-f", "-n"],
    "xfs": ["xfs_repair", "-n", "-f"],
    "btrfs": ["btrfs", "check", "--readonly"],
}
_TIMEOUT = 120.0


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return -1, f"{argv[0]}: timed out after {_TIMEOUT:g} s"
    return done.returncode, (done.stdout + done.stderr)[-2000:]


def check_files(mount: Path, checkpoint: Checkpoint) -> list[dict[str, object]]:
    """Ledger violations among the files: missing, short, or a page older than durable."""
    problems: list[dict[str, object]] = []
    for entry in checkpoint.files.values():
        path = mount / entry.name
        if not path.exists():
            problems.append({"file": entry.name, "problem": "missing"})
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:  # e.g. EBADMSG: the filesystem found its own checksums wrong
            problems.append({"file": entry.name, "problem": f"unreadable: {exc.strerror}"})
            continue
        problems += _check_pages(entry, data)
        if entry.atomic:
            problems += _check_untorn(entry, data)
    return problems


def _check_untorn(entry: LedgerFile, data: bytes) -> list[dict[str, object]]:
    """A file rewritten only by whole-file atomic writes holds one generation in every page."""
    chunks = [data[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] for p in range(len(entry.generations))]
    decoded = [decode_page(c) for c in chunks if len(c) == PAGE_SIZE]  # short: reported already
    gens = sorted({d.generation for d in decoded
                   if d.status is PageStatus.VALID and d.generation is not None})  # fmt: skip
    if len(gens) > 1:
        return [{"file": entry.name, "problem": "half of an atomic write", "generations": gens}]
    return []


def _check_pages(entry: LedgerFile, data: bytes) -> list[dict[str, object]]:
    problems: list[dict[str, object]] = []
    for page, durable in enumerate(entry.generations):
        chunk = data[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
        if len(chunk) < PAGE_SIZE:
            problems.append({"file": entry.name, "page": page, "problem": "short"})
            continue
        decoded = decode_page(chunk)
        gens = [g for g in decoded.sector_generations if g is not None]
        ok = (decoded.status is PageStatus.VALID and (decoded.generation or 0) >= durable) or (
            decoded.status is PageStatus.TORN and len(gens) == 8 and min(gens) >= durable
        )
        if not ok:
            problems.append({"file": entry.name, "page": page, "durable": durable,
                             "status": decoded.status.name.lower(),
                             "generation": decoded.generation})  # fmt: skip
    return problems


def make_fs_checker(fs: str, mountpoint: Path) -> FsChecker:
    """A FsChecker for `fs` mounting images at `mountpoint`."""
    mountpoint.mkdir(parents=True, exist_ok=True)

    def check(image: Path, checkpoint: Checkpoint) -> dict[str, object]:
        result: dict[str, object] = {}
        rc, out = _run(["mount", "-o", "loop", str(image), str(mountpoint)])
        result["mount_ok"] = rc == 0
        if rc == 0:
            try:
                result["ledger_violations"] = check_files(mountpoint, checkpoint)
            finally:
                _run(["umount", str(mountpoint)])
        else:
            result["mount_output"] = out
        rc, out = _run([*FSCK[fs], str(image)])
        result["fsck_ok"] = rc == 0
        if rc != 0:
            result["fsck_output"] = out
        return result

    return check
