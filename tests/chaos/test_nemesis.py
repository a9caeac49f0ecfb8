"""Fault schedules are pure functions of their seed, and the nemesis records every fault."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from chaos.cluster import ChaosCluster
from chaos.history import INFO, NEMESIS
from chaos.nemesis import KINDS, Fault, Nemesis, schedule


def test_the_same_seed_gives_the_same_faults_and_they_never_overlap() -> None:
    first = schedule(42, [1, 2, 3], KINDS, seconds=60)
    assert first == schedule(42, [1, 2, 3], KINDS, seconds=60)
    assert first != schedule(43, [1, 2, 3], KINDS, seconds=60)
    assert {f.kind for f in first} <= set(KINDS) and len(first) >= 10
    for earlier, later in itertools.pairwise(first):
        assert earlier.start + earlier.duration < later.start
    assert all(f.start + f.duration <= 60 for f in first)


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault kinds"):
        schedule(1, [1, 2, 3], ["kill", "meteor"], seconds=10)


def test_the_nemesis_kills_pauses_and_cuts_then_undoes_it_all(tmp_path: Path) -> None:
    cluster = ChaosCluster(tmp_path / "c", partitions=1)
    events: list[tuple[Any, ...]] = []
    try:
        cluster.start()
        cluster.wait_ready()
        faults = [
            Fault("kill", 2, 0.2, 0.5),
            Fault("pause", 3, 1.0, 0.3),
            Fault("isolate-leader", None, 1.6, 0.3),
        ]
        nemesis = Nemesis(cluster, faults, lambda *event: events.append(event))
        nemesis.start()
        time.sleep(0.45)
        assert not cluster.running(2)
        time.sleep(0.7)
        assert 3 in cluster.paused
        time.sleep(1.0)  # the isolation runs from 1.6 s to 1.9 s
        nemesis.stop()
        assert nemesis.errors == []
        assert [e[2] for e in events] == [
            "kill",
            "end-kill",
            "pause",
            "end-pause",
            "isolate-leader",
            "end-isolate-leader",
        ]
        assert all(e[0] == NEMESIS and e[1] == INFO for e in events)
        assert cluster.running(2) and not cluster.paused
        assert not any(link.faults.cut for link in cluster.net.links.values())
        cluster.wait_ready()
    finally:
        cluster.stop()
