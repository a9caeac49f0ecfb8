"""Between objects and atoms: the object layer's codec extensions.

Extension codes (see `protobase.codec` for the plain ones; never renumber)::

    32  DBObject          [class name, {attribute: value}]
    33  collection        [kind, root node pointer | nil, count, meta]
                          or, with secondary indexes, the same plus
                          [[dotted field, unique, IndexTree(, true)], ...]
                          (the fourth item only for a covering index), where an
                          IndexTree is a 33 of kind "index":
                          ["index", root node pointer | nil, count, nil]
    34  MutableObject     [object id, class name]   (a reference; the state is
                          in the database's object table)
    35  Literal           pointer of the atom holding the str/bytes value
    36  DBObject run      a leaf's values when they are all DBObjects:
                          [[class name, ...], [name index, {attribute: value}, ...]]
                          (one extension per leaf instead of one per object;
                          decodes to the list of objects)
    37  tuple run         a node's keys (or a leaf's values) when they are all tuples:
                          [[item, ...], ...], each inner array one tuple
                          (index trees' ``(value, identity)`` keys, tuple keys)

`AtomWriter` turns the values of one commit into the atoms of its batch:
every node or literal not yet stored in *this* space gets the next index of
the batch; stored ones are referred to by their pointer. `AtomReader`
decodes atoms for one snapshot (a transaction): references to mutable
objects resolve through the snapshot's identity map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from .atoms import AtomPointer, frame_atom
from .codec import decode_with, encode_with
from .collections.base import PersistentCollection
from .collections.btree import Node
from .collections.fields import parse_path, path_text
from .collections.indexes import INDEX_TREE_KIND, Index, IndexSpec, IndexTree
from .errors import CorruptionError, QueryError, TransactionClosedError, ValidationError
from .objects import (
    DBObject,
    Literal,
    MutableObject,
    UnknownMutableObject,
    UnknownObject,
    class_name,
    resolve_class,
)
from .storage.interfaces import CommitBatch

EXT_OBJECT = 32
EXT_COLLECTION = 33
EXT_MUTABLE_REF = 34
EXT_LITERAL = 35
EXT_OBJECT_RUN = 36
EXT_TUPLE_RUN = 37

MIN_RUN = 2
"""A leaf's keys or values, at least this many and all DBObjects (or all tuples),
are stored as one run."""


class _ObjectRun:
    """The DBObject values of one leaf, encoded as one extension (code 36)."""

    __slots__ = ("objects",)

    def __init__(self, objects: list[DBObject]) -> None:
        self.objects = objects


class _TupleRun:
    """The tuple keys or values of one leaf, encoded as one extension (code 37)."""

    __slots__ = ("tuples",)

    def __init__(self, tuples: list[tuple[Any, ...]]) -> None:
        self.tuples = tuples


def _as_run(items: list[Any]) -> Any:
    """`items` as an object or tuple run when they qualify, else as they are."""
    if len(items) < MIN_RUN:
        return items
    kinds = set(map(type, items))
    if kinds == {tuple}:
        return _TupleRun(items)
    if all(isinstance(item, DBObject) for item in items):
        return _ObjectRun(items)
    return items


def _leaf_payload(payload: list[Any]) -> list[Any]:
    """`payload` with a node's keys and a leaf's values given as runs where they qualify."""
    tag = payload[0]
    if tag == 0:
        keys, values = _as_run(payload[1]), _as_run(payload[2])
        if keys is not payload[1] or values is not payload[2]:
            payload = [0, keys, values]
    elif tag == 1:
        values = _as_run(payload[1])
        if values is not payload[1]:
            payload = [1, values]
    elif tag == 2:  # a keyed internal node: its keys (an index's are tuples)
        keys = _as_run(payload[4])
        if keys is not payload[4]:
            payload = [*payload[:4], keys]
    return payload


def _decode_tuple_run(plain: Any) -> list[tuple[Any, ...]]:
    if type(plain) is not list or not all(type(item) is list for item in plain):
        raise ValueError("a tuple run is a list of arrays")
    return list(map(tuple, plain))


def _encode_run(run: _ObjectRun) -> list[Any]:
    names: dict[str, int] = {}
    flat: list[Any] = []
    append = flat.append
    last_kind: type | None = None
    last_index = 0
    for obj in run.objects:
        kind = type(obj)
        if kind is not last_kind or kind is UnknownObject:
            name = class_name(obj)
            last_index = names.setdefault(name, len(names))
            last_kind = kind
        append(last_index)
        append(obj._attrs)
    return [list(names), flat]


def _decode_run(plain: Any) -> list[Any]:
    if type(plain) is not list or len(plain) != 2:
        raise ValueError("an object run is [class names, objects]")
    names, flat = plain
    if type(names) is not list or type(flat) is not list or len(flat) % 2:
        raise ValueError("an object run holds a name list and index/attribute pairs")
    makers: list[Any] = []
    for name in names:
        if type(name) is not str:
            raise ValueError("an object run's class names are str")
        cls = resolve_class(name, DBObject)
        if cls is None:
            makers.append(lambda attrs, name=name: UnknownObject._pb_with_name(name, attrs))
        else:
            makers.append(cls._pb_from_state)
    objects: list[Any] = []
    append = objects.append
    for position in range(0, len(flat), 2):
        attrs = flat[position + 1]
        if type(attrs) is not dict:
            raise ValueError("an object's attributes are a map")
        append(makers[flat[position]](attrs))
    return objects


class SnapshotContext(Protocol):
    """What `AtomReader` needs from the snapshot it decodes for."""

    @property
    def origin(self) -> object: ...

    def load_node(self, pointer: AtomPointer) -> Node: ...

    def load_nodes(self, pointers: Sequence[AtomPointer]) -> list[Node]: ...

    def load_value(self, pointer: AtomPointer) -> Any: ...

    def mutable_for(
        self, oid: bytes, cls: type[MutableObject], stored_name: str
    ) -> MutableObject: ...


def _foreign(what: str) -> ValidationError:
    return ValidationError(
        f"this {what} was read from another ObjectSpace and cannot be stored here: "
        "copy its contents into a new collection of this space"
    )


class AtomWriter:
    """Collects the atoms of one commit attempt.

    Invariants: ``atoms[i]`` is the framed atom with pointer
    ``(transaction_id, i)`` and ``links[i]`` the pointers it contains;
    nothing is marked stored until `mark_saved` runs after the storage
    accepted the batch.
    """

    def __init__(self, origin: object, transaction_id: bytes) -> None:
        self.origin = origin
        self.transaction_id = transaction_id
        self.atoms: list[bytes] = []
        self.links: list[list[AtomPointer]] = []
        self._linking: list[list[AtomPointer]] = [[]]
        """One list per atom being encoded (nested encodings nest); the
        bottom one catches pointers of no atom and is never read."""
        self._assigned: dict[int, AtomPointer] = {}
        self.written: list[tuple[Any, AtomPointer]] = []
        """The nodes and literals given atoms of this batch, with their pointers."""

    def batch(self) -> CommitBatch:
        """The atoms written so far, with their links, as a batch to store."""
        return CommitBatch(self.transaction_id, self.atoms, self.links)

    def is_saved(self, node: Node) -> bool:
        return node.pointer is not None and node.origin is self.origin

    def _reserve(self, obj: Any) -> tuple[AtomPointer, bool]:
        pointer = self._assigned.get(id(obj))
        if pointer is not None:
            return pointer, False
        pointer = AtomPointer(self.transaction_id, len(self.atoms))
        self._assigned[id(obj)] = pointer
        self.written.append((obj, pointer))
        self.atoms.append(b"")
        self.links.append([])
        return pointer, True

    def _encode_atom(self, index: int, make_payload: Any) -> None:
        """Frame atom `index`, noting the pointers its encoding emits."""
        links = self.links[index]
        self._linking.append(links)
        try:
            self.atoms[index] = frame_atom(encode_with(make_payload(), self))
        finally:
            self._linking.pop()

    def node_pointer(self, node: Node) -> AtomPointer:
        if node.pointer is not None:
            if node.origin is self.origin:
                return node.pointer
            raise _foreign("collection")
        if node.origin is not None and node.origin is not self.origin:
            raise _foreign("collection")
        pointer, fresh = self._reserve(node)
        if fresh:
            self._encode_atom(
                pointer.index, lambda: _leaf_payload(node.payload(self._child_pointers))
            )
        return pointer

    def _child_pointers(self, children: list[Any]) -> list[AtomPointer]:
        """The pointers of an internal node's children (new ones written), as its links."""
        node_pointer = self.node_pointer
        pointers = [
            child if type(child) is AtomPointer else node_pointer(child) for child in children
        ]
        self._linking[-1].extend(pointers)
        return pointers

    def write_value(self, value: Any) -> AtomPointer:
        """Store `value` as an atom of its own (the space root)."""
        pointer = AtomPointer(self.transaction_id, len(self.atoms))
        self.atoms.append(b"")
        self.links.append([])
        self._encode_atom(pointer.index, lambda: value)
        return pointer

    def _root_pointer(self, root: Node | AtomPointer | None, loader: Any) -> AtomPointer | None:
        """The pointer a descriptor holds for a tree's root (written if new), as a link."""
        if root is None:
            return None
        if isinstance(root, Node):
            pointer = self.node_pointer(root)
        else:
            if loader.origin is not self.origin:
                raise _foreign("collection")
            pointer = root
        self._linking[-1].append(pointer)
        return pointer

    def encode_extension(self, value: Any) -> tuple[int, Any] | None:
        if type(value) is _ObjectRun:
            return EXT_OBJECT_RUN, _encode_run(value)
        if type(value) is _TupleRun:
            return EXT_TUPLE_RUN, list(map(list, value.tuples))
        if isinstance(value, DBObject):
            return EXT_OBJECT, [class_name(value), value._attrs]
        if isinstance(value, PersistentCollection):
            pointer = self._root_pointer(value._root, value._loader)
            descriptor = [value._kind, pointer, value._count, value._pb_meta()]
            if value._indexes:
                descriptor.append(
                    [
                        [path_text(index.spec.path), index.spec.unique, index.tree]
                        + ([True] if index.spec.covering else [])
                        for index in value._indexes
                    ]
                )
            return EXT_COLLECTION, descriptor
        if isinstance(value, IndexTree):
            pointer = self._root_pointer(value.root, value.loader)
            return EXT_COLLECTION, [INDEX_TREE_KIND, pointer, value.count, None]
        if isinstance(value, MutableObject):
            return EXT_MUTABLE_REF, [value._pb_oid, class_name(value)]
        if isinstance(value, Literal):
            if value._pointer is not None and value._origin is self.origin:
                pointer = value._pointer
            else:
                pointer, fresh = self._reserve(value)
                if fresh:
                    self._encode_atom(pointer.index, lambda: value.value)
            self._linking[-1].append(pointer)
            return EXT_LITERAL, pointer
        return None

    def decode_extension(self, code: int, plain: Any) -> Any:
        raise AssertionError("AtomWriter does not decode")

    def mark_saved(self) -> None:
        """Record the pointers of a batch the storage accepted."""
        # The origin is set before the pointer: a thread encoding the same node
        # meanwhile (outside the commit lock) never sees a pointer without it.
        for obj, pointer in self.written:
            if isinstance(obj, Node):
                obj.origin = self.origin
                obj.pointer = pointer
                obj.edit = None
            elif isinstance(obj, Literal):
                obj._origin = self.origin
                obj._pointer = pointer


def _decode_indexes(stored: Any) -> tuple[Index, ...]:
    if type(stored) is not list or not stored:
        raise ValueError("collection indexes are a non-empty list")
    indexes = []
    for entry in stored:
        if type(entry) is not list or len(entry) not in (3, 4):
            raise ValueError("an index is [field, unique, tree] or [field, unique, tree, covering]")
        field, unique, tree = entry[:3]
        covering = entry[3] if len(entry) == 4 else False
        if (
            type(field) is not str
            or type(unique) is not bool
            or type(tree) is not IndexTree
            or covering is not (len(entry) == 4)
        ):
            raise ValueError(f"malformed index {entry!r}")
        try:
            path = parse_path(field)
        except QueryError as exc:
            raise ValueError(str(exc)) from exc
        indexes.append(Index(IndexSpec(path, unique, covering), tree))
    return tuple(indexes)


class _ClosedContext:
    """The context of a released reader: every read is refused."""

    origin = None

    def _refuse(self, *args: Any) -> Any:
        raise TransactionClosedError("this transaction has ended; read the data again")

    def load_node(self, *args: Any) -> Any:
        return self._refuse()

    def load_nodes(self, *args: Any) -> Any:
        return self._refuse()

    def load_value(self, *args: Any) -> Any:
        return self._refuse()

    def mutable_for(self, *args: Any) -> Any:
        return self._refuse()


