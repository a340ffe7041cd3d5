"""The engine's layering (docs/ARCHITECTURE.md, "Layers"): every import of fvit_core/ and app/,
function-level and TYPE_CHECKING ones included, goes to the same package or to a lower layer, and
no two modules import each other, directly or through others.

The layer table is read from docs/ARCHITECTURE.md itself, so the document and the test cannot
drift apart.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
SOURCES = ("fvit_core", "app")


def layer_table() -> dict[str, int]:
    """{package: layer} from the table under "## Layers" (rows like ``| 3 | `data` | ...``)."""
    text = ARCHITECTURE.read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for number, names in re.findall(r"^\|\s*(\d+)\s*\|\s*([^|]+)\|", section, flags=re.M):
        for name in re.findall(r"`([a-z_.]+)`", names):
            layers[name] = int(number)
    return layers


def modules() -> dict[str, Path]:
    found = {}
    for base in SOURCES:
        for path in (ROOT / base).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _target(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges() -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a import b`` counts a.b when b is a module)."""
    known = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _target(name, node, path.name == "__init__.py")
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in known:  # `import fvit_core.data.images` -> that module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def package_of(module: str, layers: dict[str, int]) -> str:
    """The table's entry a module belongs to: the longest dotted prefix listed (``fvit_core.data.x``
    -> ``data``; ``app.views.x`` -> ``app``)."""
    parts = module.split(".")
    inner = parts[1:] if parts[0] == "fvit_core" else parts
    for end in range(len(inner), 0, -1):
        if ".".join(inner[:end]) in layers:
            return ".".join(inner[:end])
    return "fvit_core" if module == "fvit_core" else module


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def test_the_layer_table_names_every_package():
    layers = layer_table()
    packages = {package_of(m, layers) for m in modules()}
    assert packages <= set(layers) | {"fvit_core"}, f"packages missing from the layer table: {packages - set(layers)}"
    assert len(layers) >= 12 and layers["errors"] == 0 and max(layers.values()) == layers["app"]


def test_no_module_imports_itself_through_others():
    assert cycles(import_edges()) == []


def test_every_import_goes_down_the_layers():
    layers = layer_table()
    upward = []
    for module, targets in import_edges().items():
        source = package_of(module, layers)
        if source == "fvit_core":  # the notebook API facade imports lazily, by name
            continue
        for target in targets:
            goal = package_of(target, layers)
            if goal != source and layers.get(goal, -1) >= layers[source]:
                upward.append(f"{module} -> {target} ({source} {layers[source]} -> {goal} {layers.get(goal)})")
    assert upward == []


def test_no_two_packages_import_each_other():
    layers = layer_table()
    pairs = defaultdict(set)
    for module, targets in import_edges().items():
        for target in targets:
            a, b = package_of(module, layers), package_of(target, layers)
            if a != b:
                pairs[a].add(b)
    two_way = sorted({tuple(sorted((a, b))) for a in pairs for b in pairs[a] if a in pairs.get(b, ())})
    assert two_way == []


def test_the_checker_finds_a_cycle_and_an_upward_edge():
    # The checker itself, on a made-up graph: a -> b -> c -> a is one cycle, d -> e none.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}}) == [["a", "b", "c"]]
    layers = {"errors": 0, "data": 3, "app": 9}
    assert package_of("fvit_core.data.images", layers) == "data"
    assert package_of("app.views.compare", layers) == "app"


@pytest.mark.parametrize("forbidden,where", [("streamlit", "fvit_core"), ("torch", "app")])
def test_the_fronts_stay_apart(forbidden, where):
    """fvit_core never imports streamlit; app never imports torch itself (it goes through fvit_core)."""
    offenders = []
    for name, path in modules().items():
        if not name.startswith(where):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{name}: {n}" for n in names if n.split(".")[0] == forbidden]
    assert offenders == []
