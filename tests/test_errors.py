"""Errors: closed transactions, validation, missing/existing databases, corruption."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import protobase
from protobase import (
    AtomPointer,
    ConflictError,
    CorruptionError,
    Database,
    DatabaseExistsError,
    DatabaseNotFoundError,
    DBObject,
    Dictionary,
    HashDictionary,
    List,
    Literal,
    MemoryStorage,
    MutableObject,
    ObjectSpace,
    ProtoBaseException,
    Transaction,
    TransactionClosedError,
    ValidationError,
)


class Person(DBObject):
    pass


class Account(MutableObject):
    pass


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


@pytest.fixture
def space(storage: MemoryStorage) -> Iterator[ObjectSpace]:
    with ObjectSpace(storage) as sp:
        yield sp


@pytest.fixture
def db(space: ObjectSpace) -> Database:
    return space.new_database("errors")


def store(db: Database, **roots: Any) -> None:
    with db.transaction() as tr:
        for name, value in roots.items():
            tr.set_root_object(name, value)


# -- closed transactions ---------------------------------------------------------------------


def test_committing_twice_raises(db) -> None:
    tr = db.new_transaction()
    tr.set_root_object("x", 1)
    tr.commit()
    with pytest.raises(TransactionClosedError):
        tr.commit()
    assert db.new_transaction().get_root_object("x") == 1


def test_committing_an_empty_transaction_twice_raises(db) -> None:
    tr = db.new_transaction()
    assert tr.commit() is None
    with pytest.raises(TransactionClosedError):
        tr.commit()


USES: dict[str, Callable[[Transaction], Any]] = {
    "get_root_object": lambda tr: tr.get_root_object("x"),
    "set_root_object": lambda tr: tr.set_root_object("x", 2),
    "new_list": lambda tr: tr.new_list(),
    "new_dictionary": lambda tr: tr.new_dictionary(),
    "new_set": lambda tr: tr.new_set(),
    "commit": lambda tr: tr.commit(),
    "read_current": lambda tr: tr.read_current("x"),
}


@pytest.mark.parametrize("use", list(USES))
@pytest.mark.parametrize("ending", ["commit", "abort"])
def test_ended_transaction_refuses_use(db, use: str, ending: str) -> None:
    store(db, x=1)
    tr = db.new_transaction()
    assert tr.get_root_object("x") == 1
    getattr(tr, ending)()
    with pytest.raises(TransactionClosedError) as info:
        USES[use](tr)
    assert "new_transaction" in str(info.value)
    assert db.new_transaction().get_root_object("x") == 1


def test_collection_loaded_in_ended_transaction_cannot_load_more(db) -> None:
    store(db, d=Dictionary({f"k{i:05}": i for i in range(3000)}))
    tr = db.new_transaction()
    d = tr.get_root_object("d")
    tr.abort()
    with pytest.raises(TransactionClosedError):
        d.get_at("k02000")


# -- validation ------------------------------------------------------------------------------


def _lambda_value() -> Any:
    return lambda: 1


BAD_VALUES = {
    "object": object,
    "set": lambda: {1, 2},
    "function": _lambda_value,
}

PLACES: dict[str, tuple[Callable[[Transaction, Any], Any], str]] = {
    "dbobject attribute": (
        lambda tr, bad: tr.set_root_object("p", Person(name="Ann", email=bad)),
        "'email'",
    ),
    "dbobject _setattr": (
        lambda tr, bad: tr.set_root_object("p", Person(name="Ann")._setattr("email", bad)),
        "'email'",
    ),
    "dbobject attribute nested in list": (
        lambda tr, bad: tr.set_root_object("p", Person(email=["ok", bad])),
        "'email'",
    ),
    "new mutable object attribute": (
        lambda tr, bad: tr.set_root_object("a", Account(email=bad)),
        "'email'",
    ),
    "loaded mutable object attribute": (
        lambda tr, bad: setattr(tr.get_root_object("acct"), "email", bad),
        "'email'",
    ),
    "root object": (lambda tr, bad: tr.set_root_object("email", bad), "'email'"),
    "root object nested in dict": (
        lambda tr, bad: tr.set_root_object("cfg", {"email": bad}),
        "'email'",
    ),
    "dictionary value": (
        lambda tr, bad: tr.set_root_object("d", tr.new_dictionary().set_at("email", bad)),
        "'email'",
    ),
    "loaded dictionary value": (
        lambda tr, bad: tr.set_root_object("d", tr.get_root_object("d").set_at("email", bad)),
        "'email'",
    ),
    "hash dictionary value": (
        lambda tr, bad: tr.set_root_object("h", tr.new_hash_dictionary().set_at("email", bad)),
        "'email'",
    ),
    "dictionary update": (
        lambda tr, bad: tr.set_root_object("d", Dictionary().update({"email": bad})),
        "'email'",
    ),
    "list item appended": (
        lambda tr, bad: tr.set_root_object("l", List(["a", "b", "c"]).append_last(bad)),
        "item 3",
    ),
    "list item set": (
        lambda tr, bad: tr.set_root_object("l", tr.get_root_object("l").set_at(1, bad)),
        "item 1",
    ),
    "list built from items": (
        lambda tr, bad: tr.set_root_object("l", List(["a", bad])),
        "item 1",
    ),
}


@pytest.mark.parametrize("bad_name", list(BAD_VALUES))
@pytest.mark.parametrize("place", list(PLACES))
def test_unstorable_value_raises_validation_error_and_writes_nothing(
    db, place: str, bad_name: str
) -> None:
    store(db, acct=Account(email="ann@example.com"), d=Dictionary({"k": 1}), l=List(["x", "y"]))
    before = db.space.storage.read_root()
    attempt, where = PLACES[place]
    bad = BAD_VALUES[bad_name]()

    tr = db.new_transaction()
    with pytest.raises(ValidationError) as info:
        attempt(tr, bad)
    assert isinstance(info.value, TypeError)
    message = str(info.value)
    assert type(bad).__qualname__ in message
    assert where in message
    assert tr.commit() is None

    assert db.space.storage.read_root() == before
    fresh = db.new_transaction()
    assert sorted(fresh.root_names()) == ["acct", "d", "l"]
    assert fresh.get_root_object("acct").email == "ann@example.com"
    assert fresh.get_root_object("d").to_dict() == {"k": 1}
    assert list(fresh.get_root_object("l")) == ["x", "y"]


def test_unstorable_value_slipped_into_a_list_fails_commit_and_writes_nothing(db) -> None:
    store(db, x=1)
    before = db.space.storage.read_root()
    acct = Account(tags=["ok"])
    acct.tags.append(object())  # changed in place, past the check on assignment
    tr = db.new_transaction()
    tr.set_root_object("x", 2)
    tr.set_root_object("acct", acct)
    with pytest.raises(ValidationError, match="object"):
        tr.commit()
    assert db.space.storage.read_root() == before
    assert db.new_transaction().get_root_object("x") == 1


def test_unstorable_root_name_raises_validation_error(db) -> None:
    tr = db.new_transaction()
    with pytest.raises(ValidationError):
        tr.set_root_object(3, "value")  # type: ignore[arg-type]


def test_unhashable_dictionary_key_raises_validation_error(db) -> None:
    tr = db.new_transaction()
    with pytest.raises(ValidationError, match="set"):
        tr.new_dictionary().set_at({1}, "value")


# -- databases -------------------------------------------------------------------------------


def test_opening_missing_database_raises(space) -> None:
    with pytest.raises(DatabaseNotFoundError) as info:
        space.open_database("nope")
    assert "nope" in str(info.value)
    assert "new_database" in str(info.value)


def test_creating_existing_database_raises(space) -> None:
    space.new_database("shop")
    with pytest.raises(DatabaseExistsError) as info:
        space.new_database("shop")
    assert "shop" in str(info.value)
    assert space.list_databases() == ["shop"]


def test_existing_database_keeps_its_data_after_failed_create(space) -> None:
    db = space.new_database("shop")
    store(db, x=1)
    with pytest.raises(DatabaseExistsError):
        space.new_database("shop")
    assert space.open_database("shop").new_transaction().get_root_object("x") == 1


def test_list_databases(space) -> None:
    assert space.list_databases() == []
    for name in ("beta", "alpha", "gamma"):
        space.new_database(name)
    names = space.list_databases()
    assert sorted(names) == ["alpha", "beta", "gamma"]
    assert len(names) == 3
    assert all(type(n) is str for n in names)


def test_databases_are_separate(space) -> None:
    one, two = space.new_database("one"), space.new_database("two")
    store(one, x="one")
    assert two.new_transaction().get_root_object("x") is None
    assert space.open_database("one").new_transaction().get_root_object("x") == "one"


def test_database_opened_from_another_space_on_same_storage(storage, space) -> None:
    store(space.new_database("shared"), x=1)
    other = ObjectSpace(storage)
    assert other.list_databases() == ["shared"]
    assert other.open_database("shared").new_transaction().get_root_object("x") == 1


# -- hierarchy ---------------------------------------------------------------------------------


PUBLIC_ERRORS = [
    "ConflictError",
    "TransactionClosedError",
    "DatabaseExistsError",
    "DatabaseNotFoundError",
    "StorageError",
    "CorruptionError",
    "ClusterUnavailableError",
    "AuthenticationError",
    "ValidationError",
    "ImmutableObjectError",
    "ReadOnlyTransactionError",
    "AtomNotFoundError",
]


@pytest.mark.parametrize("name", PUBLIC_ERRORS)
def test_errors_derive_from_protobase_exception(name: str) -> None:
    cls = getattr(protobase, name)
    assert issubclass(cls, ProtoBaseException)
    assert issubclass(cls, Exception)


def test_builtin_bases() -> None:
    assert issubclass(protobase.ValidationError, TypeError)
    assert issubclass(protobase.ImmutableObjectError, AttributeError)
    assert issubclass(protobase.CorruptionError, protobase.StorageError)
    assert not issubclass(ConflictError, TransactionClosedError)


# -- corruption ------------------------------------------------------------------------------


def corrupt(storage: MemoryStorage, pointer: AtomPointer, offset: int) -> None:
    """Flip every bit of one byte of the stored atom at `pointer`."""
    batch = list(storage._batches[pointer.transaction_id])
    atom = bytearray(batch[pointer.index])
    atom[offset] ^= 0xFF
    batch[pointer.index] = bytes(atom)
    storage._batches[pointer.transaction_id] = tuple(batch)


@pytest.mark.parametrize("offset", [0, 1, 8, 9, -1], ids=["format", "sum0", "sum7", "p0", "end"])
def test_corrupted_space_root_raises_corruption_error(storage, db, offset: int) -> None:
    store(db, x="value")
    root = storage.read_root().pointer
    corrupt(storage, root, offset)
    fresh = ObjectSpace(storage)
    with pytest.raises(CorruptionError) as info:
        fresh.open_database("errors")
    assert str(root) in str(info.value)


def test_corrupted_literal_atom_raises_naming_its_pointer(storage, db) -> None:
    text = Literal("a long text " * 100)
    store(db, doc=text)
    pointer = text._pointer
    assert isinstance(pointer, AtomPointer)
    corrupt(storage, pointer, -5)

    fresh = ObjectSpace(storage)
    tr = fresh.open_database("errors").new_transaction()
    doc = tr.get_root_object("doc")
    with pytest.raises(CorruptionError) as info:
        _ = doc.value
    assert str(pointer) in str(info.value)
    assert isinstance(info.value, protobase.StorageError)


def test_corrupted_collection_node_raises_naming_its_pointer(storage, db) -> None:
    store(db, d=HashDictionary({f"k{i}": i for i in range(10)}))
    tr = ObjectSpace(storage).open_database("errors").new_transaction()
    pointer = tr.get_root_object("d")._root
    assert isinstance(pointer, AtomPointer)
    corrupt(storage, pointer, 12)

    tr = ObjectSpace(storage).open_database("errors").new_transaction()
    d = tr.get_root_object("d")
    with pytest.raises(CorruptionError) as info:
        d.get_at("k3")
    assert str(pointer) in str(info.value)


def test_truncated_atom_raises_corruption_error(storage, db) -> None:
    store(db, x=1)
    root = storage.read_root().pointer
    batch = list(storage._batches[root.transaction_id])
    batch[root.index] = b"\x01\x02"
    storage._batches[root.transaction_id] = tuple(batch)
    with pytest.raises(CorruptionError) as info:
        ObjectSpace(storage).open_database("errors")
    assert str(root) in str(info.value)
