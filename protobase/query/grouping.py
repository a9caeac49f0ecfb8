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
  field: the rows); None for no rows.

With no group fields the whole input is one group, and an empty input still
gives one row (``count`` 0, the others None), as SQL does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..collections.fields import Path, parse_path, path_text
from ..collections.ordering import sort_key
from ..errors import QueryError, ValidationError
from .expressions import field_reader, same_loose
from .plans import QueryPlan, hashable_key
from .rows import Row

AGGREGATES = ("count", "sum", "avg", "min", "max", "list")


Update = Callable[[list[Any], Any], None]
Finish = Callable[[list[Any]], Any]


def _aggregator(
    specs: list[tuple[str, str]],
    readers: list[Callable[[Any], Any] | None],
) -> tuple[Update, Callable[[], list[Any]], Callable[[list[Any]], list[Any]]]:
    """``(update, new_state, results)`` for aggregates ``(name, kind)``.

    A group's state is one flat list; `update(state, row)` folds in one row:
    ``readers[j]`` reads aggregate j's field (None: the aggregate takes the
    row itself). The update function is generated for these aggregates (one
    straight-line body, no per-row dispatch), like `collections.namedtuple`
    generates its class. Only slot numbers enter the generated source; names
    reach error messages through `fail_add` and `fail_order`.
    """
    lines = ["def update(state, row):"]
    initial: list[Any] = []
    finishers: list[Finish] = []
    for j, (name, kind) in enumerate(specs):
        at = len(initial)
        if kind != "count_rows":
            lines.append("    x = row" if readers[j] is None else f"    x = read{j}(row)")
        if kind == "count":
            initial.append(0)
            lines.append(f"    if x is not None: state[{at}] += 1")
            finishers.append(_slot(at))
        elif kind == "count_rows":
            initial.append(0)
            lines.append(f"    state[{at}] += 1")
            finishers.append(_slot(at))
        elif kind == "list":
            initial.append(None)
            lines.append(f"    state[{at}].append(x)")
            finishers.append(_listed(at))
        elif kind in ("sum", "avg"):
            initial.extend([None, 0])
            lines += [
                "    if x is not None:",
                f"        if state[{at + 1}]:",
                "            try:",
                f"                state[{at}] = state[{at}] + x",
                "            except TypeError as exc:",
                f"                raise fail_add({j}, x, state[{at}]) from exc",
                "        else:",
                f"            state[{at}] = x",
                f"        state[{at + 1}] += 1",
            ]
            finishers.append(_slot(at) if kind == "sum" else _average(name, at))
        else:  # min, max
            initial.extend([None, None])
            better = "<" if kind == "min" else ">"
            lines += [
                "    if x is not None:",
                "        try:",
                "            key = sort_key(x)",
                "        except ValidationError as exc:",
                f"            raise fail_order({j}, x) from exc",
                f"        if state[{at + 1}] is None or key {better} state[{at + 1}]:",
                f"            state[{at}] = x",
                f"            state[{at + 1}] = key",
            ]
            finishers.append(_slot(at))
    lines.append("    return None")

    def fail_add(j: int, value: Any, total: Any) -> QueryError:
        name, kind = specs[j]
        return QueryError(f"aggregate {name!r} ({kind}) cannot add {value!r} to {total!r}")

    def fail_order(j: int, value: Any) -> QueryError:
        name, kind = specs[j]
        return QueryError(f"aggregate {name!r} ({kind}) cannot order the value {value!r}")

    namespace: dict[str, Any] = {f"read{j}": read for j, read in enumerate(readers)}
    namespace |= {
        "sort_key": sort_key,
        "ValidationError": ValidationError,
        "fail_add": fail_add,
        "fail_order": fail_order,
    }
    # The source holds slot numbers only, never user text (see the docstring).
    exec("\n".join(lines), namespace)
    list_slots = [
        sum(_SLOTS[k] for _, k in specs[:i]) for i, (_, kind) in enumerate(specs) if kind == "list"
    ]

    def new_state() -> list[Any]:
        state = list(initial)
        for slot in list_slots:
            state[slot] = []
        return state

    def results(state: list[Any]) -> list[Any]:
        return [finish(state) for finish in finishers]

    return namespace["update"], new_state, results


_SLOTS = {"count": 1, "count_rows": 1, "list": 1, "sum": 2, "avg": 2, "min": 2, "max": 2}


def _slot(at: int) -> Finish:
    return lambda state: state[at]


def _listed(at: int) -> Finish:
    """A list aggregate: its values, or None for no rows at all (SQL's array_agg)."""
    return lambda state: state[at] or None


def _average(name: str, at: int) -> Finish:
    def finish(state: list[Any]) -> Any:
        total, count = state[at], state[at + 1]
        if not count:
            return None
        try:
            return total / count
        except TypeError as exc:
            raise QueryError(f"aggregate {name!r} (avg) cannot divide {total!r}") from exc

    return finish


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
        group_readers = [field_reader(path) for path in self.group_fields.values()]
        specs = [
            (name, "count_rows" if kind == "count" and path is None else kind)
            for name, (kind, path) in self.aggregates.items()
        ]
        feeds = [
            (None if path is None else field_reader(path))
            for _, (_, path) in self.aggregates.items()
        ]
        update, new_state, results = _aggregator(specs, feeds)
        groups: dict[Any, tuple[tuple[Any, ...], list[Any]]] = {}
        loose: list[tuple[tuple[Any, ...], list[Any]]] = []
        order: list[tuple[tuple[Any, ...], list[Any]]] = []
        single = group_readers[0] if len(group_readers) == 1 else None
        for row in self.based_on.execute():
            if single is not None:
                value = single(row)
                values: tuple[Any, ...] = (value,)
                try:
                    key = sort_key(value)
                except ValidationError:
                    key = None
            else:
                values = tuple(read(row) for read in group_readers)
                key = hashable_key(values)
            group = groups.get(key) if key is not None else None
            if group is None:
                if key is None:
                    group = next((g for g in loose if same_loose(g[0], values)), None)
                if group is None:
                    group = (values, new_state())
                    order.append(group)
                    if key is None:
                        loose.append(group)
                    else:
                        groups[key] = group
            update(group[1], row)
        if not order and not group_readers:
            order.append(((), new_state()))
        names = list(self.group_fields)
        aggregate_names = list(self.aggregates)
        for values, state in order:
            fields = dict(zip(names, values, strict=True))
            fields.update(zip(aggregate_names, results(state), strict=True))
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
