"""The asyncio driver (`cluster.raft.node.RaftNode`) with real nodes.

Every test runs a few `RaftNode`s in this process on 127.0.0.1 free ports,
each with its own `LogStore` directory under `tmp_path` and a `Ledger` state
machine that records what it applies. Ticks are short (20 ms) so elections
take a fraction of a second; every wait is bounded, and `Cluster.stop_all`
stops every node a test started, whatever the outcome.

Disk faults are injected into one function only: `LogStore._make_durable`,
the store's one durability point (see `cluster/raft/log.py`), on one node's
store. One test also holds back some of the messages a leader sends to one
peer (`HeldMessages`, a wrapper of that node's `Transport.send`).

"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import msgpack
import pytest
from loopback import HOST, eventually, free_ports

import cluster.raft.log as log_module
from cluster.raft.core import Role
from cluster.raft.errors import LogUnavailableError, NotLeader, ProposalDropped, RaftError
from cluster.raft.log import LogStore
from cluster.raft.node import (
    NodeConfig,
    NodeStopped,
    OutcomeUnknown,
    ProposalTimeout,
    RaftNode,
)
from cluster.raft.types import ConfChange, ConfChangeKind, Message, MessageType

SECRET = b"the node tests' cluster secret"
GROUP = 1
FAST: dict[str, Any] = {
    "tick_interval": 0.02,
    "election_tick": 10,
    "heartbeat_tick": 2,
    "proposal_timeout": 5.0,
}
"""Elections in 0.2-0.4 s; heartbeats every 40 ms."""
REDIAL_MAX = 0.1
"""Seconds between dials to a peer that is down (the transport's default, 2 s,
would make a restarted node wait for its peers)."""
NODE_LOGGER = "protobase.raft.node"

T = TypeVar("T")


# -- the state machine ---------------------------------------------------------------------


class Ledger:
    """A `StateMachine` that keeps every (index, data) it applies, in order."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, bytes]] = []
        self.restored: list[list[tuple[int, bytes]]] = []
        """The state each `restore()` installed, in call order."""
        self.disorder: list[str] = []

    def apply(self, index: int, data: bytes) -> int:
        if self.applied and index <= self.applied[-1][0]:
            self.disorder.append(f"index {index} applied after {self.applied[-1][0]}")
        self.applied.append((index, data))
        return index

    def snapshot(self, sink: BinaryIO) -> None:
        for index, data in self.applied:
            sink.write(msgpack.packb([index, data]))

    def restore(self, source: BinaryIO) -> None:
        self.applied = [(index, value) for index, value in msgpack.Unpacker(source)]
        self.restored.append(list(self.applied))

    def values(self) -> list[bytes]:
        return [data for _, data in self.applied]


class RetainingLedger(Ledger):
    """A `Ledger` that reads entries back from the log (`RetainsEntries`):
    the node keeps every entry from `keep_from` on."""

    def __init__(self) -> None:
        super().__init__()
        self.keep_from = 1

    def first_needed_index(self) -> int:
        return self.keep_from


# -- harness ---------------------------------------------------------------------------------


def run(scenario: Callable[[], Awaitable[None]], limit: float = 40.0) -> None:
    """Run `scenario` on a fresh loop; fail if it leaves a task behind."""

    async def main() -> None:
        async with asyncio.timeout(limit):
            await scenario()
        leftover = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftover, leftover

    asyncio.run(main())


