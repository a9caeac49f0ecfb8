"""ObjectSpace and Database: the entry points of an application.

An `ObjectSpace` wraps one storage and holds named databases. A `Database`
starts transactions; see `protobase.transaction` for their isolation and
commit rules.

Invariants:

- Session monotonic reads: a transaction started after a commit of this
  space (in any thread) sees that commit or a later one.
- The space caches verified atom payloads (immutable, so the cache never
  needs invalidation) up to a byte budget, shared by every transaction.
- It also caches decoded tree nodes that hold nothing bound to a
  transaction (`cache.NodeCache`): every transaction reads the same node
  object, so a path read by one commit is not decoded again by the next.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from . import reachability
from .atoms import AtomPointer, unframe_atom
from .cache import AtomCache, LayoutCache, NodeCache
from .collections import Dictionary, HashDictionary
from .committer import Committer, SpaceChange
from .errors import ConflictError, DatabaseExistsError, StorageError, ValidationError
from .storage.file import Progress
from .storage.interfaces import CommitInfo, HistoryStorage, PackableStorage, RootRef, Storage
from .transaction import Snapshot, Transaction

T = TypeVar("T")

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
NODE_CACHE_SHARE = 4
"""The shared node cache's budget is the atom cache's divided by this (decoded
nodes take several times their payload's size in memory)."""
MAX_CREATE_ATTEMPTS = 16
"""Attempts of `new_database` while other databases are created concurrently."""


class ObjectSpace:
    """A storage and the named databases in it.

    Use as a context manager, or call `close` when done. Commits go through
    `committer`, the one owner of the commit protocol.
    """

    def __init__(
        self,
        storage: Storage,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        *,
        monotonic_reads: bool = True,
    ) -> None:
        """Args:
        storage: the backend.
        cache_bytes: the atom cache's budget.
        monotonic_reads: refuse a root older than one already seen
            (session monotonic reads). Only a cluster node's own space,
            whose storage proposes roots ahead of their outcome and
            withdraws them when one fails, turns it off.
        """
        if not isinstance(storage, Storage):
            raise ValidationError(
                f"ObjectSpace needs a storage (MemoryStorage, StandaloneFileStorage, ...), "
                f"not {type(storage).__name__}"
            )
        self._storage = storage
        self.origin = object()
        """Nodes and literals stored through this space carry it."""
        self._cache = AtomCache(cache_bytes)
        self.layouts = LayoutCache()
        """Where each recent space root keeps each database's roots and objects."""
        self.node_cache = NodeCache(cache_bytes // NODE_CACHE_SHARE)
        """Decoded nodes shared by every transaction of this space (see `NodeCache`)."""
        self.committer = Committer(
            storage, self._cache, self.origin, monotonic_reads, self.node_cache
        )
        self._closed = False

    @property
    def storage(self) -> Storage:
        return self._storage

    @property
    def atom_cache(self) -> AtomCache:
        """The space's atom cache (its `hits` and `misses` are read by metrics)."""
        return self._cache

    # -- roots and atoms ---------------------------------------------------------

    def read_payloads(self, pointers: Sequence[AtomPointer]) -> list[bytes]:
        """Verified payloads of `pointers`, through the shared cache."""
        found: list[bytes | None] = [self._cache.get(p) for p in pointers]
        missing = [i for i, payload in enumerate(found) if payload is None]
        if missing:
            raw = self._storage.get_atoms([pointers[i] for i in missing])
            for i, data in zip(missing, raw, strict=True):
                payload = unframe_atom(data, pointers[i])
                self._cache.put(pointers[i], payload)
                found[i] = payload
        return found  # type: ignore[return-value]

    def cache_batch(self, transaction_id: bytes, atoms: Sequence[bytes]) -> None:
        """Verify and cache the atoms of a stored batch (one about to be read).

        A cluster node caches each batch a client commits with, so that
        rebasing the commit reads none of its atoms back from the log.
        """
        for index, data in enumerate(atoms):
            pointer = AtomPointer(transaction_id, index)
            self._cache.put(pointer, unframe_atom(data, pointer))

    def pinned_root(self, at_version: int | None = None) -> RootRef:
        """The current root, or the historic one at `at_version`, pinned against pack.

        The caller hands the pin to a snapshot (`Snapshot.hold`) or releases
        it with ``committer.unpin``.
        """
        if self._closed:
            raise StorageError("this ObjectSpace is closed")
        if at_version is None:
            return self.committer.pinned_root()
        return self.committer.pin_version(at_version, lambda: self._root_at(at_version))

    def _root_at(self, version: int) -> RootRef:
        storage = self._storage
        if not isinstance(storage, HistoryStorage):
            raise StorageError(
                f"{type(storage).__name__} keeps no history; at_version needs a storage "
                "such as StandaloneFileStorage"
            )
        return storage.root_at(version)

    # -- history and pack ----------------------------------------------------------

    def history(self) -> list[CommitInfo]:
        """Commits still readable with ``db.new_transaction(at_version=...)``, oldest first."""
        storage = self._storage
        if not isinstance(storage, HistoryStorage):
            raise StorageError(f"{type(storage).__name__} keeps no history")
        return storage.history()

    def pack(
        self,
        keep_history: dt.timedelta = dt.timedelta(0),
        progress: Progress | None = None,
    ) -> None:
        """Remove what no kept version can reach, and the versions older than `keep_history`.

        Kept: every commit younger than `keep_history`, the latest commit, and
        every version an open transaction of this space reads.
        """
        storage = self._storage
        if not isinstance(storage, PackableStorage) or not isinstance(storage, HistoryStorage):
            raise StorageError(f"{type(storage).__name__} cannot pack")
        with self.committer.pins_held() as pins:
            history = storage.history()
            if not history:
                return
            cutoff = time.time() - keep_history.total_seconds()
            keep_from = history[-1].version
            for commit in history:
                if commit.time >= cutoff:
                    keep_from = min(keep_from, commit.version)
            if pins:
                keep_from = min(keep_from, min(pins))
        roots = [c.root for c in history if c.version >= keep_from]
        found = reachability.walk(self.read_payloads, roots, progress)
        storage.pack(found.reachable, keep_from, progress)

    # -- databases ---------------------------------------------------------------

    def new_database(self, name: str) -> Database:
        """Create database `name`; `DatabaseExistsError` when it exists."""
        _check_database_name(name)
        for _ in range(MAX_CREATE_ATTEMPTS):
            snapshot = Snapshot(self, self.pinned_root())
            try:
                databases = snapshot.databases_at(snapshot.ref)
                if databases.has(name):
                    raise DatabaseExistsError(
                        f"database {name!r} already exists; open it with "
                        f"space.open_database({name!r})"
                    )
                state = {"roots": Dictionary(), "objects": HashDictionary()}
                change = SpaceChange(snapshot.ref, databases, databases.set_at(name, state))
                try:
                    self.committer.commit(change, snapshot)
                except ConflictError:
                    continue  # created (or removed) concurrently: look again
                return Database(self, name)
            finally:
                snapshot.close()
        raise ConflictError(
            f"database {name!r} could not be created: the database table kept changing "
            f"concurrently ({MAX_CREATE_ATTEMPTS} attempts); nothing was written. Try again."
        )

    def open_database(self, name: str) -> Database:
        """Open database `name`; `DatabaseNotFoundError` when it does not exist."""
        _check_database_name(name)
        snapshot = Snapshot(self, self.pinned_root())
        try:
            snapshot._database_state(snapshot.databases_at(snapshot.ref), name)
        finally:
            snapshot.close()
        return Database(self, name)

    def list_databases(self) -> list[str]:
        snapshot = Snapshot(self, self.pinned_root())
        try:
            return list(snapshot.databases_at(snapshot.ref).keys())
        finally:
            snapshot.close()

    # -- lifetime ----------------------------------------------------------------

    def close(self) -> None:
        """Close the storage. Idempotent."""
        if not self._closed:
            self._closed = True
            self._storage.close()

    def __enter__(self) -> ObjectSpace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_database_name(name: object) -> None:
    if type(name) is not str or not name:
        raise ValidationError(f"a database name is a non-empty str, not {name!r}")


class Database:
    """A named database of an ObjectSpace; starts transactions."""

    def __init__(self, space: ObjectSpace, name: str) -> None:
        self.space = space
        self.name = name

    def __repr__(self) -> str:
        return f"<Database {self.name!r}>"

    def new_transaction(self, at_version: int | None = None) -> Transaction:
        """A transaction on a snapshot of the database as of now.

        Args:
            at_version: read the database as of this commit version instead
                (read-only; needs a storage that keeps history).

        Raises:
            StorageError: `at_version` is not kept by the storage (never
                committed, or packed away).
        """
        if at_version is None:
            return self._start(self.space.pinned_root(), read_only=False)
        return self._start(self.space.pinned_root(at_version), read_only=True)

    def new_read_only_transaction(self) -> Transaction:
        """A transaction that refuses writes (cheaper to reason about)."""
        return self._start(self.space.pinned_root(), read_only=True)

    def _start(self, ref: RootRef, read_only: bool) -> Transaction:
        try:
            return Transaction(self, ref, read_only=read_only)
        except BaseException:
            self.space.committer.unpin(ref.version)
            raise

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """``with db.transaction() as tr:`` commits on success, aborts on error."""
        tr = self.new_transaction()
        try:
            yield tr
        except BaseException:
            tr.abort()
            raise
        if not tr._closed:
            tr.commit()

    def run(self, fn: Callable[[Transaction], T], retries: int = 10) -> T:
        """Run ``fn(tr)`` and commit, re-running it on `ConflictError`.

        Args:
            fn: the work; it may run several times, so it must not have side
                effects outside the transaction.
            retries: how many times to re-run after a conflict.

        Returns:
            What the successful run of `fn` returned.

        Raises:
            ConflictError: still conflicting after `retries` re-runs.
        """
        attempt = 0
        while True:
            tr = self.new_transaction()
            try:
                result = fn(tr)
                if not tr._closed:
                    tr.commit()
                return result
            except ConflictError:
                if attempt >= retries:
                    raise
                attempt += 1
                # Jittered backoff so that contending threads stop colliding.
                time.sleep(random.random() * min(0.0005 * 2**attempt, 0.02))
            finally:
                if not tr._closed:
                    tr.abort()
