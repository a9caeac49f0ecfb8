"""Membership benchmark: add a 4th member to a loaded 3-member cluster, ProtoBase vs etcd.

Run from the repository root::

    python bench/membership.py                  # 1 GiB of data
    python bench/membership.py --quick          # 64 MiB: a smoke test, about a minute
    python bench/membership.py --gib 4          # another size (wins over --quick's)
    python bench/membership.py --json results.json

One run measures two systems, one after the other (each one's processes are
stopped before the next starts, so neither takes CPU from the other), with
their data in one temporary directory under /tmp, removed at the end. Every
process binds 127.0.0.1 on free ports. The same steps for each:

1. Start 3 members on fresh data directories and wait until they are
   healthy (bench/raft.py's `wait_healthy`: every member answers, one
   leader, all caught up).

   - ProtoBase: 3 ``protobase node`` processes configured by `write_configs`
     (what ``protobase cluster up`` writes), ``--partitions`` (8 by default,
     as there) and every other setting at its default (replication 3):
     bench/cluster.py's `ProtoBaseNodes`, on a port range where the 4th
     member's ports (the ones ``cluster add-node`` gives it) are free too.
   - etcd (Debian's ``etcd-server``): bench/raft.py's `EtcdCluster` (every
     setting at its default: fsync on, ``--snapshot-count`` 100,000) plus
     ``--quota-backend-bytes`` 8 GiB, so that the data fits.

2. Load N bytes (1 GiB; ``--quick`` 64 MiB; ``--gib X``) of random,
   incompressible 10 KiB values. Reported: load MiB/s (N over the wall time
   from the go signal to the last acknowledgement).

   - ProtoBase, through the public API: `LOAD_PROCESSES` client processes x
     `LOAD_THREADS` threads, each with its own ``ObjectSpace(SpreadStorage
     (...))``; each thread commits ``db.run`` transactions that add 100
     ``Blob`` objects (a DBObject whose ``data`` is a ``Literal`` of 10 KiB,
     an atom of its own) to its own Dictionary root of database ``blobs``.
     `SpreadStorage` is ClusterFileStorage with uniformly random transaction
     ids: the client's own choice prefers the partitions the meta leader
     leads (a commit then needs no hop between nodes), which on a cluster
     started moments ago puts all the data into one or two partitions, and
     the add would move almost none of it. Spread evenly, the new member's
     share of the replicas holds its share of the data, as in a cluster
     whose leaders have spread and whose clients are many.
   - etcd: ``POST /v3/kv/put`` of 10 KiB values under distinct keys on the
     JSON gateway, `ETCD_LOAD_INFLIGHT` in flight, always to the leader.

3. A client committing small writes one after another starts, and runs
   until the end of step 5: ProtoBase, a thread of this process doing
   bench/cluster.py's `commit_one` (one ``db.run`` that sets one key of the
   Dictionary of database ``b``); etcd, bench/raft.py's `run_load` with 1 in
   flight (100-byte puts to random keys among 10,000). Each acknowledged
   write's start and end are recorded; the windows below count the writes
   that ended in them: writes/s, p50 and p99 latency (failed attempts: in
   each window for ProtoBase, for the whole run for etcd, in the notes).
   After a 1 s warm-up comes the steady window (10 s; 5 s quick).

4. Add a 4th member, timed from the start to done (the "during the add"
   window of step 3 is this interval):

   - ProtoBase: ``protobase cluster add-node DIR`` (protobase/membership_cli.py:
     writes node4.toml with ``join``, starts the node in its own session,
     returns once the map gives member 4 replicas and the meta leader reports
     "balanced"), timed from the command's start to its exit. A thread of
     this process also polls the meta leader's ``/status.json`` every 0.2 s
     and notes when member 4 first holds a replica and when the leader last
     reported "balanced" with member 4 holding replicas (two polls in a row,
     0.6 s apart, with the same map epoch): the command polls once a second.
   - etcd: ``POST /v3/cluster/member/add`` (a voter, as ``etcdctl member
     add m4 --peer-urls=...``), then ``etcd --initial-cluster-state
     existing`` for m4, timed until m4's applied Raft index reaches the
     leader's commit index read just before (``/v3/maintenance/status``,
     polled every 20 ms).

   Then: the new member's data directory (bytes allocated, as ``du``; for
   etcd also its backend ``dbSizeInUse``, since the WAL is preallocated in
   64 MB segments), and MiB/s as that over the add time. "Loaded data" is
   the part of the N loaded bytes the new member holds a copy of, and MiB/s
   as that over the add time: etcd all of it; ProtoBase N x (bytes of the
   Raft logs of the partition groups placed on it) / (bytes of every
   partition group's log), both measured on node 1 just before the add. (All
   atoms of a transaction land in one partition, chosen by the transaction
   id, and the client prefers ids of partitions the meta leader leads: the
   data is not spread evenly over the partitions; the notes print how.)

5. After a 1 s pause, remove the 4th member again, timed the same way: ProtoBase ``protobase
   cluster remove-node URL 4`` (its replicas move back to the others, it is
   forgotten, its process stops by itself); etcd ``POST
   /v3/cluster/member/remove`` (no data moves; m4 then stops by itself).
   The "during the remove" window of step 3 is this interval.

Ratios are ProtoBase / etcd. Every process the benchmark starts is stopped
at the end, on errors, Ctrl-C and SIGTERM too: the nodes and etcd members by
process group (bench/raft.py's exit handler), and the node that ``cluster
add-node`` starts in its own session by its PID (read from the command's
output; this process makes itself the child subreaper, so that node becomes
its child once the command exits and its exit status can be read). Exit
status 2 when the etcd binary is missing.

``--load-client`` is internal: a loading process reads its work on stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import ctypes
import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import raft
from common import filesystem_of, machine_info, progress

import cluster as pbcluster  # bench/cluster.py (this directory comes first on sys.path)
from protobase import DBObject, Literal, ObjectSpace, register_class
from protobase.atoms import new_transaction_id
from protobase.errors import ClusterUnavailableError, StorageError
from protobase.storage.cluster import ClusterFileStorage

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
VALUE_BYTES = 10 * 1024
OBJECTS_PER_TRANSACTION = 100
LOAD_DB = "blobs"
LOAD_PROCESSES = 2
LOAD_THREADS = 2
ETCD_LOAD_INFLIGHT = 64
ETCD_QUOTA_BYTES = 8 << 30
NEW_MEMBER = 4
WARMUP_SECONDS = 1.0
STATUS_POLL = 0.2  # seconds between this benchmark's own looks at the meta leader
SETTLE_GAP = 0.6  # > membership.STEP_SECONDS: a "balanced" seen twice this far apart stands
MEMBER_TIMEOUT = 3600.0  # for the add-node and remove-node commands
EXIT_TIMEOUT = 60.0  # for a removed member to stop by itself
PR_SET_CHILD_SUBREAPER = 36
SEED = 20240601


@register_class("bench.membership.Blob")
class Blob(DBObject):
    """One loaded value: ``key`` and ``data`` (a Literal of VALUE_BYTES random bytes)."""


# -- the write client during the membership change -----------------------------------------


@dataclass
class Window:
    """The acknowledged writes that ended inside one interval."""

    name: str
    seconds: float
    latencies: list[float]  # seconds, sorted
    errors: int  # failed attempts that ended inside the interval

    @property
    def writes(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float | None:
        return self.writes / self.seconds if self.seconds > 0 else None

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies:
            return None
        return self.latencies[max(0, math.ceil(q * len(self.latencies)) - 1)] * 1e3

    def p50(self) -> float | None:
        return self.percentile_ms(0.5)

    def p99(self) -> float | None:
        return self.percentile_ms(0.99)

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "writes": self.writes,
            "rate": self.rate,
            "p50_ms": self.p50(),
            "p99_ms": self.p99(),
            "max_ms": self.latencies[-1] * 1e3 if self.latencies else None,
            "errors": self.errors,
        }


@dataclass
class WriteLog:
    """Every acknowledged write (start, end) and every failed attempt (end, kind)."""

    acks: list[tuple[float, float]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)

    def window(self, name: str, start: float, end: float) -> Window:
        latencies = sorted(e - s for s, e in self.acks if start <= e < end)
        errors = sum(1 for t, _ in self.failures if start <= t < end)
        return Window(name, end - start, latencies, errors)

    def failure_kinds(self) -> dict[str, int]:
        return dict(Counter(kind for _, kind in self.failures))


class Committer:
    """One ProtoBase client, in a thread, committing 1-object transactions back to back.

    bench/cluster.py's `commit_one` on its `LATENCY_KEY` (database "b", made
    by its `prepare`); times from `time.perf_counter`.
    """

    def __init__(self, nodes: pbcluster.ProtoBaseNodes) -> None:
        self.nodes = nodes
        self.log = WriteLog()
        self.failure: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)

    def _run(self) -> None:
        try:
            storage = ClusterFileStorage(self.nodes.urls, token=self.nodes.token, timeout=30.0)
            with ObjectSpace(storage) as space:
                db = space.open_database(pbcluster.DB_NAME)
                value = 0
                while not self._stop.is_set():
                    started = time.perf_counter()
                    try:
                        pbcluster.commit_one(db, pbcluster.LATENCY_KEY, value)
                    except (pbcluster.GaveUp, ClusterUnavailableError, StorageError) as exc:
                        self.log.failures.append((time.perf_counter(), type(exc).__name__))
                        time.sleep(0.01)
                        continue
                    self.log.acks.append((started, time.perf_counter()))
                    value += 1
        except BaseException:
            self.failure.append(traceback.format_exc())

    def start(self) -> None:
        self._thread.start()

    def check(self) -> None:
        if self.failure:
            raise RuntimeError(f"the committing client failed:\n{self.failure[0]}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self.check()


# -- ProtoBase: loading ----------------------------------------------------------------------


class SpreadStorage(ClusterFileStorage):
    """Transaction ids uniformly at random, so batches spread over every
    partition (see the module docstring, step 2)."""

    def new_transaction_id(self) -> bytes:
        return new_transaction_id()


def payload(rng: random.Random) -> bytes:
    return rng.randbytes(VALUE_BYTES)


def load_client_main() -> None:
    """A loading process: `threads` threads, each committing its share of transactions.

    Protocol (as bench/cluster.py's clients): the spec comes as one JSON line
    on stdin; the process answers ``ready`` once every thread has opened its
    storage, waits for a ``go`` line, loads, and prints one JSON line.
    """
    spec = json.loads(sys.stdin.readline())
    jobs: list[dict[str, Any]] = spec["jobs"]
    ready = threading.Barrier(len(jobs) + 1)
    go = threading.Event()
    done: list[dict[str, Any]] = []
    failures: list[str] = []

    def body(i: int) -> None:
        job = jobs[i]
        rng = random.Random(SEED + job["seed"])
        try:
            url = spec["urls"][job["seed"] % len(spec["urls"])]
            with ObjectSpace(SpreadStorage([url], token=spec["token"])) as space:
                db = space.open_database(LOAD_DB)
                ready.wait()
                go.wait()
                key = 0
                written = 0
                for _ in range(job["transactions"]):
                    pairs = []
                    for _ in range(OBJECTS_PER_TRANSACTION):
                        pairs.append((key, Blob(key=key, data=Literal(payload(rng)))))
                        key += 1

                    def add(tr: Any, pairs: list[tuple[int, Blob]] = pairs) -> None:
                        root = job["root"]
                        tr.set_root_object(root, tr.get_root_object(root).update(pairs))

                    db.run(add, retries=pbcluster.RETRIES)
                    written += len(pairs) * VALUE_BYTES
                done.append({"bytes": written, "ended": time.monotonic()})
        except threading.BrokenBarrierError:
            pass
        except BaseException:
            failures.append(traceback.format_exc())
            ready.abort()

    workers = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(len(jobs))]
    for worker in workers:
        worker.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        print(failures[0] if failures else "a loading thread failed", file=sys.stderr)
        sys.exit(1)
    print("ready", flush=True)
    sys.stdin.readline()
    go.set()
    for worker in workers:
        worker.join()
    if failures:
        print(failures[0], file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"threads": done}), flush=True)


@dataclass
class Load:
    bytes: int
    seconds: float
    detail: str

    @property
    def mib_per_s(self) -> float:
        return self.bytes / MIB / self.seconds


def load_protobase(nodes: pbcluster.ProtoBaseNodes, total: int) -> Load:
    """`total` bytes in transactions of 100 Blobs, LOAD_PROCESSES x LOAD_THREADS clients."""
    threads = LOAD_PROCESSES * LOAD_THREADS
    transactions = math.ceil(total / (OBJECTS_PER_TRANSACTION * VALUE_BYTES))
    roots = [f"blobs{t}" for t in range(threads)]
    with ObjectSpace(ClusterFileStorage(nodes.urls, token=nodes.token)) as space:
        db = space.new_database(LOAD_DB)

        def make_roots(tr: Any) -> None:
            for root in roots:
                tr.set_root_object(root, tr.new_dictionary())

        db.run(make_roots)
    procs: list[subprocess.Popen[str]] = []
    try:
        for p in range(LOAD_PROCESSES):
            jobs = []
            for i in range(LOAD_THREADS):
                t = p * LOAD_THREADS + i
                share = transactions // threads + (1 if t < transactions % threads else 0)
                jobs.append({"root": roots[t], "seed": t, "transactions": share})
            spec = {"urls": nodes.urls, "token": nodes.token, "jobs": jobs}
            procs.append(start_client(nodes.directory / f"loader{p}.log", "--load-client", spec))
        for p, proc in enumerate(procs):
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(client_failure(nodes.directory / f"loader{p}.log", proc))
        started = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for p, proc in enumerate(procs):
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.strip():
                raise RuntimeError(client_failure(nodes.directory / f"loader{p}.log", proc))
            reports.extend(json.loads(line)["threads"])
            proc.wait()
    finally:
        stop_processes(procs)
    loaded = sum(r["bytes"] for r in reports)
    ended = max(r["ended"] for r in reports)
    detail = (
        f"{LOAD_PROCESSES} processes x {LOAD_THREADS} threads, {transactions:,} transactions "
        f"of {OBJECTS_PER_TRANSACTION} x {VALUE_BYTES // 1024} KiB"
    )
    return Load(loaded, ended - started, detail)


def start_client(log_path: Path, mode: str, spec: dict[str, Any]) -> subprocess.Popen[str]:
    """This script in `mode`, its spec on stdin, its own process group (killed at exit)."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), mode],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
    raft.LIVE.add(proc)  # type: ignore[arg-type]
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    return proc


def stop_processes(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raft.LIVE.discard(proc)


def client_failure(log_path: Path, proc: subprocess.Popen[str]) -> str:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    tail = log_path.read_text(errors="replace").splitlines()[-20:] if log_path.exists() else []
    return f"{log_path.stem} failed (status {proc.poll()}):\n" + "\n".join(tail)


# -- ProtoBase: the 4th member ---------------------------------------------------------------


def become_subreaper() -> bool:
    """Orphaned descendants (the node `cluster add-node` starts) become our children."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class AddedNode:
    """The node ``cluster add-node`` started in its own session: found, watched and
    stopped by its PID, which is only signalled while its command line names its
    config (a PID can be reused once the process is gone)."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.pid: int | None = None
        self.exit_status: int | None = None

    def find(self) -> int | None:
        """The PID from /proc when the command's output did not give it."""
        if self.pid is None:
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and self._names_config(int(entry.name)):
                    self.pid = int(entry.name)
                    break
        return self.pid

    def _names_config(self, pid: int) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return str(self.config).encode() in argv

    def running(self) -> bool:
        if self.pid is None or self.exit_status is not None:
            return False
        try:
            reaped, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Not our child (yet: its command still runs; or no subreaper): alive
            # while the PID names its config (an exiting process names nothing).
            return self._names_config(self.pid)
        if reaped:
            self.exit_status = os.waitstatus_to_exitcode(status)
            return False
        return True  # our child, not exited: the PID cannot have been reused

    def wait(self, timeout: float) -> bool:
        """Whether it stopped within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        self.find()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.running():
                return
            assert self.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            if self.wait(10.0):
                return
        raise RuntimeError(f"node {NEW_MEMBER} (pid {self.pid}) did not stop on SIGKILL")


class ElasticNodes(pbcluster.ProtoBaseNodes):
    """bench/cluster.py's 3 nodes, on a port range with room for member 4, and member 4."""

    def __init__(self, directory: Path, partitions: int) -> None:
        raft.Cluster.__init__(self, directory)
        self.partitions = partitions
        base = pbcluster.free_port_base(raft.MEMBERS + 1)
        self.configs = pbcluster.write_configs(directory, raft.MEMBERS, base, partitions)
        self.token = (directory / "client.token").read_text().strip()
        self.members = [
            raft.Member(str(k), f"http://127.0.0.1:{base + k}", directory / f"node{k}.log")
            for k in range(1, raft.MEMBERS + 1)
        ]
        self.added = AddedNode(directory / f"node{NEW_MEMBER}.toml")
        self.added_url = f"http://127.0.0.1:{base + NEW_MEMBER}"

    def stop(self) -> None:
        try:
            self.added.stop()
        finally:
            super().stop()

    def meta_status(self) -> dict[str, Any] | None:
        """The meta leader's /status.json (None when no node answers as the meta leader)."""
        for url in [*self.urls, self.added_url]:
            try:
                with urllib.request.urlopen(url + "/status.json", timeout=2) as response:
                    body: dict[str, Any] = json.loads(response.read())
            except (urllib.error.URLError, OSError, ValueError):
                continue
            meta = next((g for g in body["groups"] if g["group"] == 0), None)
            if meta is not None and meta["role"] == "leader":
                return body
        return None


def held_by(status: dict[str, Any], member: int) -> list[int]:
    """The groups the map in `status` places on `member`."""
    return sorted(int(g) for g, replicas in status["placement"].items() if member in replicas)


class MapWatch:
    """Polls the meta leader during a membership command, in a thread: when member 4
    first held a replica (or none any more), and when the map settled."""

    def __init__(self, nodes: ElasticNodes, adding: bool) -> None:
        self.nodes = nodes
        self.adding = adding
        self.began = time.perf_counter()
        self.first_change: float | None = None
        self.settled: float | None = None
        self.held: list[int] = []
        self.steps: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="map-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        candidate: tuple[float, int] | None = None  # (when, epoch) of a "balanced" map
        while not self._stop.is_set():
            status = self.nodes.meta_status()
            now = time.perf_counter()
            if status is not None:
                step = str(status["membership"]["last_step"])
                if not self.steps or self.steps[-1] != step:
                    self.steps.append(step)
                held = held_by(status, NEW_MEMBER)
                changed = bool(held) if self.adding else not held
                if changed and self.first_change is None:
                    self.first_change = now - self.began
                if changed and step == "balanced":
                    if candidate is None or candidate[1] != status["epoch"]:
                        candidate = (now, status["epoch"])
                    elif now - candidate[0] >= SETTLE_GAP and self.settled is None:
                        self.settled = candidate[0] - self.began
                        self.held = held
                else:
                    candidate = None
                    self.settled = None
            self._stop.wait(STATUS_POLL)

    def finish(self, timeout: float = 10.0) -> None:
        """Stop once the map settled (or after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while self.settled is None and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(STATUS_POLL)
        self._stop.set()
        self._thread.join(10)


@dataclass
class Command:
    """A ``protobase cluster`` command: its wall time and its output lines (time, text)."""

    seconds: float
    lines: list[tuple[float, str]]


def run_command(argv: list[str], log_path: Path, on_line: Any = None) -> Command:
    """Run ``python -m protobase.cli ARGV`` to its end; raise with its output on failure."""
    began = time.perf_counter()
    lines: list[tuple[float, str]] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "protobase.cli", *argv],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    raft.LIVE.add(proc)  # type: ignore[arg-type]
    try:
        with log_path.open("a") as log:
            assert proc.stdout is not None
            for line in proc.stdout:
                at = time.perf_counter() - began
                lines.append((at, line.rstrip("\n")))
                log.write(f"{at:8.2f} {line}")
                log.flush()
                if on_line is not None:
                    on_line(line)
        status = proc.wait()
    finally:
        stop_processes([proc])
    seconds = time.perf_counter() - began
    if status != 0:
        output = "\n".join(text for _, text in lines[-20:])
        raise RuntimeError(f"protobase {' '.join(argv)} exited with status {status}:\n{output}")
    return Command(seconds, lines)


def dir_bytes(path: Path) -> int:
    """Bytes allocated to the files under `path` (as ``du``)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


def partition_bytes(node_dir: Path) -> dict[int, int]:
    """Bytes of each partition group's Raft log directory on one node (the meta group,
    0, left out): where the loaded data went."""
    found = {}
    for path in sorted((node_dir / "raft").glob("group-*")):
        group = int(path.name.removeprefix("group-"))
        if group != 0:
            found[group] = dir_bytes(path)
    return found


@dataclass
class Change:
    """Adding or removing the 4th member."""

    seconds: float
    window: Window | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class SystemResult:
    system: str
    startup_s: float = 0.0
    load: Load | None = None
    steady: Window | None = None
    add: Change | None = None
    remove: Change | None = None
    new_member_dir: int = 0  # bytes allocated, at the end of the add
    new_member_data: float = 0.0  # bytes of the loaded data it holds a copy of
    new_member_db: int | None = None  # etcd: the backend's bytes in use
    write_failures: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_protobase(directory: Path, partitions: int, sizes: Sizes) -> SystemResult:
    result = SystemResult("protobase")
    nodes = ElasticNodes(directory, partitions)
    atexit.register(nodes.added.stop)  # also after an interruption mid-command
    committer: Committer | None = None
    try:
        progress(f"protobase: starting {raft.MEMBERS} nodes ({partitions} partitions)")
        started = time.perf_counter()
        nodes.start()
        nodes.wait_healthy_now()
        result.startup_s = time.perf_counter() - started
        pbcluster.prepare(nodes)
        progress(f"protobase: loading {sizes.data_bytes / MIB:,.0f} MiB")
        result.load = load_protobase(nodes, sizes.data_bytes)
        progress(f"protobase: loaded at {result.load.mib_per_s:.1f} MiB/s ({result.load.detail})")
        nodes.wait_healthy_now()
        nodes.check_running()
        committer = Committer(nodes)
        committer.start()
        time.sleep(WARMUP_SECONDS)
        steady_start = time.perf_counter()
        time.sleep(sizes.steady_seconds)
        committer.check()
        result.steady = committer.log.window("steady", steady_start, time.perf_counter())
        progress(f"protobase: steady {result.steady.rate or 0:.1f} commits/s; add-node")

        def saw(line: str) -> None:
            progress(f"protobase: add-node: {line.strip()}")
            found = re.search(r"member \d+ started \(pid (\d+)", line)
            if found:
                nodes.added.pid = int(found.group(1))

        group_bytes = partition_bytes(directory / "n1")
        watch = MapWatch(nodes, adding=True)
        add_start = time.perf_counter()
        try:
            command = run_command(
                ["cluster", "add-node", str(directory), "--timeout", str(MEMBER_TIMEOUT)],
                directory / "add-node.out",
                saw,
            )
        except BaseException:
            nodes.added.find()
            watch.finish(0.0)
            raise
        add_end = time.perf_counter()
        nodes.added.find()
        watch.finish()
        committer.check()
        nodes.check_running()
        if not nodes.added.running():
            raise RuntimeError(
                f"node {NEW_MEMBER} is not running after add-node; see {directory}/node4.log"
            )
        status = nodes.meta_status()
        held = [] if status is None else held_by(status, NEW_MEMBER)
        result.new_member_dir = dir_bytes(directory / f"n{NEW_MEMBER}")
        # The loaded data's share in member 4's groups, by their logs' sizes before the add
        # (a batch lands in one partition; the client prefers those the meta leader leads).
        on_new = sum(size for group, size in group_bytes.items() if group in held)
        result.new_member_data = sizes.data_bytes * on_new / max(1, sum(group_bytes.values()))
        result.add = Change(
            command.seconds,
            committer.log.window("during the add", add_start, add_end),
            {
                "command_lines": command.lines,
                "first_replica_s": watch.first_change,
                "settled_s": watch.settled,
                "leader_steps": watch.steps,
                "groups_on_new_member_at_exit": held,
                "groups_when_settled": watch.held,
                "partition_log_bytes_before": group_bytes,
                "data_dirs": {
                    f"n{k}": dir_bytes(directory / f"n{k}") for k in range(1, raft.MEMBERS + 2)
                },
            },
        )
        progress(
            f"protobase: add-node took {command.seconds:.2f} s; member {NEW_MEMBER} holds "
            f"groups {held}, {result.new_member_dir / MIB:.1f} MiB on disk"
        )
        fair = sizes.data_bytes * raft.MEMBERS / (raft.MEMBERS + 1)
        if result.new_member_data < fair / 2:
            result.notes.append(
                f"ProtoBase: member {NEW_MEMBER} holds copies of "
                f"{result.new_member_data / MIB:.1f} MiB of the {sizes.data_bytes / MIB:,.0f} "
                f"MiB loaded (an even spread would give it {fair / MIB:,.0f} MiB): the "
                "partitions placed on it hold little of the data, so row A measures the "
                "steps more than the copying"
            )
        share = (partitions + 1) * raft.MEMBERS // (raft.MEMBERS + 1)
        if len(held) < share:
            result.notes.append(
                f"ProtoBase: add-node returned while member {NEW_MEMBER} held the replicas of "
                f"{len(held)} groups (of {partitions + 1}); its share is at least {share}"
            )
        time.sleep(1.0)
        progress(f"protobase: remove-node {NEW_MEMBER}")
        watch = MapWatch(nodes, adding=False)
        remove_start = time.perf_counter()
        try:
            command = run_command(
                [
                    "cluster",
                    "remove-node",
                    nodes.urls[0],
                    str(NEW_MEMBER),
                    "--token-file",
                    str(directory / "client.token"),
                    "--timeout",
                    str(MEMBER_TIMEOUT),
                ],
                directory / "remove-node.out",
                lambda line: progress(f"protobase: remove-node: {line.strip()}"),
            )
        except BaseException:
            watch.finish(0.0)
            raise
        remove_end = time.perf_counter()
        watch.finish()
        stopped = nodes.added.wait(EXIT_TIMEOUT)
        exit_seconds = time.perf_counter() - remove_start
        result.remove = Change(
            command.seconds,
            committer.log.window("during the remove", remove_start, remove_end),
            {
                "command_lines": command.lines,
                "first_replica_gone_s": watch.first_change,
                "settled_s": watch.settled,
                "leader_steps": watch.steps,
                "node_stopped_s": exit_seconds if stopped else None,
                "node_exit_status": nodes.added.exit_status,
            },
        )
        if not stopped:
            result.notes.append(
                f"ProtoBase: node {NEW_MEMBER} was still running {EXIT_TIMEOUT:.0f} s after "
                "remove-node started (docs: a removed member stops by itself); killed"
            )
        elif nodes.added.exit_status not in (None, 0):
            result.notes.append(
                f"ProtoBase: removed node {NEW_MEMBER} exited with status "
                f"{nodes.added.exit_status} (docs: 0)"
            )
        time.sleep(0.5)
        committer.stop()
        result.write_failures = committer.log.failure_kinds()
        nodes.wait_healthy_now()
        nodes.check_running()
        progress(f"protobase: remove-node took {command.seconds:.2f} s")
    except Exception:
        print_log_tails(directory, ["node1", "node2", "node3", "node4", "add-node", "remove-node"])
        raise
    finally:
        if committer is not None:
            with contextlib.suppress(RuntimeError):  # already raised when it mattered
                committer.stop()
        nodes.stop()
    return result


# -- etcd ------------------------------------------------------------------------------------


class ElasticEtcd(raft.EtcdCluster):
    """bench/raft.py's 3 etcd members with a larger quota, and a 4th that joins."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.joining: set[str] = set()

    def command(self, member: raft.Member) -> tuple[list[str], dict[str, str]]:
        argv, env = super().command(member)
        argv += ["--quota-backend-bytes", str(ETCD_QUOTA_BYTES)]
        if member.name in self.joining:
            everyone = ",".join(
                f"{m.name}={peer}" for m, peer in zip(self.members, self.peer_urls, strict=True)
            )
            argv[argv.index("--initial-cluster") + 1] = everyone
            argv[argv.index("--initial-cluster-state") + 1] = "existing"
        return argv, env

    def new_member(self) -> raft.Member:
        client, peer = raft.free_ports(2)
        name = f"m{len(self.members) + 1}"
        member = raft.Member(name, f"http://127.0.0.1:{client}", self.directory / f"{name}.log")
        self.members.append(member)
        self.peer_urls.append(f"http://127.0.0.1:{peer}")
        self.joining.add(name)
        return member

    def forget(self, member: raft.Member) -> None:
        self.reap(member)
        index = self.members.index(member)
        del self.members[index]
        del self.peer_urls[index]


async def etcd_call(session: aiohttp.ClientSession, url: str, route: str, body: Any) -> Any:
    async with session.post(
        url + route, data=json.dumps(body).encode(), timeout=raft.WRITE_TIMEOUT
    ) as response:
        text = await response.read()
        if response.status != 200:
            raise RuntimeError(f"etcd {route} answered {response.status}: {text[:300]!r}")
        return json.loads(text)


async def load_etcd(cluster: ElasticEtcd, session: aiohttp.ClientSession, total: int) -> Load:
    """`total` bytes of VALUE_BYTES puts under distinct keys, ETCD_LOAD_INFLIGHT in flight."""
    count = math.ceil(total / VALUE_BYTES)
    leader = raft.Leader(session, cluster)
    next_key = iter(range(count))
    failures: Counter[str] = Counter()

    async def worker(w: int) -> None:
        rng = random.Random(SEED + 1000 + w)
        for key in next_key:
            body = json.dumps(
                {
                    "key": base64.b64encode(f"blob/{key:09d}".encode()).decode(),
                    "value": base64.b64encode(payload(rng)).decode(),
                }
            ).encode()
            for _attempt in range(100):
                base = await leader.get()
                try:
                    async with session.post(
                        base + "/v3/kv/put", data=body, timeout=raft.WRITE_TIMEOUT
                    ) as response:
                        text = await response.read()
                        if response.status == 200:
                            break
                        failures[f"status {response.status}"] += 1
                        if b"space exceeded" in text or b"too large" in text:
                            raise RuntimeError(f"etcd refused a put: {text[:300]!r}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    failures[type(exc).__name__] += 1
                leader.lost(base)
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"etcd: put {key} failed 100 times ({dict(failures)})")

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(ETCD_LOAD_INFLIGHT)))
    seconds = time.perf_counter() - started
    detail = f"{count:,} puts of {VALUE_BYTES // 1024} KiB, {ETCD_LOAD_INFLIGHT} in flight"
    if failures:
        detail += f", failed attempts {dict(failures)}"
    return Load(count * VALUE_BYTES, seconds, detail)


async def etcd_caught_up(
    cluster: ElasticEtcd, session: aiohttp.ClientSession, member: raft.Member, timeout: float
) -> int:
    """Poll until `member` applied the leader's commit index; returns the polls made."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        polls += 1
        cluster.check_running()
        leader = await cluster.find_leader(session)
        lead = await cluster.status(session, leader)
        mine = await cluster.status(session, member)
        if lead is not None and mine is not None and mine.applied >= lead.commit:
            return polls
        if time.monotonic() > deadline:
            raise TimeoutError(f"etcd {member.name} did not catch up in {timeout:.0f} s")
        await asyncio.sleep(0.02)


async def etcd_raw_status(session: aiohttp.ClientSession, member: raft.Member) -> dict[str, Any]:
    answer: dict[str, Any] = await etcd_call(session, member.url, "/v3/maintenance/status", {})
    return answer


async def run_etcd_async(directory: Path, sizes: Sizes) -> SystemResult:
    result = SystemResult("etcd")
    cluster = ElasticEtcd(directory)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            progress(f"etcd: starting {raft.MEMBERS} members")
            started = time.perf_counter()
            cluster.start()
            await cluster.wait_healthy(session)
            result.startup_s = time.perf_counter() - started
            progress(f"etcd: loading {sizes.data_bytes / MIB:,.0f} MiB")
            result.load = await load_etcd(cluster, session, sizes.data_bytes)
            progress(f"etcd: loaded at {result.load.mib_per_s:.1f} MiB/s ({result.load.detail})")
            await cluster.wait_healthy(session)
            log = WriteLog()
            stop = asyncio.Event()

            def on_ack(start: float, end: float, base: str) -> None:
                log.acks.append((start, end))

            writer = asyncio.create_task(
                raft.run_load(
                    session,
                    raft.Leader(session, cluster),
                    cluster.put,
                    1,
                    1e9,
                    on_ack=on_ack,
                    stop=stop,
                )
            )
            try:
                await asyncio.sleep(WARMUP_SECONDS)
                steady_start = time.perf_counter()
                await asyncio.sleep(sizes.steady_seconds)
                result.steady = log.window("steady", steady_start, time.perf_counter())
                progress(f"etcd: steady {result.steady.rate or 0:.1f} puts/s; member add")

                add_start = time.perf_counter()
                leader = await cluster.find_leader(session)
                new = cluster.new_member()
                peer = cluster.peer_urls[-1]
                added = await etcd_call(
                    session, leader.url, "/v3/cluster/member/add", {"peerURLs": [peer]}
                )
                member_id = added["member"]["ID"]
                added_at = time.perf_counter() - add_start
                cluster.spawn(new)
                polls = await etcd_caught_up(cluster, session, new, MEMBER_TIMEOUT)
                add_end = time.perf_counter()
                status = await etcd_raw_status(session, new)
                result.new_member_dir = dir_bytes(directory / new.name)
                result.new_member_db = int(status.get("dbSizeInUse", status.get("dbSize", 0)))
                result.new_member_data = float(result.load.bytes)
                result.add = Change(
                    add_end - add_start,
                    log.window("during the add", add_start, add_end),
                    {
                        "member_add_answered_s": added_at,
                        "polls": polls,
                        "status": status,
                        "data_dirs": {
                            m.name: dir_bytes(directory / m.name) for m in cluster.members
                        },
                    },
                )
                progress(
                    f"etcd: {new.name} caught up {add_end - add_start:.2f} s after member add; "
                    f"{result.new_member_dir / MIB:.1f} MiB on disk"
                )
                await asyncio.sleep(1.0)
                progress(f"etcd: member remove {new.name}")
                remove_start = time.perf_counter()
                leader = await cluster.find_leader(session)
                new.killed = True  # it stops by itself once removed: not a crash
                await etcd_call(session, leader.url, "/v3/cluster/member/remove", {"ID": member_id})
                remove_end = time.perf_counter()
                assert new.proc is not None
                exit_status: int | None = None
                with contextlib.suppress(subprocess.TimeoutExpired):
                    exit_status = await asyncio.to_thread(new.proc.wait, EXIT_TIMEOUT)
                stopped_after = time.perf_counter() - remove_start
                if exit_status is None:
                    result.notes.append(
                        f"etcd: removed {new.name} still ran {EXIT_TIMEOUT:.0f} s later; killed"
                    )
                    cluster.kill(new)
                result.remove = Change(
                    remove_end - remove_start,
                    log.window("during the remove", remove_start, remove_end),
                    {
                        "member_stopped_s": None if exit_status is None else stopped_after,
                        "member_exit_status": exit_status,
                    },
                )
                cluster.forget(new)
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                outcome = await writer
            result.write_failures = dict(outcome.errors)
            await cluster.wait_healthy(session)
        except Exception:
            print_log_tails(directory, ["m1", "m2", "m3", "m4"])
            raise
        finally:
            cluster.stop()
    return result


def print_log_tails(directory: Path, names: list[str], lines: int = 15) -> None:
    """The end of each log in `directory` that exists (the directory is removed at the end)."""
    for name in names:
        for path in (directory / f"{name}.log", directory / f"{name}.out"):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                print(f"--- the end of {path}:", *tail, sep="\n", file=sys.stderr)


# -- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    data_bytes: int
    steady_seconds: float


@dataclass
class Row:
    key: str
    figure: str
    unit: str  # "s", "MiB", "MiB/s", "/s", "ms", "x"
    pb: float | None
    etcd: float | None

    def ratio(self) -> float | None:
        if self.pb is None or not self.etcd:
            return None
        return self.pb / self.etcd


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "/s":
        return f"{value:,.1f}/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:,.1f} {unit}"


def table(rows: list[Row]) -> str:
    lines = ["| # | figure | ProtoBase | etcd | PB/etcd |", "|---|---|--:|--:|--:|"]
    for row in rows:
        ratio = row.ratio()
        lines.append(
            f"| {row.key} | {row.figure} | {fmt(row.pb, row.unit)} | {fmt(row.etcd, row.unit)} "
            f"| {'—' if ratio is None else f'{ratio:.2f}'} |"
        )
    return "\n".join(lines)


def build_rows(pb: SystemResult, etcd: SystemResult, sizes: Sizes, partitions: int) -> list[Row]:
    def get(result: SystemResult, fn: Any) -> float | None:
        try:
            value = fn(result)
        except (AttributeError, TypeError):  # a part that did not run
            return None
        return None if value is None else float(value)

    def row(key: str, figure: str, unit: str, fn: Any) -> Row:
        return Row(key, figure, unit, get(pb, fn), get(etcd, fn))

    def per_s(amount: float | None, change: Change | None) -> float | None:
        if amount is None or change is None or change.seconds <= 0:
            return None
        return amount / MIB / change.seconds

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    data = f"{sizes.data_bytes / MIB:,.0f} MiB"
    rows = [
        row(
            "L",
            f"load {data} of 10 KiB values (ProtoBase: {LOAD_PROCESSES}x{LOAD_THREADS} client "
            f"threads, 100 objects per transaction; etcd: puts, {ETCD_LOAD_INFLIGHT} in flight)",
            "MiB/s",
            lambda r: r.load.mib_per_s,
        ),
        row(
            "A",
            "add a 4th member, start to done (ProtoBase: `cluster add-node`; etcd: member add, "
            "start m4, until it applied the leader's commit index)",
            "s",
            lambda r: r.add.seconds,
        ),
        row(
            "A.dir",
            "the new member's data directory at the end (allocated; etcd's WAL is preallocated)",
            "MiB",
            lambda r: r.new_member_dir / MIB,
        ),
        row(
            "A.dir/s",
            "the new member's data directory / add time",
            "MiB/s",
            lambda r: per_s(r.new_member_dir, r.add),
        ),
        row(
            "A.data",
            f"loaded data the new member holds a copy of (ProtoBase: the data of the "
            f"partitions placed on it, of {partitions})",
            "MiB",
            lambda r: r.new_member_data / MIB,
        ),
        row(
            "A.data/s",
            "loaded data the new member holds / add time",
            "MiB/s",
            lambda r: per_s(r.new_member_data, r.add),
        ),
        row(
            "R",
            "remove the 4th member, start to done (ProtoBase: `cluster remove-node`, replicas "
            "move off; etcd: member remove, no data moves)",
            "s",
            lambda r: r.remove.seconds,
        ),
    ]
    what = "1 client, sequential 1-object commits (etcd: 100-byte puts)"
    for key, name, fn in (
        ("W.s", f"steady {sizes.steady_seconds:g} s", lambda r: r.steady),
        ("W.a", "during the add", lambda r: r.add.window),
        ("W.r", "during the remove", lambda r: r.remove.window),
    ):
        rows += [
            row(key, f"writes/s {name}, {what}", "/s", lambda r, fn=fn: fn(r).rate),
            row(f"{key}.p50", f"write latency p50 {name}", "ms", lambda r, fn=fn: fn(r).p50()),
            row(f"{key}.p99", f"write latency p99 {name}", "ms", lambda r, fn=fn: fn(r).p99()),
        ]
    rows += [
        row(
            "W.a/s",
            "writes/s during the add / steady",
            "x",
            lambda r: ratio(r.add.window.rate, r.steady.rate),
        ),
        row(
            "W.a/s.p99",
            "p99 latency during the add / steady",
            "x",
            lambda r: ratio(r.add.window.p99(), r.steady.p99()),
        ),
    ]
    return rows


def result_json(result: SystemResult) -> dict[str, Any]:
    def change(c: Change | None) -> dict[str, Any] | None:
        if c is None:
            return None
        window = None if c.window is None else c.window.summary()
        return {"seconds": c.seconds, "window": window, "detail": c.detail}

    return {
        "startup_s": result.startup_s,
        "load": None if result.load is None else dataclasses.asdict(result.load),
        "load_mib_per_s": None if result.load is None else result.load.mib_per_s,
        "steady": None if result.steady is None else result.steady.summary(),
        "add": change(result.add),
        "remove": change(result.remove),
        "new_member_dir_bytes": result.new_member_dir,
        "new_member_data_bytes": result.new_member_data,
        "new_member_db_in_use_bytes": result.new_member_db,
        "write_failures": result.write_failures,
        "notes": result.notes,
    }


def main_run(args: argparse.Namespace) -> None:
    if shutil.which("etcd") is None:
        print(
            "error: the `etcd` binary is missing. Install Debian's etcd-server "
            "(`apt-get install -y etcd-server`, or run `make bench-membership`).",
            file=sys.stderr,
        )
        sys.exit(2)
    gib = args.gib if args.gib is not None else (1 / 16 if args.quick else 1.0)
    sizes = Sizes(data_bytes=int(gib * (1 << 30)), steady_seconds=5.0 if args.quick else 10.0)
    reaper = become_subreaper()
    tmp = Path(tempfile.mkdtemp(prefix="protobase-membership-bench-", dir="/tmp"))
    began = time.perf_counter()
    info = machine_info(("protobase", "aiohttp", "msgpack"))
    info["versions"].pop("sqlite (library)", None)
    info["data_filesystem"] = filesystem_of(tmp)
    info["etcd"] = raft.etcd_version()
    info["code_at_start"] = pbcluster.code_state()
    command = "python bench/membership.py" + (" --quick" if args.quick else "")
    if args.gib is not None:
        command += f" --gib {args.gib:g}"
    if args.partitions != 8:
        command += f" --partitions {args.partitions}"
    print(f"# ProtoBase membership benchmark ({sizes.data_bytes / MIB:,.0f} MiB)")
    print()
    print(
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, "
        f"Linux {info['kernel']}"
    )
    print(f"- protobase source: {info['protobase_source']}")
    print(f"- code at the start: {info['code_at_start']}")
    print(f"- data: {tmp} on {info['data_filesystem']}")
    print(f"- {info['python']}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(
        f"- etcd {info['etcd']}: 3 members (bench/raft.py's), defaults but "
        f"--quota-backend-bytes {ETCD_QUOTA_BYTES >> 30} GiB; a 4th added as a voter"
    )
    print(
        f"- ProtoBase: 3 `protobase node` processes, {args.partitions} partitions, replication "
        "3, default timeouts; a 4th added by `protobase cluster add-node`"
    )
    print(
        f"- writes while members change: 1 client, {WARMUP_SECONDS:g} s warm-up, steady window "
        f"{sizes.steady_seconds:g} s"
    )
    print(f"- command: {command}")
    load_before = os.getloadavg()
    print(
        f"- load average at the start: {load_before[0]:.2f} (1 min), {load_before[1]:.2f} (5 min)"
    )
    if not reaper:
        print("- (could not become the child subreaper: the added node's exit status is unknown)")
    print(flush=True)

    try:
        etcd = asyncio.run(run_etcd_async(tmp / "etcd", sizes))
        pb = run_protobase(tmp / "protobase", args.partitions, sizes)
    finally:
        raft._kill_leftovers()
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.perf_counter() - began
    rows = build_rows(pb, etcd, sizes, args.partitions)
    print(table(rows))
    print()
    print("PB/etcd is the ProtoBase figure divided by etcd's: above 1 is better for ProtoBase")
    print("on rates (/s, MiB/s), worse on times and latencies.")
    print()
    assert pb.add is not None and pb.remove is not None
    assert etcd.add is not None and etcd.remove is not None
    add, remove = pb.add.detail, pb.remove.detail

    def secs(value: float | None) -> str:
        return "never" if value is None else f"{value:.2f} s"

    print(
        f"ProtoBase add-node: member {NEW_MEMBER} held its first replica after "
        f'{secs(add["first_replica_s"])}; the meta leader reported "balanced" for good after '
        f"{secs(add['settled_s'])} (polled every {STATUS_POLL:g} s), the command returned after "
        f"{pb.add.seconds:.2f} s; member {NEW_MEMBER} then held the replicas of groups "
        f"{add['groups_on_new_member_at_exit']} (0 is the meta group)."
    )
    print(
        f"ProtoBase remove-node: member {NEW_MEMBER}'s last replica gone after "
        f"{secs(remove['first_replica_gone_s'])}, command returned after "
        f"{pb.remove.seconds:.2f} s; its process stopped after {secs(remove['node_stopped_s'])} "
        f"(exit status {remove['node_exit_status']})."
    )
    dirs = ", ".join(f"{k} {v / MIB:.1f} MiB" for k, v in add["data_dirs"].items())
    print(f"ProtoBase data directories after the add: {dirs}.")
    parts = ", ".join(
        f"{group} {size / MIB:.1f}" for group, size in add["partition_log_bytes_before"].items()
    )
    print(f"ProtoBase partition groups' logs on node 1 before the add (MiB): {parts}.")
    print(
        f"etcd: member add answered after {etcd.add.detail['member_add_answered_s'] * 1e3:.0f} "
        f"ms; m4's backend holds {(etcd.new_member_db or 0) / MIB:.1f} MiB in use; removed m4 "
        f"stopped after {secs(etcd.remove.detail['member_stopped_s'])} (exit status "
        f"{etcd.remove.detail['member_exit_status']})."
    )
    for result in (pb, etcd):
        if result.write_failures:
            print(f"{result.system}: failed write attempts {result.write_failures}")
        for note in result.notes:
            print(f"Note: {note}")
    info["code_at_end"] = pbcluster.code_state()
    print(f"Code at the end: {info['code_at_end']}.")
    load_after = os.getloadavg()
    print(
        f"Load average at the end: {load_after[0]:.2f} (1 min), {load_after[1]:.2f} (5 min). "
        f"Total run time: {elapsed:.0f} s"
    )
    if args.json:
        report = {
            "command": command,
            "machine": info,
            "partitions": args.partitions,
            "sizes": dataclasses.asdict(sizes),
            "load_average": {"before": load_before, "after": load_after},
            "total_seconds": elapsed,
            "protobase": result_json(pb),
            "etcd": result_json(etcd),
            "results": [
                {
                    "id": row.key,
                    "figure": row.figure,
                    "unit": row.unit,
                    "protobase": row.pb,
                    "etcd": row.etcd,
                    "protobase_over_etcd": row.ratio(),
                }
                for row in rows
            ],
        }
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"Results written to {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB of data, 5 s steady window")
    parser.add_argument("--gib", type=float, help="GiB of data to load (default 1; quick 1/16)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    parser.add_argument(
        "--partitions",
        type=int,
        default=8,
        help="partitions of the ProtoBase cluster (default 8, as `protobase cluster up`)",
    )
    parser.add_argument("--load-client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_client:
        load_client_main()
        return

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # runs the finally blocks: every process is stopped

    signal.signal(signal.SIGTERM, terminated)
    main_run(args)


if __name__ == "__main__":
    main()
