"""The durable segmented Raft log: the entries, hard state and snapshot of every
group of a node, in append-only files made durable together by one
`LogStore.sync()` (group commit).

Directory layout::

    <store>/LOCK                                   flock'd while a LogStore is open
    <store>/group-<id>/seg-<seq:08d>.log           segments, replayed in seq order
    <store>/group-<id>/snapshot-<index:020d>.snap  the group's latest snapshot
    <store>/group-<id>/*.snap.tmp                  a snapshot being written or received
    <store>/tombstone-group-<id>-<hex>/            a removed group being deleted

Removing a group (`LogStore.remove_group`) closes its files, renames its
directory to a tombstone (atomic), fsyncs the store directory, then deletes
the tombstone. A crash leaves either the whole group (it was not removed) or
a tombstone, which the next open deletes; a tombstone is never a group.

Segments are named by sequence number, not by first index: a suffix truncation
is written as new records at the end of the active segment, so a later segment
can hold lower indexes than an earlier one. The active (last) segment is sealed
once it has passed `segment_bytes`: it is fdatasync'd, and a new segment is
created that starts with the current hard state.

Segment layout (integers little-endian)::

    offset  size  field
    0       6     magic b"PBRLOG"
    6       2     format version (1)
    8       8     group id          } must match the directory and file name
    16      8     sequence number   }
    24      ...   records, back to back

Record layout::

    0       8     xxh3-64 of bytes [8, 13 + n): length, type and body
    8       4     body length n
    12      1     type
    13      n     body:
                  ENTRY (1)      index u64, term u64, kind u8, data (n - 17 bytes)
                  HARD_STATE (2) term u64, vote u64, commit u64
                  LOG_RESET (3)  index u64, term u64
                  COMPACT (4)    index u64

The checksum covers the length, so a damaged length cannot silently send the
parser elsewhere. xxh3-64 rather than crc32: it is faster on these sizes, and
its 64 bits make a false match negligible even when recovery tries every byte
offset after a bad record (see below). It is also what the WAL of
`protobase.storage` uses.

Replay runs over all records in write order (segment sequence, then offset):
an ENTRY with index i drops every entry >= i and becomes the last one (i must
be at most last + 1: a gap is corruption); the last HARD_STATE wins;
LOG_RESET(i, t) empties the log, which then continues after index i;
COMPACT(i) (the highest one wins) makes the entries up to i unavailable.
LOG_RESET is written when a snapshot replaces a log that does not contain the
snapshot's last entry: it is made durable before the old segments are
deleted, so a crash in between cannot bring stale entries back. COMPACT is
written by `compact` and made durable before any segment it frees is deleted.

Retention (for applications whose data is the log). Entries are deleted only
by `compact(i)`, never by taking a snapshot over a log that holds the
snapshot's last entry, and never by reopening: a reopened log serves exactly
the entries it served before (from the last COMPACT on), including those
behind its snapshot. So an application that reads applied entries back
(`FileGroupLog.entry(index)`: one pread of that record, checksum verified)
keeps them by not compacting past the lowest index it still needs (the
driver asks it: `node.RetainsEntries`). A COMPACT record lost in a crash
only leaves more entries readable, never fewer. The one exception is a
snapshot whose last entry the log does not hold (a follower far behind, or
on another branch): the log is replaced by the snapshot, which must then
carry what the application needs. Every entry kept costs 24 bytes of memory
(term, segment, offset and size), whether it is read or not.

Snapshot file layout, version 2 (written as a stream, so no snapshot is
held whole in memory; the trailer lets the writer learn the data length as
it goes)::

    0       8     magic b"PBRSNAP" + version byte 2
    8       4     metadata length m
    12      m     msgpack of SnapshotMeta.to_wire()
    12+m    d     snapshot data, as the state machine wrote it
    12+m+d  8     data length d (the file is 28 + m + d bytes)
    20+m+d  8     xxh3-64 of bytes [0, 20 + m + d)

The whole file is the snapshot's *image*: a leader sends it in chunks read
at their offsets (`read_snapshot`), and a follower assembles the chunks in
``incoming.snap.tmp``, then checks magic, metadata, length and checksum,
fsyncs, renames (`install_snapshot`): the checksum is end to end. A local
snapshot is written by the state machine into ``snapshot-<index>.snap.tmp``
through a hashing sink (`save_snapshot`), fsync'd and renamed. Both are
durable at once, independently of `sync()`, and are followed by a directory
fsync. Version 1 files (data length in the header) are refused as corrupt.

Recovery (`LogStore.__init__`) first deletes the tombstones of removed
groups (crash leftovers, by name), then, per group, first read-only, then
repairs.
The rule: recovery discards only bytes it can show this log wrote and never
synced; anything it cannot explain raises `LogCorruptionError`, naming the
file and the byte offset, and changes no file.

- the newest snapshot is verified, streaming (older ones and ``.tmp`` files
  are this log's crash leftovers, by name, and are removed); a bad one
  raises;
- segments are replayed. Only the *last* segment may have a torn tail:
  - a last segment whose header is not this log's is deleted only if it is
    a torn creation: shorter than a header and a prefix of the header this
    log would have written there, or zeros from end to end. A header that
    is foreign or damaged (other bytes) is corruption, not a torn tail;
  - a bad record (cut short by the end of the file, or failing its
    checksum) starts a torn tail only if no valid record follows at any
    byte offset, and the bytes are what a torn append leaves: a record
    header cut short by the end of the file; a plausible header (a known
    type, a length that fits it) whose record runs past the end of the
    file; or a record failing its checksum, or a header that is not
    plausible, followed by nothing but zeros (blocks allocated but never
    written). The tail is then truncated (ftruncate + fsync). Non-zero
    bytes after a bad record are not ours to discard;
  - any damage in a sealed segment is corruption;
- the snapshot is then reconciled with the log as `save_snapshot` does: the
  entries stay when the log holds its index and term; otherwise the log is
  restarted (LOG_RESET), finishing a `save_snapshot` that crashed half-way -
  unless that would discard entries at or below the hard state's commit
  index, which is corruption (a snapshot never disagrees with committed
  entries);
- the last segment must hold the latest hard state (so that deleting sealed
  segments never loses it); if its torn tail took that record, it is rewritten.

Durability: every write is one `os.write` (no fsync); `LogStore.sync()` makes
the dirty segments of all groups durable in one round through
`LogStore._make_durable` (fdatasync for one file, one syncfs(2) for several).
New and removed files are followed by an fsync of their directory.

The file machinery is the `seglog` package's, shared with the WAL of
`protobase.storage`: writing, fdatasync, directory fsync, creating a segment,
the flock on ``LOCK``, segment names, and the scan that applies the torn-tail
rule above (`_Records` is this format's `seglog.RecordCodec`; its
`torn_append` is the zeros-or-plausible-header condition).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import shutil
import struct
from array import array
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgpack
import xxhash

from seglog import (
    BadRecord,
    DamagedRecord,
    DirectoryLocked,
    RecordScan,
    SegmentNames,
    create_segment,
    durable_write,
    fsync_directory,
    lock_directory,
    never_written,
    write_all,
    zeros_from,
)

from .errors import LogCorruptionError, LogError, LogUnavailableError, ProtocolError
from .types import (
    NO_NODE,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    SnapshotChunk,
    SnapshotMeta,
    SnapshotWriter,
)

__all__ = ["DEFAULT_CACHE_BYTES", "DEFAULT_SEGMENT_BYTES", "FileGroupLog", "LogStore"]

DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_CACHE_BYTES = 8 << 20
"""Per group: the most recent entries kept in memory; older ones are pread."""

SEGMENT_MAGIC = b"PBRLOG"
SNAPSHOT_MAGIC = b"PBRSNAP\x02"
SNAPSHOT_MAGIC_V1 = b"PBRSNAP\x01"
FORMAT_VERSION = 1

RECORD_ENTRY = 1
RECORD_HARD_STATE = 2
RECORD_LOG_RESET = 3
RECORD_COMPACT = 4

_SEGMENT_HEADER = struct.Struct("<6sHQQ")
_RECORD_HEADER = struct.Struct("<QIB")  # checksum, body length, type
_ENTRY_PREFIX = struct.Struct("<IBQQB")  # body length, type, index, term, kind
_ENTRY_FIELDS = struct.Struct("<QQB")
_HARD_STATE_PREFIX = struct.Struct("<IBQQQ")
_HARD_STATE_FIELDS = struct.Struct("<QQQ")
_LOG_RESET_PREFIX = struct.Struct("<IBQQ")
_LOG_RESET_FIELDS = struct.Struct("<QQ")
_COMPACT_PREFIX = struct.Struct("<IBQ")
_COMPACT_FIELDS = struct.Struct("<Q")
_SNAPSHOT_HEADER = struct.Struct("<8sI")
_SNAPSHOT_TRAILER = struct.Struct("<QQ")  # data length, checksum
_SNAPSHOT_IO_BYTES = 1 << 20
"""Snapshot data is written, verified and restored in pieces of this size."""
INCOMING_SNAPSHOT = "incoming.snap.tmp"
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size
RECORD_HEADER_SIZE = _RECORD_HEADER.size
ENTRY_OVERHEAD = RECORD_HEADER_SIZE + _ENTRY_FIELDS.size
"""Bytes of an ENTRY record besides its data."""
_BODY_SIZES = {
    RECORD_ENTRY: _ENTRY_FIELDS.size,  # the minimum: data follows
    RECORD_HARD_STATE: _HARD_STATE_FIELDS.size,
    RECORD_LOG_RESET: _LOG_RESET_FIELDS.size,
    RECORD_COMPACT: _COMPACT_FIELDS.size,
}
_KINDS = {int(kind): kind for kind in EntryKind}
_CACHE_ENTRY_OVERHEAD = 64
"""What a cached Entry costs besides its data, roughly."""
_MAX_READ_SPAN = 8 << 20
_MAX_READ_GAP = 64 << 10
"""Entries whose records are at most this far apart are read with one pread."""

SEGMENT_NAMES = SegmentNames("seg-", ".log", (8,))
_SNAPSHOT_NAME = re.compile(r"snapshot-(\d{20})\.snap")
_GROUP_NAME = re.compile(r"group-(\d+)")
_TOMBSTONE_NAME = re.compile(r"tombstone-group-\d+-[0-9a-f]+")

_xxh3 = xxhash.xxh3_64_intdigest


def _load_syncfs() -> Callable[[int], None] | None:
    """Linux syncfs(2) through ctypes, or None where the C library lacks it."""
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs failed: {os.strerror(code)}")

    return syncfs


_syncfs: Callable[[int], None] | None = _load_syncfs()
"""Module attribute (not a constant) so tests can count or remove it."""


def segment_name(seq: int) -> str:
    return SEGMENT_NAMES.name(seq)


def snapshot_name(index: int) -> str:
    return f"snapshot-{index:020d}.snap"


def tombstone_name(group_id: int) -> str:
    """A fresh name for a removed group's directory, unique even if an
    earlier tombstone of the same group could not be deleted."""
    return f"tombstone-group-{group_id}-{os.urandom(4).hex()}"


def _hard_state_record(hard_state: HardState) -> bytes:
    body = _HARD_STATE_PREFIX.pack(
        _HARD_STATE_FIELDS.size,
        RECORD_HARD_STATE,
        hard_state.term,
        hard_state.vote,
        hard_state.commit,
    )
    return _U64.pack(_xxh3(body)) + body


def _log_reset_record(index: int, term: int) -> bytes:
    body = _LOG_RESET_PREFIX.pack(_LOG_RESET_FIELDS.size, RECORD_LOG_RESET, index, term)
    return _U64.pack(_xxh3(body)) + body


def _compact_record(index: int) -> bytes:
    body = _COMPACT_PREFIX.pack(_COMPACT_FIELDS.size, RECORD_COMPACT, index)
    return _U64.pack(_xxh3(body)) + body


class _Records:
    """This log's record framing, as `seglog.RecordScan` reads it (a
    `seglog.RecordCodec` of record types): `read` checks the length against
    the end of the file and the checksum, and leaves the type and body to
    replay."""

    __slots__ = ()

    def read(self, data: bytes, view: memoryview, pos: int) -> tuple[int, int]:
        end = len(data)
        if end - pos < RECORD_HEADER_SIZE:
            raise BadRecord("record header cut short by the end of the file")
        checksum, length, record_type = _RECORD_HEADER.unpack_from(data, pos)
        record_end = pos + RECORD_HEADER_SIZE + length
        if record_end > end:
            raise BadRecord("record cut short by the end of the file")
        if _xxh3(view[pos + 8 : record_end]) != checksum:
            raise BadRecord("checksum mismatch")
        return record_type, record_end

    def record_after(self, data: bytes, start: int) -> int | None:
        """The first byte offset >= start where a valid record starts, if any."""
        view = memoryview(data)
        type_offset = RECORD_HEADER_SIZE - 1
        for pos in range(start, len(data) - RECORD_HEADER_SIZE + 1):
            # Cheap filter first: most offsets do not even hold a known type.
            if data[pos + type_offset] in _BODY_SIZES and _valid_record_at(data, view, pos):
                return pos
        return None

    def torn_append(self, data: bytes, pos: int) -> bool:
        """Whether the bytes from the bad record at `pos` to the end of the last
        segment are what a crash leaves of an unsynced append (see the module
        docstring); seglog has checked that no valid record follows."""
        end = len(data)
        if end - pos < RECORD_HEADER_SIZE:
            return True  # a record header cut short by the end of the file
        _, length, record_type = _RECORD_HEADER.unpack_from(data, pos)
        body_size = _BODY_SIZES.get(record_type)
        plausible = body_size is not None and (
            length >= body_size if record_type == RECORD_ENTRY else length == body_size
        )
        if not plausible:
            return zeros_from(data, pos + RECORD_HEADER_SIZE)
        record_end = pos + RECORD_HEADER_SIZE + length
        return record_end > end or zeros_from(data, record_end)


_RECORDS = _Records()


def _valid_record_at(buf: bytes, view: memoryview, pos: int) -> bool:
    """Whether a well-formed record with a matching checksum starts at `pos`."""
    end = len(buf)
    if end - pos < RECORD_HEADER_SIZE:
        return False
    checksum, length, record_type = _RECORD_HEADER.unpack_from(buf, pos)
    body_size = _BODY_SIZES.get(record_type)
    if body_size is None or length < body_size:
        return False
    if record_type != RECORD_ENTRY and length != body_size:
        return False
    record_end = pos + RECORD_HEADER_SIZE + length
    return record_end <= end and _xxh3(view[pos + 8 : record_end]) == checksum


def _corruption(path: str, offset: int, problem: str) -> LogCorruptionError:
    return LogCorruptionError(
        f"{path}: {problem} at byte offset {offset}; the Raft log of this group is "
        "damaged: restore the node's data from a backup or let it rejoin from a peer"
    )


@dataclass(frozen=True, slots=True)
class _SnapshotFile:
    """A verified snapshot file: its metadata and where its data lies."""

    path: str
    meta: SnapshotMeta
    size: int
    data_offset: int
    data_size: int


class _ImageWriter(io.RawIOBase):
    """Writes a snapshot file to `fd` as a stream: the header and metadata at
    once, the data through `write` (the state machine's sink, buffered), the
    trailer at `finish`. Everything is hashed on the way."""

    def __init__(self, fd: int, meta: SnapshotMeta) -> None:
        super().__init__()
        self._fd = fd
        self._hash = xxhash.xxh3_64()
        self.data_size = 0
        packed = msgpack.packb(meta.to_wire())
        self.data_offset = _SNAPSHOT_HEADER.size + len(packed)
        self._emit(_SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, len(packed)) + packed)

    def _emit(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        write_all(self._fd, data)

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if self._fd < 0:
            return len(view)  # abandoned: see `abandon`
        self._emit(view)
        self.data_size += len(view)
        return len(view)

    def abandon(self) -> None:
        """Write nothing more: the descriptor is about to be closed, and a
        buffered sink the state machine kept could flush later (when it is
        garbage collected) into whatever file reuses the number."""
        self._fd = -1

    def finish(self) -> None:
        self._emit(_U64.pack(self.data_size))
        write_all(self._fd, _U64.pack(self._hash.intdigest()))


class _SnapshotData(io.RawIOBase):
    """The data part of a snapshot file, read with pread on a descriptor of
    its own (so it stays readable after a newer snapshot replaces the file)."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._position = offset
        self._end = offset + size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), self._end - self._position)
        if count <= 0:
            return 0
        data = os.pread(self._fd, count, self._position)
        view[: len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _verify_snapshot_file(path: str) -> _SnapshotFile:
    """Check a snapshot file end to end, reading it in pieces.

    Raises:
        LogCorruptionError: the file is damaged; the message names it and the offset.
    """
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        head = file.read(_SNAPSHOT_HEADER.size)
        if len(head) < _SNAPSHOT_HEADER.size or size < _SNAPSHOT_HEADER.size + 16:
            raise _corruption(path, len(head), "snapshot file cut short")
        magic, meta_size = _SNAPSHOT_HEADER.unpack(head)
        if magic == SNAPSHOT_MAGIC_V1:
            raise _corruption(path, 0, "snapshot format version 1 (this log reads version 2)")
        if magic != SNAPSHOT_MAGIC:
            raise _corruption(path, 0, "bad snapshot magic or version")
        data_offset = _SNAPSHOT_HEADER.size + meta_size
        data_size = size - data_offset - _SNAPSHOT_TRAILER.size
        if data_size < 0:
            raise _corruption(path, _SNAPSHOT_HEADER.size, "snapshot metadata length too long")
        checksum = xxhash.xxh3_64(head)
        packed = file.read(meta_size)
        checksum.update(packed)
        remaining = data_size
        while remaining:
            piece = file.read(min(remaining, _SNAPSHOT_IO_BYTES))
            if not piece:
                raise _corruption(path, size - remaining, "snapshot file cut short")
            checksum.update(piece)
            remaining -= len(piece)
        trailer = file.read(_SNAPSHOT_TRAILER.size)
        if len(trailer) != _SNAPSHOT_TRAILER.size:
            raise _corruption(path, size - len(trailer), "snapshot file cut short")
        checksum.update(trailer[:8])
        recorded_size, recorded_checksum = _SNAPSHOT_TRAILER.unpack(trailer)
    if recorded_size != data_size:
        raise _corruption(path, size - 16, "snapshot length does not match the file")
    if checksum.intdigest() != recorded_checksum:
        raise _corruption(path, size - 8, "snapshot checksum mismatch")
    try:
        meta = SnapshotMeta.from_wire(msgpack.unpackb(packed))
    except (ValueError, TypeError, ProtocolError, msgpack.UnpackException) as exc:
        raise _corruption(path, _SNAPSHOT_HEADER.size, f"bad snapshot metadata ({exc})") from exc
    return _SnapshotFile(path, meta, size, data_offset, data_size)


@dataclass(eq=False, slots=True)
class _Incoming:
    """A leader's snapshot image being received into ``incoming.snap.tmp``."""

    meta: SnapshotMeta
    fd: int
    size: int = 0
    done: bool = False


EMPTY_SNAPSHOT_META = SnapshotMeta(0, 0, ConfState(frozenset()))


@dataclass(eq=False, slots=True)
class _Segment:
    """One open segment file. `size` is where the next record goes."""

    seq: int
    path: str
    fd: int
    size: int
    max_index: int = 0
    """Highest index of any ENTRY record in the file, live or overwritten."""


class _Replay:
    """Recovery's view of a group's log while its records are replayed."""

    def __init__(self) -> None:
        self.first: int | None = None
        """Index of the first entry (after a LOG_RESET, the one that may follow it)."""
        self.origin = ("", 0)
        """File and offset of the record that set `first`, for error messages."""
        self.reset_term: int | None = None
        """The term of the LOG_RESET that set `first` (its snapshot's term),
        or None when `first` comes from an entry or a compaction."""
        self.terms: array[int] = array("Q")
        self.seqs: array[int] = array("I")
        self.offsets: array[int] = array("Q")
        self.sizes: array[int] = array("I")
        self.hard_state = HardState()
        self.compacted = 0
        """The highest COMPACT index replayed: entries up to it are unavailable."""

    def entry(self, index: int, term: int, seg: _Segment, offset: int, size: int) -> None:
        first = self.first
        if first is None or index < first:
            # Older entries were in segments already compacted away.
            self.first = index
            self.origin = (seg.path, offset)
            self.reset_term = None
            self._truncate(0)
        else:
            position = index - first
            if position > len(self.terms):
                raise _corruption(
                    seg.path,
                    offset,
                    f"entry {index} leaves a gap after entry {first - 1 + len(self.terms)}",
                )
            self._truncate(position)
        self.terms.append(term)
        self.seqs.append(seg.seq)
        self.offsets.append(offset)
        self.sizes.append(size)
        if index > seg.max_index:
            seg.max_index = index

    def reset(self, index: int, term: int, seg: _Segment, offset: int) -> None:
        self.first = index + 1
        self.origin = (seg.path, offset)
        self.reset_term = term
        self.compacted = 0
        self._truncate(0)

    def drop_compacted(self) -> None:
        """Forget the entries up to the compaction point (files may still
        hold some: segments are deleted whole)."""
        first = self.first
        if first is None or self.compacted < first:
            return
        count = min(self.compacted + 1 - first, len(self.terms))
        for column in (self.terms, self.seqs, self.offsets, self.sizes):
            del column[:count]
        self.first = self.compacted + 1
        # The log now starts after the compaction point, not after a LOG_RESET:
        # the reset's term is not the term of the entry before `first` any more
        # (a snapshot taken there over the entries that followed the reset
        # carries theirs).
        self.reset_term = None

    def _truncate(self, position: int) -> None:
        if position < len(self.terms):
            del self.terms[position:]
            del self.seqs[position:]
            del self.offsets[position:]
            del self.sizes[position:]


class FileGroupLog:
    """One group's durable log; implements `GroupLog` (and so `LogReader`).

    Obtain it from `LogStore.group()`. Writes reach the OS at once and become
    durable at the store's next `sync()`.

    Invariants: `first_index() <= snapshot_meta().index + 1` (a snapshot
    taken over this log leaves the entries it covers readable, so a follower
    a little behind still gets entries and an application still reads them
    back, until `compact`; a reopened log serves the same entries); every
    index in [first_index, last_index] has an entry, described in memory by
    its term, segment, offset and data size; the entries
    [last_index + 1 - len(cache), last_index] are also cached; the active
    (last) segment holds the latest hard state; every sealed segment is
    durable and ends on a record boundary. Not thread-safe, like the store.
    """

    def __init__(self, store: LogStore, group_id: int, directory: str) -> None:
        """Open (and recover) or create the group's log. Use `LogStore.group()`."""
        self._store = store
        self.group_id = group_id
        self.directory = directory
        self._segments: list[_Segment] = []
        self._by_seq: dict[int, _Segment] = {}
        self._snapshot: _SnapshotFile | None = None
        self._snapshot_meta = EMPTY_SNAPSHOT_META
        self._snapshot_fd = -1
        """Open on the snapshot file, for the chunks a leader sends."""
        self._incoming: _Incoming | None = None
        self._hard_state = HardState()
        self._first = 1
        self._terms: array[int] = array("Q")
        self._seqs: array[int] = array("I")
        self._offsets: array[int] = array("Q")
        self._sizes: array[int] = array("I")
        self._cache: list[Entry] = []
        self._cache_used = 0
        self._closed = False
        """Set by `LogStore.close_group`/`remove_group`: the files are closed
        (their descriptor numbers may belong to other files by now)."""
        try:
            self._recover()
        except BaseException:
            self._close_files()
            raise

    # -- reading (LogReader) ------------------------------------------------

    def first_index(self) -> int:
        return self._first

    def last_index(self) -> int:
        return self._first - 1 + len(self._terms)

    def term(self, index: int) -> int:
        """The term of entry `index`, or of the snapshot's last entry.

        Raises:
            LogUnavailableError: `index` is compacted or after the end.
        """
        position = index - self._first
        if 0 <= position < len(self._terms):
            return self._terms[position]
        if index == self._snapshot_meta.index:
            return self._snapshot_meta.term
        raise LogUnavailableError(
            f"group {self.group_id} has no term for index {index}: the log holds "
            f"[{self._first}, {self.last_index()}] and the snapshot ends at "
            f"{self._snapshot_meta.index}"
        )

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi): at least one when lo < hi, then as many as fit in
        `max_bytes` of data (None: no limit).

        Raises:
            LogUnavailableError: lo is compacted or hi is beyond last_index + 1.
            LogCorruptionError: a segment no longer holds what was written.
        """
        if lo > hi:
            raise ValueError(f"entries({lo}, {hi}): lo must not exceed hi")
        first, last = self._first, self.last_index()
        if lo < first:
            raise LogUnavailableError(
                f"entries from {lo} of group {self.group_id} are compacted; first index is {first}"
            )
        if hi > last + 1:
            raise LogUnavailableError(
                f"entries up to {hi - 1} of group {self.group_id} are not written; "
                f"last index is {last}"
            )
        if lo == hi:
            return []
        if max_bytes is not None:
            sizes = self._sizes
            total = sizes[lo - first]
            end = lo + 1
            while end < hi:
                total += sizes[end - first]
                if total > max_bytes:
                    break
                end += 1
            hi = end
        cache_lo = last + 1 - len(self._cache)
        if lo >= cache_lo:
            return self._cache[lo - cache_lo : hi - cache_lo]
        found = self._read_from_segments(lo, min(hi, cache_lo))
        if hi > cache_lo:
            found.extend(self._cache[: hi - cache_lo])
        return found

    def hard_state(self) -> HardState:
        return self._hard_state

    def snapshot_meta(self) -> SnapshotMeta:
        return self._snapshot_meta

    def entry(self, index: int) -> Entry:
        """Entry `index`, from the cache or with one pread of its record
        (checksum verified); entries behind the snapshot are readable until
        `compact` (see Retention in the module docstring).

        Raises:
            LogUnavailableError: `index` is compacted or after the end.
            LogCorruptionError: the segment no longer holds what was written.
        """
        last = self.last_index()
        if not self._first <= index <= last:
            raise LogUnavailableError(
                f"group {self.group_id} has no entry {index}: the log holds [{self._first}, {last}]"
            )
        cache_lo = last + 1 - len(self._cache)
        if index >= cache_lo:
            return self._cache[index - cache_lo]
        return self._read_from_segments(index, index + 1)[0]

    def data_bytes(self, lo: int, hi: int) -> int:
        """The data bytes of the entries [lo, hi) this log holds (others count 0)."""
        start = max(lo, self._first) - self._first
        end = min(hi, self.last_index() + 1) - self._first
        return sum(self._sizes[start:end]) if end > start else 0

    def disk_bytes(self) -> int:
        """Bytes of this group's segment files and snapshot on disk."""
        return sum(segment.size for segment in self._segments) + self.snapshot_size()

    def snapshot_size(self) -> int:
        """The length of the snapshot file (0 without a snapshot)."""
        return 0 if self._snapshot is None else self._snapshot.size

    def read_snapshot(self, offset: int, max_bytes: int) -> bytes:
        """Up to `max_bytes` of the snapshot file from `offset`, one pread.

        Raises:
            LogError: the store is closed.
        """
        self._check_open()
        snapshot = self._snapshot
        if snapshot is None or offset >= snapshot.size:
            return b""
        return os.pread(self._snapshot_fd, min(max_bytes, snapshot.size - offset), offset)

    def open_snapshot(self) -> BinaryIO:
        """The snapshot's data as the state machine wrote it (empty without a
        snapshot), read in pieces from the file; the caller closes it."""
        self._check_open()
        snapshot = self._snapshot
        if snapshot is None:
            return io.BytesIO(b"")
        raw = _SnapshotData(snapshot.path, snapshot.data_offset, snapshot.data_size)
        return io.BufferedReader(raw, _SNAPSHOT_IO_BYTES)

    # -- writing (GroupLog) -------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append `entries` (consecutive indexes); one whose index is already
        present replaces it and every later entry. Durable at the next sync().

        Raises:
            LogError: the entries are not consecutive, would leave a gap after
                last_index, would replace an entry at or below the hard state's
                commit index, or start at or below the snapshot index.
        """
        if not entries:
            return
        self._check_writable()
        first_new = entries[0].index
        last = self.last_index()
        if first_new <= self._snapshot_meta.index:
            raise LogError(
                f"group {self.group_id}: cannot append at {first_new}, at or below the "
                f"snapshot index {self._snapshot_meta.index}"
            )
        if first_new > last + 1:
            raise LogError(
                f"group {self.group_id}: appending at {first_new} leaves a gap after {last}"
            )
        if first_new <= last and first_new <= self._hard_state.commit:
            raise LogError(
                f"group {self.group_id}: appending at {first_new} would remove committed "
                f"entries (commit index {self._hard_state.commit})"
            )
        seg = self._writable_segment()
        parts: list[bytes] = []
        offsets: list[int] = []
        sizes: list[int] = []
        terms: list[int] = []
        position = seg.size
        cached = 0
        pack_prefix = _ENTRY_PREFIX.pack
        pack_checksum = _U64.pack
        try:
            for expected, entry in enumerate(entries, first_new):
                if entry.index != expected:
                    raise LogError(
                        f"group {self.group_id}: entries must be consecutive; "
                        f"got {entry.index} after {expected - 1}"
                    )
                data = entry.data
                size = len(data)
                body = pack_prefix(size + 17, RECORD_ENTRY, expected, entry.term, entry.kind) + data
                parts.append(pack_checksum(_xxh3(body)))
                parts.append(body)
                offsets.append(position)
                sizes.append(size)
                terms.append(entry.term)
                position += size + ENTRY_OVERHEAD
                cached += size + _CACHE_ENTRY_OVERHEAD
        except struct.error as exc:
            raise LogError(f"group {self.group_id}: entry field out of range: {exc}") from exc
        self._write(seg, b"".join(parts))
        if first_new + len(entries) - 1 > seg.max_index:
            seg.max_index = first_new + len(entries) - 1
        self._truncate_after(first_new - 1)
        self._terms.extend(terms)
        self._seqs.extend([seg.seq] * len(entries))
        self._offsets.extend(offsets)
        self._sizes.extend(sizes)
        self._cache.extend(entries)
        self._cache_used += cached
        if self._cache_used > self._store.cache_bytes:
            self._evict_cache()

    def set_hard_state(self, hard_state: HardState) -> None:
        """Record `hard_state`; durable at the next sync().

        Raises:
            LogError: the term or commit index would go backwards, or the vote
                would change within a term.
        """
        self._check_writable()
        old = self._hard_state
        if hard_state == old:
            return
        if hard_state.term < old.term or hard_state.commit < old.commit:
            raise LogError(f"group {self.group_id}: hard state {hard_state} goes back from {old}")
        if hard_state.term == old.term and old.vote != NO_NODE and hard_state.vote != old.vote:
            raise LogError(f"group {self.group_id}: vote changes within term {old.term}")
        try:
            record = _hard_state_record(hard_state)
        except struct.error as exc:
            raise LogError(f"group {self.group_id}: hard state out of range: {exc}") from exc
        self._write(self._writable_segment(), record)
        self._hard_state = hard_state

    def save_snapshot(self, meta: SnapshotMeta, write: SnapshotWriter) -> None:
        """Take a snapshot at `meta`: `write(sink)` streams the state
        machine's data into a temporary file, which is then fsync'd and
        renamed (durable on return). If the log holds the snapshot's index
        with its term, every entry stays readable (`compact` drops the ones
        up to an index); otherwise the whole log is discarded and continues
        after the snapshot. A snapshot that is not newer than the current one
        is ignored, and `write` is not called (as `MemoryGroupLog` does).

        Raises:
            LogError: discarding the log would remove committed entries.
            Whatever `write` raises (the temporary file is removed).
        """
        self._check_writable()
        if meta.index <= self._snapshot_meta.index:
            return
        keeps_log = self._check_snapshot_fits(meta)
        path = os.path.join(self.directory, snapshot_name(meta.index))
        temporary = path + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        image: _ImageWriter | None = None
        try:
            try:
                image = _ImageWriter(fd, meta)
                sink = io.BufferedWriter(image, _SNAPSHOT_IO_BYTES)
                write(sink)
                if not sink.closed:
                    sink.flush()
                image.finish()
                os.fsync(fd)
            finally:
                if image is not None:
                    image.abandon()
                os.close(fd)
            size = image.data_offset + image.data_size + _SNAPSHOT_TRAILER.size
            layout = _SnapshotFile(path, meta, size, image.data_offset, image.data_size)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._adopt_snapshot(layout, keeps_log)

    def receive_snapshot(self, chunk: SnapshotChunk) -> None:
        """Write a chunk of a leader's snapshot file to ``incoming.snap.tmp``;
        offset 0 starts the file over. Not durable (`install_snapshot` is).

        Raises:
            LogError: the chunk does not continue the file being received.
        """
        self._check_writable()
        path = os.path.join(self.directory, INCOMING_SNAPSHOT)
        if chunk.offset == 0:
            self._drop_incoming()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._incoming = _Incoming(chunk.meta, fd)
        incoming = self._incoming
        if incoming is None or incoming.meta != chunk.meta or incoming.size != chunk.offset:
            raise LogError(
                f"group {self.group_id}: a snapshot chunk at offset {chunk.offset} does not "
                "continue the snapshot being received"
            )
        write_all(incoming.fd, chunk.data)
        incoming.size += len(chunk.data)
        incoming.done = chunk.done

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        """Check the received file for `meta` (magic, metadata, length,
        checksum), fsync and rename it, and make it the snapshot as
        `save_snapshot` does (durable on return).

        Raises:
            LogError: no whole file was received for `meta`, or it would
                discard committed entries.
            LogCorruptionError: the file fails its check (it arrived damaged,
                or the leader's copy is); nothing is installed.
        """
        self._check_writable()
        incoming = self._incoming
        if incoming is None or incoming.meta != meta or not incoming.done:
            raise LogError(
                f"group {self.group_id}: no whole snapshot was received for index {meta.index}"
            )
        self._incoming = None
        path = os.path.join(self.directory, INCOMING_SNAPSHOT)
        try:
            os.fsync(incoming.fd)
        finally:
            os.close(incoming.fd)
        if meta.index <= self._snapshot_meta.index:
            os.unlink(path)
            return
        keeps_log = self._check_snapshot_fits(meta)
        layout = _verify_snapshot_file(path)
        if layout.meta != meta:
            raise _corruption(
                path, _SNAPSHOT_HEADER.size, f"received snapshot holds {layout.meta}, not {meta}"
            )
        final = os.path.join(self.directory, snapshot_name(meta.index))
        os.replace(path, final)
        self._adopt_snapshot(
            _SnapshotFile(final, meta, layout.size, layout.data_offset, layout.data_size),
            keeps_log,
        )

    def compact(self, index: int) -> None:
        """Make the entries up to `index` unavailable, here and after a
        reopen (a COMPACT record), and delete the sealed segments, oldest
        first, whose entries are all at or below it (the active segment
        always stays).

        Raises:
            LogError: `index` is beyond the snapshot index.
        """
        self._check_writable()
        if index > self._snapshot_meta.index:
            raise LogError(
                f"group {self.group_id}: cannot compact to {index}, beyond the snapshot "
                f"index {self._snapshot_meta.index}"
            )
        if index >= self._first:
            self._write(self._writable_segment(), _compact_record(index))
            self._drop_through(index)
        doomed: list[_Segment] = []
        # Only a prefix: replaying a suffix of the write history then yields
        # the same entries above `index` (a later record overrides an earlier one).
        for seg in self._segments[:-1]:
            if seg.max_index > index:
                break
            doomed.append(seg)
        if not doomed:
            return
        active = self._segments[-1]
        if self._store._is_dirty(active):
            # Its COMPACT and opening hard state records must survive the older copies.
            self._store._sync_segments([active])
        self._segments = self._segments[len(doomed) :]
        self._remove_segments(doomed)

    # -- internals ----------------------------------------------------------

    def _check_snapshot_fits(self, meta: SnapshotMeta) -> bool:
        """Whether the log holds the snapshot's last entry (and so keeps its
        entries). Raises LogError when the log would be discarded with
        committed entries in it."""
        last = self.last_index()
        keeps_log = meta.index <= last and self.term(meta.index) == meta.term
        if not keeps_log and min(last, self._hard_state.commit) > meta.index:
            raise LogError(
                f"group {self.group_id}: snapshot at {meta.index} (term {meta.term}) "
                f"disagrees with committed entries up to {self._hard_state.commit}"
            )
        return keeps_log

    def _adopt_snapshot(self, snapshot: _SnapshotFile, keeps_log: bool) -> None:
        """`snapshot`, just renamed into place, becomes the snapshot."""
        fsync_directory(self.directory)
        previous = self._snapshot
        fd = os.open(snapshot.path, os.O_RDONLY)
        if self._snapshot_fd >= 0:
            os.close(self._snapshot_fd)
        self._snapshot, self._snapshot_meta, self._snapshot_fd = snapshot, snapshot.meta, fd
        if previous is not None:
            os.unlink(previous.path)
            fsync_directory(self.directory)
        if not keeps_log:
            self._restart_log(snapshot.meta)

    def _drop_incoming(self) -> None:
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            os.close(incoming.fd)

    def _writable_segment(self) -> _Segment:
        seg = self._segments[-1]
        if seg.size < self._store.segment_bytes:
            return seg
        if self._store._is_dirty(seg):
            self._store._sync_segments([seg])
        return self._new_segment(b"")

    def _new_segment(self, extra: bytes) -> _Segment:
        """Create and activate the next segment, opening with the hard state and
        `extra`: its name is durable on return, its bytes at the next sync. If
        creating it fails, the file is gone and the log is as it was."""
        seq = self._segments[-1].seq + 1 if self._segments else 1
        name = segment_name(seq)
        header = _SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, self.group_id, seq)
        first = header + _hard_state_record(self._hard_state) + extra
        fd = create_segment(self.directory, name, first, append=True)
        seg = _Segment(seq, os.path.join(self.directory, name), fd, len(first))
        self._segments.append(seg)
        self._by_seq[seq] = seg
        self._store._mark_dirty(seg)
        return seg

    def _write(self, seg: _Segment, data: bytes) -> None:
        self._store._mark_dirty(seg)
        try:
            write_all(seg.fd, data)
        except OSError:
            # Undo a partial record, or later records would follow garbage.
            try:
                os.ftruncate(seg.fd, seg.size)
            except OSError as exc:
                self._store._fail(exc)
            raise
        seg.size += len(data)

    def _truncate_after(self, index: int) -> None:
        """Forget entries after `index` (in memory only)."""
        position = max(index + 1 - self._first, 0)
        if position >= len(self._terms):
            return
        del self._terms[position:]
        del self._seqs[position:]
        del self._offsets[position:]
        del self._sizes[position:]
        self._trim_cache()

    def _trim_cache(self) -> None:
        """Drop cached entries that are no longer in [first, last]."""
        cache = self._cache
        if not cache:
            return
        last = self.last_index()
        keep_hi = last + 1 - cache[0].index
        if keep_hi < len(cache):
            self._cache_used -= sum(
                len(e.data) + _CACHE_ENTRY_OVERHEAD for e in cache[max(keep_hi, 0) :]
            )
            del cache[max(keep_hi, 0) :]
        if cache and cache[0].index < self._first:
            drop = min(self._first - cache[0].index, len(cache))
            self._cache_used -= sum(len(e.data) + _CACHE_ENTRY_OVERHEAD for e in cache[:drop])
            del cache[:drop]

    def _evict_cache(self) -> None:
        target = self._store.cache_bytes * 3 // 4
        used = self._cache_used
        drop = 0
        cache = self._cache
        while used > target and drop < len(cache):
            used -= len(cache[drop].data) + _CACHE_ENTRY_OVERHEAD
            drop += 1
        del cache[:drop]
        self._cache_used = used

    def _drop_through(self, index: int) -> None:
        """Make entries up to `index` unavailable (in memory; files stay)."""
        position = min(index + 1 - self._first, len(self._terms))
        del self._terms[:position]
        del self._seqs[:position]
        del self._offsets[:position]
        del self._sizes[:position]
        self._first = index + 1
        self._trim_cache()

    def _restart_log(self, meta: SnapshotMeta) -> None:
        """Discard every entry: the log continues after the snapshot `meta`.

        The new segment's LOG_RESET is durable before any old segment goes,
        so recovery after a crash in between discards the stale entries too.
        """
        old = self._segments[:]
        new = self._new_segment(_log_reset_record(meta.index, meta.term))
        self._store._sync_segments([new])
        self._segments = [new]
        self._first = meta.index + 1
        self._truncate_after(meta.index)
        self._cache.clear()
        self._cache_used = 0
        self._remove_segments(old)

    def _remove_segments(self, segments: Sequence[_Segment]) -> None:
        for seg in segments:
            self._store._forget_dirty(seg)
            del self._by_seq[seg.seq]
            os.close(seg.fd)
            os.unlink(seg.path)
        fsync_directory(self.directory)

    def _read_from_segments(self, lo: int, hi: int) -> list[Entry]:
        """Entries [lo, hi) read back from their segments, checksums verified."""
        self._check_open()
        found: list[Entry] = []
        first = self._first
        seqs, offsets, sizes = self._seqs, self._offsets, self._sizes
        position, end = lo - first, hi - first
        while position < end:
            seq = seqs[position]
            start = offsets[position]
            stop = start + ENTRY_OVERHEAD + sizes[position]
            last = position
            while last + 1 < end and seqs[last + 1] == seq:
                following = offsets[last + 1]
                following_stop = following + ENTRY_OVERHEAD + sizes[last + 1]
                if following - stop > _MAX_READ_GAP or following_stop - start > _MAX_READ_SPAN:
                    break
                last += 1
                stop = following_stop
            seg = self._by_seq[seq]
            buf = os.pread(seg.fd, stop - start, start)
            view = memoryview(buf)
            for at in range(position, last + 1):
                found.append(self._parse_entry(seg, buf, view, offsets[at] - start, start, at))
            position = last + 1
        return found

    def _parse_entry(
        self, seg: _Segment, buf: bytes, view: memoryview, pos: int, base: int, position: int
    ) -> Entry:
        index = self._first + position
        size = self._sizes[position]
        record_end = pos + ENTRY_OVERHEAD + size
        if record_end > len(buf):
            raise _corruption(seg.path, base + pos, f"entry {index} is cut short")
        checksum, length, record_type = _RECORD_HEADER.unpack_from(buf, pos)
        if length != size + 17 or record_type != RECORD_ENTRY:
            raise _corruption(seg.path, base + pos, f"entry {index} is not where the index says")
        if _xxh3(view[pos + 8 : record_end]) != checksum:
            raise _corruption(seg.path, base + pos, f"checksum mismatch in entry {index}")
        found_index, term, kind = _ENTRY_FIELDS.unpack_from(buf, pos + RECORD_HEADER_SIZE)
        if found_index != index or term != self._terms[position] or kind not in _KINDS:
            raise _corruption(seg.path, base + pos, f"entry {index} is not where the index says")
        return Entry(index, term, _KINDS[kind], buf[pos + ENTRY_OVERHEAD : record_end])

    def _check_open(self) -> None:
        if self._closed:
            raise LogError(
                f"the log of group {self.group_id} was closed or removed "
                "(LogStore.group() opens a closed one again)"
            )
        self._store._check_open()

    def _check_writable(self) -> None:
        self._check_open()
        self._store._check_writable()

    def _close(self) -> None:
        """Close the files for good: later calls raise LogError."""
        self._closed = True
        self._close_files()

    def _close_files(self) -> None:
        self._drop_incoming()
        if self._snapshot_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._snapshot_fd)
            self._snapshot_fd = -1
        for seg in self._segments:
            self._store._forget_dirty(seg)
            with contextlib.suppress(OSError):
                os.close(seg.fd)
        self._segments = []
        self._by_seq = {}

    # -- recovery -----------------------------------------------------------

    def _recover(self) -> None:
        seqs: list[int] = []
        snapshots: list[int] = []
        leftovers: list[str] = []
        for name in os.listdir(self.directory):
            if (parsed := SEGMENT_NAMES.parse(name)) is not None:
                seqs.append(parsed[0])
            elif match := _SNAPSHOT_NAME.fullmatch(name):
                snapshots.append(int(match.group(1)))
            elif name.endswith(".snap.tmp"):
                leftovers.append(name)
        seqs.sort()
        snapshots.sort()

        # Read-only phase: verify everything before changing any file.
        snapshot: _SnapshotFile | None = None
        if snapshots:
            path = os.path.join(self.directory, snapshot_name(snapshots[-1]))
            snapshot = _verify_snapshot_file(path)
            if snapshot.meta.index != snapshots[-1]:
                raise _corruption(path, 0, f"snapshot file holds index {snapshot.meta.index}")
            self._snapshot_meta = snapshot.meta
            leftovers.extend(snapshot_name(index) for index in snapshots[:-1])
        replay = _Replay()
        torn_at: int | None = None
        drop_last = False
        last_has_hard_state = False
        for number, seq in enumerate(seqs):
            path = os.path.join(self.directory, segment_name(seq))
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
            seg = _Segment(seq, path, fd, 0)
            self._segments.append(seg)
            self._by_seq[seq] = seg
            with open(fd, "rb", closefd=False) as file:
                buf = file.read()
            seg.size = len(buf)
            is_last = number == len(seqs) - 1
            if is_last and self._torn_creation(buf, seq):
                drop_last = True
                break
            torn_at, last_has_hard_state = self._replay_segment(seg, buf, is_last, replay)

        # The snapshot against the log, as save_snapshot decided it.
        replay.drop_compacted()
        snapshot_index, snapshot_term = self._snapshot_meta.index, self._snapshot_meta.term
        first = snapshot_index + 1 if replay.first is None else replay.first
        start = first - 1
        restart = False
        if start > snapshot_index:
            path, offset = replay.origin
            raise _corruption(
                path,
                offset,
                f"the log starts after index {start} but the snapshot ends at {snapshot_index}"
                " (a segment or snapshot file is missing)",
            )
        if start == snapshot_index:
            if replay.reset_term is not None and replay.reset_term != snapshot_term:
                path, offset = replay.origin
                raise _corruption(path, offset, "log reset disagrees with the snapshot's term")
        else:
            # Entries behind the snapshot stay readable (Retention, above).
            position = snapshot_index - first
            if position >= len(replay.terms) or replay.terms[position] != snapshot_term:
                restart = True
                last = first - 1 + len(replay.terms)
                if min(last, replay.hard_state.commit) > snapshot_index:
                    path, offset = replay.origin
                    raise _corruption(
                        path,
                        offset,
                        f"the snapshot at {snapshot_index} (term {snapshot_term}) disagrees "
                        f"with committed entries up to {replay.hard_state.commit}",
                    )

        # Repairs.
        for name in leftovers:
            os.unlink(os.path.join(self.directory, name))
        if leftovers:
            fsync_directory(self.directory)
        if drop_last:
            seg = self._segments.pop()
            del self._by_seq[seg.seq]
            os.close(seg.fd)
            os.unlink(seg.path)
            fsync_directory(self.directory)
        elif torn_at is not None:
            seg = self._segments[-1]
            os.ftruncate(seg.fd, torn_at)
            os.fsync(seg.fd)
            seg.size = torn_at
        if snapshot is not None:
            self._snapshot = snapshot
            self._snapshot_fd = os.open(snapshot.path, os.O_RDONLY)
        self._hard_state = replay.hard_state
        self._first = first
        self._terms, self._seqs = replay.terms, replay.seqs
        self._offsets, self._sizes = replay.offsets, replay.sizes
        if not self._segments:
            self._new_segment(b"")
            self._store._sync_segments([self._segments[-1]])
        elif drop_last or not last_has_hard_state:
            self._write(self._segments[-1], _hard_state_record(self._hard_state))
            self._store._sync_segments([self._segments[-1]])
        if restart:
            self._terms, self._seqs = array("Q"), array("I")
            self._offsets, self._sizes = array("Q"), array("I")
            self._restart_log(self._snapshot_meta)

    def _torn_creation(self, buf: bytes, seq: int) -> bool:
        """Whether the last segment was created but its header never reached
        the disk: a prefix of the header this log writes there, or zeros.
        Any other bytes are not ours to delete: replay reports them."""
        if len(buf) < SEGMENT_HEADER_SIZE:
            header = _SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, self.group_id, seq)
            return never_written(buf, header)
        return zeros_from(buf, 0)

    def _replay_segment(
        self, seg: _Segment, buf: bytes, is_last: bool, replay: _Replay
    ) -> tuple[int | None, bool]:
        """Replay one segment's records.

        Returns:
            The offset to truncate a torn tail at (last segment only), and
            whether the segment holds a hard state record (before that offset).

        Raises:
            LogCorruptionError: damage that is not a torn tail.
        """
        path = seg.path
        if len(buf) < SEGMENT_HEADER_SIZE:
            raise _corruption(path, len(buf), "segment header cut short")
        magic, version, group_id, seq = _SEGMENT_HEADER.unpack_from(buf, 0)
        if magic != SEGMENT_MAGIC or version != FORMAT_VERSION:
            raise _corruption(path, 0, "bad segment magic or format version")
        if group_id != self.group_id or seq != seg.seq:
            raise _corruption(path, 8, f"header names group {group_id} segment {seq}")
        has_hard_state = False
        scan = RecordScan(buf, SEGMENT_HEADER_SIZE, _RECORDS, is_last=is_last)
        try:
            for record_type, pos, record_end in scan:
                body = pos + RECORD_HEADER_SIZE
                length = record_end - body
                if record_type == RECORD_ENTRY and length >= _ENTRY_FIELDS.size:
                    index, term, kind = _ENTRY_FIELDS.unpack_from(buf, body)
                    if kind not in _KINDS:
                        raise _corruption(path, pos, f"unknown entry kind {kind}")
                    replay.entry(index, term, seg, pos, length - _ENTRY_FIELDS.size)
                elif record_type == RECORD_HARD_STATE and length == _HARD_STATE_FIELDS.size:
                    replay.hard_state = HardState(*_HARD_STATE_FIELDS.unpack_from(buf, body))
                    has_hard_state = True
                elif record_type == RECORD_LOG_RESET and length == _LOG_RESET_FIELDS.size:
                    index, term = _LOG_RESET_FIELDS.unpack_from(buf, body)
                    replay.reset(index, term, seg, pos)
                elif record_type == RECORD_COMPACT and length == _COMPACT_FIELDS.size:
                    (index,) = _COMPACT_FIELDS.unpack_from(buf, body)
                    replay.compacted = max(replay.compacted, index)
                else:
                    raise _corruption(
                        path, pos, f"record of type {record_type} with {length} bytes"
                    )
        except DamagedRecord as exc:
            raise _corruption(path, exc.offset, str(exc)) from exc
        return (scan.end if scan.torn else None), has_hard_state


class LogStore:
    """All groups' logs of one node under one directory; `sync()` is the one
    durability point (group commit).

    Opening recovers every group found (see the module docstring) and takes an
    exclusive flock on ``LOCK``, so a second store cannot open the directory.
    After a failed fsync the store refuses further writes: what reached the
    disk is unknown until it is reopened. Not thread-safe: use it from one
    thread at a time (`sync()` may run in a worker thread while the caller
    does not touch the store).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        """Open (creating it if needed) and recover the store in `directory`.

        Raises:
            LogError: another LogStore has the directory open.
            LogCorruptionError: a group's files are damaged beyond a torn tail.
        """
        if segment_bytes <= 0 or cache_bytes < 0:
            raise ValueError("segment_bytes must be positive and cache_bytes non-negative")
        self.directory = os.fspath(directory)
        self.segment_bytes = segment_bytes
        self.cache_bytes = cache_bytes
        self.sync_calls = 0
        """Durability rounds done (each `sync()` with something dirty, seals, snapshots)."""
        self.fsync_count = 0
        """fdatasync/syncfs system calls made by `_make_durable`."""
        self._dirty: dict[_Segment, None] = {}
        self._groups: dict[int, FileGroupLog] = {}
        self._failed: BaseException | None = None
        self._closed = False
        os.makedirs(self.directory, exist_ok=True)
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        self._lock_fd = -1
        try:
            try:
                self._lock_fd = lock_directory(self.directory)
            except DirectoryLocked:
                raise LogError(
                    f"{self.directory} is in use by another LogStore; close it first"
                ) from None
            self._delete_tombstones()
            for name in sorted(os.listdir(self.directory)):
                match = _GROUP_NAME.fullmatch(name)
                path = os.path.join(self.directory, name)
                if match and os.path.isdir(path):
                    group_id = int(match.group(1))
                    self._groups[group_id] = FileGroupLog(self, group_id, path)
        except BaseException:
            self._release()
            raise

    def group(self, group_id: int) -> FileGroupLog:
        """The log of `group_id`, created (durably, empty) on first use."""
        self._check_open()
        log = self._groups.get(group_id)
        if log is not None:
            return log
        if group_id < 0:
            raise ValueError(f"group ids are non-negative, not {group_id}")
        self._check_writable()
        path = os.path.join(self.directory, f"group-{group_id}")
        os.makedirs(path, exist_ok=True)
        os.fsync(self._dir_fd)
        log = FileGroupLog(self, group_id, path)
        self._groups[group_id] = log
        return log

    def groups(self) -> list[int]:
        """The groups open in this store: those found on disk when it opened
        and those created since, less the removed and closed ones (never a
        tombstone)."""
        return sorted(self._groups)

    def close_group(self, group_id: int) -> None:
        """Make the group's writes durable and close its files; its directory
        stays, and the next `group(group_id)` opens (recovers) it again. The
        closed `FileGroupLog` refuses writes and reads from disk (LogError).

        Raises:
            LogError: the store is closed or failed, or does not hold the group.
            OSError: the sync failed (the store then refuses writes).
        """
        log = self._take_group(group_id)
        try:
            dirty = [seg for seg in log._segments if self._is_dirty(seg)]
            if dirty:
                self._sync_segments(dirty)
        finally:
            log._close()

    def remove_group(self, group_id: int) -> None:
        """Delete the group's log, durably: close its files (unsynced writes
        are dropped), rename its directory to a tombstone (atomic), fsync the
        store directory, delete the tombstone. From the rename on, the group
        is gone even after a crash (a tombstone is deleted at the next open);
        `group(group_id)` then creates a new, empty log.

        Raises:
            LogError: the store is closed or failed, or does not hold the group.
            OSError: the rename or the deletion failed. The group is closed
                either way; after a failed rename its directory is intact (the
                next `group()` reopens it), after a failed deletion the
                tombstone is deleted at the next open.
        """
        log = self._take_group(group_id)
        log._close()
        tombstone = os.path.join(self.directory, tombstone_name(group_id))
        os.rename(log.directory, tombstone)
        os.fsync(self._dir_fd)
        shutil.rmtree(tombstone)

    def _take_group(self, group_id: int) -> FileGroupLog:
        """Forget the group's log (the caller closes it)."""
        self._check_writable()
        log = self._groups.pop(group_id, None)
        if log is None:
            raise LogError(f"the log store {self.directory} holds no group {group_id}")
        return log

    def _delete_tombstones(self) -> None:
        """Finish removals a crash interrupted (see `remove_group`)."""
        tombstones = [n for n in os.listdir(self.directory) if _TOMBSTONE_NAME.fullmatch(n)]
        for name in tombstones:
            shutil.rmtree(os.path.join(self.directory, name))
        if tombstones:
            os.fsync(self._dir_fd)

    def sync(self) -> None:
        """Make durable everything written to any group since the last sync.

        Raises:
            OSError: the disk failed; the store then refuses writes (LogError)
                until it is closed and reopened.
        """
        self._check_writable()
        if self._dirty:
            self._sync_segments(list(self._dirty))

    def close(self) -> None:
        """Sync (unless the store failed) and close every file. Idempotent."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
        finally:
            self._release()

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _make_durable(self, segments: Collection[_Segment]) -> None:
        """THE durability point: the data of `segments` is on stable storage
        when this returns. One file: fdatasync. Several: one syncfs(2) of the
        log's filesystem (Linux), else fdatasync each."""
        syncfs = _syncfs
        if len(segments) == 1:
            for seg in segments:
                durable_write(seg.fd)
            self.fsync_count += 1
        elif syncfs is not None:
            syncfs(self._dir_fd)
            self.fsync_count += 1
        else:
            for seg in segments:
                durable_write(seg.fd)
                self.fsync_count += 1

    def _sync_segments(self, segments: Collection[_Segment]) -> None:
        try:
            self._make_durable(segments)
        except BaseException as exc:
            self._fail(exc)
            raise
        for seg in segments:
            self._dirty.pop(seg, None)
        self.sync_calls += 1

    def _fail(self, exc: BaseException) -> None:
        if self._failed is None:
            self._failed = exc

    def _mark_dirty(self, seg: _Segment) -> None:
        self._dirty[seg] = None

    def _forget_dirty(self, seg: _Segment) -> None:
        self._dirty.pop(seg, None)

    def _is_dirty(self, seg: _Segment) -> bool:
        return seg in self._dirty

    def _check_open(self) -> None:
        if self._closed:
            raise LogError(f"the log store {self.directory} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._failed is not None:
            raise LogError(
                f"the log store {self.directory} failed to make data durable "
                f"({self._failed!r}); close and reopen it"
            ) from self._failed

    def _release(self) -> None:
        self._closed = True
        for log in self._groups.values():
            log._close_files()
        self._dirty.clear()
        for fd in (self._lock_fd, self._dir_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._lock_fd = self._dir_fd = -1
