"""Cluster benchmark: a 3-node ProtoBase cluster vs a 3-member etcd and StandaloneFileStorage.

Run from the repository root::

    python bench/cluster.py                     # full run
    python bench/cluster.py --quick             # everything small: a smoke test, about a minute
    python bench/cluster.py --json results.json

One run measures three systems, one after the other (each one's processes
are stopped before the next starts, so none takes CPU from another), with
their data in one temporary directory under /tmp, removed at the end:

1. etcd (Debian's ``etcd-server``): 3 members started, loaded and stopped
   by bench/raft.py's own code (`EtcdCluster`, `run_system`), unchanged:
   puts/s at 1, 32 and 128 in flight, and leader fail-over under 8 in
   flight. bench/raft.py's docstring says how.
2. ProtoBase: 3 ``protobase node`` processes, configured by `write_configs`
   (what ``protobase cluster up`` writes; ``--partitions``, default 8 as
   there) on free ports, fresh data directories, default timeouts. Started
   and stopped (by process group) through bench/raft.py's `Cluster`.
3. StandaloneFileStorage, in this process: the reference for cold reads.

The ProtoBase figures (targets are printed as PASS/MISS; a miss never
makes the exit status non-zero):

0. The round trip of a request that does no work (``GET /health`` on the
   meta leader, 1 in flight, bench/raft.py's load code), against etcd's
   serializable range read: the HTTP floor under the latencies.
1. 1-object ``db.run`` commits/s with 32 concurrent clients, each setting
   its own key (one of 1,000) of ONE Dictionary (root ``"d"`` of database
   ``"b"``) to a counter. The clients are 4 client processes x 8 threads
   (one Python process would be bound by its GIL on a 2-CPU machine), each
   thread with its own ClusterFileStorage + ObjectSpace, first given the
   URL of node ``i % 3``. Counted: commits acknowledged in the window
   (after a warm-up), and the CPU of the client processes, the 3 nodes and
   every other process in it. Target: >= 0.75x etcd's puts/s at 32 in flight.
2. p50 and p99 commit latency of one client committing the same way, one
   commit after another. Target: p50 <= 3x etcd's put p50 at 1 in flight.
3. ConflictErrors that reach db.run's retry loop in run 1, as a % of the
   commits: the transaction function is wrapped and counted, so conflicts
   = runs of it - successful commits. Target: <= 1 %.
4. Cold reads: a Dictionary of 10,000 DBObjects written in one transaction,
   then a new ClusterFileStorage + ObjectSpace (empty cache, first given
   one node's URL) reading every key once in random order, one ``get_at``
   per key, in one read-only transaction. The same on a freshly opened
   StandaloneFileStorage (the OS page cache is warm for both). Target:
   >= 0.5x StandaloneFileStorage.
5. Fail-over: one client commits continuously (in a thread of this
   process); the meta group's leader (from ``/status.json``: group 0, role
   leader) is killed with SIGKILL; the time from the kill to the next
   acknowledged commit. The node is restarted on its data and the cluster
   waited for (every node ready, all name one meta leader that every node
   has caught up with) before the next repeat. Median of 5 (2 quick).
   Target: <= 0.5 s. etcd's figure (bench/raft.py's, under 8 in flight) is
   shown for comparison.

Where a commit's time goes, from the client: every ClusterFileStorage call
(read_root, get_atoms, put_batch, and the commit request, which is
``commit_rebasing`` minus its put_batch) is timed in the client by a
subclass, with no change to the library; the rest of a commit is the
client's own Python. Printed for runs 1 and 2.

Clocks: the client processes and this one share ``time.monotonic()``
(CLOCK_MONOTONIC is system-wide on Linux), so one window is the same in
all of them. Every process the benchmark starts (nodes, etcd members,
client processes) is stopped by process group when it ends, on Ctrl-C,
SIGTERM and errors too. Exit status 2 when the etcd binary is missing.

``--profile DIR`` also records every node with py-spy (on PATH) during
runs 1 and 2, wall-clock samples of every thread as collapsed stacks, one
file per node and run; the sampling perturbs the figures of that run.
``--client`` is internal: the client process reads its work on stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import raft
from common import Target, filesystem_of, machine_info, progress
from progress_bars import track

from protobase import DBObject, Dictionary, ObjectSpace, StandaloneFileStorage, register_class
from protobase.cluster_cli import wait_ready, write_configs
from protobase.errors import ClusterUnavailableError, ConflictError, StorageError
from protobase.storage.cluster import ClusterFileStorage
from protobase.storage.interfaces import CommitBatch, RebaseRequest, RootRef

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "b"
READS_DB = "reads"
KEYS = 1_000  # the Dictionary the commit clients write to
CLIENT_PROCESSES = 4
CLIENT_THREADS = 8
KEY_SPACING = 31  # client c writes key c * 31: spread over the Dictionary
LATENCY_KEY = KEYS - 1
FAILOVER_KEY = KEYS - 2
RETRIES = 1000
WARMUP_COMMITS = 2  # per client thread, before the window's warm-up
FAILOVER_LIMIT = 30.0  # seconds to wait for the first commit after a kill
ANSWERED_BEFORE_KILL = 0.002
"""An ack this soon after the kill, of a commit sent before it, was answered
by the killed leader just before it died: no new meta leader can be elected
and commit in 2 ms (an election needs at least a tick, 100 ms by default)."""
SEED = 20240601
PHASES = ("read_root", "get_atoms", "put_batch", "commit")


@register_class("bench.cluster.Item")
class Item(DBObject):
    """A value object: name, n, score (as bench/embedded.py's)."""


# -- the client side -------------------------------------------------------------------------


class TimedClusterStorage(ClusterFileStorage):
    """A ClusterFileStorage that adds up the seconds and the number of its calls.

    One application thread per instance (the counters are not locked).
    ``commit`` is the commit request alone: `commit_rebasing` minus the
    put_batch it makes first.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.spent: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        super().__init__(*args, **kwargs)

    def _count(self, phase: str, started: float) -> None:
        self.spent[phase] += time.perf_counter() - started
        self.calls[phase] += 1

    def read_root(self) -> RootRef:
        started = time.perf_counter()
        try:
            return super().read_root()
        finally:
            self._count("read_root", started)

    def get_atoms(self, pointers: Any) -> list[bytes]:
        started = time.perf_counter()
        try:
            return super().get_atoms(pointers)
        finally:
            self._count("get_atoms", started)

    def put_batch(self, batch: CommitBatch) -> None:
        started = time.perf_counter()
        try:
            super().put_batch(batch)
        finally:
            self._count("put_batch", started)

    def commit_rebasing(self, request: RebaseRequest) -> RootRef:
        started = time.perf_counter()
        put_before = self.spent["put_batch"]
        try:
            return super().commit_rebasing(request)
        finally:
            elapsed = time.perf_counter() - started
            self.spent["commit"] += elapsed - (self.spent["put_batch"] - put_before)
            self.calls["commit"] += 1


@dataclass
class ThreadStats:
    """What one client thread did in the window (commits acknowledged in it)."""

    commits: int = 0
    conflicts: int = 0  # runs of the transaction function that ended in ConflictError
    gave_up: int = 0  # db.run raised ConflictError after RETRIES re-runs
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    spent: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: Counter[str] = field(default_factory=Counter)


def commit_one(db: Any, key: int, value: int) -> int:
    """One ``db.run`` setting ``d[key] = value``; how many times the function ran."""
    runs = 0

    def change(tr: Any) -> None:
        nonlocal runs
        runs += 1
        tr.set_root_object("d", tr.get_root_object("d").set_at(key, value))

    try:
        db.run(change, retries=RETRIES)
    except ConflictError:
        raise GaveUp(runs) from None
    return runs


class GaveUp(Exception):
    """db.run raised ConflictError after its retries; `runs` is how often it ran."""

    def __init__(self, runs: int) -> None:
        super().__init__(runs)
        self.runs = runs


def commit_until(
    db: Any, storage: TimedClusterStorage, key: int, window: tuple[float, float]
) -> ThreadStats:
    """Commit to `key` until the window ends; count what ended inside it."""
    stats = ThreadStats()
    value = 0
    while time.monotonic() < window[1]:
        spent, calls = dict(storage.spent), Counter(storage.calls)
        started = time.monotonic()
        try:
            runs = commit_one(db, key, value)
        except GaveUp as exc:
            if window[0] <= time.monotonic() < window[1]:
                stats.gave_up += 1
                stats.conflicts += exc.runs
            continue
        except (ClusterUnavailableError, StorageError) as exc:
            stats.errors[type(exc).__name__] += 1
            time.sleep(0.01)
            continue
        ended = time.monotonic()
        value += 1
        if window[0] <= ended < window[1]:
            stats.commits += 1
            stats.conflicts += runs - 1
            stats.latencies.append(ended - started)
            for phase, phase_seconds in storage.spent.items():
                stats.spent[phase] += phase_seconds - spent.get(phase, 0.0)
            stats.calls.update(storage.calls - calls)
    return stats


def client_main() -> None:
    """A client process: `threads` committers; see `run_clients` for the protocol."""
    spec = json.loads(sys.stdin.readline())
    threads = spec["threads"]
    window = [0.0, 0.0]
    ready = threading.Barrier(threads + 1)
    go = threading.Event()
    results: list[ThreadStats | None] = [None] * threads
    failures: list[str] = []

    def body(i: int) -> None:
        client = spec["first"] + i
        key = spec["keys"][i]
        try:
            url = spec["urls"][client % len(spec["urls"])]
            storage = TimedClusterStorage([url], token=spec["token"])
            with ObjectSpace(storage) as space:
                db = space.open_database(DB_NAME)
                for j in range(WARMUP_COMMITS):
                    commit_one(db, key, -1 - j)
                ready.wait()
                go.wait()
                results[i] = commit_until(db, storage, key, (window[0], window[1]))
        except threading.BrokenBarrierError:
            pass
        except BaseException:
            failures.append(traceback.format_exc())
            ready.abort()

    workers = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        print(failures[0] if failures else "a client thread failed", file=sys.stderr)
        sys.exit(1)
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    window[:] = [start + spec["warmup"], start + spec["warmup"] + spec["seconds"]]
    go.set()
    time.sleep(max(0.0, window[0] - time.monotonic()))
    cpu_start = time.process_time()
    time.sleep(max(0.0, window[1] - time.monotonic()))
    cpu = time.process_time() - cpu_start
    for worker in workers:
        worker.join()
    if failures:
        print(failures[0], file=sys.stderr)
        sys.exit(1)
    report = {"cpu": cpu, "threads": [vars(r) for r in results if r is not None]}
    print(json.dumps(report), flush=True)


# -- the ProtoBase cluster -------------------------------------------------------------------


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_base(count: int) -> int:
    """A base B with B+1..B+count and B+101..B+100+count free (`write_configs`' layout)."""
    for _ in range(200):
        base = raft.free_ports(1)[0] - 1
        wanted = [base + k for k in range(1, count + 1)]
        wanted += [base + 100 + k for k in range(1, count + 1)]
        if wanted[-1] <= 65535 and all(port_free(p) for p in wanted):
            return base
    raise RuntimeError("no free port range on 127.0.0.1")


class ProtoBaseNodes(raft.Cluster):
    """Three ``protobase node`` processes; `status` reports the meta group (group 0)."""

    system = "protobase-cluster"

    def __init__(self, directory: Path, partitions: int) -> None:
        super().__init__(directory)
        base = free_port_base(raft.MEMBERS)
        self.configs = write_configs(directory, raft.MEMBERS, base, partitions)
        self.token = (directory / "client.token").read_text().strip()
        self.members = [
            raft.Member(str(k), f"http://127.0.0.1:{base + k}", directory / f"node{k}.log")
            for k in range(1, raft.MEMBERS + 1)
        ]

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def command(self, member: raft.Member) -> tuple[list[str], dict[str, str]]:
        config = self.configs[self.members.index(member)]
        argv = [sys.executable, "-m", "protobase.cli", "node", "--config", str(config)]
        return argv, dict(os.environ)

    async def status(
        self, session: aiohttp.ClientSession, member: raft.Member
    ) -> raft.Status | None:
        try:
            async with session.get(
                member.url + "/status.json", timeout=raft.STATUS_TIMEOUT
            ) as response:
                if response.status != 200:
                    return None
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        meta = next((g for g in body["groups"] if g["group"] == 0), None)
        if meta is None:
            return None
        return raft.Status(
            member=str(body["node_id"]),
            leader=None if meta["leader"] is None else str(meta["leader"]),
            term=int(meta["term"]),
            commit=int(meta["commit"]),
            applied=int(meta["applied"]),
        )

    async def noop(self, session: aiohttp.ClientSession, base: str, key: int) -> None:
        """``GET /health``: a round trip that does no work (the HTTP floor)."""
        async with session.get(base + "/health", timeout=raft.STATUS_TIMEOUT) as response:
            await response.read()
            if response.status != 200:
                raise raft.Unavailable(f"protobase answered {response.status}")

    def wait_healthy_now(self) -> None:
        """Every node ready (all its groups have a leader), one meta leader, caught up."""
        wait_ready(self.urls)
        with_session(self.wait_healthy)

    def meta_leader(self) -> raft.Member:
        return with_session(self.find_leader)

    def commit_indexes(self) -> dict[int, int]:
        """Each Raft group's highest commit index among the nodes that answer."""
        found: dict[int, int] = {}
        for url in self.urls:
            try:
                with urllib.request.urlopen(url + "/status.json", timeout=1) as response:
                    groups = json.loads(response.read())["groups"]
            except (urllib.error.URLError, OSError, ValueError):
                continue
            for group in groups:
                found[group["group"]] = max(found.get(group["group"], 0), group["commit"])
        return found

    def idle_cpu(self, seconds: float) -> float:
        """CPU seconds per second the nodes use with no client (ticks, heartbeats)."""
        before = self.server_cpu()
        time.sleep(seconds)
        return (self.server_cpu() - before) / seconds


def with_session(fn: Callable[[aiohttp.ClientSession], Coroutine[Any, Any, Any]]) -> Any:
    async def run() -> Any:
        async with aiohttp.ClientSession() as session:
            return await fn(session)

    return asyncio.run(run())


def node_storage(
    nodes: ProtoBaseNodes, url: str | None = None, timeout: float = 30.0
) -> TimedClusterStorage:
    return TimedClusterStorage([url] if url else nodes.urls, token=nodes.token, timeout=timeout)


def prepare(nodes: ProtoBaseNodes) -> None:
    """Database "b" with the clients' Dictionary "d"."""
    with ObjectSpace(node_storage(nodes)) as space:
        db = space.new_database(DB_NAME)
        db.run(lambda tr: tr.set_root_object("d", Dictionary((k, 0) for k in range(KEYS))))


@dataclass
class ClientRun:
    """Runs 1 and 2: what the client processes did in one window."""

    clients: int
    window: float
    commits: int
    conflicts: int
    gave_up: int
    errors: dict[str, int]
    latencies: list[float]  # seconds, sorted
    client_cpu: float
    server_cpu: float
    other_cpu: float
    spent: dict[str, float]  # seconds in each storage call, all commits of the window
    calls: dict[str, int]
    meta_entries: int  # Raft entries the meta group committed in the window
    partition_entries: int  # the same, all partition groups together

    @property
    def rate(self) -> float:
        return self.commits / self.window

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies:
            return None
        return self.latencies[max(0, math.ceil(q * len(self.latencies)) - 1)] * 1e3

    def phases_ms(self) -> dict[str, float]:
        """Mean milliseconds per commit in each storage call, and in the client's own code."""
        if not self.commits:
            return {}
        per = {p: self.spent.get(p, 0.0) / self.commits * 1e3 for p in PHASES}
        total = sum(self.latencies) / self.commits * 1e3
        per["client (rest)"] = total - sum(per.values())
        per["total"] = total
        return per


def run_clients(
    nodes: ProtoBaseNodes,
    processes: int,
    threads: int,
    warmup: float,
    seconds: float,
    profile: Path | None = None,
) -> ClientRun:
    """`processes` client processes x `threads` committers, measured in one window.

    Protocol: the parent writes the spec (a JSON line) to each child's
    stdin; a child answers ``ready`` once every thread has opened its
    storage and made its warm-up commits; the parent writes a start time
    (``time.monotonic()``) to every child; each child commits from then
    until start + warmup + seconds and prints one JSON line of results.
    """
    procs: list[subprocess.Popen[str]] = []
    spies: list[subprocess.Popen[bytes]] = []
    try:
        for p in range(processes):
            first = p * threads
            spec = {
                "urls": nodes.urls,
                "token": nodes.token,
                "threads": threads,
                "first": first,
                "keys": [
                    (LATENCY_KEY if processes * threads == 1 else (first + i) * KEY_SPACING)
                    for i in range(threads)
                ],
                "warmup": warmup,
                "seconds": seconds,
            }
            log = (nodes.directory / f"client{p}.log").open("ab")
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--client"],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,  # its own group: the exit handler's killpg reaches it
            )
            log.close()
            raft.LIVE.add(proc)  # type: ignore[arg-type]
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(spec) + "\n")
            proc.stdin.flush()
        for p, proc in enumerate(procs):
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(client_failure(nodes, p, proc))
        start = time.monotonic() + 0.05
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start!r}\n")
            proc.stdin.flush()
        window = (start + warmup, start + warmup + seconds)
        time.sleep(max(0.0, window[0] - time.monotonic()))
        server0, busy0, raft0 = nodes.server_cpu(), raft.machine_busy(), nodes.commit_indexes()
        if profile is not None:
            spies = record_nodes(nodes, profile, f"{processes * threads}-clients", seconds)
        time.sleep(max(0.0, window[1] - time.monotonic()))
        server1, busy1, raft1 = nodes.server_cpu(), raft.machine_busy(), nodes.commit_indexes()
        reports = []
        for p, proc in enumerate(procs):
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.strip():
                raise RuntimeError(client_failure(nodes, p, proc))
            reports.append(json.loads(line))
            proc.wait()
        nodes.check_running()
        for spy in spies:
            spy.wait()
    finally:
        started: list[subprocess.Popen[Any]] = [*procs, *spies]
        for proc in started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raft.LIVE.discard(proc)
    threads_done = [t for r in reports for t in r["threads"]]
    spent: defaultdict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for t in threads_done:
        for phase, phase_seconds in t["spent"].items():
            spent[phase] += phase_seconds
        calls.update(t["calls"])
        errors.update(t["errors"])
    client_cpu = sum(r["cpu"] for r in reports)
    server_cpu = server1 - server0
    return ClientRun(
        clients=processes * threads,
        window=seconds,
        commits=sum(t["commits"] for t in threads_done),
        conflicts=sum(t["conflicts"] for t in threads_done),
        gave_up=sum(t["gave_up"] for t in threads_done),
        errors=dict(errors),
        latencies=sorted(x for t in threads_done for x in t["latencies"]),
        client_cpu=client_cpu,
        server_cpu=server_cpu,
        other_cpu=max(0.0, (busy1 - busy0) - server_cpu - client_cpu),
        spent=dict(spent),
        calls=dict(calls),
        meta_entries=raft1.get(0, 0) - raft0.get(0, 0),
        partition_entries=sum(raft1.get(g, 0) - raft0.get(g, 0) for g in raft1 if g != 0),
    )


