"""The package's modules import one another without a cycle, lazy (function-level) imports included.

The graph is read from the source with ``ast``: an edge for every ``import`` / ``from ... import`` of a
``nemo_explore`` module, wherever it stands (module level, inside a function or a method), except under
``if TYPE_CHECKING:``, which never runs. ``from . import x`` is an edge to the submodule ``x``. For the
layering, the packages Python imports on the way are edges too (importing ``nemo_explore.mirror.mixers.mamba``
runs ``mirror/__init__.py`` and ``mirror/mixers/__init__.py``), except the top package's
(``nemo_explore/__init__.py`` runs before any submodule and imports every public module); for cycles they
are not (a package's ``__init__`` importing its own modules is no cycle).

On that graph, the layering: ``LAYERS`` orders the modules from the bottom up, and no module imports one of
a higher layer (modules of one layer may import each other, without a cycle). A new module must be placed in
a layer; an upward import is fixed where it stands (the function moves down to the layer it belongs to), or,
where it is deliberate and cheap to keep, listed in ``EXCEPTIONS`` with its reason.
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


def import_graph(parents: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports. ``parents``: also the packages Python imports on the way
    (importing ``a.b.c`` runs ``a/b/__init__.py`` first; the top package's is left out: it imports every
    public module, and a submodule runs it whatever it imports)."""
    mods = modules()
    known = set(mods)
    graph = {name: imports_of(name, path, known) for name, path in mods.items()}
    if parents:
        for name, targets in graph.items():
            for module in [name, *targets]:
                parts = module.split(".")
                targets |= {".".join(parts[:k]) for k in range(2, len(parts))} - {name}
    return graph


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


# Bottom to top. A name stands for the module, or for the package and every module in it (the longest name
# that matches places a module).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # the words every other module speaks: layer kinds, run options, dtypes, labels, token text, what a
    # cached tensor keeps alive, where freed CPU memory goes, the one reader of HF's layout, the verified
    # releases; pure math on tensors (Mamba-2's SSD, factored matrices);
    # the folders' own __init__ files, which import nothing
    ("foundations", (
        "core", "core.layer_types", "core.options", "core.dtypes", "core.formatting", "core.token_text",
        "core.ssd", "core.storage", "core.allocator", "mirror", "mirror.hf_layout", "mirror.versions",
        "mirror.state_dict", "tl", "tl.factored",
    )),  # fmt: skip
    # the hook points: their table, their names, the one hook mechanism and its lifecycle; TransformerLens'
    # build-your-own hooked module, which is that lifecycle over HookPoint modules
    ("points", ("core.points", "core.hook_names", "core.hooks", "core.hook_lifecycle", "tl.hooked_module")),
    # configs and checkpoints, and what a model costs, before there is a model
    ("checkpoints", ("checkpoints",)),
    # the mirror of HF's private mixer code, and its run-time check
    ("mirror", ("mirror.mixers", "mirror.instrument", "mirror.guard")),
    # TransformerLens' surface the model and its cache are built from: names and loss, config, weights
    ("transformer_lens", ("tl.utils", "tl.config", "tl.weights")),
    # the model (its tokenizer side, its hook lifecycle, the forward), its cache and the TL residual tools
    # the cache offers, and what is computed from a cache's per-token points: p × p maps, state norms
    ("model", ("inputs", "lifecycle", "model", "tl.residual", "cache", "pairwise", "state_norms")),
    ("loading", ("checkpoints.loading",)),
    # what is computed with a model: analyses, corpus statistics
    ("tools", ("analysis", "corpus", "tl.patching", "tl.evals")),
    # what shows them
    ("views", ("widgets",)),
    # the package's public face imports all of the above
    ("package", (TOP,)),
    # programs
    ("command line", ("corpus.__main__",)),
]

# (importer, imported) -> why this upward import stays. Each must still be an edge of the graph.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _full(name: str) -> str:
    return name if name == TOP else f"{TOP}.{name}"


