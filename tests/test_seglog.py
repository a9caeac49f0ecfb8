"""Tests of `seglog`, the segment-file layer the WAL and the Raft log share.

The scan is tested through a small record format of the tests' own (length,
crc32, body), so the rule is tested apart from either log's format; the
logs' own tests (tests/file_storage, tests/raft/test_log.py) cover their
codecs. Mocks only inject a short write or a fault into one function.
"""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
import zlib
from itertools import pairwise
from pathlib import Path

import pytest

import seglog
from seglog import (
    BadRecord,
    DamagedRecord,
    DirectoryLocked,
    RecordScan,
    SegmentNames,
    create_segment,
    durable_write,
    lock_directory,
    never_written,
    write_all,
    zeros_from,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
HEADER = struct.Struct("<II")  # body length, crc32 of the body
SEGMENT_HEADER = b"TESTSEG1"


def record(body: bytes) -> bytes:
    return HEADER.pack(len(body), zlib.crc32(body)) + body


class Codec:
    """Length, crc32, body. `torn_zeros_only` makes it as strict as the Raft log:
    only zeros may follow a bad record in a torn tail."""

    def __init__(self, torn_zeros_only: bool = False) -> None:
        self.torn_zeros_only = torn_zeros_only

    def read(self, data: bytes, view: memoryview, pos: int) -> tuple[bytes, int]:
        if len(data) - pos < HEADER.size:
            raise BadRecord("header cut short")
        length, checksum = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + length
        if end > len(data):
            raise BadRecord("body cut short")
        if zlib.crc32(view[pos + HEADER.size : end]) != checksum:
            raise BadRecord("checksum mismatch")
        return data[pos + HEADER.size : end], end

    def record_after(self, data: bytes, start: int) -> int | None:
        view = memoryview(data)
        for pos in range(start, len(data)):
            try:
                self.read(data, view, pos)
            except BadRecord:
                continue
            return pos
        return None

    def torn_append(self, data: bytes, pos: int) -> bool:
        return not self.torn_zeros_only or zeros_from(data, pos + HEADER.size)


def scan(
    data: bytes, *, is_last: bool = True, codec: Codec | None = None
) -> tuple[list[tuple[bytes, int, int]], tuple[int, bool]]:
    """The records read, and ``(end, torn)``."""
    records = RecordScan(data, len(SEGMENT_HEADER), codec or Codec(), is_last=is_last)
    found = list(records)
    return found, (records.end, records.torn)


BODIES = [b"first", b"second record", b"", b"fourth"]
SEGMENT = SEGMENT_HEADER + b"".join(record(body) for body in BODIES)


# -- the scan and the torn-tail rule ---------------------------------------------


def test_a_clean_segment_is_read_whole_in_order() -> None:
    found, scanned = scan(SEGMENT)
    assert [body for body, _, _ in found] == BODIES
    assert found[0][1] == len(SEGMENT_HEADER)
    assert all(end == following for (_, _, end), (_, following, _) in pairwise(found))
    assert scanned == (len(SEGMENT), False)


@pytest.mark.parametrize("cut", range(1, len(record(BODIES[-1]))))
def test_a_torn_last_record_is_a_torn_tail(cut: int) -> None:
    found, scanned = scan(SEGMENT[:-cut])
    last_start = len(SEGMENT) - len(record(BODIES[-1]))
    assert [body for body, _, _ in found] == BODIES[:-1]
    assert scanned == (last_start, True)


def test_a_torn_tail_truncated_at_the_scans_offset_reads_clean(tmp_path: Path) -> None:
    path = tmp_path / "segment"
    path.write_bytes(SEGMENT + record(b"never synced")[:-3])
    _, (end, torn) = scan(path.read_bytes())
    assert torn
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, end)
        durable_write(fd)
    finally:
        os.close(fd)
    found, again = scan(path.read_bytes())
    assert [body for body, _, _ in found] == BODIES
    assert again == (len(SEGMENT), False)


