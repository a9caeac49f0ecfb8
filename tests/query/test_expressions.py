"""Expressions: the prefix syntax, the operator form, three-valued logic, types and errors.

Every check evaluates an expression on a row and asserts the exact result:
True (TRUE), False (FALSE) or None (UNKNOWN).
"""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from typing import Any

import pytest

from protobase import (
    Database,
    DBObject,
    Dictionary,
    Expression,
    F,
    List,
    Literal,
    MutableObject,
    ObjectSpace,
    QueryError,
    Row,
    Set,
    TransactionClosedError,
)
from protobase.query import JoinRow


class Person(DBObject):
    pass


class Member(MutableObject):
    pass


ANN = Person(
    name="Ann",
    age=34,
    city="NY",
    vip=True,
    tags=["ops", "oncall"],
    address=Person(city="Boston", zip="02101"),
    meta={"level": 3, "odd key": "yes"},
)
BOB = Person(name="Bob", age=25, city="LA", vip=False, email="bob@example.com")
DEE = Person(name="Dee", city="SF", email=None)


def ev(spec: Any, row: Any) -> bool | None:
    """Compile a prefix spec (or pass an Expression through) and evaluate it on `row`."""
    return Expression.compile(spec).evaluate(row)


# -- the prefix syntax: every operator --------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "row", "expected"),
    [
        (["age", "==", 34], ANN, True),
        (["age", "==", 35], ANN, False),
        (["age", "!=", 35], ANN, True),
        (["age", "!=", 34], ANN, False),
        (["age", ">", 33], ANN, True),
        (["age", ">", 34], ANN, False),
        (["age", ">=", 34], ANN, True),
        (["age", ">=", 35], ANN, False),
        (["age", "<", 35], ANN, True),
        (["age", "<", 34], ANN, False),
        (["age", "<=", 34], ANN, True),
        (["age", "<=", 33], ANN, False),
        (["city", "in", ["LA", "NY"]], ANN, True),
        (["city", "in", ["LA", "SF"]], ANN, False),
        (["city", "in", []], ANN, False),
        (["name", "contains", "n"], ANN, True),
        (["name", "contains", "x"], ANN, False),
        (["tags", "contains", "ops"], ANN, True),
        (["tags", "contains", "dev"], ANN, False),
        (["name", "startswith", "A"], ANN, True),
        (["name", "startswith", "a"], ANN, False),
        (["age", "between", 30, 40], ANN, True),
        (["age", "between", 34, 34], ANN, True),
        (["age", "between", 35, 40], ANN, False),
        (["email", "is_null"], ANN, True),
        (["email", "is_null"], BOB, False),
        (["email", "is_null"], DEE, True),
        (["&", ["age", ">", 30], ["city", "==", "NY"]], ANN, True),
        (["&", ["age", ">", 30], ["city", "==", "LA"]], ANN, False),
        (["&", ["age", ">", 30], ["city", "==", "NY"], ["vip", "==", True]], ANN, True),
        (["&", ["age", ">", 30], ["city", "==", "NY"], ["vip", "==", False]], ANN, False),
        (["|", ["age", ">", 40], ["city", "==", "NY"]], ANN, True),
        (["|", ["age", ">", 40], ["city", "==", "LA"]], ANN, False),
        (["|", ["age", ">", 40], ["city", "==", "LA"], ["name", "==", "Ann"]], ANN, True),
        (["!", ["age", ">", 30]], ANN, False),
        (["!", ["age", ">", 40]], ANN, True),
        (["!", ["!", ["age", ">", 30]]], ANN, True),
        ([["age", ">", 30], ["city", "==", "NY"]], ANN, True),
        ([["age", ">", 30], ["city", "==", "LA"]], ANN, False),
        ([["age", ">", 30], ["city", "==", "NY"], ["name", "startswith", "A"]], ANN, True),
        (("age", "==", 34), ANN, True),
        (["address.city", "==", "Boston"], ANN, True),
        (["address.zip", "startswith", "021"], ANN, True),
        (["meta.level", ">=", 3], ANN, True),
    ],
)
def test_prefix_operators(spec: list[Any], row: Any, expected: bool) -> None:
    assert ev(spec, row) is expected


