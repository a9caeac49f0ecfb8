"""backup / restore / verify of a StandaloneFileStorage to S3 (a real moto_server), and the CLI.

The `s3_server` and `s3_bucket` fixtures (tests/conftest.py) give a fresh
bucket per test, with the server's endpoint and credentials in os.environ.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protobase import (
    CommitBatch,
    CorruptionError,
    DBObject,
    ObjectSpace,
    StandaloneFileStorage,
    StorageError,
)
from protobase.backup import (
    BackupArgumentError,
    BackupNotFoundError,
    backup,
    restore,
    verify,
)
from protobase.maintenance import fsck, pack
from protobase.s3 import Bucket, S3Location, S3Unavailable
from protobase.storage import wal

DATABASES = ("people", "orders")
SEGMENT_BYTES = 4096


class Person(DBObject):
    pass


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def open_space(path: Path) -> ObjectSpace:
    return ObjectSpace(StandaloneFileStorage(path, segment_bytes=SEGMENT_BYTES))


def commit_rounds(space: ObjectSpace, first: int, count: int, pause: float = 0.0) -> None:
    """One commit per round, alternating between the databases (created when missing)."""
    for name in DATABASES:
        if name not in space.list_databases():
            space.new_database(name)
    for number in range(first, first + count):
        db = space.open_database(DATABASES[number % 2])
        with db.transaction() as tr:
            people = tr.get_root_object("people") or tr.new_dictionary()
            person = Person(name=f"person {number}", age=number, note="n" * 150)
            tr.set_root_object("people", people.set_at(f"p{number}", person))
            log = tr.get_root_object("log") or tr.new_list()
            tr.set_root_object("log", log.append_last(number))
            tags = tr.get_root_object("tags") or tr.new_set()
            tr.set_root_object("tags", tags.add(number % 5))
            tr.set_root_object("round", number)
        if pause:
            time.sleep(pause)


def build(path: Path, rounds: int = 14, pause: float = 0.0) -> None:
    with open_space(path) as space:
        commit_rounds(space, 0, rounds, pause)


def state_of(space: ObjectSpace, version: int | None = None) -> dict[str, Any]:
    """Every database's roots as plain values, at `version` (both databases exist from 2 on)."""
    state: dict[str, Any] = {}
    for name in DATABASES:
        db = space.open_database(name)
        tr = db.new_read_only_transaction() if version is None else db.new_transaction(version)
        try:
            people = tr.get_root_object("people")
            log = tr.get_root_object("log")
            tags = tr.get_root_object("tags")
            state[name] = {
                "people": None
                if people is None
                else {key: (p.name, p.age, p.note) for key, p in people.items()},
                "log": None if log is None else list(log),
                "tags": None if tags is None else sorted(tags),
                "round": tr.get_root_object("round"),
            }
        finally:
            tr.abort()
    return state


def history_of(space: ObjectSpace) -> list[tuple[int, float, bytes]]:
    return [(c.version, c.time, c.transaction_id) for c in space.history()]


def snapshot(path: Path) -> tuple[dict[int, dict[str, Any]], list[tuple[int, float, bytes]]]:
    """The state at every kept version (2 on) and the history of a closed database."""
    with open_space(path) as space:
        history = history_of(space)
        states = {v: state_of(space, v) for v, _, _ in history if v >= 2}
    return states, history


def wal_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if wal.parse_segment_name(p.name))


def segment_sizes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in path.iterdir() if wal.parse_segment_name(p.name)}


def bucket_of(location: str) -> Bucket:
    return Bucket.open(S3Location.parse(location))


def objects(location: str, under: str) -> dict[str, int]:
    """Key (under the location's prefix) -> size, of the objects under `under`."""
    where = S3Location.parse(location)
    base = len(where.key(""))
    return {key[base:]: size for key, size in bucket_of(location).list_objects(where.key(under))}


