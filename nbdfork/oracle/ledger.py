"""The ledger check: after a crash, every fsynced generation must still be on the media.

A workload's ledger says, per (stream, page), the newest generation that was made durable
(fsync, fdatasync, sync_file_range+flush). A crash image satisfies it when a VALID copy of that
page with that generation or a newer one is found anywhere on the image — the filesystem
decides where file data lives, and journal copies may add more. A miss is a `lost_write`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["LostWrite", "PageKey", "validate_ledger"]

PageKey = tuple[int, int]  # (stream, page)


@dataclass(frozen=True, slots=True)
class LostWrite:
    """A durable generation the image does not hold (`found` is the newest seen, or None)."""

    stream: int
    page: int
    durable: int
    found: int | None

    def event(self) -> dict[str, object]:
        """The `lost_write` verdict as an event."""
        return {
            "event": "lost_write", "stream": self.stream, "page": self.page,
            "generation": self.durable, "found_generation": self.found,
            "generations": [g for g in (self.found, self.durable) if g is not None],
        }  # fmt: skip


def validate_ledger(
    durable: Mapping[PageKey, int], newest: Mapping[PageKey, int]
) -> list[LostWrite]:
    """Every (stream, page) whose durable generation is newer than the newest found copy."""
    lost = []
    for (stream, page), generation in sorted(durable.items()):
        found = newest.get((stream, page))
        if found is None or found < generation:
            lost.append(LostWrite(stream, page, generation, found))
    return lost
