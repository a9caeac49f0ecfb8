"""Scenario tests of the sans-IO Raft core (`cluster.raft.core`).

The randomized simulation (raft_simulation.py) checks invariants
statistically; these tests pin each feature with a small, hand-driven
network. `Cluster` runs a few `RaftGroup`s on `MemoryGroupLog`s and does
exactly what a driver must with every `Ready` (persist, sync, send, apply,
advance). Nothing happens unless a test ticks or delivers: messages wait in
`Cluster.queue`, where a test can inspect, drop or reorder them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cluster.raft.core import TRANSFER_CONTEXT, ProgressState, RaftConfig, RaftGroup, Role
from cluster.raft.core import TestFault as Fault  # aliased: pytest would try to collect Test*
from cluster.raft.errors import LogError, NotLeader, ProposalDropped, ProtocolError, RaftError
from cluster.raft.memlog import MemoryGroupLog
from cluster.raft.raftlog import RaftLog
from cluster.raft.types import (
    NO_NODE,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    Message,
    MessageType,
    ReadState,
    Ready,
    SnapshotChunk,
    SnapshotMeta,
    entries_size,
)

ELECTION_TICK = 10
APPEND = MessageType.APPEND
APPEND_RESP = MessageType.APPEND_RESP
HEARTBEAT = MessageType.HEARTBEAT
HEARTBEAT_RESP = MessageType.HEARTBEAT_RESP
SNAPSHOT = MessageType.SNAPSHOT
VOTE_TYPES = (MessageType.PRE_VOTE, MessageType.VOTE)

Drop = Callable[[Message], bool]


class Cluster:
    """N groups on in-memory logs and a network the test drives by hand.

    - `process()` executes every pending `Ready` the way a driver must;
    - `deliver(drop=...)` routes queued messages until the network is quiet
      (or for `rounds` rounds), losing those to or from an isolated node and
      those `drop` selects;
    - `sent`, `delivered` and `dropped` record every message, in order.
    """

    def __init__(self, voters: int = 3, *, seed: int = 0, **config: Any) -> None:
        self.seed = seed
        self.config = {"election_tick": ELECTION_TICK, "heartbeat_tick": 1, **config}
        self.nodes: dict[int, RaftGroup] = {}
        self.logs: dict[int, MemoryGroupLog] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.applied_index: dict[int, int] = {}
        self.installed: dict[int, list[SnapshotMeta]] = {}
        """The snapshots each node installed from its leader (their data is in its log)."""
        self.read_states: dict[int, list[ReadState]] = {}
        self.queue: list[Message] = []
        self.sent: list[Message] = []
        self.delivered: list[Message] = []
        self.dropped: list[Message] = []
        self.isolated: set[int] = set()
        peers = tuple(range(1, voters + 1))
        for node_id in peers:
            self.add_node(node_id, peers)

    def add_node(
        self,
        node_id: int,
        peers: tuple[int, ...] = (),
        log: MemoryGroupLog | None = None,
        **overrides: Any,
    ) -> RaftGroup:
        """Start a node; with peers=() it is a node to be added to the group later."""
        config = RaftConfig(node_id, **{**self.config, **overrides})
        log = MemoryGroupLog() if log is None else log
        node = RaftGroup(config, log, random.Random(self.seed * 1000 + node_id), peers)
        self.nodes[node_id] = node
        self.logs[node_id] = log
        self.applied[node_id] = []
        self.applied_index[node_id] = 0
        self.installed[node_id] = []
        self.read_states[node_id] = []
        self.process()
        return node

    # -- the driver ----------------------------------------------------------------
    def process(self) -> None:
        for node_id, node in self.nodes.items():
            while node.has_ready():
                ready = node.ready()
                self._execute(node_id, ready)
                node.advance(ready)

    def _execute(self, node_id: int, ready: Ready) -> None:
        log = self.logs[node_id]
        ready.write_to(log)
        log.sync()
        self.queue.extend(ready.messages)
        self.sent.extend(ready.messages)
        if ready.snapshot is not None:
            self.installed[node_id].append(ready.snapshot)
            self.applied_index[node_id] = ready.snapshot.index
        for entry in ready.committed:
            assert entry.index == self.applied_index[node_id] + 1, "applied out of order"
            self.applied_index[node_id] = entry.index
            self.applied[node_id].append(entry)
        self.read_states[node_id].extend(ready.read_states)

    # -- the network ---------------------------------------------------------------
    def isolate(self, *node_ids: int) -> None:
        self.isolated.update(node_ids)

    def heal(self) -> None:
        self.isolated.clear()

    def _lost(self, m: Message, drop: Drop | None) -> bool:
        return (
            m.frm in self.isolated
            or m.to in self.isolated
            or m.to not in self.nodes
            or (drop is not None and drop(m))
        )

    def deliver(self, drop: Drop | None = None, rounds: int | None = None) -> list[Message]:
        """Deliver queued messages, and the ones they cause, round by round."""
        delivered: list[Message] = []
        self.process()
        done = 0
        while self.queue and (rounds is None or done < rounds):
            done += 1
            assert done < 1000, "the network never went quiet"
            batch, self.queue = self.queue, []
            for m in batch:
                if self._lost(m, drop):
                    self.dropped.append(m)
                    continue
                self.nodes[m.to].step(m)
                delivered.append(m)
                self.delivered.append(m)
            self.process()
        return delivered

    def tick(self, *node_ids: int, times: int = 1, drop: Drop | None = None) -> None:
        """Tick the given nodes (all by default), delivering after each round."""
        for _ in range(times):
            for node_id in node_ids or tuple(self.nodes):
                self.nodes[node_id].tick()
            self.deliver(drop)

    # -- conveniences --------------------------------------------------------------
    def elect(self, node_id: int) -> RaftGroup:
        node = self.nodes[node_id]
        node.campaign()
        self.deliver()
        assert node.is_leader
        return node

    def tick_until_leader(self, *node_ids: int, limit: int = 200) -> RaftGroup:
        among = node_ids or tuple(self.nodes)
        for _ in range(limit):
            self.tick(*among)
            leaders = [self.nodes[i] for i in among if self.nodes[i].is_leader]
            if leaders:
                assert len(leaders) == 1
                return leaders[0]
        raise AssertionError(f"no leader among {among} after {limit} ticks")


def log_terms(node: RaftGroup) -> list[tuple[int, int]]:
    """(index, term) of every entry the node holds (after its snapshot)."""
    log = node.log
    return [(e.index, e.term) for e in log.slice(log.first_index(), log.last_index() + 1)]


def sent_since(c: Cluster, mark: int, kind: MessageType, to: int | None = None) -> list[Message]:
    return [m for m in c.sent[mark:] if m.type is kind and (to is None or m.to == to)]


def step_queue_without_processing(c: Cluster) -> None:
    """Deliver what is queued but run no Ready: committed, not yet applied."""
    batch, c.queue = c.queue, []
    for m in batch:
        c.nodes[m.to].step(m)


# -- 1. elections -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_three_nodes_elect_exactly_one_leader_whose_term_starts_with_a_noop(seed: int) -> None:
    c = Cluster(3, seed=seed)
    leader = c.tick_until_leader()

    assert [n.id for n in c.nodes.values() if n.is_leader] == [leader.id]
    for node in c.nodes.values():
        assert node.term == leader.term
        assert node.leader == leader.id
        if node is not leader:
            assert node.role is Role.FOLLOWER
    # The bootstrap wrote entries 1..3 (term 1); the leader's first entry of
    # its term is an empty normal entry, committed and applied everywhere.
    own = [e for e in leader.log.slice(1, leader.log.last_index() + 1) if e.term == leader.term]
    noop = Entry(4, leader.term, EntryKind.NORMAL, b"")
    assert own == [noop]
    assert leader.log.committed == 4
    assert c.applied[leader.id][-1] == noop
    # A follower whose ack arrived after the commit moved learns the commit
    # index from the next heartbeat.
    c.tick(leader.id)
    for node_id in c.nodes:
        assert c.applied[node_id][-1] == noop


def test_campaign_elects_the_node_that_asked() -> None:
    c = Cluster(3)
    leader = c.elect(2)
    assert leader.term == 2  # the bootstrap is term 1
    assert c.nodes[1].leader == c.nodes[3].leader == 2
    assert not c.nodes[1].is_leader and not c.nodes[3].is_leader


def test_a_single_node_group_commits_an_entry_once_it_is_on_its_disk() -> None:
    c = Cluster(1)
    node = c.tick_until_leader()
    assert node.id == 1 and node.term == 2
    entry = node.propose(b"solo")
    ready = node.ready()
    assert ready.entries == [entry] and not ready.committed
    assert node.log.committed < entry.index  # not on a majority of disks yet
    c.logs[1].append(ready.entries)
    c.logs[1].sync()
    node.advance(ready)
    assert node.log.committed == entry.index  # its own disk is a quorum
    c.process()
    assert c.applied[1][-1] == entry
    assert c.sent == []


def test_a_leader_does_not_count_itself_for_entries_not_yet_on_its_disk() -> None:
    # Five nodes: the leader and two followers hold the entry, but the
    # leader has not synced it, so only two disks do and it is not committed.
    c = Cluster(5)
    leader = c.elect(1)
    c.isolate(4)
    c.isolate(5)
    entry = leader.propose(b"x")
    ready = leader.ready()  # the appends leave before the leader's sync
    for follower in (2, 3):  # they sync and acknowledge
        for m in ready.messages:
            if m.to == follower:
                c.nodes[follower].step(m)
        follower_ready = c.nodes[follower].ready()
        c._execute(follower, follower_ready)
        c.nodes[follower].advance(follower_ready)
    for ack in [m for m in c.queue if m.to == 1]:
        leader.step(ack)
    assert leader.progress[2].match == leader.progress[3].match == entry.index
    assert leader.log.committed < entry.index
    c.logs[1].append(ready.entries)
    c.logs[1].sync()
    leader.advance(ready)
    assert leader.log.committed == entry.index


# -- 2. pre-vote ----------------------------------------------------------------------------


def isolate_a_follower_for_a_while(pre_vote: bool) -> tuple[Cluster, int]:
    c = Cluster(3, pre_vote=pre_vote)
    term = c.elect(1).term
    c.isolate(3)
    c.tick(times=5 * ELECTION_TICK)
    assert c.nodes[1].is_leader and c.nodes[1].term == term  # node 2 kept it alive
    return c, term


def test_pre_vote_keeps_an_isolated_follower_from_raising_its_term() -> None:
    c, term = isolate_a_follower_for_a_while(pre_vote=True)
    lonely = c.nodes[3]
    assert lonely.term == term
    tried = [m for m in c.dropped if m.frm == 3]
    assert tried and {m.type for m in tried} == {MessageType.PRE_VOTE}
    assert all(m.term == term + 1 for m in tried)  # asked for the next term, never took it

    c.heal()
    for _ in range(5 * ELECTION_TICK):
        c.tick()
        assert c.nodes[1].is_leader and c.nodes[1].term == term  # not disrupted
    assert lonely.role is Role.FOLLOWER and lonely.leader == 1 and lonely.term == term


def test_without_pre_vote_the_isolated_follower_inflates_its_term_and_disrupts() -> None:
    c, term = isolate_a_follower_for_a_while(pre_vote=False)
    lonely = c.nodes[3]
    assert lonely.term >= term + 2  # one new term per election timeout
    assert any(m.type is MessageType.VOTE and m.frm == 3 for m in c.dropped)

    c.heal()
    c.tick()  # the leader's heartbeat meets the higher term and deposes the leader
    assert not c.nodes[1].is_leader
    assert c.nodes[1].term == lonely.term > term
    leader = c.tick_until_leader()
    assert leader.term > term


# -- 3. check-quorum and leader stickiness ------------------------------------------------


def test_check_quorum_leader_cut_off_from_every_follower_steps_down() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    term = leader.term
    c.isolate(1)
    stepped_down_at = None
    for tick in range(1, 3 * ELECTION_TICK):
        c.tick(1)
        if not leader.is_leader:
            stepped_down_at = tick
            break
    assert stepped_down_at is not None
    # The acks of the no-op count for the first window; the next one is empty.
    assert ELECTION_TICK <= stepped_down_at <= 2 * ELECTION_TICK
    assert leader.role is Role.FOLLOWER
    assert leader.term == term  # stepping down does not start a term
    assert leader.leader == NO_NODE


def test_without_check_quorum_a_cut_off_leader_stays_leader() -> None:
    c = Cluster(3, check_quorum=False)
    leader = c.elect(1)
    c.isolate(1)
    c.tick(1, times=10 * ELECTION_TICK)
    assert leader.is_leader


def vote_request(c: Cluster, frm: int, to: int, term: int, context: bytes = b"") -> Message:
    log = c.nodes[frm].log
    return Message(
        MessageType.VOTE, 0, frm, to, term,
        index=log.last_index(), log_term=log.last_term(), context=context,
    )  # fmt: skip


def test_leader_stickiness_a_follower_that_hears_its_leader_ignores_a_vote_request() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    c.tick(1)  # a heartbeat: node 2 heard from its leader just now
    follower = c.nodes[2]
    term, vote = follower.term, follower.vote
    assert not follower.has_ready()

    follower.step(vote_request(c, 3, 2, term + 1))
    assert follower.term == term and follower.vote == vote
    assert follower.leader == 1
    assert not follower.has_ready()  # no response, nothing to persist

    # A leadership transfer overrides stickiness.
    follower.step(vote_request(c, 3, 2, term + 1, TRANSFER_CONTEXT))
    assert follower.term == term + 1 and follower.vote == 3
    ready = follower.ready()
    follower.advance(ready)
    responses = [m for m in ready.messages if m.type is MessageType.VOTE_RESP]
    assert [(m.to, m.term, m.reject) for m in responses] == [(3, term + 1, False)]
    assert ready.hard_state is not None and ready.hard_state.vote == 3
    assert leader.is_leader  # (node 1 has not heard of it yet)


def test_a_follower_whose_leader_went_silent_grants_the_same_vote_request() -> None:
    c = Cluster(3)
    c.elect(1)
    follower = c.nodes[2]
    term = follower.term
    c.isolate(2)
    c.tick(2, times=ELECTION_TICK)  # a whole election timeout without the leader
    c.heal()
    follower.step(vote_request(c, 3, 2, term + 1))
    assert follower.term == term + 1 and follower.vote == 3


# -- 4. replication and commit --------------------------------------------------------------


def test_an_entry_commits_once_a_majority_holds_it() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    c.isolate(3)
    entry = leader.propose(b"a")
    assert leader.log.committed < entry.index

    c.deliver(rounds=1)  # node 2 has the entry; its ack is still in flight
    assert c.nodes[2].log.last_index() == entry.index
    assert leader.log.committed < entry.index
    assert [m.type for m in c.queue if m.frm == 2] == [APPEND_RESP]

    c.deliver()
    assert leader.log.committed == entry.index
    assert c.nodes[2].log.committed == entry.index  # told by an empty append
    assert c.applied[1][-1] == entry and c.applied[2][-1] == entry
    assert c.nodes[3].log.last_index() < entry.index


def test_no_commit_without_a_majority() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    c.isolate(2, 3)
    entry = leader.propose(b"a")
    c.deliver()
    assert leader.log.committed < entry.index
    assert entry not in c.applied[1]
    c.heal()
    c.tick(1)  # heartbeat -> response -> the append is sent again
    assert leader.log.committed == entry.index


def figure_8(fault: Fault | None) -> tuple[Cluster, Entry]:
    """A new leader (node 1, term 4) holds an entry of term 2 at index 5 that
    every node holds, but its own no-op (6@4) has reached nobody.

    max_message_bytes=1 puts one entry per append so that the old entry
    and the no-op travel apart; the no-op is held back from any node that
    already has index 5."""
    c = Cluster(3, pre_vote=False, check_quorum=False, max_message_bytes=1, fault=fault)
    c.elect(1)  # term 2, no-op 4@2 committed
    old = c.nodes[1].propose(b"old")  # 5@2, reaches nobody
    c.deliver(drop=lambda m: m.frm == 1)

    # Node 2 (log ends 4@2) runs for term 3; only node 1 hears it: node 1
    # steps down and refuses (its log is longer). Node 2 cannot win.
    c.nodes[2].campaign()
    c.deliver(drop=lambda m: 3 in (m.frm, m.to))
    assert c.nodes[1].role is Role.FOLLOWER and c.nodes[1].term == 3
    assert not c.nodes[2].is_leader

    c.nodes[1].campaign()

    def hold_noop(m: Message) -> bool:
        return (
            m.type is APPEND
            and any(e.term == 4 for e in m.entries)
            and c.nodes[m.to].log.last_index() >= old.index
        )

    c.deliver(drop=hold_noop)
    leader = c.nodes[1]
    assert leader.is_leader and leader.term == 4
    assert leader.log.last_index() == 6 and leader.log.term(6) == 4
    for node in c.nodes.values():
        assert node.log.term(old.index) == 2
    assert leader.progress[2].match == leader.progress[3].match == old.index
    return c, old


def test_an_old_term_entry_on_every_node_does_not_commit_by_counting() -> None:
    c, old = figure_8(fault=None)
    leader = c.nodes[1]
    assert leader.log.committed == old.index - 1  # §5.4.2: not by counting replicas
    assert all(old not in applied for applied in c.applied.values())

    c.tick(1, times=2)  # the no-op gets through; committing it commits the old entry too
    assert leader.log.committed == 6
    for node_id in c.nodes:
        assert [e.index for e in c.applied[node_id][-2:]] == [5, 6]
        assert c.applied[node_id][-2] == old


def test_with_the_commit_old_term_fault_the_same_case_commits_early() -> None:
    c, old = figure_8(fault=Fault.COMMIT_OLD_TERM)
    assert c.nodes[1].log.committed == old.index
    assert c.applied[1][-1] == old


# -- 5. pipelining and batching ---------------------------------------------------------------


def test_pipelining_fills_the_window_then_waits_for_an_ack() -> None:
    c = Cluster(3, max_inflight=4, max_message_bytes=2)  # one entry per append
    leader = c.elect(1)
    progress = leader.progress[2]
    assert progress.state is ProgressState.REPLICATE
    c.isolate(3)

    start = len(c.sent)
    for i in range(10):
        leader.propose(b"p%d" % i)
    c.process()
    appends = [m for m in c.queue if m.type is APPEND and m.to == 2]
    assert len(appends) == 4  # no acknowledgement yet: the window is full
    assert [e.data for m in appends for e in m.entries] == [b"p0", b"p1", b"p2", b"p3"]
    assert progress.is_paused(4) and len(progress.inflight) == 4

    c.deliver(rounds=1)  # node 2 receives the four; its four acks are in flight
    acks = [m for m in c.queue if m.type is APPEND_RESP and m.frm == 2]
    assert len(acks) == 4
    assert sent_since(c, start, APPEND, to=2) == appends  # still nothing more sent

    c.queue = [acks[0]]  # only the first ack arrives
    mark = len(c.sent)
    c.deliver(rounds=1)
    more = sent_since(c, mark, APPEND, to=2)
    assert [[e.data for e in m.entries] for m in more] == [[b"p4"]]  # one slot, one append

    c.deliver()
    c.tick(1, times=3)
    assert c.nodes[2].log.last_index() == leader.log.last_index()
    assert leader.log.committed == leader.log.last_index()


def test_a_batch_of_proposals_travels_in_one_append() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    datas = [b"a", b"b", b"c", b"d", b"e"]
    entries = leader.propose_batch(datas)
    assert [e.index for e in entries] == [5, 6, 7, 8, 9]
    assert {e.term for e in entries} == {leader.term}
    c.process()
    for follower in (2, 3):
        appends = [m for m in c.queue if m.type is APPEND and m.to == follower]
        assert len(appends) == 1
        assert list(appends[0].entries) == entries
    c.deliver()
    assert leader.log.committed == 9
    assert c.applied[3][-5:] == entries


def test_max_message_bytes_bounds_the_entries_of_one_append() -> None:
    c = Cluster(3, max_message_bytes=10)
    leader = c.elect(1)
    leader.propose_batch([b"x" * 4] * 4 + [b"y" * 25, b"z"])
    c.process()
    appends = [m for m in c.queue if m.type is APPEND and m.to == 2]
    assert [len(m.entries) for m in appends] == [2, 2, 1, 1]
    for m in appends:
        assert entries_size(m.entries) <= 10 or len(m.entries) == 1
    assert [e.data for m in appends for e in m.entries] == [b"x" * 4] * 4 + [b"y" * 25, b"z"]
    c.deliver()
    assert c.nodes[2].log.last_index() == leader.log.last_index() == leader.log.committed


# -- 6. fast back-off ---------------------------------------------------------------------------


def test_fast_backoff_repairs_a_long_divergent_suffix_in_few_rejections() -> None:
    c = Cluster(3)
    old = c.elect(1)
    c.isolate(1)
    for i in range(50):
        old.propose(b"stale-%d" % i)  # 5..54 @2, on node 1 only
    c.deliver()
    assert old.log.last_index() == 54 and old.log.term(54) == 2

    first = c.tick_until_leader(2, 3)  # term 3
    for i in range(60):
        first.propose(b"new-%d" % i)
    c.deliver()
    other = 5 - first.id
    first.transfer_leadership(other)  # term 4: its progress for node 1 starts at its end
    c.deliver()
    leader = c.nodes[other]
    assert leader.is_leader and leader.term == 4
    assert leader.log.last_index() == 66

    mark = len(c.delivered)
    c.heal()
    c.tick(leader.id, times=3)
    rejections = [
        m for m in c.delivered[mark:] if m.type is APPEND_RESP and m.frm == 1 and m.reject
    ]
    # One term to skip on the follower (2) and two on the leader (3, 4):
    # one step each way, not one per entry (that would be ~60 rejections).
    assert 1 <= len(rejections) <= 3
    assert log_terms(old) == log_terms(leader)
    assert old.role is Role.FOLLOWER and old.leader == leader.id
    assert old.log.committed == leader.log.committed


# -- 7. ReadIndex --------------------------------------------------------------------------------


def no_heartbeat_acks(m: Message) -> bool:
    return m.type is HEARTBEAT_RESP


def test_read_index_on_the_leader_needs_a_quorum_of_heartbeat_acks() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    write = leader.propose(b"w")
    c.deliver()

    leader.read_index(b"r1")
    c.deliver(drop=no_heartbeat_acks)
    assert c.read_states[1] == []
    lost = [m for m in c.dropped if m.type is HEARTBEAT_RESP]
    assert sorted(m.frm for m in lost) == [2, 3] and all(m.context for m in lost)

    later = leader.propose(b"later")  # commits before the read is confirmed
    c.deliver(drop=no_heartbeat_acks)
    assert leader.log.committed == later.index
    assert c.read_states[1] == []

    c.tick(1)  # the next heartbeat carries the pending read; acks come back
    assert c.read_states[1] == [ReadState(write.index, b"r1")]  # the commit when asked


def test_read_index_on_a_follower_is_forwarded_and_answered() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    write = leader.propose(b"w")
    c.deliver()

    c.nodes[2].read_index(b"f1")
    c.deliver(drop=no_heartbeat_acks)
    forwarded = [m for m in c.delivered if m.type is MessageType.READ_INDEX]
    assert [(m.frm, m.to, m.context) for m in forwarded] == [(2, 1, b"f1")]
    assert c.read_states[2] == []  # the leader waits for its quorum here too

    c.tick(1)
    assert c.read_states[2] == [ReadState(write.index, b"f1")]
    assert c.read_states[1] == []  # the leader's driver is not the reader


def test_a_new_leader_holds_reads_until_an_entry_of_its_term_commits() -> None:
    c = Cluster(3)
    c.nodes[1].campaign()
    c.deliver(drop=lambda m: m.type is APPEND_RESP)
    leader = c.nodes[1]
    assert leader.is_leader and leader.log.committed == 3  # its no-op (4) is not committed

    leader.read_index(b"early")
    c.deliver(drop=lambda m: m.type is APPEND_RESP)
    c.tick(1, times=2, drop=lambda m: m.type is APPEND_RESP)  # heartbeats are acked
    assert c.read_states[1] == []
    assert leader.log.committed == 3

    c.tick(1)  # the no-op commits, then the read gets its quorum
    assert leader.log.committed == 4
    assert c.read_states[1] == [ReadState(4, b"early")]


def test_read_index_without_a_known_leader_raises_not_leader() -> None:
    c = Cluster(3)
    with pytest.raises(NotLeader) as excinfo:
        c.nodes[2].read_index(b"x")
    assert excinfo.value.leader_hint is None


# -- 8. leadership transfer ----------------------------------------------------------------------


def test_transfer_to_an_up_to_date_follower() -> None:
    c = Cluster(3)
    old = c.elect(1)
    term = old.term
    mark = len(c.sent)
    old.transfer_leadership(2)
    c.deliver()
    timeouts = sent_since(c, mark, MessageType.TIMEOUT_NOW)
    assert [(m.frm, m.to) for m in timeouts] == [(1, 2)]
    new = c.nodes[2]
    assert new.is_leader and new.term == term + 1
    assert old.role is Role.FOLLOWER and old.leader == 2
    assert c.nodes[3].leader == 2
    votes = sent_since(c, mark, MessageType.VOTE)
    assert votes and all(m.context == TRANSFER_CONTEXT for m in votes)


def test_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    c = Cluster(3)
    old = c.elect(1)
    term = old.term
    c.isolate(3)
    written = [old.propose(b"w%d" % i) for i in range(3)]
    c.deliver()
    assert old.log.committed == written[-1].index
    c.heal()

    mark = len(c.delivered)
    old.transfer_leadership(3)
    c.deliver()
    new = c.nodes[3]
    assert new.is_leader and new.term == term + 1
    events = [
        (m.type, m.index, m.reject)
        for m in c.delivered[mark:]
        if m.type in (APPEND_RESP, MessageType.TIMEOUT_NOW) and 3 in (m.frm, m.to)
    ]
    timeout_at = events.index((MessageType.TIMEOUT_NOW, 0, False))
    caught_up = events.index((APPEND_RESP, written[-1].index, False))
    assert caught_up < timeout_at  # TIMEOUT_NOW only once its log is complete
    assert [e for e in new.log.slice(1, new.log.last_index() + 1) if e in written] == written


def test_proposals_are_refused_during_a_transfer_and_resume_when_it_is_abandoned() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    c.isolate(3)
    leader.transfer_leadership(3)
    with pytest.raises(ProposalDropped):
        leader.propose(b"during")
    with pytest.raises(ProposalDropped):
        leader.propose_membership_change(ConfChange(ConfChangeKind.ADD_LEARNER, 4))

    c.tick(1, times=ELECTION_TICK - 1)
    with pytest.raises(ProposalDropped):
        leader.propose(b"still during")
    c.tick(1)  # one election timeout: the transfer is abandoned
    assert leader.is_leader
    entry = leader.propose(b"after")
    c.deliver()
    assert leader.log.committed == entry.index


def test_transfer_to_a_non_voter_or_from_a_follower_is_refused() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    with pytest.raises(RaftError, match="not a voter") as excinfo:
        leader.transfer_leadership(9)
    assert type(excinfo.value) is RaftError
    with pytest.raises(NotLeader) as not_leader:
        c.nodes[2].transfer_leadership(3)
    assert not_leader.value.leader_hint == 1
    leader.transfer_leadership(1)  # to itself: nothing to do
    assert leader.is_leader and leader.transferee == NO_NODE
    leader.propose(b"fine")


# -- 9. learners ---------------------------------------------------------------------------------


def test_a_learner_receives_the_log_but_never_campaigns_nor_counts_until_promoted() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    learner = c.add_node(4)
    leader.propose_membership_change(ConfChange(ConfChangeKind.ADD_LEARNER, 4))
    c.deliver()
    c.tick(1, times=2)
    assert learner.conf == ConfState(frozenset({1, 2, 3}), frozenset({4}))
    assert log_terms(learner) == log_terms(leader)
    assert c.applied[4] == c.applied[1]
    with pytest.raises(RaftError, match="not a voter"):
        leader.transfer_leadership(4)

    # Alone, for many election timeouts: never a (pre-)vote request.
    mark = len(c.sent)
    c.isolate(4)
    learner.campaign()
    c.tick(4, times=20 * ELECTION_TICK)
    assert [m for m in c.sent[mark:] if m.frm == 4] == []
    assert learner.role is Role.FOLLOWER and learner.term == leader.term

    # Two voters of three down: the learner's ack does not make a quorum.
    c.heal()
    c.isolate(2, 3)
    entry = leader.propose(b"learner only")
    c.deliver()
    assert learner.log.last_index() == entry.index
    assert leader.progress[4].match == entry.index
    assert leader.log.committed < entry.index
    c.heal()
    c.tick(1)
    assert leader.log.committed == entry.index

    # Promoted: four voters, quorum three, and its ack is the third.
    leader.propose_membership_change(ConfChange(ConfChangeKind.ADD_VOTER, 4))
    c.deliver()
    for node in c.nodes.values():
        assert node.conf == ConfState(frozenset({1, 2, 3, 4}))
    c.isolate(3, 4)
    entry = leader.propose(b"needs three")
    c.deliver()
    assert leader.log.committed < entry.index  # leader + node 2 are two of four
    c.heal()
    c.isolate(3)
    c.tick(1)
    assert leader.log.committed == entry.index  # node 4 counted


# -- 10. membership --------------------------------------------------------------------------------


def test_a_second_membership_change_is_refused_until_the_first_is_applied() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    c.add_node(4)
    c.add_node(5)
    first = leader.propose_membership_change(ConfChange(ConfChangeKind.ADD_LEARNER, 4))
    with pytest.raises(ProposalDropped):
        leader.propose_membership_change(ConfChange(ConfChangeKind.ADD_LEARNER, 5))

    c.deliver(rounds=1)  # acks in flight
    step_queue_without_processing(c)
    assert leader.log.committed >= first.index > leader.log.applied
    with pytest.raises(ProposalDropped):  # committed is not enough
        leader.propose_membership_change(ConfChange(ConfChangeKind.ADD_LEARNER, 5))

    c.deliver()
    assert leader.conf.learners == {4}
    leader.propose_membership_change(ConfChange(ConfChangeKind.ADD_LEARNER, 5))
    c.deliver()
    assert leader.conf.learners == {4, 5}


def test_a_change_that_leaves_no_voter_is_refused() -> None:
    c = Cluster(1)
    leader = c.elect(1)
    with pytest.raises(RaftError, match="no voter"):
        leader.propose_membership_change(ConfChange(ConfChangeKind.REMOVE_NODE, 1))


def test_removing_the_leader_makes_it_step_down_once_applied() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    removal = leader.propose_membership_change(ConfChange(ConfChangeKind.REMOVE_NODE, 1))
    c.deliver(rounds=1)
    step_queue_without_processing(c)
    assert leader.log.committed >= removal.index
    assert leader.is_leader  # committed, not applied yet

    c.deliver()
    assert leader.role is Role.FOLLOWER and leader.leader == NO_NODE
    for node in c.nodes.values():
        assert node.conf == ConfState(frozenset({2, 3}))

    mark = len(c.sent)
    new = c.tick_until_leader()
    assert new.id in (2, 3) and new.term == leader.term + 1
    assert not [m for m in c.sent[mark:] if m.frm == 1 and m.type in VOTE_TYPES]
    entry = new.propose(b"without 1")
    c.deliver()
    assert new.log.committed == entry.index
    assert c.nodes[1].log.last_index() < entry.index  # no longer replicated to


def test_a_node_added_later_learns_the_membership_from_the_log_and_can_lead() -> None:
    c = Cluster(3)
    leader = c.elect(1)
    late = c.add_node(4)  # peers=(): an empty log, no membership
    assert late.conf == ConfState(frozenset())
    leader.propose_membership_change(ConfChange(ConfChangeKind.ADD_VOTER, 4))
    c.deliver()
    c.tick(1, times=2)

    assert late.conf == ConfState(frozenset({1, 2, 3, 4}))
    bootstrap = [ConfChange(ConfChangeKind.ADD_VOTER, n).encode() for n in (1, 2, 3)]
    assert [(e.index, e.term, e.kind, e.data) for e in c.applied[4][:3]] == [
        (i, 1, EntryKind.CONF_CHANGE, data) for i, data in enumerate(bootstrap, start=1)
    ]
    assert log_terms(late) == log_terms(leader)

    leader.transfer_leadership(4)
    c.deliver()
    assert late.is_leader and late.term == leader.term
    entry = late.propose(b"from 4")
    c.deliver()
    for node_id in c.nodes:
        assert c.applied[node_id][-1] == entry


# -- 11. snapshots ---------------------------------------------------------------------------------

SNAPSHOT_DATA = bytes(range(30))


def cut_off_follower_behind_a_snapshot() -> tuple[Cluster, SnapshotMeta, list[Entry]]:
    """Node 3 misses entries 5..12; the leader snapshots at 9 and compacts."""
    c = Cluster(3, snapshot_chunk_bytes=8)
    leader = c.elect(1)
    c.isolate(3)
    for i in range(5):
        leader.propose(b"a%d" % i)
    c.deliver()
    at_applied = leader.snapshot_meta_at_applied()
    assert at_applied is not None
    index, term, conf = at_applied
    assert index == leader.log.committed == 9
    snapshot = SnapshotMeta(index, term, conf)
    c.logs[1].save_snapshot(snapshot, lambda sink: sink.write(SNAPSHOT_DATA))
    c.logs[1].compact(index)
    assert leader.log.first_index() == 10
    after = [leader.propose(b"b%d" % i) for i in range(3)]  # 10..12
    c.deliver()
    assert c.nodes[3].log.last_index() == 4
    return c, snapshot, after


def test_a_lagging_follower_gets_the_snapshot_in_chunks_then_appends() -> None:
    c, snapshot, after = cut_off_follower_behind_a_snapshot()
    leader, follower = c.nodes[1], c.nodes[3]
    mark = len(c.delivered)
    c.heal()
    c.tick(1)

    chunks = [m for m in c.delivered[mark:] if m.type is SNAPSHOT]
    assert [(m.offset, len(m.data), m.done) for m in chunks] == [
        (0, 8, False), (8, 8, False), (16, 8, False), (24, 6, True),
    ]  # fmt: skip
    assert all(m.snapshot == snapshot for m in chunks)
    assert b"".join(m.data for m in chunks) == SNAPSHOT_DATA
    assert c.installed[3] == [snapshot]  # handed to the driver in Ready.snapshot
    assert c.logs[3].open_snapshot().read() == SNAPSHOT_DATA  # assembled by the log
    assert follower.conf == snapshot.conf

    appends = [m for m in c.delivered[mark:] if m.type is APPEND and m.to == 3 and m.entries]
    assert appends and appends[0].index == snapshot.index
    assert c.applied[3][-3:] == after
    assert follower.log.first_index() == 10
    assert log_terms(follower) == log_terms(leader)
    assert follower.log.committed == leader.log.committed == 12


def test_a_lost_snapshot_chunk_is_sent_again_after_an_election_timeout() -> None:
    c, snapshot, after = cut_off_follower_behind_a_snapshot()
    lost: list[Message] = []

    def lose_second_chunk_once(m: Message) -> bool:
        if m.type is SNAPSHOT and m.offset == 8 and not lost:
            lost.append(m)
            return True
        return False

    c.heal()
    c.tick(1, drop=lose_second_chunk_once)
    assert len(lost) == 1 and c.installed[3] == []
    mark = len(c.sent)
    c.tick(1, times=ELECTION_TICK - 1)
    assert sent_since(c, mark, SNAPSHOT) == []  # nothing resent yet (nor restarted)
    c.tick(1)
    resent = sent_since(c, mark, SNAPSHOT)
    assert resent[0].offset == 8  # resumes at the lost chunk
    assert [m.offset for m in resent] == [8, 16, 24]
    assert c.installed[3] == [snapshot]
    assert c.applied[3][-3:] == after


def follower_with_entries_of_term_2(last: int) -> tuple[Cluster, RaftGroup]:
    """Node 2 of a fresh group, fed entries 4..last of term 2 by leader 1
    (commit 3), then left alone: the other nodes take no part."""
    c = Cluster(3)
    follower = c.nodes[2]
    entries = [Entry(i, 2, EntryKind.NORMAL, b"e%d" % i) for i in range(4, last + 1)]
    follower.step(Message(APPEND, 0, 1, 2, 2, index=3, log_term=1, commit=3, entries=entries))
    c.process()
    c.queue.clear()
    assert follower.log.last_index() == last and follower.log.committed == 3
    return c, follower


def test_a_follower_that_already_holds_the_snapshot_index_only_moves_its_commit() -> None:
    c, follower = follower_with_entries_of_term_2(7)
    meta = SnapshotMeta(5, 2, ConfState(frozenset({1, 2, 3})))
    follower.step(Message(SNAPSHOT, 0, 1, 2, 2, snapshot=meta, data=b"s", done=True))
    c.process()
    assert c.installed[2] == []  # nothing to restore: the log has it
    assert follower.log.committed == 5
    assert follower.log.last_index() == 7  # entries after it are kept
    assert [e.index for e in c.applied[2][-2:]] == [4, 5]
    [response] = c.queue
    assert response.type is MessageType.SNAPSHOT_RESP and response.done


def test_a_matching_snapshot_is_acknowledged_only_up_to_what_was_checked() -> None:
    # Node 2 holds 4..10 of term 2 from the leader of term 2. A leader of
    # term 3 whose log shares (5, 2) but has other entries after it sends a
    # snapshot at 5: node 2 can vouch for index 5, not for 6..10.
    c, follower = follower_with_entries_of_term_2(10)
    meta = SnapshotMeta(5, 2, ConfState(frozenset({1, 2, 3})))
    follower.step(Message(SNAPSHOT, 0, 3, 2, 3, snapshot=meta, data=b"s", done=True))
    c.process()
    [response] = c.queue
    assert response.type is MessageType.SNAPSHOT_RESP and response.done
    assert response.index == 5


# -- 12. errors ------------------------------------------------------------------------------------


def test_not_leader_carries_the_known_leader() -> None:
    c = Cluster(3)
    with pytest.raises(NotLeader) as before:
        c.nodes[1].propose(b"x")
    assert before.value.leader_hint is None
    c.elect(1)
    with pytest.raises(NotLeader) as excinfo:
        c.nodes[2].propose(b"x")
    assert excinfo.value.leader_hint == 1 and excinfo.value.group == 0
    assert "node 1" in str(excinfo.value)
    with pytest.raises(NotLeader):
        c.nodes[3].propose_membership_change(ConfChange(ConfChangeKind.ADD_LEARNER, 4))


def test_ready_twice_without_advance_raises() -> None:
    node = RaftGroup(RaftConfig(1), MemoryGroupLog(), random.Random(0), peers=(1, 2, 3))
    ready = node.ready()
    with pytest.raises(RaftError, match="advance"):
        node.ready()
    node.advance(ready)
    node.ready()  # fine again


def test_raft_log_refuses_to_overwrite_a_committed_entry_or_leave_a_gap() -> None:
    log = RaftLog(MemoryGroupLog())
    log.append([Entry(1, 1), Entry(2, 1), Entry(3, 1)])
    log.commit_to(2)
    with pytest.raises(LogError, match="committed"):
        log.append([Entry(2, 2)])
    with pytest.raises(LogError, match="gap"):
        log.append([Entry(5, 1)])
    with pytest.raises(LogError):
        log.commit_to(4)  # past the end
    log.append([Entry(3, 2)])  # the uncommitted suffix may be replaced
    assert log.term(3) == 2 and log.last_index() == 3


def wire_message() -> Message:
    return Message(
        MessageType.SNAPSHOT, 7, 1, 2, 5, index=9, log_term=4, commit=8,
        entries=[
            Entry(9, 4, EntryKind.NORMAL, b"x"),
            Entry(10, 5, EntryKind.CONF_CHANGE, ConfChange(ConfChangeKind.ADD_VOTER, 3).encode()),
        ],
        reject=False, hint_index=1, hint_term=2, context=b"ctx",
        snapshot=SnapshotMeta(9, 4, ConfState(frozenset({1, 2}), frozenset({3}))),
        offset=16, data=b"chunk", done=True,
    )  # fmt: skip


def test_message_wire_round_trip() -> None:
    message = wire_message()
    raw = msgpack.unpackb(msgpack.packb(message.to_wire()))
    assert Message.from_wire(raw) == message


def _with(position: int, value: Any) -> Callable[[list[Any]], Any]:
    def mutate(wire: list[Any]) -> Any:
        wire = list(wire)
        wire[position] = value
        return wire

    return mutate


MALFORMED: dict[str, Callable[[list[Any]], Any]] = {
    "a tuple": tuple,
    "a dict": lambda wire: dict(enumerate(wire)),
    "one field short": lambda wire: wire[:-1],
    "one field too many": lambda wire: [*wire, 0],
    "negative term": _with(4, -1),
    "negative index": _with(5, -1),
    "negative commit": _with(7, -2),
    "negative hint": _with(10, -3),
    "negative offset": _with(14, -1),
    "term as str": _with(4, "5"),
    "term as float": _with(4, 5.0),
    "term as bool": _with(4, True),
    "group is None": _with(1, None),
    "entries not a list": _with(8, b""),
    "reject as int": _with(9, 1),
    "done is None": _with(16, None),
    "context as str": _with(12, "ctx"),
    "data as str": _with(15, "chunk"),
    "unknown type 99": _with(0, 99),
    "type 0": _with(0, 0),
    "type as str": _with(0, "APPEND"),
    "entry too short": _with(8, [[9, 4, 0]]),
    "entry negative index": _with(8, [[-9, 4, 0, b""]]),
    "entry unknown kind": _with(8, [[9, 4, 9, b""]]),
    "entry data as str": _with(8, [[9, 4, 0, "x"]]),
    "snapshot meta too short": _with(13, [9, 4]),
    "snapshot negative voter": _with(13, [9, 4, [[-1], []]]),
    "snapshot conf not a list": _with(13, [9, 4, "conf"]),
}


@pytest.mark.parametrize("mutation", list(MALFORMED), ids=list(MALFORMED))
def test_from_wire_rejects_malformed_messages(mutation: str) -> None:
    raw = MALFORMED[mutation](wire_message().to_wire())
    with pytest.raises(ProtocolError):
        Message.from_wire(raw)


@pytest.mark.parametrize(
    ("position", "value"),
    [(0, True), (0, 5.0), (8, [[9, 4, False, b""]]), (8, [[9, 4, 1.0, b""]])],
    ids=["type-bool", "type-float", "entry-kind-bool", "entry-kind-float"],
)
def test_from_wire_rejects_a_type_field_that_is_not_an_int(position: int, value: Any) -> None:
    raw = _with(position, value)(wire_message().to_wire())
    with pytest.raises(ProtocolError):
        Message.from_wire(raw)


def test_no_local_snapshot_while_a_leaders_snapshot_waits_to_be_installed() -> None:
    # A snapshot that arrives while the node's last Ready is being persisted
    # replaces the state machine at the next Ready: a snapshot of the state
    # machine taken now would describe an index the log no longer has.
    c, follower = follower_with_entries_of_term_2(7)
    applied = follower.snapshot_meta_at_applied()
    assert applied is not None and applied[0] == follower.log.applied
    meta = SnapshotMeta(12, 2, ConfState(frozenset({1, 2, 3})))
    follower.step(Message(SNAPSHOT, 0, 1, 2, 2, snapshot=meta, data=b"s", done=True))
    assert follower.snapshot_meta_at_applied() is None
    c.process()
    assert c.installed[2][-1] == meta
    assert follower.snapshot_meta_at_applied() == (12, 2, meta.conf)


UINT64 = st.integers(0, (1 << 64) - 1)
NODE_IDS = st.frozensets(UINT64, max_size=7)


@given(
    kind=st.sampled_from(MessageType),
    header=st.lists(UINT64, min_size=10, max_size=10),
    entries=st.lists(
        st.builds(Entry, UINT64, UINT64, st.sampled_from(EntryKind), st.binary(max_size=300)),
        max_size=8,
    ),
    snapshot=st.none()
    | st.builds(SnapshotMeta, UINT64, UINT64, st.builds(ConfState, NODE_IDS, NODE_IDS)),
    flags=st.tuples(st.booleans(), st.booleans()),
    context=st.binary(max_size=100),
    data=st.binary(max_size=1000),
)
@example(  # the largest header and metadata there are
    kind=MessageType.SNAPSHOT,
    header=[(1 << 64) - 1] * 10,
    entries=[],
    snapshot=SnapshotMeta(
        (1 << 64) - 1, (1 << 64) - 1, ConfState(frozenset({(1 << 64) - 1}), frozenset())
    ),
    flags=(True, True),
    context=b"",
    data=b"",
)
def test_approximate_bytes_bounds_the_encoded_size(
    kind: MessageType,
    header: list[int],
    entries: list[Entry],
    snapshot: SnapshotMeta | None,
    flags: tuple[bool, bool],
    context: bytes,
    data: bytes,
) -> None:
    group, frm, to, term, index, log_term, commit, hint_index, hint_term, offset = header
    message = Message(
        kind, group, frm, to, term, index, log_term, commit, entries, flags[0],
        hint_index, hint_term, context, snapshot, offset, data, flags[1],
    )  # fmt: skip
    assert len(msgpack.packb(message.to_wire())) <= message.approximate_bytes()


# -- 13. streamed snapshots ------------------------------------------------------------------------


class ChunkReadingLog(MemoryGroupLog):
    """Records every `read_snapshot` call: (offset, max_bytes, bytes returned)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[int, int, int]] = []

    def read_snapshot(self, offset: int, max_bytes: int) -> bytes:
        data = super().read_snapshot(offset, max_bytes)
        self.reads.append((offset, max_bytes, len(data)))
        return data


