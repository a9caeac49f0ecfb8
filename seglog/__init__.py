"""seglog: the durable segment-file layer the WAL and the Raft log share.

Both logs of this repository keep append-only *segment* files in one
directory: `protobase.storage.wal` (StandaloneFileStorage's write-ahead log)
and `cluster.raft.log` (the Raft log). Each owns its file format (segment
header, record layout, checksum); this package holds what they do the same
way, once:

- `seglog.files`: `write_all`, `durable_write` (fdatasync), `fsync_directory`,
  `create_segment` (a new segment whose name is durable on return), and
  `lock_directory` (the flock that keeps a second writer out);
- `seglog.names`: `SegmentNames`, canonical segment file names;
- `seglog.scan`: `RecordScan`, reading a segment back through a log's
  `RecordCodec` under the one torn-tail rule, and the helpers that tell a
  header that never reached the disk.

The invariants (each module's docstring has the details):

- A written byte is durable only after `durable_write` of its file returned,
  a file's name only after `fsync_directory` of its directory returned.
- Recovery discards only a torn tail: the end of the *last* segment, from a
  bad record with no valid record at any later offset, when the bytes are
  what an unsynced append leaves. Any other bad record raises
  `DamagedRecord` naming its offset, and nothing is changed.
- One writer per directory: `lock_directory` refuses a second one at once.

It depends only on the standard library, and imports neither `protobase`
nor `cluster`: the Raft library must not import `protobase` and
`protobase` must not import `cluster`, so the layer both use sits beside
them (docs/decisions.md).
"""

from __future__ import annotations

from .errors import BadRecord, DamagedRecord, DirectoryLocked, SegmentLogError
from .files import (
    LOCK_NAME,
    create_segment,
    durable_write,
    fsync_directory,
    lock_directory,
    write_all,
)
from .names import SegmentNames
from .scan import RecordCodec, RecordScan, never_written, zeros_from

__all__ = [
    "LOCK_NAME",
    "BadRecord",
    "DamagedRecord",
    "DirectoryLocked",
    "RecordCodec",
    "RecordScan",
    "SegmentLogError",
    "SegmentNames",
    "create_segment",
    "durable_write",
    "fsync_directory",
    "lock_directory",
    "never_written",
    "write_all",
    "zeros_from",
]