def test_prefix_operators_on_plain_dicts_and_nested_dicts() -> None:
    row = {"n": 5, "s": "hello", "inner": {"deep": {"v": 2.5}}, "items": [1, 2, 3]}
    assert ev(["n", "==", 5], row) is True
    assert ev(["s", "startswith", "he"], row) is True
    assert ev(["inner.deep.v", "between", 2, 3], row) is True
    assert ev(["inner.deep.v", ">", 3], row) is False
    assert ev(["items", "contains", 2], row) is True
    assert ev(["inner.deep.missing", "is_null"], row) is True
    assert ev(["inner.nothing.v", "is_null"], row) is True
    assert ev(["n.deeper", "is_null"], row) is True  # a step into an int finds nothing


def test_implicit_and_of_several_terms_equals_explicit_and() -> None:
    implicit = Expression.compile([["age", ">", 20], ["city", "!=", "LA"], ["vip", "==", True]])
    explicit = Expression.compile(
        ["&", ["age", ">", 20], ["city", "!=", "LA"], ["vip", "==", True]]
    )
    for row in (ANN, BOB, DEE, {}, {"age": 21, "city": "SF", "vip": True}):
        assert implicit.evaluate(row) is explicit.evaluate(row)
    assert implicit.evaluate({"age": 21, "city": "SF", "vip": True}) is True
    assert implicit.evaluate(BOB) is False


def test_compile_passes_an_expression_through_and_mixes_forms() -> None:
    expr = F.age > 3
    assert Expression.compile(expr) is expr
    mixed = Expression.compile(["&", F.age > 30, ["city", "==", "NY"]])
    assert mixed.evaluate(ANN) is True
    assert mixed.evaluate(BOB) is False
    bare_field = Expression.compile(F.vip)
    assert bare_field.evaluate(ANN) is True
    assert bare_field.evaluate(BOB) is False
    assert bare_field.evaluate(DEE) is None


def test_implicit_and_may_start_with_an_expression() -> None:
    expr = Expression.compile([F.age > 30, F.vip, ["city", "==", "NY"]])
    assert expr.evaluate(ANN) is True
    assert expr.evaluate(BOB) is False
    assert expr.evaluate(Person(age=31, city="NY")) is None


def test_implicit_and_may_start_with_a_bare_field() -> None:
    expr = Expression.compile([F.vip, F.age > 30])
    assert expr.evaluate(ANN) is True
    assert expr.evaluate(BOB) is False


# -- the operator form -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "prefix"),
    [
        (F.age > 25, ["age", ">", 25]),
        (F.age >= 25, ["age", ">=", 25]),
        (F.age < 30, ["age", "<", 30]),
        (F.age <= 25, ["age", "<=", 25]),
        (F.age == 25, ["age", "==", 25]),
        (F.age != 25, ["age", "!=", 25]),
        ((F.city == "NY") & ~F.vip, ["&", ["city", "==", "NY"], ["!", ["vip", "==", True]]]),
        ((F.city == "NY") | F.vip, ["|", ["city", "==", "NY"], ["vip", "==", True]]),
        (F.name.startswith("A"), ["name", "startswith", "A"]),
        (F.age.between(10, 30), ["age", "between", 10, 30]),
        (F.tags.contains("ops"), ["tags", "contains", "ops"]),
        (F.email.is_null(), ["email", "is_null"]),
        (F.email.is_not_null(), ["!", ["email", "is_null"]]),
        (F.age.is_in([25, 41]), ["age", "in", [25, 41]]),
        (F.address.city == "Boston", ["address.city", "==", "Boston"]),
        (~(F.age > 30), ["!", ["age", ">", 30]]),
    ],
)
def test_operator_form_matches_prefix_form(expr: Expression, prefix: list[Any]) -> None:
    compiled = Expression.compile(prefix)
    rows = [ANN, BOB, DEE, {}, {"age": None}, {"age": "x"}, {"city": "NY", "vip": None}]
    assert [expr.evaluate(row) for row in rows] == [compiled.evaluate(row) for row in rows]


