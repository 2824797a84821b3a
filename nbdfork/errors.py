"""The one error hierarchy of nbdfork: every failure a user can see is an NbdforkError."""

from __future__ import annotations

import errno as _errno

__all__ = [
    "ConfigError",
    "DeviceError",
    "NbdforkError",
    "OracleError",
    "ReportError",
    "VMError",
    "VMLost",
]


class NbdforkError(Exception):
    """Base of every error nbdfork raises on purpose; its message is one line for the user."""


class ConfigError(NbdforkError):
    """A parameter or option is unknown or has a bad value; the message names it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class DeviceError(NbdforkError):
    """An emulated device operation failed; `errno` is what the NBD client is told."""

    def __init__(self, message: str, errno: int = _errno.EIO) -> None:
        super().__init__(message)
        self.errno = errno


class OracleError(NbdforkError):
    """The oracle could not read its input (a bad events file or trace)."""


class ReportError(NbdforkError):
    """A report directory is missing, unreadable or of an unknown schema."""


class VMError(NbdforkError):
    """The real-kernel harness could not set up or run a step (a harness error)."""


class VMLost(VMError):  # noqa: N818 - "VM lost" is the outcome's name
    """The guest died or stopped answering before the run finished."""
