"""Real `protobase node` processes on 127.0.0.1 for the cluster tests.

`LocalCluster` writes the configs the way `protobase cluster up` does (on
free ports), starts one process per member, and stops every process it
started by PID when the test ends, whatever happened.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from chaos.cluster import listening_port_range
from protobase.cluster_cli import stop_processes, write_configs

HOST = "127.0.0.1"
READY_SECONDS = 60.0


def free_port_base(count: int, extra: tuple[int, ...] = ()) -> int:
    """A base port B such that B+1..B+count, B+101..B+100+count and B+e for each
    offset e in `extra` were free."""
    low, high = listening_port_range()
    for _ in range(200):
        # Outside the ephemeral range: no client socket takes a port meanwhile.
        base = random.randint(low, high - 101 - max((count, *extra)))
        wanted = [base + k for k in range(1, count + 1)]
        wanted += [base + 100 + k for k in range(1, count + 1)]
        wanted += [base + offset for offset in extra]
        held = []
        try:
            for port in wanted:
                sock = socket.socket()
                held.append(sock)
                sock.bind((HOST, port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise RuntimeError("no free port range found on 127.0.0.1")


class LocalCluster:
    """N members in `directory`; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        nodes: int = 3,
        partitions: int = 4,
        extra_config: str = "",
        tables: str = "",
        spare: int = 0,
    ) -> None:
        """`extra_config`: top-level TOML lines added to every node's config
        (optional keys such as ``max_body_bytes = 65536``); `tables`: TOML
        tables appended to it (such as an ``[s3]`` table); `spare`: members
        that may join later (`add_member`), whose ports are kept free too."""
        self.directory = directory
        self.nodes = nodes
        self.base = free_port_base(nodes + spare)
        self.configs = write_configs(directory, nodes, self.base, partitions)
        if "leader_balance_after" not in extra_config:
            # Tests that find "the leader" and then act on it want leaders to
            # move only when they make them move.
            extra_config = "leader_balance_after = 0\n" + extra_config
        self.extra_config = extra_config
        self.tables = tables
        if extra_config:
            for config in self.configs:
                config.write_text(extra_config.rstrip("\n") + "\n" + config.read_text())
        if tables:
            for config in self.configs:
                config.write_text(config.read_text() + "\n" + tables.rstrip("\n") + "\n")
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.paused: set[int] = set()
        """Members held by SIGSTOP (asking them anything would hang)."""
        self.token = (directory / "client.token").read_text().strip()

    def add_member(self, join: int, zone: str | None = None) -> int:
        """Start member N+1 with ``join`` set to member `join`'s URL; its id."""
        from protobase.membership_cli import join_config

        member = self.nodes + 1
        config = join_config(
            self.directory, member, self.base, self.configs[0], self.url(join), zone
        )
        text = self.extra_config.rstrip("\n") + "\n" + config.read_text()
        if self.tables:
            text += "\n" + self.tables.rstrip("\n") + "\n"
        config.write_text(text)
        self.configs.append(config)
        self.nodes = member
        self.start(member)
        return member

    def url(self, node: int) -> str:
        return f"http://{HOST}:{self.base + node}"

    @property
    def urls(self) -> list[str]:
        return [self.url(k) for k in range(1, self.nodes + 1)]

    def start(self, node: int | None = None) -> None:
        for k in [node] if node is not None else range(1, self.nodes + 1):
            assert k not in self.processes or self.processes[k].poll() is not None
            log = open(self.directory / f"node{k}.log", "ab")  # noqa: SIM115
            self.processes[k] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "protobase.cli",
                    "node",
                    "--config",
                    str(self.configs[k - 1]),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()

    def wait_ready(self, nodes: list[int] | None = None, timeout: float = READY_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        for k in nodes or list(range(1, self.nodes + 1)):
            while True:
                process = self.processes.get(k)
                if process is not None and process.poll() is not None:
                    raise AssertionError(
                        f"node {k} exited with {process.returncode}:\n{self.log(k)}"
                    )
                try:
                    with urllib.request.urlopen(self.url(k) + "/ready", timeout=2):
                        break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"node {k} not ready in {timeout} s:\n{self.log(k)}")
                time.sleep(0.05)

    def status(self, node: int) -> dict[str, Any]:
        with urllib.request.urlopen(self.url(node) + "/status.json", timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def leader_of(self, group: int) -> int:
        """The leader of `group` as the running nodes report it (waits for one)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for k, process in self.processes.items():
                if process.poll() is not None or k in self.paused:
                    continue
                try:
                    for state in self.status(k)["groups"]:
                        if state["group"] == group and state["role"] == "leader":
                            return k
                except (urllib.error.URLError, OSError):
                    continue
            time.sleep(0.05)
        raise AssertionError(f"group {group} has no leader")

    def wait_converged(self, timeout: float = 30.0) -> None:
        """Wait until every running member has applied every group it holds as
        far as that group's leader has committed (the replicas are equal)."""
        deadline = time.monotonic() + timeout
        while True:
            groups: dict[int, list[tuple[str, int, int, int]]] = {}
            unanswered = []
            for k, process in self.processes.items():
                if process.poll() is None and k not in self.paused:
                    try:
                        states = self.status(k)["groups"]
                    except (urllib.error.URLError, OSError):
                        unanswered.append(k)
                        continue
                    for state in states:
                        groups.setdefault(state["group"], []).append(
                            (state["role"], state["commit"], state["applied"], state["term"])
                        )
            lagging: dict[Any, Any] = {f"node {k}": "no status" for k in unanswered}
            lagging |= {
                group: states
                for group, states in groups.items()
                if [s[0] for s in states].count("leader") != 1 or len({s[1:] for s in states}) != 1
            }
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"replicas did not converge in {timeout} s: {lagging}")
            time.sleep(0.1)

    def signal(self, node: int, sig: int) -> None:
        os.kill(self.processes[node].pid, sig)
        if sig == signal.SIGSTOP:
            self.paused.add(node)
        elif sig in (signal.SIGCONT, signal.SIGKILL):
            self.paused.discard(node)
        if sig == signal.SIGKILL:
            self.processes[node].wait(10)

    def kill(self, node: int) -> None:
        self.signal(node, signal.SIGKILL)

    def kill_all(self) -> None:
        """SIGKILL every running member at once (no member sees another stop first)."""
        running = [p for p in self.processes.values() if p.poll() is None]
        for process in running:
            os.kill(process.pid, signal.SIGKILL)
        for process in running:
            process.wait(10)

    def wait_exit(self, node: int, timeout: float) -> int:
        """The exit status of `node`, which must exit within `timeout` seconds."""
        try:
            return self.processes[node].wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"node {node} still runs after {timeout} s:\n{self.log(node)}"
            ) from None

    def wipe(self, node: int) -> None:
        shutil.rmtree(self.directory / f"n{node}")

    def log(self, node: int) -> str:
        path = self.directory / f"node{node}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGCONT, SIGTERM, then SIGKILL after 10 s: every process started here."""
        stop_processes(self.processes.values())

    def __enter__(self) -> LocalCluster:
        """Start every member and wait until each is ready; `stop` on exit."""
        try:
            self.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def storage(
        self, space: str = "default", timeout: float = 30.0, urls: list[str] | None = None
    ) -> Any:
        from protobase import ClusterFileStorage

        return ClusterFileStorage(
            urls or self.urls[:1], token=self.token, space=space, timeout=timeout
        )
