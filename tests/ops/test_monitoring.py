"""`protobase cluster up --with-monitoring`: the compose topology as local processes,
scraped by a real Prometheus (Debian's `prometheus`) that evaluates ops/alerts.yml."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import free_port_base
from tools import require

from protobase.cluster_cli import PROMETHEUS_PORT_OFFSET, S3_PORT_OFFSET


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:
            last = exc
        else:
            if last is True:
                return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def test_cluster_up_with_monitoring_is_scraped_by_a_real_prometheus(tmp_path: Path) -> None:
    require("prometheus")
    require("moto_server")
    base = free_port_base(3, extra=(S3_PORT_OFFSET, PROMETHEUS_PORT_OFFSET))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "protobase.cli",
            "cluster",
            "up",
            str(tmp_path / "c"),
            "--nodes",
            "3",
            "--base-port",
            str(base),
            "--with-monitoring",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C must reach it: a pytest started in the background of a
        # non-interactive shell would hand SIGINT on ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True
    ).start()
    output: list[str] = []
    try:
        deadline = time.monotonic() + 120
        last = "Ctrl-C stops every node, the S3 server and Prometheus."
        while not any(last in line for line in output):
            assert process.poll() is None, "".join(output)
            assert time.monotonic() < deadline, "".join(output)
            with contextlib.suppress(queue.Empty):
                output.append(lines.get(timeout=1))
        prometheus = f"http://127.0.0.1:{base + PROMETHEUS_PORT_OFFSET}"
        assert any(prometheus in line for line in output), "".join(output)

        def targets_up() -> Any:
            active = get_json(prometheus + "/api/v1/targets")["data"]["activeTargets"]
            healthy = sorted(t["scrapeUrl"] for t in active if t["health"] == "up")
            expected = sorted(f"http://127.0.0.1:{base + k}/metrics" for k in (1, 2, 3))
            return healthy == expected or healthy

        wait_for(targets_up, 60, "Prometheus to scrape all three nodes")

        def rules_evaluated() -> Any:
            groups = get_json(prometheus + "/api/v1/rules")["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            ok = len(rules) == 8 and all(
                r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in rules
            )
            return ok or [(r["name"], r["health"], r.get("lastError")) for r in rules]

        wait_for(rules_evaluated, 60, "every alert rule to evaluate")
        # The nodes use the local S3 server as their cold tier.
        status = get_json(f"http://127.0.0.1:{base + 1}/status.json")
        assert status["s3"] is not None
        assert status["s3"]["location"].startswith("s3://protobase/")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0
    for port in (base + 1, base + S3_PORT_OFFSET, base + PROMETHEUS_PORT_OFFSET):
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
