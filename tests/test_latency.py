"""Latency models and the counter-based RNG: determinism per seed, distributions per spec."""

from __future__ import annotations

import statistics

from nbdfork.config import parse_params
from nbdfork.device.latency import MAX_DELAY_S, LatencyModel
from nbdfork.device.rng import DeviceRng, splitmix64


def _model(*pairs: tuple[str, str], seed: int = 1) -> LatencyModel:
    config = parse_params([("size", "1M"), ("seed", str(seed)), *pairs])
    return LatencyModel(config, DeviceRng(config.seed))


def test_splitmix64_reference_value() -> None:
    """splitmix64 matches the published first output for state 0."""
    assert splitmix64(0) == 0xE220A8397B1DCDAF


def test_same_seed_same_schedule_and_different_seeds_differ() -> None:
    """The same seed gives the same delays per request; another seed gives others."""
    a = [_model(("write-latency", "uniform:1ms:9ms")).delay("write", i, 4096) for i in range(50)]
    b = [_model(("write-latency", "uniform:1ms:9ms")).delay("write", i, 4096) for i in range(50)]
    c = [
        _model(("write-latency", "uniform:1ms:9ms"), seed=2).delay("write", i, 4096)
        for i in range(50)
    ]
    assert a == b
    assert a != c


def test_delay_depends_on_request_id_not_call_order() -> None:
    """A request's delay is the same whichever thread asks first."""
    model = _model(("write-latency", "lognormal:2ms:0.5"))
    forward = [model.delay("write", i, 4096) for i in range(20)]
    backward = [model.delay("write", i, 4096) for i in reversed(range(20))]
    assert forward == list(reversed(backward))


def test_uniform_stays_in_range_and_lognormal_median() -> None:
    """Uniform draws stay in [min, max]; lognormal draws have about the configured median."""
    uniform = _model(("write-latency", "uniform:1ms:5ms"))
    draws = [uniform.delay("write", i, 0) for i in range(2000)]
    assert min(draws) >= 0.001 and max(draws) <= 0.005
    lognormal = _model(("write-latency", "lognormal:2ms:0.5"))
    median = statistics.median(lognormal.delay("write", i, 0) for i in range(4000))
    assert 0.0018 < median < 0.0022


def test_bandwidth_and_stalls_add_up() -> None:
    """Bandwidth adds length/bandwidth; stall-probability=1 adds the stall to every request."""
    model = _model(("bandwidth", "1M"), ("stall-probability", "1"), ("stall", "50ms"))
    assert abs(model.delay("write", 1, 1 << 20) - 1.05) < 1e-9
    assert abs(model.delay("flush", 1, 0) - 0.05) < 1e-9


def test_no_latency_configured_is_inactive() -> None:
    """Without latency settings the model is inactive and returns zero."""
    model = _model()
    assert not model.active
    assert model.delay("read", 1, 4096) == 0.0


def test_every_delay_is_capped_at_an_hour() -> None:
    """Bounded terms that add up past an hour (latency, bandwidth, a stall) give MAX_DELAY_S."""
    model = _model(("write-latency", "3600s"), ("bandwidth", "32K"),
                   ("stall-probability", "1"), ("stall", "3600s"))  # fmt: skip
    assert max(model.delay("write", i, 64 << 20) for i in range(200)) == MAX_DELAY_S
