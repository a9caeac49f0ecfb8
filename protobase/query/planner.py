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
O(log n) (`Index.count`), so estimates for single lookups are exact (an
equality on a unique index is estimated at 1 without counting); the
planner falls back to a scan when the candidates would exceed a third of
the collection (and more than SMALL_RESULT rows).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from operator import itemgetter
from typing import Any

from ..collections.base import PersistentCollection
from ..collections.fields import path_text
from ..collections.indexes import HIGH, OPEN_HIGH, Index, above, below
from ..collections.ordering import sort_key
from ..errors import ValidationError
from .expressions import And, Between, Compare, Expression, Field, In, IsNull, Not, Or

SCAN_FRACTION = 3
SMALL_RESULT = 32
"""Use indexes only when they narrow the rows to at most 1/SCAN_FRACTION of them
(or to at most SMALL_RESULT rows, which costs little either way)."""

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

    _estimate: int | None = None
    actual: int | None = None
    exact = False
    """True when the candidates are exactly the rows the condition matches
    (no re-check needed); see `_exact_value`."""

    @property
    def estimate(self) -> int:
        """Rows this lookup yields at most."""
        assert self._estimate is not None
        return self._estimate

    def candidates(self, collection: PersistentCollection) -> dict[Any, Any]:
        """``{order key: identity}`` of the rows that may match."""
        raise NotImplementedError

    def describe(self) -> tuple[str, str, list[Lookup]]:
        raise NotImplementedError


class IndexRange(Lookup):
    """The entries of one index between two tree positions."""

    def __init__(
        self,
        index: Index,
        low: Any,
        high: Any,
        label: Any,
        at_most: int | None = None,
        single_value: bool | None = None,
    ) -> None:
        self.index, self.low, self.high, self.label = index, low, high, label
        self.empty = not low < high
        self._estimate = 0 if self.empty else at_most
        if single_value is None:
            single_value = high == (*low, HIGH)
        self.single_value = single_value
        """All entries share one value, so the index yields them in collection order."""

    @property
    def estimate(self) -> int:
        """Exact, counted in O(log n) on first use (or known: one value of a unique index)."""
        if self._estimate is None:
            self._estimate = self.index.count(self.low, self.high)
        return self._estimate

    def pairs(self, rows: bool = False) -> list[tuple[Any, Any]]:
        """``(order key, identity)`` of the candidates, in the collection's order.

        With `rows` (a covering index), ``(order key, row)`` instead.
        """
        index = self.index
        if self.empty:
            found = []
        elif self._estimate == 1 and self.single_value:  # one value of a unique index
            first = (index.first_row if rows else index.first)(self.low, self.high)
            found = [] if first is None else [first]
        else:
            found = list((index.scan_rows if rows else index.scan)(self.low, self.high))
        if not self.single_value:  # the index orders them by value first
            found.sort(key=itemgetter(0))
        self.actual = len(found)
        return found

    def candidates(self, collection: PersistentCollection) -> dict[Any, Any]:
        found = {} if self.empty else dict(self.index.scan(self.low, self.high))
        self.actual = len(found)
        return found

    def describe(self) -> tuple[str, str, list[Lookup]]:
        # The label is the expression (or text) this range answers, formatted only here.
        spec = self.index.spec
        kind = "covering index" if spec.covering else "index"
        return "IndexRange", f"{self.label} ({kind} on {path_text(spec.path)!r})", []


class IndexIntersect(Lookup):
    def __init__(self, parts: list[Lookup]) -> None:
        self.parts = parts
        self._estimate = min(part.estimate for part in parts)

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
        self._estimate = sum(part.estimate for part in parts)

    def candidates(self, collection: PersistentCollection) -> dict[Any, Any]:
        found: dict[Any, Any] = {}
        for part in self.parts:
            found.update(part.candidates(collection))
        self.actual = len(found)
        return found

    def describe(self) -> tuple[str, str, list[Lookup]]:
        return "IndexUnion", "|", list(self.parts)


_EXACT_TYPES = frozenset({int, bool, str, bytes, dt.datetime, dt.date, dt.timedelta, uuid.UUID})


def _exact_value(value: Any) -> bool:
    """True when Python's comparisons of `value` with every value of its sort rank
    agree with the index order, so a range lookup needs no re-check.

    Numbers (but NaN), strings, bytes, dates, times and UUIDs qualify; tuples
    do not (Python compares them element by element and may refuse mixed
    types), nor do objects (Python does not order them at all).
    """
    kind = type(value)
    if kind in _EXACT_TYPES:
        return True
    if kind is float:
        return bool(value == value)  # not NaN
    if kind is Decimal:
        return not value.is_nan()
    return False


def _exactly(lookup: Lookup, exact: bool) -> Lookup:
    lookup.exact = exact
    return lookup


def _range(index: Index, op: str, value: Any, label: Any) -> Lookup | None:
    key = _field_key(value)
    if key is None:
        return None
    exact = _exact_value(value)
    if op == "==":
        unique = 1 if index.spec.unique else None
        return _exactly(IndexRange(index, below(key), above(key), label, unique, True), exact)
    rank_low, rank_high = (key[0],), (key[0] + 1,)  # every value of the rank lies between
    if type(value) is tuple:
        # Python orders (5, [2]) after (4,) element by element, but the index
        # files a tuple holding a list with the values it cannot order.
        return None
    bounds = {
        ">": (above(key), rank_high),
        ">=": (below(key), rank_high),
        "<": (rank_low, below(key)),
        "<=": (rank_low, above(key)),
    }.get(op)
    if bounds is None:
        return None
    return _exactly(IndexRange(index, bounds[0], bounds[1], label), exact)


