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
removal) is followed by an fsync of the directory.

Recovery (`scan_segment`): records are read in order from the checkpoint's
tail position. A record that is cut short by the end of the file, or whose
checksum fails with no valid record after it, is a *torn tail*: the segment is
truncated to the last complete record (it was never acknowledged: its
fdatasync did not return). A bad record followed by a valid one, or a bad
record in a segment that is not the last, is corruption of acknowledged data:
`CorruptionError` names the file and byte offset; nothing is skipped.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import xxhash

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


def segment_name(generation: int, number: int) -> str:
    return f"wal-{generation:04d}-{number:08d}.pbw"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """``(generation, number)`` of a segment file name, or None for other files."""
    if not (name.startswith("wal-") and name.endswith(".pbw")):
        return None
    parts = name[4:-4].split("-")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def segment_header(generation: int, number: int) -> bytes:
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, generation, number)


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


class TornRecord(Exception):
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

    Raises:
        CorruptionError: a bad segment header, or a bad record that is not a
            torn tail (see the module docstring); names file and offset.
    """
    header_ok = len(data) >= SEGMENT_HEADER_SIZE and SEGMENT_HEADER.unpack_from(data) == (
        SEGMENT_MAGIC,
        generation,
        number,
    )
    if not header_ok and is_last and not _valid_record_after(data, 0, number):
        # A crash while the segment was being started: nothing in it was acknowledged.
        return ScanResult([], 0, 0)
    if len(data) < SEGMENT_HEADER_SIZE:
        raise CorruptionError(f"{path}: segment header cut short ({len(data)} bytes)")
    if not header_ok:
        raise CorruptionError(
            f"{path}: offset 0: not segment {generation}/{number} of a ProtoBase WAL"
        )
    offset = max(start, SEGMENT_HEADER_SIZE)
    records: list[RecordInfo] = []
    while offset < len(data):
        try:
            record = parse_record(data, offset, number)
        except TornRecord as exc:
            if is_last and not _valid_record_after(data, offset + 1, number):
                return ScanResult(records, offset, offset)
            raise CorruptionError(
                f"{path}: offset {offset}: damaged WAL record ({exc}) before the end of the "
                "log; acknowledged commits are at risk. Run `protobase fsck` and restore "
                "from a backup."
            ) from exc
        records.append(record)
        offset += record.size
    return ScanResult(records, offset, None)


def _valid_record_after(data: bytes, start: int, segment: int) -> bool:
    """Whether a complete, checksummed record starts anywhere at or after `start`."""
    position = data.find(RECORD_MAGIC, start)
    while position != -1:
        try:
            parse_record(data, position, segment)
            return True
        except TornRecord:
            position = data.find(RECORD_MAGIC, position + 1)
    return False


def read_atom_spans(table: bytes, count: int) -> list[int]:
    """The cumulative end offsets of a record's atoms from its raw table bytes."""
    return list(struct.unpack(f">{count + 1}I", table))


def durable_write(fd: int) -> None:
    """Make everything written to `fd` durable. The one place data becomes durable."""
    os.fdatasync(fd)


def fsync_directory(path: Path) -> None:
    """Make a file creation, rename or removal in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
