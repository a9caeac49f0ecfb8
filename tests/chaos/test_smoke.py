"""The chaos smoke run inside `make test`: each workload, a few seconds under faults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos.history import read_history
from chaos.runner import run_chaos


@pytest.mark.parametrize(
    ("workload", "faults"),
    [
        # Each workload once, every fault kind somewhere (the suite has a time
        # budget; `make chaos` runs every workload under every mix for longer).
        # The first three are also the mutation check's (test_mutations.py).
        ("bank", ["kill", "pause", "partition"]),
        ("set", ["kill", "pause", "partition"]),
        ("register", ["partition", "isolate-leader"]),
        # Members are added, removed and replaced during this one.
        ("list-append", ["membership", "kill", "partition", "bridge", "slow", "one-way"]),
    ],
)
def test_a_short_run_under_faults_is_valid(
    tmp_path: Path, workload: str, faults: list[str]
) -> None:
    result = run_chaos(tmp_path / "run", workload, faults, seed=11, seconds=5, clients=3)
    assert result.errors == []
    assert result.valid is True, json.dumps(result.checkers, indent=1)[:3000]
    assert result.operations > 30 and result.faults >= 1
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["valid"] is True and results["seed"] == 11
    history = list(read_history(tmp_path / "run" / "history.jsonl"))
    assert any(op.process < 0 for op in history)  # the faults are in the history
    assert sum(op.type == "ok" for op in history if op.process >= 0) > 15
    # Nothing acknowledged is ever missing: an atom a root points to is always
    # found (a leader elected moments ago waits until it has applied it).
    assert not [op for op in history if "AtomNotFoundError" in str(op.error)]
    if "membership" in faults:
        # At least one change was made, and carried out once the faults ended
        # (`settle`, or the run would have an error): the members changed.
        assert result.membership, results
        changed = [op for op in history if op.f.endswith("-member") and op.process < 0]
        assert changed and results["membership"] == result.membership
