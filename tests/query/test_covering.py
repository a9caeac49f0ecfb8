"""Covering indexes: entries keep their rows, so an indexed query reads no row
from the collection, and answers exactly what an ordinary index answers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from protobase import (
    DBObject,
    Dictionary,
    F,
    List,
    MemoryStorage,
    ObjectSpace,
    QueryError,
    Set,
    register_class,
)
from protobase.collections.keyed import Dictionary as DictionaryClass
from protobase.collections.lists import List as ListClass


@register_class("tests.covering.Person")
class Person(DBObject):
    pass


@pytest.fixture
def space() -> Iterator[ObjectSpace]:
    with ObjectSpace(MemoryStorage()) as space:
        yield space


def _people(n: int) -> Dictionary:
    return Dictionary({k: Person(id=k, ssn=10_000 + (k * 7919) % n, age=k % 50) for k in range(n)})


def _no_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: object, *args: object) -> None:
        raise AssertionError("a covering index read a row from the collection")

    monkeypatch.setattr(DictionaryClass, "_pb_fetch", refuse)
    monkeypatch.setattr(ListClass, "_pb_fetch", refuse)


def test_a_covering_index_answers_like_an_ordinary_one_and_reads_no_row(
    space: ObjectSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = space.new_database("c")
    with db.transaction() as tr:
        plain = _people(2000)
        tr.set_root_object("plain", plain.add_index("ssn", unique=True).add_index("age"))
        tr.set_root_object(
            "covering",
            plain.add_index("ssn", unique=True, covering=True).add_index("age", covering=True),
        )
    tr = db.new_read_only_transaction()
    plain, covering = tr.get_root_object("plain"), tr.get_root_object("covering")
    queries = [
        F.ssn == 10_500,
        F.ssn == 99,  # no such row
        F.ssn.between(10_100, 10_199),
        F.age == 7,
        (F.age > 45) & (F.ssn < 10_900),
    ]
    expected = [tr.query(plain).where(q).to_list() for q in queries]
    assert [len(rows) for rows in expected] == [1, 0, 100, 40, 72]
    # An intersection of two lookups fetches its rows by identity, covering or not.
    assert tr.query(covering).where(queries[4]).to_list() == expected[4]
    _no_fetch(monkeypatch)
    for query, rows in zip(queries[:4], expected, strict=False):
        got = tr.query(covering).where(query).to_list()
        assert got == rows
    explained = str(tr.query(covering).where(F.ssn.between(10_100, 10_199)).explain())
    assert "covering index on 'ssn'" in explained
    tr.abort()


def test_a_covering_index_follows_every_change_and_survives_a_reload(space: ObjectSpace) -> None:
    db = space.new_database("c")
    with db.transaction() as tr:
        tr.set_root_object("d", _people(300).add_index("age", covering=True))
    with db.transaction() as tr:
        d = tr.get_root_object("d")
        d = d.set_at(5, Person(id=5, ssn=1, age=49))  # moves between index values
        d = d.set_at(6, d.get_at(6)._setattr("name", "six"))  # same value, new row
        d = d.remove_at(7)
        d = d.set_at(1000, Person(id=1000, ssn=2, age=7))
        tr.set_root_object("d", d)
    with db.transaction() as tr:
        d = tr.get_root_object("d")
        assert d.indexed_fields == ["age"]
        sevens = tr.query(d).where(F.age == 7).to_list()
        assert [row.id for row in sevens] == [57, 107, 157, 207, 257, 1000]
        sixes = tr.query(d).where(F.age == 6).to_list()
        assert sixes[0].name == "six" and [row.id for row in sixes] == [6, 56, 106, 156, 206, 256]
        assert 5 in [row.id for row in tr.query(d).where(F.age == 49)]
        assert 5 not in [row.id for row in tr.query(d).where(F.age == 5)]


def test_a_covering_index_on_a_list(space: ObjectSpace, monkeypatch: pytest.MonkeyPatch) -> None:
    db = space.new_database("c")
    with db.transaction() as tr:
        rows = List([Person(id=k, age=k % 10) for k in range(200)])
        tr.set_root_object("l", rows.add_index("age", covering=True))
    with db.transaction() as tr:
        rows = tr.get_root_object("l").insert_at(0, Person(id=-1, age=3))
        tr.set_root_object("l", rows)
    tr = db.new_read_only_transaction()
    rows = tr.get_root_object("l")
    expected = [row for row in rows.as_iterable() if row.age == 3]
    _no_fetch(monkeypatch)
    assert tr.query(rows).where(F.age == 3).to_list() == expected
    assert expected[0].id == -1
    tr.abort()


def test_covering_is_refused_on_a_set_and_cannot_be_switched_in_place() -> None:
    with pytest.raises(QueryError, match="covering=True is for List and Dictionary"):
        Set([Person(age=1)]).add_index("age", covering=True)
    indexed = _people(10).add_index("age", covering=True)
    assert indexed.add_index("age", covering=True) is indexed
    with pytest.raises(QueryError, match="remove_index it first"):
        indexed.add_index("age")
    assert indexed.remove_index("age").add_index("age").indexed_fields == ["age"]
