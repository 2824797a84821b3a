"""A crash state of a storage stack, recovered the way the stack recovers itself (guest side).

The members' images are attached to loop devices in stack order and the stack is brought up
with its own tools, as after a power cut, then judged by its own checkers and by the
filesystem on top:

- md raid1/raid5: `mdadm --assemble --run` with md's `start_ro` set, so the dirty array waits
  in read-auto instead of resyncing at once; the members compared page by page as they are
  (a mirror's copies, a raid5 stripe's XOR), then `resync` until md/resync_start reads
  `none`, then md's own `check` (mismatch_cnt after md's recovery).
- btrfs, btrfs raid1: mount naming every member (log replay), then `btrfs scrub -B`.
- dm-integrity J/D/B: `integritysetup open` in the mode it was formatted for (J replays its
  journal, B recalculates the regions its bitmap marks dirty), then an O_DIRECT read of every
  block counting the ones the target refuses, before anything else writes to it.

Then, every stack: mount the top (journal replay), the ledger's files, unmount, the
filesystem's read-only checker. Each checker's raw result goes into the state's row beside the
findings (nbdfork.experiments.crash.expectations names them) that decide its verdict.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np

from nbdfork.experiments.crash.expectations import judge_state
from nbdfork.experiments.crash.fscheck import check_files
from nbdfork.experiments.crash.workload import Checkpoint
from nbdfork.experiments.stacks import StackError, StackSpec, plan_stack
from nbdfork.experiments.stacks.checks import (
    check_btrfs_scrub,
    check_dm_integrity,
    check_fsck,
)
from nbdfork.experiments.stacks.guest import Log, block_name, read_attribute, run_tool
from nbdfork.experiments.stacks.parse import ParseError
from nbdfork.experiments.stacks.plan import INTEGRITY_NAME, MD_DEVICE, BuildPlan
from nbdfork.experiments.stacks.results import MdCheckResult

__all__ = ["MD_SPEED_MIN", "MD_START_RO", "StackRecovery"]

MD_START_RO = Path("/sys/module/md_mod/parameters/start_ro")
MD_SPEED_MIN = Path("/proc/sys/dev/raid/speed_limit_min")
_INTEGRITY_FLAGS = {"J": (), "D": ("--integrity-no-journal",), "B": ("--integrity-bitmap-mode",)}
_TIMEOUT_S = 600.0
PAGE = 4096
_CHUNK = 1 << 20


class StackRecovery:
    """Checks crash states of one stack: `check(images, checkpoint)` is a StackChecker."""

    def __init__(self, spec: StackSpec, fs: str, mountpoint: Path, log: Log) -> None:
        self.spec, self.fs, self.mountpoint, self.log = spec, fs, mountpoint, log

    def check(self, images: list[Path], checkpoint: Checkpoint) -> dict[str, object]:
        """Recover the state on loop devices, run every checker; the row's `recovery`."""
        findings: dict[str, int] = {}
        result: dict[str, object] = {}
        try:
            with _loops(images, self.log) as loops:
                plan = plan_stack(self.spec, loops, self.fs, str(self.mountpoint))
                try:
                    self._recover(plan, findings, result, checkpoint)
                finally:
                    self._release(plan)
        except (StackError, ParseError, OSError, ValueError) as exc:
            findings["recovery_failed"] = 1
            result["error"] = f"{type(exc).__name__}: {exc}"
            self.log(f"# recovery failed: {exc}")
        verdict = judge_state(self.spec.label, findings)
        return {"findings": findings, **msgspec.to_builtins(verdict), **result}

    def _recover(
        self, plan: BuildPlan, findings: dict[str, int], result: dict[str, object],
        checkpoint: Checkpoint,
    ) -> None:  # fmt: skip
        if plan.md_device is not None:
            result["md"] = self._md(plan, findings)
        elif plan.integrity_name is not None:
            self._open_integrity(plan)
            integrity = check_dm_integrity(plan, self.log)
            findings["integrity_errors"] = integrity.integrity_errors
            result["dm_integrity"] = msgspec.to_builtins(integrity)
        elif plan.filesystem == "btrfs":
            run_tool(self.log, "btrfs", ("btrfs", "device", "scan", "--forget"), 60.0)
        result["fs"] = self._filesystem(plan, findings, checkpoint)
        if plan.filesystem == "btrfs" and findings.get("mount_failed") == 0:
            scrub = check_btrfs_scrub(plan, self.log)
            findings["scrub_csum_errors"] = scrub.csum_errors
            findings["scrub_uncorrectable"] = scrub.uncorrectable
            result["btrfs_scrub"] = msgspec.to_builtins(scrub)

    # --- md -----------------------------------------------------------------------------

    def _md(self, plan: BuildPlan, findings: dict[str, int]) -> dict[str, object]:
        md = plan.md_device or MD_DEVICE
        argv = ("mdadm", "--assemble", md, "--run", *plan.devices)
        for _ in range(5):  # the previous state's array may still hold a member a moment
            code, text = run_tool(self.log, "md", argv, _TIMEOUT_S)
            if code == 0 or not any(w in text for w in ("busy", "already-assembled")):
                break
            run_tool(self.log, "md", ("mdadm", "--stop", md), 60.0)
            time.sleep(1.0)
        if code != 0:
            last = (text.strip().splitlines() or [""])[-1][:200]
            raise StackError(f"md: mdadm exited {code}: {last}")
        state = read_attribute(md, "md/array_state")
        degraded = int(read_attribute(md, "md/degraded"))
        findings["md_degraded"] = degraded
        out: dict[str, object] = {"array_state": state, "degraded": degraded}
        if state == "read-auto" and not degraded:  # md's start_ro: nothing resynced yet
            # md's own `check` cannot run first: on a dirty array md turns it into a resync
            # (seen on 6.1), so the members are compared here, as they are on the media.
            compared, differ = _members_disagree(md, plan.stack == "md-raid1")
            findings["md_members_differ_before_resync"] = differ
            out["before_resync"] = {"compared_pages": compared, "differ_pages": differ}
        resync = _md_resync(md, self.log)
        out["resync_s"] = resync
        after = _md_action(md, "check", self.log)
        findings["md_mismatch_after_resync"] = after.mismatch_cnt
        out["after_resync"] = msgspec.to_builtins(after)
        return out

    # --- dm-integrity -------------------------------------------------------------------

    def _open_integrity(self, plan: BuildPlan) -> None:
        flags = _INTEGRITY_FLAGS[plan.mode]
        name = plan.integrity_name or INTEGRITY_NAME
        argv = ("integritysetup", "open", "--integrity", "crc32c", *flags, plan.devices[0], name)
        self._checked("integrity", argv)

    # --- the filesystem on top ----------------------------------------------------------

    def _filesystem(
        self, plan: BuildPlan, findings: dict[str, int], checkpoint: Checkpoint
    ) -> dict[str, object]:
        out: dict[str, object] = {}
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        code, text = run_tool(self.log, "mount", plan.mount.argv, plan.mount.timeout_s)
        out["mount_ok"] = code == 0
        findings["mount_failed"] = int(code != 0)
        if code == 0:
            try:
                problems = check_files(self.mountpoint, checkpoint)
            finally:
                run_tool(self.log, "umount", plan.umount.argv, plan.umount.timeout_s)
            out["ledger_violations"] = problems
            findings["ledger_violations"] = len(problems)
        else:
            out["mount_output"] = text[-2000:]
        fsck = check_fsck(plan, self.log)
        out["fsck_ok"] = fsck.clean
        findings["fsck_failed"] = int(not fsck.clean)
        if not fsck.clean:
            out["fsck_output"] = "\n".join(fsck.output_tail)[-2000:]
        return out

    # --- helpers ------------------------------------------------------------------------

    def _checked(self, step: str, argv: tuple[str, ...]) -> str:
        code, out = run_tool(self.log, step, argv, _TIMEOUT_S)
        if code != 0:
            last = (out.strip().splitlines() or [""])[-1][:200]
            raise StackError(f"{step}: {argv[0]} exited {code}: {last}")
        return out

    def _release(self, plan: BuildPlan) -> None:
        """Take the stack down again (what was brought up), ignoring what was not."""
        run_tool(self.log, "release", ("umount", str(self.mountpoint)), 60.0)
        if plan.md_device is not None:
            run_tool(self.log, "release", ("mdadm", "--stop", plan.md_device), 120.0)
            _wait_stopped(plan.md_device)
        if plan.integrity_name is not None:
            run_tool(self.log, "release", ("integritysetup", "close", plan.integrity_name), 120.0)


