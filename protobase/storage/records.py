"""What every storage built on WAL records shares: the index and the commit rules.

StandaloneFileStorage keeps its records in local segment files;
CloudFileStorage keeps the same records (`protobase.storage.wal`'s format)
in S3 objects. Both index them the same way and apply the contract of
`protobase.storage.interfaces` the same way, so that logic lives here once,
in `RecordLog`, over the primitives a subclass provides:

- ``_append(record_bytes) -> RecordInfo``: place a record (mutex held);
  it is visible at once and durable after ``_wait_durable``.
- ``_wait_durable(ticket)``: block until every record appended up to
  `ticket` (a count of appends) is durable (mutex held; may release it
  while it waits).
- ``_read_slots(record, slots)`` and ``_record_bytes(record)``: read a
  stored record's atoms, or its whole bytes (mutex held).
- ``_closed`` and ``_failed``: set by the subclass when it closes or
  stops (then every call raises `StorageError`).

Index invariants (mutex held to read or change them):

- ``_records`` maps a record id to its `RecordInfo`. A record id names one
  record: a commit's transaction id, a put batch's transaction id, or
  `root_change_id` of a put batch's id for the root change that names it.
- ``_history`` maps each kept root version to its commit record.
- ``_unrooted`` holds batches put by this process that no root change
  named yet; pack keeps them whole, since their root change may still come.
- ``_root`` is the latest root, including commits not yet durable (only
  this process can see those; a crash takes its readers with it).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

import xxhash

from ..atoms import AtomPointer
from ..errors import AtomNotFoundError, RootConflict, StorageError
from . import wal
from .interfaces import CommitBatch, CommitInfo, RootRef


class RecordLog:
    """The shared index and commit logic; see the module docstring."""

    _mutex: threading.Lock
    _closed: bool
    _failed: BaseException | None

    def _init_index(self) -> None:
        self._mutex = threading.Lock()
        self._records: dict[bytes, wal.RecordInfo] = {}
        self._positions: dict[bytes, dict[int, int]] = {}
        self._history: dict[int, wal.RecordInfo] = {}
        self._unrooted: set[bytes] = set()
        self._root = RootRef(None, 0)
        self._appended = 0

    # -- what a subclass provides -----------------------------------------------

    def _describe(self) -> str:
        """How messages name this storage (a path, an S3 location)."""
        raise NotImplementedError

    def _check_usable(self) -> None:
        """Raise `StorageError` once the storage is closed, or stopped by a failure."""
        if self._closed:
            raise StorageError(f"storage {self._describe()} is closed")
        if self._failed is not None:
            raise StorageError(
                f"storage {self._describe()} stopped: {self._failed}; reopen it to recover "
                "(commits that were waiting when it stopped may or may not be stored: "
                "reopening tells)"
            ) from self._failed

    def _append(self, record_bytes: bytes) -> wal.RecordInfo:
        raise NotImplementedError

    def _wait_durable(self, ticket: int) -> None:
        raise NotImplementedError

    def _read_slots(self, record: wal.RecordInfo, slots: Sequence[int]) -> list[bytes]:
        raise NotImplementedError

    def _record_bytes(self, record: wal.RecordInfo) -> bytes:
        raise NotImplementedError

    def _after_durable(self) -> None:
        """Called (mutex held) after a commit's wait for durability returned."""

    # -- the index ----------------------------------------------------------------

    def _index(self, record: wal.RecordInfo) -> None:
        self._records[record.transaction_id] = record
        if record.indexes is not None:
            self._positions[record.transaction_id] = {
                index: slot for slot, index in enumerate(record.indexes)
            }
        if record.kind == wal.KIND_COMMIT:
            self._history[record.version] = record

    def _reset_index(self, records: Sequence[wal.RecordInfo]) -> None:
        self._records.clear()
        self._positions.clear()
        self._history.clear()
        for record in records:
            self._index(record)

    def _root_from_history(self) -> RootRef:
        latest = max(self._history) if self._history else 0
        return RootRef(self._history[latest].root, latest) if latest else RootRef(None, 0)

    def _find(self, pointer: AtomPointer) -> tuple[wal.RecordInfo, int]:
        """The record holding `pointer` and the atom's slot in it (mutex held)."""
        record = self._records.get(pointer.transaction_id)
        slot: int | None = pointer.index
        if record is not None and record.indexes is not None:
            slot = self._positions[record.transaction_id].get(pointer.index)
        if record is None or slot is None or not 0 <= slot < record.atom_count:
            raise AtomNotFoundError(f"no atom at {pointer} in {self._describe()}")
        return record, slot

    def _stored_atoms(self, record: wal.RecordInfo) -> list[bytes]:
        return self._read_slots(record, range(record.atom_count))

    def _root_change(self, transaction_id: bytes) -> wal.RecordInfo | None:
        for record_id in (transaction_id, root_change_id(transaction_id)):
            record = self._records.get(record_id)
            if record is not None and record.kind == wal.KIND_COMMIT:
                return record
        return None

    # -- the storage contract ----------------------------------------------------

    def read_root(self) -> RootRef:
        with self._mutex:
            self._check_usable()
            return self._root

    def put_batch(self, batch: CommitBatch) -> None:
        """Append the batch as a batch record (no root), readable at once.

        It is not made durable here: the root change that names it waits for
        durability, and the log holds the batch before it. A batch no root
        ever names is garbage that pack removes.
        """
        atoms = [bytes(atom) for atom in batch.atoms]
        with self._mutex:
            self._check_usable()
            earlier = self._records.get(batch.transaction_id)
            if earlier is not None:
                if self._stored_atoms(earlier) != atoms:
                    raise StorageError(
                        f"transaction id {batch.transaction_id.hex()} is already stored with "
                        "different atoms; every commit needs a fresh transaction id"
                    )
                return
            record_bytes = wal.encode_record(
                wal.KIND_PACKED,
                0,
                now_us(),
                batch.transaction_id,
                None,
                atoms,
                list(range(len(atoms))),
            )
            self._index(self._append(record_bytes))
            self._appended += 1
            self._unrooted.add(batch.transaction_id)

    def set_root(
        self, expected_root_version: int, new_root: AtomPointer, transaction_id: bytes
    ) -> RootRef:
        """Move the root with a commit record of no atoms.

        When `transaction_id` names a put batch, the record is stored under
        `root_change_id(transaction_id)` (a record id names one record).
        """
        with self._mutex:
            self._check_usable()
            earlier = self._root_change(transaction_id)
            if earlier is not None:
                if earlier.root != new_root:
                    raise StorageError(
                        f"transaction id {transaction_id.hex()} already moved the root to "
                        f"{earlier.root}, not {new_root}; every commit needs a fresh id"
                    )
                self._wait_durable(self._appended)
                return RootRef(new_root, earlier.version)
            record_id = transaction_id
            if transaction_id in self._records:
                record_id = root_change_id(transaction_id)
        ref, wait_durable = self.commit_pipelined(
            CommitBatch(record_id, []), expected_root_version, new_root
        )
        with self._mutex:  # only now is the batch rooted (a RootConflict leaves it unrooted)
            self._unrooted.discard(transaction_id)
        wait_durable()
        return ref

    def committed_root(self, transaction_id: bytes) -> RootRef | None:
        """The root the root change `transaction_id` produced (None once pack forgot it)."""
        with self._mutex:
            self._check_usable()
            record = self._root_change(transaction_id)
            if record is None or record.root is None:
                return None
            self._wait_durable(self._appended)
            return RootRef(record.root, record.version)

    def commit(
        self, batch: CommitBatch, expected_root_version: int, new_root: AtomPointer
    ) -> RootRef:
        ref, wait_durable = self.commit_pipelined(batch, expected_root_version, new_root)
        wait_durable()
        return ref

    def commit_pipelined(
        self, batch: CommitBatch, expected_root_version: int, new_root: AtomPointer
    ) -> tuple[RootRef, Callable[[], None]]:
        """Append a commit and return at once, with a function that waits until it is durable.

        The commit is visible when this returns; it is acknowledged only when
        the returned function returns. See `PipelinedStorage`.
        """
        atoms = [bytes(atom) for atom in batch.atoms]
        with self._mutex:
            self._check_usable()
            record_id = batch.transaction_id
            earlier = self._records.get(record_id)
            if earlier is not None and earlier.kind == wal.KIND_COMMIT:
                return self._repeat_commit(earlier, atoms), self._wait_all
            if earlier is not None:
                # The batch was put first: the root change gets a record of its own.
                if self._stored_atoms(earlier) != atoms:
                    raise StorageError(
                        f"transaction id {record_id.hex()} is already stored with different "
                        "atoms; every commit needs a fresh transaction id"
                    )
                record_id, atoms = root_change_id(record_id), []
                change = self._records.get(record_id)
                if change is not None and change.root == new_root:
                    return RootRef(new_root, change.version), self._wait_all
                if change is not None:
                    raise StorageError(
                        f"transaction id {batch.transaction_id.hex()} already moved the root "
                        f"to {change.root}; every commit needs a fresh transaction id"
                    )
            if self._root.version != expected_root_version:
                raise RootConflict(
                    f"root is at version {self._root.version}, "
                    f"commit expected {expected_root_version}"
                )
            self._check_new_root(record_id, len(atoms), new_root)
            self._unrooted.discard(batch.transaction_id)
            version = self._root.version + 1
            record_bytes = wal.encode_record(
                wal.KIND_COMMIT, version, now_us(), record_id, new_root, atoms
            )
            self._index(self._append(record_bytes))
            self._root = RootRef(new_root, version)
            self._appended += 1
            ticket = self._appended
        return RootRef(new_root, version), lambda: self._wait_ticket(ticket)

    def _wait_ticket(self, ticket: int) -> None:
        with self._mutex:
            self._wait_durable(ticket)
            self._after_durable()

    def _wait_all(self) -> None:
        with self._mutex:
            self._wait_durable(self._appended)

    def _repeat_commit(self, earlier: wal.RecordInfo, atoms: list[bytes]) -> RootRef:
        stored = self._record_bytes(earlier)
        expected = wal.encode_record(
            wal.KIND_COMMIT,
            earlier.version,
            earlier.time_us,
            earlier.transaction_id,
            earlier.root,
            atoms,
        )
        if stored != expected:
            raise StorageError(
                f"transaction id {earlier.transaction_id.hex()} was already committed "
                "with different atoms; every commit needs a fresh transaction id"
            )
        assert earlier.root is not None
        return RootRef(earlier.root, earlier.version)

    def _check_new_root(self, transaction_id: bytes, count: int, new_root: AtomPointer) -> None:
        if new_root.transaction_id == transaction_id:
            if not 0 <= new_root.index < count:
                raise StorageError(f"new root {new_root} is not an atom of the batch")
            return
        try:
            self._find(new_root)
        except AtomNotFoundError as exc:
            raise StorageError(f"new root {new_root} is not a stored atom") from exc

    # -- pack -----------------------------------------------------------------------

    def _repacked(
        self,
        record: wal.RecordInfo,
        reachable: set[AtomPointer],
        keep_from_version: int,
        fetched: dict[tuple[int, int], bytes] | None = None,
    ) -> bytes | None:
        """What pack writes for `record`: all of it, its reachable atoms, or nothing (None).

        Commits from `keep_from_version` on, batches no root named yet, and
        batches a root change from `keep_from_version` on names (it may have
        come after the caller walked `reachable`) stay whole; of the others
        only the atoms in `reachable` stay, as a packed batch (their root
        leaves the history). `fetched` holds record bytes already read.
        """
        change = self._root_change(record.transaction_id)
        if (
            (record.kind == wal.KIND_COMMIT and record.version >= keep_from_version)
            or record.transaction_id in self._unrooted
            or (change is not None and change.version >= keep_from_version)
        ):
            known = None if fetched is None else fetched.get((record.segment, record.offset))
            return known if known is not None else self._record_bytes(record)
        indexes = record.indexes if record.indexes is not None else range(record.atom_count)
        kept = [
            (slot, index)
            for slot, index in enumerate(indexes)
            if AtomPointer(record.transaction_id, index) in reachable
        ]
        if not kept:
            return None
        atoms = self._read_slots(record, [slot for slot, _ in kept])
        return wal.encode_record(
            wal.KIND_PACKED,
            0,
            record.time_us,
            record.transaction_id,
            None,
            atoms,
            [index for _, index in kept],
        )

    # -- history ------------------------------------------------------------------

    def history(self) -> list[CommitInfo]:
        """Commits still readable with `root_at`, oldest first."""
        with self._mutex:
            self._check_usable()
            # Only commit records enter the history, and each names its root.
            return [
                CommitInfo(r.version, r.time_us / 1e6, r.size, r.transaction_id, r.root)
                for _, r in sorted(self._history.items())
                if r.root is not None
            ]

    def root_at(self, version: int) -> RootRef:
        """The root as of commit `version`.

        Raises:
            StorageError: the version was never committed or was packed away.
        """
        with self._mutex:
            self._check_usable()
            record = self._history.get(version)
            if record is None or record.root is None:
                oldest = min(self._history) if self._history else None
                raise StorageError(
                    f"version {version} is not in the history of {self._describe()} "
                    f"(oldest kept: {oldest}, latest: {self._root.version}); "
                    "pack removes versions older than its keep_history"
                )
            return RootRef(record.root, version)


def placed(record_bytes: bytes, segment: int, offset: int) -> wal.RecordInfo:
    """The index entry of a record this process encoded and placed at `offset` of `segment`."""
    return dataclasses.replace(
        wal.parse_record(record_bytes, 0, segment, verify=False), offset=offset
    )


def root_change_id(transaction_id: bytes) -> bytes:
    """The record id of a root change named after a put batch (see `RecordLog.set_root`)."""
    return xxhash.xxh3_128_digest(b"protobase root change " + transaction_id)


def now_us() -> int:
    return time.time_ns() // 1000
