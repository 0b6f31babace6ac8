"""The package's layering, read from its own `import` statements (every one, lazy or not).

`param_decomp/README.md` is the single source: its "Layer order" line orders the folders from
the ground floor up, and a table of upward imports there (none today) would name, with the
reason, the only imports allowed to point up. This test fails on a new upward import, on a
README entry that no longer exists, on a folder missing from the order, on any import circle
between files and on any circle between folders (a folder imports another when any of its
files does, so two folders can import each other with no circle between their files); a named
upward import does not excuse a circle between folders.
"""

from __future__ import annotations

import ast
import functools
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "param_decomp"
README = PACKAGE / "README.md"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package in folder `root` (param_decomp, or a test's made-up one)."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports: `from a.b import c` counts as a.b.c when c is
    a module, else as a.b; relative imports resolved against the file's package."""
    top = name.split(".")[0]
    own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == top}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = own_package.split(".")[: len(own_package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != top:
                continue
            for alias in node.names:
                child = f"{source}.{alias.name}"
                found.add(child if child in modules else source)
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = package_modules(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def floor(module: str) -> str | None:
    """The folder (or top-level module) a module belongs to; None for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Folder -> the other folders its files import: the package-level graph."""
    folders: dict[str, set[str]] = defaultdict(set)
    for a, targets in graph.items():
        for b in targets:
            if floor(a) and floor(b) and floor(a) != floor(b):
                folders[floor(a)].add(floor(b))
    return dict(folders)


def file_of(module: str) -> str:
    """`config/loading.py` for param_decomp.config.loading (the README's spelling)."""
    path = package_modules()[module]
    return str(path.relative_to(PACKAGE))


def readme_layers() -> list[str]:
    match = re.search(r"^Layer order[^:]*:\s*(.+)$", README.read_text(), re.MULTILINE)
    assert match, f"{README} has no 'Layer order: a → b → ...' line"
    return [name.strip(" `.") for name in match.group(1).split("→")]


def readme_upward_imports() -> set[tuple[str, str]]:
    """(importing file, imported file) rows of the README's upward-imports table."""
    rows = re.findall(r"^\| `([\w/]+\.py)` \| `([\w/]+\.py)` \| .+\|$", README.read_text(), re.M)
    return set(rows)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def upward_imports(graph: dict[str, set[str]], layers: list[str]) -> set[tuple[str, str]]:
    rank = {name: i for i, name in enumerate(layers)}
    return {
        (file_of(a), file_of(b))
        for a, targets in graph.items()
        for b in targets
        if floor(a) and floor(b) and rank[floor(b)] > rank[floor(a)]
    }


def test_every_folder_is_in_the_layer_order() -> None:
    layers = readme_layers()
    floors = {floor(m) for m in package_modules()} - {None}
    assert floors <= set(layers), f"not in the README's layer order: {sorted(floors - set(layers))}"
    assert len(layers) == len(set(layers))


def test_no_import_circle_between_files() -> None:
    assert cycles(import_graph()) == []


def test_upward_imports_are_exactly_the_named_ones() -> None:
    found = upward_imports(import_graph(), readme_layers())
    named = readme_upward_imports()
    assert found - named == set(), "upward imports not named in param_decomp/README.md"
    assert named - found == set(), "README names upward imports the code no longer has"


def test_no_import_circle_between_folders() -> None:
    """The folders form a DAG, every import counted (the README's named ones too)."""
    assert cycles(folder_graph(import_graph())) == []


def test_the_checker_sees_circles_and_upward_imports() -> None:
    """The checker itself: a made-up circle and an upward edge are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    some_config = next(m for m in graph if floor(m) == "config")
    some_cli = next(m for m in graph if floor(m) == "cli")
    graph[some_config] = graph[some_config] | {some_cli}
    assert (file_of(some_config), file_of(some_cli)) in upward_imports(graph, readme_layers())


def test_the_checker_sees_a_folder_circle_without_a_file_circle(tmp_path: Path) -> None:
    """A made-up package whose two folders import each other through different files (one of
    them lazily, relative): no file-level circle, and the folder-level check still fails."""
    files = {
        "toy/__init__.py": "",
        "toy/low/__init__.py": "",
        "toy/low/a.py": "from toy.high.b import B\n",
        "toy/low/d.py": "D = 1\n",
        "toy/high/__init__.py": "",
        "toy/high/b.py": "B = 2\n",
        "toy/high/c.py": "def f():\n    from ..low import d\n\n    return d.D\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path / "toy")
    assert graph["toy.low.a"] == {"toy.high.b"} and graph["toy.high.c"] == {"toy.low.d"}
    assert cycles(graph) == []
    assert folder_graph(graph) == {"low": {"high"}, "high": {"low"}}
    assert cycles(folder_graph(graph)) == [["high", "low"]]