def record_nodes(
    nodes: ProtoBaseNodes, directory: Path, label: str, seconds: float
) -> list[subprocess.Popen[bytes]]:
    """py-spy samples of every node for `seconds`, idle threads too (wall time), as
    collapsed stacks, one file per node."""
    directory.mkdir(parents=True, exist_ok=True)
    spies = []
    for member in nodes.members:
        assert member.proc is not None
        output = directory / f"{label}-node{member.name}.txt"
        argv = ["py-spy", "record", "--pid", str(member.proc.pid), "--rate", "200", "--idle"]
        argv += ["--duration", str(max(1, round(seconds))), "--format", "raw", "--nonblocking"]
        argv += ["--output", str(output)]
        spy = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        raft.LIVE.add(spy)
        spies.append(spy)
    return spies


def client_failure(nodes: ProtoBaseNodes, index: int, proc: subprocess.Popen[str]) -> str:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    log = nodes.directory / f"client{index}.log"
    tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
    return f"client process {index} failed (status {proc.poll()}); {log}:\n" + "\n".join(tail)


# -- cold reads ------------------------------------------------------------------------------


def write_items(space: ObjectSpace, count: int) -> float:
    """Database "reads" with root "items": `count` Items in one transaction; seconds."""
    started = time.perf_counter()
    db = space.new_database(READS_DB)
    db.run(
        lambda tr: tr.set_root_object(
            "items",
            Dictionary((k, Item(name=f"item{k}", n=k, score=k * 0.5)) for k in range(count)),
        )
    )
    return time.perf_counter() - started


