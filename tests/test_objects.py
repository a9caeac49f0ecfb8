"""DBObject, MutableObject, Literal and the class registry, through real commits."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

import protobase
from protobase import (
    DBObject,
    Dictionary,
    ImmutableObjectError,
    List,
    Literal,
    MutableObject,
    ObjectSpace,
    TransactionClosedError,
    UnknownObject,
    register_class,
)
from protobase.objects import UnknownMutableObject
from protobase.registry import registry


class Person(DBObject):
    pass


class Address(DBObject):
    pass


class Team(DBObject):
    pass


class Account(MutableObject):
    pass


@pytest.fixture
def db(space: ObjectSpace) -> protobase.Database:
    return space.new_database("objects")


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Undo whatever a test registers or removes in the process-wide class registry."""
    by_name = dict(registry._by_name)
    names = dict(registry._names)
    yield
    registry._by_name.clear()
    registry._by_name.update(by_name)
    registry._names.clear()
    registry._names.update(names)


def store(db: protobase.Database, **roots: object) -> None:
    with db.transaction() as tr:
        for name, value in roots.items():
            tr.set_root_object(name, value)


# -- DBObject round trips --------------------------------------------------------------------


def test_dbobject_round_trips_as_its_own_class_with_exact_value_types(db) -> None:
    store(db, ann=Person(name="Ann", age=30, score=1.5, raw=b"\x00\x01", active=True, nick=None))

    tr = db.new_transaction()
    ann = tr.get_root_object("ann")
    assert type(ann) is Person
    assert type(ann.name) is str
    assert ann.name == "Ann"
    assert type(ann.age) is int and ann.age == 30
    assert type(ann.score) is float and ann.score == 1.5
    assert type(ann.raw) is bytes and ann.raw == b"\x00\x01"
    assert ann.active is True
    assert ann.nick is None and ann.has_defined_attr("nick")
    assert ann == Person(name="Ann", age=30, score=1.5, raw=b"\x00\x01", active=True, nick=None)


def test_str_values_inside_plain_containers_stay_str(db) -> None:
    store(db, p=Person(tags=["a", "b"], meta={"city": "Oslo"}, pair=("x", 1)))

    p = db.new_transaction().get_root_object("p")
    assert p.tags == ["a", "b"]
    assert all(type(tag) is str for tag in p.tags)
    assert p.meta == {"city": "Oslo"}
    assert all(type(k) is str and type(v) is str for k, v in p.meta.items())
    assert p.pair == ("x", 1)
    assert type(p.pair[0]) is str


def test_nested_dbobjects_round_trip_as_their_classes(db) -> None:
    store(db, p=Person(name="Ann", address=Address(city="Oslo", zip="0150")))

    p = db.new_transaction().get_root_object("p")
    assert type(p) is Person
    assert type(p.address) is Address
    assert p.address.city == "Oslo"
    assert type(p.address.city) is str
    assert p.address == Address(city="Oslo", zip="0150")


def test_dbobject_holding_collections_round_trips(db) -> None:
    members = List([Person(name="Ann"), Person(name="Bob")])
    scores = Dictionary({"Ann": 3, "Bob": 5})
    store(db, team=Team(name="core", members=members, scores=scores))

    tr = db.new_transaction()
    team = tr.get_root_object("team")
    assert type(team) is Team
    assert isinstance(team.members, List)
    assert team.members.count == 2
    names = [m.name for m in team.members.as_iterable()]
    assert names == ["Ann", "Bob"]
    assert all(type(m) is Person for m in team.members.as_iterable())
    assert isinstance(team.scores, Dictionary)
    assert list(team.scores.as_iterable()) == [("Ann", 3), ("Bob", 5)]


def test_large_collection_inside_dbobject_round_trips(db) -> None:
    values = [f"item-{i}" for i in range(3000)]
    store(db, team=Team(items=List(values)))

    team = db.new_transaction().get_root_object("team")
    assert team.items.count == 3000
    assert list(team.items.as_iterable()) == values
    assert team.items.get_at(-1) == "item-2999"


# -- DBObject attribute rules ----------------------------------------------------------------


def test_missing_attribute_reads_none() -> None:
    p = Person(name="Ann")
    assert p.email is None
    assert p.name == "Ann"


def test_has_defined_attr() -> None:
    p = Person(name="Ann", email=None)
    assert p.has_defined_attr("name")
    assert p.has_defined_attr("email")  # set, even to None
    assert not p.has_defined_attr("phone")


