"""List: an indexed, persistent sequence (a counted B+-tree).

get, set, insert and remove at any position are O(log n); negative positions
count from the end, as in Python; a position out of range raises IndexError.
``head(n)`` is the first n items, ``tail(n)`` the items from position n on
(ProtoBase's historical meaning), ``slice(a, b)`` follows Python slicing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, overload

from ..atoms import AtomPointer
from .base import Indexable, PersistentCollection
from .btree import (
    PositionalNode,
    as_positional,
    build_positional,
    positional_get,
    positional_insert,
    positional_remove,
    positional_set,
    positional_values,
)

if TYPE_CHECKING:
    from typing import Self


class List(Indexable):
    """An immutable list value; every mutator returns the new list."""

    __slots__ = ()
    _kind = "list"
    _root: PositionalNode | AtomPointer | None

    def __init__(self, items: Iterable[Any] = ()) -> None:
        super().__init__()
        values = [self._check(value, f"List item {i}") for i, value in enumerate(items)]
        self._root = build_positional(values)
        self._count = len(values)

    def _position(self, index: int, *, inserting: bool = False) -> int:
        if type(index) is not int and not isinstance(index, int):
            raise TypeError(f"list positions are integers, not {type(index).__name__}")
        size = self._count + (1 if inserting else 0)
        position = index + self._count if index < 0 else index
        if not 0 <= position < size:
            raise IndexError(f"list position {index} out of range for a List of {self._count}")
        return position

    # -- reading -----------------------------------------------------------------

    def _node(self) -> PositionalNode | None:
        """The root node, loaded on first use."""
        root = self._root
        if isinstance(root, AtomPointer):
            root = self._root = as_positional(self._loader.load_node(root))
        return root

    def get_at(self, index: int) -> Any:
        """The item at `index` (negative counts from the end); IndexError if absent."""
        return positional_get(self._node(), self._loader, self._position(index))

    def as_iterable(self) -> Iterator[Any]:
        return positional_values(self._node(), self._loader)

    def __iter__(self) -> Iterator[Any]:
        return self.as_iterable()

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> List: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            if index.step not in (None, 1):
                stepped = List(list(self.as_iterable())[index])
                return stepped._pb_with_index_specs(self._pb_index_specs())
            return self.slice(index.start, index.stop)
        return self.get_at(index)

    def __contains__(self, value: object) -> bool:
        return any(item == value for item in self.as_iterable())

    # -- changing ----------------------------------------------------------------

    def set_at(self, index: int, value: Any) -> Self:
        value = self._check(value, f"List item {index}")
        position = self._position(index)
        root = positional_set(self._node(), self._loader, position, value)
        if not self._indexes:
            return self._derive(root)
        old = self.get_at(position)
        return self._derive_changing(root, [(position, old)], [(position, value)])

    def insert_at(self, index: int, value: Any) -> Self:
        """Insert so that `value` ends at `index`; ``insert_at(len(l), v)`` appends."""
        value = self._check(value, f"List item {index}")
        position = self._position(index, inserting=index >= 0)
        root = positional_insert(self._node(), self._loader, position, value)
        if self._indexes and position == self._count:  # an append shifts no position
            return self._derive_changing(root, [], [(position, value)])
        return self._derive(root)

    def remove_at(self, index: int) -> Self:
        position = self._position(index)
        root, removed = positional_remove(self._node(), self._loader, position)
        if self._indexes and position == self._count - 1:  # the last shifts no position
            return self._derive_changing(root, [(position, removed)], [])
        return self._derive(root)

    # -- secondary indexes: the identity of a row is its position -----------------
    #
    # Changes at the end (set_at anywhere, append, remove the last, extend,
    # head) update the indexes entry by entry. Anything that shifts positions
    # (insert or remove before the end, tail, slice) rebuilds them: O(n).

    def _pb_index_rows(self) -> Iterator[tuple[Any, Any]]:
        return enumerate(self.as_iterable())

    def _pb_fetch(self, order_keys: list[Any], identities: list[Any]) -> Iterator[Any]:
        """The items at positions `identities` (ascending)."""
        root, loader = self._node(), self._loader
        for position in identities:
            yield positional_get(root, loader, position)

    def _derive_changing(
        self,
        root: PositionalNode | None,
        removed: list[tuple[int, Any]],
        added: list[tuple[int, Any]],
    ) -> Self:
        indexes = tuple(index.changed(removed, added) for index in self._indexes)
        return self._copy_with(root, indexes)

    def append_last(self, value: Any) -> Self:
        return self.insert_at(self._count, value)

    def append_first(self, value: Any) -> Self:
        return self.insert_at(0, value)

    def remove_first(self) -> Self:
        if not self._count:
            raise IndexError("remove_first from an empty List")
        return self.remove_at(0)

    def remove_last(self) -> Self:
        if not self._count:
            raise IndexError("remove_last from an empty List")
        return self.remove_at(-1)

    def extend(self, items: Iterable[Any]) -> Self:
        """Append every item; O(k log n) with no per-item path copies."""
        source = items.as_iterable() if isinstance(items, PersistentCollection) else items
        values = [
            self._check(value, f"List item {self._count + offset}")
            for offset, value in enumerate(source)
        ]
        if not values:
            return self
        if not self._count:
            root = build_positional(values)
        else:
            edit = object()
            root = self._node()
            for value in values:
                assert root is not None
                root = positional_insert(root, self._loader, root.total, value, edit)
        if self._indexes:
            start = self._count
            return self._derive_changing(root, [], list(enumerate(values, start)))
        return self._derive(root)

    def head(self, count: int) -> Self:
        """The first `count` items."""
        return self.slice(0, count)

    def tail(self, start: int) -> Self:
        """The items from position `start` to the end."""
        return self.slice(start, None)

    def slice(self, start: int | None, stop: int | None) -> Self:
        """Items ``[start:stop]`` with Python's slicing rules."""
        first, last, _ = slice(start, stop).indices(self._count)
        if first == 0 and last >= self._count:
            return self
        values = list(positional_values(self._node(), self._loader, first, last))
        root = build_positional(values)
        if self._indexes and first == 0:  # a head: only the dropped tail leaves
            dropped = positional_values(self._node(), self._loader, len(values), self._count)
            return self._derive_changing(root, list(enumerate(dropped, len(values))), [])
        return self._derive(root)
