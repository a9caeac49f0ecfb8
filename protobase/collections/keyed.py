"""Keyed collections: Dictionary (key order), HashDictionary, Set, CountedSet.

All four are keyed B+-trees (`btree`) that differ in the order of their keys:

- `Dictionary` orders by `ordering.sort_key` (mixed key types order
  deterministically), so it offers range scans;
- `HashDictionary`, `Set` and `CountedSet` order by `ordering.hash_key`
  (stable 64-bit hash, ties broken by value): hash-ordered, with nodes as wide
  as a Dictionary's. (A hash trie was the first plan; a B+-tree over the hash gives the
  same order with full-width nodes, see docs/decisions.md.)

Keys equal in Python (``1``, ``1.0``, ``True``) are one key, as in a dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import pairwise
from typing import TYPE_CHECKING, Any, ClassVar

from ..atoms import AtomPointer
from ..values import NO_CHECK_TYPES, needs_check, same_value
from .base import Indexable, PersistentCollection
from .btree import (
    MISSING,
    KeyedNode,
    as_keyed,
    build_keyed,
    keyed_diff,
    keyed_get,
    keyed_get_sorted,
    keyed_items,
    keyed_remove,
    keyed_set,
    keyed_values,
)
from .indexes import HIGH, Index
from .ordering import hash_key, sort_key, stable_hash

if TYPE_CHECKING:
    from typing import Self


class KeyedCollection(PersistentCollection):
    """Shared machinery of the keyed collections (not public)."""

    __slots__ = ()
    _keyfn: ClassVar[staticmethod[[Any], Any]]
    _what: ClassVar[str] = "key"
    _root: KeyedNode | AtomPointer | None

    def _node(self) -> KeyedNode | None:
        """The root node, loaded on first use."""
        root = self._root
        if isinstance(root, AtomPointer):
            root = self._root = as_keyed(self._loader.load_node(root))
        return root

    def _lookup(self, key: Any) -> Any:
        cls = type(self)
        return keyed_get(self._node(), self._loader, cls._keyfn(key), cls._keyfn)

    def _with(self, key: Any, value: Any) -> Self:
        root, _ = keyed_set(self._node(), self._loader, key, value, type(self)._keyfn)
        return self._derive(root)

    def _without(self, key: Any) -> Self:
        root, removed = keyed_remove(self._node(), self._loader, key, type(self)._keyfn)
        if removed is MISSING:
            raise KeyError(key)
        return self._derive(root)

    def _entries(self) -> Iterator[tuple[Any, Any]]:
        return keyed_items(self._node(), self._loader, type(self)._keyfn)

    def _bulk(self, pairs: Iterable[tuple[Any, Any]]) -> Self:
        """Set many entries, later ones winning; builds in place (O(n) from empty)."""
        keyfn = type(self)._keyfn
        if not self._count:
            entries = pairs if isinstance(pairs, list) else list(pairs)
            skeys = [keyfn(key) for key, _ in entries]
            if not all(a < b for a, b in pairwise(skeys)):  # not ascending: sort and dedupe
                latest: dict[Any, tuple[Any, Any]] = {}
                for skey, (key, value) in zip(skeys, entries, strict=True):
                    kept = latest.get(skey)
                    latest[skey] = (key if kept is None else kept[0], value)
                skeys = sorted(latest)
                entries = [latest[skey] for skey in skeys]
            return self._derive(build_keyed(entries, keyfn, skeys=skeys))
        edit = object()
        root = self._node()
        for key, value in pairs:
            root, _ = keyed_set(root, self._loader, key, value, keyfn, edit)
        return self._derive(root)

    def _pb_apply_changes(self, changes: Iterable[tuple[Any, Any]]) -> Self:
        """Apply ``(key, value or MISSING)`` changes in place of a copy (merge)."""
        keyfn = type(self)._keyfn
        edit = object()
        root = self._node()
        for key, value in changes:
            if value is MISSING:
                root, _ = keyed_remove(root, self._loader, key, keyfn, edit)
            else:
                root, _ = keyed_set(root, self._loader, key, value, keyfn, edit)
        return self._derive(root)

    def _check_key(self, key: Any) -> Any:
        key = self._check(key, f"a {type(self).__name__} {self._what}")
        type(self)._keyfn(key)
        return key

    # -- secondary indexes: kept exact by diffing the old and the new tree ---------

    def _pb_index_item(self, key: Any, value: Any) -> tuple[Any, Any]:
        """``(identity, row)`` of one entry (see collections.indexes)."""
        raise TypeError(f"{type(self).__name__} has no secondary indexes")

    def _pb_index_rows(self) -> Iterator[tuple[Any, Any]]:
        item = self._pb_index_item
        return (item(key, value) for key, value in self._entries())

    def _pb_maintained_indexes(self, new: Self) -> tuple[Index, ...]:
        removed, added = [], []
        item = self._pb_index_item
        for _, key, old, value in keyed_diff(
            self._node(), new._node(), self._loader, type(self)._keyfn, same_value
        ):
            if old is not MISSING:
                removed.append(item(key, old))
            if value is not MISSING:
                added.append(item(key, value))
        return tuple(index.changed(removed, added) for index in self._indexes)


class _Mapping(KeyedCollection):
    """The mapping API shared by Dictionary and HashDictionary."""

    __slots__ = ()

    def __init__(self, items: Mapping[Any, Any] | Iterable[tuple[Any, Any]] = ()) -> None:
        super().__init__()
        if items:
            built = self.update(items)
            self._root, self._count = built._root, built._count

    def get_at(self, key: Any) -> Any:
        """The value under `key`, or None when the key is absent."""
        value = self._lookup(key)
        return None if value is MISSING else value

    def set_at(self, key: Any, value: Any) -> Self:
        key = self._check_key(key)
        return self._with(key, self._check(value, f"{type(self).__name__}[{key!r}]"))

    def remove_at(self, key: Any) -> Self:
        """The mapping without `key`; KeyError when it is absent."""
        return self._without(key)

    def has(self, key: Any) -> bool:
        return self._lookup(key) is not MISSING

    def update(self, items: Mapping[Any, Any] | Iterable[tuple[Any, Any]]) -> Self:
        """Set every pair of `items` (a mapping or ``(key, value)`` pairs) at once."""
        if isinstance(items, _Mapping):
            pairs: Iterable[Any] = list(items.as_iterable())
        elif isinstance(items, Mapping):
            pairs = items.items()
        else:
            pairs = items
        checked: list[tuple[Any, Any]] = []
        append = checked.append
        for pair in pairs:
            if type(pair) is not tuple:
                pair = tuple(pair)
            if len(pair) != 2:
                raise ValueError(f"update expects (key, value) pairs, got {pair!r}")
            key, value = pair
            if type(key) not in NO_CHECK_TYPES and needs_check(key):
                key = self._check_key(key)
                pair = (key, value)
            if type(value) not in NO_CHECK_TYPES and needs_check(value):
                pair = (key, self._check(value, f"{type(self).__name__}[{key!r}]"))
            append(pair)
        return self._bulk(checked)

    def as_iterable(self) -> Iterator[tuple[Any, Any]]:
        """``(key, value)`` pairs in the collection's order."""
        return self._entries()

    def items(self) -> Iterator[tuple[Any, Any]]:
        return self._entries()

    def keys(self) -> Iterator[Any]:
        return (key for key, _ in self._entries())

    def values(self) -> Iterator[Any]:
        return keyed_values(self._node(), self._loader, type(self)._keyfn)

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def __getitem__(self, key: Any) -> Any:
        value = self._lookup(key)
        if value is MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self.has(key)

    def _pb_field(self, name: str) -> Any:
        """A query path step into a mapping reads the value under key `name`."""
        value = self._lookup(name)
        return None if value is MISSING else value

    def to_dict(self) -> dict[Any, Any]:
        return dict(self._entries())


