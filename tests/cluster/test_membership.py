"""Elastic membership with real processes: grow 3 -> 5, shrink 5 -> 3, replace a
SIGKILLed member, all while a bank workload commits.

One cluster lives through the three changes in turn (each start costs
seconds, and the suite has a budget). After each change: the map places
every group on `replication` distinct live members, each member runs
exactly the groups placed on it, the bank's invariant holds, and every
acknowledged transfer is kept.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from bank_workload import Bank
from harness import LocalCluster

from protobase import ObjectSpace, membership_cli
from protobase.membership_cli import current_map, remove_node, replace_node, wait_added

TIMEOUT = 120.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # One cluster for both tests (test_membership_requests_are_checked changes
    # nothing and runs first). Leaders spread again two seconds after they
    # became uneven.
    with LocalCluster(
        tmp_path_factory.mktemp("membership"),
        nodes=3,
        partitions=2,
        spare=3,
        extra_config="leader_balance_after = 2",
    ) as local:
        yield local


def check_placement(cluster: LocalCluster, members: set[int]) -> dict[int, tuple[int, ...]]:
    """The map names exactly `members`, places each group on 3 of them, and each
    member runs exactly the groups placed on it."""
    found = current_map(cluster.url(min(members)), cluster.token)
    assert set(found["members"]) == members, found["members"]
    placement: dict[int, tuple[int, ...]] = found["placement"]
    assert set(placement) == set(range(3))  # the meta group and 2 partitions
    for group, replicas in placement.items():
        assert len(set(replicas)) == 3 and set(replicas) <= members, (group, replicas)
    loads = [sum(m in r for r in placement.values()) for m in members]
    assert max(loads) - min(loads) <= 1, (loads, placement)
    deadline = time.monotonic() + 30
    while True:
        running = {m: {g["group"] for g in cluster.status(m)["groups"]} for m in members}
        expected = {m: {g for g, r in placement.items() if m in r} for m in members}
        if running == expected:
            return placement
        if time.monotonic() > deadline:
            raise AssertionError(f"members run {running}, the map places {expected}")
        time.sleep(0.2)


def test_membership_requests_are_checked(cluster: LocalCluster) -> None:
    """Refused requests change nothing. (First in the module: it needs the
    cluster as it started, 3 members at epoch 1.)"""
    from protobase.membership_cli import MembershipCommandError, admin_post

    url, token = cluster.url(2), cluster.token
    with pytest.raises(MembershipCommandError, match=r"409.*not in the cluster"):
        admin_post(url, "/v1/admin/members/state", {"member": 9, "state": "leaving"}, token)
    with pytest.raises(MembershipCommandError, match=r"409.*add a member first"):
        # Three members, three replicas each: one leaving would leave two copies.
        admin_post(url, "/v1/admin/members/state", {"member": 1, "state": "leaving"}, token)
    with pytest.raises(MembershipCommandError, match="400"):
        admin_post(url, "/v1/admin/members/state", {"member": 1, "state": "asleep"}, token)
    with pytest.raises(MembershipCommandError, match=r"409.*already uses"):
        taken: dict[str, Any] = {"peer": "127.0.0.1:1", "client": cluster.url(1)}
        admin_post(url, "/v1/admin/members/join", taken, token)
    with pytest.raises(MembershipCommandError, match="401"):
        admin_post(url, "/v1/admin/rebalance", {}, "wrong-token")
    found = current_map(url, token)
    assert found["epoch"] == 1 and set(found["members"]) == {1, 2, 3}  # nothing changed


def test_grow_shrink_and_replace_while_a_bank_commits(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The commands' watch loop asks for the map every 0.1 s instead of every
    # second: each step is seen done when it is (what is checked is the same).
    monkeypatch.setattr(membership_cli, "POLL_SECONDS", 0.1)
    out: list[str] = []
    bank = Bank(cluster, client_timeout=10.0)
    bank.create()
    # A client that learned the map before the moves and stays idle through them.
    idle = cluster.storage(space="idle", urls=cluster.urls)
    idle_space = ObjectSpace(idle)
    idle_space.new_database("d").run(lambda tr: tr.set_root_object("n", 1))
    known_epoch = idle._epoch
    try:
        bank.start()
        bank.wait_acked_since(time.monotonic(), 10, timeout=30)

        # Grow: 3 -> 5.
        for _ in range(2):
            member = cluster.add_member(join=1)
            wait_added(cluster.url(1), cluster.token, member, TIMEOUT, out.append)
            bank.wait_acked_since(time.monotonic(), 5, timeout=30)
        placement = check_placement(cluster, {1, 2, 3, 4, 5})
        assert any(4 in r for r in placement.values()) and any(5 in r for r in placement.values())
        # Its next request names the old epoch: it is redirected with the new map
        # (never answered from the old one), learns it, and reads and writes on.
        db = idle_space.open_database("d")
        db.run(lambda tr: tr.set_root_object("n", tr.get_root_object("n") + 1))
        reader = db.new_read_only_transaction()
        assert reader.get_root_object("n") == 2
        reader.abort()
        assert idle._epoch > known_epoch

        # Shrink: 5 -> 3 (members 1 and 2 leave; their processes then stop).
        for member in (1, 2):
            remove_node(cluster.url(3), member, cluster.token, TIMEOUT, out.append)
            bank.wait_acked_since(time.monotonic(), 5, timeout=30)
        check_placement(cluster, {3, 4, 5})
        for member in (1, 2):
            # A member out of the map drops its groups' logs (within a poll or two).
            left = cluster.directory / f"n{member}" / "raft"
            deadline = time.monotonic() + 20
            while list(left.glob("group-*")):
                assert time.monotonic() < deadline, list(left.glob("group-*"))
                time.sleep(0.2)
            # A member the map forgot stops by itself, cleanly.
            assert cluster.wait_exit(member, 20) == 0, cluster.log(member)

        # Replace: member 5 is SIGKILLed for good; member 6 takes its place.
        cluster.kill(5)
        new = cluster.add_member(join=3)
        wait_added(cluster.url(3), cluster.token, new, TIMEOUT, out.append)
        replace_node(cluster.url(3), 5, cluster.token, TIMEOUT, out.append)
        bank.wait_acked_since(time.monotonic(), 5, timeout=30)
        placement = check_placement(cluster, {3, 4, new})
        # The leaders spread over the members that hold the groups now.
        deadline = time.monotonic() + 30
        while True:
            leaders = [cluster.leader_of(group) for group in range(3)]
            counts = sorted(leaders.count(m) for m in (3, 4, new))
            if counts == [1, 1, 1]:
                break
            assert time.monotonic() < deadline, leaders
            time.sleep(0.5)
        bank.finish()
    finally:
        bank.close()
        idle_space.close()
    bank.check_final(nodes=[3, 4, new])
    assert len(bank.acked) >= 30
    # The commands printed each step as it happened.
    assert any("member 1 is removed" in line for line in out), out
    assert any("member 5 is removed" in line for line in out), out
