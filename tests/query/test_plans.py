"""Each plan on small hand-written rows, streaming, and the fluent builder.

Outputs are spelled out in full: which rows, in which order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from protobase import (
    Database,
    DBObject,
    Dictionary,
    DistinctPlan,
    F,
    GroupByPlan,
    JoinPlan,
    JoinRow,
    LimitPlan,
    List,
    ObjectSpace,
    OffsetPlan,
    OrderByPlan,
    Query,
    QueryError,
    QueryPlan,
    Row,
    SelectPlan,
    Set,
    TransactionClosedError,
    WherePlan,
)
from protobase.query import ValuesPlan


class Person(DBObject):
    pass


PEOPLE = [
    Person(id=1, name="Ann", age=34, city="NY", dept_id=10),
    Person(id=2, name="Bob", age=25, city="LA", dept_id=20),
    Person(id=3, name="Cid", age=41, city="NY", dept_id=10),
    Person(id=4, name="Dee", city="SF", dept_id=30),
    Person(id=5, name="Eve", age=29, city="NY", dept_id=20.0),
    Person(id=6, name="Fay", age=25, city=None, dept_id=None),
]


def names(rows: Any) -> list[str]:
    return [row.name for row in rows]


def ids(rows: Any) -> list[Any]:
    return [row["id"] if isinstance(row, dict) else row.id for row in rows]


# -- WherePlan ----------------------------------------------------------------------------------


def test_where_on_a_list_of_rows() -> None:
    assert names(WherePlan(filter=F.age > 26, based_on=PEOPLE).execute()) == ["Ann", "Cid", "Eve"]
    assert names(WherePlan(filter=~(F.age > 26), based_on=PEOPLE).execute()) == ["Bob", "Fay"]
    assert names(WherePlan(filter=["city", "==", "NY"], based_on=PEOPLE).execute()) == [
        "Ann",
        "Cid",
        "Eve",
    ]
    assert names(WherePlan(filter=F.dept_id == 20, based_on=PEOPLE).execute()) == ["Bob", "Eve"]
    assert names(WherePlan(filter=F.city.is_null(), based_on=PEOPLE).execute()) == ["Fay"]
    assert list(WherePlan(filter=F.age > 100, based_on=PEOPLE).execute()) == []


def test_where_on_collections_keeps_collection_order() -> None:
    people = Dictionary({p.id * -1: p for p in PEOPLE})  # keys -6..-1: reversed
    assert names(WherePlan(filter=F.city == "NY", based_on=people).execute()) == [
        "Eve",
        "Cid",
        "Ann",
    ]
    listed = List(PEOPLE)
    assert names(WherePlan(filter=F.age < 30, based_on=listed).execute()) == ["Bob", "Eve", "Fay"]
    values = Set([1, 5, 10, 15])
    assert sorted(WherePlan(filter=F.x.is_null(), based_on=values).execute()) == [1, 5, 10, 15]


def test_where_needs_a_filter_and_a_source() -> None:
    with pytest.raises(QueryError, match="based_on"):
        WherePlan(filter=F.a == 1)
    with pytest.raises(QueryError, match="filter"):
        WherePlan(based_on=PEOPLE)
    with pytest.raises(QueryError, match="expected a condition"):
        WherePlan(filter=5, based_on=PEOPLE)
    with pytest.raises(QueryError, match="not int"):
        WherePlan(filter=F.a == 1, based_on=5)


def test_where_over_where() -> None:
    inner = WherePlan(filter=F.city == "NY", based_on=PEOPLE)
    outer = WherePlan(filter=F.age < 40, based_on=inner)
    assert names(outer.execute()) == ["Ann", "Eve"]


# -- JoinPlan -----------------------------------------------------------------------------------

LEFT = [
    {"name": "a", "dept_id": 1},
    {"name": "b", "dept_id": 2},
    {"name": "c", "dept_id": None},
    {"name": "d", "dept_id": 1.0},
    {"name": "e"},
    {"name": "f", "dept_id": 9},
]
RIGHT = [
    {"id": 1, "dn": "X"},
    {"id": 2, "dn": "Y"},
    {"id": 1, "dn": "X2"},
    {"id": None, "dn": "N"},
    {"id": 3, "dn": "Z"},
    {"dn": "M"},
]


def pairs(plan: JoinPlan) -> list[tuple[Any, Any]]:
    result = []
    for row in plan.execute():
        assert isinstance(row, JoinRow)
        left = None if row.left is None else row.left["name"]
        right = None if row.right is None else row.right["dn"]
        result.append((left, right))
    return result


INNER = [("a", "X"), ("a", "X2"), ("b", "Y"), ("d", "X"), ("d", "X2")]


def test_inner_hash_join() -> None:
    plan = JoinPlan(based_on=LEFT, join_query=RIGHT, on=("dept_id", "id"))
    assert pairs(plan) == INNER
    assert pairs(JoinPlan(based_on=LEFT, join_query=RIGHT, on=["dept_id", "id"])) == INNER


def test_left_join_keeps_unmatched_left_rows_in_place() -> None:
    plan = JoinPlan(based_on=LEFT, join_query=RIGHT, on=("dept_id", "id"), join_type="left")
    assert pairs(plan) == [
        ("a", "X"),
        ("a", "X2"),
        ("b", "Y"),
        ("c", None),
        ("d", "X"),
        ("d", "X2"),
        ("e", None),
        ("f", None),
    ]


def test_right_join_appends_unmatched_right_rows_in_right_order() -> None:
    plan = JoinPlan(based_on=LEFT, join_query=RIGHT, on=("dept_id", "id"), join_type="right")
    assert pairs(plan) == [*INNER, (None, "N"), (None, "Z"), (None, "M")]


def test_outer_join() -> None:
    plan = JoinPlan(based_on=LEFT, join_query=RIGHT, on=("dept_id", "id"), join_type="outer")
    assert pairs(plan) == [
        ("a", "X"),
        ("a", "X2"),
        ("b", "Y"),
        ("c", None),
        ("d", "X"),
        ("d", "X2"),
        ("e", None),
        ("f", None),
        (None, "N"),
        (None, "Z"),
        (None, "M"),
    ]


def test_null_keys_never_match_even_each_other() -> None:
    left = [{"name": "n1", "k": None}, {"name": "n2"}]
    right = [{"dn": "r1", "k": None}, {"dn": "r2"}]
    assert pairs(JoinPlan(based_on=left, join_query=right, on=("k", "k"))) == []
    assert pairs(JoinPlan(based_on=left, join_query=right, on=("k", "k"), join_type="outer")) == [
        ("n1", None),
        ("n2", None),
        (None, "r1"),
        (None, "r2"),
    ]


def test_composite_keys() -> None:
    left = [
        {"name": "a", "x": 1, "y": "p"},
        {"name": "b", "x": 1, "y": "q"},
        {"name": "c", "x": 2.0, "y": "p"},
        {"name": "d", "x": 1, "y": None},
    ]
    right = [
        {"dn": "R1", "u": 1, "v": "p"},
        {"dn": "R2", "u": 2, "v": "p"},
        {"dn": "R3", "u": 1.0, "v": "p"},
        {"dn": "R4", "u": 1, "v": "q"},
        {"dn": "R5", "u": 1, "v": None},
    ]
    plan = JoinPlan(based_on=left, join_query=right, on=[("x", "u"), ("y", "v")])
    assert pairs(plan) == [("a", "R1"), ("a", "R3"), ("b", "R4"), ("c", "R2")]
    left_join = JoinPlan(
        based_on=left, join_query=right, on=[("x", "u"), ("y", "v")], join_type="left"
    )
    assert pairs(left_join)[-1] == ("d", None)


def test_join_keys_that_cannot_be_hashed_compare_with_equality() -> None:
    left = [{"name": "a", "k": [1, 2]}, {"name": "b", "k": {"z": 1}}, {"name": "c", "k": 3}]
    right = [{"dn": "L", "k": [1, 2]}, {"dn": "D", "k": {"z": 1}}, {"dn": "T", "k": (1, 2)}]
    assert pairs(JoinPlan(based_on=left, join_query=right, on=("k", "k"))) == [
        ("a", "L"),
        ("b", "D"),
    ]


def test_join_on_objects_and_dotted_paths() -> None:
    depts = [{"id": 10, "info": {"name": "Eng"}}, {"id": 20, "info": {"name": "Sales"}}]
    plan = JoinPlan(based_on=PEOPLE, join_query=depts, on=("dept_id", "id"))
    assert [(row.left.name, row.right["info"]["name"]) for row in plan.execute()] == [
        ("Ann", "Eng"),
        ("Bob", "Sales"),
        ("Cid", "Eng"),
        ("Eve", "Sales"),
    ]
    by_name = JoinPlan(based_on=depts, join_query=PEOPLE, on=("info.name", "team"))
    assert list(by_name.execute()) == []


def test_nested_loop_join_with_an_expression() -> None:
    left = [{"name": "a", "x": 1}, {"name": "b", "x": 5}, {"name": "c"}, {"name": "d", "x": 3}]
    right = [{"dn": "R1", "y": 2}, {"dn": "R2", "y": 4}, {"dn": "R3", "y": "s"}, {"dn": "R4"}]
    plan = JoinPlan(based_on=left, join_query=right, on=F.left.x < F.right.y)
    assert pairs(plan) == [("a", "R1"), ("a", "R2"), ("d", "R2")]
    outer = JoinPlan(based_on=left, join_query=right, on=F.left.x < F.right.y, join_type="outer")
    assert pairs(outer) == [
        ("a", "R1"),
        ("a", "R2"),
        ("b", None),
        ("c", None),
        ("d", "R2"),
        (None, "R3"),
        (None, "R4"),
    ]
    both = JoinPlan(based_on=left, join_query=right, on=(F.left.x < F.right.y) & (F.right.y > 3))
    assert pairs(both) == [("a", "R2"), ("d", "R2")]


def test_nested_loop_join_with_a_function() -> None:
    left = [{"name": "a", "x": 1}, {"name": "b", "x": 5}]
    right = [{"dn": "R1", "y": 2}, {"dn": "R2", "y": 4}, {"dn": "R3", "y": 6}]

    def within_two(l_row: Any, r_row: Any) -> bool:
        return abs(l_row["x"] - r_row["y"]) <= 1

    plan = JoinPlan(based_on=left, join_query=right, on=within_two)
    assert pairs(plan) == [("a", "R1"), ("b", "R2"), ("b", "R3")]
    assert "within_two" in plan.explain().detail
    right_join = JoinPlan(
        based_on=left, join_query=right, on=lambda a, b: b["y"] > 5, join_type="right"
    )
    assert pairs(right_join) == [("a", "R3"), ("b", "R3"), (None, "R1"), (None, "R2")]


def test_join_reads_the_right_side_once_and_streams_the_left() -> None:
    right = CountingSource(4)
    left = CountingSource(10**9)
    plan = JoinPlan(based_on=left, join_query=right, on=("i", "i"))
    rows = LimitPlan(limit=3, based_on=plan).execute()
    assert [(row.left["i"], row.right["i"]) for row in rows] == [(0, 0), (1, 1), (2, 2)]
    assert right.pulled == 4
    assert left.pulled == 3


def test_join_arguments_are_checked() -> None:
    with pytest.raises(QueryError, match="join_query"):
        JoinPlan(based_on=LEFT, on=("a", "b"))
    with pytest.raises(QueryError, match="'sideways'"):
        JoinPlan(based_on=LEFT, join_query=RIGHT, on=("a", "b"), join_type="sideways")
    with pytest.raises(QueryError, match="on="):
        JoinPlan(based_on=LEFT, join_query=RIGHT, on=("a", "b", "c"))
    with pytest.raises(QueryError, match="on="):
        JoinPlan(based_on=LEFT, join_query=RIGHT, on=[])
    with pytest.raises(QueryError, match="on="):
        JoinPlan(based_on=LEFT, join_query=RIGHT, on=None)
    with pytest.raises(QueryError, match="empty name"):
        JoinPlan(based_on=LEFT, join_query=RIGHT, on=("a..b", "c"))


# -- GroupByPlan --------------------------------------------------------------------------------

SALES = [
    {"dept": "eng", "kind": "a", "amount": 10, "who": "x"},
    {"dept": "eng", "kind": "b", "amount": 5},
    {"dept": "ops", "kind": "a", "amount": None, "who": "y"},
    {"dept": "eng", "kind": "a", "amount": 2.5, "who": "z"},
    {"dept": "ops", "kind": "a", "who": "w"},
    {"dept": None, "kind": "a", "amount": 7},
    {"kind": "b", "amount": 1},
]

ALL_AGGREGATES = {
    "n": ("count", None),
    "with_amount": ("count", "amount"),
    "total": ("sum", "amount"),
    "mean": ("avg", "amount"),
    "low": ("min", "amount"),
    "high": ("max", "amount"),
    "amounts": ("list", "amount"),
}


def test_group_by_one_field_with_every_aggregate() -> None:
    plan = GroupByPlan(group_fields=["dept"], aggregates=ALL_AGGREGATES, based_on=SALES)
    rows = list(plan.execute())
    assert all(isinstance(row, Row) for row in rows)
    assert rows == [
        {
            "dept": "eng",
            "n": 3,
            "with_amount": 3,
            "total": 17.5,
            "mean": 17.5 / 3,
            "low": 2.5,
            "high": 10,
            "amounts": [10, 5, 2.5],
        },
        {
            "dept": "ops",
            "n": 2,
            "with_amount": 0,
            "total": None,
            "mean": None,
            "low": None,
            "high": None,
            "amounts": [None, None],
        },
        {  # None and a missing field are one group
            "dept": None,
            "n": 2,
            "with_amount": 2,
            "total": 8,
            "mean": 4.0,
            "low": 1,
            "high": 7,
            "amounts": [7, 1],
        },
    ]


def test_group_by_several_fields_in_order_of_first_appearance() -> None:
    plan = GroupByPlan(
        group_fields=["dept", "kind"],
        aggregates={"n": ("count", None), "who": ("list", "who")},
        based_on=SALES,
    )
    assert [tuple(row.values()) for row in plan.execute()] == [
        ("eng", "a", 2, ["x", "z"]),
        ("eng", "b", 1, [None]),
        ("ops", "a", 2, ["y", "w"]),
        (None, "a", 1, [None]),
        (None, "b", 1, [None]),
    ]


def test_group_by_a_single_str_field_and_dotted_fields() -> None:
    rows = [{"a": {"b": 1}, "v": 1}, {"a": {"b": 2}, "v": 2}, {"a": {"b": 1}, "v": 3}]
    plan = GroupByPlan(group_fields="a.b", aggregates={"s": ("sum", "v")}, based_on=rows)
    assert list(plan.execute()) == [{"a.b": 1, "s": 4}, {"a.b": 2, "s": 2}]


def test_group_field_aliases() -> None:
    plan = GroupByPlan(
        group_fields={"team": "dept", "k": "kind"},
        aggregates={"n": ("count", None)},
        based_on=SALES[:3],
    )
    assert list(plan.execute()) == [
        {"team": "eng", "k": "a", "n": 1},
        {"team": "eng", "k": "b", "n": 1},
        {"team": "ops", "k": "a", "n": 1},
    ]


def test_groups_merge_equal_keys_like_a_collection() -> None:
    rows = [
        {"k": 1, "v": "a"},
        {"k": 1.0, "v": "b"},
        {"k": True, "v": "c"},
        {"k": float("nan"), "v": "d"},
        {"k": float("nan"), "v": "e"},
        {"k": [1], "v": "f"},
        {"k": [1], "v": "g"},
        {"k": "1", "v": "h"},
    ]
    plan = GroupByPlan(group_fields=["k"], aggregates={"vs": ("list", "v")}, based_on=rows)
    result = list(plan.execute())
    assert [row.vs for row in result] == [["a", "b", "c"], ["d", "e"], ["f", "g"], ["h"]]
    assert type(result[0].k) is int  # the first value seen names the group
    assert result[2].k == [1]


def test_group_by_without_fields_is_one_group() -> None:
    plan = GroupByPlan(aggregates=ALL_AGGREGATES, based_on=SALES)
    assert list(plan.execute()) == [
        {
            "n": 7,
            "with_amount": 5,
            "total": 25.5,
            "mean": 5.1,
            "low": 1,
            "high": 10,
            "amounts": [10, 5, None, 2.5, None, 7, 1],
        }
    ]


def test_empty_input_without_group_fields_gives_one_row() -> None:
    aggregates = {key: spec for key, spec in ALL_AGGREGATES.items() if spec[0] != "list"}
    plan = GroupByPlan(group_fields=[], aggregates=aggregates, based_on=[])
    assert list(plan.execute()) == [
        {"n": 0, "with_amount": 0, "total": None, "mean": None, "low": None, "high": None}
    ]
    assert list(GroupByPlan(group_fields=["dept"], aggregates=aggregates, based_on=[])) == []
    assert list(GroupByPlan(based_on=[])) == [{}]


def test_list_without_a_field_collects_rows() -> None:
    plan = GroupByPlan(group_fields=["dept"], aggregates={"rows": ("list", None)}, based_on=SALES)
    first = next(iter(plan.execute()))
    assert first.rows == [SALES[0], SALES[1], SALES[3]]


def test_min_and_max_of_mixed_types_use_the_total_order() -> None:
    rows = [{"v": "b"}, {"v": 3}, {"v": None}, {"v": 1.5}, {"v": b"z"}, {"v": "a"}]
    plan = GroupByPlan(aggregates={"lo": ("min", "v"), "hi": ("max", "v")}, based_on=rows)
    assert list(plan.execute()) == [{"lo": 1.5, "hi": b"z"}]


def test_mixed_type_sum_names_the_aggregate() -> None:
    rows = [{"v": 1}, {"v": "x"}]
    plan = GroupByPlan(aggregates={"total_v": ("sum", "v")}, based_on=rows)
    with pytest.raises(QueryError, match=r"aggregate 'total_v' \(sum\) cannot add 'x' to 1"):
        list(plan.execute())
    average = GroupByPlan(aggregates={"avg_v": ("avg", "v")}, based_on=[{"v": "a"}])
    with pytest.raises(QueryError, match=r"aggregate 'avg_v' \(avg\)"):
        list(average.execute())
    unorderable = GroupByPlan(aggregates={"lo": ("min", "v")}, based_on=[{"v": [1]}])
    with pytest.raises(QueryError, match=r"aggregate 'lo' \(min\)"):
        list(unorderable.execute())


def test_group_by_arguments_are_checked() -> None:
    with pytest.raises(QueryError, match=r"'x'.*unknown function 'median'"):
        GroupByPlan(aggregates={"x": ("median", "v")}, based_on=[])
    with pytest.raises(QueryError, match=r"'x' \(sum\) needs a field"):
        GroupByPlan(aggregates={"x": ("sum", None)}, based_on=[])
    with pytest.raises(QueryError, match="'x' is"):
        GroupByPlan(aggregates={"x": "sum"}, based_on=[])
    with pytest.raises(QueryError, match="name of a group field"):
        GroupByPlan(group_fields=["dept"], aggregates={"dept": ("count", None)}, based_on=[])
    with pytest.raises(QueryError, match="group_fields"):
        GroupByPlan(group_fields=5, based_on=[])
    with pytest.raises(QueryError, match="based_on"):
        GroupByPlan(group_fields=["a"])


def test_count_without_a_field_counts_every_row() -> None:
    plan = GroupByPlan(aggregates={"n": ("count", None)}, based_on=[1, None, 2])
    assert list(plan.execute()) == [{"n": 3}]


# -- OrderByPlan --------------------------------------------------------------------------------


def test_order_by_several_keys_and_directions() -> None:
    plan = OrderByPlan(keys=[("age", "desc"), "name"], based_on=PEOPLE)
    assert names(plan.execute()) == ["Cid", "Ann", "Eve", "Bob", "Fay", "Dee"]
    plan = OrderByPlan(keys=["age", ("name", "desc")], based_on=PEOPLE)
    assert names(plan.execute()) == ["Fay", "Bob", "Eve", "Ann", "Cid", "Dee"]
    plan = OrderByPlan(keys=["city", -F.age], based_on=PEOPLE)
    assert names(plan.execute()) == ["Bob", "Cid", "Ann", "Eve", "Dee", "Fay"]


def test_order_key_forms_agree() -> None:
    forms = [
        ["age"],
        "age",
        F.age,
        +F.age,
        F.age.asc(),
        [("age", "asc")],
        [("age",)],
        [("age", "asc", "nulls_last")],
    ]
    expected = ["Bob", "Fay", "Eve", "Ann", "Cid", "Dee"]
    for keys in forms:
        assert names(OrderByPlan(keys=keys, based_on=PEOPLE).execute()) == expected, keys
    descending = [-F.age, F.age.desc(), [("age", "desc")], [("age", "desc", "nulls_last")]]
    for keys in descending:
        assert names(OrderByPlan(keys=keys, based_on=PEOPLE).execute()) == [
            "Cid",
            "Ann",
            "Eve",
            "Bob",
            "Fay",
            "Dee",
        ], keys


def test_sort_is_stable() -> None:
    rows = [{"k": i % 3, "i": i} for i in range(12)]
    assert [r["i"] for r in OrderByPlan(keys="k", based_on=rows).execute()] == [
        0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11,
    ]  # fmt: skip
    assert [r["i"] for r in OrderByPlan(keys=-F.k, based_on=rows).execute()] == [
        2, 5, 8, 11, 1, 4, 7, 10, 0, 3, 6, 9,
    ]  # fmt: skip


def test_null_goes_last_in_both_directions_unless_asked_first() -> None:
    rows = [{"v": 2}, {"v": None}, {}, {"v": 1}, {"v": 3}]

    def order(keys: Any) -> list[Any]:
        return [row.get("v", "missing") for row in OrderByPlan(keys=keys, based_on=rows).execute()]

    assert order("v") == [1, 2, 3, None, "missing"]
    assert order([("v", "desc")]) == [3, 2, 1, None, "missing"]
    assert order([("v", "asc", "nulls_first")]) == [None, "missing", 1, 2, 3]
    assert order([("v", "desc", "nulls_first")]) == [None, "missing", 3, 2, 1]
    assert order(F.v.asc().nulls_first()) == [None, "missing", 1, 2, 3]
    assert order(F.v.desc().nulls_first()) == [None, "missing", 3, 2, 1]
    assert order((-F.v).nulls_first()) == [None, "missing", 3, 2, 1]


def test_mixed_types_order_deterministically() -> None:
    import datetime as dt

    values: list[Any] = [
        "b",
        dt.date(2020, 1, 1),
        2,
        None,
        b"a",
        float("nan"),
        (1, 2),
        1.5,
        "a",
        dt.datetime(2020, 1, 1),
        True,
        dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        dt.timedelta(1),
    ]
    rows = [{"v": v, "i": i} for i, v in enumerate(values)]
    ascending = [row["i"] for row in OrderByPlan(keys="v", based_on=rows).execute()]
    # numbers (True == 1 < 1.5 < 2) < NaN < str < bytes < tuple < naive < aware < date
    # < timedelta; NULL last
    assert ascending == [10, 7, 2, 5, 8, 0, 4, 6, 9, 11, 1, 12, 3]
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    again = [row["i"] for row in OrderByPlan(keys="v", based_on=shuffled).execute()]
    assert again == ascending
    descending = [row["i"] for row in OrderByPlan(keys=-F.v, based_on=rows).execute()]
    assert descending == [12, 1, 11, 9, 6, 4, 0, 8, 5, 2, 7, 10, 3]


def test_unorderable_values_sort_after_the_others_in_input_order() -> None:
    rows = [{"v": [2]}, {"v": 3}, {"v": {"a": 1}}, {"v": None}, {"v": "s"}, {"v": [1]}]
    plan = OrderByPlan(keys="v", based_on=rows)
    assert [row["v"] for row in plan.execute()] == [3, "s", [2], {"a": 1}, [1], None]


def test_unorderable_values_sort_after_the_others_descending() -> None:
    rows = [{"v": [1], "i": 0}, {"v": 3, "i": 1}, {"v": None, "i": 2}, {"v": 2, "i": 3}]
    rows.append({"v": {"a": 1}, "i": 4})
    plan = OrderByPlan(keys=[("v", "desc")], based_on=rows)
    assert [row["i"] for row in plan.execute()] == [1, 3, 0, 4, 2]
    plan = OrderByPlan(keys=[("v", "desc"), ("i", "desc")], based_on=rows)
    assert [row["i"] for row in plan.execute()] == [1, 3, 4, 0, 2]


def test_unorderable_values_sort_after_the_others_with_mixed_directions() -> None:
    rows = [{"v": [1], "i": 0}, {"v": 3, "i": 1}, {"v": None, "i": 2}, {"v": 2, "i": 3}]
    rows.append({"v": {"a": 1}, "i": 4})
    plan = OrderByPlan(keys=[("v", "desc"), "i"], based_on=rows)
    assert [row["i"] for row in plan.execute()] == [1, 3, 0, 4, 2]
    top = LimitPlan(limit=2, based_on=OrderByPlan(keys=[("v", "desc"), "i"], based_on=rows))
    assert [row["i"] for row in top.execute()] == [1, 3]


def _top_k_cases() -> Iterator[tuple[list[dict[str, Any]], list[Any]]]:
    rng = random.Random(11)
    for _ in range(20):
        rows = [
            {"a": rng.choice([None, 1, 2, 3, "x", 2.5]), "b": rng.randrange(4), "i": i}
            for i in range(rng.randrange(0, 40))
        ]
        keys = rng.choice(
            [["a"], [("a", "desc")], ["b", ("a", "desc")], [("b", "desc", "nulls_first"), "a"]]
        )
        yield rows, keys


def test_order_by_with_limit_is_the_first_k_of_the_full_sort() -> None:
    for rows, keys in _top_k_cases():
        full = [row["i"] for row in OrderByPlan(keys=keys, based_on=rows).execute()]
        for k in range(len(rows) + 2):
            ordered = OrderByPlan(keys=keys, based_on=rows)
            limited = [row["i"] for row in LimitPlan(limit=k, based_on=ordered).execute()]
            assert limited == full[:k], (keys, k)
            own = OrderByPlan(keys=keys, based_on=rows, limit=k)
            assert [row["i"] for row in own.execute()] == full[:k]


def test_order_by_limit_through_offset_and_select() -> None:
    for rows, keys in _top_k_cases():
        full = [row["i"] for row in OrderByPlan(keys=keys, based_on=rows).execute()]
        for k, skip in ((0, 0), (3, 0), (3, 2), (5, 4), (50, 1)):
            ordered = OrderByPlan(keys=keys, based_on=rows)
            plan = LimitPlan(
                limit=k,
                based_on=SelectPlan(
                    fields={"i": "i"}, based_on=OffsetPlan(offset=skip, based_on=ordered)
                ),
            )
            assert [row.i for row in plan.execute()] == full[skip : skip + k]
            nested = LimitPlan(limit=k, based_on=LimitPlan(limit=k + 1, based_on=ordered))
            assert [row["i"] for row in nested.execute()] == full[:k]


class Tracked:
    """A row that counts how many of its kind are alive."""

    alive: ClassVar[int] = 0

    def __init__(self, value: int) -> None:
        self.value = value
        Tracked.alive += 1

    def __del__(self) -> None:
        Tracked.alive -= 1

    def _pb_field(self, name: str) -> Any:
        return self.value if name == "value" else None


class TrackedSource(QueryPlan):
    """A lazy source of Tracked rows; records the most rows alive at once."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.most_alive = 0

    def _rows(self) -> Iterator[Any]:
        rng = random.Random(5)
        before = Tracked.alive
        for _ in range(self.count):
            row = Tracked(rng.randrange(1_000_000))
            self.most_alive = max(self.most_alive, Tracked.alive - before)
            yield row
            del row

    def _describe(self, limit: int | None) -> tuple[str, str]:
        return "Tracked", ""


