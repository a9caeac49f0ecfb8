"""Embedded benchmark: ProtoBase (StandaloneFileStorage) vs SQLite vs ZODB FileStorage.

Run from the repository root::

    python bench/embedded.py            # full run (builds a 1,000,000-object database)
    python bench/embedded.py --quick    # shorter timings, 100,000 objects instead of 1,000,000
    python bench/embedded.py --json results.json

All three systems run in this one process (cold reads and opens in a fresh
child process), on the same machine, with their data in one temporary
directory under /tmp, removed at the end. Every commit is durable:
ProtoBase fdatasyncs its WAL, SQLite runs ``journal_mode=WAL`` with
``synchronous=FULL``, ZODB FileStorage fsyncs on every commit (its default).

Workloads (the issue's targets are checked and printed as PASS/MISS; a miss
never makes the exit status non-zero):

1. one-object durable commits per second, one thread
2. the same with 8 threads, each on its own keys (2g: ProtoBase alone, every
   WAL sync slowed by 2 ms, to show what group commit shares on a slower disk)
3. 100,000 new objects in one transaction
4. random point reads by key, warm
5. random point reads after reopening (new process, empty caches)
6. opening a 1,000,000-object database and reading one key
7. latency of one commit into a 1,000,000-key dictionary vs a 10,000-key one

How it measures (time.perf_counter throughout):

- The data model is the same everywhere: a ProtoBase ``Dictionary`` of
  `DBObject` values, a ZODB ``OOBTree`` of ``Persistent`` objects, an SQLite
  table with an INTEGER PRIMARY KEY; the objects have three attributes
  (name, n, score) and their construction is inside the timed region.
- 1 and 2 alternate the systems in rounds of fixed duration (the disk's
  fsync latency drifts on shared machines), after a few warm-up commits per
  thread. SQLite uses a connection per thread with ``BEGIN IMMEDIATE`` and a
  60 s busy timeout; ZODB a connection per thread, retrying ConflictError;
  ProtoBase ``db.run(fn, retries=1000)``.
- 3 and 4 open, measure and close one system at a time, so no system's
  caches sit in the process while another is measured; 3 reports the median
  of its runs, 4 the median of its timed passes after an untimed first pass.
- 5 and 6 run in fresh child processes (median of 3). Rows 5d and 6d also
  evict the data files from the OS page cache (posix_fadvise DONTNEED)
  first; they are for information and carry no target.
- 7 alternates one commit into the small and one into the big dictionary,
  on random keys, and compares the median latencies.

``--repro N`` runs a small ProtoBase-only reproduction of workload N, made
for ``python -m cProfile -s tottime bench/embedded.py --repro N``. Workloads
4 to 7 need data: ``--repro N --data DIR`` builds it in DIR when DIR does not
exist (run that once without the profiler) and measures on the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import Target, filesystem_of, machine_info, progress
from progress_bars import track

from protobase import DBObject, Dictionary, ObjectSpace, StandaloneFileStorage, register_class

try:
    import transaction
    import ZODB
    import ZODB.FileStorage
    from BTrees.OOBTree import OOBTree
    from persistent import Persistent
    from ZODB.POSException import ConflictError as ZODBConflictError
except ImportError:  # pragma: no cover - only without the bench extra
    if "--repro" not in sys.argv:
        sys.exit(
            "ZODB is missing: install the bench extra with "
            "`.venv/bin/pip install -e '.[bench]'` (or run `make bench`)"
        )
    Persistent = object

COUNTER_KEYS = 1_000  # workloads 1 and 2: the dictionary / table being updated
THREADS = 8
ITEMS = 100_000  # workloads 3 to 5
COLD_READS = 10_000  # workload 5
SMALL_KEYS = 10_000  # workload 7
BATCH = 100_000  # workload 6: objects per bulk transaction while building
SEED = 20240601
DB_NAME = "b"

Worker = tuple[Callable[[int], None], Callable[[], None]]
"""A thread's ``(step, close)``: step(j) does the j-th unit of work."""


# -- the stored objects ----------------------------------------------------------------


@register_class("bench.Item")
class PBItem(DBObject):
    """A ProtoBase value object: name, n, score."""


class ZItem(Persistent):
    """The ZODB counterpart of PBItem: a persistent object with three attributes."""

    def __init__(self, name: str, n: int, score: float) -> None:
        self.name = name
        self.n = n
        self.score = score


def item_fields(k: int) -> tuple[str, int, float]:
    return f"item{k}", k, k * 0.5


def pb_item(k: int) -> PBItem:
    name, n, score = item_fields(k)
    return PBItem(name=name, n=n, score=score)


def z_item(k: int) -> ZItem:
    return ZItem(*item_fields(k))


# -- opening each system -----------------------------------------------------------------


def pb_open(path: Path) -> tuple[ObjectSpace, Any]:
    """Open (creating when new) the ProtoBase space at `path` and its database."""
    space = ObjectSpace(StandaloneFileStorage(path))
    if DB_NAME in space.list_databases():
        return space, space.open_database(DB_NAME)
    return space, space.new_database(DB_NAME)


