"""Tests of the durable segmented Raft log (`cluster.raft.log`).

Byte offsets in the corruption tests are computed from the format in the
module docstring: a 24-byte segment header, a 37-byte hard state record, then
entry records of 30 bytes plus their data.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cluster.raft import log as log_module
from cluster.raft.errors import LogCorruptionError, LogError, LogUnavailableError
from cluster.raft.log import FileGroupLog, LogStore
from cluster.raft.types import (
    ConfState,
    Entry,
    EntryKind,
    HardState,
    SnapshotChunk,
    SnapshotMeta,
    entries_size,
)

HEADER = 24
HARD_STATE_RECORD = 37
ENTRY_OVERHEAD = 30
REPO_ROOT = Path(__file__).resolve().parents[2]
CONF = ConfState(frozenset({1, 2, 3}))


def make_entry(index: int, term: int = 1, size: int = 20) -> Entry:
    """An entry whose data says which entry it is (so misplaced data shows)."""
    head = b"%d:%d:" % (index, term)
    return Entry(index, term, EntryKind.NORMAL, head + bytes([index % 251]) * size)


def make_entries(lo: int, hi: int, term: int = 1, size: int = 20) -> list[Entry]:
    return [make_entry(i, term, size) for i in range(lo, hi)]


def append_in_steps(log: FileGroupLog, entries: list[Entry], step: int = 3) -> None:
    """Append a few entries at a time (one append is one write, in one segment)."""
    for at in range(0, len(entries), step):
        log.append(entries[at : at + step])


@dataclass(frozen=True)
class Snapshot:
    """A snapshot's metadata and data, as these tests write and expect them."""

    meta: SnapshotMeta
    data: bytes


EMPTY = Snapshot(SnapshotMeta(0, 0, ConfState(frozenset())), b"")


def snapshot_at(index: int, term: int, data: bytes = b"state") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, CONF), data)


def save(log: FileGroupLog, snapshot: Snapshot) -> None:
    log.save_snapshot(snapshot.meta, lambda sink: sink.write(snapshot.data))


def current(log: FileGroupLog) -> Snapshot:
    """The log's snapshot, its data read back as the state machine would."""
    with log.open_snapshot() as source:
        return Snapshot(log.snapshot_meta(), source.read())


def segment_files(group_dir: Path) -> list[Path]:
    return sorted(group_dir.glob("seg-*.log"))


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != "LOCK"
    }


def entry_offset(position: int, size: int) -> int:
    """Offset of the `position`-th (0-based) entry record of a fresh segment
    whose entries were made by make_entry with one-digit index and term."""
    record = ENTRY_OVERHEAD + len(b"1:1:") + size
    return HEADER + HARD_STATE_RECORD + position * record


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "log"


@pytest.fixture
def store(directory: Path) -> Iterator[LogStore]:
    opened = LogStore(directory)
    yield opened
    opened.close()


# -- basics -------------------------------------------------------------------


def test_a_new_group_is_empty(store: LogStore, directory: Path) -> None:
    log = store.group(3)
    assert (log.first_index(), log.last_index()) == (1, 0)
    assert log.term(0) == 0
    assert log.hard_state() == HardState()
    assert current(log) == EMPTY
    assert log.snapshot_size() == 0 and log.read_snapshot(0, 10) == b""
    assert log.entries(1, 1) == []
    with pytest.raises(LogUnavailableError):
        log.term(1)
    with pytest.raises(LogUnavailableError):
        log.entries(1, 2)
    assert store.groups() == [3]
    assert [p.name for p in segment_files(directory / "group-3")] == ["seg-00000001.log"]


