"""The asyncio driver: many Raft groups of one node on one event loop.

`RaftNode` owns, for every group, a `RaftGroup` (the sans-IO core), its
`FileGroupLog` and the application's `StateMachine`. One task ticks every
group; one task runs the Ready loop:

1. collect a `Ready` from every group that has one;
2. send the leaders' own messages at once (see `sent_before_persist`);
3. write every group's snapshot, entries and hard state, then make them all
   durable with one `LogStore.sync()` in a worker thread (group commit:
   proposals that arrive meanwhile go into the next round's single sync);
4. send the remaining messages (votes and acknowledgements promise what is
   now on disk);
5. apply committed entries, resolve proposal futures and linearizable reads;
6. `advance()`, and take a snapshot when enough has been applied since the
   last one.

A proposal's future resolves with the state machine's result when its entry
is applied, fails with `ProposalDropped` when another entry is applied at its
index, with `NotLeader(leader_hint)` at once on a follower, or with
`ProposalTimeout` — never left hanging. When the node stops, or fails (a
write or sync raised, or a tick or an incoming message hit an error), what
is pending fails with `OutcomeUnknown` (its entry may have reached the
followers, who can commit it) and every later call raises `NodeStopped`. A
node that failed stops its transport and ticks too: it never acknowledges
what it could not make durable, and the others stop counting on it.

Messages to one peer from every group travel together, split into frames
well under the transport's frame limit. An entry travels whole in one
message, so `RaftNode.max_entry_bytes` (half the frame limit: 32 MiB with
the transport's default) is the largest entry `propose` takes; an
application with bigger records splits them into several entries.

Snapshots are streams: the state machine writes its snapshot into a sink
the log gives it and restores from a stream the log opens (`StateMachine`);
nothing holds a snapshot whole in memory. A snapshot is taken every
`snapshot_every` applied entries; the log then compacts to `keep_entries`
behind it, but never past what the state machine still reads back
(`RetainsEntries`): for an application whose data is the log, entries stay
readable (`read_entry`, `read_entries`) behind every snapshot and across
restarts until it lets them go.

Groups come and go while the node runs. `add_group` opens a group's log
(as it is on disk, or new and empty), restores its state machine from the
snapshot and serves it like a group given to the constructor; with no
voters and an empty log the node is a member-to-be that never campaigns and
waits for the leader to add it (`add_voter`). `remove_group` stops serving a
group: what waits on it fails (`GroupRemoved`; a proposal with
`GroupRemovedOutcomeUnknown`, as its entry may still commit elsewhere), a
Ready of it still in flight is neither applied nor acknowledged, and its log
is closed, then (by default) deleted durably (`LogStore.remove_group`).
Messages for a group this node does not run are dropped (the leader of a
group the node is joining resends until the group runs here). `set_peers`
changes the set of nodes this one talks to.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from .core import RaftConfig, RaftGroup, Role
from .errors import (
    GroupAlreadyRunning,
    GroupNotHere,
    GroupRemoved,
    LogUnavailableError,
    NotLeader,
    ProposalDropped,
    ProtocolError,
    RaftError,
)
from .incarnation import IncarnationRefused, PeerIncarnations, load_incarnation
from .log import DEFAULT_SEGMENT_BYTES, FileGroupLog, LogStore
from .transport import Transport
from .types import (
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    Message,
    Ready,
    SnapshotMeta,
    sent_before_persist,
)

log = logging.getLogger("protobase.raft.node")

LEADER_HISTORY = 50
"""Leader changes kept for status pages."""


class OutcomeUnknown(RaftError):
    """The proposal may or may not have been applied; read to find out."""


class ProposalTimeout(OutcomeUnknown, TimeoutError):
    """The proposal or read did not complete in time; a proposal's outcome
    is unknown (it may still be applied)."""


class GroupRemovedOutcomeUnknown(OutcomeUnknown, GroupRemoved):
    """The group was removed from this node before the proposal's entry was
    applied here; the entry may still commit on the group's other members."""


class NodeStopped(RaftError):
    """The node was stopped, or stopped itself when it failed (the cause is
    chained); it takes no more calls."""