class Dictionary(_Mapping, Indexable):
    """A persistent mapping ordered by key, with range scans."""

    __slots__ = ()
    _kind = "dict"
    _keyfn = staticmethod(sort_key)

    def range(self, lo: Any = MISSING, hi: Any = MISSING) -> Iterator[tuple[Any, Any]]:
        """Pairs with ``lo <= key < hi`` in key order.

        A bound left out leaves that side open (None is a key like any other,
        the smallest one).
        """
        return keyed_items(
            self._node(),
            self._loader,
            sort_key,
            MISSING if lo is MISSING else sort_key(lo),
            MISSING if hi is MISSING else sort_key(hi),
        )

    # -- secondary indexes on the values: the identity of a row is its key --------

    def _pb_index_item(self, key: Any, value: Any) -> tuple[Any, Any]:
        return key, value

    def _pb_index_rows(self) -> Iterator[tuple[Any, Any]]:
        return self._entries()  # the entries are ``(identity, row)`` already

    def _pb_fetch(self, order_keys: list[Any], identities: list[Any]) -> Iterator[Any]:
        """The rows (values) under the keys `identities`, whose sort keys `order_keys` ascend."""
        root, loader = self._node(), self._loader
        if len(order_keys) == 1:  # the common unique lookup: one descent, no list walk
            value = keyed_get(root, loader, order_keys[0], sort_key)
            return iter(() if value is MISSING else (value,))
        found = keyed_get_sorted(root, loader, order_keys, sort_key)
        return iter([value for value in found if value is not MISSING])


