"""Seeds: the one rule for making and deriving them (options check them against SEED_LIMIT).

Every random choice of an experiment comes from one seed, recorded in its report: given, or
made here. A part of the experiment (a run of the matrix, the device, a campaign cell) gets
`derive_seed(seed, name)`, a hash of the seed and a stable name, so that its seed does not
depend on which other parts share the experiment.
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["SEED_LIMIT", "derive_seed", "new_seed"]

SEED_LIMIT = 1 << 63
"""Seeds are integers in [0, SEED_LIMIT): what numpy's SeedSequence and the device take."""


def new_seed() -> int:
    """A fresh seed for an experiment nobody seeded (32 bits: short enough to retype)."""
    return secrets.randbits(32)


def derive_seed(seed: int, name: str) -> int:
    """The 32-bit seed of `name` (a run id, "device", a cell id) under the master `seed`."""
    digest = hashlib.sha256(f"nbdfork:{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