def test_operator_form_exact_values() -> None:
    assert (F.age > 25).evaluate(ANN) is True
    assert (F.age > 25).evaluate(BOB) is False
    assert ((F.city == "NY") & ~F.vip).evaluate(ANN) is False
    assert ((F.city == "NY") & ~F.vip).evaluate(Person(city="NY", vip=False)) is True
    assert ((F.city == "NY") & ~F.vip).evaluate(Person(city="NY")) is None
    assert F.name.startswith("A").evaluate(ANN) is True
    assert F.name.startswith("A").evaluate(BOB) is False
    assert F.age.between(10, 20).evaluate({"age": 10}) is True
    assert F.age.between(10, 20).evaluate({"age": 20}) is True
    assert F.age.between(10, 20).evaluate({"age": 21}) is False
    assert F.age.between(10, 20).evaluate({"age": 9.99}) is False
    assert F.tags.contains("x").evaluate({"tags": ["y", "x"]}) is True
    assert F.tags.contains("x").evaluate({"tags": ["y"]}) is False
    assert F.email.is_null().evaluate(DEE) is True
    assert F.email.is_null().evaluate(BOB) is False
    assert F.age.is_in([1, 25, 3]).evaluate(BOB) is True
    assert F.age.is_in((1, 3)).evaluate(BOB) is False
    assert F.age.is_in({25}).evaluate(BOB) is True


def test_dotted_paths_through_objects_dicts_and_collections() -> None:
    row = {
        "a": Person(b={"c": Dictionary({"d": 7})}),
        "e": Dictionary({"f": Person(g="deep")}),
    }
    assert (F.a.b.c.d == 7).evaluate(row) is True
    assert (F.a.b.c.d > 7).evaluate(row) is False
    assert (F.e.f.g == "deep").evaluate(row) is True
    assert (F.a.b.c.missing == 7).evaluate(row) is None
    assert (F.a.x.y.z == 1).evaluate(row) is None
    assert F.a.b.c.d.read(row) == 7
    assert F.e.f.g.read(row) == "deep"
    assert F.a.nothing.read(row) is None


def test_odd_keys_with_brackets() -> None:
    row = {"odd key": 1, "between": "b", "contains": [1], "n": {"a-b": 2}}
    assert (F["odd key"] == 1).evaluate(row) is True
    assert (F["between"] == "b").evaluate(row) is True
    assert F["contains"].contains(1).evaluate(row) is True
    assert (F.n["a-b"] == 2).evaluate(row) is True
    assert (F.meta["odd key"] == "yes").evaluate(ANN) is True


def test_field_against_field() -> None:
    assert (F.low < F.high).evaluate({"low": 1, "high": 2}) is True
    assert (F.low < F.high).evaluate({"low": 3, "high": 2}) is False
    assert (F.low < F.high).evaluate({"low": 3}) is None
    assert (F.low < F.high).evaluate({"low": 3, "high": "x"}) is False
    assert (~(F.low < F.high)).evaluate({"low": 3, "high": "x"}) is True
    assert (F.low == F.high).evaluate({"low": 1, "high": 1.0}) is True
    assert (F.a.x != F.b.y).evaluate({"a": {"x": 1}, "b": {"y": 2}}) is True
    assert (F.low < F.high).fields() == {("low",), ("high",)}


def test_fields_lists_every_path_read() -> None:
    expr = (F.a > 1) & ((F.b.c == 2) | ~F.d.is_null()) & F.e.is_in([1])
    assert expr.fields() == {("a",), ("b", "c"), ("d",), ("e",)}
    assert Expression.compile(["x.y", "between", 1, 2]).fields() == {("x", "y")}


def test_str_of_expressions() -> None:
    assert str(F.age > 25) == "age > 25"
    assert str(F.city == "NY") == "city == 'NY'"
    assert str(F.a.b.is_in([1, 2])) == "a.b in [1, 2]"
    assert str((F.a == 1) & (F.b == 2)) == "(a == 1) & (b == 2)"
    assert str((F.a == 1) | ~(F.b == 2)) == "(a == 1) | (~(b == 2))"
    assert str(F.x.between(1, 5)) == "x between 1 and 5"
    assert str(F.x.is_null()) == "x is_null"
    assert str(F.x.startswith("p")) == "x startswith 'p'"
    assert str(F.x.contains(3)) == "x contains 3"


