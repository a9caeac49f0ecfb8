"""StandaloneFileStorage: the embedded, durable, single-process backend.

A directory holds the WAL segments (format: `protobase.storage.wal`), the
checkpoint (`protobase.storage.checkpoint`) and a ``LOCK`` file.

Invariants, beyond those of `protobase.storage.interfaces`:

- **Durable acknowledgement.** `commit` returns only after its record was
  made durable by `wal.durable_write` (fdatasync); a new segment, a rename or
  a removal is followed by an fsync of the directory.
- **Group commit.** Committers of several threads share fdatasync calls: the
  first waiting committer syncs everything appended so far while the others
  wait for it, and the next sync starts as soon as it returns.
- **Visibility.** A commit is visible to `read_root` of this process as soon
  as it is appended, so committers in other threads can rebase on it while
  its sync runs (that is what lets group commit batch). Only this process can
  see it before it is durable; a crash kills those readers with it.
- **Failure stops everything.** If a write or a sync fails, nothing that was
  not acknowledged can be trusted: the storage refuses every later call with
  `StorageError` until it is reopened (recovery then truncates the tail).
- **One owner.** An exclusive `flock` on ``LOCK`` keeps a second process, or
  a second StandaloneFileStorage of this process, out.
- **Held views.** While a `backup_view` is held, pack waits: the files and
  byte ranges the view names stay as they are (segments are append-only, and
  only pack rewrites or removes them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import seglog
from seglog import write_all

from ..atoms import AtomPointer
from ..errors import CorruptionError, StorageError
from . import wal
from .checkpoint import CHECKPOINT_NAME, Checkpoint, read_checkpoint, write_checkpoint
from .records import RecordLog, placed

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_CHECKPOINT_BYTES = 64 * 1024 * 1024
LOCK_NAME = seglog.LOCK_NAME

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` by long operations."""


