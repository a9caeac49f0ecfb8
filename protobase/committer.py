"""The commit protocol of an object space, in one place.

A `Committer` is held by each `ObjectSpace` and is the only code that moves
a storage's root. It owns:

- **root bookkeeping**: the latest root this space has seen, so that reads
  never go back (session monotonic reads);
- **pins**: the versions open snapshots read, which pack must keep;
- **the commit lock**: commits of one space append one at a time, so that
  they never fail their compare-and-set against each other and their
  durability waits (outside the lock) share syncs; a change is encoded
  before the lock is taken;
- **rebase and retries**: a change built on a stale root is merged onto the
  current one with `protobase.merge.merge_databases`; a compare-and-set
  lost to another process is retried with jittered back-off, a bounded
  number of times, then `ConflictError`;
- **unknown outcomes**: a storage that lost the answer to a root change
  (`CommitOutcomeUnknown`) is asked by transaction id what happened before
  anything is reported.

A storage that rebases where the data is (`RebasingStorage`, the cluster)
gets the change as one request; the node that orders its roots runs this
same class, with the change already stored, on its local storage.

Invariants:

- Nothing is reported as committed that the storage did not acknowledge
  durably, and nothing is reported as failed that may still take effect.
- A change's atoms are written once per attempt under a fresh transaction
  id, so a lost attempt leaves nothing a retry could be confused with.
- Encoding is outside the commit lock: a change is encoded on its base
  first; a rebase under the lock adds the merged root to the same batch,
  reusing the nodes encoded before (those the merge replaced stay in the
  batch unreachable, garbage that pack removes).
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from .atoms import HEADER_SIZE as ATOM_HEADER_SIZE
from .atoms import AtomPointer, new_transaction_id
from .collections import Dictionary
from .collections.btree import Node
from .errors import CommitOutcomeUnknown, ConflictError, RootConflict, StorageError
from .merge import merge_databases
from .registry import registry
from .serialization import AtomWriter
from .sharing import shared_form
from .storage.interfaces import (
    CommitBatch,
    PipelinedStorage,
    ReadSet,
    RebaseRequest,
    RebasingStorage,
    RootRef,
    Storage,
)

if TYPE_CHECKING:
    from .cache import AtomCache, NodeCache
    from .transaction import Snapshot

T = TypeVar("T")

SPACE_FORMAT = 1
"""The ``format`` field of a space root atom."""

MAX_ATTEMPTS = 64
"""Compare-and-set attempts of one commit before it gives up with ConflictError."""

SHARE_WRITTEN_NODES = 32
"""A commit that wrote at most this many nodes offers them to the shared node cache
(the next transactions read that path first); a bulk commit's nodes are shared
when they are read, which spares it looking through every value it wrote."""

BACKOFF_CAP = 0.02
"""Longest sleep, in seconds, between two attempts that lost to another process."""


@dataclass
class SpaceChange:
    """A change to a space's database table, built on the root `base`.

    `databases` is the whole table as the change wants it; `base_databases`
    is the table at `base`. `stored_root` is set when the new space root is
    already stored (a node rebasing a client's commit): when no rebase is
    needed it is committed as it is, under `transaction_id`.
    """

    base: RootRef
    base_databases: Dictionary
    databases: Dictionary
    reads: ReadSet = field(default_factory=dict)
    stored_root: AtomPointer | None = None
    transaction_id: bytes | None = None
    written_root: AtomPointer | None = None
    """Set by the committer: the space root it stored (None when the storage
    rebased it remotely and chose another)."""
    written_databases: Dictionary | None = None
    """The database table under `written_root` (after a rebase, the merged one)."""


@dataclass
class CommitStats:
    """Counters of one space's commits, read by `protobase.metrics`.

    `observe`, when set, is called as ``observe(phase, seconds)`` after each
    successful commit: ``"cas"`` (merge, encode, write the batch and move the
    root), ``"fsync"`` (the wait for durability outside the commit lock, on
    storages that share syncs) and ``"total"``.
    """

    committed: int = 0
    conflicts: int = 0
    """Commits that ended in ConflictError."""
    failed: int = 0
    """Commits that ended in any other error."""
    merges: int = 0
    """Changes merged onto a root newer than their base."""
    observe: Callable[[str, float], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str) -> None:
        """Add one to counter `name` (threads commit concurrently: no count is lost)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)


