"""The byte-bounded LRU of atoms that an object space and the cluster client keep."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from .atoms import AtomPointer


class AtomCache:
    """A thread-safe LRU of atoms (or their payloads), bounded in bytes.

    Atoms never change, so an entry is never stale: the cache only forgets.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self._capacity = capacity_bytes
        self._size = 0
        self._entries: OrderedDict[AtomPointer, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, pointer: AtomPointer) -> bytes | None:
        with self._lock:
            payload = self._entries.get(pointer)
            if payload is None:
                self.misses += 1
                return None
            self._entries.move_to_end(pointer)
            self.hits += 1
            return payload

    def put(self, pointer: AtomPointer, payload: bytes) -> None:
        if len(payload) > self._capacity:
            return
        with self._lock:
            if pointer in self._entries:
                return
            self._entries[pointer] = payload
            self._size += len(payload)
            while self._size > self._capacity:
                _, evicted = self._entries.popitem(last=False)
                self._size -= len(evicted)

    def put_batch(self, transaction_id: bytes, atoms: Sequence[bytes]) -> None:
        """Every atom of a batch, at its pointer."""
        for index, atom in enumerate(atoms):
            self.put(AtomPointer(transaction_id, index), atom)
