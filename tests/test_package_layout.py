"""The package's shape: one folder per step of the data path, imports only downwards, no Streamlit.

Every ``import`` in every module counts, including the ones inside functions and under
``TYPE_CHECKING``: a lazy import still ties two modules into one, and a cycle hidden in a
function is a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pkt_core"
DATA_PATH_PACKAGES = ("models", "capture", "similarity", "transfer", "peers", "evaluation", "runs", "figures",
                      "jobs", "cli")
SHARED_TOP_LEVEL = {"__init__", "errors", "paths", "atomic_files", "progress_bars", "offline_data", "provenance"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The pkt_core modules ``path`` imports (``from a import b`` counts as ``a.b`` when b is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] in ("pkt_core", "app",
                                                                                            "streamlit"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            root = node.module.split(".")[0]
            if root in ("app", "streamlit"):
                found.add(node.module)
            if root != "pkt_core":
                continue
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(path, modules) if m != name} for name, path in modules.items()}


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; returns the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in graph:
                continue
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _strongly_connected(graph) == [["a", "b", "c"]]


def test_no_module_of_the_library_takes_part_in_an_import_cycle():
    cycles = _strongly_connected(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_library_never_imports_streamlit_or_the_app():
    offenders = {name: sorted(m for m in imported if m.split(".")[0] in ("streamlit", "app"))
                 for name, imported in _graph().items()}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_top_level_is_the_data_path_plus_a_few_shared_pieces():
    packages = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    loose = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert sorted(DATA_PATH_PACKAGES) == packages
    assert set(loose) <= SHARED_TOP_LEVEL, f"loose modules beyond the shared pieces: {set(loose) - SHARED_TOP_LEVEL}"


@pytest.mark.parametrize("package", DATA_PATH_PACKAGES)
def test_every_package_says_its_job_in_one_docstring(package):
    tree = ast.parse((PACKAGE / package / "__init__.py").read_text())
    docstring = ast.get_docstring(tree)
    assert docstring and len(docstring.split()) >= 5, f"pkt_core/{package}/__init__.py needs a docstring of its job"
