"""Stateful property tests: each persistent collection against its Python model.

Every machine drives one collection value through its mutators and checks it
against a plain Python model (list, dict, set, Counter) after every step. The
machines share three habits:

- old versions are kept (a few ``(collection, model copy)`` snapshots) and
  re-checked after later steps, because a mutator must never change the value
  it was called on; a snapshot can also be branched (mutated into a sibling);
- ``commit_and_reload`` stores the collection as a root object, commits, reads
  it back in a new transaction and edits it at once, so that later steps work
  on lazily loaded stored nodes and not only on in-memory trees;
- bulk rules load hundreds of entries at a time, so trees get several levels
  (a node holds at most 64 entries).

Set PROTOBASE_SHRINK=1 to have Hypothesis shrink a failing machine run.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from copy import deepcopy
from itertools import islice
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from protobase import (
    CountedSet,
    Dictionary,
    HashDictionary,
    List,
    MemoryStorage,
    ObjectSpace,
    Set,
)

SHRINK = os.environ.get("PROTOBASE_SHRINK") == "1"
"""Shrinking a failing machine run takes minutes (every step walks big trees), so it
is off unless PROTOBASE_SHRINK=1: a failure then prints the whole, unshrunk run."""

MACHINE_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    phases=tuple(Phase) if SHRINK else (Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PLAIN_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MAX_SNAPSHOTS = 4
BULK_LIMIT = 4000
"""Bulk loads stop growing a collection beyond this many entries (test speed)."""


# -- strict comparison and the reference key order ------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type, recursively (so ``1``, ``1.0`` and ``True`` differ)."""
    if type(a) is not type(b):
        return False
    if type(a) in (tuple, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float:
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


def same_items(got: list[Any], expected: list[Any]) -> bool:
    return len(got) == len(expected) and all(same(x, y) for x, y in zip(got, expected, strict=True))


def types_of(items: list[Any]) -> list[Any]:
    return [tuple(map(type, item)) if type(item) is tuple else type(item) for item in items]


def same_content(got: list[Any], expected: list[Any]) -> bool:
    """`same_items` for long lists: plain equality and top-level types, then a strict sample."""
    if got != expected or types_of(got) != types_of(expected):
        return False
    step = max(1, len(got) // 50)
    return same_items(got[::step], expected[::step])


class _Open:
    """A range bound that is left out (None is a key like any other)."""

    def __repr__(self) -> str:
        return "OPEN"


OPEN: Any = _Open()


def scan(d: Dictionary, lo: Any, hi: Any) -> list[tuple[Any, Any]]:
    """``d.range`` with the bounds that are not OPEN."""
    bounds = {}
    if lo is not OPEN:
        bounds["lo"] = lo
    if hi is not OPEN:
        bounds["hi"] = hi
    return list(d.range(**bounds))


def in_range(key: Any, lo: Any, hi: Any) -> bool:
    above = lo is OPEN or ref_key(lo) <= ref_key(key)
    return above and (hi is OPEN or ref_key(key) < ref_key(hi))


def scribble(value: Any) -> None:
    """Change every list inside `value`, as a caller may do after handing it over."""
    if type(value) is list:
        for item in value:
            scribble(item)
        value.append("scribbled")
    elif type(value) is tuple:
        for item in value:
            scribble(item)


def ref_key(value: Any) -> tuple[Any, ...]:
    """The documented key order: None < numbers < str < bytes < tuples."""
    if value is None:
        return (0,)
    if type(value) in (bool, int, float):
        return (1, value)
    if type(value) is str:
        return (2, value)
    if type(value) is bytes:
        return (3, value)
    if type(value) is tuple:
        return (4, tuple(ref_key(item) for item in value))
    raise AssertionError(f"no reference order for {value!r}")


# -- strategies and seeded generators --------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-20, 20),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=4),
    st.binary(max_size=4),
)
mixed_keys = st.recursive(
    scalars, lambda inner: st.tuples(inner) | st.tuples(inner, inner), max_leaves=3
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner), max_leaves=4
)
KEY_STRATEGIES = {
    "int": st.integers(-300, 300) | st.integers(-6000, 6000),
    "str": st.text(alphabet="abcdefgh", max_size=4),
    "mixed": mixed_keys,
}
seeds = st.integers(0, 2**32 - 1)
bulk_sizes = st.sampled_from([False, False, True]).flatmap(
    lambda deep: st.integers(2500, 3500) if deep else st.integers(300, 1000)
)
"""Bulk loads: a tree of 64-wide nodes reaches height 2 from about 2,300 entries."""
positions = st.integers(-(2**16), 2**16)


def random_key(rnd: random.Random, kind: str) -> Any:
    if kind == "int":
        return rnd.randrange(-5000, 5000)
    if kind == "str":
        return "".join(rnd.choice("abcdefgh") for _ in range(rnd.randrange(1, 6)))
    pick = rnd.randrange(8)
    if pick == 0:
        return None
    if pick == 1:
        return rnd.random() < 0.5
    if pick == 2:
        return rnd.randrange(-3000, 3000) / 4
    if pick == 3:
        return bytes(rnd.randrange(256) for _ in range(rnd.randrange(4)))
    if pick == 4:
        return (random_key(rnd, "int"), random_key(rnd, "str"))
    if pick == 5:
        return random_key(rnd, "str")
    return random_key(rnd, "int")


