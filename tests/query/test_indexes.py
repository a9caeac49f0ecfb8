"""Secondary indexes of List, Set and Dictionary: exact after every change, stored, merged.

Every test checks the indexes it touches against `Index.build` over the rows of
the collection (`assert_exact`), and most also against entries computed here
from plain Python data (`expected_entries`), so that a bug shared by the
incremental path and `Index.build` is caught too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from protobase import (
    ConflictError,
    Database,
    DBObject,
    Dictionary,
    Expression,
    F,
    List,
    MemoryStorage,
    MutableObject,
    ObjectSpace,
    QueryError,
    Set,
    StandaloneFileStorage,
    Transaction,
    UniqueConstraintError,
    ValidationError,
    WherePlan,
)
from protobase.collections.btree import keyed_items
from protobase.collections.indexes import Index, above, below, index_key
from protobase.collections.ordering import sort_key, stable_hash
from protobase.maintenance import fsck
from protobase.query import planner


class Person(DBObject):
    pass


class Address(DBObject):
    pass


class Account(MutableObject):
    pass


CITIES = ["Oslo", "Rome", "Lima"]

# -- helpers ----------------------------------------------------------------------------------


def tree_entries(index: Index) -> list[tuple[Any, Any]]:
    """``(key, count)`` of every entry of the index's tree, in order."""
    tree = index.tree
    return list(keyed_items(tree.node(), tree.loader, index_key))


def index_of(coll: Any, field: str) -> Index:
    path = tuple(field.split("."))
    for index in coll._indexes:
        if index.spec.path == path:
            return index
    raise AssertionError(f"{type(coll).__name__} has no index on {field!r}: {coll.indexed_fields}")


def assert_exact(coll: Any, *, expect_indexes: bool = True) -> None:
    """Every index of `coll` equals the index built from scratch over its rows."""
    if expect_indexes:
        assert coll._indexes, f"{type(coll).__name__} lost its indexes"
    for index in coll._indexes:
        rebuilt = Index.build(index.spec, coll._pb_index_rows())
        entries = tree_entries(index)
        assert entries == tree_entries(rebuilt), index.spec
        assert len(index) == len(rebuilt) == len(entries)


def field_of(row: Any, field: str) -> Any:
    """The value at dotted `field` of a row, read without protobase's field readers."""
    value = row
    for name in field.split("."):
        if value is None:
            return None
        if isinstance(value, dict):
            value = value.get(name)
        elif isinstance(value, DBObject):
            value = value.attributes().get(name)
        elif isinstance(value, Dictionary):
            value = value.get_at(name)
        else:
            return None
    return value


def orderable(value: Any) -> bool:
    if isinstance(value, list | dict):
        return False
    if isinstance(value, tuple):
        return all(orderable(item) for item in value)
    return True


def expected_entries(pairs: list[tuple[Any, Any]], field: str) -> list[tuple[Any, Any]]:
    """The index entries of ``(identity, row)`` pairs, in index order.

    An orderable value gives ``((value, identity), count)``; a value that cannot
    be ordered gives ``((identity,), count)``, after every orderable entry.
    """
    counts: dict[Any, list[Any]] = {}
    unorderable: dict[Any, list[Any]] = {}
    for identity, row in pairs:
        value = field_of(row, field)
        if orderable(value):
            key: tuple[Any, ...] = (value, identity)
            counts.setdefault((sort_key(value), sort_key(identity)), [key, 0])[1] += 1
        else:
            unorderable.setdefault(sort_key(identity), [(identity,), 0])[1] += 1
    return [
        (key, count) for found in (counts, unorderable) for _, (key, count) in sorted(found.items())
    ]


def dict_pairs(d: Dictionary) -> list[tuple[Any, Any]]:
    return list(d.items())


def list_pairs(li: List) -> list[tuple[Any, Any]]:
    return list(enumerate(li.as_iterable()))


def set_pairs(s: Set) -> list[tuple[Any, Any]]:
    return [(stable_hash(element), element) for element in s.as_iterable()]


def check_dict(d: Dictionary, *fields: str) -> None:
    assert_exact(d)
    for field in fields:
        assert tree_entries(index_of(d, field)) == expected_entries(dict_pairs(d), field), field


def check_list(li: List, *fields: str) -> None:
    assert_exact(li)
    for field in fields:
        assert tree_entries(index_of(li, field)) == expected_entries(list_pairs(li), field), field


def check_set(s: Set, *fields: str) -> None:
    assert_exact(s)
    for field in fields:
        assert tree_entries(index_of(s, field)) == expected_entries(set_pairs(s), field), field


def person_row(i: int) -> dict[str, Any]:
    return {"name": f"n{i:04}", "age": i % 7, "address": {"city": CITIES[i % 3]}}


def people(n: int) -> Dictionary:
    return Dictionary({f"p{i:04}": person_row(i) for i in range(n)})


def store(db: Database, **roots: Any) -> None:
    with db.transaction() as tr:
        for name, value in roots.items():
            tr.set_root_object(name, value)


def read_root(db: Database, name: str) -> Any:
    return db.new_transaction().get_root_object(name)


Change = Callable[[Transaction], None]


def change_root(name: str, fn: Callable[[Any], Any]) -> Change:
    def apply(tr: Transaction) -> None:
        tr.set_root_object(name, fn(tr.get_root_object(name)))

    return apply


def both_commit(db: Database, first: Change, second: Change) -> None:
    """Two transactions on one snapshot; the second commits by merging onto the first."""
    t1, t2 = db.new_transaction(), db.new_transaction()
    first(t1)
    second(t2)
    assert t1.commit() is not None
    assert t2.commit() is not None


def second_conflicts(db: Database, first: Change, second: Change, name: str) -> None:
    """The second commit raises ConflictError and writes nothing."""
    t1, t2 = db.new_transaction(), db.new_transaction()
    first(t1)
    second(t2)
    assert t1.commit() is not None
    root_after_first = db.space.storage.read_root()
    rows_after_first = list(read_root(db, name).items())
    with pytest.raises(ConflictError):
        t2.commit()
    assert db.space.storage.read_root() == root_after_first
    assert list(read_root(db, name).items()) == rows_after_first


@pytest.fixture
def db(space: ObjectSpace) -> Database:
    return space.new_database("idx")


# -- 1. maintenance: Dictionary ---------------------------------------------------------------


def test_add_index_builds_entries_and_lists_fields() -> None:
    d = people(12).add_index("age").add_index("address.city")
    assert d.indexed_fields == ["age", "address.city"]
    check_dict(d, "age", "address.city")
    assert len(index_of(d, "age")) == 12
    assert tree_entries(index_of(d, "age"))[0] == ((0, "p0000"), 1)
    assert not index_of(d, "age").spec.unique


DICT_CHANGES: dict[str, Callable[[Dictionary], Dictionary]] = {
    "set_at new key": lambda d: d.set_at("new", {"age": 3, "address": {"city": "Oslo"}}),
    "set_at same field value": lambda d: d.set_at("p0003", {"age": 3, "name": "other"}),
    "set_at different field value": lambda d: d.set_at("p0003", {"age": 99}),
    "set_at without the field": lambda d: d.set_at("p0003", {"name": "no age"}),
    "set_at field None": lambda d: d.set_at("p0003", {"age": None}),
    "set_at list value (unorderable)": lambda d: d.set_at("p0003", {"age": [1, 2]}),
    "set_at dict value (unorderable)": lambda d: d.set_at("p0003", {"age": {"y": 1}}),
    "set_at non-row value": lambda d: d.set_at("p0003", 42),
    "set_at DBObject value": lambda d: d.set_at(
        "p0003", Person(age=5, address=Address(city="Lima"))
    ),
    "set_at Dictionary value": lambda d: d.set_at(
        "p0003", Dictionary({"age": 6, "address": Dictionary({"city": "Rome"})})
    ),
    "set_at string value field": lambda d: d.set_at("p0004", {"age": "forty"}),
    "remove_at": lambda d: d.remove_at("p0005"),
    "remove_at first and last": lambda d: d.remove_at("p0000").remove_at("p0039"),
    "update mapping": lambda d: d.update(
        {"p0001": {"age": 50}, "zz": {"age": 1}, "p0002": {"name": "x"}}
    ),
    "update pairs": lambda d: d.update([("p0001", {"age": 50}), ("a", {"age": 0})]),
    "update pairs, later pair wins": lambda d: d.update([("k", {"age": 1}), ("k", {"age": 2})]),
    "update with a Dictionary": lambda d: d.update(Dictionary({"p0006": {"age": 1.5}})),
    "update many new keys": lambda d: d.update({f"q{i:04}": person_row(i) for i in range(300)}),
    "update nothing": lambda d: d.update([]),
    "chain of changes": lambda d: (
        d.set_at("p0001", {"age": 2}).remove_at("p0002").set_at("p0002", {"age": 2})
    ),
}


