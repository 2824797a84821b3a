"""Report and trace files that nobody else can redirect, and the checks behind them.

The server often runs as root and writes into a directory a user chose, so every file is
created without following a link and without clobbering what is there: relative to an open
directory descriptor, with O_NOFOLLOW and O_EXCL, mode 0640 (0600 for traces, which hold the
device's data). A file that must be replaced (summary.json, a trace) is written under a private
random name and renamed over the old one: rename() replaces a link, never its target. A report
directory writable by others is refused unless it is sticky and ours. `validate_paths` makes
the same checks without creating anything (`nbdfork serve --dry-run`, `config_complete`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from nbdfork.errors import ConfigError, NbdforkError

__all__ = [
    "LOG_FILE",
    "PREVIOUS",
    "REPORT_FILES",
    "ReportDir",
    "check_report_dir",
    "create_replacing",
    "encode_json",
    "write_atomic",
    "write_json",
    "check_media_file",
    "check_new_file",
    "check_route",
    "open_regular",
    "read_bounded",
]

REPORT_FILES = ("events.jsonl", "summary.json")
"""A run's main files; with the log, never accepted as links or hard links. A new run sets
aside every entry of the directory (ReportDir.set_aside), these and all others."""
LOG_FILE = "nbdfork.log"
PREVIOUS = "previous"
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_PRIVATE_DIR = 0o750
_MAX_LINKS = 40  # symbolic links followed on one path, as the kernel's ELOOP limit


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _is_private(st: os.stat_result) -> bool:
    """Nobody else can add, remove or rename entries (a sticky directory of ours is fine)."""
    others_write = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    sticky_and_ours = st.st_mode & stat.S_ISVTX and st.st_uid == os.geteuid()
    return not others_write or bool(sticky_and_ours)


def _check_private(key: str, path: Path, st: os.stat_result) -> None:
    """A report directory only we (or root) can change entries of."""
    if not _trusted(st.st_uid):
        raise ConfigError(key, f"{path} is owned by another user (uid {st.st_uid}): "
                          "they could redirect its files")  # fmt: skip
    if not _is_private(st):
        raise ConfigError(key, f"{path} is writable by others (chmod go-w, or use another)")


def _lstat(path: Path, key: str) -> os.stat_result | None:
    """`path`'s own status, None if it does not exist (or a parent is not a directory)."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ConfigError(key, f"cannot look at {path}: {_why(exc)}") from None


def _trusted(uid: int) -> bool:
    """Root's and our own entries: nobody else can change them."""
    return uid in (0, os.geteuid())


def _shared(path: Path, st: os.stat_result) -> str | None:
    """Why another user could add, remove or rename entries of the directory `path`, or None.
    Writable by others is fine only when sticky (they cannot touch our entries)."""
    if not _trusted(st.st_uid):
        return f"{path} is owned by another user (uid {st.st_uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        return f"{path} is writable by others and not sticky"
    return None


