"""`cluster/raft` is a library of its own: it imports nothing from `protobase`
(the project's package boundaries, docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

IMPORT_EVERY_MODULE = r"""
import importlib
import importlib.abc
import pkgutil
import sys


class RefuseProtobase(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "protobase" or name.startswith("protobase."):
            raise ImportError(f"cluster.raft imported {name}")
        return None


sys.meta_path.insert(0, RefuseProtobase())
import cluster.raft

names = ["cluster.raft"] + [
    info.name for info in pkgutil.walk_packages(cluster.raft.__path__, "cluster.raft.")
]
for name in names:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m == "protobase" or m.startswith("protobase."))
assert not leaked, leaked
print(" ".join(names))
"""


def test_no_module_of_the_raft_library_imports_protobase() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_MODULE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split())
    # The walk found the modules (an empty walk would prove nothing).
    assert {"cluster.raft.log", "cluster.raft.node", "cluster.raft.examples.kv"} <= imported