def read_items(space: ObjectSpace, keys: list[int]) -> dict[str, Any]:
    """One ``get_at`` per key in a read-only transaction of a space with a cold cache."""
    started = time.perf_counter()
    db = space.open_database(READS_DB)
    tr = db.new_read_only_transaction()
    try:
        items = tr.get_root_object("items")
        opened = time.perf_counter()
        total = 0
        for key in keys:
            total += items.get_at(key).n
        done = time.perf_counter()
    finally:
        tr.abort()
    assert total == sum(keys), "a cold read returned a wrong object"
    return {
        "reads": len(keys),
        "seconds": done - opened,
        "rate": len(keys) / (done - opened),
        "open_seconds": opened - started,
    }


def cold_reads_cluster(nodes: ProtoBaseNodes, keys: list[int]) -> dict[str, Any]:
    with ObjectSpace(node_storage(nodes)) as space:
        write_s = write_items(space, len(keys))
    storage = node_storage(nodes, nodes.urls[0])
    with ObjectSpace(storage) as space:
        result = read_items(space, keys)
    result["write_seconds"] = write_s
    result["get_atoms_calls"] = storage.calls["get_atoms"]
    result["get_atoms_seconds"] = storage.spent["get_atoms"]
    return result


def cold_reads_standalone(directory: Path, keys: list[int]) -> dict[str, Any]:
    path = directory / "standalone"
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        write_s = write_items(space, len(keys))
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        result = read_items(space, keys)
    result["write_seconds"] = write_s
    return result


