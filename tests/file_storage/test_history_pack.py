"""History (space.history, at_version) and pack of a StandaloneFileStorage."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from protobase import (
    Database,
    Dictionary,
    ObjectSpace,
    ReadOnlyTransactionError,
    RootRef,
    StandaloneFileStorage,
    StorageError,
    Transaction,
)
from protobase.maintenance import fsck

DATABASE = "app"
KEEP_ALL = dt.timedelta(hours=1)


def wal_bytes(space: ObjectSpace) -> int:
    storage = space.storage
    assert isinstance(storage, StandaloneFileStorage)
    return sum(size for _, size in storage.segment_sizes())


def open_space(path: Path) -> ObjectSpace:
    return ObjectSpace(StandaloneFileStorage(path, segment_bytes=32 * 1024))


@pytest.fixture
def space(tmp_path: Path) -> Iterator[ObjectSpace]:
    with open_space(tmp_path / "db") as opened:
        yield opened


def commit_values(db: Database, values: list[int]) -> dict[int, int]:
    """Commit root "x" = value for each value; return {root version: value}."""
    versions = {}
    for value in values:
        with db.transaction() as tr:
            tr.set_root_object("x", value)
            log = tr.get_root_object("log") or Dictionary()
            tr.set_root_object("log", log.set_at(value, f"entry {value}"))
        assert tr.committed_root is not None
        versions[tr.committed_root.version] = value
    return versions


def read_at(db: Database, version: int) -> tuple[int, list[int]]:
    tr = db.new_transaction(at_version=version)
    try:
        return tr.get_root_object("x"), list(tr.get_root_object("log").keys())
    finally:
        tr.abort()


def read_latest(db: Database) -> dict[str, object]:
    tr = db.new_read_only_transaction()
    try:
        return {name: _plain(tr.get_root_object(name)) for name in tr.root_names()}
    finally:
        tr.abort()


def _plain(value: object) -> object:
    if isinstance(value, Dictionary):
        return dict(value.items())
    return value


# --------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------


def test_history_lists_commits_in_order_with_times_and_sizes(space: ObjectSpace) -> None:
    started = time.time()
    db = space.new_database(DATABASE)
    versions = commit_values(db, list(range(10)))
    with db.transaction() as tr:
        tr.set_root_object("big", Dictionary((key, "v" * 100) for key in range(300)))
    finished = time.time()
    history = space.history()
    assert [c.version for c in history] == list(range(1, len(history) + 1))
    assert set(versions) <= {c.version for c in history}
    times = [c.time for c in history]
    assert times == sorted(times)
    assert started - 1 <= times[0] and times[-1] <= finished + 1
    assert all(c.size > 0 for c in history)
    assert history[-1].size > 10 * history[-2].size, "the big commit should be the largest"
    assert sum(c.size for c in history) <= wal_bytes(space)
    assert history[-1].root == space.storage.read_root().pointer
    assert len({c.transaction_id for c in history}) == len(history)


def test_history_survives_reopen(tmp_path: Path) -> None:
    with open_space(tmp_path / "db") as space:
        commit_values(space.new_database(DATABASE), [1, 2, 3])
        history = space.history()
    with open_space(tmp_path / "db") as space:
        assert space.history() == history


def test_at_version_reads_the_database_as_of_that_commit(space: ObjectSpace) -> None:
    db = space.new_database(DATABASE)
    values = list(range(1, 9))
    versions = commit_values(db, values)
    for version, value in versions.items():
        assert read_at(db, version) == (value, values[: values.index(value) + 1])


def test_at_version_transaction_is_read_only(space: ObjectSpace) -> None:
    db = space.new_database(DATABASE)
    versions = commit_values(db, [1, 2, 3])
    old = min(versions)
    tr = db.new_transaction(at_version=old)
    assert tr.read_only
    with pytest.raises(ReadOnlyTransactionError):
        tr.set_root_object("x", 99)
    with pytest.raises(ReadOnlyTransactionError):
        tr.remove_root_object("x")
    assert tr.commit() is None
    assert read_latest(db)["x"] == 3
    assert space.storage.read_root().version == max(versions)


@pytest.mark.parametrize("version", [0, 10_000])
def test_at_version_never_committed_is_refused(space: ObjectSpace, version: int) -> None:
    db = space.new_database(DATABASE)
    commit_values(db, [1])
    with pytest.raises(StorageError, match=f"version {version}"):
        db.new_transaction(at_version=version)


def test_at_version_of_a_packed_version_is_refused_clearly(space: ObjectSpace) -> None:
    db = space.new_database(DATABASE)
    versions = commit_values(db, [1, 2, 3, 4])
    space.pack()
    latest = max(versions)
    assert [c.version for c in space.history()] == [latest]
    for version in sorted(versions)[:-1]:
        with pytest.raises(StorageError) as raised:
            db.new_transaction(at_version=version)
        message = str(raised.value)
        assert f"version {version}" in message and "pack" in message, message
    assert read_at(db, latest) == (4, [1, 2, 3, 4])


# --------------------------------------------------------------------------
# Pack
# --------------------------------------------------------------------------


def test_pack_with_keep_history_keeps_recent_versions(tmp_path: Path) -> None:
    with open_space(tmp_path / "db") as space:
        db = space.new_database(DATABASE)
        versions = commit_values(db, list(range(1, 21)))
        history = space.history()
        space.pack(keep_history=KEEP_ALL)
        assert [c.version for c in space.history()] == [c.version for c in history]
        for version, value in versions.items():
            assert read_at(db, version)[0] == value
    with open_space(tmp_path / "db") as space:
        db = space.open_database(DATABASE)
        assert [c.version for c in space.history()] == [c.version for c in history]
        for version, value in versions.items():
            assert read_at(db, version)[0] == value
    assert fsck(tmp_path / "db").clean


def test_pack_keep_history_drops_only_old_versions(space: ObjectSpace) -> None:
    db = space.new_database(DATABASE)
    old = commit_values(db, [1, 2, 3])
    time.sleep(1.2)
    recent = commit_values(db, [4, 5])
    space.pack(keep_history=dt.timedelta(seconds=1))
    kept = {c.version for c in space.history()}
    assert set(recent) <= kept
    assert not set(old) & kept
    for version, value in recent.items():
        assert read_at(db, version)[0] == value


def test_pack_shrinks_the_wal_when_data_was_overwritten(tmp_path: Path) -> None:
    with open_space(tmp_path / "db") as space:
        db = space.new_database(DATABASE)
        for round_number in range(15):
            with db.transaction() as tr:
                tr.set_root_object(
                    "big", Dictionary((key, f"{round_number}-{key}" * 10) for key in range(200))
                )
        expected = read_latest(db)
        before = wal_bytes(space)
        space.pack()
        after = wal_bytes(space)
        assert after < before / 5, (before, after)
        assert read_latest(db) == expected
        with db.transaction() as tr:  # the packed storage takes commits
            tr.set_root_object("after pack", True)
        expected = read_latest(db)
    with open_space(tmp_path / "db") as space:
        assert read_latest(space.open_database(DATABASE)) == expected
        assert wal_bytes(space) < before / 5
    report = fsck(tmp_path / "db")
    assert report.clean, report.problems


def test_data_survives_repeated_packs_and_reopens(tmp_path: Path) -> None:
    expected: dict[str, object] = {}
    for round_number in range(4):
        with open_space(tmp_path / "db") as space:
            if DATABASE not in space.list_databases():
                space.new_database(DATABASE)
            db = space.open_database(DATABASE)
            assert read_latest(db) == expected
            for step in range(5):
                with db.transaction() as tr:
                    tr.set_root_object(f"r{round_number}", step)
                    tr.set_root_object("shared", Dictionary({round_number: step}))
            expected = read_latest(db)
            space.pack(keep_history=KEEP_ALL if round_number % 2 else dt.timedelta(0))
            assert read_latest(db) == expected
        report = fsck(tmp_path / "db")
        assert report.clean, report.problems


def test_pack_keeps_versions_read_by_open_transactions(space: ObjectSpace) -> None:
    db = space.new_database(DATABASE)
    with db.transaction() as tr:
        tr.set_root_object("big", Dictionary((key, f"old {key}") for key in range(300)))
    reader = db.new_transaction()  # reads nothing yet: every node is loaded after the pack
    read_version = reader.root_version
    pinned_version = max(commit_values(db, [1, 2]))
    pinned = db.new_transaction(at_version=pinned_version)
    for round_number in range(3):
        with db.transaction() as tr:
            tr.set_root_object("big", Dictionary((k, f"new {round_number}") for k in range(300)))
    space.pack()
    kept = {c.version for c in space.history()}
    assert {read_version, pinned_version} <= kept
    assert dict(reader.get_root_object("big").items()) == {k: f"old {k}" for k in range(300)}
    assert pinned.get_root_object("x") == 2
    old = db.new_transaction(at_version=read_version)
    assert old.get_root_object("x") is None and old.get_root_object("big") is not None
    old.abort()
    reader.abort()
    pinned.abort()
    space.pack()
    assert [c.version for c in space.history()] == [space.storage.read_root().version]
    with pytest.raises(StorageError):
        db.new_transaction(at_version=read_version)


def test_pack_reports_progress(space: ObjectSpace) -> None:
    db = space.new_database(DATABASE)
    commit_values(db, list(range(30)))
    calls: list[tuple[int, int]] = []
    space.pack(progress=lambda done, total: calls.append((done, total)))
    assert calls
    assert all(0 <= done <= total for done, total in calls)
    assert calls[-1][0] == calls[-1][1]


def test_pack_waits_for_a_read_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack in another thread cannot close the files a read is using.

    The interleaving is forced: the first `os.pread` of the reading
    transaction starts a pack in another thread and gives it time to run
    before reading. The pack must wait for the read, and the read must
    return the right bytes.
    """
    storage = StandaloneFileStorage(tmp_path / "db")
    with ObjectSpace(storage, cache_bytes=0) as space:
        db = space.new_database(DATABASE)
        with db.transaction() as tr:
            tr.set_root_object("big", Dictionary((key, f"value {key}") for key in range(300)))
        tr = db.new_read_only_transaction()
        real_pread = os.pread
        packer: list[threading.Thread] = []
        blocked_during_read: list[bool] = []

        def pread_while_a_pack_starts(fd: int, length: int, offset: int) -> bytes:
            if not packer:
                thread = threading.Thread(target=space.pack)
                packer.append(thread)
                thread.start()
                thread.join(timeout=0.3)
                blocked_during_read.append(thread.is_alive())
            return real_pread(fd, length, offset)

        monkeypatch.setattr(os, "pread", pread_while_a_pack_starts)
        try:
            items = dict(tr.get_root_object("big").items())
        finally:
            monkeypatch.undo()
            tr.abort()
        assert packer, "the read did not reach os.pread"
        packer[0].join(timeout=30)
        assert not packer[0].is_alive()
        assert blocked_during_read == [True]
        assert items == {key: f"value {key}" for key in range(300)}
        with db.transaction() as tr:
            assert dict(tr.get_root_object("big").items()) == items


