"""The storage contract: bytes in, bytes out, and a compare-and-set root.

A storage never sees Python objects. It holds *atoms* (opaque byte strings,
each framed with its own checksum by `protobase.atoms`) addressed by
`AtomPointer`, and one *root*: the pointer of the space's root atom plus a
commit version.

A commit has two phases, as in ZODB's two-phase commit, so that they can
run in different places (a cluster stores a batch in the partition that
owns its transaction id, and moves the root in its meta group):

1. `put_batch`: store the atoms of one transaction id. They are not
   reachable yet; a batch no root ever names is garbage that pack removes.
2. `set_root`: compare-and-set the root to a pointer into a stored batch.

`commit` does both; a backend that can do them in one durable step (one
WAL record) does so. The object layer's `protobase.committer.Committer` is
the only caller that moves roots.

Invariants every backend keeps (checked by `tests/storage/`):

1. **Versions increase.** `read_root()` of an empty storage returns version 0
   and pointer None. Each successful root change returns a version exactly
   one greater than the version it replaced; a later `read_root()` never
   returns an older version than an earlier one in the same process.
2. **Atomic commits.** A reader (or a process reopening after a crash) sees
   a root only together with every atom of the batches put before it.
3. **Compare-and-set.** `set_root` and `commit` raise `RootConflict` and
   change nothing when the current version differs from the expected one.
   (A cluster checks before it stores a commit's batch; a root that moves
   between that check and the compare-and-set leaves the batch stored but
   unreachable, garbage for pack.)
4. **Idempotent by transaction id.** `put_batch` of a transaction id already
   stored with the same atoms does nothing; with different atoms it raises
   `StorageError`. `set_root` (and `commit`) of a transaction id whose root
   change already took effect returns that earlier `RootRef` and changes
   nothing, so a client may repeat a request whose answer it lost.
5. **Outcomes can be looked up.** `committed_root(transaction_id)` returns
   the root a root change with that id produced, or None when none took
   effect and none can take effect later. A backend that raises
   `CommitOutcomeUnknown` must answer it definitively once reachable.
6. **Atoms are immutable.** `get_atoms` returns exactly the bytes written, in
   the order of the pointers asked for; a pointer that was never stored
   raises `AtomNotFoundError`.
7. **Threads.** Every method may be called from many threads at once.

Optional capabilities (history, pack, pipelining, rebasing on the server)
are separate protocols that a caller checks with `isinstance`; a backend
without one simply does not implement it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..atoms import AtomPointer


@dataclass(frozen=True, slots=True)
class RootRef:
    """The root of a storage: where the space root atom is, and its version."""

    pointer: AtomPointer | None
    version: int


@dataclass(frozen=True, slots=True)
class CommitBatch:
    """The atoms of one transaction id. Atom ``i`` has pointer ``(transaction_id, i)``.

    `links`, when given, holds for each atom the pointers it contains (to
    atoms of this batch or of earlier ones), so that garbage collection
    can mark what a root reaches without decoding a single atom. The
    object layer always fills it in; a backend may keep it (the cluster
    does) or derive it when it packs (StandaloneFileStorage decodes).
    """

    transaction_id: bytes
    atoms: Sequence[bytes]
    links: Sequence[Sequence[AtomPointer]] | None = None

    def pointer(self, index: int) -> AtomPointer:
        return AtomPointer(self.transaction_id, index)


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """One entry of a storage's history: a commit still readable with ``at_version``."""

    version: int
    time: float
    """Seconds since the Unix epoch, as the storage that accepted the commit saw it."""
    size: int
    """Bytes the commit added to the storage (its atoms and their framing)."""
    transaction_id: bytes
    root: AtomPointer


@dataclass(frozen=True, slots=True)
class DatabaseReads:
    """What one transaction read with ``read_current`` in one database."""

    roots: frozenset[str] = frozenset()
    objects: frozenset[bytes] = frozenset()
    """MutableObject ids."""


ReadSet = Mapping[str, DatabaseReads]
"""Database name -> the reads a rebase must validate there."""


@dataclass(frozen=True, slots=True)
class RebaseRequest:
    """A commit whose base may be stale, for a storage that rebases it where the data is.

    `new_root` points into `batch` (already put, or put by the request); it
    was built on the root at `base_version`. When the root moved since, the
    storage merges the change three-way (base, new root, current root) with
    `protobase.merge`, validates `reads`, and moves the root to the result.
    """

    batch: CommitBatch
    base_version: int
    new_root: AtomPointer
    reads: ReadSet = field(default_factory=dict)


@runtime_checkable
class Storage(Protocol):
    """What every backend provides. See the module docstring for the invariants."""

    def read_root(self) -> RootRef:
        """The current root (pointer None and version 0 for an empty storage)."""
        ...

    def get_atoms(self, pointers: Sequence[AtomPointer]) -> list[bytes]:
        """The bytes of each pointer, in the same order.

        Atoms of a batch that was put but that no root names yet may be
        returned too (a rebase reads them); a pointer into no stored batch
        raises.

        Raises:
            AtomNotFoundError: a pointer names no stored atom.
        """
        ...

    def put_batch(self, batch: CommitBatch) -> None:
        """Store a batch's atoms, unreachable until a root names them.

        Raises:
            StorageError: the transaction id is stored with other atoms, or
                the storage is closed.
        """
        ...

    def set_root(
        self, expected_root_version: int, new_root: AtomPointer, transaction_id: bytes
    ) -> RootRef:
        """Compare-and-set the root to `new_root`, an atom of a stored batch.

        `transaction_id` names the root change (usually the batch's id): a
        repeat returns the first answer.

        Raises:
            RootConflict: the root is no longer at `expected_root_version`.
            CommitOutcomeUnknown: the answer was lost (look it up with
                `committed_root`).
            StorageError: `new_root` is not a stored atom, or the storage is
                closed.
        """
        ...

    def committed_root(self, transaction_id: bytes) -> RootRef | None:
        """The root that the root change named `transaction_id` produced, or None."""
        ...

    def commit(
        self, batch: CommitBatch, expected_root_version: int, new_root: AtomPointer
    ) -> RootRef:
        """`put_batch` then `set_root` under the batch's transaction id, atomically.

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

    def history(self) -> list[CommitInfo]:
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


@runtime_checkable
class RebasingStorage(Protocol):
    """Optional capability: the storage merges stale commits where the data is.

    A cluster has one root register per space; a commit retried from the
    client would cost a network round trip per attempt under contention.
    Such a backend takes the whole request and rebases it on the node that
    orders root changes, with the same merge code the embedded engine uses.
    """

    def new_transaction_id(self) -> bytes:
        """A fresh transaction id for a batch this storage will store.

        Random, like `protobase.atoms.new_transaction_id`; the storage may
        prefer ids that land where committing is cheapest (a cluster picks
        a partition led by the node that orders roots).
        """
        ...

    def commit_rebasing(self, request: RebaseRequest) -> RootRef:
        """Put the batch, then move the root to it or to its rebase.

        Raises:
            ConflictError: the change overlaps a concurrent one; nothing
                was committed.
            ClusterUnavailableError: no answer in time; the message says
                whether the commit's outcome is known.
        """
        ...
