"""The checkpoint: the WAL index saved so that opening does not rescan the log.

A checkpoint is one file, ``checkpoint.pbc``, replaced atomically (written
to ``checkpoint.pbc.tmp``, fdatasync'd, renamed, directory fsync'd)::

    offset  size  field
    0       8     magic b"PBCKP\\x00\\x01\\x00"
    8       8     xxh3-64 of the body
    16      ...   body: msgpack map

Body keys: ``generation`` (the WAL generation it describes), ``segments``
(live segment numbers, ascending), ``tail`` ([segment, offset]: every record
before it is in the index; recovery replays from there), ``commits`` (packed
fixed-size entries, `_COMMIT`), ``packed`` (list of [entry, indexes]).

The checkpoint is the source of truth for which files are live: its
generation, its segments and those numbered on from them. Segment files of
the generation just before or after it are leftovers of an interrupted pack
and are removed on open, once the live generation was read without error;
any other file that does not fit is refused, not removed (see "Recovery" in
`protobase.storage.wal`). Without a checkpoint, opening rebuilds the index by
scanning the one generation on disk; with no segment either, the directory
is a new, empty database.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import xxhash

from ..atoms import AtomPointer
from ..errors import CorruptionError
from . import wal
from .wal import KIND_COMMIT, KIND_PACKED, RecordInfo

CHECKPOINT_NAME = "checkpoint.pbc"
MAGIC = b"PBCKP\x00\x01\x00"
_HEADER = struct.Struct(">8sQ")
# kind, version, time, txid, root txid, root index, segment, offset, size, count
_ENTRY = struct.Struct(">BQQ16s16sIIQII")


@dataclass
class Checkpoint:
    generation: int = 1
    segments: list[int] = field(default_factory=lambda: [1])
    tail: tuple[int, int] = (1, 0)
    records: list[RecordInfo] = field(default_factory=list)


def _entry(info: RecordInfo) -> bytes:
    root = info.root or AtomPointer(bytes(16), 0)
    return _ENTRY.pack(
        info.kind,
        info.version,
        info.time_us,
        info.transaction_id,
        root.transaction_id,
        root.index,
        info.segment,
        info.offset,
        info.size,
        info.atom_count,
    )


def _info(entry: tuple, indexes: tuple[int, ...] | None) -> RecordInfo:
    kind, version, time_us, txid, root_id, root_index, segment, offset, size, count = entry
    root = AtomPointer(root_id, root_index) if kind == KIND_COMMIT else None
    return RecordInfo(kind, version, time_us, txid, root, segment, offset, size, count, indexes)


def pack_records(records: list[RecordInfo]) -> dict[str, object]:
    """Index entries as msgpack-ready fields ``commits`` and ``packed`` (also used for S3)."""
    commits = b"".join(_entry(r) for r in records if r.kind == KIND_COMMIT)
    packed = [
        [_entry(r), struct.pack(f">{len(r.indexes or ())}I", *(r.indexes or ()))]
        for r in records
        if r.kind == KIND_PACKED
    ]
    return {"commits": commits, "packed": packed}


def unpack_records(fields: dict[str, object]) -> list[RecordInfo]:
    """The inverse of `pack_records` (raises KeyError, TypeError, struct.error on bad input)."""
    commits, packed = fields["commits"], fields["packed"]
    if not isinstance(commits, bytes) or not isinstance(packed, list):
        raise TypeError("commits must be bytes and packed a list")
    records = [_info(entry, None) for entry in _ENTRY.iter_unpack(commits)]
    for entry_bytes, index_bytes in packed:
        indexes = struct.unpack(f">{len(index_bytes) // 4}I", index_bytes)
        records.append(_info(_ENTRY.unpack(entry_bytes), indexes))
    return records


def write_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Replace the checkpoint atomically and durably."""
    body = msgpack.packb(
        {
            "generation": checkpoint.generation,
            "segments": checkpoint.segments,
            "tail": list(checkpoint.tail),
            **pack_records(checkpoint.records),
        },
        use_bin_type=True,
    )
    temporary = directory / (CHECKPOINT_NAME + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        data = _HEADER.pack(MAGIC, xxhash.xxh3_64_intdigest(body)) + body
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        wal.durable_write(fd)
    finally:
        os.close(fd)
    os.replace(temporary, directory / CHECKPOINT_NAME)
    wal.fsync_directory(directory)


def read_checkpoint(directory: Path) -> Checkpoint | None:
    """The saved checkpoint, or None when the directory has none.

    Raises:
        CorruptionError: the file exists but is damaged (named in the message).
    """
    path = directory / CHECKPOINT_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _HEADER.size:
        raise CorruptionError(f"{path}: offset 0: checkpoint cut short")
    magic, expected = _HEADER.unpack_from(data)
    body = data[_HEADER.size :]
    if magic != MAGIC or xxhash.xxh3_64_intdigest(body) != expected:
        raise CorruptionError(
            f"{path}: offset 0: checkpoint fails its checksum; remove it to rebuild the "
            "index from the WAL (slower open), or restore from a backup"
        )
    try:
        fields = msgpack.unpackb(body, raw=False)
        records = unpack_records(fields)
        segment, offset = fields["tail"]
        return Checkpoint(
            int(fields["generation"]),
            [int(s) for s in fields["segments"]],
            (int(segment), int(offset)),
            records,
        )
    except (KeyError, TypeError, ValueError, struct.error, msgpack.UnpackException) as exc:
        raise CorruptionError(f"{path}: checkpoint body is malformed: {exc}") from exc