@pytest.mark.parametrize("change", list(DICT_CHANGES))
def test_dictionary_mutations_keep_indexes_exact(change: str) -> None:
    before = people(40).add_index("age").add_index("address.city").add_index("name")
    before_entries = [tree_entries(index) for index in before._indexes]
    after = DICT_CHANGES[change](before)
    assert after.indexed_fields == ["age", "address.city", "name"]
    check_dict(after, "age", "address.city", "name")
    # The old version is a value: its indexes did not move.
    assert [tree_entries(index) for index in before._indexes] == before_entries
    check_dict(before, "age", "address.city", "name")


def test_dictionary_set_at_moves_the_entry_of_the_row() -> None:
    d = people(10).add_index("age")
    changed = d.set_at("p0003", {"age": 40})
    ages = tree_entries(index_of(changed, "age"))
    assert ((40, "p0003"), 1) in ages
    assert ((3, "p0003"), 1) not in ages
    assert len(ages) == 10
    missing = changed.set_at("p0003", {"name": "none"})
    assert ((None, "p0003"), 1) in tree_entries(index_of(missing, "age"))
    # A value that cannot be ordered is kept under (identity,), after all values.
    unorderable = changed.set_at("p0003", {"age": [3]})
    assert len(index_of(unorderable, "age")) == 10
    assert tree_entries(index_of(unorderable, "age"))[-1] == (("p0003",), 1)
    assert all(key != (3, "p0003") for key, _ in tree_entries(index_of(unorderable, "age")))
    removed = changed.remove_at("p0003")
    assert len(index_of(removed, "age")) == 9
    assert_exact(removed)


def test_dictionary_dotted_field_through_dicts_dbobjects_and_dictionaries() -> None:
    d = Dictionary(
        {
            "a": {"address": {"city": "Oslo"}},
            "b": Person(address=Address(city="Rome")),
            "c": {"address": Dictionary({"city": "Lima"})},
            "d": {"address": None},
            "e": {"address": "not a mapping"},
            "f": Person(),
        }
    ).add_index("address.city")
    assert tree_entries(index_of(d, "address.city")) == [
        ((None, "d"), 1),
        ((None, "e"), 1),
        ((None, "f"), 1),
        (("Lima", "c"), 1),
        (("Oslo", "a"), 1),
        (("Rome", "b"), 1),
    ]
    check_dict(d, "address.city")
    d2 = d.set_at("d", {"address": {"city": "Oslo"}}).set_at("a", Person())
    check_dict(d2, "address.city")
    assert ((None, "a"), 1) in tree_entries(index_of(d2, "address.city"))


def test_dictionary_mutable_object_as_field_value_is_indexed_by_identity() -> None:
    first, second = Account(n=1), Account(n=2)
    d = Dictionary({"a": {"owner": first}, "b": {"owner": second}, "c": {}}).add_index("owner")
    check_dict(d, "owner")
    first.n = 100  # changing the object in place does not move its entry
    assert_exact(d)
    rows = list(WherePlan(filter=F.owner == first, based_on=d))
    assert rows == [{"owner": first}]
    d2 = d.set_at("c", {"owner": first}).remove_at("a")
    check_dict(d2, "owner")
    assert [key[1] for key, _ in tree_entries(index_of(d2, "owner")) if key[0] is first] == ["c"]


def test_dictionary_with_numeric_and_mixed_keys() -> None:
    d = Dictionary({i: {"age": i % 3} for i in range(100)}).add_index("age")
    d = d.set_at("text", {"age": 1}).set_at(2.5, {"age": 1}).set_at((1, 2), {"age": 0})
    d = d.set_at(1.0, {"age": 2})  # the key 1, replaced
    check_dict(d, "age")
    assert ((2, 1), 1) in tree_entries(index_of(d, "age"))
    assert len(index_of(d, "age")) == 103


# -- 1. maintenance: Set ----------------------------------------------------------------------


def members(n: int, offset: int = 0) -> list[Person]:
    return [
        Person(name=f"m{i}", age=i % 5, address=Address(city=CITIES[i % 3]))
        for i in range(offset, offset + n)
    ]


SET_CHANGES: dict[str, Callable[[Set], Set]] = {
    "add new": lambda s: s.add(Person(name="new", age=9)),
    "add without the field": lambda s: s.add(Person(name="no age")),
    "add existing": lambda s: s.add(members(30)[4]),
    "remove_at": lambda s: s.remove_at(members(30)[7]),
    "update": lambda s: s.update(members(10, offset=25)),
    "update many": lambda s: s.update(members(400, offset=100)),
    "union with a list": lambda s: s.union(members(5, offset=28)),
    "union with a Set": lambda s: s.union(Set(members(6, offset=40))),
    "intersection": lambda s: s.intersection([*members(10, offset=5), *members(3, offset=90)]),
    "intersection with nothing": lambda s: s.intersection([]),
    "difference": lambda s: s.difference([*members(12, offset=3), Person(name="absent")]),
    "difference with a Set": lambda s: s.difference(Set(members(30))),
}


@pytest.mark.parametrize("change", list(SET_CHANGES))
def test_set_mutations_keep_indexes_exact(change: str) -> None:
    before = Set(members(30)).add_index("age").add_index("address.city")
    before_entries = [tree_entries(index) for index in before._indexes]
    after = SET_CHANGES[change](before)
    assert after.indexed_fields == ["age", "address.city"]
    check_set(after, "age", "address.city")
    assert [tree_entries(index) for index in before._indexes] == before_entries


def test_set_identity_is_the_stable_hash_of_the_element() -> None:
    element = Person(name="x", age=7)
    s = Set(members(5)).add_index("age").add(element)
    assert ((7, stable_hash(element)), 1) in tree_entries(index_of(s, "age"))
    assert s.add(element) is s
    smaller = s.remove_at(element)
    assert ((7, stable_hash(element)), 1) not in tree_entries(index_of(smaller, "age"))
    assert len(index_of(smaller, "age")) == 5
    both = smaller.intersection([*members(2), element])
    check_set(both, "age")
    assert len(both) == 2
    assert len(index_of(both, "age")) == 2


# -- 1. maintenance: List ---------------------------------------------------------------------


def list_row(i: int) -> dict[str, Any]:
    return {"age": i % 4, "address": {"city": CITIES[i % 3]}, "i": i}