class HashDictionary(_Mapping):
    """A persistent mapping in hash order."""

    __slots__ = ()
    _kind = "hdict"
    _keyfn = staticmethod(hash_key)


class Set(KeyedCollection, Indexable):
    """A persistent set in hash order."""

    __slots__ = ()
    _kind = "set"
    _keyfn = staticmethod(hash_key)
    _what = "element"
    _pb_covering_allowed = False

    def __init__(self, items: Iterable[Any] = ()) -> None:
        super().__init__()
        if items:
            built = self.update(items)
            self._root, self._count = built._root, built._count

    def add(self, value: Any) -> Self:
        value = self._check_key(value)
        if self._lookup(value) is not MISSING:
            return self
        return self._with(value, None)

    def remove_at(self, value: Any) -> Self:
        """The set without `value`; KeyError when it is absent."""
        return self._without(value)

    def has(self, value: Any) -> bool:
        return self._lookup(value) is not MISSING

    def update(self, items: Iterable[Any]) -> Self:
        values = [self._check_key(value) for value in _elements(items)]
        return self._bulk((value, None) for value in values)

    def union(self, other: Iterable[Any]) -> Self:
        return self.update(other)

    def intersection(self, other: Iterable[Any]) -> Self:
        keep = [value for value in _elements(other) if self.has(value)]
        return self._derive(None)._bulk((value, None) for value in keep)

    def difference(self, other: Iterable[Any]) -> Self:
        drop = [value for value in _elements(other) if self.has(value)]
        return self._pb_apply_changes((value, MISSING) for value in drop)

    def as_iterable(self) -> Iterator[Any]:
        return (key for key, _ in self._entries())

    def __iter__(self) -> Iterator[Any]:
        return self.as_iterable()

    def __contains__(self, value: object) -> bool:
        return self.has(value)

    # -- secondary indexes on the elements: the identity of a row is its hash ------

    def _pb_index_item(self, key: Any, value: Any) -> tuple[Any, Any]:
        return stable_hash(key), key

    def _pb_fetch(self, order_keys: list[Any], identities: list[Any]) -> Iterator[Any]:
        """The elements with the stable hashes `identities` (ascending)."""
        root, loader = self._node(), self._loader
        for digest in identities:
            for element, _ in keyed_items(root, loader, hash_key, (digest,), (digest, HIGH)):
                yield element


def _elements(items: Iterable[Any]) -> Iterable[Any]:
    return items.as_iterable() if isinstance(items, PersistentCollection) else items


