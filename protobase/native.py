"""The compiled hot path: which modules mypyc compiles, and which form this process runs.

`setup.py` compiles the modules in `COMPILED_MODULES` with mypyc into C extensions
that sit beside their sources (`btree.cpython-311-x86_64-linux-gnu.so` next to
`btree.py`). Python's import system prefers an extension to a source file, so an
installed build runs compiled without any switch. The Python sources stay the
reference: they are what the extensions are built from and what runs when
`PROTOBASE_PURE_PYTHON=1`.

Invariants, checked once when `protobase` is imported (`select_hot_path`):

- Either every module of the list has its extension or none has. A partial set is
  a broken build and an `ImportError`, never a silent mix.
- An extension runs only if its source has not changed since it was built: the
  build records a hash of each source in `protobase/_native_manifest.json`, and a
  mismatch is an `ImportError` naming the file and the two ways out (rebuild, or
  run pure).
- No extension of a module outside the list exists (one left by an older build
  would shadow its source): an `ImportError`; the build deletes such leftovers.
- `PROTOBASE_PURE_PYTHON=1` makes every module of the list load from its source
  even when extensions exist; the test suite uses it to run the fallback.
  Any other value but `0` or unset is a `ValueError`.

`HOT_PATH` says which form runs: "compiled", "pure" (asked for) or "pure (not
built)" (installed with `PROTOBASE_PURE_PYTHON=1`, so no extension exists).
This module imports only the standard library: `setup.py` reads it before the
package's dependencies are installed.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# Dotted names; each is a module file under the package directory.
COMPILED_MODULES: tuple[str, ...] = (
    "protobase.collections.btree",
    "protobase.collections.ordering",
    "protobase.serialization",
    "protobase.codec",
    "protobase.cache",
    "protobase.sharing",
    "protobase.committer",
    "protobase.transaction",
    "protobase.atoms",
    "protobase.collections.fields",
    "protobase.collections.indexes",
    "protobase.query.planner",
    "protobase.query.expressions",
    "protobase.query.builder",
    "protobase.query.plans",
    "protobase.query.sorting",
    "protobase.query.grouping",
    "protobase.query.joins",
)

# The shared library mypyc builds for the group (imported by each module's shim).
GROUP_NAME = "protobase._native"
ENV_SWITCH = "PROTOBASE_PURE_PYTHON"
MANIFEST_NAME = "_native_manifest.json"

_PACKAGE_DIR = Path(__file__).resolve().parent

HOT_PATH = "pure (not built)"


def source_path(module: str, root: Path | None = None) -> Path:
    """The source file of a dotted module name, under `root` (the repository) or installed."""
    parts = module.split(".")
    base = (root / parts[0]) if root is not None else _PACKAGE_DIR
    return base.joinpath(*parts[1:]).with_suffix(".py")


def source_hash(path: Path) -> str:
    """What the manifest records of one source: its blake2b digest."""
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def manifest_text(root: Path) -> str:
    """The manifest `setup.py` writes next to the extensions it builds: module -> hash."""
    hashes = {module: source_hash(source_path(module, root)) for module in COMPILED_MODULES}
    return json.dumps(hashes, indent=1, sort_keys=True) + "\n"


def _extension_of(module: str) -> Path | None:
    source = source_path(module)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def orphan_extensions(package_dir: Path = _PACKAGE_DIR) -> list[Path]:
    """Extensions under the package of modules no longer in `COMPILED_MODULES`.

    An extension left by an older build would shadow its module's source.
    """
    group_library = GROUP_NAME.rsplit(".", 1)[1] + "__mypyc"
    suffixes = sorted(importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True)
    orphans = []
    for path in sorted(package_dir.rglob("*")):
        # the longest suffix names the module (".so" alone also ends the others)
        suffix = next((suffix for suffix in suffixes if path.name.endswith(suffix)), None)
        if suffix is None:
            continue
        stem = path.name[: -len(suffix)]
        parts = path.parent.relative_to(package_dir.parent).parts
        if stem != group_library and ".".join((*parts, stem)) not in COMPILED_MODULES:
            orphans.append(path)
    return orphans


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' Python sources ahead of their extensions."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def _check_manifest() -> None:
    try:
        recorded = json.loads((_PACKAGE_DIR / MANIFEST_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise ImportError(
            f"protobase's compiled modules have no readable build manifest ({exc}); rebuild "
            f"them (`make native`) or set {ENV_SWITCH}=1 to run the pure-Python sources"
        ) from exc
    for module in COMPILED_MODULES:
        source = source_path(module)
        if recorded.get(module) != source_hash(source):
            raise ImportError(
                f"{source} changed since its compiled form was built; rebuild it "
                f"(`make native`) or set {ENV_SWITCH}=1 to run the pure-Python sources"
            )


def select_hot_path() -> str:
    """Decide, before any listed module is imported, which form this process runs."""
    global HOT_PATH
    switch = os.environ.get(ENV_SWITCH, "0")
    if switch not in ("0", "1", ""):
        raise ValueError(f"{ENV_SWITCH} must be 1 (run pure Python) or 0, not {switch!r}")
    loaded = [module for module in COMPILED_MODULES if module in sys.modules]
    if loaded:
        raise ImportError(f"protobase.native must run before {loaded[0]} is imported")
    orphans = orphan_extensions()
    if orphans:
        raise ImportError(
            f"{orphans[0]} is left from an older build (its module is no longer compiled) and "
            "would shadow its source; delete it or rebuild (`make native`)"
        )
    built = [module for module in COMPILED_MODULES if _extension_of(module) is not None]
    if switch == "1":
        if not any(isinstance(finder, _SourceFirst) for finder in sys.meta_path):
            sys.meta_path.insert(0, _SourceFirst())
        HOT_PATH = "pure"
        return HOT_PATH
    if not built:
        HOT_PATH = "pure (not built)"
        return HOT_PATH
    missing = [module for module in COMPILED_MODULES if module not in built]
    if missing:
        raise ImportError(
            f"protobase's compiled hot path is incomplete ({source_path(missing[0])} has no "
            f"extension); rebuild it (`make native`) or set {ENV_SWITCH}=1"
        )
    _check_manifest()
    HOT_PATH = "compiled"
    return HOT_PATH


if __name__ == "__main__":
    # `python protobase/native.py`: the compiled modules' source files, for the Makefile.
    print(" ".join(str(source_path(module).relative_to(Path.cwd())) for module in COMPILED_MODULES))
