"""The dependency rule, read from the source: protocols <- emulator <- client / coordinator, no cycles.

Every `import` and `from ... import` in every module counts, lazy ones inside functions included,
because a lazy import that closes a cycle still couples the two modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocols", "emulator", "client", "coordinator")
# What each top-level package may import of ours (itself included).
ALLOWED = {
    "protocols": {"protocols"},
    "emulator": {"emulator", "protocols"},
    "client": {"client", "emulator", "protocols"},
    "coordinator": {"coordinator", "emulator", "protocols"},
    "bench": {"bench", "coordinator", "client", "emulator", "protocols"},
}


def module_name(path: Path) -> str:
    """Dotted module name of a source file under ROOT (a package's __init__ is the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    """Every module of the four packages and bench/, by dotted name."""
    found = {}
    for top in (*PACKAGES, "bench"):
        for path in (ROOT / top).rglob("*.py"):
            if "zoo/models" not in path.as_posix():
                found[module_name(path)] = path
    return found


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """Our modules that `path` imports anywhere in its body (a `from X import Y` of a module: X.Y)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports."""
    modules = our_modules()
    known = set(modules)
    return {name: imported(path, name, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    # coordinator.cli.run imports the simulation launcher inside its command function.
    assert "coordinator.cli.simulation" in graph["coordinator.cli.run"]
    assert "protocols.schema" in graph["client.client_app"]
    assert len(graph) > 60


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layering():
    breaks = []
    for name, targets in import_graph().items():
        top = name.split(".")[0]
        for target in targets:
            if target.split(".")[0] not in ALLOWED[top]:
                breaks.append(f"{name} imports {target}")
    assert breaks == []
