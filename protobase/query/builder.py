"""The fluent builder: ``tr.query(people).where(F.age > 25).order_by(-F.age).limit(10)``.

Each call returns a new `Query`; nothing runs until a terminal call
(`to_list`, `first`, `count`, `exists`, iteration) or `explain`. The calls
apply in the order written, as a pipeline, and compile to the plans of
`plans`, `sorting`, `grouping` and `joins`: ``.where`` right after the
source (or after another ``.where``) is planned against the collection's
indexes; ``.limit`` after ``.order_by`` keeps only the top rows in a heap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..errors import QueryError
from .expressions import And, as_expression
from .grouping import GroupByPlan
from .joins import JoinPlan
from .plans import (
    DistinctPlan,
    LimitPlan,
    OffsetPlan,
    PlanDescription,
    QueryPlan,
    SelectPlan,
    WherePlan,
    as_plan,
)
from .sorting import OrderByPlan

_MISSING = object()


class Query:
    """An immutable description of a query; terminal calls run it."""

    __slots__ = ("_make", "_plan")

    def __init__(self, source: Any, _make: Callable[[], QueryPlan] | None = None) -> None:
        if _make is None:
            plan = as_plan(source)
            _make = lambda: plan  # noqa: E731
        self._make: Callable[[], QueryPlan] = _make
        self._plan: QueryPlan | None = None

    @classmethod
    def _from(cls, make: Callable[[], QueryPlan]) -> Query:
        return cls(None, make)

    @property
    def plan(self) -> QueryPlan:
        """The plan this query runs (built once; `explain` shows its last execution)."""
        if self._plan is None:
            self._plan = self._make()
        return self._plan

    # -- building -----------------------------------------------------------------

    def where(self, condition: Any) -> Query:
        """Keep rows for which `condition` (an Expression or a prefix list) is TRUE."""
        expr = as_expression(condition)
        make = self._make

        def build() -> QueryPlan:
            below = make()
            if isinstance(below, WherePlan):  # where().where(): one filter, one index choice
                return WherePlan(filter=And([below.filter, expr]), based_on=below.based_on)
            return WherePlan(filter=expr, based_on=below)

        return Query._from(build)

    def order_by(self, *keys: Any) -> Query:
        """Sort by fields: ``"name"``, ``F.name``, ``-F.age``, ``("age", "desc")``."""
        if not keys:
            raise QueryError("order_by needs at least one key")
        make = self._make
        return Query._from(lambda: OrderByPlan(keys=list(keys), based_on=make()))

    def select(self, *names: str, **fields: Any) -> Query:
        """Rows of named values: ``select("name", twice=lambda r: r.age * 2, city=F.a.city)``."""
        spec: dict[str, Any] = {name: name for name in names}
        spec.update(fields)
        if not spec:
            raise QueryError("select needs at least one field")
        make = self._make
        return Query._from(lambda: SelectPlan(fields=spec, based_on=make()))

    def limit(self, count: int) -> Query:
        make = self._make
        return Query._from(lambda: LimitPlan(limit=count, based_on=make()))

    def offset(self, count: int) -> Query:
        make = self._make
        return Query._from(lambda: OffsetPlan(offset=count, based_on=make()))

    def distinct(self, *fields: str) -> Query:
        """Drop rows equal to an earlier one (or with equal `fields`)."""
        make = self._make
        return Query._from(
            lambda: DistinctPlan(based_on=make(), fields=list(fields) if fields else None)
        )

    def join(self, other: Any, on: Any, how: str = "inner") -> Query:
        """Pair rows with `other`'s (a collection, plan or Query); rows get .left and .right."""
        right = other.plan if isinstance(other, Query) else as_plan(other)
        make = self._make
        return Query._from(
            lambda: JoinPlan(based_on=make(), join_query=right, on=on, join_type=how)
        )

    def group_by(self, *fields: str, **aggregates: tuple[str, str | None]) -> Query:
        """Group on `fields`: ``group_by("dept", total=("sum", "amount"), n=("count", None))``."""
        make = self._make
        return Query._from(
            lambda: GroupByPlan(group_fields=list(fields), aggregates=aggregates, based_on=make())
        )

    # -- running --------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        return self.plan.execute()

    def to_list(self) -> list[Any]:
        return list(self.plan.execute())

    def first(self, default: Any = None) -> Any:
        """The first row, or `default` when there is none."""
        return next(iter(self.limit(1)), default)

    def count(self) -> int:
        """The number of rows."""
        return sum(1 for _ in self.plan.execute())

    def exists(self) -> bool:
        return next(iter(self.limit(1)), _MISSING) is not _MISSING

    def explain(self) -> PlanDescription:
        """The plan tree; after a run, with the rows each operator produced."""
        return self.plan.explain()

    def __repr__(self) -> str:
        return f"<Query\n{self.explain()}>"