def spawn(coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task whose exception counts as retrieved even if the test fails
    before it looks. (A "never retrieved" report, formatted by the garbage
    collector in the middle of pytest's own `ast.parse`, makes CPython 3.11.7
    raise "AST constructor recursion depth mismatch" inside pytest.)"""
    task = asyncio.create_task(coroutine)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return task


class Cluster:
    """Nodes 1..`peers`, all in every node's peer list; `start()` runs one.

    `nodes` holds the nodes opened and not stopped; `ledgers[node][group]` is
    the state machine of a node's latest incarnation.
    """

    def __init__(
        self,
        tmp_path: Path,
        peers: int,
        voters: tuple[int, ...],
        groups: tuple[int, ...],
        config: dict[str, Any],
        machine: Callable[[], Ledger] = Ledger,
    ) -> None:
        self.tmp_path = tmp_path
        self.machine = machine
        self.addresses = {
            node_id: (HOST, port) for node_id, port in enumerate(free_ports(peers), start=1)
        }
        self.voters = voters
        self.groups = groups
        self.config = {**FAST, **config}
        self.nodes: dict[int, RaftNode] = {}
        self.ledgers: dict[int, dict[int, Ledger]] = {}

    def open(
        self, node_id: int, *, voters: tuple[int, ...] | None = None, secret: bytes = SECRET
    ) -> RaftNode:
        """A new incarnation of `node_id` on its data directory, not started."""
        assert node_id not in self.nodes, f"node {node_id} is running"
        config = NodeConfig(
            node_id=node_id,
            listen=self.addresses[node_id],
            peers=self.addresses,
            data_dir=self.tmp_path / f"node-{node_id}",
            secret=secret,
            rng_seed=node_id,
            **self.config,
        )
        ledgers = {group: self.machine() for group in self.groups}
        initial = self.voters if voters is None else voters
        node = RaftNode(config, {group: (ledgers[group], initial) for group in self.groups})
        node.transport.backoff_max = REDIAL_MAX
        self.nodes[node_id] = node
        self.ledgers[node_id] = ledgers
        return node

    async def start(
        self, node_id: int, *, voters: tuple[int, ...] | None = None, secret: bytes = SECRET
    ) -> RaftNode:
        node = self.nodes.get(node_id) or self.open(node_id, voters=voters, secret=secret)
        await node.start()
        return node

    async def stop(self, node_id: int) -> None:
        try:
            await self.nodes[node_id].stop()
        finally:
            self.nodes.pop(node_id, None)

    async def stop_all(self) -> None:
        errors: list[BaseException] = []
        for node_id in list(self.nodes):
            try:
                await self.stop(node_id)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def ledger(self, node_id: int, group: int = GROUP) -> Ledger:
        return self.ledgers[node_id][group]

    def _members(self, among: Collection[int] | None) -> list[RaftNode]:
        return [node for node_id, node in self.nodes.items() if among is None or node_id in among]

    def leader(self, group: int = GROUP, among: Collection[int] | None = None) -> RaftNode | None:
        """The node that leads `group` in the highest term, if any does."""
        leaders = [node for node in self._members(among) if node.group(group).is_leader]
        return max(leaders, key=lambda node: node.group(group).term, default=None)

    async def wait_leader(
        self, group: int = GROUP, among: Collection[int] | None = None
    ) -> RaftNode:
        """A leader that every running node in `among` follows."""

        def agreed() -> bool:
            leader = self.leader(group, among)
            return leader is not None and all(
                node.leader(group) == leader.id for node in self._members(among)
            )

        await eventually(agreed, f"one leader of group {group} that every node follows")
        leader = self.leader(group, among)
        assert leader is not None
        return leader

    async def propose(
        self,
        data: bytes,
        group: int = GROUP,
        among: Collection[int] | None = None,
        timeout: float = 10.0,
    ) -> Any:
        """Propose at the current leader; retry where the entry was surely not
        applied (no leader here, a transfer under way, overwritten)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            leader = self.leader(group, among)
            if leader is not None:
                try:
                    return await leader.propose(group, data)
                except (NotLeader, ProposalDropped):
                    pass
            if loop.time() > deadline:
                raise AssertionError(f"no leader of group {group} took {data!r} in {timeout} s")
            await asyncio.sleep(0.01)

    async def wait_converged(
        self, group: int = GROUP, among: Collection[int] | None = None
    ) -> list[bytes]:
        """Wait until the nodes in `among` have applied the same entries and
        agree on the commit index; returns the applied values."""
        members = self._members(among)

        def converged() -> bool:
            statuses = [node.status(group) for node in members]
            ledgers = [self.ledgers[node.id][group].applied for node in members]
            return (
                len({(s["commit"], s["applied"]) for s in statuses}) == 1
                and statuses[0]["applied"] == statuses[0]["commit"]
                and all(applied == ledgers[0] for applied in ledgers)
            )

        await eventually(converged, f"nodes {[n.id for n in members]} to apply the same entries")
        for node in members:
            assert not self.ledgers[node.id][group].disorder, self.ledgers[node.id][group].disorder
        return self.ledgers[members[0].id][group].values()


@asynccontextmanager
async def running(
    tmp_path: Path,
    nodes: int = 3,
    *,
    peers: int | None = None,
    groups: tuple[int, ...] = (GROUP,),
    secrets: dict[int, bytes] | None = None,
    machine: Callable[[], Ledger] = Ledger,
    **config: Any,
) -> AsyncIterator[Cluster]:
    """Nodes 1..`nodes` started, all voters; `peers` (default `nodes`) ids in
    every node's peer list, so nodes above `nodes` can be started later."""
    cluster = Cluster(tmp_path, peers or nodes, tuple(range(1, nodes + 1)), groups, config, machine)
    try:
        for node_id in range(1, nodes + 1):
            await cluster.start(node_id, secret=(secrets or {}).get(node_id, SECRET))
        yield cluster
    finally:
        await cluster.stop_all()


class FailingSync:
    """The next `count` durability calls of `store` raise EIO."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: LogStore, count: int = 1) -> None:
        self.remaining = count
        self.raised = 0
        original = store._make_durable

        def make_durable(segments: Collection[Any]) -> None:
            if self.remaining > 0:
                self.remaining -= 1
                self.raised += 1
                raise OSError(errno.EIO, "injected fsync failure")
            original(segments)

        monkeypatch.setattr(store, "_make_durable", make_durable)


class HeldSync:
    """Holds the next durability call of `store` in its worker thread until
    `release` is set; `entered` is set when it starts. `errors` keeps what the
    held call raised once released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: LogStore) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.errors: list[BaseException] = []
        self.calls = 0
        original = store._make_durable

        def make_durable(segments: Collection[Any]) -> None:
            self.calls += 1
            if self.calls > 1:
                original(segments)
                return
            self.entered.set()
            self.release.wait(20)
            try:
                original(segments)
            except BaseException as exc:
                self.errors.append(exc)
                raise
            finally:
                self.finished.set()

        monkeypatch.setattr(store, "_make_durable", make_durable)


