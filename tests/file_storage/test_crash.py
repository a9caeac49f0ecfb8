"""Crash tests: a child process commits (or packs) and is killed with SIGKILL at random moments.

After every kill the directory must open, hold every commit the child
acknowledged (printed after `commit()` returned), show no commit partly, and
pass `fsck`. The number of kills is PROTOBASE_CRASH_RUNS (default 30), so a
longer run is ``PROTOBASE_CRASH_RUNS=1000 pytest tests/file_storage/test_crash.py``;
PROTOBASE_CRASH_SEED replays one run of the random choices.

Each kill is checked on a copy of the crash image, and the next child
continues on the image itself, so recovery also runs on top of earlier
recoveries that were never followed by a clean close.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tools import load_script

from protobase import ObjectSpace, Transaction
from protobase.maintenance import fsck
from protobase.storage import wal

CHILD_SCRIPT = Path(__file__).with_name("crash_child.py")
RUNS = int(os.environ.get("PROTOBASE_CRASH_RUNS", "30"))
SEED = int(os.environ.get("PROTOBASE_CRASH_SEED", str(random.randrange(2**32))))
KILLS_PER_DIRECTORY = 10
WAIT_SECONDS = 30.0


child = load_script(CHILD_SCRIPT, "crash_child")


@dataclass(frozen=True)
class Acked:
    """A commit the child reported after `commit()` returned."""

    counter: int
    version: int
    transaction_id: bytes


class Child:
    """A running crash_child.py whose stdout lines are collected by a thread."""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        self._stderr = stderr_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD_SCRIPT), *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.stderr_path = stderr_path
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            if not raw.endswith(b"\n"):
                break  # a line cut by the kill was never fully printed
            with self._changed:
                self.lines.append(raw.decode().rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_until(self, condition: Callable[[list[str]], bool]) -> None:
        """Wait until `condition(lines)` holds; fail when the child exits or hangs."""
        deadline = time.monotonic() + WAIT_SECONDS
        with self._changed:
            while not condition(self.lines):
                if self.process.poll() is not None:
                    self._changed.wait(0.2)  # let the reader drain the pipe
                    if condition(self.lines):
                        return
                    pytest.fail(f"child exited with {self.process.returncode}:\n{self.stderr()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"child made no progress in {WAIT_SECONDS} s:\n{self.stderr()}")
                self._changed.wait(min(remaining, 0.05))

    def kill(self) -> None:
        """SIGKILL the child, reap it, and read everything it printed before."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._reader.join(WAIT_SECONDS)
        if self.process.returncode != -signal.SIGKILL:
            pytest.fail(
                f"child ended with {self.process.returncode} before it was killed:\n{self.stderr()}"
            )

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(WAIT_SECONDS)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()

    def acked(self) -> list[Acked]:
        found = []
        for line in self.lines:
            words = line.split()
            if words[0] == "commit":
                found.append(Acked(int(words[1]), int(words[2]), bytes.fromhex(words[3])))
        return found


@contextlib.contextmanager
def running_child(args: list[str], stderr_path: Path) -> Iterator[Child]:
    started = Child(args, stderr_path)
    try:
        yield started
    finally:
        started.close()


def check_crash_image(
    image: Path, scratch: Path, acked: list[Acked], every_version_kept: bool, rng: random.Random
) -> None:
    """Open a copy of `image` and check it against the acknowledged commits; then fsck it."""
    if scratch.exists():
        shutil.rmtree(scratch)
    if not image.exists():
        assert not acked, "the child acknowledged commits but its directory is gone"
        return
    shutil.copytree(image, scratch)
    with ObjectSpace(child.open_storage(str(scratch))) as space:
        if child.DATABASE not in space.list_databases():
            assert not acked, "the child acknowledged commits but the database is gone"
        else:
            check_state(space, acked, every_version_kept, rng)
    report = fsck(scratch)
    assert report.clean, report.problems
    shutil.rmtree(scratch)


def check_state(
    space: ObjectSpace, acked: list[Acked], every_version_kept: bool, rng: random.Random
) -> None:
    db = space.open_database(child.DATABASE)
    tr = db.new_read_only_transaction()
    try:
        counter = check_consistent(tr)
    finally:
        tr.abort()
    history = {commit.version: commit for commit in space.history()}
    assert space.storage.read_root().version == max(history)
    if not acked:
        return
    last = acked[-1]
    assert counter >= last.counter, f"commit {last} was acknowledged but the data is at {counter}"
    must_be_kept = acked if every_version_kept else [last]
    for commit in must_be_kept:
        assert commit.version in history, f"acknowledged {commit} is not in the history"
        assert history[commit.version].transaction_id == commit.transaction_id
    for commit in {last, *rng.sample(must_be_kept, min(3, len(must_be_kept)))}:
        old = db.new_transaction(at_version=commit.version)
        try:
            assert check_consistent(old) == commit.counter
        finally:
            old.abort()


