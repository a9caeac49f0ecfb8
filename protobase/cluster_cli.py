"""`protobase cluster up` and `protobase cluster status`: local clusters for people.

`cluster up DIR --nodes N` writes, once, a secret, a client token and one
``nodeK.toml`` per member into DIR (ports from `--base-port`), starts the
members as local processes (``protobase node --config ...``), waits until
every node is ready, prints the URLs and a Python snippet that connects,
and stops them all on Ctrl-C, SIGTERM or SIGHUP (each node gets SIGTERM,
then SIGKILL after 10 s).
A second `up` on the same DIR reuses its configs and data.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

READY_TIMEOUT = 60.0


def write_configs(directory: Path, nodes: int, base_port: int, partitions: int) -> list[Path]:
    """The configs of an N-member local cluster in `directory` (kept if present)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("cluster.secret", "client.token"):
        path = directory / name
        if not path.exists():
            path.write_text(secrets.token_hex(32) + "\n")
            path.chmod(0o600)
    configs = []
    members = "".join(
        f'\n[[members]]\nid = {k}\npeer = "127.0.0.1:{base_port + 100 + k}"\n'
        f'client = "http://127.0.0.1:{base_port + k}"\n'
        for k in range(1, nodes + 1)
    )
    for k in range(1, nodes + 1):
        path = directory / f"node{k}.toml"
        if not path.exists():
            path.write_text(
                f'cluster = "{directory.resolve().name}"\n'
                f"node_id = {k}\n"
                f'data_dir = "n{k}"\n'
                f'listen = "127.0.0.1:{base_port + k}"\n'
                f'peer_listen = "127.0.0.1:{base_port + 100 + k}"\n'
                f"partitions = {partitions}\n"
                'secret_file = "cluster.secret"\n'
                'token_file = "client.token"\n' + members
            )
        configs.append(path)
    return configs


def start_node(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(
        [sys.executable, "-m", "protobase.cli", "node", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_ready(urls: list[str], timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending:
        url = pending[0]
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2):
                pending.pop(0)
                continue
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} was not ready within {timeout} s")
        time.sleep(0.1)


def cluster_up(directory: str, nodes: int, base_port: int, partitions: int) -> int:
    root = Path(directory)
    configs = write_configs(root, nodes, base_port, partitions)
    urls = [f"http://127.0.0.1:{base_port + k}" for k in range(1, nodes + 1)]
    # SIGTERM and SIGHUP (a closed terminal) stop the nodes as Ctrl-C does:
    # they run in sessions of their own and would outlive this process.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    processes = [start_node(c, root / f"node{k}.log") for k, c in enumerate(configs, 1)]
    try:
        try:
            wait_ready(urls)
        except TimeoutError as exc:
            print(f"protobase cluster up: {exc}; see {root}/node*.log", file=sys.stderr)
            return 1
        token_file = (root / "client.token").resolve()
        print(f"cluster of {nodes} nodes is up:")
        for url in urls:
            print(f"  {url}   (status: {url}/status)")
        print("connect from Python:\n")
        print("    from protobase import ObjectSpace, ClusterFileStorage")
        print(
            f"    storage = ClusterFileStorage([{urls[0]!r}], "
            f"token=open({str(token_file)!r}).read().strip())"
        )
        print("    space = ObjectSpace(storage)\n")
        print("Ctrl-C stops every node.", flush=True)
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        dead = [k for k, p in enumerate(processes, 1) if p.poll() is not None]
        print(f"node(s) {dead} exited; see {root}/node*.log; stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping...")
        return 0
    finally:
        stop_processes(processes)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_processes(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGCONT (a paused node must hear the rest), SIGTERM, then SIGKILL after 10 s."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGTERM):
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def cluster_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/status.json", timeout=5) as response:
            status: dict[str, Any] = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(
            f"protobase cluster status: no ProtoBase node answered at {url} ({reason}); "
            "give the client URL of a running member (http://HOST:PORT)",
            file=sys.stderr,
        )
        return 1
    members = status["members"]
    print(
        f"cluster {status['cluster']!r}: {len(members)} members, {status['partitions']} partitions"
    )
    leaders: dict[str, Any] = {}
    rows = []
    for member in members:
        try:
            with urllib.request.urlopen(member["client"] + "/status.json", timeout=2) as reply:
                state = json.loads(reply.read())
        except (urllib.error.URLError, OSError) as exc:
            rows.append([str(member["id"]), member["client"], "DOWN", str(exc), "", "", "", ""])
            continue
        for group in state["groups"]:
            if group["role"] == "leader":
                leaders[group["name"]] = group
            rows.append(
                [
                    str(member["id"]),
                    member["client"],
                    group["name"],
                    group["role"],
                    str(group["leader"]),
                    str(group["term"]),
                    str(group["commit"]),
                    str(group["applied"]),
                ]
            )
    for row in rows:
        leader = leaders.get(row[2])
        lag = "" if leader is None or not row[7].isdigit() else str(leader["commit"] - int(row[7]))
        row.append(lag)
    header = ["node", "url", "group", "role", "leader", "term", "commit", "applied", "lag"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0
