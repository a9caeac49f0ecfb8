"""Backup of a StandaloneFileStorage database to S3, restore from it, and verification.

Library functions; ``protobase backup|restore`` are thin wrappers (`protobase.cli`).
Every S3 call goes through `protobase.s3.Bucket`.

What is copied
--------------

A backup copies the live WAL generation's segments (format:
`protobase.storage.wal`) up to the end of their last complete, durable record,
and nothing else: the checkpoint is an index that opening rebuilds from the
segments, and the files of an interrupted pack are not part of the database.
The source is either

- a directory (*cold*): a shared lock on its ``LOCK`` file keeps a
  StandaloneFileStorage from opening it while the backup reads (the lock fsck
  takes); `plan_recovery` says which segments are live and where a torn tail
  begins, and the backup stops there; or
- an open `StandaloneFileStorage` (*hot*, from the process that owns it):
  `StandaloneFileStorage.backup_view` gives the live generation, its segments
  and the offset where its durable records end, and keeps pack from replacing
  the segments until the backup is done. Commits go on meanwhile; what they
  append after the view was taken is not in this backup.

Layout under ``s3://bucket/prefix``
-----------------------------------

::

    data/wal-GGGG-NNNNNNNN.pbw/SSSSSSSSSSSS-EEEEEEEEEEEE.HHHHHHHHHHHHHHHH
        bytes [S, E) of WAL segment N of generation G (decimal offsets), whose
        xxh3-64 is H (hex). Always whole records: S is 0 (the segment header
        comes first) or where an earlier piece of the segment ended.
    manifests/YYYYMMDDTHHMMSSffffffZ-RRRRRRRR.json
        one backup: the time (UTC) its view of the database was taken and a
        random suffix. JSON ``{"manifest": {...}, "xxh3": H}`` where H is the
        xxh3-64 of the manifest's canonical JSON (sorted keys, no spaces).

A manifest names, in log order, every object the backup needs (``objects``:
key, segment, start, end, size, xxh3, and the first/last root version and the
smallest/largest commit time of the commit records in it, or null when it
holds none), the generation, and the first/last root version and their
commit times (``first_version``, ``last_version``, ``first_time_us``,
``last_time_us``, microseconds since the Unix epoch as the WAL stores them).
Restore picks a backup, and the object to cut in, from manifests alone.

Invariants
----------

- **Objects are named by their content.** A key names one byte range of one
  segment and the checksum of those bytes, so writing a key again writes the
  same bytes, and an object is never changed or deleted by ProtoBase.
- **The manifest is the commit point.** It is written last, with
  ``IfNoneMatch``, and only after every object it names was listed in the
  bucket with its size. Objects no manifest names are what an interrupted
  backup left; the next backup reuses each one whose bytes it holds (and
  `verify` counts them in its notes).
- **Reuse is checked against the bytes.** A backup lists the objects of the
  generation and, segment by segment from offset 0, reuses an object only
  when the local bytes of its range hash to its checksum; it uploads the
  rest of the segment as one new object. So a re-run uploads only bytes that
  are not in the bucket yet, and a log that is not the one backed up before
  (another database, or one restored with ``at_version`` that went on
  differently) never reuses a byte that differs. The cost is that every run
  reads the local WAL once (not uploaded again).
- **Restore changes nothing before it is sure.** It checks the destination,
  picks a manifest and downloads into a new sibling directory, checks every
  object's size and checksum, assembles and syncs the segments, and renames
  the directory to the destination last; on any failure it removes what it
  wrote, and the destination is as it was.
- **Versions increase along the log** (each commit record's version is the
  one before plus one, and pack keeps the order), so "cut after the last
  commit record whose version is <= V" leaves exactly version V as the
  latest root, and a commit's atoms always lie before its record.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import xxhash

from .errors import CorruptionError, ProtoBaseException, StorageError
from .s3 import Bucket, ObjectMissing, S3Location
from .storage import wal
from .storage.file import (
    LOCK_NAME,
    Progress,
    Recovery,
    StandaloneFileStorage,
    WalView,
    lock_for_reading,
    plan_recovery,
)

FORMAT = "protobase-backup"
FORMAT_VERSION = 1
CHECKSUM = "xxh3-64"
DATA = "data/"
MANIFESTS = "manifests/"
DEFAULT_CONCURRENCY = 4
"""Objects uploaded or downloaded at once (each big one is itself multipart and threaded)."""
PUT_LIMIT = 32 * 1024 * 1024
"""A new object that is not a whole, unchanging segment file is read into memory
and PUT when it is at most this big; a bigger one is copied to a temporary file
and uploaded from there."""
GET_LIMIT = 8 * 1024 * 1024
"""Objects up to this size are fetched with one GET; bigger ones with boto3's
threaded, multipart download."""
READ_CHUNK = 8 * 1024 * 1024

_PIECE_KEY = re.compile(r"^data/(wal-\d+-\d+\.pbw)/(\d{12,})-(\d{12,})\.([0-9a-f]{16})$")
_MANIFEST_NAME = re.compile(r"^manifests/\d{8}T\d{12}Z-[0-9a-f]{8}\.json$")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

T = TypeVar("T")
R = TypeVar("R")


class BackupArgumentError(ProtoBaseException, ValueError):
    """An argument of backup, restore or verify is malformed; nothing was done."""


class BackupNotFoundError(StorageError):
    """The location holds no backup, or none that holds the version or time asked for."""


# --------------------------------------------------------------------------
# reports and manifests
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What one `backup` stored. ``objects``/``bytes`` are the whole backup;
    ``uploaded_*`` the part this run sent (the rest was in the bucket already)."""

    location: str
    manifest: str
    """The manifest's key under the location's prefix."""
    hot: bool
    generation: int
    first_version: int
    last_version: int
    first_time: dt.datetime
    last_time: dt.datetime
    objects: int
    bytes: int
    uploaded_objects: int
    uploaded_bytes: int

    @property
    def reused_objects(self) -> int:
        return self.objects - self.uploaded_objects

    @property
    def reused_bytes(self) -> int:
        return self.bytes - self.uploaded_bytes


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What `restore` wrote. ``version`` is the latest root of the restored database."""

    location: str
    manifest: str
    destination: Path
    generation: int
    first_version: int
    version: int
    time: dt.datetime
    """The commit time of ``version``."""
    objects: int
    """Objects downloaded (with ``at_version``/``at_time``, those up to the cut)."""
    bytes: int
    wal_bytes: int
    """The size of the restored WAL (after the cut)."""


@dataclass
class VerifyReport:
    """What `verify` found. `clean` is True when nothing is wrong.

    `notes` are facts that are not damage (objects an interrupted backup left).
    """

    location: str
    manifests: int = 0
    objects: int = 0
    bytes: int = 0
    databases_checked: int = 0
    """Restores that fsck checked (one per backup that no other backup contains)."""
    versions_checked: int = 0
    atoms_checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class Piece:
    """One object of a backup: bytes ``[start, end)`` of a WAL segment (whole records)."""

    key: str
    """Under the location's prefix; always `piece_key` of the other fields."""
    segment: int
    start: int
    end: int
    checksum: str
    """xxh3-64 of the bytes, 16 hex digits."""
    first_version: int | None
    last_version: int | None
    min_time_us: int | None
    max_time_us: int | None
    """Of the commit records in the piece; None when it holds none."""

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Manifest:
    """One backup, as its manifest object says (validated by `_parse_manifest`)."""

    name: str
    created: str
    source: str
    hot: bool
    generation: int
    first_version: int
    last_version: int
    first_time_us: int
    last_time_us: int
    pieces: tuple[Piece, ...]

    @property
    def bytes(self) -> int:
        return sum(piece.size for piece in self.pieces)

    @property
    def min_time_us(self) -> int:
        return min(p.min_time_us for p in self.pieces if p.min_time_us is not None)

    def segments(self) -> dict[int, list[Piece]]:
        grouped: dict[int, list[Piece]] = {}
        for piece in self.pieces:
            grouped.setdefault(piece.segment, []).append(piece)
        return grouped


