"""The emulated device as the model sees it: its settings, the nbdkit command, its verdicts.

`--latency` and `--reorder` map onto the plugin's own parameters here and only here, so a new
kind of device reordering (the volatile cache's reorder window, say) is one more ReorderSpec
kind. The verdicts are never computed by the model: they are read back from the report
directory the oracle inside nbdkit wrote (summary.json and events.jsonl).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nbdfork.config import parse_duration, parse_params
from nbdfork.device.summary import DeviceSummary, read
from nbdfork.errors import ConfigError, ReportError
from nbdfork.experiments.model.schema import ModelDevice
from nbdfork.harness import nbdkit as launch
from nbdfork.oracle.events import read_events
from nbdfork.verdicts import Verdict

__all__ = [
    "DeviceSettings",
    "ReorderSpec",
    "Verdicts",
    "nbdkit_argv",
    "parse_latencies",
    "parse_reorders",
    "read_verdicts",
]


ReorderKind = Literal["off", "jitter", "lognormal", "window"]


@dataclass(frozen=True, slots=True)
class ReorderSpec:
    """How the device may complete two writes in an order other than arrival.

    off: fixed latency (completion follows arrival, up to thread scheduling); jitter:F: uniform
    latency in [L(1-F), L(1+F)]; lognormal:S: lognormal latency of median L and sigma S;
    window:N: fixed latency plus the device's seeded reply reordering within N arrivals.
    """

    kind: ReorderKind = "off"
    amount: float = 0.0

    def describe(self) -> str:
        """The spec in the --reorder syntax."""
        if self.kind == "off":
            return "off"
        if self.kind == "window":
            return f"window:{int(self.amount)}"
        return f"{self.kind}:{self.amount:g}"

    def device_params(self, latency: float) -> list[tuple[str, str]]:
        """The plugin parameters giving writes a median latency of `latency` seconds."""
        ms = latency * 1e3
        if self.kind == "jitter":
            low, high = ms * (1 - self.amount), ms * (1 + self.amount)
            return [("write-latency", f"uniform:{low:g}ms:{high:g}ms")]
        if self.kind == "lognormal":
            return [("write-latency", f"lognormal:{ms:g}ms:{self.amount:g}")]
        fixed = [("write-latency", f"{ms:g}ms")]
        if self.kind == "window":
            return [*fixed, ("reorder-window", str(int(self.amount)))]
        return fixed


def _reorder_number(key: str, text: str, kind: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(key, f"{kind}:{text} needs a number") from None
    if not low <= value <= high:
        raise ConfigError(key, f"{kind}:{text} must be between {low:g} and {high:g}")
    return value


def parse_reorder(text: str, key: str = "--reorder") -> ReorderSpec:
    """Parse one of `off`, `jitter:0.9`, `lognormal:0.5`, `window:8`."""
    kind, _, arg = text.strip().partition(":")
    if kind == "off" and not arg:
        return ReorderSpec()
    if kind == "jitter" and arg:
        return ReorderSpec("jitter", _reorder_number(key, arg, kind, 0.0, 1.0))
    if kind == "lognormal" and arg:
        return ReorderSpec("lognormal", _reorder_number(key, arg, kind, 0.0, 10.0))
    if kind == "window" and arg.isdigit() and int(arg) >= 2:
        return ReorderSpec("window", float(int(arg)))
    raise ConfigError(key, f"{text!r} is not a reordering (off, jitter:F, lognormal:S, window:N)")


def parse_reorders(text: str, key: str = "--reorder") -> tuple[ReorderSpec, ...]:
    """A comma-separated list of reorder specs."""
    specs = tuple(parse_reorder(item, key) for item in text.split(",") if item.strip())
    if not specs:
        raise ConfigError(key, "needs at least one setting, e.g. off or jitter:0.9")
    return specs


def parse_latencies(text: str, key: str = "--latency") -> tuple[float, ...]:
    """A comma-separated list of positive median write latencies, e.g. `0.5ms,2ms,8ms`."""
    values = tuple(parse_duration(key, item) for item in text.split(",") if item.strip())
    if not values or any(v <= 0 for v in values):
        raise ConfigError(key, f"{text!r}: give one or more positive durations, e.g. 1ms,4ms")
    return values


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    """One device configuration of a sweep; every policy of the sweep runs on the same one."""

    latency: float  # seconds: the median write latency
    reorder: ReorderSpec
    seed: int  # the device's RNG seed (derived from the run's seed)
    threads: int = 16  # nbdkit worker threads: writes the device serves at once
    size: int = 64 << 20

    def params(self, report: Path) -> list[tuple[str, str]]:
        """The plugin's key=value parameters, validated as nbdkit will validate them."""
        pairs = [("size", str(self.size)), ("report", str(report.absolute())),
                 ("seed", str(self.seed)), *self.reorder.device_params(self.latency)]  # fmt: skip
        parse_params(pairs)
        return pairs

    def to_record(self) -> ModelDevice:
        """The settings as report.json holds them."""
        return ModelDevice(
            latency_ms=self.latency * 1e3, reorder=self.reorder.describe(),
            device_seed=self.seed, nbdkit_threads=self.threads,
            params=dict(self.reorder.device_params(self.latency)),
        )  # fmt: skip


def nbdkit_argv(settings: DeviceSettings, report: Path) -> list[str]:
    """nbdkit serving the plugin on stdin/stdout for libnbd's connect_command."""
    nbdkit = shutil.which("nbdkit")
    if nbdkit is None:
        raise ConfigError("nbdkit", "not found on PATH (run scripts/setup)")
    argv = launch.plugin_argv(dict(settings.params(report)), single=True,
                              threads=settings.threads, nbdkit=nbdkit)  # fmt: skip
    if sys.prefix != sys.base_prefix:
        # nbdkit embeds the system python: tell the plugin where our venv is.
        argv = [shutil.which("env") or "/usr/bin/env", f"VIRTUAL_ENV={sys.prefix}", *argv]
    return argv


@dataclass(frozen=True, slots=True)
class Verdicts:
    """What the oracle in nbdkit recorded for one run."""

    torn: int
    stale: int
    overlapping: int
    writes: int
    stamped_pages: int
    stale_phases: dict[str, int]  # stale_write events per phase: arrival / reply


def read_verdicts(report: Path) -> Verdicts:
    """Read DIR/summary.json and DIR/events.jsonl written by the plugin."""
    path = report / "summary.json"
    summary = read(path, DeviceSummary)
    try:
        counts = summary.counts
        phases: dict[str, int] = {}
        events = report / "events.jsonl"
        for event in read_events(events) if events.exists() else []:
            if event["event"] == Verdict.STALE:
                phase = str(event.get("phase", "arrival"))
                phases[phase] = phases.get(phase, 0) + 1
        return Verdicts(
            torn=int(counts[Verdict.TORN]), stale=int(counts[Verdict.STALE]),
            overlapping=int(counts[Verdict.OVERLAPPING]), writes=summary.writes,
            stamped_pages=summary.stamped_pages, stale_phases=phases,
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"{path}: no usable summary from the device ({exc})") from None
