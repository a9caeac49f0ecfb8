"""The errors of `seglog`, under one root, `SegmentLogError`.

The logs built on this package turn them into their own errors (with their
own wording and exception roots): `seglog` itself knows no log's name.
"""

from __future__ import annotations

__all__ = ["BadRecord", "DamagedRecord", "DirectoryLocked", "SegmentLogError"]


class SegmentLogError(Exception):
    """Root of the errors this package raises."""


class BadRecord(SegmentLogError):
    """The bytes at an offset are not a valid record: cut short by the end of
    the data, or failing a check. Raised by a `RecordCodec`; its message says
    what is wrong ("checksum mismatch")."""


class DamagedRecord(SegmentLogError):
    """A bad record that recovery must not discard: it is not a torn tail
    (see `seglog.scan`). Nothing was changed.

    Attributes:
        offset: byte offset of the bad record in its segment.
        problem: what is wrong with it (the `BadRecord` message).
        sealed: the record is in a segment that is not the last one.
        following: offset of a valid record after it, when there is one.
    """

    def __init__(
        self, offset: int, problem: str, *, sealed: bool = False, following: int | None = None
    ) -> None:
        self.offset = offset
        self.problem = problem
        self.sealed = sealed
        self.following = following
        if sealed:
            message = f"{problem} in a sealed segment"
        elif following is not None:
            message = f"{problem}, followed by a valid record at {following}"
        else:
            message = f"{problem}, followed by bytes that are not a record of this log"
        super().__init__(message)


class DirectoryLocked(SegmentLogError):
    """Another holder has the directory's lock (another process, or another
    open of the directory in this one)."""
