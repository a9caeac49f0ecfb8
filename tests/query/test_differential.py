"""Differential tests of the query layer: every plan against a naive oracle.

Hypothesis draws rows (DBObjects and plain dicts whose fields mix ints,
floats with NaN and -0.0, bools, str, bytes, tuples, lists, dicts, None and
missing), random condition trees and random pipelines (where, order by,
offset, limit, select, distinct, group by, joins). Each pipeline runs over a
collection without indexes and over the same collection with indexes; both
must give, row for row, what `oracle_*` below computes in plain Python from
the documented rules (docs/queries.md and the module docstrings of
protobase/query). The check repeats after a commit and a reload, after random
mutations, and after committing those mutations.

Rows are compared by `canon`, which tells 1 from 1.0 from True and -0.0 from
0.0, and treats NaN as equal to NaN.

The regression tests at the end pin two bugs this test found (fixed since).
"""

from __future__ import annotations

import functools
import operator
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, note, settings
from hypothesis import strategies as st

from protobase import (
    DBObject,
    Dictionary,
    DistinctPlan,
    Expression,
    F,
    GroupByPlan,
    JoinPlan,
    JoinRow,
    LimitPlan,
    List,
    Literal,
    MemoryStorage,
    ObjectSpace,
    OffsetPlan,
    OrderByPlan,
    Query,
    Row,
    SelectPlan,
    Set,
    ValidationError,
    WherePlan,
)
from protobase.collections.ordering import sort_key


class Person(DBObject):
    pass


class Address(DBObject):
    pass


MISSING = object()
"""In a pool: the attribute (or dict key) is left out."""

NAN = object()
"""In a pool: a fresh float NaN (a new object each time, so no identity shortcut)."""
NAN_TUPLE = object()
"""In a pool: a tuple holding a fresh NaN (Python's tuple == then says False)."""

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MANY = settings(SETTINGS, max_examples=200)
"""For the tests without a storage round trip (cheaper per example)."""


# -- pools of values ------------------------------------------------------------------

AGE_POOL = [0, 1, 2, 3, 3.0, 2.5, -0.0, True, False, "2", "a", b"a", (1,), (1, "a"), NAN_TUPLE]
AGE_POOL += [Decimal("2.5"), Decimal("NaN"), None, MISSING, NAN]
CITY_POOL = ["NY", "LA", "", "N", "NYC", b"NY", 1, Literal("NY"), Literal(b"a"), None, MISSING]
OBJECT_CITY_POOL = CITY_POOL
"""Address objects hold Literals too (see test_index_finds_objects_holding_a_literal)."""
SCORE_POOL = [0, 1, 2, -3, 1.5, 2.0, -0.0, None, MISSING, NAN]
TAGS_POOL = [["a", "b"], ["a"], [], [1, None], ("a",), ("a", 1), "ab", "a", b"ab", {"a": 1}]
TAGS_POOL += [("a", ["b"]), (0, [1]), None, MISSING, 1]  # tuples holding lists: unorderable
VIP_POOL = [True, False, 1, 0, 1.0, "yes", None, MISSING]

QUERY_POOL = [0, 1, 2, 3, 2.5, 1.0, -0.0, True, False, "a", "ab", "NY", "N", "", b"a", b"NY"]
QUERY_POOL += [(1,), ("a",), ["a"], [1, None], "zz", 100, -100, None, NAN]
QUERY_POOL += [Literal("NY"), Literal("N"), Address(city="NY"), Address()]
QUERY_POOL += [(1, 2), (1, "a"), NAN_TUPLE, Decimal("2.5"), Decimal("NaN"), (0,), ("b",)]
CONTAINS_POOL = ["a", "b", "", 1, None, b"a", "city", ("a",), ["a"], NAN]
PREFIX_POOL = ["", "a", "N", "NY", b"", b"a", b"N"]

FIELDS = ["age", "city", "score", "tags", "vip", "address.city", "address", "nope"]
INDEXABLE = ["age", "city", "score", "tags", "vip", "address.city", "address"]
ORDERABLE = ["age", "city", "score", "vip", "address.city", "nope"]
"""Fields whose values are never lists or dicts (min and max need them)."""

COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def fresh(value: Any) -> Any:
    if value is NAN:
        return float("nan")
    return (float("nan"),) if value is NAN_TUPLE else value


