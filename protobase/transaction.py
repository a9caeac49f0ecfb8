"""Snapshots and transactions: snapshot isolation with optimistic, merging commits.

Layout of a space in atoms (the root pointer of the storage names the first)::

    space root atom   {"format": 1, "databases": Dictionary[name -> database state]}
    database state    {"roots": Dictionary[root name -> value],
                       "objects": HashDictionary[object id -> (class name, attributes)]}

A `Transaction` reads one snapshot (the root at its start) and collects its
writes privately. `commit` hands the space's `Committer` the database table
as the transaction wants it; the committer writes it with a compare-and-set
on the root version, rebasing it (`protobase.merge`) when the root moved
meanwhile. A conflict raises `ConflictError` and writes nothing.

Invariants:

- Inside one transaction an object id maps to one Python object.
- A node decoded for a transaction is private to it when it holds anything
  that reads through the transaction (a collection, a MutableObject, a
  Literal) or that a reader could change (a list or dict value). Every
  other node is immutable data and is shared by all the space's
  transactions through its `NodeCache` (see `shareable`); the raw atom
  bytes are shared through the space's atom cache.
- After `commit` or `abort` (successful or not) the transaction and every
  object read through it refuse further use with `TransactionClosedError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .atoms import AtomPointer
from .collections import CountedSet, Dictionary, HashDictionary, List, Set
from .collections.base import PersistentCollection
from .collections.btree import MISSING, KeyedLeaf, Node, PositionalLeaf, iter_nodes, keyed_get
from .committer import SPACE_FORMAT, SpaceChange
from .errors import (
    CorruptionError,
    DatabaseNotFoundError,
    ReadOnlyTransactionError,
    TransactionClosedError,
    ValidationError,
)
from .objects import (
    DBObject,
    MutableObject,
    ObjectContext,
    UnknownMutableObject,
    class_name,
    unbound_objects,
)
from .query import Query
from .registry import registry
from .serialization import AtomReader
from .sharing import NodeTemplate, shared_form
from .storage.interfaces import DatabaseReads, RootRef
from .values import storable

if TYPE_CHECKING:
    from .space import Database, ObjectSpace


class Snapshot:
    """A consistent, read-only view of a space at one root version."""

    def __init__(self, space: ObjectSpace, ref: RootRef) -> None:
        self._space = space
        self._ref = ref
        self._reader = AtomReader(self)
        self._nodes: dict[AtomPointer, Node] = {}
        self._shared = space.node_cache
        self._identity: dict[bytes, MutableObject] = {}
        self._pinned = [ref.version]
        self._closed = False

    @property
    def origin(self) -> object:
        return self._space.origin

    @property
    def closed(self) -> bool:
        """True once the snapshot (or transaction) has ended."""
        return self._closed

    @property
    def ref(self) -> RootRef:
        """The root this snapshot reads."""
        return self._ref

    @property
    def root_version(self) -> int:
        """The commit version this snapshot reads."""
        return self._ref.version

    def _check_open(self) -> None:
        if self._closed:
            raise TransactionClosedError(
                "this transaction has ended (committed or aborted); "
                "start a new one with db.new_transaction() and read the data again"
            )

    # -- loading (NodeLoader and SnapshotContext) --------------------------------

    def load_node(self, pointer: AtomPointer) -> Node:
        self._check_open()
        node = self._nodes.get(pointer)
        if node is None:
            node = self._from_shared(pointer)
            if node is None:
                node = self._decode_node(pointer, self._space.read_payloads([pointer])[0])
            self._nodes[pointer] = node
        return node

    def load_nodes(self, pointers: Sequence[AtomPointer]) -> list[Node]:
        self._check_open()
        nodes = self._nodes
        missing = []
        for pointer in pointers:
            if pointer not in nodes:
                node = self._from_shared(pointer)
                if node is None:
                    missing.append(pointer)
                else:
                    nodes[pointer] = node
        if missing:
            for pointer, payload in zip(missing, self._space.read_payloads(missing), strict=True):
                nodes[pointer] = self._decode_node(pointer, payload)
        return [nodes[p] for p in pointers]

    def _from_shared(self, pointer: AtomPointer) -> Node | None:
        """The node at `pointer` from the space's shared cache (a template copied), or None."""
        kept = self._shared.get(pointer)
        return kept.instantiate(self) if type(kept) is NodeTemplate else kept

    def _decode_node(self, pointer: AtomPointer, payload: bytes) -> Node:
        """Decode a node; one that holds only immutable plain data is shared."""
        generation = registry.generation
        node = Node.from_payload(self._reader.decode(payload), pointer, self.origin)
        kept = shared_form(node)
        if kept is not None:
            self._shared.put(pointer, kept, len(payload), generation)
        return node

    def load_value(self, pointer: AtomPointer) -> Any:
        self._check_open()
        return self._reader.decode(self._space.read_payloads([pointer])[0])

    def mutable_for(self, oid: bytes, cls: type[MutableObject], stored_name: str) -> MutableObject:
        obj = self._identity.get(oid)
        if obj is None:
            obj = cls._pb_ghost(oid, self._object_context())
            if issubclass(cls, UnknownMutableObject):
                object.__setattr__(obj, "_pb_stored_name", stored_name)
            self._identity[oid] = obj
        return obj

    def _object_context(self) -> ObjectContext:
        return _SNAPSHOT_OBJECTS

    def _release(self) -> None:
        """Drop what refers back to this snapshot (collections bound to it), at close."""

    def hold(self, ref: RootRef) -> RootRef:
        """Adopt a pin of `ref`'s version (from `Committer.pinned_root`); released at close."""
        self._pinned.append(ref.version)
        return ref

    # -- the space layout ----------------------------------------------------------

    def databases_at(self, ref: RootRef) -> Dictionary:
        """The database table of the space root `ref` (empty for an empty space)."""
        if ref.pointer is None:
            return Dictionary()
        root = self.load_value(ref.pointer)
        if type(root) is not dict or root.get("format") != SPACE_FORMAT:
            found = root.get("format") if type(root) is dict else type(root).__name__
            raise CorruptionError(
                f"space root {ref.pointer} has format {found!r}; this ProtoBase reads format "
                f"{SPACE_FORMAT}"
            )
        databases = root.get("databases")
        if not isinstance(databases, Dictionary):
            raise CorruptionError(f"space root {ref.pointer} holds no database dictionary")
        return databases

    def _database_state(
        self, databases: Dictionary, name: str
    ) -> tuple[Dictionary, HashDictionary]:
        state = databases.get_at(name)
        if state is None:
            raise DatabaseNotFoundError(
                f"database {name!r} does not exist; create it with space.new_database({name!r})"
            )
        roots, objects = state.get("roots"), state.get("objects")
        if not isinstance(roots, Dictionary) or not isinstance(objects, HashDictionary):
            raise CorruptionError(f"database {name!r} has a malformed state record")
        return roots, objects

    def close(self) -> None:
        """End the snapshot: free its nodes and unpin its versions. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._nodes.clear()
        self._reader.release()
        self._identity.clear()
        self._release()
        for version in self._pinned:
            self._space.committer.unpin(version)
        self._pinned = []


class _SnapshotObjects:
    """The context of MutableObjects a bare snapshot decodes (a rebase does).

    They are references, compared by object id; their state is only read
    through a database transaction.
    """

    def load_mutable_state(self, obj: MutableObject) -> dict[str, Any]:
        raise TransactionClosedError("mutable objects are read through a database transaction")

    def note_mutation(self, obj: MutableObject) -> None:
        raise TransactionClosedError("mutable objects are changed through a database transaction")


_SNAPSHOT_OBJECTS = _SnapshotObjects()


_CLOSED_ROOTS = Dictionary()
_CLOSED_OBJECTS = HashDictionary()


class Transaction(Snapshot, ObjectContext):
    """One unit of work on a database, isolated on the snapshot it started from."""

    def __init__(self, database: Database, ref: RootRef, read_only: bool = False) -> None:
        super().__init__(database.space, ref)
        self._database = database
        self._read_only = read_only
        layouts = database.space.layouts
        layout = layouts.get((ref.pointer, database.name))
        if layout is None:
            self._base_databases = self.databases_at(ref)
            self._base_roots, self._base_objects = self._database_state(
                self._base_databases, database.name
            )
            if ref.pointer is not None:
                layouts.remember(
                    (ref.pointer, database.name),
                    (self._base_databases, self._base_roots, self._base_objects),
                )
        else:
            databases, roots, objects = layout
            self._base_databases = Dictionary._pb_from_descriptor(
                databases[0], databases[1], None, self
            )
            self._base_roots = Dictionary._pb_from_descriptor(roots[0], roots[1], None, self)
            self._base_objects = HashDictionary._pb_from_descriptor(
                objects[0], objects[1], None, self
            )
        self._roots = self._base_roots
        self._dirty: dict[bytes, MutableObject] = {}
        self._new: dict[bytes, MutableObject] = {}
        self._read_current_oids: set[bytes] = set()
        self._read_current_roots: set[str] = set()
        self.committed_root: RootRef | None = None

    @property
    def database(self) -> Database:
        return self._database

    @property
    def read_only(self) -> bool:
        return self._read_only

    def _object_context(self) -> ObjectContext:
        return self

    def _release(self) -> None:
        # The collections read here hold this transaction as their loader: dropping
        # them lets reference counting free the transaction, without the cycle GC.
        self._base_databases = self._base_roots = self._roots = _CLOSED_ROOTS
        self._base_objects = _CLOSED_OBJECTS
        self._dirty.clear()
        self._new.clear()

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise ReadOnlyTransactionError(
                "this transaction is read-only; write in a transaction from db.new_transaction()"
            )

    # -- root objects ----------------------------------------------------------------

    def get_root_object(self, name: str) -> Any:
        """The value stored under root `name`, or None when unset."""
        self._check_open()
        return self._roots.get_at(name)

    def set_root_object(self, name: object, value: Any) -> None:
        """Store `value` under root `name` (visible to others after commit).

        `name` is typed `object` so that a wrong type reaches the ValidationError
        below in the compiled form too (which checks declared argument types).
        """
        self._check_writable()
        if type(name) is not str:
            raise ValidationError(f"root names are str, not {type(name).__name__}")
        self._roots = self._roots.set_at(name, storable(value, f"root object {name!r}"))

    def remove_root_object(self, name: str) -> None:
        """Remove root `name`; KeyError when it is not set."""
        self._check_writable()
        self._roots = self._roots.remove_at(name)

    def root_names(self) -> list[str]:
        self._check_open()
        return list(self._roots.keys())

    def read_current(self, item: Any) -> Any:
        """Validate at commit that `item` did not change since this snapshot.

        `item` is a MutableObject or a root name. When a concurrent commit
        changed it, this transaction's commit raises `ConflictError`
        (serializable for that read). Returns `item`.
        """
        self._check_open()
        if isinstance(item, MutableObject):
            self._read_current_oids.add(item._pb_oid)
        elif type(item) is str:
            self._read_current_roots.add(item)
        else:
            raise ValidationError(
                f"read_current takes a MutableObject or a root name, not {type(item).__name__}"
            )
        return item

    # -- new collections ---------------------------------------------------------------

    def _attach(self, collection: PersistentCollection) -> Any:
        self._check_open()
        collection._loader = self
        return collection

    def new_list(self) -> List:
        return self._attach(List())

    def new_dictionary(self) -> Dictionary:
        return self._attach(Dictionary())

    def new_hash_dictionary(self) -> HashDictionary:
        return self._attach(HashDictionary())

    def new_set(self) -> Set:
        return self._attach(Set())

    def new_hash_set(self) -> Set:
        """The same as `new_set` (the public API promises one type for both)."""
        return self.new_set()

    def query(self, source: Any) -> Query:
        """A fluent query over a collection, a plan or a list of rows (docs/queries.md).

        It reads through this transaction, so run it before the transaction ends.
        """
        self._check_open()
        return Query(source)

    def new_counted_set(self) -> CountedSet:
        return self._attach(CountedSet())

    # -- mutable objects (ObjectContext) ------------------------------------------------

    def load_mutable_state(self, obj: MutableObject) -> dict[str, Any]:
        self._check_open()
        keyfn = HashDictionary._keyfn
        stored = keyed_get(self._base_objects._node(), self, keyfn(obj._pb_oid), keyfn)
        if stored is MISSING:
            raise CorruptionError(
                f"object {obj._pb_oid.hex()} is referenced but not in database "
                f"{self._database.name!r}"
            )
        _, attrs = stored
        return dict(attrs)

    def note_mutation(self, obj: MutableObject) -> None:
        self._check_writable()
        self._dirty[obj._pb_oid] = obj

    # -- ending --------------------------------------------------------------------------

    def abort(self) -> None:
        """Discard every change. Idempotent."""
        self._unbind_new()
        self.close()

    def commit(self) -> RootRef | None:
        """Make this transaction's changes durable and visible.

        Returns:
            The new root, or None when there was nothing to write.

        Raises:
            ConflictError: a concurrent commit changed the same key, element,
                object or List; nothing was written.
            TransactionClosedError: the transaction had already ended.
        """
        self._check_open()
        try:
            if self._read_only:
                return None
            self._collect_new()
            if self._roots._pb_same_value(self._base_roots) and not self._dirty:
                return None
            change = self._change()
            ref = self._space.committer.commit(change, self)
            self.committed_root = ref
            written = change.written_databases
            if (
                written is not None
                and ref.pointer is not None
                and change.written_root == ref.pointer
            ):
                state = written.get_at(self._database.name)
                self._space.layouts.remember(
                    (ref.pointer, self._database.name),
                    (written, state["roots"], state["objects"]),
                )
            return ref
        except BaseException:
            self._unbind_new()
            raise
        finally:
            self.close()

    def _changed_objects(self) -> HashDictionary:
        if not self._dirty:
            return self._base_objects
        changes = [(oid, (class_name(obj), obj._pb_state())) for oid, obj in self._dirty.items()]
        return self._base_objects._pb_apply_changes(changes)

    def _change(self) -> SpaceChange:
        state = {"roots": self._roots, "objects": self._changed_objects()}
        reads = {}
        if self._read_current_roots or self._read_current_oids:
            reads[self._database.name] = DatabaseReads(
                frozenset(self._read_current_roots), frozenset(self._read_current_oids)
            )
        return SpaceChange(
            self._ref,
            self._base_databases,
            # Built here of stored collections: nothing to check or copy (set_at would).
            self._base_databases._with(self._database.name, state),
            reads,
        )

    # -- finding objects created in this transaction --------------------------------------

    def _collect_new(self) -> None:
        """Bind every new MutableObject reachable from this transaction's writes.

        Only unsaved structure is walked: stored nodes cannot reference an
        object that was never stored. When no unbound object exists in the
        process, there is nothing to find and nothing is walked.
        """
        if not unbound_objects and not self._dirty:
            return
        seen: set[int] = set()
        pending: list[Any] = [self._roots]
        pending.extend(obj._pb_state() for obj in list(self._dirty.values()))
        while pending:
            for found in self._walk(pending.pop(), seen):
                pending.append(found._pb_state())

    def _walk(self, value: Any, seen: set[int]) -> Iterator[MutableObject]:
        """New MutableObjects inside `value` (each bound here as it is found)."""
        stack = [value]
        while stack:
            item = stack.pop()
            kind = type(item)
            if kind is tuple or kind is list:
                stack.extend(item)
            elif kind is dict:
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, DBObject):
                stack.extend(item._attrs.values())
            elif isinstance(item, PersistentCollection):
                if id(item) in seen:
                    continue
                seen.add(id(item))
                root = item._root
                if isinstance(root, Node):
                    for node in iter_nodes(root, self, self._is_unsaved):
                        if isinstance(node, KeyedLeaf):
                            stack.extend(node.values)
                            stack.extend(node.keys)
                        elif isinstance(node, PositionalLeaf):
                            stack.extend(node.values)
            elif isinstance(item, MutableObject) and self._bind(item):
                yield item

    def _is_unsaved(self, node: Node) -> bool:
        return node.pointer is None or node.origin is not self.origin

    def _bind(self, obj: MutableObject) -> bool:
        """Adopt a new object; True the first time it is adopted."""
        context = obj._pb_context
        if context is self:
            return False
        if context is not None:
            if isinstance(context, Transaction) and not context._closed:
                raise ValidationError(
                    f"{type(obj).__qualname__} {obj._pb_oid.hex()} belongs to another open "
                    "transaction; an object is used by the transaction that loaded it"
                )
            return False
        oid = obj._pb_oid
        if oid in self._identity and self._identity[oid] is not obj:
            raise ValidationError(f"two different objects claim object id {oid.hex()}")
        object.__setattr__(obj, "_pb_context", self)
        self._identity[oid] = obj
        self._new[oid] = obj
        self._dirty[oid] = obj
        unbound_objects.discard(obj)
        return True

    def _unbind_new(self) -> None:
        """A failed commit stored none of its new objects: free them for reuse."""
        for obj in self._new.values():
            object.__setattr__(obj, "_pb_context", None)
            unbound_objects.add(obj)
        self._new.clear()