class StandaloneFileStorage(RecordLog):
    """A durable storage in one directory; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        checkpoint_bytes: int = DEFAULT_CHECKPOINT_BYTES,
        create: bool = True,
    ) -> None:
        self.path = Path(path)
        self._segment_bytes = segment_bytes
        self._checkpoint_bytes = checkpoint_bytes
        if not self.path.exists():
            if not create:
                raise StorageError(f"{self.path} does not exist")
            self.path.mkdir(parents=True)
            fsync_parent = True
        else:
            fsync_parent = False
        if not self.path.is_dir():
            raise StorageError(f"{self.path} is not a directory")
        if fsync_parent:
            wal.fsync_directory(self.path.parent.resolve())
        if not create and not _looks_like_database(self.path):
            raise StorageError(
                f"{self.path} is not a ProtoBase database (no checkpoint, no WAL segments)"
            )
        self._lock_fd = self._take_lock()
        self._init_index()
        self._synced = threading.Condition(self._mutex)
        self._fds: dict[int, int] = {}
        self._closed = False
        self._failed: BaseException | None = None
        self._durable = 0
        self._syncing = False
        self._views_held = 0
        """`backup_view`s not yet released; pack waits for none."""
        try:
            self._recover()
        except BaseException:
            self._release()
            raise

    # -- opening -----------------------------------------------------------------

    def _take_lock(self) -> int:
        fd = _lock(self.path)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def _recover(self) -> None:
        """Apply `plan_recovery`'s plan: nothing is written before all of it is known."""
        recovery = plan_recovery(self.path)
        self._generation = recovery.generation
        self._segments = list(recovery.segments)
        create = os.O_CREAT if recovery.fresh else 0
        for number in self._segments:
            path = self.path / wal.segment_name(self._generation, number)
            self._fds[number] = os.open(path, os.O_RDWR | create, 0o644)
        if recovery.torn is not None:
            self._cut_torn_tail(recovery.torn)
        for name in recovery.leftovers:
            os.unlink(self.path / name)
        if recovery.leftovers:
            wal.fsync_directory(self.path)
        for record in recovery.records:
            self._index(record)
        self._active = self._segments[-1]
        self._active_size = os.fstat(self._fds[self._active]).st_size
        os.lseek(self._fds[self._active], 0, os.SEEK_END)
        self._root = self._root_from_history()
        self._since_checkpoint = 0
        if recovery.fresh:
            self._checkpoint_locked()

    def _cut_torn_tail(self, torn: TornTail) -> None:
        fd = self._fds[torn.segment]
        os.ftruncate(fd, max(torn.offset, wal.SEGMENT_HEADER_SIZE))
        if torn.offset < wal.SEGMENT_HEADER_SIZE:
            os.lseek(fd, 0, os.SEEK_SET)
            write_all(fd, wal.segment_header(self._generation, torn.segment))
        wal.durable_write(fd)
        if torn.offset < wal.SEGMENT_HEADER_SIZE:
            wal.fsync_directory(self.path)  # the segment may be new

    # -- the storage contract (the rest is `RecordLog`'s) ------------------------

    def get_atoms(self, pointers: Sequence[AtomPointer]) -> list[bytes]:
        # Reads hold the mutex: pack closes and replaces the segment files.
        with self._mutex:
            self._check_usable()
            found = []
            for pointer in pointers:
                record, slot = self._find(pointer)
                atom = wal.read_atom(self._fds[record.segment], record, slot)
                if atom is None:
                    raise StorageError(f"{self.path}: short read of an atom of {pointer}")
                found.append(atom)
            return found

    def _after_durable(self) -> None:
        if self._since_checkpoint >= self._checkpoint_bytes:
            self._checkpoint_locked()

    def _read_slots(self, record: wal.RecordInfo, slots: Sequence[int]) -> list[bytes]:
        fd = self._fds[record.segment]
        table = os.pread(fd, 4 * (record.atom_count + 1), record.table_offset)
        ends = wal.read_atom_spans(table, record.atom_count)
        return [
            os.pread(fd, ends[slot + 1] - ends[slot], record.data_offset + ends[slot])
            for slot in slots
        ]

    def _record_bytes(self, record: wal.RecordInfo) -> bytes:
        return os.pread(self._fds[record.segment], record.size, record.offset)

    def _describe(self) -> str:
        return str(self.path)

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            while self._syncing:
                self._synced.wait()
            try:
                if self._failed is None:
                    self._checkpoint_locked()
            finally:
                self._closed = True
                self._release()

    def _release(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        os.close(self._lock_fd)

    def __enter__(self) -> StandaloneFileStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- appending and group commit ------------------------------------------------

    def _append(self, record_bytes: bytes) -> wal.RecordInfo:
        if (
            self._active_size + len(record_bytes) > self._segment_bytes
            and self._active_size > wal.SEGMENT_HEADER_SIZE
        ):
            self._roll_segment()
        fd = self._fds[self._active]
        offset = self._active_size
        try:
            write_all(fd, record_bytes)
        except OSError as exc:
            self._failed = exc
            raise StorageError(f"writing the WAL of {self.path} failed: {exc}") from exc
        self._active_size += len(record_bytes)
        self._since_checkpoint += len(record_bytes)
        return placed(record_bytes, self._active, offset)

    def _roll_segment(self) -> None:
        try:
            wal.durable_write(self._fds[self._active])
            number = self._active + 1
            fd = seglog.create_segment(
                self.path,
                wal.segment_name(self._generation, number),
                wal.segment_header(self._generation, number),
                make_durable=wal.durable_write,
            )
        except OSError as exc:
            self._failed = exc
            raise StorageError(f"starting a new WAL segment in {self.path} failed: {exc}") from exc
        self._fds[number] = fd
        self._segments.append(number)
        self._active = number
        self._active_size = wal.SEGMENT_HEADER_SIZE

    def _wait_durable(self, ticket: int) -> None:
        """Block until every record up to `ticket` is durable (mutex held)."""
        while self._durable < ticket:
            if self._failed is not None:
                self._check_usable()
            if self._syncing:
                self._synced.wait()
                continue
            self._syncing = True
            target = self._appended
            fd = self._fds[self._active]
            self._mutex.release()
            try:
                wal.durable_write(fd)
            except OSError as exc:
                failure: BaseException | None = exc
            else:
                failure = None
            finally:
                self._mutex.acquire()
                self._syncing = False
                self._synced.notify_all()
            if failure is not None:
                self._failed = failure
                raise StorageError(f"syncing the WAL of {self.path} failed: {failure}") from failure
            self._durable = max(self._durable, target)

    # -- checkpoints --------------------------------------------------------------

    def checkpoint(self) -> None:
        """Save the index now, so that the next open replays nothing."""
        with self._mutex:
            self._check_usable()
            self._checkpoint_locked()

    def _checkpoint_locked(self) -> None:
        try:
            wal.durable_write(self._fds[self._active])
            write_checkpoint(
                self.path,
                Checkpoint(
                    self._generation,
                    list(self._segments),
                    (self._active, self._active_size),
                    list(self._records.values()),
                ),
            )
        except OSError as exc:
            self._failed = exc
            raise StorageError(f"writing the checkpoint of {self.path} failed: {exc}") from exc
        self._since_checkpoint = 0

    # -- pack ---------------------------------------------------------------------

    def pack(
        self,
        reachable: set[AtomPointer],
        keep_from_version: int,
        progress: Progress | None = None,
    ) -> None:
        """Rewrite the WAL as a new generation; see `PackableStorage.pack`.

        It first waits until no `backup_view` is held (commits go on
        meanwhile). Commits wait while the rewrite runs. The new generation's
        files are written and synced first; writing its checkpoint is the
        switch; the old generation's files are removed last. Recovery removes the files of
        whichever generation the checkpoint does not name, so a crash at any
        point leaves one complete generation.
        """
        with self._mutex:
            self._check_usable()
            while self._syncing or self._views_held:
                self._synced.wait()
            self._check_usable()
            records = sorted(self._records.values(), key=lambda r: (r.segment, r.offset))
            total = sum(r.size for r in records)
            writer = _GenerationWriter(self.path, self._generation + 1, self._segment_bytes)
            try:
                done = 0
                for record in records:
                    repacked = self._repacked(record, reachable, keep_from_version)
                    if repacked is not None:
                        writer.append(repacked)
                    done += record.size
                    if progress is not None:
                        progress(done, total)
                writer.finish()
                write_checkpoint(
                    self.path,
                    Checkpoint(writer.generation, writer.segments, writer.tail, writer.records),
                )
            except BaseException:
                writer.abandon()
                raise
            old_generation, old_fds = self._generation, self._fds
            self._fds = {}
            for fd in old_fds.values():
                os.close(fd)
            for number in self._segments:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / wal.segment_name(old_generation, number))
            wal.fsync_directory(self.path)
            self._generation = writer.generation
            self._segments = writer.segments
            self._fds = writer.fds
            self._reset_index(writer.records)
            self._active = self._segments[-1]
            self._active_size = writer.tail[1]
            os.lseek(self._fds[self._active], 0, os.SEEK_END)
            self._since_checkpoint = 0

    # -- verification -------------------------------------------------------------

    def verify_records(self, progress: Progress | None = None) -> list[str]:
        """Re-read every live segment and check every record's checksum.

        Returns:
            One message per problem (file and byte offset); empty when clean.
        """
        with self._mutex:
            self._check_usable()
            segments = [(n, self._fds[n]) for n in self._segments]
            generation = self._generation
        sizes = [os.fstat(fd).st_size for _, fd in segments]
        total, done, problems = sum(sizes), 0, []
        for (number, fd), size in zip(segments, sizes, strict=True):
            path = self.path / wal.segment_name(generation, number)
            try:
                wal.scan_segment(path, os.pread(fd, size, 0), 0, False, generation, number)
            except CorruptionError as exc:
                problems.append(str(exc))
            done += size
            if progress is not None:
                progress(done, total)
        return problems

    @contextlib.contextmanager
    def backup_view(self) -> Iterator[WalView]:
        """A consistent, durable prefix of the live WAL, held for as long as the block runs.

        The view is what every commit appended before this call leaves on
        disk: the live generation, its segments, and for each the offset at
        which its complete records end. Before it is handed out, everything
        appended so far is made durable (one shared sync), so every byte the
        view names is durable. While the block runs, pack waits (commits do
        not), so the view's files keep its bytes: sealed segments do not
        change, and the active one only grows past its `end`. Closing the
        storage does not wait for the view; do not close it while a backup
        reads, or another process could open and pack the directory.

        Do not call `pack` of this storage from inside the block: it would
        wait for the block forever.

        Raises:
            StorageError: the storage is closed or stopped after a failure
                (also when the sync made here fails).
        """
        with self._mutex:
            self._check_usable()
            ticket = self._appended
            ends = [(n, os.fstat(self._fds[n]).st_size) for n in self._segments[:-1]]
            ends.append((self._active, self._active_size))
            commits = list(self._history.values())
            view = WalView(self.path, self._generation, tuple(ends), (), self._active)
            self._views_held += 1
            try:
                self._wait_durable(ticket)
            except BaseException:
                self._views_held -= 1
                self._synced.notify_all()
                raise
        commits.sort(key=lambda record: record.version)
        view = dataclasses.replace(view, commits=tuple(commits))
        try:
            yield view
        finally:
            with self._mutex:
                self._views_held -= 1
                self._synced.notify_all()

    def segment_sizes(self) -> list[tuple[str, int]]:
        """``(file name, bytes)`` of each live segment."""
        with self._mutex:
            self._check_usable()
            return [
                (wal.segment_name(self._generation, n), os.fstat(self._fds[n]).st_size)
                for n in self._segments
            ]


