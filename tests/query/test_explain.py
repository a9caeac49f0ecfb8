"""explain(): which plans use an index, their estimates and actual rows, and their results.

The data: an indexed Dictionary of 3,000 DBObjects. Every expected count is
computed from the rows themselves, and every indexed result is compared,
row for row, with the same query on an unindexed copy.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from protobase import (
    Database,
    DBObject,
    Dictionary,
    Expression,
    F,
    LimitPlan,
    ObjectSpace,
    OrderByPlan,
    PlanDescription,
    WherePlan,
)
from protobase.query import ValuesPlan


class Person(DBObject):
    pass


ROWS = 3000
CITIES = [f"city{n:02d}" for n in range(30)]
INDEXED = ["id", "age", "city", "score", "email", "nick"]


def _make_rows() -> dict[int, Person]:
    rng = random.Random(2024)
    rows = {}
    for key in range(ROWS):
        rows[key] = Person(
            id=(key * 7919) % 3001,
            age=rng.randrange(100),
            city=rng.choice(CITIES),
            score=round(rng.uniform(0, 100), 3),
            email=None if rng.random() < 0.03 else f"user{key}@example.com",
            nick=f"nick{key}" if rng.random() < 0.05 else None,
            level=rng.randrange(5),
        )
    return rows


@pytest.fixture(scope="module")
def data() -> dict[int, Person]:
    return _make_rows()


@pytest.fixture(scope="module")
def indexed(data: dict[int, Person]) -> Dictionary:
    people = Dictionary(data)
    for field in INDEXED:
        people = people.add_index(field, unique=field == "id")
    return people


@pytest.fixture(scope="module")
def plain(data: dict[int, Person]) -> Dictionary:
    return Dictionary(data)


def matching(data: dict[int, Person], expr: Expression) -> list[Person]:
    """The rows of `data` for which `expr` is TRUE, in key order (a scan by hand)."""
    return [data[key] for key in sorted(data) if expr.evaluate(data[key]) is True]


def test_the_data_has_the_shape_the_tests_rely_on(data: dict[int, Person]) -> None:
    assert len(data) == ROWS
    ages = {row.age for row in data.values()}
    assert ages == set(range(100))
    assert {row.city for row in data.values()} == set(CITIES)
    nulls = sum(1 for row in data.values() if row.email is None)
    nicks = sum(1 for row in data.values() if row.nick is not None)
    assert 30 <= nulls <= ROWS // 10  # is_null on email is selective
    assert 30 <= nicks <= ROWS // 10  # is_not_null on nick is selective


# -- index use for each operator ---------------------------------------------------------------

SINGLE_RANGES = [
    (F.age == 42, "age"),
    (F.id == 1234, "id"),
    (F.city == "city07", "city"),
    (F.city.is_in(["city11"]), "city"),
    (F.age > 90, "age"),
    (F.age >= 95, "age"),
    (F.age < 5, "age"),
    (F.age <= 3, "age"),
    (F.score < 2.5, "score"),
    (F.score >= 97.25, "score"),
    (F.age.between(20, 29), "age"),
    (F.city.between("city10", "city12"), "city"),
    (F.email.is_null(), "email"),
    (F.nick.is_not_null(), "nick"),
    (Expression.compile(["age", "==", 42.0]), "age"),
    (Expression.compile(["age", "in", [42, None]]), "age"),
]


@pytest.mark.parametrize(
    ("expr", "field"), SINGLE_RANGES, ids=[str(expr) for expr, _ in SINGLE_RANGES]
)
def test_single_index_range(
    indexed: Dictionary, plain: Dictionary, data: dict[int, Person], expr: Expression, field: str
) -> None:
    expected = matching(data, expr)
    plan = WherePlan(filter=expr, based_on=indexed)
    before = plan.explain()
    assert before.uses_index
    assert before.operator == "Where"
    assert "(by index)" in before.detail
    assert before.actual_rows is None
    index_range = before.find("IndexRange")
    assert index_range is not None
    assert f"(index on '{field}')" in index_range.detail
    assert index_range.actual_rows is None
    assert before.find("Scan") is None

    rows = list(plan.execute())
    assert rows == expected
    assert rows == list(WherePlan(filter=expr, based_on=plain).execute())

    after = plan.explain()
    assert after.actual_rows == len(rows)
    index_range = after.find("IndexRange")
    assert index_range is not None
    # a lone range: its estimate is exact, and so is the Where's
    assert index_range.estimated_rows == len(expected)
    assert after.estimated_rows == len(expected)
    assert index_range.actual_rows == len(expected)
    assert after.find("IndexFetch").actual_rows == len(expected)  # type: ignore[union-attr]


ABSENT_ID = (3000 * 7919) % 3001  # the one id in 0..3000 that no row has


def test_unique_index_equality_is_estimated_at_one_without_counting(
    indexed: Dictionary, data: dict[int, Person]
) -> None:
    # Documented (docs/queries.md, planner): an equality on a unique index is
    # estimated at 1 without counting; the actual count shows the truth.
    assert all(row.id != ABSENT_ID for row in data.values())
    plan = WherePlan(filter=F.id == ABSENT_ID, based_on=indexed)
    assert plan.explain().find("IndexRange").estimated_rows == 1  # type: ignore[union-attr]
    assert list(plan.execute()) == []
    assert plan.explain().find("IndexRange").actual_rows == 0  # type: ignore[union-attr]


def test_in_with_several_values_is_a_union_of_ranges(
    indexed: Dictionary, plain: Dictionary, data: dict[int, Person]
) -> None:
    expr = F.age.is_in([3, 50, 77])
    plan = WherePlan(filter=expr, based_on=indexed)
    description = plan.explain()
    union = description.find("IndexUnion")
    assert union is not None
    ranges = [node for node in union.children if node.operator == "IndexRange"]
    assert [node.detail for node in ranges] == [
        "age == 3 (index on 'age')",
        "age == 50 (index on 'age')",
        "age == 77 (index on 'age')",
    ]
    for node, age in zip(ranges, (3, 50, 77), strict=True):
        assert node.estimated_rows == sum(1 for row in data.values() if row.age == age)
    expected = matching(data, expr)
    assert union.estimated_rows == len(expected)
    assert list(plan.execute()) == expected == list(WherePlan(expr, plain).execute())


def test_and_intersects_two_indexes(
    indexed: Dictionary, plain: Dictionary, data: dict[int, Person]
) -> None:
    expr = (F.city == "city03") & F.age.between(20, 29)
    plan = WherePlan(filter=expr, based_on=indexed)
    description = plan.explain()
    intersect = description.find("IndexIntersect")
    assert intersect is not None
    details = sorted(node.detail for node in intersect.children)
    assert details == [
        "age between 20 and 29 (index on 'age')",
        "city == 'city03' (index on 'city')",
    ]
    city_rows = sum(1 for row in data.values() if row.city == "city03")
    age_rows = sum(1 for row in data.values() if 20 <= row.age <= 29)
    assert sorted(node.estimated_rows for node in intersect.children) == sorted(
        [city_rows, age_rows]
    )
    assert intersect.estimated_rows == min(city_rows, age_rows)
    rows = list(plan.execute())
    expected = matching(data, expr)
    assert rows == expected == list(WherePlan(filter=expr, based_on=plain).execute())
    after = plan.explain()
    assert after.find("IndexIntersect").actual_rows == len(expected)  # type: ignore[union-attr]
    assert after.actual_rows == len(expected)


def test_and_with_an_unindexed_part_uses_the_indexed_one(
    indexed: Dictionary, plain: Dictionary, data: dict[int, Person]
) -> None:
    expr = (F.age == 42) & (F.level == 2) & (F.city != "city00")
    plan = WherePlan(filter=expr, based_on=indexed)
    description = plan.explain()
    assert description.uses_index
    assert [node.operator for node in description.walk()] == ["Where", "IndexFetch", "IndexRange"]
    expected = matching(data, expr)
    assert list(plan.execute()) == expected == list(WherePlan(expr, plain).execute())
    after = plan.explain()
    ages = sum(1 for row in data.values() if row.age == 42)
    assert after.find("IndexRange").actual_rows == ages  # type: ignore[union-attr]
    assert after.actual_rows == len(expected) < ages


def test_or_unites_indexes(indexed: Dictionary, plain: Dictionary, data: dict[int, Person]) -> None:
    expr = (F.age == 3) | (F.city == "city07") | F.email.is_null()
    plan = WherePlan(filter=expr, based_on=indexed)
    description = plan.explain()
    union = description.find("IndexUnion")
    assert union is not None
    assert [node.detail for node in union.children] == [
        "age == 3 (index on 'age')",
        "city == 'city07' (index on 'city')",
        "email is_null (index on 'email')",
    ]
    assert union.estimated_rows == sum(node.estimated_rows for node in union.children)
    expected = matching(data, expr)
    assert list(plan.execute()) == expected == list(WherePlan(expr, plain).execute())
    assert plan.explain().actual_rows == len(expected)


def test_a_value_of_another_type_uses_an_empty_range(
    indexed: Dictionary, plain: Dictionary
) -> None:
    for expr in (F.age > "x", F.city < 5, F.age.between(1, "z"), F.age == b"1"):
        plan = WherePlan(filter=expr, based_on=indexed)
        description = plan.explain()
        assert description.uses_index, expr
        assert description.find("IndexRange").estimated_rows == 0  # type: ignore[union-attr]
        assert list(plan.execute()) == [] == list(WherePlan(expr, plain).execute())


# -- scans -----------------------------------------------------------------------------------------

SCANS = [
    (F.level == 3, "no index answers this condition"),
    (F.age != 3, "no index answers this condition"),
    (F.city.contains("07"), "no index answers this condition"),
    (F.city.startswith("city0"), "no index answers this condition"),
    ((F.age == 3) | (F.level == 2), "no index answers this condition"),
    (F.age < F.id, "no index answers this condition"),
    (~(F.age == 3), "no index answers this condition"),
    (F.age >= 30, "a scan is cheaper"),
    (F.age.between(10, 60), "a scan is cheaper"),
    (F.email.is_not_null(), "a scan is cheaper"),
    (F.nick.is_null(), "a scan is cheaper"),
    ((F.age > 20) & (F.score > 10), "a scan is cheaper"),
]


@pytest.mark.parametrize(("expr", "why"), SCANS, ids=[str(expr) for expr, _ in SCANS])
def test_scans(
    indexed: Dictionary, plain: Dictionary, data: dict[int, Person], expr: Expression, why: str
) -> None:
    plan = WherePlan(filter=expr, based_on=indexed)
    description = plan.explain()
    assert not description.uses_index
    assert description.find("IndexRange") is None
    scan = description.find("Scan")
    assert scan is not None
    assert scan.detail == "Dictionary, indexes on id, age, city, score, email, nick"
    assert scan.estimated_rows == ROWS
    assert "(by scan: " in description.detail
    assert why in description.detail
    assert description.actual_rows is None
    rows = list(plan.execute())
    expected = matching(data, expr)
    assert rows == expected == list(WherePlan(filter=expr, based_on=plain).execute())
    after = plan.explain()
    assert after.actual_rows == len(expected)
    assert after.find("Scan").actual_rows == ROWS  # type: ignore[union-attr]


def test_unselective_range_names_the_numbers(indexed: Dictionary, data: dict[int, Person]) -> None:
    expected = sum(1 for row in data.values() if row.age >= 30)
    assert expected > ROWS // 3
    description = WherePlan(filter=F.age >= 30, based_on=indexed).explain()
    assert f"about {expected:,} of {ROWS:,} rows" in description.detail


def test_collection_without_indexes(plain: Dictionary, data: dict[int, Person]) -> None:
    plan = WherePlan(filter=F.age == 42, based_on=plain)
    description = plan.explain()
    assert not description.uses_index
    assert "by scan: no index on the collection" in description.detail
    assert description.find("Scan").detail == "Dictionary"  # type: ignore[union-attr]
    assert list(plan.execute()) == matching(data, F.age == 42)


def test_where_over_a_plan_that_is_not_a_collection(
    indexed: Dictionary, data: dict[int, Person]
) -> None:
    sources = [
        OrderByPlan(keys="id", based_on=indexed),
        LimitPlan(limit=ROWS, based_on=indexed),
        ValuesPlan(list(data.values())),
        list(data.values()),
    ]
    for source in sources:
        plan = WherePlan(filter=F.age == 42, based_on=source)
        description = plan.explain()
        assert not description.uses_index
        assert "by scan: the input is not a collection" in description.detail
        rows = list(plan.execute())
        assert sorted(row.id for row in rows) == sorted(
            row.id for row in matching(data, F.age == 42)
        )
        assert plan.explain().actual_rows == len(rows)


def test_where_over_where_indexes_only_the_inner_one(indexed: Dictionary) -> None:
    inner = WherePlan(filter=F.age == 42, based_on=indexed)
    outer = WherePlan(filter=F.city == "city01", based_on=inner)
    description = outer.explain()
    assert "the input is not a collection" in description.detail
    assert description.uses_index  # the inner Where uses its index
    assert [node.operator for node in description.walk()] == [
        "Where",
        "Where",
        "IndexFetch",
        "IndexRange",
    ]


# -- rendering -------------------------------------------------------------------------------------


def test_rendered_tree_of_an_indexed_plan(indexed: Dictionary, data: dict[int, Person]) -> None:
    plan = WherePlan(filter=F.age == 42, based_on=indexed)
    count = sum(1 for row in data.values() if row.age == 42)
    before = str(plan.explain()).splitlines()
    assert len(before) == 3
    assert before[0] == f"Where age == 42 (by index) [estimated {count} rows]"
    assert before[1].startswith("  IndexFetch rows of Dictionary in collection order")
    assert before[1].endswith(f" [estimated {count} rows]")
    assert before[2] == f"    IndexRange age == 42 (index on 'age') [estimated {count} rows]"
    list(plan.execute())
    after = str(plan.explain()).splitlines()
    assert after[0] == f"Where age == 42 (by index) [estimated {count}, actual {count} rows]"
    assert after[2] == (
        f"    IndexRange age == 42 (index on 'age') [estimated {count}, actual {count} rows]"
    )


def test_rendered_tree_of_a_scan(indexed: Dictionary, data: dict[int, Person]) -> None:
    plan = LimitPlan(limit=5, based_on=WherePlan(filter=F.level == 3, based_on=indexed))
    text = str(plan.explain())
    lines = text.splitlines()
    assert lines[0] == "Limit 5 [estimated 5 rows]"
    assert lines[1].startswith("  Where level == 3 (by scan: no index answers this condition)")
    assert lines[2] == (
        "    Scan Dictionary, indexes on id, age, city, score, email, nick [estimated 3,000 rows]"
    )
    assert "IndexRange" not in text
    assert len(list(plan.execute())) == 5
    after = plan.explain()
    assert after.actual_rows == 5
    assert after.children[0].actual_rows == 5
    assert isinstance(after, PlanDescription)
    assert "actual 5 rows" in str(after).splitlines()[1]


def test_render_of_intersect_and_union_nests_children(indexed: Dictionary) -> None:
    expr = ((F.city == "city03") & (F.age == 7)) | (F.id == 5)
    text = str(WherePlan(filter=expr, based_on=indexed).explain())
    operators = [line.split(" ")[0] for line in (raw.strip() for raw in text.splitlines())]
    depths = [(len(raw) - len(raw.lstrip(" "))) // 2 for raw in text.splitlines()]
    assert list(zip(operators, depths, strict=True)) == [
        ("Where", 0),
        ("IndexFetch", 1),
        ("IndexUnion", 2),
        ("IndexIntersect", 3),
        ("IndexRange", 4),
        ("IndexRange", 4),
        ("IndexRange", 3),
    ]


# -- indexes stored and loaded ---------------------------------------------------------------------


@pytest.fixture
def db(space: ObjectSpace, indexed: Dictionary) -> Database:
    database = space.new_database("explain")
    with database.transaction() as tr:
        tr.set_root_object("people", indexed)
    return database


def test_a_stored_collection_explains_and_answers_alike(
    db: Database, plain: Dictionary, data: dict[int, Person]
) -> None:
    tr = db.new_read_only_transaction()
    try:
        people = tr.get_root_object("people")
        assert people.indexed_fields == INDEXED
        for expr, uses_index in (
            (F.age == 42, True),
            ((F.age == 3) | (F.city == "city07"), True),
            ((F.city == "city03") & F.age.between(20, 29), True),
            (F.nick.is_not_null(), True),
            (F.age >= 30, False),
        ):
            plan = WherePlan(filter=expr, based_on=people)
            fresh = WherePlan(filter=expr, based_on=plain)
            assert plan.explain().uses_index is uses_index
            assert list(plan.execute()) == list(fresh.execute()) == matching(data, expr)
        query = tr.query(people).where(F.age == 42).where(F.level == 1).order_by(-F.score)
        assert query.explain().uses_index
        expected = sorted(matching(data, (F.age == 42) & (F.level == 1)), key=lambda r: -r.score)
        assert query.to_list() == expected
    finally:
        tr.abort()


# -- rows that an index cannot hold ----------------------------------------------------------------


def test_is_not_null_keeps_rows_whose_value_cannot_be_indexed() -> None:
    # a regression test: 7dbf648 answered ~is_null from the index, which then held no
    # entry for a list or dict value, and lost those rows
    rows: dict[int, Any] = {key: Person(key=key, tags=None) for key in range(60)}
    rows[100] = Person(key=100, tags=["a", "b"])
    rows[101] = Person(key=101, tags={"a": 1})
    rows[102] = Person(key=102, tags="plain")
    people = Dictionary(rows)
    expr = F.tags.is_not_null()
    scanned = [row.key for row in WherePlan(filter=expr, based_on=people).execute()]
    assert scanned == [100, 101, 102]
    indexed_plan = WherePlan(filter=expr, based_on=people.add_index("tags"))
    assert [row.key for row in indexed_plan.execute()] == scanned


def test_rows_with_unindexable_values_are_still_found_by_comparisons() -> None:
    rows: dict[int, Any] = {key: Person(key=key, v=key % 50) for key in range(200)}
    rows[500] = Person(key=500, v=[7])
    rows[501] = Person(key=501, v={"v": 7})
    people = Dictionary(rows).add_index("v")
    plain = Dictionary(rows)
    for expr in (F.v == 7, F.v > 47, F.v.is_in([7, 8]), F.v.is_null(), F.v.between(1, 2)):
        plan = WherePlan(filter=expr, based_on=people)
        assert plan.explain().uses_index, expr
        assert list(plan.execute()) == list(WherePlan(filter=expr, based_on=plain).execute())
    for expr in (F.v == [7], F.v.is_in([[7]])):
        plan = WherePlan(filter=expr, based_on=people)
        assert not plan.explain().uses_index, expr
        assert [row.key for row in plan.execute()] == [500]
