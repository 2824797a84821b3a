"""An NBD WRITE as the device saw it arrive, and what the device asks of whoever judges it.

The device imports no oracle: whoever builds a Device (the server, a re-judging, a test) hands
it a `JudgeFactory`, which gets the device's media (to read assembled pages back) and returns
the `Judge` the device tells of every arrival, landing, failure, discard and disconnect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

__all__ = ["SECTOR_SIZE", "Judge", "JudgeFactory", "Media", "WriteRequest"]

SECTOR_SIZE = 512


class WriteRequest(NamedTuple):
    """One NBD WRITE as the device saw it arrive (a NamedTuple: one is built per WRITE)."""

    request_id: int
    connection: int
    offset: int  # bytes
    length: int  # bytes
    fua: bool
    time: float  # seconds since the device started

    @property
    def first_sector(self) -> int:
        """The first 512-byte sector the write touches."""
        return self.offset // SECTOR_SIZE

    @property
    def end_sector(self) -> int:
        """One past the last 512-byte sector the write touches."""
        return -(-(self.offset + self.length) // SECTOR_SIZE)


class Media(Protocol):
    """What the device's media holds (a Store): assembled pages are judged there."""

    size: int

    def read(self, offset: int, length: int) -> bytes: ...


class Judge(Protocol):
    """What the device tells of its writes; each call returns the judge's tick (0: none)."""

    def write_arrived(self, req: WriteRequest, data: bytes | bytearray | memoryview) -> int: ...

    def write_replied(self, request_id: int, *, ok: bool, time: float) -> int: ...

    def discarded(self, offset: int, length: int) -> int: ...

    def connection_closed(self, connection: int, *, time: float) -> int: ...

    def finish(self, *, time: float) -> int: ...

    def counts(self, connection: int | None = None) -> dict[str, int]: ...

    def format_counts(self, connection: int | None = None) -> dict[str, dict[str, int]]: ...


JudgeFactory = Callable[[Media], Judge]