class Committer:
    """The commit protocol of one `ObjectSpace`; see the module docstring."""

    def __init__(
        self,
        storage: Storage,
        cache: AtomCache,
        origin: object,
        monotonic_reads: bool = True,
        node_cache: NodeCache | None = None,
    ) -> None:
        self.storage = storage
        self._node_cache = node_cache
        self._monotonic = monotonic_reads
        """False only for a storage whose root may go back by design (see `ObjectSpace`)."""
        self._cache = cache
        self._origin = origin
        self._latest_lock = threading.Lock()
        self._latest = RootRef(None, 0)
        self._pin_lock = threading.Lock()
        self._pins: collections.Counter[int] = collections.Counter()
        self._commit_lock = threading.Lock()
        # Capabilities are checked once: a runtime Protocol check is slow.
        self._pipelined = isinstance(storage, PipelinedStorage)
        self._rebasing = isinstance(storage, RebasingStorage)
        self._new_id: Callable[[], bytes] = getattr(storage, "new_transaction_id", None) or (
            new_transaction_id
        )
        """Ids of the batches this committer writes: the storage's choice when it has one."""
        self.attempts_lost = 0
        """Compare-and-sets lost to another writer (a rebase followed)."""
        self.stats = CommitStats()

    # -- roots ---------------------------------------------------------------------

    @property
    def latest(self) -> RootRef:
        """The newest root this space has seen."""
        return self._latest

    def read_root(self) -> RootRef:
        """The storage's root; `StorageError` if it is older than one already seen."""
        with self._latest_lock:
            seen = self._latest.version
        ref = self.storage.read_root()
        with self._latest_lock:
            if not self._monotonic:
                self._latest = ref
                return ref
            if ref.version < seen:
                raise StorageError(
                    f"storage went back to root version {ref.version} after this space saw "
                    f"{seen}; refusing a stale read"
                )
            if ref.version > self._latest.version:
                self._latest = ref
        return ref

    def note_root(self, ref: RootRef) -> None:
        with self._latest_lock:
            if ref.version > self._latest.version:
                self._latest = ref

    # -- pins ----------------------------------------------------------------------

    def pinned_root(self, read: Callable[[], RootRef] | None = None) -> RootRef:
        """Read the root (with `read`, default `read_root`) and pin its version.

        The latest version seen is pinned as a floor while the storage is
        read without a lock (reads never go back, so the root read is at
        least that). The caller unpins the returned version with `unpin`.
        """
        with self._pin_lock:
            floor = self._latest.version
            self._pins[floor] += 1
        try:
            ref = (read or self.read_root)()
            with self._pin_lock:
                self._pins[ref.version] += 1
        finally:
            self.unpin(floor)
        return ref

    def pin_version(self, version: int, read: Callable[[], RootRef]) -> RootRef:
        """Pin a historic `version` while `read` fetches its root; pinned as returned."""
        with self._pin_lock:
            self._pins[version] += 1
        try:
            ref = read()
            with self._pin_lock:
                self._pins[ref.version] += 1
        finally:
            self.unpin(version)
        return ref

    def unpin(self, version: int) -> None:
        with self._pin_lock:
            self._pins[version] -= 1
            if self._pins[version] <= 0:
                del self._pins[version]

    @contextmanager
    def pins_held(self) -> Iterator[collections.Counter[int]]:
        """The pinned versions, frozen while the block runs (pack decides what to keep)."""
        with self._pin_lock:
            yield self._pins

    # -- committing ----------------------------------------------------------------

    def commit(self, change: SpaceChange, snapshot: Snapshot) -> RootRef:
        """Make `change` the newest root, rebasing it as often as needed.

        Args:
            change: the database table to commit and the root it was built on.
            snapshot: reads atoms for the rebase; versions this pins are
                recorded on it and unpinned when it closes.

        Returns:
            The new root.

        Raises:
            ConflictError: the change overlaps a concurrent one, or lost
                `MAX_ATTEMPTS` compare-and-sets in a row; nothing was written.
        """
        stats = self.stats
        started = time.perf_counter()
        durable_from = 0.0
        try:
            if self._rebasing:
                ref = self._commit_remotely(change)
            elif self._pipelined:
                # Encode the change on its base outside the lock, while other threads
                # append or wait for their syncs. Under the lock, rebase it when the
                # root moved meanwhile (the new root is written into the same batch and
                # shares the nodes already encoded) and append: no compare-and-set
                # fails against another thread of this space, so no work is thrown
                # away. Wait for durability outside the lock, so that syncs are shared.
                early = None
                if change.stored_root is None and change.base.version == self._latest.version:
                    # Built on the newest root: likely to commit as it is. (On an older
                    # one a rebase is certain, and would re-encode what the merge
                    # changes, so the change is encoded after it, under the lock.)
                    writer = AtomWriter(self._origin, self._new_id())
                    early = (writer, self._write_root(writer, change.databases))
                with self._commit_lock:
                    ref, wait_durable = self._attempts(
                        change,
                        snapshot,
                        self.storage.commit_pipelined,  # type: ignore[attr-defined]
                        lambda ref: (ref, _nothing),
                        early,
                    )
                    # Visible now (a pipelined commit is readable once appended): the
                    # next commit under the lock builds on it instead of losing its
                    # compare-and-set to it.
                    self.note_root(ref)
                durable_from = time.perf_counter()
                wait_durable()
            else:
                ref = self._attempts(change, snapshot, self.storage.commit, lambda ref: ref)
        except ConflictError:
            stats.count("conflicts")
            raise
        except BaseException:
            stats.count("failed")
            raise
        stats.count("committed")
        if stats.observe is not None:
            ended = time.perf_counter()
            if durable_from:
                stats.observe("cas", durable_from - started)
                stats.observe("fsync", ended - durable_from)
            else:
                stats.observe("cas", ended - started)
            stats.observe("total", ended - started)
        self.note_root(ref)
        return ref

    def _attempts(
        self,
        change: SpaceChange,
        snapshot: Snapshot,
        commit: Callable[[CommitBatch, int, AtomPointer], T],
        found: Callable[[RootRef], T],
        early: tuple[AtomWriter, AtomPointer] | None = None,
    ) -> T:
        """Commit `change`, rebasing and retrying; `early` is the change already encoded.

        `early` is a writer never handed to the storage, holding the change
        encoded on its base: the first attempt appends to that batch (a
        rebase adds the merged root to it), later attempts start new ones.
        """
        current = change.base
        if self._pipelined and current.version != self._latest.version:
            current = snapshot.hold(self.pinned_root())
        for attempt in range(MAX_ATTEMPTS):
            if current.version == change.base.version:
                databases = change.databases
                if change.stored_root is not None:
                    try:
                        return found(self._set_stored_root(change, current))
                    except RootConflict:
                        self.attempts_lost += 1
                        current = snapshot.hold(self.pinned_root())
                        continue
            else:
                databases = merge_databases(
                    change.base_databases,
                    change.databases,
                    snapshot.databases_at(current),
                    snapshot,
                    change.reads,
                )
                self.stats.count("merges")
            if early is None:
                writer = AtomWriter(self._origin, self._new_id())
                pointer = self._write_root(writer, databases)
            else:
                writer, pointer = early
                early = None
                if databases is not change.databases:
                    pointer = self._write_root(writer, databases)
            try:
                result = commit(writer.batch(), current.version, pointer)
            except RootConflict:
                self.attempts_lost += 1
                if attempt:
                    # Another process keeps winning: step aside a little.
                    time.sleep(random.random() * min(0.0005 * 2**attempt, BACKOFF_CAP))
                current = snapshot.hold(self.pinned_root())
                continue
            except CommitOutcomeUnknown:
                ref = self.storage.committed_root(writer.transaction_id)
                if ref is None:
                    current = snapshot.hold(self.pinned_root())
                    continue
                result = found(ref)
            writer.mark_saved()
            self.remember_written(writer)
            change.written_root, change.written_databases = pointer, databases
            return result
        raise ConflictError(
            f"commit gave up after {MAX_ATTEMPTS} attempts on a busy database; "
            "nothing was written. Run the transaction again."
        )

    def _write_root(self, writer: AtomWriter, databases: Dictionary) -> AtomPointer:
        """Encode a space root holding `databases` (and every node not yet stored)."""
        return writer.write_value({"format": SPACE_FORMAT, "databases": databases})

    def _set_stored_root(self, change: SpaceChange, current: RootRef) -> RootRef:
        assert change.stored_root is not None and change.transaction_id is not None
        try:
            return self.storage.set_root(current.version, change.stored_root, change.transaction_id)
        except CommitOutcomeUnknown:
            ref = self.storage.committed_root(change.transaction_id)
            if ref is None:
                raise RootConflict("the root change was lost; rebase") from None
            return ref

    def _commit_remotely(self, change: SpaceChange) -> RootRef:
        """Write the change on its base and let the storage rebase it where the data is."""
        writer = AtomWriter(self._origin, self._new_id())
        pointer = self._write_root(writer, change.databases)
        request = RebaseRequest(writer.batch(), change.base.version, pointer, change.reads)
        ref = self.storage.commit_rebasing(request)  # type: ignore[attr-defined]
        writer.mark_saved()
        self.remember_written(writer)
        return ref

    def remember_written(self, writer: AtomWriter) -> None:
        """Cache the payloads of a batch the storage accepted.

        The next transactions read the nodes this commit wrote (the path to
        the space root) first; without this they would come back from storage.
        """
        for index, atom in enumerate(writer.atoms):
            self._cache.put(AtomPointer(writer.transaction_id, index), atom[ATOM_HEADER_SIZE:])
        nodes = self._node_cache
        if nodes is not None and len(writer.written) <= SHARE_WRITTEN_NODES:
            generation = registry.generation
            for obj, pointer in writer.written:
                if isinstance(obj, Node):
                    kept = shared_form(obj)
                    if kept is not None:
                        nodes.put(pointer, kept, len(writer.atoms[pointer.index]), generation)
                    if obj.replaces is not None:
                        # The older version of this node: transactions that start from
                        # now on read this one, so the cache need not keep that one.
                        nodes.discard(obj.replaces)


def _nothing() -> None:
    """A commit found already made is durable already."""
