"""The shape of the package: no import cycle in `service/`, the frameworks at the edge,
and no module past the size a newcomer reads in one sitting."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.harness import ROOT

SERVICE = ROOT / "service"
#: Modules that may import aiokafka or FastStream: the Kafka edge, and the CLI helpers
#: that run outside `herald run` (the embedded broker of `herald dev`).
FRAMEWORK_EDGE = ("service.kafka", "service.devtools")
MAX_LINES = 300


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package: str = "") -> set[str]:
    """Every module `path` (in `package`) imports, at any depth, type-only imports too: a
    cycle through `if TYPE_CHECKING:` is a cycle in the design all the same."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in SERVICE.rglob("*.py")}
    return {
        name: {m for m in _imports(path, _package(name, path)) if m in modules and m != name}
        for name, path in modules.items()
    }


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between `service`'s top-level modules and subpackages (`service.mail`)."""

    def top(name: str) -> str:
        return ".".join(name.split(".")[:2])

    collapsed: dict[str, set[str]] = {}
    for name, imported in graph.items():
        collapsed.setdefault(top(name), set()).update(top(m) for m in imported)
    return {name: imported - {name} for name, imported in collapsed.items()}


def test_no_import_cycle_in_service() -> None:
    assert _cycles(_graph()) == []


def test_no_import_cycle_between_the_packages_of_service() -> None:
    assert _cycles(_packages(_graph())) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_relative_and_type_only_imports_are_seen(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\n"
        "def f():\n    from .sibling import name\n"
    )
    assert {"x", "pkg.sibling", "pkg.sibling.name"} <= _imports(module, "pkg")


def test_only_the_kafka_edge_imports_aiokafka_or_faststream() -> None:
    leaks = {
        name: sorted(m for m in _imports(path, _package(name, path)) if _framework(m))
        for name, path in ((_module(p), p) for p in SERVICE.rglob("*.py"))
        if not name.startswith(FRAMEWORK_EDGE)
    }
    assert {name: found for name, found in leaks.items() if found} == {}


def test_no_module_in_service_is_longer_than_a_sitting() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in SERVICE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def _framework(module: str) -> bool:
    return module.split(".")[0] in ("aiokafka", "faststream")


def test_the_readme_layout_names_every_part_of_service_and_nothing_else() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("Layout (") :].split("\n\n")[0]
    named = set(re.findall(r"`([a-z_/]+(?:\.py|/))`", layout))
    top = {p.name + ("/" if p.is_dir() else "") for p in SERVICE.iterdir()}
    top = {n for n in top if n.endswith("/") or n.endswith(".py")} - {
        "__init__.py",
        "__main__.py",
        "__pycache__/",
    }
    mail = {f"{p.name}" for p in (SERVICE / "mail").glob("*.py")} - {"__init__.py"}
    top_named = {n.removeprefix("service/") for n in named if "/" not in n.rstrip("/")}
    top_named |= {n.removeprefix("service/") for n in named if n.startswith("service/")}
    assert top - top_named == set(), "modules the layout does not name"
    assert {n for n in named if n.endswith(".py") and "/" not in n} <= top | mail
    assert mail <= named, "mail/ modules the layout does not name"
