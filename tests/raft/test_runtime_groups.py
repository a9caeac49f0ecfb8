"""Groups started and dropped while a `RaftNode` runs: `add_group`,
`remove_group`, `set_peers`, and `LogStore.remove_group` with its tombstones.

The clusters are those of test_node.py (real nodes on 127.0.0.1, 20 ms
ticks, bounded waits); a node that joins later is made with no groups and
given one by `add_group`, as the node layer does when the meta group assigns
it a replica. One test holds the store's syncs in their worker thread
(`SyncGate`, on `LogStore._make_durable`, the store's one durability point)
to remove a group while a sync is in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
from loopback import HOST, eventually, free_ports
from test_node import (
    GROUP,
    NODE_LOGGER,
    REDIAL_MAX,
    SECRET,
    Cluster,
    Ledger,
    run,
    running,
    spawn,
)

import cluster.raft.log as log_module
from cluster.raft.errors import (
    GroupAlreadyRunning,
    GroupRemoved,
    LogError,
    NotLeader,
    ProposalDropped,
    RaftError,
)
from cluster.raft.log import LogStore
from cluster.raft.node import (
    GroupRemovedOutcomeUnknown,
    NodeConfig,
    NodeStopped,
    OutcomeUnknown,
    RaftNode,
)
from cluster.raft.types import ConfChange, ConfChangeKind, Entry, Message, MessageType


def open_without_groups(cluster: Cluster, node_id: int) -> RaftNode:
    """A new incarnation of `node_id` on its data directory, with no groups
    and every address in `cluster.addresses` as its peers; not started."""
    assert node_id not in cluster.nodes, f"node {node_id} is running"
    config = NodeConfig(
        node_id=node_id,
        listen=cluster.addresses[node_id],
        peers=dict(cluster.addresses),
        data_dir=cluster.tmp_path / f"node-{node_id}",
        secret=SECRET,
        rng_seed=node_id,
        **cluster.config,
    )
    node = RaftNode(config, {})
    node.transport.backoff_max = REDIAL_MAX
    cluster.nodes[node_id] = node
    cluster.ledgers[node_id] = {}
    return node


def add_group(cluster: Cluster, node: RaftNode, group: int = GROUP) -> Ledger:
    """`node.add_group` as a member-to-be (no voters), with a fresh `Ledger`."""
    ledger = cluster.machine()
    node.add_group(group, ledger)
    cluster.ledgers[node.id][group] = ledger
    return ledger


async def write(
    cluster: Cluster, prefix: str, count: int, among: Collection[int] | None = None
) -> list[bytes]:
    values = [f"{prefix}{i}".encode() for i in range(count)]
    for value in values:
        await cluster.propose(value, among=among)
    return values


async def change_membership(cluster: Cluster, change: ConfChange, among: Collection[int]) -> None:
    """`change` at the current leader, retried while no leader takes it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        leader = cluster.leader(among=among)
        if leader is not None:
            try:
                await leader.change_membership(GROUP, change)
                return
            except (NotLeader, ProposalDropped):
                pass
        assert loop.time() < deadline, f"no leader took {change}"
        await asyncio.sleep(0.01)


async def join(cluster: Cluster, node_id: int) -> tuple[RaftNode, Ledger, list[bytes]]:
    """Start `node_id`, unknown to the running nodes until now (`set_peers`),
    with no groups; add the group to it at run time and have the leader add
    it as a voter while proposals keep coming. Returns the node, its ledger
    and the values written meanwhile."""
    members = tuple(cluster.nodes)
    cluster.addresses[node_id] = (HOST, free_ports(1)[0])
    for member in cluster.nodes.values():
        member.set_peers(cluster.addresses)
        assert member.config.peers == cluster.addresses
    node = open_without_groups(cluster, node_id)
    await node.start()
    ledger = add_group(cluster, node)
    raft = node.group(GROUP)
    assert not raft.promotable() and raft.conf.members == frozenset(), "a member-to-be"
    writer = spawn(write(cluster, "joining", 20, among=members))
    leader = await cluster.wait_leader(among=members)
    await leader.add_voter(GROUP, node_id, timeout=20)
    return node, ledger, await writer


