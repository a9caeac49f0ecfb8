"""Query plans: operators that stream rows.

Every plan takes ``based_on=`` (another plan, a collection, or a list of
rows) and ``execute()`` returns an iterator. Operators pull rows one at a
time; only the ones that must see all their input keep state (a sort, a
grouping, the right side of a join, the keys a DISTINCT has seen).

`explain()` returns the plan tree (`PlanDescription`) with estimated rows
and, after an execution, the actual rows each operator produced in its
last execution (counted as rows are pulled, so a partly consumed plan shows
how far it got).

This module holds the scan and the one-row-at-a-time operators; ORDER BY,
GROUP BY and JOIN live in `sorting`, `grouping` and `joins`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from mypy_extensions import mypyc_attr

from ..collections import CountedSet, Dictionary, HashDictionary, PersistentCollection
from ..collections.fields import parse_path, read_path
from ..collections.ordering import sort_key
from ..errors import QueryError, ValidationError
from . import planner
from .expressions import (
    And,
    Between,
    Compare,
    Contains,
    Expression,
    Field,
    In,
    IsNull,
    Not,
    Or,
    StartsWith,
    as_expression,
    same_loose,
)
from .rows import Row


@dataclass
class PlanDescription:
    """One node of `explain()`'s tree."""

    operator: str
    detail: str
    estimated_rows: int | None
    actual_rows: int | None
    children: list[PlanDescription] = field(default_factory=list)

    def walk(self) -> Iterator[PlanDescription]:
        """This node and every node below it, parents first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, operator: str) -> PlanDescription | None:
        """The first node (parents first) whose operator is `operator`."""
        return next((node for node in self.walk() if node.operator == operator), None)

    @property
    def uses_index(self) -> bool:
        return any(node.operator.startswith("Index") for node in self.walk())

    def render(self, depth: int = 0) -> str:
        counts = "estimated " + ("?" if self.estimated_rows is None else f"{self.estimated_rows:,}")
        if self.actual_rows is not None:
            counts += f", actual {self.actual_rows:,}"
        line = f"{'  ' * depth}{self.operator} {self.detail} [{counts} rows]".replace("  [", " [")
        return "\n".join([line, *(child.render(depth + 1) for child in self.children)])

    def __str__(self) -> str:
        return self.render()


def hashable_key(value: Any) -> Any:
    """A hashable key equal for values a collection treats as one key; None if unorderable."""
    try:
        return sort_key(value)
    except ValidationError:
        return None


def _count(value: int | None, factor: float) -> int | None:
    return None if value is None else int(value * factor)


@mypyc_attr(allow_interpreted_subclasses=True)  # applications may write their own plans
class QueryPlan:
    """A node of a query plan. Subclasses implement `_rows` and `_describe`."""

    based_on: QueryPlan | None

    def __init__(self, based_on: Any = None) -> None:
        self.based_on = None if based_on is None else as_plan(based_on)
        self.actual_rows: int | None = None

    def execute(self) -> Iterator[Any]:
        """The rows of this plan (a fresh iterator on every call)."""
        return self._counted(self._rows())

    def __iter__(self) -> Iterator[Any]:
        return self.execute()

    def _counted(self, rows: Iterator[Any]) -> Iterator[Any]:
        self.actual_rows = 0
        for row in rows:
            self.actual_rows += 1
            yield row

    def _rows(self) -> Iterator[Any]:
        raise NotImplementedError

    def _limited(self, limit: int) -> Iterator[Any]:
        """At most `limit` rows of this plan; operators that can stop early override it."""
        return islice(self.execute(), limit)

    def estimate(self) -> int | None:
        """Estimated rows (None when unknown)."""
        return None if self.based_on is None else self.based_on.estimate()

    def _describe(self, limit: int | None) -> tuple[str, str]:
        raise NotImplementedError

    def _children(self, limit: int | None) -> list[PlanDescription]:
        return [] if self.based_on is None else [self.based_on._explain(None)]

    def _explain(self, limit: int | None) -> PlanDescription:
        operator, detail = self._describe(limit)
        return PlanDescription(
            operator, detail, self.estimate(), self.actual_rows, self._children(limit)
        )

    def explain(self) -> PlanDescription:
        """The plan tree, with estimated and (after execution) actual rows."""
        return self._explain(None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}\n{self.explain()}>"


def as_plan(source: Any) -> QueryPlan:
    """A plan from a plan, a collection (its `as_query_plan`), or a list of rows."""
    if isinstance(source, QueryPlan):
        return source
    if isinstance(source, PersistentCollection):
        return CollectionPlan(source)
    if isinstance(source, (list, tuple)):
        return ValuesPlan(source)
    raise QueryError(
        f"a query reads a plan, a collection or a list of rows, not {type(source).__name__}"
    )


class CollectionPlan(QueryPlan):
    """The rows of a collection: a Dictionary's values, a List's or a Set's items."""

    def __init__(self, collection: PersistentCollection) -> None:
        super().__init__()
        self.collection = collection

    def _rows(self) -> Iterator[Any]:
        collection = self.collection
        if isinstance(collection, (Dictionary, HashDictionary)):
            return collection.values()
        if isinstance(collection, CountedSet):
            return collection.as_iterable()
        return collection.as_iterable()

    def estimate(self) -> int | None:
        return len(self.collection)

    def _describe(self, limit: int | None) -> tuple[str, str]:
        indexes = self.collection.indexed_fields
        suffix = f", indexes on {', '.join(indexes)}" if indexes else ""
        return "Scan", f"{type(self.collection).__name__}{suffix}"