LIST_CHANGES: dict[str, Callable[[List], List]] = {
    "set_at first": lambda li: li.set_at(0, {"age": 9}),
    "set_at middle": lambda li: li.set_at(13, {"age": 9}),
    "set_at last": lambda li: li.set_at(29, {"age": 9}),
    "set_at negative": lambda li: li.set_at(-2, {"name": "no age"}),
    "set_at same value": lambda li: li.set_at(5, {"age": 1, "other": True}),
    "set_at unorderable": lambda li: li.set_at(6, {"age": [1]}),
    "insert_at first": lambda li: li.insert_at(0, {"age": 7}),
    "insert_at middle": lambda li: li.insert_at(11, {"age": 7}),
    "insert_at end": lambda li: li.insert_at(30, {"age": 7}),
    "insert_at negative": lambda li: li.insert_at(-3, {"age": 7}),
    "remove_at middle": lambda li: li.remove_at(10),
    "remove_at first": lambda li: li.remove_at(0),
    "remove_at last": lambda li: li.remove_at(29),
    "remove_at -1": lambda li: li.remove_at(-1),
    "append_last": lambda li: li.append_last({"age": 2.5}),
    "append_first": lambda li: li.append_first({"age": 2.5}),
    "remove_first": lambda li: li.remove_first(),
    "remove_last": lambda li: li.remove_last(),
    "extend": lambda li: li.extend([{"age": 1}, {"x": 0}, {"age": "s"}]),
    "extend with a List": lambda li: li.extend(List([list_row(i) for i in range(200)])),
    "extend nothing": lambda li: li.extend([]),
    "head": lambda li: li.head(12),
    "head 0": lambda li: li.head(0),
    "head beyond the end": lambda li: li.head(100),
    "tail": lambda li: li.tail(12),
    "tail 0": lambda li: li.tail(0),
    "slice": lambda li: li.slice(4, 17),
    "slice from 0": lambda li: li.slice(0, 9),
    "slice negative": lambda li: li.slice(-8, -2),
    "slice empty": lambda li: li.slice(20, 5),
    "getitem a:b": lambda li: li[3:25],
    "getitem :b": lambda li: li[:7],
    "getitem a:": lambda li: li[21:],
    "getitem -a:": lambda li: li[-4:],
    "remove many from the front": lambda li: li.remove_first().remove_first().remove_at(3),
}


@pytest.mark.parametrize("change", list(LIST_CHANGES))
def test_list_mutations_keep_indexes_exact(change: str) -> None:
    before = List([list_row(i) for i in range(30)]).add_index("age").add_index("address.city")
    before_entries = [tree_entries(index) for index in before._indexes]
    after = LIST_CHANGES[change](before)
    assert after.indexed_fields == ["age", "address.city"]
    check_list(after, "age", "address.city")
    assert [tree_entries(index) for index in before._indexes] == before_entries


def test_list_positions_shift_in_the_index_after_insert_and_remove() -> None:
    li = List([{"age": 10}, {"age": 20}, {"age": 30}]).add_index("age")
    inserted = li.insert_at(1, {"age": 15})
    assert tree_entries(index_of(inserted, "age")) == [
        ((10, 0), 1),
        ((15, 1), 1),
        ((20, 2), 1),
        ((30, 3), 1),
    ]
    removed = inserted.remove_first()
    assert tree_entries(index_of(removed, "age")) == [((15, 0), 1), ((20, 1), 1), ((30, 2), 1)]
    tail = removed.tail(1)
    assert tree_entries(index_of(tail, "age")) == [((20, 0), 1), ((30, 1), 1)]
    rows = list(WherePlan(filter=F.age == 30, based_on=tail))
    assert rows == [{"age": 30}]


def test_stepped_slice_keeps_the_indexes() -> None:
    li = List([list_row(i) for i in range(30)]).add_index("age")
    assert li[2:20].indexed_fields == ["age"]
    stepped = li[::2]
    assert [row["i"] for row in stepped] == list(range(0, 30, 2))
    assert stepped.indexed_fields == ["age"]
    check_list(stepped, "age")


def test_large_list_changes_at_both_ends_keep_indexes_exact() -> None:
    li = List([list_row(i) for i in range(3000)]).add_index("age")
    li = li.append_last({"age": 100}).set_at(1500, {"age": 100}).remove_last()
    li = li.extend([list_row(i) for i in range(100)]).head(2500).append_first({"age": 100})
    check_list(li, "age")
    assert [key[1] for key, _ in tree_entries(index_of(li, "age")) if key[0] == 100] == [0, 1501]


# -- 1. random mutation sequences against an unindexed copy -----------------------------------

MISSING_FIELD = "<missing>"
"""A drawn field value that means: leave the field out of the row."""

AGES: list[Any] = [
    *(None, MISSING_FIELD, 0, 1, 2, 2.0, 2.5, 3, "a", "b"),
    *((1, 2), (1, "a"), Address(city="Q")),  # Python refuses some orders of these
]
UIDS: list[Any] = [None, MISSING_FIELD, 0, 1, 1.0, True, 2, 3, 4, 5]
CITY_VALUES: list[Any] = [None, MISSING_FIELD, "Oslo", "Rome"]
QUERY_VALUES: dict[str, list[Any]] = {
    "age": [0, 1, 2, 2.0, 2.5, 3, "a", "b", (1, 2), (0,), (1, "b"), True, Address(city="R")],
    "uid": [0, 1, 1.0, 2, 3, 5, True, "x"],
    "address.city": ["Oslo", "Rome", "P", 2],
}

