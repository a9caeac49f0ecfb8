"""Runs: a leaf's values that are all DBObjects (extension 36), or keys or values
that are all tuples (extension 37), are stored as one extension.

A run must round-trip every item exactly (class, attributes, nested
collections and values; tuples inside tuples, lists inside tuples), keep the
batch's links exact, decode the older one-extension-per-item form, and
refuse a damaged run with a `CorruptionError`.
"""

from __future__ import annotations

import datetime as dt
import warnings

import msgpack
import pytest

from protobase import (
    CorruptionError,
    DBObject,
    Dictionary,
    F,
    List,
    MemoryStorage,
    ObjectSpace,
    UnknownObject,
    register_class,
)
from protobase.atoms import AtomPointer, frame_atom, new_transaction_id
from protobase.codec import EXT_TUPLE, encode_with
from protobase.registry import registry
from protobase.serialization import (
    EXT_OBJECT,
    EXT_OBJECT_RUN,
    EXT_TUPLE_RUN,
    AtomReader,
    AtomWriter,
)


@register_class("tests.runs.Item")
class Item(DBObject):
    pass


@register_class("tests.runs.Other")
class Other(DBObject):
    pass


def _stored_leaf_exts(space: ObjectSpace, db_name: str, root: str) -> list[int]:
    """The extension codes in the first leaf of root `root` (nested ones after theirs)."""
    tr = space.open_database(db_name).new_read_only_transaction()
    try:
        node = tr.get_root_object(root)._node()
        while node.height:
            node = node.child(0, tr)
        payload = space.read_payloads([node.pointer])[0]
    finally:
        tr.abort()
    codes: list[int] = []

    def hook(code: int, data: bytes) -> object:
        codes.append(code)
        if code in (EXT_TUPLE, EXT_OBJECT, EXT_OBJECT_RUN, EXT_TUPLE_RUN):  # msgpack inside
            msgpack.unpackb(data, ext_hook=hook, raw=False, strict_map_key=False)
        return None

    msgpack.unpackb(payload, ext_hook=hook, raw=False, strict_map_key=False)
    return codes


def test_objects_of_several_classes_round_trip_as_one_run() -> None:
    with ObjectSpace(MemoryStorage()) as space:
        db = space.new_database("r")
        when = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
        values = {
            k: (Item if k % 3 else Other)(n=k, tags=(k, "t"), when=when, sub=List([k]))
            for k in range(100)
        }
        with db.transaction() as tr:
            tr.set_root_object("d", Dictionary(values))
        codes = _stored_leaf_exts(space, "r", "d")
        assert EXT_OBJECT_RUN in codes and EXT_OBJECT not in codes
        with db.transaction() as tr:
            d = tr.get_root_object("d")
            for k in range(100):
                obj = d.get_at(k)
                assert type(obj) is (Item if k % 3 else Other)
                assert obj.n == k and obj.tags == (k, "t") and obj.when == when
                assert list(obj.sub.as_iterable()) == [k]


def test_a_leaf_mixing_objects_and_other_values_keeps_one_extension_per_object() -> None:
    with ObjectSpace(MemoryStorage()) as space:
        db = space.new_database("r")
        with db.transaction() as tr:
            tr.set_root_object("d", Dictionary({1: Item(n=1), 2: "plain", 3: Item(n=3)}))
        codes = _stored_leaf_exts(space, "r", "d")
        assert EXT_OBJECT_RUN not in codes and codes.count(EXT_OBJECT) == 2
        with db.transaction() as tr:
            d = tr.get_root_object("d")
            assert d.get_at(1).n == 1 and d.get_at(2) == "plain" and d.get_at(3).n == 3


def test_an_unknown_class_in_a_run_loads_as_unknown_object_and_stores_back_its_name() -> None:
    @register_class("tests.runs.Gone")
    class Gone(DBObject):
        pass

    with ObjectSpace(MemoryStorage()) as space:
        db = space.new_database("r")
        with db.transaction() as tr:
            tr.set_root_object("d", Dictionary({k: Gone(n=k) for k in range(5)}))
        del registry._by_name["tests.runs.Gone"]
        del registry._names[Gone]
        registry.generation += 1  # as a new process sees it: nothing decoded yet
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with db.transaction() as tr:
                    d = tr.get_root_object("d")
                    assert type(d.get_at(2)) is UnknownObject
                    tr.set_root_object("d", d.set_at(9, d.get_at(2)._setattr("n", 9)))
            registry.register(Gone, "tests.runs.Gone")
            with db.transaction() as tr:
                d = tr.get_root_object("d")
                assert type(d.get_at(9)) is Gone and d.get_at(9).n == 9
        finally:
            registry._by_name.pop("tests.runs.Gone", None)


