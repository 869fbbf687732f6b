"""The package's layers (docs/architecture.md, "Layers"): every import runs down or sideways, never in a circle.

Every module under src/decaylab is parsed with `ast`; every `import` and `from … import` counts, at module level or
inside a function (a lazy import is still an import). Relative imports are resolved against the importing module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "decaylab"

# Lowest first. A module may import its own layer's modules and lower layers' only. An entry names a module or a
# package (relative to `decaylab`; "" is the package's own `__init__.py`); a package's submodules share its layer.
LAYERS: list[list[str]] = [
    ["", "errors", "files", "ui"],
    ["regularization"],
    ["config"],
    ["data"],
    ["models"],
    ["device"],
    ["runfolder"],
    ["generation"],
    ["evaluation"],
    ["run"],
    ["training"],
    ["sweep"],
    ["integrations"],
    ["report"],
    ["demo", "cli", "__main__"],
]


def layer_table(package: str, layers: list[list[str]]) -> dict[str, int]:
    """Full dotted name -> layer number (1 = lowest)."""
    return {
        (f"{package}.{name}" if name else package): number
        for number, names in enumerate(layers, start=1)
        for name in names
    }


def find_modules(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under src/package (a package is its `__init__.py`)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def layer_of(module: str, table: dict[str, int], package: str) -> int | None:
    """The layer of the module's nearest entry in the table (itself, else its enclosing package); None if unplaced."""
    if module == package:
        return table.get(package)
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        name = ".".join(parts[:end])
        if name in table:
            return table[name]
    return None


def owning_module(name: str, modules: dict[str, Path]) -> str:
    """The longest known module that `name` (a module, or a name inside one) lies in."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return name


def imported_modules(module: str, path: Path, modules: dict[str, Path], package: str) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import of a module of `package` in the file, wherever it stands."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                base_parts = here[: len(here) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import sub` imports the submodule; `from mod import name` imports the module.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for name in names:
            if name == package or name.startswith(package + "."):
                target = owning_module(name, modules)
                if target != module:
                    yield node.lineno, target


def import_graph(src: Path, package: str) -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    """The modules and, for each, the modules it imports (-> the first line that does)."""
    modules = find_modules(src, package)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for line, target in imported_modules(module, path, modules, package):
            edges.setdefault(target, line)
        graph[module] = edges
    return modules, graph


def unplaced_modules(modules: dict[str, Path], table: dict[str, int], package: str) -> list[str]:
    return sorted(m for m in modules if layer_of(m, table, package) is None)


def upward_imports(
    modules: dict[str, Path], graph: dict[str, dict[str, int]], table: dict[str, int], package: str, src: Path
) -> list[str]:
    """One line per import that goes to a higher layer."""
    found = []
    for importer, edges in sorted(graph.items()):
        low = layer_of(importer, table, package)
        for imported, line in sorted(edges.items()):
            high = layer_of(imported, table, package)
            if low is not None and high is not None and high > low:
                where = modules[importer].relative_to(src)
                found.append(
                    f"{importer} (layer {low}) imports {imported} (layer {high}), a higher layer, at {where}:{line}"
                )
    return found


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every cycle a depth-first search closes (each as a path ending where it starts)."""
    state: dict[str, str] = {}  # "open" while on the DFS stack, "done" after
    stack: list[str] = []
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for imported in sorted(graph.get(module, {})):
            if state.get(imported) == "open":
                cycle = stack[stack.index(imported):] + [imported]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    cycles.append(cycle)
            elif imported not in state:
                visit(imported)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


MODULES, GRAPH = import_graph(SRC, PACKAGE)
TABLE = layer_table(PACKAGE, LAYERS)


def test_every_module_has_a_layer() -> None:
    unplaced = unplaced_modules(MODULES, TABLE, PACKAGE)
    assert not unplaced, f"place these modules in a layer (LAYERS here and docs/architecture.md): {unplaced}"


def test_every_layer_entry_exists() -> None:
    stale = sorted(name for name in TABLE if name not in MODULES)
    assert not stale, f"LAYERS names modules or packages that do not exist: {stale}"


def test_no_import_goes_to_a_higher_layer() -> None:
    found = upward_imports(MODULES, GRAPH, TABLE, PACKAGE, SRC)
    assert not found, "imports to a higher layer:\n" + "\n".join(found)


def test_no_import_cycle() -> None:
    cycles = import_cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_package_root_hands_out_the_public_api_by_name_only() -> None:
    """`decaylab.load`, `decaylab.sweep`, … come from the root's `__getattr__` by module name (no import statement
    in the root, so no arrow up from layer 1); nothing inside the package takes them from the root."""
    import decaylab

    for name, home in decaylab.PUBLIC.items():
        assert home in MODULES, f"decaylab.PUBLIC[{name!r}] names {home}, which does not exist"
        assert getattr(decaylab, name) is not None
    assert callable(decaylab.sweep) and callable(decaylab.load)
    through_root = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == PACKAGE and not node.level:
                through_root += [f"{module}: {alias.name}" for alias in node.names if alias.name in decaylab.PUBLIC]
    assert not through_root, f"import these from their own modules, not the package root: {through_root}"


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A package `toy` of three layers whose bottom module reaches up, lazily and relatively, and so closes a circle."""
    files = {
        "toy/__init__.py": "",
        "toy/low.py": "def f():\n    from .top import g\n    return g\n",
        "toy/mid/__init__.py": "from toy.low import f\n",
        "toy/mid/part.py": "from . import helper\nfrom .. import low\n",
        "toy/mid/helper.py": "import os\n",
        "toy/top.py": "from toy.mid import part\n\ng = part\n",
        "toy/stray.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_checks_catch_a_lazy_upward_import_and_its_circle(toy: Path) -> None:
    modules, graph = import_graph(toy, "toy")
    assert graph["toy.mid.part"] == {"toy.mid.helper": 1, "toy.low": 2}  # relative imports resolved
    assert graph["toy.low"] == {"toy.top": 2}  # an import inside a function counts
    table = layer_table("toy", [["", "low"], ["mid"], ["top"]])
    assert unplaced_modules(modules, table, "toy") == ["toy.stray"]
    assert upward_imports(modules, graph, table, "toy", toy) == [
        "toy.low (layer 1) imports toy.top (layer 3), a higher layer, at toy/low.py:2"
    ]
    assert import_cycles(graph) == [["toy.low", "toy.top", "toy.mid.part", "toy.low"]]
