"""The writeback policies of the model: what a writer does to a page that is under writeback.

`none` writes into it (stable_writes=0), `stable` waits for the write to complete
(stable_writes=1), `fork` copies it (Tux3's page forking) and orders the copy's write after its
predecessor's, `fork-unordered` copies it without that ordering (the 2013 proposal).
"""

from __future__ import annotations

import enum

from nbdfork.errors import ConfigError

__all__ = ["Policy", "parse_policies"]


class Policy(enum.Enum):
    """One writeback policy; its value is the name used on the command line and in reports."""

    NONE = "none"
    STABLE = "stable"
    FORK = "fork"
    FORK_UNORDERED = "fork-unordered"

    @property
    def waits(self) -> bool:
        """A writer waits for the page's writeback to end (folio_wait_stable)."""
        return self is Policy.STABLE

    @property
    def forks(self) -> bool:
        """A writer gets a private copy of a page under writeback."""
        return self in (Policy.FORK, Policy.FORK_UNORDERED)

    @property
    def overlaps(self) -> bool:
        """Two writes of one block may be in flight together (no per-block ordering)."""
        return self is Policy.FORK_UNORDERED


def parse_policies(text: str, key: str = "--policy") -> tuple[Policy, ...]:
    """Parse `none,stable,fork,fork-unordered` (any subset, in the given order, no repeats)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    allowed = ", ".join(p.value for p in Policy)
    if not names:
        raise ConfigError(key, f"needs at least one policy ({allowed})")
    policies: list[Policy] = []
    for name in names:
        try:
            policy = Policy(name)
        except ValueError:
            raise ConfigError(key, f"{name!r} is not a policy (use {allowed})") from None
        if policy in policies:
            raise ConfigError(key, f"{name!r} is given twice")
        policies.append(policy)
    return tuple(policies)
