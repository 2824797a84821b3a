"""Subcommands of the `nbdfork` CLI; each module has `register(subparsers)` that sets `handler`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nbdfork.commands import campaign, crash, kernel, model, report, run, serve, verify

__all__ = ["COMMANDS"]

# Each register(subparsers) adds one subcommand whose parser sets `handler(args) -> int`.
COMMANDS: list[Callable[[Any], None]] = [
    run.register,
    serve.register,
    verify.register,
    report.register,
    model.register,
    crash.register,
    kernel.register,
    campaign.register,
]
