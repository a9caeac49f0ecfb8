"""Direct tests of `protobase.collections.btree`.

- After thousands of seeded random edits (keyed and positional, persistent and
  transient) the tree is walked and every documented invariant is checked:
  widths, equal leaf depth, sizes and totals, separator keys, key order.
- Transient (edit token) bulk edits never change a tree that existed before.
- `keyed_diff` returns exactly the differing entries and, on stored trees,
  loads no node that both trees share.

Broken invariants are collected by kind, so a bug in one (say, node widths)
fails its own test instead of hiding the others.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import cache
from itertools import pairwise
from typing import Any

import pytest

from protobase import (
    CountedSet,
    Dictionary,
    HashDictionary,
    List,
    MemoryStorage,
    ObjectSpace,
    Set,
)
from protobase.atoms import AtomPointer
from protobase.collections.btree import (
    MAX_WIDTH,
    MIN_WIDTH,
    MISSING,
    Internal,
    KeyedInternal,
    KeyedLeaf,
    Node,
    PositionalInternal,
    PositionalLeaf,
    build_keyed,
    build_positional,
    keyed_diff,
    keyed_get,
    keyed_items,
    keyed_remove,
    keyed_set,
    positional_get,
    positional_insert,
    positional_remove,
    positional_set,
    positional_values,
)
from protobase.collections.ordering import hash_key, sort_key
from protobase.values import same_value

KEYFNS = {"sort_key": sort_key, "hash_key": hash_key}
STRUCTURE = ("structure", "max_width", "height", "depth", "size", "separator", "order", "skeys")
"""Every kind of broken invariant but the minimum width (tested on its own)."""


class InMemory:
    """The loader of trees that were never stored: any load is a bug."""

    def load_node(self, pointer: AtomPointer) -> Node:
        raise AssertionError(f"an in-memory tree loaded node {pointer}")

    def load_nodes(self, pointers: Sequence[AtomPointer]) -> list[Node]:
        raise AssertionError(f"an in-memory tree loaded nodes {list(pointers)}")


NO_LOADS = InMemory()


class RecordingLoader:
    """Loads through a transaction and remembers every pointer it was asked for."""

    def __init__(self, transaction: Any) -> None:
        self.transaction = transaction
        self.loaded: list[AtomPointer] = []

    def load_node(self, pointer: AtomPointer) -> Node:
        self.loaded.append(pointer)
        return self.transaction.load_node(pointer)  # type: ignore[no-any-return]

    def load_nodes(self, pointers: Sequence[AtomPointer]) -> list[Node]:
        self.loaded.extend(pointers)
        return self.transaction.load_nodes(pointers)  # type: ignore[no-any-return]


# -- walking a tree ----------------------------------------------------------------


def walk(
    root: Node | None, loader: Any, keyfn: Callable[[Any], Any] | None = None
) -> tuple[list[Any], dict[str, list[str]]]:
    """The entries of a tree and its broken invariants, by kind.

    Entries are ``(key, value)`` pairs for a keyed tree (`keyfn` given) and
    plain values for a positional one.
    """
    problems: dict[str, list[str]] = defaultdict(list)
    entries: list[Any] = []
    leaf_depths: set[int] = set()
    keyed = keyfn is not None

    def note(kind: str, path: tuple[int, ...], text: str) -> None:
        if len(problems[kind]) < 5:
            problems[kind].append(f"node at {list(path)}: {text}")

    leaf_shape, internal_shape = (
        (KeyedLeaf, KeyedInternal) if keyed else (PositionalLeaf, PositionalInternal)
    )

    def visit(node: Node, path: tuple[int, ...]) -> None:
        width = node.width
        if path and width < MIN_WIDTH:
            note("min_width", path, f"width {width} < {MIN_WIDTH} (height {node.height})")
        if width > MAX_WIDTH:
            note("max_width", path, f"width {width} > {MAX_WIDTH}")
        if not path and (width == 0 or (node.height > 0 and width < 2)):
            note("structure", path, f"root of height {node.height} has width {width}")
        if type(node) is not leaf_shape and type(node) is not internal_shape:
            flavour = "keyed" if keyed else "positional"
            note("structure", path, f"a {type(node).__name__} in a {flavour} tree")
            return
        if isinstance(node, KeyedLeaf | KeyedInternal):
            assert keyfn is not None
            if len(node.keys) != width:
                note("structure", path, f"{len(node.keys)} keys for width {width}")
            skeys = [keyfn(k) for k in node.keys]
            if node.skeys(keyfn) != skeys:
                note("skeys", path, "cached sort keys differ from the keys")
            if any(a >= b for a, b in pairwise(skeys)):
                note("order", path, "keys are not strictly increasing")
        if isinstance(node, KeyedLeaf | PositionalLeaf):
            leaf_depths.add(len(path))
            if node.total != width:
                note("size", path, f"leaf total {node.total} for {width} values")
            if isinstance(node, KeyedLeaf):
                entries.extend(zip(node.keys, node.values, strict=False))
            else:
                entries.extend(node.values)
            return
        assert isinstance(node, Internal)
        if len(node.sizes) != width:
            note("structure", path, "sizes do not match the children")
            return
        if node.total != sum(node.sizes):
            note("size", path, f"total {node.total} != sum of sizes {sum(node.sizes)}")
        for i in range(width):
            child = node.child(i, loader)
            if child.height != node.height - 1:
                note("height", path, f"child {i} has height {child.height} under {node.height}")
            if node.sizes[i] != child.total:
                note(
                    "size", path, f"sizes[{i}] = {node.sizes[i]} but the child holds {child.total}"
                )
            if isinstance(node, KeyedInternal) and child.width:
                assert keyfn is not None
                if keyfn(node.keys[i]) != keyfn(child.keys[0]):
                    note(
                        "separator",
                        path,
                        f"keys[{i}] = {node.keys[i]!r} but child {i} starts at {child.keys[0]!r}",
                    )
            visit(child, (*path, i))

    if root is None:
        return entries, problems
    visit(root, ())
    if len(leaf_depths) > 1:
        problems["depth"].append(f"leaves at depths {sorted(leaf_depths)}")
    elif leaf_depths and leaf_depths != {root.height}:
        problems["depth"].append(f"leaves at depth {leaf_depths}, root height {root.height}")
    if keyed:
        assert keyfn is not None
        order = [keyfn(k) for k, _ in entries]
        if any(a >= b for a, b in pairwise(order)):
            problems["order"].append("entries are not strictly increasing across leaves")
    return entries, problems


def broken(problems: dict[str, list[str]], kinds: Sequence[str] = STRUCTURE) -> dict[str, Any]:
    return {kind: problems[kind] for kind in kinds if problems.get(kind)}


def fingerprint(node: Any) -> Any:
    """Everything observable about a tree, node by node (identity included)."""
    if not isinstance(node, Node):
        return ("pointer", node)
    internal = isinstance(node, Internal)
    return (
        id(node),
        type(node).__name__,
        node.height,
        node.total,
        tuple(node.keys) if hasattr(node, "keys") else None,
        tuple(node.values) if hasattr(node, "values") else None,
        tuple(node.sizes) if internal else None,
        tuple(fingerprint(child) for child in node.children) if internal else None,
    )


def sorted_items(model: dict[Any, Any], keyfn: Callable[[Any], Any]) -> list[tuple[Any, Any]]:
    return sorted(model.items(), key=lambda kv: keyfn(kv[0]))


# -- seeded random edit sequences ---------------------------------------------------


class KeyedRun:
    """A keyed tree edited at random next to a dict model, with problems collected."""

    def __init__(self, keyfn: Callable[[Any], Any], seed: int, edit: object | None = None) -> None:
        self.keyfn = keyfn
        self.rnd = random.Random(seed)
        self.edit = edit
        self.root: Node | None = None
        self.model: dict[Any, Any] = {}
        self.problems: dict[str, list[str]] = defaultdict(list)
        self.next_ascending = 100_000
        self.next_descending = 99_999

    def new_key(self) -> int:
        pattern = self.rnd.random()
        if pattern < 0.6:
            return self.rnd.randrange(60_000)
        if pattern < 0.8:
            self.next_ascending += 1
            return self.next_ascending
        self.next_descending -= 1
        return self.next_descending

    def insert(self) -> None:
        key, value = self.new_key(), self.rnd.randrange(10**6)
        fresh = key not in self.model
        self.root, added = keyed_set(self.root, NO_LOADS, key, value, self.keyfn, self.edit)
        self.model[key] = value
        if added != fresh:
            self.problems["content"].append(f"set {key!r} reported new={added}, expected {fresh}")

    def remove(self) -> None:
        if self.model and self.rnd.random() < 0.9:
            key = self.rnd.choice(list(self.model))
            expected = self.model.pop(key)
        else:
            key, expected = -1 - self.rnd.randrange(1000), MISSING
        before = self.root
        self.root, removed = keyed_remove(self.root, NO_LOADS, key, self.keyfn, self.edit)
        if removed is not expected and removed != expected:
            self.problems["content"].append(f"remove {key!r} gave {removed!r}, not {expected!r}")
        if expected is MISSING and self.root is not before:
            self.problems["content"].append(f"removing missing {key!r} changed the tree")

    def check(self) -> None:
        entries, problems = walk(self.root, NO_LOADS, self.keyfn)
        for kind, texts in problems.items():
            self.problems[kind].extend(texts[: 5 - len(self.problems[kind])])
        if entries != sorted_items(self.model, self.keyfn):
            self.problems["content"].append(f"{len(entries)} entries, model has {len(self.model)}")
        if (0 if self.root is None else self.root.total) != len(self.model):
            self.problems["content"].append("root total differs from the model size")

    def run(self, steps: int, grow_until: int, check_every: int = 250) -> None:
        growing = True
        for step in range(1, steps + 1):
            if growing and len(self.model) >= grow_until:
                growing = False
            elif not growing and len(self.model) < grow_until // 10:
                growing = True
            if self.rnd.random() < (0.8 if growing else 0.25):
                self.insert()
            else:
                self.remove()
            if step % check_every == 0:
                self.check()
        self.check()


class PositionalRun:
    """A positional tree edited at random next to a list model."""

    def __init__(self, seed: int, edit: object | None = None) -> None:
        self.rnd = random.Random(seed)
        self.edit = edit
        self.root: Node | None = None
        self.model: list[Any] = []
        self.problems: dict[str, list[str]] = defaultdict(list)
        self.counter = 0

    def step(self, growing: bool) -> None:
        rnd, n = self.rnd, len(self.model)
        self.counter += 1
        value = self.counter
        if n == 0 or rnd.random() < (0.75 if growing else 0.3):
            where = rnd.random()
            position = n if where < 0.3 else 0 if where < 0.4 else rnd.randrange(n + 1)
            self.root = positional_insert(self.root, NO_LOADS, position, value, self.edit)
            self.model.insert(position, value)
        elif rnd.random() < 0.2:
            position = rnd.randrange(n)
            self.root = positional_set(self.root, NO_LOADS, position, value, self.edit)
            self.model[position] = value
        else:
            position = n - 1 if rnd.random() < 0.2 else rnd.randrange(n)
            self.root, old = positional_remove(self.root, NO_LOADS, position, self.edit)
            expected = self.model.pop(position)
            if old != expected:
                self.problems["content"].append(f"removed {old!r} at {position}, not {expected}")

    def check(self) -> None:
        entries, problems = walk(self.root, NO_LOADS)
        for kind, texts in problems.items():
            self.problems[kind].extend(texts[: 5 - len(self.problems[kind])])
        if entries != self.model:
            self.problems["content"].append(f"{len(entries)} values, model has {len(self.model)}")
        if self.model:
            for position in (0, len(self.model) // 3, len(self.model) - 1):
                if positional_get(self.root, NO_LOADS, position) != self.model[position]:
                    self.problems["content"].append(f"positional_get({position}) is wrong")
            lo, hi = len(self.model) // 4, len(self.model) // 2
            if list(positional_values(self.root, NO_LOADS, lo, hi)) != self.model[lo:hi]:
                self.problems["content"].append(f"positional_values({lo}, {hi}) is wrong")

    def run(self, steps: int, grow_until: int, check_every: int = 250) -> None:
        growing = True
        for step in range(1, steps + 1):
            if growing and len(self.model) >= grow_until:
                growing = False
            elif not growing and len(self.model) < grow_until // 10:
                growing = True
            self.step(growing)
            if step % check_every == 0:
                self.check()
        self.check()


@cache
def keyed_run(keyfn_name: str, seed: int) -> KeyedRun:
    run = KeyedRun(KEYFNS[keyfn_name], seed)
    run.run(steps=8000, grow_until=3500)
    return run


@cache
def positional_run(seed: int) -> PositionalRun:
    run = PositionalRun(seed)
    run.run(steps=8000, grow_until=3500)
    return run


# -- structure after random edits ------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("keyfn_name", ["sort_key", "hash_key"])
def test_keyed_random_edits_keep_the_structure(keyfn_name: str, seed: int) -> None:
    run = keyed_run(keyfn_name, seed)
    assert not run.problems.get("content"), run.problems["content"]
    assert not broken(run.problems)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_positional_random_edits_keep_the_structure(seed: int) -> None:
    run = positional_run(seed)
    assert not run.problems.get("content"), run.problems["content"]
    assert not broken(run.problems)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("keyfn_name", ["sort_key", "hash_key"])
def test_keyed_random_edits_keep_every_non_root_node_at_least_min_width(
    keyfn_name: str, seed: int
) -> None:
    assert not broken(keyed_run(keyfn_name, seed).problems, ["min_width"])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_positional_random_edits_keep_every_non_root_node_at_least_min_width(seed: int) -> None:
    assert not broken(positional_run(seed).problems, ["min_width"])


def test_the_random_runs_grow_trees_of_several_levels() -> None:
    """The runs above test something: their trees reach height 2."""
    heights = set()
    for seed in (1, 2, 3):
        for tree in (KeyedRun(sort_key, seed), PositionalRun(seed)):
            tree.run(steps=4000, grow_until=3500, check_every=10**9)
            assert tree.root is not None
            heights.add(tree.root.height)
    assert max(heights) >= 2


@pytest.mark.parametrize(
    "size", [0, 1, 16, 47, 48, 49, 64, 65, 100, 2303, 2304, 2305, 3073, 120_000]
)
def test_bulk_builds_are_sound(size: int) -> None:
    keyed = build_keyed([(k, -k) for k in range(size)], sort_key)
    entries, problems = walk(keyed, NO_LOADS, sort_key)
    assert entries == [(k, -k) for k in range(size)]
    assert not broken(problems, [*STRUCTURE, "min_width"])
    positional = build_positional(list(range(size)))
    values, problems = walk(positional, NO_LOADS)
    assert values == list(range(size))
    assert not broken(problems, [*STRUCTURE, "min_width"])


def test_ascending_inserts_into_a_gap_do_not_leave_one_entry_leaves() -> None:
    """Keys that each land at the end of the same full leaf must not get a leaf apiece."""
    root = None
    for key in range(64):
        root, _ = keyed_set(root, NO_LOADS, key, key, sort_key)
    for key in range(2000, 1000, -1):
        root, _ = keyed_set(root, NO_LOADS, key, key, sort_key)
    assert root is not None
    leaves = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node.height == 0:
            leaves.append(node.width)
        else:
            stack.extend(node.child(i, NO_LOADS) for i in range(node.width))
    assert len(leaves) <= 2 * root.total // MIN_WIDTH + 1, (len(leaves), root.total)


def test_keyed_lookups_and_ranges_after_random_edits() -> None:
    run = keyed_run("sort_key", 1)
    items = sorted_items(run.model, sort_key)
    keys = [k for k, _ in items]
    rnd = random.Random(7)
    for key in [*rnd.sample(keys, min(200, len(keys))), -5, 10**9]:
        expected = run.model.get(key, MISSING)
        assert keyed_get(run.root, NO_LOADS, sort_key(key), sort_key) == expected
    for _ in range(200):
        lo, hi = rnd.randrange(-10, 120_000), rnd.randrange(-10, 120_000)
        got = list(keyed_items(run.root, NO_LOADS, sort_key, sort_key(lo), sort_key(hi)))
        assert got == [(k, v) for k, v in items if lo <= k < hi]


# -- transient edits ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("keyfn_name", ["sort_key", "hash_key"])
def test_transient_keyed_edits_leave_the_older_tree_alone(keyfn_name: str, seed: int) -> None:
    keyfn = KEYFNS[keyfn_name]
    base = KeyedRun(keyfn, seed)
    base.run(steps=3000, grow_until=2500, check_every=10**9)
    old_root, old_model = base.root, dict(base.model)
    before = fingerprint(old_root)

    bulk = KeyedRun(keyfn, seed + 100, edit=object())
    bulk.root, bulk.model = old_root, dict(old_model)
    bulk.run(steps=4000, grow_until=6000, check_every=10**9)

    assert fingerprint(old_root) == before
    assert walk(old_root, NO_LOADS, keyfn)[0] == sorted_items(old_model, keyfn)
    assert not bulk.problems.get("content"), bulk.problems["content"]
    assert not broken(bulk.problems)

    # A second bulk edit (a new token) leaves the first one's result alone.
    first_root, first_model = bulk.root, dict(bulk.model)
    first = fingerprint(first_root)
    again = KeyedRun(keyfn, seed + 200, edit=object())
    again.root, again.model = first_root, dict(first_model)
    again.run(steps=1000, grow_until=8000, check_every=10**9)
    assert fingerprint(first_root) == first
    assert walk(first_root, NO_LOADS, keyfn)[0] == sorted_items(first_model, keyfn)
    assert not broken(again.problems, [*STRUCTURE, "content"])


@pytest.mark.parametrize("seed", [1, 2])
def test_transient_positional_edits_leave_the_older_tree_alone(seed: int) -> None:
    base = PositionalRun(seed)
    base.run(steps=3000, grow_until=2500, check_every=10**9)
    old_root, old_model = base.root, list(base.model)
    before = fingerprint(old_root)

    bulk = PositionalRun(seed + 100, edit=object())
    bulk.root, bulk.model = old_root, list(old_model)
    bulk.run(steps=4000, grow_until=6000, check_every=10**9)

    assert fingerprint(old_root) == before
    assert walk(old_root, NO_LOADS)[0] == old_model
    assert not bulk.problems.get("content"), bulk.problems["content"]
    assert not broken(bulk.problems)


def test_transient_edits_from_an_empty_tree_build_a_sound_tree() -> None:
    run = KeyedRun(sort_key, 5, edit=object())
    run.run(steps=6000, grow_until=4000)
    assert not run.problems.get("content"), run.problems["content"]
    assert not broken(run.problems)


def bulk_operations() -> list[tuple[str, Any, Callable[[Any], Any], Callable[[Any], Any] | None]]:
    """(name, old collection, bulk operation, keyfn) for every collection's bulk path."""
    rnd = random.Random(11)
    keys = rnd.sample(range(100_000), 3000)
    more = rnd.sample(range(100_000, 200_000), 2000) + keys[:500]
    return [
        ("List.extend", List(keys), lambda c: c.extend(more), None),
        ("List.extend(List)", List(keys), lambda c: c.extend(List(more)), None),
        ("Dictionary.update", Dictionary((k, k) for k in keys),
         lambda c: c.update((k, -k) for k in more), sort_key),
        ("HashDictionary.update", HashDictionary((k, k) for k in keys),
         lambda c: c.update({k: -k for k in more}), hash_key),
        ("Set.update", Set(keys), lambda c: c.update(more), hash_key),
        ("Set.difference", Set(keys), lambda c: c.difference(keys[::3]), hash_key),
        ("CountedSet.update", CountedSet(keys), lambda c: c.update(more), hash_key),
    ]  # fmt: skip


