"""Query benchmark: ProtoBase queries side by side with SQLite, with the ratios.

Run from the repository root::

    python bench/queries.py             # full run: 100,000 and then 1,000,000 rows
    python bench/queries.py --quick     # 100,000 rows only, fewer repetitions
    python bench/queries.py --json results.json
    python -m cProfile -s tottime bench/queries.py --repro scan   # one workload, profiled

Both systems run in this one process, on the same data, entirely in memory:
ProtoBase in an ``ObjectSpace(MemoryStorage())``, SQLite (stdlib ``sqlite3``)
in a ``:memory:`` database. Nothing is written to disk, so there is no
temporary directory. In-memory SQLite is the fair counterpart here: once the
data is committed and read once, ProtoBase answers from the objects its
read transaction has decoded and cached, warm, and neither system touches a
disk or the OS page cache.

The data: N people (N = 100,000 and 1,000,000), each with ``id`` (unique
int, the key), ``ssn`` (unique int: 100,000,000 plus a random permutation
of 0..N-1), ``age`` (int 0..99), ``city`` (one of 100 str), ``score``
(float in [0, 1000)) and ``name`` (str). The rows are generated once from a
fixed seed and both systems load the same tuples.

- ProtoBase: ``Person(DBObject)`` values in a ``Dictionary`` keyed by id.
  Root ``plain`` has no index; root ``people`` is the same dictionary with
  ``add_index("ssn", unique=True)``, ``add_index("age")``,
  ``add_index("city")`` and ``add_index("score")``, committed in a second
  transaction. Root ``people_covering`` is ``plain`` again with the same
  four indexes but ``add_index("ssn", unique=True, covering=True)`` (the
  index keeps each row in its entry), committed in a third transaction,
  timed on its own ("4 indexes, ssn covering + commit"; it runs after
  people's build, so it may find a little more of the space warm). Every
  query reads through one read-only transaction opened after these commits.
- SQLite: tables ``plain`` and ``people``, both ``(id INTEGER PRIMARY KEY,
  ssn INT, age INT, city TEXT, score REAL, name TEXT)``; ``people`` also has
  a unique index on ssn and indexes on age, city and score (the four CREATE
  INDEX statements timed together); then ``ANALYZE``, timed apart. Then,
  timed apart step by step, a third table ``people_covering`` with the same
  columns and rows, indexed like ``people`` except that its ssn index is
  SQLite's covering counterpart, ``CREATE INDEX ... ON people_covering(ssn,
  age, city, score, name)``: it holds every selected column (id is the rowid,
  which ends every SQLite index entry), so a query on ssn reads no table row
  ("USING COVERING INDEX"). It is not UNIQUE (SQLite has no unique key with
  included columns); ``ANALYZE people_covering`` follows. A separate table,
  so that no plan of ``people`` (rows 1, 2, 3i) can switch to this index.
- Workload 6 adds 100,000 accounts ``(id, person_id, balance)``, one per
  person (person_id is a random permutation of the ids): a ProtoBase
  ``Dictionary`` of ``Account(DBObject)`` keyed by id and an SQLite table;
  neither has an index on person_id.

Workloads (each row prints ProtoBase's figure, SQLite's, the ratio of their
median times and the targets' PASS/MISS; a MISS never makes the exit status
non-zero). Every workload runs at every N, except 6 (N = 100,000 only):

1. indexed equality lookup, one row: ``where(F.ssn == v).to_list()`` on
   ``people`` for 2,000 random ssn values; SQLite ``SELECT ... FROM people
   WHERE ssn = ?``. Queries/s and the median latency. Targets: >= 50,000
   queries/s; median latency <= 2x SQLite's.
   1w (information): the same lookups through ``WherePlan(filter=...,
   based_on=people).execute()``, without the builder.
   1c (information): the same lookups on ``people_covering``, through its
   covering unique ssn index (no row read from the dictionary), vs SQLite's
   ``SELECT ... FROM people_covering WHERE ssn = ?`` (its covering index).
2. indexed range of 100 rows: ``where(F.ssn.between(x, x + 99)).to_list()``
   for random x (1,000 values; 500 with --quick); SQLite ``WHERE ssn BETWEEN
   ? AND ?``. Target: median latency <= 3x SQLite's.
   2c: the same ranges on ``people_covering``, answered by the covering ssn
   index alone, vs the same SQLite query on ``people_covering`` (answered by
   its covering index alone). Target: median latency <= 3x SQLite's.
3. full scan with a two-term filter over the unindexed ``plain``:
   ``where((F.age > 50) & (F.city == "city3")).count()``; SQLite ``SELECT
   count(*) FROM plain WHERE age > ? AND city = ?`` (a scan too). Rows
   scanned per second = N / median time. Target: >= 500,000 rows/s.
   3i (information): the same query on the indexed ``people``, in queries/s.
4. ORDER BY + LIMIT over ``plain``: ``order_by(-F.score).limit(10)
   .to_list()``; SQLite ``ORDER BY score DESC LIMIT 10`` (its sorter keeps
   only the top 10 too). Target: ProtoBase's median time <= 2x its own time
   in row 3 at the same N (a top-k heap is O(n log k): about one more pass).
5. GROUP BY with 3 aggregates over ``plain``: ``group_by("city", n=("count",
   None), avg=("avg", "score"), mx=("max", "age")).to_list()``; SQLite
   ``SELECT city, count(*), avg(score), max(age) FROM plain GROUP BY city``.
   Rows/s = N / median time. Target: >= 300,000 rows/s.
6. hash join, 100,000 people x 100,000 accounts:
   ``query(plain).join(accounts, on=("id", "person_id")).to_list()`` (100,000
   JoinRows); SQLite ``SELECT ... FROM plain p JOIN accounts a ON
   a.person_id = p.id``, with the plan SQLite picks (it scans accounts and
   looks people up by primary key). Throughput counts input rows: (100,000 +
   100,000) / median time. Target: >= 200,000 rows/s.
7. building the 4 indexes over N rows: ProtoBase's transaction that adds
   the 4 indexes to ``plain``'s dictionary and commits it as ``people``
   vs SQLite's four CREATE INDEX statements alone (without the ANALYZE
   that follows them). One build of each, no repetitions; rows/s = N /
   time. Target: ProtoBase's time <= 5x SQLite's (asked at 1,000,000 rows,
   judged at 100,000 too).
8. (information) the write cost of a covering index: one-row updates, each
   committed in its own transaction, of a random person's (indexed) score:
   ProtoBase ``with db.transaction() as tr: tr.set_root_object("people",
   people.set_at(k, people.get_at(k)._setattr("score", s)))`` on
   MemoryStorage; SQLite ``UPDATE people SET score = ? WHERE id = ?`` in
   autocommit mode. 200 updates with --quick, 500 otherwise, after 20
   untimed ones; updates/s = 1 / the median time (the details also hold the
   mean and the slowest update).
   8c: the same updates on ``people_covering`` (ProtoBase and SQLite), where
   the ssn index's copy of the row changes too. Its label gives ProtoBase's
   median time over row 8's (what covering costs a write); its details also
   hold SQLite's, and both systems' index build time with ssn covering over
   without (printed in the Build line too).

How it measures (time.perf_counter throughout):

- Every ProtoBase query is written with the fluent builder (``tr.query(...)``)
  and built anew for each execution, so building and planning the query are
  inside the timed region, as they are for a user. SQLite runs
  ``con.execute(sql, params).fetchall()``, whose statement cache keeps the
  prepared statement.
- ProtoBase returns its objects (Person, or Row / JoinRow); SQLite returns
  tuples of the selected columns. The untimed first run of every query
  checks that both systems give the same answer.
- 1, 1w, 1c, 2 and 2c: one untimed pass over the values, then timed passes
  (2 with --quick, 3 at 1,000,000 rows, 5 otherwise), ProtoBase and SQLite
  alternating pass by pass, each query timed on its own. The latency is the
  median over all timed queries; queries/s the median over the passes of
  queries / pass time. The untimed pass of 1c and 2c compares whole rows.
- 3 to 6: one untimed run, then repetitions (3 with --quick and at
  1,000,000 rows, 5 otherwise), ProtoBase and SQLite alternating; the
  figure is the median time.
- 8 and 8c: the four writers (ProtoBase people, SQLite people, ProtoBase
  people_covering, SQLite people_covering) alternate update by update and
  apply the same (key, score) changes, each update timed on its own; the
  figure is the median. They run last, after every query (the read
  transaction keeps its snapshot); afterwards, untimed, both roots, the
  covering index and both tables must hold every new score.
- ``gc.collect()`` before every timed pass or repetition; the collector
  stays on, as it is for users.
- The "index" column says whether the plan used an index: ProtoBase's
  ``explain().uses_index`` after the run, SQLite's ``EXPLAIN QUERY PLAN``.
  The plans of the largest N are printed after the table.
- The "CPU share" column is the median, over the timed passes or runs, of
  the process's CPU time (``time.process_time``) over the wall-clock time.
  The queries run on one thread, so well below 100% means other processes
  had the CPU part of the time and that row's wall-clock figures are
  pessimistic (the targets are still judged on wall-clock time). Row 7
  runs no query and has neither column ("—"); rows 8 and 8c have no index
  column and one CPU share over all their updates.
- The build times (ProtoBase: objects and commit, indexes and commit, the
  covering root's indexes and commit; SQLite: inserts, CREATE INDEX,
  ANALYZE, then people_covering's inserts, CREATE INDEX and ANALYZE) and the
  time of the untimed first scan (it decodes every row into the
  transaction) are printed after the table, with the index build time with
  ssn covering over without, for each system; the two plain index builds
  are also row 7.

``--repro NAME`` builds only the ProtoBase data workload NAME needs
(``--rows``, default 100,000) and runs it in a loop for ``--seconds``
(default 10), made for ``python -m cProfile -s tottime bench/queries.py
--repro NAME``. Under cProfile, the profiler is paused (``sys.getprofile()``
is its ``Profile``) while the data is built and during the untimed first
run (one pass over the 2,000 values of a lookup or range), so the profile
shows the warm loop only. NAME is one of: lookup,
lookup-plan (the lookup through WherePlan), lookup-covering, range,
range-covering (the two on people_covering, also built), scan,
scan-indexed, orderby, groupby, join.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from common import Target, machine_info, progress
from progress_bars import track

from protobase import (
    DBObject,
    Dictionary,
    F,
    MemoryStorage,
    ObjectSpace,
    Query,
    WherePlan,
    register_class,
)

SEED = 20240601
CITIES = [f"city{i}" for i in range(100)]
SSN_BASE = 100_000_000
INDEXED_FIELDS = ("ssn", "age", "city", "score")
JOIN_ROWS = 100_000  # workload 6: people x accounts, at this N only
RANGE_ROWS = 100  # workload 2
SCAN_AGE, SCAN_CITY = 50, "city3"  # workloads 3 and 3i
SCAN_PARAMS = (SCAN_AGE, SCAN_CITY)
TOP = 10  # workload 4
COLUMNS = "id, ssn, age, city, score, name"

SQL_LOOKUP = f"SELECT {COLUMNS} FROM people WHERE ssn = ?"
SQL_RANGE = f"SELECT {COLUMNS} FROM people WHERE ssn BETWEEN ? AND ?"
# rows 1c and 2c: the same queries on the table whose ssn index holds every selected column
SQL_LOOKUP_COVERING = f"SELECT {COLUMNS} FROM people_covering WHERE ssn = ?"
SQL_RANGE_COVERING = f"SELECT {COLUMNS} FROM people_covering WHERE ssn BETWEEN ? AND ?"
# SQLite's covering ssn index: the other selected columns after ssn (id, the rowid, ends
# every entry of every SQLite index, so listing it again would store it twice)
SQLITE_COVERING_COLUMNS = "ssn, age, city, score, name"
SQL_UPDATE = "UPDATE {table} SET score = ? WHERE id = ?"  # rows 8 and 8c
UPDATE_WARMUP = 20  # rows 8 and 8c: untimed updates before the timed ones
SQL_SCAN = "SELECT count(*) FROM {table} WHERE age > ? AND city = ?"
SQL_TOP = f"SELECT {COLUMNS} FROM plain ORDER BY score DESC LIMIT ?"
SQL_GROUP = "SELECT city, count(*), avg(score), max(age) FROM plain GROUP BY city"
SQL_JOIN = (
    "SELECT p.id, p.ssn, p.age, p.city, p.score, p.name, a.id, a.person_id, a.balance "
    "FROM plain p JOIN accounts a ON a.person_id = p.id"
)

PersonTuple = tuple[int, int, int, str, float, str]
AccountTuple = tuple[int, int, float]

# the build-time keys of the indexed roots (row 7, and the covering build of rows 8 and 8c)
PB_INDEXES_BUILD = f"{len(INDEXED_FIELDS)} indexes + commit"
PB_COVERING_BUILD = f"{len(INDEXED_FIELDS)} indexes, ssn covering + commit"
SQ_INDEXES_BUILD = f"{len(INDEXED_FIELDS)} indexes"
SQ_COVERING_INSERTS = "people_covering inserts"
SQ_COVERING_BUILD = f"people_covering {len(INDEXED_FIELDS)} indexes, ssn covering"
SQ_COVERING_ANALYZE = "people_covering ANALYZE"


# -- the data ------------------------------------------------------------------------------


@register_class("bench.Person")
class Person(DBObject):
    """A person: id, ssn, age, city, score, name."""


@register_class("bench.Account")
class Account(DBObject):
    """An account: id, person_id, balance."""


def people_data(n: int) -> list[PersonTuple]:
    """`n` people as tuples in column order, the same on every run."""
    rng = random.Random(SEED + n)
    ssns = list(range(SSN_BASE, SSN_BASE + n))
    rng.shuffle(ssns)
    return [
        (i, ssns[i], rng.randrange(100), CITIES[rng.randrange(100)], rng.random() * 1000, f"p{i}")
        for i in range(n)
    ]


def accounts_data(n: int) -> list[AccountTuple]:
    """`n` accounts, one per person id 0..n-1, in a random order of owners."""
    rng = random.Random(SEED - n)
    owners = list(range(n))
    rng.shuffle(owners)
    return [(i, owners[i], round(rng.random() * 10_000, 2)) for i in range(n)]


def person_tuple(person: Any) -> PersonTuple:
    """A Person as the tuple of its columns, in SQLite's column order."""
    return (person.id, person.ssn, person.age, person.city, person.score, person.name)


@dataclass
class PBData:
    """The ProtoBase side: the space, the read transaction and its collections.

    `db` is the database, for the write transactions of rows 8 and 8c;
    `people_covering` is None unless `build_protobase` was asked for it.
    """

    space: ObjectSpace
    db: Any
    tr: Any
    plain: Any
    people: Any
    people_covering: Any
    accounts: Any
    build: dict[str, float]

    def close(self) -> None:
        self.tr.abort()
        self.space.close()


def indexed(collection: Any, indexes: Sequence[str], covering: bool) -> Any:
    """`collection` with `indexes` (ssn unique; and covering if `covering`)."""
    for name in indexes:
        collection = collection.add_index(
            name, unique=name == "ssn", covering=covering and name == "ssn"
        )
    return collection


def build_protobase(
    people: list[PersonTuple],
    accounts: list[AccountTuple] | None,
    indexes: Sequence[str],
    covering: bool = False,
) -> PBData:
    """Commit `people` (and `accounts`), then `people` with `indexes`; open a read transaction.

    With `covering`, a third transaction, timed on its own, commits
    ``people_covering``: `people` again with the same `indexes`, ssn's covering.
    """
    space = ObjectSpace(MemoryStorage())
    db = space.new_database("q")
    build: dict[str, float] = {}
    start = time.perf_counter()
    with db.transaction() as tr:
        tr.set_root_object(
            "plain",
            Dictionary(
                (p[0], Person(id=p[0], ssn=p[1], age=p[2], city=p[3], score=p[4], name=p[5]))
                for p in people
            ),
        )
        if accounts is not None:
            tr.set_root_object(
                "accounts",
                Dictionary(
                    (a[0], Account(id=a[0], person_id=a[1], balance=a[2])) for a in accounts
                ),
            )
    build["objects + commit"] = time.perf_counter() - start
    if indexes:
        start = time.perf_counter()
        with db.transaction() as tr:
            tr.set_root_object("people", indexed(tr.get_root_object("plain"), indexes, False))
        build[f"{len(indexes)} indexes + commit"] = time.perf_counter() - start
    if indexes and covering:
        start = time.perf_counter()
        with db.transaction() as tr:
            covered = indexed(tr.get_root_object("plain"), indexes, True)
            tr.set_root_object("people_covering", covered)
        build[f"{len(indexes)} indexes, ssn covering + commit"] = time.perf_counter() - start
    tr = db.new_read_only_transaction()
    return PBData(
        space=space,
        db=db,
        tr=tr,
        plain=tr.get_root_object("plain"),
        people=tr.get_root_object("people"),
        people_covering=tr.get_root_object("people_covering"),
        accounts=tr.get_root_object("accounts"),
        build=build,
    )


def build_sqlite(
    people: list[PersonTuple], accounts: list[AccountTuple] | None
) -> tuple[sqlite3.Connection, dict[str, float]]:
    """An in-memory database with tables plain, people (indexed), accounts, people_covering.

    people_covering (rows 1c, 2c, 8c) is built after the others, each step
    timed under its own key: its ssn index holds every selected column.
    """
    con = sqlite3.connect(":memory:", isolation_level=None)
    build: dict[str, float] = {}
    start = time.perf_counter()
    for table in ("plain", "people"):
        con.execute(
            f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, ssn INT, age INT, city TEXT, "
            "score REAL, name TEXT)"
        )
        con.execute("BEGIN")
        con.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?)", people)
        con.execute("COMMIT")
    if accounts is not None:
        con.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, person_id INT, balance REAL)")
        con.execute("BEGIN")
        con.executemany("INSERT INTO accounts VALUES (?, ?, ?)", accounts)
        con.execute("COMMIT")
    build["inserts"] = time.perf_counter() - start
    start = time.perf_counter()
    for name in INDEXED_FIELDS:
        unique = "UNIQUE " if name == "ssn" else ""
        con.execute(f"CREATE {unique}INDEX people_{name} ON people ({name})")
    build[f"{len(INDEXED_FIELDS)} indexes"] = time.perf_counter() - start
    start = time.perf_counter()
    con.execute("ANALYZE")
    build["ANALYZE"] = time.perf_counter() - start
    start = time.perf_counter()
    con.execute(
        "CREATE TABLE people_covering (id INTEGER PRIMARY KEY, ssn INT, age INT, city TEXT, "
        "score REAL, name TEXT)"
    )
    con.execute("BEGIN")
    con.executemany("INSERT INTO people_covering VALUES (?, ?, ?, ?, ?, ?)", people)
    con.execute("COMMIT")
    build[SQ_COVERING_INSERTS] = time.perf_counter() - start
    start = time.perf_counter()
    for name in INDEXED_FIELDS:
        columns = SQLITE_COVERING_COLUMNS if name == "ssn" else name
        con.execute(f"CREATE INDEX people_covering_{name} ON people_covering ({columns})")
    build[SQ_COVERING_BUILD] = time.perf_counter() - start
    start = time.perf_counter()
    con.execute("ANALYZE people_covering")
    build[SQ_COVERING_ANALYZE] = time.perf_counter() - start
    return con, build


# -- the ProtoBase queries, as users write them ----------------------------------------------


def pb_lookup(tr: Any, people: Any, ssn: int) -> Query:
    return tr.query(people).where(F.ssn == ssn)


def pb_range(tr: Any, people: Any, low: int) -> Query:
    return tr.query(people).where(F.ssn.between(low, low + RANGE_ROWS - 1))


def pb_scan(tr: Any, people: Any) -> Query:
    return tr.query(people).where((F.age > SCAN_AGE) & (F.city == SCAN_CITY))


def pb_count(tr: Any, people: Any) -> int:
    return pb_scan(tr, people).count()


def pb_top(tr: Any, people: Any) -> Query:
    return tr.query(people).order_by(-F.score).limit(TOP)


def pb_group(tr: Any, people: Any) -> Query:
    return tr.query(people).group_by(
        "city", n=("count", None), avg=("avg", "score"), mx=("max", "age")
    )


def pb_join(tr: Any, people: Any, accounts: Any) -> Query:
    return tr.query(people).join(accounts, on=("id", "person_id"))


def pb_update(db: Any, name: str, key: int, score: float) -> None:
    """Rows 8 and 8c: set one person's score in root `name`, in its own transaction."""
    with db.transaction() as tr:
        people = tr.get_root_object(name)
        tr.set_root_object(name, people.set_at(key, people.get_at(key)._setattr("score", score)))


# -- measuring -------------------------------------------------------------------------------


def timed_pass(
    run: Callable[[Any], Any], values: Sequence[Any]
) -> tuple[float, float, list[float]]:
    """Run ``run(v)`` for every value, each timed: ``(pass seconds, CPU seconds, latencies)``."""
    gc.collect()
    clock = time.perf_counter
    latencies = []
    cpu = time.process_time()
    start = clock()
    for value in values:
        began = clock()
        run(value)
        latencies.append(clock() - began)
    return clock() - start, time.process_time() - cpu, latencies


def many_queries(
    runs: dict[str, Callable[[Any], Any]], values: Sequence[Any], passes: int
) -> dict[str, dict[str, Any]]:
    """Queries/s (median over passes) and median latency of each system's `run`.

    The caller has already made the untimed pass; the systems alternate pass by pass.
    """
    rates: dict[str, list[float]] = {system: [] for system in runs}
    cpus: dict[str, list[float]] = {system: [] for system in runs}
    latencies: dict[str, list[float]] = {system: [] for system in runs}
    for _ in range(passes):
        for system, run in runs.items():
            seconds, cpu, each = timed_pass(run, values)
            rates[system].append(len(values) / seconds)
            cpus[system].append(cpu / seconds)
            latencies[system].extend(each)
    return {
        system: {
            "rate": statistics.median(rates[system]),
            "latency": statistics.median(latencies[system]),
            "pass_rates": rates[system],
            "pass_cpu_share": cpus[system],
        }
        for system in runs
    }