def test_order_by_with_limit_keeps_only_k_rows() -> None:
    source = TrackedSource(20_000)
    plan = LimitPlan(limit=5, based_on=OrderByPlan(keys="value", based_on=source))
    top = [row.value for row in plan.execute()]
    rng = random.Random(5)
    expected = sorted(rng.randrange(1_000_000) for _ in range(20_000))[:5]
    assert top == expected
    assert source.most_alive <= 5 + 2
    full = TrackedSource(2_000)
    assert len(list(OrderByPlan(keys="value", based_on=full).execute())) == 2_000
    assert full.most_alive >= 2_000  # without a limit, the sort holds every row


def test_order_by_arguments_are_checked() -> None:
    with pytest.raises(QueryError, match="at least one key"):
        OrderByPlan(keys=[], based_on=PEOPLE)
    with pytest.raises(QueryError, match="unknown option 'up'"):
        OrderByPlan(keys=[("age", "up")], based_on=PEOPLE)
    with pytest.raises(QueryError, match="order key"):
        OrderByPlan(keys=[5], based_on=PEOPLE)
    with pytest.raises(QueryError, match="limit"):
        OrderByPlan(keys="age", based_on=PEOPLE, limit=-1)
    with pytest.raises(QueryError, match="based_on"):
        OrderByPlan(keys="age")