def corrupt(location: str, key: str) -> None:
    """Flip one byte of an uploaded object, keeping its size (written straight to S3)."""
    bucket = bucket_of(location)
    full = S3Location.parse(location).key(key)
    data = bytearray(bucket.get(full))
    data[len(data) // 2] ^= 0x40
    bucket.put(full, bytes(data))


def siblings(path: Path) -> list[str]:
    return sorted(entry.name for entry in path.parent.iterdir())


def run_cli(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protobase.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


@pytest.fixture
def location(s3_bucket: str) -> str:
    return f"s3://{s3_bucket}/backups/db"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source"
    build(path)
    assert len(segment_sizes(path)) >= 3
    return path


# --------------------------------------------------------------------------
# round trip, incremental, resume
# --------------------------------------------------------------------------


def test_round_trip_restores_every_version_and_the_history(
    source: Path, location: str, tmp_path: Path
) -> None:
    states, history = snapshot(source)
    report = backup(source, location)
    assert not report.hot
    assert (report.first_version, report.last_version) == (history[0][0], history[-1][0])
    assert report.objects == len(segment_sizes(source))  # one object per segment
    assert report.bytes == report.uploaded_bytes == wal_bytes(source)
    assert report.last_time.timestamp() == pytest.approx(history[-1][1], abs=1e-6)

    dest = tmp_path / "restored"
    restored = restore(location, dest)
    assert restored.manifest == report.manifest
    assert restored.version == history[-1][0]
    assert restored.bytes == restored.wal_bytes == wal_bytes(source)
    assert segment_sizes(dest) == segment_sizes(source)
    assert snapshot(dest) == (states, history)
    assert fsck(dest).clean
    assert siblings(dest) == ["restored", "source"]  # no temporary directory left


def test_a_second_backup_uploads_only_the_new_bytes(
    source: Path, location: str, tmp_path: Path
) -> None:
    first = backup(source, location)
    before = segment_sizes(source)
    with open_space(source) as space:
        commit_rounds(space, 14, 10)
    after = segment_sizes(source)
    grown = [name for name in after if after[name] != before.get(name)]
    assert len(grown) >= 2  # the old last segment and new ones

    second = backup(source, location)
    assert second.uploaded_bytes == wal_bytes(source) - first.bytes
    assert second.uploaded_objects == len(grown)
    assert second.reused_objects == first.objects
    assert second.bytes == wal_bytes(source)

    third = backup(source, location)  # nothing changed: only a manifest
    assert (third.uploaded_objects, third.uploaded_bytes) == (0, 0)
    assert third.objects == second.objects
    stored = objects(location, "data/")
    assert sum(stored.values()) == wal_bytes(source)  # no byte stored twice
    assert len(objects(location, "manifests/")) == 3

    dest = tmp_path / "restored"
    restore(location, dest)
    assert snapshot(dest) == snapshot(source)
    assert fsck(dest).clean


def test_an_interrupted_backup_is_invisible_and_the_next_run_reuses_its_uploads(
    source: Path, location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done: list[str] = []
    calls = {"data": 0}
    lock = threading.Lock()
    real_upload, real_put = Bucket.upload_file, Bucket.put

    def failing_third(key: str) -> None:
        if "/data/" in key:
            with lock:
                calls["data"] += 1
                if calls["data"] == 3:
                    raise S3Unavailable(f"injected failure uploading {key}")

    def upload_file(self: Bucket, path: Any, key: str) -> None:
        failing_third(key)
        real_upload(self, path, key)
        with lock:
            done.append(key)

    def put(self: Bucket, key: str, body: bytes, **kwargs: Any) -> str:
        failing_third(key)
        etag = real_put(self, key, body, **kwargs)
        with lock:
            done.append(key)
        return etag

    monkeypatch.setattr(Bucket, "upload_file", upload_file)
    monkeypatch.setattr(Bucket, "put", put)
    with pytest.raises(S3Unavailable, match="injected"):
        backup(source, location)
    monkeypatch.undo()

    assert done and all("/data/" in key for key in done)
    assert objects(location, "manifests/") == {}
    with pytest.raises(BackupNotFoundError):
        restore(location, tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()

    report = backup(source, location)
    assert report.reused_objects == len(done)
    assert report.uploaded_objects == report.objects - len(done)
    assert report.bytes == wal_bytes(source)
    dest = tmp_path / "restored"
    restore(location, dest)
    assert snapshot(dest) == snapshot(source)


def test_no_manifest_unless_the_bucket_lists_every_object(
    source: Path, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost: list[str] = []

    def upload_that_is_lost(self: Bucket, path: Any, key: str) -> None:
        lost.append(key)  # S3 said yes, but the object never appears

    monkeypatch.setattr(Bucket, "upload_file", upload_that_is_lost)
    with pytest.raises(StorageError, match="no backup was written"):
        backup(source, location)
    assert lost
    assert objects(location, "manifests/") == {}


def test_only_complete_records_are_backed_up(source: Path, location: str, tmp_path: Path) -> None:
    complete = wal_bytes(source)
    last = max(segment_sizes(source))
    with open(source / last, "ab") as handle:  # a torn commit: opening would cut it
        handle.write(wal.RECORD_MAGIC + b"\x00\x00\x10\x00" + os.urandom(40))
    report = backup(source, location)
    assert report.bytes == complete
    dest = tmp_path / "restored"
    restore(location, dest)
    assert wal_bytes(dest) == complete
    assert fsck(dest).clean and not fsck(dest).notes


# --------------------------------------------------------------------------
# --at VERSION / TIME, pack
# --------------------------------------------------------------------------


def test_restore_at_a_version_or_a_time(tmp_path: Path, location: str) -> None:
    path = tmp_path / "source"
    build(path, rounds=12, pause=0.003)
    states, history = snapshot(path)
    backup(path, location)

    version = history[7][0]
    dest = tmp_path / "at-version"
    report = restore(location, dest, at_version=version)
    assert report.version == version
    restored_states, restored_history = snapshot(dest)
    assert restored_history == history[:8]
    assert restored_states == {v: s for v, s in states.items() if v <= version}
    assert fsck(dest).clean

    (earlier, _, _), (later, later_time, _) = history[4], history[5]
    between = dt.datetime.fromtimestamp((history[4][1] + later_time) / 2, dt.UTC)
    report = restore(location, tmp_path / "at-time", at_time=between)
    assert report.version == earlier
    with open_space(tmp_path / "at-time") as space:
        assert space.storage.read_root().version == earlier
        assert state_of(space) == states[earlier]

    exactly = dt.datetime.fromtimestamp(later_time, dt.UTC)  # at or before: included
    assert restore(location, tmp_path / "exact", at_time=exactly).version == later
    local_naive = between.astimezone().replace(tzinfo=None)  # naive = local time
    assert restore(location, tmp_path / "naive", at_time=local_naive).version == earlier

    with pytest.raises(BackupNotFoundError, match=f"version {history[-1][0] + 1}"):
        restore(location, tmp_path / "future", at_version=history[-1][0] + 1)
    too_early = dt.datetime.fromtimestamp(history[0][1] - 60, dt.UTC)
    with pytest.raises(BackupNotFoundError, match="at or before"):
        restore(location, tmp_path / "past", at_time=too_early)
    with pytest.raises(BackupArgumentError):
        restore(location, tmp_path / "both", at_version=3, at_time=between)
    for name in ("future", "past", "both"):
        assert not (tmp_path / name).exists()


def test_after_pack_the_new_generation_is_uploaded_and_old_backups_stay_restorable(
    source: Path, location: str, tmp_path: Path
) -> None:
    states, history = snapshot(source)
    first = backup(source, location)
    pack(source)
    with open_space(source) as space:
        commit_rounds(space, 14, 4)
    second = backup(source, location)
    assert second.generation == first.generation + 1
    assert second.uploaded_bytes == second.bytes == wal_bytes(source)
    assert second.first_version == history[-1][0]  # pack kept only the latest version

    latest = restore(location, tmp_path / "latest")
    assert latest.manifest == second.manifest
    assert snapshot(tmp_path / "latest") == snapshot(source)
    old = restore(location, tmp_path / "old", at_version=5)
    assert old.manifest == first.manifest
    with open_space(tmp_path / "old") as space:
        assert space.storage.read_root().version == 5
        assert state_of(space) == states[5]
    assert fsck(tmp_path / "latest").clean and fsck(tmp_path / "old").clean
    report = verify(location)
    assert report.clean, report.problems
    assert report.databases_checked == 2  # one per generation


# --------------------------------------------------------------------------
# verify and corruption
# --------------------------------------------------------------------------


def test_verify_passes_clean_backups_and_reports_a_damaged_object(
    source: Path, location: str, tmp_path: Path
) -> None:
    backup(source, location)
    with open_space(source) as space:
        commit_rounds(space, 14, 6)
    latest = backup(source, location)
    report = verify(location)
    assert report.clean, report.problems
    assert (report.manifests, report.objects) == (2, len(objects(location, "data/")))
    assert report.databases_checked == 1  # the first backup is a prefix of the second
    assert report.versions_checked == latest.last_version and report.atoms_checked > 0
    assert report.notes == []

    damaged = max(objects(location, "data/").items(), key=lambda item: item[1])[0]
    corrupt(location, damaged)
    report = verify(location)
    assert not report.clean
    assert any(damaged in problem and "xxh3-64" in problem for problem in report.problems)

    dest = tmp_path / "restored"
    with pytest.raises(CorruptionError, match=damaged):
        restore(location, dest)
    assert not dest.exists()
    assert siblings(dest) == ["source"]  # the partial restore was removed


def test_verify_names_the_backup_made_from_damaged_data_and_clears_the_earlier_one(
    source: Path, location: str
) -> None:
    first = backup(source, location)
    before = segment_sizes(source)
    with open_space(source) as space:  # closing writes a checkpoint covering everything
        commit_rounds(space, 14, 8)
    last = max(segment_sizes(source))
    assert last not in before
    data = bytearray((source / last).read_bytes())
    parsed = wal.parse_segment_name(last)
    assert parsed is not None
    record = wal.scan_segment(source / last, bytes(data), 0, False, *parsed).records[0]
    data[record.data_offset + 1] ^= 0x10
    (source / last).write_bytes(bytes(data))
    second = backup(source, location)  # cold: what the checkpoint covers is not re-read

    report = verify(location)
    assert report.problems
    assert all(second.manifest in problem for problem in report.problems)
    assert not any(first.manifest in problem for problem in report.problems)
    assert report.databases_checked == 2  # the damaged one, then the first on its own


def test_verify_reports_a_damaged_manifest_and_leftover_objects(
    source: Path, location: str, tmp_path: Path
) -> None:
    report = backup(source, location)
    corrupt(location, report.manifest)
    result = verify(location)
    assert any(report.manifest in problem for problem in result.problems)
    assert any("named by no backup" in note for note in result.notes)
    with pytest.raises(CorruptionError, match="manifest is damaged"):
        restore(location, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


# --------------------------------------------------------------------------
# hot backup
# --------------------------------------------------------------------------


@pytest.fixture
def open_source(tmp_path: Path) -> Iterator[ObjectSpace]:
    with open_space(tmp_path / "source") as space:
        commit_rounds(space, 0, 6)
        yield space


def test_hot_backup_while_another_thread_commits(
    open_source: ObjectSpace, location: str, tmp_path: Path
) -> None:
    storage = open_source.storage
    assert isinstance(storage, StandaloneFileStorage)
    stop = threading.Event()
    failures: list[BaseException] = []
    committed = [0]

    def keep_committing() -> None:
        try:
            number = 100
            while not stop.is_set():
                # A short pause after each commit: unthrottled, the committer grows
                # the database as fast as the backups copy it (each backup and
                # restore then takes seconds), and each backup still runs while
                # commits land (checked below).
                commit_rounds(open_source, number, 1, pause=0.005)
                number += 1
                committed[0] += 1
        except BaseException as exc:
            failures.append(exc)

    committer = threading.Thread(target=keep_committing)
    committer.start()
    try:
        reports = []
        during = []
        for _ in range(3):
            time.sleep(0.15)
            before = committed[0]
            reports.append(backup(storage, location))
            during.append(committed[0] - before)
    finally:
        stop.set()
        committer.join(timeout=30)
    assert not failures
    assert all(count > 0 for count in during), f"no commit while a backup ran: {during}"
    assert all(report.hot for report in reports)
    assert reports[0].last_version < reports[1].last_version < reports[2].last_version
    assert reports[2].reused_objects >= 1 and reports[2].uploaded_bytes < reports[2].bytes

    for index, report in enumerate(reports):
        dest = tmp_path / f"restored-{index}"
        restored = restore(location, dest, at_version=report.last_version)
        assert restored.version == report.last_version
        expected = state_of(open_source, report.last_version)
        with open_space(dest) as space:
            assert space.storage.read_root().version == report.last_version
            assert state_of(space) == expected
        assert fsck(dest).clean


def test_a_backup_view_makes_what_it_names_durable(
    open_source: ObjectSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_source.storage
    assert isinstance(storage, StandaloneFileStorage)
    synced: list[int] = []
    real = wal.durable_write
    monkeypatch.setattr(wal, "durable_write", lambda fd: (synced.append(fd), real(fd))[1])
    storage.put_batch(CommitBatch(os.urandom(16), [b"appended, not yet synced"]))
    assert synced == []
    with storage.backup_view() as view:
        assert len(synced) == 1
        number, end = view.segments[-1]
        assert view.segment_path(number).stat().st_size == end
        assert view.growing == number


def test_pack_waits_while_a_backup_view_is_held(open_source: ObjectSpace) -> None:
    storage = open_source.storage
    assert isinstance(storage, StandaloneFileStorage)
    packer = threading.Thread(target=open_source.pack)
    with storage.backup_view() as view:
        packer.start()
        packer.join(timeout=0.5)
        assert packer.is_alive()
        commit_rounds(open_source, 50, 1)  # commits go on meanwhile
        for number, end in view.segments:
            assert view.segment_path(number).stat().st_size >= end
    packer.join(timeout=30)
    assert not packer.is_alive()
    assert all(not view.segment_path(number).exists() for number, _ in view.segments)


# --------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------


def test_restore_refuses_a_destination_that_is_not_empty(
    source: Path, location: str, tmp_path: Path
) -> None:
    backup(source, location)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(StorageError, match="not empty"):
        restore(location, dest)
    assert sorted(os.listdir(dest)) == ["keep.txt"]
    assert siblings(dest) == ["dest", "source"]

    empty = tmp_path / "empty"
    empty.mkdir()
    restore(location, empty)  # an empty directory is fine
    assert segment_sizes(empty) == segment_sizes(source)


def test_a_location_without_backups_is_refused(location: str, tmp_path: Path) -> None:
    with pytest.raises(BackupNotFoundError, match="no backup"):
        restore(location, tmp_path / "dest")
    with pytest.raises(BackupNotFoundError, match="no backup"):
        verify(location)
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("bad", ["bucket/prefix", "s3://", "s3:///prefix", "/local/dir"])
def test_malformed_locations_are_refused(
    bad: str, source: Path, tmp_path: Path, s3_bucket: str
) -> None:
    with pytest.raises(BackupArgumentError, match="s3://bucket/prefix"):
        backup(source, bad)
    with pytest.raises(BackupArgumentError, match="s3://bucket/prefix"):
        restore(bad, tmp_path / "dest")
    with pytest.raises(BackupArgumentError, match="s3://bucket/prefix"):
        verify(bad)
    assert not (tmp_path / "dest").exists()
    assert objects(f"s3://{s3_bucket}", "") == {}


def test_backup_refuses_sources_it_cannot_read(source: Path, location: str, tmp_path: Path) -> None:
    with open_space(source), pytest.raises(StorageError, match="already open"):
        backup(source, location)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StorageError, match="not a ProtoBase database"):
        backup(tmp_path / "empty", location)
    with pytest.raises(StorageError, match="does not exist"):
        backup(tmp_path / "missing", location)
    with pytest.raises(BackupArgumentError, match="backup_cluster"):
        backup("http://127.0.0.1:7101", location)
    assert objects(location, "") == {}


# --------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------


def test_cli_backup_restore_at_and_verify(source: Path, location: str, tmp_path: Path) -> None:
    states, history = snapshot(source)
    result = run_cli("backup", source, location)
    assert result.returncode == 0, result.stderr
    assert "uploaded" in result.stdout and "manifests/" in result.stdout

    dest = tmp_path / "at-5"
    result = run_cli("restore", location, dest, "--at", "5")
    assert result.returncode == 0, result.stderr
    assert "version 5" in result.stdout
    with open_space(dest) as space:
        assert state_of(space) == states[5]

    when = dt.datetime.fromtimestamp(history[8][1], dt.UTC).isoformat()
    result = run_cli("restore", location, tmp_path / "at-time", "--at", when)
    assert result.returncode == 0, result.stderr
    assert f"version {history[8][0]} " in result.stdout

    # Without an offset, TIME is local time: here 5:30 ahead of UTC.
    india = dt.timezone(dt.timedelta(hours=5, minutes=30))
    naive = dt.datetime.fromtimestamp(history[6][1], india).replace(tzinfo=None)
    result = run_cli(
        "restore", location, tmp_path / "naive", "--at", naive.isoformat(), TZ="IST-05:30"
    )
    assert result.returncode == 0, result.stderr
    assert f"version {history[6][0]} " in result.stdout

    result = run_cli("backup", "verify", location)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("clean")

    damaged = next(iter(objects(location, "data/")))
    corrupt(location, damaged)
    result = run_cli("backup", "verify", location)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "PROBLEM" in result.stdout and damaged in result.stdout
    result = run_cli("restore", location, tmp_path / "damaged")
    assert result.returncode == 1
    assert damaged in result.stderr
    assert not (tmp_path / "damaged").exists()


def test_cli_usage_errors_exit_2(source: Path, location: str, tmp_path: Path) -> None:
    # A node's URL is a cluster backup; one nobody answers at is a clear error.
    result = run_cli("backup", "http://127.0.0.1:9", location, PROTOBASE_TOKEN="x")
    assert result.returncode == 2
    assert "http://127.0.0.1:9/status.json did not answer" in result.stderr
    result = run_cli("backup", source, "not-a-location")
    assert result.returncode == 2 and "s3://bucket/prefix" in result.stderr
    result = run_cli("restore", location, tmp_path / "dest")
    assert result.returncode == 2 and "no backup" in result.stderr
    result = run_cli("restore", location, tmp_path / "dest", "--at", "yesterday")
    assert result.returncode == 2 and "ISO-8601" in result.stderr
    result = run_cli("backup", source)
    assert result.returncode == 2 and "LOCATION" in result.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    run_cli("backup", source, location)
    result = run_cli("restore", location, tmp_path / "full")
    assert result.returncode == 2 and "not empty" in result.stderr
    assert not (tmp_path / "dest").exists()