def repeated(runs: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """The seconds of each of `reps` runs per system, the systems alternating.

    Also the process CPU seconds of each run, under "<system> cpu": on a shared
    machine, a wall-clock time well above its CPU time means another process had the CPU.
    """
    times: dict[str, list[float]] = {}
    for _ in range(reps):
        for system, run in runs.items():
            gc.collect()
            cpu = time.process_time()
            start = time.perf_counter()
            run()
            times.setdefault(system, []).append(time.perf_counter() - start)
            times.setdefault(f"{system} cpu", []).append(time.process_time() - cpu)
    return times


def first_run(run: Callable[[], Any]) -> tuple[Any, float]:
    """The untimed first run's result, and how long it took (for information)."""
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def sqlite_all(con: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return con.execute(sql, params).fetchall()


def sqlite_plan(con: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[str]:
    return [row[3] for row in con.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]


def sqlite_uses_index(plan: list[str]) -> bool:
    """Whether SQLite searches an index or the primary key ("SCAN t" alone does not)."""
    return any(" USING " in step for step in plan)


# -- results ---------------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    workload: str
    n: int
    unit: str  # what the rates count: "q/s" (queries) or "rows/s"
    pb_rate: float
    sq_rate: float
    pb_time: float  # median seconds of one query
    sq_time: float
    pb_index: bool | None  # did the plan use an index; None where there is no query
    sq_index: bool | None
    targets: list[Target] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def time_ratio(self) -> float:
        """ProtoBase's median time over SQLite's: above 1, ProtoBase is slower."""
        return self.pb_time / self.sq_time

    def cpu_share(self, system: str) -> float | None:
        """The median over the timed passes or runs of `system`'s CPU time / wall-clock time."""
        details = self.details
        if "seconds" in details:
            times = details["seconds"]
            pairs = zip(times[f"{system} cpu"], times[system], strict=True)
            return statistics.median(cpu / wall for cpu, wall in pairs)
        if system in details:
            return float(statistics.median(details[system]["pass_cpu_share"]))
        return None


def fmt_rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}"


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:,.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:,.2f} ms"
    return f"{seconds:,.3f} s"


def fmt_rows(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def yes_no(value: bool | None) -> str:
    return "—" if value is None else "yes" if value else "no"


def table(rows: list[Row]) -> str:
    lines = [
        "| # | N | workload | ProtoBase | SQLite | PB median | SQLite median | PB/SQLite time "
        "| index PB / SQLite | CPU share PB / SQLite | target | result |",
        "|---|--:|---|--:|--:|--:|--:|--:|---|---|---|---|",
    ]
    for row in rows:
        targets = "; ".join(t.text for t in row.targets) or "—"
        results = "; ".join("PASS" if t.passed else "MISS" for t in row.targets) or "—"
        index = f"{yes_no(row.pb_index)} / {yes_no(row.sq_index)}"
        shares = " / ".join(
            "—" if share is None else f"{share:.0%}"
            for share in (row.cpu_share("protobase"), row.cpu_share("sqlite"))
        )
        lines.append(
            f"| {row.key} | {fmt_rows(row.n)} | {row.workload} | "
            f"{fmt_rate(row.pb_rate, row.unit)} | {fmt_rate(row.sq_rate, row.unit)} | "
            f"{fmt_time(row.pb_time)} | {fmt_time(row.sq_time)} | {row.time_ratio:.2f}x | "
            f"{index} | {shares} | {targets} | {results} |"
        )
    return "\n".join(lines)


# -- the machine -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return machine_info(("protobase", "msgpack", "xxhash"))


# -- the workloads at one N ------------------------------------------------------------------


@dataclass
class Settings:
    """How big and how often the workloads run: full mode or --quick."""

    quick: bool
    sizes: list[int]
    lookups: int  # random values for workloads 1, 1w and 1c
    ranges: int  # random values for workloads 2 and 2c
    updates: int  # timed one-row updates of rows 8 and 8c, per system and collection
    passes: Callable[[int], int]  # timed passes for 1, 1w, 1c, 2 and 2c, by N
    reps: Callable[[int], int]  # repetitions for 3 to 6, by N

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


@dataclass
class SizeRun:
    """Both systems built with `n` people, and what the workloads at this N share."""

    n: int
    pb: PBData
    con: sqlite3.Connection
    passes: int  # timed passes for 1, 1w and 2
    reps: int  # repetitions for 3 to 6
    plans: dict[str, Any] = field(default_factory=dict)  # ProtoBase's explain() by row

    @property
    def tr(self) -> Any:
        return self.pb.tr


def check(same: bool, what: str) -> None:
    if not same:
        raise AssertionError(f"ProtoBase and SQLite disagree on {what}")


def build_both(n: int) -> tuple[PBData, sqlite3.Connection, dict[str, Any]]:
    """Generate `n` people (and the accounts at JOIN_ROWS) and load both systems.

    Returns ProtoBase's data, SQLite's connection and the build times.
    """
    progress(f"N={n:,}: generating the data")
    people = people_data(n)
    accounts = accounts_data(n) if n == JOIN_ROWS else None
    progress(
        f"N={n:,}: building ProtoBase (plain, then people and people_covering with "
        f"{len(INDEXED_FIELDS)} indexes)"
    )
    pb = build_protobase(people, accounts, INDEXED_FIELDS, covering=True)
    progress(
        f"N={n:,}: ProtoBase built: " + ", ".join(f"{k} {v:.1f} s" for k, v in pb.build.items())
    )
    con, sq_build = build_sqlite(people, accounts)
    progress(f"N={n:,}: SQLite built: " + ", ".join(f"{k} {v:.1f} s" for k, v in sq_build.items()))
    return pb, con, {"protobase_build_s": pb.build, "sqlite_build_s": sq_build}


def lookup_row(run: SizeRun, values: list[int], covering: bool = False) -> Row:
    """Row 1: indexed equality lookups of `values`, one row each.

    With `covering`, row 1c (information): the same lookups on people_covering,
    whose unique ssn index keeps the rows, vs SQLite's table people_covering,
    whose ssn index holds every selected column; the untimed pass compares
    whole rows, not only ids.
    """
    n, tr, pb, con = run.n, run.tr, run.pb, run.con
    key = "1c" if covering else "1"
    collection = pb.people_covering if covering else pb.people
    sql = SQL_LOOKUP_COVERING if covering else SQL_LOOKUP
    kind = "covering " if covering else ""
    progress(f"N={n:,}: workload {key}: {len(values):,} {kind}indexed lookups")
    for v in values:
        got = pb_lookup(tr, collection, v).to_list()
        expected = con.execute(sql, (v,)).fetchall()
        if covering:
            check([person_tuple(p) for p in got] == expected, f"ssn == {v} ({key})")
        else:
            check([p.id for p in got] == [r[0] for r in expected], f"ssn == {v}")
    query = pb_lookup(tr, collection, values[0])
    query.to_list()
    run.plans[key] = str(query.explain())
    sq_plan = sqlite_plan(con, sql, (values[0],))
    lookups = many_queries(
        {
            "protobase": lambda v: pb_lookup(tr, collection, v).to_list(),
            "sqlite": lambda v: con.execute(sql, (v,)).fetchall(),
        },
        values,
        run.passes,
    )
    pb1, sq1 = lookups["protobase"], lookups["sqlite"]
    ratio = pb1["latency"] / sq1["latency"]
    if covering:
        workload = (
            "same through a covering unique index (`F.ssn == v` on people_covering; "
            f"SQLite: index on ({SQLITE_COVERING_COLUMNS})) (information)"
        )
        targets = []
    else:
        workload = "indexed equality lookup, 1 row (`F.ssn == v`)"
        targets = [
            Target(">= 50,000 q/s", pb1["rate"] >= 50_000),
            Target("latency <= 2x SQLite", ratio <= 2),
        ]
    return Row(
        key,
        workload,
        n,
        "q/s",
        pb1["rate"],
        sq1["rate"],
        pb1["latency"],
        sq1["latency"],
        query.explain().uses_index,
        sqlite_uses_index(sq_plan),
        targets,
        {"protobase": pb1, "sqlite": sq1, "sqlite_plan": sq_plan},
    )


def plan_lookup_row(run: SizeRun, values: list[int]) -> Row:
    """Row 1w: the lookups of row 1 through ``WherePlan(...).execute()``, without the builder."""
    con, people_plan = run.con, run.pb.people
    progress(f"N={run.n:,}: workload 1w: the same lookups through WherePlan, no builder")

    def plan_lookup(v: int) -> list[Any]:
        return list(WherePlan(filter=F.ssn == v, based_on=people_plan).execute())

    for v in values:
        plan_lookup(v)
    direct = many_queries(
        {
            "protobase": plan_lookup,
            "sqlite": lambda v: con.execute(SQL_LOOKUP, (v,)).fetchall(),
        },
        values,
        run.passes,
    )
    where = WherePlan(filter=F.ssn == values[0], based_on=people_plan)
    list(where.execute())
    sq_plan = sqlite_plan(con, SQL_LOOKUP, (values[0],))
    return Row(
        "1w",
        "same, `WherePlan(...).execute()` without the builder (information)",
        run.n,
        "q/s",
        direct["protobase"]["rate"],
        direct["sqlite"]["rate"],
        direct["protobase"]["latency"],
        direct["sqlite"]["latency"],
        where.explain().uses_index,
        sqlite_uses_index(sq_plan),
        details={"protobase": direct["protobase"], "sqlite": direct["sqlite"]},
    )


def range_row(run: SizeRun, lows: list[int], covering: bool = False) -> Row:
    """Row 2: indexed ranges of RANGE_ROWS rows, starting at each of `lows`.

    With `covering`, row 2c: the same ranges on people_covering, answered by
    its covering ssn index alone, vs SQLite's table people_covering, whose ssn
    index holds every selected column (it reads no table row either); the
    same target. The untimed pass compares whole rows, not only ids.
    """
    n, tr, pb, con = run.n, run.tr, run.pb, run.con
    key = "2c" if covering else "2"
    collection = pb.people_covering if covering else pb.people
    sql = SQL_RANGE_COVERING if covering else SQL_RANGE
    kind = "covering " if covering else ""
    progress(f"N={n:,}: workload {key}: {len(lows):,} {kind}indexed ranges of {RANGE_ROWS} rows")
    for low in lows:
        found = pb_range(tr, collection, low).to_list()
        expected = con.execute(sql, (low, low + RANGE_ROWS - 1)).fetchall()
        if covering:
            got_rows = sorted(person_tuple(p) for p in found)
            check(len(got_rows) == RANGE_ROWS and got_rows == sorted(expected), "a range (2c)")
        else:
            got = sorted(p.id for p in found)
            check(len(got) == RANGE_ROWS and got == sorted(r[0] for r in expected), "a range")
    query = pb_range(tr, collection, lows[0])
    query.to_list()
    run.plans[key] = str(query.explain())
    sq_plan = sqlite_plan(con, sql, (lows[0], lows[0] + RANGE_ROWS - 1))
    ranges = many_queries(
        {
            "protobase": lambda low: pb_range(tr, collection, low).to_list(),
            "sqlite": lambda low: con.execute(sql, (low, low + RANGE_ROWS - 1)).fetchall(),
        },
        lows,
        run.passes,
    )
    pb2, sq2 = ranges["protobase"], ranges["sqlite"]
    workload = f"indexed range, {RANGE_ROWS} rows (`F.ssn.between(x, x + {RANGE_ROWS - 1})`)"
    if covering:
        workload = (
            f"indexed range, {RANGE_ROWS} rows, covering index (`F.ssn.between(x, x + "
            f"{RANGE_ROWS - 1})` on people_covering; SQLite: index on "
            f"({SQLITE_COVERING_COLUMNS}))"
        )
    return Row(
        key,
        workload,
        n,
        "q/s",
        pb2["rate"],
        sq2["rate"],
        pb2["latency"],
        sq2["latency"],
        query.explain().uses_index,
        sqlite_uses_index(sq_plan),
        [Target("latency <= 3x SQLite", pb2["latency"] <= 3 * sq2["latency"])],
        {"protobase": pb2, "sqlite": sq2, "sqlite_plan": sq_plan},
    )


def scan_row(run: SizeRun, key: str) -> Row:
    """Row 3 (the two-term filter by a scan of plain) or 3i (on the indexed people)."""
    n, tr, con = run.n, run.tr, run.con
    collection, table_name = (run.pb.people, "people") if key == "3i" else (run.pb.plain, "plain")
    progress(f"N={n:,}: workload {key}: two-term filter on {table_name}")
    sql = SQL_SCAN.format(table=table_name)
    query = pb_scan(tr, collection)
    count, first_s = first_run(query.count)
    check(count == con.execute(sql, SCAN_PARAMS).fetchone()[0], f"the count of {key}")
    run.plans[key] = str(query.explain())
    sq_plan = sqlite_plan(con, sql, SCAN_PARAMS)
    times = repeated(
        {
            "protobase": partial(pb_count, tr, collection),
            "sqlite": partial(sqlite_all, con, sql, SCAN_PARAMS),
        },
        run.reps,
    )
    pb3, sq3 = statistics.median(times["protobase"]), statistics.median(times["sqlite"])
    details = {"seconds": times, "matches": count, "first_run_s": first_s, "sqlite_plan": sq_plan}
    indexes = query.explain().uses_index, sqlite_uses_index(sq_plan)
    if key == "3i":
        return Row(
            "3i",
            "same filter on the indexed collection (information)",
            n,
            "q/s",
            1 / pb3,
            1 / sq3,
            pb3,
            sq3,
            *indexes,
            details=details,
        )
    return Row(
        "3",
        "full scan, `(F.age > 50) & (F.city == 'city3')`, count (unindexed)",
        n,
        "rows/s",
        n / pb3,
        n / sq3,
        pb3,
        sq3,
        *indexes,
        [Target(">= 500,000 rows/s", n / pb3 >= 500_000)],
        details,
    )


def top_row(run: SizeRun, scan_time: float) -> Row:
    """Row 4: ORDER BY score DESC LIMIT TOP; `scan_time` is row 3's ProtoBase median."""
    n, tr, pb, con = run.n, run.tr, run.pb, run.con
    progress(f"N={n:,}: workload 4: order by + limit {TOP}")
    query = pb_top(tr, pb.plain)
    top, first_s = first_run(query.to_list)
    expected = con.execute(SQL_TOP, (TOP,)).fetchall()
    check([p.id for p in top] == [r[0] for r in expected], "the top rows")
    run.plans["4"] = str(query.explain())
    sq_plan = sqlite_plan(con, SQL_TOP, (TOP,))
    times = repeated(
        {
            "protobase": lambda: pb_top(tr, pb.plain).to_list(),
            "sqlite": lambda: con.execute(SQL_TOP, (TOP,)).fetchall(),
        },
        run.reps,
    )
    pb4, sq4 = statistics.median(times["protobase"]), statistics.median(times["sqlite"])
    return Row(
        "4",
        f"`order_by(-F.score).limit({TOP})` (unindexed)",
        n,
        "rows/s",
        n / pb4,
        n / sq4,
        pb4,
        sq4,
        query.explain().uses_index,
        sqlite_uses_index(sq_plan),
        [Target(f"<= 2x row 3's PB time ({pb4 / scan_time:.2f}x)", pb4 <= 2 * scan_time)],
        {"seconds": times, "first_run_s": first_s, "sqlite_plan": sq_plan},
    )


def group_row(run: SizeRun) -> Row:
    """Row 5: GROUP BY city with 3 aggregates over plain."""
    n, tr, pb, con = run.n, run.tr, run.pb, run.con
    progress(f"N={n:,}: workload 5: group by with 3 aggregates")
    query = pb_group(tr, pb.plain)
    groups, first_s = first_run(query.to_list)
    expected = con.execute(SQL_GROUP).fetchall()
    mine = {g.city: (g.n, g.mx, round(g.avg, 6)) for g in groups}
    check(mine == {r[0]: (r[1], r[3], round(r[2], 6)) for r in expected}, "the groups")
    run.plans["5"] = str(query.explain())
    sq_plan = sqlite_plan(con, SQL_GROUP)
    times = repeated(
        {
            "protobase": lambda: pb_group(tr, pb.plain).to_list(),
            "sqlite": lambda: con.execute(SQL_GROUP).fetchall(),
        },
        run.reps,
    )
    pb5, sq5 = statistics.median(times["protobase"]), statistics.median(times["sqlite"])
    return Row(
        "5",
        "`group_by('city', count, avg score, max age)` (unindexed)",
        n,
        "rows/s",
        n / pb5,
        n / sq5,
        pb5,
        sq5,
        query.explain().uses_index,
        sqlite_uses_index(sq_plan),
        [Target(">= 300,000 rows/s", n / pb5 >= 300_000)],
        {"seconds": times, "first_run_s": first_s, "sqlite_plan": sq_plan},
    )


def join_row(run: SizeRun) -> Row:
    """Row 6: the hash join of plain and accounts (only where the accounts were built)."""
    n, tr, pb, con = run.n, run.tr, run.pb, run.con
    progress(f"N={n:,}: workload 6: join {n:,} people x {len(pb.accounts):,} accounts")
    inputs = n + len(pb.accounts)
    query = pb_join(tr, pb.plain, pb.accounts)
    joined, first_s = first_run(query.to_list)
    expected = con.execute(SQL_JOIN).fetchall()
    check(
        sorted((j.left.id, j.right.id) for j in joined) == sorted((r[0], r[6]) for r in expected),
        "the joined pairs",
    )
    run.plans["6"] = str(query.explain())
    sq_plan = sqlite_plan(con, SQL_JOIN)
    del joined, expected
    times = repeated(
        {
            "protobase": lambda: pb_join(tr, pb.plain, pb.accounts).to_list(),
            "sqlite": lambda: con.execute(SQL_JOIN).fetchall(),
        },
        run.reps,
    )
    pb6, sq6 = statistics.median(times["protobase"]), statistics.median(times["sqlite"])
    return Row(
        "6",
        f"hash join {fmt_rows(n)} x {fmt_rows(len(pb.accounts))} on id = person_id, input rows/s",
        n,
        "rows/s",
        inputs / pb6,
        inputs / sq6,
        pb6,
        sq6,
        query.explain().uses_index,
        sqlite_uses_index(sq_plan),
        [Target(">= 200,000 rows/s", inputs / pb6 >= 200_000)],
        {"seconds": times, "first_run_s": first_s, "sqlite_plan": sq_plan},
    )


INDEX_BUILD_TARGET = 5.0  # row 7: ProtoBase's index build time <= this x SQLite's


def index_build_row(n: int, build: dict[str, Any]) -> Row:
    """Row 7: the build of the indexed collection, ProtoBase vs SQLite (one build each).

    ProtoBase's time is its ``add_index`` calls and their commit; SQLite's is
    its CREATE INDEX statements alone (ANALYZE is timed apart and left out).
    """
    indexes = len(INDEXED_FIELDS)
    pb_s = build["protobase_build_s"][f"{indexes} indexes + commit"]
    sq_s = build["sqlite_build_s"][f"{indexes} indexes"]
    return Row(
        "7",
        f"{indexes} indexes built over {fmt_rows(n)} rows (PB: add_index + commit; "
        "SQLite: CREATE INDEX, without ANALYZE)",
        n,
        "rows/s",
        n / pb_s,
        n / sq_s,
        pb_s,
        sq_s,
        None,
        None,
        [Target(f"<= {INDEX_BUILD_TARGET:g}x SQLite", pb_s <= INDEX_BUILD_TARGET * sq_s)],
        {"sqlite_analyze_s": build["sqlite_build_s"]["ANALYZE"]},
    )


def timed_updates(
    runs: dict[str, Callable[[int, float], Any]], changes: Sequence[tuple[int, float]]
) -> dict[str, dict[str, Any]]:
    """Each of `runs` applies every ``(key, score)`` of `changes`, each timed on its own.

    The runs alternate change by change (a commit takes milliseconds, and so
    does a burst of load on a shared machine). Per run: the median latency,
    updates/s as 1 / that median (a collection pass landing in one update
    would swing an updates / total time figure by a third), the mean and the
    slowest, and its CPU share (a one-item list, read like a pass's by
    `Row.cpu_share`).
    """
    gc.collect()
    clock, cpu_clock = time.perf_counter, time.process_time
    latencies: dict[str, list[float]] = {name: [] for name in runs}
    cpus = dict.fromkeys(runs, 0.0)
    for key, score in changes:
        for name, run in runs.items():
            cpu = cpu_clock()
            began = clock()
            run(key, score)
            latencies[name].append(clock() - began)
            cpus[name] += cpu_clock() - cpu
    return {
        name: {
            "latency": statistics.median(each),
            "rate": 1 / statistics.median(each),
            "mean_s": sum(each) / len(each),
            "max_s": max(each),
            "pass_cpu_share": [cpus[name] / sum(each)],
        }
        for name, each in latencies.items()
    }


def write_rows(run: SizeRun, updates: int, info: dict[str, Any]) -> list[Row]:
    """Rows 8 and 8c: one-row updates, each committed on its own, on people and people_covering.

    ProtoBase: `pb_update` (MemoryStorage); SQLite: ``UPDATE ... SET score = ?
    WHERE id = ?`` in autocommit mode, on the table indexed like each root
    (people: 4 indexes; people_covering: 4, ssn's holding every column). The
    score is indexed, so an update changes the score index and, in
    people_covering, the ssn index's copy of the row too. The four runs
    alternate update by update and apply the same changes; afterwards (untimed)
    both roots and both tables must hold the new scores, and people_covering's
    ssn index the new rows. Runs after every query row: the read transaction of
    the queries keeps its snapshot.
    """
    n, pb, con = run.n, run.pb, run.con
    progress(f"N={n:,}: workloads 8 and 8c: {updates:,} one-row updates on each collection")
    rng = random.Random(SEED + 8)
    keys = rng.sample(range(n), UPDATE_WARMUP + updates)
    changes = [(key, round(rng.random() * 1000, 6)) for key in keys]
    runs: dict[str, Callable[[int, float], Any]] = {}
    for table in ("people", "people_covering"):
        update_sql = SQL_UPDATE.format(table=table)
        runs[f"protobase {table}"] = partial(pb_update, pb.db, table)
        runs[f"sqlite {table}"] = lambda key, score, sql=update_sql: con.execute(sql, (score, key))
    timed_updates(runs, changes[:UPDATE_WARMUP])
    measured = timed_updates(runs, changes[UPDATE_WARMUP:])
    tr = pb.db.new_read_only_transaction()
    try:
        plain_root = tr.get_root_object("people")
        covering_root = tr.get_root_object("people_covering")
        for key, score in changes:
            row = person_tuple(plain_root.get_at(key))
            check(row[4] == score, f"the score of person {key} after the updates")
            by_index = [person_tuple(p) for p in pb_lookup(tr, covering_root, row[1]).to_list()]
            check(
                by_index == [row] and person_tuple(covering_root.get_at(key)) == row,
                f"person {key} in people_covering and its ssn index after the updates",
            )
            for table in ("people", "people_covering"):
                sq_row = con.execute(f"SELECT {COLUMNS} FROM {table} WHERE id = ?", (key,))
                check(sq_row.fetchall() == [row], f"person {key} in {table} after the updates")
    finally:
        tr.abort()
    pb_builds, sq_builds = info["protobase_build_s"], info["sqlite_build_s"]
    write_ratio = (
        measured["protobase people_covering"]["latency"] / measured["protobase people"]["latency"]
    )
    build_ratio = pb_builds[PB_COVERING_BUILD] / pb_builds[PB_INDEXES_BUILD]
    rows = []
    for key, table in (("8", "people"), ("8c", "people_covering")):
        pb8, sq8 = measured[f"protobase {table}"], measured[f"sqlite {table}"]
        if key == "8":
            workload = (
                "1-row update + commit on people, 4 indexes (PB: `set_at` in its own "
                "transaction; SQLite: UPDATE, autocommit) (information)"
            )
        else:
            workload = (
                "same on people_covering, ssn index covering: the write cost of a covering "
                f"index, PB time {write_ratio:.2f}x row 8's PB time (information)"
            )
        details: dict[str, Any] = {"protobase": pb8, "sqlite": sq8, "updates": updates}
        if key == "8c":
            details["protobase_covering_over_plain_update"] = write_ratio
            details["protobase_covering_over_plain_build"] = build_ratio
            details["sqlite_covering_over_plain_update"] = (
                sq8["latency"] / measured["sqlite people"]["latency"]
            )
            details["sqlite_covering_over_plain_build"] = (
                sq_builds[SQ_COVERING_BUILD] / sq_builds[SQ_INDEXES_BUILD]
            )
        rows.append(
            Row(
                key,
                workload,
                n,
                "updates/s",
                pb8["rate"],
                sq8["rate"],
                pb8["latency"],
                sq8["latency"],
                None,
                None,
                details=details,
            )
        )
    return rows


def run_size(n: int, settings: Settings) -> tuple[list[Row], dict[str, Any], dict[str, Any]]:
    """Build both systems with `n` people and run every workload: (rows, plans, build info)."""
    pb, con, info = build_both(n)
    run = SizeRun(n, pb, con, passes=settings.passes(n), reps=settings.reps(n))
    rng = random.Random(SEED + 1)
    values = [SSN_BASE + rng.randrange(n) for _ in range(settings.lookups)]
    lows = [SSN_BASE + rng.randrange(n - RANGE_ROWS + 1) for _ in range(settings.ranges)]
    try:
        rows = [
            lookup_row(run, values),
            plan_lookup_row(run, values),
            lookup_row(run, values, covering=True),
            range_row(run, lows),
            range_row(run, lows, covering=True),
        ]
        scan = scan_row(run, "3")
        info["first_scan_s"] = scan.details["first_run_s"]
        rows += [scan, scan_row(run, "3i"), top_row(run, scan.pb_time), group_row(run)]
        if pb.accounts is not None:
            rows.append(join_row(run))
        run.plans["sqlite"] = {row.key: row.details.get("sqlite_plan") for row in rows}
        rows.append(index_build_row(n, info))
        rows += write_rows(run, settings.updates, info)  # last: it writes
    finally:
        con.close()
        pb.close()
    return rows, run.plans, info


# -- the whole run ---------------------------------------------------------------------------


def settings_for(quick: bool) -> Settings:
    return Settings(
        quick=quick,
        sizes=[100_000] if quick else [100_000, 1_000_000],
        lookups=2_000,
        ranges=500 if quick else 1_000,
        updates=200 if quick else 500,
        passes=lambda n: 2 if quick else 3 if n >= 1_000_000 else 5,
        reps=lambda n: 3 if quick or n >= 1_000_000 else 5,
    )


@dataclass
class Results:
    """Every size's rows, ProtoBase and SQLite plans, and build times."""

    rows: list[Row] = field(default_factory=list)
    plans: dict[int, dict[str, Any]] = field(default_factory=dict)
    builds: dict[int, dict[str, Any]] = field(default_factory=dict)


def run_sizes(settings: Settings) -> Results:
    results = Results()
    for n in track(settings.sizes, "query workloads", "sizes"):
        size_rows, results.plans[n], results.builds[n] = run_size(n, settings)
        results.rows.extend(size_rows)
        gc.collect()
    return results


@dataclass
class Conditions:
    """The run's command, the machine, and the load average before and after the run."""

    command: str
    machine: dict[str, Any]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def print_header(settings: Settings, conditions: Conditions) -> None:
    info, load = conditions.machine, conditions.load_before
    print(f"# ProtoBase query benchmark ({settings.mode} mode)")
    print()
    print(
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, "
        f"Linux {info['kernel']}"
    )
    print(f"- protobase commit: {info['protobase_source']}")
    print(f"- {info['python']}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print("- both systems in memory: ProtoBase MemoryStorage, SQLite ':memory:'")
    print(f"- command: {conditions.command}")
    print(f"- load average at the start: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)")
    print(flush=True)


def print_builds(builds: dict[int, dict[str, Any]]) -> None:
    for n, build in builds.items():
        pb_parts = ", ".join(f"{k} {v:.1f} s" for k, v in build["protobase_build_s"].items())
        sq_parts = ", ".join(f"{k} {v:.2f} s" for k, v in build["sqlite_build_s"].items())
        pb_build, sq_build = build["protobase_build_s"], build["sqlite_build_s"]
        covering = ""
        if PB_COVERING_BUILD in pb_build and SQ_COVERING_BUILD in sq_build:
            covering = (
                " Index build with ssn covering over without: ProtoBase "
                f"{pb_build[PB_COVERING_BUILD] / pb_build[PB_INDEXES_BUILD]:.2f}x, SQLite "
                f"{sq_build[SQ_COVERING_BUILD] / sq_build[SQ_INDEXES_BUILD]:.2f}x."
            )
        print(
            f"Build, N={n:,}: ProtoBase {sum(pb_build.values()):.1f} s "
            f"({pb_parts}); SQLite {sum(sq_build.values()):.2f} s ({sq_parts}). "
            f"First (untimed) run of workload 3, which decodes every row: "
            f"{build['first_scan_s']:.2f} s.{covering}"
        )


def print_plans(plans: dict[str, Any], n: int) -> None:
    """ProtoBase's and SQLite's plans at `n` rows."""
    print(f"ProtoBase plans at N={n:,} (explain() after the untimed first run):")
    print()
    print("```")
    for key, plan in plans.items():
        if key != "sqlite":
            print(f"[{key}]\n{plan}")
    print("```")
    print()
    print(
        "SQLite plans (EXPLAIN QUERY PLAN): "
        + "; ".join(f"[{k}] {' / '.join(v)}" for k, v in plans["sqlite"].items() if v)
    )


def print_results(results: Results, largest: int) -> None:
    """The table, how to read it, the build times and the plans at the `largest` N."""
    print(table(results.rows))
    print()
    print("ProtoBase and SQLite: throughput (q/s = queries per second; rows/s = input rows per")
    print("second). PB/SQLite time: ProtoBase's median time over SQLite's; above 1, ProtoBase is")
    print("slower. The index column: did the plan use an index (ProtoBase / SQLite)?")
    print()
    print_builds(results.builds)
    print()
    print_plans(results.plans[largest], largest)
    print()


def print_footer(rows: list[Row], conditions: Conditions, elapsed: float, cpu: float) -> None:
    """The load at the end, the run's CPU share, the missed targets and the run time."""
    load = conditions.load_after
    print(
        f"Load average at the end: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min). "
        f"This process had the CPU for {cpu / elapsed:.0%} of the run's wall-clock time (all "
        "figures are wall-clock; well below 100% means other processes competed for the CPUs)."
    )
    misses = [
        f"{row.key} at {fmt_rows(row.n)} ({t.text})"
        for row in rows
        for t in row.targets
        if not t.passed
    ]
    print(f"Missed targets: {', '.join(misses) if misses else 'none'}")
    print(f"Total run time: {elapsed:.0f} s")


def write_json(
    path: str,
    settings: Settings,
    conditions: Conditions,
    results: Results,
    elapsed: float,
    cpu: float,
) -> None:
    report = {
        "mode": settings.mode,
        "command": conditions.command,
        "machine": conditions.machine,
        "load_average": {"before": conditions.load_before, "after": conditions.load_after},
        "total_seconds": elapsed,
        "total_cpu_seconds": cpu,
        "builds": results.builds,
        "plans": results.plans,
        "results": [
            {
                "id": row.key,
                "n": row.n,
                "workload": row.workload,
                "unit": row.unit,
                "protobase_rate": row.pb_rate,
                "sqlite_rate": row.sq_rate,
                "protobase_median_s": row.pb_time,
                "sqlite_median_s": row.sq_time,
                "protobase_over_sqlite_time": row.time_ratio,
                "protobase_uses_index": row.pb_index,
                "sqlite_uses_index": row.sq_index,
                "targets": [{"target": t.text, "pass": t.passed} for t in row.targets],
                "details": row.details,
            }
            for row in results.rows
        ],
    }
    Path(path).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"Results written to {path}")


def main_run(args: argparse.Namespace) -> None:
    settings = settings_for(args.quick)
    began, began_cpu = time.perf_counter(), time.process_time()
    conditions = Conditions(
        command="python bench/queries.py" + (" --quick" if settings.quick else ""),
        machine=machine(),
        load_before=os.getloadavg(),
    )
    print_header(settings, conditions)
    results = run_sizes(settings)
    elapsed, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    print_results(results, settings.sizes[-1])
    conditions.load_after = os.getloadavg()
    print_footer(results.rows, conditions, elapsed, cpu)
    if args.json:
        write_json(args.json, settings, conditions, results, elapsed, cpu)


# -- one ProtoBase workload in a loop, for the profiler ----------------------------------------


@contextlib.contextmanager
def profiler_paused() -> Iterator[None]:
    """Pause the profiler of ``python -m cProfile`` (sys.getprofile() is its Profile), if any."""
    profiler: Any = sys.getprofile()
    pausable = hasattr(profiler, "disable") and hasattr(profiler, "enable")
    if pausable:
        profiler.disable()
    try:
        yield
    finally:
        if pausable:
            profiler.enable()


REPROS = (
    "lookup",
    "lookup-plan",
    "lookup-covering",
    "range",
    "range-covering",
    "scan",
    "scan-indexed",
    "orderby",
    "groupby",
    "join",
)
LOOPED_REPROS = ("lookup", "lookup-plan", "lookup-covering", "range", "range-covering")


def repro(name: str, n: int, seconds: float) -> None:
    """Run ProtoBase's workload `name` over `n` rows for about `seconds` (see the docstring)."""
    if name not in REPROS:
        sys.exit(f"no workload {name!r}; choose one of {', '.join(REPROS)}")
    indexes = {
        "lookup": ("ssn",),
        "lookup-plan": ("ssn",),
        "lookup-covering": ("ssn",),
        "range": ("ssn",),
        "range-covering": ("ssn",),
        "scan-indexed": ("age", "city"),
    }.get(name, ())
    covering = name.endswith("-covering")
    with profiler_paused():  # the profile shows the loop only
        start = time.perf_counter()
        people, accounts = people_data(n), accounts_data(n) if name == "join" else None
        pb = build_protobase(people, accounts, indexes, covering=covering)
        del people, accounts
        built = time.perf_counter() - start
        also = "; people_covering too, ssn covering" if covering else ""
        print(f"built {n:,} rows in {built:.1f} s (indexes: {', '.join(indexes) or 'none'}{also})")
        rng = random.Random(SEED + 1)
        values = [SSN_BASE + rng.randrange(n - RANGE_ROWS + 1) for _ in range(2_000)]
    tr = pb.tr
    # name: (one run, given its number; rows each run reads, for rows/s, or 0)
    steps: dict[str, tuple[Callable[[int], Any], int]] = {
        "lookup": (lambda i: pb_lookup(tr, pb.people, values[i % 2_000]).to_list(), 0),
        "lookup-plan": (
            lambda i: list(WherePlan(filter=F.ssn == values[i % 2_000], based_on=pb.people)),
            0,
        ),
        "lookup-covering": (
            lambda i: pb_lookup(tr, pb.people_covering, values[i % 2_000]).to_list(),
            0,
        ),
        "range": (lambda i: pb_range(tr, pb.people, values[i % 2_000]).to_list(), 0),
        "range-covering": (
            lambda i: pb_range(tr, pb.people_covering, values[i % 2_000]).to_list(),
            0,
        ),
        "scan": (lambda i: pb_scan(tr, pb.plain).count(), n),
        "scan-indexed": (lambda i: pb_scan(tr, pb.people).count(), 0),
        "orderby": (lambda i: pb_top(tr, pb.plain).to_list(), n),
        "groupby": (lambda i: pb_group(tr, pb.plain).to_list(), n),
        "join": (lambda i: pb_join(tr, pb.plain, pb.accounts).to_list(), 2 * n),
    }
    step, rows_each = steps[name]
    try:
        with profiler_paused():  # untimed: decodes the rows (and index nodes) it reads
            for i in range(2_000 if name in LOOPED_REPROS else 1):
                step(i)
        done = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            step(done)
            done += 1
        elapsed = time.perf_counter() - start
    finally:
        pb.close()
    per_run = elapsed / done
    rate = f", {rows_each / per_run:,.0f} rows/s" if rows_each else ""
    print(
        f"{name}: {done:,} queries in {elapsed:.1f} s: {done / elapsed:,.1f} queries/s, "
        f"{fmt_time(per_run)} each{rate}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows only, fewer repetitions")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    parser.add_argument(
        "--repro",
        metavar="NAME",
        choices=REPROS,
        help="run one ProtoBase workload in a loop (for cProfile): " + ", ".join(REPROS),
    )
    parser.add_argument(
        "--rows", type=int, default=100_000, help="rows for --repro (default 100,000)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="loop duration for --repro (default 10)"
    )
    args = parser.parse_args()
    if args.repro is not None:
        repro(args.repro, args.rows, args.seconds)
    else:
        main_run(args)


if __name__ == "__main__":
    main()