def check_route(key: str, path: Path) -> bool:
    """Refuse `path` if another user could redirect it, whatever fs.protected_symlinks says:
    every directory on the way to its last component must be ours or root's and writable by
    nobody else unless sticky, and every symbolic link on the way ours or root's. The last
    component is the caller's (opened O_NOFOLLOW, or a report directory checked as such).
    Returns whether that component's directory is shared (sticky and writable by others)."""
    pending = list(path.parts[1:-1])
    current, hops, shared = Path("/"), 0, False
    while True:
        st = _lstat(current, key)
        assert st is not None  # `current` is always a directory reached so far
        why = _shared(current, st)
        if why is not None:
            raise ConfigError(key, f"{path}: {why}: another user could redirect it")
        shared = bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
        if not pending:
            return shared
        name = pending.pop(0)
        if name == "..":
            current = current.parent
            continue
        candidate = current / name
        st = _lstat(candidate, key)
        if st is None or not (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            return False  # the rest is made by us, or the caller names what is wrong
        if stat.S_ISDIR(st.st_mode):
            current = candidate
            continue
        if not _trusted(st.st_uid):
            raise ConfigError(key, f"{path}: {candidate} is a symbolic link owned by another "
                              f"user (uid {st.st_uid}): refusing to follow it")  # fmt: skip
        hops += 1
        if hops > _MAX_LINKS:
            raise ConfigError(key, f"{path}: too many levels of symbolic links")
        try:
            target = Path(os.readlink(candidate))
        except OSError as exc:
            raise ConfigError(key, f"cannot look at {candidate}: {_why(exc)}") from None
        pending[:0] = [part for part in target.parts if part != "/"]
        if target.is_absolute():
            current = Path("/")


def _check_creatable(key: str, path: Path) -> None:
    """`path` does not exist: its nearest existing ancestor must be a directory we can write."""
    ancestor = path.parent
    while _lstat(ancestor, key) is None and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(key, f"cannot create {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK, effective_ids=True):
        raise ConfigError(key, f"cannot create {path}: {ancestor} is not writable")


def _check_entry(key: str, directory: Path, name: str, *, want_dir: bool = False) -> None:
    """An existing report entry must be what nbdfork would have made: never a link."""
    path = directory / name
    st = _lstat(path, key)
    if st is None:
        return
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(key, f"{path} is a symbolic link: refusing to follow it (remove it)")
    if want_dir and not stat.S_ISDIR(st.st_mode):
        raise ConfigError(key, f"{path} is not a directory (remove it)")
    if not want_dir and not (stat.S_ISREG(st.st_mode) and st.st_nlink == 1):
        raise ConfigError(key, f"{path} is not a regular file of its own (remove it)")


def check_report_dir(path: Path, key: str = "report") -> None:
    """Everything ReportDir.open() will insist on, checked without creating anything."""
    check_route(key, path)
    st = _lstat(path, key)
    if st is None:
        _check_creatable(key, path)
        return
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(key, f"{path} is a symbolic link (give the directory it points to)")
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(key, f"{path} is not a directory")
    _check_private(key, path, st)
    if not os.access(path, os.W_OK | os.X_OK, effective_ids=True):
        raise ConfigError(key, f"{path} is not writable")
    for name in (*REPORT_FILES, LOG_FILE):
        _check_entry(key, path, name)
    _check_entry(key, path, PREVIOUS, want_dir=True)


class ReportDir:
    """An open report directory; every file in it is made relative to its descriptor."""

    def __init__(self, path: Path, fd: int, key: str) -> None:
        self.path = path
        self.fd = fd
        self.key = key

    @classmethod
    def open(cls, path: Path, key: str = "report") -> ReportDir:
        """Check, create if missing (mode 0750) and open `path`; ConfigError names `key`."""
        check_report_dir(path, key)
        try:
            path.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
        except OSError as exc:
            raise ConfigError(key, f"cannot open {path}: {_why(exc)}") from None
        try:  # it may have changed, or been made by another user, since the check
            _check_private(key, path, os.fstat(fd))
        except ConfigError:
            os.close(fd)
            raise
        return cls(path, fd, key)

    def close(self) -> None:
        """Close the directory descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def create(self, name: str, mode: int = 0o640) -> int:
        """A new file `name`, opened for appending; an existing entry (or link) is refused."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _NOFOLLOW
        try:
            return os.open(name, flags, mode, dir_fd=self.fd)
        except OSError as exc:
            raise ConfigError(self.key, f"cannot create {self.path / name}: {_why(exc)}") from None

    def replace(self, name: str, data: bytes, mode: int = 0o640) -> None:
        """Atomically replace `name` with `data` (fsynced) through a private temporary file."""
        tmp, fd = _private_temp(self.fd, name, mode)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            os.unlink(tmp, dir_fd=self.fd)
            raise

    def set_aside(self) -> Path | None:
        """Move everything an earlier run left here into previous/<time>/: its events, summary,
        per-connection reports, log and whatever else it made (every entry but previous/), so
        a reused directory neither mixes two runs nor loses the first. rename() moves a link or
        a directory as it is, never what it points to."""
        old = sorted(name for name in os.listdir(self.fd) if name != PREVIOUS)
        if not old:
            return None
        mtime = max(os.stat(n, dir_fd=self.fd, follow_symlinks=False).st_mtime for n in old)
        stamp = dt.datetime.fromtimestamp(mtime, dt.UTC).strftime("%Y%m%dT%H%M%S.%f")
        try:
            previous = _subdir(self.fd, PREVIOUS, exist_ok=True)
            try:
                name, target = _new_subdir(previous, stamp)
            finally:
                os.close(previous)
            try:
                for entry in old:
                    os.rename(entry, entry, src_dir_fd=self.fd, dst_dir_fd=target)
            finally:
                os.close(target)
        except OSError as exc:
            raise ConfigError(self.key, f"cannot set aside the previous run: {_why(exc)}") from None
        return self.path / PREVIOUS / name


def _subdir(dir_fd: int, name: str, *, exist_ok: bool) -> int:
    """Make (if missing) and open the directory `name` in `dir_fd`, never through a link."""
    try:
        os.mkdir(name, _PRIVATE_DIR, dir_fd=dir_fd)
    except FileExistsError:
        if not exist_ok:
            raise
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=dir_fd)


def _new_subdir(dir_fd: int, stem: str) -> tuple[str, int]:
    """A directory of our own making: `stem`, else `stem-1`, `stem-2`, ..."""
    for n in range(100):
        name = stem if n == 0 else f"{stem}-{n}"
        try:
            return name, _subdir(dir_fd, name, exist_ok=False)
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, f"{stem}: too many runs with this time stamp")


