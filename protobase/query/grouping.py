"""GROUP BY: hash aggregation over one or more fields.

``GroupByPlan(group_fields=["dept"], aggregates={"total": ("sum", "amount"),
"n": ("count", None)}, based_on=p)`` yields one `Row` per group, in the
order the groups first appear, with the group fields and the aggregates.

Groups: rows whose group values a collection would treat as one key are
one group (``1`` and ``1.0``; all NULLs; all NaNs); values that cannot be
keys (lists, dicts) group by ``==``.

Aggregates follow SQL on NULL (None or missing):

- ``count`` with no field counts rows; with a field, its non-NULL values;
- ``sum`` and ``avg`` of the non-NULL values, None when there are none
  (``avg`` divides with ``/``);
- ``min`` and ``max`` of the non-NULL values in the order of ORDER BY
  (mixed types do not raise), None when there are none;
- ``list``: the field's values in input order, NULLs included (with no
  field: the rows).

With no group fields the whole input is one group, and an empty input still
gives one row (``count`` 0, the others None), as SQL does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ..collections.fields import Path, parse_path, path_text, read_path
from ..collections.ordering import sort_key
from ..errors import QueryError, ValidationError
from .plans import QueryPlan, hashable_key
from .rows import Row

AGGREGATES = ("count", "sum", "avg", "min", "max", "list")


class _Aggregate:
    """Running state of one aggregate in one group."""

    __slots__ = ("count", "kind", "name", "value", "value_key")

    def __init__(self, name: str, kind: str) -> None:
        self.name, self.kind = name, kind
        self.count = 0
        self.value: Any = [] if kind == "list" else None
        self.value_key: Any = None

    def add(self, value: Any) -> None:
        kind = self.kind
        if kind == "list":
            self.value.append(value)
            return
        if value is None:
            return
        self.count += 1
        if kind in ("sum", "avg"):
            if self.count == 1:
                self.value = value
                return
            try:
                self.value = self.value + value
            except TypeError as exc:
                raise QueryError(
                    f"aggregate {self.name!r} ({kind}) cannot add {value!r} to {self.value!r}"
                ) from exc
        elif kind in ("min", "max"):
            try:
                key = sort_key(value)
            except ValidationError as exc:
                raise QueryError(
                    f"aggregate {self.name!r} ({kind}) cannot order the value {value!r}"
                ) from exc
            if (
                self.count == 1
                or (kind == "min" and key < self.value_key)
                or (kind == "max" and key > self.value_key)
            ):
                self.value, self.value_key = value, key

    def result(self) -> Any:
        if self.kind == "count":
            return self.count
        if self.kind == "avg":
            if not self.count:
                return None
            try:
                return self.value / self.count
            except TypeError as exc:
                raise QueryError(
                    f"aggregate {self.name!r} (avg) cannot divide {self.value!r}"
                ) from exc
        return self.value


class GroupByPlan(QueryPlan):
    """One row per group of equal `group_fields` values, with `aggregates`."""

    def __init__(
        self, group_fields: Any = (), aggregates: Any = None, based_on: Any = None
    ) -> None:
        super().__init__(based_on)
        if self.based_on is None:
            raise QueryError("GroupByPlan needs based_on=")
        if isinstance(group_fields, str):
            group_fields = [group_fields]
        if isinstance(group_fields, Mapping):
            named = {str(alias): parse_path(field) for alias, field in group_fields.items()}
        elif isinstance(group_fields, (list, tuple)):
            named = {}
            for field in group_fields:
                path = parse_path(field)
                named[path_text(path)] = path
        else:
            raise QueryError(f"group_fields is a list of field names, not {group_fields!r}")
        self.group_fields: dict[str, Path] = named
        self.aggregates: dict[str, tuple[str, Path | None]] = {}
        for name, spec in dict(aggregates or {}).items():
            if not isinstance(spec, (tuple, list)) or len(spec) != 2:
                raise QueryError(
                    f"aggregate {name!r} is (function, field), like ('sum', 'amount'), not {spec!r}"
                )
            kind, field = spec
            if kind not in AGGREGATES:
                raise QueryError(
                    f"aggregate {name!r}: unknown function {kind!r}; use one of "
                    f"{', '.join(AGGREGATES)}"
                )
            if field is None and kind not in ("count", "list"):
                raise QueryError(f"aggregate {name!r} ({kind}) needs a field")
            if name in named:
                raise QueryError(f"aggregate {name!r} has the name of a group field")
            self.aggregates[name] = (kind, None if field is None else parse_path(field))

    def _rows(self) -> Iterator[Any]:
        assert self.based_on is not None
        group_paths = list(self.group_fields.values())
        aggregate_specs = list(self.aggregates.items())
        groups: dict[Any, tuple[tuple[Any, ...], list[_Aggregate]]] = {}
        loose: list[tuple[tuple[Any, ...], list[_Aggregate]]] = []

        def new_group(values: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[_Aggregate]]:
            return values, [_Aggregate(name, kind) for name, (kind, _) in aggregate_specs]

        order: list[tuple[tuple[Any, ...], list[_Aggregate]]] = []
        for row in self.based_on.execute():
            values = tuple(read_path(row, path) for path in group_paths)
            key = hashable_key(values)
            if key is not None:
                group = groups.get(key)
                if group is None:
                    group = groups[key] = new_group(values)
                    order.append(group)
            else:
                group = next((g for g in loose if _same(g[0], values)), None)
                if group is None:
                    group = new_group(values)
                    loose.append(group)
                    order.append(group)
            for aggregate, (_, (_, path)) in zip(group[1], aggregate_specs, strict=True):
                aggregate.add(row if path is None else read_path(row, path))
        if not order and not group_paths:
            order.append(new_group(()))
        names = list(self.group_fields)
        for values, aggregates in order:
            fields = dict(zip(names, values, strict=True))
            for aggregate in aggregates:
                fields[aggregate.name] = aggregate.result()
            yield Row(fields)

    def estimate(self) -> int | None:
        below = super().estimate()
        if not self.group_fields:
            return 1
        return None if below is None else max(1, below // 10)

    def _describe(self, limit: int | None) -> tuple[str, str]:
        keys = ", ".join(self.group_fields) or "(all rows)"
        aggs = ", ".join(
            f"{name}={kind}({'*' if path is None else path_text(path)})"
            for name, (kind, path) in self.aggregates.items()
        )
        return "GroupBy", f"{keys}; {aggs}" if aggs else keys


def _same(left: Any, right: Any) -> bool:
    try:
        return bool(left == right)
    except (TypeError, ArithmeticError):
        return False
