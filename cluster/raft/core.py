"""The sans-IO Raft state machine of one group (`RaftGroup`).

No sockets, threads, clocks or files: time is `tick()`, input is `step()`
and the API calls, output is a `Ready` the driver executes before
`advance()`. The design follows etcd's raft package and the Raft
dissertation (Ongaro, 2014):

- elections with pre-vote (§9.6: a partitioned node does not inflate terms)
  and check-quorum (a leader that cannot hear a quorum steps down; a
  follower that hears its leader ignores vote requests: leader stickiness);
- replication with per-follower progress: probe (one append in flight until
  a match is found) and replicate (a window of `max_inflight` pipelined
  appends, each up to `max_message_bytes`), back-off on a mismatch skipping
  a whole term at a time (the follower's conflict hint);
- a leader commits by counting matches, and only entries of its own term
  (§5.4.2; earlier ones are committed indirectly);
- ReadIndex reads (§6.4): the commit index, confirmed by a quorum's
  heartbeat acknowledgements, once an entry of the current term is committed;
- leadership transfer (§3.10) with TIMEOUT_NOW;
- membership changes one server at a time (§4.1) that take effect when the
  entry is applied; at most one is pending, and a new leader waits for its
  whole log to be applied before accepting one;
- learners, which receive the log but neither vote nor count for commit;
- snapshots sent by chunks to a follower whose next entry is compacted:
  each chunk is read from the log at its offset (`LogReader.read_snapshot`),
  and a follower hands each chunk it accepts to its log in the `Ready`
  (`Ready.snapshot_chunks`), so no snapshot is held whole in memory here.

Invariants (checked by the deterministic simulation in tests/raft/):
at most one leader per term; logs that share an (index, term) are equal up
to it; a committed entry is in every later leader's log; no two nodes apply
different entries at one index.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from enum import Enum, IntEnum

from .errors import NotLeader, ProposalDropped, RaftError
from .raftlog import RaftLog
from .types import (
    NO_NODE,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    LogReader,
    Message,
    MessageType,
    ReadState,
    Ready,
    SnapshotChunk,
    SnapshotMeta,
)

TRANSFER_CONTEXT = b"transfer"
_PRE_VOTE, _ELECTION, _TRANSFER = "pre-vote", "election", "transfer"


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class TestFault(Enum):
    """Deliberately broken rules, switched on only by the simulation's
    mutation check to prove that it can find a violation."""

    VOTE_FOR_STALE_LOG = "vote-for-stale-log"
    """Grant votes without the election restriction (§5.4.1)."""
    COMMIT_OLD_TERM = "commit-old-term"
    """Commit entries of an earlier term by counting replicas (§5.4.2)."""
    TWO_VOTES_PER_TERM = "two-votes-per-term"
    """Grant a vote to anyone asking in the current term."""


@dataclass
class RaftConfig:
    """Tunables of one group on one node. Ticks are the driver's clock unit."""

    node_id: int
    group: int = 0
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight: int = 256
    max_message_bytes: int = 1 << 20
    max_uncommitted_bytes: int = 64 << 20
    max_committed_bytes: int = 16 << 20
    snapshot_chunk_bytes: int = 1 << 20
    applied: int | None = None
    """The state machine's applied index at start (None: the snapshot's)."""
    fault: TestFault | None = None

    def __post_init__(self) -> None:
        if self.node_id <= 0:
            raise ValueError("node ids are positive integers")
        if self.heartbeat_tick <= 0 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick > 0")


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Progress:
    """The leader's view of one follower (or learner)."""

    __slots__ = (
        "inflight",
        "match",
        "next",
        "paused",
        "recent_active",
        "snapshot_index",
        "snapshot_offset",
        "snapshot_sent_ticks",
        "state",
    )

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.paused = False
        self.recent_active = False
        self.inflight: deque[int] = deque()
        self.snapshot_index = 0
        self.snapshot_offset = 0
        self.snapshot_sent_ticks = 0

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.snapshot_index + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.paused = False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.paused = False
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.snapshot_index = index
        self.snapshot_offset = 0
        self.snapshot_sent_ticks = 0
        self.inflight.clear()

    def maybe_update(self, index: int) -> bool:
        updated = index > self.match
        if updated:
            self.match = index
            self.paused = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decrease(self, rejected: int, probe_from: int) -> bool:
        """A rejection of the append after `rejected`: step `next` back."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale rejection
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # not the probe we sent last
        self.next = max(min(rejected, probe_from + 1), self.match + 1, 1)
        self.paused = False
        return True

    def is_paused(self, max_inflight: int) -> bool:
        if self.state is ProgressState.PROBE:
            return self.paused
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= max_inflight
        return True


@dataclass
class _PendingRead:
    token: bytes
    context: bytes
    index: int
    requester: int
    acks: set[int]


class RaftGroup:
    """One group's Raft on one node. See the module docstring."""

    def __init__(
        self,
        config: RaftConfig,
        log: LogReader,
        rng: random.Random,
        peers: tuple[int, ...] = (),
    ) -> None:
        """Open a group on top of its stable `log`.

        Args:
            config: this node's id and tunables.
            log: the durable log (a fresh group has an empty one).
            rng: the source of randomized election timeouts (seeded in tests).
            peers: the initial voters of a group being created; ignored when
                the log is not empty. A node added later starts with ().
        """
        self.config = config
        self.id = config.node_id
        self.group = config.group
        self.rng = rng
        self.log = RaftLog(log, config.applied)
        hard = log.hard_state()
        self.term = hard.term
        self.vote = hard.vote
        self.conf = log.snapshot_meta().conf
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.leader = NO_NODE
        self.role = Role.FOLLOWER
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = config.election_tick
        self.votes: dict[int, bool] = {}
        self.progress: dict[int, Progress] = {}
        self.transferee = NO_NODE
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        self.snapshot_sends = 0
        """Snapshot transfers this node started as leader (each restart counts)."""
        self.pending_reads: deque[_PendingRead] = deque()
        self.read_tokens: dict[bytes, _PendingRead] = {}
        self.reads_waiting_for_commit: list[tuple[bytes, int]] = []
        self.read_sequence = 0
        self.incoming_snapshot: tuple[tuple[int, int], int] | None = None
        """(index, term) of the snapshot being received, and its bytes so far."""
        self._snapshot_chunks: list[SnapshotChunk] = []
        """Accepted chunks, for the driver to write (the next `Ready`)."""
        self._prev_hard = hard
        self._ready_outstanding = False
        self._pending_snapshot: SnapshotMeta | None = None
        self._broadcast_pending = False
        """Proposals were appended since the last `ready()`: it sends them."""

        if log.last_index() == 0 and log.snapshot_meta().index == 0 and peers:
            self._bootstrap(peers)
        else:
            self._replay_conf_changes()
        self._reset_election_timeout()

    # -- set-up ------------------------------------------------------------------
    def _bootstrap(self, peers: tuple[int, ...]) -> None:
        """A new group: its first entries add the initial voters, committed
        at term 1 on every initial member alike, so a node that joins later
        learns the membership from the log itself."""
        entries = [
            Entry(i, 1, EntryKind.CONF_CHANGE, ConfChange(ConfChangeKind.ADD_VOTER, node).encode())
            for i, node in enumerate(sorted(set(peers)), start=1)
        ]
        self.log.append(entries)
        self.log.committed = len(entries)
        self.term = max(self.term, 1)
        self.conf = ConfState(frozenset(peers))

    def _replay_conf_changes(self) -> None:
        """The membership as of the applied index: the snapshot's plus the
        changes in applied entries after it."""
        low = max(self.log.first_index(), self.log.stable.snapshot_meta().index + 1)
        high = self.log.applied
        while low <= high:
            batch = self.log.slice(low, high + 1, self.config.max_committed_bytes)
            for entry in batch:
                if entry.kind is EntryKind.CONF_CHANGE:
                    self.conf = self.conf.apply(ConfChange.decode(entry.data))
            low = batch[-1].index + 1

    # -- public state ---------------------------------------------------------------
    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def promotable(self) -> bool:
        return self.id in self.conf.voters

    def quorum(self) -> int:
        return len(self.conf.voters) // 2 + 1

    # -- roles -------------------------------------------------------------------
    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NO_NODE
        self.leader = NO_NODE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_election_timeout()
        self.votes = {}
        self.transferee = NO_NODE
        self.pending_reads.clear()
        self.read_tokens.clear()
        self.reads_waiting_for_commit.clear()
        self.uncommitted_bytes = 0
        self.progress = {}

    def _reset_election_timeout(self) -> None:
        tick = self.config.election_tick
        self.randomized_timeout = tick + self.rng.randrange(tick)

    def _become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self.leader = leader
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        # The term does not change, nor the vote: a pre-vote commits to nothing.
        self.votes = {}
        self.leader = NO_NODE
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.leader = self.id
        self.role = Role.LEADER
        last = self.log.last_index()
        for node in self.conf.members:
            self.progress[node] = Progress(last + 1)
        self.progress.setdefault(self.id, Progress(last + 1))
        mine = self.progress[self.id]
        mine.match = self.log.durable_last_index()
        mine.become_replicate()
        mine.recent_active = True
        # No configuration change until everything in the log is applied.
        self.pending_conf_index = last
        self._append_entries([Entry(0, 0)])
        self._broadcast_append()

    # -- time -------------------------------------------------------------------
    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            self._campaign(_PRE_VOTE if self.config.pre_vote else _ELECTION)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_tick:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                self._become_follower(self.term, NO_NODE)
                return
            self.transferee = NO_NODE  # a transfer that did not finish in time is abandoned
        if self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()
        for node, progress in self.progress.items():
            if progress.state is ProgressState.SNAPSHOT and node != self.id:
                progress.snapshot_sent_ticks += 1
                if progress.snapshot_sent_ticks >= self.config.election_tick:
                    self._send_snapshot_chunk(node, progress)

    def _quorum_active(self) -> bool:
        active = 0
        for node in self.conf.voters:
            progress = self.progress.get(node)
            if node == self.id or (progress is not None and progress.recent_active):
                active += 1
        for node, progress in self.progress.items():
            if node != self.id:
                progress.recent_active = False
        return active >= self.quorum()

    def leader_unreachable(self, node: int) -> None:
        """The driver saw the connection to `node` close (a crashed process's
        sockets are closed by its kernel). If `node` is our leader, forget it
        and let the election timer run out within a few ticks instead of a
        whole election timeout. Only timing changes: elections stay safe, and
        a network partition, which closes nothing, still takes the timeout."""
        if self.role is Role.LEADER or node != self.leader or not self.promotable():
            return
        self.leader = NO_NODE
        remaining = 1 + self.rng.randrange(3)
        self.election_elapsed = max(self.election_elapsed, self.randomized_timeout - remaining)

    # -- elections -----------------------------------------------------------------
    def campaign(self) -> None:
        """Start an election now (tests and a driver's explicit request)."""
        if self.promotable() and self.role is not Role.LEADER:
            self._campaign(_PRE_VOTE if self.config.pre_vote else _ELECTION)

    def _campaign(self, kind: str) -> None:
        """kind: _PRE_VOTE (ask first, commit to nothing), _ELECTION (a new
        term), or _TRANSFER (a new term that overrides leader stickiness)."""
        if kind == _PRE_VOTE:
            self._become_pre_candidate()
            vote_type, term = MessageType.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, term = MessageType.VOTE, self.term
        self.votes[self.id] = True
        if self._tally() == "won":
            if vote_type is MessageType.PRE_VOTE:
                self._campaign(_ELECTION)
            else:
                self._become_leader()
            return
        context = TRANSFER_CONTEXT if kind == _TRANSFER else b""
        for node in sorted(self.conf.voters):
            if node != self.id:
                self._send(
                    Message(
                        vote_type,
                        self.group,
                        self.id,
                        node,
                        term,
                        index=self.log.last_index(),
                        log_term=self.log.last_term(),
                        context=context,
                    )
                )

    def _tally(self) -> str:
        granted = sum(1 for node, ok in self.votes.items() if ok and node in self.conf.voters)
        rejected = sum(1 for node, ok in self.votes.items() if not ok and node in self.conf.voters)
        if granted >= self.quorum():
            return "won"
        if rejected >= self.quorum():
            return "lost"
        return "pending"

    # -- input ---------------------------------------------------------------------
    def step(self, m: Message) -> None:
        """Process one message from a peer."""
        if m.term > self.term:
            if m.type in (MessageType.PRE_VOTE, MessageType.VOTE):
                forced = m.context == TRANSFER_CONTEXT
                in_lease = (
                    self.config.check_quorum
                    and self.leader != NO_NODE
                    and self.election_elapsed < self.config.election_tick
                )
                if in_lease and not forced:
                    return  # leader stickiness: our leader is alive
            if m.type is MessageType.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type is MessageType.PRE_VOTE_RESP and not m.reject:
                pass  # granted for the term we would campaign in
            elif m.type in (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NO_NODE)
        elif m.term < self.term:
            if m.type in (MessageType.APPEND, MessageType.HEARTBEAT):
                # A stale leader (cut off, then healed) learns the new term;
                # with check-quorum and pre-vote it would otherwise never hear it.
                self._send(Message(MessageType.APPEND_RESP, self.group, self.id, m.frm, self.term))
            elif m.type is MessageType.PRE_VOTE:
                self._send(
                    Message(
                        MessageType.PRE_VOTE_RESP,
                        self.group,
                        self.id,
                        m.frm,
                        self.term,
                        reject=True,
                    )
                )
            return

        if m.type in (MessageType.PRE_VOTE, MessageType.VOTE):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.PRE_CANDIDATE, Role.CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _handle_vote_request(self, m: Message) -> None:
        fault = self.config.fault
        can_vote = (
            self.vote == m.frm
            or (self.vote == NO_NODE and self.leader == NO_NODE)
            or (m.type is MessageType.PRE_VOTE and m.term > self.term)
            or (fault is TestFault.TWO_VOTES_PER_TERM and self.role is not Role.LEADER)
        )
        up_to_date = fault is TestFault.VOTE_FOR_STALE_LOG or self.log.is_up_to_date(
            m.index, m.log_term
        )
        response = (
            MessageType.PRE_VOTE_RESP if m.type is MessageType.PRE_VOTE else MessageType.VOTE_RESP
        )
        if can_vote and up_to_date:
            self._send(Message(response, self.group, self.id, m.frm, m.term))
            if m.type is MessageType.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(response, self.group, self.id, m.frm, self.term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        wanted = (
            MessageType.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else MessageType.VOTE_RESP
        )
        if m.type in (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT):
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
        elif m.type is wanted:
            self.votes.setdefault(m.frm, not m.reject)
            outcome = self._tally()
            if outcome == "won":
                if self.role is Role.PRE_CANDIDATE:
                    self._campaign(_ELECTION)
                else:
                    self._become_leader()
            elif outcome == "lost":
                self._become_follower(self.term, NO_NODE)
        elif m.type is MessageType.TIMEOUT_NOW:
            pass  # already campaigning

    def _step_follower(self, m: Message) -> None:
        kind = m.type
        if kind is MessageType.APPEND:
            self.election_elapsed = 0
            self.leader = m.frm
            self._handle_append(m)
        elif kind is MessageType.HEARTBEAT:
            self.election_elapsed = 0
            self.leader = m.frm
            self.log.commit_to(min(m.commit, self.log.last_index()))
            self._send(
                Message(
                    MessageType.HEARTBEAT_RESP, self.group, self.id, m.frm, self.term,
                    context=m.context,
                )
            )  # fmt: skip
        elif kind is MessageType.SNAPSHOT:
            self.election_elapsed = 0
            self.leader = m.frm
            self._handle_snapshot_chunk(m)
        elif kind is MessageType.TIMEOUT_NOW:
            if self.promotable():
                self._campaign(_TRANSFER)
        elif kind is MessageType.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    # -- the follower's log ------------------------------------------------------------
    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(
                Message(
                    MessageType.APPEND_RESP, self.group, self.id, m.frm, self.term,
                    index=self.log.committed,
                )
            )  # fmt: skip
            return
        last = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last is not None:
            self._send(
                Message(MessageType.APPEND_RESP, self.group, self.id, m.frm, self.term, index=last)
            )
            return
        hint_index = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        hint_term = self.log.term_or_none(hint_index) or 0
        self._send(
            Message(
                MessageType.APPEND_RESP, self.group, self.id, m.frm, self.term, index=m.index,
                reject=True, hint_index=hint_index, hint_term=hint_term,
            )
        )  # fmt: skip

    def _handle_snapshot_chunk(self, m: Message) -> None:
        meta = m.snapshot
        if meta is None:
            return
        key = (meta.index, meta.term)
        if meta.index <= self.log.committed:
            # Already have it all: tell the leader where we are.
            self.incoming_snapshot = None
            self._snapshot_response(m.frm, self.log.committed, done=True)
            return
        if self.log.match_term(meta.index, meta.term):
            # Our log holds the snapshot's last entry, so it equals the
            # leader's up to it (log matching), which is committed: no need
            # for the image, only the commit moves. Vouch for the snapshot
            # index only: entries we hold after it were never checked
            # against this leader's log.
            self.incoming_snapshot = None
            self.log.commit_to(meta.index)
            self._snapshot_response(m.frm, meta.index, done=True)
            return
        if self._pending_snapshot is not None:
            # One snapshot waits to be installed by the next Ready; a newer
            # one is taken after it (the leader resends when it hears nothing).
            return
        if m.offset == 0:
            self.incoming_snapshot = (key, 0)
        current = self.incoming_snapshot
        if current is None or current[0] != key or current[1] != m.offset:
            received = current[1] if current is not None and current[0] == key else 0
            self._snapshot_response(m.frm, meta.index, offset=received, reject=True)
            return
        self._snapshot_chunks.append(SnapshotChunk(meta, m.offset, m.data, m.done))
        received = m.offset + len(m.data)
        if not m.done:
            self.incoming_snapshot = (key, received)
            self._snapshot_response(m.frm, meta.index, offset=received)
            return
        self.incoming_snapshot = None
        self.log.restore(meta)
        self.conf = meta.conf
        self._pending_snapshot = meta
        self._snapshot_response(m.frm, meta.index, done=True)

    def _snapshot_response(
        self, to: int, index: int, *, offset: int = 0, reject: bool = False, done: bool = False
    ) -> None:
        self._send(
            Message(
                MessageType.SNAPSHOT_RESP, self.group, self.id, to, self.term,
                index=index, offset=offset, reject=reject, done=done,
            )
        )  # fmt: skip

    # -- the leader ----------------------------------------------------------------
    def _step_leader(self, m: Message) -> None:
        progress = self.progress.get(m.frm)
        if m.type is MessageType.READ_INDEX:
            self._read_index(m.context, m.frm)
            return
        if progress is None:
            return
        if m.type is MessageType.APPEND_RESP:
            progress.recent_active = True
            self._handle_append_response(m, progress)
        elif m.type is MessageType.HEARTBEAT_RESP:
            progress.recent_active = True
            progress.paused = False
            if (
                progress.state is ProgressState.REPLICATE
                and len(progress.inflight) >= self.config.max_inflight
            ):
                progress.inflight.popleft()  # appends may have been lost: let one probe through
            if progress.match < self.log.last_index():
                self._send_append(m.frm, progress)
            if m.context:
                self._ack_read(m.context, m.frm)
        elif m.type is MessageType.SNAPSHOT_RESP:
            progress.recent_active = True
            self._handle_snapshot_response(m, progress)

    def _handle_append_response(self, m: Message, progress: Progress) -> None:
        if m.reject:
            probe_from = m.hint_index
            if m.hint_term > 0:
                probe_from = self.log.find_conflict_by_term(m.hint_index, m.hint_term)
            if progress.maybe_decrease(m.index, probe_from):
                if progress.state is ProgressState.REPLICATE:
                    progress.become_probe()
                self._send_append(m.frm, progress)
            return
        if not progress.maybe_update(m.index):
            return
        if progress.state is ProgressState.PROBE:
            progress.become_replicate()
        elif progress.state is ProgressState.SNAPSHOT and progress.match >= progress.snapshot_index:
            progress.become_probe()
        if self._maybe_commit():
            self._broadcast_append(commit_changed=True)
        else:
            while self._send_append(m.frm, progress, only_if_new=True):
                pass
        if m.frm == self.transferee and progress.match == self.log.last_index():
            self._send(Message(MessageType.TIMEOUT_NOW, self.group, self.id, m.frm, self.term))

    def _handle_snapshot_response(self, m: Message, progress: Progress) -> None:
        if progress.state is not ProgressState.SNAPSHOT:
            if m.done:
                progress.maybe_update(m.index)
            return
        if m.done:
            progress.maybe_update(m.index)
            progress.become_probe()
            self._send_append(m.frm, progress)
            return
        progress.snapshot_offset = m.offset
        self._send_snapshot_chunk(m.frm, progress)

    def _maybe_commit(self) -> bool:
        matches = sorted(
            (self.progress[node].match if node in self.progress else 0) for node in self.conf.voters
        )
        if not matches:
            return False
        candidate = matches[len(matches) - self.quorum()]
        if candidate <= self.log.committed:
            return False
        if self.config.fault is not TestFault.COMMIT_OLD_TERM and (
            self.log.term_or_none(candidate) != self.term
        ):
            return False  # §5.4.2: only entries of our own term commit by counting
        self.log.commit_to(candidate)
        self._release_reads_waiting_for_commit()
        return True

    def _broadcast_append(self, commit_changed: bool = False) -> None:
        """Send new entries to every follower, as many messages as each
        window allows. A follower with nothing new is told a new commit
        index by an empty append when `commit_changed`."""
        last = self.log.last_index()
        for node, progress in self.progress.items():
            if node == self.id:
                continue
            if progress.next > last:
                if commit_changed and progress.state is ProgressState.REPLICATE:
                    self._send_append(node, progress)
                continue
            while self._send_append(node, progress, only_if_new=True):
                pass

    def _send_append(self, node: int, progress: Progress, only_if_new: bool = False) -> bool:
        """Send the next append (or snapshot chunk) to `node`. Returns True
        when entries went out in replicate state, so the window may take
        another message."""
        if progress.is_paused(self.config.max_inflight):
            return False
        prev_index = progress.next - 1
        prev_term = self.log.term_or_none(prev_index)
        if prev_term is None:
            self._start_snapshot(node, progress)
            return False
        entries = self.log.slice(
            progress.next, self.log.last_index() + 1, self.config.max_message_bytes
        )
        if only_if_new and not entries:
            return False
        self._send(
            Message(
                MessageType.APPEND, self.group, self.id, node, self.term,
                index=prev_index, log_term=prev_term, entries=entries,
                commit=self.log.committed,
            )
        )  # fmt: skip
        if progress.state is ProgressState.REPLICATE:
            if entries:
                progress.next = entries[-1].index + 1
                progress.inflight.append(entries[-1].index)
        else:
            progress.paused = True
        return bool(entries) and progress.state is ProgressState.REPLICATE

    def _start_snapshot(self, node: int, progress: Progress) -> None:
        index = self.log.stable.snapshot_meta().index
        if index == 0:
            raise RaftError(
                f"group {self.group}: entries for node {node} are compacted but no snapshot exists"
            )
        progress.become_snapshot(index)
        self._send_snapshot_chunk(node, progress)

    def _send_snapshot_chunk(self, node: int, progress: Progress) -> None:
        stable = self.log.stable
        meta = stable.snapshot_meta()
        if meta.index != progress.snapshot_index:
            progress.become_snapshot(meta.index)  # a newer snapshot: start it over
        start = progress.snapshot_offset
        if start == 0:
            self.snapshot_sends += 1
        chunk = stable.read_snapshot(start, self.config.snapshot_chunk_bytes)
        progress.snapshot_sent_ticks = 0
        self._send(
            Message(
                MessageType.SNAPSHOT, self.group, self.id, node, self.term,
                snapshot=meta, offset=start, data=chunk,
                done=start + len(chunk) >= stable.snapshot_size(),
            )
        )  # fmt: skip

    def _broadcast_heartbeat(self, context: bytes = b"") -> None:
        if not context and self.pending_reads:
            context = self.pending_reads[-1].token
        for node, progress in self.progress.items():
            if node == self.id:
                continue
            self._send(
                Message(
                    MessageType.HEARTBEAT, self.group, self.id, node, self.term,
                    commit=min(progress.match, self.log.committed), context=context,
                )
            )  # fmt: skip

    def _append_entries(self, entries: list[Entry]) -> list[Entry]:
        last = self.log.last_index()
        stamped = [
            Entry(last + i, self.term, e.kind, e.data) for i, e in enumerate(entries, start=1)
        ]
        # The leader counts itself for these entries only once they are on
        # its disk (`advance`): an entry the followers hold but the leader
        # has not yet synced is not on a majority of disks.
        self.log.append(stamped)
        return stamped

    # -- proposals ---------------------------------------------------------------------
    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.group, self.leader or None)
        if self.transferee != NO_NODE:
            raise ProposalDropped(f"group {self.group}: leadership is being transferred")

    def propose(self, data: bytes) -> Entry:
        """Append `data` as a new entry of this leader's term.

        Returns:
            the entry (its index and term identify it: if a different entry
            is later applied at that index, the proposal was lost).
        Raises:
            NotLeader: this node does not lead the group.
            ProposalDropped: a transfer is under way, or too much is uncommitted.
        """
        return self.propose_batch([data])[0]

    def propose_batch(self, datas: list[bytes]) -> list[Entry]:
        """Several proposals appended together and sent in the same messages."""
        self._check_can_propose()
        size = sum(len(d) for d in datas)
        if (
            self.uncommitted_bytes
            and self.uncommitted_bytes + size > self.config.max_uncommitted_bytes
        ):
            raise ProposalDropped(f"group {self.group}: too much data waiting for commit")
        self.uncommitted_bytes += size
        entries = self._append_entries([Entry(0, 0, EntryKind.NORMAL, d) for d in datas])
        # Sent by the next `ready()`: messages leave no earlier, and every
        # proposal until then travels in the same append to each follower.
        self._broadcast_pending = True
        return entries

    def propose_membership_change(self, change: ConfChange) -> Entry:
        """Propose moving one node (add voter or learner, promote, remove).

        Raises:
            NotLeader, ProposalDropped: as for `propose`; also while an earlier
                change is not yet applied.
            RaftError: the change would leave no voter.
        """
        self._check_can_propose()
        if self.pending_conf_index > self.log.applied:
            raise ProposalDropped(
                f"group {self.group}: a membership change is still pending "
                f"(index {self.pending_conf_index}, applied {self.log.applied})"
            )
        after = self.conf.apply(change)
        if not after.voters:
            raise RaftError(f"group {self.group}: the change {change} would leave no voter")
        entry = self._append_entries([Entry(0, 0, EntryKind.CONF_CHANGE, change.encode())])[0]
        self.pending_conf_index = entry.index
        self._broadcast_append()
        return entry

    def _apply_conf_change(self, change: ConfChange) -> None:
        self.conf = self.conf.apply(change)
        if self.role is not Role.LEADER:
            return
        for node in self.conf.members:
            if node not in self.progress:
                self.progress[node] = Progress(self.log.last_index() + 1)
        for node in list(self.progress):
            if node not in self.conf.members and node != self.id:
                del self.progress[node]
        if self.id not in self.conf.voters:
            # Removed (or demoted): stop leading; the others elect a leader.
            self._become_follower(self.term, NO_NODE)
            return
        if self.transferee not in self.conf.voters:
            self.transferee = NO_NODE
        if self._maybe_commit():
            self._broadcast_append()

    # -- leadership transfer -------------------------------------------------------------
    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to voter `to` once its log is complete (§3.10).
        Proposals are refused until the transfer ends (at most one election
        timeout)."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.group, self.leader or None)
        if to == self.id:
            return
        if to not in self.conf.voters:
            raise RaftError(f"group {self.group}: node {to} is not a voter")
        self.transferee = to
        self.election_elapsed = 0
        progress = self.progress[to]
        if progress.match == self.log.last_index():
            self._send(Message(MessageType.TIMEOUT_NOW, self.group, self.id, to, self.term))
        else:
            self._send_append(to, progress)

    # -- linearizable reads -----------------------------------------------------------------
    def read_index(self, context: bytes) -> None:
        """Ask for a ReadState(index, context): once the state machine has
        applied `index`, a read sees every write acknowledged before this call.

        Raises:
            NotLeader: no leader is known to forward the request to.
        """
        if self.role is Role.LEADER:
            self._read_index(context, self.id)
        elif self.leader != NO_NODE:
            self._send(
                Message(
                    MessageType.READ_INDEX, self.group, self.id, self.leader, self.term,
                    context=context,
                )
            )  # fmt: skip
        else:
            raise NotLeader(self.group, None)

    def _read_index(self, context: bytes, requester: int) -> None:
        if not self._committed_in_term():
            # §6.4: until an entry of its term commits, the leader may not
            # know the commit index; wait for the no-op.
            self.reads_waiting_for_commit.append((context, requester))
            return
        if self.quorum() == 1 and self.id in self.conf.voters:
            self._answer_read(context, self.log.committed, requester)
            return
        self.read_sequence += 1
        token = self.read_sequence.to_bytes(8, "big")
        request = _PendingRead(token, context, self.log.committed, requester, {self.id})
        self.pending_reads.append(request)
        self.read_tokens[token] = request
        self._broadcast_heartbeat(token)

    def _committed_in_term(self) -> bool:
        return self.log.term_or_none(self.log.committed) == self.term

    def _release_reads_waiting_for_commit(self) -> None:
        if self.reads_waiting_for_commit and self._committed_in_term():
            waiting, self.reads_waiting_for_commit = self.reads_waiting_for_commit, []
            for context, requester in waiting:
                self._read_index(context, requester)

    def _ack_read(self, token: bytes, node: int) -> None:
        request = self.read_tokens.get(token)
        if request is None or node not in self.conf.voters:
            return
        request.acks.add(node)
        if len(request.acks & self.conf.voters) < self.quorum():
            return
        # A quorum confirmed leadership when `request` was sent: it and every
        # earlier request are safe to serve.
        while self.pending_reads:
            done = self.pending_reads.popleft()
            del self.read_tokens[done.token]
            self._answer_read(done.context, done.index, done.requester)
            if done is request:
                break

    def _answer_read(self, context: bytes, index: int, requester: int) -> None:
        if requester == self.id:
            self.read_states.append(ReadState(index, context))
        else:
            self._send(
                Message(
                    MessageType.READ_INDEX_RESP, self.group, self.id, requester, self.term,
                    index=index, context=context,
                )
            )  # fmt: skip

    # -- output --------------------------------------------------------------------------
    def _send(self, message: Message) -> None:
        self.msgs.append(message)

    def has_ready(self) -> bool:
        return bool(
            self.msgs
            or self.read_states
            or self.log.unstable
            or self._snapshot_chunks
            or self._pending_snapshot is not None
            or self.hard_state != self._prev_hard
            or self.log.committed > self.log.applied
        )

    def ready(self) -> Ready:
        """Collect what the driver must do now (see `Ready`). The driver must
        call `advance(ready)` before asking again."""
        if self._ready_outstanding:
            raise RaftError("ready() called again before advance()")
        if self._broadcast_pending:
            self._broadcast_pending = False
            if self.role is Role.LEADER:
                self._broadcast_append()
        hard = self.hard_state
        snapshot = self._pending_snapshot
        committed = (
            [] if snapshot is not None else self.log.next_committed(self.config.max_committed_bytes)
        )
        prev = self._prev_hard
        entries = list(self.log.unstable)
        ready = Ready(
            hard_state=hard if hard != prev else None,
            entries=entries,
            snapshot=snapshot,
            snapshot_chunks=self._snapshot_chunks,
            messages=self.msgs,
            committed=committed,
            read_states=self.read_states,
            must_sync=bool(entries)
            or snapshot is not None
            or hard.term != prev.term
            or hard.vote != prev.vote,
        )
        self.msgs = []
        self.read_states = []
        self._snapshot_chunks = []
        self._ready_outstanding = True
        return ready

    def advance(self, ready: Ready) -> None:
        """The driver has persisted, sent and applied everything in `ready`."""
        self._ready_outstanding = False
        if ready.hard_state is not None:
            self._prev_hard = ready.hard_state
        if ready.snapshot is not None:
            self.log.stable_snapshot_to(ready.snapshot.index)
            self.log.applied = max(self.log.applied, ready.snapshot.index)
            if self._pending_snapshot is ready.snapshot:
                self._pending_snapshot = None
        if ready.entries:
            last = ready.entries[-1]
            self.log.stable_to(last.index, last.term)
            mine = self.progress.get(self.id) if self.role is Role.LEADER else None
            durable = self.log.durable_last_index()
            if mine is not None and mine.maybe_update(durable) and self._maybe_commit():
                self._broadcast_append(commit_changed=True)
        for entry in ready.committed:
            if entry.kind is EntryKind.CONF_CHANGE:
                self._apply_conf_change(ConfChange.decode(entry.data))
            elif self.role is Role.LEADER and entry.term == self.term:
                self.uncommitted_bytes = max(0, self.uncommitted_bytes - len(entry.data))
        if ready.committed:
            self.log.applied = max(self.log.applied, ready.committed[-1].index)

    def snapshot_meta_at_applied(self) -> tuple[int, int, ConfState] | None:
        """(index, term, membership) for a snapshot of the state machine as
        applied so far; call between `advance()` and the next `ready()`.
        None while a snapshot from the leader waits to be installed (it
        arrived during the last Ready and replaces the state machine next)."""
        if self.log.unstable_snapshot is not None:
            return None
        index = self.log.applied
        return index, self.log.term(index), self.conf
