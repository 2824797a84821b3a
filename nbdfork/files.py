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
import fcntl
import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from nbdfork.errors import ConfigError

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
]

REPORT_FILES = ("events.jsonl", "summary.json")
"""One run's files: set aside into previous/<time>/ when a new run starts."""
LOG_FILE = "nbdfork.log"  # appended across runs: its lines are timestamped
PREVIOUS = "previous"
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_PRIVATE_DIR = 0o750


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _is_private(st: os.stat_result) -> bool:
    """Nobody else can add, remove or rename entries (a sticky directory of ours is fine)."""
    others_write = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    sticky_and_ours = st.st_mode & stat.S_ISVTX and st.st_uid == os.geteuid()
    return not others_write or bool(sticky_and_ours)


def _lstat(path: Path, key: str) -> os.stat_result | None:
    """`path`'s own status, None if it does not exist (or a parent is not a directory)."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ConfigError(key, f"cannot look at {path}: {_why(exc)}") from None


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
    st = _lstat(path, key)
    if st is None:
        _check_creatable(key, path)
        return
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(key, f"{path} is a symbolic link (give the directory it points to)")
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(key, f"{path} is not a directory")
    if not _is_private(st):
        raise ConfigError(key, f"{path} is writable by others (chmod go-w, or use another)")
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
        if not _is_private(os.fstat(fd)):  # it changed since the check
            os.close(fd)
            raise ConfigError(key, f"{path} is writable by others (chmod go-w, or use another)")
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

    def append(self, name: str, mode: int = 0o640) -> int:
        """`name` opened for appending, created if missing; only a regular file with no other
        name (no link, fifo, device or hard link to a file elsewhere) is accepted."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW
        try:
            fd = os.open(name, flags, mode, dir_fd=self.fd)
        except OSError as exc:
            raise ConfigError(self.key, f"cannot open {self.path / name}: {_why(exc)}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise ConfigError(self.key, f"{self.path / name} is not a regular file of its own")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return fd

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
        """Move an earlier run's files into previous/<time>/, so a reused directory neither
        mixes two runs' events nor loses the first run's. Only regular files are moved."""
        old = [name for name in REPORT_FILES if self._regular(name)]
        if not old:
            return None
        mtime = os.stat(old[0], dir_fd=self.fd, follow_symlinks=False).st_mtime
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

    def _regular(self, name: str) -> bool:
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(self.key, f"{self.path / name} is not a regular file (remove it)")
        return True


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
    existing one must be a regular file we can read and write."""
    st = _lstat(path.resolve(), "file")
    if st is None:
        check_new_file("file", path, lambda _: True)
    elif not stat.S_ISREG(st.st_mode):
        raise ConfigError("file", f"{path} is not a regular file")
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