# -- SelectPlan and rows ------------------------------------------------------------------------


def test_select_names_fields_callables_and_expressions() -> None:
    plan = SelectPlan(
        fields={
            "who": "name",
            "years": F.age,
            "next": lambda row: None if row.age is None else row.age + 1,
            "ny": F.city == "NY",
            "dept": "dept_id",
        },
        based_on=PEOPLE[:4],
    )
    assert list(plan.execute()) == [
        {"who": "Ann", "years": 34, "next": 35, "ny": True, "dept": 10},
        {"who": "Bob", "years": 25, "next": 26, "ny": False, "dept": 20},
        {"who": "Cid", "years": 41, "next": 42, "ny": True, "dept": 10},
        {"who": "Dee", "years": None, "next": None, "ny": False, "dept": 30},
    ]
    by_list = SelectPlan(fields=["name", "address.city"], based_on=[{"name": "n"}])
    assert list(by_list.execute()) == [{"name": "n", "address.city": None}]


def test_row_reads_by_attribute_and_key_and_equals_dicts() -> None:
    row = next(iter(SelectPlan(fields=["name", "age"], based_on=PEOPLE).execute()))
    assert isinstance(row, Row)
    assert row.name == "Ann" and row["name"] == "Ann"
    assert row.age == 34 and row["age"] == 34
    assert row == {"name": "Ann", "age": 34}
    expected = {"name": "Ann", "age": 34}
    assert expected == row  # dict.__eq__ defers to Row.__eq__
    assert row == Row({"name": "Ann", "age": 34})
    assert row != {"name": "Ann"}
    assert row != Row({"name": "Ann", "age": 35})
    assert row != ("name", "age")
    assert list(row) == ["name", "age"] and len(row) == 2
    assert "age" in row and "city" not in row
    assert dict(row) == {"name": "Ann", "age": 34} == row.as_dict()
    with pytest.raises(AttributeError, match="no field 'city'; its fields: name, age"):
        _ = row.city
    with pytest.raises(KeyError):
        _ = row["city"]
    with pytest.raises(AttributeError, match="read-only"):
        row.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(row)
    assert (F.age > 30).evaluate(row) is True


