"""Backends the storage conformance suite runs against.

To add a backend, add one entry to `BACKENDS`: its test id and a factory that
receives pytest's ``tmp_path`` (a fresh, empty directory for each test) and
returns an open, empty `Storage`. The `storage` fixture closes it afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from protobase import MemoryStorage, StandaloneFileStorage, Storage

BACKENDS: dict[str, Callable[[Path], Storage]] = {
    "memory": lambda tmp_path: MemoryStorage(),
    "file": lambda tmp_path: StandaloneFileStorage(tmp_path / "db"),
}


@pytest.fixture(params=list(BACKENDS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    opened = BACKENDS[request.param](tmp_path)
    try:
        yield opened
    finally:
        opened.close()
