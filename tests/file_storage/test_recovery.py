"""Recovery on open: torn tails, bit flips, a damaged checkpoint, and the directory lock.

A crash leaves the checkpoint of the last clean close (or of the last
`checkpoint_bytes` threshold) next to a WAL that may end in a record that was
never acknowledged. These tests build such images by hand: they save the
files of one state, commit once more, and then cut or damage the bytes.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protobase import (
    AtomPointer,
    CorruptionError,
    Dictionary,
    ObjectSpace,
    StandaloneFileStorage,
    StorageError,
)
from protobase.atoms import unframe_atom
from protobase.maintenance import fsck
from protobase.storage import wal
from protobase.storage.checkpoint import CHECKPOINT_NAME, Checkpoint, write_checkpoint

DATABASE = "app"
HEADER = wal.SEGMENT_HEADER_SIZE


def read_files(path: Path) -> dict[str, bytes]:
    """The bytes of every file of a storage directory (the lock file aside)."""
    return {name: (path / name).read_bytes() for name in os.listdir(path) if name != "LOCK"}


def write_files(path: Path, files: dict[str, bytes]) -> None:
    """Make `path` hold exactly `files` (and its lock file)."""
    for name in os.listdir(path):
        if name != "LOCK":
            os.unlink(path / name)
    for name, data in files.items():
        (path / name).write_bytes(data)


def commit_value(path: Path, value: object, segment_bytes: int | None = None) -> int:
    """Open `path`, set root "x" to `value`, close; return the new root version."""
    options = {} if segment_bytes is None else {"segment_bytes": segment_bytes}
    with ObjectSpace(StandaloneFileStorage(path, **options)) as space:
        if DATABASE not in space.list_databases():
            space.new_database(DATABASE)
        db = space.open_database(DATABASE)
        with db.transaction() as tr:
            tr.set_root_object("x", value)
        assert tr.committed_root is not None
        return tr.committed_root.version


def read_state(path: Path) -> tuple[int, object]:
    """Open `path` and return (root version, value of root "x")."""
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        version = space.storage.read_root().version
        history = space.history()
        assert history[-1].version == version
        tr = space.open_database(DATABASE).new_read_only_transaction()
        try:
            return version, tr.get_root_object("x")
        finally:
            tr.abort()


def records_of(path: Path, name: str) -> list[wal.RecordInfo]:
    """Every record of segment file `name` (parsed from its bytes, not through a storage)."""
    parsed = wal.parse_segment_name(name)
    assert parsed is not None
    data = (path / name).read_bytes()
    scan = wal.scan_segment(path / name, data, 0, False, *parsed)
    return scan.records


def segment_names(path: Path) -> list[str]:
    return sorted(name for name in os.listdir(path) if wal.parse_segment_name(name))


# --------------------------------------------------------------------------
# Torn tail: the last record cut at every byte
# --------------------------------------------------------------------------


@dataclass
class TailCase:
    """A directory whose last commit is to be torn."""

    path: Path
    before: dict[str, bytes]
    """Files after the clean close that preceded the last commit."""
    after: dict[str, bytes]
    """Files after the last commit and a clean close."""
    segment: str
    """The segment file holding the last record."""
    start: int
    """Offset of the last record in it."""
    end: int
    version: int
    """Root version before the last commit."""


def make_tail_case(path: Path, rolled: bool) -> TailCase:
    for value in range(1, 4):
        version = commit_value(path, value)
    before = read_files(path)
    segment = segment_names(path)[-1]
    size = len(before[segment])
    # segment_bytes just above the current size makes the last commit start a new segment
    commit_value(path, "last", segment_bytes=size + 1 if rolled else None)
    after = read_files(path)
    if rolled:
        segment = segment_names(path)[-1]
        assert segment not in before, "the last commit did not start a new segment"
        start = 0
    else:
        start = size
    [last] = [r for r in records_of(path, segment) if r.offset >= start]
    assert last.offset + last.size == len(after[segment])
    return TailCase(path, before, after, segment, start, len(after[segment]), version)


@pytest.fixture(params=["same-segment", "new-segment"])
def tail_case(request: pytest.FixtureRequest, tmp_path: Path) -> TailCase:
    return make_tail_case(tmp_path / "db", rolled=request.param == "new-segment")


def crash_image(case: TailCase, cut: int, checkpoint: str) -> None:
    """The directory as a crash while writing the last record could leave it.

    checkpoint: "old" keeps the checkpoint of the close before the last commit
    (what a crash leaves), "none" removes it so that recovery scans every
    segment, "new" keeps the one written after the last commit.
    """
    files = dict(case.after)
    files[case.segment] = files[case.segment][:cut]
    if checkpoint == "old":
        files[CHECKPOINT_NAME] = case.before[CHECKPOINT_NAME]
    elif checkpoint == "none":
        del files[CHECKPOINT_NAME]
    write_files(case.path, files)


def assert_recovered_to_previous(case: TailCase) -> None:
    assert read_state(case.path) == (case.version, 3)
    segment = case.path / case.segment
    if case.start == 0:  # the torn record was the first of its segment
        assert not segment.exists() or segment.stat().st_size == HEADER
    else:
        assert segment.stat().st_size == case.start, "the torn tail was not truncated"


@pytest.mark.parametrize("checkpoint", ["old", "none"])
def test_torn_last_record_recovers_the_previous_commit(
    tail_case: TailCase, checkpoint: str
) -> None:
    case = tail_case
    for cut in range(case.start, case.end):
        crash_image(case, cut, checkpoint)
        try:
            assert_recovered_to_previous(case)
        except AssertionError as exc:
            raise AssertionError(f"cut at offset {cut} of {case.segment}: {exc}") from exc


@pytest.mark.parametrize("checkpoint", ["old", "none"])
def test_commit_after_recovering_a_torn_tail_survives_reopen(
    tail_case: TailCase, checkpoint: str
) -> None:
    case = tail_case
    rng = random.Random(len(case.after[case.segment]))
    middle = rng.sample(range(case.start + 1, case.end - 1), 6)
    for cut in [case.start, case.start + 1, *middle, case.end - 1]:
        crash_image(case, cut, checkpoint)
        version = commit_value(case.path, f"after cut {cut}")
        assert version == case.version + 1
        assert read_state(case.path) == (version, f"after cut {cut}")
        report = fsck(case.path)
        assert report.clean, (cut, report.problems)


def test_complete_last_record_is_kept_without_its_checkpoint(tail_case: TailCase) -> None:
    case = tail_case
    for checkpoint in ["old", "none"]:
        crash_image(case, case.end, checkpoint)
        assert read_state(case.path) == (case.version + 1, "last")


@pytest.mark.parametrize("filler", ["zeros", "garbage"])
def test_torn_tail_followed_by_unwritten_blocks_is_truncated(
    tail_case: TailCase, filler: str
) -> None:
    """A crash can leave a file longer than what was written (zeros or old disk blocks)."""
    case = tail_case
    rng = random.Random(7)
    # a new segment's header was synced before any record went in; damage there is
    # not a torn record (scan_segment treats a bad segment header as corruption)
    first = max(case.start, HEADER)
    for cut in [first, (first + case.end) // 2, case.end - 1]:
        crash_image(case, cut, "old")
        extra = bytes(4096) if filler == "zeros" else rng.randbytes(4096).replace(b"PB", b"pb")
        with open(case.path / case.segment, "ab") as segment:
            segment.write(extra)
        assert_recovered_to_previous(case)


def test_checkpoint_whose_tail_lies_past_the_end_of_the_wal_is_refused(
    tail_case: TailCase,
) -> None:
    """The checkpoint says those bytes were acknowledged, so missing bytes are lost commits."""
    case = tail_case
    for cut in [case.start, (case.start + case.end) // 2, case.end - 1]:
        crash_image(case, cut, "new")
        image = read_files(case.path)
        with pytest.raises(CorruptionError) as raised:
            StandaloneFileStorage(case.path).close()
        assert case.segment in str(raised.value)
        assert "offset" in str(raised.value)
        assert read_files(case.path) == image, f"cut at {cut}: the refused open wrote"
        assert not fsck(case.path).clean


# --------------------------------------------------------------------------
# Bit flips in acknowledged records
# --------------------------------------------------------------------------


@dataclass
class ManySegments:
    path: Path
    files: dict[str, bytes]
    """Files after a clean close."""
    early_checkpoint: bytes
    """The checkpoint of the first clean close: recovery replays everything after it."""
    segments: list[str]


@pytest.fixture
def many_segments(tmp_path: Path) -> ManySegments:
    path = tmp_path / "db"
    with ObjectSpace(StandaloneFileStorage(path, segment_bytes=4096)) as space:
        space.new_database(DATABASE)
    early = (path / CHECKPOINT_NAME).read_bytes()
    with ObjectSpace(StandaloneFileStorage(path, segment_bytes=4096)) as space:
        db = space.open_database(DATABASE)
        for value in range(200):
            with db.transaction() as tr:
                tr.set_root_object("x", value)
                tr.set_root_object(f"key{value % 8}", Dictionary({value: "v" * 50}))
            segments = segment_names(path)
            if len(segments) >= 4 and len(records_of(path, segments[-1])) >= 3:
                break
    assert len(segments) >= 4 and len(records_of(path, segments[-1])) >= 3
    return ManySegments(path, read_files(path), early, segments)


def flip_bit(data: bytes, offset: int, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[offset] ^= 1 << bit
    return bytes(damaged)


def damaged_image(case: ManySegments, name: str, offset: int, bit: int, checkpoint: str) -> None:
    files = dict(case.files)
    files[name] = flip_bit(files[name], offset, bit)
    if checkpoint == "early":
        files[CHECKPOINT_NAME] = case.early_checkpoint
    elif checkpoint == "none":
        del files[CHECKPOINT_NAME]
    write_files(case.path, files)


def assert_open_names(case: ManySegments, name: str, offset: int) -> None:
    with pytest.raises(CorruptionError) as raised:
        StandaloneFileStorage(case.path).close()
    message = str(raised.value)
    assert name in message and f"offset {offset}" in message, message


@pytest.mark.parametrize("checkpoint", ["early", "none"])
def test_bit_flip_in_a_record_followed_by_others_is_corruption(
    many_segments: ManySegments, checkpoint: str
) -> None:
    case = many_segments
    rng = random.Random(11)
    last = case.segments[-1]
    records = records_of(case.path, last)
    assert len(records) >= 2
    record = records[(len(records) - 1) // 2]  # never the last one
    for offset in range(record.offset, record.offset + record.size):
        damaged_image(case, last, offset, rng.randrange(8), checkpoint)
        try:
            assert_open_names(case, last, record.offset)
        except AssertionError as exc:
            raise AssertionError(f"flip at byte {offset} of {last}: {exc}") from exc


@pytest.mark.parametrize("checkpoint", ["early", "none"])
def test_bit_flip_in_an_earlier_segment_is_corruption(
    many_segments: ManySegments, checkpoint: str
) -> None:
    case = many_segments
    rng = random.Random(12)
    name = case.segments[1]
    records = records_of(case.path, name)
    # the first and the last record of a segment that is not the last one
    for record in [records[0], records[-1]]:
        for offset in rng.sample(range(record.offset, record.offset + record.size), 20):
            damaged_image(case, name, offset, rng.randrange(8), checkpoint)
            assert_open_names(case, name, record.offset)
    for offset in range(HEADER):  # the segment header
        damaged_image(case, name, offset, rng.randrange(8), checkpoint)
        assert_open_names(case, name, 0)


def test_bit_flip_in_the_last_record_is_a_torn_tail(many_segments: ManySegments) -> None:
    """A bad record with no valid record after it was never acknowledged (module docstring)."""
    case = many_segments
    last = case.segments[-1]
    record = records_of(case.path, last)[-1]
    with ObjectSpace(StandaloneFileStorage(case.path)) as space:
        expected_version = space.storage.read_root().version - 1
    for offset in [
        record.offset,
        record.offset + record.size // 2,
        record.offset + record.size - 1,
    ]:
        damaged_image(case, last, offset, 0, "early")
        with StandaloneFileStorage(case.path) as storage:
            assert storage.read_root().version == expected_version
        assert (case.path / last).stat().st_size == record.offset


def test_bit_flip_behind_the_checkpoint_is_found_by_fsck_and_on_read(
    many_segments: ManySegments,
) -> None:
    """Open does not rescan what the checkpoint indexes; fsck and reads verify it."""
    case = many_segments
    name = case.segments[1]
    record = records_of(case.path, name)[-1]
    damaged_image(case, name, record.data_offset + 2, 3, "current")
    report = fsck(case.path)
    assert not report.clean
    assert any(name in p and f"offset {record.offset}" in p for p in report.problems), report
    with StandaloneFileStorage(case.path) as storage:
        pointer = AtomPointer(record.transaction_id, 0)  # the flipped byte is in atom 0
        with pytest.raises(CorruptionError):
            unframe_atom(storage.get_atoms([pointer])[0], pointer)


def test_bit_flip_in_the_checkpoint_is_corruption(many_segments: ManySegments) -> None:
    case = many_segments
    rng = random.Random(13)
    checkpoint = case.files[CHECKPOINT_NAME]
    offsets = sorted({*range(16), *rng.sample(range(16, len(checkpoint)), 150)})
    for offset in offsets:
        files = dict(case.files)
        files[CHECKPOINT_NAME] = flip_bit(checkpoint, offset, rng.randrange(8))
        write_files(case.path, files)
        with pytest.raises(CorruptionError) as raised:
            StandaloneFileStorage(case.path).close()
        assert CHECKPOINT_NAME in str(raised.value), (offset, str(raised.value))
        assert not fsck(case.path).clean


def test_removing_a_damaged_checkpoint_rebuilds_the_index(many_segments: ManySegments) -> None:
    """The CorruptionError for a checkpoint says to remove it; that must not lose data."""
    case = many_segments
    expected = read_state(case.path)
    os.unlink(case.path / CHECKPOINT_NAME)
    assert read_state(case.path) == expected
    assert fsck(case.path).clean


def test_removing_the_checkpoint_after_a_pack_keeps_the_data(tmp_path: Path) -> None:
    """After a pack the WAL is generation 2; without a checkpoint it must still be found."""
    path = tmp_path / "db"
    commit_value(path, "first")
    commit_value(path, "second")
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        space.pack()
    expected = read_state(path)
    os.unlink(path / CHECKPOINT_NAME)
    try:
        with ObjectSpace(StandaloneFileStorage(path)) as space:
            version = space.storage.read_root().version
            databases = space.list_databases()
    except StorageError:
        return  # refusing to open (naming the problem) is acceptable; deleting data is not
    assert (version, databases) == (expected[0], [DATABASE]), "the packed WAL was discarded"
    assert read_state(path) == expected


# --------------------------------------------------------------------------
# Bytes recovery did not write: refused, never truncated or removed
# --------------------------------------------------------------------------


def assert_refused_without_change(
    path: Path, error: type[StorageError], *names: str
) -> StorageError:
    """Opening `path` raises `error` naming each of `names`; no file changed (LOCK aside)."""
    image = read_files(path)
    with pytest.raises(error) as raised:
        StandaloneFileStorage(path).close()
    message = str(raised.value)
    assert all(name in message for name in names), message
    assert read_files(path) == image, "the refused open changed the directory"
    assert not fsck(path).clean
    assert read_files(path) == image, "fsck changed the directory"
    return raised.value


def next_segment(path: Path) -> tuple[str, int, int]:
    """(file name, generation, number) of the segment the next roll would create."""
    generation, number = max(
        parsed for name in segment_names(path) if (parsed := wal.parse_segment_name(name))
    )
    return wal.segment_name(generation, number + 1), generation, number + 1


@pytest.mark.parametrize("size", [5000, 10])
def test_segment_of_random_bytes_is_corruption(tmp_path: Path, size: int) -> None:
    """Not a header that never reached the disk: someone's bytes, or damage."""
    path = tmp_path / "db"
    path.mkdir()
    name = wal.segment_name(1, 1)
    (path / name).write_bytes(b"X" + random.Random(size).randbytes(size - 1))
    assert_refused_without_change(path, CorruptionError, name, "offset 0")
    assert sorted(os.listdir(path)) == ["LOCK", name]