def test_the_older_form_one_extension_per_object_still_decodes() -> None:
    reader = AtomReader(_NoContext())
    older = encode_with(
        [
            0,
            [1, 2],
            [
                _Ext(EXT_OBJECT, ["tests.runs.Item", {"n": 1}]),
                _Ext(EXT_OBJECT, ["tests.runs.Item", {"n": 2}]),
            ],
        ],
        _ExtOnly(),
    )
    decoded = reader.decode(older)
    assert [type(v) for v in decoded[2]] == [Item, Item] and decoded[2][1].n == 2


@pytest.mark.parametrize(
    "plain",
    [
        ["tests.runs.Item"],  # not [names, objects]
        [["tests.runs.Item"], [0]],  # an index without attributes
        [["tests.runs.Item"], [0, "not a map"]],
        [["tests.runs.Item"], [3, {"n": 1}]],  # an index past the names
        [[7], [0, {"n": 1}]],  # a class name that is not a str
    ],
)
def test_a_damaged_run_raises_corruption_error(plain: object) -> None:
    reader = AtomReader(_NoContext())
    data = encode_with([0, [1], _Ext(EXT_OBJECT_RUN, plain)], _ExtOnly())
    with pytest.raises(CorruptionError):
        reader.decode(data)


def test_links_of_a_run_name_the_collections_inside_its_objects() -> None:
    writer = AtomWriter(object(), new_transaction_id())
    sub = List([1, 2])
    pointer = writer.write_value(Dictionary({k: Item(sub=sub) for k in range(3)}))
    assert pointer.index == 0
    leaf_links = [links for links in writer.links if links]
    # The root value names the dictionary's leaf; the leaf names the List's node once per object.
    assert any(len(links) == 3 and len(set(links)) == 1 for links in leaf_links)
    assert all(isinstance(p, AtomPointer) for links in writer.links for p in links)
    assert frame_atom(b"") != b""  # framing is untouched by runs


def test_tuple_keys_and_values_round_trip_as_runs() -> None:
    with ObjectSpace(MemoryStorage()) as space:
        db = space.new_database("r")
        pairs = {(k, f"s{k}"): (k, (k, "inner"), [k, "list"]) for k in range(100)}
        with db.transaction() as tr:
            tr.set_root_object("d", Dictionary(pairs))
        codes = _stored_leaf_exts(space, "r", "d")
        assert codes.count(EXT_TUPLE_RUN) == 2  # the keys and the values
        assert EXT_TUPLE in codes  # the tuple inside each value keeps its own extension
        with db.transaction() as tr:
            d = tr.get_root_object("d")
            for key, value in pairs.items():
                got = d.get_at(key)
                assert got == value and type(got) is tuple
                assert type(got[1]) is tuple and type(got[2]) is list


def test_an_index_reads_back_from_its_tuple_runs() -> None:
    with ObjectSpace(MemoryStorage()) as space:
        db = space.new_database("r")
        with db.transaction() as tr:
            people = Dictionary({k: Item(n=k % 10, id=k) for k in range(500)})
            tr.set_root_object("d", people.add_index("n").add_index("id", unique=True))
        with db.transaction() as tr:
            d = tr.get_root_object("d")
            assert sorted(row.id for row in tr.query(d).where(F.n == 3)) == list(range(3, 500, 10))
            assert [row.id for row in tr.query(d).where(F.id.between(10, 12))] == [10, 11, 12]


@pytest.mark.parametrize("plain", [[1, 2], [[1], "ab"], "not a list"])
def test_a_damaged_tuple_run_raises_corruption_error(plain: object) -> None:
    reader = AtomReader(_NoContext())
    data = encode_with([0, _Ext(EXT_TUPLE_RUN, plain), [1, 2]], _ExtOnly())
    with pytest.raises(CorruptionError):
        reader.decode(data)


class _Ext:
    """A value the test hooks below encode as extension `code` holding `plain`."""

    def __init__(self, code: int, plain: object) -> None:
        self.code, self.plain = code, plain


class _ExtOnly:
    def encode_extension(self, value: object) -> tuple[int, object] | None:
        return (value.code, value.plain) if isinstance(value, _Ext) else None

    def decode_extension(self, code: int, plain: object) -> object:
        raise AssertionError("encoding only")


class _NoContext:
    origin = object()

    def load_node(self, pointer: AtomPointer) -> object:
        raise AssertionError("no nodes")

    load_nodes = load_value = mutable_for = load_node
