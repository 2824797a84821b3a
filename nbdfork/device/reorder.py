"""Seeded reordering of replies: within each window of arrivals, writes reply in a permuted order.

Request ids are handed out on arrival, so window k holds ids k*w+1 .. k*w+w. The permutation
of each window comes from the device RNG (same seed, same schedule). A write waits until every
write placed before it in its window's permutation has replied — or `timeout` passes, since a
client need not send a whole window. Other ops never wait but count as released.
"""

from __future__ import annotations

import threading

from nbdfork.device.clock import Clock
from nbdfork.device.rng import DeviceRng

__all__ = ["ReorderGate"]

_PURPOSE = 201


class ReorderGate:
    """Holds write replies so that they leave in a seeded order within each window."""

    def __init__(self, window: int, rng: DeviceRng, clock: Clock, timeout: float = 0.05) -> None:
        self.window = window
        self._rng = rng
        self._clock = clock
        self._timeout = timeout
        self._cond = threading.Condition()
        self._released: set[int] = set()

    def order(self, window_index: int) -> list[int]:
        """The reply order (positions 0..window-1) of one window: a seeded permutation."""
        keys = [self._rng.uniform(_PURPOSE, window_index, p) for p in range(self.window)]
        return sorted(range(self.window), key=keys.__getitem__)

    def _before(self, request_id: int) -> list[int]:
        index, position = divmod(request_id - 1, self.window)
        order = self.order(index)
        base = index * self.window + 1
        return [base + p for p in order[: order.index(position)]]

    def wait(self, request_id: int) -> None:
        """Block until the writes ordered before `request_id` replied (or the timeout)."""
        before = self._before(request_id)
        deadline = self._clock.now() + self._timeout
        with self._cond:
            while not self._released.issuperset(before):
                remaining = deadline - self._clock.now()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._release(request_id)

    def release(self, request_id: int) -> None:
        """Mark a request that does not wait (a read, a flush, a failed write) as replied."""
        with self._cond:
            self._release(request_id)

    def _release(self, request_id: int) -> None:
        self._released.add(request_id)
        low = request_id - 4 * self.window
        if low > 0 and len(self._released) > 8 * self.window:
            self._released = {r for r in self._released if r > low}
        self._cond.notify_all()
