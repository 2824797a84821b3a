"""Device configuration: the nbdkit `key=value` parameters, parsed and validated in one place.

The same table drives the plugin's `config()`/`config_complete()`, its `--dump-plugin` lines
(nbdkit's python plugin never shows a script's `config_help`) and the `nbdfork serve` options,
so a parameter exists once. Every value is bounded here, at parse time: a device that starts
never fails a request because a setting overflows (docs/parameters.md lists the bounds).
"""

from __future__ import annotations

import errno
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nbdfork.errors import ConfigError
from nbdfork.seeds import new_seed

__all__ = [
    "OPS",
    "PARAMS",
    "CorruptSpec",
    "DeviceConfig",
    "FORMAT_NAMES",
    "FaultSpec",
    "LatencySpec",
    "Op",
    "Param",
    "check_known",
    "MAX_DURATION",
    "MAX_SIZE",
    "NBD_ERRNOS",
    "parse_duration",
    "parse_int",
    "parse_params",
    "parse_size",
]

Op = Literal["read", "write", "flush", "trim"]
OPS: tuple[Op, ...] = ("read", "write", "flush", "trim")

MAX_SIZE = 1 << 46  # 64 TiB: comfortably inside a 47-bit user address space for the mmap store
MAX_DURATION = 3600.0  # one hour: any longer and the client's own timeouts have long fired
# The largest request nbdkit accepts (MAX_REQUEST_SIZE, 64 MiB) must cross the bandwidth term
# within MAX_DURATION; 32K/s does it in 2048 s.
MIN_BANDWIDTH = 32 << 10
# DeviceRng.normal() is Box-Muller over u1 >= 2**-53: |z| <= sqrt(-2 ln 2**-53) < 8.58.
_NORMAL_TAIL = 8.58
# What NBD can carry for WRITE/FLUSH/TRIM/READ (nbdkit server/protocol.c nbd_errno()): anything
# else reaches the client as EINVAL (EAGAIN, E2BIG, ...), EPERM (EROFS), ENOSPC (EFBIG); ENOTSUP
# only on fast-zero requests and EOVERFLOW only on DF reads.
NBD_ERRNOS = ("EPERM", "EIO", "ENOMEM", "EINVAL", "ENOSPC", "ESHUTDOWN")
_SIZE_SUFFIXES = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}
# re.ASCII: int() and float() take any Unicode decimal digit, a user never means one.
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE | re.ASCII)
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|ms|s)?\s*$", re.ASCII)
_MAX_DIGITS = 20  # 2**64 has 20 digits
_SHOWN = 40  # characters of a bad value quoted in its error line
_INT_RE = re.compile(r"^\s*\d+\s*$", re.ASCII)
_FLOAT_RE = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)(e[-+]?\d+)?\s*$", re.ASCII | re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class LatencySpec:
    """A latency in seconds: fixed `a`; uniform in [a, b]; lognormal with median a, sigma b."""

    kind: Literal["none", "fixed", "uniform", "lognormal"] = "none"
    a: float = 0.0
    b: float = 0.0

    def describe(self) -> str:
        """The spec back in the parameter syntax, for summaries."""
        if self.kind == "none":
            return "0"
        if self.kind == "fixed":
            return _fmt_duration(self.a)
        if self.kind == "uniform":
            return f"uniform:{_fmt_duration(self.a)}:{_fmt_duration(self.b)}"
        return f"lognormal:{_fmt_duration(self.a)}:{self.b:g}"


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """Error injection: which ops fail, where, how often, with which errno, and when."""

    ops: frozenset[str] = frozenset()
    probability: float = 1.0
    range: tuple[int, int] | None = None
    errno: int = errno.EIO
    trigger: Path | None = None

    def describe(self) -> dict[str, object] | None:
        """The spec as JSON values (None when no error is injected)."""
        if not self.ops:
            return None
        return {
            "ops": sorted(self.ops),
            "probability": self.probability,
            "range": list(self.range) if self.range else None,
            "errno": errno.errorcode.get(self.errno, str(self.errno)),
            "trigger": str(self.trigger) if self.trigger else None,
        }


FORMAT_NAMES: tuple[str, ...] = ("stamp", "btrfs", "ext4", "fio", "xfs")
"""What `formats=` takes: nbdfork's stamp and the formats of nbdfork.oracle.formats (a test
checks the two lists agree; config imports no oracle)."""


