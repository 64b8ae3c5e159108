"""The package's shape: no import cycle (in-function imports included) and no function over 100 lines.

Read from the source with ast, not by importing: every `import` and `from ... import` statement of every module
under modexp/, at module level or inside a function, is an edge; a name a package hands out lazily (PEP 562:
modexp.model's and modexp.analysis's maps of names to submodules) is an edge to the submodule that defines it.
Imports under `if TYPE_CHECKING:` never run and are left out; so is a registry's import_module of an entry it
was asked for by name (a launcher, a plug-in), which is what a registry is for.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "modexp"
MAX_FUNCTION_LINES = 100


def modules(root: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (its file, whether it is a package's __init__)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if test is not None and "TYPE_CHECKING" in ast.unparse(test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _lazy_names(path: Path) -> dict[str, str]:
    """A package's PEP 562 map, name -> submodule (".transformer" values, or submodule -> [names] keys)."""
    names = {}
    for node in ast.parse(path.read_text()).body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if not isinstance(value, ast.Dict):
            continue
        for key, item in zip(value.keys, value.values):
            if not isinstance(key, ast.Constant) or not isinstance(key.value, str):
                continue
            if isinstance(item, ast.Constant) and isinstance(item.value, str) and item.value.startswith("."):
                names[key.value] = item.value.lstrip(".")
            elif isinstance(item, (ast.List, ast.Tuple)):
                for element in item.elts:
                    if isinstance(element, ast.Constant) and isinstance(element.value, str):
                        names[element.value] = key.value
    return names


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    found = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, (path, is_package) in found.items():
        here = name if is_package else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:
                    base = here
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    source = f"{base}.{source}" if source else base
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    lazy = _lazy_names(found[source][0]).get(alias.name) if source in found else None
                    targets.append(full if full in found else f"{source}.{lazy}" if lazy else source)
            graph[name] |= {t for t in targets if t in found and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 200  # the walk found the package's imports
    assert graph["modexp.config"] >= {"modexp.variants", "modexp.ranges"}  # module level
    assert "modexp.model.transformer" in graph["modexp.variants.base"]  # in a function, through the lazy map
    assert not cycles(graph), f"import cycles: {cycles(graph)}"


def test_the_cycle_finder_finds_one(tmp_path: Path) -> None:
    """A cycle through an in-function import, and one through a package's lazy name, are found."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from .c import g\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import b\n"
                                  "def g():\n    from .a import x\n")  # fmt: skip
    (package / "sub" / "__init__.py").write_text('_LAZY = {"Thing": ".thing"}\n')
    (package / "sub" / "thing.py").write_text("from ..d import y\n")
    (package / "d.py").write_text("def y():\n    from .sub import Thing\n")
    found = cycles(import_graph(package))
    assert ["pkg.a", "pkg.b", "pkg.c"] in found and ["pkg.d", "pkg.sub.thing"] in found


def functions(root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(lines, where) of every function and method, longest first."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                where = f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"
                found.append((node.end_lineno - node.lineno + 1, where))
    return sorted(found, reverse=True)


def test_no_function_is_over_100_lines() -> None:
    long = [f"{where} ({lines} lines)" for lines, where in functions() if lines > MAX_FUNCTION_LINES]
    assert not long, f"split these: {long}"
