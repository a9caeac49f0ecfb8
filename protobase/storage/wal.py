"""The write-ahead log format: segments, records, and how recovery reads them.

A StandaloneFileStorage directory holds WAL *segments*, append-only files
of bounded size named ``wal-GGGG-NNNNNNNN.pbw`` (generation G, number N),
plus one checkpoint (see `protobase.storage.checkpoint`).

Segment layout::

    offset  size  field
    0       8     magic b"PBWAL\\x00\\x01\\x00"
    8       4     generation (uint32, big-endian)
    12      4     segment number (uint32)
    16      ...   records, back to back

Record layout (all integers big-endian)::

    offset  size  field
    0       4     magic b"PBR1"
    4       4     body length n (uint32)
    8       8     xxh3-64 of the body
    16      n     body

Body::

    0       1     kind: 1 = commit, 2 = packed batch (written by pack)
    1       8     root version after this commit (0 for a packed batch)
    9       8     commit time, microseconds since the Unix epoch
    17      16    transaction id
    33      16    root pointer: transaction id   } zeros for a packed batch
    49      4     root pointer: index            }
    53      4     atom count k
    57      4k    atom indexes (packed batch only; a commit's are 0..k-1)
    ..      4k+4  cumulative end offsets of the atoms, the first is 0
    ..      ...   atom bytes, back to back

One commit is one record: its atoms and the new root. A record is durable
once `durable_write`'s fdatasync returned; a new segment (and every rename or
removal) is followed by an fsync of the directory. The file machinery (those
two functions, writing, creating segments, the directory lock, segment names
and the torn-tail rule) is the `seglog` package's, shared with the Raft log;
this module owns the format.

Recovery
--------

Opening first works out, reading only, what it finds and what it would
change (`protobase.storage.file.plan_recovery`), and changes nothing unless
the whole directory passed. `protobase fsck` reports that plan without
applying it, and never writes. Recovery may discard only bytes that are
provably an unacknowledged write of ours; anything else that does not fit
raises `CorruptionError` (damaged bytes) or `StorageError` (files that do
not form one database), naming the file (and offset) and saying what to do,
and changes no file. The cases:

- **Torn tail** (`scan_segment`; kept). Records are read in order from the
  checkpoint's tail position, by `seglog.RecordScan` under its torn-tail
  rule (the WAL adds no condition). In the *last* segment, a record that is cut
  short by the end of the file, or fails its checksum with no valid record
  at any later offset, is a torn tail and is truncated away. Every byte
  before the checkpoint's tail was durable when the checkpoint was written,
  so the cut is always after it; only our appends write past it; and a
  commit is acknowledged only after its fdatasync returned, after which its
  record is complete. The bytes after a torn record may be zeros or stale
  disk blocks (a crash can make a longer file size durable before its
  data). The one thing this rule cannot tell from a crash is damage that
  destroys every record from some offset to the end of the last segment;
  the raft log (`cluster/raft/log.py`) accepts the same limit.
- **Damaged records elsewhere** (refused): a bad record followed by a valid
  one, a bad record in a segment that is not the last, a segment shorter
  than where the checkpoint says acknowledged commits reach, or a
  checkpoint whose tail is not in its list of segments.
- **Segment header** (`scan_segment`). A header that is not ours (magic,
  generation or number) is corruption: the file is someone else's, or ours
  and damaged. Only the last segment, when recovery reads it from offset 0
  (the checkpoint does not cover it), may be a header that never reached the
  disk: shorter than a header and a prefix of ours (or zeros), or a header
  of zeros with no valid record after it. A segment's header is durable
  before any record in it is acknowledged (a new segment's header is synced
  before records go in; pack syncs its whole generation before switching to
  it), so such a segment holds nothing that was acknowledged; its header is
  written again.
- **Which segments are live** (refused when they do not fit). The live
  generation's segments are the checkpoint's list plus those numbered on
  from its last one (created after it was written); the last of those is
  the only one that can have a torn tail. A segment the checkpoint names
  that is missing, or a segment of the live generation that does not follow
  on (a gap: the segments in between are missing), is refused: otherwise
  recovery would ignore the commits after the gap, or truncate a segment
  that is not the last. Only canonical file names (`segment_name`) are
  segments; other files are never touched.
- **Another generation** (kept only for the neighbours). Pack writes
  generation G+1, syncs it, switches by writing its checkpoint and then
  removes generation G. So with a checkpoint of generation G, files of G+1
  are an interrupted pack (removed; they may hold a header that never
  reached the disk) and files of G-1 were left after the switch (removed;
  their headers must be ours, since they were synced before it). They are
  removed only after the live generation was recovered without error.
  Files of any other generation, or with a header that is not theirs, are
  refused. Without a checkpoint, one generation must be on disk (several:
  refused, since which one is live cannot be known); it is replayed from
  its segment 1.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import xxhash

from seglog import BadRecord, DamagedRecord, RecordScan, SegmentNames, never_written
from seglog import durable_write as durable_write
from seglog import fsync_directory as fsync_directory

from ..atoms import TRANSACTION_ID_BYTES, AtomPointer
from ..errors import CorruptionError

SEGMENT_MAGIC = b"PBWAL\x00\x01\x00"
RECORD_MAGIC = b"PBR1"
KIND_COMMIT = 1
KIND_PACKED = 2

SEGMENT_HEADER = struct.Struct(">8sII")
RECORD_HEADER = struct.Struct(">4sIQ")
BODY_HEADER = struct.Struct(">BQQ16s16sII")
_U32 = struct.Struct(">I")

SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size
RECORD_HEADER_SIZE = RECORD_HEADER.size
BODY_HEADER_SIZE = BODY_HEADER.size
MAX_RECORD_BODY = 2**32 - 1

_NO_ROOT = bytes(TRANSACTION_ID_BYTES)

SEGMENT_NAMES = SegmentNames("wal-", ".pbw", (4, 8))


def segment_name(generation: int, number: int) -> str:
    return SEGMENT_NAMES.name(generation, number)


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """``(generation, number)`` of a segment file name, or None for other files.

    Only the names `segment_name` makes count: ``wal-1-1.pbw`` is not ours,
    so recovery never reads or removes it.
    """
    parsed = SEGMENT_NAMES.parse(name)
    return None if parsed is None else (parsed[0], parsed[1])


def segment_header(generation: int, number: int) -> bytes:
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, generation, number)


def header_never_written(data: bytes, generation: int, number: int) -> bool:
    """Whether the first bytes of a segment look like a header that never reached the disk.

    True when they are a prefix of the segment's header (an empty file
    included) or zeros; a complete, correct header is not "never written".
    """
    return never_written(data[:SEGMENT_HEADER_SIZE], segment_header(generation, number))


@dataclass(frozen=True, slots=True)
class RecordInfo:
    """What the index keeps of one record (its atoms stay on disk)."""

    kind: int
    version: int
    time_us: int
    transaction_id: bytes
    root: AtomPointer | None
    segment: int
    offset: int
    """Byte offset of the record header in its segment."""
    size: int
    """Record size in bytes, header included."""
    atom_count: int
    indexes: tuple[int, ...] | None
    """Atom indexes of a packed batch; None for a commit (0..count-1)."""

    @property
    def table_offset(self) -> int:
        """Offset of the end-offset table within the segment."""
        extra = 0 if self.indexes is None else 4 * self.atom_count
        return self.offset + RECORD_HEADER_SIZE + BODY_HEADER_SIZE + extra

    @property
    def data_offset(self) -> int:
        return self.table_offset + 4 * (self.atom_count + 1)


def encode_record(
    kind: int,
    version: int,
    time_us: int,
    transaction_id: bytes,
    root: AtomPointer | None,
    atoms: list[bytes],
    indexes: list[int] | None = None,
) -> bytes:
    """The bytes of one record (header and body)."""
    root_id, root_index = (_NO_ROOT, 0) if root is None else (root.transaction_id, root.index)
    parts = [
        BODY_HEADER.pack(kind, version, time_us, transaction_id, root_id, root_index, len(atoms))
    ]
    if indexes is not None:
        parts.append(struct.pack(f">{len(indexes)}I", *indexes))
    end = 0
    ends = [0]
    for atom in atoms:
        end += len(atom)
        ends.append(end)
    parts.append(struct.pack(f">{len(ends)}I", *ends))
    parts.extend(atoms)
    body = b"".join(parts)
    if len(body) > MAX_RECORD_BODY:
        raise ValueError(f"a commit of {len(body)} bytes exceeds the 4 GiB record limit")
    return RECORD_HEADER.pack(RECORD_MAGIC, len(body), xxhash.xxh3_64_intdigest(body)) + body


class TornRecord(BadRecord):
    """A record that is incomplete or fails its checksum (internal to recovery)."""


def parse_record(
    data: bytes | memoryview, offset: int, segment: int, verify: bool = True
) -> RecordInfo:
    """Parse and (unless `verify` is False) verify the record at `offset` of a segment's bytes.

    `verify=False` is for records this process just encoded.

    Raises:
        TornRecord: the record is cut short or fails its checksum.
    """
    if offset + RECORD_HEADER_SIZE > len(data):
        raise TornRecord("header cut short")
    magic, length, expected = RECORD_HEADER.unpack_from(data, offset)
    if magic != RECORD_MAGIC:
        raise TornRecord("bad record magic")
    start = offset + RECORD_HEADER_SIZE
    if start + length > len(data):
        raise TornRecord("body cut short")
    body = data[start : start + length]
    if verify and xxhash.xxh3_64_intdigest(body) != expected:
        raise TornRecord("checksum mismatch")
    if length < BODY_HEADER_SIZE:
        raise TornRecord("body shorter than its header")
    kind, version, time_us, txid, root_id, root_index, count = BODY_HEADER.unpack_from(body)
    if kind not in (KIND_COMMIT, KIND_PACKED):
        raise TornRecord(f"unknown record kind {kind}")
    indexes: tuple[int, ...] | None = None
    if kind == KIND_PACKED:
        indexes = struct.unpack_from(f">{count}I", body, BODY_HEADER_SIZE)
    root = None if kind == KIND_PACKED else AtomPointer(bytes(root_id), root_index)
    info = RecordInfo(
        kind,
        version,
        time_us,
        bytes(txid),
        root,
        segment,
        offset,
        RECORD_HEADER_SIZE + length,
        count,
        indexes,
    )
    table_end = info.data_offset - offset
    if table_end > RECORD_HEADER_SIZE + length:
        raise TornRecord("atom table runs past the body")
    return info


@dataclass(frozen=True, slots=True)
class ScanResult:
    records: list[RecordInfo]
    end: int
    """Offset just past the last complete record."""
    torn_at: int | None
    """Offset of a torn tail, when the segment has one."""


def scan_segment(
    path: Path, data: bytes, start: int, is_last: bool, generation: int, number: int
) -> ScanResult:
    """Read every complete record of a segment from `start` (sans-IO: bytes in).

    Args:
        start: where the records still to be read begin; everything before
            it is acknowledged (the checkpoint's tail), 0 for a segment the
            checkpoint does not cover.
        is_last: the segment is the last live one, the only one that can
            have a torn tail.

    Returns:
        The records; `torn_at` is set when the segment ends in a torn tail
        (0 when its header never reached the disk).

    Raises:
        CorruptionError: a segment header that is not this segment's, or a
            bad record that is not a torn tail (see "Recovery" in the module
            docstring); names file and offset.
    """
    if data[:SEGMENT_HEADER_SIZE] != segment_header(generation, number):
        if is_last and start == 0 and _crashed_while_starting(data, generation, number):
            return ScanResult([], 0, 0)
        raise CorruptionError(
            f"{path}: offset 0: not the header of segment {number} of WAL generation "
            f"{generation} ({len(data)} bytes in the file); the file is damaged or is not "
            "this database's. Nothing was changed: restore the directory from a backup, "
            "or move the file away if it does not belong to this database"
        )
    scan = RecordScan(data, max(start, SEGMENT_HEADER_SIZE), _Records(number), is_last=is_last)
    try:
        records = [record for record, _, _ in scan]
    except DamagedRecord as exc:
        raise CorruptionError(
            f"{path}: offset {exc.offset}: damaged WAL record ({exc.problem}) before the end "
            "of the log; acknowledged commits are at risk. Run `protobase fsck` and restore "
            "from a backup."
        ) from exc
    return ScanResult(records, scan.end, scan.end if scan.torn else None)


def _crashed_while_starting(data: bytes, generation: int, number: int) -> bool:
    """Whether a last segment is what a crash while it was being started leaves.

    Shorter than a header and a prefix of it (or zeros), or a header of zeros
    with no valid record after it (a zeroed header in front of records is
    damage, not a crash).
    """
    if not header_never_written(data, generation, number):
        return False
    return (
        len(data) <= SEGMENT_HEADER_SIZE
        or _Records(number).record_after(data, SEGMENT_HEADER_SIZE) is None
    )


class _Records:
    """The WAL's records as `seglog.RecordScan` reads them (a `seglog.RecordCodec`).

    Every bad record that no valid record follows is a torn append: the
    WAL adds nothing to seglog's rule.
    """

    __slots__ = ("segment",)

    def __init__(self, segment: int) -> None:
        self.segment = segment

    def read(self, data: bytes, view: memoryview, pos: int) -> tuple[RecordInfo, int]:
        record = parse_record(data, pos, self.segment)
        return record, pos + record.size

    def record_after(self, data: bytes, start: int) -> int | None:
        """Where the first complete, checksummed record at or after `start` starts."""
        position = data.find(RECORD_MAGIC, start)
        while position != -1:
            try:
                parse_record(data, position, self.segment)
                return position
            except TornRecord:
                position = data.find(RECORD_MAGIC, position + 1)
        return None

    def torn_append(self, data: bytes, pos: int) -> bool:
        return True


def read_atom_spans(table: bytes, count: int) -> list[int]:
    """The cumulative end offsets of a record's atoms from its raw table bytes."""
    return list(struct.unpack(f">{count + 1}I", table))


def read_atom(fd: int, record: RecordInfo, slot: int) -> bytes | None:
    """The bytes of the atom in `slot` of `record`, read from its segment file `fd`.

    Returns:
        None when the file ends before the atom does.
    """
    span = os.pread(fd, 8, record.table_offset + 4 * slot)
    if len(span) != 8:
        return None
    start, end = struct.unpack(">II", span)
    atom = os.pread(fd, end - start, record.data_offset + start)
    return atom if len(atom) == end - start else None
