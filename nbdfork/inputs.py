"""Reading files a user names (report.json, states.json, a campaign spec, campaign.json):
bounded in size and nesting, regular files only, never blocking.

A file is opened with O_NONBLOCK (a FIFO opens at once instead of waiting for a writer) and
checked with fstat before a byte is read: a FIFO, a device or a socket is refused, and so is a
file over the limit. At most limit + 1 bytes are read, so a file that grows while it is read
(or a /proc file whose size says 0) cannot make the reader endless. JSON nested deeper than
MAX_DEPTH is refused before it is decoded: the decoders recurse.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from nbdfork.errors import NbdforkError

__all__ = ["MAX_DEPTH", "MAX_JSON_BYTES", "check_depth", "read_bounded"]

MAX_JSON_BYTES = 64 << 20
"""The largest report.json (or states.json, campaign.json, journal) read: 64 MiB."""
MAX_DEPTH = 64
"""The deepest nesting of JSON arrays and objects decoded (nbdfork's own reports use < 10)."""

Fail = Callable[[str], NbdforkError]
"""Makes the caller's error from a problem (`is a FIFO, not a regular file`)."""

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_PAIR = re.compile(rb"\[\]|\{\}")


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_bounded(path: Path, limit: int, fail: Fail) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; fail(problem) otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise fail(f"is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise fail(f"is {st.st_size:,} bytes, more than the limit of {limit:,}")
        chunks, total = [], 0
        while total <= limit and (chunk := os.read(fd, min(1 << 20, limit + 1 - total))):
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise fail(f"grew past the limit of {limit:,} bytes while it was read")
        return b"".join(chunks)
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def check_depth(data: bytes, fail: Fail, limit: int = MAX_DEPTH) -> None:
    """fail() when the JSON text `data` nests arrays and objects deeper than `limit`.

    Strings are blanked out, the brackets kept, and innermost pairs removed `limit` times
    (each pass one C-speed regex): a pair still left was nested deeper. Unbalanced brackets
    (a truncated file) leave no pair and are the decoder's to report."""
    brackets = _STRING.sub(b"", data).translate(None, _BRACKETS)
    for _ in range(limit):
        brackets, removed = _PAIR.subn(b"", brackets)
        if not removed:
            return
    if _PAIR.search(brackets):
        raise fail(f"nests arrays and objects more than {limit} deep")