@dataclass(frozen=True, slots=True)
class CorruptSpec:
    """In-flight corruption: one byte of a matching WRITE changed before the device sees it."""

    enabled: bool = False
    probability: float = 1.0
    range: tuple[int, int] | None = None
    trigger: Path | None = None

    def describe(self) -> dict[str, object] | None:
        """The spec as JSON values (None when nothing is corrupted)."""
        if not self.enabled:
            return None
        return {
            "ops": ["write"],
            "probability": self.probability,
            "range": list(self.range) if self.range else None,
            "trigger": str(self.trigger) if self.trigger else None,
        }


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """Everything the emulated device needs; built only through `parse_params`."""

    size: int
    file: Path | None = None
    report: Path | None = None
    seed: int = 0
    seed_given: bool = False
    oracle: bool = True
    latency: Mapping[Op, LatencySpec] = field(default_factory=dict)
    bandwidth: float | None = None
    stall_probability: float = 0.0
    stall: float = 0.0
    trace: Path | None = None
    cache: bool = False
    cache_size: int = 64 << 20
    ignore_flush: bool = False
    reorder_window: int = 0
    faults: FaultSpec = field(default_factory=FaultSpec)
    formats: tuple[str, ...] = ("stamp",)
    corrupt: CorruptSpec = field(default_factory=CorruptSpec)

    def latency_for(self, op: Op) -> LatencySpec:
        """The latency spec of one op type (no latency when not configured)."""
        return self.latency.get(op, LatencySpec())

    @property
    def has_latency(self) -> bool:
        """True when any request may be delayed at all."""
        active = any(spec.kind != "none" for spec in self.latency.values())
        return active or self.bandwidth is not None or self.stall_probability > 0

    def settings(self) -> dict[str, object]:
        """The settings as plain JSON values, recorded in every summary and report."""
        return {
            "size": self.size,
            "file": str(self.file) if self.file else None,
            "oracle": self.oracle,
            "seed": self.seed,
            "latency": {op: self.latency_for(op).describe() for op in OPS},
            "bandwidth": self.bandwidth,
            "stall_probability": self.stall_probability,
            "stall": self.stall,
            "trace": str(self.trace) if self.trace else None,
            "cache": "volatile" if self.cache else "off",
            "cache_size": self.cache_size,
            "ignore_flush": self.ignore_flush,
            "reorder_window": self.reorder_window,
            "errors": self.faults.describe(),
            "formats": list(self.formats),
            "corrupt": self.corrupt.describe(),
        }


@dataclass(frozen=True, slots=True)
class Param:
    """One `key=value` parameter: its help line, value syntax and whether it is required."""

    key: str
    metavar: str
    help: str
    required: bool = False


PARAMS: tuple[Param, ...] = (
    Param("size", "SIZE", "device size, e.g. 512M, 64G (binary suffixes k M G T)", required=True),
    Param("file", "PATH", "back the device with this file instead of sparse memory"),
    Param("report", "DIR", "write DIR/events.jsonl and DIR/summary.json (created if missing)"),
    Param("seed", "N", "seed of the one RNG behind every random choice (default: random)"),
    Param("oracle", "on|off", "check every WRITE for torn/stale/overlapping pages (default on)"),
    Param("latency", "SPEC", "latency of every op: 2ms, uniform:1ms:5ms, lognormal:2ms:0.5"),
    Param("read-latency", "SPEC", "latency of reads (overrides latency=)"),
    Param("write-latency", "SPEC", "latency of writes (overrides latency=)"),
    Param("flush-latency", "SPEC", "latency of flushes (overrides latency=)"),
    Param("trim-latency", "SPEC", "latency of trims and zeroes (overrides latency=)"),
    Param("bandwidth", "BYTES/S", "add length/bandwidth to reads and writes, e.g. 200M"),
    Param("stall-probability", "P", "probability in [0, 1] that a request also stalls"),
    Param("stall", "DURATION", "length of a stall, e.g. 100ms (default 100ms)"),
    Param("trace", "PATH", "record every request (with write data) to this trace file"),
    Param("cache", "off|volatile", "volatile write cache: durable per FLUSH/FUA only (off)"),
    Param("cache-size", "SIZE", "pending bytes before the cache destages a random write (64M)"),
    Param("ignore-flush", "on|off", "known-bad control: FLUSH/FUA are acked, nothing made durable"),
    Param("reorder-window", "N", "reply to writes in a seeded random order within N arrivals"),
    Param("error-op", "OPS", "inject errors on these ops: read,write,flush,trim,zero or all"),
    Param("error-probability", "P", "probability of an error per matching request (default 1)"),
    Param("error-range", "START-END", "only requests touching this byte range, e.g. 0-1M"),
    Param("error-errno", "NAME", "errno of injected errors: EIO (default), " + ", ".join(
        e for e in NBD_ERRNOS if e != "EIO")),
    Param("error-trigger", "PATH", "only while this file exists"),
    Param("formats", "LIST", "formats the oracle judges: " + ",".join(FORMAT_NAMES)
          + " (default stamp)"),
    Param("corrupt-op", "write", "change one byte of matching WRITEs in flight (a control)"),
    Param("corrupt-probability", "P", "probability per matching WRITE (default 1)"),
    Param("corrupt-range", "START-END", "only WRITEs touching this byte range; the byte "
          "changed lies inside it"),
    Param("corrupt-trigger", "PATH", "corrupt only while this file exists"),
)
_KEYS = {p.key: p for p in PARAMS}