def test_a_bad_record_followed_by_a_valid_one_is_damage() -> None:
    second = len(SEGMENT_HEADER) + len(record(BODIES[0]))
    damaged = bytearray(SEGMENT)
    damaged[second + HEADER.size] ^= 0xFF  # a byte of the second body
    with pytest.raises(
        DamagedRecord, match="checksum mismatch, followed by a valid record"
    ) as info:
        scan(bytes(damaged))
    assert info.value.offset == second
    assert info.value.problem == "checksum mismatch"
    assert info.value.following == second + len(record(BODIES[1]))
    assert isinstance(info.value.__cause__, BadRecord)


def test_any_bad_record_in_a_sealed_segment_is_damage() -> None:
    with pytest.raises(DamagedRecord, match="body cut short in a sealed segment") as info:
        scan(SEGMENT[:-1], is_last=False)
    assert info.value.sealed
    assert info.value.offset == len(SEGMENT) - len(record(BODIES[-1]))


def test_the_codec_decides_which_bytes_a_torn_append_leaves() -> None:
    strict = Codec(torn_zeros_only=True)
    last_start = len(SEGMENT) - len(record(BODIES[-1]))
    zeroed = SEGMENT[: last_start + HEADER.size] + bytes(6)  # header, then unwritten blocks
    assert scan(zeroed, codec=strict)[1] == (last_start, True)
    other = SEGMENT[: last_start + HEADER.size] + b"\x01" * 6
    with pytest.raises(DamagedRecord, match="not a record of this log") as info:
        scan(other, codec=strict)
    assert info.value.offset == last_start
    assert scan(other)[1] == (last_start, True)  # the lenient codec takes it as torn


def test_a_scan_of_a_segment_without_records_ends_at_its_start() -> None:
    assert scan(SEGMENT_HEADER) == ([], (len(SEGMENT_HEADER), False))
    assert scan(SEGMENT_HEADER + b"\x00\x00") == ([], (len(SEGMENT_HEADER), True))


def test_header_never_written_and_zeros() -> None:
    assert never_written(b"", SEGMENT_HEADER)
    assert never_written(SEGMENT_HEADER[:3], SEGMENT_HEADER)
    assert never_written(bytes(len(SEGMENT_HEADER)), SEGMENT_HEADER)
    assert not never_written(SEGMENT_HEADER, SEGMENT_HEADER)  # written, complete
    assert not never_written(b"TESX", SEGMENT_HEADER)
    assert zeros_from(b"ab\x00\x00", 2) and zeros_from(b"ab", 2) and zeros_from(b"ab", 5)
    assert not zeros_from(b"a\x00b", 1)


# -- names ------------------------------------------------------------------------


def test_segment_names_round_trip_and_refuse_other_files() -> None:
    wal_names = SegmentNames("wal-", ".pbw", (4, 8))
    assert wal_names.name(1, 2) == "wal-0001-00000002.pbw"
    assert wal_names.parse("wal-0001-00000002.pbw") == (1, 2)
    assert wal_names.parse(wal_names.name(12345, 123456789)) == (12345, 123456789)
    for other in (
        "wal-1-1.pbw",
        "wal-0001.pbw",
        "wal-0001-00000002.pbw.tmp",
        "wal-000a-00000002.pbw",
    ):
        assert wal_names.parse(other) is None, other
    raft_names = SegmentNames("seg-", ".log", (8,))
    assert raft_names.name(7) == "seg-00000007.log"
    assert raft_names.parse("seg-00000007.log") == (7,)
    assert raft_names.parse("seg-000000007.log") is None  # not a name this log makes
    assert raft_names.parse("seg-\uff10\uff10\uff10\uff10\uff10\uff10\uff10\uff17.log") is None


# -- files --------------------------------------------------------------------------