def test_select_arguments_are_checked() -> None:
    with pytest.raises(QueryError, match="dict or a list"):
        SelectPlan(fields="name", based_on=PEOPLE)
    with pytest.raises(QueryError, match="at least one field"):
        SelectPlan(fields={}, based_on=PEOPLE)
    with pytest.raises(QueryError, match="at least one field"):
        SelectPlan(fields={1: "a"}, based_on=PEOPLE)
    with pytest.raises(QueryError, match="not 5"):
        SelectPlan(fields={"a": 5}, based_on=PEOPLE)
    with pytest.raises(QueryError, match="based_on"):
        SelectPlan(fields=["a"])


# -- LimitPlan, OffsetPlan, DistinctPlan ---------------------------------------------------------


def test_limit_and_offset() -> None:
    assert names(LimitPlan(limit=2, based_on=PEOPLE).execute()) == ["Ann", "Bob"]
    assert names(LimitPlan(limit=0, based_on=PEOPLE).execute()) == []
    assert len(list(LimitPlan(limit=100, based_on=PEOPLE).execute())) == 6
    assert names(OffsetPlan(offset=4, based_on=PEOPLE).execute()) == ["Eve", "Fay"]
    assert names(OffsetPlan(offset=0, based_on=PEOPLE).execute()) == names(PEOPLE)
    assert names(OffsetPlan(offset=9, based_on=PEOPLE).execute()) == []
    page = LimitPlan(limit=2, based_on=OffsetPlan(offset=2, based_on=PEOPLE))
    assert names(page.execute()) == ["Cid", "Dee"]
    first_then_skip = OffsetPlan(offset=1, based_on=LimitPlan(limit=3, based_on=PEOPLE))
    assert names(first_then_skip.execute()) == ["Bob", "Cid"]