MACHINE_SETTINGS = settings(
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def make_row(age: Any, uid: Any, city: Any, tag: int, as_object: bool) -> Any:
    fields: dict[str, Any] = {"tag": tag}
    if age is not MISSING_FIELD:
        fields["age"] = age
    if uid is not MISSING_FIELD:
        fields["uid"] = uid
    if city is not MISSING_FIELD:
        fields["address"] = Address(city=city) if as_object else {"city": city}
    return Person(**fields) if as_object else fields


def rows_strategy(ages: list[Any], objects: st.SearchStrategy[bool]) -> st.SearchStrategy[Any]:
    return st.builds(
        make_row,
        st.sampled_from(ages),
        st.sampled_from(UIDS),
        st.sampled_from(CITY_VALUES),
        st.integers(0, 40),
        objects,
    )


DICT_ROWS = rows_strategy([*AGES, [1, 2]], st.booleans())
SET_ROWS = rows_strategy(AGES, st.just(True))  # Set elements must be orderable
KEYS = st.one_of(st.integers(0, 20), st.sampled_from(["k", "z", 2.5]))


def _term(field: str, op: str, value: Any, other: Any) -> Expression:
    if op == "between":
        return Expression.compile([field, "between", value, other])
    if op == "is_null":
        return Expression.compile([field, "is_null"])
    if op == "is_not_null":
        return Expression.compile(["!", [field, "is_null"]])
    if op == "in":
        return Expression.compile([field, "in", [value, other]])
    return Expression.compile([field, op, value])


OPERATORS = ["==", ">", ">=", "<", "<=", "between", "is_null", "is_not_null", "in"]


@st.composite
def term_parts(draw: st.DrawFn) -> tuple[str, Any, Any]:
    """A field, a value to compare it with, and a second value (between, in)."""
    field = draw(st.sampled_from(list(QUERY_VALUES)))
    values = QUERY_VALUES[field]
    return field, draw(st.sampled_from(values)), draw(st.sampled_from([*values, None]))


@st.composite
def terms(draw: st.DrawFn) -> Expression:
    field, value, other = draw(term_parts())
    return _term(field, draw(st.sampled_from(OPERATORS)), value, other)


@st.composite
def queries(draw: st.DrawFn) -> list[Expression]:
    """Every operator on one drawn field and value, and an AND and an OR of two terms."""
    field, value, other = draw(term_parts())
    found = [_term(field, op, value, other) for op in OPERATORS]
    found.append(draw(terms()) & draw(terms()))
    found.append(draw(terms()) | draw(terms()))
    return found


def bulk_row(i: int, seed: int, as_object: bool) -> Any:
    """Row i of a bulk load: ages of every kind, a few cities, no uid."""
    city = CITY_VALUES[(i + seed) % len(CITY_VALUES)]
    return make_row(AGES[(i * 7 + seed) % len(AGES)], None, city, 100 + i, as_object)


def duplicate_uid(rows: Iterator[Any]) -> bool:
    seen: set[Any] = set()
    for row in rows:
        uid = field_of(row, "uid")
        if uid is None:
            continue
        if uid in seen:  # a Python set: 1, 1.0 and True are one value
            return True
        seen.add(uid)
    return False


class IndexedCollectionMachine(RuleBasedStateMachine):
    """An indexed collection and an unindexed copy, changed alike, queried alike."""

    def __init__(self) -> None:
        super().__init__()
        self.space = ObjectSpace(MemoryStorage())
        self.db = self.space.new_database("m")
        self.transactions: list[Transaction] = []
        empty = self.empty()
        self.indexed = empty.add_index("age").add_index("uid", unique=True)
        self.indexed = self.indexed.add_index("address.city")
        self.plain = empty
        self.model: Any = self.new_model()
        self.fields = ["age", "uid", "address.city"]

    # provided by each machine
    def empty(self) -> Any:
        raise NotImplementedError

    def new_model(self) -> Any:
        raise NotImplementedError

    def model_rows(self, model: Any) -> list[Any]:
        raise NotImplementedError

    def rows(self, coll: Any) -> list[Any]:
        raise NotImplementedError

    def teardown(self) -> None:
        for tr in self.transactions:
            tr.abort()
        self.space.close()

    def apply(self, change: Callable[[Any], Any], new_model: Any) -> None:
        """`change` both copies; a change that repeats a uid must raise and change nothing."""
        if duplicate_uid(iter(self.model_rows(new_model))):
            with pytest.raises(UniqueConstraintError, match="uid"):
                change(self.indexed)
            return
        self.indexed = change(self.indexed)
        self.plain = change(self.plain)
        self.model = new_model

    @invariant()
    def indexes_are_exact(self) -> None:
        assert self.indexed.indexed_fields == self.fields
        assert not self.plain._indexes
        assert_exact(self.indexed)
        rows = self.rows(self.plain)
        assert self.rows(self.indexed) == rows
        assert self.same_rows(self.model, rows)

    def same_rows(self, model: Any, rows: list[Any]) -> bool:
        return self.model_rows(model) == rows

    @rule(found=queries())
    def queries_match_the_scan(self, found: list[Expression]) -> None:
        for query in found:
            expected = list(WherePlan(filter=query, based_on=self.plain))
            assert list(WherePlan(filter=query, based_on=self.indexed)) == expected, str(query)
            lookup = planner.lookup_for(self.indexed, query)
            if lookup is not None:  # the index's answer, even where the planner would scan
                rows = list(planner.fetch(self.indexed, lookup))
                assert [row for row in rows if query.test(row)] == expected, str(query)
                if getattr(lookup, "exact", False):  # claimed to need no re-check
                    assert rows == expected, str(query)

    @rule()
    def toggle_city_index(self) -> None:
        if "address.city" in self.fields:
            self.indexed = self.indexed.remove_index("address.city")
            self.fields.remove("address.city")
        else:
            self.indexed = self.indexed.add_index("address.city")
            self.fields.append("address.city")

    @rule()
    def commit_and_reload(self) -> None:
        writer = self.db.new_transaction()
        self.transactions.append(writer)
        writer.set_root_object("indexed", self.indexed)
        writer.set_root_object("plain", self.plain)
        writer.commit()
        reader = self.db.new_transaction()
        self.transactions.append(reader)
        self.indexed = reader.get_root_object("indexed")
        self.plain = reader.get_root_object("plain")


class DictionaryIndexMachine(IndexedCollectionMachine):
    def empty(self) -> Dictionary:
        return Dictionary()

    def new_model(self) -> dict[Any, Any]:
        return {}

    def model_rows(self, model: dict[Any, Any]) -> list[Any]:
        return [model[key] for key in sorted(model, key=sort_key)]

    def rows(self, coll: Dictionary) -> list[Any]:
        return list(coll.values())

    @rule(key=KEYS, row=DICT_ROWS)
    def set_at(self, key: Any, row: Any) -> None:
        self.apply(lambda d: d.set_at(key, row), {**self.model, key: row})

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove_at(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model, key=sort_key)))
        model = dict(self.model)
        del model[key]
        self.apply(lambda d: d.remove_at(key), model)

    @rule(pairs=st.lists(st.tuples(KEYS, DICT_ROWS), max_size=8), as_mapping=st.booleans())
    def update(self, pairs: list[tuple[Any, Any]], as_mapping: bool) -> None:
        model = dict(self.model)
        model.update(pairs)
        items: Any = dict(pairs) if as_mapping else pairs
        self.apply(lambda d: d.update(items), model)

    @rule(start=st.integers(0, 30), count=st.integers(30, 90))
    def bulk_load(self, start: int, count: int) -> None:
        pairs = [(1000 + start + i, bulk_row(i, start, False)) for i in range(count)]
        model = dict(self.model)
        model.update(pairs)
        self.apply(lambda d: d.update(pairs), model)


class SetIndexMachine(IndexedCollectionMachine):
    def empty(self) -> Set:
        return Set()

    def new_model(self) -> set[Any]:
        return set()

    def model_rows(self, model: set[Any]) -> list[Any]:
        return list(model)

    def same_rows(self, model: set[Any], rows: list[Any]) -> bool:
        return len(rows) == len(model) and set(rows) == model

    def rows(self, coll: Set) -> list[Any]:
        return list(coll.as_iterable())

    @rule(row=SET_ROWS)
    def add(self, row: Any) -> None:
        self.apply(lambda s: s.add(row), self.model | {row})

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove_at(self, data: st.DataObject) -> None:
        element = data.draw(st.sampled_from(self.rows(self.plain)))
        self.apply(lambda s: s.remove_at(element), self.model - {element})

    @rule(rows=st.lists(SET_ROWS, max_size=8), as_set=st.booleans(), method=st.booleans())
    def update_or_union(self, rows: list[Any], as_set: bool, method: bool) -> None:
        other: Any = Set(rows) if as_set else rows
        if method:
            self.apply(lambda s: s.update(other), self.model | set(rows))
        else:
            self.apply(lambda s: s.union(other), self.model | set(rows))

    @rule(seed=st.integers(0, 30), count=st.integers(20, 60))
    def bulk_update(self, seed: int, count: int) -> None:
        rows = [bulk_row(i, seed, True) for i in range(count)]
        self.apply(lambda s: s.update(rows), self.model | set(rows))

    @rule(data=st.data(), extra=st.lists(SET_ROWS, max_size=3))
    def intersection(self, data: st.DataObject, extra: list[Any]) -> None:
        kept = data.draw(st.lists(st.sampled_from(self.rows(self.plain) or [None])))
        kept = [element for element in kept if element is not None]
        other = kept + extra
        self.apply(lambda s: s.intersection(other), self.model & set(other))

    @rule(data=st.data(), extra=st.lists(SET_ROWS, max_size=3))
    def difference(self, data: st.DataObject, extra: list[Any]) -> None:
        dropped = data.draw(st.lists(st.sampled_from(self.rows(self.plain) or [None])))
        other = [element for element in dropped if element is not None] + extra
        self.apply(lambda s: s.difference(other), self.model - set(other))


