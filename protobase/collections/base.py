"""What every persistent collection shares.

A collection value is a tree root (`btree.Node`, or the `AtomPointer` of a
stored one), an entry count, and the loader (the transaction) that reads its
stored nodes. Values are immutable: every mutator returns a new collection
that shares the untouched nodes with the old one.

In an atom, a collection is stored inline as its *descriptor*:
``[kind, root pointer or nil, count, meta]``, followed by its indexes when it
has any (see `collections.indexes`); its nodes are atoms of their own.

Only `Indexable` kinds (List, Set, Dictionary) can have secondary indexes and
carry a slot for them; every kind reads its indexes as ``_indexes``, which
for the others is the empty default of `PersistentCollection`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from ..atoms import AtomPointer
from ..errors import QueryError
from ..values import Storable, storable
from .btree import DETACHED, Node, NodeLoader, same_node
from .fields import Path, parse_path, path_text
from .indexes import Index, IndexSpec

if TYPE_CHECKING:
    from typing import Self


class PersistentCollection(Storable):
    """Base of List, Dictionary, HashDictionary, Set and CountedSet."""

    __slots__ = ("_count", "_loader", "_root")
    _kind: ClassVar[str]
    _registry: ClassVar[dict[str, type[PersistentCollection]]] = {}

    _root: Node | AtomPointer | None
    _loader: NodeLoader
    _count: int
    _indexes: tuple[Index, ...] = ()
    """The secondary indexes: none, unless the collection is `Indexable`."""
    _query_plan_factory: ClassVar[Callable[[PersistentCollection], Any] | None] = None
    """Set by protobase.query (a layer above) so that `as_query_plan` can build a plan."""

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
        cls,
        root: AtomPointer | None,
        count: int,
        meta: Any,
        loader: NodeLoader,
        indexes: tuple[Index, ...] = (),
    ) -> Self:
        """The collection a stored descriptor describes (ValueError if it cannot be one)."""
        if indexes:
            raise ValueError(f"a {cls._kind!r} collection has no secondary indexes")
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
        return self._copy_with(root)

    def _copy_with(self, root: Node | AtomPointer | None, indexes: tuple[Index, ...] = ()) -> Self:
        """This collection's kind, loader and meta over `root`, with `indexes`."""
        if indexes:
            raise TypeError(f"{type(self).__name__} has no secondary indexes")
        obj = self.__class__.__new__(self.__class__)
        obj._root = root
        if root is None:
            obj._count = 0
        elif isinstance(root, Node):
            obj._count = root.total
        else:  # a stored root, not loaded: the count is known without loading it
            obj._count = self._count
        obj._loader = self._loader
        obj._pb_set_meta(self._pb_meta())
        return obj

    # -- secondary indexes, as every kind reads them (see Indexable) --------------

    def _pb_index_specs(self) -> tuple[IndexSpec, ...]:
        return tuple(index.spec for index in self._indexes)

    def _pb_index_for(self, path: Path) -> Index | None:
        for index in self._indexes:
            if index.spec.path == path:
                return index
        return None

    def _pb_with_index_specs(self, specs: tuple[IndexSpec, ...]) -> Self:
        """This collection with exactly the indexes `specs` (none: only Indexable has any)."""
        if specs:
            raise TypeError(f"{type(self).__name__} has no secondary indexes")
        return self

    @property
    def indexed_fields(self) -> list[str]:
        """The dotted fields this collection has indexes on, in creation order."""
        return [path_text(index.spec.path) for index in self._indexes]

    def as_query_plan(self) -> Any:
        """A query plan that reads this collection's rows (see protobase.query)."""
        factory = PersistentCollection._query_plan_factory
        if factory is None:
            raise QueryError("protobase.query is not loaded; import protobase first")
        return factory(self)

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
            return self._root is other._root and self._pb_index_specs() == other._pb_index_specs()
        return (
            same_node(self._root, other._root)
            and self._pb_meta() == other._pb_meta()
            and self._pb_index_specs() == other._pb_index_specs()
        )

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


