"""The storage contract: bytes in, bytes out, and a compare-and-set root.

A storage never sees Python objects. It holds *atoms* (opaque byte strings,
each framed with its own checksum by `protobase.atoms`) addressed by
`AtomPointer`, and one *root*: the pointer of the space's root atom plus a
commit version.

Invariants every backend keeps (checked by `tests/storage/`):

1. **Versions increase.** `read_root()` of an empty storage returns version 0
   and pointer None. Each successful `commit` returns a version exactly one
   greater than the version it replaced; a later `read_root()` never returns
   an older version than an earlier one in the same process.
2. **Atomic commits.** `commit` writes every atom of the batch and moves the
   root in one step: a reader (or a process reopening after a crash) sees
   either all of it or none of it.
3. **Compare-and-set.** `commit` raises `RootConflict` and writes nothing when
   the current version differs from `expected_root_version`.
4. **Idempotent by transaction id.** Committing a batch whose transaction id
   was already committed returns the `RootRef` of that earlier commit and
   writes nothing new (a client may retry a commit whose answer it lost).
   The same transaction id with different atoms raises `StorageError`.
5. **Atoms are immutable.** `get_atoms` returns exactly the bytes written, in
   the order of the pointers asked for; a pointer that was never committed
   raises `AtomNotFoundError`.
6. **Threads.** Every method may be called from many threads at once.

Optional capabilities (history, pack, backup) are separate protocols that a
caller checks with `isinstance`; a backend without one simply does not
implement it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..atoms import AtomPointer


@dataclass(frozen=True, slots=True)
class RootRef:
    """The root of a storage: where the space root atom is, and its version."""

    pointer: AtomPointer | None
    version: int


@dataclass(frozen=True, slots=True)
class CommitBatch:
    """The atoms of one commit. Atom ``i`` has pointer ``(transaction_id, i)``."""

    transaction_id: bytes
    atoms: Sequence[bytes]

    def pointer(self, index: int) -> AtomPointer:
        return AtomPointer(self.transaction_id, index)


@runtime_checkable
class Storage(Protocol):
    """What every backend provides. See the module docstring for the invariants."""

    def read_root(self) -> RootRef:
        """The current root (pointer None and version 0 for an empty storage)."""
        ...

    def get_atoms(self, pointers: Sequence[AtomPointer]) -> list[bytes]:
        """The bytes of each pointer, in the same order.

        Raises:
            AtomNotFoundError: a pointer names no committed atom.
        """
        ...

    def commit(
        self, batch: CommitBatch, expected_root_version: int, new_root: AtomPointer
    ) -> RootRef:
        """Store the batch and move the root to `new_root`, atomically.

        Returns:
            The new root (version `expected_root_version + 1`), or the root an
            earlier commit of the same transaction id produced.

        Raises:
            RootConflict: the root is no longer at `expected_root_version`.
            StorageError: the transaction id was committed with other atoms,
                `new_root` is not an atom of the batch or of the storage, or
                the storage is closed.
        """
        ...

    def close(self) -> None:
        """Release resources; later calls raise `StorageError`. Idempotent."""
        ...


@runtime_checkable
class HistoryStorage(Protocol):
    """Optional capability: old roots stay readable until pack removes them."""

    def history(self) -> list[Any]:
        """`CommitInfo` of every commit still readable, oldest first."""
        ...

    def root_at(self, version: int) -> RootRef:
        """The root as of commit `version`; `StorageError` when it is not kept."""
        ...


@runtime_checkable
class PackableStorage(Protocol):
    """Optional capability: rewrite the storage keeping only what is reachable."""

    def pack(
        self,
        reachable: set[AtomPointer],
        keep_from_version: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Keep every commit from `keep_from_version` on whole, and of older ones
        only the atoms in `reachable`; their roots leave the history.

        Atoms keep their pointers. Commits made while pack runs are kept. A
        crash at any point leaves either the old or the new contents, both
        complete.
        """
        ...


@runtime_checkable
class PipelinedStorage(Protocol):
    """Optional capability: split a commit into appending and waiting for durability.

    ``commit_pipelined`` does everything `Storage.commit` does except wait:
    the commit is visible (to this process) when it returns, and durable
    when the returned function returns (it raises `StorageError` if it never
    becomes durable). The object layer appends under an in-process commit
    lock and waits outside it, so commits of many threads never fail their
    compare-and-set against each other and still share syncs.
    """

    def commit_pipelined(
        self, batch: CommitBatch, expected_root_version: int, new_root: AtomPointer
    ) -> tuple[RootRef, Callable[[], None]]: ...