def pool(values: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(values).map(fresh)


# -- the oracle ------------------------------------------------------------------------


def read(row: Any, path: str) -> Any:
    """The value at dotted `path` in `row`; None when a step finds nothing."""
    value = row
    for name in path.split("."):
        if type(value) is dict:
            value = value.get(name)
        elif isinstance(value, DBObject):
            value = value.attributes().get(name)
        else:
            return None
        if value is None:
            return None
    return value.value if isinstance(value, Literal) else value


def plain(value: Any) -> Any:
    """A query value as rows hold it: a Literal reads as its str or bytes (expressions.py)."""
    return value.value if isinstance(value, Literal) else value


def safe_eq(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ArithmeticError):
        return False


def sortable_key(value: Any) -> Any:
    """sort_key(value), or None when the value cannot be a key."""
    try:
        return sort_key(value)
    except ValidationError:
        return None


def compare3(op: str, left: Any, right: Any) -> bool | None:
    if left is None or right is None:
        return None
    try:
        return bool(COMPARISONS[op](left, right))
    except (TypeError, ArithmeticError):
        return False


def contains3(container: Any, item: Any) -> bool | None:
    if container is None or item is None:
        return None
    if type(container) in (str, bytes):
        return type(item) is type(container) and item in container
    if type(container) in (list, tuple):
        return any(safe_eq(element, item) for element in container)
    if type(container) is dict:
        try:
            return item in container
        except TypeError:
            return False
    return False


def eval3(node: tuple[Any, ...], row: Any) -> bool | None:
    """TRUE, FALSE or UNKNOWN (None) of condition `node` on `row`."""
    kind = node[0]
    if kind == "cmp":
        return compare3(node[2], read(row, node[1]), plain(node[3]))
    if kind == "cmpf":
        return compare3(node[2], read(row, node[1]), read(row, node[3]))
    if kind == "bare":
        return compare3("==", read(row, node[1]), True)
    if kind == "in":
        value = read(row, node[1])
        if value is None:
            return None
        values = [plain(v) for v in node[2]]
        if any(v is not None and safe_eq(value, v) for v in values):
            return True
        return None if any(v is None for v in values) else False
    if kind == "between":
        value, low, high = read(row, node[1]), plain(node[2]), plain(node[3])
        if value is None or low is None or high is None:
            return None
        try:
            return bool(low <= value <= high)
        except (TypeError, ArithmeticError):
            return False
    if kind == "contains":
        return contains3(read(row, node[1]), node[2])
    if kind == "startswith":
        value = read(row, node[1])
        if value is None:
            return None
        return type(value) is type(node[2]) and value.startswith(node[2])
    if kind == "is_null":
        return read(row, node[1]) is None
    if kind == "and":
        results = [eval3(part, row) for part in node[1]]
        if False in results:
            return False
        return True if all(r is True for r in results) else None
    if kind == "or":
        results = [eval3(part, row) for part in node[1]]
        if True in results:
            return True
        return False if all(r is False for r in results) else None
    if kind == "not":
        result = eval3(node[1], row)
        return None if result is None else not result
    raise AssertionError(f"unknown node {node!r}")


def oracle_sort(rows: list[Any], keys: list[tuple[str, bool, bool]]) -> list[Any]:
    """A stable sort: sortable values by sort_key, then unsortable ones, NULL last (or first)."""

    def rank(value: Any, nulls_first: bool) -> int:
        if value is None:
            return -1 if nulls_first else 2
        return 0 if sortable_key(value) is not None else 1

    def compare(a: Any, b: Any) -> int:
        for path, descending, nulls_first in keys:
            va, vb = read(a, path), read(b, path)
            ra, rb = rank(va, nulls_first), rank(vb, nulls_first)
            if ra != rb:
                return -1 if ra < rb else 1
            if ra == 0:
                ka, kb = sort_key(va), sort_key(vb)
                if ka != kb:
                    order = -1 if ka < kb else 1
                    return -order if descending else order
        return 0

    return sorted(rows, key=functools.cmp_to_key(compare))


def same_key(value: Any, key: Any, other: Any, other_key: Any) -> bool:
    """Duplicates for DISTINCT and GROUP BY: equal sort keys when both have one, else
    part by part with that rule (so a NaN inside a row equals a NaN in another row
    whether or not both rows hold the same NaN object)."""
    if key is not None or other_key is not None:
        return bool(key == other_key)
    if type(value) is not type(other):
        return safe_eq(value, other)
    if isinstance(value, (list, tuple)):
        return len(value) == len(other) and all(
            same_key(a, sortable_key(a), b, sortable_key(b))
            for a, b in zip(value, other, strict=True)
        )
    if isinstance(value, dict):
        return value.keys() == other.keys() and all(
            same_key(v, sortable_key(v), other[k], sortable_key(other[k])) for k, v in value.items()
        )
    if isinstance(value, DBObject):
        return same_key(value.attributes(), None, other.attributes(), None)
    return safe_eq(value, other)


def oracle_distinct(rows: list[Any], fields: list[str] | None) -> list[Any]:
    kept: list[tuple[Any, Any]] = []
    out = []
    for row in rows:
        value = row if fields is None else tuple(read(row, f) for f in fields)
        key = sortable_key(value)
        if any(same_key(value, key, other, other_key) for other, other_key in kept):
            continue
        kept.append((value, key))
        out.append(row)
    return out


def aggregate(kind: str, path: str | None, rows: list[Any]) -> Any:
    if kind == "list":  # None for no rows at all (SQL's array_agg)
        if not rows:
            return None
        return list(rows) if path is None else [read(row, path) for row in rows]
    if path is None:
        assert kind == "count"
        return len(rows)
    values = [v for v in (read(row, path) for row in rows) if v is not None]
    if kind == "count":
        return len(values)
    if not values:
        return None
    if kind == "sum":
        return functools.reduce(operator.add, values)
    if kind == "avg":
        return functools.reduce(operator.add, values) / len(values)
    if kind == "min":
        return min(values, key=sort_key)
    if kind == "max":
        return max(values, key=sort_key)
    raise AssertionError(kind)


def oracle_group(
    rows: list[Any], group_fields: list[str], aggregates: dict[str, tuple[str, str | None]]
) -> list[Row]:
    groups: list[tuple[tuple[Any, ...], Any, list[Any]]] = []
    for row in rows:
        values = tuple(read(row, f) for f in group_fields)
        key = sortable_key(values)
        for group_values, group_key, members in groups:
            if same_key(values, key, group_values, group_key):
                members.append(row)
                break
        else:
            groups.append((values, key, [row]))
    if not groups and not group_fields:
        groups.append(((), sortable_key(()), []))
    out = []
    for values, _, members in groups:
        fields = dict(zip(group_fields, values, strict=True))
        for name, (kind, path) in aggregates.items():
            fields[name] = aggregate(kind, path, members)
        out.append(Row(fields))
    return out


def oracle_join(
    left: list[Any], right: list[Any], pairs: list[tuple[str, str]], join_type: str
) -> list[JoinRow]:
    def match(a: Any, b: Any) -> bool:
        for lf, rf in pairs:
            ka, kb = read(a, lf), read(b, rf)
            if ka is None or kb is None or not safe_eq(ka, kb):
                return False
        return True

    out = []
    matched = [False] * len(right)
    for a in left:
        found = False
        for position, b in enumerate(right):
            if match(a, b):
                found = matched[position] = True
                out.append(JoinRow(a, b))
        if not found and join_type in ("left", "outer"):
            out.append(JoinRow(a, None))
    if join_type in ("right", "outer"):
        out.extend(JoinRow(None, b) for b, hit in zip(right, matched, strict=True) if not hit)
    return out


# -- comparing results -------------------------------------------------------------------


def canon(value: Any) -> Any:
    """A comparable form: types kept apart (1, 1.0, True; -0.0, 0.0), NaN equal to NaN."""
    kind = type(value)
    if value is None:
        return ("None",)
    if kind is float:
        return ("float", "nan" if value != value else repr(value))
    if kind in (bool, int, str, bytes):
        return (kind.__name__, value)
    if kind is Decimal:
        return ("Decimal", str(value))
    if kind in (tuple, list):
        return (kind.__name__, tuple(canon(item) for item in value))
    if kind is dict:
        return ("dict", tuple(sorted(((canon(k), canon(v)) for k, v in value.items()), key=repr)))
    if kind is Literal:
        return ("Literal", canon(value.value))
    if isinstance(value, DBObject):
        attrs = sorted((name, canon(v)) for name, v in value.attributes().items())
        return ("object", kind.__qualname__, tuple(attrs))
    if kind is Row:
        return ("Row", tuple((name, canon(v)) for name, v in value.items()))
    if kind is JoinRow:
        return ("JoinRow", canon(value.left), canon(value.right))
    raise TypeError(f"canon: unexpected {kind.__name__} {value!r}")


def canon_rows(rows: Iterable[Any]) -> list[Any]:
    return [canon(row) for row in rows]


# -- from the test's own condition trees to protobase expressions ------------------------


def field_of(path: str) -> Any:
    return functools.reduce(lambda f, name: f[name], path.split("."), F)


def to_prefix(node: tuple[Any, ...]) -> Any:
    kind = node[0]
    if kind == "cmp":
        return [node[1], node[2], node[3]]
    if kind == "cmpf":
        return [node[1], node[2], field_of(node[3])]
    if kind == "bare":
        return field_of(node[1])  # a bare field inside a prefix list
    if kind == "in":
        return [node[1], "in", list(node[2])]
    if kind == "between":
        return [node[1], "between", node[2], node[3]]
    if kind in ("contains", "startswith"):
        return [node[1], kind, node[2]]
    if kind == "is_null":
        return [node[1], "is_null"]
    if kind == "and":
        parts = [to_prefix(part) for part in node[1]]
        if len(parts) > 1 and all(isinstance(part, list) for part in parts):
            return parts  # a list of terms is their AND
        return ["&", *parts]
    if kind == "or":
        return ["|", *(to_prefix(part) for part in node[1])]
    if kind == "not":
        return ["!", to_prefix(node[1])]
    raise AssertionError(node)


def to_operators(node: tuple[Any, ...]) -> Any:
    """The F-operator form; may return a bare Field (a condition meaning == True)."""
    kind = node[0]
    if kind == "cmp":
        return COMPARISONS[node[2]](field_of(node[1]), node[3])
    if kind == "cmpf":
        return COMPARISONS[node[2]](field_of(node[1]), field_of(node[3]))
    if kind == "bare":
        return field_of(node[1])
    if kind == "in":
        return field_of(node[1]).is_in(list(node[2]))
    if kind == "between":
        return field_of(node[1]).between(node[2], node[3])
    if kind == "contains":
        return field_of(node[1]).contains(node[2])
    if kind == "startswith":
        return field_of(node[1]).startswith(node[2])
    if kind == "is_null":
        return field_of(node[1]).is_null()
    if kind in ("and", "or"):
        parts = [to_operators(part) for part in node[1]]
        if len(parts) == 1:  # a one-part AND / OR, as the prefix form builds it
            return Expression.compile(["&" if kind == "and" else "|", parts[0]])
        return functools.reduce(operator.and_ if kind == "and" else operator.or_, parts)
    if kind == "not":
        if node[1][0] == "is_null":
            return field_of(node[1][1]).is_not_null()
        return ~to_operators(node[1])
    raise AssertionError(node)


def to_expression(node: tuple[Any, ...], prefix: bool) -> Any:
    return Expression.compile(to_prefix(node)) if prefix else to_operators(node)


# -- strategies ---------------------------------------------------------------------------


ADDRESS_VALUES = [Address(city="NY"), Address(city="LA"), Address(), {"city": "NY"}, "NY"]
FIELD_VALUES = {
    "age": AGE_POOL,
    "city": CITY_POOL,
    "score": SCORE_POOL,
    "tags": TAGS_POOL,
    "vip": VIP_POOL,
    "address.city": CITY_POOL,
    "address": ADDRESS_VALUES,
    "nope": QUERY_POOL,
}
"""The values rows hold in each field: query values drawn from them hit rows often."""


def value_for(path: str) -> st.SearchStrategy[Any]:
    """A query value for `path`: mostly one its rows hold, else any value, None or NaN."""
    own = [v for v in FIELD_VALUES[path] if v is not MISSING]
    return st.one_of(pool(own), pool(own), pool(QUERY_POOL), pool([None, NAN, NAN_TUPLE]))


def term_on(path: str) -> st.SearchStrategy[tuple[Any, ...]]:
    value = value_for(path)
    return st.one_of(
        st.tuples(st.just("cmp"), st.just(path), st.sampled_from(list(COMPARISONS)), value),
        st.tuples(st.just("cmp"), st.just(path), st.just("=="), value),  # indexes apply
        st.tuples(st.just("in"), st.just(path), st.lists(value, max_size=3).map(tuple)),
        st.tuples(st.just("between"), st.just(path), value, value),
    )


def term_st() -> st.SearchStrategy[tuple[Any, ...]]:
    fields = st.sampled_from(FIELDS)
    return st.one_of(
        fields.flatmap(term_on),
        fields.flatmap(term_on),
        st.tuples(st.just("contains"), fields, pool(CONTAINS_POOL)),
        st.tuples(st.just("startswith"), fields, st.sampled_from(PREFIX_POOL)),
        st.tuples(st.just("is_null"), fields),
        st.tuples(st.just("is_null"), st.sampled_from(INDEXABLE)).map(lambda t: ("not", t)),
        st.tuples(st.just("bare"), st.sampled_from(["vip", "age"])),
        st.tuples(
            st.just("cmpf"), fields, st.sampled_from(list(COMPARISONS)), st.sampled_from(FIELDS)
        ),
    )


def expr_st(depth: int) -> st.SearchStrategy[tuple[Any, ...]]:
    if depth == 0:
        return term_st()
    sub = expr_st(depth - 1)
    return st.one_of(
        term_st(),
        st.tuples(st.just("and"), st.lists(sub, min_size=1, max_size=3)),
        st.tuples(st.just("or"), st.lists(sub, min_size=1, max_size=3)),
        st.tuples(st.just("not"), sub),
    )


conditions = expr_st(2)


@st.composite
def address_st(draw: st.DrawFn, for_set: bool) -> Any:
    choice = draw(st.sampled_from(["dict", "object", "none", "str", "missing"]))
    as_dict = choice == "dict" and not for_set
    city = draw(pool(CITY_POOL if as_dict else OBJECT_CITY_POOL))
    attrs = {} if city is MISSING else {"city": city}
    if as_dict:
        return attrs
    if choice in ("dict", "object"):
        return Address(**attrs)
    return {"none": None, "str": "NY", "missing": MISSING}[choice]


@st.composite
def row_st(draw: st.DrawFn, for_set: bool = False, sparse: bool = False) -> Any:
    """A Person or (not for a Set) a plain dict; Set elements hold no lists or dicts.

    A sparse row leaves out most attributes, which makes ``is_null`` and
    ``~is_null`` selective enough for the planner to use an index.
    """
    tags = [t for t in TAGS_POOL if not for_set or t is MISSING or sortable_key(t) is not None]
    attrs = {
        "age": draw(pool(AGE_POOL)),
        "city": draw(pool(CITY_POOL)),
        "score": draw(pool(SCORE_POOL)),
        "tags": draw(pool(tags)),
        "vip": draw(pool(VIP_POOL)),
        "address": draw(address_st(for_set)),
    }
    if sparse:
        attrs = {name: v for name, v in attrs.items() if draw(st.integers(0, 4)) == 0}
    attrs = {name: value for name, value in attrs.items() if value is not MISSING}
    if for_set or draw(st.booleans()):
        return Person(**attrs)
    return attrs


def order_key_st() -> st.SearchStrategy[tuple[str, bool, bool]]:
    """(field, descending, nulls first); tags and address may hold lists and dicts."""
    return st.tuples(st.sampled_from([*ORDERABLE, "tags", "address"]), st.booleans(), st.booleans())


select_field_st = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(FIELDS), st.booleans()),
    st.tuples(st.just("kind")),
    st.tuples(st.just("expr"), expr_st(1)),
)

