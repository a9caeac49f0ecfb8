"""`GET /status` as a person sees it: rendered by headless Chromium (Debian's `chromium`)
against the session's live 3-node cluster."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from tools import require


def chromium() -> str:
    return require("chromium", "chromium-browser")


def rendered(url: str, profile: Path) -> str:
    result = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_status_page_names_each_groups_leader(local_cluster: Any, tmp_path: Path) -> None:
    local_cluster.wait_converged()
    node = 2
    dom = rendered(local_cluster.url(node) + "/status", tmp_path / "profile")
    status = local_cluster.status(node)
    assert f"node {node}</h1>" in dom
    assert '<p id="ready">ready;' in dom
    assert 'http-equiv="refresh"' in dom
    rows = re.findall(r"<tr><td>([\w-]+)</td><td>([^<]*)</td>", dom.split('id="groups"')[1])
    shown = dict(rows)
    for group in status["groups"]:
        leader = group["leader"]
        assert leader is not None, f"{group['name']} has no leader after convergence"
        client = next(m["client"] for m in status["members"] if m["id"] == leader)
        assert shown[group["name"]] == f"node {leader} ({client})"
    members = dom.split('id="members"')[1].split("</table>")[0]
    for member in status["members"]:
        assert member["client"] in members
    assert "No S3 cold tier is configured on this node." in dom
    assert 'id="changes"' in dom
