"""No import cycles in tsh: the graph of every module's imports, read with ast.

A module is a node (a package's ``__init__`` is a node of its own, named as
the package); an edge is any import in it, at module level, in a function, or
under ``TYPE_CHECKING``, with relative imports resolved. ``from P import n``
is an edge to the module ``P.n`` if there is one, else to ``P``. Importing
``a.b`` also runs ``a/__init__``; that is not an edge here, or every module
would depend on ``tsh/__init__`` and its lazy re-exports.

A cycle means two modules each need the other: one of them holds something
that belongs lower down. Move that instead of adding it to an exception list.
"""

from __future__ import annotations

import ast
from pathlib import Path

TSH = Path(__file__).resolve().parents[2] / "tsh"


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__), for every .py under ``root``."""
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def import_graph(root: Path = TSH) -> dict[str, set[str]]:
    """Module -> the modules under ``root`` it imports (anywhere in its text)."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        deps.add(f"{source}.{alias.name}")
                    elif source in modules:
                        deps.add(source)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the longest import chain
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            component.append(v)
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_tsh_has_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "\n".join(
        f"{component}: " + "; ".join(f"{m} -> {sorted(graph[m] & set(component))}" for m in component)
        for component in found
    )


def test_the_graph_sees_every_kind_of_import() -> None:
    # Guards the test above against passing because it reads nothing.
    graph = import_graph()
    assert "tsh._proxy.retry" in graph["tsh._proxy.supervisor"]  # from .retry import ...
    assert "tsh._store.fs" in graph["tsh._store.store"]  # from . import fs as _fs
    assert "tsh._openssh.hop" in graph["tsh._proxy.command"]  # inside a function
    assert "tsh._core.profile" in graph["tsh._proxy.dial"]  # under TYPE_CHECKING
    assert "tsh._exceptions" in graph["tsh"]  # a package's __init__ is a node
    assert "tsh.cli._hotpath" in graph["tsh.cli"]  # from ._hotpath import run_hot
    assert len(graph) > 40


def test_cycles_finds_loops_and_ignores_chains() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}}) == [
        ["a", "b", "c"],
        ["d", "e"],
    ]


def test_relative_imports_resolve_from_packages_and_modules(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .sub import leaf\n")
    (pkg / "top.py").write_text("def f():\n    from . import other\n    import pkg.sub\n")
    (pkg / "other.py").write_text("from .sub.leaf import x\n")
    (pkg / "sub" / "__init__.py").write_text("from .. import top\n")
    (pkg / "sub" / "leaf.py").write_text("from ..other import y\nfrom . import missing_name\n")
    assert import_graph(pkg) == {
        "pkg": {"pkg.sub.leaf"},
        "pkg.top": {"pkg.other", "pkg.sub"},
        "pkg.other": {"pkg.sub.leaf"},
        "pkg.sub": {"pkg.top"},
        "pkg.sub.leaf": {"pkg.other", "pkg.sub"},
    }
    # The leaf and its package's __init__ are different nodes, both in the one loop.
    assert cycles(import_graph(pkg)) == [["pkg.other", "pkg.sub", "pkg.sub.leaf", "pkg.top"]]