class ValuesPlan(QueryPlan):
    """Rows given as a Python list."""

    def __init__(self, rows: Sequence[Any]) -> None:
        super().__init__()
        self.rows = list(rows)

    def _rows(self) -> Iterator[Any]:
        return iter(self.rows)

    def estimate(self) -> int | None:
        return len(self.rows)

    def _describe(self, limit: int | None) -> tuple[str, str]:
        return "Values", "a list of rows"


def selectivity(expr: Expression) -> float:
    """A rough fraction of rows `expr` keeps, for estimates of scans."""
    if isinstance(expr, Compare):
        return {"==": 0.1, "!=": 0.9}.get(expr.op, 1 / 3)
    if isinstance(expr, In):
        return min(1.0, 0.1 * len(expr.values))
    if isinstance(expr, (Between, Contains, StartsWith)):
        return 0.25
    if isinstance(expr, IsNull):
        return 0.1
    if isinstance(expr, Not):
        return 1 - selectivity(expr.part)
    if isinstance(expr, And):
        result = 1.0
        for part in expr.parts:
            result *= selectivity(part)
        return result
    if isinstance(expr, Or):
        keep = 1.0
        for part in expr.parts:
            keep *= 1 - selectivity(part)
        return 1 - keep
    return 0.5


class WherePlan(QueryPlan):
    """The rows for which `filter` is TRUE; uses the collection's indexes when it can."""

    def __init__(self, filter: Any = None, based_on: Any = None) -> None:
        if based_on is None:
            raise QueryError("WherePlan needs based_on= (a plan or a collection)")
        super().__init__(based_on)
        if filter is None:
            raise QueryError("WherePlan needs filter= (an Expression or a prefix list)")
        self.filter = as_expression(filter)
        self._lookup: planner.Lookup | None = None
        self._reason: str | None = None
        self._lean_candidates: int | None = None
        """Index candidates of the last run when it took the lean path (see `_rows`)."""

    def _plan_access(self) -> planner.Lookup | None:
        source = self.based_on
        if isinstance(source, CollectionPlan):
            self._lookup, self._reason = planner.choose_lookup(source.collection, self.filter)
            if self._lookup is not None and self._lean_candidates is not None:
                self._lookup.actual = self._lean_candidates
        else:
            self._lookup, self._reason = None, "the input is not a collection"
        return self._lookup

    def _rows(self) -> Iterator[Any]:
        source, condition = self.based_on, self.filter
        if type(condition) is Compare and condition.op == "==" and type(source) is CollectionPlan:
            lean = planner.unique_equality_rows(source.collection, condition)
            if lean is not None:
                # explain() plans it again, with the candidates counted here
                self._lookup, self._reason = None, None
                rows, self._lean_candidates = lean
                return rows
        self._lean_candidates = None
        lookup = self._plan_access()
        if lookup is None:
            assert self.based_on is not None
            return filter(self.filter.test, self.based_on.execute())
        source = self.based_on
        assert isinstance(source, CollectionPlan)
        rows = planner.fetch(source.collection, lookup)
        return rows if lookup.exact else filter(self.filter.test, rows)

    def estimate(self) -> int | None:
        if self._reason is None:
            self._plan_access()
        if self._lookup is not None:
            return self._lookup.estimate
        assert self.based_on is not None
        return _count(self.based_on.estimate(), selectivity(self.filter))

    def _describe(self, limit: int | None) -> tuple[str, str]:
        if self._reason is None:
            self._plan_access()
        how = "by index" if self._lookup is not None else f"by scan: {self._reason}"
        return "Where", f"{self.filter} ({how})"

    def _children(self, limit: int | None) -> list[PlanDescription]:
        if self._lookup is None:
            return super()._children(limit)
        source = self.based_on
        assert isinstance(source, CollectionPlan)
        return [
            PlanDescription(
                "IndexFetch",
                f"rows of {type(source.collection).__name__} in collection order; "
                + (
                    "the index answers the filter exactly"
                    if self._lookup.exact
                    else "the filter re-checks each"
                ),
                self._lookup.estimate,
                self._lookup.actual,
                [_describe_lookup(self._lookup)],
            )
        ]