# -- fail-over -------------------------------------------------------------------------------


def failover_once(nodes: ProtoBaseNodes) -> dict[str, Any]:
    """Kill the meta leader under one committing client; seconds to the next commit."""
    nodes.wait_healthy_now()
    victim = nodes.meta_leader()
    acks: list[tuple[float, float]] = []  # (sent, acknowledged), monotonic
    errors: Counter[str] = Counter()
    stop = threading.Event()
    failure: list[BaseException] = []

    def client() -> None:
        try:
            with ObjectSpace(node_storage(nodes, timeout=FAILOVER_LIMIT)) as space:
                db = space.open_database(DB_NAME)
                value = 0
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        commit_one(db, FAILOVER_KEY, value)
                    except (GaveUp, ClusterUnavailableError, StorageError) as exc:
                        errors[type(exc).__name__] += 1
                        continue
                    acks.append((sent, time.monotonic()))
                    value += 1
        except BaseException as exc:
            failure.append(exc)

    def first_after(killed: float) -> float | None:
        for sent, acked in list(acks):
            if acked > killed and not (sent < killed and acked - killed < ANSWERED_BEFORE_KILL):
                return acked
        return None

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    time.sleep(1.0)  # a steady stream of commits first
    killed = time.monotonic()
    nodes.kill(victim)
    deadline = killed + FAILOVER_LIMIT
    while first_after(killed) is None and time.monotonic() < deadline and not failure:
        time.sleep(0.002)
    stop.set()
    thread.join(FAILOVER_LIMIT + 5)
    nodes.reap(victim)
    if failure:
        raise failure[0]
    acked = first_after(killed)
    if acked is None:
        raise TimeoutError(f"no commit acknowledged {FAILOVER_LIMIT:.0f} s after the kill")
    new_leader = nodes.meta_leader().name
    nodes.spawn(victim)  # on its own data directory
    return {
        "killed": victim.name,
        "new_leader": new_leader,
        "seconds": acked - killed,
        "commits_before_kill": sum(1 for _, a in acks if a <= killed),
        "client_errors": dict(errors),
    }