def sqlite_connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (explicit BEGIN), WAL, synchronous=FULL."""
    con = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    return con


def zodb_open(path: Path, cache_size: int = 400) -> Any:
    """A ZODB.DB over FileStorage (fsync on commit is FileStorage's default)."""
    path.mkdir(parents=True, exist_ok=True)
    storage = ZODB.FileStorage.FileStorage(str(path / "Data.fs"))
    return ZODB.DB(storage, cache_size=cache_size, pool_size=THREADS * 2)


# -- measuring ---------------------------------------------------------------------------


def run_threads(
    n: int,
    make_worker: Callable[[int], Worker],
    seconds: float,
    warmup_steps: int = 5,
) -> tuple[int, float]:
    """Run `n` threads calling their step function until `seconds` passed.

    ``make_worker(i)`` runs in thread i and returns ``(step, close)``; ``step(j)``
    does the j-th unit of work. Each thread does `warmup_steps` untimed steps
    first. Returns ``(steps done, elapsed seconds)``; steps in flight when the
    time is up are finished and counted, and the elapsed time waits for them.
    """
    counts = [0] * n
    errors: list[BaseException] = []
    ready = threading.Barrier(n + 1)
    stop = threading.Event()

    def body(i: int) -> None:
        close: Callable[[], None] | None = None
        try:
            step, close = make_worker(i)
            for j in range(warmup_steps):
                step(-1 - j)
            ready.wait()
            j = 0
            while not stop.is_set():
                step(j)
                j += 1
            counts[i] = j
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            errors.append(exc)
            ready.abort()
        finally:
            if close is not None:
                close()

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()
    start = time.perf_counter()
    if not errors:
        time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts), elapsed


def counter_key(thread: int, step: int, threads: int) -> int:
    """Thread `thread` only touches keys equal to `thread` modulo `threads`."""
    return (thread + threads * abs(step)) % COUNTER_KEYS


def evict(paths: Iterable[Path]) -> None:
    """Drop the files' pages from the OS page cache (POSIX_FADV_DONTNEED)."""
    for path in paths:
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if not file.is_file() or file.name.endswith("-shm"):
                continue
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# -- results -----------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    workload: str
    unit: str  # "/s", "s", "ms", "x"
    pb: float | None
    sqlite: float | None
    zodb: float | None
    targets: list[Target] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def ratio(self, other: float | None) -> float | None:
        if self.pb is None or not other:
            return None
        return self.pb / other


def trio(by_system: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The values of ``{protobase, sqlite, zodb}``, in that order."""
    return by_system["protobase"], by_system["sqlite"], by_system["zodb"]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{value:.2f}x"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| # | workload | ProtoBase | SQLite | ZODB | PB/SQLite | PB/ZODB | target | result |",
        "|---|---|--:|--:|--:|--:|--:|---|---|",
    ]
    for row in rows:
        targets = "; ".join(t.text for t in row.targets) or "—"
        results = "; ".join("PASS" if t.passed else "MISS" for t in row.targets) or "—"
        lines.append(
            f"| {row.key} | {row.workload} | {fmt(row.pb, row.unit)} | "
            f"{fmt(row.sqlite, row.unit)} | {fmt(row.zodb, row.unit)} | "
            f"{fmt_ratio(row.ratio(row.sqlite))} | {fmt_ratio(row.ratio(row.zodb))} | "
            f"{targets} | {results} |"
        )
    return "\n".join(lines)


# -- the machine ---------------------------------------------------------------------------


def machine(tmp: Path) -> dict[str, Any]:
    info = machine_info(
        ("protobase", "ZODB", "BTrees", "persistent", "transaction", "msgpack", "xxhash")
    )
    info["data_filesystem"] = filesystem_of(tmp)
    return info


# -- workloads 1 and 2: one-object durable commits -------------------------------------------
#
# Each system gets a class that sets up its 1,000-key dictionary (or table)
# once; `workers(threads)` makes the per-thread step functions. The runs of
# the three systems alternate in rounds, so that the disk's fsync latency,
# which drifts on shared machines, hits all three alike.


class PBCommits:
    def __init__(self, tmp: Path) -> None:
        self.space, self.db = pb_open(tmp / "pb-commits")
        with self.db.transaction() as tr:
            tr.set_root_object("d", Dictionary((k, 0) for k in range(COUNTER_KEYS)))

    def workers(self, threads: int) -> Callable[[int], Worker]:
        db = self.db

        def make(i: int) -> Worker:
            def step(j: int) -> None:
                key = counter_key(i, j, threads)

                def change(tr: Any) -> None:
                    tr.set_root_object("d", tr.get_root_object("d").set_at(key, j))

                db.run(change, retries=1000)

            return step, lambda: None

        return make

    def close(self) -> None:
        self.space.close()


class SQLiteCommits:
    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "commits.sqlite"
        con = sqlite_connect(self.path)
        con.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER)")
        con.execute("BEGIN")
        con.executemany("INSERT INTO kv VALUES (?, 0)", ((k,) for k in range(COUNTER_KEYS)))
        con.execute("COMMIT")
        con.close()

    def workers(self, threads: int) -> Callable[[int], Worker]:
        def make(i: int) -> Worker:
            con = sqlite_connect(self.path)  # one connection per thread, busy timeout 60 s

            def step(j: int) -> None:
                con.execute("BEGIN IMMEDIATE")
                con.execute("UPDATE kv SET v = ? WHERE k = ?", (j, counter_key(i, j, threads)))
                con.execute("COMMIT")

            return step, con.close

        return make

    def close(self) -> None:
        pass


class ZODBCommits:
    def __init__(self, tmp: Path) -> None:
        self.zdb = zodb_open(tmp / "zodb-commits")
        with self.zdb.transaction() as conn:
            conn.root()["d"] = OOBTree({k: 0 for k in range(COUNTER_KEYS)})
        self.conflicts = 0

    def workers(self, threads: int) -> Callable[[int], Worker]:
        def make(i: int) -> Worker:
            tm = transaction.manager  # thread-local: each thread its own
            conn = self.zdb.open()  # one connection per thread, joined to tm

            def step(j: int) -> None:
                key = counter_key(i, j, threads)
                while True:
                    try:
                        tm.begin()
                        conn.root()["d"][key] = j
                        tm.commit()
                        return
                    except ZODBConflictError:
                        tm.abort()
                        self.conflicts += 1

            def close() -> None:
                tm.abort()
                conn.close()

            return step, close

        return make

    def close(self) -> None:
        self.zdb.close()


def durable_commits(tmp: Path, rounds: int, seconds: float) -> dict[str, dict[int, list]]:
    """Commits/s of each system with 1 and with THREADS threads.

    Returns ``{system: {threads: [(commits, seconds) per round]}}``.
    """
    benches: dict[str, PBCommits | SQLiteCommits | ZODBCommits] = {
        "protobase": PBCommits(tmp),
        "sqlite": SQLiteCommits(tmp),
        "zodb": ZODBCommits(tmp),
    }
    runs: dict[str, dict[int, list]] = {s: {1: [], THREADS: []} for s in benches}
    try:
        for _ in track(range(rounds), "workloads 1-2: durable commits", "rounds"):
            for threads in (1, THREADS):
                for system, bench in benches.items():
                    runs[system][threads].append(
                        run_threads(threads, bench.workers(threads), seconds)
                    )
    finally:
        for bench in benches.values():
            bench.close()
    zodb = benches["zodb"]
    assert isinstance(zodb, ZODBCommits)
    if zodb.conflicts:
        progress(f"ZODB retried {zodb.conflicts} conflicting commits")
    return runs


SLOW_SYNC_MS = 2.0  # row 2g: the extra latency injected into every ProtoBase WAL sync


def slow_disk_scaling(tmp: Path, seconds: float) -> dict[int, list]:
    """ProtoBase commits/s with 1 and THREADS threads on a disk made slower.

    Every WAL sync (``wal.durable_write``) sleeps SLOW_SYNC_MS more after the
    real fdatasync, as a disk with a slower flush would. Here a sync costs
    about 0.2 ms, less than a commit's CPU, so group commit has little to
    share; with a slow sync, the commits that queue behind one sync should
    share the next. Only ProtoBase's sync can be slowed this way, so the row
    has no SQLite or ZODB figure.
    """
    from protobase.storage import wal

    durable_write = wal.durable_write

    def slow_durable_write(fd: int) -> None:
        durable_write(fd)
        time.sleep(SLOW_SYNC_MS / 1e3)

    bench = PBCommits(tmp / "slow-disk")
    wal.durable_write = slow_durable_write
    try:
        return {t: [run_threads(t, bench.workers(t), seconds)] for t in (1, THREADS)}
    finally:
        wal.durable_write = durable_write
        bench.close()


def rate(runs: list[tuple[int, float]]) -> float:
    """Units per second over all `runs` of ``(units, seconds)``."""
    return sum(count for count, _ in runs) / sum(elapsed for _, elapsed in runs)


def fsync_latency(directory: Path, count: int = 200) -> dict[str, float]:
    """Median and 90th percentile (ms) of a 200-byte append + fdatasync in `directory`."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, b"x" * 200)
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return {"median_ms": times[len(times) // 2] * 1e3, "p90_ms": times[len(times) * 9 // 10] * 1e3}


# -- workload 3: 100,000 new objects in one transaction -----------------------------------------
#
# Each insert opens its system, times only the transaction, and closes it
# again, so that no system's caches stay in the process while another one is
# measured (they would slow its garbage collector down).


def insert_protobase(path: Path, name: str, keys: range) -> float:
    space, db = pb_open(path)
    try:
        gc.collect()
        start = time.perf_counter()
        with db.transaction() as tr:
            tr.set_root_object(name, Dictionary((k, pb_item(k)) for k in keys))
        return time.perf_counter() - start
    finally:
        space.close()


def insert_sqlite(path: Path, name: str, keys: range) -> float:
    con = sqlite_connect(path)
    try:
        con.execute(
            f"CREATE TABLE {name} (k INTEGER PRIMARY KEY, name TEXT, n INTEGER, score REAL)"
        )
        gc.collect()
        start = time.perf_counter()
        con.execute("BEGIN")
        con.executemany(
            f"INSERT INTO {name} VALUES (?, ?, ?, ?)", ((k, *item_fields(k)) for k in keys)
        )
        con.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        con.close()


def insert_zodb(path: Path, name: str, keys: range) -> float:
    zdb = zodb_open(path)
    try:
        tm = transaction.TransactionManager()
        conn = zdb.open(tm)
        gc.collect()
        start = time.perf_counter()
        tm.begin()
        tree = OOBTree()
        tree.update([(k, z_item(k)) for k in keys])
        conn.root()[name] = tree
        tm.commit()
        elapsed = time.perf_counter() - start
        conn.close()
        return elapsed
    finally:
        zdb.close()


# -- workload 4: warm random point reads -------------------------------------------------------
#
# One transaction (connection) per system: a first pass over the sample loads
# everything, then the timed passes read the same keys again.


def timed_passes(read: Callable[[int], int], keys: list[int], passes: int) -> tuple[float, int]:
    """Median reads/s over `passes` timed passes, after one untimed pass."""
    for k in keys:
        read(k)
    rates = []
    total = 0
    for _ in range(passes):
        gc.collect()
        total = 0
        start = time.perf_counter()
        for k in keys:
            total += read(k)
        rates.append(len(keys) / (time.perf_counter() - start))
    return statistics.median(rates), total


def warm_reads_protobase(path: Path, name: str, keys: list[int], passes: int) -> tuple[float, int]:
    space, db = pb_open(path)
    tr = db.new_read_only_transaction()
    try:
        items = tr.get_root_object(name)
        return timed_passes(lambda k: items.get_at(k).n, keys, passes)
    finally:
        tr.abort()
        space.close()


def warm_reads_sqlite(path: Path, name: str, keys: list[int], passes: int) -> tuple[float, int]:
    con = sqlite_connect(path)
    try:
        sql = f"SELECT name, n, score FROM {name} WHERE k = ?"
        cur = con.cursor()
        return timed_passes(lambda k: cur.execute(sql, (k,)).fetchone()[1], keys, passes)
    finally:
        con.close()


def warm_reads_zodb(path: Path, name: str, keys: list[int], passes: int) -> tuple[float, int]:
    zdb = zodb_open(path, cache_size=2 * len(set(keys)) + 1_000)  # the sample fits the cache
    tm = transaction.TransactionManager()
    conn = zdb.open(tm)
    try:
        tree = conn.root()[name]
        return timed_passes(lambda k: tree[k].n, keys, passes)
    finally:
        tm.abort()
        conn.close()
        zdb.close()


# -- workloads 5 and 6: opening and cold reads, in a child process -------------------------------


def child_open_and_read(system: str, path: str, name: str, keys: list[int], drop: bool) -> dict:
    """Open the database, read one key (timed as `open`), then read `keys` (timed).

    Runs in a fresh process, so every in-process cache starts empty. With
    `drop`, the data files' pages are evicted from the OS page cache first.
    """
    location = Path(path)
    if drop:
        if system == "sqlite":
            evict([location, Path(path + "-wal")])
        else:
            evict([location])  # the directory: every file in it
    first, rest = keys[0], keys[1:]
    total = 0
    if system == "protobase":
        start = time.perf_counter()
        space = ObjectSpace(StandaloneFileStorage(location))
        tr = space.open_database(DB_NAME).new_read_only_transaction()
        items = tr.get_root_object(name)
        total += items.get_at(first).n
        opened = time.perf_counter()
        for k in rest:
            total += items.get_at(k).n
        done = time.perf_counter()
        tr.abort()
        space.close()
    elif system == "sqlite":
        start = time.perf_counter()
        con = sqlite_connect(location)
        sql = f"SELECT name, n, score FROM {name} WHERE k = ?"
        cur = con.cursor()
        total += cur.execute(sql, (first,)).fetchone()[1]
        opened = time.perf_counter()
        for k in rest:
            total += cur.execute(sql, (k,)).fetchone()[1]
        done = time.perf_counter()
        con.close()
    else:
        start = time.perf_counter()
        zdb = zodb_open(location, cache_size=len(keys) * 2)
        tm = transaction.TransactionManager()
        conn = zdb.open(tm)
        tree = conn.root()[name]
        total += tree[first].n
        opened = time.perf_counter()
        for k in rest:
            total += tree[k].n
        done = time.perf_counter()
        tm.abort()
        conn.close()
        zdb.close()
    return {
        "open_s": opened - start,
        "reads_per_s": len(rest) / (done - opened) if rest else None,
        "total": total,
    }


def in_child(system: str, path: Path, name: str, keys: list[int], drop: bool) -> dict:
    spec = json.dumps(
        {"system": system, "path": str(path), "name": name, "keys": keys, "drop": drop}
    )
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child"],
        input=spec,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"child for {system} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def cold(system: str, path: Path, name: str, keys: list[int], drop: bool, runs: int) -> dict:
    """Median over `runs` fresh processes of the open time and of the read rate."""
    results = [in_child(system, path, name, keys, drop) for _ in range(runs)]
    totals = {r["total"] for r in results}
    assert len(totals) == 1, totals
    rates = [r["reads_per_s"] for r in results if r["reads_per_s"] is not None]
    return {
        "open_s": statistics.median(r["open_s"] for r in results),
        "reads_per_s": statistics.median(rates) if rates else None,
        "total": totals.pop(),
        "runs": results,
    }


# -- workloads 6 and 7: the big database --------------------------------------------------------


def batches(count: int) -> Iterator[range]:
    for start in range(0, count, BATCH):
        yield range(start, min(start + BATCH, count))


def build_big_protobase(path: Path, count: int) -> float:
    space, db = pb_open(path)
    try:
        start = time.perf_counter()
        for keys in batches(count):
            with db.transaction() as tr:
                big = tr.get_root_object("big")
                pairs = ((k, pb_item(k)) for k in keys)
                tr.set_root_object("big", Dictionary(pairs) if big is None else big.update(pairs))
        with db.transaction() as tr:
            tr.set_root_object("small", Dictionary((k, pb_item(k)) for k in range(SMALL_KEYS)))
        return time.perf_counter() - start
    finally:
        space.close()


def build_big_sqlite(path: Path, count: int) -> float:
    con = sqlite_connect(path)
    try:
        start = time.perf_counter()
        for table, n in (("big", count), ("small", SMALL_KEYS)):
            con.execute(
                f"CREATE TABLE {table} (k INTEGER PRIMARY KEY, name TEXT, n INTEGER, score REAL)"
            )
            for keys in batches(n):
                con.execute("BEGIN")
                con.executemany(
                    f"INSERT INTO {table} VALUES (?, ?, ?, ?)",
                    ((k, *item_fields(k)) for k in keys),
                )
                con.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        con.close()


def build_big_zodb(path: Path, count: int) -> float:
    zdb = zodb_open(path)
    try:
        tm = transaction.TransactionManager()
        conn = zdb.open(tm)
        start = time.perf_counter()
        for keys in batches(count):
            tm.begin()
            root = conn.root()
            if "big" not in root:
                root["big"] = OOBTree()
            root["big"].update([(k, z_item(k)) for k in keys])
            tm.commit()
            conn.cacheMinimize()
        tm.begin()
        conn.root()["small"] = OOBTree({k: z_item(k) for k in range(SMALL_KEYS)})
        tm.commit()
        elapsed = time.perf_counter() - start
        conn.close()
        return elapsed
    finally:
        zdb.close()


def interleaved_latencies(
    commit_small: Callable[[int, int], None],
    commit_big: Callable[[int, int], None],
    big_count: int,
    seconds: float,
    warmup: int = 20,
) -> tuple[float, float, int]:
    """Median latency (ms) of a one-key commit into the small and the big dictionary.

    The two alternate, so that drift of the disk or the machine hits both alike.
    """
    rng = random.Random(SEED + 7)
    small: list[float] = []
    big: list[float] = []
    i = 0
    deadline = None
    while deadline is None or time.perf_counter() < deadline:
        if i == warmup:
            small.clear()
            big.clear()
            deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()
        commit_small(rng.randrange(SMALL_KEYS), i)
        t1 = time.perf_counter()
        commit_big(rng.randrange(big_count), i)
        t2 = time.perf_counter()
        small.append(t1 - t0)
        big.append(t2 - t1)
        i += 1
    return statistics.median(small) * 1e3, statistics.median(big) * 1e3, len(small)


def latency_protobase(path: Path, count: int, seconds: float) -> tuple[float, float, int]:
    space, db = pb_open(path)
    try:

        def commit(root: str) -> Callable[[int, int], None]:
            def go(key: int, i: int) -> None:
                with db.transaction() as tr:
                    tr.set_root_object(root, tr.get_root_object(root).set_at(key, pb_item(-i)))

            return go

        return interleaved_latencies(commit("small"), commit("big"), count, seconds)
    finally:
        space.close()


def latency_sqlite(path: Path, count: int, seconds: float) -> tuple[float, float, int]:
    con = sqlite_connect(path)
    try:

        def commit(table: str) -> Callable[[int, int], None]:
            sql = f"UPDATE {table} SET name = ?, n = ?, score = ? WHERE k = ?"

            def go(key: int, i: int) -> None:
                con.execute("BEGIN IMMEDIATE")
                con.execute(sql, (*item_fields(-i), key))
                con.execute("COMMIT")

            return go

        return interleaved_latencies(commit("small"), commit("big"), count, seconds)
    finally:
        con.close()


def latency_zodb(path: Path, count: int, seconds: float) -> tuple[float, float, int]:
    zdb = zodb_open(path)
    try:
        tm = transaction.TransactionManager()
        conn = zdb.open(tm)

        def commit(root: str) -> Callable[[int, int], None]:
            def go(key: int, i: int) -> None:
                tm.begin()
                conn.root()[root][key] = z_item(-i)
                tm.commit()

            return go

        result = interleaved_latencies(commit("small"), commit("big"), count, seconds)
        conn.close()
        return result
    finally:
        zdb.close()


# -- the whole run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How long and how big the workloads run: full mode or --quick."""

    quick: bool
    rounds: int  # workloads 1-2: rounds, each running every system
    seconds: float  # workloads 1-2: per system, thread count and round
    latency_seconds: float  # workload 7, per system
    insert_runs: int  # workload 3
    read_passes: int  # workload 4, timed passes
    cold_runs: int  # workloads 5 and 6, fresh processes per system
    warm_reads: int  # workload 4, keys per pass
    big_count: int  # workloads 6 and 7

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


def settings_for(quick: bool) -> Settings:
    return Settings(
        quick=quick,
        rounds=1 if quick else 3,
        seconds=1.0 if quick else 1.5,
        latency_seconds=2.0 if quick else 4.0,
        insert_runs=1 if quick else 3,
        read_passes=1 if quick else 3,
        cold_runs=3,
        warm_reads=30_000 if quick else 100_000,
        big_count=100_000 if quick else 1_000_000,
    )


SCALING_TARGET = 1.5  # row 2s: ProtoBase with THREADS threads vs 1, real fsync
SLOW_SYNC_SCALING_TARGET = 3.0  # row 2g: the same with every WAL sync slowed


def commit_rows(tmp: Path, settings: Settings) -> list[Row]:
    """Rows 1, 2 and 2s: one-object durable commits with 1 and THREADS threads."""
    progress(f"workloads 1-2: one-object durable commits, {settings.rounds} round(s)")
    commits = durable_commits(tmp, settings.rounds, settings.seconds)
    pb1, sq1, zo1 = (rate(commits[s][1]) for s in commits)
    pb8, sq8, zo8 = (rate(commits[s][THREADS]) for s in commits)
    return [
        Row(
            "1",
            f"durable 1-object commits, 1 thread ({COUNTER_KEYS:,}-key dict)",
            "/s",
            pb1,
            sq1,
            zo1,
            [
                Target(">= 0.8x SQLite", pb1 >= 0.8 * sq1),
                Target(">= 1.5x ZODB", pb1 >= 1.5 * zo1),
            ],
            {"runs": commits},
        ),
        Row("2", f"durable 1-object commits, {THREADS} threads", "/s", pb8, sq8, zo8),
        Row(
            "2s",
            f"scaling: {THREADS} threads / 1 thread",
            "x",
            pb8 / pb1,
            sq8 / sq1,
            zo8 / zo1,
            [
                Target(
                    f">= {SCALING_TARGET:g}x (ProtoBase {THREADS} vs 1 thread)",
                    pb8 >= SCALING_TARGET * pb1,
                )
            ],
        ),
    ]


def slow_disk_row(tmp: Path, settings: Settings) -> Row:
    """Row 2g: ProtoBase's scaling from 1 to THREADS threads with every WAL sync slowed."""
    progress(f"workload 2g: group commit with every sync slowed by {SLOW_SYNC_MS} ms")
    (tmp / "slow-disk").mkdir()
    slow = slow_disk_scaling(tmp, settings.seconds * settings.rounds)
    scaling = rate(slow[THREADS]) / rate(slow[1])
    return Row(
        "2g",
        f"scaling, every WAL sync slowed by {SLOW_SYNC_MS:g} ms: {THREADS} / 1 thread",
        "x",
        scaling,
        None,
        None,
        [
            Target(
                f">= {SLOW_SYNC_SCALING_TARGET:g}x (ProtoBase {THREADS} vs 1 thread)",
                scaling >= SLOW_SYNC_SCALING_TARGET,
            )
        ],
        {"runs": slow},
    )


def item_places(tmp: Path) -> dict[str, Path]:
    """Where each system keeps the items of workloads 3 to 5."""
    return {
        "protobase": tmp / "pb-items",
        "sqlite": tmp / "items.sqlite",
        "zodb": tmp / "zodb-items",
    }


def insert_row(places: dict[str, Path], settings: Settings) -> tuple[Row, str]:
    """Row 3: ITEMS new objects in one transaction.

    Returns the row and the name of the last run's collection, which
    workloads 4 and 5 read.
    """
    progress(f"workload 3: {ITEMS:,} new objects in one transaction")
    keys = range(ITEMS)
    inserts = {"protobase": insert_protobase, "sqlite": insert_sqlite, "zodb": insert_zodb}
    for system, insert in inserts.items():  # warm-up: imports, first allocations
        insert(places[system], "warmup", range(10_000))
    times: dict[str, list[float]] = {s: [] for s in inserts}
    for run in track(range(settings.insert_runs), "workload 3: inserts", "runs"):
        for system, insert in inserts.items():
            times[system].append(insert(places[system], f"items{run}", keys))
    pb3, sq3, zo3 = (ITEMS / statistics.median(times[s]) for s in inserts)
    row = Row(
        "3",
        f"{ITEMS:,} new objects in one transaction",
        "/s",
        pb3,
        sq3,
        zo3,
        [Target(">= 100,000/s", pb3 >= 100_000), Target(">= 4x ZODB", pb3 >= 4 * zo3)],
        {"seconds": times},
    )
    return row, f"items{settings.insert_runs - 1}"


def warm_read_row(places: dict[str, Path], items: str, settings: Settings) -> Row:
    """Row 4: random point reads of `items`, warm."""
    progress("workload 4: warm random point reads")
    rng = random.Random(SEED)
    sample = [rng.randrange(ITEMS) for _ in range(settings.warm_reads)]
    readers = {
        "protobase": warm_reads_protobase,
        "sqlite": warm_reads_sqlite,
        "zodb": warm_reads_zodb,
    }
    four = {s: read(places[s], items, sample, settings.read_passes) for s, read in readers.items()}
    assert len({total for _, total in four.values()}) == 1, four
    pb4, sq4, zo4 = (four[s][0] for s in readers)
    return Row(
        "4",
        f"random point reads, warm ({settings.warm_reads:,} reads)",
        "/s",
        pb4,
        sq4,
        zo4,
        [Target(">= 100,000/s", pb4 >= 100_000)],
    )


def cold_read_rows(places: dict[str, Path], items: str, settings: Settings) -> list[Row]:
    """Rows 5 and 5d: random point reads of `items` in fresh processes."""
    progress("workload 5: random point reads after reopening (fresh processes)")
    keys = random.Random(SEED + 5).sample(range(ITEMS), COLD_READS)
    runs = settings.cold_runs
    five = {s: cold(s, p, items, keys, False, runs) for s, p in places.items()}
    five_dropped = {s: cold(s, p, items, keys, True, runs) for s, p in places.items()}
    assert len({r["total"] for r in (*five.values(), *five_dropped.values())}) == 1
    pb5, sq5, zo5 = (five[s]["reads_per_s"] for s in places)
    return [
        Row(
            "5",
            f"random point reads after reopen ({COLD_READS:,} reads, new process)",
            "/s",
            pb5,
            sq5,
            zo5,
            [Target(">= ZODB", pb5 >= zo5)],
            {"runs": five},
        ),
        Row(
            "5d",
            "same, data files also evicted from the OS page cache",
            "/s",
            *trio({s: five_dropped[s]["reads_per_s"] for s in places}),
            details={"runs": five_dropped},
        ),
    ]


def big_places(tmp: Path) -> dict[str, Path]:
    """Where each system keeps the big database of workloads 6 and 7."""
    return {
        "protobase": tmp / "pb-big",
        "sqlite": tmp / "big.sqlite",
        "zodb": tmp / "zodb-big",
    }


def open_rows(places: dict[str, Path], settings: Settings) -> list[Row]:
    """Rows 6 and 6d: build the big databases, then open each and read one key."""
    big_count = settings.big_count
    progress(f"workload 6: building the {big_count:,}-object databases")
    builders = {
        "protobase": build_big_protobase,
        "sqlite": build_big_sqlite,
        "zodb": build_big_zodb,
    }
    build = {
        system: builders[system](places[system], big_count)
        for system in track(builders, "workload 6: building", "databases")
    }
    progress(f"built in {', '.join(f'{s} {t:.1f} s' for s, t in build.items())}")
    progress(f"workload 6: opening the {big_count:,}-object databases (fresh processes)")
    probe = [random.Random(SEED + 6).randrange(big_count)]
    runs = settings.cold_runs
    six = {s: cold(s, p, "big", probe, False, runs) for s, p in places.items()}
    six_dropped = {s: cold(s, p, "big", probe, True, runs) for s, p in places.items()}
    return [
        Row(
            "6",
            f"open a {big_count:,}-object database + read one key",
            "s",
            *trio({s: six[s]["open_s"] for s in places}),
            [Target("< 1 s", six["protobase"]["open_s"] < 1.0)],
            {"build_seconds": build, "runs": six},
        ),
        Row(
            "6d",
            "same, data files also evicted from the OS page cache",
            "s",
            *trio({s: six_dropped[s]["open_s"] for s in places}),
            details={"runs": six_dropped},
        ),
    ]


def latency_rows(places: dict[str, Path], settings: Settings) -> list[Row]:
    """Rows 7a, 7b and 7: commit latency into the big database's small and big dictionary."""
    big_count, seconds = settings.big_count, settings.latency_seconds
    progress(f"workload 7: commit latency, {big_count:,}-key vs {SMALL_KEYS:,}-key dictionary")
    lat = {
        "protobase": latency_protobase(places["protobase"], big_count, seconds),
        "sqlite": latency_sqlite(places["sqlite"], big_count, seconds),
        "zodb": latency_zodb(places["zodb"], big_count, seconds),
    }
    pb7 = lat["protobase"][1] / lat["protobase"][0]
    return [
        Row(
            "7a",
            f"commit latency, {SMALL_KEYS:,}-key dict (median)",
            "ms",
            *trio({s: lat[s][0] for s in lat}),
            details={"commits": {s: lat[s][2] for s in lat}},
        ),
        Row(
            "7b",
            f"commit latency, {big_count:,}-key dict (median)",
            "ms",
            *trio({s: lat[s][1] for s in lat}),
        ),
        Row(
            "7",
            f"latency ratio {big_count:,} / {SMALL_KEYS:,} keys",
            "x",
            pb7,
            lat["sqlite"][1] / lat["sqlite"][0],
            lat["zodb"][1] / lat["zodb"][0],
            [Target("< 2", pb7 < 2)],
        ),
    ]


def run_workloads(tmp: Path, settings: Settings) -> list[Row]:
    """Every workload, in order, with its data under `tmp`: the table's rows."""
    rows = commit_rows(tmp, settings)
    rows.append(slow_disk_row(tmp, settings))
    items_at = item_places(tmp)
    row, items = insert_row(items_at, settings)
    rows.append(row)
    rows.append(warm_read_row(items_at, items, settings))
    rows.extend(cold_read_rows(items_at, items, settings))
    big_at = big_places(tmp)
    rows.extend(open_rows(big_at, settings))
    rows.extend(latency_rows(big_at, settings))
    return rows


@dataclass
class Conditions:
    """The run's command, the machine, and the disk and load before and after the run."""

    command: str
    machine: dict[str, Any]
    disk_before: dict[str, float]
    load_before: tuple[float, float, float]
    disk_after: dict[str, float] = field(default_factory=dict)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def print_header(settings: Settings, tmp: Path, conditions: Conditions) -> None:
    info, disk, load = conditions.machine, conditions.disk_before, conditions.load_before
    print(f"# ProtoBase embedded benchmark ({settings.mode} mode)")
    print()
    print(
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, "
        f"Linux {info['kernel']}"
    )
    print(f"- protobase source: {info['protobase_source']}")
    print(f"- data: {tmp} on {info['data_filesystem']}")
    print(f"- {info['python']}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(f"- command: {conditions.command}")
    print(
        f"- disk: 200-byte append + fdatasync in the data directory: median "
        f"{disk['median_ms']:.2f} ms, p90 {disk['p90_ms']:.2f} ms (before the run)"
    )
    print(f"- load average at the start: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)")
    print(flush=True)


def print_footer(rows: list[Row], conditions: Conditions, elapsed: float) -> None:
    """What follows the table: disk and load after the run, how to read it, the misses."""
    disk, load = conditions.disk_after, conditions.load_after
    print(
        f"Disk after the run: append + fdatasync median {disk['median_ms']:.2f} ms, "
        f"p90 {disk['p90_ms']:.2f} ms. Load average at the end: {load[0]:.2f} (1 min), "
        f"{load[1]:.2f} (5 min)."
    )
    print("PB/SQLite and PB/ZODB are the ProtoBase figure divided by the other one: above 1 is")
    print("better for ProtoBase on rates (/s), worse on times (s, ms) and latency ratios (x).")
    misses = [f"{row.key} ({t.text})" for row in rows for t in row.targets if not t.passed]
    print(f"Missed targets: {', '.join(misses) if misses else 'none'}")
    print(f"Total run time: {elapsed:.0f} s")


def write_json(
    path: str, settings: Settings, conditions: Conditions, rows: list[Row], elapsed: float
) -> None:
    report = {
        "mode": settings.mode,
        "command": conditions.command,
        "machine": conditions.machine,
        "fdatasync_ms": {"before": conditions.disk_before, "after": conditions.disk_after},
        "load_average": {"before": conditions.load_before, "after": conditions.load_after},
        "total_seconds": elapsed,
        "results": [
            {
                "id": row.key,
                "workload": row.workload,
                "unit": row.unit,
                "protobase": row.pb,
                "sqlite": row.sqlite,
                "zodb": row.zodb,
                "protobase_over_sqlite": row.ratio(row.sqlite),
                "protobase_over_zodb": row.ratio(row.zodb),
                "targets": [{"target": t.text, "pass": t.passed} for t in row.targets],
                "details": row.details,
            }
            for row in rows
        ],
    }
    Path(path).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"Results written to {path}")


def main_run(args: argparse.Namespace) -> None:
    settings = settings_for(args.quick)
    tmp = Path(tempfile.mkdtemp(prefix="protobase-bench-", dir="/tmp"))
    began = time.perf_counter()
    conditions = Conditions(
        command="python bench/embedded.py" + (" --quick" if settings.quick else ""),
        machine=machine(tmp),
        disk_before=fsync_latency(tmp),
        load_before=os.getloadavg(),
    )
    print_header(settings, tmp, conditions)
    try:
        rows = run_workloads(tmp, settings)
        conditions.disk_after = fsync_latency(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - began
    print(table(rows))
    print()
    conditions.load_after = os.getloadavg()
    print_footer(rows, conditions, elapsed)
    if args.json:
        write_json(args.json, settings, conditions, rows, elapsed)


# -- small ProtoBase-only reproductions, for the profiler --------------------------------------


def count_commit_work(space: ObjectSpace) -> dict[str, int]:
    """Count the storage's commit attempts, lost compare-and-sets and WAL syncs.

    Instruments this process only (wraps the storage instance's commit
    methods and the WAL module's ``durable_write``); nothing in protobase/
    changes.
    """
    from protobase.errors import RootConflict
    from protobase.storage import wal

    counts = {"attempts": 0, "conflicts": 0, "syncs": 0}
    storage: Any = space.storage
    durable_write = wal.durable_write

    def counted(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            counts["attempts"] += 1
            try:
                return method(*args)
            except RootConflict:
                counts["conflicts"] += 1
                raise

        return call

    for name in ("commit", "commit_pipelined"):  # the latter where the storage has it
        if hasattr(storage, name):
            setattr(storage, name, counted(getattr(storage, name)))

    def counted_write(fd: int) -> None:
        counts["syncs"] += 1
        durable_write(fd)

    wal.durable_write = counted_write
    return counts


def repro_commits(path: Path, threads: int) -> None:
    """Workload 1 (one thread) or 2 (THREADS threads) in a new space at `path`, counted."""
    space, db = pb_open(path)
    with db.transaction() as tr:
        tr.set_root_object("d", Dictionary((k, 0) for k in range(COUNTER_KEYS)))
    steps = 2_000 if threads == 1 else 300

    def work(i: int) -> None:
        for j in range(steps):
            key = counter_key(i, j, threads)

            def change(tr: Any, key: int = key, j: int = j) -> None:
                tr.set_root_object("d", tr.get_root_object("d").set_at(key, j))

            db.run(change, retries=1000)

    counts = count_commit_work(space)
    # cProfile sees the main thread only: it is one of the workers.
    others = [threading.Thread(target=work, args=(i,)) for i in range(1, threads)]
    start, cpu = time.perf_counter(), os.times()
    for thread in others:
        thread.start()
    work(0)
    for thread in others:
        thread.join()
    elapsed, cpu_end = time.perf_counter() - start, os.times()
    done = steps * threads
    space.close()
    used = cpu_end.user - cpu.user + cpu_end.system - cpu.system
    print(
        f"{done / elapsed:,.0f} commits/s ({threads} threads); per commit: "
        f"{counts['attempts'] / done:.2f} storage commit attempts "
        f"({counts['conflicts'] / done:.2f} lost the compare-and-set), "
        f"{counts['syncs'] / done:.2f} fdatasyncs, {used / done * 1e3:.2f} ms of CPU"
    )


def repro(number: int, data: str | None) -> None:
    """A small ProtoBase-only run of workload `number` (see the module docstring)."""
    scratch = None
    if number in (4, 5, 6, 7):
        if data is None:
            sys.exit(f"--repro {number} needs --data DIR (built on the first run)")
        path = Path(data)
        if not path.exists():
            if number in (4, 5):
                insert_protobase(path, "items", range(ITEMS))
            else:
                build_big_protobase(path, 1_000_000)
            print(f"built {path}; run again (under the profiler) to measure")
            return
    else:
        scratch = Path(tempfile.mkdtemp(prefix="protobase-repro-", dir="/tmp"))
        path = scratch / "pb"
    try:
        if number in (1, 2):
            repro_commits(path, 1 if number == 1 else THREADS)
        elif number == 3:
            seconds = insert_protobase(path, "items", range(ITEMS))
            print(f"{ITEMS / seconds:,.0f} objects/s inserted")
        elif number == 4:
            rng = random.Random(SEED)
            sample = [rng.randrange(ITEMS) for _ in range(100_000)]
            print(f"{warm_reads_protobase(path, 'items', sample, 2)[0]:,.0f} warm reads/s")
        elif number in (5, 6):
            name = "items" if number == 5 else "big"
            count = ITEMS if number == 5 else 1_000_000
            keys = random.Random(SEED + 5).sample(range(count), COLD_READS if number == 5 else 1)
            result = child_open_and_read("protobase", str(path), name, keys, False)
            print(f"open {result['open_s']:.3f} s, {result['reads_per_s'] or 0:,.0f} cold reads/s")
        elif number == 7:
            small, big, n = latency_protobase(path, 1_000_000, 3.0)
            print(f"{n} commits each: {small:.2f} ms (10k keys), {big:.2f} ms (1M keys)")
        else:
            sys.exit(f"no workload {number}; choose 1 to 7")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="shorter timings; 100,000 objects instead of 1,000,000 in 6 and 7",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    parser.add_argument(
        "--repro",
        type=int,
        metavar="N",
        help="run a small ProtoBase-only reproduction of workload N (for cProfile)",
    )
    parser.add_argument("--data", metavar="DIR", help="data directory for --repro 4 to 7")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(sys.stdin.read())
        result = child_open_and_read(
            spec["system"], spec["path"], spec["name"], spec["keys"], spec["drop"]
        )
        print(json.dumps(result))
    elif args.repro is not None:
        repro(args.repro, args.data)
    else:
        main_run(args)


if __name__ == "__main__":
    main()