def _describe_lookup(lookup: planner.Lookup) -> PlanDescription:
    operator, detail, parts = lookup.describe()
    return PlanDescription(
        operator, detail, lookup.estimate, lookup.actual, [_describe_lookup(p) for p in parts]
    )


def _projection(spec: Any) -> Callable[[Any], Any]:
    if isinstance(spec, str):
        path = parse_path(spec)
        return lambda row: read_path(row, path)
    if isinstance(spec, Field):
        return spec.read
    if isinstance(spec, Expression):
        return spec.evaluate
    if callable(spec):
        return spec
    raise QueryError(
        f"a selected field is a field name, F.field, an Expression or a function of the "
        f"row, not {spec!r}"
    )


class SelectPlan(QueryPlan):
    """Rows of named fields: ``fields={"name": "name", "twice": lambda r: r.age * 2}``.

    A list of field names selects them under their own (dotted) names.
    """

    def __init__(self, fields: Any = None, based_on: Any = None) -> None:
        super().__init__(based_on)
        if self.based_on is None:
            raise QueryError("SelectPlan needs based_on=")
        if isinstance(fields, Mapping):
            named = dict(fields)
        elif isinstance(fields, (list, tuple)):
            named = {name: name for name in fields}
        else:
            raise QueryError(f"SelectPlan fields= is a dict or a list of names, not {fields!r}")
        if not named or not all(isinstance(name, str) for name in named):
            raise QueryError(f"SelectPlan needs at least one field, named by a str: {fields!r}")
        self.fields = named
        self._projections = [(name, _projection(spec)) for name, spec in named.items()]

    def _project(self, row: Any) -> Row:
        return Row({name: project(row) for name, project in self._projections})

    def _rows(self) -> Iterator[Any]:
        assert self.based_on is not None
        return map(self._project, self.based_on.execute())

    def _limited(self, limit: int) -> Iterator[Any]:
        assert self.based_on is not None
        return self._counted(map(self._project, self.based_on._limited(limit)))

    def _describe(self, limit: int | None) -> tuple[str, str]:
        return "Select", ", ".join(self.fields)

    def _children(self, limit: int | None) -> list[PlanDescription]:
        assert self.based_on is not None
        return [self.based_on._explain(limit)]


