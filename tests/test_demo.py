"""`protobase demo` runs end to end as a user runs it (a real subprocess)."""

from __future__ import annotations

import subprocess
import sys


def test_demo_command_runs_and_reports_the_retry() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "protobase.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "A-100: Product(name='teapot', price=24.50)" in out
    assert "after 2 attempts" in out
    assert "Alice's balance: 29.25" in out
    assert "orders: ['A-100', 'C-300', 'B-200']" in out
    assert "kettle now costs 35.00" in out
    assert out.rstrip().endswith("done")


def test_cli_rejects_unknown_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "protobase.cli", "no-such-command"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