def test_str_of_a_field_against_field_comparison() -> None:
    assert str(F.a < F.b) == "a < F.b"
    assert str(F.left.x < F.right.y) == "left.x < F.right.y"


def test_and_or_flatten_nested_parts() -> None:
    expr = (F.a == 1) & (F.b == 2) & (F.c == 3) & (F.d == 4)
    assert len(expr.parts) == 4
    expr = (F.a == 1) | ((F.b == 2) | (F.c == 3))
    assert len(expr.parts) == 3


def test_matches_and_test_refute_agree_with_evaluate() -> None:
    expr = F.age > 30
    for row, value in ((ANN, True), (BOB, False), (DEE, None)):
        assert expr.evaluate(row) is value
        assert expr.matches(row) is (value is True)
        assert expr.test(row) is (value is True)
        assert expr.refute(row) is (value is False)


# -- rows of every kind -------------------------------------------------------------------------


def test_query_rows_row_and_joinrow() -> None:
    row = Row({"total": 10, "name": "x"})
    assert (F.total >= 10).evaluate(row) is True
    assert (F.missing == 1).evaluate(row) is None
    pair = JoinRow(ANN, {"name": "Engineering"})
    assert (F.left.name == "Ann").evaluate(pair) is True
    assert (F.right.name == "Engineering").evaluate(pair) is True
    assert (F.left.name == F.right.name).evaluate(pair) is False
    assert (F.other == 1).evaluate(pair) is None
    assert F.right.name.is_null().evaluate(JoinRow(ANN, None)) is True


def test_literal_values_read_as_their_str() -> None:
    row = Person(name=Literal("Alice"), blob=Literal(b"\x00\x01"))
    assert (F.name == "Alice").evaluate(row) is True
    assert (F.name != "Alice").evaluate(row) is False
    assert F.name.startswith("Al").evaluate(row) is True
    assert F.name.contains("lic").evaluate(row) is True
    assert F.name.is_in(["Bob", "Alice"]).evaluate(row) is True
    assert (F.name > "Aa").evaluate(row) is True
    assert F.blob.startswith(b"\x00").evaluate(row) is True
    assert F.blob.startswith("x").evaluate(row) is False
    assert F.name.read(row) == "Alice"
    assert type(F.name.read(row)) is str
    # in a dict, at the end of a longer path, and as the compared value
    assert (F.name == "Alice").evaluate({"name": Literal("Alice")}) is True
    nested = {"p": Person(q={"name": Literal("Bob")})}
    assert (F.p.q.name == "Bob").evaluate(nested) is True
    assert type(F.p.q.name.read(nested)) is str
    assert (F.name == Literal("Alice")).evaluate({"name": "Alice"}) is True
    assert F.name.is_in([Literal("Alice")]).evaluate({"name": "Alice"}) is True
    assert F.name.startswith(Literal("Al")).evaluate({"name": "Alice"}) is True
    assert F.name.contains(Literal("li")).evaluate({"name": "Alice"}) is True
    assert F.name.between(Literal("A"), Literal("B")).evaluate({"name": "Alice"}) is True


@pytest.fixture
def db(space: ObjectSpace) -> Database:
    return space.new_database("expressions")


def test_stored_objects_and_literals_inside_a_transaction(db: Database) -> None:
    with db.transaction() as tr:
        tr.set_root_object(
            "people",
            Dictionary(
                {
                    1: Person(name=Literal("Ann" * 50), age=34),
                    2: Person(name=Literal("Bob"), age=25, address={"city": Literal("LA")}),
                }
            ),
        )
    tr = db.new_transaction()
    try:
        people = tr.get_root_object("people")
        ann, bob = people[1], people[2]
        assert F.name.startswith("AnnAnn").evaluate(ann) is True
        assert (F.name == "Ann" * 50).evaluate(ann) is True
        assert (F.address.city == "LA").evaluate(bob) is True
        assert F.address.city.read(bob) == "LA"
        assert (F.age < 30).evaluate(ann) is False
    finally:
        tr.abort()