def test_setattr_returns_new_object_of_same_class_and_keeps_original() -> None:
    p = Person(name="Ann", age=30)
    q = p._setattr("age", 31)
    assert type(q) is Person
    assert q is not p
    assert q.age == 31
    assert q.name == "Ann"
    assert p.age == 30
    r = q._setattr("email", "ann@example.com")
    assert r.email == "ann@example.com"
    assert not q.has_defined_attr("email")


def test_setattr_on_loaded_object_keeps_class_and_stores(db) -> None:
    store(db, p=Person(name="Ann", age=30))
    with db.transaction() as tr:
        p = tr.get_root_object("p")
        tr.set_root_object("p", p._setattr("age", 31))
        assert p.age == 30

    p = db.new_transaction().get_root_object("p")
    assert type(p) is Person
    assert p.age == 31


def test_assignment_raises_immutable_error_mentioning_setattr() -> None:
    p = Person(name="Ann", age=30)
    with pytest.raises(ImmutableObjectError) as info:
        p.age = 31
    assert isinstance(info.value, AttributeError)
    assert isinstance(info.value, protobase.ProtoBaseException)
    assert "_setattr" in str(info.value)
    assert p.age == 30


def test_assigning_a_new_attribute_also_raises() -> None:
    p = Person(name="Ann")
    with pytest.raises(AttributeError, match="_setattr"):
        p.email = "ann@example.com"
    assert p.email is None


def test_dbobject_does_not_change_when_its_source_list_changes() -> None:
    tags = ["a"]
    p = Person(tags=tags)
    tags.append("b")
    # A DBObject is an immutable value: its attribute must not follow the caller's list.
    assert p.tags == ["a"]


def test_equal_dbobjects_are_equal_and_hash_alike() -> None:
    a = Person(name="Ann", age=30, address=Address(city="Oslo"))
    b = Person(age=30, name="Ann", address=Address(city="Oslo"))
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert {a: 1}[b] == 1
    assert a != Person(name="Ann", age=31, address=Address(city="Oslo"))
    assert a != Person(name="Ann", age=30)
    assert Person(city="Oslo") != Address(city="Oslo")


def test_loaded_dbobject_equals_original_and_hashes_alike(db) -> None:
    original = Person(name="Ann", tags=("x", 1), address=Address(city="Oslo"))
    store(db, p=original)
    loaded = db.new_transaction().get_root_object("p")
    assert loaded == original
    assert hash(loaded) == hash(original)


# -- MutableObject ---------------------------------------------------------------------------


def test_mutable_object_identity_through_two_roots(db) -> None:
    acct = Account(owner="Ann", balance=10)
    store(db, a=acct, b=Dictionary({"x": acct}), c=List([acct]))

    tr = db.new_transaction()
    via_a = tr.get_root_object("a")
    via_b = tr.get_root_object("b").get_at("x")
    via_c = tr.get_root_object("c").get_at(0)
    assert type(via_a) is Account
    assert via_a is via_b
    assert via_a is via_c
    via_a.balance = 99
    assert via_b.balance == 99


def test_mutable_object_identity_inside_dbobjects(db) -> None:
    acct = Account(balance=1)
    store(db, p=Person(account=acct), q=Person(account=acct))
    tr = db.new_transaction()
    assert tr.get_root_object("p").account is tr.get_root_object("q").account


def test_in_place_change_is_stored_at_commit(db) -> None:
    store(db, a=Account(owner="Ann", balance=10))

    with db.transaction() as tr:
        acct = tr.get_root_object("a")
        acct.balance = 25
        acct.note = "raised"

    tr = db.new_transaction()
    acct = tr.get_root_object("a")
    assert type(acct) is Account
    assert acct.balance == 25
    assert acct.note == "raised"
    assert type(acct.owner) is str


def test_in_place_change_seen_through_every_reference_after_commit(db) -> None:
    acct = Account(balance=10)
    store(db, a=acct, d=Dictionary({"k": acct}))
    with db.transaction() as tr:
        tr.get_root_object("d").get_at("k").balance = 11
    tr = db.new_transaction()
    assert tr.get_root_object("a").balance == 11


def test_aborted_in_place_change_is_not_stored(db) -> None:
    store(db, a=Account(balance=10))
    tr = db.new_transaction()
    tr.get_root_object("a").balance = 50
    tr.abort()
    assert db.new_transaction().get_root_object("a").balance == 10