def _shown(text: str) -> str:
    """`text` quoted for an error line: a long value is cut, so the line stays readable."""
    if len(text) <= _SHOWN:
        return repr(text)
    return f"{text[:_SHOWN // 2]!r}... ({len(text)} characters)"


def _small_int(digits: str) -> int | None:
    """ASCII `digits` as an int, None past 20 significant digits: more than any bound here
    needs, and int() refuses beyond 4300 (sys.set_int_max_str_digits) with a ValueError."""
    significant = digits.strip().lstrip("0")
    return int(significant or "0") if len(significant) <= _MAX_DIGITS else None


def parse_size(key: str, text: str) -> int:
    """Parse `512M`-style sizes (binary suffixes); a multiple of 512, at most 64 TiB."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(key, f"{_shown(text)} is not a size (use e.g. 4096, 64M, 1G)")
    number = _small_int(match.group(1))
    if number is None:  # more digits than int() converts (4300) or any size needs
        raise ConfigError(key, f"{_shown(text)} is larger than the maximum of 64T")
    value = number << _SIZE_SUFFIXES[match.group(2).lower()]
    if value <= 0 or value % 512:
        raise ConfigError(key, f"{_shown(text)} must be a positive multiple of 512 bytes")
    if value > MAX_SIZE:
        raise ConfigError(key, f"{_shown(text)} is larger than the maximum of 64T")
    return value


def parse_duration(key: str, text: str) -> float:
    """Parse `2ms`, `500us`, `1.5s` into seconds, at most an hour; a bare number needs a unit
    unless it is 0."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ConfigError(key, f"{_shown(text)} is not a duration (use e.g. 2ms, 500us, 1s)")
    number, unit = float(match.group(1)), match.group(2)
    if unit is None and number != 0:
        raise ConfigError(key, f"{_shown(text)} needs a unit: ns, us, ms or s")
    seconds = number * _DURATION_UNITS[unit or "s"]
    if seconds > MAX_DURATION:
        raise ConfigError(key, f"{_shown(text)} is longer than the maximum of 3600s (one hour)")
    return seconds


def _fmt_duration(seconds: float) -> str:
    return f"{seconds * 1e3:g}ms"


def parse_latency(key: str, text: str) -> LatencySpec:
    """Parse a latency spec: `0`, `2ms`, `fixed:2ms`, `uniform:1ms:5ms`, `lognormal:2ms:0.5`."""
    kind, _, rest = text.partition(":")
    if not rest:
        value = parse_duration(key, text)
        return LatencySpec("fixed", value) if value > 0 else LatencySpec()
    args = rest.split(":")
    if kind == "fixed" and len(args) == 1:
        return LatencySpec("fixed", parse_duration(key, args[0]))
    if kind == "uniform" and len(args) == 2:
        low, high = parse_duration(key, args[0]), parse_duration(key, args[1])
        if high < low:
            raise ConfigError(key, f"uniform:{args[0]}:{args[1]} has its maximum below its minimum")
        return LatencySpec("uniform", low, high)
    if kind == "lognormal" and len(args) == 2:
        median, sigma = parse_duration(key, args[0]), _parse_float(key, args[1], 0.0, 10.0)
        if median * math.exp(sigma * _NORMAL_TAIL) > MAX_DURATION:
            raise ConfigError(
                key, f"{_shown(text)} can draw delays over 3600s (median x e^(8.58 sigma)): "
                "lower the median or sigma",
            )
        return LatencySpec("lognormal", median, sigma)
    raise ConfigError(
        key, f"{_shown(text)} is not a latency (use 2ms, uniform:1ms:5ms or lognormal:2ms:0.5)"
    )


