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
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

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


def start_node(
    config: Path, log_path: Path, log_options: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """``protobase [log_options] node --config CONFIG``, its output appended to `log_path`."""
    return _spawn(
        [sys.executable, "-m", "protobase.cli", *log_options, "node", "--config", str(config)],
        log_path,
    )


def wait_ready(urls: list[str], timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    for url in urls:
        _wait_http(url + "/ready", None, url, deadline, f"{url} was not ready within {timeout} s")


def cluster_up(
    directory: str,
    nodes: int,
    base_port: int,
    partitions: int,
    monitoring: bool = False,
    log_format: str | None = None,
    log_level: str | None = None,
) -> int:
    """Run the cluster until Ctrl-C; see the module docstring.

    `log_format` and `log_level`, when given, are passed on to every node
    (``protobase --log-format ... --log-level ... node``); the nodes inherit
    ``PROTOBASE_LOG_*`` from the environment either way.
    """
    root = Path(directory)
    log_options = [
        *(["--log-format", log_format] if log_format is not None else []),
        *(["--log-level", log_level] if log_level is not None else []),
    ]
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
        write_configs(root, nodes, base_port, partitions, s3_endpoint)
        members = member_configs(root)
        urls = [url for _, url in members.values()]
        running = {
            k: start_node(config, root / f"node{k}.log", log_options)
            for k, (config, _) in members.items()
        }
        processes += running.values()
        try:
            wait_ready(urls)
            if monitoring:
                prometheus = start_prometheus(root, base_port, urls, processes)
        except (RuntimeError, TimeoutError) as exc:
            print(f"protobase cluster up: {exc}; see {root}/*.log", file=sys.stderr)
            return 1
        token_file = (root / "client.token").resolve()
        print(f"cluster of {len(urls)} nodes is up:")
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
        return _watch_nodes(root, running)
    except KeyboardInterrupt:
        print("stopping...")
        return 0
    finally:
        stop_processes(processes)
        stop_added_nodes(root)


def _watch_nodes(root: Path, running: dict[int, subprocess.Popen[bytes]]) -> int:
    """Wait while the nodes run. A node that exits 0 stopped on purpose (it left
    the cluster, or was stopped with SIGTERM): the others go on. One that fails
    stops the cluster (the exit status is 1)."""
    while running:
        time.sleep(0.5)
        for k, process in list(running.items()):
            if process.poll() is None:
                continue
            del running[k]
            if process.returncode != 0:
                print(
                    f"node {k} exited with status {process.returncode}; see {root}/node{k}.log; "
                    "stopping the others",
                    file=sys.stderr,
                )
                return 1
            why = "left the cluster" if left_cluster(root / f"node{k}.toml") else "stopped"
            print(f"node {k} {why}; the others keep running", flush=True)
    print("every node has stopped")
    return 0


def member_configs(directory: Path) -> dict[int, tuple[Path, str]]:
    """Member id -> (its ``nodeK.toml``, its client URL) for every config in
    `directory` (those `protobase cluster add-node` wrote included) whose node
    has not left the cluster."""
    found: dict[int, tuple[Path, str]] = {}
    for config in directory.glob("node*.toml"):
        if not config.stem[4:].isdigit() or left_cluster(config):
            continue
        settings = tomllib.loads(config.read_text())
        found[int(settings["node_id"])] = (config, f"http://{settings['listen']}")
    return dict(sorted(found.items()))


def left_cluster(config: Path) -> bool:
    """Whether the node of `config` left the cluster (its data directory says so)."""
    from cluster.node import LEFT_MARKER

    data_dir = config.parent / tomllib.loads(config.read_text())["data_dir"]
    return (data_dir / LEFT_MARKER).exists()


def pid_file(config: Path) -> Path:
    """Where `protobase cluster add-node` notes the PID of the node it started."""
    return config.with_suffix(".pid")


def stop_added_nodes(directory: Path) -> None:
    """Stop the nodes `protobase cluster add-node` started in `directory` (they
    run in sessions of their own): SIGTERM, then SIGKILL after 10 s."""
    pids = []
    for path in directory.glob("node*.pid"):
        try:
            pid = int(path.read_text())
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue  # gone already
        if str(path.with_suffix(".toml")).encode() in command:
            pids.append(pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)


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


class StatusUnavailable(Exception):
    """A node's /status.json could not be read; the message says why and what to do."""


def fetch_status(url: str, token: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """The node at `url`'s ``GET /status.json`` (with `token` as a bearer token, if given).

    Raises:
        StatusUnavailable: nothing answered, the token was refused (401), or
            what answered is not a ProtoBase node.
    """
    base = url.rstrip("/")
    request = urllib.request.Request(base + "/status.json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise StatusUnavailable(
                f"{base} refused the client token (401); give the cluster's token with "
                "--token-file F (client.token in the directory `protobase cluster up` made) "
                "or PROTOBASE_TOKEN"
            ) from exc
        raise StatusUnavailable(
            f"{base}/status.json answered {exc.code} {exc.reason}; give the client URL of a "
            "running member (http://HOST:PORT)"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusUnavailable(
            f"no ProtoBase node answered at {base} ({reason}); give the client URL of a "
            "running member (http://HOST:PORT)"
        ) from exc
    except ValueError as exc:
        raise StatusUnavailable(
            f"{base}/status.json is not JSON ({exc}); is it a ProtoBase node?"
        ) from exc
    if not isinstance(status, dict) or not {"cluster", "groups", "members"} <= status.keys():
        raise StatusUnavailable(f"{base}/status.json is not a ProtoBase node's status")
    return status


def cluster_status(
    url: str,
    token: str | None = None,
    raw_json: bool = False,
    console: Console | None = None,
) -> int:
    """`protobase cluster status URL`: what the node's ``/status`` page shows, as tables.

    The node's groups (leader by node id and URL, role here, term, commit,
    applied, follower lag, voters, leader changes seen), the members (each
    asked for its own status: ready, not ready, or why it did not answer),
    and the S3 cold tier. A follower lag is known to a group's leader only:
    for the groups this node does not lead it comes from the leader's status.
    and the latest leader changes this node saw. With `raw_json`, the node's
    ``/status.json`` as it is.

    Returns:
        0, or 1 when the node at `url` did not answer as a ProtoBase node
        (the reason is printed on stderr).
    """
    try:
        status = fetch_status(url, token)
    except StatusUnavailable as exc:
        print(f"protobase cluster status: {exc}", file=sys.stderr)
        return 1
    if raw_json:
        print(json.dumps(status, indent=2))
        return 0
    from rich import box
    from rich.console import Console
    from rich.table import Table

    plain: io.StringIO | None = None
    if console is None:
        if not sys.stdout.isatty():
            # Piped or redirected: no colour or cursor codes, no wrapping at 80
            # columns, and (below) no spaces padding the lines.
            plain = io.StringIO()
        console = Console(
            file=plain,
            markup=False,
            highlight=False,
            emoji=False,
            force_terminal=False if plain else None,
            color_system=None if plain else "auto",
            width=200 if plain else None,
        )
    here = status["node_id"]
    others: dict[int, dict[str, Any] | str] = {}
    for member in status["members"]:
        if member["id"] != here:
            try:
                others[member["id"]] = fetch_status(member["client"], token, timeout=2.0)
            except StatusUnavailable as exc:
                others[member["id"]] = str(getattr(exc.__cause__, "reason", None) or exc)
    clients = {m["id"]: m["client"] for m in status["members"]}

    def text(value: Any) -> str:
        return "" if value is None else str(value)

    def follower_lag(group: dict[str, Any]) -> str:
        leader = group.get("leader")
        if leader == here or leader is None:
            return text(group.get("follower_lag"))
        view = others.get(leader)
        if not isinstance(view, dict):
            return "?"
        for theirs in view["groups"]:
            if theirs["group"] == group["group"] and theirs["role"] == "leader":
                return text(theirs.get("follower_lag"))
        return "?"

    console.print(
        f"Cluster {status['cluster']!r}: node {here}, "
        f"{'ready' if status.get('ready') else 'not ready'}; map epoch {status.get('epoch')}, "
        f"{status['partitions']} partitions, up {status.get('uptime_seconds')} s",
        style="bold",
    )
    groups = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for column in (
        "group",
        "leader",
        "role here",
        "term",
        "commit",
        "applied",
        "follower lag",
        "voters",
        "leader changes",
    ):
        groups.add_column(column, no_wrap=True)
    for group in status["groups"]:
        leader = group.get("leader")
        groups.add_row(
            group["name"],
            "no leader" if leader is None else f"node {leader} ({clients.get(leader, '?')})",
            text(group.get("role")),
            text(group.get("term")),
            text(group.get("commit")),
            text(group.get("applied")),
            follower_lag(group),
            ", ".join(str(v) for v in group.get("voters", ())),
            text(group.get("leader_changes")),
        )
    console.print("\nGroups", style="bold")
    console.print(groups)
    members = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("id", "client", "peer", "state"):
        members.add_column(column, no_wrap=column != "state")
    for member in status["members"]:
        view = status if member["id"] == here else others[member["id"]]
        if isinstance(view, dict):
            state = "ready" if view.get("ready") else "not ready"
        else:
            state = f"DOWN: {view}"
        if member["id"] == here:
            state += " (this node)"
        members.add_row(text(member["id"]), member["client"], member["peer"], state)
    console.print("\nMembers", style="bold")
    console.print(members)
    console.print("\nS3 cold tier", style="bold")
    s3 = status.get("s3")
    if s3 is None:
        console.print("No S3 cold tier is configured on this node.")
    else:
        tier = Table(box=box.SIMPLE_HEAD, show_edge=False, show_header=False)
        tier.add_column("what", no_wrap=True)
        tier.add_column("value")
        tier.add_row("location", text(s3.get("location")))
        tier.add_row(
            "backlog",
            f"{s3.get('backlog_entries')} entries, {s3.get('backlog_bytes')} bytes",
        )
        uploads = s3.get("uploads") or {}
        tier.add_row(
            "uploads",
            f"{uploads.get('entries')} entries objects, {uploads.get('meta')} meta states",
        )
        tier.add_row("failed rounds", text(s3.get("failures")))
        tier.add_row("last error", text(s3.get("last_error")) or "none")
        console.print(tier)
    console.print("\nRecent leader changes (newest first)", style="bold")
    history = status.get("leader_history") or []
    if not history:
        console.print("None seen by this node.")
    else:
        changes = Table(box=box.SIMPLE_HEAD, show_edge=False)
        for column in ("time (UTC)", "group", "term", "new leader"):
            changes.add_column(column, no_wrap=True)
        for change in history:
            leader = change["leader"]
            changes.add_row(
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(change["time"])),
                change["group"],
                text(change["term"]),
                "none" if leader is None else f"node {leader}",
            )
        console.print(changes)
    if plain is not None:
        sys.stdout.write("".join(line.rstrip() + "\n" for line in plain.getvalue().splitlines()))
    return 0
