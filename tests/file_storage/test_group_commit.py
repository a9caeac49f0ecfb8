"""Group commit and failing syncs.

`protobase.storage.wal.durable_write` is the one function that makes data
durable; these tests replace it with a counting or a failing wrapper.
Checkpoint writes call it too; the checkpoint case fails the checkpoint write itself.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from protobase import Database, ObjectSpace, StandaloneFileStorage, StorageError, Transaction
from protobase.maintenance import fsck
from protobase.storage import file as file_storage
from protobase.storage import wal

THREADS = 8
COMMITS_PER_THREAD = 25
DATABASE = "group"
REAL_DURABLE_WRITE = wal.durable_write


@dataclass
class SyncCounter:
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, fd: int) -> None:
        with self.lock:
            self.calls += 1
        REAL_DURABLE_WRITE(fd)


def replace_durable_write(
    monkeypatch: pytest.MonkeyPatch, replacement: Callable[[int], None]
) -> None:
    monkeypatch.setattr(wal, "durable_write", replacement)


def run_threads(db: Database, threads: int, per_thread: int) -> tuple[set[str], list[str]]:
    """Commit distinct keys from several threads; return (acknowledged keys, errors)."""
    acknowledged: set[str] = set()
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work(number: int) -> None:
        start.wait()
        for step in range(per_thread):
            key = f"t{number}-{step}"

            def write(tr: Transaction, key: str = key, step: int = step) -> None:
                tr.set_root_object(key, step)

            try:
                db.run(write, retries=1000)
            except StorageError as exc:
                with lock:
                    errors.append(str(exc))
                return
            with lock:
                acknowledged.add(key)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not any(worker.is_alive() for worker in workers), "a committer hung"
    return acknowledged, errors


def keys_in(path: Path) -> dict[str, object]:
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        tr = space.open_database(DATABASE).new_read_only_transaction()
        try:
            return {name: tr.get_root_object(name) for name in tr.root_names()}
        finally:
            tr.abort()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    with ObjectSpace(StandaloneFileStorage(tmp_path / "db")) as space:
        space.new_database(DATABASE)
    return tmp_path / "db"


def test_concurrent_committers_share_syncs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = SyncCounter()
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        db = space.open_database(DATABASE)
        version_before = space.storage.read_root().version
        replace_durable_write(monkeypatch, counter)
        acknowledged, errors = run_threads(db, THREADS, COMMITS_PER_THREAD)
        syncs = counter.calls
        commits = space.storage.read_root().version - version_before
    assert not errors
    assert commits == THREADS * COMMITS_PER_THREAD
    assert 0 < syncs < commits, f"{syncs} syncs for {commits} commits: no sync was shared"
    assert set(keys_in(path)) == acknowledged
    assert fsck(path).clean


def test_single_committer_syncs_every_commit(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without concurrency every commit needs its own sync before it returns."""
    counter = SyncCounter()
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        db = space.open_database(DATABASE)
        replace_durable_write(monkeypatch, counter)
        for step in range(10):
            with db.transaction() as tr:
                tr.set_root_object(f"k{step}", step)
            assert counter.calls >= step + 1


class FailingSync:
    """durable_write that fails from its `fail_from`-th call on (1-based)."""

    def __init__(self, fail_from: int) -> None:
        self.fail_from = fail_from
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self.lock:
            self.calls += 1
            failing = self.calls >= self.fail_from
        if failing:
            raise OSError(errno.EIO, "injected sync failure")
        REAL_DURABLE_WRITE(fd)


@pytest.mark.parametrize(
    ("fail_from", "segment_bytes", "checkpoint_bytes", "where"),
    [
        (1, None, None, "both"),  # the first commit's sync
        (4, None, None, "both"),  # a later commit's sync
        (2, 2048, None, "both"),  # the sync of a full segment before a new one starts
        (1, None, 1024, "checkpoint"),  # the checkpoint a commit writes after its sync
    ],
    ids=["first-sync", "later-sync", "segment-roll", "checkpoint"],
)
def test_failed_sync_stops_the_storage_and_reopen_recovers(
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fail_from: int,
    segment_bytes: int | None,
    checkpoint_bytes: int | None,
    where: str,
) -> None:
    options = {}
    if segment_bytes is not None:
        options["segment_bytes"] = segment_bytes
    if checkpoint_bytes is not None:
        options["checkpoint_bytes"] = checkpoint_bytes
    storage = StandaloneFileStorage(path, **options)
    acknowledged: dict[str, int] = {}
    try:
        with ObjectSpace(storage) as space:
            db = space.open_database(DATABASE)
            failing = FailingSync(fail_from)
            if where == "checkpoint":
                real_write_checkpoint = file_storage.write_checkpoint

                def failing_checkpoint(directory: Path, saved: object) -> None:
                    failing(-1)  # raises from call `fail_from` on
                    real_write_checkpoint(directory, saved)  # type: ignore[arg-type]

                monkeypatch.setattr(file_storage, "write_checkpoint", failing_checkpoint)
            else:
                replace_durable_write(monkeypatch, failing)
            with pytest.raises(StorageError):
                for step in range(50):
                    with db.transaction() as tr:
                        tr.set_root_object(f"k{step}", "x" * 300)
                    acknowledged[f"k{step}"] = step
            assert failing.calls >= fail_from, "the failure was not injected"
            with pytest.raises(StorageError, match="reopen"), db.transaction() as tr:
                tr.set_root_object("after failure", 1)
            with pytest.raises(StorageError):
                storage.read_root()
            with pytest.raises(StorageError):
                storage.checkpoint()
    finally:
        monkeypatch.undo()
        storage.close()
    found = keys_in(path)
    assert set(acknowledged) <= set(found), "an acknowledged commit was lost"
    assert "after failure" not in found
    report = fsck(path)
    assert report.clean, report.problems
    # the storage works again
    with (
        ObjectSpace(StandaloneFileStorage(path)) as space,
        space.open_database(DATABASE).transaction() as tr,
    ):
        tr.set_root_object("after reopen", 1)
    assert keys_in(path)["after reopen"] == 1


def test_failed_sync_under_concurrent_committers(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = StandaloneFileStorage(path)
    try:
        with ObjectSpace(storage) as space:
            db = space.open_database(DATABASE)
            failing = FailingSync(20)
            replace_durable_write(monkeypatch, failing)
            acknowledged, errors = run_threads(db, THREADS, COMMITS_PER_THREAD)
            assert len(errors) == THREADS, "every committer must be stopped by the failure"
            assert len(acknowledged) < THREADS * COMMITS_PER_THREAD
            with pytest.raises(StorageError):
                storage.read_root()
    finally:
        monkeypatch.undo()
        storage.close()
    assert acknowledged <= set(keys_in(path)), "an acknowledged commit was lost"
    assert fsck(path).clean
