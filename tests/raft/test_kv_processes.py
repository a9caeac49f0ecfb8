"""The example key-value service (`cluster/raft/examples/kv.py`) as real processes.

Every test starts `python -m cluster.raft.examples.kv` nodes on 127.0.0.1
with free ports, fresh data directories under `tmp_path`, the cluster secret
and the clients' token in their environment. Their stdout and stderr go to
files next to the data directories; a failing assertion prints every node's
status and the end of its stderr. The fixtures stop every process they
started by PID (SIGTERM, then SIGKILL), whatever the outcome.

A write counts as acknowledged only when a 200 came back; the writers retry
a write after a 503 or a connection error with the same value, so a write
that may or may not have been applied never holds a second value.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from loopback import HOST, free_ports

ROOT = Path(__file__).resolve().parents[2]
MODULE = "cluster.raft.examples.kv"
TICK_INTERVAL = "0.05"
MAX_VALUE_BYTES = 1 << 20
STOP_GRACE = 5.0
"""Seconds a process gets after SIGTERM before it is sent SIGKILL."""
PORT_ATTEMPTS = 4
WRITERS = 4


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path.name} unreadable)"
    return "\n".join(text.splitlines()[-lines:])


# -- processes -----------------------------------------------------------------------------


class Processes:
    """Every process a test started; `stop_all` ends the live ones by PID."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, argv: list[str], env: dict[str, str], out: Path, err: Path
    ) -> subprocess.Popen[bytes]:
        marker = f"--- {time.strftime('%H:%M:%S')} start: {' '.join(argv[3:])}\n".encode()
        with out.open("ab") as stdout, err.open("ab") as stderr:
            stderr.write(marker)
            stderr.flush()
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
            )
        self.started.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL and reap."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        live = [proc for proc in self.started if proc.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in live:
            try:
                proc.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(proc)


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


# -- a cluster of kv processes ---------------------------------------------------------------


class Node:
    def __init__(self, node_id: int, directory: Path) -> None:
        self.id = node_id
        self.directory = directory
        self.data = directory / f"n{node_id}"
        self.out = directory / f"n{node_id}.out"
        self.err = directory / f"n{node_id}.err"
        self.raft_port = 0
        self.http_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""


