"""The cluster under test: real `protobase node` processes, every peer link proxied.

`ChaosCluster` writes a secret, a token and one ``nodeK.toml`` per member
into its directory, as `protobase cluster up` does, with one difference:
in node k's file, every other member j's peer address is the `ProxyNet`
link ``k -> j``, so the harness can cut, slow or one-way any link. Clients
reach the nodes directly. Processes run in sessions of their own and are
stopped by PID (`stop`), whatever happened.
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
    ) -> None:
        self.directory = directory
        self.failpoints = failpoints
        """Deliberate bugs the nodes start with (`cluster.failpoints`): the mutation check."""
        self.nodes = list(range(1, nodes + 1))
        directory.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * nodes + nodes * (nodes - 1))
        self.client_ports = {k: ports[k - 1] for k in self.nodes}
        self.peer_ports = {k: ports[nodes + k - 1] for k in self.nodes}
        links = [(a, b) for a in self.nodes for b in self.nodes if a != b]
        self.net = ProxyNet(
            {k: (HOST, self.peer_ports[k]) for k in self.nodes},
            dict(zip(links, ports[2 * nodes :], strict=True)),
            seed=seed,
        )
        for name in ("cluster.secret", "client.token"):
            path = directory / name
            if not path.exists():
                path.write_text(secrets.token_hex(32) + "\n")
                path.chmod(0o600)
        self.token = (directory / "client.token").read_text().strip()
        self.configs = {k: self._write_config(k, partitions) for k in self.nodes}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.paused: set[int] = set()

    def _write_config(self, node: int, partitions: int) -> Path:
        members = ""
        for other in self.nodes:
            peer = (
                (HOST, self.peer_ports[other]) if other == node else self.net.address(node, other)
            )
            members += (
                f'\n[[members]]\nid = {other}\npeer = "{peer[0]}:{peer[1]}"\n'
                f'client = "{self.url(other)}"\n'
            )
        path = self.directory / f"node{node}.toml"
        path.write_text(
            f'cluster = "chaos"\nnode_id = {node}\ndata_dir = "n{node}"\n'
            f'listen = "{HOST}:{self.client_ports[node]}"\n'
            f'peer_listen = "{HOST}:{self.peer_ports[node]}"\n'
            f"partitions = {partitions}\n"
            'secret_file = "cluster.secret"\ntoken_file = "client.token"\n' + members
        )
        return path

    def url(self, node: int) -> str:
        return f"http://{HOST}:{self.client_ports[node]}"

    @property
    def urls(self) -> list[str]:
        return [self.url(k) for k in self.nodes]

    # -- processes ---------------------------------------------------------------------

    def start(self, node: int | None = None) -> None:
        for k in [node] if node is not None else self.nodes:
            running = self.processes.get(k)
            if running is not None and running.poll() is None:
                continue
            environment = dict(os.environ)
            if self.failpoints:
                environment["PROTOBASE_FAILPOINTS"] = ",".join(self.failpoints)
            with open(self.directory / f"node{k}.log", "ab") as log:
                self.processes[k] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "protobase.cli",
                        "node",
                        "--config",
                        str(self.configs[k]),
                    ],
                    env=environment,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.paused.discard(k)

    def running(self, node: int) -> bool:
        process = self.processes.get(node)
        return process is not None and process.poll() is None

    def kill(self, node: int) -> None:
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
        for k in nodes or self.nodes:
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
        for k in self.nodes:
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
