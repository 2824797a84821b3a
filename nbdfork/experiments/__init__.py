"""The experiments, one package each: matrix (`nbdfork run`), crash (`nbdfork crash`), model
(`nbdfork model`) and whatever else is added. Each package declares itself in its `experiment`
module (`EXPERIMENT`, a nbdfork.harness.experiment.Experiment); `registry()` finds them all.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from nbdfork.errors import ConfigError
from nbdfork.harness.experiment import Experiment

__all__ = ["experiment", "registry"]


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
    return found


def experiment(name: str) -> Experiment:
    """The experiment called `name`; ConfigError naming the known ones otherwise."""
    known = registry()
    if name not in known:
        raise ConfigError("kind", f"{name!r} is not one of {', '.join(known)}")
    return known[name]
