"""Where a campaign puts each cell: every name that becomes a path goes through here.

    DIR/cells/<id>/       a cell's results          cell_dir()
    DIR/previous/<id>/    its partial earlier try   previous_dir()
    DIR/.running/<name>/  its --out while it runs   running_dir() (no `=` or `,`: qemu)
    DIR/.running/<name>.owner   who runs it         owner_file()

A cell id is a path component by construction: `cell_id()` builds every id a spec makes from
characters in [A-Za-z0-9._,:+=@%-] with a letter or digit first (so never `.`, `..`, empty,
hidden or an option; never a `/` or NUL) and at most ID_MAX of them (a longer one is cut and
given a hash); a Cell built any other way is checked by `validate_cell_id`. `child()` is the
one way a name becomes a path: it checks the name again and that the path, resolved, is a
direct child of the resolved folder, not a link: nothing a campaign moves or deletes can be
outside its own cell's folders.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from nbdfork.errors import ConfigError

__all__ = [
    "CELLS",
    "ID_MAX",
    "PREVIOUS",
    "RUNNING",
    "cell_dir",
    "cell_id",
    "child",
    "owner_file",
    "previous_dir",
    "running_dir",
    "safe_name",
    "validate_cell_id",
    "validate_name",
]

CELLS = "cells"
PREVIOUS = "previous"
RUNNING = ".running"
ID_MAX = 200
"""The longest cell id (a directory name is at most 255 bytes; running names add 9, `.owner`)."""
NAME_MAX = 64
"""The longest group name."""

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._,:+=@%-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._,:+=@%-]")
_QEMU_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_COMPONENT_MAX = 255


def _check(name: object, limit: int, what: str, key: str) -> str:
    if not isinstance(name, str) or not _ID.fullmatch(name) or len(name) > limit:
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        raise ConfigError(key, f"{shown} is not a {what}: 1 to {limit} characters of "
                          "A-Z a-z 0-9 . _ , : + = @ % -, the first a letter or digit")  # fmt: skip
    return name


def validate_name(name: object, key: str) -> str:
    """A group name (a cell id's prefix); ConfigError naming `key` otherwise."""
    return _check(name, NAME_MAX, "group name", key)


def validate_cell_id(name: object, key: str = "cell id") -> str:
    """A cell id that is a safe path component; ConfigError otherwise."""
    return _check(name, ID_MAX, "cell id", key)


def cell_id(prefix: str, parts: Sequence[tuple[str, str]]) -> str:
    """`prefix-axis=value-...`, every character outside the id set replaced by `_`; cut to
    ID_MAX with a hash of the whole when longer (ids stay distinct)."""
    text = "-".join([prefix, *(f"{_UNSAFE.sub('_', a)}={_UNSAFE.sub('_', v)}" for a, v in parts)])
    if len(text) > ID_MAX:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        text = f"{text[: ID_MAX - 9]}-{digest}"
    return validate_cell_id(text)


def safe_name(cell: str) -> str:
    """A directory name for cell id `cell` with no `=`, `,` or `:` (qemu and vng option syntax)."""
    digest = hashlib.sha256(cell.encode()).hexdigest()[:8]
    return f"{_QEMU_UNSAFE.sub('_', validate_cell_id(cell))}-{digest}"


def child(folder: Path, name: str) -> Path:
    """FOLDER/NAME, where NAME is one safe component and the path, resolved, is a direct child
    of FOLDER resolved; a link there is refused (ConfigError naming the path)."""
    _check(name, _COMPONENT_MAX, "file name", str(folder))
    path = folder / name
    if os.path.islink(path):
        raise ConfigError(str(path), "is a symbolic link: refusing to follow it (remove it)")
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(folder):
        raise ConfigError(str(path), f"does not resolve to a name in {folder}")
    return path


def cell_dir(out: Path, cell: str) -> Path:
    """DIR/cells/<id>."""
    return child(out / CELLS, validate_cell_id(cell))


def previous_dir(out: Path, cell: str) -> Path:
    """DIR/previous/<id>: the partial directory of a cell's earlier attempt."""
    return child(out / PREVIOUS, validate_cell_id(cell))


def running_dir(out: Path, cell: str) -> Path:
    """DIR/.running/<safe name>: the cell's --out while it runs."""
    return child(out / RUNNING, safe_name(cell))


def owner_file(out: Path, cell: str) -> Path:
    """DIR/.running/<safe name>.owner: the process group running the cell, and its start."""
    return child(out / RUNNING, f"{safe_name(cell)}.owner")