def test_mutable_objects_inside_a_transaction(db: Database) -> None:
    with db.transaction() as tr:
        boss = Member(name="Zed", age=50)
        tr.set_root_object("m", Member(name=Literal("Ann"), age=34, boss=boss, tags=["a"]))
    tr = db.new_transaction()
    member = tr.get_root_object("m")
    assert (F.age == 34).evaluate(member) is True
    assert (F.name == "Ann").evaluate(member) is True
    assert (F.boss.name == "Zed").evaluate(member) is True
    assert (F.boss.age > F.age).evaluate(member) is True
    assert F.tags.contains("a").evaluate(member) is True
    assert F.email.is_null().evaluate(member) is True
    member.age = 35  # changes in place are seen by the next evaluation
    assert (F.age == 34).evaluate(member) is False
    assert (F.age == 35).evaluate(member) is True
    tr.abort()

    later = db.new_transaction()
    ghost = later.get_root_object("m")
    later.abort()
    with pytest.raises(TransactionClosedError):
        (F.age == 34).evaluate(ghost)
    with pytest.raises(TransactionClosedError):
        (F.boss.age == 50).evaluate(ghost)


def test_new_mutable_object_outside_a_transaction() -> None:
    member = Member(age=3, name="x")
    assert (F.age == 3).evaluate(member) is True
    assert (F.name.startswith("x")).evaluate(member) is True


def test_one_step_path_ignores_a_field_named_attrs() -> None:
    row = Row({"_attrs": {"age": 99}, "age": 1})
    assert F.age.read(row) == 1
    assert (F.age > 50).evaluate(row) is False
    member = Member(_attrs={"age": 99}, age=1)
    assert (F.age > 50).evaluate(member) is False


# -- three-valued logic ---------------------------------------------------------------------------

T, FA, U = True, False, None
TRUE_ROW = {"t": 1}


def _term(value: bool | None) -> Expression:
    """An expression that is `value` on TRUE_ROW."""
    if value is True:
        return F.t == 1
    if value is False:
        return F.t == 2
    return F.nothing == 1


def _kleene_and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    if a is True and b is True:
        return True
    return None