def layer_of(module: str, layers=LAYERS) -> int | None:
    """The index in ``layers`` of the layer that places ``module`` (None: no layer does)."""
    best, index = "", None
    for i, (_, names) in enumerate(layers):
        for name in map(_full, names):
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, index = name, i
    return index


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Every import of a module of a higher layer, as ``'a (layer) -> b (layer)'``."""
    found = []
    for module in sorted(graph):
        for target in sorted(graph[module]):
            here, there = layer_of(module, layers), layer_of(target, layers)
            if here is not None and there is not None and there > here:
                found.append(f"{module} ({layers[here][0]}) -> {target} ({layers[there][0]})")
    return found


def test_the_layering_places_every_module_once():
    unplaced = sorted(m for m in modules() if layer_of(m) is None)
    assert not unplaced, f"place these modules in a layer of LAYERS: {unplaced}"
    listed = [_full(n) for _, names in LAYERS for n in names]
    assert len(listed) == len(set(listed)), "a name stands in two layers"
    assert all(n in modules() for n in listed), [n for n in listed if n not in modules()]


def test_no_module_imports_a_higher_layer():
    graph = import_graph(parents=True)
    excepted = {f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})" for a, b in EXCEPTIONS}
    upward = [edge for edge in upward_imports(graph) if edge not in excepted]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_every_exception_is_still_an_upward_import():
    graph = import_graph(parents=True)
    for importer, imported in EXCEPTIONS:
        assert imported in graph.get(importer, ()), f"{importer} no longer imports {imported}: drop it"
        assert layer_of(imported) > layer_of(importer), f"{importer} -> {imported} is not upward: drop it"


def test_the_layering_check_sees_an_upward_import():
    layers = [("low", ("a",)), ("high", ("b",))]
    assert layer_of(f"{TOP}.a.sub", layers) == 0 and layer_of(f"{TOP}.c", layers) is None
    graph = {f"{TOP}.a": {f"{TOP}.b"}, f"{TOP}.b": {f"{TOP}.a"}}
    assert upward_imports(graph, layers) == [f"{TOP}.a (low) -> {TOP}.b (high)"]


def test_the_graph_sees_module_level_lazy_and_relative_imports():
    graph = import_graph()
    assert "nemo_explore.cache" in graph["nemo_explore.model"]  # module level
    assert "nemo_explore.checkpoints.describe" in graph["nemo_explore.checkpoints.loading"]  # in a function
    assert "nemo_explore.core.ssd" in graph["nemo_explore.mirror.mixers.mamba"]  # from .. import ssd
    assert "nemo_explore.checkpoints.registry" in graph["nemo_explore.checkpoints.describe"]  # from . import
    assert "nemo_explore.model" in graph["nemo_explore.analysis.ablation"]
    parents = import_graph(parents=True)  # what importing a module runs on the way
    assert "nemo_explore.mirror" in parents["nemo_explore.mirror.mixers.mamba"]
    assert "nemo_explore.mirror.mixers" in parents["nemo_explore.mirror.mixers.mamba"]
    assert "nemo_explore.widgets" in parents["nemo_explore.widgets.attention"]
    assert "nemo_explore.core" in parents["nemo_explore.model"]  # it imports nemo_explore.core.hooks
    assert "nemo_explore" not in parents["nemo_explore.model"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_installed_version_is_the_package_version():
    """A corpus manifest records the installed version (importlib.metadata): the one __init__ says."""
    from importlib.metadata import version

    assert version("nemo-explore") == nemo_explore.__version__


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_moved_names_stay_importable_from_where_they_were():
    """format_bytes moved to formatting, the checkpoint pieces to sources: the old homes re-export them."""
    import importlib

    from nemo_explore import model
    from nemo_explore.checkpoints import loading, sources
    from nemo_explore.core import formatting

    describe = importlib.import_module("nemo_explore.checkpoints.describe")  # the attribute is the function
    assert nemo_explore.CheckpointError is sources.CheckpointError is loading.CheckpointError
    assert nemo_explore.NotNemotronHError is sources.NotNemotronHError is model.NotNemotronHError
    assert loading.read_config is sources.read_config and loading.TINY == sources.TINY == "tiny"
    assert describe.format_bytes is formatting.format_bytes
    assert nemo_explore.load is loading.load
