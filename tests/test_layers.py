"""The package's floors: no import circle, and no module imports a floor above its own."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nbdfork"

FLOORS: dict[str, int] = {
    "nbdfork": 0, "nbdfork.errors": 0, "nbdfork.seeds": 0, "nbdfork.config": 0,
    "nbdfork.log": 0, "nbdfork.files": 0, "nbdfork.options": 0, "nbdfork.verdicts": 0,
    "nbdfork.device": 1,
    "nbdfork.oracle": 2,
    "nbdfork.workloads": 3, "nbdfork.server": 3, "nbdfork.report": 3,
    "nbdfork.harness": 4,
    "nbdfork.experiments": 5,
    "nbdfork.campaign": 6,
    "nbdfork.commands": 7, "nbdfork.cli": 7, "nbdfork.__main__": 7,
}  # fmt: skip
"""DESIGN.md §2 as numbers: the ground floor (errors, seeds, parameters, logs, safe files,
options), the device, the oracle that judges what it records, what runs on them (workloads,
the nbdkit server, the report model), the harness, the experiments, the campaign orchestrator,
the CLI."""


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "plugin" in path.relative_to(PACKAGE).parts:
            continue  # package data run by nbdkit, the one file above every floor
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            targets.add(base)
            targets.update(f"{base}.{a.name}" for a in node.names)
    return {t for t in targets if t in known and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _floor(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in FLOORS:
            return FLOORS[prefix]
    raise AssertionError(f"{module} is on no floor: add its package to FLOORS")


def test_every_module_is_on_a_floor_and_imports_none_above_it() -> None:
    """An import from a higher floor (the device importing the oracle, a harness module a
    matrix plan) is an arrow back up: none is allowed."""
    upward = [f"{a} -> {b}" for a, bs in _graph().items() for b in bs if _floor(b) > _floor(a)]
    assert upward == []


def test_no_module_imports_itself_through_others() -> None:
    """No import circle, however long (the CLI through the campaign spec back to the CLI)."""
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []
