"""The I/O shell of a segmented log: writing, making durable, creating
segments and locking the directory. Everything here is a thin wrapper over
one or two system calls; the rules are in what calls what.

What is durable when:

1. Bytes passed to `write_all` have reached the OS, not the disk. They are
   durable once `durable_write` (fdatasync) of the same file returned; a
   log acknowledges nothing it wrote before that.
2. A file's name (creating, renaming or removing a file) is durable once
   `fsync_directory` of its directory returned.
3. `create_segment` returns only after the new segment's name is durable,
   and, when it is given `make_durable`, after its first bytes (the
   segment header) are durable too, before the name is.
4. After a failed write or sync, what reached the disk is unknown: the
   caller stops writing (or undoes the write it knows the size of) until
   recovery has read the files again.

The lock: `lock_directory` takes an flock on the directory's ``LOCK``
file without waiting. Exclusive for a writer, shared for a reader that
writes nothing; a second writer (another process, or another open in this
process: flock locks belong to the open file, not the process) is refused
with `DirectoryLocked`, never waited for. The lock lasts until its
descriptor is closed, and the kernel releases it when the process dies,
so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable

from .errors import DirectoryLocked

__all__ = [
    "LOCK_NAME",
    "create_segment",
    "durable_write",
    "fsync_directory",
    "lock_directory",
    "write_all",
]

LOCK_NAME = "LOCK"

StrPath = str | os.PathLike[str]


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of `data` at `fd`'s file position, however short the OS's writes are.

    Not durable: see `durable_write`. One system call when the OS takes
    everything at once (the usual case; no copy is made).

    Raises:
        OSError: a write failed; part of `data` may be in the file.
    """
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)
        while written < len(data):
            written += os.write(fd, view[written:])


def durable_write(fd: int) -> None:
    """Make everything written to `fd` durable (fdatasync).

    Raises:
        OSError: the sync failed; what reached the disk is unknown.
    """
    os.fdatasync(fd)


def fsync_directory(path: StrPath) -> None:
    """Make a file creation, rename or removal in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_segment(
    directory: StrPath,
    name: str,
    first_bytes: bytes,
    *,
    append: bool = False,
    make_durable: Callable[[int], None] | None = None,
) -> int:
    """Create the segment file `name` in `directory`, which must not exist yet.

    Writes `first_bytes` (the segment header, and whatever the log opens a
    segment with), makes them durable with `make_durable` when it is given,
    then fsyncs the directory, so the new name is durable on return.

    Args:
        append: open the file with O_APPEND.
        make_durable: the log's durability function (`durable_write`, or a
            replacement a test installed); None leaves the bytes to the
            log's next sync.

    Returns:
        The open descriptor (read-write), positioned after `first_bytes`.

    Raises:
        FileExistsError: a file of that name exists (it is left alone).
        OSError: a write or sync failed; the new file was closed and
            removed, so the log is as it was before the call.
    """
    path = os.path.join(directory, name)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | (os.O_APPEND if append else 0)
    fd = os.open(path, flags, 0o644)
    try:
        write_all(fd, first_bytes)
        if make_durable is not None:
            make_durable(fd)
        fsync_directory(directory)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return fd


def lock_directory(directory: StrPath, *, shared: bool = False) -> int:
    """Lock `directory` through its ``LOCK`` file, without waiting.

    Exclusive (a writer) creates ``LOCK`` when it is missing; shared (a
    reader that writes nothing) opens it read-only and never creates it.

    Returns:
        The locked descriptor; closing it releases the lock.

    Raises:
        DirectoryLocked: another holder has a lock that conflicts.
        FileNotFoundError: `shared`, and there is no ``LOCK`` file (no
            writer ever opened the directory).
        OSError: the file could not be opened or locked.
    """
    path = os.path.join(directory, LOCK_NAME)
    flags, operation = (
        (os.O_RDONLY, fcntl.LOCK_SH) if shared else (os.O_RDWR | os.O_CREAT, fcntl.LOCK_EX)
    )
    fd = os.open(path, flags, 0o644)
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise DirectoryLocked(f"{directory} is locked by another holder") from exc
        raise
    return fd