def random_value(rnd: random.Random) -> Any:
    pick = rnd.randrange(5)
    if pick == 0:
        return None
    if pick == 1:
        return rnd.randrange(-(2**40), 2**40)
    if pick == 2:
        return "v" * rnd.randrange(5)
    if pick == 3:
        return (rnd.random(), [rnd.randrange(9)])
    return rnd.random() < 0.5


def spread(where: int, count: int, slack: int = 3) -> int:
    """Map a drawn integer onto ``[-count - slack, count + slack]``."""
    return where % (2 * (count + slack) + 1) - (count + slack)


def pick_existing(model: Any, where: int) -> Any:
    keys = list(model)
    return keys[where % len(keys)]


# -- the machinery every machine shares --------------------------------------------


class StoredCollectionMachine(RuleBasedStateMachine):
    """A collection and its model, snapshots of old versions, and a database to store into."""

    def __init__(self) -> None:
        super().__init__()
        self.space = ObjectSpace(MemoryStorage())
        self.db = self.space.new_database("t")
        self.tr: Any = None
        """The open transaction the current collection reads through (None: detached)."""
        self.transactions: list[Any] = []
        self.snapshots: list[tuple[Any, Any, Any]] = []
        self.c: Any = None
        self.model: Any = None

    # what each machine provides

    def check(self, coll: Any, model: Any) -> None:
        raise NotImplementedError

    def copy_model(self, model: Any) -> Any:
        return model.copy()

    def random_edit(self, coll: Any, model: Any, rnd: random.Random) -> Any:
        """One random point change: returns the new collection and changes `model` in place."""
        raise NotImplementedError

    # helpers

    def open_transaction(self) -> Any:
        tr = self.db.new_transaction()
        self.transactions.append(tr)
        return tr

    def teardown(self) -> None:
        for tr in self.transactions:
            tr.abort()
        self.space.close()

    def replace(self, coll: Any, model: Any) -> None:
        """Make `coll` current after checking that the version it replaces is unchanged."""
        old, old_model = self.c, self.model
        self.c, self.model = coll, model
        self.check(old, old_model)

    # shared rules

    @invariant()
    def content_matches_model(self) -> None:
        if self.c is not None:
            self.check(self.c, self.model)

    @precondition(lambda self: self.c is not None)
    @rule(slot=st.integers(0, MAX_SNAPSHOTS - 1))
    def take_snapshot(self, slot: int) -> None:
        entry = (self.c, self.copy_model(self.model), self.tr)
        if len(self.snapshots) < MAX_SNAPSHOTS:
            self.snapshots.append(entry)
        else:
            self.snapshots[slot] = entry

    @rule()
    def old_versions_are_unchanged(self) -> None:
        for coll, model, _ in self.snapshots:
            self.check(coll, model)

    @precondition(lambda self: self.snapshots)
    @rule(
        which=st.integers(0, MAX_SNAPSHOTS - 1),
        seed=seeds,
        edits=st.integers(1, 5),
        switch=st.booleans(),
    )
    def branch_from_snapshot(self, which: int, seed: int, edits: int, switch: bool) -> None:
        coll, model, tr = self.snapshots[which % len(self.snapshots)]
        rnd = random.Random(seed)
        branch, branch_model = coll, self.copy_model(model)
        for _ in range(edits):
            branch = self.random_edit(branch, branch_model, rnd)
        self.check(branch, branch_model)
        self.check(coll, model)
        if switch:
            self.c, self.model, self.tr = branch, branch_model, tr

    @precondition(lambda self: self.c is not None)
    @rule(
        mode=st.sampled_from(["fresh_writer", "reader_commits"]),
        keep_old=st.booleans(),
        seed=seeds,
        edits=st.integers(0, 3),
    )
    def commit_and_reload(self, mode: str, keep_old: bool, seed: int, edits: int) -> None:
        # The reading transaction can commit only while no other commit came
        # after its start (a branch may read through an older one: that
        # commit would rightly conflict).
        latest = self.transactions[-1] if self.transactions else None
        if mode == "reader_commits" and self.tr is not None and self.tr is latest:
            writer = self.tr
        else:
            writer = self.open_transaction()
        writer.set_root_object("c", self.c)
        old = self.snapshots[0] if keep_old and self.snapshots else None
        if old is not None:
            writer.set_root_object("old", old[0])
        writer.commit()
        # Versions read through the committed transaction may hold stored nodes
        # that can no longer be loaded; they are dropped, not checked.
        self.snapshots = [entry for entry in self.snapshots if entry[2] is not writer]

        reader = self.open_transaction()
        reloaded = reader.get_root_object("c")
        assert type(reloaded) is type(self.c)
        assert len(reloaded) == len(self.model)
        self.c, self.tr = reloaded, reader
        # Edit before anything walks the whole tree: these edits load only the
        # stored nodes on their path.
        rnd = random.Random(seed)
        for _ in range(edits):
            self.c = self.random_edit(self.c, self.model, rnd)
        self.check(self.c, self.model)
        if old is not None:
            self.check(reader.get_root_object("old"), old[1])


