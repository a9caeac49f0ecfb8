"""The chaos smoke run inside `make test`: each workload, a few seconds under faults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.history import read_history
from chaos.runner import run_chaos

SECONDS = 4
"""Long enough for the first fault of each case's schedule (seed 11: at 1 s, for
2 s; 5 s would inject the very same fault, only 0.7 s longer)."""


@pytest.mark.parametrize(
    ("workload", "faults", "through_cli"),
    [
        # Each workload once, every fault kind somewhere (the suite has a time
        # budget; `make chaos` runs every workload under every mix for longer).
        # The first three are also the mutation check's (test_mutations.py).
        ("bank", ["kill", "pause", "partition"], False),
        # Through `protobase chaos run`, as a user runs it: also the command's
        # exit 0 and "valid=True" on a valid run (its exit 1 is in
        # test_chaos_cli.py). One run serves both checks.
        ("set", ["kill", "pause", "partition"], True),
        ("register", ["partition", "isolate-leader"], False),
        # Members are added, removed and replaced during this one.
        ("list-append", ["membership", "kill", "partition", "bridge", "slow", "one-way"], False),
    ],
)
def test_a_short_run_under_faults_is_valid(
    tmp_path: Path, workload: str, faults: list[str], through_cli: bool
) -> None:
    returned = None
    if through_cli:
        done = subprocess.run(
            [
                sys.executable, "-m", "protobase.cli", "chaos", "run",
                "--workload", workload, "--faults", ",".join(faults),
                "--seconds", str(SECONDS), "--seed", "11", "--clients", "3",
                "--out", str(tmp_path / "run"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{workload}: valid=True" in done.stdout, done.stdout
    else:
        returned = run_chaos(
            tmp_path / "run", workload, faults, seed=11, seconds=SECONDS, clients=3
        )
        assert returned.errors == []
        assert returned.valid is True, json.dumps(returned.checkers, indent=1)[:3000]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["errors"] == []
    assert results["valid"] is True and results["seed"] == 11, results["checkers"]
    assert results["operations"] > 30 and results["faults_injected"] >= 1
    if returned is not None:
        assert (results["operations"], results["faults_injected"]) == (
            returned.operations,
            returned.faults,
        )
    history = list(read_history(tmp_path / "run" / "history.jsonl"))
    assert any(op.process < 0 for op in history)  # the faults are in the history
    assert sum(op.type == "ok" for op in history if op.process >= 0) > 15
    # Nothing acknowledged is ever missing: an atom a root points to is always
    # found (a leader elected moments ago waits until it has applied it).
    assert not [op for op in history if "AtomNotFoundError" in str(op.error)]
    if "membership" in faults:
        # At least one change was made, and carried out once the faults ended
        # (`settle`, or the run would have an error): the members changed.
        assert results["membership"], results
        assert returned is None or results["membership"] == returned.membership
        changed = [op for op in history if op.f.endswith("-member") and op.process < 0]
        assert changed
