"""Raft benchmark: ProtoBase's replicated key-value example vs a 3-member etcd cluster.

Run from the repository root::

    python bench/raft.py                    # full run: both systems
    python bench/raft.py --quick            # shorter levels, 2 fail-overs instead of 5
    python bench/raft.py --systems etcd     # one system only
    python bench/raft.py --json results.json

Each system runs as 3 local processes on 127.0.0.1, started by the benchmark
with fresh data directories in one temporary directory under /tmp (removed
at the end) and free ports, and stopped (by process group) when it ends:

- ProtoBase: ``python -m cluster.raft.examples.kv --id N --peers ... --http
  ... --data DIR`` per node (``--kv-module`` names another module with the
  same interface), with a random cluster secret and client token. A write is
  ``PUT /kv/<key>``; the node answers 200 once the entry is committed
  (fsync'd on a majority) and applied, 421 with the leader's HTTP address
  when it is not the leader.
- etcd (Debian's ``etcd-server``): ``etcd --name mN --data-dir ...
  --initial-cluster ... --initial-cluster-state new``, every other setting
  at its default: fsync on, heartbeat 100 ms, election timeout 1000 ms. A
  write is ``POST /v3/kv/put`` with a base64 key and value on etcd's JSON
  gRPC gateway, which etcd 3.4 serves on its client URL.

The same Python client drives both (`run_load`): one aiohttp ClientSession
and N asyncio workers, each writing 100-byte values to random keys among
10,000, one write after another, always to the leader's HTTP address. The
leader is found by asking every member for its status (``GET /status``,
``POST /v3/maintenance/status``) and taking the one that names itself as
leader; a worker whose write fails (refused connection, 421, 503) asks
again. Nothing is retried blindly and every figure counts acknowledged
writes only. The systems run one after the other (each cluster is started,
measured and stopped before the next one starts), so neither's idle
processes take CPU from the other.

Figures, for each system:

- 0: the round trip of a request that writes nothing, 1 in flight (etcd: a
  serializable range read of one key through the gateway; ProtoBase: ``GET
  /health``), to show the HTTP floor under the write latencies;
- at 1, 32 and 128 writes in flight, after a warm-up (1 s; 0.5 s quick),
  for a fixed window (5 s; 1.5 s quick): acknowledged writes per second, p50
  and p99 latency of the writes acknowledged in the window, the CPU seconds
  the 3 server processes used in the window (utime + stime from
  /proc/<pid>/stat, before and after) and the CPU seconds of the client (this
  process), and server CPU per write. The notes add the CPU that every other
  process on the machine used in the same windows (from /proc/stat): on a
  shared machine, that is what the two systems competed with;
- F: leader fail-over. Under a steady load of 8 writes in flight, the leader
  is killed with SIGKILL; the fail-over time is from just before the kill to
  the first write acknowledged by another member. The killed member is then
  restarted on its data directory and the cluster waited for (every member
  answers, all name the same leader, every member has applied the leader's
  commit index) before the next repeat (5; 2 quick). The row gives the
  median, the notes every value.

Targets (PASS/MISS; a miss never makes the exit status non-zero): writes/s
at 32 in flight >= etcd's; p50 latency at 1 in flight <= 2x etcd's;
fail-over median <= etcd's. The exit status is 2 when the etcd binary (or
the ProtoBase example module) is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import json
import math
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from common import Target, filesystem_of, machine_info, progress
from progress_bars import track

ROOT = Path(__file__).resolve().parent.parent
KV_MODULE = "cluster.raft.examples.kv"
SYSTEMS = ("protobase", "etcd")
NAMES = {"protobase": "ProtoBase", "etcd": "etcd"}
MEMBERS = 3
KEYS = 10_000
VALUE_SIZE = 100
LEVELS = (1, 32, 128)
FAILOVER_INFLIGHT = 8
FAILOVER_LIMIT = 30.0  # seconds to wait for the first write after a kill
SEED = 20240601
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STATUS_TIMEOUT = aiohttp.ClientTimeout(total=1.0)
WRITE_TIMEOUT = aiohttp.ClientTimeout(total=15.0)

LIVE: set[subprocess.Popen[bytes]] = set()
"""Every server process started and not yet reaped: killed at exit whatever happens."""


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(LIVE):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        LIVE.discard(proc)


# -- what a client sees ---------------------------------------------------------------------


class NotLeader(Exception):
    """The member is not the leader; `hint` is the leader's base URL when it named one."""

    def __init__(self, hint: str | None) -> None:
        super().__init__(hint)
        self.hint = hint