class StateMachine(Protocol):
    """What a group replicates. Calls come from the event loop, in log order."""

    def apply(self, index: int, data: bytes) -> Any:
        """Apply the entry at `index`; the return value resolves its proposal."""
        ...

    def snapshot(self, sink: BinaryIO) -> None:
        """Write everything applied so far to `sink`, in a form `restore`
        reads back (the log stores it as it comes; do not close `sink`)."""
        ...

    def restore(self, source: BinaryIO) -> None:
        """Replace the whole state by the snapshot read from `source` (empty
        for the empty state). `source` ends where the snapshot's data ends."""
        ...


@runtime_checkable
class RetainsEntries(Protocol):
    """A state machine that reads applied entries back from the log (its
    data is the log): the node never compacts an entry it still needs."""

    def first_needed_index(self) -> int:
        """The lowest log index this state machine will still read back
        (`RaftNode.read_entry`); entries from it on are never compacted. A
        snapshot installed from the leader still replaces a log that does not
        hold the snapshot's last entry: `restore` then gets what it needs
        from the snapshot."""
        ...


@dataclass
class NodeConfig:
    node_id: int
    listen: tuple[str, int]
    peers: dict[int, tuple[str, int]]
    """Every node's Raft address, this one's included."""
    data_dir: Path
    secret: bytes
    tick_interval: float = 0.1
    election_tick: int = 10
    heartbeat_tick: int = 1
    snapshot_every: int = 10_000
    """Entries applied between two snapshots of a group's state machine."""
    keep_entries: int = 5_000
    """Entries a snapshot leaves readable behind it (also after a restart):
    a follower up to this many entries behind the snapshot still catches up
    by appends; one further behind gets the snapshot. A state machine that
    `RetainsEntries` keeps more."""
    proposal_timeout: float = 10.0
    max_inflight: int = 256
    max_message_bytes: int = 1 << 20
    rng_seed: int | None = None
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    """Size at which a log segment is sealed (compaction deletes whole segments)."""

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("a node refuses to start without a cluster secret")


@dataclass
class _Group:
    raft: RaftGroup
    machine: StateMachine
    log: FileGroupLog
    """The group's log, held here: `LogStore.group()` would create a removed group anew."""
    waiting: dict[int, tuple[int, asyncio.Future[Any]]] = field(default_factory=dict)
    """index -> (term, future) of proposals made here."""
    reads: dict[bytes, asyncio.Future[int]] = field(default_factory=dict)
    read_indexes: list[tuple[int, asyncio.Future[int]]] = field(default_factory=list)
    applied_since_snapshot: int = 0
    leader_changes: int = 0
    last_leader: int = 0
    proposals_dropped: int = 0
    """Proposals made here that failed with `ProposalDropped` (refused or overwritten)."""