def _members_disagree(md: str, mirror: bool) -> tuple[int, int]:
    """(4 KiB pages compared, pages where the members disagree) over the members' data areas
    (md/rdN/offset, md/component_size): a mirror's copies differ, or a raid5 stripe's
    members do not XOR to zero (parity wrong, whatever the layout)."""
    base = Path("/sys/block") / block_name(md) / "md"
    legs = [("/dev/" + rd.resolve().name.removeprefix("dev-"),
             int((rd / "offset").read_text()) * 512) for rd in sorted(base.glob("rd[0-9]*"))]
    size = int((base / "component_size").read_text()) * 1024 // PAGE * PAGE  # fmt: skip
    fds = [os.open(d, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC) for d, _ in legs]
    bufs = [mmap.mmap(-1, _CHUNK) for _ in legs]  # page aligned, as O_DIRECT needs
    differ = 0
    try:
        for pos in range(0, size, _CHUNK):
            length = min(_CHUNK, size - pos)
            for fd, buf, (_, offset) in zip(fds, bufs, legs, strict=True):
                if os.preadv(fd, [memoryview(buf)[:length]], offset + pos) != length:
                    raise StackError(f"md: short read of a member at {offset + pos}")
            pages = [np.frombuffer(b, dtype=np.uint64, count=length // 8).reshape(-1, PAGE // 8)
                     for b in bufs]  # fmt: skip
            if mirror:
                bad = np.zeros(len(pages[0]), dtype=bool)
                for other in pages[1:]:
                    bad |= (other != pages[0]).any(axis=1)
            else:
                bad = np.bitwise_xor.reduce(np.stack(pages), axis=0).any(axis=1)
            differ += int(bad.sum())
            del pages, bad  # no view may outlive the buffers
    finally:
        for fd in fds:
            os.close(fd)
    return size // PAGE, differ


def _md_action(md: str, action: str, log: Log) -> MdCheckResult:
    """`echo ACTION > md/sync_action`, wait until md is idle again; mismatch_cnt."""
    started = time.monotonic()
    path = Path("/sys/block") / block_name(md) / "md" / "sync_action"
    log(f"# echo {action} > {path}")
    path.write_text(f"{action}\n")
    _wait_done(path.parent, action, started, log)
    return MdCheckResult(md, read_attribute(md, "md/level"),
                         int(read_attribute(md, "md/mismatch_cnt")),
                         round(time.monotonic() - started, 3))  # fmt: skip


def _md_resync(md: str, log: Log) -> float:
    """md's own recovery of a dirty array: resync until md/resync_start reads `none`."""
    started = time.monotonic()
    base = Path("/sys/block") / block_name(md) / "md"
    while (base / "resync_start").read_text().strip() != "none":
        if time.monotonic() - started > _TIMEOUT_S:
            raise StackError(f"resync: {md} not in sync after {_TIMEOUT_S:g} s")
        if (base / "sync_action").read_text().strip() == "idle":
            log(f"# echo resync > {base / 'sync_action'}")
            with contextlib.suppress(OSError):  # EBUSY: md started it on its own meanwhile
                (base / "sync_action").write_text("resync\n")
        time.sleep(0.2)
    _wait_done(base, None, started, log)
    return round(time.monotonic() - started, 3)


def _wait_done(base: Path, action: str | None, started: float, log: Log) -> None:
    """Until md has run `action` (md/last_sync_action, set when md starts it from its own
    thread; None: whatever runs) and is idle again; md's progress logged every 10 s."""
    last = base / "last_sync_action"
    said = started
    # A check of the same array ran before: wait (briefly) to see this one start.
    seen = time.monotonic() + 5.0
    again = action is not None and last.read_text().strip() == action
    while again and time.monotonic() < seen:
        if (base / "sync_action").read_text().strip() == action:
            break
        time.sleep(0.05)
    while ((action is not None and last.read_text().strip() != action)
           or (base / "sync_action").read_text().strip() != "idle"):  # fmt: skip
        if time.monotonic() - started > _TIMEOUT_S:
            raise StackError(f"md: {action} not done after {_TIMEOUT_S:g} s")
        if time.monotonic() - said > 10.0:
            said = time.monotonic()
            log("# md: " + ", ".join(f"{n} {_read(base / n)}" for n in _PROGRESS))
        time.sleep(0.2)


_PROGRESS = ("sync_action", "last_sync_action", "sync_completed", "sync_speed", "resync_start")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        return f"({exc.strerror})"


@contextlib.contextmanager
def _loops(images: list[Path], log: Log) -> Iterator[list[str]]:
    """Each image on a loop device (in order), detached afterwards."""
    loops: list[str] = []
    try:
        for image in images:
            code, out = run_tool(log, "losetup", ("losetup", "--find", "--show", str(image)),
                                 60.0)  # fmt: skip
            if code != 0:
                raise StackError(f"losetup: {out.strip()[-200:]}")
            loops.append(out.strip().splitlines()[-1])
            _wait_released(loops[-1])
        yield loops
    finally:
        for loop in loops:
            _wait_released(loop)
            run_tool(log, "losetup", ("losetup", "-d", loop), 60.0)


def _wait_stopped(md: str, timeout: float = 30.0) -> None:
    """Until the stopped array is gone (or left inactive): 7.2 removes it after `mdadm --stop`
    has returned, and an assembly meanwhile "merges with already-assembled /dev/md/0"."""
    base = Path("/sys/block") / Path(md).name / "md" / "array_state"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if base.read_text().strip() in ("clear", "inactive"):
                return
        except OSError:  # the array is gone
            return
        time.sleep(0.1)


def _wait_released(device: str, timeout: float = 30.0) -> None:
    """Until no layer holds `device` (sysfs holders/ empty): md lets go of its members after
    `mdadm --stop` has returned, and a loop device detached while held is reused still held
    ("mdadm: /dev/loop0 is busy - skipping" in the next state)."""
    holders = Path("/sys/block") / Path(device).name / "holders"
    deadline = time.monotonic() + timeout
    while holders.is_dir() and any(holders.iterdir()):
        if time.monotonic() > deadline:
            raise StackError(f"release: {device} still held by {sorted(os.listdir(holders))}")
        time.sleep(0.1)