def test_round_trip_and_reopen(directory: Path) -> None:
    written = [Entry(i, 1 + i // 40, EntryKind(i % 2), os.urandom(i % 97)) for i in range(1, 121)]
    with LogStore(directory) as store:
        log = store.group(1)
        log.append(written[:50])
        log.set_hard_state(HardState(2, 1, 30))
        log.append(written[50:])
        log.set_hard_state(HardState(3, 2, 100))
        assert log.entries(1, 121) == written
        assert [log.term(i) for i in range(1, 121)] == [e.term for e in written]
        store.group(2).append(make_entries(1, 4))
    with LogStore(directory) as store:
        assert store.groups() == [1, 2]
        log = store.group(1)
        assert (log.first_index(), log.last_index()) == (1, 120)
        assert log.hard_state() == HardState(3, 2, 100)
        assert log.entries(1, 121) == written
        assert log.entries(40, 44) == written[39:43]
        assert store.group(2).entries(1, 4) == make_entries(1, 4)


def test_segment_rollover(directory: Path) -> None:
    with LogStore(directory, segment_bytes=1000) as store:
        log = store.group(1)
        for i in range(1, 101):
            log.append([make_entry(i, size=50)])
        names = [p.name for p in segment_files(directory / "group-1")]
        assert len(names) > 5
        assert names == [f"seg-{n:08d}.log" for n in range(1, len(names) + 1)]
        # A sealed segment is made durable when the next one starts.
        assert store.sync_calls >= len(names) - 1
        sizes = [p.stat().st_size for p in segment_files(directory / "group-1")]
        assert all(size >= 1000 for size in sizes[:-1])
        assert all(size < 1000 + 200 for size in sizes)
    with LogStore(directory, segment_bytes=1000) as store:
        assert store.group(1).entries(1, 101) == [make_entry(i, size=50) for i in range(1, 101)]


def test_suffix_truncation_and_reopen(directory: Path) -> None:
    with LogStore(directory) as store:
        log = store.group(1)
        log.append(make_entries(1, 11, term=1))
        log.set_hard_state(HardState(2, 1, 3))
        log.append(make_entries(6, 9, term=2))
        assert log.last_index() == 8
        assert [log.term(i) for i in range(1, 9)] == [1] * 5 + [2] * 3
        with pytest.raises(LogUnavailableError):
            log.entries(1, 10)
        # Truncating the whole uncommitted suffix (4 is the first uncommitted).
        log.append(make_entries(4, 6, term=2))
        expected = make_entries(1, 4, term=1) + make_entries(4, 6, term=2)
        assert log.entries(1, 6) == expected
    with LogStore(directory) as store:
        log = store.group(1)
        assert log.last_index() == 5
        assert log.entries(1, 6) == expected


def test_suffix_truncation_across_segments(directory: Path) -> None:
    with LogStore(directory, segment_bytes=600, cache_bytes=0) as store:
        log = store.group(1)
        append_in_steps(log, make_entries(1, 61, term=1))
        first_segments = len(segment_files(directory / "group-1"))
        assert first_segments > 4
        # Index 10 lives in the second segment; its replacement goes to the active one.
        log.set_hard_state(HardState(2, 0, 9))
        log.append(make_entries(10, 15, term=2))
        expected = make_entries(1, 10, term=1) + make_entries(10, 15, term=2)
        assert log.entries(1, 15) == expected
        append_in_steps(log, make_entries(15, 30, term=2))
        expected += make_entries(15, 30, term=2)
    with LogStore(directory, segment_bytes=600, cache_bytes=0) as store:
        log = store.group(1)
        assert log.last_index() == 29
        assert log.entries(1, 30) == expected


def test_append_rejects_gaps_committed_entries_and_compacted_indexes(
    store: LogStore, directory: Path
) -> None:
    log = store.group(1)
    log.append(make_entries(1, 11))
    log.set_hard_state(HardState(1, 1, 5))
    save(log, snapshot_at(3, 1))
    store.sync()
    before = file_bytes(directory)
    cases = [
        make_entries(12, 13),  # gap after 10
        make_entries(5, 7),  # 5 is committed
        make_entries(2, 12),  # below the snapshot
        make_entries(3, 4),  # at the snapshot index
        [make_entry(11), make_entry(13)],  # not consecutive
        [Entry(11, -1)],  # not encodable
    ]
    for entries in cases:
        with pytest.raises(LogError):
            log.append(entries)
    assert file_bytes(directory) == before
    assert log.entries(4, 11) == make_entries(4, 11)
    # Just above the commit index is fine.
    log.append(make_entries(6, 7, term=2))
    assert log.last_index() == 6


def test_hard_state_must_not_go_back(store: LogStore) -> None:
    log = store.group(1)
    log.set_hard_state(HardState(3, 2, 10))
    for bad in (HardState(2, 2, 10), HardState(3, 2, 9), HardState(3, 1, 10)):
        with pytest.raises(LogError):
            log.set_hard_state(bad)
    log.set_hard_state(HardState(4, 0, 10))
    log.set_hard_state(HardState(4, 3, 11))
    assert log.hard_state() == HardState(4, 3, 11)


def test_hard_state_survives_compaction_of_old_segments(directory: Path) -> None:
    with LogStore(directory, segment_bytes=500) as store:
        log = store.group(1)
        log.set_hard_state(HardState(5, 2, 0))
        append_in_steps(log, make_entries(1, 101, term=5))
        log.set_hard_state(HardState(5, 2, 90))
        append_in_steps(log, make_entries(101, 141, term=5))
        segments = segment_files(directory / "group-1")
        save(log, snapshot_at(120, 5))
        log.compact(120)
        remaining = segment_files(directory / "group-1")
        # The segments holding the explicit hard state records are gone.
        assert segments[0] not in remaining and len(remaining) < len(segments) / 2
    with LogStore(directory, segment_bytes=500) as store:
        log = store.group(1)
        assert log.hard_state() == HardState(5, 2, 90)
        assert (log.first_index(), log.last_index()) == (121, 140)
        assert log.entries(121, 141) == make_entries(121, 141, term=5)


# -- snapshots and compaction ---------------------------------------------------


def test_snapshot_of_a_matching_log_keeps_it_until_compact(directory: Path) -> None:
    with LogStore(directory, segment_bytes=800) as store:
        log = store.group(1)
        append_in_steps(log, make_entries(1, 101, term=2))
        log.set_hard_state(HardState(2, 1, 100))
        save(log, snapshot_at(50, 2, b"first"))
        # A follower a little behind can still be sent entries.
        assert (log.first_index(), log.last_index()) == (1, 100)
        assert log.entries(40, 52) == make_entries(40, 52, term=2)
        assert current(log) == snapshot_at(50, 2, b"first")
        log.compact(45)
        assert (log.first_index(), log.last_index()) == (46, 100)
        assert log.term(50) == 2 and log.term(46) == 2
        with pytest.raises(LogUnavailableError):
            log.entries(45, 52)
        with pytest.raises(LogUnavailableError):
            log.term(45)
        save(log, snapshot_at(70, 2, b"second"))
        snapshots = sorted(p.name for p in (directory / "group-1").glob("snapshot-*"))
        assert snapshots == ["snapshot-00000000000000000070.snap"]
        before = len(segment_files(directory / "group-1"))
        log.compact(70)
        after = segment_files(directory / "group-1")
        assert len(after) < before
        # The files left still hold index 71 on.
    with LogStore(directory, segment_bytes=800) as store:
        log = store.group(1)
        assert current(log) == snapshot_at(70, 2, b"second")
        assert (log.first_index(), log.last_index()) == (71, 100)
        assert log.entries(71, 101) == make_entries(71, 101, term=2)


@pytest.mark.parametrize(
    ("index", "term"),
    [(8, 3), (30, 3)],
    ids=["disagreeing-term", "beyond-the-log"],
)
def test_snapshot_that_the_log_does_not_hold_discards_it(
    directory: Path, index: int, term: int
) -> None:
    with LogStore(directory, segment_bytes=300) as store:
        log = store.group(1)
        append_in_steps(log, make_entries(1, 21, term=1))
        log.set_hard_state(HardState(3, 0, 4))
        old_segments = segment_files(directory / "group-1")
        save(log, snapshot_at(index, term))
        assert (log.first_index(), log.last_index()) == (index + 1, index)
        assert log.term(index) == term
        # The stale entries' files are gone at once.
        assert not set(old_segments) & set(segment_files(directory / "group-1"))
        log.append(make_entries(index + 1, index + 4, term=3))
    with LogStore(directory, segment_bytes=300) as store:
        log = store.group(1)
        assert (log.first_index(), log.last_index()) == (index + 1, index + 3)
        assert log.entries(index + 1, index + 4) == make_entries(index + 1, index + 4, term=3)
        assert log.hard_state() == HardState(3, 0, 4)


def test_snapshot_errors(store: LogStore) -> None:
    log = store.group(1)
    log.append(make_entries(1, 21, term=1))
    log.set_hard_state(HardState(1, 1, 15))
    with pytest.raises(LogError, match="committed"):
        save(log, snapshot_at(10, 2))  # would discard committed 11..15
    save(log, snapshot_at(10, 1, b"kept"))
    # One that is not newer is ignored, like MemoryGroupLog does.
    save(log, snapshot_at(10, 1, b"same index"))
    save(log, snapshot_at(7, 1, b"older"))
    assert current(log) == snapshot_at(10, 1, b"kept")
    assert (log.first_index(), log.last_index()) == (1, 20)
    with pytest.raises(LogError, match="beyond the snapshot"):
        log.compact(11)


def test_compact_never_removes_the_active_segment(directory: Path) -> None:
    with LogStore(directory, segment_bytes=10_000) as store:
        log = store.group(1)
        log.append(make_entries(1, 11))
        save(log, snapshot_at(10, 1))
        log.compact(10)
        assert len(segment_files(directory / "group-1")) == 1
        log.append(make_entries(11, 13))
    with LogStore(directory) as store:
        assert store.group(1).entries(11, 13) == make_entries(11, 13)


def test_compaction_after_a_truncation_keeps_what_replay_needs(directory: Path) -> None:
    # A truncation makes a later segment hold lower indexes than an earlier
    # one; deleting it but not the earlier one would bring stale entries back.
    with LogStore(directory, segment_bytes=300) as store:
        log = store.group(1)
        append_in_steps(log, make_entries(1, 21, term=1), step=1)
        log.set_hard_state(HardState(2, 1, 4))
        append_in_steps(log, make_entries(5, 26, term=2), step=1)
        save(log, snapshot_at(13, 2))
        before = segment_files(directory / "group-1")
        log.compact(13)
        assert len(segment_files(directory / "group-1")) < len(before)
    with LogStore(directory, segment_bytes=300) as store:
        log = store.group(1)
        assert (log.first_index(), log.last_index()) == (14, 25)
        assert log.entries(14, 26) == make_entries(14, 26, term=2)


@pytest.mark.parametrize("after_reset", [1, 3])
def test_compaction_past_a_log_reset_to_a_later_snapshot_reopens(
    directory: Path, after_reset: int
) -> None:
    # Found by test_log_against_model: a snapshot the log does not hold
    # (LOG_RESET at 7, term 2), entries of term 3 after it, a snapshot over
    # them and a compaction to it. Recovery compared the reset's term with the
    # later snapshot's and refused the log ("log reset disagrees with the
    # snapshot's term"): after the COMPACT the log no longer starts at the reset.
    top = 7 + after_reset
    model = snapshot_at(top - after_reset // 2, 3, b"agreeing")
    with LogStore(directory, segment_bytes=400, cache_bytes=300) as store:
        log = store.group(1)
        log.append(make_entries(1, 5, term=1))
        save(log, snapshot_at(7, 2, b"disagreeing"))
        assert (log.first_index(), log.last_index()) == (8, 7)
        log.append(make_entries(8, top + 1, term=3))
        save(log, model)
        log.compact(model.meta.index)
        expected_first = model.meta.index + 1
        assert (log.first_index(), log.last_index()) == (expected_first, top)
    for step in range(2):
        with LogStore(directory, segment_bytes=400, cache_bytes=300) as store:
            log = store.group(1)
            assert (log.first_index(), log.last_index()) == (expected_first, top + step)
            assert log.hard_state() == HardState()
            assert log.snapshot_meta() == model.meta
            assert log.term(model.meta.index) == 3
            assert log.entries(expected_first, top + step + 1) == make_entries(
                expected_first, top + step + 1, term=3
            )
            assert current(log) == model
            if step == 0:  # and the log takes appends after the reopen
                log.append(make_entries(top + 1, top + 2, term=3))
                store.sync()


def test_crash_after_snapshot_rename_before_the_log_restarts(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(self: FileGroupLog, meta: SnapshotMeta) -> None:
        raise KeyboardInterrupt("simulated crash")

    with LogStore(directory, segment_bytes=300) as store:
        log = store.group(1)
        append_in_steps(log, make_entries(1, 21, term=1))
        with monkeypatch.context() as patch:
            patch.setattr(FileGroupLog, "_restart_log", crash)
            with pytest.raises(KeyboardInterrupt):
                save(log, snapshot_at(12, 2))
    with LogStore(directory, segment_bytes=300) as store:
        log = store.group(1)
        # Recovery finished the discard: no stale entry comes back ...
        assert (log.first_index(), log.last_index()) == (13, 12)
        assert log.term(12) == 2
        log.append(make_entries(13, 16, term=2))
    with LogStore(directory, segment_bytes=300) as store:
        # ... and entries appended after it survive the next recovery.
        assert store.group(1).entries(13, 16) == make_entries(13, 16, term=2)


def test_crash_while_removing_the_discarded_segments(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_unlink = os.unlink
    unlinked: list[str] = []

    def unlink_one_then_crash(path: str) -> None:
        if path.endswith(".log") and unlinked:
            raise KeyboardInterrupt("simulated crash")
        unlinked.append(path)
        real_unlink(path)

    with LogStore(directory, segment_bytes=300) as store:
        log = store.group(1)
        append_in_steps(log, make_entries(1, 21, term=1))
        with monkeypatch.context() as patch:
            patch.setattr(os, "unlink", unlink_one_then_crash)
            with pytest.raises(KeyboardInterrupt):
                save(log, snapshot_at(5, 2))
    with LogStore(directory, segment_bytes=300) as store:
        log = store.group(1)
        assert (log.first_index(), log.last_index()) == (6, 5)
        log.append(make_entries(6, 8, term=2))
    with LogStore(directory, segment_bytes=300) as store:
        assert store.group(1).entries(6, 8) == make_entries(6, 8, term=2)


# -- streamed snapshots -------------------------------------------------------------


def chunks_of(log: FileGroupLog, size: int) -> list[SnapshotChunk]:
    """The leader's snapshot file in chunks of `size`, as its core sends them."""
    chunks: list[SnapshotChunk] = []
    offset, total = 0, log.snapshot_size()
    while True:
        data = log.read_snapshot(offset, size)
        chunks.append(SnapshotChunk(log.snapshot_meta(), offset, data, offset + len(data) >= total))
        offset += len(data)
        if chunks[-1].done:
            return chunks


def test_save_snapshot_streams_what_the_state_machine_writes(directory: Path) -> None:
    pieces = [os.urandom(size) for size in (0, 1, 5000, 3 << 20, 7)]
    calls: list[object] = []

    def write(sink: BinaryIO) -> None:
        calls.append(sink)
        for piece in pieces:
            sink.write(piece)

    with LogStore(directory) as store:
        log = store.group(1)
        log.append(make_entries(1, 11))
        log.save_snapshot(SnapshotMeta(10, 1, CONF), write)
        assert len(calls) == 1
        log.save_snapshot(SnapshotMeta(9, 1, CONF), write)  # not newer: not even written
        assert len(calls) == 1
        with log.open_snapshot() as source:
            assert source.read(3) == b"".join(pieces)[:3]  # a stream, read in pieces
            assert source.read() == b"".join(pieces)[3:]
    with LogStore(directory) as store:
        assert current(store.group(1)) == Snapshot(SnapshotMeta(10, 1, CONF), b"".join(pieces))


def test_a_state_machine_that_fails_mid_snapshot_leaves_the_old_one(
    directory: Path, tmp_path: Path
) -> None:
    kept: list[BinaryIO] = []

    def broken(sink: BinaryIO) -> None:
        kept.append(sink)
        sink.write(b"half of it")  # still in the sink's buffer
        raise RuntimeError("the state machine failed")

    with LogStore(directory) as store:
        log = store.group(1)
        log.append(make_entries(1, 11))
        save(log, snapshot_at(5, 1, b"five"))
        with pytest.raises(RuntimeError):
            log.save_snapshot(SnapshotMeta(8, 1, CONF), broken)
        assert current(log) == snapshot_at(5, 1, b"five")
        assert not list((directory / "group-1").glob("*.tmp"))
    # A sink kept and flushed later writes nowhere (its descriptor number
    # may belong to another file by then).
    with (tmp_path / "bystander").open("wb"):
        kept[0].flush()
    assert (tmp_path / "bystander").read_bytes() == b""


def test_read_snapshot_serves_the_file_by_offset_one_pread_each(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LogStore(directory) as store:
        log = store.group(1)
        log.append(make_entries(1, 11))
        save(log, snapshot_at(10, 1, os.urandom(100_000)))
        image = (directory / "group-1" / "snapshot-00000000000000000010.snap").read_bytes()
        assert log.snapshot_size() == len(image)
        reads: list[tuple[int, int]] = []
        real_pread = os.pread

        def pread(fd: int, size: int, offset: int) -> bytes:
            reads.append((size, offset))
            return real_pread(fd, size, offset)

        monkeypatch.setattr(os, "pread", pread)
        chunks = chunks_of(log, 4096)
        assert b"".join(chunk.data for chunk in chunks) == image
        assert len(reads) == len(chunks)
        assert sum(size for size, _ in reads) == len(image)  # linear, not quadratic
        assert log.read_snapshot(len(image), 10) == b""


def test_a_snapshot_received_in_chunks_is_checked_then_installed(tmp_path: Path) -> None:
    with LogStore(tmp_path / "leader") as leader_store, LogStore(tmp_path / "follower") as store:
        leader = leader_store.group(1)
        leader.append(make_entries(1, 31, term=2))
        sent = snapshot_at(30, 2, os.urandom(50_000))
        save(leader, sent)
        follower = store.group(1)
        follower.append(make_entries(1, 4, term=1))
        chunks = chunks_of(leader, 7000)
        with pytest.raises(LogError):
            follower.receive_snapshot(chunks[1])  # does not start at 0
        for chunk in chunks[:-1]:
            follower.receive_snapshot(chunk)
        with pytest.raises(LogError, match="no whole snapshot"):
            follower.install_snapshot(sent.meta)
        follower.receive_snapshot(chunks[0])  # offset 0 starts over
        for chunk in chunks[1:]:
            follower.receive_snapshot(chunk)
        follower.install_snapshot(sent.meta)
        assert current(follower) == sent
        assert (follower.first_index(), follower.last_index()) == (31, 30)
        assert not list((tmp_path / "follower" / "group-1").glob("*.tmp"))
    with LogStore(tmp_path / "follower") as store:
        assert current(store.group(1)) == sent


def test_a_snapshot_damaged_on_the_way_is_not_installed(tmp_path: Path) -> None:
    with LogStore(tmp_path / "leader") as leader_store, LogStore(tmp_path / "follower") as store:
        leader = leader_store.group(1)
        leader.append(make_entries(1, 11))
        save(leader, snapshot_at(10, 1, b"x" * 5000))
        follower = store.group(1)
        chunks = chunks_of(leader, 1000)
        damaged = chunks[2].data[:10] + b"?" + chunks[2].data[11:]
        chunks[2] = SnapshotChunk(chunks[2].meta, chunks[2].offset, damaged, chunks[2].done)
        for chunk in chunks:
            follower.receive_snapshot(chunk)
        with pytest.raises(LogCorruptionError, match="checksum"):
            follower.install_snapshot(leader.snapshot_meta())
        assert current(follower) == EMPTY
    with LogStore(tmp_path / "follower") as store:  # the leftover goes at recovery
        assert current(store.group(1)) == EMPTY
        assert not list((tmp_path / "follower" / "group-1").glob("*.tmp"))


def test_a_version_1_snapshot_file_is_refused(directory: Path) -> None:
    with LogStore(directory) as store:
        log = store.group(1)
        log.append(make_entries(1, 6))
        save(log, snapshot_at(4, 1))
    snapshot = next((directory / "group-1").glob("snapshot-*.snap"))
    data = bytearray(snapshot.read_bytes())
    data[7] = 1
    snapshot.write_bytes(bytes(data))
    with pytest.raises(LogCorruptionError, match="version 1"):
        LogStore(directory)


# -- retention: entries behind the snapshot, read back by index --------------------------


def test_a_reopened_log_serves_the_entries_behind_its_snapshot(directory: Path) -> None:
    with LogStore(directory, segment_bytes=800) as store:
        log = store.group(1)
        append_in_steps(log, make_entries(1, 101, term=2))
        log.set_hard_state(HardState(2, 1, 100))
        save(log, snapshot_at(80, 2))
    with LogStore(directory, segment_bytes=800) as store:
        log = store.group(1)
        assert (log.first_index(), log.last_index()) == (1, 100)
        assert [log.entry(i) for i in (1, 50, 80, 81)] == [
            make_entry(i, 2) for i in (1, 50, 80, 81)
        ]
        log.compact(40)
    with LogStore(directory, segment_bytes=800) as store:
        # The compaction point is remembered: not a segment's worth more, nor fewer.
        log = store.group(1)
        assert (log.first_index(), log.last_index()) == (41, 100)
        assert log.entries(41, 101) == make_entries(41, 101, term=2)
        with pytest.raises(LogUnavailableError):
            log.entry(40)


def test_entry_reads_one_record_with_one_pread(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LogStore(directory, cache_bytes=0) as store:
        log = store.group(1)
        log.append(make_entries(1, 201, size=1000))
        reads: list[tuple[int, int]] = []
        real_pread = os.pread

        def pread(fd: int, size: int, offset: int) -> bytes:
            reads.append((size, offset))
            return real_pread(fd, size, offset)

        monkeypatch.setattr(os, "pread", pread)
        wanted = make_entry(150, size=1000)
        assert log.entry(150) == wanted
        assert reads == [(ENTRY_OVERHEAD + len(wanted.data), reads[0][1])]
        with pytest.raises(LogUnavailableError):
            log.entry(201)


# -- reading --------------------------------------------------------------------


def test_entries_max_bytes(store: LogStore) -> None:
    log = store.group(1)
    written = make_entries(1, 21, size=100)
    log.append(written)
    size = len(written[0].data)
    assert log.entries(1, 21, max_bytes=0) == written[:1]  # always at least one
    assert log.entries(1, 21, max_bytes=size - 1) == written[:1]
    assert log.entries(1, 21, max_bytes=3 * size) == written[:3]
    assert log.entries(1, 21, max_bytes=3 * size + size - 1) == written[:3]
    assert log.entries(5, 8, max_bytes=100 * size) == written[4:7]
    assert log.entries(1, 21) == written
    got = log.entries(2, 21, max_bytes=1000)
    assert entries_size(got) <= 1000 and entries_size(got) + size > 1000
    with pytest.raises(LogUnavailableError):
        log.entries(0, 3)
    with pytest.raises(LogUnavailableError):
        log.entries(20, 22)
    with pytest.raises(ValueError):
        log.entries(5, 4)


def counting_pread(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        calls.append(length)
        return real(fd, length, offset)

    monkeypatch.setattr(os, "pread", pread)
    return calls


def test_recent_entries_come_from_the_cache_older_ones_from_the_segments(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = make_entries(1, 201, size=100)
    with LogStore(directory, segment_bytes=4000, cache_bytes=5000) as store:
        log = store.group(1)
        append_in_steps(log, written, step=5)
        preads = counting_pread(monkeypatch)
        assert log.entries(190, 201) == written[189:]
        assert preads == []
        assert log.entries(1, 201) == written
        assert preads, "old entries must be read from the segment files"
        # Entries of one segment are read with one pread, not one per entry.
        assert len(preads) <= len(segment_files(directory / "group-1"))
        preads.clear()
        assert log.entries(100, 150) == written[99:149]
        assert 0 < len(preads) <= 3
    with LogStore(directory, segment_bytes=4000, cache_bytes=5000) as store:
        preads.clear()
        assert store.group(1).entries(195, 201) == written[194:]
        assert preads  # nothing is cached after a reopen


def test_reading_a_damaged_record_raises(directory: Path) -> None:
    with LogStore(directory, cache_bytes=0) as store:
        log = store.group(1)
        log.append(make_entries(1, 6))
        segment = segment_files(directory / "group-1")[0]
        with segment.open("r+b") as file:
            file.seek(entry_offset(2, 20) + 40)
            file.write(b"\xff")
        assert log.entries(1, 3) == make_entries(1, 3)
        with pytest.raises(LogCorruptionError) as info:
            log.entries(1, 6)
        assert str(segment) in str(info.value)
        assert f"byte offset {entry_offset(2, 20)}" in str(info.value)


# -- torn tails and corruption ------------------------------------------------------


def test_torn_tail_at_every_byte_offset(tmp_path: Path) -> None:
    source = tmp_path / "source"
    with LogStore(source) as store:
        log = store.group(1)
        log.append(make_entries(1, 6, size=8))
        log.set_hard_state(HardState(1, 1, 5))
        store.sync()
        segment = segment_files(source / "group-1")[0]
        synced_size = segment.stat().st_size
        log.append(make_entries(6, 9, size=8))
        log.set_hard_state(HardState(1, 1, 7))
    full = segment.read_bytes()
    written = make_entries(1, 9, size=8)
    for cut in range(synced_size, len(full)):
        copy = tmp_path / f"cut-{cut}"
        shutil.copytree(source, copy)
        copied_segment = copy / "group-1" / segment.name
        os.truncate(copied_segment, cut)
        with LogStore(copy) as store:
            log = store.group(1)
            assert log.last_index() >= 5
            assert log.entries(1, log.last_index() + 1) == written[: log.last_index()]
            assert log.hard_state().commit in (5, 7)
        # Only whole records are left; a second recovery changes nothing.
        recovered = copied_segment.read_bytes()
        assert full.startswith(recovered) and len(recovered) <= cut
        with LogStore(copy) as store:
            log = store.group(1)
            assert log.last_index() >= 5
            assert copied_segment.read_bytes() == recovered
            # The log goes on after the cut: what was torn off is not in the way.
            log.append([make_entry(log.last_index() + 1, 2, 8)])
            expected = log.entries(1, log.last_index() + 1)
        with LogStore(copy) as store:
            assert store.group(1).entries(1, len(expected) + 1) == expected
        shutil.rmtree(copy)


def test_torn_tail_of_zeros_is_truncated(directory: Path) -> None:
    with LogStore(directory) as store:
        store.group(1).append(make_entries(1, 4))
    segment = segment_files(directory / "group-1")[0]
    size = segment.stat().st_size
    with segment.open("ab") as file:
        file.write(bytes(5000))  # delayed allocation can leave zeros behind
    with LogStore(directory) as store:
        assert store.group(1).entries(1, 4) == make_entries(1, 4)
    assert segment.stat().st_size == size


def test_a_new_segment_whose_header_never_reached_the_disk_is_removed(
    directory: Path,
) -> None:
    with LogStore(directory, segment_bytes=200) as store:
        log = store.group(1)
        log.set_hard_state(HardState(4, 1, 0))
        append_in_steps(log, make_entries(1, 8, term=4), step=1)
    segments = segment_files(directory / "group-1")
    assert len(segments) >= 2
    os.truncate(segments[-1], 10)
    with LogStore(directory, segment_bytes=200) as store:
        log = store.group(1)
        assert segment_files(directory / "group-1") == segments[:-1]
        assert log.hard_state() == HardState(4, 1, 0)
        assert log.entries(1, log.last_index() + 1) == make_entries(1, log.last_index() + 1, 4)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_corruption_inside_the_last_segment(directory: Path) -> None:
    with LogStore(directory) as store:
        store.group(1).append(make_entries(1, 9))
    segment = segment_files(directory / "group-1")[0]
    flip(segment, entry_offset(3, 20) + 35)
    before = file_bytes(directory)
    with pytest.raises(LogCorruptionError) as info:
        LogStore(directory)
    message = str(info.value)
    assert str(segment) in message and f"byte offset {entry_offset(3, 20)}" in message
    assert file_bytes(directory) == before


def test_corruption_in_the_last_record_of_a_sealed_segment(directory: Path) -> None:
    with LogStore(directory, segment_bytes=300) as store:
        append_in_steps(store.group(1), make_entries(1, 30))
    sealed = segment_files(directory / "group-1")[0]
    flip(sealed, sealed.stat().st_size - 3)
    before = file_bytes(directory)
    with pytest.raises(LogCorruptionError, match="sealed segment") as info:
        LogStore(directory, segment_bytes=300)
    assert str(sealed) in str(info.value) and "byte offset" in str(info.value)
    assert file_bytes(directory) == before


def test_a_sealed_segment_cut_mid_record(directory: Path) -> None:
    with LogStore(directory, segment_bytes=300) as store:
        for i in range(1, 30):
            store.group(1).append([make_entry(i)])
    sealed = segment_files(directory / "group-1")[1]
    os.truncate(sealed, sealed.stat().st_size - 5)
    before = file_bytes(directory)
    with pytest.raises(LogCorruptionError, match="cut short") as info:
        LogStore(directory, segment_bytes=300)
    assert str(sealed) in str(info.value)
    assert file_bytes(directory) == before


@pytest.mark.parametrize("offset", [0, 7, 9, 17], ids=["magic", "version", "group", "sequence"])
def test_a_bad_segment_header(directory: Path, offset: int) -> None:
    with LogStore(directory) as store:
        store.group(1).append(make_entries(1, 3))
    segment = segment_files(directory / "group-1")[0]
    flip(segment, offset)
    before = file_bytes(directory)
    with pytest.raises(LogCorruptionError) as info:
        LogStore(directory)
    assert str(segment) in str(info.value) and "byte offset" in str(info.value)
    assert file_bytes(directory) == before


@pytest.mark.parametrize(
    "where",
    [0, 8, 14, -20, -12, -3],
    ids=["magic", "metadata-length", "metadata", "data", "data-length", "checksum"],
)
def test_a_corrupt_snapshot_file(directory: Path, where: int) -> None:
    with LogStore(directory) as store:
        log = store.group(1)
        log.append(make_entries(1, 6))
        save(log, snapshot_at(4, 1, b"some state " * 10))
    snapshot = next((directory / "group-1").glob("snapshot-*.snap"))
    flip(snapshot, where if where >= 0 else snapshot.stat().st_size + where)
    before = file_bytes(directory)
    with pytest.raises(LogCorruptionError) as info:
        LogStore(directory)
    assert str(snapshot) in str(info.value) and "byte offset" in str(info.value)
    assert file_bytes(directory) == before


@pytest.mark.parametrize(("which", "problem"), [(0, "missing"), (2, "gap")])
def test_a_missing_segment_is_corruption_not_a_shorter_log(
    directory: Path, which: int, problem: str
) -> None:
    with LogStore(directory, segment_bytes=300) as store:
        append_in_steps(store.group(1), make_entries(1, 30))
    segments = segment_files(directory / "group-1")
    segments[which].unlink()
    with pytest.raises(LogCorruptionError, match=problem) as info:
        LogStore(directory, segment_bytes=300)
    assert "byte offset" in str(info.value)


def test_a_short_last_segment_that_is_not_our_header_is_corruption(directory: Path) -> None:
    with LogStore(directory, segment_bytes=200) as store:
        append_in_steps(store.group(1), make_entries(1, 8), step=1)
    segments = segment_files(directory / "group-1")
    segments[-1].write_bytes(b"not a log!")  # shorter than a header, and not a prefix of ours
    before = file_bytes(directory)
    with pytest.raises(LogCorruptionError, match="header cut short") as info:
        LogStore(directory, segment_bytes=200)
    assert str(segments[-1]) in str(info.value)
    assert file_bytes(directory) == before


def test_a_last_segment_with_a_zero_header_and_other_bytes_is_corruption(directory: Path) -> None:
    with LogStore(directory, segment_bytes=200) as store:
        append_in_steps(store.group(1), make_entries(1, 8), step=1)
    segments = segment_files(directory / "group-1")
    segments[-1].write_bytes(bytes(HEADER) + b"\x55" * 100)  # no valid record in it
    before = file_bytes(directory)
    with pytest.raises(LogCorruptionError, match="magic"):
        LogStore(directory, segment_bytes=200)
    assert file_bytes(directory) == before


def test_a_last_segment_of_zeros_is_a_torn_creation(directory: Path) -> None:
    with LogStore(directory, segment_bytes=200) as store:
        log = store.group(1)
        append_in_steps(log, make_entries(1, 8), step=1)
        last = log.last_index()
    segments = segment_files(directory / "group-1")
    segments[-1].write_bytes(bytes(4096))
    with LogStore(directory, segment_bytes=200) as store:
        assert segment_files(directory / "group-1") == segments[:-1]
        assert store.group(1).last_index() <= last


@pytest.mark.parametrize(
    "damage",
    ["bad-checksum-then-bytes", "garbage-appended"],
)
def test_a_bad_last_record_followed_by_other_bytes_is_corruption(
    directory: Path, damage: str
) -> None:
    with LogStore(directory) as store:
        store.group(1).append(make_entries(1, 9))
    segment = segment_files(directory / "group-1")[0]
    if damage == "bad-checksum-then-bytes":
        flip(segment, entry_offset(7, 20) + 35)  # the last record: no valid record follows
        at = entry_offset(7, 20)
    else:
        at = segment.stat().st_size
    with segment.open("ab") as file:
        file.write(b"\x55" * 40)  # not a record, not zeros: not ours to cut off
    before = file_bytes(directory)
    with pytest.raises(LogCorruptionError, match="not a record of this log") as info:
        LogStore(directory)
    assert f"byte offset {at}" in str(info.value)
    assert file_bytes(directory) == before


def test_a_bad_last_record_followed_by_zeros_is_a_torn_tail(directory: Path) -> None:
    with LogStore(directory) as store:
        store.group(1).append(make_entries(1, 9))
    segment = segment_files(directory / "group-1")[0]
    flip(segment, entry_offset(7, 20) + 35)
    with segment.open("ab") as file:
        file.write(bytes(4096))
    with LogStore(directory) as store:
        assert store.group(1).last_index() == 7
    assert segment.stat().st_size == entry_offset(7, 20)


def test_recovery_never_discards_committed_entries_for_a_snapshot(tmp_path: Path) -> None:
    # A snapshot file that disagrees with committed entries (here: put there
    # by hand) is corruption; recovery used to restart the log after it.
    directory = tmp_path / "log"
    with LogStore(directory) as store:
        log = store.group(1)
        log.append(make_entries(1, 21, term=1))
        log.set_hard_state(HardState(1, 1, 15))
    with LogStore(tmp_path / "elsewhere") as other:
        save(other.group(1), snapshot_at(10, 2))
    foreign = next((tmp_path / "elsewhere" / "group-1").glob("snapshot-*.snap"))
    shutil.copy(foreign, directory / "group-1" / foreign.name)
    before = file_bytes(directory)
    with pytest.raises(LogCorruptionError, match="disagrees with committed entries up to 15"):
        LogStore(directory)
    assert file_bytes(directory) == before


# -- group commit -----------------------------------------------------------------


class SyscallCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, with_syncfs: bool = True) -> None:
        self.fdatasync: list[int] = []
        self.syncfs: list[int] = []
        real_fdatasync = os.fdatasync

        def fdatasync(fd: int) -> None:
            self.fdatasync.append(fd)
            real_fdatasync(fd)

        def syncfs(fd: int) -> None:
            self.syncfs.append(fd)
            os.sync()

        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(log_module, "_syncfs", syncfs if with_syncfs else None)


def test_one_sync_round_over_many_groups_is_one_syncfs(
    store: LogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = [store.group(g) for g in range(6)]
    counter = SyscallCounter(monkeypatch)
    for g, log in enumerate(logs):
        log.append(make_entries(1, 4 + g))
        log.set_hard_state(HardState(1, 1, 1))
    rounds, syscalls = store.sync_calls, store.fsync_count
    store.sync()
    assert (len(counter.syncfs), len(counter.fdatasync)) == (1, 0)
    assert (store.sync_calls - rounds, store.fsync_count - syscalls) == (1, 1)
    store.sync()  # nothing dirty: nothing to do
    assert (len(counter.syncfs), len(counter.fdatasync)) == (1, 0)


def test_one_dirty_file_is_one_fdatasync(store: LogStore, monkeypatch: pytest.MonkeyPatch) -> None:
    logs = [store.group(g) for g in range(3)]
    counter = SyscallCounter(monkeypatch)
    logs[1].append(make_entries(1, 50))
    logs[1].set_hard_state(HardState(1, 0, 0))
    store.sync()
    assert (len(counter.syncfs), len(counter.fdatasync)) == (0, 1)


def test_without_syncfs_each_dirty_file_is_fdatasynced(
    store: LogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = [store.group(g) for g in range(4)]
    counter = SyscallCounter(monkeypatch, with_syncfs=False)
    for log in logs:
        log.append(make_entries(1, 3))
    store.sync()
    assert (len(counter.syncfs), len(counter.fdatasync)) == (0, 4)


def test_the_real_syncfs(store: LogStore) -> None:
    if sys.platform != "linux":
        pytest.skip("syncfs(2) is Linux only")
    assert log_module._syncfs is not None
    for g in range(3):
        store.group(g).append(make_entries(1, 3))
    store.sync()
    with pytest.raises(OSError) as info:
        log_module._syncfs(-1)
    assert info.value.errno == errno.EBADF


def test_a_failed_sync_stops_writes_until_reopened(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(self: LogStore, segments: object) -> None:
        raise OSError(errno.EIO, "simulated fsync failure")

    store = LogStore(directory)
    log = store.group(1)
    log.append(make_entries(1, 4))
    monkeypatch.setattr(LogStore, "_make_durable", failing)
    with pytest.raises(OSError, match="simulated"):
        store.sync()
    with pytest.raises(LogError, match="reopen"):
        log.append(make_entries(4, 5))
    with pytest.raises(LogError, match="reopen"):
        store.sync()
    store.close()
    monkeypatch.undo()
    with LogStore(directory) as store:
        assert store.group(1).last_index() == 3


def test_a_store_is_exclusive_and_closed_means_closed(directory: Path) -> None:
    store = LogStore(directory)
    log = store.group(1)
    log.append(make_entries(1, 3))
    with pytest.raises(LogError, match="in use"):
        LogStore(directory)
    store.close()
    store.close()
    with pytest.raises(LogError, match="closed"):
        log.append(make_entries(3, 4))
    with pytest.raises(LogError, match="closed"):
        store.group(2)
    with LogStore(directory) as reopened:
        assert reopened.group(1).last_index() == 2


# -- a real crash: SIGKILL a writer at random moments ------------------------------------

CRASH_CHILD = r"""
import random, sys
from cluster.raft.log import LogStore
from cluster.raft.types import ConfState, Entry, HardState, SnapshotMeta

directory, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
store = LogStore(directory, segment_bytes=16 << 10, cache_bytes=8 << 10)
logs = {g: store.group(g) for g in (1, 2, 3)}
reported = {}  # the commit index in the last line printed
seen = {}  # the commit index whose terms are in pending
pending = {}  # terms of entries reported + 1 .. seen, taken before a snapshot hides them
for g, log in logs.items():
    hs = log.hard_state()
    log.set_hard_state(HardState(hs.term + 1, 1, hs.commit))
    reported[g] = seen[g] = hs.commit
    pending[g] = []

def payload(g, i, t, size):
    return b"%d:%d:%d:" % (g, i, t) + bytes([i % 251]) * size

while True:
    for g, log in logs.items():
        hs = log.hard_state()
        term, last = hs.term, log.last_index()
        start = last + 1
        if rng.random() < 0.2 and last > hs.commit:
            start = rng.randint(hs.commit + 1, last)
            term += 1
            log.set_hard_state(HardState(term, 1, hs.commit))
        count = rng.randint(1, 12)
        log.append([Entry(i, term, data=payload(g, i, term, rng.randint(0, 400)))
                    for i in range(start, start + count)])
        if rng.random() < 0.6:
            log.set_hard_state(HardState(term, 1, rng.randint(hs.commit, log.last_index())))
        commit = log.hard_state().commit
        pending[g].extend(log.term(i) for i in range(seen[g] + 1, commit + 1))
        seen[g] = commit
        if rng.random() < 0.05 and commit > log.snapshot_meta().index:
            meta = SnapshotMeta(commit, log.term(commit), ConfState(frozenset({1})))
            log.save_snapshot(meta, lambda sink, d=b"snap:%d:%d" % (g, commit): sink.write(d))
            log.compact(commit)
    store.sync()
    parts = []
    for g, log in logs.items():
        commit = seen[g]
        runs = []
        for t in pending[g]:
            if runs and runs[-1][1] == t:
                runs[-1][0] += 1
            else:
                runs.append([1, t])
        parts.append("%d:%d:%d:%s" % (g, reported[g], commit,
                                       ",".join("%dx%d" % (n, t) for n, t in runs)))
        reported[g] = commit
        pending[g] = []
    print(" ".join(parts), flush=True)
"""
CRASH_RUNS = int(os.environ.get("PROTOBASE_RAFT_CRASH_RUNS", "6"))
CRASH_SEED = int(os.environ.get("PROTOBASE_RAFT_CRASH_SEED", "20240611"))


def run_child_until_killed(directory: Path, seed: int, delay: float) -> tuple[list[str], str]:
    """Start the writer, let it run `delay` seconds after its first sync, SIGKILL it."""
    process = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, str(directory), str(seed)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    output: list[bytes] = []
    first_line = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            first_line.set()
        first_line.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    first_line.wait(timeout=30)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    reader.join(timeout=30)
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    process.stdout.close()
    assert process.returncode == -signal.SIGKILL, stderr
    complete = [line.decode() for line in output if line.endswith(b"\n")]
    return complete, stderr


def check_crash_image(directory: Path, committed: dict[int, dict[int, int]]) -> None:
    """Every committed (reported synced) entry is there with the right data."""
    with LogStore(directory, segment_bytes=16 << 10) as store:
        for group, terms in committed.items():
            log = store.group(group)
            snapshot = current(log)
            top = max(terms, default=0)
            assert log.hard_state().commit >= top
            assert log.last_index() >= top
            if snapshot.meta.index:
                assert snapshot.data == b"snap:%d:%d" % (group, snapshot.meta.index)
                assert terms.get(snapshot.meta.index, snapshot.meta.term) == snapshot.meta.term
            present = log.entries(log.first_index(), log.last_index() + 1)
            # A COMPACT record the crash took leaves entries behind the snapshot.
            behind = log.first_index() <= snapshot.meta.index
            previous_term = 0 if behind else snapshot.meta.term
            for entry in present:
                if entry.index == snapshot.meta.index:
                    assert entry.term == snapshot.meta.term
                head = b"%d:%d:%d:" % (group, entry.index, entry.term)
                assert entry.data.startswith(head), (group, entry.index)
                rest = entry.data[len(head) :]
                assert rest == bytes([entry.index % 251]) * len(rest)
                assert entry.term >= previous_term
                previous_term = entry.term
                if entry.index in terms:
                    assert entry.term == terms[entry.index], (group, entry.index)
            missing = [i for i in terms if i >= log.first_index() and i > log.last_index()]
            assert not missing


def test_sigkill_never_loses_a_synced_entry(tmp_path: Path) -> None:
    rng = random.Random(CRASH_SEED)
    directory = tmp_path / "log"
    committed: dict[int, dict[int, int]] = {1: {}, 2: {}, 3: {}}
    total_lines = 0
    for run in range(CRASH_RUNS):
        lines, _ = run_child_until_killed(directory, rng.randrange(2**32), rng.uniform(0, 0.3))
        total_lines += len(lines)
        for line in lines:
            for part in line.split():
                group, reported, commit, runs = part.split(":")
                index = int(reported)
                for run_text in filter(None, runs.split(",")):
                    count, term = map(int, run_text.split("x"))
                    for _ in range(count):
                        index += 1
                        committed[int(group)][index] = term
                assert index == int(commit)
        # Check a copy; the next writer continues on the unrepaired crash image.
        image = tmp_path / f"image-{run}"
        shutil.copytree(directory, image)
        check_crash_image(image, committed)
        shutil.rmtree(image)
    assert total_lines > CRASH_RUNS
    assert all(committed.values())


# -- model-based: FileGroupLog against a list ------------------------------------------


class LogModel(RuleBasedStateMachine):
    """A FileGroupLog and a plain-list model take the same random operations."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="raftlog-")
        self.store = LogStore(self.directory, segment_bytes=400, cache_bytes=300)
        self.log = self.store.group(1)
        self.first = 1
        self.entries: list[Entry] = []
        self.hard_state = HardState()
        self.snapshot = EMPTY
        self.term = 1

    @property
    def last(self) -> int:
        return self.first - 1 + len(self.entries)

    def model_term(self, index: int) -> int:
        if self.first <= index <= self.last:
            return self.entries[index - self.first].term
        assert index == self.snapshot.meta.index
        return self.snapshot.meta.term

    def drop_through(self, index: int) -> None:
        if index >= self.first:
            self.entries = self.entries[index + 1 - self.first :]
            self.first = index + 1

    @rule(data=st.data(), count=st.integers(1, 6), size=st.integers(0, 120))
    def append(self, data: st.DataObject, count: int, size: int) -> None:
        lowest = max(self.hard_state.commit, self.snapshot.meta.index) + 1
        start = data.draw(st.integers(min(lowest, self.last + 1), self.last + 1), "start")
        new = [make_entry(i, self.term, size) for i in range(start, start + count)]
        self.log.append(new)
        self.entries = self.entries[: start - self.first] + new

    @rule(data=st.data())
    def append_rejected(self, data: st.DataObject) -> None:
        choices = [self.last + 2, self.snapshot.meta.index]
        if self.first <= min(self.hard_state.commit, self.last):
            choices.append(
                data.draw(st.integers(self.first, min(self.hard_state.commit, self.last)))
            )
        start = data.draw(st.sampled_from(choices), "start")
        with pytest.raises(LogError):
            self.log.append(make_entries(start, start + 2, self.term))

    @rule()
    def new_term(self) -> None:
        self.term += 1

    @rule(data=st.data(), vote=st.integers(0, 3))
    def set_hard_state(self, data: st.DataObject, vote: int) -> None:
        commit = data.draw(
            st.integers(self.hard_state.commit, max(self.last, self.hard_state.commit))
        )
        term = max(self.term, self.hard_state.term)
        if term == self.hard_state.term and self.hard_state.vote:
            vote = self.hard_state.vote
        self.hard_state = HardState(term, vote, commit)
        self.log.set_hard_state(self.hard_state)

    @rule(data=st.data(), agree=st.booleans())
    def save_snapshot(self, data: st.DataObject, agree: bool) -> None:
        index = data.draw(st.integers(self.snapshot.meta.index + 1, self.last + 3), "index")
        keeps = agree and index <= self.last
        term = self.model_term(index) if keeps else self.term + 1
        keeps = index <= self.last and self.model_term(index) == term
        snapshot = snapshot_at(index, term, b"state at %d" % index)
        if not keeps and min(self.last, self.hard_state.commit) > index:
            with pytest.raises(LogError):
                save(self.log, snapshot)
            return
        save(self.log, snapshot)
        self.snapshot = snapshot
        if not keeps:  # a snapshot over the log leaves its entries readable
            self.entries = []
            self.term = max(self.term, term)
            self.first = index + 1

    @precondition(lambda self: self.snapshot.meta.index > 0)
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, self.snapshot.meta.index))
        self.log.compact(index)
        self.drop_through(index)

    @rule()
    def sync(self) -> None:
        self.store.sync()

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = LogStore(self.directory, segment_bytes=400, cache_bytes=300)
        self.log = self.store.group(1)
        # A reopened log serves the same entries, those behind its snapshot too.

    @rule(data=st.data(), max_bytes=st.none() | st.integers(0, 400))
    def read_range(self, data: st.DataObject, max_bytes: int | None) -> None:
        lo = data.draw(st.integers(self.first, self.last + 1))
        hi = data.draw(st.integers(lo, self.last + 1))
        expected = self.entries[lo - self.first : hi - self.first]
        if max_bytes is not None and expected:
            total, keep = len(expected[0].data), 1
            while keep < len(expected) and total + len(expected[keep].data) <= max_bytes:
                total += len(expected[keep].data)
                keep += 1
            expected = expected[:keep]
        assert self.log.entries(lo, hi, max_bytes) == expected

    @invariant()
    def log_matches_model(self) -> None:
        log = self.log
        assert (log.first_index(), log.last_index()) == (self.first, self.last)
        assert log.hard_state() == self.hard_state
        assert log.snapshot_meta() == self.snapshot.meta
        assert log.term(self.snapshot.meta.index) == self.snapshot.meta.term
        assert log.entries(self.first, self.last + 1) == self.entries

    def teardown(self) -> None:
        assert current(self.log) == self.snapshot
        self.store.close()
        shutil.rmtree(self.directory)


LogModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_log_against_model = LogModel.TestCase