# -- one run ---------------------------------------------------------------------------------


@dataclass
class ProtoBaseResult:
    startup_s: float = 0.0
    latency: ClientRun | None = None
    throughput: ClientRun | None = None
    reads: dict[str, Any] = field(default_factory=dict)
    failovers: list[dict[str, Any]] = field(default_factory=list)
    idle_cpu: float = 0.0  # CPU seconds per second of the 3 idle nodes
    meta_leader: str = ""  # during runs 1 and 2
    noop_p50_ms: float | None = None  # GET /health on the meta leader, 1 in flight


def run_protobase(
    directory: Path,
    partitions: int,
    sizes: Sizes,
    result: ProtoBaseResult,
    keys: list[int],
    profile: Path | None,
) -> None:
    nodes = ProtoBaseNodes(directory, partitions)
    try:
        progress(
            f"protobase: starting {raft.MEMBERS} nodes ({partitions} partitions) in {directory}"
        )
        started = time.perf_counter()
        nodes.start()
        nodes.wait_healthy_now()
        result.startup_s = time.perf_counter() - started
        prepare(nodes)
        result.meta_leader = nodes.meta_leader().name
        result.idle_cpu = nodes.idle_cpu(sizes.warmup * 2)
        progress(f"protobase: idle nodes use {result.idle_cpu:.2f} s of CPU per second")
        noop = with_session(
            lambda session: raft.run_load(
                session,
                raft.Leader(session, nodes),
                nodes.noop,
                1,
                min(sizes.seconds, 2.0),
                warmup=sizes.warmup / 2,
            )
        )
        floor = noop.percentile(0.5)
        result.noop_p50_ms = None if floor is None else floor * 1e3
        progress(f"protobase: 1 client, sequential commits for {sizes.seconds:g} s")
        result.latency = run_clients(nodes, 1, 1, sizes.warmup, sizes.seconds, profile)
        progress(
            f"protobase: p50 {result.latency.percentile_ms(0.5) or 0:.2f} ms, "
            f"{result.latency.rate:,.0f} commits/s"
        )
        clients = CLIENT_PROCESSES * CLIENT_THREADS
        progress(
            f"protobase: {clients} clients ({CLIENT_PROCESSES} processes x {CLIENT_THREADS} "
            f"threads) for {sizes.seconds:g} s"
        )
        result.throughput = run_clients(
            nodes, CLIENT_PROCESSES, CLIENT_THREADS, sizes.warmup, sizes.seconds, profile
        )
        run = result.throughput
        progress(
            f"protobase: {run.rate:,.0f} commits/s, p50 {run.percentile_ms(0.5) or 0:.2f} ms, "
            f"conflicts {run.conflicts}, client CPU {run.client_cpu:.2f} s, "
            f"server CPU {run.server_cpu:.2f} s" + (f", errors {run.errors}" if run.errors else "")
        )
        progress(f"protobase: {len(keys):,} Items in one transaction, then cold reads")
        result.reads = cold_reads_cluster(nodes, keys)
        progress(f"protobase: {result.reads['rate']:,.0f} cold reads/s")
        for repeat in track(range(sizes.failovers), "protobase: fail-overs", "fail-overs"):
            details = failover_once(nodes)
            result.failovers.append(details)
            progress(
                f"protobase: fail-over {repeat + 1}/{sizes.failovers}: killed meta leader "
                f"{details['killed']}, next commit {details['seconds'] * 1e3:.0f} ms later "
                f"(new meta leader {details['new_leader']})"
            )
        nodes.wait_healthy_now()
        nodes.check_running()
    finally:
        nodes.stop()


