"""The contract between the host and the guest, and between the stages of every experiment.

The guest prints progress as `MARKER + json` lines on its console, which the host's watchdog
reads (nbdfork.harness.boot); the host device is reached from the guest at GUEST_FORWARD_ADDR,
one port (one qemu guestfwd) per NBD connection from FIRST_PORT up. `Outcome` is what became
of one configuration, in every report.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Protocol

__all__ = [
    "CONNECTS_PER_RUN",
    "FIRST_PORT",
    "GUEST_FORWARD_ADDR",
    "MARKER",
    "DevicePlan",
    "Outcome",
]

MARKER = "@@nbdfork "
"""Prefix of a progress line on the guest's stdout (the host finds it anywhere in a line)."""

GUEST_FORWARD_ADDR = "10.0.2.100"
"""The address in qemu's user network whose ports lead to the host device's unix socket."""
FIRST_PORT = 10809
CONNECTS_PER_RUN = 3  # nbd-client attempts a run may make; each one uses up a forward


class Outcome(StrEnum):
    """What became of one configuration."""

    PASSED = "passed"
    VIOLATIONS = "violations"
    HARNESS_ERROR = "harness_error"
    VM_LOST = "vm_lost"
    SKIPPED = "skipped"  # the workload cannot run on this kernel/filesystem (reason given)


class DevicePlan(Protocol):
    """What the harness needs of an experiment's plan to serve its device: the plugin's
    parameters, the plugin and venv, where the plan's files go, where the device runs and (in
    the guest) its socket and step timeouts. An experiment's plan type has these fields."""

    @property
    def out(self) -> str: ...
    @property
    def device(self) -> Mapping[str, str]: ...
    @property
    def plugin(self) -> str: ...
    @property
    def venv(self) -> str: ...
    @property
    def socket(self) -> str: ...
    @property
    def timeouts(self) -> Mapping[str, float]: ...
    @property
    def device_location(self) -> str: ...
    @property
    def devices(self) -> int: ...
    @property
    def device_overrides(self) -> Mapping[str, Mapping[str, str]]: ...