aggregate_st = st.one_of(
    st.tuples(st.just("count"), st.none() | st.sampled_from(FIELDS)),
    st.tuples(st.sampled_from(["sum", "avg"]), st.just("score")),
    st.tuples(st.sampled_from(["min", "max"]), st.sampled_from(ORDERABLE)),
    st.tuples(st.just("list"), st.none() | st.sampled_from(FIELDS)),
)

tail_st = st.one_of(
    st.none(),
    st.tuples(
        st.just("select"),
        st.dictionaries(st.sampled_from(["s0", "s1", "s2"]), select_field_st, min_size=1),
    ),
    st.tuples(
        st.just("distinct"),
        st.none() | st.lists(st.sampled_from(FIELDS), min_size=1, max_size=2, unique=True),
    ),
    group_st := st.tuples(
        st.just("group_by"),
        st.lists(st.sampled_from(FIELDS), max_size=2, unique=True),
        st.lists(aggregate_st, max_size=4).map(
            lambda aggs: {f"a{i}": agg for i, agg in enumerate(aggs)}
        ),
    ),
    group_st,
)


@dataclass
class Pipeline:
    where: tuple[Any, ...] | None
    prefix: bool = False
    split_where: bool = False
    order: list[tuple[str, bool, bool]] = field(default_factory=list)
    order_style: bool = False
    order_limit: int | None = None
    cuts: list[tuple[str, int]] = field(default_factory=list)
    tail: tuple[Any, ...] | None = None
    builder: bool = False