@dataclasses.dataclass(frozen=True, slots=True)
class WalView:
    """A consistent prefix of one WAL generation, as a backup copies it.

    Made by `StandaloneFileStorage.backup_view` (an open storage) or by
    `protobase.backup` from `plan_recovery` (a closed directory).

    Invariants: `segments` are the generation's segments 1..k in order; bytes
    ``[0, end)`` of each are the segment header followed by complete records
    (no torn record); `commits` are exactly the commit records that lie in
    those bytes, in version order (which is also log order).
    """

    directory: Path
    generation: int
    segments: tuple[tuple[int, int], ...]
    """``(segment number, end)``: the view holds bytes ``[0, end)`` of each."""
    commits: tuple[wal.RecordInfo, ...]
    growing: int | None
    """The segment whose file may grow past its `end` while the view is held
    (the active segment of an open storage); None when no file changes."""

    def segment_path(self, number: int) -> Path:
        return self.directory / wal.segment_name(self.generation, number)


def lock_for_reading(path: Path) -> int | None:
    """A shared lock on the ``LOCK`` file of `path`, for a reader that writes nothing (fsck).

    It keeps a StandaloneFileStorage from opening the directory meanwhile.
    Nothing is created or written: when there is no ``LOCK`` file, no
    StandaloneFileStorage has ever opened the directory and None is returned
    (the caller checks afterwards that none did meanwhile).

    Returns:
        The locked file descriptor (close it to unlock), or None.

    Raises:
        StorageError: a StandaloneFileStorage has the directory open.
    """
    try:
        return _lock(path, shared=True)
    except FileNotFoundError:
        return None


