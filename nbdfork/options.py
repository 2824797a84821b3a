"""Options declared once: each experiment lists its `Option`s, and from that one table come its
argparse parser, the parsing and checking of every value (one ConfigError naming the option),
and the checking of a campaign cell's settings (the same parsers, no argparse internals).

A value arrives as text (the command line) or as TOML (a campaign spec: string, number,
boolean, or a list for a repeatable option); either way it goes through the option's `parse`.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nbdfork.errors import ConfigError

__all__ = [
    "Option",
    "Parser",
    "add_options",
    "as_text",
    "check_out_dir",
    "check_setting",
    "check_values",
    "flag_name",
    "parse_args",
    "parse_bounded_float",
    "parse_bounded_int",
    "parse_choice",
    "parse_out_dir",
    "parse_path",
    "parse_text",
]

Kind = Literal["value", "flag", "repeat"]
Parser = Callable[[str, str], Any]
"""parse(option_flag, text) -> value; raises ConfigError(option_flag, problem)."""


def flag_name(name: str) -> str:
    """`stable_writes` -> `--stable-writes`."""
    return "--" + name.replace("_", "-")


def parse_text(option: str, text: str) -> str:
    """Any text but an empty one."""
    if not text.strip():
        raise ConfigError(option, "is empty")
    return text


def parse_path(option: str, text: str) -> Path:
    """A path (not checked for existence here: the experiment knows what it needs)."""
    if not text.strip() or "\0" in text:
        raise ConfigError(option, f"{text!r} is not a path")
    return Path(text)


_PSEUDO_FS = frozenset({"proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
                        "configfs", "devpts", "devtmpfs", "bpf", "pstore", "efivarfs",
                        "fusectl", "binfmt_misc"})  # fmt: skip
"""Kernel pseudo filesystems: not a place for results (writes fail, or mean something else)."""


def _mount_of(path: Path) -> tuple[str, str]:
    """The mount point holding `path` (resolved) and its filesystem type, from mountinfo."""
    best, kind = "/", ""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:  # pragma: no cover - no /proc: nothing to refuse by type
        return best, kind
    for line in lines:
        fields, _, after = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not after:
            continue
        point = parts[4].encode().decode("unicode_escape")  # \040 is a space
        inside = path == Path(point) or path.is_relative_to(point)
        if inside and len(point) >= len(best):
            best, kind = point, after.split()[0]
    return best, kind


def _existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_out_dir(option: str, path: Path) -> Path:
    """`path` as a results directory: it is a directory we may write, or one we may create
    (its nearest existing ancestor is), and not in a kernel pseudo filesystem (/proc, /sys).
    Nothing is created; a problem is one ConfigError naming `option`."""
    if len(os.fsencode(str(path))) >= 4096:
        raise ConfigError(option, f"{str(path)[:40]}... is longer than a path may be")
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:  # a loop of links
        raise ConfigError(option, f"{path}: cannot follow it ({exc})") from None
    point, kind = _mount_of(resolved)
    if kind in _PSEUDO_FS:
        raise ConfigError(option, f"{path} is in {point}, a kernel pseudo filesystem ({kind}): "
                          "choose a directory on disk")  # fmt: skip
    found = _existing(resolved)
    creating = "" if found == resolved else f"cannot create {path}: "
    if not found.is_dir():
        raise ConfigError(option, f"{creating}{found if creating else path} is not a directory")
    if not os.access(found, os.W_OK | os.X_OK, effective_ids=True):
        raise ConfigError(option, f"{creating}{found if creating else path} is not writable")
    return path


def parse_out_dir(option: str, text: str) -> Path:
    """A results directory (check_out_dir): checked when the command starts, not at its end."""
    return check_out_dir(option, parse_path(option, text))


def parse_bounded_int(low: int, high: int) -> Parser:
    """An integer in [low, high]."""

    def parse(option: str, text: str) -> int:
        stripped = text.strip()
        if not stripped.lstrip("+-").isascii() or not stripped.lstrip("+-").isdigit():
            raise ConfigError(option, f"{text!r} is not an integer")
        if len(stripped) > 30:
            raise ConfigError(option, f"{stripped[:30]}... must be in [{low}, {high}]")
        value = int(stripped)
        if not low <= value <= high:
            raise ConfigError(option, f"{value} must be in [{low}, {high}]")
        return value

    return parse


def parse_bounded_float(low: float, high: float, *, low_open: bool = True) -> Parser:
    """A finite number in (low, high] (or [low, high] when not `low_open`)."""

    def parse(option: str, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(option, f"{text!r} is not a number") from None
        below = value <= low if low_open else value < low
        if not math.isfinite(value) or below or value > high:
            opening = "(" if low_open else "["
            raise ConfigError(option, f"{text} must be a number in {opening}{low:g}, {high:g}]")
        return value

    return parse


def parse_choice(choices: Sequence[str]) -> Parser:
    """One of `choices`."""

    def parse(option: str, text: str) -> str:
        if text not in choices:
            raise ConfigError(option, f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


@dataclass(frozen=True, slots=True)
class Option:
    """One option of an experiment: its name (`stable_writes` is `--stable-writes`), help,
    default, how its text is parsed and checked, and whether a campaign may set it."""

    name: str
    help: str
    parse: Parser = parse_text
    default: Any = None
    kind: Kind = "value"
    metavar: str | None = None
    group: str | None = None
    campaign: bool = True  # settable in a campaign spec (no: --out, --json, --seed ...)
    hidden: bool = False
    required: bool = False

    @property
    def flag(self) -> str:
        """The command-line flag."""
        return flag_name(self.name)

    def value(self, raw: object) -> Any:
        """The parsed value of what argparse gave (text, a list of texts, or a flag)."""
        if self.kind == "flag":
            return bool(raw)
        if self.kind == "repeat":
            items: list[object] = list(raw) if isinstance(raw, list | tuple) else []
            return tuple(self.parse(self.flag, str(item)) for item in items)
        if raw is None:
            return self.default
        return self.parse(self.flag, str(raw))


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Add every option to `parser` (values stay text: `parse_args` parses them)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in options:
        target: argparse.ArgumentParser | argparse._ArgumentGroup = parser
        if option.group:
            target = groups.setdefault(option.group, parser.add_argument_group(option.group))
        shown = argparse.SUPPRESS if option.hidden else option.help
        if option.kind == "flag":
            target.add_argument(option.flag, action="store_true", help=shown)
        elif option.kind == "repeat":
            target.add_argument(option.flag, action="append", default=[], help=shown,
                                metavar=option.metavar)  # fmt: skip
        else:
            target.add_argument(option.flag, help=shown, metavar=option.metavar,
                                required=option.required)  # fmt: skip


def parse_args(options: Sequence[Option], args: argparse.Namespace) -> dict[str, Any]:
    """Every option's parsed value by name; the first bad one raises ConfigError."""
    return {o.name: o.value(getattr(args, o.name)) for o in options}