def test_write_all_finishes_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    calls: list[int] = []

    def short_write(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        return real_write(fd, bytes(data[:3]))

    data = bytes(range(256)) * 4
    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        monkeypatch.setattr(os, "write", short_write)
        write_all(fd, data)
        write_all(fd, memoryview(b"tail"))
        monkeypatch.undo()
    finally:
        os.close(fd)
    assert (tmp_path / "file").read_bytes() == data + b"tail"
    assert len(calls) == -(-len(data) // 3) + 2


def test_write_all_makes_one_write_when_the_os_takes_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls: list[int] = []

    def counting_write(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        return real_write(fd, data)

    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        monkeypatch.setattr(os, "write", counting_write)
        write_all(fd, b"x" * 4096)
        monkeypatch.undo()
    finally:
        os.close(fd)
    assert calls == [4096]


def test_create_segment_makes_the_bytes_then_the_name_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync = os.fsync

    def watching_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            # The directory is synced with the new file in it, holding its header.
            assert (tmp_path / "seg-1").read_bytes() == SEGMENT_HEADER
            events.append("directory")
        real_fsync(fd)

    def make_durable(fd: int) -> None:
        events.append("bytes")
        durable_write(fd)

    monkeypatch.setattr(os, "fsync", watching_fsync)
    fd = create_segment(tmp_path, "seg-1", SEGMENT_HEADER, make_durable=make_durable)
    monkeypatch.undo()
    try:
        assert events == ["bytes", "directory"]
        assert os.lseek(fd, 0, os.SEEK_CUR) == len(SEGMENT_HEADER)
        write_all(fd, record(b"next"))
    finally:
        os.close(fd)
    assert (tmp_path / "seg-1").read_bytes() == SEGMENT_HEADER + record(b"next")


def test_create_segment_without_make_durable_still_syncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[bool] = []
    real_fsync = os.fsync

    def watching_fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", watching_fsync)
    os.close(create_segment(tmp_path, "seg-1", SEGMENT_HEADER, append=True))
    assert synced == [True]


def test_create_segment_never_replaces_a_file(tmp_path: Path) -> None:
    (tmp_path / "seg-1").write_bytes(b"someone's")
    with pytest.raises(FileExistsError):
        create_segment(tmp_path, "seg-1", SEGMENT_HEADER)
    assert (tmp_path / "seg-1").read_bytes() == b"someone's"


def test_a_failed_create_segment_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_write(fd: int, data: bytes | memoryview) -> int:
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OSError, match="simulated"):
        create_segment(tmp_path, "seg-1", SEGMENT_HEADER)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_the_lock_refuses_a_second_writer_and_readers(tmp_path: Path) -> None:
    writer = lock_directory(tmp_path)
    try:
        assert (tmp_path / seglog.LOCK_NAME).exists()
        with pytest.raises(DirectoryLocked, match=str(tmp_path)):
            lock_directory(tmp_path)
        with pytest.raises(DirectoryLocked):
            lock_directory(tmp_path, shared=True)
    finally:
        os.close(writer)
    again = lock_directory(tmp_path)  # closing released it
    os.close(again)


def test_readers_share_the_lock_and_keep_writers_out(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        lock_directory(tmp_path, shared=True)  # no writer ever made LOCK
    assert os.listdir(tmp_path) == []
    os.close(lock_directory(tmp_path))
    readers = [lock_directory(tmp_path, shared=True) for _ in range(2)]
    try:
        with pytest.raises(DirectoryLocked):
            lock_directory(tmp_path)
    finally:
        for fd in readers:
            os.close(fd)


def test_the_lock_refuses_another_process(tmp_path: Path) -> None:
    fd = lock_directory(tmp_path)
    try:
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, seglog\n"
                "try:\n"
                "    seglog.lock_directory(sys.argv[1])\n"
                "except seglog.DirectoryLocked:\n"
                "    print('refused')\n",
                str(tmp_path),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(fd)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "refused"


def test_seglog_imports_neither_protobase_nor_cluster() -> None:
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, seglog, seglog.files, seglog.names, seglog.scan\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('protobase', 'cluster')))",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "[]"
