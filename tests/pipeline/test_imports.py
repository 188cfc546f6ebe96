"""The pipeline's import graph: no circle between its modules, and no arrow from a subpackage up to one above it.

Every ``import``/``from … import`` of a ``pipeline`` module counts, at module level or inside a function (a
deferred import is still a dependency), except those under ``if TYPE_CHECKING:`` (annotations only). The layers,
lowest first: a module may import its own subpackage and any lower layer; ``faces`` and ``models`` share a
layer and do not import each other (photos and faces know nothing of the generator).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"

LAYERS = [
    {"errors"},
    {"models", "faces"},
    {"render"},
    {"weights"},
    {"edit"},
    {"train"},
    {"doctor"},
    {"golden"},
    {"cli", "__main__", "(pipeline)"},
]


def modules() -> dict[str, Path]:
    found = {}
    for path in PIPELINE.rglob("*.py"):
        parts = path.relative_to(PIPELINE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """Module → the pipeline modules it imports."""
    known = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_blocks(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from pkg import sub`` depends on the submodule; ``from mod import name`` on the module
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                           for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in known and t != name)
    return graph


def subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(pipeline)"


def layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if subpackage(module) in names)


def test_every_subpackage_has_a_layer():
    assert {subpackage(m) for m in modules()} <= set().union(*LAYERS)


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, str] = {}
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_no_arrow_runs_up_between_subpackages():
    upward = {(a, b) for a, targets in import_graph().items() for b in targets
              if subpackage(a) != subpackage(b) and (layer(b) > layer(a) or
                                                     {subpackage(a), subpackage(b)} == {"models", "faces"})}
    assert not upward, f"imports running up the layers: {sorted(upward)}"


def test_the_reference_model_stands_alone():
    """The readable model imports only the pipeline's errors and its own ops and checkpoint reading."""
    assert import_graph()["pipeline.models.stylegan2"] <= {"pipeline.errors", "pipeline.models.ops",
                                                             "pipeline.models.checkpoints"}
