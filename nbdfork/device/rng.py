"""The device's one seeded RNG: counter-based, so a request's draws depend only on its id.

nbdkit serves requests on many threads; a shared sequential generator would hand out numbers
in thread-scheduling order. Keying every draw by (seed, purpose, request id, index) makes the
schedule a function of the seed and the request order alone.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["DeviceRng", "splitmix64"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def splitmix64(x: int) -> int:
    """One step of splitmix64 (Steele, Lea, Flood 2014): a strong 64-bit mix of `x`."""
    z = (x + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class DeviceRng:
    """Uniform and normal draws keyed by (purpose, key, index) under one seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed & _MASK
        self._base = splitmix64(self.seed)

    def uniform(self, purpose: int, key: int, index: int = 0) -> float:
        """A float in [0, 1) that is the same for the same seed, purpose, key and index."""
        x = splitmix64(self._base ^ splitmix64((purpose << 48) ^ (key & _MASK)) ^ index)
        return (x >> 11) * (1.0 / (1 << 53))

    def normal(self, purpose: int, key: int) -> float:
        """A standard normal draw (Box-Muller over two keyed uniforms)."""
        u1 = 1.0 - self.uniform(purpose, key, 0)  # (0, 1]: log is finite
        u2 = self.uniform(purpose, key, 1)
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    def uniforms(self, purpose: int, key: int, count: int) -> npt.NDArray[np.float64]:
        """uniform(purpose, key, i) for i in range(count), as one vectorized array."""
        prefix = self._base ^ splitmix64((purpose << 48) ^ (key & _MASK))
        x = np.uint64(prefix) ^ np.arange(count, dtype=np.uint64)
        with np.errstate(over="ignore"):
            z = x + np.uint64(_GOLDEN)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z ^= z >> np.uint64(31)
        return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
