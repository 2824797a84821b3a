"""Subcommands of the `nbdfork` CLI: every experiment found by nbdfork.experiments.registry()
(run, crash, model, ...), then the tools around them; each sets `handler(args) -> int`."""

from __future__ import annotations

import argparse

from nbdfork.commands import campaign, kernel, report, serve, verify
from nbdfork.experiments import registry

__all__ = ["register_all"]


def register_all(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add every subcommand: the experiments first, then serve, verify, report, kernel and
    campaign."""
    for experiment in registry().values():
        experiment.register(sub)
    for tool in (serve, verify, report, kernel, campaign):
        tool.register(sub)