class ListIndexMachine(IndexedCollectionMachine):
    def empty(self) -> List:
        return List()

    def new_model(self) -> list[Any]:
        return []

    def model_rows(self, model: list[Any]) -> list[Any]:
        return list(model)

    def rows(self, coll: List) -> list[Any]:
        return list(coll.as_iterable())

    def position(self, drawn: int) -> int:
        """A valid position (negative ones too) of the current list."""
        size = len(self.model)
        return drawn % (2 * size) - size

    @precondition(lambda self: self.model)
    @rule(drawn=st.integers(0, 1000), row=DICT_ROWS)
    def set_at(self, drawn: int, row: Any) -> None:
        position = self.position(drawn)
        model = list(self.model)
        model[position] = row
        self.apply(lambda li: li.set_at(position, row), model)

    @rule(drawn=st.integers(0, 1000), row=DICT_ROWS)
    def insert_at(self, drawn: int, row: Any) -> None:
        position = drawn % (len(self.model) + 1)
        model = list(self.model)
        model.insert(position, row)
        self.apply(lambda li: li.insert_at(position, row), model)

    @precondition(lambda self: self.model)
    @rule(drawn=st.integers(0, 1000))
    def remove_at(self, drawn: int) -> None:
        position = self.position(drawn)
        model = list(self.model)
        del model[position]
        self.apply(lambda li: li.remove_at(position), model)

    @rule(row=DICT_ROWS, last=st.booleans())
    def append(self, row: Any, last: bool) -> None:
        if last:
            self.apply(lambda li: li.append_last(row), [*self.model, row])
        else:
            self.apply(lambda li: li.append_first(row), [row, *self.model])

    @precondition(lambda self: self.model)
    @rule(last=st.booleans())
    def remove_end(self, last: bool) -> None:
        if last:
            self.apply(lambda li: li.remove_last(), self.model[:-1])
        else:
            self.apply(lambda li: li.remove_first(), self.model[1:])

    @rule(rows=st.lists(DICT_ROWS, max_size=8))
    def extend(self, rows: list[Any]) -> None:
        self.apply(lambda li: li.extend(rows), [*self.model, *rows])

    @rule(seed=st.integers(0, 30), count=st.integers(30, 90))
    def bulk_extend(self, seed: int, count: int) -> None:
        rows = [bulk_row(i, seed, bool(i % 2)) for i in range(count)]
        self.apply(lambda li: li.extend(rows), [*self.model, *rows])

    @rule(start=st.integers(-200, 200), stop=st.one_of(st.none(), st.integers(-200, 200)))
    def slice_forms(self, start: int, stop: int | None) -> None:
        model = self.model[start:stop]
        if start >= 0 and stop is None:
            self.apply(lambda li: li.tail(start), model)
        elif start == 0 and stop is not None and stop >= 0:
            self.apply(lambda li: li.head(stop), model)
        elif stop is not None and stop % 2:
            self.apply(lambda li: li[start:stop], model)
        else:
            self.apply(lambda li: li.slice(start, stop), model)


TestDictionaryIndexMachine = DictionaryIndexMachine.TestCase
TestDictionaryIndexMachine.settings = MACHINE_SETTINGS
TestSetIndexMachine = SetIndexMachine.TestCase
TestSetIndexMachine.settings = MACHINE_SETTINGS
TestListIndexMachine = ListIndexMachine.TestCase
TestListIndexMachine.settings = MACHINE_SETTINGS


# -- 1. the planner reads the maintained indexes ----------------------------------------------


def plan_rows(query: Expression, coll: Any) -> tuple[list[Any], bool]:
    plan = WherePlan(filter=query, based_on=coll)
    rows = list(plan)
    return rows, plan.explain().uses_index


@pytest.mark.parametrize(
    "query",
    [
        F.age == 3,
        F.age == 3.0,
        F.age > 5,
        F.age <= 0,
        F.age.between(1, 2),
        F.age.is_in([0, 6]),
        F.age.is_null(),
        F.address.city == "Lima",
        (F.age == 2) & (F.address.city == "Oslo"),
        (F.age == 2) | (F.age.is_null()),
    ],
    ids=str,
)
def test_planner_uses_the_index_and_returns_the_scan_rows(query: Expression) -> None:
    plain = Dictionary({f"p{i:04}": person_row(i) for i in range(600)})
    plain = plain.update({f"x{i}": {"name": "no age"} for i in range(30)})
    indexed = plain.add_index("age").add_index("address.city")
    indexed = indexed.set_at("p0001", {"age": 3, "address": {"city": "Lima"}}).remove_at("p0010")
    plain = plain.set_at("p0001", {"age": 3, "address": {"city": "Lima"}}).remove_at("p0010")
    expected = [row for row in plain.values() if query.test(row)]
    assert expected, "the query should match some rows"
    rows, used_index = plan_rows(query, indexed)
    assert used_index
    assert rows == expected
    assert plan_rows(query, plain) == (expected, False)


def test_queries_on_nan_and_mixed_numbers_match_the_scan() -> None:
    from decimal import Decimal

    nan = float("nan")
    values = [nan, 1, 1.0, True, Decimal("1.5"), 2.5, Decimal("nan"), "1", None]
    plain = Dictionary({i: {"v": values[i % len(values)]} for i in range(90)})
    indexed = plain.add_index("v")
    assert_exact(indexed)
    for query in [F.v == nan, F.v == 1, F.v > 1, F.v >= 1.5, F.v < 2, F.v.between(1, 2)]:
        expected = [row for row in plain.values() if query.test(row)]
        assert list(WherePlan(filter=query, based_on=indexed)) == expected, str(query)
        lookup = planner.lookup_for(indexed, query)
        assert lookup is not None
        fetched = [row for row in planner.fetch(indexed, lookup) if query.test(row)]
        assert fetched == expected, str(query)


@pytest.mark.parametrize("kind", ["dictionary", "list"])
def test_is_not_null_through_the_index_finds_unorderable_values(kind: str) -> None:
    rows: list[Any] = [{"age": None} for _ in range(60)]
    rows[10] = {"age": [1, 2]}
    rows[20] = {"age": 5}
    rows[30] = {"age": {"nested": 1}}
    plain: Any = Dictionary(enumerate(rows)) if kind == "dictionary" else List(rows)
    indexed = plain.add_index("age")
    query = F.age.is_not_null()
    expected = [{"age": [1, 2]}, {"age": 5}, {"age": {"nested": 1}}]
    assert list(WherePlan(filter=query, based_on=plain)) == expected
    rows_found, used_index = plan_rows(query, indexed)
    assert used_index
    assert rows_found == expected
    assert plan_rows(~F.age.is_not_null(), indexed)[0] == [{"age": None}] * 57


def test_tuple_range_through_the_index_finds_tuples_holding_lists() -> None:
    rows: dict[int, Any] = {i: {"t": (0, i)} for i in range(60)}
    rows[100] = {"t": (5, [2])}
    rows[101] = {"t": (5, 1)}
    plain = Dictionary(rows)
    indexed = plain.add_index("t")
    query = F.t > (4,)
    expected = [{"t": (5, [2])}, {"t": (5, 1)}]
    assert list(WherePlan(filter=query, based_on=plain)) == expected
    assert list(WherePlan(filter=query, based_on=indexed)) == expected


# -- 2. persistence ---------------------------------------------------------------------------


def build_indexed(kind: str, n: int) -> Any:
    if kind == "dictionary":
        coll: Any = people(n)
    elif kind == "list":
        coll = List([person_row(i) for i in range(n)])
    else:
        coll = Set(set_row(i) for i in range(n))
    return coll.add_index("age").add_index("name", unique=True)


def set_row(i: int) -> Person:
    return Person(name=f"n{i:04}", age=i % 7, address=Address(city=CITIES[i % 3]))


def edit_indexed(kind: str, coll: Any) -> Any:
    if kind == "dictionary":
        coll = coll.set_at("p0001", {"age": 70, "name": "changed"}).remove_at("p0002")
        return coll.set_at("new", {"age": 71, "name": "new"})
    if kind == "list":
        coll = coll.set_at(1, {"age": 70, "name": "changed"}).append_last({"age": 71})
        return coll.remove_at(2)  # shifts positions: the indexes are rebuilt
    coll = coll.remove_at(set_row(1)).add(Person(age=70, name="changed"))
    coll = coll.add(Person(age=71, name="new")).remove_at(set_row(2))
    return coll.update([Person(age=72, name=f"more{i}") for i in range(3)])