def test_the_leader_reads_each_snapshot_chunk_at_its_offset() -> None:
    # Sending an image of n bytes in chunks of c reads n bytes in n / c reads
    # (it used to read the whole image for every chunk: quadratic).
    c = Cluster(0, snapshot_chunk_bytes=8)
    counting = ChunkReadingLog()
    for node_id in (1, 2, 3):
        c.add_node(node_id, (1, 2, 3), log=counting if node_id == 1 else None)
    leader = c.elect(1)
    c.isolate(3)
    for i in range(5):
        leader.propose(b"a%d" % i)
    c.deliver()
    at_applied = leader.snapshot_meta_at_applied()
    assert at_applied is not None
    counting.save_snapshot(SnapshotMeta(*at_applied), lambda sink: sink.write(SNAPSHOT_DATA))
    counting.compact(at_applied[0])
    c.heal()
    c.tick(1)
    assert c.logs[3].open_snapshot().read() == SNAPSHOT_DATA
    assert counting.reads == [(0, 8, 8), (8, 8, 8), (16, 8, 8), (24, 8, 6)]


def test_a_follower_hands_each_chunk_to_its_log_in_the_ready() -> None:
    c, follower = follower_with_entries_of_term_2(5)
    meta = SnapshotMeta(9, 2, ConfState(frozenset({1, 2, 3})))
    follower.step(Message(SNAPSHOT, 0, 1, 2, 2, snapshot=meta, offset=0, data=b"abc"))
    ready = follower.ready()
    assert ready.snapshot_chunks == [SnapshotChunk(meta, 0, b"abc", False)]
    assert ready.snapshot is None and not ready.must_sync  # a lost chunk is sent again
    assert follower.incoming_snapshot == ((9, 2), 3)  # an offset, not the bytes
    c._execute(2, ready)
    follower.advance(ready)
    follower.step(Message(SNAPSHOT, 0, 1, 2, 2, snapshot=meta, offset=3, data=b"de", done=True))
    ready = follower.ready()
    assert ready.snapshot_chunks == [SnapshotChunk(meta, 3, b"de", True)]
    assert ready.snapshot == meta and ready.must_sync
    c._execute(2, ready)
    follower.advance(ready)
    assert c.logs[2].snapshot_meta() == meta
    assert c.logs[2].open_snapshot().read() == b"abcde"
    assert follower.log.first_index() == 10 and follower.log.committed == 9


