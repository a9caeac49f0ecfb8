"""Secondary indexes: stored with their collection, exact after every change.

An index on field path P of a collection is a keyed B+-tree (`btree`, the
same as under an ordered `Dictionary`) whose keys are ``(value at P,
identity)``, ordered by ``(sort_key(value), sort_key(identity))``
(`index_key`), and whose values are counts (in a *covering* index, the
rows themselves, so that a range reads its rows from the index alone). An
`Index` holds its tree raw, as an `IndexTree` (root node or pointer, entry
count, loader), and reads and changes it with the `btree` functions. The
identity names the row inside the collection:

- Dictionary: the row's key (the index serves the dictionary's values);
- List: the row's position;
- Set: the element's stable 64-bit hash, so the index does not hold a second
  copy of each element. Elements whose hashes collide share an entry, whose
  count says how many there are; a lookup reads every element of that hash
  and the query re-checks its condition on each.

This module knows nothing of collections: `collections.base.Indexable`
gives List, Set and Dictionary their indexes and calls `Index.build` and
`Index.changed`.

Stored form (written by `protobase.serialization`, inside the descriptor of
the collection): each index is ``[dotted field, unique, tree]``, and its
tree is written like a collection descriptor of kind ``"index"``::

    ["index", root node pointer | nil, entry count, nil]

Invariants:

- After every mutator returns, each index holds exactly one entry (with the
  right count) per row. A row whose value cannot be ordered (``sort_key``
  refuses lists, dicts, collections) has the key ``(identity,)``, which
  sorts after every orderable value: ``is_not_null`` still finds it, and
  the planner never looks such a value up.
- A missing field and None are both stored under None (SQL's NULL), so
  ``is_null`` can use the index.
- A unique index never holds two entries with equal non-None orderable
  values (equal as keys are: ``1 == 1.0``). None may repeat, as NULL may in
  SQL, and so may values that cannot be ordered.
- An index is derived data: the three-way merge never merges index trees;
  it merges the rows and the collection maintains its indexes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from operator import eq, itemgetter
from typing import Any, NamedTuple

from ..atoms import AtomPointer
from ..errors import UniqueConstraintError, ValidationError
from .btree import (
    DETACHED,
    MISSING,
    KeyedNode,
    NodeLoader,
    as_keyed,
    build_keyed,
    keyed_first,
    keyed_get,
    keyed_items,
    keyed_rank,
    keyed_remove,
    keyed_set,
    keyed_sorted_keys,
)
from .fields import Path, index_field_reader, index_path_value, path_text
from .ordering import sort_key

INDEX_TREE_KIND = "index"
"""The kind in the stored descriptor of an index tree (see the module docstring)."""
HIGH: tuple[Any, ...] = (1 << 62,)
"""Sorts after the sort key of any value (ranks are small integers)."""
UNORDERABLE_RANK = 1 << 61
"""Where entries of values that cannot be ordered sort: after all others."""
END_RANK = 1 << 62


def index_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """The order of an index tree's ``(value, identity)`` and ``(identity,)`` keys.

    Flat: the value's sort key, then the identity's sort key as one last
    element, so comparisons rarely go two tuples deep. This is order-preserving
    because the sort keys of one rank all have one length (collections.ordering),
    so the value parts of two keys line up whenever their ranks are equal.
    The order key of a row (`Index.scan`) is the last element.
    """
    if len(key) == 1:
        return (UNORDERABLE_RANK, sort_key(key[0]))
    return (*sort_key(key[0]), sort_key(key[1]))


class IndexSpec(NamedTuple):
    """What an index is on: a field path, whether values must be unique, and
    whether its entries keep the rows themselves (`covering`)."""

    path: Path
    unique: bool
    covering: bool = False

    def describe(self) -> str:
        kind = ("unique " if self.unique else "") + ("covering " if self.covering else "")
        return f"{kind}index on {path_text(self.path)!r}"


OPEN_HIGH: tuple[Any, ...] = (END_RANK,)
"""The tree position after the last entry."""


def below(field_key: Any) -> tuple[Any, ...]:
    """The tree position just before every entry whose field sort key is `field_key`."""
    return tuple(field_key)


def above(field_key: Any) -> tuple[Any, ...]:
    """The tree position just after every entry whose field sort key is `field_key`."""
    return (*field_key, HIGH)


class IndexTree:
    """The tree of one index, raw: its root, its entry count, and the loader of its nodes.

    The root is a node, the `AtomPointer` of a stored one (read on first
    use), or None when the index is empty.
    """

    __slots__ = ("count", "loader", "root")

    def __init__(
        self, root: KeyedNode | AtomPointer | None, count: int, loader: NodeLoader = DETACHED
    ) -> None:
        self.root = root
        self.count = count
        self.loader = loader

    def node(self) -> KeyedNode | None:
        """The root node, loaded (and kept) on first use."""
        root = self.root
        if isinstance(root, AtomPointer):
            root = self.root = as_keyed(self.loader.load_node(root))
        return root

    def __repr__(self) -> str:
        return f"<IndexTree of {self.count} entries>"


_SIMPLE_RANKS: dict[type, int] = {str: 3, int: 1, bool: 1, float: 1, bytes: 4}
"""The sort key rank of scalars whose sort key is ``(rank, value)`` (a float but NaN)."""


def _merged_duplicates(
    pairs: list[tuple[Any, tuple[Any, ...], Any]],
) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """Entries with counts, one per distinct sort key, from sorted ``(skey, key, row)``."""
    entries: list[tuple[Any, Any]] = []
    skeys: list[Any] = []
    previous: Any = MISSING
    for skey, key, _ in pairs:
        if skey == previous:
            entries[-1] = (key, entries[-1][1] + 1)
            continue
        entries.append((key, 1))
        skeys.append(skey)
        previous = skey
    return entries, skeys


def _check_unique(spec: IndexSpec, entries: list[tuple[Any, Any]], skeys: list[Any]) -> None:
    """Raise UniqueConstraintError when two sorted entries share a non-None orderable value."""
    for position in range(1, len(skeys)):
        if skeys[position][:-1] == skeys[position - 1][:-1]:
            key = entries[position][0]
            if len(key) == 2 and key[0] is not None:
                raise UniqueConstraintError(
                    f"cannot build the {spec.describe()}: value {key[0]!r} occurs more "
                    "than once; nothing changed"
                )


class Index:
    """One index of a collection (immutable: changes return a new Index)."""

    __slots__ = ("spec", "tree")

    def __init__(self, spec: IndexSpec, tree: IndexTree) -> None:
        self.spec = spec
        self.tree = tree

    def __repr__(self) -> str:
        return f"<{self.spec.describe()}, {self.tree.count} entries>"

    # -- building and maintenance ----------------------------------------------------

    def entry(self, identity: Any, row: Any) -> tuple[Any, ...]:
        """The tree key of a row: ``(value, identity)``, or ``(identity,)`` when
        the value cannot be ordered."""
        value = index_path_value(row, self.spec.path)
        try:
            sort_key(value)
        except ValidationError:
            return (identity,)
        return (value, identity)

    @classmethod
    def build(cls, spec: IndexSpec, rows: Iterable[tuple[Any, Any]]) -> Index:
        """An index over ``(identity, row)`` pairs; O(n log n).

        Raises:
            UniqueConstraintError: `spec` is unique and two rows share a value.
        """
        read = index_field_reader(spec.path)
        ranks = _SIMPLE_RANKS
        pairs: list[tuple[Any, tuple[Any, ...], Any]] = []
        append = pairs.append
        for identity, row in rows:
            value = read(row)
            # sort_key inlined for the common scalars (a str, an int, a float but NaN)
            rank = ranks.get(type(identity))
            identity_key = (rank, identity) if rank is not None else sort_key(identity)
            rank = ranks.get(type(value))
            if rank is not None and value == value:
                append(((rank, value, identity_key), (value, identity), row))
                continue
            try:
                append(((*sort_key(value), identity_key), (value, identity), row))
            except ValidationError:
                append(((UNORDERABLE_RANK, identity_key), (identity,), row))
        pairs.sort(key=itemgetter(0))
        skeys = [skey for skey, _, _ in pairs]
        if spec.covering:  # every identity is one row (covering is refused on a Set)
            entries = [(key, row) for _, key, row in pairs]
        elif any(map(eq, skeys, islice(skeys, 1, None))):
            # Set elements whose hashes collide share an entry, with their count
            entries, skeys = _merged_duplicates(pairs)
        else:
            entries = [(key, 1) for _, key, _ in pairs]
        if spec.unique:
            _check_unique(spec, entries, skeys)
        root = build_keyed(entries, index_key, skeys=skeys)
        return cls(spec, IndexTree(root, len(entries)))

    def changed(
        self, removed: Iterable[tuple[Any, Any]], added: Iterable[tuple[Any, Any]]
    ) -> Index:
        """This index after rows left and rows came, as ``(identity, row)`` pairs.

        Removals apply first, so a row replaced by one with the same value is
        no duplicate.

        Raises:
            UniqueConstraintError: an added row repeats a unique value.
        """
        root, loader = self.tree.node(), self.tree.loader
        covering = self.spec.covering
        for identity, row in removed:
            key = self.entry(identity, row)
            count = keyed_get(root, loader, index_key(key), index_key)
            if count is MISSING:
                raise AssertionError(f"{self.spec.describe()} lacks entry {key!r}")
            if covering or count <= 1:
                root, _ = keyed_remove(root, loader, key, index_key)
            else:
                root, _ = keyed_set(root, loader, key, count - 1, index_key)
        for identity, row in added:
            key = self.entry(identity, row)
            if (
                self.spec.unique
                and len(key) == 2
                and key[0] is not None
                and next(_entries_equal(root, loader, key[0]), None) is not None
            ):
                raise UniqueConstraintError(
                    f"the {self.spec.describe()} already holds value {key[0]!r}; nothing changed"
                )
            if covering:
                root, _ = keyed_set(root, loader, key, row, index_key)
                continue
            count = keyed_get(root, loader, index_key(key), index_key)
            root, _ = keyed_set(root, loader, key, 1 if count is MISSING else count + 1, index_key)
        return Index(self.spec, IndexTree(root, 0 if root is None else root.total, loader))

    # -- reading (the planner) -------------------------------------------------------

    def scan(self, low: Any, high: Any) -> Iterator[tuple[Any, Any]]:
        """``(order key, identity)`` of the entries between tree positions `low` and `high`.

        The order key is ``sort_key(identity)``: ascending order keys are the
        collection's own order of its rows.
        """
        tree = self.tree
        for skey, key in keyed_sorted_keys(tree.node(), tree.loader, index_key, low, high):
            yield skey[-1], key[-1]

    def scan_rows(self, low: Any, high: Any) -> Iterator[tuple[Any, Any]]:
        """``(order key, row)`` of the entries between `low` and `high` (a covering index)."""
        tree = self.tree
        for key, row in keyed_items(tree.node(), tree.loader, index_key, low, high):
            yield sort_key(key[-1]), row

    def first_row(self, low: Any, high: Any) -> tuple[Any, Any] | None:
        """The first ``(order key, row)`` of `scan_rows` (a covering index)."""
        return next(self.scan_rows(low, high), None)

    def first(self, low: Any, high: Any) -> tuple[Any, Any] | None:
        """The first ``(order key, identity)`` of `scan`, found with one descent."""
        tree = self.tree
        found = keyed_first(tree.node(), tree.loader, index_key, low, high)
        return None if found is None else (found[0][-1], found[1][-1])

    def count(self, low: Any, high: Any) -> int:
        """The number of entries between tree positions `low` and `high`; O(log n)."""
        tree = self.tree
        root, loader = tree.node(), tree.loader
        return keyed_rank(root, loader, high, index_key) - keyed_rank(root, loader, low, index_key)

    def __len__(self) -> int:
        return self.tree.count


def _entries_equal(
    root: KeyedNode | None, loader: NodeLoader, value: Any
) -> Iterator[tuple[Any, Any]]:
    """The entries of an index tree whose field value equals `value`."""
    field_key = sort_key(value)
    return keyed_items(root, loader, index_key, below(field_key), above(field_key))
