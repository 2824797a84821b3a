"""A running cell has one owner: the campaign process that started it.

When the local executor starts a cell (in a process group of its own) it records the group in
DIR/.running/<name>.owner: the group id, its leader's start time (clock ticks after boot, from
/proc/PID/stat) and the boot id; the record goes once the cell has ended. A record left behind
means its campaign was killed. The next campaign in DIR holds DIR's lock (no other campaign
runs there) and calls `reclaim` before it starts any cell: a group still running is stopped
(SIGTERM, SIGKILL after the grace period) and one line says so; the cell's partial results are
moved to DIR/cells/<id>, which the rerun then sets aside under previous/ as usual.

The record cannot name someone else's processes: Linux does not reuse a pid while a process
still has it as its process group id, and a leader with the recorded pid but another start
time, or a record of another boot, is not ours: nothing is signalled.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from nbdfork.campaign.paths import RUNNING, cell_dir, owner_file, running_dir
from nbdfork.errors import ConfigError
from nbdfork.files import write_atomic
from nbdfork.inputs import read_bounded

__all__ = ["Owner", "reclaim", "record_owner", "release_owner"]

_KILL_WAIT = 10.0  # seconds for a SIGKILLed group to be gone
_POLL = 0.05


class Owner(msgspec.Struct, frozen=True):
    """DIR/.running/<name>.owner."""

    cell: str
    pgid: int  # the cell's process group, led by the cell's process
    start: int  # the leader's start time, clock ticks after boot
    boot: str  # /proc/sys/kernel/random/boot_id
    campaign: int  # the pid of the campaign process that started it


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first), None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields and fields[0] not in "ZX" else None


def _members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`."""
    found = []
    for entry in os.listdir("/proc"):
        fields = _stat(int(entry)) if entry.isdigit() else None
        if fields is not None and fields[2] == str(pgid) and fields[0] not in "ZX":
            found.append(int(entry))
    return found


def record_owner(out: Path, cell: str, pid: int) -> None:
    """Record that this process owns `cell`, running as process group `pid`."""
    start = _start_time(pid) or 0
    owner = Owner(cell, pid, start, _boot_id(), os.getpid())
    write_atomic(owner_file(out, cell), msgspec.json.encode(owner), mode=0o640)


def release_owner(out: Path, cell: str) -> None:
    """The cell has ended: forget its record."""
    owner_file(out, cell).unlink(missing_ok=True)


def _ours(owner: Owner) -> bool:
    """The recorded group still runs and is the one the record names."""
    if owner.boot != _boot_id():
        return False
    leader = _start_time(owner.pgid)
    if leader is not None and leader != owner.start:
        return False  # the pid was reused: another process leads a group of that number
    return bool(_members(owner.pgid))


def _gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def _stop(owner: Owner, grace: float) -> str:
    """Stop the group; the signal that did it."""
    os.killpg(owner.pgid, signal.SIGTERM)
    if _gone(owner.pgid, grace):
        return "SIGTERM"
    os.killpg(owner.pgid, signal.SIGKILL)
    if _gone(owner.pgid, _KILL_WAIT):
        return f"SIGKILL after {grace:g} s"
    raise ConfigError("--out", f"cell {owner.cell}: process group {owner.pgid}, left "
                      "running by a killed campaign, does not stop: not starting the cell "
                      "again")  # fmt: skip


def _read(path: Path) -> Owner | None:
    try:
        data = read_bounded(path, 4096, lambda problem: ConfigError(str(path), problem))
        return msgspec.json.decode(data, type=Owner)
    except (ConfigError, msgspec.MsgspecError):
        return None


def _keep_partial(out: Path, cell: str) -> None:
    """The killed attempt's --out becomes DIR/cells/<id> (its empty placeholder removed)."""
    work, target = running_dir(out, cell), cell_dir(out, cell)
    if not work.is_dir():
        return
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        work.rename(target)


def reclaim(out: Path, grace: float, say: Callable[[str], None]) -> None:
    """Find the cells a killed campaign left running in DIR, stop each (one line each) and
    keep their partial results; then forget their records."""
    running = out / RUNNING
    for path in sorted(running.glob("*.owner")) if running.is_dir() else ():
        owner = _read(path)
        if owner is None:
            say(f"{path}: not an owner record: removed (nothing signalled)")
        elif _ours(owner):
            how = _stop(owner, grace)
            say(f"cell {owner.cell}: stopped its process group {owner.pgid} ({how}), left "
                f"running by campaign process {owner.campaign}, which was killed")  # fmt: skip
        if owner is not None:
            _keep_partial(out, owner.cell)
        path.unlink(missing_ok=True)
