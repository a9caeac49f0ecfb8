"""Reading a segment's records back after a crash, and the one rule for a
torn tail (sans-IO: bytes in, records and a decision out).

Each log keeps its own record format; this module sees it through a
`RecordCodec`, which frames and checks one record (`read`), finds the next
valid record at any byte offset (`record_after`), and says whether bytes
after a bad record are what an unsynced append of that format leaves
(`torn_append`).

Segments are append-only, and a log makes a segment durable whole before it
starts writing the next one (it *seals* it). So after a crash only the end
of the last segment can hold an append that never completed. The torn-tail
rule: `RecordScan` reads records in order from an offset, and at the first
bad record

1. in a sealed segment (not the last), raises `DamagedRecord`: every byte
   of it was durable, so damage is not a crash;
2. raises `DamagedRecord` when a valid record starts at any later byte
   offset: that record was written after the bad one, so the bad one was
   complete once and has been damaged since (a torn append is always the
   last thing in the file);
3. raises `DamagedRecord` when the codec says the bytes from the bad record
   on are not what a torn append of its format leaves (the Raft log accepts
   only zeros, or a plausible header whose record runs past the end);
4. otherwise ends there, with the bad record's offset as a torn tail: the
   caller truncates the file at it (and makes the truncation durable)
   before it appends again. Every record before it was returned, in order.

A log acknowledges a record only after it is durable, and a durable record
is complete; so the cut never removes an acknowledged record, unless damage
destroyed every record from some offset to the end of the last segment,
which no rule that reads only this segment can tell from a crash.
`DamagedRecord` changes nothing: recovery reads first and repairs only
after every segment passed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from .errors import BadRecord, DamagedRecord

__all__ = ["RecordCodec", "RecordScan", "never_written", "zeros_from"]

R_co = TypeVar("R_co", covariant=True)
R = TypeVar("R")


class RecordCodec(Protocol[R_co]):
    """One log's record format, as recovery reads it."""

    def read(self, data: bytes, view: memoryview, pos: int) -> tuple[R_co, int]:
        """The record at `pos` and the offset just past it.

        `view` is ``memoryview(data)``, for checksums over slices without
        copies.

        Raises:
            BadRecord: the record is cut short by the end of `data`, or
                fails its checksum (or another check of the format).
        """
        ...

    def record_after(self, data: bytes, start: int) -> int | None:
        """The first byte offset at or after `start` where a valid record starts, or None."""
        ...

    def torn_append(self, data: bytes, pos: int) -> bool:
        """Whether the bytes from the bad record at `pos` to the end of `data`
        are what a crash leaves of an unsynced append (no valid record follows)."""
        ...


class RecordScan(Generic[R]):
    """The records of one segment's bytes, read in order by iterating.

    Iterating yields ``(record, offset, end)`` for each good record, from
    `start` on, and stops at the end of the data or at a torn tail; then
    `end` and `torn` say how the records ended. A loop rather than a
    callback, so a log's replay runs its own code inline for each record.

    Args:
        data: the whole segment file.
        start: offset of the first record to read (after the segment header).
        codec: the log's record format.
        is_last: the segment is the last one, the only one that can have a
            torn tail.

    Raises (while iterating):
        DamagedRecord: a bad record that is not a torn tail (see the module
            docstring); names its offset.
    """

    __slots__ = ("_codec", "_data", "end", "is_last", "start", "torn")

    def __init__(self, data: bytes, start: int, codec: RecordCodec[R], *, is_last: bool) -> None:
        self._data = data
        self._codec = codec
        self.start = start
        self.is_last = is_last
        self.end = start
        """Offset just past the last good record (`start` when there is none)."""
        self.torn = False
        """The bytes from `end` on are a torn tail, to be truncated."""

    def __iter__(self) -> Iterator[tuple[R, int, int]]:
        data = self._data
        codec = self._codec
        view = memoryview(data)
        read = codec.read
        size = len(data)
        pos = self.start
        while pos < size:
            try:
                record, record_end = read(data, view, pos)
            except BadRecord as exc:
                _check_torn_tail(data, pos, str(exc), codec, self.is_last, exc)
                self.end, self.torn = pos, True
                return
            yield record, pos, record_end
            pos = record_end
        self.end = pos


def _check_torn_tail(
    data: bytes,
    pos: int,
    problem: str,
    codec: RecordCodec[object],
    is_last: bool,
    cause: BadRecord,
) -> None:
    """Raise `DamagedRecord` unless the bad record at `pos` starts a torn tail."""
    if not is_last:
        raise DamagedRecord(pos, problem, sealed=True) from cause
    following = codec.record_after(data, pos + 1)
    if following is not None:
        raise DamagedRecord(pos, problem, following=following) from cause
    if not codec.torn_append(data, pos):
        raise DamagedRecord(pos, problem) from cause


def never_written(head: bytes, expected: bytes) -> bool:
    """Whether a segment's first bytes are a header that never reached the disk.

    True when `head` is a prefix of the `expected` header (an empty file
    included), or all zeros (blocks allocated, never written); a complete,
    correct header is not "never written".
    """
    return (len(head) < len(expected) and expected.startswith(head)) or not any(head)


def zeros_from(data: bytes, start: int) -> bool:
    """Whether every byte of `data` from `start` on is zero (true when there is none)."""
    return data.count(0, start) == max(len(data) - start, 0)
