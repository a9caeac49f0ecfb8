"""The cluster commands as a user runs them (real subprocesses): `protobase cluster
up` along the README path, and `protobase demo --cluster`.

`protobase cluster status` is in test_cluster_status_cli.py.

`protobase node --config` with a missing file is covered by
test_faults.py::test_node_refuses_to_start_with_a_bad_config ("no config file").
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import free_port_base

UP_SECONDS = 60.0
STOP_SECONDS = 15.0


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # A token in the environment would hide what --token-file does.
    env = {k: v for k, v in os.environ.items() if k != "PROTOBASE_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "protobase.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def _default_sigint() -> None:
    # A user's Ctrl-C reaches a process whose SIGINT is not ignored; a pytest
    # started in the background of a non-interactive shell would pass SIG_IGN on.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ClusterUp:
    """One `protobase cluster up DIR` process, its stdout read by a thread."""

    def __init__(self, directory: Path, base_port: int, *options: str) -> None:
        self.directory = directory
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "protobase.cli",
                "cluster",
                "up",
                str(directory),
                "--nodes",
                "3",
                "--base-port",
                str(base_port),
                *options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.node_pids: set[int] = set()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_printed(self, last_line: str = "Ctrl-C stops every node.") -> str:
        """The output up to `last_line`, which must come within UP_SECONDS."""
        deadline = time.monotonic() + UP_SECONDS
        while last_line not in self.lines:
            if self.process.poll() is not None:
                self._reader.join(5)
                raise AssertionError(
                    f"cluster up exited with {self.process.returncode}:\n{self.output}\n"
                    f"{self.logs()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"cluster up printed no snippet:\n{self.output}")
            time.sleep(0.05)
        self.node_pids |= set(node_processes(self.directory))
        return self.output

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
            for log in sorted(self.directory.glob("node*.log"))
        )

    def interrupt(self) -> int:
        """Ctrl-C: the exit status, which must come within STOP_SECONDS."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"cluster up still runs {STOP_SECONDS} s after SIGINT:\n{self.output}"
            ) from None

    def stop(self) -> None:
        """Whatever happened: the `up` process and every node it started, by PID."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in self.node_pids | set(node_processes(self.directory)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._reader.join(5)


def node_processes(directory: Path) -> dict[int, str]:
    """PID -> command line of every running `protobase node` with a config in `directory`."""
    found = {}
    configs = {str(directory / f"node{k}.toml") for k in range(1, 10)}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and "node" in args and configs & set(args):
            found[int(entry.name)] = " ".join(args)
    return found


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/status.json", timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def snippet_of(output: str) -> str:
    """The Python lines `cluster up` printed after "connect from Python:"."""
    after = output.split("connect from Python:\n", 1)[1]
    code = after.split("Ctrl-C stops every node.", 1)[0]
    return textwrap.dedent(code).strip() + "\n"


@pytest.fixture
def started() -> Iterator[list[ClusterUp]]:
    """Every ClusterUp a test starts is stopped at its end, however it ends."""
    ups: list[ClusterUp] = []
    try:
        yield ups
    finally:
        for up in ups:
            up.stop()


# -- 1. the README path ---------------------------------------------------------------


def check_config(directory: Path, k: int, base: int) -> dict[str, Any]:
    config = tomllib.loads((directory / f"node{k}.toml").read_text())
    assert config["cluster"] == directory.name
    assert config["node_id"] == k
    assert config["data_dir"] == f"n{k}"
    assert config["listen"] == f"127.0.0.1:{base + k}"
    assert config["peer_listen"] == f"127.0.0.1:{base + 100 + k}"
    assert config["partitions"] == 8
    # Relative paths are relative to the config's folder.
    assert (directory / config["secret_file"]).resolve() == (directory / "cluster.secret")
    assert (directory / config["token_file"]).resolve() == (directory / "client.token")
    assert (directory / config["data_dir"]).is_dir()
    assert config["members"] == [
        {"id": m, "peer": f"127.0.0.1:{base + 100 + m}", "client": f"http://127.0.0.1:{base + m}"}
        for m in range(1, 4)
    ]
    return config


COMMIT_AND_READ = """
db = space.new_database("readme")
with db.transaction() as tr:
    tr.set_root_object("greeting", "hello, cluster")
with db.transaction() as tr:
    print("read back:", tr.get_root_object("greeting"))