def _lock(path: Path, *, shared: bool = False) -> int:
    """Lock the directory `path` (`seglog.lock_directory`) without waiting."""
    try:
        return seglog.lock_directory(path, shared=shared)
    except seglog.DirectoryLocked as exc:
        raise StorageError(
            f"{path} is already open (by another process, another "
            "StandaloneFileStorage in this one, or a running fsck); close it first"
        ) from exc


@dataclasses.dataclass(frozen=True, slots=True)
class TornTail:
    """The end of the last segment that was never acknowledged; opening cuts it off."""

    segment: int
    offset: int
    """Where the segment is cut; every record before it is kept. Below the
    header size the header never reached the disk, and it is written again."""
    size: int
    """The segment's size on disk."""


@dataclasses.dataclass(frozen=True, slots=True)
class Recovery:
    """What opening a directory finds, and what it would change, worked out without writing.

    `plan_recovery` makes it, opening applies it, fsck reports it.
    """

    generation: int
    segments: tuple[int, ...]
    """The live segments, in order; the last one is the active one."""
    records: tuple[wal.RecordInfo, ...]
    """The checkpoint's records, then those replayed after its tail."""
    torn: TornTail | None
    leftovers: tuple[str, ...]
    """Segment files of the generation just before or after the live one,
    left by an interrupted pack; opening removes them."""
    fresh: bool
    """No checkpoint and no segment: opening starts a new database."""