def _kleene_or(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    if a is False and b is False:
        return False
    return None


def test_terms_are_true_false_unknown() -> None:
    assert _term(T).evaluate(TRUE_ROW) is True
    assert _term(FA).evaluate(TRUE_ROW) is False
    assert _term(U).evaluate(TRUE_ROW) is None


@pytest.mark.parametrize(("a", "b"), list(itertools.product([T, FA, U], repeat=2)))
def test_kleene_truth_tables(a: bool | None, b: bool | None) -> None:
    assert (_term(a) & _term(b)).evaluate(TRUE_ROW) is _kleene_and(a, b)
    assert (_term(a) | _term(b)).evaluate(TRUE_ROW) is _kleene_or(a, b)
    # the prefix form and ~ (De Morgan holds in Kleene logic)
    spec_and = ["&", _term(a), _term(b)]
    assert Expression.compile(spec_and).evaluate(TRUE_ROW) is _kleene_and(a, b)
    negated = (~(_term(a) & _term(b))).evaluate(TRUE_ROW)
    assert negated is (~_term(a) | ~_term(b)).evaluate(TRUE_ROW)


@pytest.mark.parametrize(("a", "b", "c"), list(itertools.product([T, FA, U], repeat=3)))
def test_kleene_with_three_parts(a: bool | None, b: bool | None, c: bool | None) -> None:
    both = _kleene_and(_kleene_and(a, b), c)
    either = _kleene_or(_kleene_or(a, b), c)
    assert (_term(a) & _term(b) & _term(c)).evaluate(TRUE_ROW) is both
    assert (_term(a) | _term(b) | _term(c)).evaluate(TRUE_ROW) is either


def test_not_truth_table() -> None:
    assert (~_term(T)).evaluate(TRUE_ROW) is False
    assert (~_term(FA)).evaluate(TRUE_ROW) is True
    assert (~_term(U)).evaluate(TRUE_ROW) is None
    assert (~~_term(U)).evaluate(TRUE_ROW) is None
    assert Expression.compile(["!", _term(U)]).evaluate(TRUE_ROW) is None


@pytest.mark.parametrize("row", [{}, {"x": None}, Person(), Person(x=None), Row({"x": None})])
def test_null_makes_every_comparison_unknown(row: Any) -> None:
    for op in ("==", "!=", ">", ">=", "<", "<="):
        assert ev(["x", op, 1], row) is None, op
        assert ev(["!", ["x", op, 1]], row) is None, op
    assert ev(["x", "in", [1, 2]], row) is None
    assert ev(["x", "between", 1, 2], row) is None
    assert ev(["x", "contains", 1], row) is None
    assert ev(["x", "startswith", "a"], row) is None
    assert ev(["x", "is_null"], row) is True
    assert ev(["!", ["x", "is_null"]], row) is False


def test_comparing_with_a_null_value_is_unknown() -> None:
    for op in ("==", "!=", ">", "<"):
        assert ev(["x", op, None], {"x": 1}) is None
        assert ev(["x", op, None], {"x": None}) is None
    assert ev(["x", "between", None, 5], {"x": 1}) is None
    assert ev(["x", "between", 0, None], {"x": 1}) is None
    assert ev(["x", "contains", None], {"x": [None]}) is None


def test_is_null_is_never_unknown() -> None:
    for row in ({}, {"x": None}, {"x": 0}, {"x": ""}, {"x": False}, {"x": []}):
        assert F.x.is_null().evaluate(row) is (row.get("x") is None)
        assert F.x.is_not_null().evaluate(row) is (row.get("x") is not None)


def test_a_missing_field_matches_neither_a_comparison_nor_its_negation() -> None:
    assert (F.age > 30).matches(DEE) is False
    assert (~(F.age > 30)).matches(DEE) is False
    assert (F.age.is_null() | (F.age > 30)).matches(DEE) is True


def test_in_with_none_listed() -> None:
    with_null = F.x.is_in([1, None])
    assert with_null.evaluate({"x": 1}) is True
    assert with_null.evaluate({"x": 2}) is None
    assert with_null.evaluate({"x": None}) is None
    assert with_null.evaluate({}) is None
    assert (~with_null).evaluate({"x": 2}) is None
    assert (~with_null).evaluate({"x": 1}) is False
    assert F.x.is_in([None]).evaluate({"x": None}) is None
    without_null = F.x.is_in([1, 3])
    assert without_null.evaluate({"x": 2}) is False
    assert (~without_null).evaluate({"x": 2}) is True
    assert without_null.evaluate({"x": None}) is None


# -- types ----------------------------------------------------------------------------------


def test_numbers_of_different_types_compare_as_python_does() -> None:
    assert (F.x == 1).evaluate({"x": 1.0}) is True
    assert (F.x == 1.0).evaluate({"x": 1}) is True
    assert (F.x == 1).evaluate({"x": Decimal(1)}) is True
    assert (F.x != 1).evaluate({"x": 1.0}) is False
    assert (F.x == 1).evaluate({"x": True}) is True
    assert F.x.is_in([1.0]).evaluate({"x": 1}) is True
    assert F.x.contains(1).evaluate({"x": [1.0]}) is True
    assert (F.x < 2).evaluate({"x": Decimal("1.5")}) is True
    assert (F.x > 0.5).evaluate({"x": Decimal("1.5")}) is True


@pytest.mark.parametrize(
    ("value", "other"),
    [
        (5, "x"),
        ("x", 5),
        (b"x", "x"),
        ((1, 2), 3),
        (dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 1, tzinfo=dt.UTC)),
        (dt.datetime(2020, 1, 1, tzinfo=dt.UTC), dt.datetime(2020, 1, 1)),
        (dt.date(2020, 1, 1), dt.datetime(2020, 1, 2)),
        (Decimal("NaN"), 1),
        (Decimal("sNaN"), 1),
        (1, Decimal("NaN")),
        ([1], "x"),
        ({"a": 1}, {"a": 2}),
    ],
)
def test_incomparable_types_order_false_never_raise(value: Any, other: Any) -> None:
    row = {"x": value}
    for op in (">", ">=", "<", "<="):
        assert ev(["x", op, other], row) is False, op
        assert ev(["!", ["x", op, other]], row) is True, op
    assert ev(["x", "between", other, other], row) is False
    assert ev(["x", "==", other], row) is False


