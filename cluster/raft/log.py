"""The durable segmented Raft log: the entries, hard state and snapshot of every
group of a node, in append-only files made durable together by one
`LogStore.sync()` (group commit).

Directory layout::

    <store>/LOCK                                   flock'd while a LogStore is open
    <store>/group-<id>/seg-<seq:08d>.log           segments, replayed in seq order
    <store>/group-<id>/snapshot-<index:020d>.snap  the group's latest snapshot

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

The checksum covers the length, so a damaged length cannot silently send the
parser elsewhere. xxh3-64 rather than crc32: it is faster on these sizes, and
its 64 bits make a false match negligible even when recovery tries every byte
offset after a bad record (see below). It is also what the WAL of
`protobase.storage` uses.

Replay runs over all records in write order (segment sequence, then offset):
an ENTRY with index i drops every entry >= i and becomes the last one (i must
be at most last + 1: a gap is corruption); the last HARD_STATE wins;
LOG_RESET(i, t) empties the log, which then continues after index i.
LOG_RESET is written when a snapshot replaces a log that does not contain the
snapshot's last entry: it is made durable before the old segments are
deleted, so a crash in between cannot bring stale entries back.

Snapshot file layout (written to ``.tmp``, fsync'd, renamed, directory
fsync'd; durable at once, independently of `sync()`)::

    0       8     magic b"PBRSNAP" + version byte 1
    8       4     metadata length m
    12      8     data length d
    20      m     msgpack of SnapshotMeta.to_wire()
    20+m    d     snapshot data
    20+m+d  8     xxh3-64 of bytes [0, 20 + m + d)

Recovery (`LogStore.__init__`), per group, first read-only, then repairs:

- the newest snapshot is verified (older ones and ``.tmp`` files are crash
  leftovers and are removed); a bad one raises `LogCorruptionError`;
- segments are replayed. In the *last* segment, a record that is cut short by
  the end of the file, or whose checksum fails with no valid record at any
  later byte offset, is a torn tail (it was never synced) and is truncated
  away (ftruncate + fsync). A last segment whose header never reached the disk
  (shorter than a header, or zeros with nothing valid after it) is deleted.
  Anything else - a bad record followed by a valid one, any damage in a sealed
  segment, a bad header - raises `LogCorruptionError` naming the file and the
  byte offset, and changes no file;
- the snapshot is then reconciled with the log exactly as `save_snapshot`
  does: entries up to its index are dropped when the log holds its index and
  term; otherwise the log is restarted (LOG_RESET), finishing a
  `save_snapshot` that crashed half-way;
- the last segment must hold the latest hard state (so that deleting sealed
  segments never loses it); if its torn tail took that record, it is rewritten.

Durability: every write is one `os.write` (no fsync); `LogStore.sync()` makes
the dirty segments of all groups durable in one round through
`LogStore._make_durable` (fdatasync for one file, one syncfs(2) for several).
New and removed files are followed by an fsync of their directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import struct
from array import array
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import msgpack
import xxhash

from .errors import LogCorruptionError, LogError, LogUnavailableError, ProtocolError
from .types import NO_NODE, ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta

__all__ = ["DEFAULT_CACHE_BYTES", "DEFAULT_SEGMENT_BYTES", "FileGroupLog", "LogStore"]

DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_CACHE_BYTES = 8 << 20
"""Per group: the most recent entries kept in memory; older ones are pread."""

SEGMENT_MAGIC = b"PBRLOG"
SNAPSHOT_MAGIC = b"PBRSNAP\x01"
FORMAT_VERSION = 1

RECORD_ENTRY = 1
RECORD_HARD_STATE = 2
RECORD_LOG_RESET = 3

_SEGMENT_HEADER = struct.Struct("<6sHQQ")
_RECORD_HEADER = struct.Struct("<QIB")  # checksum, body length, type
_ENTRY_PREFIX = struct.Struct("<IBQQB")  # body length, type, index, term, kind
_ENTRY_FIELDS = struct.Struct("<QQB")
_HARD_STATE_PREFIX = struct.Struct("<IBQQQ")
_HARD_STATE_FIELDS = struct.Struct("<QQQ")
_LOG_RESET_PREFIX = struct.Struct("<IBQQ")
_LOG_RESET_FIELDS = struct.Struct("<QQ")
_SNAPSHOT_HEADER = struct.Struct("<8sIQ")
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
}
_KINDS = {int(kind): kind for kind in EntryKind}
_CACHE_ENTRY_OVERHEAD = 64
"""What a cached Entry costs besides its data, roughly."""
_MAX_READ_SPAN = 8 << 20
_MAX_READ_GAP = 64 << 10
"""Entries whose records are at most this far apart are read with one pread."""

_SEGMENT_NAME = re.compile(r"seg-(\d{8,})\.log")
_SNAPSHOT_NAME = re.compile(r"snapshot-(\d{20})\.snap")
_GROUP_NAME = re.compile(r"group-(\d+)")

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
    return f"seg-{seq:08d}.log"


def snapshot_name(index: int) -> str:
    return f"snapshot-{index:020d}.snap"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _valid_record_after(buf: bytes, start: int) -> int | None:
    """The first byte offset >= start where a valid record starts, if any."""
    view = memoryview(buf)
    type_offset = RECORD_HEADER_SIZE - 1
    for pos in range(start, len(buf) - RECORD_HEADER_SIZE + 1):
        # Cheap filter first: most offsets do not even hold a known type.
        if buf[pos + type_offset] in _BODY_SIZES and _valid_record_at(buf, view, pos):
            return pos
    return None


def _corruption(path: str, offset: int, problem: str) -> LogCorruptionError:
    return LogCorruptionError(
        f"{path}: {problem} at byte offset {offset}; the Raft log of this group is "
        "damaged: restore the node's data from a backup or let it rejoin from a peer"
    )


def _encode_snapshot(snapshot: Snapshot) -> bytes:
    meta = msgpack.packb(snapshot.meta.to_wire())
    head = _SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, len(meta), len(snapshot.data))
    body = b"".join((head, meta, snapshot.data))
    return body + _U64.pack(_xxh3(body))


def _read_snapshot_file(path: str) -> Snapshot:
    """Read and verify a snapshot file.

    Raises:
        LogCorruptionError: the file is damaged; the message names it and the offset.
    """
    with open(path, "rb") as file:
        raw = file.read()
    if len(raw) < _SNAPSHOT_HEADER.size + 8:
        raise _corruption(path, len(raw), "snapshot file cut short")
    magic, meta_size, data_size = _SNAPSHOT_HEADER.unpack_from(raw, 0)
    if magic != SNAPSHOT_MAGIC:
        raise _corruption(path, 0, "bad snapshot magic or version")
    end = _SNAPSHOT_HEADER.size + meta_size + data_size
    if end + 8 != len(raw):
        raise _corruption(path, min(end, len(raw)), "snapshot length does not match the file")
    (checksum,) = _U64.unpack_from(raw, end)
    if _xxh3(memoryview(raw)[:end]) != checksum:
        raise _corruption(path, end, "snapshot checksum mismatch")
    meta_end = _SNAPSHOT_HEADER.size + meta_size
    try:
        meta = SnapshotMeta.from_wire(msgpack.unpackb(raw[_SNAPSHOT_HEADER.size : meta_end]))
    except (ValueError, TypeError, ProtocolError, msgpack.UnpackException) as exc:
        raise _corruption(path, _SNAPSHOT_HEADER.size, f"bad snapshot metadata ({exc})") from exc
    return Snapshot(meta, raw[meta_end:end])


EMPTY_SNAPSHOT = Snapshot(SnapshotMeta(0, 0, ConfState(frozenset())), b"")


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
        self.terms: array[int] = array("Q")
        self.seqs: array[int] = array("I")
        self.offsets: array[int] = array("Q")
        self.sizes: array[int] = array("I")
        self.hard_state = HardState()

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
        self._truncate(0)

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
    a little behind still gets entries, until `compact` or a reopen drops
    them); every index in [first_index, last_index] has an entry, described
    in memory by its term, segment, offset and data size; the entries
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
        self._snapshot_meta = EMPTY_SNAPSHOT.meta
        self._snapshot_path: str | None = None
        self._hard_state = HardState()
        self._first = 1
        self._terms: array[int] = array("Q")
        self._seqs: array[int] = array("I")
        self._offsets: array[int] = array("Q")
        self._sizes: array[int] = array("I")
        self._cache: list[Entry] = []
        self._cache_used = 0
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

    def snapshot(self) -> Snapshot:
        """The latest snapshot with its data (an empty one at index 0 at first).

        Raises:
            LogCorruptionError: the snapshot file is damaged.
        """
        if self._snapshot_path is None:
            return EMPTY_SNAPSHOT
        return _read_snapshot_file(self._snapshot_path)

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
        self._store._check_writable()
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
        self._store._check_writable()
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

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep `snapshot` (durable on return). If the log holds the snapshot's
        index with its term, every entry stays readable (`compact` drops the
        ones up to an index); otherwise the whole log is discarded and
        continues after the snapshot. A snapshot that is not newer than the
        current one is ignored (as `MemoryGroupLog` does).

        Raises:
            LogError: discarding the log would remove committed entries.
        """
        self._store._check_writable()
        meta = snapshot.meta
        if meta.index <= self._snapshot_meta.index:
            return
        last = self.last_index()
        keeps_log = meta.index <= last and self.term(meta.index) == meta.term
        if not keeps_log and min(last, self._hard_state.commit) > meta.index:
            raise LogError(
                f"group {self.group_id}: snapshot at {meta.index} (term {meta.term}) "
                f"disagrees with committed entries up to {self._hard_state.commit}"
            )
        path = os.path.join(self.directory, snapshot_name(meta.index))
        temporary = path + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                _write_all(fd, _encode_snapshot(snapshot))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_dir(self.directory)
        previous = self._snapshot_path
        self._snapshot_meta = meta
        self._snapshot_path = path
        if previous is not None:
            os.unlink(previous)
            _fsync_dir(self.directory)
        if not keeps_log:
            self._restart_log(meta)

    def compact(self, index: int) -> None:
        """Make the entries up to `index` unavailable and delete the sealed
        segments, oldest first, whose entries are all at or below it (the
        active segment always stays).

        Raises:
            LogError: `index` is beyond the snapshot index.
        """
        self._store._check_writable()
        if index > self._snapshot_meta.index:
            raise LogError(
                f"group {self.group_id}: cannot compact to {index}, beyond the snapshot "
                f"index {self._snapshot_meta.index}"
            )
        if index >= self._first:
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
            # Its opening hard state record must survive the older copies.
            self._store._sync_segments([active])
        self._segments = self._segments[len(doomed) :]
        self._remove_segments(doomed)

    # -- internals ----------------------------------------------------------

    def _writable_segment(self) -> _Segment:
        seg = self._segments[-1]
        if seg.size < self._store.segment_bytes:
            return seg
        if self._store._is_dirty(seg):
            self._store._sync_segments([seg])
        return self._new_segment(b"")

    def _new_segment(self, extra: bytes) -> _Segment:
        """Create and activate the next segment, opening with the hard state and `extra`."""
        seq = self._segments[-1].seq + 1 if self._segments else 1
        path = os.path.join(self.directory, segment_name(seq))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        seg = _Segment(seq, path, fd, 0)
        self._segments.append(seg)
        self._by_seq[seq] = seg
        header = _SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, self.group_id, seq)
        self._write(seg, header + _hard_state_record(self._hard_state) + extra)
        _fsync_dir(self.directory)
        return seg

    def _write(self, seg: _Segment, data: bytes) -> None:
        self._store._mark_dirty(seg)
        try:
            _write_all(seg.fd, data)
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
        _fsync_dir(self.directory)

    def _read_from_segments(self, lo: int, hi: int) -> list[Entry]:
        """Entries [lo, hi) read back from their segments, checksums verified."""
        self._store._check_open()
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

    def _close_files(self) -> None:
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
            if match := _SEGMENT_NAME.fullmatch(name):
                seqs.append(int(match.group(1)))
            elif match := _SNAPSHOT_NAME.fullmatch(name):
                snapshots.append(int(match.group(1)))
            elif name.endswith(".snap.tmp"):
                leftovers.append(name)
        seqs.sort()
        snapshots.sort()

        # Read-only phase: verify everything before changing any file.
        if snapshots:
            path = os.path.join(self.directory, snapshot_name(snapshots[-1]))
            meta = _read_snapshot_file(path).meta
            if meta.index != snapshots[-1]:
                raise _corruption(path, 0, f"snapshot file holds index {meta.index}")
            self._snapshot_meta, self._snapshot_path = meta, path
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
            if is_last and self._torn_header(buf):
                drop_last = True
                break
            torn_at, last_has_hard_state = self._replay_segment(seg, buf, is_last, replay)

        # The snapshot against the log, as save_snapshot decided it.
        snapshot_index, snapshot_term = self._snapshot_meta.index, self._snapshot_meta.term
        start = snapshot_index if replay.first is None else replay.first - 1
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
            assert replay.first is not None
            position = snapshot_index - replay.first
            if position < len(replay.terms) and replay.terms[position] == snapshot_term:
                for column in (replay.terms, replay.seqs, replay.offsets, replay.sizes):
                    del column[: position + 1]
            else:
                restart = True

        # Repairs.
        for name in leftovers:
            os.unlink(os.path.join(self.directory, name))
        if leftovers:
            _fsync_dir(self.directory)
        if drop_last:
            seg = self._segments.pop()
            del self._by_seq[seg.seq]
            os.close(seg.fd)
            os.unlink(seg.path)
            _fsync_dir(self.directory)
        elif torn_at is not None:
            seg = self._segments[-1]
            os.ftruncate(seg.fd, torn_at)
            os.fsync(seg.fd)
            seg.size = torn_at
        self._hard_state = replay.hard_state
        self._first = snapshot_index + 1
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

    def _torn_header(self, buf: bytes) -> bool:
        """Whether the last segment was created but its header never reached the disk."""
        if len(buf) < SEGMENT_HEADER_SIZE:
            return True
        return not any(buf[:SEGMENT_HEADER_SIZE]) and (
            _valid_record_after(buf, SEGMENT_HEADER_SIZE) is None
        )

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
        view = memoryview(buf)
        end = len(buf)
        pos = SEGMENT_HEADER_SIZE
        has_hard_state = False
        unpack_header = _RECORD_HEADER.unpack_from
        while pos < end:
            if end - pos < RECORD_HEADER_SIZE:
                problem = "record header cut short by the end of the file"
            else:
                checksum, length, record_type = unpack_header(buf, pos)
                record_end = pos + RECORD_HEADER_SIZE + length
                if record_end > end:
                    problem = "record cut short by the end of the file"
                elif _xxh3(view[pos + 8 : record_end]) != checksum:
                    problem = "checksum mismatch"
                else:
                    body = pos + RECORD_HEADER_SIZE
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
                    else:
                        raise _corruption(
                            path, pos, f"record of type {record_type} with {length} bytes"
                        )
                    pos = record_end
                    continue
            if not is_last:
                raise _corruption(path, pos, f"{problem} in a sealed segment")
            following = _valid_record_after(buf, pos + 1)
            if following is not None:
                raise _corruption(
                    path, pos, f"{problem}, followed by a valid record at {following}"
                )
            return pos, has_hard_state
        return None, has_hard_state


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)
        while written < len(data):
            written += os.write(fd, view[written:])


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
            self._lock_fd = os.open(os.path.join(self.directory, "LOCK"), os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                raise LogError(
                    f"{self.directory} is in use by another LogStore; close it first"
                ) from None
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
        return sorted(self._groups)

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
                os.fdatasync(seg.fd)
            self.fsync_count += 1
        elif syncfs is not None:
            syncfs(self._dir_fd)
            self.fsync_count += 1
        else:
            for seg in segments:
                os.fdatasync(seg.fd)
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
