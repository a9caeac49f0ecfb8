"""Snapshot isolation, commit/abort, Database.run and the three-way merge on rebase."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from protobase import (
    ConflictError,
    CountedSet,
    Database,
    DBObject,
    Dictionary,
    HashDictionary,
    List,
    MemoryStorage,
    MutableObject,
    ObjectSpace,
    ReadOnlyTransactionError,
    Set,
    Transaction,
    TransactionClosedError,
)


class Account(MutableObject):
    pass


class Tag(DBObject):
    pass


@pytest.fixture
def db(space: ObjectSpace) -> Database:
    return space.new_database("tx")


def store(db: Database, **roots: Any) -> None:
    with db.transaction() as tr:
        for name, value in roots.items():
            tr.set_root_object(name, value)


def version(db: Database) -> int:
    return db.space.storage.read_root().version


def plain(value: Any) -> Any:
    """A comparable Python rendering of a stored value (collections read eagerly)."""
    if isinstance(value, Dictionary | HashDictionary):
        return (type(value).__name__, sorted((repr(k), plain(v)) for k, v in value.items()))
    if isinstance(value, CountedSet):
        return ("CountedSet", sorted((repr(k), n) for k, n in value.items()), value.total_count)
    if isinstance(value, Set):
        return ("Set", sorted(repr(v) for v in value.as_iterable()))
    if isinstance(value, List):
        return ("List", [plain(v) for v in value.as_iterable()])
    if isinstance(value, MutableObject):
        return (type(value).__name__, value.object_id, plain(value.attributes()))
    if isinstance(value, DBObject):
        return (type(value).__name__, plain(value.attributes()))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def dump(db: Database) -> dict[str, Any]:
    tr = db.new_read_only_transaction()
    try:
        return {name: plain(tr.get_root_object(name)) for name in tr.root_names()}
    finally:
        tr.abort()


Change = Callable[[Transaction], None]


def both_commit(db: Database, first: Change, second: Change) -> None:
    t1, t2 = db.new_transaction(), db.new_transaction()
    first(t1)
    second(t2)
    assert t1.commit() is not None
    assert t2.commit() is not None


def second_conflicts(db: Database, first: Change, second: Change) -> dict[str, Any]:
    """Run both on one snapshot; the later commit must fail and write nothing."""
    t1, t2 = db.new_transaction(), db.new_transaction()
    first(t1)
    second(t2)
    t1.commit()
    after_first = dump(db)
    root_after_first = db.space.storage.read_root()
    with pytest.raises(ConflictError):
        t2.commit()
    assert db.space.storage.read_root() == root_after_first
    assert dump(db) == after_first
    return after_first


def change_root(name: str, fn: Callable[[Any], Any]) -> Change:
    def apply(tr: Transaction) -> None:
        tr.set_root_object(name, fn(tr.get_root_object(name)))

    return apply


# -- snapshot isolation ----------------------------------------------------------------------


def test_transaction_does_not_see_later_commits(db) -> None:
    store(db, x=1)
    reader = db.new_transaction()
    store(db, x=2, y="new")
    assert reader.get_root_object("x") == 1
    assert reader.get_root_object("y") is None
    fresh = db.new_transaction()
    assert fresh.get_root_object("x") == 2
    assert fresh.get_root_object("y") == "new"


def test_snapshot_isolation_for_collections_loaded_later(db) -> None:
    store(db, d=Dictionary({f"k{i:04}": i for i in range(1000)}))
    reader = db.new_transaction()
    with db.transaction() as tr:
        d = tr.get_root_object("d")
        tr.set_root_object("d", d.set_at("k0500", -1).remove_at("k0001"))
    d = reader.get_root_object("d")
    assert d.get_at("k0500") == 500
    assert d.has("k0001")
    assert d.count == 1000
    fresh = db.new_transaction().get_root_object("d")
    assert fresh.get_at("k0500") == -1
    assert not fresh.has("k0001")


def test_snapshot_isolation_for_mutable_object_state(db) -> None:
    store(db, a=Account(balance=10))
    reader = db.new_transaction()
    ghost = reader.get_root_object("a")  # not loaded yet
    with db.transaction() as tr:
        tr.get_root_object("a").balance = 20
    assert ghost.balance == 10
    assert db.new_transaction().get_root_object("a").balance == 20


def test_own_writes_are_visible_inside_the_transaction(db) -> None:
    tr = db.new_transaction()
    tr.set_root_object("x", 5)
    assert tr.get_root_object("x") == 5
    assert db.new_transaction().get_root_object("x") is None
    tr.commit()
    assert db.new_transaction().get_root_object("x") == 5


# -- with db.transaction() / commit / abort --------------------------------------------------


def test_with_transaction_commits_on_success(db) -> None:
    with db.transaction() as tr:
        tr.set_root_object("x", "value")
    with pytest.raises(TransactionClosedError):
        tr.get_root_object("x")
    assert db.new_transaction().get_root_object("x") == "value"


def test_with_transaction_aborts_on_exception_and_writes_nothing(db) -> None:
    store(db, x=1)
    before = db.space.storage.read_root()
    with pytest.raises(RuntimeError, match="boom"), db.transaction() as tr:
        tr.set_root_object("x", 2)
        tr.set_root_object("y", Account(balance=1))
        raise RuntimeError("boom")
    assert db.space.storage.read_root() == before
    with pytest.raises(TransactionClosedError):
        tr.get_root_object("x")
    fresh = db.new_transaction()
    assert fresh.get_root_object("x") == 1
    assert fresh.get_root_object("y") is None


def test_commit_without_changes_returns_none(db) -> None:
    store(db, x=1)
    before = version(db)
    tr = db.new_transaction()
    assert tr.get_root_object("x") == 1
    assert tr.commit() is None
    assert version(db) == before
    assert db.new_transaction().commit() is None
    assert version(db) == before


def test_commit_with_changes_returns_new_root(db) -> None:
    before = version(db)
    tr = db.new_transaction()
    tr.set_root_object("x", 1)
    ref = tr.commit()
    assert ref is not None
    assert ref.version == before + 1 == version(db)


def test_read_only_transaction_refuses_writes(db) -> None:
    store(db, x=1, a=Account(balance=1))
    tr = db.new_read_only_transaction()
    assert tr.get_root_object("x") == 1
    with pytest.raises(ReadOnlyTransactionError):
        tr.set_root_object("x", 2)
    acct = tr.get_root_object("a")
    with pytest.raises(ReadOnlyTransactionError):
        acct.balance = 2
    tr.commit()
    fresh = db.new_transaction()
    assert fresh.get_root_object("x") == 1
    assert fresh.get_root_object("a").balance == 1


# -- Database.run ----------------------------------------------------------------------------


def test_run_returns_result_and_commits(db) -> None:
    def work(tr: Transaction) -> str:
        tr.set_root_object("x", 42)
        return "done"

    assert db.run(work, retries=3) == "done"
    assert db.new_transaction().get_root_object("x") == 42


def test_run_reruns_on_conflict(db) -> None:
    store(db, n=0)
    calls = []

    def increment(tr: Transaction) -> int:
        calls.append(1)
        n = tr.get_root_object("n")
        if len(calls) == 1:
            store(db, n=100)  # a concurrent commit to the same root
        tr.set_root_object("n", n + 1)
        return n + 1

    assert db.run(increment, retries=5) == 101
    assert len(calls) == 2
    assert db.new_transaction().get_root_object("n") == 101


def test_run_gives_up_after_retries(db) -> None:
    store(db, n=0)
    calls = []

    def always_conflicting(tr: Transaction) -> None:
        calls.append(1)
        n = tr.get_root_object("n")
        store(db, n=n + 1000)
        tr.set_root_object("n", n + 1)

    with pytest.raises(ConflictError):
        db.run(always_conflicting, retries=2)
    assert len(calls) == 3
    assert db.new_transaction().get_root_object("n") == 3000


def test_run_does_not_retry_other_errors(db) -> None:
    calls = []

    def failing(tr: Transaction) -> None:
        calls.append(1)
        tr.set_root_object("x", 1)
        raise ValueError("not a conflict")

    before = version(db)
    with pytest.raises(ValueError, match="not a conflict"):
        db.run(failing, retries=5)
    assert len(calls) == 1
    assert version(db) == before


# -- three-way merge: disjoint changes both commit -------------------------------------------


MERGEABLE = {
    "dictionary": (
        lambda: Dictionary({"a": 0, "b": 0, "c": 0}),
        lambda d: d.set_at("a", 1),
        lambda d: d.set_at("b", 2).remove_at("c").set_at("new", 3),
        lambda d: d.to_dict() == {"a": 1, "b": 2, "new": 3},
    ),
    "hash_dictionary": (
        lambda: HashDictionary({"a": 0, "b": 0, "c": 0}),
        lambda d: d.set_at("a", 1).remove_at("c"),
        lambda d: d.set_at("b", 2),
        lambda d: d.to_dict() == {"a": 1, "b": 2},
    ),
    "set": (
        lambda: Set(["base", "gone"]),
        lambda s: s.add("x"),
        lambda s: s.add("y").remove_at("gone"),
        lambda s: set(s.as_iterable()) == {"base", "x", "y"} and s.count == 3,
    ),
    "counted_set": (
        lambda: CountedSet(["base", "base", "other"]),
        lambda s: s.add("x").add("base"),
        lambda s: s.add("y", times=2).remove_at("other"),
        lambda s: dict(s.items()) == {"base": 3, "x": 1, "y": 2} and s.total_count == 6,
    ),
}


@pytest.mark.parametrize("kind", list(MERGEABLE))
def test_disjoint_changes_to_same_root_collection_merge(db, kind: str) -> None:
    make, first, second, check = MERGEABLE[kind]
    store(db, c=make(), other="untouched")
    both_commit(db, change_root("c", first), change_root("c", second))
    tr = db.new_transaction()
    assert check(tr.get_root_object("c")), plain(tr.get_root_object("c"))
    assert tr.get_root_object("other") == "untouched"


def test_disjoint_root_names_merge(db) -> None:
    store(db, shared=1)
    both_commit(
        db,
        lambda tr: tr.set_root_object("r1", "one"),
        lambda tr: tr.set_root_object("r2", "two"),
    )
    tr = db.new_transaction()
    assert tr.get_root_object("r1") == "one"
    assert tr.get_root_object("r2") == "two"
    assert tr.get_root_object("shared") == 1


def test_different_mutable_objects_changed_concurrently_merge(db) -> None:
    store(db, a=Account(balance=1), b=Account(balance=1))

    def bump(name: str) -> Change:
        def apply(tr: Transaction) -> None:
            tr.get_root_object(name).balance += 10

        return apply

    both_commit(db, bump("a"), bump("b"))
    tr = db.new_transaction()
    assert tr.get_root_object("a").balance == 11
    assert tr.get_root_object("b").balance == 11


def test_disjoint_changes_in_large_dictionary_merge(db) -> None:
    store(db, d=Dictionary({f"k{i:05}": i for i in range(5000)}))
    both_commit(
        db,
        change_root("d", lambda d: d.set_at("k00005", "first").remove_at("k04000")),
        change_root(
            "d",
            lambda d: (
                d.set_at("k00006", "second")
                .set_at("k04999", "second")
                .update((f"n{i:04}", i) for i in range(700))
            ),
        ),
    )
    d = db.new_transaction().get_root_object("d")
    assert d.count == 5000 - 1 + 700
    assert d.get_at("k00005") == "first"
    assert d.get_at("k00006") == "second"
    assert d.get_at("k04999") == "second"
    assert not d.has("k04000")
    assert d.get_at("n0699") == 699
    assert d.get_at("k02500") == 2500
    keys = list(d.keys())
    assert keys == sorted(keys)


def test_merge_adding_adjacent_keys_keeps_count(db) -> None:
    store(db, d=Dictionary({f"k{i:05}": i for i in range(5000)}))
    both_commit(
        db,
        change_root("d", lambda d: d.set_at("k04000", "first")),
        change_root("d", lambda d: d.set_at("k00010a", 1).set_at("k00010b", 2)),
    )
    d = db.new_transaction().get_root_object("d")
    assert len(list(d.keys())) == 5002
    assert d.count == 5002


def test_nested_dictionaries_merge_different_inner_keys(db) -> None:
    store(db, d=Dictionary({"inner": Dictionary({"a": 0, "b": 0}), "x": 0}))

    def inner(fn: Callable[[Dictionary], Dictionary]) -> Change:
        return change_root("d", lambda d: d.set_at("inner", fn(d.get_at("inner"))))

    both_commit(db, inner(lambda i: i.set_at("a", 1)), inner(lambda i: i.set_at("b", 2)))
    d = db.new_transaction().get_root_object("d")
    assert d.get_at("inner").to_dict() == {"a": 1, "b": 2}
    assert d.get_at("x") == 0


def test_nested_hash_dictionary_in_dictionary_merges(db) -> None:
    store(db, d=Dictionary({"users": HashDictionary({"ann": 1, "bob": 1})}))

    def users(fn: Callable[[HashDictionary], HashDictionary]) -> Change:
        return change_root("d", lambda d: d.set_at("users", fn(d.get_at("users"))))

    both_commit(db, users(lambda u: u.set_at("ann", 2)), users(lambda u: u.set_at("cid", 1)))
    users_now = db.new_transaction().get_root_object("d").get_at("users")
    assert users_now.to_dict() == {"ann": 2, "bob": 1, "cid": 1}


# -- three-way merge: overlapping changes conflict --------------------------------------------


CONFLICTS = {
    "dictionary same key": (
        lambda: Dictionary({"a": 0, "b": 0}),
        lambda d: d.set_at("a", 1),
        lambda d: d.set_at("a", 2),
    ),
    "dictionary same key same value": (
        lambda: Dictionary({"a": 0}),
        lambda d: d.set_at("a", 1),
        lambda d: d.set_at("a", 1),
    ),
    "dictionary same new key": (
        lambda: Dictionary({"a": 0}),
        lambda d: d.set_at("new", 1),
        lambda d: d.set_at("new", 1),
    ),
    "dictionary changed vs removed": (
        lambda: Dictionary({"a": 0}),
        lambda d: d.remove_at("a"),
        lambda d: d.set_at("a", 5),
    ),
    "dictionary removed on both sides": (
        lambda: Dictionary({"a": 0, "b": 0}),
        lambda d: d.remove_at("a"),
        lambda d: d.remove_at("a"),
    ),
    "hash dictionary same key": (
        lambda: HashDictionary({"a": 0, "b": 0}),
        lambda d: d.set_at("b", 1),
        lambda d: d.set_at("b", 2),
    ),
    "set same element added": (
        lambda: Set(["base"]),
        lambda s: s.add("x"),
        lambda s: s.add("x"),
    ),
    "set same element removed": (
        lambda: Set(["base", "x"]),
        lambda s: s.remove_at("x"),
        lambda s: s.remove_at("x"),
    ),
    "counted set same element added": (
        lambda: CountedSet(["x"]),
        lambda s: s.add("x"),
        lambda s: s.add("x"),
    ),
    "list different positions": (
        lambda: List(range(10)),
        lambda li: li.set_at(0, "first"),
        lambda li: li.set_at(9, "second"),
    ),
    "list appended on both sides": (
        lambda: List(["a"]),
        lambda li: li.append_last("b"),
        lambda li: li.append_last("c"),
    ),
    "nested same inner key": (
        lambda: Dictionary({"inner": Dictionary({"a": 0})}),
        lambda d: d.set_at("inner", d.get_at("inner").set_at("a", 1)),
        lambda d: d.set_at("inner", d.get_at("inner").set_at("a", 2)),
    ),
    "nested inner kind changed": (
        lambda: Dictionary({"inner": Dictionary({"a": 0})}),
        lambda d: d.set_at("inner", d.get_at("inner").set_at("a", 1)),
        lambda d: d.set_at("inner", HashDictionary({"a": 0, "b": 1})),
    ),
}


@pytest.mark.parametrize("case", list(CONFLICTS))
def test_overlapping_collection_changes_conflict(db, case: str) -> None:
    make, first, second = CONFLICTS[case]
    store(db, c=make())
    after = second_conflicts(db, change_root("c", first), change_root("c", second))
    # The database holds exactly what the first change alone gives.
    with ObjectSpace(MemoryStorage()) as other_space:
        other = other_space.new_database("replay")
        store(other, c=make())
        with other.transaction() as tr:
            change_root("c", first)(tr)
        assert after == dump(other)


def test_counted_set_double_increment_never_collapses(db) -> None:
    store(db, votes=CountedSet(["x"]))
    after = second_conflicts(
        db, change_root("votes", lambda s: s.add("x")), change_root("votes", lambda s: s.add("x"))
    )
    assert after["votes"] == ("CountedSet", [("'x'", 2)], 2)


@pytest.mark.parametrize("same_value", [False, True])
def test_same_root_plain_value_changed_by_both_conflicts(db, same_value: bool) -> None:
    store(db, n=0, other="o")
    after = second_conflicts(
        db,
        lambda tr: tr.set_root_object("n", 1),
        lambda tr: tr.set_root_object("n", 1 if same_value else 2),
    )
    assert after == {"n": 1, "other": "o"}


def test_same_new_root_name_added_by_both_conflicts(db) -> None:
    after = second_conflicts(
        db,
        lambda tr: tr.set_root_object("fresh", "first"),
        lambda tr: tr.set_root_object("fresh", "second"),
    )
    assert after == {"fresh": "first"}


def test_same_mutable_object_changed_by_both_conflicts(db) -> None:
    store(db, a=Account(balance=10, owner="Ann"))

    def deposit(amount: int) -> Change:
        def apply(tr: Transaction) -> None:
            tr.get_root_object("a").balance += amount

        return apply

    after = second_conflicts(db, deposit(5), deposit(7))
    assert after["a"][2] == {"balance": 15, "owner": "Ann"}


def test_same_mutable_object_different_attributes_conflicts(db) -> None:
    store(db, a=Account(balance=10, owner="Ann"))

    def set_attr(name: str, value: Any) -> Change:
        def apply(tr: Transaction) -> None:
            setattr(tr.get_root_object("a"), name, value)

        return apply

    after = second_conflicts(db, set_attr("balance", 11), set_attr("owner", "Bob"))
    assert after["a"][2] == {"balance": 11, "owner": "Ann"}


def test_conflicting_commit_writes_none_of_its_other_changes(db) -> None:
    store(db, n=0, d=Dictionary({"a": 0}))

    def second(tr: Transaction) -> None:
        tr.set_root_object("n", 2)
        tr.set_root_object("unrelated", "x")
        tr.set_root_object("d", tr.get_root_object("d").set_at("b", 1))
        tr.set_root_object("acct", Account(balance=1))

    after = second_conflicts(db, lambda tr: tr.set_root_object("n", 1), second)
    assert set(after) == {"n", "d"}
    assert after["n"] == 1


def test_conflict_then_retry_on_fresh_snapshot_succeeds(db) -> None:
    store(db, n=0)
    t1, t2 = db.new_transaction(), db.new_transaction()
    t1.set_root_object("n", t1.get_root_object("n") + 1)
    t2.set_root_object("n", t2.get_root_object("n") + 1)
    t1.commit()
    with pytest.raises(ConflictError):
        t2.commit()
    with pytest.raises(TransactionClosedError):
        t2.get_root_object("n")
    t3 = db.new_transaction()
    t3.set_root_object("n", t3.get_root_object("n") + 1)
    t3.commit()
    assert db.new_transaction().get_root_object("n") == 2


def test_new_mutable_object_of_failed_commit_can_be_stored_later(db) -> None:
    store(db, n=0)
    acct = Account(balance=1)
    t1, t2 = db.new_transaction(), db.new_transaction()
    t1.set_root_object("n", 1)
    t2.set_root_object("n", 2)
    t2.set_root_object("acct", acct)
    t1.commit()
    with pytest.raises(ConflictError):
        t2.commit()
    store(db, acct=acct)
    assert db.new_transaction().get_root_object("acct").balance == 1


# -- read_current --------------------------------------------------------------------------


def _reader_writer(db: Database, use_read_current: bool) -> Transaction:
    store(db, a=Account(balance=100), report=None)
    reader = db.new_transaction()
    acct = reader.get_root_object("a")
    if use_read_current:
        reader.read_current(acct)
    reader.set_root_object("report", acct.balance)
    with db.transaction() as tr:
        tr.get_root_object("a").balance = 0
    return reader


def test_read_current_object_makes_commit_conflict(db) -> None:
    reader = _reader_writer(db, use_read_current=True)
    before = db.space.storage.read_root()
    with pytest.raises(ConflictError):
        reader.commit()
    assert db.space.storage.read_root() == before
    assert db.new_transaction().get_root_object("report") is None


def test_without_read_current_the_same_scenario_commits(db) -> None:
    reader = _reader_writer(db, use_read_current=False)
    assert reader.commit() is not None
    tr = db.new_transaction()
    assert tr.get_root_object("report") == 100
    assert tr.get_root_object("a").balance == 0


def test_read_current_object_unchanged_by_others_commits(db) -> None:
    store(db, a=Account(balance=100), b=Account(balance=1))
    reader = db.new_transaction()
    reader.read_current(reader.get_root_object("a"))
    reader.set_root_object("report", "ok")
    with db.transaction() as tr:
        tr.get_root_object("b").balance = 2
    assert reader.commit() is not None
    assert db.new_transaction().get_root_object("report") == "ok"


@pytest.mark.parametrize("use_read_current", [True, False])
def test_read_current_root_name(db, use_read_current: bool) -> None:
    store(db, limit=10)
    reader = db.new_transaction()
    if use_read_current:
        assert reader.read_current("limit") == "limit"
    reader.set_root_object("spent", reader.get_root_object("limit"))
    store(db, limit=5)
    if use_read_current:
        with pytest.raises(ConflictError):
            reader.commit()
        assert db.new_transaction().get_root_object("spent") is None
    else:
        assert reader.commit() is not None
        assert db.new_transaction().get_root_object("spent") == 10
