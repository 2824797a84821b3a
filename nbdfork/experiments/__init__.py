"""The experiments, one package each: matrix (`nbdfork run`), crash (`nbdfork crash`), model
(`nbdfork model`) and whatever else is added. Each package declares itself in its `experiment`
module (`EXPERIMENT`, a nbdfork.harness.experiment.Experiment); `registry()` finds them all:
the packages here, and any installed distribution's entry point in the group
`nbdfork.experiments` (`name = "package.module:EXPERIMENT"`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import pkgutil

from nbdfork.errors import ConfigError
from nbdfork.harness.experiment import Experiment

__all__ = ["ENTRY_POINTS", "experiment", "registry"]

ENTRY_POINTS = "nbdfork.experiments"


@functools.cache
def registry() -> dict[str, Experiment]:
    """Every experiment package's EXPERIMENT, by name."""
    found: dict[str, Experiment] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        name = f"{__name__}.{info.name}.experiment"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a package of helpers, not an experiment
            raise
        declared: Experiment = module.EXPERIMENT
        found[declared.name] = declared
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        loaded = entry.load()
        if not isinstance(loaded, Experiment):
            raise ConfigError(ENTRY_POINTS, f"{entry.value} is not an Experiment")
        found.setdefault(loaded.name, loaded)  # a built-in name is never replaced
    return found


def experiment(name: str) -> Experiment:
    """The experiment called `name`; ConfigError naming the known ones otherwise."""
    known = registry()
    if name not in known:
        raise ConfigError("kind", f"{name!r} is not one of {', '.join(known)}")
    return known[name]