pipeline_st = st.builds(
    Pipeline,
    where=st.one_of(st.none(), conditions, conditions),
    prefix=st.booleans(),
    split_where=st.booleans(),
    order=st.lists(order_key_st(), max_size=2),
    order_style=st.booleans(),
    order_limit=st.none() | st.integers(0, 5),
    cuts=st.lists(st.tuples(st.sampled_from(["offset", "limit"]), st.integers(0, 6)), max_size=2),
    tail=tail_st,
    builder=st.booleans(),
)


def mutation_st(for_set: bool) -> st.SearchStrategy[tuple[Any, ...]]:
    position = st.integers(0, 60)
    row = row_st(for_set)
    return st.one_of(
        st.tuples(st.just("set"), position, row),
        st.tuples(st.just("remove"), position),
        st.tuples(st.just("append"), row),
        st.tuples(st.just("insert"), position, row),
    )


# -- running pipelines ---------------------------------------------------------------------


def scan(collection: Any) -> list[Any]:
    """The collection's rows in its own order (a Dictionary's values in key order)."""
    if isinstance(collection, Dictionary):
        return [value for _, value in collection.as_iterable()]
    return list(collection.as_iterable())


def order_spec(key: tuple[str, bool, bool], style: bool) -> Any:
    path, descending, nulls_first = key
    if style:
        spec = field_of(path).desc() if descending else field_of(path).asc()
        return spec.nulls_first() if nulls_first else spec
    if not descending and not nulls_first:
        return path
    return (path, "desc" if descending else "asc", "nulls_first" if nulls_first else "nulls_last")