@pytest.mark.parametrize("bad", [-1, 1.5, "2", None, True])
def test_limit_and_offset_reject_bad_counts(bad: Any) -> None:
    with pytest.raises(QueryError, match="non-negative int"):
        LimitPlan(limit=bad, based_on=PEOPLE)
    with pytest.raises(QueryError, match="non-negative int"):
        OffsetPlan(offset=bad, based_on=PEOPLE)


def test_distinct_whole_rows() -> None:
    rows = [1, 1.0, True, 2, "2", None, None, float("nan"), float("nan"), (1, 2), (1.0, 2), 3]
    assert list(DistinctPlan(based_on=rows).execute()) == [1, 2, "2", None, rows[7], (1, 2), 3]
    dicts = [{"a": 1}, {"a": 1.0}, {"a": 2}, [1], [1], [2]]
    assert list(DistinctPlan(based_on=dicts).execute()) == [{"a": 1}, {"a": 2}, [1], [2]]
    objects = [Person(a=1), Person(a=1), Person(a=2)]
    assert list(DistinctPlan(based_on=objects).execute()) == [Person(a=1), Person(a=2)]


def test_distinct_and_group_by_find_nan_equal_inside_rows_that_cannot_be_keys() -> None:
    # Two NaN objects: Python's == says the lists differ unless both hold the same one.
    rows = [
        {"tags": ["a"], "v": float("nan")},
        {"tags": ["a"], "v": float("nan")},
        Person(tags=["b"], v=float("nan")),
        Person(tags=["b"], v=float("nan")),
        {"tags": ["a"], "v": 1.0},
        {"tags": ["a"], "v": 1},
    ]
    assert list(DistinctPlan(based_on=rows).execute()) == [rows[0], rows[2], rows[4]]
    groups = GroupByPlan(
        group_fields=["tags", "v"], aggregates={"n": ("count", None)}, based_on=rows
    )
    assert [row.n for row in groups.execute()] == [2, 2, 2]