# -- List ------------------------------------------------------------------------------


class ListMachine(StoredCollectionMachine):
    @initialize(
        how=st.sampled_from(["constructor", "new_list"]), items=st.lists(values, max_size=100)
    )
    def start(self, how: str, items: list[Any]) -> None:
        if how == "constructor":
            self.c = List(items)
        else:
            self.tr = self.open_transaction()
            self.c = self.tr.new_list().extend(items)
        self.model = list(items)

    def check(self, coll: Any, model: Any) -> None:
        assert len(coll) == coll.count == len(model)
        assert bool(coll) == bool(model)
        assert same_content(list(coll.as_iterable()), model)
        assert same_items(list(islice(coll, 100)), model[:100])
        if model:
            for i in {0, len(model) // 2, len(model) - 1, -1, -len(model)}:
                assert same(coll.get_at(i), model[i])

    def random_edit(self, coll: Any, model: Any, rnd: random.Random) -> Any:
        op = rnd.randrange(5) if model else 0
        if op == 0:
            i, v = rnd.randrange(len(model) + 1), random_value(rnd)
            model.insert(i, v)
            return coll.insert_at(i, v)
        i = rnd.randrange(len(model))
        if op == 1:
            del model[i]
            return coll.remove_at(i)
        if op == 2:
            v = random_value(rnd)
            model[i] = v
            return coll.set_at(i, v)
        if op == 3:
            v = random_value(rnd)
            model.append(v)
            return coll.append_last(v)
        del model[0]
        return coll.remove_first()

    # reading

    @rule(where=positions)
    def get_at(self, where: int) -> None:
        n = len(self.model)
        i = spread(where, n)
        if -n <= i < n:
            assert same(self.c.get_at(i), self.model[i])
            assert same(self.c[i], self.model[i])
        else:
            for read in (self.c.get_at, self.c.__getitem__):
                try:
                    read(i)
                except IndexError:
                    pass
                else:
                    raise AssertionError(f"reading position {i} of {n} items did not fail")

    @rule(a=positions, b=positions | st.none(), step=st.sampled_from([None, 1, 2, -1, -3]))
    def slices(self, a: int, b: int | None, step: int | None) -> None:
        n, model = len(self.model), self.model
        a = spread(a, n, 5)
        b = None if b is None else spread(b, n, 5)
        assert same_items(list(self.c.head(a)), model[:a])
        assert same_items(list(self.c.tail(a)), model[a:])
        assert same_items(list(self.c.slice(a, b)), model[a:b])
        assert same_items(list(self.c.slice(None, b)), model[:b])
        part = self.c[a:b:step]
        assert isinstance(part, List)
        assert same_items(list(part), model[a:b:step])
        assert len(part) == len(model[a:b:step])

    @rule(a=positions, b=positions | st.none())
    def continue_with_slice(self, a: int, b: int | None) -> None:
        n = len(self.model)
        a = spread(a, n, 5)
        b = None if b is None else spread(b, n, 5)
        self.replace(self.c.slice(a, b), self.model[a:b])

    @rule(value=values)
    def contains(self, value: Any) -> None:
        assert (value in self.c) == (value in self.model)
        if self.model:
            assert self.model[-1] in self.c

    # changing

    @rule(where=positions, value=values)
    def set_at(self, where: int, value: Any) -> None:
        n = len(self.model)
        i = spread(where, n)
        if -n <= i < n:
            model = list(self.model)
            model[i] = deepcopy(value)
            changed = self.c.set_at(i, value)
            scribble(value)
            self.replace(changed, model)
        else:
            try:
                self.c.set_at(i, value)
            except IndexError:
                return
            raise AssertionError(f"set_at({i}) on {n} items did not fail")

    @rule(where=positions, value=values)
    def insert_at(self, where: int, value: Any) -> None:
        n = len(self.model)
        i = spread(where, n)
        if -n <= i <= n:
            model = list(self.model)
            model.insert(i, deepcopy(value))
            changed = self.c.insert_at(i, value)
            scribble(value)
            self.replace(changed, model)
        else:
            try:
                self.c.insert_at(i, value)
            except IndexError:
                return
            raise AssertionError(f"insert_at({i}) on {n} items did not fail")

    @rule(where=positions)
    def remove_at(self, where: int) -> None:
        n = len(self.model)
        i = spread(where, n)
        if -n <= i < n:
            model = list(self.model)
            del model[i]
            self.replace(self.c.remove_at(i), model)
        else:
            try:
                self.c.remove_at(i)
            except IndexError:
                return
            raise AssertionError(f"remove_at({i}) on {n} items did not fail")

    @rule(value=values, last=st.booleans())
    def append(self, value: Any, last: bool) -> None:
        kept = deepcopy(value)
        if last:
            changed, model = self.c.append_last(value), [*self.model, kept]
        else:
            changed, model = self.c.append_first(value), [kept, *self.model]
        scribble(value)
        self.replace(changed, model)

    @rule(last=st.booleans())
    def remove_end(self, last: bool) -> None:
        remove = self.c.remove_last if last else self.c.remove_first
        if not self.model:
            try:
                remove()
            except IndexError:
                return
            raise AssertionError("removing from an empty List did not fail")
        self.replace(remove(), self.model[:-1] if last else self.model[1:])

    @rule(items=st.lists(values, max_size=200), as_list=st.booleans())
    def extend(self, items: list[Any], as_list: bool) -> None:
        model = self.model + deepcopy(items)
        extended = self.c.extend(List(items) if as_list else iter(items))
        scribble(items)
        self.replace(extended, model)

    @precondition(lambda self: len(self.model) < BULK_LIMIT)
    @rule(size=bulk_sizes, seed=seeds, how=st.sampled_from(["extend", "construct"]))
    def bulk_load(self, size: int, seed: int, how: str) -> None:
        rnd = random.Random(seed)
        items = [random_value(rnd) for _ in range(size)]
        if how == "extend":
            self.replace(self.c.extend(items), self.model + items)
        else:
            self.replace(List(self.model + items), self.model + items)

    @rule(seed=seeds, count=st.integers(1, 150))
    def many_point_edits(self, seed: int, count: int) -> None:
        rnd = random.Random(seed)
        coll, model = self.c, list(self.model)
        for _ in range(count):
            coll = self.random_edit(coll, model, rnd)
        self.replace(coll, model)

    @precondition(lambda self: self.model)
    @rule(seed=seeds, count=st.integers(1, 400))
    def many_removals(self, seed: int, count: int) -> None:
        rnd = random.Random(seed)
        coll, model = self.c, list(self.model)
        for _ in range(min(count, len(model))):
            i = rnd.randrange(-len(model), len(model))
            del model[i]
            coll = coll.remove_at(i)
        self.replace(coll, model)


TestList = ListMachine.TestCase
TestList.settings = MACHINE_SETTINGS


# -- Dictionary and HashDictionary ---------------------------------------------------


def mapping_machine(cls: type, kind: str) -> type[StoredCollectionMachine]:
    """A machine for `cls` (Dictionary or HashDictionary) with keys of `kind`."""
    keys = KEY_STRATEGIES[kind]
    ordered = cls is Dictionary
    pairs = st.lists(st.tuples(keys, values), max_size=200)

    class MappingMachine(StoredCollectionMachine):
        @initialize(how=st.sampled_from(["constructor", "new"]), items=pairs)
        def start(self, how: str, items: list[tuple[Any, Any]]) -> None:
            if how == "constructor":
                self.c = cls(items)
            else:
                self.tr = self.open_transaction()
                fresh = self.tr.new_dictionary() if ordered else self.tr.new_hash_dictionary()
                assert type(fresh) is cls
                self.c = fresh.update(items)
            self.model = {}
            self.model.update(items)

        def check(self, coll: Any, model: Any) -> None:
            assert len(coll) == coll.count == len(model)
            items = list(coll.as_iterable())
            assert len(items) == len(model)
            if ordered:
                expected = sorted(model.items(), key=lambda kv: ref_key(kv[0]))
                assert same_content(items, expected)
                if kind != "mixed":
                    assert [k for k, _ in items] == sorted(model)
            else:
                # Hash order: the model's items in the collection's order.
                stored_keys = {k: k for k in model}
                assert dict(items) == model
                assert same_content(items, [(stored_keys[k], model[k]) for k, _ in items])
            assert same_items(list(islice(coll.keys(), 100)), [k for k, _ in items[:100]])
            assert same_items(list(islice(coll.values(), 100)), [v for _, v in items[:100]])
            assert same_items(list(islice(coll, 100)), [k for k, _ in items[:100]])
            if model:
                key = next(iter(model))
                assert same(coll.get_at(key), model[key])
                assert coll.has(key)

        def random_edit(self, coll: Any, model: Any, rnd: random.Random) -> Any:
            if model and rnd.random() < 0.4:
                key = list(model)[rnd.randrange(len(model))]
                del model[key]
                return coll.remove_at(key)
            key, value = random_key(rnd, kind), random_value(rnd)
            model[key] = value
            return coll.set_at(key, value)

        # reading

        @rule(key=keys)
        def lookups(self, key: Any) -> None:
            present = key in self.model
            assert self.c.has(key) == present
            assert (key in self.c) == present
            assert same(self.c.get_at(key), self.model.get(key))
            if present:
                assert same(self.c[key], self.model[key])
            else:
                try:
                    self.c[key]
                except KeyError:
                    pass
                else:
                    raise AssertionError(f"[{key!r}] of a missing key did not fail")

        @precondition(lambda self: self.model)
        @rule(where=positions)
        def lookup_existing(self, where: int) -> None:
            key = pick_existing(self.model, where)
            assert self.c.has(key)
            assert same(self.c.get_at(key), self.model[key])

        @rule(seed=seeds)
        def order_does_not_depend_on_history(self, seed: int) -> None:
            items = list(self.model.items())
            random.Random(seed).shuffle(items)
            rebuilt = cls().update(items)
            one_by_one = cls()
            for key, value in items[:300]:
                one_by_one = one_by_one.set_at(key, value)
            order = [k for k, _ in self.c.as_iterable()]
            assert same_items([k for k, _ in rebuilt.as_iterable()], order)
            assert same_items(
                [k for k, _ in one_by_one.as_iterable()], [k for k in order if k in one_by_one]
            )

        if ordered:

            @rule(lo=st.just(OPEN) | keys, hi=st.just(OPEN) | keys)
            def range_scan(self, lo: Any, hi: Any) -> None:
                expected = sorted(
                    ((k, v) for k, v in self.model.items() if in_range(k, lo, hi)),
                    key=lambda kv: ref_key(kv[0]),
                )
                got = scan(self.c, lo, hi)
                assert [k for k, _ in got] == [k for k, _ in expected]
                assert all(same(g, e) for (_, g), (_, e) in zip(got, expected, strict=True))

            @precondition(lambda self: self.model)
            @rule(a=positions, b=positions)
            def range_between_existing_keys(self, a: int, b: int) -> None:
                order = sorted(self.model, key=ref_key)
                lo, hi = order[a % len(order)], order[b % len(order)]
                got = [k for k, _ in self.c.range(lo, hi)]
                assert same_items(got, order[order.index(lo) : order.index(hi)])

        # changing

        @rule(key=keys, value=values)
        def set_at(self, key: Any, value: Any) -> None:
            model = dict(self.model)
            model[key] = deepcopy(value)
            changed = self.c.set_at(key, value)
            scribble(value)
            self.replace(changed, model)

        @precondition(lambda self: self.model)
        @rule(where=positions, value=values)
        def overwrite_existing(self, where: int, value: Any) -> None:
            key = pick_existing(self.model, where)
            model = dict(self.model)
            model[key] = deepcopy(value)
            changed = self.c.set_at(key, value)
            scribble(value)
            self.replace(changed, model)

        @precondition(lambda self: self.model)
        @rule(where=positions)
        def remove_existing(self, where: int) -> None:
            key = pick_existing(self.model, where)
            model = dict(self.model)
            del model[key]
            self.replace(self.c.remove_at(key), model)

        @rule(key=keys)
        def remove_maybe_missing(self, key: Any) -> None:
            if key in self.model:
                model = dict(self.model)
                del model[key]
                self.replace(self.c.remove_at(key), model)
                return
            try:
                self.c.remove_at(key)
            except KeyError:
                return
            raise AssertionError(f"remove_at({key!r}) of a missing key did not fail")

        @rule(items=pairs, form=st.sampled_from(["pairs", "dict", "collection"]))
        def update(self, items: list[tuple[Any, Any]], form: str) -> None:
            model = dict(self.model)
            model.update(deepcopy(items))
            if form == "pairs":
                argument: Any = iter(items)
            elif form == "dict":
                argument = dict(items)
            else:
                argument = cls(items)
            changed = self.c.update(argument)
            scribble(items)
            self.replace(changed, model)

        @precondition(lambda self: len(self.model) < BULK_LIMIT)
        @rule(size=bulk_sizes, seed=seeds, how=st.sampled_from(["update", "build"]))
        def bulk_load(self, size: int, seed: int, how: str) -> None:
            rnd = random.Random(seed)
            items = [(random_key(rnd, kind), random_value(rnd)) for _ in range(size)]
            model = dict(self.model)
            model.update(items)
            if how == "update":
                self.replace(self.c.update(items), model)
            else:
                self.replace(cls(list(self.model.items()) + items), model)

        @rule(seed=seeds, count=st.integers(1, 150))
        def many_point_edits(self, seed: int, count: int) -> None:
            rnd = random.Random(seed)
            coll, model = self.c, dict(self.model)
            for _ in range(count):
                coll = self.random_edit(coll, model, rnd)
            self.replace(coll, model)

        @precondition(lambda self: self.model)
        @rule(seed=seeds, fraction=st.floats(0.1, 1.0))
        def many_removals(self, seed: int, fraction: float) -> None:
            keys = list(self.model)
            random.Random(seed).shuffle(keys)
            coll, model = self.c, dict(self.model)
            for key in keys[: max(1, int(len(keys) * fraction))]:
                del model[key]
                coll = coll.remove_at(key)
            self.replace(coll, model)

    MappingMachine.__name__ = MappingMachine.__qualname__ = f"{cls.__name__}{kind.title()}Machine"
    return MappingMachine


TestDictionaryIntKeys = mapping_machine(Dictionary, "int").TestCase
TestDictionaryIntKeys.settings = MACHINE_SETTINGS
TestDictionaryStrKeys = mapping_machine(Dictionary, "str").TestCase
TestDictionaryStrKeys.settings = MACHINE_SETTINGS
TestDictionaryMixedKeys = mapping_machine(Dictionary, "mixed").TestCase
TestDictionaryMixedKeys.settings = MACHINE_SETTINGS
TestHashDictionary = mapping_machine(HashDictionary, "mixed").TestCase
TestHashDictionary.settings = MACHINE_SETTINGS


# -- Set -------------------------------------------------------------------------------

elements = st.integers(-100, 100) | mixed_keys
element_lists = st.lists(elements, max_size=200)


def set_argument(items: list[Any], form: str) -> Any:
    if form == "list":
        return items
    if form == "set":
        return set(items)
    return Set(items)


class SetMachine(StoredCollectionMachine):
    @initialize(
        how=st.sampled_from(["constructor", "new_set", "new_hash_set"]), items=element_lists
    )
    def start(self, how: str, items: list[Any]) -> None:
        if how == "constructor":
            self.c = Set(items)
        else:
            self.tr = self.open_transaction()
            fresh = self.tr.new_set() if how == "new_set" else self.tr.new_hash_set()
            self.c = fresh.update(items)
        self.model = set(items)

    def check(self, coll: Any, model: Any) -> None:
        assert len(coll) == coll.count == len(model)
        got = list(coll.as_iterable())
        assert len(got) == len(model)
        assert set(got) == model
        assert list(islice(coll, 100)) == got[:100]
        for value in list(model)[:3]:
            assert coll.has(value)

    def random_edit(self, coll: Any, model: Any, rnd: random.Random) -> Any:
        if model and rnd.random() < 0.4:
            value = list(model)[rnd.randrange(len(model))]
            model.discard(value)
            return coll.remove_at(value)
        value = random_key(rnd, "mixed")
        model.add(value)
        return coll.add(value)

    @rule(value=elements)
    def lookups(self, value: Any) -> None:
        assert self.c.has(value) == (value in self.model)
        assert (value in self.c) == (value in self.model)

    @rule(value=elements)
    def add(self, value: Any) -> None:
        self.replace(self.c.add(value), self.model | {value})

    @precondition(lambda self: self.model)
    @rule(where=positions)
    def remove_existing(self, where: int) -> None:
        value = pick_existing(self.model, where)
        self.replace(self.c.remove_at(value), self.model - {value})

    @rule(value=elements)
    def remove_maybe_missing(self, value: Any) -> None:
        if value in self.model:
            self.replace(self.c.remove_at(value), self.model - {value})
            return
        try:
            self.c.remove_at(value)
        except KeyError:
            return
        raise AssertionError(f"remove_at({value!r}) of a missing element did not fail")

    @rule(
        items=element_lists,
        form=st.sampled_from(["list", "set", "Set"]),
        op=st.sampled_from(["update", "union", "intersection", "difference"]),
    )
    def set_algebra(self, items: list[Any], form: str, op: str) -> None:
        result = getattr(self.c, op)(set_argument(items, form))
        other = set(items)
        expected = {
            "update": self.model | other,
            "union": self.model | other,
            "intersection": self.model & other,
            "difference": self.model - other,
        }[op]
        self.replace(result, expected)

    @precondition(lambda self: self.model)
    @rule(
        seed=seeds,
        fraction=st.floats(0.0, 1.0),
        extra=st.integers(0, 100),
        op=st.sampled_from(["intersection", "difference"]),
        form=st.sampled_from(["list", "Set"]),
    )
    def algebra_with_large_overlap(
        self, seed: int, fraction: float, extra: int, op: str, form: str
    ) -> None:
        rnd = random.Random(seed)
        part = [v for v in self.model if rnd.random() < fraction]
        part += [random_key(rnd, "mixed") for _ in range(extra)]
        other = set(part)
        expected = self.model & other if op == "intersection" else self.model - other
        self.replace(getattr(self.c, op)(set_argument(part, form)), expected)

    @precondition(lambda self: len(self.model) < BULK_LIMIT)
    @rule(size=bulk_sizes, seed=seeds, how=st.sampled_from(["update", "build"]))
    def bulk_load(self, size: int, seed: int, how: str) -> None:
        rnd = random.Random(seed)
        items = [random_key(rnd, "mixed") for _ in range(size)]
        expected = self.model | set(items)
        if how == "update":
            self.replace(self.c.update(items), expected)
        else:
            self.replace(Set([*self.model, *items]), expected)

    @rule(seed=seeds, count=st.integers(1, 150))
    def many_point_edits(self, seed: int, count: int) -> None:
        rnd = random.Random(seed)
        coll, model = self.c, set(self.model)
        for _ in range(count):
            coll = self.random_edit(coll, model, rnd)
        self.replace(coll, model)

    @rule(seed=seeds)
    def order_does_not_depend_on_history(self, seed: int) -> None:
        items = list(self.c.as_iterable())
        random.Random(seed).shuffle(items)
        assert list(Set(items).as_iterable()) == list(self.c.as_iterable())


TestSet = SetMachine.TestCase
TestSet.settings = MACHINE_SETTINGS


# -- CountedSet ----------------------------------------------------------------------

counted_elements = st.integers(0, 20) | mixed_keys
counted_lists = st.lists(counted_elements, max_size=200)


class CountedSetMachine(StoredCollectionMachine):
    @initialize(how=st.sampled_from(["constructor", "new_counted_set"]), items=counted_lists)
    def start(self, how: str, items: list[Any]) -> None:
        if how == "constructor":
            self.c = CountedSet(items)
        else:
            self.tr = self.open_transaction()
            self.c = self.tr.new_counted_set().update(items)
        self.model = Counter(items)

    def check(self, coll: Any, model: Any) -> None:
        assert coll.count == len(coll) == len(model)
        assert coll.total_count == sum(model.values())
        pairs = list(coll.items())
        assert len(pairs) == len(model)
        assert Counter(dict(pairs)) == model
        assert all(type(n) is int and n > 0 for _, n in pairs)
        distinct = list(coll.as_iterable())
        assert distinct == [v for v, _ in pairs]
        assert list(islice(coll, 100)) == distinct[:100]
        for value in list(model)[:3]:
            assert coll.get_count(value) == model[value]
            assert coll.has(value)

    def random_edit(self, coll: Any, model: Any, rnd: random.Random) -> Any:
        if model and rnd.random() < 0.4:
            value = list(model)[rnd.randrange(len(model))]
            model[value] -= 1
            if not model[value]:
                del model[value]
            return coll.remove_at(value)
        value = random_key(rnd, "int") % 40 if rnd.random() < 0.5 else random_key(rnd, "mixed")
        model[value] += 1
        return coll.add(value)

    @rule(value=counted_elements)
    def lookups(self, value: Any) -> None:
        assert self.c.get_count(value) == self.model[value]
        assert self.c.has(value) == (value in self.model)
        assert (value in self.c) == (value in self.model)

    @rule(value=counted_elements, times=st.sampled_from([None, 1, 2, 5]))
    def add(self, value: Any, times: int | None) -> None:
        model = self.model.copy()
        model[value] += 1 if times is None else times
        added = self.c.add(value) if times is None else self.c.add(value, times)
        self.replace(added, model)

    @precondition(lambda self: self.model)
    @rule(where=positions)
    def remove_existing(self, where: int) -> None:
        value = pick_existing(self.model, where)
        model = self.model.copy()
        model[value] -= 1
        if not model[value]:
            del model[value]
        self.replace(self.c.remove_at(value), model)

    @rule(value=counted_elements)
    def remove_maybe_missing(self, value: Any) -> None:
        if value in self.model:
            model = self.model.copy()
            model[value] -= 1
            model = +model
            self.replace(self.c.remove_at(value), model)
            return
        try:
            self.c.remove_at(value)
        except KeyError:
            return
        raise AssertionError(f"remove_at({value!r}) of a missing element did not fail")

    @rule(items=counted_lists)
    def update(self, items: list[Any]) -> None:
        model = self.model.copy()
        model.update(items)
        self.replace(self.c.update(items), model)

    @rule(
        items=counted_lists,
        counted=st.booleans(),
        op=st.sampled_from(["union", "intersection", "difference"]),
    )
    def multiset_algebra(self, items: list[Any], counted: bool, op: str) -> None:
        other = Counter(items)
        expected = {
            "union": self.model | other,
            "intersection": self.model & other,
            "difference": self.model - other,
        }[op]
        argument = CountedSet(items) if counted else items
        self.replace(getattr(self.c, op)(argument), expected)

    @precondition(lambda self: len(self.model) < BULK_LIMIT)
    @rule(size=bulk_sizes, seed=seeds, spread_out=st.booleans())
    def bulk_load(self, size: int, seed: int, spread_out: bool) -> None:
        rnd = random.Random(seed)
        width = 5000 if spread_out else 200
        items = [rnd.randrange(width) for _ in range(size)]
        model = self.model.copy()
        model.update(items)
        self.replace(self.c.update(items), model)

    @rule(seed=seeds, count=st.integers(1, 150))
    def many_point_edits(self, seed: int, count: int) -> None:
        rnd = random.Random(seed)
        coll, model = self.c, self.model.copy()
        for _ in range(count):
            coll = self.random_edit(coll, model, rnd)
        self.replace(coll, model)


TestCountedSet = CountedSetMachine.TestCase
TestCountedSet.settings = MACHINE_SETTINGS


# -- plain properties ----------------------------------------------------------------


def stored_copy(*collections: Any) -> tuple[Any, list[Any]]:
    """Store `collections` as roots, commit, and read them back in a new transaction."""
    space = ObjectSpace(MemoryStorage())
    db = space.new_database("t")
    tr = db.new_transaction()
    for position, coll in enumerate(collections):
        tr.set_root_object(f"c{position}", coll)
    tr.commit()
    reader = db.new_transaction()
    return reader, [reader.get_root_object(f"c{i}") for i in range(len(collections))]


@PLAIN_SETTINGS
@given(
    kind=st.sampled_from(["int", "str", "mixed"]),
    size=st.integers(0, 1500),
    seed=seeds,
    edits=st.integers(0, 100),
    stored=st.booleans(),
    data=st.data(),
)
def test_dictionary_range_with_random_bounds(
    kind: str, size: int, seed: int, edits: int, stored: bool, data: st.DataObject
) -> None:
    rnd = random.Random(seed)
    model = {random_key(rnd, kind): random_value(rnd) for _ in range(size)}
    d = Dictionary(model)
    for _ in range(edits):
        key, value = random_key(rnd, kind), random_value(rnd)
        model[key] = value
        d = d.set_at(key, value)
    if stored:
        _, (d,) = stored_copy(d)
    order = sorted(model, key=ref_key)
    near = st.sampled_from(order) if order else st.just(OPEN)
    bounds = st.just(OPEN) | KEY_STRATEGIES[kind] | near
    for _ in range(5):
        lo, hi = data.draw(bounds, label="lo"), data.draw(bounds, label="hi")
        got = scan(d, lo, hi)
        assert same_items([k for k, _ in got], [k for k in order if in_range(k, lo, hi)])
        assert all(same(v, model[k]) for k, v in got)
        if kind != "mixed":
            plain = sorted(k for k in model if (lo is OPEN or lo <= k) and (hi is OPEN or k < hi))
            assert [k for k, _ in got] == plain


@PLAIN_SETTINGS
@given(size=st.integers(0, 1200), seed=seeds, edits=st.integers(0, 60))
def test_stored_then_reloaded_collections_equal_the_originals(
    size: int, seed: int, edits: int
) -> None:
    rnd = random.Random(seed)
    items = [random_value(rnd) for _ in range(size)]
    keys = [random_key(rnd, "mixed") for _ in range(size)]
    pairs = list(zip(keys, items, strict=True))
    originals = [
        List(items),
        Dictionary(pairs),
        HashDictionary(pairs),
        Set(keys),
        CountedSet(k % 50 for k in range(size)),
    ]
    for _ in range(edits):
        key, value = random_key(rnd, "mixed"), random_value(rnd)
        originals[0] = originals[0].insert_at(rnd.randrange(len(originals[0]) + 1), value)
        originals[1] = originals[1].set_at(key, value)
        originals[2] = originals[2].set_at(key, value)
        originals[3] = originals[3].add(key)
        originals[4] = originals[4].add(key)
    reader, copies = stored_copy(*originals)
    for original, copy in zip(originals, copies, strict=True):
        assert type(copy) is type(original)
        assert len(copy) == len(original)
        assert copy == original
        assert same_items(list(copy.as_iterable()), list(original.as_iterable()))
    assert copies[4].total_count == originals[4].total_count
    assert list(copies[4].items()) == list(originals[4].items())
    # A second reading transaction sees the same values.
    second = reader.database.new_transaction()
    for position, original in enumerate(originals):
        assert same_items(
            list(second.get_root_object(f"c{position}").as_iterable()),
            list(original.as_iterable()),
        )


def test_counted_set_equality_takes_counts_into_account() -> None:
    once, twice = CountedSet(["a"]), CountedSet(["a", "a"])
    assert Counter(["a"]) != Counter(["a", "a"])
    assert once != twice
    assert once.add("a") == twice


def test_update_of_a_multi_level_dictionary_counts_every_new_key() -> None:
    base = Dictionary({i: i for i in range(100)})
    updated = base.update({1000 + i: i for i in range(10)})
    assert len(list(updated.as_iterable())) == 110
    assert len(updated) == 110
    assert updated.count == 110
    assert len(Set(range(100)).update(range(100, 110))) == 110
    assert CountedSet(range(100)).update(range(100, 110)).count == 110


def test_values_handed_over_are_not_shared_with_the_caller() -> None:
    """A caller changing its list afterwards must not change a collection value."""

    def handed(make: Any) -> Any:
        value = ["x"]
        coll = make(value)
        before = deepcopy(list(coll.as_iterable()))
        value.append("scribbled")
        return before, list(coll.as_iterable())

    small, big = List([1, 2]), List(range(300))
    cases = {
        "List()": lambda v: List([v]),
        "List.set_at": lambda v: small.set_at(0, v),
        "List.set_at (multi-level)": lambda v: big.set_at(150, v),
        "List.insert_at": lambda v: small.insert_at(1, v),
        "List.append_last": lambda v: small.append_last(v),
        "List.extend": lambda v: big.extend([v]),
        "Dictionary()": lambda v: Dictionary({1: v}),
        "Dictionary.set_at": lambda v: Dictionary({1: 2}).set_at(1, v),
        "Dictionary.update(dict)": lambda v: Dictionary({1: 2}).update({1: v}),
        "Dictionary.update(pairs)": lambda v: Dictionary({1: 2}).update([(3, v)]),
        "Dictionary.update (empty)": lambda v: Dictionary().update({1: v}),
        "HashDictionary.update": lambda v: HashDictionary({1: 2}).update({1: v}),
    }
    leaked = []
    for name, make in cases.items():
        before, after = handed(make)
        if before != after:
            leaked.append(name)
    assert not leaked, f"the caller's list leaked into: {leaked}"


@pytest.mark.parametrize("kind", [Dictionary, HashDictionary])
def test_bulk_build_from_unsorted_pairs_keeps_first_key_and_last_value(kind: Any) -> None:
    pairs = [(3, "a"), (1, "b"), (2.0, "c"), (1.0, "d"), (2, "e"), ("x", "f"), (3, "g")]
    built = kind(pairs)
    expected = dict(pairs)  # a dict keeps the first key and the last value too
    assert len(built) == len(expected) == 4
    got = dict(built.as_iterable())
    assert got == expected
    assert {type(k) for k in got} == {type(k) for k in expected}
    ascending = kind((k, -k) for k in range(200))
    assert dict(ascending.as_iterable()) == {k: -k for k in range(200)}
    assert len(ascending) == 200
