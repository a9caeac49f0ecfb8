"""Pack on the backends that have it (StandaloneFileStorage, CloudFileStorage): what it keeps
when commits and root changes race with it.

The object layer walks what is reachable first and calls `pack` after, so a
root change can land in between; and commits go on while pack rewrites.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from protobase import CloudFileStorage, RootConflict, StandaloneFileStorage
from protobase.atoms import frame_atom, new_transaction_id
from protobase.storage import CommitBatch

Opener = Callable[[], Any]


@pytest.fixture(params=["file", "cloud"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the same storage again each time it is called (a reopen)."""
    opened: list[Any] = []
    caches = iter(range(1000))

    def open_it() -> Any:
        if request.param == "file":
            storage: Any = StandaloneFileStorage(tmp_path / "db")
        else:
            bucket = request.getfixturevalue("s3_bucket")
            storage = CloudFileStorage(bucket, "db", cache_dir=tmp_path / f"cache{next(caches)}")
        opened.append(storage)
        return storage

    yield open_it
    for storage in opened:
        storage.close()


def batch_of(*payloads: bytes) -> CommitBatch:
    return CommitBatch(new_transaction_id(), [frame_atom(p) for p in payloads])


def test_a_batch_rooted_after_the_walk_is_kept_whole(opener: Opener) -> None:
    storage = opener()
    old = batch_of(b"old root")
    storage.commit(old, 0, old.pointer(0))
    late = batch_of(b"late root", b"its child")
    storage.put_batch(late)
    # The caller walked before this root change: `late` is not in its reachable set.
    reachable: set[Any] = set()
    ref = storage.set_root(1, late.pointer(0), late.transaction_id)
    storage.pack(reachable, keep_from_version=ref.version)
    assert storage.get_atoms([late.pointer(0), late.pointer(1)]) == list(late.atoms)
    storage.close()
    assert opener().get_atoms([late.pointer(1)]) == [late.atoms[1]]


def test_a_failed_set_root_leaves_the_batch_unrooted_and_kept(opener: Opener) -> None:
    storage = opener()
    first = batch_of(b"first")
    storage.commit(first, 0, first.pointer(0))
    waiting = batch_of(b"waiting")
    storage.put_batch(waiting)
    with pytest.raises(RootConflict):
        storage.set_root(0, waiting.pointer(0), waiting.transaction_id)
    storage.pack({first.pointer(0)}, keep_from_version=1)
    assert storage.get_atoms([waiting.pointer(0)]) == list(waiting.atoms)
    assert storage.set_root(1, waiting.pointer(0), waiting.transaction_id).version == 2


def test_commits_made_while_pack_runs_survive_it_and_a_reopen(opener: Opener) -> None:
    storage = opener()
    acknowledged: list[tuple[CommitBatch, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def committer() -> None:
        try:
            while not stop.is_set():
                batch = batch_of(b"x" * 200)
                with lock:
                    version = storage.read_root().version
                    ref = storage.commit(batch, version, batch.pointer(0))
                    acknowledged.append((batch, ref.version))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=committer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(5):
            with lock:
                keep_from = storage.read_root().version
            # Keep only what the latest commit at walk time reaches; later ones stay whole.
            storage.pack(set(), keep_from_version=keep_from)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors[0]
    latest = storage.read_root()
    assert latest.pointer == acknowledged[-1][0].pointer(0)
    kept = [batch for batch, version in acknowledged if version >= keep_from]
    assert len(kept) > 1
    storage.close()
    reopened = opener()
    assert reopened.read_root() == latest
    assert [c.version for c in reopened.history()][-len(kept) :] == list(
        range(keep_from, latest.version + 1)
    )
    for batch in kept:
        assert reopened.get_atoms([batch.pointer(0)]) == list(batch.atoms)
