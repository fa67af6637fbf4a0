"""The rooms stay apart: a walk over every module's imports (ast, nothing is
imported) fails on an edge the architecture forbids and on an import cycle.

Signaling reaches the workers only through the control HTTP API, the routing
package and Postgres; billing through Postgres. So `signaling` imports neither
`sfu` nor `billing` (nor `media`), the workers import no API code, and the
shared core (`vilokanam`) and `routing` import no role at all."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("vilokanam", "routing", "signaling", "sfu", "billing", "media")
ROLES = ("signaling", "sfu", "billing", "media")
# package -> the project packages it must not import
FORBIDDEN = {
    "vilokanam": set(ROLES) | {"routing"},
    "routing": set(ROLES),
    "signaling": {"sfu", "billing", "media"},
    "sfu": {"signaling", "billing", "media"},
    "billing": {"signaling", "sfu", "media"},
    "media": {"signaling", "sfu", "billing"},
}
# The console command starts every role: it is the one module that may name them all.
ENTRY_POINTS = {"vilokanam.cli"}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The project modules `path` imports, at any depth of the file (an import
    inside a function is an edge too); imports only for the type checker
    (`if TYPE_CHECKING:`) are not edges at run time."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def project_graph(root: Path = REPO) -> dict[str, set[str]]:
    modules = {module_name(p, root): p for package in PACKAGES if (root / package).is_dir()
               for p in (root / package).rglob("*.py")}
    # `from a.b import c` names module a.b.c only when that module exists.
    return {name: {m for m in imports_of(path) if m in modules and m != name}
            for name, path in modules.items()}


def forbidden_edges(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{src} -> {dst}" for src, dsts in graph.items() for dst in dsts
                  if src not in ENTRY_POINTS
                  and dst.split(".")[0] in FORBIDDEN[src.split(".")[0]])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_room_imports_another_it_must_not() -> None:
    graph = project_graph()
    assert "signaling.app" in graph and "routing.placement" in graph  # the walk saw the tree
    assert forbidden_edges(graph) == []


def test_no_import_cycle() -> None:
    assert cycles(project_graph()) == []


def test_the_checks_catch_a_forbidden_edge_and_a_cycle(tmp_path: Path) -> None:
    for package, source in {"signaling": "from sfu.streams import StreamManager\n",
                            "sfu": "import sfu.b\n"}.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / "a.py").write_text(source)
    (tmp_path / "sfu" / "streams.py").write_text("")
    (tmp_path / "sfu" / "b.py").write_text("def f() -> None:\n    from sfu import a\n")
    graph = project_graph(tmp_path)
    assert forbidden_edges(graph) == ["signaling.a -> sfu.streams"]
    assert cycles(graph) == [["sfu.a", "sfu.b"]]

