"""Latency models per op type: fixed, uniform or lognormal, plus bandwidth and rare stalls."""

from __future__ import annotations

import math

from nbdfork.config import OPS, DeviceConfig, LatencySpec, Op
from nbdfork.device.rng import DeviceRng

__all__ = ["MAX_DELAY_S", "LatencyModel"]

MAX_DELAY_S = 3600.0
"""The longest a single request is ever held, whatever the drawn latency."""

_PURPOSE = {op: i + 1 for i, op in enumerate(OPS)}
_STALL_PURPOSE = 16


class LatencyModel:
    """Computes how long one request takes; pure, so tests need no clock."""

    def __init__(self, config: DeviceConfig, rng: DeviceRng) -> None:
        self._specs = {op: config.latency_for(op) for op in OPS}
        self._bandwidth = config.bandwidth
        self._stall_p = config.stall_probability
        self._stall = config.stall
        self._rng = rng
        self.active = config.has_latency

    def delay(self, op: Op, request_id: int, length: int) -> float:
        """Seconds request `request_id` of type `op` and `length` bytes spends in the device."""
        if not self.active:
            return 0.0
        seconds = self._base(op, self._specs[op], request_id)
        if self._bandwidth and op in ("read", "write"):
            seconds += length / self._bandwidth
        if self._stall_p and self._rng.uniform(_STALL_PURPOSE, request_id) < self._stall_p:
            seconds += self._stall
        # Every parameter is bounded at parse time; the cap keeps a lognormal tail draw (or a
        # sum of bounded terms) a sleep the clock can take, never an OverflowError per request.
        return min(seconds, MAX_DELAY_S)

    def _base(self, op: Op, spec: LatencySpec, request_id: int) -> float:
        if spec.kind == "fixed":
            return spec.a
        if spec.kind == "uniform":
            return spec.a + (spec.b - spec.a) * self._rng.uniform(_PURPOSE[op], request_id)
        if spec.kind == "lognormal":
            return spec.a * math.exp(spec.b * self._rng.normal(_PURPOSE[op], request_id))
        return 0.0
