"""The planner: how a WherePlan reads an indexed collection.

For a filter over a collection that has indexes, the planner turns the
parts of the condition an index can answer into index lookups:

- ``==``, ``in`` (a union of equalities), ``>``, ``>=``, ``<``, ``<=``,
  ``between`` and ``is_null`` on an indexed field, with a value that can be
  ordered (``sort_key``); ``~is_null`` too;
- ``a & b``: the index lookups of the parts it can answer, intersected
  (parts it cannot answer are left to the filter);
- ``a | b``: the union of both sides' lookups, when every side can be
  answered.

Ranges stay inside the value's own type rank (numbers with numbers, str
with str), because values of other types never compare TRUE (see
`expressions`). An index answers with *candidates*: identities of rows that
may match. The rows are then fetched in the collection's own order and the
whole condition is checked on each, so an indexed plan returns exactly the
rows of a scan, in the same order. Counting the entries of a range costs
O(log n) (`Index.count`), so estimates for single lookups are exact; the
planner falls back to a scan when the candidates would exceed a third of
the collection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..collections.base import PersistentCollection
from ..collections.fields import path_text
from ..collections.indexes import OPEN_HIGH, Index, above, below
from ..collections.ordering import sort_key
from ..errors import ValidationError
from .expressions import And, Between, Compare, Expression, Field, In, IsNull, Not, Or

SCAN_FRACTION = 3
"""Use indexes only when they narrow the rows to at most 1/SCAN_FRACTION of them."""

NULL_KEY = sort_key(None)


def _field_key(value: Any) -> Any:
    """The sort key of a query value an index can look up, or None."""
    if value is None:
        return None
    try:
        return sort_key(value)
    except ValidationError:
        return None


class Lookup:
    """A node of an index access: yields candidate identities."""

    estimate: int
    actual: int | None = None

    def candidates(self, collection: PersistentCollection) -> dict[Any, Any]:
        """``{order key: identity}`` of the rows that may match."""
        raise NotImplementedError

    def describe(self) -> tuple[str, str, list[Lookup]]:
        raise NotImplementedError


class IndexRange(Lookup):
    """The entries of one index between two tree positions."""

    def __init__(self, index: Index, low: Any, high: Any, label: str) -> None:
        self.index, self.low, self.high, self.label = index, low, high, label
        self.estimate = index.count(low, high) if low < high else 0

    def candidates(self, collection: PersistentCollection) -> dict[Any, Any]:
        order = collection._pb_identity_order  # type: ignore[attr-defined]
        found = (
            {order(identity): identity for identity in self.index.scan(self.low, self.high)}
            if self.low < self.high
            else {}
        )
        self.actual = len(found)
        return found

    def describe(self) -> tuple[str, str, list[Lookup]]:
        return "IndexRange", f"{self.label} (index on {path_text(self.index.spec.path)!r})", []


class IndexIntersect(Lookup):
    def __init__(self, parts: list[Lookup]) -> None:
        self.parts = parts
        self.estimate = min(part.estimate for part in parts)

    def candidates(self, collection: PersistentCollection) -> dict[Any, Any]:
        ordered = sorted(self.parts, key=lambda part: part.estimate)
        found = ordered[0].candidates(collection)
        for part in ordered[1:]:
            if not found:
                break
            other = part.candidates(collection)
            found = {key: identity for key, identity in found.items() if key in other}
        self.actual = len(found)
        return found

    def describe(self) -> tuple[str, str, list[Lookup]]:
        return "IndexIntersect", "&", list(self.parts)


class IndexUnion(Lookup):
    def __init__(self, parts: list[Lookup]) -> None:
        self.parts = parts
        self.estimate = sum(part.estimate for part in parts)

    def candidates(self, collection: PersistentCollection) -> dict[Any, Any]:
        found: dict[Any, Any] = {}
        for part in self.parts:
            found.update(part.candidates(collection))
        self.actual = len(found)
        return found

    def describe(self) -> tuple[str, str, list[Lookup]]:
        return "IndexUnion", "|", list(self.parts)


def _range(index: Index, op: str, value: Any, label: str) -> Lookup | None:
    key = _field_key(value)
    if key is None:
        return None
    rank_low, rank_high = below((key[0],)), below((key[0] + 1,))
    bounds = {
        "==": (below(key), above(key)),
        ">": (above(key), rank_high),
        ">=": (below(key), rank_high),
        "<": (rank_low, below(key)),
        "<=": (rank_low, above(key)),
    }.get(op)
    if bounds is None:
        return None
    return IndexRange(index, bounds[0], bounds[1], label)


def lookup_for(collection: PersistentCollection, expr: Expression) -> Lookup | None:
    """The index lookup that answers (a superset of) `expr`, or None."""
    if isinstance(expr, (Compare, In, Between, IsNull)):
        index = collection._pb_index_for(expr.path)
        if index is None:
            return None
        if isinstance(expr, Compare):
            if isinstance(expr.value, Field):
                return None
            return _range(index, expr.op, expr.value, str(expr))
        if isinstance(expr, IsNull):
            return IndexRange(index, below(NULL_KEY), above(NULL_KEY), str(expr))
        if isinstance(expr, Between):
            low, high = _field_key(expr.low), _field_key(expr.high)
            if low is None or high is None:
                return None
            if low[0] != high[0]:  # different type ranks: nothing is between them
                return IndexRange(index, below(low), below(low), str(expr))
            return IndexRange(index, below(low), above(high), str(expr))
        keys = [_field_key(value) for value in expr.values if value is not None]
        if any(key is None for key in keys):
            return None
        parts: list[Lookup] = [
            IndexRange(index, below(key), above(key), f"{expr.field} == {value!r}")
            for key, value in zip(keys, [v for v in expr.values if v is not None], strict=True)
        ]
        if not parts:
            return IndexRange(index, below(NULL_KEY), below(NULL_KEY), str(expr))
        return parts[0] if len(parts) == 1 else IndexUnion(parts)
    if isinstance(expr, Not) and isinstance(expr.part, IsNull):
        index = collection._pb_index_for(expr.part.path)
        if index is None:
            return None
        return IndexRange(index, above(NULL_KEY), OPEN_HIGH, str(expr))
    if isinstance(expr, And):
        found = [lookup for lookup in (lookup_for(collection, p) for p in expr.parts) if lookup]
        if not found:
            return None
        found.sort(key=lambda lookup: lookup.estimate)
        smallest = found[0].estimate
        # Intersect lookups that are not much larger than the smallest; the
        # filter checks the rest on the fetched rows anyway.
        kept = [lookup for lookup in found if lookup.estimate <= 8 * max(smallest, 16)]
        return kept[0] if len(kept) == 1 else IndexIntersect(kept)
    if isinstance(expr, Or):
        parts = []
        for part in expr.parts:
            lookup = lookup_for(collection, part)
            if lookup is None:
                return None
            parts.append(lookup)
        return IndexUnion(parts)
    return None


def choose_lookup(collection: PersistentCollection, expr: Expression) -> tuple[Lookup | None, str]:
    """The lookup to use (None: scan) and why."""
    if not collection._indexes:
        return None, "no index on the collection"
    lookup = lookup_for(collection, expr)
    if lookup is None:
        return None, "no index answers this condition"
    limit = max(len(collection) // SCAN_FRACTION, 1)
    if lookup.estimate > limit:
        return None, (
            f"the index would yield about {lookup.estimate:,} of {len(collection):,} rows; "
            "a scan is cheaper"
        )
    return lookup, "index"


def fetch(collection: PersistentCollection, lookup: Lookup) -> Iterator[Any]:
    """The candidate rows of `lookup`, in the collection's order."""
    found = lookup.candidates(collection)
    identities = [found[key] for key in sorted(found)]
    return collection._pb_fetch(identities)  # type: ignore[attr-defined]