@pytest.mark.pure_python("replaces a method of the space's Committer")
def test_transaction_started_while_a_pack_runs_keeps_its_version(
    space: ObjectSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit and a pack racing a transaction's start keep the version it reads.

    The interleaving is forced: right after the reader's root is read from
    the storage, another thread commits a new version and packs. Both must
    wait until the reader's version is pinned, so the pack keeps it.
    """
    db = space.new_database(DATABASE)
    with db.transaction() as tr:
        tr.set_root_object("big", Dictionary((key, f"old {key}") for key in range(300)))
    real_read_root = space.committer.read_root
    racer: list[threading.Thread] = []

    def commit_and_pack() -> None:
        with db.transaction() as other:
            other.set_root_object("big", Dictionary((key, "new") for key in range(300)))
        space.pack()

    def read_root_then_race() -> RootRef:
        ref = real_read_root()
        if not racer:
            thread = threading.Thread(target=commit_and_pack)
            racer.append(thread)
            thread.start()
            thread.join(timeout=0.3)
        return ref

    monkeypatch.setattr(space.committer, "read_root", read_root_then_race)
    reader = db.new_transaction()
    monkeypatch.undo()
    racer[0].join(timeout=30)
    assert not racer[0].is_alive()
    try:
        assert dict(reader.get_root_object("big").items()) == {
            key: f"old {key}" for key in range(300)
        }
    finally:
        reader.abort()
    with db.transaction() as tr:
        assert dict(tr.get_root_object("big").items()) == {key: "new" for key in range(300)}


def test_commits_and_reads_during_pack(tmp_path: Path) -> None:
    """Other threads keep committing and reading (past the cache) while packs run."""
    storage = StandaloneFileStorage(tmp_path / "db", segment_bytes=16 * 1024)
    with ObjectSpace(storage, cache_bytes=0) as space:
        db = space.new_database(DATABASE)
        with db.transaction() as tr:
            tr.set_root_object("big", Dictionary((key, "v" * 40) for key in range(400)))
        stop = threading.Event()
        errors: list[str] = []
        committed: list[int] = []

        def writer() -> None:
            number = 0
            while not stop.is_set():
                number += 1

                def work(tr: Transaction, number: int = number) -> None:
                    tr.set_root_object(f"w{number % 20}", number)

                db.run(work)
                committed.append(number)

        def reader() -> None:
            while not stop.is_set():
                tr = db.new_read_only_transaction()
                try:
                    assert len(dict(tr.get_root_object("big").items())) == 400
                finally:
                    tr.abort()

        def guarded(target: Callable[[], None]) -> None:
            try:
                target()
            except BaseException:
                errors.append(traceback.format_exc())
                stop.set()

        threads = [threading.Thread(target=guarded, args=(f,)) for f in (writer, reader, reader)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 1.5
            packs = 0
            while time.monotonic() < deadline and not stop.is_set():
                space.pack()
                packs += 1
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert not errors, errors[0]
        assert packs > 3 and committed
        final = read_latest(db)
        for number in committed[-20:]:
            assert final[f"w{number % 20}"] == number
    report = fsck(tmp_path / "db")
    assert report.clean, report.problems
