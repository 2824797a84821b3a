"""What an experiment declares to plug into nbdfork: its name and help, its options (one table:
nbdfork.options), the function that runs it, the report it writes (schema, defining structure,
renderer) and what a campaign cell of it costs. Experiments live in nbdfork.experiments.NAME,
whose `experiment` module holds `EXPERIMENT`; nbdfork.experiments.registry() finds them, and
the CLI, `nbdfork report` and campaigns take every one found: adding an experiment is adding a
package, with no edit to the harness, the CLI or the campaign.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdfork.options import Option, add_options, parse_args

__all__ = ["GiB", "Experiment", "ReportKind", "resolve"]

GiB = 1 << 30


def resolve(target: str) -> Any:
    """The object named "package.module:attribute", imported only when asked for."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True, slots=True)
class ReportKind:
    """A kind of report.json: the schema it declares, the msgspec structure that defines it
    and the function that renders a report directory ("module:name" each, imported lazily)."""

    schema: str
    structure: str
    renderer: str

    def render(self, out: Path) -> list[Path]:
        """Render report.md/html and plots in `out` from its report.json."""
        paths: list[Path] = resolve(self.renderer)(out)
        return paths


@dataclass(frozen=True, slots=True)
class Experiment:
    """One experiment: `nbdfork NAME [options]`, a report kind, a campaign cell kind."""

    name: str
    help: str
    description: str
    options: tuple[Option, ...]
    main: str  # "module:function" taking the parsed option values (a Namespace) -> exit status
    report: ReportKind
    epilog: str = ""
    boots_vm: bool = False  # a cell boots a VM: 2 vCPUs and 2.5 GiB
    ok_statuses: tuple[int, ...] = (0,)  # exit statuses of a completed cell
    options_by_name: Mapping[str, Option] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options_by_name", {o.name: o for o in self.options})

    @property
    def cpus(self) -> int:
        """CPUs a campaign cell of this experiment occupies."""
        return 2 if self.boots_vm else 1

    @property
    def memory(self) -> int:
        """Bytes a campaign cell of this experiment needs."""
        return int(2.5 * GiB) if self.boots_vm else GiB // 2

    def register(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        """Add `nbdfork NAME` with every option; its handler parses them, then runs."""
        parser = sub.add_parser(
            self.name, help=self.help, description=self.description, epilog=self.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        add_options(parser, self.options)
        parser.set_defaults(handler=self.run)

    def run(self, args: argparse.Namespace) -> int:
        """Parse every option of `args` (one ConfigError for the first bad one), then run."""
        values = argparse.Namespace(**{**vars(args), **parse_args(self.options, args)})
        main: Callable[[argparse.Namespace], int] = resolve(self.main)
        return main(values)