class Indexable(PersistentCollection):
    """A collection that can have secondary indexes: List, Set and Dictionary.

    It keeps them exact through every change (see collections.indexes).
    """

    __slots__ = ("_indexes",)
    _indexes: tuple[Index, ...]

    def __init__(self) -> None:
        super().__init__()
        self._indexes = ()

    @classmethod
    def _pb_from_descriptor(
        cls,
        root: AtomPointer | None,
        count: int,
        meta: Any,
        loader: NodeLoader,
        indexes: tuple[Index, ...] = (),
    ) -> Self:
        obj = super()._pb_from_descriptor(root, count, meta, loader)
        obj._indexes = indexes
        return obj

    def _copy_with(self, root: Node | AtomPointer | None, indexes: tuple[Index, ...] = ()) -> Self:
        obj = super()._copy_with(root)
        obj._indexes = indexes
        return obj

    def _derive(self, root: Node | None) -> Self:
        """A collection of the same kind (and loader) over `root`, its indexes kept exact."""
        obj = self._copy_with(root)
        if self._indexes:
            obj._indexes = self._pb_maintained_indexes(obj)
        return obj

    _pb_covering_allowed: ClassVar[bool] = True
    """False where an identity may name several rows (a Set's hash)."""

    def _pb_index_rows(self) -> Iterator[tuple[Any, Any]]:
        """Every row as ``(identity, row)``, for building an index."""
        raise NotImplementedError

    def _pb_maintained_indexes(self, new: Self) -> tuple[Index, ...]:
        """The indexes of `new`, derived from this collection's; default: rebuilt."""
        return tuple(Index.build(index.spec, new._pb_index_rows()) for index in self._indexes)

    def _pb_with_index_specs(self, specs: tuple[IndexSpec, ...]) -> Self:
        """This collection with exactly the indexes `specs` (kept ones are reused)."""
        kept = {index.spec: index for index in self._indexes}
        indexes = tuple(
            kept[spec] if spec in kept else Index.build(spec, self._pb_index_rows())
            for spec in specs
        )
        return self._copy_with(self._root, indexes)

    def add_index(self, field: str, *, unique: bool = False, covering: bool = False) -> Self:
        """This collection with an index on `field` of its rows (see docs/queries.md).

        The rows are a Dictionary's values, a List's items, a Set's elements.
        A `covering` index also keeps each row in its entry, so that a query
        it answers reads no row from the collection (a range of 100 rows
        reads a few index nodes instead of 100 paths), at the price of a
        second copy of every row and of writing it on every change (List and
        Dictionary only).

        Raises:
            UniqueConstraintError: `unique` and two rows share the field's value.
            ValidationError: the field reads through a MutableObject.
            QueryError: the field is already indexed differently (`unique`,
                `covering`), or `covering` on a Set.
        """
        path = parse_path(field)
        spec = IndexSpec(path, bool(unique), bool(covering))
        if spec.covering and not self._pb_covering_allowed:
            raise QueryError(
                f"a {type(self).__name__}'s index finds its elements by their hash; "
                "covering=True is for List and Dictionary"
            )
        current = self._pb_index_for(path)
        if current is not None:
            if current.spec == spec:
                return self
            raise QueryError(
                f"{type(self).__name__} already has an {current.spec.describe()}; "
                "remove_index it first to change unique or covering"
            )
        return self._pb_with_index_specs((*self._pb_index_specs(), spec))

    def remove_index(self, field: str) -> Self:
        """This collection without its index on `field`; QueryError when there is none."""
        path = parse_path(field)
        if self._pb_index_for(path) is None:
            raise QueryError(
                f"{type(self).__name__} has no index on {path_text(path)!r}; "
                f"its indexes: {self.indexed_fields or 'none'}"
            )
        return self._pb_with_index_specs(
            tuple(spec for spec in self._pb_index_specs() if spec.path != path)
        )