def test_new_mutable_object_reachable_only_through_new_mutable_object_is_stored(db) -> None:
    store(db, parent=Account(name="parent", child=Account(name="child", balance=5)))

    tr = db.new_transaction()
    parent = tr.get_root_object("parent")
    child = parent.child
    assert type(child) is Account
    assert child.name == "child"
    assert child.balance == 5


def test_new_mutable_object_attached_to_loaded_mutable_object_is_stored(db) -> None:
    store(db, a=Account(name="a"))
    with db.transaction() as tr:
        a = tr.get_root_object("a")
        a.friend = Account(name="friend", peer=Account(name="peer"))

    tr = db.new_transaction()
    friend = tr.get_root_object("a").friend
    assert type(friend) is Account
    assert friend.name == "friend"
    assert friend.peer.name == "peer"


def test_new_mutable_objects_reachable_through_collections_are_stored(db) -> None:
    store(
        db,
        d=Dictionary({"k": Account(name="in-dict")}),
        l=List([Account(name="in-list")]),
        p=Person(account=Account(name="in-dbobject")),
    )

    tr = db.new_transaction()
    assert tr.get_root_object("d").get_at("k").name == "in-dict"
    assert tr.get_root_object("l").get_at(0).name == "in-list"
    assert tr.get_root_object("p").account.name == "in-dbobject"


def test_new_mutable_object_added_to_loaded_large_dictionary_is_stored(db) -> None:
    store(db, d=Dictionary({f"k{i:05}": i for i in range(2000)}))
    with db.transaction() as tr:
        d = tr.get_root_object("d")
        tr.set_root_object("d", d.set_at("k01000", Account(name="deep")))

    d = db.new_transaction().get_root_object("d")
    assert d.get_at("k01000").name == "deep"
    assert d.get_at("k01001") == 1001


def test_changing_loaded_object_after_commit_raises(db) -> None:
    store(db, a=Account(balance=10))
    tr = db.new_transaction()
    acct = tr.get_root_object("a")
    assert acct.balance == 10
    tr.commit()
    with pytest.raises(TransactionClosedError):
        acct.balance = 11
    assert db.new_transaction().get_root_object("a").balance == 10


def test_changing_loaded_object_after_abort_raises(db) -> None:
    store(db, a=Account(balance=10))
    tr = db.new_transaction()
    acct = tr.get_root_object("a")
    assert acct.balance == 10
    tr.abort()
    with pytest.raises(TransactionClosedError):
        acct.balance = 11


def test_unloaded_object_after_commit_raises_on_read(db) -> None:
    store(db, a=Account(balance=10))
    tr = db.new_transaction()
    acct = tr.get_root_object("a")  # state not loaded yet
    tr.commit()
    with pytest.raises(TransactionClosedError):
        _ = acct.balance


def test_changing_newly_stored_object_after_commit_raises(db) -> None:
    acct = Account(balance=1)
    with db.transaction() as tr:
        tr.set_root_object("a", acct)
    with pytest.raises(TransactionClosedError):
        acct.balance = 2
    assert db.new_transaction().get_root_object("a").balance == 1


def test_mutable_objects_compare_by_identity() -> None:
    a = Account(balance=1)
    b = Account(balance=1)
    assert a != b
    assert a == a
    assert len({a, b, a}) == 2


# -- class registry --------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_registry")
def test_renamed_class_loads_data_stored_under_old_name_via_alias(db) -> None:
    @register_class(name="legacy_shop.Customer")
    class OldCustomer(DBObject):
        pass

    store(db, c=OldCustomer(name="Ann"))
    # The old class is gone (renamed); the new one lists the old name as an alias.
    del registry._by_name["legacy_shop.Customer"]
    del registry._names[OldCustomer]
    registry.generation += 1  # as a new process sees it: nothing decoded yet

    @register_class(name="shop.Client", aliases=("legacy_shop.Customer",))
    class Client(DBObject):
        pass

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with db.transaction() as tr:
            c = tr.get_root_object("c")
            assert type(c) is Client
            assert c.name == "Ann"
            tr.set_root_object("c", c._setattr("vip", True))

    # Written back under the new name: loads without the alias too.
    del registry._by_name["legacy_shop.Customer"]
    registry.generation += 1  # as a new process sees it: nothing decoded yet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = db.new_transaction().get_root_object("c")
    assert type(c) is Client
    assert c.attributes() == {"name": "Ann", "vip": True}


