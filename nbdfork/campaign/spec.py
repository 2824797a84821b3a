"""A campaign spec (TOML) and its expansion into cells.

A spec names the kind of each group of cells (`run`, `crash`, `model`: nothing else) and its
axes; every combination of axis values is one cell, which runs one `nbdfork KIND ... --out
CELLDIR` subprocess. A spec is bounded before it is expanded: its cells are counted first (more
than MAX_CELLS is refused unless the caller allows more), every number is finite and bounded.
The reserved axis `seed` is the repetition (`seeds = N` is `axes.seed = [0..N-1]`); each
cell's own seed is derived from the campaign seed and the cell id, so adding a cell never
changes another cell's seed.

    [campaign]
    name = "tears"
    seed = 1                      # default 0: a campaign is reproducible from its spec

    [[cells]]
    kind = "run"
    seeds = 3
    [cells.axes]
    fs = ["ext4", "xfs"]
    stable_writes = [0, 1]
    [cells.options]               # the same for every cell of the group
    seconds = 10
    device = ["size=512M", "write-latency=2ms"]
    [cells.resources]             # Ray custom resources each cell asks for (placement)
    kvm = 1
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdfork.campaign.paths import cell_id, validate_cell_id, validate_name
from nbdfork.errors import ConfigError
from nbdfork.experiments import experiment, registry
from nbdfork.inputs import read_bounded
from nbdfork.options import as_text, check_setting, flag_name
from nbdfork.seeds import derive_seed

__all__ = [
    "MAX_CELLS",
    "MAX_TIMEOUT",
    "OUT",
    "Cell",
    "CampaignSpec",
    "example_kinds",
    "example_spec",
    "load_spec",
    "parse_spec",
]

MAX_CELLS = 10_000
"""The most cells a spec may expand to unless the caller allows more (`--max-cells N`)."""
MAX_TIMEOUT = 7 * 24 * 3600.0
"""The longest `timeout` of a cell: a week, in seconds."""
MAX_SPEC_BYTES = 1 << 20
"""The largest spec file read."""
OUT = "{out}"
"""Placeholder in a cell's argv for its result directory (local, or a worker's temp dir)."""
NBDFORK = "nbdfork"
"""argv[0] of a cell that runs the nbdfork CLI: resolved where the cell runs (Ray workers)."""

_RESERVED = {"out": "set by the campaign", "seed": "derived per cell (use the `seed` axis)",
             "seeds": "one seed per cell (use `seeds = N` in the [[cells]] table)"}
_GROUP_KEYS = {"kind", "name", "axes", "options", "seeds", "timeout", "resources"}
_RAY_OWN = ("CPU", "GPU", "memory", "object_store_memory")  # built-in, not custom resources
_RAY_UNIT = 1e-4  # the smallest amount of a resource Ray schedules
GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class Cell:
    """One subprocess of the campaign: its id, axes, derived seed and argv. The id is a safe
    path component (nbdfork.campaign.paths), checked when the Cell is made. A spec makes cells
    of the experiments' kinds only; a Cell of another kind (built in Python, e.g. by tests)
    takes 1 CPU and 512 MiB."""

    id: str
    kind: str
    axes: Mapping[str, str]  # axis -> value as written in the id (seed included)
    seed: int
    argv: tuple[str, ...]  # NBDFORK and OUT are resolved where the cell runs
    ok_statuses: tuple[int, ...]  # exit statuses that mean `done` (run/crash: violations)
    timeout: float | None = None
    # Ray custom resources the cell's task asks for: where it may run, not what it computes,
    # so not part of its key. The local executor runs every cell here and ignores them.
    resources: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_cell_id(self.id)

    @property
    def cpus(self) -> int:
        """CPUs a cell occupies: a VM cell boots a 2-vCPU guest."""
        known = registry().get(self.kind)
        return known.cpus if known else 1

    @property
    def memory(self) -> int:
        """Bytes a cell needs (the VM's 2 GiB guest plus nbdkit and qemu)."""
        known = registry().get(self.kind)
        return known.memory if known else GiB // 2

    @property
    def key(self) -> str:
        """A hash of what the cell runs: a `done` cell is reused only under the same key."""
        text = json.dumps([self.kind, list(self.argv), self.timeout])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    """A parsed spec: its name, seed, cells, and the hash that pins a campaign directory."""

    name: str
    seed: int
    cells: tuple[Cell, ...]
    hash: str
    source: str  # the spec as parsed, canonical JSON (stored in campaign.json)


def load_spec(path: Path, max_cells: int = MAX_CELLS) -> CampaignSpec:
    """Read (a regular file of at most 1 MiB) and expand the spec at `path`; a problem is one
    ConfigError naming the key."""
    data = read_bounded(path, MAX_SPEC_BYTES, lambda problem: ConfigError(str(path), problem))
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text (byte {exc.start})") from None
    return parse_spec(text, str(path), max_cells=max_cells)


def parse_spec(text: str, where: str = "spec", *, max_cells: int = MAX_CELLS) -> CampaignSpec:
    """Parse and expand TOML `text` into at most `max_cells` cells (counted before they are
    made); a problem is one ConfigError naming the key."""
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ConfigError(where, f"not TOML: {exc}") from None
    _only(data, {"campaign", "cells"}, "")
    head = _table(data.get("campaign", {}), "campaign")
    _only(head, {"name", "seed"}, "campaign.")
    name = head.get("name", "campaign")
    seed = head.get("seed", 0)
    if not isinstance(name, str) or not name.isprintable() or not 0 < len(name) <= 200:
        raise ConfigError("campaign.name", "must be a string of 1 to 200 printable characters")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 1 << 63:
        raise ConfigError("campaign.seed", f"{seed!r} must be an integer from 0 to 2**63-1")
    groups = data.get("cells")
    if not isinstance(groups, list) or not groups:
        raise ConfigError("cells", "at least one [[cells]] table is required")
    tables = [_table(group, f"cells[{index}]") for index, group in enumerate(groups)]
    _check_count(tables, max_cells)
    cells: list[Cell] = []
    for index, group in enumerate(tables):
        cells += _expand(group, index, seed)
    seen: set[str] = set()
    for cell in cells:
        if cell.id in seen:
            raise ConfigError("cells", f"two cells have the id {cell.id!r} (give a group a name)")
        seen.add(cell.id)
    try:
        source = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError:  # every number was checked: a non-finite one in a place nothing reads
        raise ConfigError(where, "holds a number that is not finite (nan or inf)") from None
    digest = hashlib.sha256(source.encode()).hexdigest()
    return CampaignSpec(name, seed, tuple(cells), digest, source)


def _check_count(groups: Sequence[Mapping[str, Any]], max_cells: int) -> None:
    """Refuse a spec of more than `max_cells` cells, counted from its axes without making one."""
    total = 0
    for index, group in enumerate(groups):
        where = f"cells[{index}]"
        _only(group, _GROUP_KEYS, f"{where}.")
        total += math.prod(len(values) for values in _axes(group, where).values())
        if total > max_cells:
            raise ConfigError("cells", f"the spec makes {total:,} cells or more, over the "
                              f"maximum of {max_cells:,} (--max-cells N allows more)")  # fmt: skip


def _table(value: object, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table")
    return value


def _only(table: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for key in table:
        if key not in allowed:
            names = ", ".join(sorted(allowed))
            raise ConfigError(f"{prefix}{key}", f"unknown key (allowed: {names})")


def _axes(group: Mapping[str, Any], where: str) -> dict[str, list[object]]:
    axes = _table(group.get("axes", {}), f"{where}.axes")
    result: dict[str, list[object]] = {}
    for axis, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.axes.{axis}", "must be a non-empty list")
        for value in values:
            as_text(value, f"{where}.axes.{axis}")
        result[axis] = values
    seeds = group.get("seeds")
    if seeds is not None:
        if "seed" in result:
            raise ConfigError(f"{where}.seeds", "give either seeds = N or axes.seed, not both")
        if not isinstance(seeds, int) or isinstance(seeds, bool) or not 1 <= seeds <= 10_000:
            raise ConfigError(f"{where}.seeds", f"{seeds!r} must be an integer from 1 to 10000")
        result["seed"] = list(range(seeds))
    return result


def _validate_resources(value: object, where: str) -> dict[str, float]:
    """A group's `resources` table: Ray custom resource names, each a finite positive amount."""
    table = _table(value, where)
    for name, amount in table.items():
        if not name.strip():
            raise ConfigError(where, "a resource name must be a non-empty string")
        if name in _RAY_OWN:
            raise ConfigError(f"{where}.{name}", "is Ray's own (the executor asks for CPUs and "
                              "memory from the cell's kind); name a custom resource")  # fmt: skip
        if (not isinstance(amount, int | float) or isinstance(amount, bool)
                or not math.isfinite(amount) or amount < _RAY_UNIT):  # fmt: skip
            raise ConfigError(f"{where}.{name}",
                              f"{amount!r} must be a finite number of at least {_RAY_UNIT:g}")
    return {name: float(amount) for name, amount in table.items()}


def _expand(group: Mapping[str, Any], index: int, campaign_seed: int) -> list[Cell]:
    where = f"cells[{index}]"
    _only(group, _GROUP_KEYS, f"{where}.")
    kind = group.get("kind")
    if not isinstance(kind, str) or kind not in registry():
        shown = repr(kind)[:40]
        raise ConfigError(f"{where}.kind", f"{shown} is not one of {', '.join(registry())}")
    prefix = validate_name(group.get("name", kind), f"{where}.name")
    timeout = group.get("timeout")
    if timeout is not None and (
        not isinstance(timeout, int | float) or isinstance(timeout, bool)
        or not 0 < timeout <= MAX_TIMEOUT  # NaN fails both
    ):  # fmt: skip
        raise ConfigError(f"{where}.timeout", f"{timeout!r} must be a number of seconds in "
                          f"(0, {MAX_TIMEOUT:.0f}] (a week)")  # fmt: skip
    axes = _axes(group, where)
    resources = _validate_resources(group.get("resources", {}), f"{where}.resources")
    options = _table(group.get("options", {}), f"{where}.options")
    overlap = sorted(set(axes) & set(options))
    if overlap:
        raise ConfigError(f"{where}.options.{overlap[0]}", "is also an axis")
    order = sorted(a for a in axes if a != "seed") + (["seed"] if "seed" in axes else [])
    _check_options(kind, {**dict.fromkeys(order), **options}, where)
    known = experiment(kind).options_by_name
    for axis in (a for a in order if a != "seed"):  # each value by the option's own parser
        for value in axes[axis]:
            check_setting(known, axis, value, f"{where}.axes.{axis}")
    cells = []
    # Seeds vary slowest: every setting gets its first seed before any gets its second.
    outer = axes.get("seed", [None])
    inner = [a for a in order if a != "seed"]
    for rep in outer:
        for combo in itertools.product(*(axes[a] for a in inner)):
            values = dict(zip(inner, combo, strict=True))
            if rep is not None:
                values["seed"] = rep
            cells.append(_cell(kind, prefix, values, options, campaign_seed=campaign_seed,
                               timeout=timeout, resources=resources, where=where))
    return cells


def _cell(
    kind: str, prefix: str, values: Mapping[str, object], options: Mapping[str, Any], *,
    campaign_seed: int, timeout: float | None, resources: Mapping[str, float], where: str,
) -> Cell:  # fmt: skip
    shown = {a: as_text(v, f"{where}.axes.{a}") for a, v in values.items()}
    name = cell_id(prefix, list(shown.items()))
    seed = derive_seed(campaign_seed, name)
    settings = {a: v for a, v in values.items() if a != "seed"} | dict(options)
    argv = _argv(kind, settings, seed=seed, where=where)
    return Cell(name, kind, shown, seed, argv, experiment(kind).ok_statuses,
                None if timeout is None else float(timeout), resources)  # fmt: skip


def _argv(kind: str, settings: Mapping[str, object], *, seed: int, where: str
          ) -> tuple[str, ...]:  # fmt: skip
    """`nbdfork KIND --option value ... --seed N --out OUT`: the only argv a spec makes."""
    argv = [NBDFORK, kind]
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(value, list):
            for item in value:
                argv += [flag, as_text(item, f"{where}.options.{key}")]
        else:
            argv += [flag, as_text(value, f"{where}.options.{key}")]
    seeded = "seed" in experiment(kind).options_by_name  # an experiment with no randomness
    return (*argv, *(("--seed", str(seed)) if seeded else ()), "--out", OUT)


def _check_options(kind: str, settings: Mapping[str, Any], where: str) -> None:
    """Every axis and option must be an option of the experiment `kind` that a campaign may
    set, and every value must pass that option's own parser."""
    options = experiment(kind).options_by_name
    for key, value in settings.items():
        name = f"{where}.options.{key}" if value is not None else f"{where}.axes.{key}"
        if key == "seed" and value is None:
            continue
        if key in _RESERVED:
            raise ConfigError(name, _RESERVED[key])
        if key not in options:
            raise ConfigError(name, f"`nbdfork {kind}` has no option {flag_name(key)}")
        if value is not None:
            check_setting(options, key, value, name)


_EXAMPLES = {
    "model": '''\
# A small page-forking campaign: stable vs fork at 1 ms device latency, 2 seeds each,
# 2 s of writing per cell (about 6 s a cell, host only: no VM, no KVM needed).
#   nbdfork campaign example model > spec.toml
#   nbdfork campaign run spec.toml --out results/campaign
[campaign]
name = "model-example"
seed = 1

[[cells]]
kind = "model"
seeds = 2
timeout = 300

[cells.axes]
policy = ["stable", "fork"]

[cells.options]
latency = "1ms"
reorder = "jitter:0.9"
seconds = 2
''',
    "run": '''\
# Torn writes under a real kernel: ext4 and xfs, stable_writes 0 and 1, 3 seeds each.
# Each cell boots a VM (about 2.5 GiB and 2 vCPUs): `--jobs` defaults from cores and memory.
#   nbdfork campaign example run > spec.toml
#   nbdfork campaign run spec.toml --out results/tears
[campaign]
name = "tears"
seed = 1

[[cells]]
kind = "run"
seeds = 3
timeout = 1800

[cells.axes]
fs = ["ext4", "xfs"]
stable_writes = [0, 1]

[cells.options]
seconds = 10
workload = "pwrite"
device = ["size=512M", "write-latency=2ms"]
''',
    "crash": '''\
# Crash states of ext4 and xfs, 2 seeds each (each cell boots a VM).
[campaign]
name = "crash"
seed = 1

[[cells]]
kind = "crash"
seeds = 2
timeout = 3600

[cells.axes]
fs = ["ext4", "xfs"]

[cells.options]
states = 20
seconds = 5
''',
}


def example_spec(kind: str) -> str:
    """A runnable example spec of `kind` (TOML)."""
    if kind not in _EXAMPLES:
        raise ConfigError("KIND", f"{kind!r} is not one of {', '.join(_EXAMPLES)}")
    return _EXAMPLES[kind]


def example_kinds() -> Sequence[str]:
    """The kinds `nbdfork campaign example` knows."""
    return tuple(_EXAMPLES)