def plan_recovery(directory: Path) -> Recovery:
    """Read a directory as opening does, and work out what opening would change.

    Reads only. The rules are in the "Recovery" section of
    `protobase.storage.wal`: only a torn tail of the last segment and the
    files of an interrupted pack may go; anything else that does not fit
    raises.

    Raises:
        CorruptionError: damaged bytes (names the file and offset).
        StorageError: the files do not form one database (a segment is
            missing, or segments of a generation no pack left); names them.
    """
    found: dict[int, set[int]] = {}
    for entry in os.listdir(directory):
        parsed = wal.parse_segment_name(entry)
        if parsed is not None:
            found.setdefault(parsed[0], set()).add(parsed[1])
    checkpoint = read_checkpoint(directory)
    if checkpoint is None and not found:
        return Recovery(1, (1,), (), TornTail(1, 0, 0), (), fresh=True)
    if checkpoint is None:
        checkpoint = _checkpoint_from_segments(directory, found)
        named = "without a checkpoint, a generation starts at segment 1"
    else:
        _check_checkpoint_shape(directory, checkpoint)
        named = "the checkpoint names it"
    generation = checkpoint.generation
    segments = _live_segments(directory, checkpoint, found.get(generation, set()), named)
    leftovers = _leftovers(directory, generation, found)
    records = list(checkpoint.records)
    torn = None
    tail_segment, tail_offset = checkpoint.tail
    for number in segments:
        if number < tail_segment:
            continue  # indexed by the checkpoint; fsck verifies it
        path = directory / wal.segment_name(generation, number)
        data = path.read_bytes()
        start = tail_offset if number == tail_segment else 0
        if start > len(data):
            raise CorruptionError(
                f"{path}: offset {len(data)}: the segment ends before offset {start}, "
                "where the checkpoint says acknowledged commits reach; restore from "
                "a backup"
            )
        scan = wal.scan_segment(path, data, start, number == segments[-1], generation, number)
        records.extend(scan.records)
        if scan.torn_at is not None:
            torn = TornTail(number, scan.torn_at, len(data))
    return Recovery(generation, segments, tuple(records), torn, leftovers, fresh=False)


def _checkpoint_from_segments(directory: Path, found: dict[int, set[int]]) -> Checkpoint:
    """Without a checkpoint, start from the one WAL generation on disk (full scan).

    Raises:
        StorageError: segments of several generations are present, so it
            cannot be known which one is live.
    """
    if len(found) > 1:
        raise StorageError(
            f"{directory} has no checkpoint and WAL segments of generations "
            f"{sorted(found)}; cannot tell which is live. Restore checkpoint.pbc, or "
            "move the other generation's files away"
        )
    [generation] = found
    return Checkpoint(generation, [1], (1, 0), [])


def _check_checkpoint_shape(directory: Path, checkpoint: Checkpoint) -> None:
    """Refuse a checkpoint whose segment list recovery could not follow."""
    segments = checkpoint.segments
    consecutive = bool(segments) and segments == list(range(segments[0], segments[-1] + 1))
    if not consecutive or checkpoint.tail[0] not in segments:
        raise CorruptionError(
            f"{directory / CHECKPOINT_NAME}: offset 0: names segments {segments} and a tail "
            f"in segment {checkpoint.tail[0]}, which do not fit together; remove it to "
            "rebuild the index from the WAL (slower open), or restore from a backup"
        )