def lookup_for(collection: PersistentCollection, expr: Expression) -> Lookup | None:
    """The index lookup that answers (a superset of) `expr`, or None."""
    if isinstance(expr, (Compare, In, Between, IsNull)):
        index = collection._pb_index_for(expr.path)
        if index is None:
            return None
        if isinstance(expr, Compare):
            if isinstance(expr.value, Field):
                return None
            return _range(index, expr.op, expr.value, expr)
        if isinstance(expr, IsNull):
            return _exactly(IndexRange(index, below(NULL_KEY), above(NULL_KEY), expr), True)
        if isinstance(expr, Between):
            low, high = _field_key(expr.low), _field_key(expr.high)
            if low is None or high is None:
                return None
            if type(expr.low) is tuple or type(expr.high) is tuple:
                return None  # see _range
            if low[0] != high[0]:  # different type ranks: nothing is between them
                return _exactly(IndexRange(index, below(low), below(low), expr), True)
            exact = _exact_value(expr.low) and _exact_value(expr.high)
            return _exactly(IndexRange(index, below(low), above(high), expr), exact)
        keys = [_field_key(value) for value in expr.values if value is not None]
        if any(key is None for key in keys):
            return None
        unique = 1 if index.spec.unique else None
        listed = [value for value in expr.values if value is not None]
        parts: list[Lookup] = [
            _exactly(
                IndexRange(index, below(key), above(key), f"{expr.field} == {value!r}", unique),
                _exact_value(value),
            )
            for key, value in zip(keys, listed, strict=True)
        ]
        if not parts:
            return _exactly(IndexRange(index, below(NULL_KEY), below(NULL_KEY), expr), True)
        return parts[0] if len(parts) == 1 else _union(parts)
    if isinstance(expr, Not) and isinstance(expr.part, IsNull):
        index = collection._pb_index_for(expr.part.path)
        if index is None:
            return None
        return _exactly(IndexRange(index, above(NULL_KEY), OPEN_HIGH, expr), True)
    if isinstance(expr, And):
        found = [lookup for lookup in (lookup_for(collection, p) for p in expr.parts) if lookup]
        if not found:
            return None
        found.sort(key=lambda lookup: lookup.estimate)
        smallest = found[0].estimate
        # Intersect lookups that are not much larger than the smallest; the
        # filter checks the rest on the fetched rows anyway.
        kept = [lookup for lookup in found if lookup.estimate <= 8 * max(smallest, 16)]
        exact = len(kept) == len(expr.parts) and all(lookup.exact for lookup in kept)
        if len(kept) == 1:
            # One part alone answers an AND exactly only when it is the whole AND.
            return _exactly(kept[0], exact)
        return _exactly(IndexIntersect(kept), exact)
    if isinstance(expr, Or):
        parts = []
        for part in expr.parts:
            lookup = lookup_for(collection, part)
            if lookup is None:
                return None
            parts.append(lookup)
        return _union(parts)
    return None


def _union(parts: list[Lookup]) -> Lookup:
    return _exactly(IndexUnion(parts), all(part.exact for part in parts))


def choose_lookup(collection: PersistentCollection, expr: Expression) -> tuple[Lookup | None, str]:
    """The lookup to use (None: scan) and why."""
    if not collection._indexes:
        return None, "no index on the collection"
    lookup = lookup_for(collection, expr)
    if lookup is None:
        return None, "no index answers this condition"
    limit = max(len(collection) // SCAN_FRACTION, SMALL_RESULT)
    if lookup.estimate > limit:
        return None, (
            f"the index would yield about {lookup.estimate:,} of {len(collection):,} rows; "
            "a scan is cheaper"
        )
    return lookup, "index"


def fetch(collection: PersistentCollection, lookup: Lookup) -> Iterator[Any]:
    """The candidate rows of `lookup`, in the collection's order.

    A range of a covering index yields its rows itself: none is read from
    the collection.
    """
    if isinstance(lookup, IndexRange) and lookup.index.spec.covering:
        return iter([row for _, row in lookup.pairs(rows=True)])
    if isinstance(lookup, IndexRange):
        pairs = lookup.pairs()
    else:
        pairs = sorted(lookup.candidates(collection).items(), key=itemgetter(0))
    if len(pairs) == 1:
        order_keys, identities = [pairs[0][0]], [pairs[0][1]]
    else:
        order_keys = [order for order, _ in pairs]
        identities = [identity for _, identity in pairs]
    return collection._pb_fetch(order_keys, identities)  # type: ignore[attr-defined]


def unique_equality_rows(
    collection: PersistentCollection, expr: Compare
) -> tuple[Iterator[Any], int] | None:
    """The rows of ``field == value`` through a unique index, in one descent; None otherwise.

    The lean path of the commonest indexed query: no lookup objects and no
    estimate (a unique index yields at most one row, always under the scan
    threshold). It answers exactly what `choose_lookup` and `fetch` would,
    with the number of candidates the index gave (0 or 1); None when the
    collection has no unique index on the field or the value is not one an
    index can look up.
    """
    index = collection._pb_index_for(expr.path)
    if index is None or not index.spec.unique:
        return None
    value = expr.value
    if value is None or isinstance(value, Field):
        return None
    key = _field_key(value)
    if key is None:
        return None
    if index.spec.covering:
        hit = index.first_row(below(key), above(key))
        if hit is None:
            return iter(()), 0
        rows: Iterator[Any] = iter((hit[1],))
    else:
        hit = index.first(below(key), above(key))
        if hit is None:
            return iter(()), 0
        rows = collection._pb_fetch([hit[0]], [hit[1]])  # type: ignore[attr-defined]
    return (rows if _exact_value(value) else filter(expr.test, rows)), 1