class Cluster:
    """`size` kv nodes; `start` picks the ports (again, on a collision)."""

    def __init__(self, directory: Path, processes: Processes, size: int = 3) -> None:
        self.directory = directory
        self.processes = processes
        self.secret = secrets.token_hex(32)
        self.token = secrets.token_hex(16)
        self.nodes = [Node(i, directory) for i in range(1, size + 1)]
        self.secrets: dict[int, str] = {}
        """Per-node secret overrides (a node that must not take part)."""

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id - 1]

    def peers(self) -> str:
        return ",".join(f"{n.id}={HOST}:{n.raft_port}" for n in self.nodes)

    def http_peers(self) -> str:
        return ",".join(f"{n.id}={HOST}:{n.http_port}" for n in self.nodes)

    def argv(
        self, node: Node, *, peers: str | None = None, http_port: int | None = None
    ) -> list[str]:
        return [
            sys.executable,
            "-m",
            MODULE,
            "--id",
            str(node.id),
            "--peers",
            peers or self.peers(),
            "--http",
            f"{HOST}:{http_port or node.http_port}",
            "--http-peers",
            self.http_peers(),
            "--data",
            str(node.data),
            "--tick-interval",
            TICK_INTERVAL,
        ]

    def env(self, secret: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOBASE_")}
        env["PROTOBASE_KV_TOKEN"] = self.token
        if secret is not None:
            env["PROTOBASE_RAFT_SECRET"] = secret
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def spawn(self, node: Node) -> None:
        assert not node.alive, f"node {node.id} is running"
        secret = self.secrets.get(node.id, self.secret)
        node.proc = self.processes.spawn(self.argv(node), self.env(secret), node.out, node.err)

    def start(self) -> None:
        """Start every node and wait until each serves HTTP; new ports and
        fresh directories when one could not bind its port."""
        for attempt in range(PORT_ATTEMPTS):
            ports = free_ports(2 * len(self.nodes))
            for i, node in enumerate(self.nodes):
                node.raft_port, node.http_port = ports[2 * i], ports[2 * i + 1]
                shutil.rmtree(node.data, ignore_errors=True)
            for node in self.nodes:
                self.spawn(node)
            failed = self.wait_serving(self.nodes)
            if not failed:
                return
            collision = all("address already in use" in n.log().lower() for n in failed)
            self.stop()
            assert collision and attempt + 1 < PORT_ATTEMPTS, "nodes failed to start\n" + (
                self.report()
            )

    def wait_serving(self, nodes: list[Node], timeout: float = 20.0) -> list[Node]:
        """Wait until every node answers /health; return those that exited."""
        deadline = time.monotonic() + timeout
        waiting = list(nodes)
        while waiting and time.monotonic() < deadline:
            for node in list(waiting):
                if not node.alive:
                    return [n for n in nodes if not n.alive]
                if http_request(node.url, "GET", "/health", timeout=0.5)[0] == 200:
                    waiting.remove(node)
            time.sleep(0.05)
        assert not waiting, f"nodes {[n.id for n in waiting]} never served HTTP\n" + self.report()
        return []

    def kill(self, node: Node) -> None:
        assert node.proc is not None
        self.processes.kill(node.proc)

    def restart(self, node: Node) -> None:
        """Start a stopped node again, on the same ports and data directory."""
        self.spawn(node)
        failed = self.wait_serving([node])
        assert not failed, f"node {node.id} did not restart\n" + self.report()

    def stop(self) -> None:
        procs = [n.proc for n in self.nodes if n.alive]
        for proc in procs:
            assert proc is not None
            os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            assert proc is not None
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.processes.kill(proc)

    def status(self, node: Node) -> dict[str, Any] | None:
        status, body = http_request(node.url, "GET", "/status", token=self.token, timeout=1.0)
        return json.loads(body) if status == 200 else None

    def report(self, extra: list[Node] | None = None) -> str:
        """Every node's process state, /status and the end of its stderr."""
        parts = []
        for node in self.nodes + (extra or []):
            state = "not started"
            if node.proc is not None:
                code = node.proc.poll()
                state = f"pid {node.proc.pid} " + ("running" if code is None else f"exit {code}")
            status = self.status(node) if node.alive else None
            parts.append(
                f"== node {node.id} ({node.url}, raft {node.raft_port}): {state}; "
                f"status {status}\n{tail(node.err)}"
            )
        return "\n".join(parts)


def http_request(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 3.0,
) -> tuple[int, bytes]:
    """A blocking request; (0, error text) when no answer came."""
    host, _, port = base.removeprefix("http://").rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, repr(exc).encode()
    finally:
        connection.close()


@pytest.fixture
def cluster(tmp_path: Path, processes: Processes) -> Cluster:
    """Three running nodes (a leader may not be elected yet)."""
    kv = Cluster(tmp_path, processes)
    kv.start()
    return kv


# -- the asynchronous client -------------------------------------------------------------------


class Client:
    """aiohttp requests to the cluster's nodes, with the cluster's token."""

    def __init__(self, cluster: Cluster, session: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.session = session
        self.auth = {"Authorization": f"Bearer {cluster.token}"}

    async def request(
        self, method: str, url: str, data: bytes | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        """Raises aiohttp.ClientError or TimeoutError when no answer came."""
        async with self.session.request(
            method,
            url,
            data=data,
            headers=self.auth,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            return response.status, await response.read()

    async def status(self, node: Node) -> dict[str, Any] | None:
        if not node.alive:
            return None
        try:
            status, body = await self.request("GET", node.url + "/status", timeout=1.0)
        except (aiohttp.ClientError, TimeoutError):
            return None
        return json.loads(body) if status == 200 else None

    async def statuses(self) -> list[dict[str, Any] | None]:
        return list(await asyncio.gather(*(self.status(n) for n in self.cluster.nodes)))

    async def leader(self, timeout: float = 15.0) -> Node:
        """The node that reports itself leader (the highest term if two do)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = [
                (s["term"], self.cluster.node(s["id"]))
                for s in await self.statuses()
                if s is not None and s["role"] == "leader" and s["leader"] == s["id"]
            ]
            if leaders:
                return max(leaders, key=lambda pair: pair[0])[1]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no leader within {timeout} s\n" + self.cluster.report())

    async def converged(self, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until every node follows one leader and all have applied the
        same index, which is their common commit index."""
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any] | None] = []
        while time.monotonic() < deadline:
            last = await self.statuses()
            known = [s for s in last if s is not None]
            if (
                len(known) == len(self.cluster.nodes)
                and known[0]["leader"] is not None
                and len({s["leader"] for s in known}) == 1
                and len({(s["applied"], s["commit"]) for s in known}) == 1
                and known[0]["applied"] == known[0]["commit"]
            ):
                return known
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"the nodes did not converge within {timeout} s: {last}\n" + self.cluster.report()
        )

    async def read(self, node: Node, key: str, timeout: float = 15.0) -> tuple[int, bytes]:
        """GET /kv/<key> on `node` until an answer other than 503 or a
        connection error (which are retried)."""
        deadline = time.monotonic() + timeout
        answer: tuple[int, bytes] = (0, b"")
        while time.monotonic() < deadline:
            try:
                answer = await self.request("GET", f"{node.url}/kv/{key}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                answer = (0, repr(exc).encode())
            if answer[0] not in (0, 503):
                return answer
            await asyncio.sleep(0.05)
        return answer


class Load:
    """`WRITERS` concurrent writers of unique keys, each writing one key at a
    time until it is acknowledged (200): they follow 421 to the leader and
    retry 503s, timeouts and connection errors with the same value."""

    def __init__(self, client: Client, tag: str) -> None:
        self.client = client
        self.tag = tag
        self.acked: dict[str, bytes] = {}
        self.acked_at: list[float] = []
        self.retries: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._writer(w)) for w in range(WRITERS)]

    async def stop(self) -> None:
        """Let every writer finish its request (or give it up)."""
        self._stopping = True
        _, pending = await asyncio.wait(self._tasks, timeout=2.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in self._tasks:
            if not task.cancelled() and task.exception() is not None:
                self.unexpected.append(f"writer crashed: {task.exception()!r}")

    def acks_since(self, moment: float) -> int:
        return sum(1 for t in self.acked_at if t > moment)

    async def wait_acks(self, count: int, since: float, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while self.acks_since(since) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: {self.acks_since(since)} writes acknowledged in {timeout} s, "
                    f"wanted {count}; retries {dict(self.retries)}, unexpected "
                    f"{self.unexpected[:5]}\n" + self.client.cluster.report()
                )
            await asyncio.sleep(0.02)

    def summary(self) -> str:
        return f"{len(self.acked)} acknowledged writes; retries {dict(self.retries)}"

    async def _writer(self, number: int) -> None:
        urls = [n.url for n in self.client.cluster.nodes]
        target = urls[number % len(urls)]
        sequence = 0
        while not self._stopping:
            key = f"{self.tag}-w{number}-{sequence}"
            value = f"{key}={secrets.token_hex(12)}".encode()
            sequence += 1
            while not self._stopping:
                try:
                    status, body = await self.client.request("PUT", f"{target}/kv/{key}", value)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.retries[type(exc).__name__] += 1
                    target = urls[(urls.index(target) + 1) % len(urls)]
                    await asyncio.sleep(0.05)
                    continue
                if status == 200:
                    self.acked[key] = value
                    self.acked_at.append(time.monotonic())
                    break
                self.retries[str(status)] += 1
                if status == 421:
                    hint = json.loads(body).get("leader_http")
                    if hint in urls and hint != target:
                        target = hint
                    else:
                        target = urls[(urls.index(target) + 1) % len(urls)]
                        await asyncio.sleep(0.02)
                elif status == 503:
                    await asyncio.sleep(0.05)
                else:
                    self.unexpected.append(f"PUT {key} at {target}: {status} {body[:200]!r}")
                    await asyncio.sleep(0.05)


async def check_all_readable(client: Client, load: Load) -> None:
    """Every acknowledged write, with its value, from every node."""
    limit = asyncio.Semaphore(24)
    wrong: list[str] = []

    async def check(node: Node, key: str, value: bytes) -> None:
        async with limit:
            status, body = await client.read(node, key)
        if (status, body) != (200, value):
            wrong.append(f"node {node.id} GET {key}: {status} {body[:120]!r}, wanted {value!r}")

    await asyncio.gather(
        *(
            check(node, key, value)
            for node in client.cluster.nodes
            for key, value in load.acked.items()
        )
    )
    assert not wrong, (
        f"{len(wrong)} of {3 * len(load.acked)} reads wrong ({load.summary()}):\n"
        + "\n".join(wrong[:20])
        + "\n"
        + client.cluster.report()
    )


def run(scenario: Any) -> None:
    """Run an async scenario with an aiohttp session on a fresh loop."""

    async def main() -> None:
        async with asyncio.timeout(90):
            await scenario()

    asyncio.run(main())


# -- crashes under load --------------------------------------------------------------------------


def crash_under_load(
    cluster: Cluster, tag: str, crash: Callable[[Client, Load], Awaitable[None]]
) -> None:
    """Run `crash(client, load)` while `WRITERS` writers write; afterwards
    every node follows one leader and holds every acknowledged write."""

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            client = Client(cluster, session)
            await client.leader()
            load = Load(client, tag)
            load.start()
            try:
                await crash(client, load)
            finally:
                await load.stop()
            assert not load.unexpected, f"{load.unexpected[:10]}\n{cluster.report()}"
            statuses = await client.converged()
            print(load.summary(), statuses)
            await check_all_readable(client, load)

    run(scenario)


def test_leader_sigkill_under_load_loses_no_acknowledged_write(cluster: Cluster) -> None:
    async def crash(client: Client, load: Load) -> None:
        await load.wait_acks(40, 0.0, 15.0, "before the kill")
        leader = await client.leader()
        killed_at = time.monotonic()
        cluster.kill(leader)
        await load.wait_acks(40, killed_at, 20.0, f"after SIGKILL of leader {leader.id}")
        await asyncio.to_thread(cluster.restart, leader)  # the writers keep going
        restarted_at = time.monotonic()
        await load.wait_acks(20, restarted_at, 15.0, f"after node {leader.id} restarted")

    crash_under_load(cluster, "kill-leader", crash)


def test_sigkill_of_all_three_under_load_loses_no_acknowledged_write(cluster: Cluster) -> None:
    async def crash(client: Client, load: Load) -> None:
        await load.wait_acks(60, 0.0, 15.0, "before the kill")
        for node in cluster.nodes:  # all signals first, then reap
            assert node.proc is not None
            os.kill(node.proc.pid, signal.SIGKILL)
        for node in cluster.nodes:
            cluster.kill(node)
        await asyncio.sleep(0.1)  # answers that were on their way are counted
        before_restart = len(load.acked)
        await asyncio.sleep(0.3)  # the writers meet refused connections
        assert len(load.acked) == before_restart, "a write acknowledged with no node up"
        for node in cluster.nodes:
            cluster.spawn(node)
        failed = await asyncio.to_thread(cluster.wait_serving, cluster.nodes)
        assert not failed, cluster.report()
        restarted_at = time.monotonic()
        await load.wait_acks(40, restarted_at, 20.0, "after all three restarted")

    crash_under_load(cluster, "kill-all", crash)


# -- refused: the wrong secret, the wrong token, too much -----------------------------------------


def raft_handshake(port: int, secret: bytes, dialer: int, acceptor: int) -> tuple[bytes, bytes]:
    """Dial a node's Raft port as node `dialer` proving `secret`; return the
    acceptor's nonce and what came back after our proof (b"" when the node
    closed the connection without an answer)."""
    with socket.create_connection((HOST, port), timeout=5.0) as sock:
        reader = sock.makefile("rb")
        (size,) = struct.unpack(">I", reader.read(4))
        magic, version, nonce_a = msgpack.unpackb(reader.read(size))
        assert (magic, version) == ("protobase-raft", 2)
        nonce_d = secrets.token_bytes(32)
        life = secrets.token_bytes(16)  # an incarnation
        said = [b"protobase", nonce_a, nonce_d, dialer, acceptor, life]
        mac = hmac.new(secret, msgpack.packb([b"client", *said]), hashlib.sha256).digest()
        body = msgpack.packb([dialer, acceptor, b"protobase", nonce_d, life, mac])
        sock.sendall(struct.pack(">I", len(body)) + body)
        return nonce_a, reader.read()


def test_a_dialer_with_the_wrong_secret_gets_no_answer(cluster: Cluster) -> None:
    node3 = cluster.node(3)
    _, answer = raft_handshake(node3.raft_port, b"not-the-secret", 1, 3)
    assert answer == b"", "node 3 answered a dialer that does not know the secret"
    assert "does not know the cluster secret" in node3.log()
    # The control: the same dialer with the right secret gets the server's proof
    # (and its verdict: node 3 knows another incarnation of node 2, so a refusal).
    # Node 3 must have met node 2 first, or it would learn this dialer's made-up
    # incarnation as node 2's (trust on first use) and then refuse the real one.
    known = node3.data / "PEER_INCARNATIONS"
    deadline = time.monotonic() + 20
    while not (known.exists() and '"2"' in known.read_text()):
        assert time.monotonic() < deadline, "node 3 never met node 2"
        time.sleep(0.05)
    _, answer = raft_handshake(node3.raft_port, cluster.secret.encode(), 2, 3)
    (size,) = struct.unpack(">I", answer[:4])
    inc_a, verdict_a, mac_a = msgpack.unpackb(answer[4 : 4 + size])
    assert isinstance(mac_a, bytes) and len(mac_a) == 32
    assert len(inc_a) == 16 and verdict_a is not None and len(verdict_a) == 16


def test_a_node_with_the_wrong_secret_never_joins_until_it_has_the_right_one(
    tmp_path: Path, processes: Processes
) -> None:
    kv = Cluster(tmp_path, processes)
    kv.secrets[3] = secrets.token_hex(32)
    kv.start()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            client = Client(kv, session)
            leader = await client.leader()
            assert leader.id != 3
            for i in range(10):
                status, body = await client.request("PUT", f"{leader.url}/kv/k{i}", b"v%d" % i)
                assert status == 200, body
            outsider = await client.status(kv.node(3))
            insider = await client.status(leader)
            assert outsider is not None and insider is not None
            # It holds the bootstrap configuration only: none of the ten writes.
            assert outsider["applied"] + 10 <= insider["applied"], (outsider, insider)
            assert outsider["leader"] is None, outsider
            assert outsider["role"] != "leader"
            assert "does not know the cluster secret" in kv.node(3).log()
            # Given the right secret, the same node catches up.
            kv.stop()
            kv.secrets.pop(3)
            for node in kv.nodes:
                kv.spawn(node)
            assert not await asyncio.to_thread(kv.wait_serving, kv.nodes)
            await client.converged()
            assert await client.read(kv.node(3), "k9") == (200, b"v9")

    run(scenario)


def test_requests_with_a_wrong_token_or_a_body_over_the_limit_are_refused(
    cluster: Cluster,
) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            client = Client(cluster, session)
            leader = await client.leader()
            url = f"{leader.url}/kv/guarded"
            wrong = {"Authorization": "Bearer " + secrets.token_hex(16)}
            for headers in (wrong, {}):
                async with session.put(url, data=b"x", headers=headers) as response:
                    assert response.status == 401
                    assert "token" in (await response.json())["error"]
                async with session.get(url, headers=headers) as response:
                    assert response.status == 401
            too_big = b"x" * (MAX_VALUE_BYTES + 4097)
            assert (await client.request("PUT", url, too_big))[0] == 413
            assert await client.read(leader, "guarded") == (404, b'{"error": "no such key"}')
            assert (await client.request("PUT", url, b"ok"))[0] == 200  # the control
            assert await client.read(leader, "guarded") == (200, b"ok")

    run(scenario)


@pytest.mark.parametrize("missing", ["PROTOBASE_RAFT_SECRET", "PROTOBASE_KV_TOKEN"])
def test_a_node_without_its_secret_or_token_exits_2_and_says_which(
    tmp_path: Path, missing: str
) -> None:
    kv = Cluster(tmp_path, Processes())
    kv.nodes[0].raft_port, kv.nodes[0].http_port = free_ports(2)
    env = kv.env(kv.secret)
    env.pop(missing)
    done = subprocess.run(kv.argv(kv.nodes[0]), cwd=ROOT, env=env, capture_output=True, timeout=30)
    assert done.returncode == 2
    assert missing in done.stderr.decode()
    assert not kv.nodes[0].data.exists()  # nothing was created
