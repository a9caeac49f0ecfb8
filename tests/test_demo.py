"""`protobase demo` runs end to end as a user runs it (a real subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import protobase


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protobase.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_demo_runs_twice_and_the_second_run_finds_the_first(tmp_path: Path) -> None:
    path = str(tmp_path / "shop")
    first = run_cli("demo", path)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "created database 'shop'" in out
    assert f"hot path: {protobase.HOT_PATH}" in out
    assert "A-100: Product(name='teapot', price=24.50)" in out
    assert "after 2 attempts" in out
    assert "Alice's balance: 29.25" in out
    assert "orders: 3;" in out
    assert out.rstrip().endswith("done")

    second = run_cli("demo", path)
    assert second.returncode == 0, second.stderr
    assert "found the data of 1 earlier run(s)" in second.stdout
    assert "3 orders so far" in second.stdout
    assert "Alice's balance: 58.50" in second.stdout
    assert "mugs sold in all runs: 2" in second.stdout

    fsck = run_cli("fsck", path)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert fsck.stdout.rstrip().endswith("clean")


def test_cli_rejects_unknown_command() -> None:
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
