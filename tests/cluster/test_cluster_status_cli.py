"""`protobase cluster status URL` against the session's live cluster (real subprocesses).

Its stdout is a pipe here, so rich must print plain tables: no colour or
cursor codes, no wrapping. The 401 case is in tests/test_cli_ops.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

from harness import free_port_base

ROW = re.compile(
    r"^\s*(?P<group>meta|partition-\d+)\s+(?P<leader>node (?P<id>\d+) \((?P<url>\S+)\)|no leader)"
    r"\s+(?P<role>leader|follower|candidate)\s+(?P<term>\d+)\s+(?P<commit>\d+)\s+"
    r"(?P<applied>\d+)\s"
)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PROTOBASE_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "protobase.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_cluster_status_names_each_groups_leader(local_cluster: Any) -> None:
    result = run_cli("cluster", "status", local_cluster.urls[0])
    assert result.returncode == 0, result.stderr
    output = result.stdout
    assert "\x1b[" not in output, output
    expected = local_cluster.status(1)
    assert output.startswith(f"Cluster {expected['cluster']!r}: node 1, ready"), output
    rows = {m["group"]: m for m in map(ROW.match, output.splitlines()) if m}
    assert set(rows) == {g["name"] for g in expected["groups"]}, output
    for group in expected["groups"]:
        row = rows[group["name"]]
        assert row["leader"] != "no leader", output
        leader = int(row["id"])
        assert row["url"] == local_cluster.url(leader), output
        assert leader in group["voters"], output
        # The leader named is the one that says so itself.
        theirs = {g["name"]: g for g in local_cluster.status(leader)["groups"]}
        assert theirs[group["name"]]["role"] == "leader", (output, theirs)
        assert row["role"] == ("leader" if leader == 1 else "follower"), output
    for url in local_cluster.urls:
        (line,) = [line for line in output.splitlines() if f" {url} " in line]
        assert "ready" in line and "DOWN" not in line, output
    assert "Groups" in output and "Members" in output and "S3 cold tier" in output
    # Node 1 saw each group's current leader elected (newest changes first).
    changes = output.split("Recent leader changes (newest first)", 1)[1]
    for group in expected["groups"]:
        pattern = rf"^\s*\S+ \S+\s+{group['name']}\s+\d+\s+node {group['leader']}\s*$"
        assert re.search(pattern, changes, re.MULTILINE), changes


def test_cluster_status_json_prints_the_nodes_status_json(local_cluster: Any) -> None:
    result = run_cli("cluster", "status", local_cluster.urls[1], "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["node_id"] == 2
    assert {m["client"] for m in status["members"]} == set(local_cluster.urls)


def test_cluster_status_of_a_url_where_nothing_listens_says_so() -> None:
    url = f"http://127.0.0.1:{free_port_base(1) + 1}"
    result = run_cli("cluster", "status", url)
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert url in line and "no ProtoBase node answered" in line, result.stderr
