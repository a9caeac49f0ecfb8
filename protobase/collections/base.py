"""What every persistent collection shares.

A collection value is a tree root (`btree.Node`, or the `AtomPointer` of a
stored one), an entry count, and the loader (the transaction) that reads its
stored nodes. Values are immutable: every mutator returns a new collection
that shares the untouched nodes with the old one.

In an atom, a collection is stored inline as its *descriptor*:
``[kind, root pointer or nil, count, meta]``; its nodes are atoms of their own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ..atoms import AtomPointer
from ..errors import TransactionClosedError
from ..values import Storable, storable
from .btree import Node, NodeLoader, same_node

if TYPE_CHECKING:
    from typing import Self


class DetachedLoader:
    """The loader of a collection built outside any transaction: it has no stored nodes."""

    def load_node(self, pointer: AtomPointer) -> Node:
        raise TransactionClosedError(
            f"node {pointer} cannot be loaded: this collection is not attached to a "
            "transaction; read it again through a transaction"
        )

    def load_nodes(self, pointers: Sequence[AtomPointer]) -> list[Node]:
        return [self.load_node(p) for p in pointers]


DETACHED = DetachedLoader()


class PersistentCollection(Storable):
    """Base of List, Dictionary, HashDictionary, Set and CountedSet."""

    __slots__ = ("_count", "_loader", "_root")
    _kind: ClassVar[str]
    _registry: ClassVar[dict[str, type[PersistentCollection]]] = {}

    _root: Node | AtomPointer | None
    _loader: NodeLoader
    _count: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("_kind")
        if kind is not None:
            PersistentCollection._registry[kind] = cls

    def __init__(self) -> None:
        self._root = None
        self._loader = DETACHED
        self._count = 0

    # -- construction ----------------------------------------------------------

    @classmethod
    def _pb_from_descriptor(
        cls, root: AtomPointer | None, count: int, meta: Any, loader: NodeLoader
    ) -> Self:
        obj = cls.__new__(cls)
        obj._root = root
        obj._count = count
        obj._loader = loader
        obj._pb_set_meta(meta)
        return obj

    def _pb_meta(self) -> Any:
        """Extra stored state of a collection kind (None for most)."""
        return None

    def _pb_set_meta(self, meta: Any) -> None:
        """Restore what `_pb_meta` returned."""

    def _derive(self, root: Node | None) -> Self:
        """A collection of the same kind (and loader) over `root`."""
        obj = self.__class__.__new__(self.__class__)
        obj._root = root
        obj._count = 0 if root is None else root.total
        obj._loader = self._loader
        obj._pb_set_meta(self._pb_meta())
        return obj

    def _node(self) -> Node | None:
        root = self._root
        if type(root) is AtomPointer:
            root = self._loader.load_node(root)
            self._root = root
        return root  # type: ignore[return-value]

    @staticmethod
    def _check(value: Any, where: str) -> Any:
        """`value` validated for storing, plain containers copied (see values.storable)."""
        return storable(value, where)

    # -- size and comparison ---------------------------------------------------

    @property
    def count(self) -> int:
        """The number of entries (elements, keys)."""
        return self._count

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def as_iterable(self) -> Iterator[Any]:
        raise NotImplementedError

    def _pb_same_value(self, other: Any) -> bool:
        if type(other) is not type(self) or self._count != other._count:
            return False
        if self._root is None or other._root is None:
            return self._root is other._root
        return same_node(self._root, other._root) and self._pb_meta() == other._pb_meta()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        if self._pb_same_value(other):
            return True
        return len(self) == len(other) and list(self.as_iterable()) == list(other.as_iterable())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = []
        for position, item in enumerate(self.as_iterable()):
            if position == 10:
                shown.append("...")
                break
            shown.append(repr(item))
        return f"{type(self).__name__}([{', '.join(shown)}], count={self._count})"
