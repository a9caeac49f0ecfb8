"""CloudFileStorage beyond the conformance suite, against a real S3 server (moto_server).

Group commit, fencing of a second writer, what opening reads, checksums,
the read cache's bound, pack, an S3 outage, and SIGKILL during commits.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protobase import (
    CloudFileStorage,
    CorruptionError,
    ObjectSpace,
    StorageError,
)
from protobase.atoms import frame_atom, new_transaction_id
from protobase.s3 import Bucket, S3Location
from protobase.storage import CommitBatch
from protobase.storage.cloud import MANIFEST_NAME


def open_cloud(
    bucket: str, tmp_path: Path, name: str = "cache", **options: Any
) -> CloudFileStorage:
    return CloudFileStorage(bucket=bucket, prefix="db", cache_dir=tmp_path / name, **options)


def commit_payload(storage: CloudFileStorage, payload: bytes) -> CommitBatch:
    batch = CommitBatch(new_transaction_id(), [frame_atom(payload)])
    storage.commit(batch, storage.read_root().version, batch.pointer(0))
    return batch


@pytest.fixture
def bucket(s3_bucket: str) -> str:
    return s3_bucket


def test_commits_survive_reopen_with_their_history(bucket: str, tmp_path: Path) -> None:
    storage = open_cloud(bucket, tmp_path)
    batches = [commit_payload(storage, f"v{i}".encode()) for i in range(1, 6)]
    storage.close()
    reopened = open_cloud(bucket, tmp_path)
    try:
        assert reopened.read_root().version == 5
        assert reopened.read_root().pointer == batches[-1].pointer(0)
        assert [c.version for c in reopened.history()] == [1, 2, 3, 4, 5]
        assert reopened.root_at(2).pointer == batches[1].pointer(0)
        for i, batch in enumerate(batches, start=1):
            assert reopened.get_atoms([batch.pointer(0)]) == [frame_atom(f"v{i}".encode())]
    finally:
        reopened.close()


def test_concurrent_commits_share_puts(bucket: str, tmp_path: Path) -> None:
    """32 threads committing through the object layer: fewer data PUTs than commits."""
    storage = open_cloud(bucket, tmp_path)
    with ObjectSpace(storage) as space:
        db = space.new_database("db")
        with db.transaction() as tr:
            tr.set_root_object("start", 0)
        puts_before = storage.requests["PUT"]

        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                for i in range(10):
                    with db.transaction() as tr:
                        tr.set_root_object(f"{n}-{i}", i)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors[0]
        puts = storage.requests["PUT"] - puts_before
        with db.transaction() as tr:
            assert len(tr.root_names()) == 321
    # Each group costs a data PUT and a manifest PUT: 320 commits alone would take 640.
    assert puts < 640 * 0.75, f"{puts} PUTs for 320 commits: commits are not grouped"
    reopened = open_cloud(bucket, tmp_path)
    with ObjectSpace(reopened) as space, space.open_database("db").transaction() as tr:
        assert len(tr.root_names()) == 321
        assert tr.get_root_object("31-9") == 9


def test_second_writer_fences_the_first(bucket: str, tmp_path: Path) -> None:
    first = open_cloud(bucket, tmp_path, "cache-1")
    kept = commit_payload(first, b"acknowledged by the first writer")
    second = open_cloud(bucket, tmp_path, "cache-2")
    try:
        with pytest.raises(StorageError, match="fenced"):
            commit_payload(first, b"never acknowledged")
        with pytest.raises(StorageError, match="fenced"):
            first.read_root()
        assert second.read_root() == first_root(kept)
        after = commit_payload(second, b"the second writer goes on")
        assert second.read_root().version == 2
        assert second.get_atoms([kept.pointer(0), after.pointer(0)]) == [
            frame_atom(b"acknowledged by the first writer"),
            frame_atom(b"the second writer goes on"),
        ]
    finally:
        first.close()
        second.close()
    third = open_cloud(bucket, tmp_path, "cache-3")
    try:
        assert third.read_root().version == 2
    finally:
        third.close()


def first_root(batch: CommitBatch) -> Any:
    from protobase import RootRef

    return RootRef(batch.pointer(0), 1)


def test_opening_reads_the_manifest_and_index_runs_only(bucket: str, tmp_path: Path) -> None:
    storage = open_cloud(bucket, tmp_path, tail_limit=8)
    for i in range(300):
        commit_payload(storage, f"commit {i}".encode())
    storage.close()
    reopened = open_cloud(bucket, tmp_path, tail_limit=8)
    try:
        runs = len(reopened._runs)
        # 300 records in runs of >= 8 whose sizes grow by 4x: at most log4(300/8) + 2.
        assert 1 <= runs <= 5
        assert reopened.requests["GET"] == 1 + runs
        assert reopened.read_root().version == 300
        data_objects = [k for k in reopened.object_keys() if "/data/" in k]
        # The open object is sealed each time 8 records fill the tail: many objects
        # exist, and none was read to open.
        assert len(data_objects) >= 300 // 8
    finally:
        reopened.close()


def test_a_damaged_object_is_detected_by_its_checksum(bucket: str, tmp_path: Path) -> None:
    storage = open_cloud(bucket, tmp_path)
    batch = commit_payload(storage, b"x" * 1000)
    storage.close()
    s3 = Bucket.open(S3Location(bucket, "db"))
    assert not list(s3.list_objects("db/data/"))  # a small commit travels in the manifest
    open_cloud(bucket, tmp_path, "cache-1").close()  # the next writer writes it out
    (key,) = [k for k, _ in s3.list_objects("db/data/")]
    data = bytearray(s3.get(key))
    data[len(data) // 2] ^= 0x40
    s3.put(key, bytes(data))
    reopened = open_cloud(bucket, tmp_path, "cache-2")
    try:
        with pytest.raises(CorruptionError, match=key.split("/", 1)[1]):
            reopened.get_atoms([batch.pointer(0)])
    finally:
        reopened.close()


def test_a_damaged_manifest_refuses_to_open(bucket: str, tmp_path: Path) -> None:
    open_cloud(bucket, tmp_path).close()
    s3 = Bucket.open(S3Location(bucket, "db"))
    key = s3.key(MANIFEST_NAME)
    data = bytearray(s3.get(key))
    data[-1] ^= 1
    s3.put(key, bytes(data))
    with pytest.raises(CorruptionError, match="checksum"):
        open_cloud(bucket, tmp_path, "cache-2")
    assert s3.get(key) == bytes(data)  # nothing was written


def test_read_cache_stays_within_its_budget(bucket: str, tmp_path: Path) -> None:
    budget = 1024 * 1024
    storage = open_cloud(bucket, tmp_path, cache_bytes=budget)
    batches = [commit_payload(storage, os.urandom(50_000)) for _ in range(60)]
    storage.close()
    reopened = open_cloud(bucket, tmp_path, "cache-2", cache_bytes=budget)
    try:
        for _ in range(2):
            for batch in random.Random(1).sample(batches, len(batches)):
                assert len(reopened.get_atoms([batch.pointer(0)])[0]) > 50_000
                used = sum(p.stat().st_size for p in (tmp_path / "cache-2").glob("cache-*"))
                assert used <= budget
        gets = reopened.requests["GET"]
        reopened.get_atoms([batches[-1].pointer(0)])
        assert reopened.requests["GET"] == gets  # the last one read is still cached
    finally:
        reopened.close()


def test_pack_deletes_only_what_the_new_manifest_no_longer_names(
    bucket: str, tmp_path: Path
) -> None:
    storage = open_cloud(bucket, tmp_path, tail_limit=4)
    with ObjectSpace(storage) as space:
        db = space.new_database("db")
        for i in range(20):
            with db.transaction() as tr:
                tr.set_root_object("n", i)
                tr.set_root_object("garbage", f"{i}" * 500)
        before = set(storage.object_keys())
        space.pack()
        after = set(storage.object_keys())
        assert len(after) < len(before)
        assert [c.version for c in storage.history()] == [storage.read_root().version]
        with db.transaction() as tr:
            assert tr.get_root_object("n") == 19
            tr.set_root_object("n", 20)
    reopened = open_cloud(bucket, tmp_path, "cache-2", tail_limit=4)
    with ObjectSpace(reopened) as space, space.open_database("db").transaction() as tr:
        assert tr.get_root_object("n") == 20


@pytest.fixture
def s3_proxy(s3_server: Any) -> Iterator[Any]:
    """A TCP proxy in front of moto_server that can cut S3 off (an outage) and heal."""
    from s3server import fault_proxy

    with fault_proxy(s3_server) as net:
        yield net


def test_commits_wait_out_a_short_outage(bucket: str, tmp_path: Path, s3_proxy: Any) -> None:
    host, port = s3_proxy.address(1, 0)
    endpoint = f"http://{host}:{port}"
    storage = CloudFileStorage(bucket, "db", endpoint, tmp_path / "cache", commit_timeout=30)
    try:
        commit_payload(storage, b"before")
        s3_proxy.isolate(0)
        done = threading.Event()
        thread = threading.Thread(
            target=lambda: (commit_payload(storage, b"during"), done.set()), daemon=True
        )
        thread.start()
        time.sleep(1.5)
        assert not done.is_set()  # not acknowledged while S3 is away
        s3_proxy.heal()
        assert done.wait(30)
        assert storage.read_root().version == 2
    finally:
        storage.close()


def test_a_long_outage_stops_the_storage_with_a_clear_error(
    bucket: str, tmp_path: Path, s3_proxy: Any
) -> None:
    host, port = s3_proxy.address(1, 0)
    endpoint = f"http://{host}:{port}"
    storage = CloudFileStorage(bucket, "db", endpoint, tmp_path / "cache", commit_timeout=2)
    commit_payload(storage, b"before")
    s3_proxy.isolate(0)
    with pytest.raises(StorageError, match="did not take a commit group within 2 s"):
        commit_payload(storage, b"during")
    with pytest.raises(StorageError, match="stopped"):
        storage.read_root()
    s3_proxy.heal()
    storage.close()
    reopened = open_cloud(bucket, tmp_path, "cache-2")
    try:
        assert reopened.read_root().version in (1, 2)  # the outcome was reported unknown
    finally:
        reopened.close()


CRASH_CHILD = textwrap.dedent(
    """
    import sys, threading
    from protobase import CloudFileStorage
    from protobase.atoms import frame_atom, new_transaction_id
    from protobase.storage import CommitBatch

    storage = CloudFileStorage(sys.argv[1], "db", cache_dir=sys.argv[2])
    lock = threading.Lock()

    def writer(n):
        for i in range(100000):
            payload = f"{n}-{i}".encode()
            batch = CommitBatch(new_transaction_id(), [frame_atom(payload)])
            while True:
                with lock:
                    version = storage.read_root().version
                try:
                    storage.commit(batch, version, batch.pointer(0))
                    break
                except Exception as exc:
                    if type(exc).__name__ != "RootConflict":
                        raise
            with lock:
                print(batch.transaction_id.hex(), payload.decode(), flush=True)

    for n in range(8):
        threading.Thread(target=writer, args=(n,), daemon=True).start()
    threading.Event().wait()
    """
)


@pytest.mark.parametrize("run", range(2))
def test_sigkill_during_group_commits_loses_nothing_acknowledged(
    bucket: str, tmp_path: Path, run: int
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CRASH_CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), bucket, str(tmp_path / "child-cache")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        time.sleep(1.5 + random.Random(run).random() * 2)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate(timeout=30)
    # The kill may cut the last line short: only whole lines count.
    acknowledged = [f for line in out.decode().splitlines() if len(f := line.split()) == 2]
    assert acknowledged, f"the child acknowledged nothing:\n{err.decode()[-2000:]}"
    storage = open_cloud(bucket, tmp_path, "cache-after")
    try:
        from protobase import AtomPointer

        pointers = [AtomPointer(bytes.fromhex(txid), 0) for txid, _ in acknowledged]
        atoms = storage.get_atoms(pointers)
        assert atoms == [frame_atom(payload.encode()) for _, payload in acknowledged]
        assert storage.read_root().version >= len(acknowledged)
    finally:
        storage.close()


def test_a_manifest_write_whose_answer_was_lost_is_recognised_as_ours(
    bucket: str, tmp_path: Path
) -> None:
    """The PUT lands, its answer is lost, the retry's condition fails: that was our own write."""
    from protobase.s3 import S3Unavailable

    storage = open_cloud(bucket, tmp_path)
    try:
        commit_payload(storage, b"before")
        real_put = storage._bucket.put
        lost = []

        def put_losing_one_answer(key: str, body: bytes, **conditions: Any) -> str:
            etag = real_put(key, body, **conditions)
            if key.endswith(MANIFEST_NAME) and not lost:
                lost.append(key)
                raise S3Unavailable(f"{key}: the connection dropped before the answer came")
            return etag

        storage._bucket.put = put_losing_one_answer  # type: ignore[method-assign]
        batch = commit_payload(storage, b"answer lost")
        assert lost, "the fault was never injected"
        commit_payload(storage, b"after")
        assert storage.read_root().version == 3
    finally:
        storage.close()
    reopened = open_cloud(bucket, tmp_path, "cache-2")
    try:
        assert reopened.read_root().version == 3
        assert reopened.get_atoms([batch.pointer(0)]) == [frame_atom(b"answer lost")]
    finally:
        reopened.close()


def test_close_refuses_new_commits_and_never_hangs(bucket: str, tmp_path: Path) -> None:
    storage = open_cloud(bucket, tmp_path)
    commit_payload(storage, b"one")
    storage.close()
    with pytest.raises(StorageError, match="closed"):
        commit_payload(storage, b"after close")
    with pytest.raises(StorageError, match="closed"):
        storage.get_atoms([])


def test_an_endpoint_that_ignores_conditional_writes_is_refused(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fencing rests on IfNoneMatch/IfMatch; an endpoint that drops them is refused at once."""
    real_put = Bucket.put

    def unconditional_put(self: Bucket, key: str, body: bytes, **conditions: Any) -> str:
        return real_put(self, key, body)  # what a store without conditional writes does

    monkeypatch.setattr(Bucket, "put", unconditional_put)
    with pytest.raises(StorageError, match="does not enforce S3's conditional writes"):
        open_cloud(bucket, tmp_path)