def _count_argument(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise QueryError(f"{what} is a non-negative int, not {value!r}")
    return value


class LimitPlan(QueryPlan):
    """The first `limit` rows; an ORDER BY below keeps only that many in a heap."""

    def __init__(self, limit: Any = None, based_on: Any = None) -> None:
        super().__init__(based_on)
        if self.based_on is None:
            raise QueryError("LimitPlan needs based_on=")
        self.limit = _count_argument(limit, "LimitPlan limit")

    def _rows(self) -> Iterator[Any]:
        assert self.based_on is not None
        return self.based_on._limited(self.limit)

    def _limited(self, limit: int) -> Iterator[Any]:
        assert self.based_on is not None
        return self._counted(self.based_on._limited(min(limit, self.limit)))

    def estimate(self) -> int | None:
        below = super().estimate()
        return self.limit if below is None else min(below, self.limit)

    def _describe(self, limit: int | None) -> tuple[str, str]:
        return "Limit", str(self.limit)

    def _children(self, limit: int | None) -> list[PlanDescription]:
        assert self.based_on is not None
        own = self.limit if limit is None else min(limit, self.limit)
        return [self.based_on._explain(own)]


class OffsetPlan(QueryPlan):
    """The rows after the first `offset`."""

    def __init__(self, offset: Any = None, based_on: Any = None) -> None:
        super().__init__(based_on)
        if self.based_on is None:
            raise QueryError("OffsetPlan needs based_on=")
        self.offset = _count_argument(offset, "OffsetPlan offset")

    def _rows(self) -> Iterator[Any]:
        assert self.based_on is not None
        return islice(self.based_on.execute(), self.offset, None)

    def _limited(self, limit: int) -> Iterator[Any]:
        assert self.based_on is not None
        rows = self.based_on._limited(limit + self.offset)
        return self._counted(islice(rows, self.offset, None))

    def estimate(self) -> int | None:
        below = super().estimate()
        return None if below is None else max(below - self.offset, 0)

    def _describe(self, limit: int | None) -> tuple[str, str]:
        return "Offset", str(self.offset)

    def _children(self, limit: int | None) -> list[PlanDescription]:
        assert self.based_on is not None
        return [self.based_on._explain(None if limit is None else limit + self.offset)]


class DistinctPlan(QueryPlan):
    """Rows whose value (or whose `fields`) differ from every earlier row's.

    Values are the same when a collection would treat them as one key
    (``1`` and ``1.0``; NaN and NaN); values that cannot be keys (lists,
    dicts) are compared part by part with the same rule (`same_loose`).
    """

    def __init__(self, based_on: Any = None, fields: Sequence[str] | None = None) -> None:
        super().__init__(based_on)
        if self.based_on is None:
            raise QueryError("DistinctPlan needs based_on=")
        if isinstance(fields, str):
            fields = [fields]
        self.fields = None if fields is None else [parse_path(f) for f in fields]

    def _key(self, row: Any) -> Any:
        if self.fields is None:
            return row
        return tuple(read_path(row, path) for path in self.fields)

    def _rows(self) -> Iterator[Any]:
        assert self.based_on is not None
        seen: set[Any] = set()
        loose: list[Any] = []
        for row in self.based_on.execute():
            value = self._key(row)
            key = hashable_key(value)
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            else:
                if any(same_loose(value, other) for other in loose):
                    continue
                loose.append(value)
            yield row

    def _describe(self, limit: int | None) -> tuple[str, str]:
        what = "rows" if self.fields is None else ", ".join(".".join(p) for p in self.fields)
        return "Distinct", what


PersistentCollection._query_plan_factory = CollectionPlan