class HeldMessages:
    """What `node` sends to `peer` and `hold` selects is kept back in `held`
    (wire form, in order) instead of going out, until `release()`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, node: RaftNode, peer: int) -> None:
        self.hold: Callable[[Message], bool] = lambda message: False
        self.held: list[Any] = []
        self._send = node.transport.send
        self._peer = peer

        def send(to: int, batch: list[Any]) -> bool:
            if to != peer:
                return self._send(to, batch)
            passed: list[Any] = []
            for raw in batch:
                (self.held if self.hold(Message.from_wire(raw)) else passed).append(raw)
            return self._send(to, passed) if passed else True

        monkeypatch.setattr(node.transport, "send", send)

    def release(self, count: int | None = None) -> None:
        """Send the first `count` held messages (all when None)."""
        count = len(self.held) if count is None else count
        released, self.held = self.held[:count], self.held[count:]
        if released:
            self._send(self._peer, released)


# -- elections and replication ---------------------------------------------------------------


def test_three_nodes_elect_a_leader_and_apply_the_same_entries_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            leaders = [n.id for n in cluster.nodes.values() if n.group(GROUP).role is Role.LEADER]
            assert leaders == [leader.id]
            written = [f"entry {i}".encode() for i in range(20)]
            for data in written:
                index = await leader.propose(GROUP, data)
                # The proposal resolves once the leader itself has applied it.
                assert cluster.ledger(leader.id).applied[-1] == (index, data)
            assert await cluster.wait_converged() == written
            indexes = [index for index, _ in cluster.ledger(leader.id).applied]
            assert indexes == sorted(set(indexes))

    run(scenario)


def test_propose_on_a_follower_raises_not_leader_naming_the_leader(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            await cluster.propose(b"first")
            await cluster.wait_converged()
            for follower in [n for n in cluster.nodes.values() if n is not leader]:
                last_index = follower.status(GROUP)["last_index"]
                # No await between reading the leader and proposing: nothing can change.
                actual_leader = cluster.leader()
                assert actual_leader is not None
                with pytest.raises(NotLeader) as info:
                    await follower.propose(GROUP, b"refused")
                assert info.value.leader_hint == actual_leader.id
                assert info.value.group == GROUP
                assert follower.status(GROUP)["last_index"] == last_index
            assert b"refused" not in await cluster.wait_converged()

    run(scenario)


def test_concurrent_proposals_to_several_groups_share_sync_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups = (1, 2, 3, 4)
    per_group = 50

    async def scenario() -> None:
        async with running(tmp_path, groups=groups) as cluster:
            for group in groups:
                await cluster.wait_leader(group)
                await cluster.propose(b"warm-up", group)
            groups_per_sync: list[int] = []
            for node in cluster.nodes.values():
                original = node.store._make_durable

                def make_durable(
                    segments: Collection[Any], original: Callable[[Any], None] = original
                ) -> None:
                    groups_per_sync.append(len({Path(seg.path).parent.name for seg in segments}))
                    original(segments)

                monkeypatch.setattr(node.store, "_make_durable", make_durable)
            rounds_before = {n.id: n.sync_rounds for n in cluster.nodes.values()}
            fsyncs_before = {n.id: n.store.fsync_count for n in cluster.nodes.values()}

            proposals = [
                cluster.propose(f"g{group}-{i}".encode(), group)
                for i in range(per_group)
                for group in groups
            ]
            results = await asyncio.gather(*proposals)

            assert len(results) == len(groups) * per_group
            for group in groups:
                values = await cluster.wait_converged(group)
                expected = sorted(f"g{group}-{i}".encode() for i in range(per_group))
                assert sorted(values[1:]) == expected
            rounds = {n.id: n.sync_rounds - rounds_before[n.id] for n in cluster.nodes.values()}
            fsyncs = {
                n.id: n.store.fsync_count - fsyncs_before[n.id] for n in cluster.nodes.values()
            }
            # 200 proposals: each node makes its entries durable in a handful
            # of rounds, with one syncfs each however many groups are dirty
            # (one fdatasync per dirty group where syncfs is missing).
            per_round = 1 if log_module._syncfs is not None else len(groups)
            assert sum(rounds.values()) <= len(results) // 5, rounds
            assert all(fsyncs[n] <= rounds[n] * per_round for n in rounds), (fsyncs, rounds)
            assert max(groups_per_sync) >= 2, groups_per_sync

    run(scenario)


# -- failures: quorum, stop, restart ---------------------------------------------------------


def test_a_proposal_without_a_quorum_times_out(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            await cluster.propose(b"committed")
            followers = [n for n in cluster.nodes if n != leader.id]
            stopping = [spawn(cluster.stop(n)) for n in followers]
            await asyncio.sleep(0)  # both stop()s have cancelled their loops: no more acks
            assert leader.group(GROUP).is_leader
            with pytest.raises(ProposalTimeout):
                await asyncio.wait_for(leader.propose(GROUP, b"no quorum", timeout=1.0), 10)
            await asyncio.gather(*stopping)
            assert b"no quorum" not in cluster.ledger(leader.id).values()

    run(scenario)


def test_stop_fails_pending_proposals_and_reads(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            await cluster.propose(b"committed")
            followers = [n for n in cluster.nodes if n != leader.id]
            stopping = [spawn(cluster.stop(n)) for n in followers]
            await asyncio.sleep(0)
            proposal = spawn(leader.propose(GROUP, b"pending", timeout=30))
            read = spawn(leader.read_barrier(GROUP, timeout=30))
            await asyncio.gather(*stopping)
            assert not proposal.done()

            await cluster.stop(leader.id)
            _, pending = await asyncio.wait({proposal, read}, timeout=5)
            assert not pending, "stop() left a proposal or a read waiting"
            for task in (proposal, read):
                error = task.exception()
                assert isinstance(error, RaftError), error
                assert not isinstance(error, ProposalTimeout), error

    run(scenario)


def test_a_restarted_node_recovers_its_log_and_catches_up(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            first = [f"a{i}".encode() for i in range(10)]
            for data in first:
                await cluster.propose(data)
            await cluster.wait_converged()
            node_id = next(n for n in cluster.nodes if n != leader.id)
            before = cluster.nodes[node_id].status(GROUP)
            vote = cluster.nodes[node_id].group(GROUP).vote
            await cluster.stop(node_id)
            second = [f"b{i}".encode() for i in range(10)]
            for data in second:
                await cluster.propose(data)

            reopened = cluster.open(node_id)
            recovered = reopened.status(GROUP)
            assert recovered["last_index"] == before["last_index"]
            assert recovered["term"] == before["term"]
            assert reopened.group(GROUP).vote == vote
            assert recovered["commit"] >= before["applied"]
            await cluster.start(node_id)

            assert await cluster.wait_converged() == first + second
            assert reopened.status(GROUP)["voters"] == [1, 2, 3]
            assert cluster.ledger(node_id).values() == first + second

    run(scenario)


def test_a_lagging_follower_is_restored_from_a_snapshot(tmp_path: Path) -> None:
    async def scenario() -> None:
        # A small window: while the node is down, at most a few appends wait
        # for it in the leader's transport queue (which survives reconnects).
        async with running(tmp_path, snapshot_every=10, keep_entries=0, max_inflight=4) as cluster:
            leader = await cluster.wait_leader()
            first = [f"a{i}".encode() for i in range(3)]
            for data in first:
                await cluster.propose(data)
            await cluster.wait_converged()
            lagging = next(n for n in cluster.nodes if n != leader.id)
            last_index = cluster.nodes[lagging].status(GROUP)["last_index"]
            await cluster.stop(lagging)

            second = [f"b{i}".encode() for i in range(60)]
            for data in second:
                await cluster.propose(data)
            for node in cluster.nodes.values():
                # What the lagging node needs next is no longer in any log.
                assert node.store.group(GROUP).first_index() > last_index + 1

            await cluster.start(lagging)
            values = await cluster.wait_converged()
            assert values == first + second
            ledger = cluster.ledger(lagging)
            assert any(state and state[-1][0] > last_index for state in ledger.restored), (
                "the lagging node was never restored from the leader's snapshot"
            )
            assert ledger.values() == first + second

    run(scenario)


def test_a_follower_a_little_behind_a_snapshot_catches_up_by_appends(tmp_path: Path) -> None:
    async def scenario() -> None:
        # Same as above, but the leader keeps 100 entries behind its snapshots.
        async with running(
            tmp_path, snapshot_every=10, keep_entries=100, max_inflight=4
        ) as cluster:
            leader = await cluster.wait_leader()
            first = [f"a{i}".encode() for i in range(3)]
            for data in first:
                await cluster.propose(data)
            await cluster.wait_converged()
            lagging = next(n for n in cluster.nodes if n != leader.id)
            last_index = cluster.nodes[lagging].status(GROUP)["last_index"]
            await cluster.stop(lagging)

            second = [f"b{i}".encode() for i in range(60)]
            for data in second:
                await cluster.propose(data)
            leader_log = leader.store.group(GROUP)
            assert leader_log.snapshot_meta().index > last_index + 40
            assert leader_log.first_index() <= last_index + 1  # still readable

            await cluster.start(lagging)
            assert await cluster.wait_converged() == first + second
            ledger = cluster.ledger(lagging)
            assert not any(state and state[-1][0] > last_index for state in ledger.restored), (
                "the follower got a snapshot although the leader still had the entries"
            )
            assert ledger.values() == first + second

    run(scenario)


# -- membership and leadership ---------------------------------------------------------------


def test_add_voter_catches_a_learner_up_then_promotes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, 3, peers=4) as cluster:
            leader = await cluster.wait_leader()
            history = [f"a{i}".encode() for i in range(20)]
            for data in history:
                await cluster.propose(data)
            changes: list[tuple[ConfChange, list[int], int, int]] = []
            change_membership = leader.change_membership

            async def recording(group_id: int, change: ConfChange, timeout: Any = None) -> int:
                learner_last = cluster.nodes[4].status(group_id)["last_index"]
                status = leader.status(group_id)
                changes.append((change, status["learners"], learner_last, status["last_index"]))
                return await change_membership(group_id, change, timeout)

            monkeypatch.setattr(leader, "change_membership", recording)
            await cluster.start(4, voters=())
            await asyncio.wait_for(leader.add_voter(GROUP, 4, max_lag=0, timeout=20), 30)

            assert [change for change, *_ in changes] == [
                ConfChange(ConfChangeKind.ADD_LEARNER, 4),
                ConfChange(ConfChangeKind.ADD_VOTER, 4),
            ]
            _, learners, learner_last, leader_last = changes[1]
            assert learners == [4]
            assert learner_last >= leader_last, "promoted before it caught up"
            assert leader.status(GROUP)["voters"] == [1, 2, 3, 4]
            await eventually(
                lambda: all(
                    n.status(GROUP)["voters"] == [1, 2, 3, 4] and n.status(GROUP)["learners"] == []
                    for n in cluster.nodes.values()
                ),
                "every node to see four voters",
            )
            later = [f"b{i}".encode() for i in range(5)]
            for data in later:
                await cluster.propose(data)
            assert await cluster.wait_converged() == history + later

    run(scenario)


def test_transfer_leadership_moves_the_leader(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            await cluster.propose(b"before")
            await cluster.wait_converged()
            target = max(n for n in cluster.nodes if n != leader.id)
            await leader.transfer_leadership(GROUP, target)
            await eventually(
                lambda: all(n.leader(GROUP) == target for n in cluster.nodes.values()),
                f"every node to follow node {target}",
            )
            new_leader = cluster.nodes[target]
            assert new_leader.group(GROUP).is_leader
            assert leader.group(GROUP).role is not Role.LEADER
            await new_leader.propose(GROUP, b"after")
            assert await cluster.wait_converged() == [b"before", b"after"]

    run(scenario)


# -- linearizable reads ----------------------------------------------------------------------


def test_read_barrier_returns_after_the_latest_acknowledged_write_is_applied_here(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            followers = [n for n in cluster.nodes.values() if n is not leader]
            for i in range(10):
                data = f"write {i}".encode()
                index = await leader.propose(GROUP, data)
                reader = followers[i % 2]
                read_index = await reader.read_barrier(GROUP)
                assert read_index >= index
                assert data in cluster.ledger(reader.id).values(), f"read {i} missed its write"
                assert await leader.read_barrier(GROUP) >= index
                assert data in cluster.ledger(leader.id).values()

    run(scenario)


# -- authentication --------------------------------------------------------------------------


def test_a_node_with_the_wrong_secret_never_joins(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, secrets={3: b"not the cluster secret"}) as cluster:
            leader = await cluster.wait_leader(among={1, 2})
            written = [f"entry {i}".encode() for i in range(10)]
            for data in written:
                await cluster.propose(data, among={1, 2})
            assert await cluster.wait_converged(among={1, 2}) == written

            outsider = cluster.nodes[3]
            assert leader.id in {1, 2}
            assert cluster.ledger(3).applied == []
            assert outsider.transport.stats.handshake_failures > 0
            assert not outsider.transport.connected(1) and not outsider.transport.connected(2)
            status = outsider.status(GROUP)
            assert status["role"] != "leader" and status["leader"] is None
            # Pre-vote: alone, it never even started a real election.
            assert status["term"] == 1

    run(scenario)


# -- a store whose sync fails ----------------------------------------------------------------


def test_a_leader_whose_sync_fails_stops_serving_and_the_others_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            await cluster.propose(b"durable")
            fault = FailingSync(monkeypatch, leader.store)
            with pytest.raises(OutcomeUnknown) as info:
                await asyncio.wait_for(leader.propose(GROUP, b"sent, not synced", timeout=30), 10)
            assert not isinstance(info.value, ProposalTimeout)
            assert isinstance(info.value.__cause__, OSError)
            assert fault.raised == 1
            assert b"sent, not synced" not in cluster.ledger(leader.id).values()
            assert "Ready loop failed" in caplog.text
            # Every later call fails at once.
            with pytest.raises(NodeStopped):
                await asyncio.wait_for(leader.propose(GROUP, b"later", timeout=30), 2)
            with pytest.raises(NodeStopped):
                await asyncio.wait_for(leader.read_barrier(GROUP, timeout=30), 2)

            survivors = {n for n in cluster.nodes if n != leader.id}
            await cluster.propose(b"after", among=survivors)
            values = await cluster.wait_converged(among=survivors)
            # The leader's appends left before its sync: the others commit the
            # entry, which is why the proposal's outcome was unknown.
            assert values == [b"durable", b"sent, not synced", b"after"]
            assert b"after" not in cluster.ledger(leader.id).values()

    with caplog.at_level(logging.ERROR, logger=NODE_LOGGER):
        run(scenario)


def test_a_follower_whose_sync_fails_never_acknowledges_the_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            await cluster.propose(b"durable")
            await cluster.wait_converged()
            broken = next(n for n in cluster.nodes.values() if n is not leader)
            fault = FailingSync(monkeypatch, broken.store)
            index = await leader.propose(GROUP, b"on two nodes")
            healthy = {n for n in cluster.nodes if n != broken.id}
            await cluster.wait_converged(among=healthy)
            await asyncio.sleep(10 * FAST["tick_interval"])  # heartbeats come and go
            assert fault.raised == 1
            assert leader.group(GROUP).progress[broken.id].match < index
            assert b"on two nodes" not in cluster.ledger(broken.id).values()

    run(scenario)


# -- failures, stops and bad calls -----------------------------------------------------------------


def test_stop_reports_a_replicated_proposal_as_outcome_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            await cluster.propose(b"durable")
            await cluster.wait_converged()
            held = HeldSync(monkeypatch, leader.store)
            try:
                proposal = spawn(leader.propose(GROUP, b"replicated", timeout=30))
                await asyncio.sleep(0)
                index = leader.status(GROUP)["last_index"]
                followers = [n for n in cluster.nodes.values() if n is not leader]
                await eventually(held.entered.is_set, "the leader's sync to start")
                # Followers ack only once the entry is durable on their disk.
                await eventually(
                    lambda: (
                        leader.group(GROUP).log.committed >= index
                        and all(f.status(GROUP)["last_index"] >= index for f in followers)
                    ),
                    "the followers to make the entry durable",
                )
                stopping = spawn(cluster.stop(leader.id))
                await asyncio.sleep(0)
            finally:
                held.release.set()
            await stopping
            await asyncio.wait({proposal}, timeout=5)
            assert proposal.done(), "stop() left the proposal waiting"
            error = proposal.exception()
            assert isinstance(error, RaftError), error
            survivors = {f.id for f in followers}
            await cluster.propose(b"after", among=survivors)
            assert b"replicated" in await cluster.wait_converged(among=survivors)
            assert isinstance(error, OutcomeUnknown), repr(error)

    run(scenario)


def test_stop_waits_for_the_sync_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with running(tmp_path, 1) as cluster:
            node = await cluster.wait_leader()
            await cluster.propose(b"durable")
            held = HeldSync(monkeypatch, node.store)
            try:
                proposal = spawn(node.propose(GROUP, b"in flight", timeout=30))
                await eventually(held.entered.is_set, "the sync to start")
                stopping = spawn(cluster.stop(node.id))
                await asyncio.wait({stopping}, timeout=1.0)
                stopped_during_sync = stopping.done()
            finally:
                held.release.set()
            await stopping
            await eventually(held.finished.is_set, "the held sync to finish")
            await asyncio.wait({proposal})
            assert isinstance(proposal.exception(), RaftError)
            assert not stopped_during_sync, "stop() returned while the store was still syncing"
            assert held.errors == []

    run(scenario)


def test_add_voter_does_not_promote_a_node_that_never_answered(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, 1, peers=2) as cluster:
            node = await cluster.wait_leader()
            await cluster.propose(b"durable")
            try:
                with pytest.raises(ProposalTimeout):
                    await asyncio.wait_for(node.add_voter(GROUP, 2, timeout=1.0), 10)
            finally:
                voters = node.status(GROUP)["voters"]
            assert voters == [1]
            await node.propose(GROUP, b"still has a quorum", timeout=2.0)

    run(scenario)


def test_proposal_timeout_names_the_group(tmp_path: Path) -> None:
    group = 7

    async def scenario() -> None:
        async with running(tmp_path, 1, groups=(group,)) as cluster:
            node = await cluster.wait_leader(group)
            with pytest.raises(ProposalTimeout) as info:
                # Too short for any sync: it times out before the entry applies.
                await node.propose(group, b"late", timeout=1e-9)
            assert f"group {group}:" in str(info.value), str(info.value)

    run(scenario)


def test_every_call_naming_an_unknown_group_raises_raft_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, 1) as cluster:
            node = cluster.nodes[1]
            with pytest.raises(RaftError):
                await node.propose(99, b"x")
            with pytest.raises(RaftError):
                await node.read_barrier(99)
            with pytest.raises(RaftError):
                await node.change_membership(99, ConfChange(ConfChangeKind.ADD_LEARNER, 2))

    run(scenario)


def test_a_read_is_not_completed_by_the_answer_to_a_read_before_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            await cluster.propose(b"first")
            await cluster.wait_converged()
            reader_id = next(n for n in cluster.nodes if n != leader.id)
            to_reader = HeldMessages(monkeypatch, leader, reader_id)
            to_reader.hold = lambda message: message.type is MessageType.READ_INDEX_RESP
            spawn(cluster.nodes[reader_id].read_barrier(GROUP, timeout=30))
            await eventually(lambda: bool(to_reader.held), "the leader to answer the read")
            await cluster.stop(reader_id)
            # The restarted node hears the leader, but gets nothing else yet.
            to_reader.hold = lambda message: message.type is not MessageType.HEARTBEAT
            index = await cluster.propose(b"acknowledged")
            reader = await cluster.start(reader_id)
            await eventually(lambda: reader.leader(GROUP) == leader.id, "the leader to be known")

            async def read() -> tuple[int, bool]:
                read_index = await reader.read_barrier(GROUP, timeout=30)
                return read_index, b"acknowledged" in cluster.ledger(reader_id).values()

            new_read = spawn(read())
            await asyncio.sleep(0)
            to_reader.release(1)  # the answer to the read of the previous incarnation
            await asyncio.wait({new_read}, timeout=1.0)
            to_reader.hold = lambda message: False
            to_reader.release()
            read_index, saw_the_write = await asyncio.wait_for(new_read, 10)
            assert saw_the_write, "the read completed before the acknowledged write was applied"
            assert read_index >= index

    run(scenario)


def test_a_new_member_gets_its_catch_up_appends_in_frames_under_the_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The leader's catch-up round holds up to max_inflight appends for one
    # peer: 100 entries of 4 KB in 8 KiB appends, far over a 64 KiB frame.
    frame_limit = 64 << 10

    def limit_frames(node: RaftNode) -> None:
        node.transport.max_frame_bytes = frame_limit

    async def scenario() -> None:
        async with running(tmp_path, 3, peers=4, max_message_bytes=8 << 10) as cluster:
            for node in cluster.nodes.values():
                limit_frames(node)
            leader = await cluster.wait_leader()
            values = [bytes([i]) * 4000 for i in range(100)]
            for data in values:
                await cluster.propose(data)
            limit_frames(cluster.open(4, voters=()))
            await cluster.start(4)
            await asyncio.wait_for(leader.add_voter(GROUP, 4, timeout=20), 30)
            assert await cluster.wait_converged() == values
            assert [node.failure for node in cluster.nodes.values()] == [None] * 4
            assert "dropped" not in caplog.text  # no frame was over the limit

    with caplog.at_level(logging.ERROR, logger=NODE_LOGGER):
        run(scenario)


def test_an_entry_over_the_frame_limit_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, 1) as cluster:
            node = await cluster.wait_leader()
            before = node.status(GROUP)["last_index"]
            with pytest.raises(ValueError, match="limit"):
                await node.propose(GROUP, b"x" * (node.max_entry_bytes + 1))
            assert node.status(GROUP)["last_index"] == before
            await cluster.propose(b"x" * 1000)  # the control

    run(scenario)


def test_an_entry_of_exactly_max_entry_bytes_replicates(tmp_path: Path) -> None:
    # With the transport's default frame limit: a 32 MiB entry. The three
    # nodes share one event loop here, which encoding, hashing and writing
    # 32 MiB three times stalls for about half a second (a second or more
    # under a loaded test run), and the tick loop catches up on missed
    # ticks: ticks of 300 ms keep that from looking like a dead leader.
    async def scenario() -> None:
        async with running(tmp_path, tick_interval=0.3) as cluster:
            leader = await cluster.wait_leader()
            limit = leader.max_entry_bytes
            assert limit == leader.transport.max_frame_bytes // 2 == 32 << 20
            big = bytes(range(256)) * (limit // 256)
            assert len(big) == limit
            index = await leader.propose(GROUP, big, timeout=60)
            applied = await cluster.wait_converged()
            assert len(applied) == 1 and applied[0] == big, "the entry did not arrive whole"
            for node in cluster.nodes.values():
                assert node.failure is None
                assert node.read_entry(GROUP, index) == big, "read back differs"

    run(scenario, limit=120)


# -- entries read back: retention ----------------------------------------------------------------


def test_a_state_machine_that_retains_entries_reads_them_behind_snapshots_and_restarts(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with running(
            tmp_path, snapshot_every=10, keep_entries=0, machine=RetainingLedger
        ) as cluster:
            await cluster.wait_leader()
            values = [b"v%d" % i for i in range(40)]
            indexes = [await cluster.propose(value) for value in values]
            await cluster.wait_converged()
            for node in cluster.nodes.values():
                assert node.store.group(GROUP).snapshot_meta().index > indexes[20]
                assert [node.read_entry(GROUP, i) for i in indexes] == values
                entries = node.read_entries(GROUP, indexes[0], indexes[-1] + 1)
                assert [e.data for e in entries if e.data] == values
                with pytest.raises(LogUnavailableError, match="not committed"):
                    node.read_entry(GROUP, node.status(GROUP)["commit"] + 1)
            # A restarted node reads them back from its files.
            node_id = next(iter(cluster.nodes))
            await cluster.stop(node_id)
            reopened = cluster.open(node_id)
            assert [reopened.read_entry(GROUP, i) for i in indexes] == values
            await cluster.start(node_id)
            await cluster.wait_converged()
            # Once the state machine lets them go, the next snapshot compacts them.
            for ledgers in cluster.ledgers.values():
                machine = ledgers[GROUP]
                assert isinstance(machine, RetainingLedger)
                machine.keep_from = indexes[20]
            for i in range(20):
                await cluster.propose(b"w%d" % i)
            await cluster.wait_converged()
            for node in cluster.nodes.values():
                with pytest.raises(LogUnavailableError):
                    node.read_entry(GROUP, indexes[19])
                assert node.read_entry(GROUP, indexes[20]) == values[20]

    run(scenario)


def test_a_failed_tick_stops_the_node_and_wait_failed_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            follower = next(n for i, n in cluster.nodes.items() if i != leader.id)
            waiting = spawn(follower.wait_failed())
            broken = RuntimeError("a damaged snapshot file")

            def tick() -> None:
                raise broken

            monkeypatch.setattr(follower.group(GROUP), "tick", tick)
            assert await asyncio.wait_for(waiting, 5) is broken
            with pytest.raises(NodeStopped) as info:
                await follower.propose(GROUP, b"x")
            assert info.value.__cause__ is broken
            # Its transport is closed: the others see it gone and go on.
            await eventually(lambda: not leader.transport.connected(follower.id), "a closed link")
            others = {n for n in cluster.nodes if n != follower.id}
            await cluster.propose(b"after", among=others)

    run(scenario)


def test_wait_failed_returns_none_after_a_clean_stop(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, 1) as cluster:
            node = await cluster.wait_leader()
            waiting = spawn(node.wait_failed())
            await cluster.propose(b"x")
            await asyncio.sleep(0.05)
            assert not waiting.done()
            await cluster.stop(node.id)
            assert await asyncio.wait_for(waiting, 5) is None
            with pytest.raises(NodeStopped):
                await node.start()

    run(scenario)
