"""Decoded nodes shared between the transactions of a space, and what stays private.

A stored leaf of plain immutable data is one object every transaction reads;
a leaf whose values hold collections, lists or dicts is copied for each
transaction from a template; a leaf holding MutableObjects is decoded by
each. These tests check what users could observe if sharing leaked: a value
changed in place in one transaction, a collection bound to another
transaction, a class registered after a read. They also check the work a
commit does: a warm one-object commit decodes no node and leaves
no reference cycle for the garbage collector.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from protobase import (
    DBObject,
    Dictionary,
    List,
    MemoryStorage,
    MutableObject,
    ObjectSpace,
    TransactionClosedError,
    register_class,
)
from protobase.collections import btree
from protobase.sharing import NodeTemplate


@pytest.fixture
def space() -> Iterator[ObjectSpace]:
    with ObjectSpace(MemoryStorage()) as space:
        yield space


@register_class("tests.sharing.Point")
class Point(DBObject):
    pass


@register_class("tests.sharing.Account")
class Account(MutableObject):
    pass


def test_a_leaf_of_plain_values_is_one_object_for_every_transaction(space: ObjectSpace) -> None:
    db = space.new_database("d")
    with db.transaction() as tr:
        tr.set_root_object("d", Dictionary((k, Point(x=k)) for k in range(10)))
    first = db.new_read_only_transaction()
    second = db.new_read_only_transaction()
    a, b = first.get_root_object("d"), second.get_root_object("d")
    assert a.get_at(3) is b.get_at(3)  # the same decoded DBObject: one shared leaf
    assert a._node() is b._node()
    first.abort()
    second.abort()


def test_a_list_value_changed_in_place_stays_in_its_transaction(space: ObjectSpace) -> None:
    db = space.new_database("d")
    with db.transaction() as tr:
        tr.set_root_object("d", Dictionary({"k": [1, 2, 3]}))
    first = db.new_transaction()
    first.get_root_object("d").get_at("k").append(4)  # misuse, but must not leak
    second = db.new_transaction()
    assert second.get_root_object("d").get_at("k") == [1, 2, 3]
    first.abort()
    second.abort()
    with db.transaction() as tr:
        assert tr.get_root_object("d").get_at("k") == [1, 2, 3]


def test_collections_in_a_shared_leaf_read_through_their_own_transaction(
    space: ObjectSpace,
) -> None:
    db = space.new_database("d")
    with db.transaction() as tr:
        inner = Dictionary((k, k) for k in range(200))  # several nodes: loads go to the loader
        tr.set_root_object("d", Dictionary({"a": {"inner": inner}, "b": List([1, 2])}))
    first = db.new_transaction()
    held = first.get_root_object("d").get_at("a")["inner"]
    assert held.get_at(150) == 150
    first.abort()
    with pytest.raises(TransactionClosedError):
        held.get_at(10)  # its root is loaded, but that leaf is read through `first`

    second = db.new_transaction()
    outer = second.get_root_object("d")
    assert second._shared.get(outer._node().pointer) is not None
    assert isinstance(second._shared.get(outer._node().pointer), NodeTemplate)
    again = outer.get_at("a")["inner"]
    assert again is not held and again._loader is second
    assert again.get_at(151) == 151
    assert list(outer.get_at("b").as_iterable()) == [1, 2]
    second.abort()


def test_mutable_objects_are_decoded_per_transaction(space: ObjectSpace) -> None:
    db = space.new_database("d")
    with db.transaction() as tr:
        tr.set_root_object("d", Dictionary({"acct": Account(balance=10)}))
    first = db.new_transaction()
    second = db.new_transaction()
    a = first.get_root_object("d").get_at("acct")
    b = second.get_root_object("d").get_at("acct")
    assert a is not b and a._pb_oid == b._pb_oid
    a.balance = 20
    assert b.balance == 10
    first.commit()
    second.abort()
    with db.transaction() as tr:
        assert tr.get_root_object("d").get_at("acct").balance == 20


def test_registering_a_class_later_decodes_shared_leaves_again(space: ObjectSpace) -> None:
    from protobase.registry import registry

    @register_class("tests.sharing.Late")
    class Late(DBObject):
        pass

    db = space.new_database("d")
    with db.transaction() as tr:
        tr.set_root_object("d", Dictionary({"x": Late(v=1)}))

    @register_class("tests.sharing.Later", aliases=("tests.sharing.Late",))
    class Later(DBObject):
        pass

    try:
        with db.transaction() as tr:
            assert type(tr.get_root_object("d").get_at("x")) is Later
    finally:
        registry._by_name["tests.sharing.Late"] = Late


@pytest.mark.pure_python("counts decodes by patching btree.Node.from_payload")
def test_a_warm_one_object_commit_decodes_no_node(
    space: ObjectSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = space.new_database("d")
    with db.transaction() as tr:
        tr.set_root_object("d", Dictionary((k, 0) for k in range(1000)))
    decoded = []
    original = btree.Node.from_payload

    def counting(payload, pointer, origin):  # type: ignore[no-untyped-def]
        decoded.append(pointer)
        return original(payload, pointer, origin)

    monkeypatch.setattr(btree.Node, "from_payload", staticmethod(counting))
    for j in range(50):
        tr = db.new_transaction()
        tr.set_root_object("d", tr.get_root_object("d").set_at(j * 7 % 1000, j))
        tr.commit()
    # The space root's path comes from the layout cache, the database table's and
    # the root objects' leaves from templates, the dictionary's nodes (its 22 nodes
    # were shared when the first commit wrote them) and the paths each commit wrote
    # from the shared cache: nothing is decoded.
    assert decoded == []


def test_transactions_leave_no_reference_cycles(space: ObjectSpace) -> None:
    db = space.new_database("d")
    with db.transaction() as tr:
        tr.set_root_object("d", Dictionary((k, 0) for k in range(1000)))
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for j in range(20):
            tr = db.new_transaction()
            tr.set_root_object("d", tr.get_root_object("d").set_at(j, j))
            tr.commit()
            db.new_read_only_transaction().abort()
        gc.collect()
        leaked = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert leaked == []


def test_a_shared_internal_node_keeps_no_child_a_transaction_loaded(space: ObjectSpace) -> None:
    from protobase.atoms import AtomPointer

    db = space.new_database("d")
    with db.transaction() as tr:
        tr.set_root_object("d", Dictionary((k, List([k])) for k in range(300)))
    first = db.new_transaction()
    d = first.get_root_object("d")
    root = d._node()
    assert root.height == 1 and root.shared
    held = d.get_at(250)  # a List in a leaf private to `first`
    assert held._loader is first
    assert all(type(child) is AtomPointer for child in root.children)
    first.abort()

    second = db.new_transaction()
    again = second.get_root_object("d")
    assert again._node() is root  # the same shared node object
    value = again.get_at(250)
    assert value is not held and value._loader is second
    assert list(value.as_iterable()) == [250]
    second.abort()


def test_the_cache_forgets_the_versions_a_commit_replaced(space: ObjectSpace) -> None:
    db = space.new_database("d")
    with db.transaction() as tr:
        tr.set_root_object("d", Dictionary((k, 0) for k in range(1000)))  # 22 nodes
    for j in range(300):
        tr = db.new_transaction()
        tr.set_root_object("d", tr.get_root_object("d").set_at(j * 7 % 1000, j))
        tr.commit()
    # The dictionary's 22 nodes, the root objects' and the database table's leaves:
    # the older version of each path was dropped when its new version was committed.
    assert len(space.node_cache._entries) <= 24
    with db.transaction() as tr:
        d = tr.get_root_object("d")
        assert [d.get_at(j * 7 % 1000) for j in range(290, 300)] == list(range(290, 300))
