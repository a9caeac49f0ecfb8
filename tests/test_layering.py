"""Import layering of `protobase.collections` (docs/architecture.md: imports flow downwards).

- The package's modules import each other without a cycle. Every import
  statement counts, also one inside a function or under ``if TYPE_CHECKING:``,
  so no module relies on being imported after another.
- They import nothing of the layers above them (objects, serialization,
  transactions, queries): from the rest of protobase only `BELOW`.
- Each module imports in a fresh interpreter.

The imports are read from the source with `ast`, so the checks see what is
written, not what happened to be imported when the test ran.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import protobase

PROTOBASE = Path(protobase.__file__).parent
PACKAGE = "protobase.collections"
BELOW = {"protobase.atoms", "protobase.codec", "protobase.errors", "protobase.values"}
"""The modules of protobase below the collections (what they may import)."""


def module_files() -> dict[str, Path]:
    """``{module name: source file}`` of the collections package (the package itself too)."""
    folder = PROTOBASE / "collections"
    files = {PACKAGE: folder / "__init__.py"}
    for path in sorted(folder.glob("*.py")):
        if path.name != "__init__.py":
            files[f"{PACKAGE}.{path.stem}"] = path
    return files


def imports_of(name: str, path: Path) -> set[str]:
    """The absolute names of the modules that module `name` (at `path`) imports."""
    # The package a relative import starts from: the module's own, or itself for __init__.
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            # ``from . import btree`` imports the module btree itself.
            found.update(
                f"{module}.{alias.name}"
                for alias in node.names
                if is_module(f"{module}.{alias.name}")
            )
    return found


def is_module(name: str) -> bool:
    """Whether `name` is a module or package of protobase (not a name inside one)."""
    if not name.startswith("protobase."):
        return False
    path = PROTOBASE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """``{module: the package's modules it imports}``."""
    files = module_files()
    return {name: imports_of(name, path) & files.keys() for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path that ends where it starts, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        path.append(name)
        for imported in sorted(graph[name]):
            cycle = visit(imported)
            if cycle is not None:
                return cycle
        path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = visit(name)
        if cycle is not None:
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_relative_imports() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.btree" in graph[f"{PACKAGE}.base"]
    assert f"{PACKAGE}.base" in graph[PACKAGE]


def test_collections_modules_import_without_a_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_collections_import_only_what_lies_below_them() -> None:
    above = {
        name: sorted(
            module
            for module in imports_of(name, path)
            if module.startswith("protobase.")
            and not module.startswith(f"{PACKAGE}.")
            and module not in BELOW
        )
        for name, path in module_files().items()
    }
    assert {name: found for name, found in above.items() if found} == {}


@pytest.mark.parametrize("name", sorted(module_files()))
def test_each_module_imports_in_a_fresh_interpreter(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