class Unavailable(Exception):
    """The member answered, but not with success (no leader yet, timeout, ...)."""


@dataclass
class Status:
    """One member's view: its own id, the leader it knows, its Raft indexes."""

    member: str
    leader: str | None
    term: int
    commit: int
    applied: int

    @property
    def is_leader(self) -> bool:
        return self.leader is not None and self.leader == self.member


@dataclass
class Member:
    name: str
    url: str  # base URL of its HTTP client API
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    killed: bool = False  # by the benchmark, on purpose: not a crash


PutFn = Callable[[aiohttp.ClientSession, str, int], Awaitable[None]]
"""``put(session, base_url, key_index)``: one write; raises NotLeader, Unavailable, ClientError."""


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy() -> float:
    """CPU seconds all CPUs of the machine spent not idle since boot (from /proc/stat)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0
    ticks = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


# -- the clusters ----------------------------------------------------------------------------


class Cluster:
    """Three local server processes of one system and how to talk to them."""

    system = ""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True)
        self.members: list[Member] = []
        self.values = [random.Random(SEED + k).randbytes(VALUE_SIZE) for k in range(KEYS)]

    def command(self, member: Member) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def spawn(self, member: Member) -> None:
        argv, env = self.command(member)
        member.killed = False
        with member.log.open("ab") as log:
            member.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches everything
            )
        LIVE.add(member.proc)

    def start(self) -> None:
        for member in self.members:
            self.spawn(member)

    def kill(self, member: Member) -> None:
        """SIGKILL `member`'s process group; reaped later by `reap`, not to block the loop."""
        assert member.proc is not None
        member.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(member.proc.pid, signal.SIGKILL)

    def reap(self, member: Member) -> None:
        if member.proc is not None:
            member.proc.wait()
            LIVE.discard(member.proc)
            member.proc = None

    def stop(self) -> None:
        procs = [m.proc for m in self.members if m.proc is not None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            with contextlib.suppress(ProcessLookupError):  # anything the server left in its group
                os.killpg(proc.pid, signal.SIGKILL)
            LIVE.discard(proc)
        for member in self.members:
            member.proc = None

    def pids(self) -> list[int]:
        return [m.proc.pid for m in self.members if m.proc is not None]

    def server_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def check_running(self) -> None:
        """Raise, with the end of its log, when a member that should run has exited."""
        for member in self.members:
            if not member.killed and member.proc is not None and member.proc.poll() is not None:
                tail = member.log.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(
                    f"{self.system} member {member.name} exited with status "
                    f"{member.proc.returncode}; the end of {member.log}:\n" + "\n".join(tail)
                )

    async def status(self, session: aiohttp.ClientSession, member: Member) -> Status | None:
        raise NotImplementedError

    async def put(self, session: aiohttp.ClientSession, base: str, key: int) -> None:
        raise NotImplementedError

    async def noop(self, session: aiohttp.ClientSession, base: str, key: int) -> None:
        raise NotImplementedError

    async def statuses(self, session: aiohttp.ClientSession) -> list[Status | None]:
        return await asyncio.gather(*(self.status(session, m) for m in self.members))

    async def find_leader(self, session: aiohttp.ClientSession, timeout: float = 60.0) -> Member:
        """The member that names itself leader (the highest term if two do), polled every 10 ms."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                (s.term, m)
                for s, m in zip(await self.statuses(session), self.members, strict=True)
                if s is not None and s.is_leader
            ]
            if found:
                return max(found, key=lambda pair: pair[0])[1]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.system}: no leader after {timeout:.0f} s")
            self.check_running()
            await asyncio.sleep(0.01)

    async def wait_healthy(self, session: aiohttp.ClientSession, timeout: float = 90.0) -> None:
        """Until every member answers, all name the same leader and all applied its commit."""
        deadline = time.monotonic() + timeout
        last: list[Status | None] = []
        while time.monotonic() < deadline:
            self.check_running()
            last = await self.statuses(session)
            known = [s for s in last if s is not None]
            leaders = [s for s in known if s.is_leader]
            if (
                len(known) == len(self.members)
                and len(leaders) == 1
                and all(s.leader == leaders[0].member for s in known)
                and min(s.applied for s in known) >= leaders[0].commit
            ):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.system} not healthy after {timeout:.0f} s: {last}")


class EtcdCluster(Cluster):
    system = "etcd"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        ports = free_ports(2 * MEMBERS)
        self.peer_urls = [f"http://127.0.0.1:{p}" for p in ports[MEMBERS:]]
        self.initial = ",".join(f"m{i + 1}={url}" for i, url in enumerate(self.peer_urls))
        self.token = f"bench-{secrets.token_hex(6)}"
        self.members = [
            Member(f"m{i + 1}", f"http://127.0.0.1:{ports[i]}", directory / f"m{i + 1}.log")
            for i in range(MEMBERS)
        ]
        b64 = [base64.b64encode(f"k{k:05d}".encode()).decode() for k in range(KEYS)]
        self.put_bodies = [
            json.dumps({"key": b64[k], "value": base64.b64encode(self.values[k]).decode()}).encode()
            for k in range(KEYS)
        ]
        self.range_bodies = [
            json.dumps({"key": b64[k], "serializable": True}).encode() for k in range(KEYS)
        ]

    def command(self, member: Member) -> tuple[list[str], dict[str, str]]:
        peer = self.peer_urls[self.members.index(member)]
        argv = [
            "etcd",
            "--name",
            member.name,
            "--data-dir",
            str(self.directory / member.name),
            "--listen-client-urls",
            member.url,
            "--advertise-client-urls",
            member.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            self.initial,
            "--initial-cluster-token",
            self.token,
            "--initial-cluster-state",
            "new",  # ignored on a restart: the data directory then holds the cluster
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        return argv, env

    async def status(self, session: aiohttp.ClientSession, member: Member) -> Status | None:
        try:
            async with session.post(
                member.url + "/v3/maintenance/status", data=b"{}", timeout=STATUS_TIMEOUT
            ) as response:
                if response.status != 200:
                    return None
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        leader = body.get("leader")  # the gateway writes uint64 as strings
        return Status(
            member=str(body["header"]["member_id"]),
            leader=None if leader in (None, "0") else str(leader),
            term=int(body.get("raftTerm", 0)),
            commit=int(body.get("raftIndex", 0)),
            applied=int(body.get("raftAppliedIndex", 0)),
        )

    async def put(self, session: aiohttp.ClientSession, base: str, key: int) -> None:
        async with session.post(
            base + "/v3/kv/put", data=self.put_bodies[key], timeout=WRITE_TIMEOUT
        ) as response:
            await response.read()
            if response.status != 200:
                raise Unavailable(f"etcd answered {response.status}")

    async def noop(self, session: aiohttp.ClientSession, base: str, key: int) -> None:
        async with session.post(base + "/v3/kv/range", data=self.range_bodies[key]) as response:
            await response.read()
            if response.status != 200:
                raise Unavailable(f"etcd answered {response.status}")


def protobase_command(
    module: str, node_id: int, peers: str, http: str, data: Path, secret: str, token: str
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one node of the ProtoBase example service."""
    argv = [sys.executable, "-m", module, "--id", str(node_id), "--peers", peers]
    argv += ["--http", http, "--data", str(data)]
    env = dict(os.environ, PROTOBASE_RAFT_SECRET=secret, PROTOBASE_KV_TOKEN=token)
    return argv, env


class ProtoBaseCluster(Cluster):
    system = "protobase"

    def __init__(self, directory: Path, module: str) -> None:
        super().__init__(directory)
        self.module = module
        ports = free_ports(2 * MEMBERS)
        self.peers = ",".join(f"{i + 1}=127.0.0.1:{ports[MEMBERS + i]}" for i in range(MEMBERS))
        self.http = [f"127.0.0.1:{p}" for p in ports[:MEMBERS]]
        self.secret = secrets.token_hex(32)
        self.token = secrets.token_hex(16)
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.members = [
            Member(str(i + 1), f"http://{self.http[i]}", directory / f"n{i + 1}.log")
            for i in range(MEMBERS)
        ]
        self.paths = [f"/kv/k{k:05d}" for k in range(KEYS)]

    def command(self, member: Member) -> tuple[list[str], dict[str, str]]:
        i = self.members.index(member)
        data = self.directory / f"n{i + 1}"
        return protobase_command(
            self.module, i + 1, self.peers, self.http[i], data, self.secret, self.token
        )

    async def status(self, session: aiohttp.ClientSession, member: Member) -> Status | None:
        try:
            async with session.get(
                member.url + "/status", headers=self.headers, timeout=STATUS_TIMEOUT
            ) as response:
                if response.status != 200:
                    return None
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        leader = body.get("leader")
        return Status(
            member=str(body["id"]),
            leader=None if leader is None else str(leader),
            term=int(body.get("term") or 0),
            commit=int(body.get("commit") or 0),
            applied=int(body.get("applied") or 0),
        )

    async def put(self, session: aiohttp.ClientSession, base: str, key: int) -> None:
        async with session.put(
            base + self.paths[key],
            data=self.values[key],
            headers=self.headers,
            timeout=WRITE_TIMEOUT,
        ) as response:
            body = await response.read()
            if response.status == 200:
                return
            if response.status == 421:
                try:
                    hint = json.loads(body).get("leader_http")
                except ValueError:
                    hint = None
                raise NotLeader(hint)
            raise Unavailable(f"protobase answered {response.status}")

    async def noop(self, session: aiohttp.ClientSession, base: str, key: int) -> None:
        async with session.get(base + "/health") as response:
            await response.read()
            if response.status != 200:
                raise Unavailable(f"protobase answered {response.status}")


# -- the load ----------------------------------------------------------------------------------


class Leader:
    """The leader's base URL as the workers know it; one search at a time when it is lost."""

    def __init__(self, session: aiohttp.ClientSession, cluster: Cluster) -> None:
        self.session = session
        self.cluster = cluster
        self.url: str | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        while self.url is None:
            async with self._lock:
                if self.url is None:
                    self.url = (await self.cluster.find_leader(self.session)).url
        return self.url

    def lost(self, url: str, hint: str | None = None) -> None:
        if self.url == url:
            self.url = hint


@dataclass
class LoadResult:
    inflight: int
    window: float  # seconds measured
    latencies: list[float]  # seconds, sorted, of the writes acknowledged in the window
    errors: Counter[str] = field(default_factory=Counter)
    probes: tuple[Any, Any] | None = None

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.window

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        return self.latencies[max(0, math.ceil(q * len(self.latencies)) - 1)]


async def run_load(
    session: aiohttp.ClientSession,
    leader: Leader,
    put_fn: PutFn,
    inflight: int,
    duration: float,
    *,
    warmup: float = 0.0,
    probe: Callable[[], Any] | None = None,
    on_ack: Callable[[float, float, str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """`inflight` workers doing sequential `put_fn` writes to random keys, always to the leader.

    Counts the writes acknowledged between ``warmup`` and ``warmup + duration``
    seconds after the start (or until `stop` is set); `probe()` is called at
    both ends of that window and its two results returned. ``on_ack(start,
    end, base)`` sees every acknowledged write (perf_counter times).
    """
    began = time.perf_counter()
    window = [began + warmup, began + warmup + duration]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    probes: list[Any] = []

    def over() -> bool:
        return time.perf_counter() >= window[1] or (stop is not None and stop.is_set())

    async def worker(i: int) -> None:
        rng = random.Random(SEED * 1000 + inflight * 10 + i)
        while not over():
            base = await leader.get()
            key = rng.randrange(KEYS)
            start = time.perf_counter()
            try:
                await put_fn(session, base, key)
            except NotLeader as exc:
                errors["not leader"] += 1
                leader.lost(base, exc.hint)
                continue
            except Unavailable as exc:
                errors[str(exc)] += 1
                leader.lost(base)
                await asyncio.sleep(0.005)
                continue
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                errors[type(exc).__name__] += 1
                leader.lost(base)
                await asyncio.sleep(0.005)
                continue
            end = time.perf_counter()
            if window[0] <= end < window[1]:
                latencies.append(end - start)
            if on_ack is not None:
                on_ack(start, end, base)

    async def clock() -> None:
        await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
        if probe is not None:
            probes.append(probe())
        if stop is None:
            await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
        else:
            remaining = max(0.0, window[1] - time.perf_counter())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), remaining)
            window[1] = min(window[1], time.perf_counter())
        if probe is not None:
            probes.append(probe())

    await asyncio.gather(clock(), *(worker(i) for i in range(inflight)))
    latencies.sort()
    return LoadResult(
        inflight,
        window[1] - window[0],
        latencies,
        errors,
        (probes[0], probes[1]) if len(probes) == 2 else None,
    )


# -- one system, end to end ------------------------------------------------------------------


@dataclass
class Level:
    inflight: int
    rate: float
    p50_ms: float | None
    p99_ms: float | None
    server_cpu: float
    client_cpu: float
    other_cpu: float  # every other process on the machine, in the same window
    writes: int
    window: float
    errors: dict[str, int]

    @property
    def cpu_per_write_ms(self) -> float | None:
        return self.server_cpu / self.writes * 1e3 if self.writes else None


@dataclass
class SystemResult:
    system: str
    noop_p50_ms: float | None = None
    noop_p99_ms: float | None = None
    levels: dict[int, Level] = field(default_factory=dict)
    failovers: list[float] = field(default_factory=list)
    failover_details: list[dict[str, Any]] = field(default_factory=list)
    startup_s: float = 0.0


async def measure_levels(
    cluster: Cluster,
    session: aiohttp.ClientSession,
    result: SystemResult,
    warmup: float,
    seconds: float,
) -> None:
    leader = Leader(session, cluster)
    noop = await run_load(session, leader, cluster.noop, 1, min(seconds, 2.0), warmup=warmup / 2)
    result.noop_p50_ms = _ms(noop.percentile(0.5))
    result.noop_p99_ms = _ms(noop.percentile(0.99))
    for inflight in track(LEVELS, f"{cluster.system}: load levels", "levels"):
        progress(f"{cluster.system}: {inflight} write(s) in flight for {seconds:g} s")

        def probe() -> tuple[float, float, float]:
            return cluster.server_cpu(), time.process_time(), machine_busy()

        load = await run_load(
            session, leader, cluster.put, inflight, seconds, warmup=warmup, probe=probe
        )
        cluster.check_running()
        assert load.probes is not None
        (server0, client0, busy0), (server1, client1, busy1) = load.probes
        level = Level(
            inflight=inflight,
            rate=load.rate,
            p50_ms=_ms(load.percentile(0.5)),
            p99_ms=_ms(load.percentile(0.99)),
            server_cpu=server1 - server0,
            client_cpu=client1 - client0,
            other_cpu=max(0.0, (busy1 - busy0) - (server1 - server0) - (client1 - client0)),
            writes=len(load.latencies),
            window=load.window,
            errors=dict(load.errors),
        )
        result.levels[inflight] = level
        progress(
            f"{cluster.system}: {level.rate:,.0f} writes/s, p50 {level.p50_ms or 0:.2f} ms, "
            f"p99 {level.p99_ms or 0:.2f} ms, server CPU {level.server_cpu:.2f} s, "
            f"client CPU {level.client_cpu:.2f} s, other processes {level.other_cpu:.2f} s"
            + (f", errors {dict(load.errors)}" if load.errors else "")
        )


async def failover_once(cluster: Cluster, session: aiohttp.ClientSession) -> dict[str, Any]:
    """Kill the leader under load; the seconds until another member acknowledges a write."""
    await cluster.wait_healthy(session)
    leader = Leader(session, cluster)
    victim = await cluster.find_leader(session)
    killed_at: list[float] = []
    first: list[float] = []
    got = asyncio.Event()
    stop = asyncio.Event()

    def on_ack(start: float, end: float, base: str) -> None:
        if killed_at and not first and end > killed_at[0] and base != victim.url:
            first.append(end)
            got.set()

    load = asyncio.create_task(
        run_load(
            session,
            leader,
            cluster.put,
            FAILOVER_INFLIGHT,
            1.0 + FAILOVER_LIMIT,
            on_ack=on_ack,
            stop=stop,
        )
    )
    await asyncio.sleep(1.0)  # a steady load first
    killed_at.append(time.perf_counter())
    cluster.kill(victim)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(got.wait(), FAILOVER_LIMIT)
    stop.set()
    outcome = await load
    cluster.reap(victim)
    if not first:
        raise TimeoutError(
            f"{cluster.system}: no write acknowledged {FAILOVER_LIMIT:.0f} s after "
            f"killing the leader {victim.name}"
        )
    new_leader = next((m.name for m in cluster.members if m.url == leader.url), None)
    cluster.spawn(victim)  # on its own data directory
    return {
        "killed": victim.name,
        "new_leader": new_leader,
        "seconds": first[0] - killed_at[0],
        "failed_writes": dict(outcome.errors),
    }


async def measure_failovers(
    cluster: Cluster, session: aiohttp.ClientSession, result: SystemResult, repeats: int
) -> None:
    for repeat in track(range(repeats), f"{cluster.system}: fail-overs", "fail-overs"):
        details = await failover_once(cluster, session)
        result.failovers.append(details["seconds"])
        result.failover_details.append(details)
        progress(
            f"{cluster.system}: fail-over {repeat + 1}/{repeats}: killed leader "
            f"{details['killed']}, first write acknowledged {details['seconds'] * 1e3:.0f} ms "
            f"later by {details['new_leader']} "
            f"(failed writes {sum(details['failed_writes'].values())})"
        )
    await cluster.wait_healthy(session)


async def run_system(cluster: Cluster, warmup: float, seconds: float, repeats: int) -> SystemResult:
    result = SystemResult(cluster.system)
    connector = aiohttp.TCPConnector(limit=0)  # as many connections as workers
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            progress(f"{cluster.system}: starting {MEMBERS} members in {cluster.directory}")
            started = time.perf_counter()
            cluster.start()
            await cluster.wait_healthy(session)
            result.startup_s = time.perf_counter() - started
            await measure_levels(cluster, session, result, warmup, seconds)
            progress(
                f"{cluster.system}: {repeats} leader fail-over(s) under {FAILOVER_INFLIGHT} writes"
            )
            await measure_failovers(cluster, session, result, repeats)
        finally:
            cluster.stop()
    return result


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


# -- the report --------------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    figure: str
    unit: str  # "/s", "ms", "s"
    pb: float | None
    etcd: float | None
    targets: list[Target] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def ratio(self) -> float | None:
        if self.pb is None or not self.etcd:
            return None
        return self.pb / self.etcd

    @property
    def judged(self) -> bool:
        """Targets compare the two systems: only judged when both ran."""
        return self.pb is not None and self.etcd is not None


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{value:.3f} s"


def table(rows: list[Row]) -> str:
    lines = [
        "| # | figure | ProtoBase | etcd | PB/etcd | target | result |",
        "|---|---|--:|--:|--:|---|---|",
    ]
    for row in rows:
        ratio = row.ratio()
        targets = "; ".join(t.text for t in row.targets) or "—"
        if row.targets and row.judged:
            results = "; ".join("PASS" if t.passed else "MISS" for t in row.targets)
        else:
            results = "—" if not row.targets else "not run"
        lines.append(
            f"| {row.key} | {row.figure} | {fmt(row.pb, row.unit)} | {fmt(row.etcd, row.unit)} | "
            f"{'—' if ratio is None else f'{ratio:.2f}'} | {targets} | {results} |"
        )
    return "\n".join(lines)


def build_rows(results: dict[str, SystemResult]) -> list[Row]:
    pb, etcd = results.get("protobase"), results.get("etcd")

    def pair(get: Callable[[SystemResult], float | None]) -> tuple[float | None, float | None]:
        return (None if pb is None else get(pb)), (None if etcd is None else get(etcd))

    def fine(a: float | None, b: float | None, ok: Callable[[float, float], bool]) -> bool:
        return a is not None and b is not None and ok(a, b)

    rows = [
        Row(
            "0",
            "round trip without a write, 1 in flight, p50 (etcd: serializable range; "
            "ProtoBase: GET /health)",
            "ms",
            *pair(lambda r: r.noop_p50_ms),
        )
    ]
    for n in LEVELS:

        def at(r: SystemResult, n: int = n) -> Level:
            return r.levels[n]

        rate = pair(lambda r: at(r).rate)
        p50 = pair(lambda r: at(r).p50_ms)
        rate_targets = [Target(">= etcd", fine(*rate, lambda a, b: a >= b))] if n == 32 else []
        p50_targets = [Target("<= 2x etcd", fine(*p50, lambda a, b: a <= 2 * b))] if n == 1 else []
        details = {s: vars(r.levels[n]) for s, r in results.items()}
        rows += [
            Row(f"{n}", f"durable writes/s, {n} in flight", "/s", *rate, rate_targets, details),
            Row(f"{n}.p50", f"write latency p50, {n} in flight", "ms", *p50, p50_targets),
            Row(
                f"{n}.p99", f"write latency p99, {n} in flight", "ms", *pair(lambda r: at(r).p99_ms)
            ),
            Row(
                f"{n}.cpu",
                f"server CPU (3 processes) in the window, {n} in flight",
                "s",
                *pair(lambda r: at(r).server_cpu),
            ),
            Row(
                f"{n}.cpw",
                f"server CPU per write, {n} in flight",
                "ms",
                *pair(lambda r: at(r).cpu_per_write_ms),
            ),
            Row(
                f"{n}.cli",
                f"client CPU (this process) in the window, {n} in flight",
                "s",
                *pair(lambda r: at(r).client_cpu),
            ),
        ]
    fail = pair(lambda r: statistics.median(r.failovers) if r.failovers else None)
    rows.append(
        Row(
            "F",
            f"leader fail-over (SIGKILL to next acknowledged write, {FAILOVER_INFLIGHT} in "
            "flight), median",
            "s",
            *fail,
            [Target("<= etcd", fine(*fail, lambda a, b: a <= b))],
            {s: r.failover_details for s, r in results.items()},
        )
    )
    return rows


def etcd_version() -> str:
    """``etcd X.Y.Z (Go ...)`` from ``etcd --version``."""
    out = subprocess.run(["etcd", "--version"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    version = fields.get("etcd Version", "?").strip()
    go = fields.get("Go Version", "").strip()
    return f"{version}" + (f" ({go})" if go else "")


def fsync_probe(directory: Path, count: int = 200) -> dict[str, float]:
    """Median and p90 (ms) of a 100-byte append + fdatasync in `directory`."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    times = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, b"x" * VALUE_SIZE)
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return {"median_ms": times[count // 2] * 1e3, "p90_ms": times[count * 9 // 10] * 1e3}


def module_exists(module: str) -> bool:
    """Whether ``python -m module`` would find `module` from the repository root."""
    check = "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)"
    try:
        done = subprocess.run([sys.executable, "-c", check, module], cwd=ROOT, capture_output=True)
    except OSError:
        return False
    return done.returncode == 0


def parse_systems(text: str) -> list[str]:
    systems = [s.strip().lower() for s in text.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(SYSTEMS)}; got {text!r}")
    return list(dict.fromkeys(systems))


def main_run(args: argparse.Namespace) -> None:
    quick = args.quick
    systems: list[str] = args.systems
    warmup, seconds, repeats = (0.5, 1.5, 2) if quick else (1.0, 5.0, 5)
    if "etcd" in systems and shutil.which("etcd") is None:
        print(
            "error: the `etcd` binary is missing. Install Debian's etcd-server "
            "(`apt-get install -y etcd-server`, or run `make bench-raft`), or run "
            "with --systems protobase.",
            file=sys.stderr,
        )
        sys.exit(2)
    if "protobase" in systems and not module_exists(args.kv_module):
        print(
            f"error: the ProtoBase example service `{args.kv_module}` is missing "
            f"(cluster/raft/examples/kv.py); run with --systems etcd, or name another "
            "module with --kv-module.",
            file=sys.stderr,
        )
        sys.exit(2)

    tmp = Path(tempfile.mkdtemp(prefix="protobase-raft-bench-", dir="/tmp"))
    began = time.perf_counter()
    info = machine_info(("protobase", "aiohttp", "msgpack"))
    info["versions"].pop("sqlite (library)", None)
    info["data_filesystem"] = filesystem_of(tmp)
    info["etcd"] = etcd_version() if "etcd" in systems else None
    command = "python bench/raft.py" + (" --quick" if quick else "")
    if args.systems_given:
        command += f" --systems {','.join(systems)}"
    if args.kv_module != KV_MODULE:
        command += f" --kv-module {args.kv_module}"
    print(f"# ProtoBase Raft benchmark ({'quick' if quick else 'full'} mode)")
    print()
    print(
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, "
        f"Linux {info['kernel']}"
    )
    print(f"- protobase source: {info['protobase_source']}")
    print(f"- data: {tmp} on {info['data_filesystem']}")
    print(f"- {info['python']}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    if info["etcd"]:
        print(
            f"- etcd {info['etcd']}: 3 members, defaults (fsync on, heartbeat 100 ms, "
            "election 1000 ms), JSON gateway"
        )
    if "protobase" in systems:
        print(f"- ProtoBase: 3 nodes of `python -m {args.kv_module}`, default timeouts")
    print(f"- command: {command}")
    print(
        f"- load: one aiohttp session, 100-byte values, {KEYS:,} random keys; "
        f"levels {', '.join(map(str, LEVELS))} in flight, {warmup:g} s warm-up + {seconds:g} s "
        f"each; {repeats} fail-overs under {FAILOVER_INFLIGHT} in flight"
    )
    disk_before = fsync_probe(tmp)
    print(
        f"- disk: {VALUE_SIZE}-byte append + fdatasync in the data directory: median "
        f"{disk_before['median_ms']:.2f} ms, p90 {disk_before['p90_ms']:.2f} ms (before the run)"
    )
    load_before = os.getloadavg()
    print(
        f"- load average at the start: {load_before[0]:.2f} (1 min), {load_before[1]:.2f} (5 min)"
    )
    print(flush=True)

    results: dict[str, SystemResult] = {}
    try:
        for system in systems:
            cluster: Cluster
            if system == "etcd":
                cluster = EtcdCluster(tmp / "etcd")
            else:
                cluster = ProtoBaseCluster(tmp / "protobase", args.kv_module)
            results[system] = asyncio.run(run_system(cluster, warmup, seconds, repeats))
        disk_after = fsync_probe(tmp)
    finally:
        _kill_leftovers()
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.perf_counter() - began
    rows = build_rows(results)
    print(table(rows))
    print()
    for system, result in results.items():
        values = ", ".join(f"{v:.3f}" for v in result.failovers)
        print(f"{NAMES[system]} fail-overs (s): {values}; cluster start {result.startup_s:.2f} s.")
        others = ", ".join(
            f"{n} in flight {lv.other_cpu:.2f} s of {lv.window * info['nproc']:.1f} s"
            for n, lv in result.levels.items()
        )
        print(f"{NAMES[system]} windows, CPU used by every other process on the machine: {others}.")
        errors = {n: lv.errors for n, lv in result.levels.items() if lv.errors}
        if errors:
            print(f"{NAMES[system]} failed writes during the levels: {errors}")
    load_after = os.getloadavg()
    print(
        f"Disk after the run: append + fdatasync median {disk_after['median_ms']:.2f} ms, "
        f"p90 {disk_after['p90_ms']:.2f} ms. Load average at the end: {load_after[0]:.2f} (1 min), "
        f"{load_after[1]:.2f} (5 min)."
    )
    print("PB/etcd is the ProtoBase figure divided by etcd's: above 1 is better for ProtoBase")
    print("on writes/s, worse on latencies, CPU and fail-over times.")
    misses = [
        f"{row.key} ({t.text})" for row in rows if row.judged for t in row.targets if not t.passed
    ]
    unjudged = [f"{row.key} ({t.text})" for row in rows if not row.judged for t in row.targets]
    print(f"Missed targets: {', '.join(misses) if misses else 'none'}")
    if unjudged:
        print(f"Targets not judged (a system did not run): {', '.join(unjudged)}")
    print(f"Total run time: {elapsed:.0f} s")
    if args.json:
        report = {
            "mode": "quick" if quick else "full",
            "command": command,
            "systems": systems,
            "machine": info,
            "fdatasync_ms": {"before": disk_before, "after": disk_after},
            "load_average": {"before": load_before, "after": load_after},
            "total_seconds": elapsed,
            "failovers_s": {s: r.failovers for s, r in results.items()},
            "results": [
                {
                    "id": row.key,
                    "figure": row.figure,
                    "unit": row.unit,
                    "protobase": row.pb,
                    "etcd": row.etcd,
                    "protobase_over_etcd": row.ratio(),
                    "targets": [
                        {"target": t.text, "pass": t.passed if row.judged else None}
                        for t in row.targets
                    ],
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
        help="1.5 s per level instead of 5, 2 fail-overs instead of 5",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    parser.add_argument(
        "--systems",
        type=parse_systems,
        default=None,
        metavar="LIST",
        help="comma-separated, run in this order: protobase, etcd (default: both)",
    )
    parser.add_argument(
        "--kv-module",
        default=KV_MODULE,
        metavar="MODULE",
        help=f"the ProtoBase example service, run as `python -m MODULE` (default {KV_MODULE})",
    )
    args = parser.parse_args()
    args.systems_given = args.systems is not None
    if args.systems is None:
        args.systems = list(SYSTEMS)

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # runs the finally blocks: the clusters are stopped

    signal.signal(signal.SIGTERM, terminated)
    main_run(args)


if __name__ == "__main__":
    main()
