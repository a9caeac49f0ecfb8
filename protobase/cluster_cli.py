"""`protobase cluster up` and `protobase cluster status`: local clusters for people.

`cluster up DIR --nodes N` writes, once, a secret, a client token and one
``nodeK.toml`` per member into DIR (ports from `--base-port`), starts the
members as local processes (``protobase node --config ...``), waits until
every node is ready, prints the URLs and a Python snippet that connects,
and stops them all on Ctrl-C, SIGTERM or SIGHUP (each node gets SIGTERM,
then SIGKILL after 10 s).
A second `up` on the same DIR reuses its configs and data.

`--with-monitoring` runs what docker-compose.yml runs, as local processes:
an S3 server (moto's ``moto_server``, on BASE+90) that the nodes' ``[s3]``
cold tier uses, and Prometheus (Debian's ``prometheus``, on BASE+91) that
scrapes every node with the repository's ``ops/alerts.yml``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
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


S3_PORT_OFFSET = 90
PROMETHEUS_PORT_OFFSET = 91
OPS = Path(__file__).resolve().parents[1] / "ops"
"""The repository's ops/ folder (alert rules), next to the package in a source checkout."""
MONITORING_ENV = {
    "AWS_ACCESS_KEY_ID": "protobase-local",
    "AWS_SECRET_ACCESS_KEY": "protobase-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""moto accepts any keys: the local S3 server's credentials."""


def write_configs(
    directory: Path,
    nodes: int,
    base_port: int,
    partitions: int,
    s3_endpoint: str | None = None,
) -> list[Path]:
    """The configs of an N-member local cluster in `directory` (kept if present).

    With `s3_endpoint`, new configs get an ``[s3]`` table for it (bucket
    ``protobase``, the cluster's name as prefix).
    """
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
                'token_file = "client.token"\n' + members + s3_table(directory, s3_endpoint)
            )
        configs.append(path)
    return configs


def s3_table(directory: Path, endpoint: str | None) -> str:
    if endpoint is None:
        return ""
    return (
        f'\n[s3]\nbucket = "protobase"\nprefix = "{directory.resolve().name}"\n'
        f'endpoint = "{endpoint}"\nupload_interval = 2.0\n'
    )


def start_node(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    return _spawn(
        [sys.executable, "-m", "protobase.cli", "node", "--config", str(config)], log_path
    )


def wait_ready(urls: list[str], timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    for url in urls:
        _wait_http(url + "/ready", None, url, deadline, f"{url} was not ready within {timeout} s")


def cluster_up(
    directory: str, nodes: int, base_port: int, partitions: int, monitoring: bool = False
) -> int:
    root = Path(directory)
    urls = [f"http://127.0.0.1:{base_port + k}" for k in range(1, nodes + 1)]
    # SIGTERM and SIGHUP (a closed terminal) stop the nodes as Ctrl-C does:
    # they run in sessions of their own and would outlive this process.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        s3_endpoint = None
        if monitoring:
            try:
                s3_endpoint = start_s3(root, base_port + S3_PORT_OFFSET, processes)
            except (RuntimeError, TimeoutError) as exc:
                print(f"protobase cluster up: {exc}", file=sys.stderr)
                return 2
        configs = write_configs(root, nodes, base_port, partitions, s3_endpoint)
        processes += [start_node(c, root / f"node{k}.log") for k, c in enumerate(configs, 1)]
        try:
            wait_ready(urls)
            if monitoring:
                prometheus = start_prometheus(root, base_port, urls, processes)
        except (RuntimeError, TimeoutError) as exc:
            print(f"protobase cluster up: {exc}; see {root}/*.log", file=sys.stderr)
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
        if monitoring:
            print(
                f"S3 (moto_server): {s3_endpoint}   bucket protobase, prefix {root.resolve().name}"
            )
            print(f"Prometheus: {prometheus}   (targets: {prometheus}/targets)\n")
        if monitoring:
            print("Ctrl-C stops every node, the S3 server and Prometheus.", flush=True)
        else:
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


def _executable(name: str, hint: str) -> str:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: {hint}")
    return found


def _wait_http(
    url: str,
    process: subprocess.Popen[bytes] | None,
    what: str,
    deadline: float,
    late: str,
) -> None:
    """Poll `url` until it answers 2xx; TimeoutError(`late`) after `deadline`, and
    RuntimeError when `process` (what serves it, if given) exits first."""
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(late)
        time.sleep(0.1)


def _wait_started(url: str, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    try:
        _wait_http(
            url,
            process,
            what,
            time.monotonic() + READY_TIMEOUT,
            f"{what} did not answer at {url} within {READY_TIMEOUT} s; see {log}",
        )
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; see {log}") from exc


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        log.close()


def start_moto(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """moto's S3 server on 127.0.0.1:`port`, answering when this returns (the caller stops it).

    Raises:
        RuntimeError: moto_server is not installed, or exited.
        TimeoutError: it did not answer in time.
    """
    binary = _executable("moto_server", "pip install 'moto[server]' (make test installs it)")
    process = _spawn([binary, "-H", "127.0.0.1", "-p", str(port)], log_path)
    try:
        _wait_started(f"http://127.0.0.1:{port}/moto-api/", process, "moto_server", log_path)
    except BaseException:
        stop_processes([process])
        raise
    return process


def start_s3(root: Path, port: int, processes: list[subprocess.Popen[bytes]]) -> str:
    """Start moto_server on 127.0.0.1:`port` with a ``protobase`` bucket; returns its URL.

    The nodes started after it get its (dummy) credentials in their environment.
    """
    from .s3 import Bucket, S3Location

    root.mkdir(parents=True, exist_ok=True)
    endpoint = f"http://127.0.0.1:{port}"
    processes.append(start_moto(port, root / "s3.log"))
    os.environ.update(MONITORING_ENV)
    Bucket.open(S3Location("protobase"), endpoint).ensure_bucket()
    return endpoint


def start_prometheus(
    root: Path, base_port: int, urls: list[str], processes: list[subprocess.Popen[bytes]]
) -> str:
    """Start Prometheus scraping every node, with ops/alerts.yml; returns its URL."""
    binary = _executable("prometheus", "apt-get install prometheus (make test installs it)")
    rules = OPS / "alerts.yml"
    if not rules.exists():
        raise RuntimeError(f"{rules} is missing: --with-monitoring runs from a source checkout")
    folder = root / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    targets = ", ".join(f'"{url.removeprefix("http://")}"' for url in urls)
    config = folder / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\n"
        f"rule_files:\n  - {rules}\n"
        "scrape_configs:\n  - job_name: protobase\n    static_configs:\n"
        f"      - targets: [{targets}]\n"
    )
    address = f"127.0.0.1:{base_port + PROMETHEUS_PORT_OFFSET}"
    process = _spawn(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address={address}",
        ],
        root / "prometheus.log",
    )
    processes.append(process)
    _wait_started(f"http://{address}/-/ready", process, "prometheus", root / "prometheus.log")
    return f"http://{address}"


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