_CLOSED_CONTEXT: Any = _ClosedContext()


class AtomReader:
    """Decodes the atoms of one snapshot."""

    def __init__(self, context: SnapshotContext) -> None:
        self._context = context

    def decode(self, payload: bytes) -> Any:
        return decode_with(payload, self)

    def release(self) -> None:
        """Forget the snapshot (it refers to this reader): no cycle outlives it."""
        self._context = _CLOSED_CONTEXT

    def encode_extension(self, value: Any) -> tuple[int, Any] | None:
        return None

    def decode_extension(self, code: int, plain: Any) -> Any:
        try:
            if code == EXT_OBJECT:
                name, attrs = plain
                if type(name) is not str or type(attrs) is not dict:
                    raise ValueError("object extension needs a name and an attribute map")
                object_class = resolve_class(name, DBObject)
                if object_class is None:
                    return UnknownObject._pb_with_name(name, attrs)
                return object_class._pb_from_state(attrs)
            if code == EXT_OBJECT_RUN:
                return _decode_run(plain)
            if code == EXT_TUPLE_RUN:
                return _decode_tuple_run(plain)
            if code == EXT_COLLECTION:
                if type(plain) is not list or len(plain) not in (4, 5):
                    raise ValueError("a collection descriptor has 4 or 5 fields")
                kind, root, count, meta = plain[:4]
                collection_class = PersistentCollection._registry.get(kind)
                if collection_class is None and kind != INDEX_TREE_KIND:
                    raise ValueError(f"unknown collection kind {kind!r}")
                if root is not None and type(root) is not AtomPointer:
                    raise ValueError("collection root is not a pointer")
                if collection_class is None:  # the tree of a secondary index
                    return IndexTree(root, int(count), self._context)
                indexes = _decode_indexes(plain[4]) if len(plain) == 5 else ()
                return collection_class._pb_from_descriptor(
                    root, int(count), meta, self._context, indexes
                )
            if code == EXT_MUTABLE_REF:
                oid, name = plain
                if type(oid) is not bytes or type(name) is not str:
                    raise ValueError("mutable object reference needs an id and a class name")
                mutable_class = resolve_class(name, MutableObject) or UnknownMutableObject
                return self._context.mutable_for(oid, mutable_class, name)
            if code == EXT_LITERAL:
                if type(plain) is not AtomPointer:
                    raise ValueError("literal extension does not hold a pointer")
                return Literal._pb_stored(plain, self._context.load_value, self._context.origin)
        except (TypeError, ValueError) as exc:
            raise CorruptionError(f"malformed object-layer extension {code}: {exc}") from exc
        raise CorruptionError(f"unknown object-layer extension code {code}")
