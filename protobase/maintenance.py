"""Maintenance of a StandaloneFileStorage directory: fsck, inspect, pack.

Library functions; `protobase fsck|inspect|pack PATH` are thin wrappers
(`protobase.cli`), and the tests call these functions directly.

`fsck` never writes to the directory: it works out what opening would do
(`plan_recovery`, the same function opening applies) and reports it, then
verifies what opening would keep. `inspect` and `pack` open the storage, so
they recover it first like any open.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from . import reachability
from .atoms import AtomPointer, unframe_atom
from .errors import AtomNotFoundError, CorruptionError, ProtoBaseException
from .space import ObjectSpace
from .storage import wal
from .storage.file import (
    LOCK_NAME,
    Progress,
    Recovery,
    StandaloneFileStorage,
    lock_for_reading,
    plan_recovery,
)


@dataclass
class FsckReport:
    """What `fsck` found. `clean` is True when nothing is wrong.

    `notes` are what opening will repair and is allowed to (a torn tail, the
    files of an interrupted pack): the normal state after a crash, not a
    problem.
    """

    path: Path
    records_checked: int = 0
    versions_checked: int = 0
    atoms_checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def fsck(path: str | Path, progress: Progress | None = None) -> FsckReport:
    """Verify every record checksum and every pointer reachable from every kept root.

    Writes nothing, creates nothing (not even ``LOCK``): what opening would
    repair is reported in `FsckReport.notes` and left as it is. A shared lock
    on ``LOCK``, when the file exists, keeps the storage from being opened
    while fsck reads.

    Args:
        path: the storage directory.
        progress: called as ``progress(done, total)`` while records and then
            atoms are checked.

    Returns:
        The report; anything wrong (damage, missing files, a directory that
        cannot be opened) is in its `problems`, never raised.
    """
    directory = Path(path)
    report = FsckReport(directory)
    if not directory.is_dir():
        missing = "does not exist" if not directory.exists() else "is not a directory"
        report.problems.append(f"{directory} {missing}")
        return report
    try:
        lock = lock_for_reading(directory)
    except ProtoBaseException as exc:
        report.problems.append(f"cannot check: {exc}")
        return report
    try:
        _check(directory, report, progress)
    finally:
        if lock is not None:
            os.close(lock)
    if lock is None and (directory / LOCK_NAME).exists():
        report.problems.append(
            f"{directory} was opened while fsck ran (no LOCK file to hold before); "
            "what fsck read may be out of date: run it again"
        )
    return report


def _check(directory: Path, report: FsckReport, progress: Progress | None) -> None:
    try:
        recovery = plan_recovery(directory)
    except CorruptionError as exc:
        report.problems.append(f"corruption (opening would refuse it): {exc}")
        return
    except ProtoBaseException as exc:
        report.problems.append(f"opening would fail: {exc}")
        return
    if recovery.fresh:
        report.problems.append(
            f"{directory} is not a ProtoBase database (no checkpoint, no WAL segments)"
        )
        return
    report.notes.extend(_repairs(directory, recovery))
    with _RecoveredWal(directory, recovery) as log:
        report.records_checked, problems = log.verify_records(progress)
        report.problems.extend(problems)
        history = log.history()
        report.versions_checked = len(history)
        found = reachability.walk(
            log.read_payloads,
            [record.root for record in history if record.root is not None],
            progress,
            collect_problems=True,
        )
        report.atoms_checked = len(found.reachable)
        report.problems.extend(found.problems)


def _repairs(directory: Path, recovery: Recovery) -> list[str]:
    """What opening `directory` will change, one sentence each."""
    repairs = []
    torn = recovery.torn
    if torn is not None:
        name = wal.segment_name(recovery.generation, torn.segment)
        if torn.offset < wal.SEGMENT_HEADER_SIZE:
            repairs.append(
                f"{directory / name}: a segment whose header never reached the disk "
                f"({torn.size} bytes, no record); opening will write its header and drop "
                "the rest"
            )
        else:
            repairs.append(
                f"{directory / name}: offset {torn.offset}: a torn tail of "
                f"{torn.size - torn.offset} bytes (a commit that was never acknowledged); "
                "opening will truncate it"
            )
    for name in recovery.leftovers:
        repairs.append(f"{directory / name}: left by an interrupted pack; opening will remove it")
    return repairs


class _RecoveredWal:
    """The records `plan_recovery` found, read through read-only file descriptors.

    What StandaloneFileStorage reads after opening, without opening it (which
    writes); the index is built by the same rule as `StandaloneFileStorage._index`:
    a later record of a transaction id or version replaces an earlier one.
    """

    def __init__(self, directory: Path, recovery: Recovery) -> None:
        self._directory = directory
        self._recovery = recovery
        self._fds: dict[int, int] = {}
        try:
            for number in recovery.segments:
                self._fds[number] = os.open(self._segment_path(number), os.O_RDONLY)
        except BaseException:
            self.close()
            raise
        self._records = {record.transaction_id: record for record in recovery.records}
        self._slots = {
            record.transaction_id: {index: slot for slot, index in enumerate(record.indexes)}
            for record in self._records.values()
            if record.indexes is not None
        }
        self._versions = {
            record.version: record for record in recovery.records if record.kind == wal.KIND_COMMIT
        }

    def __enter__(self) -> _RecoveredWal:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _segment_path(self, number: int) -> Path:
        return self._directory / wal.segment_name(self._recovery.generation, number)

    def history(self) -> list[wal.RecordInfo]:
        """The commit records, oldest first."""
        return [record for _, record in sorted(self._versions.items())]

    def verify_records(self, progress: Progress | None) -> tuple[int, list[str]]:
        """Re-read every live segment, up to a torn tail, and check every record.

        Unlike opening, this also reads what the checkpoint covers.

        Returns:
            The number of records checked, and one message per problem.
        """
        torn = self._recovery.torn
        sizes = {number: os.fstat(fd).st_size for number, fd in self._fds.items()}
        total, done, checked, problems = sum(sizes.values()), 0, 0, []
        for number, fd in self._fds.items():
            end = sizes[number]
            if torn is not None and torn.segment == number:
                end = torn.offset  # what opening keeps; the rest is in the notes
                unstarted = end < wal.SEGMENT_HEADER_SIZE  # nothing in it to check
            else:
                unstarted = False
            if not unstarted:
                data = os.pread(fd, end, 0)
                path, generation = self._segment_path(number), self._recovery.generation
                try:
                    scan = wal.scan_segment(path, data, 0, False, generation, number)
                except CorruptionError as exc:
                    problems.append(f"corruption: {exc}")
                else:
                    checked += len(scan.records)
            done += sizes[number]
            if progress is not None:
                progress(done, total)
        return checked, problems

    def read_payloads(self, pointers: Sequence[AtomPointer]) -> list[bytes]:
        """The verified payloads of `pointers` (for `reachability.walk`).

        Raises:
            AtomNotFoundError: a pointer names no kept atom.
            CorruptionError: an atom is cut short or fails its checksum.
        """
        return [unframe_atom(self._read_atom(pointer), pointer) for pointer in pointers]

    def _read_atom(self, pointer: AtomPointer) -> bytes:
        record = self._records.get(pointer.transaction_id)
        slot: int | None = pointer.index
        if record is not None and record.indexes is not None:
            slot = self._slots[record.transaction_id].get(pointer.index)
        if record is None or slot is None or not 0 <= slot < record.atom_count:
            raise AtomNotFoundError(f"no atom at {pointer} in {self._directory}")
        atom = wal.read_atom(self._fds[record.segment], record, slot)
        if atom is None:
            raise CorruptionError(
                f"{self._segment_path(record.segment)}: offset {record.offset}: the file "
                f"ends inside atom {pointer.index} of this record"
            )
        return atom


def inspect(path: str | Path) -> dict[str, Any]:
    """A summary of a storage directory: segments, commits, databases."""
    storage = StandaloneFileStorage(path, create=False)
    with ObjectSpace(storage) as space:
        history = storage.history()
        return {
            "path": str(path),
            "root_version": storage.read_root().version,
            "commits_kept": len(history),
            "oldest_version": history[0].version if history else None,
            "segments": storage.segment_sizes(),
            "wal_bytes": sum(size for _, size in storage.segment_sizes()),
            "databases": space.list_databases(),
            "recent_commits": [
                {
                    "version": c.version,
                    "time": dt.datetime.fromtimestamp(c.time, dt.UTC).isoformat(),
                    "bytes": c.size,
                }
                for c in history[-10:]
            ],
        }


def pack(
    path: str | Path, keep_history: dt.timedelta = dt.timedelta(0), progress: Progress | None = None
) -> tuple[int, int]:
    """Pack the directory; returns the WAL size in bytes before and after."""
    storage = StandaloneFileStorage(path, create=False)
    with ObjectSpace(storage) as space:
        before = sum(size for _, size in storage.segment_sizes())
        space.pack(keep_history, progress)
        after = sum(size for _, size in storage.segment_sizes())
    return before, after
