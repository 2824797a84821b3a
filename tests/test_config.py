"""Parameter parsing and validation: every bad value names its key."""

from __future__ import annotations

import math

import pytest

from nbdfork.config import LatencySpec, parse_duration, parse_latency, parse_params, parse_size
from nbdfork.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "value"),
    [("4096", 4096), ("64M", 64 << 20), ("1g", 1 << 30), ("64G", 64 << 30), ("4k", 4096),
     ("2MiB", 2 << 20), ("1T", 1 << 40)],
)
def test_size_suffixes(text: str, value: int) -> None:
    """Sizes accept binary suffixes k/M/G/T, with optional iB."""
    assert parse_size("size", text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "0", "100", "1.5G", "65T"])
def test_bad_sizes_name_the_key(text: str) -> None:
    """A size that is not a positive multiple of 512 up to 64T is refused, naming the key."""
    with pytest.raises(ConfigError, match=r"^size: "):
        parse_size("size", text)


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0.0), ("2ms", 0.002), ("500us", 0.0005), ("1.5s", 1.5)]
)
def test_durations(text: str, seconds: float) -> None:
    """Durations carry a unit; 0 alone is allowed."""
    assert math.isclose(parse_duration("stall", text), seconds)


def test_duration_without_unit_is_refused() -> None:
    """A bare non-zero number is ambiguous and refused with the units listed."""
    with pytest.raises(ConfigError, match="needs a unit"):
        parse_duration("stall", "5")


def test_latency_specs() -> None:
    """Latency specs parse to their distribution and print back in the same syntax."""
    assert parse_latency("k", "2ms") == LatencySpec("fixed", 0.002)
    assert parse_latency("k", "0") == LatencySpec()
    uniform = parse_latency("k", "uniform:1ms:5ms")
    assert (uniform.kind, uniform.a, uniform.b) == ("uniform", 0.001, 0.005)
    assert uniform.describe() == "uniform:1ms:5ms"
    assert parse_latency("k", "lognormal:2ms:0.5").describe() == "lognormal:2ms:0.5"


@pytest.mark.parametrize("text", ["uniform:5ms:1ms", "normal:1ms", "lognormal:2ms", "fast"])
def test_bad_latency(text: str) -> None:
    """Unknown distributions, wrong arity and inverted ranges are refused."""
    with pytest.raises(ConfigError, match=r"^write-latency: "):
        parse_latency("write-latency", text)


def test_unknown_key_lists_allowed_keys() -> None:
    """An unknown key is refused with the list of allowed keys."""
    with pytest.raises(ConfigError, match=r"^sise: unknown parameter \(allowed: size, "):
        parse_params([("sise", "1M")])


def test_size_is_required() -> None:
    """size= must be given."""
    with pytest.raises(ConfigError, match=r"^size: is required"):
        parse_params([("report", "/tmp/x")])


def test_duplicate_key_is_refused() -> None:
    """Giving a key twice is an error rather than a silent override."""
    with pytest.raises(ConfigError, match=r"^seed: given twice"):
        parse_params([("size", "1M"), ("seed", "1"), ("seed", "2")])


def test_per_op_latency_overrides_the_default() -> None:
    """write-latency= overrides latency= for writes only."""
    config = parse_params([("size", "1M"), ("latency", "1ms"), ("write-latency", "3ms")])
    assert config.latency_for("read").a == 0.001
    assert config.latency_for("write").a == 0.003
    assert config.has_latency


def test_seed_is_random_unless_given() -> None:
    """Without seed= each config draws its own seed; with it the seed is kept and flagged."""
    seeds = {parse_params([("size", "1M")]).seed for _ in range(5)}
    assert len(seeds) == 5
    given = parse_params([("size", "1M"), ("seed", "42")])
    assert (given.seed, given.seed_given) == (42, True)


def test_paths_are_made_absolute(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """report= and file= become absolute: nbdkit may change directory."""
    monkeypatch.chdir("/tmp")
    config = parse_params([("size", "1M"), ("report", "rel/dir")])
    assert str(config.report) == "/tmp/rel/dir"
