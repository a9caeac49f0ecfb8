"""MemoryStorage: the reference backend, short enough to be obviously right.

Everything lives in process memory and disappears with the process. It keeps
every invariant of `protobase.storage.interfaces` and is the yardstick the
conformance suite holds the other backends to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..atoms import AtomPointer
from ..errors import AtomNotFoundError, RootConflict, StorageError
from .interfaces import CommitBatch, RootRef


class MemoryStorage:
    """An in-memory, thread-safe storage."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batches: dict[bytes, tuple[bytes, ...]] = {}
        self._committed: dict[bytes, RootRef] = {}
        self._root = RootRef(None, 0)
        self._closed = False

    def read_root(self) -> RootRef:
        with self._lock:
            self._check_open()
            return self._root

    def get_atoms(self, pointers: Sequence[AtomPointer]) -> list[bytes]:
        with self._lock:
            self._check_open()
            found = []
            for pointer in pointers:
                batch = self._batches.get(pointer.transaction_id)
                if batch is None or not 0 <= pointer.index < len(batch):
                    raise AtomNotFoundError(f"no atom at {pointer} in this MemoryStorage")
                found.append(batch[pointer.index])
            return found

    def put_batch(self, batch: CommitBatch) -> None:
        atoms = tuple(bytes(atom) for atom in batch.atoms)
        with self._lock:
            self._check_open()
            self._put(batch.transaction_id, atoms)

    def set_root(
        self, expected_root_version: int, new_root: AtomPointer, transaction_id: bytes
    ) -> RootRef:
        with self._lock:
            self._check_open()
            return self._set_root(expected_root_version, new_root, transaction_id)

    def committed_root(self, transaction_id: bytes) -> RootRef | None:
        with self._lock:
            self._check_open()
            return self._committed.get(transaction_id)

    def commit(
        self, batch: CommitBatch, expected_root_version: int, new_root: AtomPointer
    ) -> RootRef:
        atoms = tuple(bytes(atom) for atom in batch.atoms)
        with self._lock:
            self._check_open()
            earlier = self._committed.get(batch.transaction_id)
            if earlier is None and self._root.version != expected_root_version:
                raise RootConflict(
                    f"root is at version {self._root.version}, "
                    f"commit expected {expected_root_version}"
                )
            if new_root.transaction_id == batch.transaction_id:
                if not 0 <= new_root.index < len(atoms):
                    raise StorageError(f"new root {new_root} is not an atom of the batch")
            elif not 0 <= new_root.index < len(self._batches.get(new_root.transaction_id, ())):
                raise StorageError(f"new root {new_root} is not a stored atom")
            self._put(batch.transaction_id, atoms)
            return self._set_root(expected_root_version, new_root, batch.transaction_id)

    def commit_pipelined(
        self, batch: CommitBatch, expected_root_version: int, new_root: AtomPointer
    ) -> tuple[RootRef, Callable[[], None]]:
        """`commit`, with nothing to wait for (see `PipelinedStorage`)."""
        return self.commit(batch, expected_root_version, new_root), _durable_already

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def _put(self, transaction_id: bytes, atoms: tuple[bytes, ...]) -> None:
        stored = self._batches.get(transaction_id)
        if stored is None:
            self._batches[transaction_id] = atoms
        elif stored != atoms:
            raise StorageError(
                f"transaction id {transaction_id.hex()} is already stored with different "
                "atoms; every commit needs a fresh transaction id"
            )

    def _set_root(
        self, expected_root_version: int, new_root: AtomPointer, transaction_id: bytes
    ) -> RootRef:
        earlier = self._committed.get(transaction_id)
        if earlier is not None:
            return earlier
        if self._root.version != expected_root_version:
            raise RootConflict(
                f"root is at version {self._root.version}, commit expected {expected_root_version}"
            )
        if not 0 <= new_root.index < len(self._batches.get(new_root.transaction_id, ())):
            raise StorageError(f"new root {new_root} is not a stored atom")
        self._root = RootRef(new_root, self._root.version + 1)
        self._committed[transaction_id] = self._root
        return self._root

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("this MemoryStorage is closed")


def _durable_already() -> None:
    """Memory has no durability to wait for."""