@pytest.mark.parametrize("checkpoint", ["kept", "none"])
@pytest.mark.parametrize("header", ["generation", "number", "magic"])
def test_last_segment_whose_header_is_not_its_own_is_corruption(
    tmp_path: Path, header: str, checkpoint: str
) -> None:
    path = tmp_path / "db"
    commit_value(path, 1)
    commit_value(path, 2)
    name, generation, number = next_segment(path)
    headers = {
        "generation": wal.segment_header(generation + 7, number),
        "number": wal.segment_header(generation, number + 7),
        "magic": b"NOTPBWAL" + wal.segment_header(generation, number)[8:],
    }
    (path / name).write_bytes(headers[header] + b"PBR1 not a record")
    if checkpoint == "none":
        os.unlink(path / CHECKPOINT_NAME)
    assert_refused_without_change(path, CorruptionError, name, "offset 0")


@pytest.mark.parametrize("contents", ["empty", "header prefix", "zeros"])
def test_last_segment_whose_header_never_reached_disk_is_started_again(
    tmp_path: Path, contents: str
) -> None:
    """What a crash in the middle of starting a segment leaves (kept, see wal's docstring)."""
    path = tmp_path / "db"
    version = commit_value(path, "kept")
    name, generation, number = next_segment(path)
    header = wal.segment_header(generation, number)
    data = {"empty": b"", "header prefix": header[:7], "zeros": bytes(4096)}[contents]
    (path / name).write_bytes(data)
    assert read_state(path) == (version, "kept")
    assert (path / name).read_bytes() == header