space.close()
"""

READ_ONLY = """
print("databases:", sorted(space.list_databases()))
with space.open_database("readme").transaction() as tr:
    print("read back:", tr.get_root_object("greeting"))
space.close()
"""


def test_cluster_up_as_the_readme_says_then_ctrl_c_then_up_again(
    tmp_path: Path, started: list[ClusterUp]
) -> None:
    directory = (tmp_path / "cluster-data").resolve()
    base = free_port_base(3)
    urls = [f"http://127.0.0.1:{base + k}" for k in range(1, 4)]

    up = ClusterUp(directory, base)
    started.append(up)
    output = up.wait_printed()
    assert "cluster of 3 nodes is up:" in output
    assert re.findall(r"^\s+(http://\S+)\s+\(status: \S+/status\)$", output, re.M) == urls
    snippet = snippet_of(output)
    assert "ClusterFileStorage" in snippet and str(directory / "client.token") in snippet
    assert len(up.node_pids) == 3, node_processes(directory)

    for name in ("cluster.secret", "client.token"):
        path = directory / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        assert len(path.read_text().strip()) >= 32, name
    for k in range(1, 4):
        check_config(directory, k, base)
    token = (directory / "client.token").read_text()
    configs = [(directory / f"node{k}.toml").read_text() for k in range(1, 4)]

    wrote = run_python(snippet + COMMIT_AND_READ)
    assert wrote.returncode == 0, wrote.stderr
    assert "read back: hello, cluster" in wrote.stdout

    assert up.interrupt() == 0, up.output
    assert node_processes(directory) == {}, "cluster up left nodes running"
    assert not any(reachable(url) for url in urls)

    # A second `up` reuses the configs, the token and the data.
    again = ClusterUp(directory, base)
    started.append(again)
    output = again.wait_printed()
    assert snippet_of(output) == snippet
    assert (directory / "client.token").read_text() == token
    assert [(directory / f"node{k}.toml").read_text() for k in range(1, 4)] == configs
    read = run_python(snippet + READ_ONLY)
    assert read.returncode == 0, read.stderr
    assert "databases: ['readme']" in read.stdout
    assert "read back: hello, cluster" in read.stdout
    # SIGTERM (a CI timeout, `kill`) stops it as Ctrl-C does; SIGHUP is checked
    # at the end of the grow-and-shrink test. Each signal goes to a `cluster up`
    # that a test starts anyway: a cluster start fewer per signal.
    stops_its_nodes_on(again, directory, signal.SIGTERM)


def stops_its_nodes_on(up: ClusterUp, directory: Path, sig: int) -> None:
    """`sig` to a running `cluster up` of 3 nodes: it stops them all and exits 0."""
    assert len(node_processes(directory)) == 3
    up.process.send_signal(sig)
    assert up.process.wait(STOP_SECONDS) == 0, up.output
    assert node_processes(directory) == {}, "cluster up left nodes running"


def test_a_cluster_up_cluster_grows_and_shrinks_by_the_documented_commands(
    tmp_path: Path, started: list[ClusterUp]
) -> None:
    """docs/operations.md's path: `cluster up`, `cluster add-node DIR`,
    `cluster remove-node URL ID`, while a client commits; then Ctrl-C stops
    every node (the added one too) and `cluster up` again starts the members
    that are left."""
    from protobase import ClusterFileStorage, ClusterUnavailableError, Dictionary, ObjectSpace

    directory = (tmp_path / "cluster-data").resolve()
    base = free_port_base(5)
    up = ClusterUp(directory, base, "--partitions", "2")
    started.append(up)
    up.wait_printed()
    token_file = str(directory / "client.token")
    token = (directory / "client.token").read_text().strip()
    urls = [f"http://127.0.0.1:{base + k}" for k in range(1, 5)]

    acked: list[int] = []
    unknown: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def commit_in_a_loop() -> None:
        try:
            with ObjectSpace(ClusterFileStorage(urls, token=token, timeout=10)) as space:
                db = space.new_database("grow")
                db.run(lambda tr: tr.set_root_object("done", Dictionary()))
                number = 0
                while not stop.is_set():
                    number += 1

                    def add(tr: Any, n: int = number) -> None:
                        tr.set_root_object("done", tr.get_root_object("done").set_at(n, n))

                    try:
                        db.run(add)
                    except ClusterUnavailableError:
                        unknown.append(number)  # it may or may not have happened
                        continue
                    acked.append(number)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    client = threading.Thread(target=commit_in_a_loop, daemon=True)
    client.start()
    try:
        added = run_cli("cluster", "add-node", str(directory), "--timeout", "120", timeout=150)
        assert added.returncode == 0, added.stdout + added.stderr + up.logs()
        assert "member 4 holds its share" in added.stdout, added.stdout
        assert (directory / "node4.pid").exists()
        before = len(acked)
        removed = run_cli(
            "cluster", "remove-node", urls[0], "1", "--token-file", token_file,
            "--timeout", "120", timeout=150,
        )  # fmt: skip
        assert removed.returncode == 0, removed.stdout + removed.stderr + up.logs()
        assert "member 1 is out of the cluster" in removed.stdout, removed.stdout
        deadline = time.monotonic() + 30
        while "node 1 left the cluster; the others keep running" not in up.lines:
            assert time.monotonic() < deadline, up.output
            assert up.process.poll() is None, up.output
            time.sleep(0.2)
        deadline = time.monotonic() + 1.0
        while len(acked) <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(acked) > before, "no commit after the node was added"
    finally:
        stop.set()
        client.join(30)
    assert not errors, errors
    # Node 1's process is gone; the data dir says it left, and it refuses to serve.
    assert (directory / "n1" / "LEFT.json").exists()
    refused = run_cli("node", "--config", str(directory / "node1.toml"), timeout=30)
    assert refused.returncode == 2 and "left the cluster" in refused.stderr, refused.stderr

    assert up.interrupt() == 0, up.output
    assert node_processes(directory) == {}, "cluster up left nodes running (node 4 included)"

    again = ClusterUp(directory, base, "--partitions", "2")
    started.append(again)
    output = again.wait_printed()
    assert "cluster of 3 nodes is up:" in output, output
    assert re.findall(r"^\s+(http://\S+)\s+\(status: ", output, re.M) == urls[1:]
    with ObjectSpace(ClusterFileStorage(urls[1:], token=token)) as space:
        reader = space.open_database("grow").new_read_only_transaction()
        done = reader.get_root_object("done")
        kept = {n for n in range(1, max(acked + unknown, default=0) + 1) if done.has(n)}
        reader.abort()
    assert len(acked) >= 10, acked
    assert set(acked) <= kept, sorted(set(acked) - kept)  # every acknowledged commit
    assert kept <= set(acked) | set(unknown)  # and nothing that was never tried
    # SIGHUP (a closed terminal) stops it as Ctrl-C does, the 3 members left.
    stops_its_nodes_on(again, directory, signal.SIGHUP)


# -- 2. the demo on a cluster -----------------------------------------------------


def earlier_runs(output: str) -> int:
    if "created database 'shop'" in output:
        return 0
    found = re.search(r"found the data of (\d+) earlier run\(s\)", output)
    assert found, output
    return int(found.group(1))


def test_demo_on_the_cluster_twice_finds_the_first_run(local_cluster: Any) -> None:
    url, token_file = local_cluster.urls[0], str(local_cluster.directory / "client.token")
    first = run_cli("demo", "--cluster", url, "--token-file", token_file)
    assert first.returncode == 0, first.stderr
    assert "ClusterFileStorage" in first.stdout and "cluster root version" in first.stdout
    assert "after 2 attempts" in first.stdout
    assert first.stdout.rstrip().endswith("done")
    before = earlier_runs(first.stdout)

    second = run_cli("demo", "--cluster", url, "--token-file", token_file)
    assert second.returncode == 0, second.stderr
    assert f"found the data of {before + 1} earlier run(s)" in second.stdout
    assert f"{3 * (before + 1)} orders so far" in second.stdout
    assert second.stdout.rstrip().endswith("done")


def test_demo_with_a_wrong_token_says_so(local_cluster: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "wrong.token"
    token_file.write_text("not-the-token\n")
    result = run_cli("demo", "--cluster", local_cluster.urls[0], "--token-file", str(token_file))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert "refused the token" in result.stderr and "client.token" in result.stderr


def test_demo_with_a_missing_token_file_says_so(local_cluster: Any, tmp_path: Path) -> None:
    token_file = str(tmp_path / "absent.token")
    result = run_cli("demo", "--cluster", local_cluster.urls[0], "--token-file", token_file)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert token_file in result.stderr and "cannot read" in result.stderr, result.stderr