def test_incomparable_field_against_field_is_false() -> None:
    row = {"a": dt.datetime(2020, 1, 1), "b": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}
    assert (F.a < F.b).evaluate(row) is False
    assert (F.a == F.b).evaluate(row) is False
    assert (F.a >= F.b).evaluate({"a": Decimal("NaN"), "b": 1}) is False


def test_float_nan_compares_false() -> None:
    nan = float("nan")
    assert (F.x == nan).evaluate({"x": nan}) is False
    assert (F.x < 1).evaluate({"x": nan}) is False
    assert (F.x > 1).evaluate({"x": nan}) is False
    assert F.x.between(0, 2).evaluate({"x": nan}) is False


def test_aware_datetimes_compare_by_instant() -> None:
    utc = dt.datetime(2020, 1, 1, 12, tzinfo=dt.UTC)
    plus_two = dt.datetime(2020, 1, 1, 14, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert (F.x == utc).evaluate({"x": plus_two}) is True
    assert (F.x < utc + dt.timedelta(seconds=1)).evaluate({"x": plus_two}) is True


def test_contains_on_every_kind_of_container() -> None:
    assert F.x.contains("ell").evaluate({"x": "hello"}) is True
    assert F.x.contains("z").evaluate({"x": "hello"}) is False
    assert F.x.contains(1).evaluate({"x": "h1"}) is False  # no str(1)
    assert F.x.contains(b"el").evaluate({"x": b"hello"}) is True
    assert F.x.contains("el").evaluate({"x": b"hello"}) is False
    assert F.x.contains(2).evaluate({"x": (1, 2)}) is True
    assert F.x.contains([1]).evaluate({"x": [[1], [2]]}) is True
    assert F.x.contains("k").evaluate({"x": {"k": 1}}) is True
    assert F.x.contains(1).evaluate({"x": {"k": 1}}) is False  # keys, not values
    assert F.x.contains([1]).evaluate({"x": {"k": 1}}) is False  # unhashable: FALSE
    assert F.x.contains(1).evaluate({"x": 11}) is False
    assert F.x.contains(1).evaluate({"x": 1.5}) is False
    assert F.x.contains("a").evaluate({"x": Set(["a", "b"])}) is True
    assert F.x.contains("c").evaluate({"x": Set(["a", "b"])}) is False
    assert F.x.contains([1]).evaluate({"x": Set(["a"])}) is False
    assert F.x.contains(2).evaluate({"x": Dictionary({2: "two"})}) is True
    assert F.x.contains("two").evaluate({"x": Dictionary({2: "two"})}) is False
    assert F.x.contains(2.0).evaluate({"x": List([1, 2, 3])}) is True
    assert F.x.contains(4).evaluate({"x": List([1, 2, 3])}) is False
    assert (~F.x.contains(4)).evaluate({"x": List([1, 2, 3])}) is True


def test_startswith_needs_matching_types() -> None:
    assert F.x.startswith("ab").evaluate({"x": "abc"}) is True
    assert F.x.startswith("").evaluate({"x": "abc"}) is True
    assert F.x.startswith("ab").evaluate({"x": b"abc"}) is False
    assert F.x.startswith(b"ab").evaluate({"x": b"abc"}) is True
    assert F.x.startswith(b"ab").evaluate({"x": "abc"}) is False
    assert F.x.startswith("1").evaluate({"x": 12}) is False
    assert F.x.startswith("a").evaluate({"x": ["a"]}) is False
    assert (~F.x.startswith("1")).evaluate({"x": 12}) is True


# -- malformed expressions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        (["age", "~", 3], ["unknown operator '~'"]),
        (["age", "=", 3], ["unknown operator '='"]),
        (["age", "like", "a%"], ["unknown operator 'like'"]),
        (["age", 5, 3], ["unknown operator 5"]),
        (["age", ">"], ["'>'", "[field, op, value]", "['age', '>']"]),
        (["age", ">", 1, 2], ["'>'", "[field, op, value]"]),
        (["age", "between", 1], ["'between'", "[field, 'between', lo, hi]"]),
        (["age", "between", 1, 2, 3], ["'between'"]),
        (["age", "is_null", True], ["'is_null'", "[field, op]"]),
        (["age", "in"], ["'in'"]),
        (["age"], ["['age']", "no operator"]),
        (["!", ["a", "==", 1], ["b", "==", 2]], ["'!'", "exactly one"]),
        (["!"], ["'!'"]),
        ([], ["[]", "non-empty list"]),
        (["&"], ["'&'", "at least one"]),
        (["|"], ["'|'", "at least one"]),
        (["&", []], ["[]"]),
        (["&", ["a", "==", 1], ["b", "?", 1]], ["unknown operator '?'"]),
        ([["a", "==", 1], ["b"]], ["['b']"]),
        ([5, "==", 1], ["not 5", "[5, '==', 1]"]),
        ([None, "==", 1], ["not None"]),
        (["a..b", "==", 1], ["'a..b'", "empty name"]),
        ([".a", "==", 1], ["'.a'", "empty name"]),
        (["a.", "is_null"], ["'a.'", "empty name"]),
        (["", "==", 1], ["''", "empty name"]),
        (["name", "startswith", 5], ["startswith", "not 5"]),
        (["name", "startswith", None], ["startswith", "not None"]),
        (["name", "startswith", ["a"]], ["startswith", "not ['a']"]),
        (["x", "in", 5], ["'in'", "not 5"]),
        (["x", "in", "abc"], ["'in'", "not 'abc'"]),
        (["x", "in", None], ["'in'", "not None"]),
        ("age > 3", ["'age > 3'"]),
        (None, ["not None"]),
        (42, ["not 42"]),
    ],
)
def test_malformed_prefix_expressions_name_the_part(spec: Any, fragments: list[str]) -> None:
    with pytest.raises(QueryError) as raised:
        Expression.compile(spec)
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_expressions_have_no_truth_value() -> None:
    with pytest.raises(QueryError, match=r"and / or / not") as raised:
        bool(F.a > 1)
    assert "a > 1" in str(raised.value)
    with pytest.raises(QueryError, match="no truth value"):
        if (F.a > 1) and (F.b > 2):
            pass
    with pytest.raises(QueryError, match="no truth value"):
        if (F.a > 1) or (F.b > 2):
            pass
    with pytest.raises(QueryError, match="no truth value"):
        if not (F.a > 1):
            pass
    with pytest.raises(QueryError, match="no truth value"):
        _ = 1 < F.a < 5  # a chained comparison is an implicit `and`