class RaftNode:
    """Runs groups; see the module docstring.

    Args:
        config: this node's identity, addresses, directory and secret.
        groups: group id -> (state machine, initial voters). The initial
            voters matter only when the group's log is empty; a node that
            will be added to an existing group passes (). More groups can be
            added and removed later (`add_group`, `remove_group`).
    """

    def __init__(
        self,
        config: NodeConfig,
        groups: dict[int, tuple[StateMachine, tuple[int, ...]]],
    ) -> None:
        self.config = config
        self.id = config.node_id
        self.store = LogStore(config.data_dir, segment_bytes=config.segment_bytes)
        self.leader_history: collections.deque[tuple[float, int, int, int | None]] = (
            collections.deque(maxlen=LEADER_HISTORY)
        )
        """The latest leader changes seen here: (time, group, term, new leader or None)."""
        try:
            self.incarnation = load_incarnation(config.data_dir)
            """This data directory's incarnation (16 bytes), sent in every handshake."""
            self.peer_incarnations = PeerIncarnations(config.data_dir)
        except BaseException:
            self.store.close()
            raise
        self.rng = random.Random(config.rng_seed)
        self.groups: dict[int, _Group] = {}
        try:
            for group_id, (machine, voters) in sorted(groups.items()):
                self.groups[group_id] = self._open_group(group_id, machine, voters)
        except BaseException:
            self.store.close()
            raise
        self._removing: set[int] = set()
        """Groups whose `remove_group` has not returned yet."""
        self.transport = Transport(
            self.id,
            config.listen,
            {n: addr for n, addr in config.peers.items() if n != self.id},
            config.secret,
            self._on_payload,
            on_peer_lost=self._on_peer_lost,
            incarnation=self.incarnation,
            peer_incarnations=self.peer_incarnations,
            on_refused=self._on_refused,
        )
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._syncer = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"raft-{self.id}-sync"
        )
        """Runs `store.sync`; `stop` waits for it so the store never closes under a sync."""
        self._sync: concurrent.futures.Future[None] | None = None
        self._read_prefix = os.urandom(8)
        """Read contexts start with it: an answer to a read of an earlier run
        of this node (same id, counter from 0) never completes a new read."""
        self._read_counter = 0
        self._stopped: NodeStopped | None = None
        self._closed = asyncio.Event()
        """Set once the node serves no more: it failed, or `stop` ran."""
        self._closing: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None
        """What made the node fail, once it has."""
        self.sync_rounds = 0

    @property
    def max_entry_bytes(self) -> int:
        """Largest entry `propose` accepts (32 MiB with the transport's
        default frame limit), and the size frames are cut to: half the
        transport's frame limit, so a message with one entry of this size and
        its envelope fits in a frame. Entries are not split across messages:
        an application splits a bigger record into several entries."""
        return self.transport.max_frame_bytes // 2

    def _open_group(self, group_id: int, machine: StateMachine, voters: tuple[int, ...]) -> _Group:
        group_log = self.store.group(group_id)
        with group_log.open_snapshot() as source:
            machine.restore(source)
        raft_config = RaftConfig(
            self.id,
            group=group_id,
            election_tick=self.config.election_tick,
            heartbeat_tick=self.config.heartbeat_tick,
            max_inflight=self.config.max_inflight,
            max_message_bytes=self.config.max_message_bytes,
        )
        raft = RaftGroup(raft_config, group_log, random.Random(self.rng.random()), voters)
        return _Group(raft, machine, group_log)

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        if self._stopped is not None:
            raise NodeStopped(f"node {self.id} was stopped; make a new RaftNode")
        self._work = asyncio.Event()
        await self.transport.start()
        self._tasks = [
            asyncio.create_task(self._tick_loop(), name=f"raft-{self.id}-ticks"),
            asyncio.create_task(self._ready_loop(), name=f"raft-{self.id}-ready"),
        ]
        self._work.set()

    async def stop(self) -> None:
        """Stop ticking, sending and applying; fail what is pending with
        `OutcomeUnknown`; wait for a sync in flight; close the log. Also
        after the node failed; calling it again does nothing more."""
        if self._stopped is None:
            self._stopped = NodeStopped(f"node {self.id} is stopped")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.transport.stop()
        if self._closing is not None:
            await self._closing
        self._fail_everything(
            lambda: OutcomeUnknown(f"node {self.id} stopped first; the outcome is unknown")
        )
        await asyncio.to_thread(self._syncer.shutdown, True)
        sync = self._sync
        if sync is not None and not sync.cancelled() and sync.exception() is not None:
            # This stop cancelled the round that waited for it.
            if self.failure is None:
                self.failure = sync.exception()
            log.error("node %d: its last sync failed: %r", self.id, sync.exception())
        self.store.close()
        self._closed.set()

    def add_group(self, group_id: int, machine: StateMachine, voters: tuple[int, ...] = ()) -> None:
        """Serve one more group, from now on exactly like a group given to
        the constructor: open its log (as it is on disk, or new and empty),
        restore `machine` from the log's snapshot, then tick it, step its
        messages and apply its entries. Before or after `start`.

        The log's recovery and the restore run here, on the event loop.

        Args:
            group_id: the group.
            machine: its state machine; committed entries after the snapshot
                are applied to it again.
            voters: the initial voters, used only when the log is empty. With
                () and an empty log this node is a member-to-be: it never
                campaigns and waits for the group's leader to add it
                (`add_voter` on the leader).

        Raises:
            GroupAlreadyRunning: the group runs here, or is being removed.
            NodeStopped: the node is stopped.
            LogError, LogCorruptionError: the group's log cannot be opened.
        """
        if self._stopped is not None:
            raise NodeStopped(str(self._stopped)) from self._stopped.__cause__
        if group_id in self.groups or group_id in self._removing:
            state = "runs" if group_id in self.groups else "is still removing"
            raise GroupAlreadyRunning(f"node {self.id} {state} group {group_id}")
        self.groups[group_id] = self._open_group(group_id, machine, voters)
        self._work.set()

    async def remove_group(self, group_id: int, delete: bool = True) -> None:
        """Stop serving a group. At once (before the first await): every
        proposal waiting on it fails with `GroupRemovedOutcomeUnknown`, every
        read with `GroupRemoved`, it leaves `self.groups`, and messages for it
        are dropped from then on. A Ready of it in flight is neither applied
        nor acknowledged. Once no sync is in flight, its log is closed and,
        with `delete`, its directory deleted durably (`LogStore.remove_group`);
        without, the directory stays and `add_group` reopens it.

        Remove a group only once its membership no longer counts on this
        node (the leader applied a change that removed it): deleting a
        voter's log loses what it acknowledged, like a lost disk.

        Raises:
            RaftError: the node does not run the group.
            NodeStopped: the node is stopped, or stopped before the log was
                closed (the group's directory then stays on disk).
            LogError, OSError: closing or deleting failed (see
                `LogStore.remove_group`); the group is no longer served.
        """
        group = self._group(group_id)
        del self.groups[group_id]
        self._removing.add(group_id)
        try:
            self._fail_group(
                group,
                lambda: GroupRemovedOutcomeUnknown(
                    f"group {group_id} was removed from node {self.id} before the entry "
                    "was applied here; it may still commit on the group's other members"
                ),
                lambda: GroupRemoved(f"group {group_id} was removed from node {self.id}"),
            )
            # The sync in flight may cover the group's files: closing them
            # under it would fail it (or sync a reused descriptor).
            await self._no_sync_in_flight()
            if self._stopped is not None:
                raise NodeStopped(
                    f"node {self.id} stopped while removing group {group_id}; "
                    "its directory was left on disk"
                ) from self._stopped.__cause__
            if delete:
                self.store.remove_group(group_id)
            else:
                self.store.close_group(group_id)
        finally:
            self._removing.discard(group_id)
        log.info("node %d: group %d removed (files deleted: %s)", self.id, group_id, delete)

    def set_peers(self, peers: dict[int, tuple[str, int]]) -> None:
        """Replace the nodes this one talks to (every node's Raft address,
        this one's included, as in `NodeConfig.peers`, which it replaces):
        connections to nodes no longer listed close, new ones are dialed.

        Raises:
            ValueError: a node id is not a positive integer.
            NodeStopped: the node is stopped.
        """
        if self._stopped is not None:
            raise NodeStopped(str(self._stopped)) from self._stopped.__cause__
        self.transport.set_peers(peers)
        self.config = replace(self.config, peers=dict(peers))

    async def _no_sync_in_flight(self) -> None:
        """Return once no `store.sync` runs; none starts before the caller's
        next await (a round awaits nothing between its writes and its sync)."""
        loop = asyncio.get_running_loop()
        while (sync := self._sync) is not None and not sync.done():
            finished = asyncio.Event()

            def wake(_: object, finished: asyncio.Event = finished) -> None:
                loop.call_soon_threadsafe(finished.set)

            sync.add_done_callback(wake)
            await finished.wait()

    async def wait_failed(self) -> BaseException | None:
        """Wait until the node serves no more: return the error that made it
        fail (`stop` still closes it), or None once `stop` ended it cleanly."""
        await self._closed.wait()
        return self.failure

    # -- the application's calls -------------------------------------------------------
    def group(self, group_id: int) -> RaftGroup:
        return self._group(group_id).raft

    def _group(self, group_id: int) -> _Group:
        if self._stopped is not None:
            raise NodeStopped(str(self._stopped)) from self._stopped.__cause__
        try:
            return self.groups[group_id]
        except KeyError:
            raise GroupNotHere(f"node {self.id} does not run group {group_id}") from None

    def group_log(self, group_id: int) -> FileGroupLog:
        """The log of a group this node runs. Unlike `store.group`, never
        creates one (which would bring a removed group's directory back).

        Raises:
            NodeStopped, RaftError: the node is stopped; no such group.
        """
        return self._group(group_id).log

    def leader(self, group_id: int) -> int | None:
        return self.group(group_id).leader or None

    async def propose(self, group_id: int, data: bytes, timeout: float | None = None) -> Any:
        """Replicate `data`; returns what the state machine's `apply` returned.

        Raises:
            NotLeader: this node does not lead the group (retry at the hint).
            ProposalDropped: the entry was not accepted or was overwritten.
            ProposalTimeout: no outcome within the timeout (it may still apply).
            OutcomeUnknown: the node stopped before the entry was applied.
            NodeStopped: the node is stopped.
            ValueError: `data` is longer than `max_entry_bytes`.
        """
        group = self._group(group_id)
        if len(data) > self.max_entry_bytes:
            raise ValueError(
                f"an entry of {len(data)} bytes is over the {self.max_entry_bytes}-byte limit"
            )
        try:
            entry = group.raft.propose(data)
        except ProposalDropped:
            group.proposals_dropped += 1
            raise
        return await self._wait_entry(group, entry, timeout)

    async def change_membership(
        self, group_id: int, change: ConfChange, timeout: float | None = None
    ) -> int:
        """Apply one membership change and wait until it is applied here;
        returns the index of its entry."""
        group = self._group(group_id)
        entry = group.raft.propose_membership_change(change)
        await self._wait_entry(group, entry, timeout)
        return entry.index

    async def add_voter(
        self, group_id: int, node_id: int, *, max_lag: int = 100, timeout: float = 30.0
    ) -> None:
        """Add `node_id` as a learner, wait until it has acknowledged the
        entry that added it and caught up to within `max_lag` entries of the
        leader, then promote it to voter. A node that never answers is never
        promoted (it would take part in every quorum). The whole call
        keeps to `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        raft = self.group(group_id)
        floor = raft.log.committed
        if node_id not in raft.conf.members:
            floor = await self.change_membership(
                group_id, ConfChange(ConfChangeKind.ADD_LEARNER, node_id), timeout
            )
        while True:
            raft = self.group(group_id)
            if not raft.is_leader:
                raise NotLeader(group_id, raft.leader or None)
            progress = raft.progress.get(node_id)
            if (
                progress is not None
                and progress.match >= floor
                and raft.log.last_index() - progress.match <= max_lag
            ):
                break
            if loop.time() > deadline:
                raise ProposalTimeout(f"node {node_id} did not catch up in {timeout} s")
            await asyncio.sleep(self.config.tick_interval)
        await self.change_membership(
            group_id,
            ConfChange(ConfChangeKind.ADD_VOTER, node_id),
            max(deadline - loop.time(), self.config.tick_interval),
        )

    async def read_barrier(self, group_id: int, timeout: float | None = None) -> int:
        """Wait until this node's state machine may serve a linearizable read
        (ReadIndex, §6.4); returns the read index.

        Raises:
            NotLeader: no leader is known.
            ProposalTimeout: no quorum confirmed leadership in time.
            OutcomeUnknown: the node stopped first.
            NodeStopped: the node is stopped.
        """
        group = self._group(group_id)
        self._read_counter += 1
        context = self._read_prefix + self._read_counter.to_bytes(8, "big")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        group.reads[context] = future
        try:
            group.raft.read_index(context)
        except NotLeader:
            del group.reads[context]
            raise
        self._work.set()
        try:
            return await asyncio.wait_for(future, self._timeout(timeout))
        except TimeoutError:
            raise ProposalTimeout(f"group {group_id}: read barrier timed out") from None
        finally:
            group.reads.pop(context, None)

    async def transfer_leadership(self, group_id: int, to: int) -> None:
        self.group(group_id).transfer_leadership(to)
        self._work.set()

    def read_entry(self, group_id: int, index: int) -> bytes:
        """The data of committed entry `index` of a group, read back from the
        log (one pread unless it is recent enough to be cached). Entries stay
        readable behind snapshots until compacted (see `RetainsEntries`).

        Raises:
            LogUnavailableError: `index` is compacted or not committed here yet.
            LogCorruptionError: the segment holding it is damaged.
            NodeStopped, RaftError: the node is stopped; no such group.
        """
        raft = self.group(group_id)
        if index > raft.log.committed:
            raise LogUnavailableError(
                f"group {group_id}: entry {index} is not committed on node {self.id} "
                f"(commit index {raft.log.committed})"
            )
        return raft.log.entry(index).data

    def read_entries(
        self, group_id: int, lo: int, hi: int, max_bytes: int | None = None
    ) -> list[Entry]:
        """Committed entries [lo, hi) of a group (at least one when lo < hi,
        then up to `max_bytes` of data), with their terms and kinds.

        Raises:
            LogUnavailableError: lo is compacted, or hi - 1 is not committed here.
            LogCorruptionError: a segment is damaged.
            NodeStopped, RaftError: the node is stopped; no such group.
        """
        raft = self.group(group_id)
        if hi - 1 > raft.log.committed:
            raise LogUnavailableError(
                f"group {group_id}: entries up to {hi - 1} are not committed on node "
                f"{self.id} (commit index {raft.log.committed})"
            )
        return raft.log.slice(lo, hi, max_bytes)

    def status(self, group_id: int) -> dict[str, Any]:
        raft = self.group(group_id)
        return {
            "id": self.id,
            "group": group_id,
            "role": raft.role.name.lower(),
            "leader": raft.leader or None,
            "term": raft.term,
            "commit": raft.log.committed,
            "applied": raft.log.applied,
            "last_index": raft.log.last_index(),
            "voters": sorted(raft.conf.voters),
            "learners": sorted(raft.conf.learners),
            "follower_lag": self._follower_lag(raft),
            "leader_changes": self.groups[group_id].leader_changes,
            "proposals_dropped": self.groups[group_id].proposals_dropped,
            "snapshot_sends": raft.snapshot_sends,
        }

    @staticmethod
    def _follower_lag(raft: RaftGroup) -> int | None:
        """On a leader: how many entries its furthest-behind voter lacks (None elsewhere)."""
        if raft.role is not Role.LEADER:
            return None
        last = raft.log.last_index()
        lags = [
            last - progress.match
            for node, progress in raft.progress.items()
            if node != raft.id and node in raft.conf.voters
        ]
        return max(lags, default=0)

    def _timeout(self, timeout: float | None) -> float:
        return self.config.proposal_timeout if timeout is None else timeout

    async def _wait_entry(self, group: _Group, entry: Entry, timeout: float | None) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        group.waiting[entry.index] = (entry.term, future)
        self._work.set()
        try:
            return await asyncio.wait_for(future, self._timeout(timeout))
        except TimeoutError:
            raise ProposalTimeout(
                f"group {group.raft.group}: entry {entry.index} was not applied in time; "
                "its outcome is unknown"
            ) from None
        finally:
            current = group.waiting.get(entry.index)
            if current is not None and current[1] is future:
                del group.waiting[entry.index]

    # -- input ----------------------------------------------------------------------
    def _on_payload(self, peer: int, payload: Any) -> None:
        if not isinstance(payload, list):
            log.warning("node %d: dropped a malformed batch from node %d", self.id, peer)
            return
        for raw in payload:
            try:
                message = Message.from_wire(raw)
            except ProtocolError as exc:
                log.warning("node %d: dropped a message from node %d: %s", self.id, peer, exc)
                continue
            group = self.groups.get(message.group)
            if group is None:
                # Not (or no longer, or not yet) run here: Raft resends what matters.
                log.debug(
                    "node %d: dropped a message for group %d from node %d: not run here",
                    self.id,
                    message.group,
                    peer,
                )
                continue
            if message.to != self.id or message.frm != peer or self._stopped:
                continue
            try:
                group.raft.step(message)
            except Exception as exc:
                self._fail(exc, f"stepping a message from node {peer} failed")
                return
        self._work.set()

    def _on_refused(self, refusal: IncarnationRefused) -> None:
        """A peer knows another incarnation of this node's id: this data
        directory is not the one the cluster counted on, so the node must not
        vote or acknowledge anything. It fails; `wait_failed()` returns
        `refusal`, whose message tells the operator what to do."""
        self._fail(refusal, f"node {refusal.refused_by} refused its incarnation")

    def _on_peer_lost(self, peer: int) -> None:
        for group in list(self.groups.values()):
            group.raft.leader_unreachable(peer)
        self._work.set()

    async def _tick_loop(self) -> None:
        interval = self.config.tick_interval
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            next_tick += interval
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            try:
                for group in list(self.groups.values()):
                    group.raft.tick()
            except Exception as exc:
                self._fail(exc, "a tick failed")
                return
            self._work.set()

    # -- the Ready loop ----------------------------------------------------------------
    async def _ready_loop(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            try:
                await self._round()
            except Exception as exc:
                # A failed write or sync leaves the node unable to promise
                # durability: stop serving instead of carrying on.
                self._fail(exc, "its Ready loop failed")
                return

    def _fail(self, cause: Exception, what: str) -> None:
        """Stop serving at once (no await, so nothing runs in between): fail
        what is pending with `OutcomeUnknown`, refuse every later call, stop
        the other loops and, in a task `stop` waits for, the transport."""
        if self._stopped is not None:
            return
        log.error("node %d: %s; the node stops", self.id, what, exc_info=cause)
        self.failure = cause
        stopped = NodeStopped(f"node {self.id} stopped serving: {what}: {cause}")
        stopped.__cause__ = cause
        self._stopped = stopped

        def unknown() -> Exception:
            error = OutcomeUnknown(
                f"node {self.id} failed before the outcome was known (its entry may have "
                f"reached the followers): {what}: {cause}"
            )
            error.__cause__ = cause
            return error

        self._fail_everything(unknown)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._closing = asyncio.get_running_loop().create_task(self.transport.stop())
        self._closed.set()

    async def _round(self) -> None:
        readies: list[tuple[_Group, Ready]] = []
        for group in list(self.groups.values()):
            if group.raft.has_ready():
                readies.append((group, group.raft.ready()))
        if not readies:
            return
        early: dict[int, list[Message]] = {}
        must_sync = False
        for group, ready in readies:
            for message in ready.messages:
                if sent_before_persist(message):
                    early.setdefault(message.to, []).append(message)
            ready.write_to(group.log)
            must_sync = must_sync or ready.must_sync
        self._send(early)
        if must_sync:
            self._sync = self._syncer.submit(self.store.sync)
            await asyncio.wrap_future(self._sync)
            self.sync_rounds += 1
            # A group removed during the sync is done with: its Ready is
            # neither acknowledged nor applied.
            readies = [(g, r) for g, r in readies if self.groups.get(g.raft.group) is g]
        late: dict[int, list[Message]] = {}
        for _, ready in readies:
            for message in ready.messages:
                if not sent_before_persist(message):
                    late.setdefault(message.to, []).append(message)
        self._send(late)
        for group, ready in readies:
            self._apply(group, ready)
            group.raft.advance(ready)
            self._after_advance(group)
        self._work.set()  # anything stepped in meanwhile is handled next round

    def _send(self, batches: dict[int, list[Message]]) -> None:
        """Send each peer's messages in frames of at most half the frame
        limit. A message that is dropped (a full queue, or too big for a
        frame) is lost like one on the network: Raft sends it again."""
        for peer, messages in batches.items():
            for frame in _frames(messages, self.max_entry_bytes):
                try:
                    queued = self.transport.send(peer, frame)
                except ValueError as exc:
                    log.error("node %d: a frame to node %d was dropped: %s", self.id, peer, exc)
                    continue
                if not queued:
                    log.debug("node %d: queue to node %d full; messages dropped", self.id, peer)

    def _apply(self, group: _Group, ready: Ready) -> None:
        applied = group.raft.log.applied
        if ready.snapshot is not None:
            applied = max(applied, ready.snapshot.index)
            with group.log.open_snapshot() as source:
                group.machine.restore(source)
            group.applied_since_snapshot = 0
            self._fail_waiting_up_to(group, ready.snapshot.index)
        for entry in ready.committed:
            result: Any = None
            if entry.kind is EntryKind.NORMAL and entry.data:
                result = group.machine.apply(entry.index, entry.data)
            waiting = group.waiting.pop(entry.index, None)
            if waiting is not None and not waiting[1].done():
                term, future = waiting
                if term == entry.term:
                    future.set_result(result)
                else:
                    group.proposals_dropped += 1
                    future.set_exception(
                        ProposalDropped(
                            f"group {group.raft.group}: entry {entry.index} was overwritten "
                            "by a new leader; retry"
                        )
                    )
        group.applied_since_snapshot += len(ready.committed)
        for state in ready.read_states:
            read = group.reads.pop(state.context, None)
            if read is not None and not read.done():
                group.read_indexes.append((state.index, read))
        if group.read_indexes:
            if ready.committed:
                applied = max(applied, ready.committed[-1].index)
            still = []
            for index, future in group.read_indexes:
                if index <= applied:
                    if not future.done():
                        future.set_result(index)
                else:
                    still.append((index, future))
            group.read_indexes = still

    def _after_advance(self, group: _Group) -> None:
        raft = group.raft
        if raft.leader != group.last_leader:
            group.last_leader = raft.leader
            group.leader_changes += 1
            self.leader_history.append((time.time(), raft.group, raft.term, raft.leader or None))
        if raft.role is not Role.LEADER:
            # Reads waiting for a quorum that this node no longer leads fail fast.
            for context, future in list(group.reads.items()):
                if raft.leader == 0 and not future.done():
                    future.set_exception(NotLeader(raft.group, None))
                    del group.reads[context]
        if group.applied_since_snapshot >= self.config.snapshot_every:
            self._snapshot(group)

    def _snapshot(self, group: _Group) -> None:
        raft = group.raft
        at_applied = raft.snapshot_meta_at_applied()
        group_log = group.log
        if at_applied is None or at_applied[0] <= group_log.snapshot_meta().index:
            return
        index, term, conf = at_applied
        group_log.save_snapshot(SnapshotMeta(index, term, conf), group.machine.snapshot)
        keep_from = group_log.snapshot_meta().index + 1 - self.config.keep_entries
        if isinstance(group.machine, RetainsEntries):
            keep_from = min(keep_from, group.machine.first_needed_index())
        group_log.compact(max(keep_from - 1, 0))
        group.applied_since_snapshot = 0
        log.info("node %d: group %d snapshot at %d", self.id, raft.group, index)

    def _fail_waiting_up_to(self, group: _Group, index: int) -> None:
        for waiting_index in [i for i in group.waiting if i <= index]:
            _, future = group.waiting.pop(waiting_index)
            if not future.done():
                future.set_exception(
                    OutcomeUnknown(
                        f"entry {waiting_index} was replaced by a snapshot; its outcome is unknown"
                    )
                )

    def _fail_everything(self, error: Callable[[], Exception]) -> None:
        """Fail every pending proposal and read, each with a new `error()`."""
        for group in list(self.groups.values()):
            self._fail_group(group, error, error)

    @staticmethod
    def _fail_group(
        group: _Group,
        proposal_error: Callable[[], Exception],
        read_error: Callable[[], Exception],
    ) -> None:
        """Fail a group's pending proposals and reads, each with a new error."""
        proposals = [future for _, future in group.waiting.values()]
        reads = [*group.reads.values(), *(future for _, future in group.read_indexes)]
        group.waiting.clear()
        group.reads.clear()
        group.read_indexes.clear()
        for futures, error in ((proposals, proposal_error), (reads, read_error)):
            for future in futures:
                if not future.done():
                    future.set_exception(error())


def _frames(messages: list[Message], limit: int) -> Iterator[list[list[Any]]]:
    """`messages` as wire lists, in order, grouped so that each group's
    approximate size stays within `limit` (a lone bigger message goes alone)."""
    if len(messages) == 1:  # the usual case: nothing to measure
        yield [messages[0].to_wire()]
        return
    frame: list[list[Any]] = []
    size = 0
    for message in messages:
        bytes_ = message.approximate_bytes()
        if frame and size + bytes_ > limit:
            yield frame
            frame, size = [], 0
        frame.append(message.to_wire())
        size += bytes_
    if frame:
        yield frame


def parse_peers(text: str) -> dict[int, tuple[str, int]]:
    """ "1=127.0.0.1:7001,2=127.0.0.1:7002" -> {1: ("127.0.0.1", 7001), ...}."""
    peers: dict[int, tuple[str, int]] = {}
    for part in text.split(","):
        node, _, address = part.strip().partition("=")
        host, _, port = address.rpartition(":")
        if not (node.isdigit() and host and port.isdigit()):
            raise ValueError(f"bad peer {part!r}: expected ID=HOST:PORT")
        peers[int(node)] = (host, int(port))
    return peers