def piece_key(generation: int, segment: int, start: int, end: int, checksum: str) -> str:
    """The key (under the prefix) of bytes ``[start, end)`` of a segment with this checksum."""
    return f"{DATA}{wal.segment_name(generation, segment)}/{start:012d}-{end:012d}.{checksum}"


def _parse_piece_key(key: str, generation: int) -> tuple[int, int, int, str] | None:
    """``(segment, start, end, checksum)`` of a key `piece_key` made for `generation`."""
    found = _PIECE_KEY.match(key)
    if found is None:
        return None
    parsed = wal.parse_segment_name(found.group(1))
    if parsed is None or parsed[0] != generation:
        return None
    start, end, checksum = int(found.group(2)), int(found.group(3)), found.group(4)
    if start >= end or piece_key(generation, parsed[1], start, end, checksum) != key:
        return None
    return parsed[1], start, end, checksum


# --------------------------------------------------------------------------
# backup
# --------------------------------------------------------------------------


def backup(
    source: str | os.PathLike[str] | StandaloneFileStorage,
    location: S3Location | str,
    progress: Progress | None = None,
    *,
    endpoint_url: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> BackupReport:
    """Back up a database to `location`, uploading only what the bucket does not hold yet.

    Args:
        source: the directory of a StandaloneFileStorage that no process has
            open (cold), or an open StandaloneFileStorage of this process (hot).
        location: ``s3://bucket/prefix`` or an `S3Location`; one prefix is
            meant for one database (see the module docstring).
        progress: called as ``progress(done, total)`` in bytes of the backup,
            from worker threads, one call at a time.
        endpoint_url: the S3 endpoint (else ``AWS_ENDPOINT_URL``, else AWS).
        concurrency: objects hashed and uploaded at once.

    Returns:
        The report; its manifest is the new backup.

    Raises:
        BackupArgumentError: a malformed location or source; nothing was done.
        StorageError: the directory is open elsewhere, is not a database, or
            holds no commit; S3 failed (`S3Unavailable`). No manifest was
            written, so the backup does not exist; what was uploaded is
            reused by the next run.
        CorruptionError: the source directory is damaged (from `plan_recovery`).
    """
    where = _parse_location(location)
    if concurrency < 1:
        raise BackupArgumentError(f"concurrency must be at least 1, not {concurrency}")
    if isinstance(source, StandaloneFileStorage):
        bucket = _open_bucket(where, endpoint_url, concurrency)
        with source.backup_view() as view:
            job = _Backup(bucket, where, view, _now(), str(source.path.resolve()), hot=True)
            return job.run(progress, concurrency)
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        raise BackupArgumentError(
            f"{source} is a cluster URL: this function backs up an embedded database; back a "
            "cluster up with cluster.backup.backup_cluster (`protobase backup URL LOCATION`)"
        )
    directory = Path(source)
    if not directory.is_dir():
        missing = "does not exist" if not directory.exists() else "is not a directory"
        raise StorageError(f"{directory} {missing}; give the directory of a ProtoBase database")
    bucket = _open_bucket(where, endpoint_url, concurrency)
    try:
        lock = lock_for_reading(directory)
    except StorageError as exc:
        raise StorageError(
            f"cannot back up {directory} from outside: {exc}. To back up a database while it "
            "is open, call protobase.backup.backup(storage, ...) in the process that has it open"
        ) from exc
    try:
        recovery = plan_recovery(directory)
        if recovery.fresh:
            raise StorageError(
                f"{directory} is not a ProtoBase database (no checkpoint, no WAL segments)"
            )
        view = _cold_view(directory, recovery)

        def still_unopened() -> None:
            if lock is None and (directory / LOCK_NAME).exists():
                raise StorageError(
                    f"{directory} was opened while the backup read it (it had no LOCK file "
                    "to hold); no backup was written. Run the backup again"
                )

        job = _Backup(bucket, where, view, _now(), str(directory.resolve()), hot=False)
        return job.run(progress, concurrency, before_manifest=still_unopened)
    finally:
        if lock is not None:
            os.close(lock)


def _cold_view(directory: Path, recovery: Recovery) -> WalView:
    """What opening `directory` would keep, as a `WalView` (nothing past a torn tail)."""
    ends = []
    for number in recovery.segments:
        end = os.stat(directory / wal.segment_name(recovery.generation, number)).st_size
        if recovery.torn is not None and recovery.torn.segment == number:
            end = recovery.torn.offset
        if end < wal.SEGMENT_HEADER_SIZE:
            continue  # the last segment, whose header never reached the disk: no record
        ends.append((number, end))
    commits = {r.version: r for r in recovery.records if r.kind == wal.KIND_COMMIT}
    ordered = tuple(sorted(commits.values(), key=lambda record: record.version))
    return WalView(directory, recovery.generation, tuple(ends), ordered, None)


@dataclass(frozen=True, slots=True)
class _Span:
    segment: int
    start: int
    end: int
    checksum: str
    uploaded: bool


class _Backup:
    """One run of `backup` over one `WalView`."""

    def __init__(
        self,
        bucket: Bucket,
        where: S3Location,
        view: WalView,
        created: dt.datetime,
        source: str,
        *,
        hot: bool,
    ) -> None:
        self.bucket = bucket
        self.where = where
        self.view = view
        self.created = created
        self.source = source
        self.hot = hot

    def run(
        self,
        progress: Progress | None,
        concurrency: int,
        before_manifest: Callable[[], None] | None = None,
    ) -> BackupReport:
        view = self.view
        if not view.commits:
            raise StorageError(f"{view.directory} holds no commit yet; there is nothing to back up")
        numbers = [number for number, _ in view.segments]
        if numbers != list(range(1, len(numbers) + 1)):
            raise StorageError(
                f"{view.directory}: the live WAL segments are {numbers}, not 1 to "
                f"{len(numbers)}; a restored log is read from segment 1, so this cannot be "
                "backed up (nothing was uploaded)"
            )
        existing = self._existing()
        meter = _Meter(sum(end for _, end in view.segments), progress)
        per_segment = _run_all(
            lambda segment: self._store_segment(segment[0], segment[1], existing, meter),
            list(view.segments),
            concurrency,
        )
        spans = [span for spans in per_segment for span in spans]
        pieces = _describe(view.generation, spans, view.commits)
        self._confirm_stored(pieces)
        if before_manifest is not None:
            before_manifest()
        first, last = view.commits[0], view.commits[-1]
        manifest = Manifest(
            name=f"{MANIFESTS}{self.created:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(4)}.json",
            created=self.created.isoformat(),
            source=self.source,
            hot=self.hot,
            generation=view.generation,
            first_version=first.version,
            last_version=last.version,
            first_time_us=first.time_us,
            last_time_us=last.time_us,
            pieces=tuple(pieces),
        )
        self.bucket.put(
            self.where.key(manifest.name), _manifest_bytes(manifest), if_none_match=True
        )
        uploaded = [span for span in spans if span.uploaded]
        return BackupReport(
            location=str(self.where),
            manifest=manifest.name,
            hot=self.hot,
            generation=view.generation,
            first_version=first.version,
            last_version=last.version,
            first_time=_from_us(first.time_us),
            last_time=_from_us(last.time_us),
            objects=len(pieces),
            bytes=manifest.bytes,
            uploaded_objects=len(uploaded),
            uploaded_bytes=sum(span.end - span.start for span in uploaded),
        )

    def _existing(self) -> dict[int, dict[int, list[tuple[int, str]]]]:
        """The generation's objects in the bucket: segment -> start -> [(end, checksum)]."""
        generation = self.view.generation
        found: dict[int, dict[int, list[tuple[int, str]]]] = {}
        base = len(self.where.key(""))
        prefix = self.where.key(f"{DATA}wal-{generation:04d}-")
        for key, size in self.bucket.list_objects(prefix):
            parsed = _parse_piece_key(key[base:], generation)
            if parsed is None:
                continue
            segment, start, end, checksum = parsed
            if size == end - start:  # another size: damaged; a new upload replaces it
                found.setdefault(segment, {}).setdefault(start, []).append((end, checksum))
        return found

    def _store_segment(
        self,
        number: int,
        end: int,
        existing: dict[int, dict[int, list[tuple[int, str]]]],
        meter: _Meter,
    ) -> list[_Span]:
        """Reuse the objects that hold this segment's bytes from offset 0; upload the rest."""
        path = self.view.segment_path(number)
        candidates = existing.get(number, {})
        spans: list[_Span] = []
        position = 0
        while position < end:
            options = sorted(
                (option for option in candidates.get(position, ()) if option[0] <= end),
                reverse=True,
            )
            for option_end, checksum in options:
                if _hash_range(path, position, option_end) == checksum:
                    spans.append(_Span(number, position, option_end, checksum, False))
                    meter.add(option_end - position)
                    position = option_end
                    break
            else:
                break
        if position < end:
            checksum = self._upload(number, position, end)
            spans.append(_Span(number, position, end, checksum, True))
            meter.add(end - position)
        return spans

    def _upload(self, number: int, start: int, end: int) -> str:
        """Upload bytes ``[start, end)`` of a segment; returns their checksum."""
        path = self.view.segment_path(number)
        generation = self.view.generation
        unchanging = number != self.view.growing and os.stat(path).st_size == end
        if start == 0 and unchanging:
            checksum = _hash_range(path, 0, end)
            key = piece_key(generation, number, start, end, checksum)
            self.bucket.upload_file(path, self.where.key(key))
        elif end - start <= PUT_LIMIT:
            data = _read_range(path, start, end)
            checksum = xxhash.xxh3_64_hexdigest(data)
            key = piece_key(generation, number, start, end, checksum)
            self.bucket.put(self.where.key(key), data)
        else:
            with tempfile.TemporaryDirectory(prefix="protobase-backup-") as scratch:
                copy = Path(scratch) / "piece"
                checksum = _copy_range(path, start, end, copy)
                key = piece_key(generation, number, start, end, checksum)
                self.bucket.upload_file(copy, self.where.key(key))
        return checksum

    def _confirm_stored(self, pieces: Sequence[Piece]) -> None:
        """Check that the bucket lists every piece with its size (before the manifest names it)."""
        listed = dict(
            self.bucket.list_objects(self.where.key(f"{DATA}wal-{self.view.generation:04d}-"))
        )
        for piece in pieces:
            key = self.where.key(piece.key)
            if listed.get(key) != piece.size:
                raise StorageError(
                    f"s3://{self.where.bucket}/{key}: listed with "
                    f"{listed.get(key, 'no')} bytes after the upload, not {piece.size}; no "
                    "backup was written. Run the backup again"
                )


def _describe(
    generation: int, spans: Sequence[_Span], commits: Sequence[wal.RecordInfo]
) -> list[Piece]:
    """The pieces of `spans`, each with the versions and times of the commit records in it."""
    by_segment: dict[int, list[wal.RecordInfo]] = {}
    for record in commits:
        by_segment.setdefault(record.segment, []).append(record)
    offsets = {number: [r.offset for r in records] for number, records in by_segment.items()}
    pieces = []
    for span in spans:
        records = by_segment.get(span.segment, [])
        starts = offsets.get(span.segment, [])
        inside = records[
            bisect.bisect_left(starts, span.start) : bisect.bisect_left(starts, span.end)
        ]
        pieces.append(_piece(generation, span.segment, span.start, span.end, span.checksum, inside))
    return pieces


def _piece(
    generation: int,
    segment: int,
    start: int,
    end: int,
    checksum: str,
    commits: Sequence[wal.RecordInfo],
) -> Piece:
    times = [r.time_us for r in commits]
    return Piece(
        key=piece_key(generation, segment, start, end, checksum),
        segment=segment,
        start=start,
        end=end,
        checksum=checksum,
        first_version=commits[0].version if commits else None,
        last_version=commits[-1].version if commits else None,
        min_time_us=min(times) if times else None,
        max_time_us=max(times) if times else None,
    )


# --------------------------------------------------------------------------
# restore
# --------------------------------------------------------------------------


def restore(
    location: S3Location | str,
    dest: str | os.PathLike[str],
    at_version: int | None = None,
    at_time: dt.datetime | None = None,
    progress: Progress | None = None,
    *,
    endpoint_url: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> RestoreReport:
    """Restore the latest backup at `location`, or the state at a version or time, into `dest`.

    With `at_version`, the latest backup that holds that root version is
    used and its log is cut right after that version's commit record, so
    `dest` opens with exactly that version as its latest root. With
    `at_time`, the same for the greatest version whose commit time is at or
    before `at_time` (a naive datetime is local time, as
    `datetime.timestamp` takes it); a time after a backup's last commit gives
    that backup's last version. The restored directory has no checkpoint:
    its first open reads (and so checks) every record and writes one.

    Args:
        dest: must not exist (its parents are created) or be an empty directory.
        progress: ``progress(done, total)`` in bytes downloaded, from worker threads.

    Raises:
        BackupArgumentError: malformed arguments; nothing was done.
        StorageError: `dest` exists and is not an empty directory; S3 failed.
        BackupNotFoundError: no backup, or none that holds the version or time.
        CorruptionError: an object or a manifest fails its checksum or does
            not fit (the message names it). `dest` is left as it was: the
            restore writes into a temporary sibling directory, renamed to
            `dest` only at the end, and removed on failure.
    """
    where = _parse_location(location)
    if at_version is not None and at_time is not None:
        raise BackupArgumentError("give at_version or at_time, not both")
    if at_version is not None and (
        not isinstance(at_version, int) or isinstance(at_version, bool) or at_version < 1
    ):
        raise BackupArgumentError(
            f"at_version must be a root version (1 or more), not {at_version!r}"
        )
    at_time_us = None if at_time is None else _time_us(at_time)
    if concurrency < 1:
        raise BackupArgumentError(f"concurrency must be at least 1, not {concurrency}")
    target = Path(os.path.abspath(dest))  # "restored/", "." and ".." have a name and a parent
    _check_destination(target)
    bucket = _open_bucket(where, endpoint_url, concurrency)
    manifest, cut = _choose(bucket, where, at_version, at_time_us)
    pieces = manifest.pieces if cut is None else manifest.pieces[: cut + 1]
    created = _create_parents(target.parent)
    work = target.parent / f".{target.name}.restore-{secrets.token_hex(4)}"
    try:
        work.mkdir()
        meter = _Meter(sum(piece.size for piece in pieces), progress)
        parts = _download(bucket, where, manifest, pieces, work, meter, concurrency)
        segments = _group(pieces)
        cut_piece = pieces[-1] if cut is not None else None
        outcomes = _run_all(
            lambda item: _assemble_restored(
                work, manifest, item[0], item[1], parts, cut_piece, at_version, at_time_us
            ),
            list(segments.items()),
            concurrency,
        )
        wal.fsync_directory(work)
        _check_destination(target)
        try:
            os.rename(work, target)
        except OSError as exc:
            raise StorageError(
                f"cannot move the restored database from {work} to {target}: {exc.strerror}; "
                "nothing was restored"
            ) from exc
        wal.fsync_directory(target.parent.resolve())
    except BaseException as exc:
        _remove_quietly_noted(work, exc)
        for directory in reversed(created):
            _rmdir_noted(directory, exc)
        raise
    chosen = [outcome for outcome in outcomes if outcome is not None]
    version, time_us = chosen[0] if chosen else (manifest.last_version, manifest.last_time_us)
    return RestoreReport(
        location=str(where),
        manifest=manifest.name,
        destination=target,
        generation=manifest.generation,
        first_version=manifest.first_version,
        version=version,
        time=_from_us(time_us),
        objects=len(pieces),
        bytes=sum(piece.size for piece in pieces),
        wal_bytes=sum(os.stat(target / name).st_size for name in os.listdir(target)),
    )


def _check_destination(target: Path) -> None:
    if target.is_symlink():
        raise StorageError(
            f"{target} is a symbolic link; restore into a new or empty directory (nothing was "
            "written)"
        )
    if not target.exists():
        return
    if not target.is_dir():
        raise StorageError(
            f"{target} exists and is not a directory; restore into a new or empty directory "
            "(nothing was written)"
        )
    if any(target.iterdir()):
        raise StorageError(
            f"{target} is not empty; restore into a new or empty directory (nothing was written)"
        )


def _create_parents(directory: Path) -> list[Path]:
    """Create `directory` and its missing parents; returns those created, outermost first."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    missing.reverse()
    for path in missing:
        path.mkdir()
    return missing


def _choose(
    bucket: Bucket, where: S3Location, at_version: int | None, at_time_us: int | None
) -> tuple[Manifest, int | None]:
    """The manifest to restore (the newest that fits) and the index of the piece to cut in.

    A damaged manifest met on the way raises: it may be the backup asked for.
    """
    names = _manifest_names(bucket, where)
    seen: list[Manifest] = []
    for name in reversed(names):
        manifest = _load_manifest(bucket, where, name)
        if at_version is None and at_time_us is None:
            return manifest, None
        cut = _cut_index(manifest, at_version, at_time_us)
        if cut is not None:
            return manifest, cut
        seen.append(manifest)
    oldest = min(m.first_version for m in seen)
    newest = max(m.last_version for m in seen)
    earliest = _from_us(min(m.min_time_us for m in seen)).isoformat()
    if at_version is not None:
        asked = f"version {at_version}"
    else:
        assert at_time_us is not None
        asked = f"a version committed at or before {_from_us(at_time_us).isoformat()}"
    raise BackupNotFoundError(
        f"no backup at {where} holds {asked}: its {len(seen)} backup(s) hold versions "
        f"{oldest} to {newest}, the earliest committed at {earliest} (a backup made after a "
        "pack holds only the versions pack kept)"
    )


def _cut_index(manifest: Manifest, at_version: int | None, at_time_us: int | None) -> int | None:
    """The index of the piece holding the cut, or None when the manifest does not hold it."""
    chosen = None
    for index, piece in enumerate(manifest.pieces):
        if at_version is not None:
            if piece.first_version is not None and piece.first_version <= at_version:
                chosen = index
        elif at_time_us is not None and piece.min_time_us is not None:
            chosen = index if piece.min_time_us <= at_time_us else chosen
    if at_version is not None and at_version > manifest.last_version:
        return None
    return chosen


def _download(
    bucket: Bucket,
    where: S3Location,
    manifest: Manifest,
    pieces: Sequence[Piece],
    directory: Path,
    meter: _Meter,
    concurrency: int,
) -> dict[str, Path]:
    """Download `pieces` into files of `directory`, each checked; returns key -> file."""
    paths = {piece.key: directory / f"piece-{index:08d}" for index, piece in enumerate(pieces)}
    _run_all(
        lambda piece: _fetch(bucket, where, piece, paths[piece.key], meter, manifest.name),
        list(pieces),
        concurrency,
    )
    return paths


def _fetch(
    bucket: Bucket, where: S3Location, piece: Piece, path: Path, meter: _Meter, named_by: str
) -> None:
    """Download one piece to `path` and check its size and checksum.

    Raises:
        CorruptionError: the object's size or checksum is not the manifest's.
        StorageError: the object is missing (`ObjectMissing`) or S3 failed.
    """
    key = where.key(piece.key)
    try:
        if piece.size <= GET_LIMIT:
            data = bucket.get(key)
            size, checksum = len(data), xxhash.xxh3_64_hexdigest(data)
            with open(path, "wb") as handle:
                handle.write(data)
        else:
            bucket.download_file(key, path)
            size = os.stat(path).st_size
            checksum = _hash_range(path, 0, size)
    except ObjectMissing as exc:
        raise ObjectMissing(f"{exc}; backup {named_by} names it, so it cannot be restored") from exc
    if size != piece.size or checksum != piece.checksum:
        raise CorruptionError(
            f"s3://{where.bucket}/{key}: the object holds {size} bytes with {CHECKSUM} "
            f"{checksum}; backup {named_by} says {piece.size} bytes with {piece.checksum}. "
            "The object is damaged; restore from another backup (see `protobase backup "
            "verify`)"
        )
    meter.add(piece.size)


def _group(pieces: Sequence[Piece]) -> dict[int, list[Piece]]:
    grouped: dict[int, list[Piece]] = {}
    for piece in pieces:
        grouped.setdefault(piece.segment, []).append(piece)
    return grouped


def _assemble_restored(
    directory: Path,
    manifest: Manifest,
    number: int,
    pieces: list[Piece],
    parts: dict[str, Path],
    cut_piece: Piece | None,
    at_version: int | None,
    at_time_us: int | None,
) -> tuple[int, int] | None:
    """Build segment `number` from its downloaded pieces, cut it when it holds the cut, sync it.

    Returns:
        ``(version, commit time)`` of the last commit kept, for the segment
        that holds the cut; None otherwise.
    """
    path = directory / wal.segment_name(manifest.generation, number)
    _join([parts[piece.key] for piece in pieces], path, remove=True)
    kept = None
    if cut_piece is not None and cut_piece.segment == number:
        kept, offset = _cut_offset(path, manifest, cut_piece, at_version, at_time_us)
        os.truncate(path, offset)
    fd = os.open(path, os.O_RDONLY)
    try:
        wal.durable_write(fd)
    finally:
        os.close(fd)
    return kept


def _cut_offset(
    path: Path,
    manifest: Manifest,
    piece: Piece,
    at_version: int | None,
    at_time_us: int | None,
) -> tuple[tuple[int, int], int]:
    """Where to cut `piece`'s segment: right after its last commit record that fits.

    Returns:
        ``((version, time), offset)`` of that record.

    Raises:
        CorruptionError: the piece's records cannot be read, or none fits
            although the manifest says one does.
    """
    found = None
    for record in _piece_records(path, manifest, piece):
        if record.kind != wal.KIND_COMMIT:
            continue
        fits = (
            record.version <= at_version
            if at_version is not None
            else at_time_us is not None and record.time_us <= at_time_us
        )
        if fits:
            found = ((record.version, record.time_us), piece.start + record.offset + record.size)
    if found is None:
        raise CorruptionError(
            f"{piece.key} of backup {manifest.name} holds no commit record at or before the "
            "version or time asked for, although its manifest says it does; the manifest does "
            "not fit its data (see `protobase backup verify`)"
        )
    return found


def _piece_records(path: Path, manifest: Manifest, piece: Piece) -> Iterator[wal.RecordInfo]:
    """The records of `piece`, read from its segment file (offsets relative to the piece)."""
    data = _read_range(path, piece.start, piece.end)
    offset = wal.SEGMENT_HEADER_SIZE if piece.start == 0 else 0
    while offset < len(data):
        try:
            record = wal.parse_record(data, offset, piece.segment)
        except wal.TornRecord as exc:
            raise CorruptionError(
                f"{piece.key} of backup {manifest.name}: offset {piece.start + offset}: "
                f"damaged WAL record ({exc}); the backup was made from damaged data"
            ) from exc
        yield record
        offset += record.size


# --------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------


def verify(
    location: S3Location | str,
    progress: Progress | None = None,
    *,
    endpoint_url: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> VerifyReport:
    """Check every backup at `location`: every object, every record, every pointer.

    Every manifest is read and checked (checksum, shape). Every object any
    manifest names is downloaded once and its size and checksum checked.
    Then, for each backup whose log is not a byte prefix of another backup's
    log (a later backup of the same generation contains the earlier ones:
    same objects at the same places), the backup is restored into a
    temporary directory and `protobase.maintenance.fsck` checks every record
    and every pointer reachable from every version it keeps; a torn record
    at its end is a problem too. The per-object versions and times of every
    manifest are checked against those records (restore cuts by them), and
    every object must end on a record boundary. Needs local disk space for
    the objects (in the system's temporary directory; set TMPDIR).

    Returns:
        The report; damage is in its `problems`, never raised. Objects no
        manifest names are counted in its `notes`.

    Raises:
        BackupArgumentError: a malformed location.
        BackupNotFoundError: the location holds no backup.
        StorageError: S3 failed (`S3Unavailable`), so nothing could be judged.
    """
    from .maintenance import fsck

    where = _parse_location(location)
    bucket = _open_bucket(where, endpoint_url, concurrency)
    report = VerifyReport(str(where))
    names = _manifest_names(bucket, where)
    manifests: list[Manifest] = []
    for name in names:
        try:
            manifests.append(_load_manifest(bucket, where, name))
        except CorruptionError as exc:
            report.problems.append(str(exc))
    report.manifests = len(names)
    pieces: dict[str, Piece] = {}
    named_by: dict[str, list[str]] = {}
    for manifest in manifests:
        for piece in manifest.pieces:
            # A key fixes its range and checksum (`_parse_piece`), so manifests naming
            # one key agree about it.
            pieces.setdefault(piece.key, piece)
            named_by.setdefault(piece.key, []).append(manifest.name)
    report.objects = len(pieces)
    report.bytes = sum(piece.size for piece in pieces.values())
    _note_leftovers(bucket, where, pieces, report)
    with tempfile.TemporaryDirectory(prefix="protobase-verify-") as scratch:
        work = Path(scratch)
        meter = _Meter(report.bytes, progress)
        files = {key: work / f"piece-{index:08d}" for index, key in enumerate(pieces)}
        failed = _run_all(
            lambda key: _fetch_reported(bucket, where, pieces[key], files[key], meter, named_by),
            list(pieces),
            concurrency,
        )
        bad = {key for key, problem in zip(pieces, failed, strict=True) if problem is not None}
        report.problems.extend(problem for problem in failed if problem is not None)
        usable = []
        for manifest in manifests:
            damaged = [piece.key for piece in manifest.pieces if piece.key in bad]
            if damaged:
                report.problems.append(
                    f"backup {manifest.name} cannot be restored: {len(damaged)} of its objects "
                    f"are damaged or missing (first: {damaged[0]})"
                )
            else:
                usable.append(manifest)
        pending = _widest_first(usable)
        while pending:
            widest, covered = pending.pop(0)
            directory = work / f"db-{report.databases_checked}"
            directory.mkdir()
            for number, segment_pieces in widest.segments().items():
                _join(
                    [files[piece.key] for piece in segment_pieces],
                    directory / wal.segment_name(widest.generation, number),
                    remove=False,
                )
            checked = fsck(directory)
            report.databases_checked += 1
            report.versions_checked += checked.versions_checked
            report.atoms_checked += checked.atoms_checked
            label = f"{where}/{widest.name}"
            for problem in checked.problems + checked.notes:
                report.problems.append(
                    f"backup {widest.name}: {problem}".replace(str(directory), label)
                )
            if checked.clean and not checked.notes:
                records = plan_recovery(directory).records
                for manifest in covered:
                    report.problems.extend(_check_descriptions(manifest, records))
            else:
                # The shorter backups may end before the damage: check each on its own.
                pending.extend(_widest_first([m for m in covered if m is not widest]))
            shutil.rmtree(directory)
    return report


def _fetch_reported(
    bucket: Bucket,
    where: S3Location,
    piece: Piece,
    path: Path,
    meter: _Meter,
    named_by: dict[str, list[str]],
) -> str | None:
    """`_fetch`, with damage returned as a problem (S3 failures still raise)."""
    names = ", ".join(named_by[piece.key])
    try:
        _fetch(bucket, where, piece, path, meter, names)
    except (CorruptionError, ObjectMissing) as exc:
        return str(exc)
    return None


def _note_leftovers(
    bucket: Bucket, where: S3Location, pieces: dict[str, Piece], report: VerifyReport
) -> None:
    base = len(where.key(""))
    count = size = 0
    for key, listed_size in bucket.list_objects(where.key(DATA)):
        if key[base:] not in pieces:
            count += 1
            size += listed_size
    if count:
        report.notes.append(
            f"{count} object(s) ({size} bytes) under {where}/{DATA} are named by no backup: left "
            "by an interrupted backup (the next backup reuses those that hold its bytes) or by "
            "a backup whose manifest is damaged"
        )


def _widest_first(manifests: Sequence[Manifest]) -> list[tuple[Manifest, list[Manifest]]]:
    """Each group: a manifest, and those whose log is a byte prefix of its log (itself too)."""
    groups: list[tuple[Manifest, list[Manifest]]] = []
    for manifest in sorted(manifests, key=lambda m: m.bytes, reverse=True):
        for widest, covered in groups:
            if _is_prefix(manifest, widest):
                covered.append(manifest)
                break
        else:
            groups.append((manifest, [manifest]))
    return groups


def _is_prefix(shorter: Manifest, longer: Manifest) -> bool:
    """Whether `shorter`'s log is a byte prefix of `longer`'s (same objects, same places)."""
    if shorter.generation != longer.generation:
        return False
    mine, theirs = shorter.segments(), longer.segments()
    numbers = list(mine)
    if numbers != list(theirs)[: len(numbers)]:
        return False
    for number in numbers[:-1]:
        if [p.key for p in mine[number]] != [p.key for p in theirs[number]]:
            return False
    last = [p.key for p in mine[numbers[-1]]]
    return last == [p.key for p in theirs[numbers[-1]]][: len(last)]


def _check_descriptions(manifest: Manifest, records: Sequence[wal.RecordInfo]) -> list[str]:
    """Problems where `manifest`'s per-object versions and times do not fit the records."""
    problems = []
    ends = {piece.segment: piece.end for piece in manifest.pieces}
    commits = [
        r
        for r in records
        if r.kind == wal.KIND_COMMIT and r.segment in ends and r.offset < ends[r.segment]
    ]
    commits.sort(key=lambda record: (record.segment, record.offset))
    claimed = (
        manifest.first_version,
        manifest.first_time_us,
        manifest.last_version,
        manifest.last_time_us,
    )
    held = (
        (commits[0].version, commits[0].time_us, commits[-1].version, commits[-1].time_us)
        if commits
        else None
    )
    if held != claimed:
        problems.append(
            f"backup {manifest.name}: says it holds versions {claimed[0]} (time {claimed[1]}) "
            f"to {claimed[2]} (time {claimed[3]}); its records hold {held}"
        )
    by_segment: dict[int, list[wal.RecordInfo]] = {}
    for record in records:
        by_segment.setdefault(record.segment, []).append(record)
    for number in by_segment:
        by_segment[number].sort(key=lambda record: record.offset)
    for piece in manifest.pieces:
        in_segment = by_segment.get(piece.segment, [])
        boundaries = {wal.SEGMENT_HEADER_SIZE} | {r.offset + r.size for r in in_segment}
        if piece.end not in boundaries:
            problems.append(
                f"backup {manifest.name}: {piece.key} does not end on a record boundary"
            )
            continue
        inside = [
            r
            for r in in_segment
            if piece.start <= r.offset < piece.end and r.kind == wal.KIND_COMMIT
        ]
        expected = _piece(
            manifest.generation, piece.segment, piece.start, piece.end, piece.checksum, inside
        )
        if expected != piece:
            problems.append(
                f"backup {manifest.name}: {piece.key} is described as versions "
                f"{piece.first_version}-{piece.last_version} (times {piece.min_time_us}-"
                f"{piece.max_time_us}), its records hold {expected.first_version}-"
                f"{expected.last_version} ({expected.min_time_us}-{expected.max_time_us}); "
                "restore --at would cut in the wrong place"
            )
    return problems


# --------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------


def _manifest_names(bucket: Bucket, where: S3Location) -> list[str]:
    """The manifest names (under the prefix), oldest first.

    Raises:
        BackupNotFoundError: there is none.
    """
    base = len(where.key(""))
    names = sorted(
        key[base:]
        for key, _ in bucket.list_objects(where.key(MANIFESTS))
        if _MANIFEST_NAME.match(key[base:])
    )
    if not names:
        raise BackupNotFoundError(
            f"no backup at {where} (no manifest under {MANIFESTS}); check the bucket and prefix"
        )
    return names


def _manifest_bytes(manifest: Manifest) -> bytes:
    body = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "checksum": CHECKSUM,
        "created": manifest.created,
        "source": manifest.source,
        "hot": manifest.hot,
        "generation": manifest.generation,
        "first_version": manifest.first_version,
        "last_version": manifest.last_version,
        "first_time_us": manifest.first_time_us,
        "last_time_us": manifest.last_time_us,
        "objects": [
            {
                "key": piece.key,
                "segment": piece.segment,
                "start": piece.start,
                "end": piece.end,
                "size": piece.size,
                "xxh3": piece.checksum,
                "first_version": piece.first_version,
                "last_version": piece.last_version,
                "min_time_us": piece.min_time_us,
                "max_time_us": piece.max_time_us,
            }
            for piece in manifest.pieces
        ],
    }
    wrapped = {"manifest": body, "xxh3": xxhash.xxh3_64_hexdigest(_canonical(body))}
    return json.dumps(wrapped, indent=1, sort_keys=True).encode()


def _canonical(body: Any) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _load_manifest(bucket: Bucket, where: S3Location, name: str) -> Manifest:
    """Read and validate one manifest.

    Raises:
        CorruptionError: it fails its checksum or is malformed (names it).
    """
    return _parse_manifest(f"{where}/{name}", name, bucket.get(where.key(name)))


class _Malformed(Exception):
    """A manifest field that does not fit (internal to `_parse_manifest`)."""


def _parse_manifest(url: str, name: str, data: bytes) -> Manifest:
    try:
        wrapped = json.loads(data)
        if not isinstance(wrapped, dict) or not isinstance(wrapped.get("manifest"), dict):
            raise _Malformed("not a ProtoBase backup manifest")
        body = wrapped["manifest"]
        if xxhash.xxh3_64_hexdigest(_canonical(body)) != wrapped.get("xxh3"):
            raise _Malformed("it fails its checksum")
        if body.get("format") != FORMAT:
            raise _Malformed("not a ProtoBase backup manifest")
        if body.get("format_version") != FORMAT_VERSION or body.get("checksum") != CHECKSUM:
            raise _Malformed(
                f"format version {body.get('format_version')!r} with checksum "
                f"{body.get('checksum')!r}; this ProtoBase reads version {FORMAT_VERSION} "
                f"with {CHECKSUM} (a newer ProtoBase wrote it?)"
            )
        generation = _integer(body, "generation")
        pieces = tuple(_parse_piece(generation, item) for item in _list(body, "objects"))
        manifest = Manifest(
            name=name,
            created=_string(body, "created"),
            source=_string(body, "source"),
            hot=bool(body.get("hot")),
            generation=generation,
            first_version=_integer(body, "first_version"),
            last_version=_integer(body, "last_version"),
            first_time_us=_integer(body, "first_time_us"),
            last_time_us=_integer(body, "last_time_us"),
            pieces=pieces,
        )
        _check_shape(manifest)
    except (ValueError, _Malformed) as exc:  # json.JSONDecodeError is a ValueError
        raise CorruptionError(
            f"{url}: the backup manifest is damaged ({exc}); it cannot be restored. Other "
            "backups are unaffected; remove this manifest to restore from them"
        ) from exc
    return manifest


def _parse_piece(generation: int, item: object) -> Piece:
    if not isinstance(item, dict):
        raise _Malformed("an object entry is not a map")
    piece = Piece(
        key=_string(item, "key"),
        segment=_integer(item, "segment"),
        start=_integer(item, "start", minimum=0),
        end=_integer(item, "end"),
        checksum=_string(item, "xxh3"),
        first_version=_integer(item, "first_version", optional=True),
        last_version=_integer(item, "last_version", optional=True),
        min_time_us=_integer(item, "min_time_us", optional=True, minimum=0),
        max_time_us=_integer(item, "max_time_us", optional=True, minimum=0),
    )
    if _integer(item, "size") != piece.size:
        raise _Malformed(f"object {piece.key}: size {item.get('size')!r} is not end - start")
    expected = piece_key(generation, piece.segment, piece.start, piece.end, piece.checksum)
    if piece.key != expected or _parse_piece_key(piece.key, generation) is None:
        raise _Malformed(f"object {piece.key!r} does not fit its fields")
    described = (piece.first_version, piece.last_version, piece.min_time_us, piece.max_time_us)
    if any(value is None for value in described) and any(v is not None for v in described):
        raise _Malformed(f"object {piece.key} has versions without times or the reverse")
    return piece


def _check_shape(manifest: Manifest) -> None:
    """Segments 1..k in order, each tiled by its pieces from offset 0; versions consistent."""
    if not manifest.pieces:
        raise _Malformed("it names no object")
    segments = manifest.segments()
    if list(segments) != list(range(1, len(segments) + 1)):
        raise _Malformed(f"its segments are {list(segments)}, not 1 to {len(segments)}")
    for number, pieces in segments.items():
        position = 0
        for piece in pieces:
            if piece.start != position:
                raise _Malformed(f"segment {number} has a gap or overlap at offset {position}")
            position = piece.end
    described = [p for p in manifest.pieces if p.first_version is not None]
    if not described:
        raise _Malformed("no object holds a commit")
    previous = 0
    for piece in described:
        assert piece.first_version is not None and piece.last_version is not None
        if not previous < piece.first_version <= piece.last_version:
            raise _Malformed(f"object {piece.key}: versions do not increase along the log")
        previous = piece.last_version
    if (manifest.first_version, manifest.last_version) != (
        described[0].first_version,
        described[-1].last_version,
    ):
        raise _Malformed("its first/last version do not match its objects")


def _integer(fields: dict[str, Any], name: str, *, optional: bool = False, minimum: int = 1) -> Any:
    value = fields.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _Malformed(f"{name} is {value!r}, not an integer of at least {minimum}")
    return value


def _string(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str):
        raise _Malformed(f"{name} is {value!r}, not a string")
    return value


def _list(fields: dict[str, Any], name: str) -> list[Any]:
    value = fields.get(name)
    if not isinstance(value, list):
        raise _Malformed(f"{name} is not a list")
    return value


# --------------------------------------------------------------------------
# files, threads, time
# --------------------------------------------------------------------------


def _parse_location(location: S3Location | str) -> S3Location:
    if isinstance(location, S3Location):
        return location
    try:
        return S3Location.parse(location)
    except ValueError as exc:
        raise BackupArgumentError(str(exc)) from exc


def _open_bucket(where: S3Location, endpoint_url: str | None, concurrency: int) -> Bucket:
    # Each big object is a boto3 transfer of up to 10 threads.
    return Bucket.open(where, endpoint_url, max_connections=10 * concurrency + 4)


def _hash_range(path: Path, start: int, end: int) -> str:
    """xxh3-64 (hex) of bytes ``[start, end)`` of a file, read in big chunks."""
    hasher = xxhash.xxh3_64()
    for chunk in _chunks(path, start, end):
        hasher.update(chunk)
    return hasher.hexdigest()


def _read_range(path: Path, start: int, end: int) -> bytes:
    return b"".join(bytes(chunk) for chunk in _chunks(path, start, end))


def _copy_range(path: Path, start: int, end: int, copy: Path) -> str:
    """Copy bytes ``[start, end)`` of `path` into a new file; returns their checksum."""
    hasher = xxhash.xxh3_64()
    with open(copy, "xb") as out:
        for chunk in _chunks(path, start, end):
            hasher.update(chunk)
            out.write(chunk)
    return hasher.hexdigest()


def _chunks(path: Path, start: int, end: int) -> Iterator[memoryview]:
    """Bytes ``[start, end)`` of a file in chunks of up to `READ_CHUNK` (a reused buffer).

    Raises:
        StorageError: the file ends before `end`.
    """
    buffer = bytearray(max(1, min(READ_CHUNK, end - start)))
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        handle.seek(start)
        position = start
        while position < end:
            count = handle.readinto(view[: min(len(buffer), end - position)])
            if not count:
                raise StorageError(
                    f"{path}: the file ends at offset {position}, before offset {end} that "
                    "the backup reads to; it changed while it was read"
                )
            yield view[:count]
            position += count


def _join(sources: Sequence[Path], target: Path, *, remove: bool) -> None:
    """Make `target` the concatenation of `sources` (a rename or link when there is one)."""
    if len(sources) == 1:
        if remove:
            os.replace(sources[0], target)
        else:
            os.link(sources[0], target)
        return
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for source in sources:
            fd = os.open(source, os.O_RDONLY)
            try:
                remaining = os.fstat(fd).st_size
                while remaining:
                    copied = os.copy_file_range(fd, out, remaining)
                    if not copied:
                        raise StorageError(f"{source}: copying into {target} stopped early")
                    remaining -= copied
            finally:
                os.close(fd)
    finally:
        os.close(out)
    if remove:
        for source in sources:
            os.unlink(source)


def _remove_quietly_noted(directory: Path, failure: BaseException) -> None:
    """Remove a directory this module created; a failure to do so is added to `failure`."""
    if not directory.exists():
        return
    try:
        shutil.rmtree(directory)
    except OSError as exc:
        failure.add_note(f"could not remove the partial restore {directory}: {exc}")


def _rmdir_noted(directory: Path, failure: BaseException) -> None:
    try:
        directory.rmdir()
    except OSError as exc:
        failure.add_note(f"could not remove the directory {directory} restore created: {exc}")


class _Meter:
    """Sums the bytes done in worker threads and reports them, one call at a time."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.done = 0
        self.progress = progress
        self.lock = threading.Lock()
        if progress is not None:
            progress(0, total)

    def add(self, count: int) -> None:
        with self.lock:
            self.done += count
            if self.progress is not None:
                self.progress(self.done, self.total)


def _run_all(function: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """`function` over `items` in up to `workers` threads; results in order.

    On the first failure, the items not started are cancelled and those
    running finish; then the first failure is raised, with the others added
    to it as notes.
    """
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    pool = futures.ThreadPoolExecutor(max_workers=min(workers, len(items)))
    try:
        submitted = [pool.submit(function, item) for item in items]
        futures.wait(submitted, return_when=futures.FIRST_EXCEPTION)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    failures = [
        failure
        for future in submitted
        if not future.cancelled() and (failure := future.exception()) is not None
    ]
    if failures:
        first = failures[0]
        for other in failures[1:]:
            first.add_note(f"also failed meanwhile: {type(other).__name__}: {other}")
        raise first
    return [future.result() for future in submitted]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _from_us(time_us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=time_us)


def _time_us(moment: dt.datetime) -> int:
    """Microseconds since the Unix epoch; a naive `moment` is local time."""
    if not isinstance(moment, dt.datetime):
        raise BackupArgumentError(f"at_time must be a datetime, not {moment!r}")
    aware = moment if moment.utcoffset() is not None else moment.astimezone()
    return (aware - _EPOCH) // dt.timedelta(microseconds=1)


__all__ = [
    "BackupArgumentError",
    "BackupNotFoundError",
    "BackupReport",
    "Manifest",
    "Piece",
    "RestoreReport",
    "VerifyReport",
    "backup",
    "piece_key",
    "restore",
    "verify",
]