@dataclass(frozen=True)
class Sizes:
    warmup: float
    seconds: float
    items: int
    failovers: int


# -- the report ------------------------------------------------------------------------------


def code_state() -> str:
    """The checkout's commit and the files of protobase/ and cluster/ that differ from it.

    The nodes and clients import the code when they start; on a checkout that
    others edit, this is printed at both ends of the run.
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        status = git("status", "--porcelain", "--", "protobase", "cluster")
        changed = [line[3:] for line in status.splitlines()]  # "XY path"
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    if not changed:
        return f"{commit}, protobase/ and cluster/ clean"
    return f"{commit} + uncommitted changes in {', '.join(changed)}"


@dataclass
class Row:
    key: str
    figure: str
    unit: str  # "/s", "ms", "s", "%"
    pb: float | None
    reference: str  # what the other column is
    other: float | None
    targets: list[Target] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def ratio(self) -> float | None:
        if self.pb is None or not self.other:
            return None
        return self.pb / self.other


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "%":
        return f"{value:.2f} %"
    return f"{value:.3f} s"


def table(rows: list[Row]) -> str:
    lines = [
        "| # | figure | ProtoBase cluster | compared with | its figure | ratio | target | result |",
        "|---|---|--:|---|--:|--:|---|---|",
    ]
    for row in rows:
        ratio = row.ratio()
        targets = "; ".join(t.text for t in row.targets) or "—"
        results = "; ".join("PASS" if t.passed else "MISS" for t in row.targets) or "—"
        lines.append(
            f"| {row.key} | {row.figure} | {fmt(row.pb, row.unit)} | {row.reference or '—'} | "
            f"{fmt(row.other, row.unit)} | {'—' if ratio is None else f'{ratio:.2f}'} | "
            f"{targets} | {results} |"
        )
    return "\n".join(lines)


def build_rows(
    pb: ProtoBaseResult, etcd: raft.SystemResult, standalone: dict[str, Any]
) -> list[Row]:
    run, one = pb.throughput, pb.latency
    assert run is not None and one is not None
    e32, e1 = etcd.levels[32], etcd.levels[1]
    rate_ok = run.rate >= 0.75 * e32.rate
    p50 = one.percentile_ms(0.5)
    p50_ok = p50 is not None and e1.p50_ms is not None and p50 <= 3 * e1.p50_ms
    conflicts = 100.0 * run.conflicts / run.commits if run.commits else None
    reads_ok = pb.reads["rate"] >= 0.5 * standalone["rate"]
    failover = statistics.median(f["seconds"] for f in pb.failovers)
    etcd_failover = statistics.median(etcd.failovers) if etcd.failovers else None
    clients = f"{run.clients} clients ({CLIENT_PROCESSES} processes x {CLIENT_THREADS} threads)"
    return [
        Row(
            "0",
            "round trip without work, 1 in flight, p50 (GET /health on the meta leader)",
            "ms",
            pb.noop_p50_ms,
            "etcd, serializable range read",
            etcd.noop_p50_ms,
        ),
        Row(
            "1",
            f"1-object db.run commits/s, {clients}, one Dictionary",
            "/s",
            run.rate,
            "etcd puts/s, 32 in flight",
            e32.rate,
            [Target(">= 0.75x etcd", rate_ok)],
            {"protobase": vars(run) | {"phases_ms": run.phases_ms()}, "etcd": vars(e32)},
        ),
        Row(
            "1.p50",
            f"commit latency p50, {run.clients} clients",
            "ms",
            run.percentile_ms(0.5),
            "etcd put p50, 32 in flight",
            e32.p50_ms,
        ),
        Row(
            "1.p99",
            f"commit latency p99, {run.clients} clients",
            "ms",
            run.percentile_ms(0.99),
            "etcd put p99, 32 in flight",
            e32.p99_ms,
        ),
        Row(
            "1.cli",
            "client CPU in the window (ProtoBase: the 4 client processes; etcd: bench/raft.py's "
            "one process)",
            "s",
            run.client_cpu,
            "etcd client",
            e32.client_cpu,
        ),
        Row(
            "1.srv",
            "server CPU per commit (3 processes), 32 clients",
            "ms",
            run.server_cpu / run.commits * 1e3 if run.commits else None,
            "etcd, per put",
            e32.cpu_per_write_ms,
        ),
        Row(
            "2",
            "commit latency p50, 1 client, sequential",
            "ms",
            p50,
            "etcd put p50, 1 in flight",
            e1.p50_ms,
            [Target("<= 3x etcd", p50_ok)],
            {"protobase": vars(one) | {"phases_ms": one.phases_ms()}, "etcd": vars(e1)},
        ),
        Row(
            "2.p99",
            "commit latency p99, 1 client",
            "ms",
            one.percentile_ms(0.99),
            "etcd put p99, 1 in flight",
            e1.p99_ms,
        ),
        Row(
            "3",
            f"ConflictErrors reaching db.run's retry, {run.clients} clients, % of commits",
            "%",
            conflicts,
            "",
            None,
            [Target("<= 1 %", conflicts is not None and conflicts <= 1.0)],
            {"conflicts": run.conflicts, "commits": run.commits, "gave_up": run.gave_up},
        ),
        Row(
            "4",
            f"cold reads, {pb.reads['reads']:,} random keys, one get_at each, new ObjectSpace",
            "/s",
            pb.reads["rate"],
            "StandaloneFileStorage, freshly opened",
            standalone["rate"],
            [Target(">= 0.5x standalone", reads_ok)],
            {"protobase": pb.reads, "standalone": standalone},
        ),
        Row(
            "5",
            f"SIGKILL of the meta leader to the next acknowledged commit, 1 client, median of "
            f"{len(pb.failovers)}",
            "s",
            failover,
            f"etcd leader fail-over, {raft.FAILOVER_INFLIGHT} in flight, median",
            etcd_failover,
            [Target("<= 0.5 s", failover <= 0.5)],
            {"protobase": pb.failovers, "etcd": etcd.failover_details},
        ),
    ]


def phases_table(runs: dict[str, ClientRun]) -> str:
    """Mean milliseconds of one commit in each client-side phase, and calls per commit."""
    names = list(runs)
    lines = [
        "| phase (client side) | " + " | ".join(names) + " |",
        "|---|" + "--:|" * len(names),
    ]
    for phase in (*PHASES, "client (rest)", "total"):
        cells = []
        for run in runs.values():
            ms = run.phases_ms().get(phase)
            calls = run.calls.get(phase)
            per = f" ({calls / run.commits:.2f} calls)" if calls and run.commits else ""
            cells.append("—" if ms is None else f"{ms:.2f} ms{per}")
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main_run(args: argparse.Namespace) -> None:
    quick = args.quick
    sizes = (
        Sizes(warmup=0.5, seconds=1.5, items=2_000, failovers=2)
        if quick
        else Sizes(warmup=1.0, seconds=5.0, items=10_000, failovers=5)
    )
    if args.profile is not None and shutil.which("py-spy") is None:
        print("error: --profile needs py-spy on PATH (pip install py-spy)", file=sys.stderr)
        sys.exit(2)
    if shutil.which("etcd") is None:
        print(
            "error: the `etcd` binary is missing. Install Debian's etcd-server "
            "(`apt-get install -y etcd-server`, or run `make bench-cluster`).",
            file=sys.stderr,
        )
        sys.exit(2)
    tmp = Path(tempfile.mkdtemp(prefix="protobase-cluster-bench-", dir="/tmp"))
    began = time.perf_counter()
    info = machine_info(("protobase", "aiohttp", "msgpack"))
    info["versions"].pop("sqlite (library)", None)
    info["data_filesystem"] = filesystem_of(tmp)
    info["etcd"] = raft.etcd_version()
    command = "python bench/cluster.py" + (" --quick" if quick else "")
    if args.partitions != 8:
        command += f" --partitions {args.partitions}"
    if args.profile is not None:
        command += f" --profile {args.profile}"
    print(f"# ProtoBase cluster benchmark ({'quick' if quick else 'full'} mode)")
    print()
    print(
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, "
        f"Linux {info['kernel']}"
    )
    print(f"- protobase source: {info['protobase_source']}")
    info["code_at_start"] = code_state()
    print(f"- code at the start: {info['code_at_start']}")
    print(f"- data: {tmp} on {info['data_filesystem']}")
    print(f"- {info['python']}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(
        f"- etcd {info['etcd']}: 3 members, defaults, JSON gateway, started and loaded by "
        "bench/raft.py's code"
    )
    print(
        f"- ProtoBase: 3 `protobase node` processes, {args.partitions} partitions, default "
        f"timeouts; clients {CLIENT_PROCESSES} processes x {CLIENT_THREADS} threads, "
        f"{sizes.warmup:g} s warm-up + {sizes.seconds:g} s; {sizes.items:,} items for cold "
        f"reads; {sizes.failovers} fail-overs"
    )
    print(f"- command: {command}")
    disk_before = raft.fsync_probe(tmp)
    print(
        f"- disk: {raft.VALUE_SIZE}-byte append + fdatasync in the data directory: median "
        f"{disk_before['median_ms']:.2f} ms, p90 {disk_before['p90_ms']:.2f} ms (before the run)"
    )
    load_before = os.getloadavg()
    print(
        f"- load average at the start: {load_before[0]:.2f} (1 min), {load_before[1]:.2f} (5 min)"
    )
    print(flush=True)

    keys = list(range(sizes.items))
    random.Random(SEED).shuffle(keys)
    pb = ProtoBaseResult()
    try:
        progress("etcd: bench/raft.py's levels and fail-overs")
        etcd = asyncio.run(
            raft.run_system(
                raft.EtcdCluster(tmp / "etcd"), sizes.warmup, sizes.seconds, sizes.failovers
            )
        )
        run_protobase(tmp / "protobase", args.partitions, sizes, pb, keys, args.profile)
        progress(f"standalone: {len(keys):,} Items in one transaction, reopen, cold reads")
        standalone = cold_reads_standalone(tmp, keys)
        disk_after = raft.fsync_probe(tmp)
    finally:
        # The clusters and client processes stopped themselves; bench/raft.py's exit
        # handler kills whatever an interruption left in its LIVE set.
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.perf_counter() - began
    rows = build_rows(pb, etcd, standalone)
    print(table(rows))
    print()
    assert pb.latency is not None and pb.throughput is not None
    runs = {"1 client": pb.latency, f"{pb.throughput.clients} clients": pb.throughput}
    print("Where a commit's time goes, seen from the client (mean per commit):")
    print()
    print(phases_table(runs))
    print()
    for name, run in runs.items():
        per = max(1, run.commits)
        print(
            f"ProtoBase, {name}: {run.commits:,} commits in {run.window:g} s; CPU in the window: "
            f"clients {run.client_cpu:.2f} s, 3 nodes {run.server_cpu:.2f} s, every other "
            f"process {run.other_cpu:.2f} s (of {run.window * info['nproc']:.1f} s); Raft "
            f"entries per commit: meta group {run.meta_entries / per:.2f}, partition groups "
            f"{run.partition_entries / per:.2f}" + (f"; errors {run.errors}" if run.errors else "")
        )
    print(
        f"ProtoBase idle: the 3 nodes use {pb.idle_cpu:.2f} s of CPU per second with no client "
        f"({1 + args.partitions} Raft groups on each node); meta leader during runs 1 and 2: "
        f"node {pb.meta_leader}."
    )
    print(
        f"Cold reads: ProtoBase {pb.reads['get_atoms_calls']:,} get_atoms requests "
        f"({pb.reads['get_atoms_seconds'] / max(1, pb.reads['get_atoms_calls']) * 1e3:.2f} ms "
        f"each) for {pb.reads['reads']:,} reads; writing the items took "
        f"{pb.reads['write_seconds']:.2f} s (standalone {standalone['write_seconds']:.2f} s)."
    )
    values = ", ".join(f"{f['seconds']:.3f}" for f in pb.failovers)
    print(f"ProtoBase fail-overs (s): {values}; cluster start {pb.startup_s:.2f} s.")
    print(f"etcd fail-overs (s): {', '.join(f'{v:.3f}' for v in etcd.failovers)}.")
    info["code_at_end"] = code_state()
    print(f"Code at the end: {info['code_at_end']}.")
    load_after = os.getloadavg()
    print(
        f"Disk after the run: append + fdatasync median {disk_after['median_ms']:.2f} ms, "
        f"p90 {disk_after['p90_ms']:.2f} ms. Load average at the end: {load_after[0]:.2f} (1 min), "
        f"{load_after[1]:.2f} (5 min)."
    )
    print("ratio is the ProtoBase figure divided by the other: above 1 is better for ProtoBase")
    print("on rates (/s), worse on latencies, CPU and fail-over times.")
    misses = [f"{row.key} ({t.text})" for row in rows for t in row.targets if not t.passed]
    print(f"Missed targets: {', '.join(misses) if misses else 'none'}")
    print(f"Total run time: {elapsed:.0f} s")
    if args.json:
        report = {
            "mode": "quick" if quick else "full",
            "command": command,
            "machine": info,
            "partitions": args.partitions,
            "sizes": dataclasses.asdict(sizes),
            "fdatasync_ms": {"before": disk_before, "after": disk_after},
            "load_average": {"before": load_before, "after": load_after},
            "total_seconds": elapsed,
            "protobase_startup_s": pb.startup_s,
            "protobase_idle_cpu_per_s": pb.idle_cpu,
            "protobase_meta_leader": pb.meta_leader,
            "etcd_startup_s": etcd.startup_s,
            "etcd_noop_p50_ms": etcd.noop_p50_ms,
            "etcd_levels": {n: vars(level) for n, level in etcd.levels.items()},
            "results": [
                {
                    "id": row.key,
                    "figure": row.figure,
                    "unit": row.unit,
                    "protobase": row.pb,
                    "compared_with": row.reference,
                    "other": row.other,
                    "ratio": row.ratio(),
                    "targets": [{"target": t.text, "pass": t.passed} for t in row.targets],
                    "details": row.details,
                }
                for row in rows
            ],
        }
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"Results written to {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1.5 s windows, 2,000 items, 2 fail-overs: a smoke test",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    parser.add_argument(
        "--partitions",
        type=int,
        default=8,
        help="partitions of the ProtoBase cluster (default 8, as `protobase cluster up`)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record every node with py-spy (on PATH) during runs 1 and 2, collapsed stacks "
        "into DIR; the sampling perturbs the figures",
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main()
        return

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # runs the finally blocks: every process is stopped

    signal.signal(signal.SIGTERM, terminated)
    main_run(args)


if __name__ == "__main__":
    main()