def check_any(coll: Any, *fields: str) -> None:
    if isinstance(coll, Dictionary):
        check_dict(coll, *fields)
    elif isinstance(coll, List):
        check_list(coll, *fields)
    else:
        check_set(coll, *fields)


def all_entries(coll: Any) -> list[list[tuple[Any, Any]]]:
    return [tree_entries(index) for index in coll._indexes]


@pytest.mark.parametrize("kind", ["dictionary", "list", "set"])
def test_indexes_survive_commit_and_reload(db: Database, kind: str) -> None:
    original = build_indexed(kind, 2000)
    store(db, c=original)
    tr = db.new_transaction()
    loaded = tr.get_root_object("c")
    assert loaded is not original
    assert loaded.indexed_fields == ["age", "name"]
    assert [index.spec for index in loaded._indexes] == [index.spec for index in original._indexes]
    assert index_of(loaded, "name").spec.unique
    assert all_entries(loaded) == all_entries(original)
    check_any(loaded, "age", "name")
    rows, used_index = plan_rows(F.name == "n0007", loaded)
    assert used_index
    assert [field_of(row, "age") for row in rows] == [0]

    edited = edit_indexed(kind, loaded)
    check_any(edited, "age", "name")
    tr.set_root_object("c", edited)
    assert tr.commit() is not None

    again = db.new_transaction().get_root_object("c")
    assert again.indexed_fields == ["age", "name"]
    check_any(again, "age", "name")
    assert all_entries(again) == all_entries(edit_indexed(kind, original))
    rows, used_index = plan_rows(F.age == 70, again)
    assert used_index
    assert [field_of(row, "name") for row in rows] == ["changed"]


@pytest.mark.parametrize("kind", ["dictionary", "list", "set"])
def test_index_added_and_removed_in_stored_collections(db: Database, kind: str) -> None:
    store(db, c=build_indexed(kind, 500).remove_index("age"))
    with db.transaction() as tr:
        loaded = tr.get_root_object("c")
        assert loaded.indexed_fields == ["name"]
        tr.set_root_object("c", loaded.add_index("address.city"))
    tr = db.new_transaction()
    loaded = tr.get_root_object("c")
    assert loaded.indexed_fields == ["name", "address.city"]
    check_any(loaded, "name", "address.city")
    tr.set_root_object("c", loaded.remove_index("name").remove_index("address.city"))
    tr.commit()
    bare = read_root(db, "c")
    assert bare.indexed_fields == []
    assert not bare._indexes
    assert len(bare) == 500


def test_unique_index_rules_hold_after_reload(db: Database) -> None:
    store(db, d=Dictionary({"a": {"uid": 1}, "b": {"uid": None}}).add_index("uid", unique=True))
    tr = db.new_transaction()
    d = tr.get_root_object("d")
    with pytest.raises(UniqueConstraintError, match="uid"):
        d.set_at("c", {"uid": 1.0})
    d = d.set_at("c", {"uid": None}).set_at("a", {"uid": 2}).set_at("e", {"uid": 1})
    check_dict(d, "uid")


def test_mutable_object_field_values_are_stored_in_the_index(db: Database) -> None:
    owner = Account(name="ann")
    d = Dictionary({"a": {"owner": owner}, "b": {"owner": None}}).add_index("owner")
    store(db, d=d)
    tr = db.new_transaction()
    loaded = tr.get_root_object("d")
    check_dict(loaded, "owner")
    stored_owner = loaded.get_at("a")["owner"]
    assert stored_owner.object_id == owner.object_id
    assert list(WherePlan(filter=F.owner == stored_owner, based_on=loaded)) == [
        {"owner": stored_owner}
    ]
    changed = loaded.remove_at("a").set_at("c", {"owner": stored_owner})
    check_dict(changed, "owner")
    tr.set_root_object("d", changed)
    tr.commit()
    check_dict(read_root(db, "d"), "owner")


def open_file_space(path: Path, create: bool = True) -> ObjectSpace:
    return ObjectSpace(StandaloneFileStorage(path, create=create))


def test_indexes_in_file_storage_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    original = build_indexed("dictionary", 3000)
    with open_file_space(path) as space:
        db = space.new_database("idx")
        store(db, d=original, li=build_indexed("list", 300), s=build_indexed("set", 300))
        with db.transaction() as tr:
            tr.set_root_object("d", edit_indexed("dictionary", tr.get_root_object("d")))

    with open_file_space(path, create=False) as space:
        db = space.open_database("idx")
        tr = db.new_transaction()
        d = tr.get_root_object("d")
        assert d.indexed_fields == ["age", "name"]
        check_dict(d, "age", "name")
        assert all_entries(d) == all_entries(edit_indexed("dictionary", original))
        check_list(tr.get_root_object("li"), "age", "name")
        check_set(tr.get_root_object("s"), "age", "name")
        tr.set_root_object("d", d.set_at("p0100", {"age": 99, "name": "reopened"}))
        tr.commit()

    with open_file_space(path, create=False) as space:
        d = space.open_database("idx").new_transaction().get_root_object("d")
        check_dict(d, "age", "name")
        assert plan_rows(F.age == 99, d) == ([{"age": 99, "name": "reopened"}], True)

    report = fsck(path)
    assert report.problems == []
    assert report.clean
    assert report.atoms_checked > len(index_of(original, "age")) // 64


def wal_bytes(space: ObjectSpace) -> int:
    storage = space.storage
    assert isinstance(storage, StandaloneFileStorage)
    return sum(size for _, size in storage.segment_sizes())