class CountedSet(KeyedCollection):
    """A persistent multiset: each element has a count (like collections.Counter).

    ``add`` counts up, ``remove_at`` counts down (the element leaves at 0);
    ``count`` is the number of distinct elements, ``total_count`` the sum of
    the counts. ``union`` keeps the larger count, ``intersection`` the
    smaller, ``difference`` subtracts (as Counter's ``|``, ``&`` and ``-``).
    """

    __slots__ = ("_total",)
    _kind = "cset"
    _keyfn = staticmethod(hash_key)
    _what = "element"

    def __init__(self, items: Iterable[Any] = ()) -> None:
        super().__init__()
        self._total = 0
        if items:
            built = self.update(items)
            self._root, self._count, self._total = built._root, built._count, built._total

    def _pb_meta(self) -> Any:
        return self._total

    def _pb_set_meta(self, meta: Any) -> None:
        self._total = 0 if meta is None else int(meta)

    @property
    def total_count(self) -> int:
        return self._total

    def get_count(self, value: Any) -> int:
        found = self._lookup(value)
        return 0 if found is MISSING else int(found)

    def has(self, value: Any) -> bool:
        return self._lookup(value) is not MISSING

    def add(self, value: Any, times: int = 1) -> Self:
        value = self._check_key(value)
        if times < 1:
            raise ValueError(f"add counts up by a positive number, not {times}")
        result = self._with(value, self.get_count(value) + times)
        result._total = self._total + times
        return result

    def remove_at(self, value: Any) -> Self:
        """Count `value` down by one; KeyError when it is absent."""
        current = self.get_count(value)
        if current == 0:
            raise KeyError(value)
        result = self._without(value) if current == 1 else self._with(value, current - 1)
        result._total = self._total - 1
        return result

    def update(self, items: Iterable[Any]) -> Self:
        counts: dict[Any, int] = {}
        originals: dict[Any, Any] = {}
        for value in _elements(items):
            value = self._check_key(value)
            skey = hash_key(value)
            originals.setdefault(skey, value)
            counts[skey] = counts.get(skey, 0) + 1
        pairs = [(originals[s], self.get_count(originals[s]) + n) for s, n in counts.items()]
        result = self._bulk(pairs)
        result._total = self._total + sum(counts.values())
        return result

    def _with_counts(self, counts: list[tuple[Any, int]]) -> Self:
        result = self._derive(None)._bulk((value, n) for value, n in counts if n > 0)
        result._total = sum(n for _, n in counts if n > 0)
        return result

    def union(self, other: Iterable[Any]) -> Self:
        theirs = _counts_of(other)
        mine = {hash_key(v): (v, n) for v, n in self._entries()}
        for skey, (value, n) in theirs.items():
            kept = mine.setdefault(skey, (value, 0))
            if n > kept[1]:
                mine[skey] = (kept[0], n)
        return self._with_counts(list(mine.values()))

    def intersection(self, other: Iterable[Any]) -> Self:
        theirs = _counts_of(other)
        kept = []
        for value, n in self._entries():
            other_n = theirs.get(hash_key(value), (value, 0))[1]
            kept.append((value, min(n, other_n)))
        return self._with_counts(kept)

    def difference(self, other: Iterable[Any]) -> Self:
        theirs = _counts_of(other)
        kept = []
        for value, n in self._entries():
            kept.append((value, n - theirs.get(hash_key(value), (value, 0))[1]))
        return self._with_counts(kept)

    def _pb_apply_changes(self, changes: Iterable[tuple[Any, Any]]) -> Self:
        changes = list(changes)
        delta = 0
        for key, value in changes:
            delta += (0 if value is MISSING else int(value)) - self.get_count(key)
        result = super()._pb_apply_changes(changes)
        result._total = self._total + delta
        return result

    def as_iterable(self) -> Iterator[Any]:
        """Distinct elements, in hash order."""
        return (key for key, _ in self._entries())

    def items(self) -> Iterator[tuple[Any, int]]:
        """``(element, count)`` pairs."""
        return self._entries()

    def __iter__(self) -> Iterator[Any]:
        return self.as_iterable()

    def __contains__(self, value: object) -> bool:
        return self.has(value)

    def __eq__(self, other: object) -> bool:
        if type(other) is not CountedSet:
            return NotImplemented
        if self._pb_same_value(other):
            return True
        return (
            self._count == other._count
            and self._total == other._total
            and list(self.items()) == list(other.items())
        )

    __hash__ = None  # type: ignore[assignment]


def _counts_of(items: Iterable[Any]) -> dict[Any, tuple[Any, int]]:
    if isinstance(items, CountedSet):
        return {hash_key(v): (v, n) for v, n in items.items()}
    counts: dict[Any, tuple[Any, int]] = {}
    for value in _elements(items):
        skey = hash_key(value)
        kept = counts.get(skey, (value, 0))
        counts[skey] = (kept[0], kept[1] + 1)
    return counts
