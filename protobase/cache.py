"""The byte-bounded LRUs of an object space: atom payloads and shared decoded nodes.

The cluster client keeps an `AtomCache` of its own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .atoms import AtomPointer
from .registry import registry


class _BudgetLRU:
    """A thread-safe LRU keyed by atom pointer, bounded by the sum of its entries' costs.

    Subclasses say what an entry costs (`_cost`) and call `_lookup` and
    `_store` with the lock held.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self._capacity = capacity_bytes
        self._size = 0
        self._entries: OrderedDict[AtomPointer, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _cost(self, entry: Any) -> int:
        raise NotImplementedError

    def _lookup(self, pointer: AtomPointer) -> Any:
        entry = self._entries.get(pointer)
        if entry is not None:
            self._entries.move_to_end(pointer)
        return entry

    def _store(self, pointer: AtomPointer, entry: Any) -> None:
        """Keep `entry` unless one is there already; forget the oldest ones over budget."""
        if pointer in self._entries:
            return
        self._entries[pointer] = entry
        self._size += self._cost(entry)
        while self._size > self._capacity:
            _, evicted = self._entries.popitem(last=False)
            self._size -= self._cost(evicted)

    def _forget(self, pointer: AtomPointer) -> None:
        entry = self._entries.pop(pointer, None)
        if entry is not None:
            self._size -= self._cost(entry)

    def _forget_all(self) -> None:
        self._entries.clear()
        self._size = 0


class AtomCache(_BudgetLRU):
    """A thread-safe LRU of atoms (or their payloads), bounded in bytes.

    Atoms never change, so an entry is never stale: the cache only forgets.
    """

    def __init__(self, capacity_bytes: int) -> None:
        super().__init__(capacity_bytes)
        self.hits = 0
        self.misses = 0

    def _cost(self, entry: bytes) -> int:
        return len(entry)  # an entry is the payload itself

    def get(self, pointer: AtomPointer) -> bytes | None:
        with self._lock:
            payload: bytes | None = self._lookup(pointer)
            if payload is None:
                self.misses += 1
            else:
                self.hits += 1
            return payload

    def put(self, pointer: AtomPointer, payload: bytes) -> None:
        if len(payload) > self._capacity:
            return
        with self._lock:
            self._store(pointer, payload)

    def put_batch(self, transaction_id: bytes, atoms: Sequence[bytes]) -> None:
        """Every atom of a batch, at its pointer."""
        for index, atom in enumerate(atoms):
            self.put(AtomPointer(transaction_id, index), atom)


class NodeCache(_BudgetLRU):
    """A thread-safe LRU of decoded tree nodes that any transaction may read.

    What enters is decided by `protobase.sharing.shared_form`: leaves of
    immutable plain data as they are, leaves whose values hold collections,
    lists or dicts as templates copied for each reader, and internal nodes
    as shared nodes whose children stay pointers. Every transaction of the
    space reads the same entry instead of decoding the atom again. The
    budget counts the nodes' payload bytes. Entries decoded before the
    class registry last changed are forgotten (they may decode differently).
    """

    def __init__(self, capacity_bytes: int) -> None:
        super().__init__(capacity_bytes)
        self._generation = registry.generation

    def _cost(self, entry: tuple[Any, int]) -> int:
        return entry[1]  # an entry is (node, payload bytes)

    def get(self, pointer: AtomPointer) -> Any:
        """The node (or template) stored at `pointer`, or None."""
        with self._lock:
            if self._generation != registry.generation:
                self._forget_all()
                self._generation = registry.generation
            entry = self._lookup(pointer)
            return None if entry is None else entry[0]

    def discard(self, pointer: AtomPointer) -> None:
        """Forget the node at `pointer` (a commit replaced it: new readers take the new one)."""
        with self._lock:
            self._forget(pointer)

    def put(self, pointer: AtomPointer, node: Any, cost: int, generation: int) -> None:
        """Keep `node` (decoded from a payload of `cost` bytes) for every transaction.

        `generation` is the class registry's generation when the node was
        decoded; a node decoded before the registry last changed is dropped.
        """
        if cost > self._capacity:
            return
        with self._lock:
            if generation == registry.generation:
                self._store(pointer, (node, cost))


Descriptor = tuple[AtomPointer | None, int]
"""A stored collection: its root node's pointer (None when empty) and its entry count."""


class LayoutCache:
    """``(space root pointer, database name) -> descriptors`` of the path to its data.

    A transaction starts by reading the space root, the database table and
    the database's state, three atoms; for a root seen recently it builds the
    three collections (table, roots, objects) from their descriptors
    instead. Entries never go stale: a space root pointer names one
    immutable atom. Only the latest `capacity` entries are kept.
    """

    def __init__(self, capacity: int = 64) -> None:
        self._capacity = capacity
        self._entries: dict[tuple[AtomPointer, str], tuple[Descriptor, ...]] = {}

    def get(self, key: tuple[AtomPointer | None, str]) -> tuple[Descriptor, ...] | None:
        return self._entries.get(key)  # type: ignore[arg-type]

    def remember(self, key: tuple[AtomPointer, str], collections: tuple[Any, ...]) -> None:
        """Note the stored collections ``(databases, roots, objects)`` found under `key`."""
        descriptors = []
        for collection in collections:
            root = collection._root
            if root is not None and type(root) is not AtomPointer:
                root = root.pointer
                if root is None:
                    return  # not stored: nothing to describe
            descriptors.append((root, collection._count))
        entries = self._entries
        entries[key] = tuple(descriptors)
        if len(entries) > self._capacity:
            # dicts keep insertion order: forget the oldest (thread races only forget more)
            for old in list(entries)[: len(entries) - self._capacity]:
                entries.pop(old, None)