def _live_segments(
    directory: Path, checkpoint: Checkpoint, on_disk: set[int], named: str
) -> tuple[int, ...]:
    """The checkpoint's segments and those numbered on from them (created after it)."""
    segments = list(checkpoint.segments)
    for number in segments:
        if number not in on_disk:
            raise StorageError(
                f"{directory}: WAL segment {wal.segment_name(checkpoint.generation, number)} "
                f"is missing ({named}); nothing was changed. Restore it from a backup"
            )
    while segments[-1] + 1 in on_disk:
        segments.append(segments[-1] + 1)
    strays = sorted(on_disk.difference(segments))
    if strays:
        stray = directory / wal.segment_name(checkpoint.generation, strays[0])
        raise StorageError(
            f"{stray}: a segment of the live WAL generation that does not follow segment "
            f"{segments[-1]} (the segments in between are missing), so the log cannot be "
            "read to its end; nothing was changed. Restore the missing segments from a "
            "backup, or move this file away if it does not belong to this database"
        )
    return tuple(segments)


def _leftovers(directory: Path, generation: int, found: dict[int, set[int]]) -> tuple[str, ...]:
    """Segment files an interrupted pack left next to the live `generation`.

    Raises:
        StorageError: files of a generation that is not a neighbour of the
            live one.
        CorruptionError: a neighbour's file whose header is not its own.
    """
    leftovers = []
    for other, numbers in sorted(found.items()):
        if other == generation:
            continue
        names = [wal.segment_name(other, number) for number in sorted(numbers)]
        if abs(other - generation) != 1:
            raise StorageError(
                f"{directory}: WAL segments of generation {other} ({', '.join(names)}) were "
                f"not left by a pack of the live generation {generation}; nothing was "
                "changed. Move them out of the directory"
            )
        for number, name in zip(sorted(numbers), names, strict=True):
            with open(directory / name, "rb") as segment:
                head = segment.read(wal.SEGMENT_HEADER_SIZE)
            ours = head == wal.segment_header(other, number)
            # The next generation's files were never synced (the pack did not
            # switch to them); the previous one's were, before the switch.
            if not ours and not (
                other > generation and wal.header_never_written(head, other, number)
            ):
                raise CorruptionError(
                    f"{directory / name}: offset 0: not the header of segment {number} of "
                    f"WAL generation {other}, so it is not a leftover of a pack; nothing was "
                    "changed. Move it out of the directory"
                )
            leftovers.append(name)
    return tuple(leftovers)


class _GenerationWriter:
    """Writes the segments of a new WAL generation (used by pack)."""

    def __init__(self, directory: Path, generation: int, segment_bytes: int) -> None:
        self.directory = directory
        self.generation = generation
        self.segment_bytes = segment_bytes
        self.segments: list[int] = []
        self.fds: dict[int, int] = {}
        self.records: list[wal.RecordInfo] = []
        self.size = 0
        self._start_segment()

    @property
    def tail(self) -> tuple[int, int]:
        return self.segments[-1], self.size

    def _start_segment(self) -> None:
        number = len(self.segments) + 1
        path = self.directory / wal.segment_name(self.generation, number)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.fds[number] = fd
        self.segments.append(number)
        write_all(fd, wal.segment_header(self.generation, number))
        self.size = wal.SEGMENT_HEADER_SIZE

    def append(self, record_bytes: bytes) -> None:
        if (
            self.size + len(record_bytes) > self.segment_bytes
            and self.size > wal.SEGMENT_HEADER_SIZE
        ):
            wal.durable_write(self.fds[self.segments[-1]])
            self._start_segment()
        number = self.segments[-1]
        write_all(self.fds[number], record_bytes)
        self.records.append(placed(record_bytes, number, self.size))
        self.size += len(record_bytes)

    def finish(self) -> None:
        for fd in self.fds.values():
            wal.durable_write(fd)
        wal.fsync_directory(self.directory)

    def abandon(self) -> None:
        for number, fd in self.fds.items():
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / wal.segment_name(self.generation, number))


def _looks_like_database(path: Path) -> bool:
    if (path / CHECKPOINT_NAME).exists():
        return True
    return any(wal.parse_segment_name(entry) is not None for entry in os.listdir(path))
