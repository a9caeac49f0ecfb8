"""fsck, inspect and pack: the library functions and the `protobase` commands over them."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protobase import Dictionary, ObjectSpace, StandaloneFileStorage, maintenance
from protobase.maintenance import fsck, inspect, pack
from protobase.storage import wal
from protobase.storage.checkpoint import CHECKPOINT_NAME
from protobase.storage.file import Recovery

DATABASE = "tools"


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protobase.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def build(path: Path, rounds: int = 8, segment_bytes: int = 8 * 1024) -> None:
    """A database whose "big" root was overwritten `rounds` times, over several segments."""
    with ObjectSpace(StandaloneFileStorage(path, segment_bytes=segment_bytes)) as space:
        db = space.new_database(DATABASE)
        for round_number in range(rounds):
            with db.transaction() as tr:
                tr.set_root_object(
                    "big", Dictionary((key, f"{round_number}:{key}" * 5) for key in range(150))
                )
                tr.set_root_object("round", round_number)


def read_back(path: Path) -> tuple[int, dict[int, str]]:
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        tr = space.open_database(DATABASE).new_read_only_transaction()
        try:
            return tr.get_root_object("round"), dict(tr.get_root_object("big").items())
        finally:
            tr.abort()


def segments(path: Path) -> list[str]:
    return sorted(name for name in os.listdir(path) if wal.parse_segment_name(name))


def flip_middle_record(path: Path) -> tuple[str, int]:
    """Flip a bit inside a record of the first segment; return (file name, record offset)."""
    name = segments(path)[0]
    data = bytearray((path / name).read_bytes())
    parsed = wal.parse_segment_name(name)
    assert parsed is not None
    records = wal.scan_segment(path / name, bytes(data), 0, False, *parsed).records
    record = records[len(records) // 2]
    data[record.data_offset + 1] ^= 0x10
    (path / name).write_bytes(bytes(data))
    return name, record.offset


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "db"
    build(path)
    assert len(segments(path)) > 2
    return path


# --------------------------------------------------------------------------
# fsck
# --------------------------------------------------------------------------


def test_fsck_of_a_clean_database(database: Path) -> None:
    calls: list[tuple[int, int]] = []
    report = fsck(database, progress=lambda done, total: calls.append((done, total)))
    assert report.clean and report.problems == []
    with StandaloneFileStorage(database) as storage:
        assert report.versions_checked == len(storage.history())
    assert report.atoms_checked > 0
    assert calls and all(0 <= done <= total for done, total in calls)


def test_fsck_cli_exits_zero_for_a_clean_database(database: Path) -> None:
    result = run_cli("fsck", database)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "clean" in result.stdout and "PROBLEM" not in result.stdout


def test_fsck_reports_a_damaged_record_behind_the_checkpoint(database: Path) -> None:
    name, offset = flip_middle_record(database)
    report = fsck(database)
    assert not report.clean
    assert any(name in p and f"offset {offset}" in p for p in report.problems), report.problems
    result = run_cli("fsck", database)
    assert result.returncode != 0
    assert "PROBLEM" in result.stdout and name in result.stdout


def test_fsck_reports_corruption_found_while_opening(database: Path) -> None:
    name, offset = flip_middle_record(database)
    os.unlink(database / CHECKPOINT_NAME)  # recovery scans every segment and fails
    report = fsck(database)
    assert not report.clean
    assert any(name in p and f"offset {offset}" in p for p in report.problems), report.problems
    result = run_cli("fsck", database)
    assert result.returncode != 0 and name in result.stdout


def test_fsck_reports_a_damaged_checkpoint(database: Path) -> None:
    data = bytearray((database / CHECKPOINT_NAME).read_bytes())
    data[len(data) // 2] ^= 1
    (database / CHECKPOINT_NAME).write_bytes(bytes(data))
    report = fsck(database)
    assert not report.clean and CHECKPOINT_NAME in report.problems[0]
    assert run_cli("fsck", database).returncode != 0


def test_fsck_reports_a_missing_segment(database: Path) -> None:
    os.unlink(database / segments(database)[1])
    assert not fsck(database).clean
    assert run_cli("fsck", database).returncode != 0


def test_fsck_of_a_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    assert not fsck(missing).clean
    assert run_cli("fsck", missing).returncode != 0
    assert not missing.exists(), "fsck created the directory it was asked to check"


def test_fsck_of_a_directory_that_is_not_a_database(tmp_path: Path) -> None:
    """A checking tool must not turn an arbitrary directory into a database."""
    empty = tmp_path / "not-a-db"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    report = fsck(empty)
    assert sorted(os.listdir(empty)) == ["notes.txt"], "fsck wrote files into the directory"
    assert not report.clean


def test_fsck_of_a_database_open_elsewhere_is_not_clean(database: Path) -> None:
    with StandaloneFileStorage(database):
        report = fsck(database)
        assert not report.clean and "already open" in report.problems[0]
        assert run_cli("fsck", database).returncode != 0


def files_of(path: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file of a directory, LOCK included: its bytes, inode and modification time."""
    found = {}
    for name in os.listdir(path):
        status = os.stat(path / name)
        found[name] = ((path / name).read_bytes(), status.st_ino, status.st_mtime_ns)
    return found


def test_fsck_changes_no_file(database: Path) -> None:
    """Not the checkpoint (rewritten on close), not LOCK (its pid rewritten on open)."""
    before = files_of(database)
    assert fsck(database).clean
    assert run_cli("fsck", database).returncode == 0
    assert files_of(database) == before