def test_distinct_by_fields_keeps_the_first_row() -> None:
    plan = DistinctPlan(based_on=PEOPLE, fields=["city"])
    assert names(plan.execute()) == ["Ann", "Bob", "Dee", "Fay"]
    plan = DistinctPlan(based_on=PEOPLE, fields=["dept_id"])
    assert names(plan.execute()) == ["Ann", "Bob", "Dee", "Fay"]  # 20 and 20.0 are one
    plan = DistinctPlan(based_on=PEOPLE, fields=["city", "age"])
    assert names(plan.execute()) == ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay"]
    rows = [{"a": {"b": [1]}}, {"a": {"b": [1]}}, {"a": {"b": [2]}}]
    assert list(DistinctPlan(based_on=rows, fields=["a.b"]).execute()) == [rows[0], rows[2]]


def test_distinct_with_a_single_str_field() -> None:
    rows = [{"city": "a", "n": 1}, {"city": "b", "n": 2}, {"city": "a", "n": 3}]
    try:
        result = list(DistinctPlan(based_on=rows, fields="city").execute())  # type: ignore[arg-type]
    except QueryError:
        return  # refusing a bare str is fine too
    assert result == rows[:2]


def test_distinct_of_selected_rows() -> None:
    plan = DistinctPlan(based_on=SelectPlan(fields=["city"], based_on=PEOPLE))
    assert list(plan.execute()) == [{"city": "NY"}, {"city": "LA"}, {"city": "SF"}, {"city": None}]


