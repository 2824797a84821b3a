"""Seeded reordering of replies: within each window of arrivals, writes reply in a permuted order.

Request ids are handed out on arrival, so window k holds ids k*w+1 .. k*w+w. The permutation
of each window comes from the device RNG (same seed, same schedule), drawn once per window. A
write waits until every request ranked before it in its window has been released — or
`timeout` passes, since a client need not send a whole window. Other ops never wait but count
as released. Each window keeps a frontier (the first rank not yet released), so a request
costs O(1) amortized whatever the window size.
"""

from __future__ import annotations

import threading

import numpy as np

from nbdfork.device.clock import Clock
from nbdfork.device.rng import DeviceRng

__all__ = ["ReorderGate"]

_PURPOSE = 201
_NUMPY_MIN = 32
_KEEP_WINDOWS = 4  # windows kept behind the newest one touched (late stragglers only)


class _Window:
    """One window's ranks and which of them have been released."""

    __slots__ = ("frontier", "rank", "released")

    def __init__(self, rank: list[int]) -> None:
        self.rank = rank  # position in the window -> rank in the reply order
        self.released = [False] * len(rank)  # by rank
        self.frontier = 0  # every rank below it has been released

    def release(self, position: int) -> None:
        self.released[self.rank[position]] = True
        released, frontier = self.released, self.frontier
        while frontier < len(released) and released[frontier]:
            frontier += 1
        self.frontier = frontier


class ReorderGate:
    """Holds write replies so that they leave in a seeded order within each window."""

    def __init__(self, window: int, rng: DeviceRng, clock: Clock, timeout: float = 0.05) -> None:
        self.window = window
        self._rng = rng
        self._clock = clock
        self._timeout = timeout
        self._cond = threading.Condition()
        self._windows: dict[int, _Window] = {}
        self._newest = 0

    def order(self, window_index: int) -> list[int]:
        """The reply order (positions 0..window-1) of one window: a seeded permutation."""
        if self.window <= _NUMPY_MIN:  # numpy's fixed cost per call outweighs a short loop
            keys = [self._rng.uniform(_PURPOSE, window_index, p) for p in range(self.window)]
            return sorted(range(self.window), key=keys.__getitem__)
        order: list[int] = np.argsort(
            self._rng.uniforms(_PURPOSE, window_index, self.window), kind="stable"
        ).tolist()
        return order

    def _get(self, index: int) -> _Window:
        """Window `index`, drawn on first use (lock held)."""
        win = self._windows.get(index)
        if win is None:
            rank = [0] * self.window
            for r, position in enumerate(self.order(index)):
                rank[position] = r
            win = self._windows[index] = _Window(rank)
            if index > self._newest:
                self._newest = index
                for old in [i for i in self._windows if i < index - _KEEP_WINDOWS]:
                    del self._windows[old]
        return win

    def wait(self, request_id: int) -> None:
        """Block until the requests ranked before `request_id` replied (or the timeout)."""
        index, position = divmod(request_id - 1, self.window)
        deadline = self._clock.now() + self._timeout
        with self._cond:
            win = self._get(index)
            rank = win.rank[position]
            while win.frontier < rank:
                remaining = deadline - self._clock.now()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._release(index, position)

    def release(self, request_id: int) -> None:
        """Mark a request that does not wait (a read, a flush, a failed write) as replied."""
        index, position = divmod(request_id - 1, self.window)
        with self._cond:
            self._release(index, position)

    def _release(self, index: int, position: int) -> None:
        self._get(index).release(position)
        self._cond.notify_all()
