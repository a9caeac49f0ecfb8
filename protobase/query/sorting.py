"""ORDER BY: a stable sort on several keys; with a limit, a top-k heap.

Order of values: the total order of collection keys (`collections.ordering`:
None < numbers < NaN < str < bytes < tuples < datetimes < ...), so rows of
mixed types sort deterministically instead of raising. NULL (None or
missing) goes last by default, in both directions; ``nulls_first`` puts it
first. Values that cannot be keys (lists, dicts) sort after every other
non-NULL value, in their input order. Ties keep their input order, also
with a limit (``heapq.nsmallest`` is stable), so ``ORDER BY ... LIMIT k`` is
exactly the first k rows of the full sort, in O(n log k).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from functools import total_ordering
from typing import Any

from ..collections.fields import read_path
from ..collections.ordering import sort_key
from ..errors import QueryError, ValidationError
from .expressions import OrderKey
from .plans import PlanDescription, QueryPlan

_UNORDERABLE = (1 << 62,)


def _value_key(value: Any) -> Any:
    try:
        return sort_key(value)
    except ValidationError:
        return _UNORDERABLE


@total_ordering
class _Reversed:
    """Wraps a sort key so that it orders descending."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.key == other.key

    def __lt__(self, other: _Reversed) -> bool:
        return bool(other.key < self.key)

    __hash__ = None  # type: ignore[assignment]


def row_key_function(keys: Sequence[OrderKey]) -> Callable[[Any], Any]:
    """The sort key of a row for `keys` (see the module docstring)."""

    def part(key: OrderKey) -> Callable[[Any], Any]:
        path, descending = key.path, key.descending
        null = (1,) if key.nulls_last else (-1,)

        def one(row: Any) -> Any:
            value = read_path(row, path)
            if value is None:
                return null
            vk = _value_key(value)
            return (0, _Reversed(vk) if descending else vk)

        return one

    parts = [part(key) for key in keys]
    if len(parts) == 1:
        return parts[0]
    return lambda row: tuple(p(row) for p in parts)


class OrderByPlan(QueryPlan):
    """Rows sorted by `keys`: ``["name", ("age", "desc")]``, F.name, -F.age."""

    def __init__(self, keys: Any = None, based_on: Any = None, limit: int | None = None) -> None:
        super().__init__(based_on)
        if self.based_on is None:
            raise QueryError("OrderByPlan needs based_on=")
        if isinstance(keys, (str, OrderKey)) or not isinstance(keys, (list, tuple)):
            keys = [keys]
        if not keys:
            raise QueryError("OrderByPlan needs at least one key")
        self.keys = [OrderKey.parse(key) for key in keys]
        if limit is not None and (type(limit) is not int or limit < 0):
            raise QueryError(f"OrderByPlan limit is a non-negative int, not {limit!r}")
        self.limit = limit
        self._key = row_key_function(self.keys)

    def _rows(self) -> Iterator[Any]:
        if self.limit is not None:
            return self._top(self.limit)
        assert self.based_on is not None
        return iter(sorted(self.based_on.execute(), key=self._key))

    def _top(self, limit: int) -> Iterator[Any]:
        assert self.based_on is not None
        return iter(heapq.nsmallest(limit, self.based_on.execute(), key=self._key))

    def _limited(self, limit: int) -> Iterator[Any]:
        own = limit if self.limit is None else min(limit, self.limit)
        return self._counted(self._top(own))

    def estimate(self) -> int | None:
        below = super().estimate()
        if self.limit is None or below is None:
            return below
        return min(below, self.limit)

    def _describe(self, limit: int | None) -> tuple[str, str]:
        keys = ", ".join(str(key) for key in self.keys)
        top = (
            limit if self.limit is None else self.limit if limit is None else min(limit, self.limit)
        )
        if top is None:
            return "OrderBy", f"{keys} (stable sort)"
        return "OrderBy", f"{keys} (top {top} in a heap)"

    def _children(self, limit: int | None) -> list[PlanDescription]:
        assert self.based_on is not None
        return [self.based_on._explain(None)]