@pytest.mark.parametrize("index", range(len(bulk_operations())))
def test_collection_bulk_operations_leave_the_older_tree_alone(index: int) -> None:
    name, old, operation, keyfn = bulk_operations()[index]
    old_entries = list(old.items()) if hasattr(old, "items") else list(old.as_iterable())
    before = fingerprint(old._node())
    new = operation(old)
    assert fingerprint(old._node()) == before, name
    now = list(old.items()) if hasattr(old, "items") else list(old.as_iterable())
    assert now == old_entries, name
    entries, problems = walk(new._node(), NO_LOADS, keyfn)
    assert not broken(problems), (name, broken(problems))
    assert len(new) == len(entries), name


# -- keyed_diff ----------------------------------------------------------------------------


def derive(
    root: Node | None,
    model: dict[Any, Any],
    keyfn: Callable[[Any], Any],
    changes: int,
    rnd: random.Random,
    loader: Any = NO_LOADS,
) -> tuple[Node | None, dict[Any, Any]]:
    """`changes` edits on distinct keys (new key, new value, removal) of a copy."""
    model = dict(model)
    touched: set[Any] = set()
    while len(touched) < changes:
        kind = rnd.randrange(3)
        if kind == 0 or not model:
            key = rnd.randrange(10**6, 2 * 10**6)
            if key in touched:
                continue
            root, _ = keyed_set(root, loader, key, "new", keyfn)
            model[key] = "new"
        else:
            key = rnd.choice(list(model))
            if key in touched:
                continue
            if kind == 1:
                root, _ = keyed_set(root, loader, key, ("changed", key), keyfn)
                model[key] = ("changed", key)
            else:
                root, _ = keyed_remove(root, loader, key, keyfn)
                del model[key]
        touched.add(key)
    return root, model