def test_checkpoint_of_a_generation_not_on_disk_removes_nothing(tmp_path: Path) -> None:
    """A checkpoint of generation 2 next to generation 1's files: those are not leftovers."""
    path = tmp_path / "db"
    commit_value(path, "first")
    commit_value(path, "second")
    generation_1 = read_files(path)
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        space.pack()
    files = {**generation_1, CHECKPOINT_NAME: (path / CHECKPOINT_NAME).read_bytes()}
    write_files(path, files)
    assert_refused_without_change(path, StorageError, wal.segment_name(2, 1), "missing")


def test_segments_of_a_generation_no_pack_left_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "db"
    commit_value(path, "live")
    stranger = wal.segment_name(5, 1)
    (path / stranger).write_bytes(wal.segment_header(5, 1) + b"someone's data")
    assert_refused_without_change(path, StorageError, stranger)


def test_next_generation_file_with_a_foreign_header_is_not_a_pack_leftover(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    commit_value(path, "live")
    name = wal.segment_name(2, 1)
    (path / name).write_bytes(b"X" + random.Random(3).randbytes(999))
    assert_refused_without_change(path, CorruptionError, name, "offset 0")


@pytest.mark.parametrize("side", ["next", "previous"])
def test_leftovers_of_an_interrupted_pack_are_removed(tmp_path: Path, side: str) -> None:
    """Kept behaviour: generation G+1 before the switch, G-1 after it (file.pack)."""
    path = tmp_path / "db"
    commit_value(path, "first")
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        space.pack()  # the live generation is 2
    version = commit_value(path, "second")
    generation = 3 if side == "next" else 1
    leftover = wal.segment_name(generation, 1)
    (path / leftover).write_bytes(wal.segment_header(generation, 1) + b"PBR1 torn")
    assert read_state(path) == (version, "second")
    assert not (path / leftover).exists()


def test_non_canonical_segment_names_are_not_touched(tmp_path: Path) -> None:
    """``wal-1-1.pbw`` is no name StandaloneFileStorage writes; it is someone's file."""
    path = tmp_path / "db"
    commit_value(path, "first")
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        space.pack()  # generation 1 would be a leftover
    (path / "wal-1-1.pbw").write_bytes(b"not ours")
    version = commit_value(path, "second")
    assert read_state(path) == (version, "second")
    assert (path / "wal-1-1.pbw").read_bytes() == b"not ours"
    assert fsck(path).clean


@pytest.mark.parametrize("filler", ["none", "garbage"])
def test_missing_segment_before_the_last_is_refused(
    many_segments: ManySegments, filler: str
) -> None:
    """Recovery must not stop at the gap: the commits after it would be ignored, and the
    segment before it taken for the last one, whose torn tail would be truncated."""
    case = many_segments
    files = {**case.files, CHECKPOINT_NAME: case.early_checkpoint}
    del files[case.segments[-2]]
    if filler == "garbage":
        files[case.segments[-3]] += random.Random(5).randbytes(300).replace(b"PB", b"pb")
    write_files(case.path, files)
    assert_refused_without_change(case.path, StorageError, case.segments[-1])


def test_missing_first_segment_without_a_checkpoint_is_refused(
    many_segments: ManySegments,
) -> None:
    case = many_segments
    files = dict(case.files)
    del files[CHECKPOINT_NAME], files[case.segments[0]]
    write_files(case.path, files)
    assert_refused_without_change(case.path, StorageError, case.segments[0], "missing")


def test_checkpoint_whose_tail_is_not_one_of_its_segments_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db"
    commit_value(path, "live")
    write_checkpoint(path, Checkpoint(1, [1], (4, HEADER), []))
    assert_refused_without_change(path, CorruptionError, CHECKPOINT_NAME)


# --------------------------------------------------------------------------
# One owner at a time
# --------------------------------------------------------------------------

OPENER = textwrap.dedent(
    """
    import sys, time
    from protobase import StandaloneFileStorage, StorageError
    try:
        storage = StandaloneFileStorage(sys.argv[1])
    except StorageError as exc:
        print("StorageError:", exc, flush=True)
        sys.exit(3)
    print("opened", flush=True)
    if len(sys.argv) > 2:
        time.sleep(float(sys.argv[2]))
    storage.close()
    """
)


def run_opener(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", OPENER, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def held(tmp_path: Path) -> Iterator[StandaloneFileStorage]:
    commit_value(tmp_path / "db", "held")
    storage = StandaloneFileStorage(tmp_path / "db")
    try:
        yield storage
    finally:
        storage.close()


def test_second_opener_in_the_same_process_is_refused(held: StandaloneFileStorage) -> None:
    before = read_files(held.path)
    with pytest.raises(StorageError) as raised:
        StandaloneFileStorage(held.path)
    assert str(held.path) in str(raised.value) and "already open" in str(raised.value)
    assert read_files(held.path) == before, "the refused opener changed the directory"
    # the owner is undisturbed
    with ObjectSpace(held) as space, space.open_database(DATABASE).transaction() as tr:
        tr.set_root_object("x", "still mine")
    assert read_state(held.path)[1] == "still mine"


def test_second_opener_in_another_process_is_refused(held: StandaloneFileStorage) -> None:
    result = run_opener(held.path)
    assert result.returncode == 3, result.stderr
    assert "StorageError:" in result.stdout and "already open" in result.stdout
    held.close()
    result = run_opener(held.path)
    assert result.returncode == 0 and "opened" in result.stdout, result.stderr


def test_opening_works_after_the_owner_closes(tmp_path: Path) -> None:
    path = tmp_path / "db"
    commit_value(path, 1)
    first = StandaloneFileStorage(path)
    with pytest.raises(StorageError):
        StandaloneFileStorage(path)
    first.close()
    assert read_state(path) == (2, 1)


def test_lock_is_released_when_the_owner_process_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "db"
    commit_value(path, "before kill")
    owner = subprocess.Popen(
        [sys.executable, "-c", OPENER, str(path), "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "opened"
        with pytest.raises(StorageError, match="already open"):
            StandaloneFileStorage(path)
        owner.kill()
        owner.wait(timeout=60)
        assert read_state(path)[1] == "before kill"
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()


def test_failed_open_releases_the_lock(many_segments: ManySegments) -> None:
    case = many_segments
    damaged_image(case, case.segments[1], HEADER + 1, 0, "none")
    with pytest.raises(CorruptionError):
        StandaloneFileStorage(case.path)
    write_files(case.path, case.files)
    with StandaloneFileStorage(case.path) as storage:
        assert storage.read_root().version > 0