def _parse_float(key: str, text: str, low: float, high: float) -> float:
    # A regex, not float(): float() takes nan, inf, 1_0 and non-ASCII digits.
    if not _FLOAT_RE.match(text):
        raise ConfigError(key, f"{_shown(text)} is not a number")
    value = float(text)
    if not (low <= value <= high) or math.isnan(value):
        raise ConfigError(key, f"{_shown(text)} must be between {low:g} and {high:g}")
    return value


def _parse_seed(key: str, text: str) -> int:
    # Not str.isdigit(): it accepts "²", which int() refuses.
    value = _small_int(text) if _INT_RE.match(text) else None
    if value is None or value >= 1 << 64:
        raise ConfigError(key, f"{_shown(text)} must be an integer from 0 to 2**64-1")
    return value


def _parse_bool(key: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("on", "1", "true", "yes"):
        return True
    if lowered in ("off", "0", "false", "no"):
        return False
    raise ConfigError(key, f"{_shown(text)} must be on or off")


def _parse_bandwidth(key: str, text: str) -> float:
    if text == "0":
        return math.inf
    value = parse_size(key, text)
    if value < MIN_BANDWIDTH:
        raise ConfigError(key, f"{_shown(text)} is below the minimum of 32K (64M per hour)")
    return float(value)


def _absolute(key: str, text: str) -> Path:
    if not text:
        raise ConfigError(key, "needs a path")
    # nbdkit changes directory to / when it daemonizes: keep paths absolute.
    return Path(os.path.abspath(text))


def check_known(key: str) -> None:
    """Reject a key that is not a parameter, listing the ones that are."""
    if key not in _KEYS:
        allowed = ", ".join(p.key for p in PARAMS)
        raise ConfigError(key, f"unknown parameter (allowed: {allowed})")


def parse_params(pairs: Iterable[tuple[str, str]]) -> DeviceConfig:
    """Validate `key=value` pairs into a DeviceConfig; the first problem raises ConfigError."""
    raw: dict[str, str] = {}
    for key, value in pairs:
        check_known(key)
        if key in raw:
            raise ConfigError(key, "given twice")
        raw[key] = value
    for param in PARAMS:
        if param.required and param.key not in raw:
            raise ConfigError(param.key, f"is required, e.g. {param.key}=64M")
    return _build(raw)


def _build(raw: Mapping[str, str]) -> DeviceConfig:
    seed_text = raw.get("seed")
    bandwidth = _parse_bandwidth("bandwidth", raw["bandwidth"]) if "bandwidth" in raw else None
    return DeviceConfig(
        size=parse_size("size", raw["size"]),
        file=_absolute("file", raw["file"]) if "file" in raw else None,
        report=_absolute("report", raw["report"]) if "report" in raw else None,
        seed=_parse_seed("seed", seed_text) if seed_text is not None else new_seed(),
        seed_given=seed_text is not None,
        oracle=_parse_bool("oracle", raw.get("oracle", "on")),
        latency=_latencies(raw),
        bandwidth=None if bandwidth in (None, math.inf) else bandwidth,
        stall_probability=_stall_probability(raw),
        stall=parse_duration("stall", raw.get("stall", "100ms")),
        trace=_absolute("trace", raw["trace"]) if "trace" in raw else None,
        cache=_parse_cache(raw.get("cache", "off")),
        cache_size=parse_size("cache-size", raw.get("cache-size", "64M")),
        ignore_flush=_parse_bool("ignore-flush", raw.get("ignore-flush", "off")),
        reorder_window=parse_int("reorder-window", raw.get("reorder-window", "0"), 0, 4096),
        faults=_faults(raw),
        formats=parse_formats("formats", raw.get("formats", "stamp")),
        corrupt=_corrupt(raw),
    )


def parse_formats(key: str, text: str) -> tuple[str, ...]:
    """`stamp,xfs`: names from FORMAT_NAMES, comma-separated, duplicates dropped."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(key, "is empty (e.g. formats=stamp,ext4)")
    for name in names:
        if name not in FORMAT_NAMES:
            known = ",".join(FORMAT_NAMES)
            raise ConfigError(key, f"unknown format {_shown(name)} (known: {known})")
    return tuple(dict.fromkeys(names))


def _corrupt(raw: Mapping[str, str]) -> CorruptSpec:
    keys = [k for k in raw if k.startswith("corrupt-")]
    if not keys:
        return CorruptSpec()
    if raw.get("corrupt-op", "").strip() != "write":
        bad = "corrupt-op" if "corrupt-op" in raw else keys[0]
        raise ConfigError(bad, "needs corrupt-op=write (only WRITEs are corrupted)")
    return CorruptSpec(
        enabled=True,
        probability=_parse_float("corrupt-probability", raw.get("corrupt-probability", "1"),
                                 0.0, 1.0),
        range=_parse_range("corrupt-range", raw["corrupt-range"])
        if "corrupt-range" in raw else None,
        trigger=_opt_path(raw, "corrupt-trigger"),
    )  # fmt: skip


_FAULT_OPS = frozenset({"read", "write", "flush", "trim", "zero"})


def _faults(raw: Mapping[str, str]) -> FaultSpec:
    error_keys = [k for k in raw if k.startswith("error-")]
    if not error_keys:
        return FaultSpec()
    if "error-op" not in raw:
        raise ConfigError(error_keys[0], "needs error-op= (read, write, flush, trim, zero, all)")
    ops = {o.strip() for o in raw["error-op"].split(",")}
    ops = set(_FAULT_OPS) if ops == {"all"} else ops
    if not ops or not ops <= _FAULT_OPS:
        allowed = "read, write, flush, trim, zero or all"
        raise ConfigError("error-op", f"{_shown(raw['error-op'])}: use {allowed}")
    return FaultSpec(
        ops=frozenset(ops),
        probability=_parse_float("error-probability", raw.get("error-probability", "1"), 0.0, 1.0),
        range=_parse_range("error-range", raw["error-range"]) if "error-range" in raw else None,
        errno=_parse_errno("error-errno", raw.get("error-errno", "EIO")),
        trigger=_opt_path(raw, "error-trigger"),
    )


def _opt_path(raw: Mapping[str, str], key: str) -> Path | None:
    return _absolute(key, raw[key]) if key in raw else None


def _parse_range(key: str, text: str) -> tuple[int, int]:
    start_text, sep, end_text = text.partition("-")
    if not sep:
        raise ConfigError(key, f"{_shown(text)} is not a range START-END, e.g. 0-1M")
    start = 0 if start_text.strip() == "0" else parse_size(key, start_text)
    end = parse_size(key, end_text)
    if end <= start:
        raise ConfigError(key, f"{_shown(text)} ends before it starts")
    return start, end


def _parse_errno(key: str, text: str) -> int:
    name = text.strip().upper()
    if name not in NBD_ERRNOS:
        allowed = ", ".join(NBD_ERRNOS)
        raise ConfigError(key, f"{_shown(text)} is not an errno NBD can carry (use {allowed})")
    value: int = getattr(errno, name)
    return value


def parse_int(key: str, text: str, low: int, high: int) -> int:
    """An ASCII integer from `low` to `high`, or ConfigError naming `key`."""
    value = _small_int(text) if _INT_RE.match(text) else None
    if value is None or not low <= value <= high:
        raise ConfigError(key, f"{_shown(text)} must be an integer from {low} to {high}")
    return value


def _parse_cache(text: str) -> bool:
    if text not in ("off", "volatile"):
        raise ConfigError("cache", f"{_shown(text)} must be off or volatile")
    return text == "volatile"


def _stall_probability(raw: Mapping[str, str]) -> float:
    return _parse_float("stall-probability", raw.get("stall-probability", "0"), 0.0, 1.0)


def _latencies(raw: Mapping[str, str]) -> dict[Op, LatencySpec]:
    base = parse_latency("latency", raw["latency"]) if "latency" in raw else LatencySpec()
    result: dict[Op, LatencySpec] = {}
    for op in OPS:
        key = f"{op}-latency"
        result[op] = parse_latency(key, raw[key]) if key in raw else base
    return result
