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


def test_a_spare_s_links_go_through_the_proxies_both_ways(tmp_path: Path) -> None:
    """Each first member reaches a spare through its [peer_routes] proxy, and the
    spare reaches every member through its own; a spare lists only itself."""
    from cluster.config import load_config

    spared = ChaosCluster(tmp_path / "chaos", nodes=3, spares=2, partitions=2, seed=7)
    try:
        for node in (1, 2, 3):
            settings = load_config(spared.configs[node])
            assert [m.id for m in settings.members] == [1, 2, 3]
            for spare in (4, 5):
                assert settings.peer_route(spare) == spared.net.address(node, spare)
        for spare in (4, 5):
            settings = load_config(spared.configs[spare])
            assert [m.id for m in settings.members] == [spare]
            for other in {1, 2, 3, 4, 5} - {spare}:
                assert settings.peer_route(other) == spared.net.address(spare, other)
        assert spared.members() == [1, 2, 3] and spared.spares == [4, 5]
    finally:
        spared.stop()
