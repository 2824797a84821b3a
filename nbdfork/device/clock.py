"""Clocks: the real monotonic clock and a fake one for tests, so nothing in unit tests sleeps."""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "MonotonicClock"]


class Clock(Protocol):
    """What the device needs from time: a monotonic reading and a way to wait."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for `seconds`."""
        ...


class MonotonicClock:
    """The real clock."""

    def now(self) -> float:
        """time.monotonic()."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """time.sleep(), skipped for non-positive durations."""
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock that advances only when slept on; records every sleep."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        """The fake time."""
        return self._now

    def sleep(self, seconds: float) -> None:
        """Advance the fake time instead of waiting."""
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(seconds, 0.0)
