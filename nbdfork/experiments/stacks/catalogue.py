"""The catalogue of storage stacks: names, modes, how many block devices each needs.

A stack is named `NAME[:MODE]` (`dm-integrity:B`, `md-raid5:skip_copy`); a name without a mode
takes the stack's first mode. Whether a filesystem goes on top, and which, is the caller's
choice (`fs`), except where the stack is itself a filesystem (btrfs).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from nbdfork.errors import ConfigError

__all__ = [
    "FILESYSTEMS",
    "STACKS",
    "Filesystem",
    "StackDef",
    "StackSpec",
    "parse_stack",
    "parse_stacks",
]

Filesystem = Literal["ext4", "xfs", "btrfs"]
FILESYSTEMS: tuple[Filesystem, ...] = ("ext4", "xfs")
"""The filesystems that go on top of a stack that is not itself one."""


class StackDef(msgspec.Struct, frozen=True):
    """One entry of the catalogue."""

    name: str
    devices: int
    modes: tuple[str, ...]
    filesystem: Filesystem | None  # the stack's own filesystem (btrfs), else None
    summary: str


STACKS: dict[str, StackDef] = {
    d.name: d
    for d in (
        StackDef("plain", 1, ("",), None, "the filesystem straight on the device"),
        StackDef("btrfs", 1, ("",), "btrfs", "btrfs, data single, metadata dup"),
        StackDef("btrfs-raid1", 2, ("",), "btrfs", "btrfs -d raid1 -m raid1 over two devices"),
        StackDef("md-raid1", 2, ("",), None, "md raid1 over two devices"),
        StackDef(
            "md-raid5",
            3,
            ("copy", "skip_copy"),
            None,
            "md raid5 over three devices; mode skip_copy writes 1 to md/skip_copy",
        ),
        StackDef(
            "dm-integrity",
            1,
            ("J", "D", "B"),
            None,
            "dm-integrity crc32c: J journal, D no journal, B bitmap",
        ),
    )
}


class StackSpec(msgspec.Struct, frozen=True):
    """A parsed stack name: the catalogue entry and the chosen mode."""

    name: str
    mode: str
    devices: int

    @property
    def label(self) -> str:
        """`NAME` or `NAME:MODE` as a user writes it (the default mode is shown too)."""
        return f"{self.name}:{self.mode}" if self.mode else self.name

    def filesystem(self, fs: str) -> Filesystem:
        """The filesystem the run ends up with: the stack's own, or `fs` on top of it."""
        own = STACKS[self.name].filesystem
        if own is not None:
            return own
        if fs not in FILESYSTEMS:
            raise ConfigError("fs", f"{fs!r} cannot go on stack {self.label}: use ext4 or xfs")
        return "xfs" if fs == "xfs" else "ext4"


def parse_stack(text: str) -> StackSpec:
    """`NAME[:MODE]` -> StackSpec; ConfigError (one line, naming the choices) otherwise."""
    name, sep, mode = text.strip().partition(":")
    entry = STACKS.get(name)
    if entry is None:
        raise ConfigError("stack", f"unknown stack {name!r}; known: {', '.join(STACKS)}")
    if not sep:
        return StackSpec(name, entry.modes[0], entry.devices)
    if mode not in entry.modes or not mode:
        known = ", ".join(m for m in entry.modes if m) or "none"
        raise ConfigError("stack", f"{name} has no mode {mode!r}; modes: {known}")
    return StackSpec(name, mode, entry.devices)


def parse_stacks(text: str) -> list[StackSpec]:
    """A comma-separated list of stack names (`--stack btrfs,dm-integrity:D`)."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError("stack", "no stack named")
    return [parse_stack(p) for p in parts]
