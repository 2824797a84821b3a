"""Test-only: `nbdfork campaign run` over cells that run Python code, built in Python.

A spec file cannot run an argv (only the experiments' kinds); the orchestrator's tests and the
campaign benchmark still need cells that sleep, fail or spawn children on cue. This driver runs
the real CLI (`nbdfork.cli.main`) with one change: the spec is read by `python_cells`, which
builds the cells here from a JSON description:

    {"name": "t", "seed": 1, "code": "import time; time.sleep({n})", "axis": [1, 2]}

makes cells `t-n=1`, `t-n=2` running `python -c CODE` with {n} and {out} (the cell's --out)
filled in. Run it as `python -m tests.campaign_driver campaign run CELLS.json --out DIR ...`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import nbdfork.commands.campaign as command
from nbdfork.campaign.spec import MAX_CELLS, OUT, CampaignSpec, Cell
from nbdfork.cli import main
from nbdfork.seeds import derive_seed

__all__ = ["describe", "python_cells"]


def describe(code: str, axis: list[int], *, seed: int = 1, name: str = "t") -> str:
    """The JSON description of cells `NAME-n=V` for V in `axis`, each running `code`."""
    return json.dumps({"name": name, "seed": seed, "code": code, "axis": axis})


def python_cells(path: Path, max_cells: int = MAX_CELLS) -> CampaignSpec:
    """The CampaignSpec described by the JSON file at `path` (see the module docstring)."""
    text = path.read_text()
    data = json.loads(text)
    cells = []
    for n in data["axis"][:max_cells]:
        cell_id = f"{data['name']}-n={n}"
        code = data["code"].format_map({"n": n, "out": OUT})
        cells.append(Cell(cell_id, "python", {"n": str(n)}, derive_seed(data["seed"], cell_id),
                          (sys.executable, "-c", code), (0,), data.get("timeout")))  # fmt: skip
    digest = hashlib.sha256(text.encode()).hexdigest()
    return CampaignSpec(data["name"], data["seed"], tuple(cells), digest, text)


if __name__ == "__main__":
    command.load_spec = python_cells  # type: ignore[assignment]
    sys.exit(main(sys.argv[1:]))