def test_malformed_operator_form_names_the_part() -> None:
    with pytest.raises(QueryError, match=r"startswith takes a str or bytes prefix, not 5"):
        F.name.startswith(5)  # type: ignore[arg-type]
    with pytest.raises(QueryError, match=r"'in' takes a list of values, not 3"):
        F.x.is_in(3)  # type: ignore[arg-type]
    with pytest.raises(QueryError, match=r"'in' takes a list of values, not 'ab'"):
        F.x.is_in("ab")
    with pytest.raises(QueryError, match=r"non-empty str, not 3"):
        F[3]  # type: ignore[index]
    with pytest.raises(QueryError, match=r"non-empty str, not ''"):
        F[""]
    with pytest.raises(QueryError, match=r"name a field first"):
        F == 1  # noqa: B015
    with pytest.raises(QueryError, match=r"name a field first"):
        F.is_null()
    with pytest.raises(QueryError, match=r"expected a condition.*5"):
        (F.a > 1) & 5
    with pytest.raises(QueryError, match=r"expected a condition.*'x'"):
        (F.a > 1) | "x"
    with pytest.raises(QueryError, match=r"expected a condition.*True"):
        True & (F.a > 1)


def test_fields_are_not_hashable() -> None:
    # F.a == 1 builds an expression, so a Field cannot be a dict key or set element
    with pytest.raises(TypeError):
        hash(F.a)