# -- streaming ------------------------------------------------------------------------------------


class CountingSource(QueryPlan):
    """A lazy source of ``{"i": 0}, {"i": 1}, ...`` that counts the rows pulled."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.pulled = 0

    def _rows(self) -> Iterator[Any]:
        for i in range(self.count):
            self.pulled += 1
            yield {"i": i}

    def estimate(self) -> int | None:
        return self.count

    def _describe(self, limit: int | None) -> tuple[str, str]:
        return "Counting", f"{self.count} rows"


HUGE = 10**12


def test_execute_returns_a_fresh_iterator() -> None:
    source = CountingSource(HUGE)
    rows = source.execute()
    assert iter(rows) is rows
    assert not isinstance(rows, (list, tuple))
    assert next(rows) == {"i": 0}
    assert next(rows) == {"i": 1}
    assert source.pulled == 2
    assert next(source.execute()) == {"i": 0}
    plan = WherePlan(filter=F.i > 1, based_on=[{"i": 1}, {"i": 2}])
    assert list(plan.execute()) == list(plan.execute()) == [{"i": 2}]
    assert list(plan) == [{"i": 2}]


def test_where_pulls_only_as_many_rows_as_needed() -> None:
    source = CountingSource(HUGE)
    plan = LimitPlan(limit=3, based_on=WherePlan(filter=F.i >= 10, based_on=source))
    assert list(plan.execute()) == [{"i": 10}, {"i": 11}, {"i": 12}]
    assert source.pulled == 13


def test_select_and_offset_pull_only_as_many_rows_as_needed() -> None:
    source = CountingSource(HUGE)
    plan = LimitPlan(
        limit=4,
        based_on=SelectPlan(
            fields={"twice": lambda row: row["i"] * 2},
            based_on=OffsetPlan(offset=5, based_on=source),
        ),
    )
    assert [row.twice for row in plan.execute()] == [10, 12, 14, 16]
    assert source.pulled == 9


def test_streaming_through_a_whole_pipeline_of_one_row_operators() -> None:
    source = CountingSource(HUGE)
    plan = LimitPlan(
        limit=2,
        based_on=DistinctPlan(
            based_on=SelectPlan(
                fields={"tens": lambda row: row["i"] // 10},
                based_on=WherePlan(filter=F.i.between(100, HUGE), based_on=source),
            )
        ),
    )
    assert list(plan.execute()) == [{"tens": 10}, {"tens": 11}]
    assert source.pulled == 111


def test_join_left_side_streams_through_a_where() -> None:
    source = CountingSource(HUGE)
    plan = JoinPlan(
        based_on=WherePlan(filter=F.i > 3, based_on=source),
        join_query=[{"i": 5, "tag": "five"}, {"i": 6, "tag": "six"}],
        on=("i", "i"),
    )
    rows = plan.execute()
    assert next(rows).right["tag"] == "five"
    assert next(rows).right["tag"] == "six"
    assert source.pulled == 7


def test_actual_rows_counts_rows_pulled() -> None:
    source = CountingSource(HUGE)
    where = WherePlan(filter=F.i >= 10, based_on=source)
    limit = LimitPlan(limit=3, based_on=where)
    assert limit.explain().actual_rows is None
    assert list(limit.execute()) == [{"i": 10}, {"i": 11}, {"i": 12}]
    description = limit.explain()
    assert description.actual_rows == 3
    assert description.children[0].actual_rows == 3
    assert description.children[0].children[0].actual_rows == 13


def test_actual_rows_of_a_partly_consumed_plan() -> None:
    plan = WherePlan(filter=F.i >= 0, based_on=CountingSource(HUGE))
    rows = plan.execute()
    next(rows)
    next(rows)
    assert plan.explain().actual_rows == 2


# -- the fluent builder ----------------------------------------------------------------------------


@pytest.fixture
def db(space: ObjectSpace) -> Database:
    database = space.new_database("plans")
    with database.transaction() as tr:
        tr.set_root_object("people", Dictionary({p.id: p for p in PEOPLE}))
        tr.set_root_object(
            "depts",
            List([{"id": 10, "name": "Eng"}, {"id": 20, "name": "Sales"}, {"id": 40, "name": "X"}]),
        )
    return database


def _shape(plan: QueryPlan) -> list[tuple[str, str, int | None]]:
    return [(node.operator, node.detail, node.estimated_rows) for node in plan.explain().walk()]


def test_builder_equals_the_explicit_plan_tree(db: Database) -> None:
    with db.transaction() as tr:
        people = tr.get_root_object("people")
        query = tr.query(people).where(F.age > 20).order_by(-F.age).select(name=F.name).limit(10)
        explicit = LimitPlan(
            limit=10,
            based_on=SelectPlan(
                fields={"name": F.name},
                based_on=OrderByPlan(
                    keys=[-F.age], based_on=WherePlan(filter=F.age > 20, based_on=people)
                ),
            ),
        )
        assert query.to_list() == list(explicit.execute())
        assert query.to_list() == [
            {"name": "Cid"},
            {"name": "Ann"},
            {"name": "Eve"},
            {"name": "Bob"},
            {"name": "Fay"},
        ]
        assert _shape(query.plan) == _shape(explicit)
        assert [node.operator for node in query.explain().walk()] == [
            "Limit",
            "Select",
            "OrderBy",
            "Where",
            "Scan",
        ]
        assert "top 10 in a heap" in query.explain().find("OrderBy").detail  # type: ignore[union-attr]


def test_builder_terminals(db: Database) -> None:
    with db.transaction() as tr:
        people = tr.get_root_object("people")
        q = tr.query(people)
        assert names(q.to_list()) == ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay"]
        assert names(q) == ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay"]
        assert q.first().name == "Ann"
        assert q.order_by("name", ("age", "desc")).first().name == "Ann"
        assert q.order_by(-F.age).first().name == "Cid"
        assert q.where(F.city == "Paris").first() is None
        assert q.where(F.city == "Paris").first("none") == "none"
        assert q.count() == 6
        assert q.where(F.city == "NY").count() == 3
        assert q.where(F.city == "Paris").count() == 0
        assert q.where(F.city == "NY").exists() is True
        assert q.where(F.city == "Paris").exists() is False


def test_builder_terminals_stop_early() -> None:
    source = CountingSource(HUGE)
    query = Query(source).where(F.i > 5)
    assert query.exists() is True
    assert source.pulled == 7
    assert query.first() == {"i": 6}
    assert source.pulled == 7 + 7


def test_builder_where_where_is_one_filter(db: Database) -> None:
    with db.transaction() as tr:
        people = tr.get_root_object("people")
        q = tr.query(people).where(F.city == "NY").where(["age", "<", 40])
        assert names(q) == ["Ann", "Eve"]
        assert isinstance(q.plan, WherePlan)
        assert [node.operator for node in q.explain().walk()] == ["Where", "Scan"]
        assert str(q.plan.filter) == "(city == 'NY') & (age < 40)"
        limited = tr.query(people).where(F.city == "NY").limit(2).where(F.age < 40)
        assert names(limited) == ["Ann"]
        assert [node.operator for node in limited.explain().walk()] == [
            "Where",
            "Limit",
            "Where",
            "Scan",
        ]


def test_builder_is_immutable(db: Database) -> None:
    with db.transaction() as tr:
        base = tr.query(tr.get_root_object("people"))
        narrowed = base.where(F.city == "NY")
        ordered = narrowed.order_by("age")
        assert base.count() == 6
        assert names(narrowed) == ["Ann", "Cid", "Eve"]
        assert names(ordered) == ["Eve", "Ann", "Cid"]
        assert names(narrowed.order_by(-F.age)) == ["Cid", "Ann", "Eve"]


def test_builder_join_group_by_distinct_offset(db: Database) -> None:
    with db.transaction() as tr:
        people = tr.get_root_object("people")
        depts = tr.get_root_object("depts")
        joined = tr.query(people).join(depts, on=("dept_id", "id"))
        assert [(row.left.name, row.right["name"]) for row in joined] == [
            ("Ann", "Eng"),
            ("Bob", "Sales"),
            ("Cid", "Eng"),
            ("Eve", "Sales"),
        ]
        right = tr.query(people).join(tr.query(depts).where(F.id > 15), on=("dept_id", "id"))
        assert [row.left.name for row in right] == ["Bob", "Eve"]
        outer = tr.query(people).join(depts, on=("dept_id", "id"), how="right")
        assert [row.right["name"] for row in outer if row.left is None] == ["X"]
        filtered = joined.where(F.right.name == "Eng").select(who=F.left.name)
        assert filtered.to_list() == [{"who": "Ann"}, {"who": "Cid"}]

        grouped = tr.query(people).group_by("city", n=("count", None), oldest=("max", "age"))
        assert grouped.to_list() == [
            {"city": "NY", "n": 3, "oldest": 41},
            {"city": "LA", "n": 1, "oldest": 25},
            {"city": "SF", "n": 1, "oldest": None},
            {"city": None, "n": 1, "oldest": 25},
        ]
        whole = tr.query(people).group_by(n=("count", None), total=("sum", "age"))
        assert whole.to_list() == [{"n": 6, "total": 154}]
        assert tr.query(people).select("city").distinct().count() == 4
        assert names(tr.query(people).distinct("dept_id")) == ["Ann", "Bob", "Dee", "Fay"]
        assert names(tr.query(people).order_by("name").offset(4)) == ["Eve", "Fay"]
        page = tr.query(people).order_by(-F.age).offset(1).limit(2)
        assert names(page) == ["Ann", "Eve"]
        assert "top 3 in a heap" in page.explain().find("OrderBy").detail  # type: ignore[union-attr]


def test_builder_arguments_are_checked(db: Database) -> None:
    with db.transaction() as tr:
        q = tr.query(tr.get_root_object("people"))
        with pytest.raises(QueryError, match="at least one key"):
            q.order_by()
        with pytest.raises(QueryError, match="at least one field"):
            q.select()
        with pytest.raises(QueryError, match="expected a condition"):
            q.where("age > 3")
        with pytest.raises(QueryError, match="non-negative int"):
            q.limit(-1).to_list()
        with pytest.raises(QueryError, match="non-negative int"):
            q.offset(-2).to_list()
        with pytest.raises(QueryError, match="not int"):
            tr.query(5)


def test_builder_over_lists_and_plans() -> None:
    assert Query(PEOPLE).where(F.age < 30).count() == 3
    assert Query(ValuesPlan(PEOPLE)).order_by("age").first().name == "Bob"
    inner = WherePlan(filter=F.city == "NY", based_on=PEOPLE)
    assert names(Query(inner).order_by(-F.age)) == ["Cid", "Ann", "Eve"]


# -- transactions --------------------------------------------------------------------------------


def test_plans_reading_a_collection_after_its_transaction_ended(db: Database) -> None:
    with db.transaction() as tr:
        tr.set_root_object("big", Dictionary({i: {"i": i} for i in range(3000)}))
    tr = db.new_transaction()
    big = tr.get_root_object("big")
    plan = WherePlan(filter=F.i > 5, based_on=big)
    query = tr.query(big).order_by(-F.i).limit(3)
    tr.abort()
    with pytest.raises(TransactionClosedError):
        list(plan.execute())
    with pytest.raises(TransactionClosedError):
        query.to_list()
    with pytest.raises(TransactionClosedError):
        list(JoinPlan(based_on=[{"i": 1}], join_query=big, on=("i", "i")).execute())
    with pytest.raises(TransactionClosedError):
        tr.query(big)


def test_plans_read_through_an_open_transaction(db: Database) -> None:
    with db.transaction() as tr:
        tr.set_root_object("big", Dictionary({i: {"i": i} for i in range(3000)}))
    tr = db.new_transaction()
    try:
        big = tr.get_root_object("big")
        assert tr.query(big).order_by(-F.i).limit(3).select("i").to_list() == [
            {"i": 2999},
            {"i": 2998},
            {"i": 2997},
        ]
        assert tr.query(big).where(F.i.between(10, 12)).count() == 3
    finally:
        tr.abort()