def as_text(value: object, key: str) -> str:
    """A TOML scalar as the command line would give it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"{value!r} is not a finite number")
    if isinstance(value, int | float | str) and str(value).strip():
        return f"{value:g}" if isinstance(value, float) else str(value)
    raise ConfigError(key, f"{value!r} must be a string, number or boolean")


def check_setting(options: Mapping[str, Option], name: str, value: object, key: str) -> None:
    """A campaign cell's `name = value`, checked by the option's own parser; ConfigError
    naming `key` (the spec's path to it) otherwise."""
    option = options.get(name)
    if option is None or not option.campaign:
        raise ConfigError(key, f"is not an option a campaign can set ({flag_name(name)})")
    if option.kind == "flag":
        if not isinstance(value, bool):
            raise ConfigError(key, "is a flag: true or false")
        return
    if isinstance(value, list):
        if option.kind != "repeat":
            raise ConfigError(key, "takes one value (lists are for axes and repeatable options)")
        items: list[object] = list(value)
    else:
        items = [value]
    for item in items:
        try:
            option.parse(option.flag, as_text(item, key))
        except ConfigError as exc:
            raise ConfigError(key, exc.problem) from None


def check_values(options: Sequence[Option], values: Mapping[str, object]) -> None:
    """Values set in code (not parsed from text) checked by the same parsers: each value
    option's value, given as the command line would give it; the first bad one raises."""
    for option in options:
        value = values.get(option.name)
        if option.kind != "value" or value is None or value == option.default:
            continue
        option.parse(option.flag, as_text(str(value) if isinstance(value, Path) else value,
                                          option.flag))  # fmt: skip