def dict_diff(a: dict[Any, Any], b: dict[Any, Any]) -> dict[Any, tuple[Any, Any]]:
    return {
        k: (a.get(k, MISSING), b.get(k, MISSING))
        for k in a.keys() | b.keys()
        if k not in a or k not in b or not same_value(a[k], b[k])
    }


def diff_as_dict(
    base: Any, other: Any, loader: Any, keyfn: Callable[[Any], Any]
) -> dict[Any, tuple[Any, Any]]:
    found: dict[Any, tuple[Any, Any]] = {}
    for skey, key, base_value, other_value in keyed_diff(base, other, loader, keyfn, same_value):
        assert skey == keyfn(key)
        assert key not in found, f"{key!r} reported twice"
        found[key] = (base_value, other_value)
    return found


@pytest.mark.parametrize("changes", [0, 1, 2, 10, 100, 1500])
@pytest.mark.parametrize("keyfn_name", ["sort_key", "hash_key"])
def test_keyed_diff_of_in_memory_versions_is_the_dict_diff(keyfn_name: str, changes: int) -> None:
    keyfn = KEYFNS[keyfn_name]
    base = KeyedRun(keyfn, 21)
    base.run(steps=4000, grow_until=3000, check_every=10**9)
    rnd = random.Random(changes)
    other, other_model = derive(base.root, base.model, keyfn, changes, rnd)
    expected = dict_diff(base.model, other_model)
    assert len(expected) == changes
    assert diff_as_dict(base.root, other, NO_LOADS, keyfn) == expected
    mirrored = {k: (b, a) for k, (a, b) in expected.items()}
    assert diff_as_dict(other, base.root, NO_LOADS, keyfn) == mirrored
    assert diff_as_dict(base.root, base.root, NO_LOADS, keyfn) == {}


