"""The oracle's verdicts, named once: what every event's `event` field, every summary's counts
and every report's columns use."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["COLUMNS", "WRITE_VERDICTS", "Verdict"]


class Verdict(StrEnum):
    """One kind of violation the oracle reports."""

    TORN = "torn_write"  # a page or block whose parts come from different versions
    STALE = "stale_write"  # an older version landing after a newer one at the same place
    OVERLAPPING = "overlapping_write"  # two WRITEs over one sector in flight together
    LOST = "lost_write"  # a version the ledger says was made durable is not on the media


WRITE_VERDICTS: tuple[Verdict, ...] = (Verdict.TORN, Verdict.STALE, Verdict.OVERLAPPING)
"""The verdicts given as WRITEs arrive and land (lost_write is a crash state's)."""

COLUMNS: dict[str, Verdict] = {
    "torn": Verdict.TORN, "stale": Verdict.STALE, "overlapping": Verdict.OVERLAPPING,
}  # fmt: skip
"""Report columns (`torn`, `stale`, `overlapping`) and the verdict each counts."""
