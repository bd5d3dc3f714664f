"""The package's imports go one way: the import graph of src/ncdetect has no cycle.

Two graphs: the module-level imports (what runs at import time), and the same plus the imports inside
functions (deferred on purpose, e.g. heavy optional dependencies). A deferred import can hide a cycle that
import time never trips over (front-ends and Whisper once imported each other that way), so both must be
free of cycles. Imports under ``if TYPE_CHECKING:`` never run and are left out of both. An edge goes to
the most specific module an import names: ``from . import x`` is an edge to the submodule ``x`` when there
is one, else to the package's ``__init__`` (where the name ``x`` then lives).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "ncdetect"


def module_names(root: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements run at import time: the module body and the blocks of its if/try/with statements."""
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                out += _top_level(node.orelse)
                continue
            out += _top_level(node.body) + _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            out += _top_level(node.body) + _top_level(node.orelse) + _top_level(node.finalbody)
            for handler in node.handlers:
                out += _top_level(handler.body)
        elif isinstance(node, ast.With):
            out += _top_level(node.body)
        else:
            out.append(node)
    return out


def _all_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """Every statement at any depth (function bodies included), none under ``if TYPE_CHECKING:``."""
    out: list[ast.stmt] = []
    stack: list[ast.AST] = list(reversed(body))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            stack += reversed(node.orelse)
            continue
        if isinstance(node, ast.stmt):
            out.append(node)
        stack += reversed(list(ast.iter_child_nodes(node)))
    return out


def import_graph(root: Path = SRC, package: str = PACKAGE, deferred: bool = False) -> dict[str, set[str]]:
    """Module -> the modules it imports; ``deferred``: with the imports inside functions too."""
    modules = module_names(root, package)
    statements = _all_statements if deferred else _top_level
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rsplit(".", 1)[0]
        edges: set[str] = set()
        for node in statements(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target not in modules:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in modules else target)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "ncdetect.train" in graph
    assert "ncdetect.models.registry" in graph["ncdetect.models.resnet"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_even_through_deferred_imports():
    graph = import_graph(deferred=True)
    # The graph does reach into function bodies: runs.py builds front-ends through a deferred import.
    assert "ncdetect.data.frontends" in graph["ncdetect.runs"]
    assert "ncdetect.data.frontends" not in import_graph()["ncdetect.runs"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (counting deferred imports): " + " -> ".join(cycle)


def test_the_check_finds_a_cycle_hidden_in_a_deferred_import(tmp_path):
    # The shape front-ends and Whisper had: one imports the other at module level, the other imports it
    # back inside a method (and an annotation-only import under TYPE_CHECKING is no edge).
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "frontends.py").write_text("from .whisper import Whisper\n")
    (pkg / "whisper.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import other\n\n"
        "class Whisper:\n    def forward(self):\n        try:\n            from .frontends import check\n"
        "        except ImportError:\n            pass\n")
    (pkg / "other.py").write_text("")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None
    graph = import_graph(tmp_path, "pkg", deferred=True)
    assert graph["pkg.whisper"] == {"pkg.frontends"}
    assert find_cycle(graph) == ["pkg.frontends", "pkg.whisper", "pkg.frontends"]


def test_the_check_finds_a_cycle_through_a_package_init(tmp_path):
    # The shape the model registry had: a family imports a name from the package that imports it back.
    pkg = tmp_path / "pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("def register(name): ...\nfrom . import resnet\n")
    (pkg / "models" / "resnet.py").write_text("from . import register\n")
    (pkg / "models" / "base.py").write_text("import os\n\ndef f():\n    from . import resnet\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.models.resnet"] == {"pkg.models"}
    assert graph["pkg.models.base"] == set()  # a deferred import is not an edge
    assert find_cycle(graph) == ["pkg.models", "pkg.models.resnet", "pkg.models"]