def test_pack_keeps_the_index_atoms(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with open_file_space(path) as space:
        db = space.new_database("idx")
        store(db, d=build_indexed("dictionary", 3000))
        for i in range(6):  # garbage: replaced rows, and index nodes
            with db.transaction() as tr:
                d = tr.get_root_object("d")
                tr.set_root_object(
                    "d", d.update({f"p{j:04}": {"age": 50 + i} for j in range(i, 3000, 97)})
                )
        with db.transaction() as tr:  # an index dropped and one built: more garbage
            d = tr.get_root_object("d").remove_index("name")
            tr.set_root_object("d", d.add_index("address.city"))
        expected = all_entries(read_root(db, "d"))
        before = wal_bytes(space)
        space.pack()
        assert wal_bytes(space) < before
        d = read_root(db, "d")
        assert d.indexed_fields == ["age", "address.city"]
        assert all_entries(d) == expected
        check_dict(d, "age", "address.city")

    with open_file_space(path, create=False) as space:
        db = space.open_database("idx")
        tr = db.new_transaction()
        d = tr.get_root_object("d")
        assert all_entries(d) == expected
        check_dict(d, "age", "address.city")
        tr.set_root_object("d", d.set_at("p0005", {"age": 1000, "address": {"city": "Nome"}}))
        tr.commit()
        after = read_root(db, "d")
        check_dict(after, "age", "address.city")
        assert plan_rows(F.address.city == "Nome", after)[0] == [
            {"age": 1000, "address": {"city": "Nome"}}
        ]
    assert fsck(path).problems == []


# -- 3. three-way merge of concurrent transactions --------------------------------------------


def indexed_people(n: int = 200) -> Dictionary:
    return people(n).add_index("age").add_index("address.city")


def test_merge_both_add_different_rows(db: Database) -> None:
    store(db, d=indexed_people())
    both_commit(
        db,
        change_root("d", lambda d: d.set_at("first", {"age": 100, "address": {"city": "A"}})),
        change_root("d", lambda d: d.set_at("second", {"age": 101}).remove_at("p0004")),
    )
    d = read_root(db, "d")
    check_dict(d, "age", "address.city")
    assert len(d) == 201
    ages = [key for key, _ in tree_entries(index_of(d, "age"))]
    assert (100, "first") in ages
    assert (101, "second") in ages
    assert all(key[1] != "p0004" for key in ages)


def test_merge_field_change_and_added_row(db: Database) -> None:
    store(db, d=indexed_people())
    both_commit(
        db,
        change_root("d", lambda d: d.set_at("p0003", {"age": 55, "address": {"city": "B"}})),
        change_root("d", lambda d: d.set_at("added", {"age": 3, "address": {"city": "B"}})),
    )
    d = read_root(db, "d")
    check_dict(d, "age", "address.city")
    cities = [key for key, _ in tree_entries(index_of(d, "address.city")) if key[0] == "B"]
    assert cities == [("B", "added"), ("B", "p0003")]
    assert plan_rows(F.age == 55, d) == ([{"age": 55, "address": {"city": "B"}}], True)


def test_merge_many_changes_on_both_sides(db: Database) -> None:
    store(db, d=indexed_people(3000))
    both_commit(
        db,
        change_root("d", lambda d: d.update({f"p{i:04}": {"age": -1} for i in range(0, 3000, 7)})),
        change_root("d", lambda d: d.update({f"p{i:04}": {"age": -2} for i in range(3, 3000, 7)})),
    )
    d = read_root(db, "d")
    check_dict(d, "age", "address.city")
    assert index_of(d, "age").count(below(sort_key(-1)), above(sort_key(-1))) == 429


@pytest.mark.parametrize("index_side", ["first", "second"])
def test_merge_add_index_while_the_other_adds_rows(db: Database, index_side: str) -> None:
    store(db, d=people(300))
    add_index = change_root("d", lambda d: d.add_index("age"))
    add_rows = change_root("d", lambda d: d.update({f"z{i}": {"age": 1000 + i} for i in range(5)}))
    if index_side == "first":
        both_commit(db, add_index, add_rows)
    else:
        both_commit(db, add_rows, add_index)
    d = read_root(db, "d")
    assert d.indexed_fields == ["age"]
    check_dict(d, "age")
    assert len(index_of(d, "age")) == 305
    assert ((1004, "z4"), 1) in tree_entries(index_of(d, "age"))


@pytest.mark.parametrize("index_side", ["first", "second"])
def test_merge_remove_index_while_the_other_changes_rows(db: Database, index_side: str) -> None:
    store(db, d=indexed_people(300))
    remove_index = change_root("d", lambda d: d.remove_index("age"))
    change_rows = change_root("d", lambda d: d.set_at("p0001", {"age": 77}).set_at("n", {}))
    if index_side == "first":
        both_commit(db, remove_index, change_rows)
    else:
        both_commit(db, change_rows, remove_index)
    d = read_root(db, "d")
    assert d.indexed_fields == ["address.city"]
    check_dict(d, "address.city")
    assert d.get_at("p0001") == {"age": 77}
    assert len(d) == 301


def test_merge_both_add_the_same_index(db: Database) -> None:
    store(db, d=people(100))
    both_commit(
        db,
        change_root("d", lambda d: d.add_index("age").set_at("a", {"age": 1})),
        change_root("d", lambda d: d.add_index("age").set_at("b", {"age": 2})),
    )
    d = read_root(db, "d")
    assert d.indexed_fields == ["age"]
    check_dict(d, "age")
    assert len(d) == 102


def test_merge_both_add_different_indexes_conflicts(db: Database) -> None:
    store(db, d=people(100))
    second_conflicts(
        db,
        change_root("d", lambda d: d.add_index("age")),
        change_root("d", lambda d: d.add_index("name")),
        "d",
    )
    d = read_root(db, "d")
    assert d.indexed_fields == ["age"]
    check_dict(d, "age")


def test_merge_rows_sharing_a_unique_value_conflict(db: Database) -> None:
    store(db, d=people(100).add_index("name", unique=True))
    second_conflicts(
        db,
        change_root("d", lambda d: d.set_at("k1", {"name": "same"})),
        change_root("d", lambda d: d.set_at("k2", {"name": "same"}).set_at("k3", {"name": "x"})),
        "d",
    )
    d = read_root(db, "d")
    assert d.get_at("k1") == {"name": "same"}
    assert not d.has("k2")
    assert not d.has("k3")
    check_dict(d, "name")


def test_merge_unique_index_added_while_the_other_adds_a_duplicate_conflicts(db: Database) -> None:
    store(db, d=people(100))
    second_conflicts(
        db,
        change_root("d", lambda d: d.set_at("dup", {"name": "n0005"})),
        change_root("d", lambda d: d.add_index("name", unique=True)),
        "d",
    )
    d = read_root(db, "d")
    assert d.indexed_fields == []
    assert d.get_at("dup") == {"name": "n0005"}


def test_merge_nested_indexed_dictionary(db: Database) -> None:
    store(db, outer=Dictionary({"people": indexed_people(300), "other": 0}))

    def inner(fn: Callable[[Dictionary], Dictionary]) -> Change:
        return change_root("outer", lambda o: o.set_at("people", fn(o.get_at("people"))))

    both_commit(
        db,
        inner(lambda p: p.set_at("p0001", {"age": 500}).remove_at("p0002")),
        inner(lambda p: p.set_at("p0200", {"age": 501, "address": {"city": "C"}})),
    )
    outer = read_root(db, "outer")
    nested = outer.get_at("people")
    assert nested.indexed_fields == ["age", "address.city"]
    check_dict(nested, "age", "address.city")
    assert len(nested) == 299
    assert plan_rows(F.age >= 500, nested)[0] == [
        {"age": 500},
        {"age": 501, "address": {"city": "C"}},
    ]
    assert outer.get_at("other") == 0


def test_merge_indexed_set_root(db: Database) -> None:
    store(db, s=Set(set_row(i) for i in range(200)).add_index("age"))
    both_commit(
        db,
        change_root("s", lambda s: s.add(Person(age=90, name="x")).remove_at(set_row(3))),
        change_root("s", lambda s: s.add(Person(age=91, name="y"))),
    )
    s = read_root(db, "s")
    check_set(s, "age")
    assert len(s) == 201
    assert sorted(field_of(row, "name") for row in plan_rows(F.age > 80, s)[0]) == ["x", "y"]


def test_indexed_list_changed_on_both_sides_conflicts(db: Database) -> None:
    store(db, li=List([list_row(i) for i in range(50)]).add_index("age"))
    t1, t2 = db.new_transaction(), db.new_transaction()
    t1.set_root_object("li", t1.get_root_object("li").set_at(0, {"age": 9}))
    t2.set_root_object("li", t2.get_root_object("li").append_last({"age": 9}))
    t1.commit()
    with pytest.raises(ConflictError):
        t2.commit()
    li = read_root(db, "li")
    check_list(li, "age")
    assert len(li) == 50


# -- 4. errors --------------------------------------------------------------------------------


def uid_dictionary() -> Dictionary:
    rows = {"a": {"uid": 1}, "b": {"uid": "x"}, "c": {"uid": None}, "d": {}, "e": {"uid": [1]}}
    return Dictionary(rows).add_index("uid", unique=True)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.set_at("new", {"uid": 1}),
        lambda d: d.set_at("new", {"uid": 1.0}),
        lambda d: d.set_at("new", {"uid": True}),
        lambda d: d.set_at("b", {"uid": 1}),
        lambda d: d.update({"n1": {"uid": 7}, "n2": {"uid": 7}}),
        lambda d: d.update([("n1", {"uid": 8}), ("n2", {"uid": "x"})]),
        lambda d: d.set_at("new", Person(uid=1)),
    ],
    ids=["same", "1.0", "True", "existing key", "two new rows", "pairs", "DBObject row"],
)
def test_unique_index_refuses_a_repeated_value(change: Callable[[Dictionary], Any]) -> None:
    d = uid_dictionary()
    before = tree_entries(index_of(d, "uid"))
    rows = list(d.items())
    with pytest.raises(UniqueConstraintError, match="uid") as raised:
        change(d)
    assert "unique" in str(raised.value)
    assert tree_entries(index_of(d, "uid")) == before
    assert list(d.items()) == rows
    check_dict(d, "uid")


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.set_at("n", {"uid": None}),
        lambda d: d.set_at("n", {}),
        lambda d: d.set_at("n", {"uid": [1]}),
        lambda d: d.set_at("a", {"uid": 1, "more": 2}),
        lambda d: d.set_at("a", {"uid": 1.0}),
        lambda d: d.update({"a": {"uid": "x"}, "b": {"uid": 1}}),
        lambda d: d.remove_at("a").set_at("n", {"uid": 1}),
        lambda d: d.set_at("n", {"uid": 2}),
    ],
    ids=["None", "missing", "unorderable", "same row", "1.0 for 1", "swap", "freed", "new"],
)
def test_unique_index_accepts(change: Callable[[Dictionary], Dictionary]) -> None:
    d = change(uid_dictionary())
    check_dict(d, "uid")