def voters(cluster: Cluster, node_id: int) -> list[int]:
    return list(cluster.nodes[node_id].status(GROUP)["voters"])


def raft_warnings(records: list[logging.LogRecord]) -> list[str]:
    return [
        record.getMessage()
        for record in records
        if record.levelno >= logging.WARNING and record.name.startswith("protobase.raft")
    ]


class SyncGate:
    """Every durability call of `store` waits in its worker thread until the
    test lets it through (`arrived(n).set()`), until `open()`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: LogStore) -> None:
        self.calls: list[threading.Event] = []
        self.opened = False
        original = store._make_durable

        def make_durable(segments: Collection[Any]) -> None:
            if not self.opened:
                passage = threading.Event()
                self.calls.append(passage)
                passage.wait(20)
            original(segments)

        monkeypatch.setattr(store, "_make_durable", make_durable)

    async def arrived(self, count: int) -> threading.Event:
        """The `count`-th call, once it waits."""
        await eventually(lambda: len(self.calls) >= count, f"sync call {count}")
        return self.calls[count - 1]

    def open(self) -> None:
        self.opened = True
        for passage in self.calls:
            passage.set()


# -- joining and leaving at run time ---------------------------------------------------------


@pytest.mark.parametrize("leaving", ["follower", "leader"])
def test_a_group_added_at_run_time_joins_and_a_removed_member_drops_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, leaving: str
) -> None:
    caplog.set_level(logging.DEBUG, logger=NODE_LOGGER)

    async def scenario() -> None:
        async with running(tmp_path, 3) as cluster:
            before = await write(cluster, "before", 10)
            fourth, ledger, joining = await join(cluster, 4)
            await eventually(
                lambda: all(voters(cluster, n) == [1, 2, 3, 4] for n in cluster.nodes),
                "every node to see four voters",
            )
            assert await cluster.wait_converged() == before + joining
            assert ledger.values() == before + joining

            # Node 1 leaves, as a follower or as the leader (which applies
            # its own removal, steps down and never campaigns again).
            leader = await cluster.wait_leader()
            wanted = 1 if leaving == "leader" else 2
            if leader.id != wanted:
                await leader.transfer_leadership(GROUP, wanted)
                await eventually(lambda: cluster.leader() is cluster.nodes[wanted], "a transfer")
            await change_membership(
                cluster, ConfChange(ConfChangeKind.REMOVE_NODE, 1), (1, 2, 3, 4)
            )
            rest = (2, 3, 4)
            await eventually(
                lambda: all(voters(cluster, n) == [2, 3, 4] for n in rest),
                "nodes 2-4 to see node 1 removed",
            )
            first = cluster.nodes[1]
            if leaving == "leader":
                assert not first.group(GROUP).promotable(), "it applied its own removal"
            directory = tmp_path / "node-1" / f"group-{GROUP}"
            assert directory.is_dir()
            logged = len(caplog.records)
            await first.remove_group(GROUP)

            assert GROUP not in first.groups and first.store.groups() == []
            assert not directory.exists()
            assert [p.name for p in (tmp_path / "node-1").iterdir() if "group" in p.name] == []
            with pytest.raises(RaftError, match=f"does not run group {GROUP}"):
                first.status(GROUP)
            with pytest.raises(RaftError, match=f"does not run group {GROUP}"):
                await first.propose(GROUP, b"gone")
            with pytest.raises(RaftError, match=f"does not run group {GROUP}"):
                first.group_log(GROUP)  # (store.group would create it anew)

            # A message for the removed group still arrives: dropped quietly.
            term = cluster.nodes[2].group(GROUP).term
            stale = Message(MessageType.HEARTBEAT, GROUP, 2, 1, term)
            assert cluster.nodes[2].transport.send(1, [stale.to_wire()])
            await eventually(
                lambda: any(
                    "dropped a message for group" in r.getMessage() and r.levelno == logging.DEBUG
                    for r in caplog.records[logged:]
                ),
                "node 1 to drop the message",
            )

            after = await write(cluster, "after", 10, among=rest)
            assert await cluster.wait_converged(among=rest) == before + joining + after
            assert first.failure is None and fourth.failure is None
            assert raft_warnings(caplog.records[logged:]) == []

    run(scenario)


def test_a_member_added_at_run_time_rejoins_after_a_restart_with_its_log(tmp_path: Path) -> None:
    async def scenario() -> None:
        # Snapshots every 8 entries keeping 4: the joiner gets a snapshot.
        async with running(tmp_path, 3, snapshot_every=8, keep_entries=4) as cluster:
            before = await write(cluster, "before", 20)
            _, ledger, joining = await join(cluster, 4)
            assert await cluster.wait_converged() == before + joining
            assert any(ledger.restored), "the joiner installed the leader's snapshot"
            last_index = cluster.nodes[4].status(GROUP)["last_index"]

            await cluster.stop(4)
            during = await write(cluster, "during", 10, among=(1, 2, 3))
            node = open_without_groups(cluster, 4)
            await node.start()
            ledger = add_group(cluster, node)
            assert node.status(GROUP)["last_index"] >= last_index, "its log is back"
            assert ledger.restored[-1], "restored from its own snapshot"

            after = await write(cluster, "after", 5)
            assert await cluster.wait_converged() == before + joining + during + after
            assert voters(cluster, 4) == [1, 2, 3, 4]

    run(scenario)


def test_remove_group_during_a_sync_applies_nothing_more_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, 1, groups=(1, 2)) as cluster:
            node = cluster.nodes[1]
            await cluster.wait_leader(1)
            await cluster.wait_leader(2)
            assert await node.propose(2, b"first")
            gate = SyncGate(monkeypatch, node.store)
            try:
                second = spawn(node.propose(2, b"second"))
                (await gate.arrived(1)).set()  # its entry is durable and commits...
                other = spawn(node.propose(1, b"other"))
                # ...and the next round, which would apply it, waits for
                # group 1's sync while group 2 is removed.
                held = await gate.arrived(2)
                raft = node.group(2)
                assert raft.log.committed > raft.log.applied
                removal = spawn(node.remove_group(2))
                with pytest.raises(GroupRemovedOutcomeUnknown) as failed:
                    await second
                assert isinstance(failed.value, OutcomeUnknown)
                assert isinstance(failed.value, GroupRemoved)
                assert 2 not in node.groups and not removal.done()
                assert (tmp_path / "node-1" / "group-2").is_dir(), "closed under a sync"
                with pytest.raises(GroupAlreadyRunning, match="still removing"):
                    node.add_group(2, Ledger())

                held.set()
                await removal
                assert not (tmp_path / "node-1" / "group-2").exists()
                assert cluster.ledger(1, 2).values() == [b"first"]
                await other
                assert cluster.ledger(1, 1).values() == [b"other"]
                assert node.failure is None
                gate.open()
                assert await node.propose(1, b"still served")
            finally:
                gate.open()

    run(scenario)


def test_remove_group_without_delete_keeps_the_log_for_add_group(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, 1, groups=(1, 2)) as cluster:
            node = cluster.nodes[1]
            await cluster.wait_leader(2)
            for data in (b"a", b"b"):
                await node.propose(2, data)
            await node.remove_group(2, delete=False)
            assert (tmp_path / "node-1" / "group-2").is_dir()
            assert node.store.groups() == [1]

            ledger = add_group(cluster, node, 2)
            await cluster.wait_leader(2)
            await node.propose(2, b"c")
            assert ledger.values() == [b"a", b"b", b"c"]

    run(scenario)


def test_add_group_twice_remove_unknown_and_calls_after_stop_raise(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, 1) as cluster:
            node = cluster.nodes[1]
            with pytest.raises(GroupAlreadyRunning, match=f"runs group {GROUP}"):
                node.add_group(GROUP, Ledger())
            with pytest.raises(RaftError, match="does not run group 99"):
                await node.remove_group(99)
            peers = {1: cluster.addresses[1], 2: (HOST, free_ports(1)[0])}
            assert not node.transport.send(2, [])
            node.set_peers(peers)
            assert node.config.peers == peers and node.transport.send(2, [])
            await cluster.stop(1)
            with pytest.raises(NodeStopped):
                node.add_group(5, Ledger())
            with pytest.raises(NodeStopped):
                await node.remove_group(GROUP)
            with pytest.raises(NodeStopped):
                node.set_peers(peers)

    run(scenario)


def test_add_group_before_start_serves_it_like_a_constructor_group(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = Cluster(tmp_path, 1, (1,), (), {})
        try:
            node = open_without_groups(cluster, 1)
            ledger = cluster.machine()
            node.add_group(GROUP, ledger, (1,))
            cluster.ledgers[1][GROUP] = ledger
            await node.start()
            await cluster.wait_leader()
            assert await node.propose(GROUP, b"x") == ledger.applied[-1][0]
        finally:
            await cluster.stop_all()

    run(scenario)


# -- LogStore.remove_group and tombstones ------------------------------------------------------


def entries(*indexes: int) -> list[Entry]:
    return [Entry(i, 1, data=f"e{i}".encode()) for i in indexes]


def test_log_store_remove_group_deletes_it_and_a_new_one_starts_empty(tmp_path: Path) -> None:
    with LogStore(tmp_path) as store:
        for group in (1, 2):
            store.group(group).append(entries(1, 2))
        store.sync()
        removed = store.group(2)
        removed.append(entries(3))  # not synced: dropped with the group
        store.remove_group(2)
        assert store.groups() == [1]
        assert sorted(os.listdir(tmp_path)) == ["LOCK", "group-1"]
        with pytest.raises(LogError, match="closed or removed"):
            removed.append(entries(3))
        with pytest.raises(LogError, match="holds no group 2"):
            store.remove_group(2)
        store.group(1).append(entries(3))
        store.sync()
        assert store.group(2).last_index() == 0
    with LogStore(tmp_path) as store:
        assert store.groups() == [1, 2]
        assert store.group(1).last_index() == 3
        assert store.group(2).last_index() == 0


def test_log_store_close_group_keeps_it_on_disk(tmp_path: Path) -> None:
    with LogStore(tmp_path) as store:
        store.group(3).append(entries(1, 2))  # made durable by close_group
        store.close_group(3)
        assert store.groups() == []
        assert store.group(3).last_index() == 2


def test_a_tombstone_left_by_a_crash_is_deleted_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LogStore(tmp_path) as store:
        for group in (1, 2):
            store.group(group).append(entries(1, 2))
        store.sync()

        def crash(path: str) -> None:
            raise OSError("the process died between the rename and the deletion")

        monkeypatch.setattr(log_module.shutil, "rmtree", crash)
        with pytest.raises(OSError, match="died"):
            store.remove_group(2)
        monkeypatch.undo()
        assert store.groups() == [1]
    # One more, made by hand, with a segment in it like a real group.
    handmade = tmp_path / "tombstone-group-7-00ff"
    handmade.mkdir()
    (handmade / "seg-00000001.log").write_bytes(b"PBRLOG")
    tombstones = [p for p in tmp_path.iterdir() if p.name.startswith("tombstone-group-")]
    assert len(tombstones) == 2
    with LogStore(tmp_path) as store:
        assert store.groups() == [1]
        assert sorted(os.listdir(tmp_path)) == ["LOCK", "group-1"]
