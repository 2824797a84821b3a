"""Checking crash states without building images: scan the media once, re-decode only the
pages a state's kept sectors touch.

For each crash state: torn stamped pages (and whether the state itself explains the tear — a
kept write torn at sector granularity, or a page mixing media and cached sectors) and the
ledger check (`lost_write`). Same decoder as the inline oracle.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from nbdfork.device.cache import SECTOR, CacheModel
from nbdfork.device.crash import CrashState, kept_sectors
from nbdfork.oracle.image import scan_image
from nbdfork.oracle.ledger import LostWrite, PageKey, validate_ledger
from nbdfork.oracle.stamp import PAGE_SIZE, PageDecode, decode_pages

__all__ = ["CrashChecker", "StateVerdict"]


@dataclass(frozen=True, slots=True)
class StateVerdict:
    """What one crash state holds: torn pages (explained by the state or not), lost writes."""

    state: CrashState
    torn_explained: int
    torn_unexplained: tuple[int, ...]  # page offsets
    lost: tuple[LostWrite, ...]

    @property
    def ok(self) -> bool:
        """No lost write and no tear the crash state does not explain."""
        return not self.lost and not self.torn_unexplained


class CrashChecker:
    """Checks many crash states of one (media, pending) snapshot against a ledger."""

    def __init__(self, cache: CacheModel) -> None:
        self.cache = cache
        media = cache.media.view()
        self._media = np.frombuffer(media, dtype=np.uint8)
        scan = scan_image(media)
        self._at: dict[int, tuple[PageKey, int]] = {}  # media page offset -> VALID page
        self._copies: dict[PageKey, list[tuple[int, int]]] = defaultdict(list)
        for key, gens in scan.found.items():
            for gen, offsets in gens.items():
                for offset in offsets:
                    self._at[offset] = (key, gen)
                    self._copies[key].append((gen, offset))
        self._newest = {key: max(g for g, _ in copies) for key, copies in self._copies.items()}
        self._media_torn = frozenset(offset for offset, _ in scan.torn)

    def check(self, state: CrashState, durable: Mapping[PageKey, int]) -> StateVerdict:
        """Judge `state` against the ledger's durable generations."""
        overlay = self._overlay(state)
        valid, torn_overlaid = self._decode({o: page for o, (page, _) in overlay.items()})
        # A page the state put together from media and cached sectors may tear by design; if
        # every sector still holds the durable generation or a newer one, nothing was lost.
        mixed = {o for o, (_, sectors) in overlay.items() if len(sectors) < PAGE_SIZE // SECTOR}
        for offset, page in torn_overlaid.items():
            gens = page.sector_generations
            if offset in mixed and page.stream is not None and None not in gens:
                key = (page.stream, page.page or 0)
                valid[key] = max(valid.get(key, -1), min(g for g in gens if g is not None))
        newest = self._newest_with(set(overlay), valid)
        torn = sorted((self._media_torn - set(overlay)) | set(torn_overlaid))
        explained = [t for t in torn if t in mixed]
        unexplained = tuple(t for t in torn if t not in mixed)
        lost = tuple(validate_ledger(durable, newest))
        return StateVerdict(state, len(explained), unexplained, lost)

    def _overlay(self, state: CrashState) -> dict[int, tuple[bytearray, set[int]]]:
        """Page offset -> (page bytes with the kept sectors applied, sector indices overlaid)."""
        pages: dict[int, tuple[bytearray, set[int]]] = {}
        for offset, data in kept_sectors(self.cache, state):
            base = offset - offset % PAGE_SIZE
            if base not in pages:
                pages[base] = (bytearray(self._media[base : base + PAGE_SIZE]), set())
            page, sectors = pages[base]
            index = (offset - base) // SECTOR
            page[index * SECTOR : (index + 1) * SECTOR] = data
            sectors.add(index)
        return pages

    @staticmethod
    def _decode(
        pages: Mapping[int, bytearray],
    ) -> tuple[dict[PageKey, int], dict[int, PageDecode]]:
        """Decode overlaid pages: newest VALID generation per key, and the TORN pages."""
        if not pages:
            return {}, {}
        offsets = sorted(pages)
        decoded = decode_pages(b"".join(pages[o] for o in offsets))
        valid: dict[PageKey, int] = {}
        for _, stream, page, gen in decoded.valid_pages():
            valid[(stream, page)] = max(gen, valid.get((stream, page), -1))
        torn = {offsets[at // PAGE_SIZE]: page for at, page in decoded.torn_pages()}
        return valid, torn

    def _newest_with(self, overlaid: set[int], valid: Mapping[PageKey, int]) -> dict[PageKey, int]:
        """Newest generation per key once the overlaid pages replaced their media copies."""
        newest = dict(self._newest)
        touched = {self._at[o][0] for o in overlaid if o in self._at}
        for key in touched:
            rest = [g for g, o in self._copies[key] if o not in overlaid]
            if rest:
                newest[key] = max(rest)
            else:
                del newest[key]
        for key, gen in valid.items():
            newest[key] = max(gen, newest.get(key, -1))
        return newest