@pytest.mark.usefixtures("clean_registry")
def test_renamed_mutable_class_loads_via_alias(db) -> None:
    @register_class(name="legacy_bank.Acct")
    class OldAcct(MutableObject):
        pass

    store(db, a=OldAcct(balance=3))
    del registry._by_name["legacy_bank.Acct"]
    del registry._names[OldAcct]
    registry.generation += 1  # as a new process sees it: nothing decoded yet

    @register_class(name="bank.Account", aliases=("legacy_bank.Acct",))
    class NewAcct(MutableObject):
        pass

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = db.new_transaction().get_root_object("a")
        assert type(a) is NewAcct
        assert a.balance == 3


@pytest.mark.usefixtures("clean_registry")
def test_unimportable_class_loads_as_unknown_object_and_stores_back_its_name(db) -> None:
    @register_class(name="nonexistent_pkg.Ghost")
    class Ghost(DBObject):
        pass

    store(db, g=Ghost(name="Casper", level=3, home=Address(city="Oslo")))
    del registry._by_name["nonexistent_pkg.Ghost"]
    del registry._names[Ghost]
    registry.generation += 1  # as a new process sees it: nothing decoded yet

    with db.transaction() as tr:
        with pytest.warns(UserWarning, match="nonexistent_pkg.Ghost"):
            g = tr.get_root_object("g")
        assert isinstance(g, UnknownObject)
        assert g.name == "Casper"
        assert g.level == 3
        assert type(g.home) is Address
        assert g.has_defined_attr("name")
        changed = g._setattr("level", 4)
        assert isinstance(changed, UnknownObject)
        tr.set_root_object("g", changed)
        tr.set_root_object("copy", g)

    # The class comes back: the data is still stored under its original name.
    registry.register(Ghost, "nonexistent_pkg.Ghost")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr = db.new_transaction()
        g = tr.get_root_object("g")
        copy = tr.get_root_object("copy")
    assert type(g) is Ghost
    assert g.attributes() == {"name": "Casper", "level": 4, "home": Address(city="Oslo")}
    assert type(copy) is Ghost
    assert copy.level == 3


@pytest.mark.usefixtures("clean_registry")
def test_unimportable_mutable_class_loads_generic_and_stores_back(db) -> None:
    @register_class(name="nonexistent_pkg.MGhost")
    class MGhost(MutableObject):
        pass

    store(db, m=MGhost(a=1))
    del registry._by_name["nonexistent_pkg.MGhost"]
    del registry._names[MGhost]
    registry.generation += 1  # as a new process sees it: nothing decoded yet

    with db.transaction() as tr:
        with pytest.warns(UserWarning, match="nonexistent_pkg.MGhost"):
            m = tr.get_root_object("m")
        assert isinstance(m, UnknownMutableObject)
        assert m.a == 1
        m.b = 2

    registry.register(MGhost, "nonexistent_pkg.MGhost")
    m = db.new_transaction().get_root_object("m")
    assert type(m) is MGhost
    assert m.attributes() == {"a": 1, "b": 2}


# -- Literal ---------------------------------------------------------------------------------


def test_literal_round_trips_and_equals_its_value(db) -> None:
    big = "big text " * 5000
    store(db, small=Literal("big text"), big=Literal(big), raw=Literal(b"\x00" * 100))

    tr = db.new_transaction()
    small = tr.get_root_object("small")
    assert isinstance(small, Literal)
    assert small == "big text"
    assert small == Literal("big text")
    assert str(small) == "big text"
    assert type(small.value) is str
    assert hash(small) == hash("big text")
    assert tr.get_root_object("big") == big
    raw = tr.get_root_object("raw")
    assert raw == b"\x00" * 100
    assert type(raw.value) is bytes


def test_literal_inside_dbobject_round_trips(db) -> None:
    store(db, doc=Person(bio=Literal("a long biography")))
    doc = db.new_transaction().get_root_object("doc")
    assert type(doc) is Person
    assert isinstance(doc.bio, Literal)
    assert doc.bio == "a long biography"


def test_loaded_literal_stored_again_keeps_its_value(db) -> None:
    store(db, a=Literal("shared text"))
    with db.transaction() as tr:
        tr.set_root_object("b", tr.get_root_object("a"))
    tr = db.new_transaction()
    assert tr.get_root_object("b") == "shared text"
    assert tr.get_root_object("a") == tr.get_root_object("b")