def select_spec(fields: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for name, item in fields.items():
        if item[0] == "field":
            spec[name] = field_of(item[1]) if item[2] else item[1]
        elif item[0] == "kind":
            spec[name] = lambda row: type(row).__name__
        else:
            spec[name] = Expression.compile(to_operators(item[1]))
    return spec


def oracle_select(rows: list[Any], fields: dict[str, tuple[Any, ...]]) -> list[Row]:
    def project(row: Any, item: tuple[Any, ...]) -> Any:
        if item[0] == "field":
            return read(row, item[1])
        if item[0] == "kind":
            return type(row).__name__
        return eval3(item[1], row)

    return [Row({name: project(row, item) for name, item in fields.items()}) for row in rows]


def oracle_pipeline(rows: list[Any], p: Pipeline) -> list[Any]:
    out = list(rows)
    if p.where is not None:
        out = [row for row in out if eval3(p.where, row) is True]
    if p.order:
        out = oracle_sort(out, p.order)
        if p.order_limit is not None:
            out = out[: p.order_limit]
    for kind, count in p.cuts:
        out = out[count:] if kind == "offset" else out[:count]
    if p.tail is None:
        return out
    if p.tail[0] == "select":
        return oracle_select(out, p.tail[1])
    if p.tail[0] == "distinct":
        return oracle_distinct(out, p.tail[1])
    return oracle_group(out, p.tail[1], p.tail[2])


def build_plan(source: Any, p: Pipeline) -> Any:
    """The pipeline as a tree of plans (or, with p.builder, as a fluent Query)."""
    if p.builder:
        return build_query(source, p)
    plan = source.as_query_plan()
    if p.where is not None:
        plan = WherePlan(filter=to_expression(p.where, p.prefix), based_on=source)
    if p.order:
        keys = [order_spec(key, p.order_style) for key in p.order]
        plan = OrderByPlan(keys=keys, based_on=plan, limit=p.order_limit)
    for kind, count in p.cuts:
        if kind == "offset":
            plan = OffsetPlan(offset=count, based_on=plan)
        else:
            plan = LimitPlan(limit=count, based_on=plan)
    if p.tail is not None:
        if p.tail[0] == "select":
            plan = SelectPlan(fields=select_spec(p.tail[1]), based_on=plan)
        elif p.tail[0] == "distinct":
            plan = DistinctPlan(based_on=plan, fields=p.tail[1])
        else:
            plan = GroupByPlan(group_fields=p.tail[1], aggregates=p.tail[2], based_on=plan)
    return plan


def build_query(source: Any, p: Pipeline) -> Query:
    query = Query(source)
    if p.where is not None:
        if p.split_where and p.where[0] == "and":
            for part in p.where[1]:  # where().where() merges into one filter
                query = query.where(to_expression(part, p.prefix))
        else:
            query = query.where(to_expression(p.where, p.prefix))
    if p.order:
        query = query.order_by(*(order_spec(key, p.order_style) for key in p.order))
        if p.order_limit is not None:
            query = query.limit(p.order_limit)
    for kind, count in p.cuts:
        query = query.offset(count) if kind == "offset" else query.limit(count)
    if p.tail is not None:
        if p.tail[0] == "select":
            query = query.select(**select_spec(p.tail[1]))
        elif p.tail[0] == "distinct":
            query = query.distinct(*(p.tail[1] or ()))
        else:
            query = query.group_by(*p.tail[1], **p.tail[2])
    return query


def run(plan: Any) -> list[Any]:
    return plan.to_list() if isinstance(plan, Query) else list(plan.execute())


def tell(text: str, *, is_event: bool = False) -> None:
    """Hypothesis's note (or event), also callable from the deterministic tests."""
    if currently_in_test_context():
        (event if is_event else note)(text)


def check_pipelines(
    plain: Any,
    indexed: Any,
    pipelines: list[Pipeline],
    build: Callable[[Any, Pipeline], Any] = build_plan,
) -> list[Any]:
    """Oracle == plan without indexes == plan with indexes, row for row; the results."""
    rows = scan(plain)
    assert canon_rows(scan(indexed)) == canon_rows(rows), "the index changed the scan order"
    results = []
    for p in pipelines:
        tell(f"pipeline {p}")
        if p.where is not None:
            tell(f"condition: {to_expression(p.where, p.prefix)}")
        expected = canon_rows(oracle_pipeline(rows, p))
        without = canon_rows(run(build(plain, p)))
        assert without == expected, "the plan without indexes disagrees with the oracle"
        plan = build(indexed, p)
        with_index = canon_rows(run(plan))
        used = plan.explain().uses_index
        tell(f"index used: {used}", is_event=True)
        assert with_index == expected, f"the indexed plan disagrees (index used: {used})"
        results.append(expected)
    return results


def with_indexes(collection: Any, fields: list[str]) -> Any:
    """`collection` indexed on `fields`; every second index is covering (not on a Set)."""
    covering = not isinstance(collection, Set)
    indexed = collection
    for position, name in enumerate(fields):
        indexed = indexed.add_index(name, covering=covering and position % 2 == 1)
    assert indexed.indexed_fields == fields
    return indexed


def mutate(collection: Any, mutation: tuple[Any, ...]) -> Any:
    """Apply one drawn mutation; the same call on the plain and on the indexed copy."""
    kind, size = mutation[0], len(collection)
    if isinstance(collection, List):
        if kind == "append":
            return collection.append_last(mutation[1])
        if kind == "insert":
            return collection.insert_at(mutation[1] % (size + 1), mutation[2])
        if not size:
            return collection
        if kind == "set":
            return collection.set_at(mutation[1] % size, mutation[2])
        return collection.remove_at(mutation[1] % size)
    if isinstance(collection, Set):
        if kind in ("append", "insert", "set"):
            return collection.add(mutation[-1])
        if not size:
            return collection
        return collection.remove_at(scan(collection)[mutation[1] % size])
    if kind in ("append", "insert", "set"):
        return collection.set_at(mutation[1] % 40 if kind != "append" else 100 + size, mutation[-1])
    if not size:
        return collection
    return collection.remove_at(list(collection.keys())[mutation[1] % size])


def make_collection(kind: str, rows: list[Any]) -> Any:
    if kind == "list":
        return List(rows)
    if kind == "set":
        return Set(rows)
    return Dictionary({3 * position % 41: row for position, row in enumerate(rows)})


@st.composite
def scenario(draw: st.DrawFn, kind: str) -> tuple[Any, ...]:
    for_set = kind == "set"
    rows = draw(st.lists(row_st(for_set, draw(st.booleans())), max_size=24))
    fields = draw(st.lists(st.sampled_from(INDEXABLE), min_size=2, max_size=5, unique=True))
    pipelines = draw(st.lists(pipeline_st, min_size=1, max_size=6))
    mutations = draw(st.lists(mutation_st(for_set), max_size=5))
    return rows, fields, pipelines, mutations


def committed(db: Any, **collections: Any) -> dict[str, Any]:
    """Store `collections` as roots, commit, and read them back in a new transaction."""
    tr = db.new_transaction()
    for name, collection in collections.items():
        tr.set_root_object(name, collection)
    tr.commit()
    reader = db.new_transaction()
    return {name: reader.get_root_object(name) for name in collections}


def differential_run(kind: str, data: tuple[Any, ...]) -> None:
    rows, fields, pipelines, mutations = data
    plain = make_collection(kind, rows)
    indexed = with_indexes(plain, fields)
    before = check_pipelines(plain, indexed, pipelines)

    with ObjectSpace(MemoryStorage()) as space:
        db = space.new_database("diff")
        loaded = committed(db, plain=plain, indexed=indexed)
        plain, indexed = loaded["plain"], loaded["indexed"]
        assert indexed.indexed_fields == fields
        assert all(type(row) in (Person, dict) for row in scan(plain))
        assert check_pipelines(plain, indexed, pipelines) == before, "reload changed a result"

        for mutation in mutations:
            plain, indexed = mutate(plain, mutation), mutate(indexed, mutation)
        mutated = check_pipelines(plain, indexed, pipelines)

        loaded = committed(db, plain=plain, indexed=indexed)
        plain, indexed = loaded["plain"], loaded["indexed"]
        assert check_pipelines(plain, indexed, pipelines) == mutated, "reload changed a result"


@pytest.mark.parametrize("kind", ["list", "dict", "set"])
@settings(SETTINGS, max_examples=150)
@given(data=st.data())
def test_pipelines_match_the_oracle(kind: str, data: st.DataObject) -> None:
    differential_run(kind, data.draw(scenario(kind)))


@st.composite
def condition_scenario(draw: st.DrawFn, kind: str) -> tuple[Any, ...]:
    for_set = kind == "set"
    rows = draw(st.lists(row_st(for_set, draw(st.booleans())), max_size=30))
    fields = draw(st.lists(st.sampled_from(INDEXABLE), min_size=2, max_size=6, unique=True))
    return rows, fields, draw(st.lists(conditions, min_size=5, max_size=20)), draw(st.booleans())


@pytest.mark.parametrize("kind", ["list", "dict", "set"])
# 100 examples (SETTINGS), not MANY: each example checks 5 to 20 condition trees,
# row by row and through WHERE with and without indexes, so a run checks some
# 3,600 trees over the three kinds (the tree strategy is the same for each kind);
# 200 examples per kind took some 6 s more of the suite's budget.
@SETTINGS
@given(data=st.data())
def test_conditions_match_the_oracle(kind: str, data: st.DataObject) -> None:
    """Many conditions per example: TRUE/FALSE/UNKNOWN row by row, and WHERE with indexes."""
    rows, fields, conds, prefix = data.draw(condition_scenario(kind))
    plain = make_collection(kind, rows)
    indexed = with_indexes(plain, fields)
    scanned = scan(plain)
    for cond in conds:
        expr = Expression.compile(to_expression(cond, prefix))
        tell(f"condition: {expr}")
        truth = [eval3(cond, row) for row in scanned]
        assert [repr(expr.evaluate(row)) for row in scanned] == [repr(t) for t in truth]
        expected = canon_rows(row for row, t in zip(scanned, truth, strict=True) if t is True)
        assert canon_rows(WherePlan(filter=expr, based_on=plain).execute()) == expected
        plan = WherePlan(filter=to_expression(cond, prefix), based_on=indexed)
        assert canon_rows(plan.execute()) == expected, "the indexed plan disagrees"
        tell(f"index used: {plan.explain().uses_index}", is_event=True)


# -- DISTINCT and GROUP BY on values that collide --------------------------------------------

KEY_POOL = [1, 1.0, True, 0, -0.0, False, Decimal("1"), NAN, NAN_TUPLE, Decimal("NaN")]
KEY_POOL += ["a", Literal("a"), b"a", (1,), (1.0,), [1], [1.0], (1, [1]), {"a": 1}, None, MISSING]
"""Values equal in Python, equal as keys, or neither (NaN; lists and dicts: only ==)."""
MINMAX_POOL = [1, 1.0, True, Decimal("1"), 2, -0.0, 0, NAN, "a", "b", b"a", (1,), None, MISSING]
NUMBER_POOL = [1, 2, 1.0, 2.5, -0.0, 0, NAN, None, MISSING]


@st.composite
def key_row_st(draw: st.DrawFn) -> Any:
    attrs = {
        "k": draw(pool(KEY_POOL)),
        "j": draw(pool(KEY_POOL)),
        "m": draw(pool(MINMAX_POOL)),
        "n": draw(pool(NUMBER_POOL)),
    }
    attrs = {name: value for name, value in attrs.items() if value is not MISSING}
    return Person(**attrs) if draw(st.booleans()) else attrs


key_aggregate_st = st.one_of(
    st.tuples(st.just("count"), st.sampled_from([None, "k", "n"])),
    st.tuples(st.sampled_from(["sum", "avg"]), st.just("n")),
    st.tuples(st.sampled_from(["min", "max"]), st.sampled_from(["m", "n"])),
    st.tuples(st.just("list"), st.sampled_from([None, "k", "m"])),
)


@MANY
@given(
    rows=st.lists(key_row_st(), max_size=20),
    distinct_fields=st.none() | st.lists(st.sampled_from(["k", "j", "m"]), min_size=1, max_size=2),
    group_fields=st.lists(st.sampled_from(["k", "j", "m"]), max_size=2, unique=True),
    aggregates=st.lists(key_aggregate_st, max_size=4).map(
        lambda aggs: {f"a{i}": agg for i, agg in enumerate(aggs)}
    ),
)
def test_distinct_and_group_by_match_the_oracle(
    rows: list[Any],
    distinct_fields: list[str] | None,
    group_fields: list[str],
    aggregates: dict[str, tuple[str, str | None]],
) -> None:
    for source in (rows, List(rows)):
        scanned = scan(source) if isinstance(source, List) else source
        distinct = DistinctPlan(based_on=source, fields=distinct_fields)
        expected = canon_rows(oracle_distinct(scanned, distinct_fields))
        assert canon_rows(distinct.execute()) == expected, "DISTINCT disagrees"
        grouped = GroupByPlan(group_fields=group_fields, aggregates=aggregates, based_on=source)
        expected = canon_rows(oracle_group(scanned, group_fields, aggregates))
        assert canon_rows(grouped.execute()) == expected, "GROUP BY disagrees"


# -- joins ----------------------------------------------------------------------------------

JOIN_PAIRS = [
    ("city", "city"),
    ("age", "age"),
    ("age", "score"),
    ("address.city", "city"),
    ("tags", "tags"),
    ("vip", "age"),
]


@dataclass
class JoinCase:
    left_where: tuple[Any, ...] | None
    right_where: tuple[Any, ...] | None
    pairs: list[tuple[str, str]]
    style: str
    join_type: str
    limit: int | None
    builder: bool


join_case_st = st.builds(
    JoinCase,
    left_where=st.none() | conditions,
    right_where=st.none() | conditions,
    pairs=st.lists(st.sampled_from(JOIN_PAIRS), min_size=1, max_size=2, unique=True),
    style=st.sampled_from(["pairs", "expr", "function"]),
    join_type=st.sampled_from(["inner", "left", "right", "outer"]),
    limit=st.none() | st.integers(0, 8),
    builder=st.booleans(),
)


def join_on(case: JoinCase) -> Any:
    if case.style == "pairs":
        return case.pairs[0] if len(case.pairs) == 1 else case.pairs
    if case.style == "expr":  # F.left.x == F.right.y is TRUE exactly when the keys match
        parts = [field_of(f"left.{lf}") == field_of(f"right.{rf}") for lf, rf in case.pairs]
        return functools.reduce(operator.and_, parts)

    def on(left: Any, right: Any) -> bool:
        return all(compare3("==", read(left, lf), read(right, rf)) for lf, rf in case.pairs)

    return on


def side(collection: Any, where: tuple[Any, ...] | None) -> Any:
    if where is None:
        return collection
    return WherePlan(filter=to_operators(where), based_on=collection)


def join_plan(left: Any, right: Any, case: JoinCase) -> Any:
    if case.builder:
        query = Query(side(left, case.left_where))
        query = query.join(Query(side(right, case.right_where)), join_on(case), case.join_type)
        return query if case.limit is None else query.limit(case.limit)
    plan = JoinPlan(
        based_on=side(left, case.left_where),
        join_query=side(right, case.right_where),
        on=join_on(case),
        join_type=case.join_type,
    )
    return plan if case.limit is None else LimitPlan(limit=case.limit, based_on=plan)


def oracle_join_case(left: list[Any], right: list[Any], case: JoinCase) -> list[Any]:
    if case.left_where is not None:
        left = [row for row in left if eval3(case.left_where, row) is True]
    if case.right_where is not None:
        right = [row for row in right if eval3(case.right_where, row) is True]
    out = oracle_join(left, right, case.pairs, case.join_type)
    return out if case.limit is None else out[: case.limit]


def check_joins(colls: dict[str, Any], cases: list[JoinCase]) -> list[Any]:
    left, right = scan(colls["left"]), scan(colls["right"])
    results = []
    for case in cases:
        tell(f"join {case}")
        expected = canon_rows(oracle_join_case(left, right, case))
        plain = canon_rows(run(join_plan(colls["left"], colls["right"], case)))
        assert plain == expected, "the join without indexes disagrees with the oracle"
        indexed = canon_rows(run(join_plan(colls["left_i"], colls["right_i"], case)))
        assert indexed == expected, "the join with indexes disagrees with the oracle"
        results.append(expected)
    return results


@SETTINGS
@given(
    left_kind=st.sampled_from(["list", "dict", "set"]),
    right_kind=st.sampled_from(["list", "dict", "set"]),
    data=st.data(),
)
def test_joins_match_the_oracle(left_kind: str, right_kind: str, data: st.DataObject) -> None:
    left = make_collection(left_kind, data.draw(st.lists(row_st(left_kind == "set"), max_size=16)))
    right = make_collection(
        right_kind, data.draw(st.lists(row_st(right_kind == "set"), max_size=16))
    )
    left_fields = data.draw(st.lists(st.sampled_from(INDEXABLE), min_size=1, max_size=3))
    right_fields = data.draw(st.lists(st.sampled_from(INDEXABLE), min_size=1, max_size=3))
    colls = {
        "left": left,
        "right": right,
        "left_i": with_indexes(left, list(dict.fromkeys(left_fields))),
        "right_i": with_indexes(right, list(dict.fromkeys(right_fields))),
    }
    cases = data.draw(st.lists(join_case_st, min_size=1, max_size=3))
    before = check_joins(colls, cases)
    with ObjectSpace(MemoryStorage()) as space:
        loaded = committed(space.new_database("joins"), **colls)
        assert check_joins(loaded, cases) == before, "reload changed a join result"


# -- deterministic checks --------------------------------------------------------------------


def random_row(rng: random.Random, for_set: bool = False) -> Any:
    def pick(values: list[Any]) -> Any:
        return fresh(rng.choice(values))

    attrs = {
        "age": pick(AGE_POOL),
        "city": pick(CITY_POOL),
        "score": pick(SCORE_POOL),
        "tags": pick([t for t in TAGS_POOL if not for_set or sortable_key(t) is not None]),
        "vip": pick(VIP_POOL),
    }
    city = pick(OBJECT_CITY_POOL)
    address = {} if city is MISSING else {"city": city}
    attrs["address"] = Address(**address) if for_set or rng.random() < 0.5 else address
    attrs = {name: value for name, value in attrs.items() if value is not MISSING}
    return Person(**attrs) if for_set or rng.random() < 0.5 else attrs


SELECTIVE = [
    ("cmp", "age", "==", 3),
    ("cmp", "city", "==", "LA"),
    ("in", "city", ("LA", b"NY")),
    ("in", "age", (2, None, "a")),
    ("between", "age", 2, 2.5),
    ("cmp", "address.city", "==", "N"),
    ("is_null", "address.city"),
    ("and", [("cmp", "age", ">=", 3), ("cmp", "city", "==", "NY")]),
    ("and", [("cmp", "age", "==", 1), ("contains", "tags", "a")]),
    ("or", [("cmp", "age", "==", "a"), ("cmp", "city", "==", 1)]),
    ("and", [("cmp", "score", "<", 0), ("not", ("cmp", "vip", "==", True))]),
    ("cmp", "tags", "==", ("a",)),
    ("cmp", "tags", "==", "ab"),
    ("cmp", "age", "==", float("nan")),
    ("between", "score", -5, -1),
]


@pytest.mark.parametrize("kind", ["list", "dict", "set"])
def test_selective_conditions_use_indexes_and_match(kind: str) -> None:
    """On 300 rows these conditions certainly use an index; results still match."""
    rng = random.Random(20240607)
    rows = [random_row(rng, kind == "set") for _ in range(300)]
    plain = make_collection(kind, rows)
    indexed = with_indexes(plain, ["age", "city", "tags", "score", "address.city"])
    pipelines = [
        Pipeline(where=cond, prefix=prefix, builder=builder)
        for cond in SELECTIVE
        for prefix in (False, True)
        for builder in (False, True)
    ]
    pipelines.append(Pipeline(where=SELECTIVE[0], order=[("score", True, False)], cuts=[]))
    before = check_pipelines(plain, indexed, pipelines)
    assert any(before), "every selective condition matched nothing: the data is too thin"
    for p in pipelines:
        plan = build_plan(indexed, p)
        run(plan)
        assert plan.explain().uses_index, f"no index used for {p.where}"
        assert not build_plan(plain, p).explain().uses_index
    with ObjectSpace(MemoryStorage()) as space:
        loaded = committed(space.new_database("big"), plain=plain, indexed=indexed)
        assert check_pipelines(loaded["plain"], loaded["indexed"], pipelines) == before
        for p in pipelines:
            assert build_plan(loaded["indexed"], p).explain().uses_index


EDGE_AGES = [(1, "a"), (1, 2), (1,), NAN_TUPLE, Decimal("NaN"), Decimal("2.5"), 2, 2.5, True]
EDGE_AGES += ["a", None, NAN, (0, "z")]
EDGE_CONDITIONS = [
    ("cmp", "age", ">", (1, 2)),  # (1, "a") > (1, 2) raises in Python: FALSE
    ("cmp", "age", "<", (1, "b")),
    ("cmp", "age", "==", (float("nan"),)),  # two NaN objects: the tuples differ
    ("cmp", "age", ">=", Decimal("NaN")),
    ("cmp", "age", "<", Decimal("3")),
    ("cmp", "age", "==", float("nan")),
    ("between", "age", (0,), (2,)),
    ("in", "age", ((1, "a"), (1,), 1, (float("nan"),))),
    ("cmp", "age", ">", 2),
    ("cmp", "age", "<=", True),
    ("cmp", "address", ">", Address(city="A")),  # Python does not order DBObjects
    ("cmp", "address", "==", Address(city="NY")),
    ("cmp", "city", ">=", "N"),
    ("cmp", "city", "<", b"a"),
    ("and", [("cmp", "age", ">", (1,)), ("cmp", "city", "==", "NY")]),
    ("or", [("cmp", "age", "==", (1, 2)), ("cmp", "city", "==", 1)]),
]


def test_index_lookups_on_values_python_orders_differently() -> None:
    """Index ranges follow sort_key; the rows must still be the ones Python's operators pick."""
    cities = [c for c in CITY_POOL if c is not MISSING]
    rows = [
        Person(
            age=fresh(EDGE_AGES[i % len(EDGE_AGES)]),
            city=cities[i % len(cities)],
            address=Address(city=cities[i % 3]) if i % 4 else {"city": "NY"},
        )
        for i in range(60)
    ]
    plain = List(rows)
    indexed = with_indexes(plain, ["age", "city", "address"])
    pipelines = [
        Pipeline(where=cond, prefix=prefix) for cond in EDGE_CONDITIONS for prefix in (False, True)
    ]
    check_pipelines(plain, indexed, pipelines)
    used = [build_plan(indexed, p).explain().uses_index for p in pipelines]
    assert sum(used) >= len(used) // 2, "most of these lookups should use an index"


def test_the_oracle_follows_the_documented_rules() -> None:
    row = Person(age=5, name="Ann", tags=["x", 1], blob=b"abc", address={"city": "NY"})
    assert eval3(("cmp", "age", ">", "x"), row) is False  # 5 > "x" raises: FALSE
    assert eval3(("cmp", "age", "==", 5.0), row) is True
    assert eval3(("cmp", "missing", "==", 1), row) is None
    assert eval3(("not", ("cmp", "missing", "==", 1)), row) is None
    assert eval3(("cmp", "age", "==", None), row) is None
    assert eval3(("in", "age", (1, None)), row) is None
    assert eval3(("in", "age", (1, 2)), row) is False
    assert eval3(("in", "age", (None, 5.0)), row) is True
    assert eval3(("between", "age", 1, "z"), row) is False
    assert eval3(("contains", "tags", 1.0), row) is True
    assert eval3(("contains", "blob", "a"), row) is False
    assert eval3(("contains", "address", "city"), row) is True
    assert eval3(("contains", "address", ["city"]), row) is False
    assert eval3(("startswith", "name", "A"), row) is True
    assert eval3(("startswith", "blob", "a"), row) is False
    assert eval3(("is_null", "missing"), row) is True
    assert eval3(("and", [("cmp", "age", "<", 0), ("cmp", "x", ">", 1)]), row) is False
    assert eval3(("or", [("cmp", "age", "<", 0), ("cmp", "x", ">", 1)]), row) is None
    assert eval3(("cmp", "address.city", "==", "NY"), row) is True
    nan_row = {"v": float("nan")}
    assert eval3(("cmp", "v", "==", float("nan")), nan_row) is False
    rows = [{"v": None}, {"v": [1]}, {"v": "b"}, {"v": 2}, {"v": True}, {}]
    ascending = [rows[i] for i in (4, 3, 2, 1, 0, 5)]  # True == 1 < 2 < "b" < [1] < NULLs
    assert oracle_sort(rows, [("v", False, False)]) == ascending
    descending = [rows[i] for i in (0, 5, 2, 3, 4, 1)]  # NULLs first, "b" > 2 > True, [1]
    assert oracle_sort(rows, [("v", True, True)]) == descending
    assert oracle_distinct([{"v": 1}, {"v": 1.0}, {"v": [1]}, {"v": [1]}], ["v"]) == [
        {"v": 1},
        {"v": [1]},
    ]
    assert canon(1) != canon(1.0) != canon(True)
    assert canon(-0.0) != canon(0.0)
    assert canon(float("nan")) == canon(float("nan"))


def test_the_check_fails_on_a_wrong_result() -> None:
    """The comparison catches a plan that returns wrong rows (the test can fail)."""
    rows = List([Person(age=1), Person(age=2), Person(age=None), Person(), Person(age=1.0)])
    p = Pipeline(where=("not", ("cmp", "age", ">", 1)))
    expected = canon_rows(oracle_pipeline(scan(rows), p))
    assert expected == canon_rows([Person(age=1), Person(age=1.0)])
    wrong_condition = WherePlan(filter=~(F.age >= 1), based_on=rows)
    assert canon_rows(run(wrong_condition)) != expected
    treating_null_as_false = [r for r in scan(rows) if not (r.age is not None and r.age > 1)]
    assert canon_rows(treating_null_as_false) != expected
    assert canon_rows([Person(age=True), Person(age=1.0)]) != expected  # True is not 1

    class WrongPlan:
        """A plan that reverses the right result."""

        def __init__(self, plan: Any) -> None:
            self.plan = plan

        def execute(self) -> Any:
            return reversed(list(self.plan.execute()))

        def explain(self) -> Any:
            return self.plan.explain()

    check_pipelines(rows, rows.add_index("age"), [p])  # the right plans pass

    def reversing(source: Any, p: Pipeline) -> Any:
        return WrongPlan(build_plan(source, p))

    with pytest.raises(AssertionError, match="disagrees with the oracle"):
        check_pipelines(rows, rows.add_index("age"), [p], build=reversing)


# -- regressions: bugs this test found -------------------------------------------------------


def test_order_by_descending_puts_unorderable_values_last() -> None:
    """Lists and dicts sort after every other non-null value, in both directions."""
    rows = [{"x": [1], "y": 1}, {"x": 3, "y": 1}, {"x": 1, "y": 2}, {"x": None, "y": 1}]
    expected = [{"x": 3, "y": 1}, {"x": 1, "y": 2}, {"x": [1], "y": 1}, {"x": None, "y": 1}]
    assert list(OrderByPlan(keys=[("x", "desc")], based_on=rows).execute()) == expected
    mixed = OrderByPlan(keys=[("x", "desc"), ("y", "asc")], based_on=rows)
    assert list(mixed.execute()) == expected
    top = OrderByPlan(keys=[("x", "desc")], based_on=rows, limit=3)
    assert list(top.execute()) == expected[:3]


def test_index_is_not_null_keeps_unorderable_values() -> None:
    """``~is_null`` answered from an index still finds rows whose value is a list."""
    rows = [{"t": [1]}, {"t": 5}] + [{} for _ in range(8)]
    plain = List(rows)
    expected = [{"t": [1]}, {"t": 5}]
    assert list(WherePlan(filter=F.t.is_not_null(), based_on=plain).execute()) == expected
    plan = WherePlan(filter=F.t.is_not_null(), based_on=plain.add_index("t"))
    assert list(plan.execute()) == expected
    assert plan.explain().uses_index


# -- known bug: a Literal inside an object or a tuple ---------------------------------------
#
# Literal("NY") == "NY" in Python (and so Address(city=Literal("NY")) == Address(city="NY")
# and (Literal("a"),) == ("a",)), but ordering.sort_key and canonical_bytes give a Literal
# keys of its own, so indexes and hash joins miss such rows. A path that ends at a Literal
# reads its str, so only Literals nested in objects or tuples are affected; the generators
# above avoid them.


def test_index_finds_objects_holding_a_literal() -> None:
    rows = List([{"address": Address(city=Literal("NY"))}])
    condition = F.address == Address(city="NY")
    assert list(WherePlan(filter=condition, based_on=rows).execute()) == scan(rows)
    indexed = WherePlan(filter=condition, based_on=rows.add_index("address"))
    assert list(indexed.execute()) == scan(rows)


def test_hash_join_pairs_a_literal_with_its_str() -> None:
    left, right = [{"k": (Literal("a"),)}], [{"k": ("a",)}]
    loop = JoinPlan(based_on=left, join_query=right, on=lambda a, b: a["k"] == b["k"])
    assert len(list(loop.execute())) == 1
    assert len(list(JoinPlan(based_on=left, join_query=right, on=("k", "k")).execute())) == 1