def test_fsck_reports_a_torn_tail_and_leaves_it(database: Path) -> None:
    last = database / segments(database)[-1]
    end = last.stat().st_size
    with open(last, "ab") as segment:
        segment.write(b"PBR1\x00\x00\x01\x00partial record")
    before = files_of(database)
    report = fsck(database)
    assert report.clean, report.problems
    assert any(
        "torn tail" in note and last.name in note and f"offset {end}" in note
        for note in report.notes
    ), report.notes
    result = run_cli("fsck", database)
    assert result.returncode == 0, result.stdout
    assert "NOTE" in result.stdout and "torn tail" in result.stdout
    assert files_of(database) == before, "fsck truncated the torn tail"
    assert read_back(database)[0] == 7
    assert last.stat().st_size == end, "opening did not truncate the torn tail"


def test_fsck_of_a_segment_of_random_bytes_is_corruption(tmp_path: Path) -> None:
    """The reported bug: fsck truncated such a segment to a header and said "clean"."""
    path = tmp_path / "random"
    path.mkdir()
    name = wal.segment_name(1, 1)
    (path / name).write_bytes(b"X" + os.urandom(4999))
    before = files_of(path)
    report = fsck(path)
    assert not report.clean
    assert any("corruption" in p and name in p and "offset 0" in p for p in report.problems), (
        report.problems
    )
    result = run_cli("fsck", path)
    assert result.returncode != 0
    assert "corruption" in result.stdout and name in result.stdout
    assert result.stdout.strip().splitlines()[-1] != "clean"
    assert files_of(path) == before, "fsck changed the directory (or created LOCK)"


def test_fsck_reports_pack_leftovers_and_leaves_them(database: Path) -> None:
    leftover = database / wal.segment_name(2, 1)
    leftover.write_bytes(wal.segment_header(2, 1))
    before = files_of(database)
    report = fsck(database)
    assert report.clean, report.problems
    assert any(leftover.name in note and "interrupted pack" in note for note in report.notes)
    assert files_of(database) == before


def test_fsck_notices_an_open_while_it_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a LOCK file fsck takes no lock; it must not call a moving directory clean."""
    path = tmp_path / "db"
    build(path, rounds=1)
    os.unlink(path / "LOCK")
    real_plan = maintenance.plan_recovery

    def plan_then_open(directory: Path) -> Recovery:
        plan = real_plan(directory)
        StandaloneFileStorage(directory).close()
        return plan

    monkeypatch.setattr(maintenance, "plan_recovery", plan_then_open)
    report = fsck(path)
    assert not report.clean and "while fsck ran" in report.problems[-1], report.problems


# --------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------


def test_inspect_summarises_the_directory(database: Path) -> None:
    summary = inspect(database)
    with StandaloneFileStorage(database) as storage:
        history = storage.history()
        sizes = storage.segment_sizes()
        version = storage.read_root().version
    assert summary["root_version"] == version
    assert summary["commits_kept"] == len(history)
    assert summary["oldest_version"] == history[0].version
    assert [tuple(s) for s in summary["segments"]] == sizes
    assert summary["wal_bytes"] == sum(size for _, size in sizes)
    assert summary["databases"] == [DATABASE]
    recent = summary["recent_commits"]
    assert [c["version"] for c in recent] == [c.version for c in history[-10:]]
    assert all(c["bytes"] > 0 for c in recent)
    assert all(dt.datetime.fromisoformat(c["time"]).tzinfo is not None for c in recent)


def test_inspect_cli_prints_json(database: Path) -> None:
    result = run_cli("inspect", database)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["databases"] == [DATABASE]
    assert summary["root_version"] == inspect(database)["root_version"]


def test_inspect_cli_fails_cleanly_on_a_damaged_checkpoint(database: Path) -> None:
    (database / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    result = run_cli("inspect", database)
    assert result.returncode != 0
    assert CHECKPOINT_NAME in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------
# pack
# --------------------------------------------------------------------------


def test_pack_function_shrinks_and_keeps_the_data(database: Path) -> None:
    expected = read_back(database)
    calls: list[tuple[int, int]] = []
    before, after = pack(database, progress=lambda done, total: calls.append((done, total)))
    assert after < before / 3, (before, after)
    assert calls
    assert read_back(database) == expected
    with StandaloneFileStorage(database) as storage:
        assert len(storage.history()) == 1
        assert sum(size for _, size in storage.segment_sizes()) == after
    assert fsck(database).clean


def test_pack_function_keep_history(database: Path) -> None:
    with StandaloneFileStorage(database) as storage:
        versions = [c.version for c in storage.history()]
    pack(database, keep_history=dt.timedelta(hours=1))
    with StandaloneFileStorage(database) as storage:
        assert [c.version for c in storage.history()] == versions
    assert fsck(database).clean


def test_pack_cli(database: Path) -> None:
    expected = read_back(database)
    with StandaloneFileStorage(database) as storage:
        versions = [c.version for c in storage.history()]
    result = run_cli("pack", database, "--keep-seconds", "3600")
    assert result.returncode == 0, result.stderr
    with StandaloneFileStorage(database) as storage:
        assert [c.version for c in storage.history()] == versions
    result = run_cli("pack", database)
    assert result.returncode == 0, result.stderr
    assert "packed" in result.stdout and "->" in result.stdout
    before, after = (int(n) for n in result.stdout.split("WAL")[1].split("bytes")[0].split("->"))
    assert after < before
    assert read_back(database) == expected
    assert run_cli("fsck", database).returncode == 0


def test_pack_cli_of_a_database_open_elsewhere_fails_cleanly(database: Path) -> None:
    with StandaloneFileStorage(database):
        result = run_cli("pack", database)
    assert result.returncode != 0
    assert "already open" in result.stderr and "Traceback" not in result.stderr
