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

from ..collections.ordering import sort_key
from ..errors import QueryError, ValidationError
from .expressions import OrderKey, field_reader
from .plans import PlanDescription, QueryPlan

# Typed Any so that the compiled form keeps each marker one boxed object: `part`
# below tests `is _UNORDERABLE`, and mypyc would re-box a `tuple[int]` at each use.
_UNORDERABLE: Any = (1 << 61,)
_NULL_HIGH: Any = (1 << 62,)
_NULL_LOW: Any = (-2,)
_UNORDERABLE_DESC: Any = (-1,)


@total_ordering
class _Reversed:
    """Wraps a sort key so that it orders descending (for keys of mixed directions)."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.key == other.key

    def __lt__(self, other: _Reversed) -> bool:
        return bool(other.key < self.key)

    __hash__ = None  # type: ignore[assignment]


def _value_key(read: Callable[[Any], Any], null: Any, unorderable: Any) -> Callable[[Any], Any]:
    def key(row: Any) -> Any:
        value = read(row)
        if value is None:
            return null
        try:
            return sort_key(value)
        except ValidationError:
            return unorderable

    return key


def row_key_function(keys: Sequence[OrderKey]) -> tuple[Callable[[Any], Any], bool]:
    """``(key, reverse)`` for ``sorted``: the sort key of a row for `keys`.

    When every key has one direction the row key is made of plain sort keys
    (descending runs ``sorted(..., reverse=True)``, which Python keeps
    stable); otherwise descending parts are wrapped in `_Reversed`. NULL
    markers sit outside every value's rank, so NULLs land first or last.
    """
    descending = {key.descending for key in keys}
    if len(descending) == 1:
        reverse = descending.pop()
        parts = []
        for key in keys:
            # With reverse=True the smallest key comes out last.
            last, first = (_NULL_LOW, _NULL_HIGH) if reverse else (_NULL_HIGH, _NULL_LOW)
            unorderable = _UNORDERABLE_DESC if reverse else _UNORDERABLE
            parts.append(
                _value_key(field_reader(key.path), last if key.nulls_last else first, unorderable)
            )
        if len(parts) == 1:
            return parts[0], reverse
        return (lambda row: tuple(part(row) for part in parts)), reverse

    def mixed_part(key: OrderKey) -> Callable[[Any], Any]:
        plain = _value_key(field_reader(key.path), None, _UNORDERABLE)
        null = (1,) if key.nulls_last else (-1,)

        def part(row: Any) -> Any:
            value_key = plain(row)
            if value_key is None:
                return null
            if value_key is _UNORDERABLE:  # after the values, before NULLs last
                return (0.5,)
            return (0, _Reversed(value_key) if key.descending else value_key)

        return part

    mixed = [mixed_part(key) for key in keys]
    return (lambda row: tuple(part(row) for part in mixed)), False


class OrderByPlan(QueryPlan):
    """Rows sorted by `keys`: ``["name", ("age", "desc")]``, F.name, -F.age."""

    def __init__(self, keys: Any = None, based_on: Any = None, limit: int | None = None) -> None:
        super().__init__(based_on)
        if self.based_on is None:
            raise QueryError("OrderByPlan needs based_on=")
        if isinstance(keys, (str, OrderKey)) or not isinstance(keys, (list, tuple)):
            keys = [keys]
        elif isinstance(keys, tuple) and len(keys) in (2, 3) and keys[1] in ("asc", "desc"):
            keys = [keys]  # one ("field", "desc") key, not two keys
        if not keys:
            raise QueryError("OrderByPlan needs at least one key")
        self.keys = [OrderKey.parse(key) for key in keys]
        if limit is not None and (type(limit) is not int or limit < 0):
            raise QueryError(f"OrderByPlan limit is a non-negative int, not {limit!r}")
        self.limit = limit
        self._key, self._reverse = row_key_function(self.keys)

    def _rows(self) -> Iterator[Any]:
        if self.limit is not None:
            return self._top(self.limit)
        assert self.based_on is not None
        return iter(sorted(self.based_on.execute(), key=self._key, reverse=self._reverse))

    def _top(self, limit: int) -> Iterator[Any]:
        assert self.based_on is not None
        pick = heapq.nlargest if self._reverse else heapq.nsmallest
        return iter(pick(limit, self.based_on.execute(), key=self._key))

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
