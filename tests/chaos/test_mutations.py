"""The mutation check: a node with a deliberate bug must be caught every time.

Each case starts the smoke configuration's cluster with one failpoint of
`cluster.failpoints` switched on; the same workload and faults without it
are valid in tests/chaos/test_smoke.py. Runs of 4 s, as there: seed 11 pauses
the meta leader (bank), or isolates the leader (register), from 1 s to 3 s;
6 s added only a second fault of 0.27 s, and each bug was caught in 6 of 6
trial runs of 4 s. The set workload's case runs through the command line, in
test_chaos_cli.py (one run serves both checks).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos.runner import run_chaos


@pytest.mark.parametrize(
    ("failpoint", "workload", "faults"),
    [
        ("overwrite-on-rebase", "bank", ["kill", "pause", "partition"]),
        ("stale-follower-reads", "register", ["partition", "isolate-leader"]),
    ],
)
def test_a_deliberate_bug_is_caught(
    tmp_path: Path, failpoint: str, workload: str, faults: list[str]
) -> None:
    result = run_chaos(
        tmp_path / "run", workload, faults, seed=11, seconds=4, clients=3, failpoints=(failpoint,)
    )
    assert result.valid is False, json.dumps(result.checkers, indent=1)[:2000]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["failpoints"] == [failpoint]
    assert any(c["valid"] is False for c in results["checkers"].values())
