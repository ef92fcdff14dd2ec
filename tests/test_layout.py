"""The package reads top to bottom: no module of fiqnn imports, directly or through others,
a module that imports it back (function-level imports count too)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "fiqnn"


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """fiqnn module -> the fiqnn modules it imports anywhere in its body."""
    mods = {_module(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                target = ".".join(x for x in (base, node.module) if x)
                names = [f"{target}.{a.name}" for a in node.names]
                found = [n for n in names if n in mods] or ([target] if target in mods else [])
                graph[mod].update(found)
            elif isinstance(node, ast.Import):
                graph[mod].update(a.name for a in node.names if a.name in mods)
    for mod in graph:
        graph[mod].discard(mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other through imports (each group a cycle)."""
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    groups = {tuple(sorted(m for m in graph if m in reach[a] and a in reach[m])) for a in graph if a in reach[a]}
    return sorted(list(g) for g in groups)


def test_no_import_cycles():
    graph = imports()
    assert "fiqnn.train.distill" in graph and graph["fiqnn.jobs"], "the import walk found nothing"
    found = cycles(graph)
    assert not found, "modules that import each other: " + "; ".join(", ".join(c) for c in found)


# The pipeline's order (docs/architecture.md): a module imports only from its own layer or the
# layers above it in this list.
LAYERS = [
    ("foundation", ("fiqnn._archs", "fiqnn._io", "fiqnn._optional", "fiqnn._progress", "fiqnn._run", "fiqnn.errors",
                    "fiqnn.config", "fiqnn.data", "fiqnn.parallel")),
    ("integer", ("fiqnn.integer",)),
    ("nets", ("fiqnn.nets",)),
    ("train", ("fiqnn.train",)),
    ("export", ("fiqnn.export",)),
    ("front end", ("fiqnn.cli", "fiqnn.jobs", "fiqnn.bench", "fiqnn.report", "fiqnn.plots", "fiqnn.__main__")),
]


def layer_of(mod: str) -> int:
    if mod == "fiqnn":
        return 0  # the package's __init__: __version__ and a lazy public API that imports nothing up front
    found = [i for i, (_, prefixes) in enumerate(LAYERS)
             if any(mod == p or mod.startswith(p + ".") for p in prefixes)]
    assert found, f"{mod} is in no layer of tests/test_layout.py's LAYERS (add it where it belongs)"
    return found[0]


def test_every_import_goes_up_the_layers():
    def name(mod: str) -> str:
        return mod if mod == "fiqnn" else f"{mod} ({LAYERS[layer_of(mod)][0]})"

    wrong = [f"{name(mod)} imports {name(dep)}"
             for mod, deps in imports().items() for dep in deps if layer_of(dep) > layer_of(mod)]
    assert not wrong, "; ".join(wrong)


def test_the_integer_side_needs_no_torch():
    """A deployer reads and runs an IntGraph (fiqnn.integer, fiqnn.export) without torch."""
    for path in [*(SRC / "integer").glob("*.py"), *(SRC / "export").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{path.name} imports torch"


def test_the_cycle_check_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