def test_keyed_diff_against_an_empty_tree_and_between_unshared_equal_trees() -> None:
    items = [(k, k * 2) for k in range(0, 5000, 3)]
    one = build_keyed(items, sort_key)
    two = build_keyed(items, sort_key)
    assert diff_as_dict(one, two, NO_LOADS, sort_key) == {}
    assert diff_as_dict(None, one, NO_LOADS, sort_key) == {k: (MISSING, v) for k, v in items}
    assert diff_as_dict(one, None, NO_LOADS, sort_key) == {k: (v, MISSING) for k, v in items}
    assert diff_as_dict(None, None, NO_LOADS, sort_key) == {}
    changed = build_keyed([(k, v + (k == 300)) for k, v in items], sort_key)
    assert diff_as_dict(one, changed, NO_LOADS, sort_key) == {300: (600, 601)}


def reachable(pointer: AtomPointer, transaction: Any) -> set[AtomPointer]:
    """Every node pointer of a stored tree (read with load_node only, so children stay pointers)."""
    seen = {pointer}
    stack = [pointer]
    while stack:
        node = transaction.load_node(stack.pop())
        for child in node.children if isinstance(node, Internal) else ():
            assert type(child) is AtomPointer
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


@cache
def stored_versions(cls: type, changes: int) -> tuple[Any, dict[Any, Any], dict[Any, Any]]:
    """A stored collection and a version derived from it by `changes` point edits."""
    space = ObjectSpace(MemoryStorage())
    db = space.new_database("diff")
    rnd = random.Random(changes)
    base_model = {k: k for k in rnd.sample(range(10**6), 5000)}
    with db.transaction() as tr:
        tr.set_root_object("a", cls(base_model))
    with db.transaction() as tr:
        coll = tr.get_root_object("a")
        model = dict(base_model)
        touched: set[Any] = set()
        while len(touched) < changes:
            key = rnd.choice(list(model)) if rnd.random() < 0.6 else rnd.randrange(10**6, 2 * 10**6)
            if key in touched:
                continue
            touched.add(key)
            if key not in model:
                coll, model[key] = coll.set_at(key, "new"), "new"
            elif rnd.random() < 0.5:
                coll, model[key] = coll.set_at(key, -key), -key
            else:
                coll = coll.remove_at(key)
                del model[key]
        tr.set_root_object("b", coll)
    return db, base_model, model


