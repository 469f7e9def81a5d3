"""The package's modules import one another without a cycle, lazy (function-level) imports included.

The graph is read from the source with ``ast``: an edge for every ``import`` / ``from ... import`` of a
``nemo_explore`` module, wherever it stands (module level, inside a function or a method), except under
``if TYPE_CHECKING:``, which never runs. ``from . import x`` is an edge to the submodule ``x``. The
implicit import of a parent package (``nemo_explore/__init__.py`` runs before any submodule) is not an
edge: the top package imports every public module, so it would make every import a "cycle".
"""

from __future__ import annotations

import ast
from pathlib import Path

import nemo_explore

PACKAGE = Path(nemo_explore.__file__).resolve().parent
TOP = PACKAGE.name


def modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                skip.update(id(n) for n in ast.walk(stmt))
    return skip


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that module ``name`` imports anywhere in its source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != TOP and not target.startswith(TOP + "."):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    out.discard(name)
    return {m for m in out if m in known}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_module_level_lazy_and_relative_imports():
    graph = import_graph()
    assert "nemo_explore.cache" in graph["nemo_explore.model"]  # module level
    assert "nemo_explore.describe" in graph["nemo_explore.loading"]  # inside a function
    assert "nemo_explore.ssd" in graph["nemo_explore.mixers.mamba"]  # from .. import ssd
    assert "nemo_explore.registry" in graph["nemo_explore.describe"]  # from . import registry
    assert "nemo_explore.model" in graph["nemo_explore.analysis.ablation"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_moved_names_stay_importable_from_where_they_were():
    """format_bytes moved to formatting, the checkpoint pieces to sources: the old homes re-export them."""
    import importlib

    from nemo_explore import formatting, loading, model, sources

    describe = importlib.import_module("nemo_explore.describe")  # the attribute is the function
    assert nemo_explore.CheckpointError is sources.CheckpointError is loading.CheckpointError
    assert nemo_explore.NotNemotronHError is sources.NotNemotronHError is model.NotNemotronHError
    assert loading.read_config is sources.read_config and loading.TINY == sources.TINY == "tiny"
    assert describe.format_bytes is formatting.format_bytes
    assert nemo_explore.load is loading.load
