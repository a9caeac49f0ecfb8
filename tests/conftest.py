"""Fixtures shared by the tests of the object layer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from protobase import MemoryStorage, ObjectSpace


@pytest.fixture
def space() -> Iterator[ObjectSpace]:
    """An ObjectSpace on a fresh MemoryStorage, closed afterwards."""
    with ObjectSpace(MemoryStorage()) as opened:
        yield opened