@pytest.mark.parametrize("changes", [1, 3, 20, 200])
@pytest.mark.parametrize("cls", [Dictionary, HashDictionary], ids=["Dictionary", "HashDictionary"])
def test_keyed_diff_of_stored_versions_is_the_dict_diff(cls: type, changes: int) -> None:
    db, base_model, model = stored_versions(cls, changes)
    keyfn = sort_key if cls is Dictionary else hash_key
    reader = db.new_transaction()
    a, b = reader.get_root_object("a")._root, reader.get_root_object("b")._root
    assert type(a) is AtomPointer and type(b) is AtomPointer
    expected = dict_diff(base_model, model)
    assert len(expected) == changes
    assert diff_as_dict(a, b, RecordingLoader(db.new_transaction()), keyfn) == expected


@pytest.mark.parametrize("changes", [1, 3, 20, 200])
@pytest.mark.parametrize("cls", [Dictionary, HashDictionary], ids=["Dictionary", "HashDictionary"])
def test_keyed_diff_of_stored_versions_loads_no_shared_node(cls: type, changes: int) -> None:
    db, _, _ = stored_versions(cls, changes)
    keyfn = sort_key if cls is Dictionary else hash_key
    reader = db.new_transaction()
    a, b = reader.get_root_object("a")._root, reader.get_root_object("b")._root
    walker = db.new_transaction()
    shared = reachable(a, walker) & reachable(b, walker)
    height = walker.load_node(a).height
    assert shared, "the versions should share most of their nodes"

    loader = RecordingLoader(db.new_transaction())
    list(keyed_diff(a, b, loader, keyfn, same_value))
    loaded_shared = set(loader.loaded) & shared
    assert not loaded_shared, f"{len(loaded_shared)} shared nodes were loaded"
    # Each change touches one path per tree (a node may be asked for twice).
    assert len(set(loader.loaded)) <= 2 * changes * (height + 1)


def test_keyed_get_sorted_matches_point_lookups() -> None:
    """The one-walk multi-get finds exactly what separate lookups find."""
    import random

    from protobase import Dictionary
    from protobase.collections.base import DETACHED
    from protobase.collections.btree import MISSING, keyed_get_sorted
    from protobase.collections.ordering import sort_key

    rng = random.Random(3)
    for n in (0, 1, 5, 64, 100, 1000, 20000):
        keys = sorted(rng.sample(range(3 * n + 10), n))
        built = Dictionary((k, -k) for k in keys)
        for _ in range(15):
            probe = sorted({rng.randrange(-5, 3 * n + 15) for _ in range(rng.randrange(0, 300))})
            got = list(
                keyed_get_sorted(built._node(), DETACHED, [sort_key(k) for k in probe], sort_key)
            )
            assert got == [built.get_at(k) if built.has(k) else MISSING for k in probe]
