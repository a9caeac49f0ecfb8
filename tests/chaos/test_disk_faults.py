"""Disk faults: a member whose syncs fail stops, acknowledges nothing, and loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

from chaos.history import read_history
from chaos.runner import run_chaos


def test_failing_syncs_stop_the_member_and_the_checkers_stay_valid(tmp_path: Path) -> None:
    result = run_chaos(tmp_path / "run", "set", ["disk"], seed=2, seconds=7, clients=3)
    assert result.errors == []
    assert result.valid is True, json.dumps(result.checkers, indent=1)[:2000]
    history = list(read_history(tmp_path / "run" / "history.jsonl"))
    # A commit cut short by the failing disk has an unknown outcome (503), never
    # "refused" (a 400 says that nothing changed).
    assert not [op for op in history if "(400)" in str(op.error)]
    faults = [op for op in history if op.f == "disk"]
    assert faults, "no disk fault was injected"
    failed_syncs = 0
    for fault in faults:
        node, error = fault.value
        log = (tmp_path / "run" / "cluster" / f"node{node}.log").read_text()
        # A member synced while its disk failed, or had nothing to sync before the
        # disk was healed (a fault late in the run, or while no quorum wrote): only
        # the first must stop it.
        if f"injected disk fault ({error})" in log:
            failed_syncs += 1
            assert "the node stops" in log
    assert failed_syncs, "no member ever synced while its disk failed"
