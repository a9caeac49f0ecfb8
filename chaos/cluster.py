"""The cluster under test: real `protobase node` processes, every peer link proxied.

`ChaosCluster` writes a secret, a token and one ``nodeK.toml`` per member
into its directory, as `protobase cluster up` does, with one difference:
in node k's file, every other member j's peer address is the `ProxyNet`
link ``k -> j``, so the harness can cut, slow or one-way any link. Clients
reach the nodes directly. Processes run in sessions of their own and are
stopped by PID (`stop`), whatever happened.

Spare members (``spares``) are configured from the start but not started:
a spare joins the running cluster (``--join``) when the membership nemesis
adds it (`join`), and its links are proxied like the others' (its peers
reach it through their ``[peer_routes]``, it reaches them through its
own). A member that left the cluster, or was killed for good to be
replaced, is `retire`d: never started again.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from protobase.cluster_cli import stop_processes

from .proxy import HOST, ProxyNet

READY_SECONDS = 60.0


def listening_port_range() -> tuple[int, int]:
    """Ports to listen on that the kernel never hands out as the local end of an
    outgoing connection (its ephemeral range): a port picked from that range
    can be taken by any client socket before the server binds it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            ephemeral_low = int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    if ephemeral_low > 12_000:
        return 10_000, ephemeral_low - 1
    return 61_000, 65_535  # an ephemeral range moved low: use the ports above it


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free on 127.0.0.1 a moment ago, outside
    the ephemeral range (`listening_port_range`)."""
    low, high = listening_port_range()
    found: list[int] = []
    while len(found) < count:
        port = random.randint(low, high)
        if port in found:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        found.append(port)
    return found


class ChaosCluster:
    """N members in `directory`; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        nodes: int = 3,
        partitions: int = 4,
        seed: int = 0,
        failpoints: tuple[str, ...] = (),
        spares: int = 0,
    ) -> None:
        self.directory = directory
        self.failpoints = failpoints
        """Deliberate bugs the nodes start with (`cluster.failpoints`): the mutation check."""
        self.initial = list(range(1, nodes + 1))
        everyone = list(range(1, nodes + spares + 1))
        self.nodes = list(self.initial)
        """The members now: started ones that have not been retired."""
        self.spares = everyone[nodes:]
        """Members configured but not started yet (`join` starts them)."""
        self.retired: list[int] = []
        """Members that left the cluster or were killed for good."""
        self._lock = threading.RLock()
        directory.mkdir(parents=True, exist_ok=True)
        count = len(everyone)
        ports = free_ports(2 * count + count * (count - 1))
        self.client_ports = {k: ports[k - 1] for k in everyone}
        self.peer_ports = {k: ports[count + k - 1] for k in everyone}
        links = [(a, b) for a in everyone for b in everyone if a != b]
        self.net = ProxyNet(
            {k: (HOST, self.peer_ports[k]) for k in everyone},
            dict(zip(links, ports[2 * count :], strict=True)),
            seed=seed,
        )
        for name in ("cluster.secret", "client.token"):
            path = directory / name
            if not path.exists():
                path.write_text(secrets.token_hex(32) + "\n")
                path.chmod(0o600)
        self.token = (directory / "client.token").read_text().strip()
        self.configs = {k: self._write_config(k, partitions, everyone) for k in everyone}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.paused: set[int] = set()

    def _write_config(self, node: int, partitions: int, everyone: list[int]) -> Path:
        # A first member lists the first members; a spare lists only itself.
        listed = self.initial if node in self.initial else [node]
        members = routes = ""
        for other in everyone:
            peer = (
                (HOST, self.peer_ports[other]) if other == node else self.net.address(node, other)
            )
            if other in listed:
                members += (
                    f'\n[[members]]\nid = {other}\npeer = "{peer[0]}:{peer[1]}"\n'
                    f'client = "{self.url(other)}"\n'
                )
            else:
                routes += f'{other} = "{peer[0]}:{peer[1]}"\n'
        path = self.directory / f"node{node}.toml"
        path.write_text(
            f'cluster = "chaos"\nnode_id = {node}\ndata_dir = "n{node}"\n'
            f'listen = "{HOST}:{self.client_ports[node]}"\n'
            f'peer_listen = "{HOST}:{self.peer_ports[node]}"\n'
            f"partitions = {partitions}\n"
            'secret_file = "cluster.secret"\ntoken_file = "client.token"\n'
            + members
            + ("\n[peer_routes]\n" + routes if routes else "")
        )
        return path

    def url(self, node: int) -> str:
        return f"http://{HOST}:{self.client_ports[node]}"

    @property
    def urls(self) -> list[str]:
        """The first members' client URLs (clients learn the others from the map)."""
        return [self.url(k) for k in self.initial]

    def members(self) -> list[int]:
        """The members now (a copy: the membership nemesis changes them)."""
        with self._lock:
            return list(self.nodes)

    # -- processes ---------------------------------------------------------------------

    def start(self, node: int | None = None) -> None:
        """Start `node`, or every member, unless running or retired."""
        with self._lock:
            for k in [node] if node is not None else list(self.nodes):
                running = self.processes.get(k)
                if k in self.retired or (running is not None and running.poll() is None):
                    continue
                self._spawn(k)

    def _spawn(self, k: int) -> None:
        environment = dict(os.environ)
        if self.failpoints:
            environment["PROTOBASE_FAILPOINTS"] = ",".join(self.failpoints)
        join: list[str] = []
        if k not in self.initial:
            # A member that joined later: joining again is harmless (the same
            # id and addresses), and a node that holds groups ignores it.
            through = next((m for m in self.nodes if m != k and self.running(m)), None)
            if through is not None:
                join = ["--join", self.url(through)]
        with open(self.directory / f"node{k}.log", "ab") as log:
            self.processes[k] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "protobase.cli",
                    "node",
                    "--config",
                    str(self.configs[k]),
                    *join,
                ],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.paused.discard(k)

    def join(self) -> int:
        """Start the next spare; it joins the cluster. Returns its id.

        Raises:
            RuntimeError: no spare is left.
        """
        with self._lock:
            if not self.spares:
                raise RuntimeError("no spare member is left to join")
            node = self.spares.pop(0)
            self.nodes.append(node)
            self._spawn(node)
            return node

    def retire(self, node: int) -> None:
        """`node` is out for good: killed if it still runs, never started again."""
        with self._lock:
            if node in self.nodes:
                self.nodes.remove(node)
            self.retired.append(node)
            self.kill(node)

    def running(self, node: int) -> bool:
        process = self.processes.get(node)
        return process is not None and process.poll() is None

    def kill(self, node: int) -> None:
        with self._lock:
            process = self.processes.get(node)
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
            self.paused.discard(node)

    def pause(self, node: int) -> None:
        if self.running(node):
            os.kill(self.processes[node].pid, signal.SIGSTOP)
            self.paused.add(node)

    def resume(self, node: int) -> None:
        if self.running(node):
            os.kill(self.processes[node].pid, signal.SIGCONT)
        self.paused.discard(node)

    def fail_disk(self, node: int, error: str = "EIO") -> None:
        """Make `node`'s syncs fail (it must run with the ``disk-faults`` failpoint)."""
        if "disk-faults" not in self.failpoints:
            raise RuntimeError("disk faults need the nodes started with the disk-faults failpoint")
        (self.directory / f"n{node}" / "FAIL-DISK").write_text(error)

    def heal_disk(self, node: int) -> None:
        (self.directory / f"n{node}" / "FAIL-DISK").unlink(missing_ok=True)

    def wait_ready(self, nodes: list[int] | None = None, timeout: float = READY_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        for k in nodes or self.members():
            while True:
                if not self.running(k):
                    raise RuntimeError(f"node {k} is not running:\n{self.log(k)}")
                try:
                    with urllib.request.urlopen(self.url(k) + "/ready", timeout=2):
                        break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {k} not ready in {timeout} s:\n{self.log(k)}")
                time.sleep(0.05)

    def status(self, node: int) -> dict[str, Any] | None:
        if not self.running(node) or node in self.paused:
            return None
        try:
            with urllib.request.urlopen(self.url(node) + "/status.json", timeout=2) as response:
                found: dict[str, Any] = json.loads(response.read())
                return found
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def leader_of(self, group: int) -> int | None:
        """The member that reports leading `group` now, if any answers."""
        for k in self.members():
            state = self.status(k)
            if state is None:
                continue
            for entry in state["groups"]:
                if entry["group"] == group and entry["role"] == "leader":
                    return k
        return None

    def log(self, node: int) -> str:
        path = self.directory / f"node{node}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """Every process started here, by PID: SIGCONT, SIGTERM, then SIGKILL; the proxies."""
        stop_processes(self.processes.values())
        self.net.stop()
