"""Outside programs the tests use (chromium, promtool, prometheus, docker-compose, moto_server),
and scripts of the repository that are not in a package.

`make test` installs each one when it is missing. Under CI (``CI=true``) a
test whose program is missing fails; elsewhere it is skipped, and the skip
says which program and how to get it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest


def require(*names: str) -> str:
    """The path of the first of `names` found (beside this Python first, then on PATH)."""
    for name in names:
        beside = Path(sys.executable).with_name(name)
        if beside.exists():
            return str(beside)
        found = shutil.which(name)
        if found is not None:
            return found
    message = f"{names[0]} is not installed; `make test` installs it"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def load_script(path: Path, name: str) -> ModuleType:
    """The module of the script at `path` (a file that is not part of a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