def check_consistent(tr: Transaction) -> int:
    """Check that the related values of the child's commits agree; return the counter."""
    read = tr.get_root_object
    first = read("a")  # None before the first commit
    counter = first or 0
    assert read("b") == first and read("c") == first, "a commit is partly visible"
    log = read("log")
    logged = [] if log is None else list(log.keys())
    assert logged == list(range(1, counter + 1)), f"log does not match counter {counter}"
    bulk_at = read("bulk_at")
    bulks = [key for key, kind in ([] if log is None else log.items()) if kind == "bulk"]
    if bulk_at is None:
        assert not bulks and read("bulk") is None
    else:
        assert bulks and bulks[-1] == bulk_at, "bulk_at disagrees with the log"
        values = dict(read("bulk").items())
        assert values == {key: child.bulk_value(bulk_at, key) for key in range(child.BULK_KEYS)}, (
            "a bulk commit is partly visible"
        )
    return counter


def wait_and_kill(run: Child, mode: str, rng: random.Random) -> None:
    """Kill the child at a moment chosen by `mode`."""
    if mode == "early":
        time.sleep(rng.uniform(0, 0.4))  # during start-up, recovery or the first commits
    elif mode == "lines":
        target = rng.randint(1, 40)
        run.wait_until(lambda lines: len(lines) >= target)
    elif mode == "bulk":
        target = rng.randint(1, 3)
        run.wait_until(lambda lines: sum(line.startswith("bulk") for line in lines) >= target)
        time.sleep(rng.uniform(0, 0.03))  # somewhere inside the bulk commit
    else:
        run.wait_until(lambda lines: len(lines) >= 1)
        time.sleep(rng.uniform(0, 0.2))
    run.kill()


def test_kill_during_commits_loses_no_acknowledged_commit(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    modes = ["early", "lines", "bulk", "time"]
    directory = tmp_path / "db-0"
    acked: list[Acked] = []
    rolled = 0
    for run_number in range(RUNS):
        if run_number % KILLS_PER_DIRECTORY == 0:
            directory = tmp_path / f"db-{run_number // KILLS_PER_DIRECTORY}"
            acked = []
        mode = modes[run_number % len(modes)]
        context = f"seed {SEED}, run {run_number}, mode {mode}"
        with running_child(
            [str(directory), str(rng.randrange(2**32))], tmp_path / "stderr.txt"
        ) as run:
            wait_and_kill(run, mode, rng)
            acked.extend(run.acked())
        try:
            check_crash_image(directory, tmp_path / "check", acked, True, rng)
        except AssertionError as exc:
            raise AssertionError(f"{context}: {exc}") from exc
        if directory.exists():
            rolled = max(rolled, len([n for n in os.listdir(directory) if n.endswith(".pbw")]))
    assert rolled > 1 or RUNS < 10, "no run made the WAL roll to a second segment"


PACK_SEGMENT_BYTES = 16 * 1024
BASE_COMMITS = 120


@pytest.fixture(scope="module")
def pack_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Acked], float]:
    """A database with many records in small segments, and how long a full pack takes."""
    base = tmp_path_factory.mktemp("pack-base") / "db"
    acked = []
    with ObjectSpace(child.open_storage(str(base), PACK_SEGMENT_BYTES)) as space:
        space.new_database(child.DATABASE)
        db = space.open_database(child.DATABASE)
        for counter in range(1, BASE_COMMITS + 1):
            with db.transaction() as tr:
                child.apply_commit(tr, counter, bulk=counter % 4 == 0)
            ref = tr.committed_root
            assert ref is not None and ref.pointer is not None
            acked.append(Acked(counter, ref.version, ref.pointer.transaction_id))
    trial = base.parent / "trial"
    shutil.copytree(base, trial)
    with ObjectSpace(child.open_storage(str(trial), PACK_SEGMENT_BYTES)) as space:
        started = time.monotonic()
        space.pack(dt.timedelta(hours=1))
        duration = time.monotonic() - started
    shutil.rmtree(trial)
    return base, acked, duration


def generations(directory: Path) -> set[int]:
    found = set()
    for name in os.listdir(directory):
        parsed = wal.parse_segment_name(name)
        if parsed is not None:
            found.add(parsed[0])
    return found


def test_kill_during_pack_loses_nothing(
    tmp_path: Path, pack_base: tuple[Path, list[Acked], float]
) -> None:
    base, base_acked, pack_seconds = pack_base
    rng = random.Random(SEED + 1)
    runs = max(10, RUNS // 4)
    interrupted = 0
    for run_number in range(runs):
        directory = tmp_path / f"db-{run_number}"
        shutil.copytree(base, directory)
        packs_to_see = 1 if run_number % 3 else 2
        delay = rng.uniform(0, pack_seconds * 1.3)
        context = f"seed {SEED}, pack run {run_number}, delay {delay:.3f}s"
        with running_child(
            [str(directory), str(rng.randrange(2**32)), str(PACK_SEGMENT_BYTES), "--pack"],
            tmp_path / "stderr.txt",
        ) as run:
            run.wait_until(lambda lines, n=packs_to_see: lines.count("pack-start") >= n)
            time.sleep(delay)
            run.kill()
            acked = base_acked + run.acked()
        if len(generations(directory)) > 1 or (directory / "checkpoint.pbc.tmp").exists():
            interrupted += 1
        try:
            check_crash_image(directory, tmp_path / "check", acked, False, rng)
            with ObjectSpace(child.open_storage(str(directory), PACK_SEGMENT_BYTES)):
                assert len(generations(directory)) == 1, "files of an abandoned generation remain"
        except AssertionError as exc:
            raise AssertionError(f"{context}: {exc}") from exc
        shutil.rmtree(directory)
    assert interrupted > 0, "no kill landed while a pack was writing; make the pack slower"