def test_unique_index_build_refuses_duplicates_and_names_the_field() -> None:
    d = Dictionary({"a": {"email": "x@y"}, "b": {"email": "x@y"}, "c": {}, "d": {}})
    with pytest.raises(UniqueConstraintError, match="email") as raised:
        d.add_index("email", unique=True)
    assert "x@y" in str(raised.value)
    assert d.indexed_fields == []
    with pytest.raises(UniqueConstraintError, match="n"):
        Dictionary({"a": {"n": 1}, "b": {"n": 1.0}}).add_index("n", unique=True)
    # None and missing repeat freely; a non-unique index takes the duplicates.
    check_dict(d.remove_at("b").add_index("email", unique=True), "email")
    check_dict(d.add_index("email"), "email")


def test_unique_index_on_list_and_set() -> None:
    li = List([{"uid": i} for i in range(10)]).add_index("uid", unique=True)
    with pytest.raises(UniqueConstraintError, match="uid"):
        li.append_last({"uid": 3})
    with pytest.raises(UniqueConstraintError, match="uid"):
        li.insert_at(4, {"uid": 3.0})  # shifts positions: the rebuild refuses too
    with pytest.raises(UniqueConstraintError, match="uid"):
        li.extend([{"uid": 20}, {"uid": 20}])
    with pytest.raises(UniqueConstraintError, match="uid"):
        li.set_at(0, {"uid": 9})
    check_list(li.set_at(0, {"uid": 0.0}).insert_at(2, {"uid": 10}).append_first({}), "uid")

    s = Set(Person(uid=i) for i in range(10)).add_index("uid", unique=True)
    with pytest.raises(UniqueConstraintError, match="uid"):
        s.add(Person(uid=3, other=True))
    with pytest.raises(UniqueConstraintError, match="uid"):
        s.update([Person(uid=30, a=1), Person(uid=30, a=2)])
    assert s.add(Person(uid=3)) is s  # the same element: nothing added
    check_set(s.add(Person(uid=None)).add(Person(uid=None, a=1)), "uid")
    with pytest.raises(UniqueConstraintError, match="uid"):
        Set([Person(uid=1, a=1), Person(uid=1, a=2)]).add_index("uid", unique=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Dictionary({"a": Account(age=1), "b": {"age": 2}}),
        lambda: List([{"age": 1}, Account(age=2)]),
        lambda: Set([Account(age=3)]),
    ],
    ids=["dictionary", "list", "set"],
)
def test_index_through_a_mutable_object_is_refused(make: Callable[[], Any]) -> None:
    coll = make()
    with pytest.raises(ValidationError, match="'age'") as raised:
        coll.add_index("age")
    assert "MutableObject" in str(raised.value)
    assert coll.indexed_fields == []


def test_dotted_index_through_a_mutable_object_is_refused() -> None:
    d = Dictionary({"a": {"owner": Account(age=1)}})
    with pytest.raises(ValidationError, match=r"owner\.age"):
        d.add_index("owner.age")
    check_dict(d.add_index("owner"), "owner")  # the object as the value is fine


def test_adding_a_mutable_object_row_to_an_indexed_collection_is_refused() -> None:
    d = Dictionary({"a": {"age": 1}}).add_index("age")
    with pytest.raises(ValidationError, match="'age'"):
        d.set_at("b", Account(age=2))
    li = List([{"age": 1}]).add_index("age")
    with pytest.raises(ValidationError, match="'age'"):
        li.append_last(Account(age=2))
    check_dict(d, "age")
    check_list(li, "age")


def test_add_index_again_and_remove_index_errors() -> None:
    d = people(20).add_index("age").add_index("name", unique=True)
    assert d.add_index("age") is d
    assert d.add_index("name", unique=True) is d
    with pytest.raises(QueryError, match="'age'"):
        d.add_index("age", unique=True)
    with pytest.raises(QueryError, match="'name'"):
        d.add_index("name")
    with pytest.raises(QueryError, match="'city'"):
        d.remove_index("city")
    without = d.remove_index("age")
    assert without.indexed_fields == ["name"]
    assert without._indexes[0] is index_of(d, "name")  # the kept index is not rebuilt
    with pytest.raises(QueryError, match="'age'"):
        without.remove_index("age")
    assert d.indexed_fields == ["age", "name"]
    for bad in ["", "a..b", ".a", 5]:
        with pytest.raises(QueryError):
            d.add_index(bad)  # type: ignore[arg-type]
    li, s = List([{"a": 1}]), Set([Person(a=1)])
    assert li.add_index("a").add_index("a").indexed_fields == ["a"]
    with pytest.raises(QueryError, match="'b'"):
        li.remove_index("b")
    with pytest.raises(QueryError, match="'b'"):
        s.remove_index("b")
    with pytest.raises(QueryError, match="'a'"):
        s.add_index("a").add_index("a", unique=True)


# -- 5. complexity: a one-row change touches O(log n) index nodes ------------------------------


class CountingStorage(MemoryStorage):
    """A MemoryStorage that records how many atoms each commit writes."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def commit(self, batch: Any, expected_root_version: int, new_root: Any) -> Any:
        self.batch_sizes.append(len(batch.atoms))
        return super().commit(batch, expected_root_version, new_root)


def atoms_per_small_change(n: int, indexes: tuple[str, ...]) -> list[int]:
    storage = CountingStorage()
    with ObjectSpace(storage) as space:
        db = space.new_database("big")
        d = Dictionary({i: {"age": i % 500, "name": f"n{i}"} for i in range(n)})
        for field in indexes:
            d = d.add_index(field)
        store(db, d=d)
        assert storage.batch_sizes[-1] > n // 64  # the bulk load wrote every leaf
        sizes = []
        for key, age in [(0, 321), (n // 2, 7), (n - 1, 499), (n // 3, -5)]:
            with db.transaction() as tr:
                tr.set_root_object("d", tr.get_root_object("d").set_at(key, {"age": age}))
            sizes.append(storage.batch_sizes[-1])
        with db.transaction() as tr:
            tr.set_root_object("d", tr.get_root_object("d").set_at(n + 10, {"age": 1}))
        sizes.append(storage.batch_sizes[-1])
        with db.transaction() as tr:
            tr.set_root_object("d", tr.get_root_object("d").remove_at(n // 4))
        sizes.append(storage.batch_sizes[-1])
        final = read_root(db, "d")
        assert final.indexed_fields == list(indexes)
        if indexes:
            check_dict(final, *indexes)
        assert final.get_at(n // 3) == {"age": -5}
    return sizes


def test_one_row_change_in_an_indexed_20k_dictionary_writes_few_atoms() -> None:
    plain = atoms_per_small_change(20_000, ())
    indexed = atoms_per_small_change(20_000, ("age",))
    assert max(indexed) <= 16, indexed
    # The index adds at most two root-to-leaf paths (the old and the new entry).
    assert all(i - p <= 8 for i, p in zip(indexed, plain, strict=True)), (indexed, plain)
    small = atoms_per_small_change(1_000, ("age",))
    assert max(indexed) <= max(small) + 4, (indexed, small)