def _private_temp(dir_fd: int, name: str, mode: int) -> tuple[str, int]:
    """A new file `.name.<random>.tmp` in `dir_fd` that nobody else can have planted."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW
    while True:
        tmp = f".{name}.{secrets.token_hex(8)}.tmp"
        try:
            return tmp, os.open(tmp, flags, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue


def check_new_file(key: str, path: Path, may_replace: Callable[[Path], bool]) -> None:
    """`path` can be created (or replaced, if `may_replace` accepts the file there)."""
    check_route(key, path)
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(key, f"directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK, effective_ids=True):
        raise ConfigError(key, f"cannot create {path}: {parent} is not writable")
    st = _lstat(path, key)
    if st is None:
        return
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(key, f"{path} is a symbolic link: refusing to follow it (remove it)")
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(key, f"{path} is a directory")
    if not stat.S_ISREG(st.st_mode) or not may_replace(path):
        raise ConfigError(key, f"{path} exists and is not one of ours: refusing to replace it")


def create_replacing(
    key: str, path: Path, *, may_replace: Callable[[Path], bool], mode: int = 0o600
) -> int:
    """A new file at `path`, open for writing: created under a private name in its directory,
    then renamed over whatever `path` named (a file `may_replace` accepted; never a link's
    target, which rename() leaves alone)."""
    check_new_file(key, path, may_replace)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(key, f"cannot open {path.parent}: {_why(exc)}") from None
    try:
        tmp, fd = _private_temp(dir_fd, path.name, mode)
        try:
            os.rename(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            os.close(fd)
            os.unlink(tmp, dir_fd=dir_fd)
            raise ConfigError(key, f"cannot create {path}: {_why(exc)}") from None
    except OSError as exc:
        raise ConfigError(key, f"cannot create {path}: {_why(exc)}") from None
    finally:
        os.close(dir_fd)
    return fd


def check_media_file(path: Path) -> None:
    """A file= backing file: a new one is created (nowhere another user can redirect), an
    existing one must be a regular file we can read and write, not a link; in a shared
    (sticky) directory, also ours and with no other name."""
    shared = check_route("file", path)
    st = _lstat(path, "file")
    if st is None:
        check_new_file("file", path, lambda _: True)
    elif stat.S_ISLNK(st.st_mode):
        raise ConfigError("file", f"{path} is a symbolic link (give the file it points to)")
    elif not stat.S_ISREG(st.st_mode):
        raise ConfigError("file", f"{path} is not a regular file")
    elif shared and (st.st_uid != os.geteuid() or st.st_nlink != 1):
        raise ConfigError("file", f"{path} is in a shared directory and not a file of our own "
                          "(another owner, or another name): refusing to write to it")  # fmt: skip
    elif not os.access(path, os.R_OK | os.W_OK, effective_ids=True):
        raise ConfigError("file", f"{path} is not readable and writable")


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> Path:
    """Write `data` to `path` so that a reader sees the old file or the new one, never half:
    into a fresh private file beside it (O_EXCL: no link is followed), flushed to disk, then
    renamed over `path`. The one way nbdfork replaces a file a later stage reads."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def encode_json(value: Any) -> bytes:
    """`value` (dicts, lists, msgspec structures, dataclasses) as indented JSON with a final
    newline; NaN and infinities are not JSON and become null."""
    return msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n"


def write_json(path: Path, value: Any) -> Path:
    """`value` as indented JSON in `path`, atomically (write_atomic)."""
    return write_atomic(path, encode_json(value))


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK:
          "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}  # fmt: skip


def open_regular(path: Path, error: type[NbdforkError]) -> BinaryIO:
    """`path` open for reading, if it is a regular file: opened O_NONBLOCK, so a FIFO or a
    device never blocks us, then checked; anything else raises `error` naming what it is."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise error(f"{path}: cannot read: {_why(exc)}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(mode), "of another type")
        raise error(f"{path} is {kind}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bounded(path: Path, limit: int, error: type[NbdforkError]) -> bytes:
    """The bytes of the regular file `path` (open_regular), at most `limit` of them."""
    with open_regular(path, error) as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read: {_why(exc)}") from None
    if len(data) > limit:
        raise error(f"{path} is larger than {limit} bytes: not one of ours")
    return data
