"""The cluster under test: real nodes whose peer links all go through the proxies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.cluster import ChaosCluster
from protobase import ClusterFileStorage, ObjectSpace


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ChaosCluster]:
    started = ChaosCluster(tmp_path / "chaos", partitions=2, seed=7)
    try:
        started.start()
        started.wait_ready()
        yield started
    finally:
        started.stop()


def commit(cluster: ChaosCluster, value: int, urls: list[str]) -> None:
    storage = ClusterFileStorage(urls, token=cluster.token, timeout=20)
    with ObjectSpace(storage) as space:
        if "d" not in space.list_databases():
            space.new_database("d")
        space.open_database("d").run(lambda tr: tr.set_root_object("x", value))


def test_the_majority_commits_while_the_meta_leader_is_cut_off_and_all_meet_again(
    cluster: ChaosCluster,
) -> None:
    commit(cluster, 1, cluster.urls)
    leader = cluster.leader_of(0)
    assert leader is not None
    cluster.net.isolate(leader)
    others = [cluster.url(k) for k in cluster.nodes if k != leader]
    started = time.monotonic()
    commit(cluster, 2, others)  # a new meta leader among the majority
    assert time.monotonic() - started < 15
    assert sum(link.bytes_forwarded for link in cluster.net.links.values()) > 0
    new_leader = cluster.leader_of(0)
    assert new_leader is not None and new_leader != leader
    cluster.net.heal()
    deadline = time.monotonic() + 20
    while True:
        state = cluster.status(leader)
        meta = None if state is None else next(g for g in state["groups"] if g["group"] == 0)
        if meta is not None and meta["role"] == "follower" and meta["leader"] == new_leader:
            break
        assert time.monotonic() < deadline, f"node {leader} never rejoined: {meta}"
        time.sleep(0.1)