def test_a_follower_whose_log_holds_the_snapshot_index_needs_no_image() -> None:
    _, follower = follower_with_entries_of_term_2(7)
    meta = SnapshotMeta(6, 2, ConfState(frozenset({1, 2, 3})))
    follower.step(Message(SNAPSHOT, 0, 1, 2, 2, snapshot=meta, offset=0, data=b"first part"))
    ready = follower.ready()
    assert ready.snapshot_chunks == [] and ready.snapshot is None
    [response] = ready.messages
    assert response.type is MessageType.SNAPSHOT_RESP and response.done and response.index == 6
    assert follower.log.committed == 6


def test_a_newer_snapshot_is_not_taken_while_one_waits_to_be_installed() -> None:
    c, follower = follower_with_entries_of_term_2(5)
    first = SnapshotMeta(9, 3, ConfState(frozenset({1, 2, 3})))
    newer = SnapshotMeta(12, 3, ConfState(frozenset({1, 2, 3})))
    follower.step(Message(SNAPSHOT, 0, 1, 2, 3, snapshot=first, data=b"nine", done=True))
    follower.step(Message(SNAPSHOT, 0, 1, 2, 3, snapshot=newer, data=b"twelve", done=True))
    ready = follower.ready()
    # The log gets one whole image, and installs that one.
    assert ready.snapshot == first
    assert ready.snapshot_chunks == [SnapshotChunk(first, 0, b"nine", True)]
    c._execute(2, ready)
    follower.advance(ready)
    follower.step(Message(SNAPSHOT, 0, 1, 2, 3, snapshot=newer, data=b"twelve", done=True))
    c.process()
    assert c.installed[2] == [first, newer]
    assert c.logs[2].open_snapshot().read() == b"twelve"
