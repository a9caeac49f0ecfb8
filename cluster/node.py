"""One `protobase node` process: Raft groups, routing, and the commit service.

A `ClusterNode` runs, on one asyncio loop, a `RaftNode` with the meta group
(if placed here) and the partition groups placed here, and answers the
operations the HTTP API (`cluster.api`) exposes:

- **put_batch**: the batch goes to the leader of its partition
  (``partition_for(transaction_id)``), split into entries of at most
  `BATCH_CHUNK_BYTES`; a batch the partition already holds is not proposed
  again (idempotent by transaction id).
- **get_atoms**: served from this node's replica when it has applied the
  batch (atoms are immutable, so any replica that has it may serve it),
  otherwise fetched from the partition's leader.
- **read_root**: on the meta leader, after a ReadIndex barrier
  (linearizable).
- **commit**: on the meta leader. The client has put its batch; the node
  compare-and-sets the root to the client's new root when its base is
  current, or rebases it with the embedded engine's `Committer` (same merge
  code, run in a worker thread over `NodeStorage`) and sets the merged
  root. Every root change is recorded under the client's transaction id, so
  a repeated request answers the first outcome.

Every node is a coordinator: an operation for a group this node does not
lead is forwarded to the leader's client URL (with the same bearer token),
once; meta operations that reach a follower answer `NotLeader` so the
client goes to the leader itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from protobase.atoms import AtomPointer, new_transaction_id
from protobase.committer import SpaceChange
from protobase.errors import (
    AtomNotFoundError,
    CommitOutcomeUnknown,
    CorruptionError,
    RootConflict,
    StorageError,
)
from protobase.space import ObjectSpace
from protobase.storage.interfaces import CommitBatch, CommitInfo, DatabaseReads, RootRef
from protobase.transaction import Snapshot

from .balance import Member as BalanceMember
from .balance import goal_placement
from .cold_tier import ColdTier
from .config import ConfigError, NodeSettings, parse_address
from .errors import CommitConflict, Unavailable, UnknownOutcome
from .failpoints import Failpoints, failing_sync
from .membership import MembershipError, Mover, joined, with_state
from .meta import ClusterMap, MetaEntryError, MetaMachine, cas_entry, map_entry
from .metrics import NodeMetrics
from .partition_store import EntryEvicted, PartitionEntryError, PartitionMachine, chunks
from .partitions import META_GROUP, group_of_partition, partition_for
from .raft.errors import NotLeader, ProposalDropped
from .raft.node import NodeConfig, NodeStopped, OutcomeUnknown, ProposalTimeout, RaftNode
from .raft.types import ConfChange, ConfChangeKind

log = logging.getLogger("protobase.node")

FORWARDED = "X-ProtoBase-Forwarded"
MAX_PREFETCH_BYTES = 8 << 20
"""Most bytes of whole batches one atom read brings along."""
RECENT_BATCHES = 256
RECENT_BATCH_BYTES = 256 << 10
"""Root batches kept to answer root reads with (count, and bytes of one batch)."""
ROOT_CHANGE_TIMEOUT = 1e9
"""Seconds a root change waits to be applied: in effect, until it is."""
SPECULATION_ATTEMPTS = 8
MAP_POLL_SECONDS = 1.0
"""How often a node outside the meta group asks for the map, and every node
looks for members to dial."""
"""Rebases of one commit whose speculative root change failed, before ConflictError."""


class ClusterNode:
    """See the module docstring."""

    def __init__(self, settings: NodeSettings, failpoints: Failpoints | None = None) -> None:
        self.settings = settings
        self.failpoints = failpoints or Failpoints()
        """Deliberate bugs for the chaos harness's mutation check (off in use)."""
        self.id = settings.node_id
        _check_identity(settings)
        self.meta = MetaMachine()
        self._fetched_map: ClusterMap | None = None
        """The newest map learned from another member (a node outside the meta
        group has no map of its own)."""
        self._placement_cache: tuple[ClusterMap, dict[int, tuple[int, ...]]] | None = None
        self.left = asyncio.Event()
        """Set once the map no longer names this node and it holds no group."""
        self._peers_epoch = 0
        """The map epoch whose members the transport dials (0: the configured ones)."""
        self.partitions: dict[int, PartitionMachine] = {}
        self.cold: ColdTier | None = None
        config = NodeConfig(
            node_id=self.id,
            listen=settings.peer_listen,
            peers={m.id: m.peer for m in settings.members},
            data_dir=settings.data_dir / "raft",
            secret=settings.secret,
            tick_interval=settings.tick_interval,
            election_tick=settings.election_ticks,
            # The meta group's log is compacted behind its snapshots; a
            # partition's is not (`first_needed_index`): its entries are its data.
            snapshot_every=settings.snapshot_every,
            segment_bytes=settings.log_segment_bytes,
            keep_entries=settings.keep_entries,
        )
        self.raft = RaftNode(config, {})
        on_disk = self.raft.store.groups()
        if on_disk:
            # A restart: the groups this node had. The map, once read, may start
            # more or drop some (`_follow_groups`).
            for group in on_disk:
                self._start_group(group)
        elif settings.join is None:
            # The first start: the groups the configured members bootstrap. (A
            # joining node starts none: the cluster places replicas on it.)
            for group, replicas in self.placement.items():
                if self.id in replicas:
                    self._start_group(group, replicas)
        self.mover = Mover(self)
        if self.failpoints.disk_faults:
            self.raft.store.sync = failing_sync(  # type: ignore[method-assign]
                self.raft.store.sync, settings.data_dir
            )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.session: aiohttp.ClientSession | None = None
        self._spaces: dict[str, ObjectSpace] = {}
        self._pipelines: dict[str, RootPipeline] = {}
        self.recent_batches: OrderedDict[bytes, list[bytes]] = OrderedDict()
        """The atoms of the batches the latest roots were written in: a root
        read answers with them, since the next transaction reads them first."""
        self._running: dict[bytes, asyncio.Future[RootRef]] = {}
        """Commits in progress here, by the client's transaction id."""
        self._meta_reads = SharedBarrier(self.raft, META_GROUP)
        if settings.s3 is not None:
            self.cold = ColdTier(
                settings.s3,
                self.raft,
                self.partitions,
                self._meta_snapshot,
                config.data_dir,
                self.is_leader,
                settings.cluster,
            )
        self.metrics = NodeMetrics(
            lambda: self.status()["groups"],
            self._figures,
            None if self.cold is None else self.cold.status,
            settings.data_dir,
        )
        self.raft.store.sync = timed_sync(  # type: ignore[method-assign]
            self.raft.store.sync,
            self.metrics.fsync_seconds,
            self.metrics.commit_phase_seconds.labels("fsync"),
        )
        self._barrier_term = -1
        """The meta leader term whose read barrier has passed here."""
        self.started = time.time()

    def _entry_reader(self, group: int) -> Any:
        return lambda index: self.raft.read_entry(group, index)

    def _meta_snapshot(self) -> tuple[int, bytes] | None:
        """(applied index, state) of the meta group when this node leads it."""
        if not self.is_leader(META_GROUP):
            return None
        return int(self.raft.status(META_GROUP)["applied"]), self.meta.snapshot_bytes()

    async def _read_partition(self, group: int, read: Any) -> Any:
        """`read()` of a partition machine, bringing evicted entries back from S3.

        Returns None (the caller asks the leader) when an entry is neither
        on this node's disk nor uploaded yet.
        """
        machine = self.partitions[group]
        for _ in range(1000):
            try:
                return read()
            except EntryEvicted as evicted:
                if self.cold is None:
                    raise StorageError(
                        f"partition group {group}: log entry {evicted.log_index} was "
                        "compacted on this node and no [s3] cold tier is configured"
                    ) from evicted
                data = await asyncio.to_thread(self.cold.fetch_entry, group, evicted.log_index)
                if data is None:
                    if self.is_leader(group):
                        raise Unavailable(
                            f"partition group {group}: entry {evicted.log_index} is not on "
                            "this node and not in S3 yet; retry"
                        ) from evicted
                    return None
                try:
                    machine.remember(evicted.log_index, data, check=True)
                except PartitionEntryError as exc:
                    raise CorruptionError(
                        f"partition group {group}: entry {evicted.log_index} in the cold tier "
                        f"({self.cold.location}) is not this cluster's: {exc}"
                    ) from exc
        raise StorageError(f"partition group {group}: a read kept finding evicted entries")

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.settings.token}"},
            timeout=aiohttp.ClientTimeout(total=15),
        )
        await self.raft.start()
        if self.settings.join is not None and not self.raft.groups:
            await self._join(self.settings.join)
        else:
            self._map_task = asyncio.ensure_future(self._publish_map())
        self._follow_task = asyncio.ensure_future(self._follow_map())
        self._mover_task = asyncio.ensure_future(self.mover.run())
        if self.cold is not None:
            await self.cold.start()

    async def _follow_map(self) -> None:
        """Keep up with the cluster map: once a second, dial the members it
        names and run the groups it places here. The map this node has (its
        meta replica's, or one a meta replica sent) serves, except before
        dropping a group or leaving: those read it linearizably (`current_map`)."""
        failing = False
        while True:
            await asyncio.sleep(MAP_POLL_SECONDS)
            if self.map_epoch == 0 and META_GROUP in self.raft.groups:
                continue  # the first map is not written yet (this replica will apply it)
            try:
                if META_GROUP not in self.raft.groups:
                    await self._fetch_map()
                elif self.raft.leader(META_GROUP) is None:
                    # A meta replica that hears no leader may have been removed
                    # from the group while this node was down; its own map would
                    # then never change again. The others' maps tell.
                    try:
                        await self._fetch_map()
                    except Unavailable as exc:  # this node's own map serves meanwhile
                        log.debug("node %d: no other meta replica answered: %s", self.id, exc)
                current = self.cluster_map
                if self._would_drop(current):
                    current = await self.current_map()
            except Unavailable as exc:
                if not failing:  # once per streak, not once a second
                    log.warning("node %d: cannot read the cluster map: %s", self.id, exc)
                failing = True
                continue
            failing = False
            self.learn_map(current)
            self._follow_members()
            await self._follow_groups(current)
            if self.id not in current.member_ids() and not self.raft.groups:
                log.info(
                    "node %d is no longer a member of the cluster (map epoch %d); stopping",
                    self.id,
                    current.epoch,
                )
                _write_durably(
                    self.settings.data_dir / LEFT_MARKER,
                    json.dumps({"member": self.id, "epoch": current.epoch}),
                )
                self.left.set()
                return

    def _would_drop(self, current: ClusterMap) -> bool:
        """Whether `current` has this node drop a group or leave."""
        placement = current.placement()
        return self.id not in current.member_ids() or any(
            self.id not in placement.get(group, ()) for group in self.raft.groups
        )

    async def _fetch_map(self) -> None:
        """Learn the map from a meta replica (not linearizable: a replica may lag).

        The meta replicas the newest known map names are asked first, then
        every other member it names, then the `join` URL: a node restarted
        without a meta replica starts from its configured map, which may name
        none that still serves (a joined member's names only itself).
        """
        errors = []
        known = self.cluster_map
        members = [*self.placement.get(META_GROUP, ()), *known.member_ids()]
        urls = [self.client_url(m) for m in dict.fromkeys(members) if m != self.id]
        if self.settings.join is not None:
            urls.append(self.settings.join)
        for url in dict.fromkeys(u for u in urls if u is not None):
            try:
                found = await self._map_from(url, current=False)
            except Unavailable as exc:
                errors.append(str(exc))
                continue
            assert isinstance(found, ClusterMap)
            self.learn_map(found)
            return
        raise Unavailable("no meta replica sent the map: " + "; ".join(errors))

    async def _map_from(self, url: str, current: bool) -> ClusterMap | str:
        """The map the member at `url` sends. With `current`, only the meta leader
        answers (after its read barrier); another member names it, and its URL
        is returned instead.

        Raises:
            Unavailable: no answer, an error, or no (well-formed) map.
        """
        assert self.session is not None
        try:
            async with self.session.post(
                url + "/v1/cluster",
                data=msgpack.packb({"current": True} if current else {}),
                timeout=aiohttp.ClientTimeout(total=5),
            ) as response:
                payload = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"{url} did not answer: {exc!r}") from exc
        hint = _leader_hint(payload) if response.status == 421 and current else None
        if hint is not None:
            return hint
        if response.status != 200:
            raise Unavailable(f"{url} answered {response.status}: {_error_text(payload)}")
        try:
            wire = msgpack.unpackb(payload).get("map")
        except ValueError as exc:
            raise Unavailable(f"{url} answered with a body that is not msgpack") from exc
        if wire is None:
            raise Unavailable(f"{url} has no cluster map yet")
        try:
            return ClusterMap.from_wire(wire)
        except MetaEntryError as exc:
            raise Unavailable(f"{url} sent a malformed map: {exc}") from exc

    async def current_map(self) -> ClusterMap:
        """The cluster map as of now: every map change committed before the call
        is in it. The meta leader passes a read barrier; any other node asks
        the meta leader.

        Raises:
            Unavailable: no meta leader answered.
        """
        if self.is_leader(META_GROUP):
            try:
                await self._meta_reads.barrier()
            except (NotLeader, OutcomeUnknown, NodeStopped, ProposalTimeout) as exc:
                raise Unavailable(f"the meta group's read barrier failed: {exc}") from exc
            found = self.meta.state.cluster_map
            if found is None:
                raise Unavailable("the cluster map is not written yet")
            return found
        mine = self.client_url(self.id)
        known = self.leader_url(META_GROUP)
        # No leader known here: the meta replicas name theirs.
        asked = (
            [known]
            if known is not None
            else [self.client_url(r) for r in self.placement.get(META_GROUP, ()) if r != self.id]
        )
        errors = []
        for first in asked:
            url = first
            for _ in range(2):  # the leader named may have just changed: follow its hint once
                if url is None or url == mine:
                    break
                try:
                    answer = await self._map_from(url, current=True)
                except Unavailable as exc:
                    errors.append(str(exc))
                    break
                if isinstance(answer, ClusterMap):
                    return answer
                url = answer
        raise Unavailable("no meta leader answered" + (": " + "; ".join(errors) if errors else ""))

    async def _follow_groups(self, current: ClusterMap) -> None:
        """Run exactly the groups `current` places here.

        A group placed here and not running starts empty (its leader adds this
        node as a learner and sends it the data). A group running here that
        the current map no longer places here was left: the map drops a
        replica only after the group's Raft configuration removed it, so its
        log is deleted. The map is read linearizably, so a lagging view never
        drops a replica that is still in use.
        """
        placement = current.placement()
        for group, replicas in sorted(placement.items()):
            if self.id in replicas and group not in self.raft.groups:
                log.info(
                    "node %d: starting group %d, placed here (epoch %d)",
                    self.id,
                    group,
                    current.epoch,
                )
                self._start_group(group)
        for group in sorted(self.raft.groups):
            if self.id in placement.get(group, ()):
                continue
            conf = await self.mover.conf(group, placement.get(group, ()))
            if conf is None or self.id in conf.voters | conf.learners:
                continue  # its configuration still counts this node: not yet
            log.info(
                "node %d: dropping group %d, moved away (epoch %d)",
                self.id,
                group,
                current.epoch,
            )
            await self._drop_group(group)

    def _start_group(self, group: int, voters: tuple[int, ...] = ()) -> None:
        """Run `group` here: with `voters` when it is new and bootstraps with
        them, or with none (its log says who they are, or its leader will add
        this node as a learner)."""
        if group == META_GROUP:
            self.raft.add_group(group, self.meta, voters)
        else:
            machine = PartitionMachine(self._entry_reader(group))
            self.partitions[group] = machine
            self.raft.add_group(group, machine, voters)
        if self.cold is not None:
            self.cold.follow_groups()

    async def _drop_group(self, group: int) -> None:
        # Readers of `partitions` (metrics, the cold tier) stop seeing it first.
        self.partitions.pop(group, None)
        if self.cold is not None:
            self.cold.follow_groups()
        await self.raft.remove_group(group)

    def _follow_members(self) -> None:
        """Dial the members the map names (a new member's address is learned here)."""
        current = self.cluster_map
        if current.epoch == self._peers_epoch:
            return
        # node.toml's [[members]] and [peer_routes] say how this node reaches a
        # member (a proxy may stand between them); the map gives the others.
        peers = {
            member: self.settings.peer_route(member)
            or parse_address(peer, f"the peer address of member {member}")
            for member, peer, _ in current.members
            if member != self.id
        }
        self.raft.set_peers(peers)
        self._peers_epoch = current.epoch

    async def _publish_map(self) -> None:
        """The first meta leader writes the configured map as epoch 1; until the
        meta group holds a map, this node is not ready."""
        configured = self.configured_map()
        while self.meta.state.cluster_map is None:
            if self.is_leader(META_GROUP):
                try:
                    await self.propose(META_GROUP, map_entry(configured))
                except (NotLeader, Unavailable) as exc:
                    log.info("node %d: the cluster map is not written yet: %s", self.id, exc)
            await asyncio.sleep(self.settings.tick_interval)
        found = self.meta.state.cluster_map
        if found.partitions != configured.partitions:
            log.error(
                "node %d: its config says %d partitions, the cluster map (epoch %d) %d; "
                "the map decides",
                self.id,
                configured.partitions,
                found.epoch,
                found.partitions,
            )
        elif found.members != configured.members:
            log.info(
                "node %d: the cluster map (epoch %d) has members %s; the [[members]] of "
                "node.toml only bootstrap a cluster",
                self.id,
                found.epoch,
                [m[0] for m in found.members],
            )

    def configured_map(self) -> ClusterMap:
        """Epoch 1 as the config describes it: the `[[members]]` that bootstrap
        the cluster, with the placement written out as data."""
        configured = self.settings.members
        members = tuple((m.id, f"{m.peer[0]}:{m.peer[1]}", m.client) for m in configured)
        groups = range(self.settings.partitions + 1)
        computed = goal_placement(
            {group: () for group in groups},
            [BalanceMember(m.id, m.zone) for m in configured],
            self.settings.replication,
        )
        return ClusterMap(
            1,
            members,
            self.settings.partitions,
            self.settings.replication,
            groups=tuple(sorted(computed.items())),
            zones=tuple((m.id, m.zone) for m in configured if m.zone),
        )

    @property
    def cluster_map(self) -> ClusterMap:
        """The newest cluster map this node knows: the meta group's as applied
        here, or the newest learned from another member; before either, the
        configured one."""
        known = [m for m in (self.meta.state.cluster_map, self._fetched_map) if m is not None]
        return max(known, key=lambda m: m.epoch) if known else self.configured_map()

    def learn_map(self, cluster_map: ClusterMap) -> None:
        """Remember a map learned from another member, if it is newer."""
        if cluster_map.epoch > self.cluster_map.epoch:
            self._fetched_map = cluster_map

    @property
    def placement(self) -> dict[int, tuple[int, ...]]:
        """Group id -> its replicas, by the newest map known here."""
        current = self.cluster_map
        cached = self._placement_cache
        if cached is None or cached[0] is not current:
            cached = self._placement_cache = (current, current.placement())
        return cached[1]

    def client_url(self, node_id: int) -> str | None:
        """Member `node_id`'s client URL: as node.toml's `[[members]]` give it
        (how this node reaches it), else as the newest map has it."""
        configured = self.settings.client_url(node_id)
        if configured is not None:
            return configured
        member = self.cluster_map.member(node_id)
        return member[2] if member is not None else None

    @property
    def map_epoch(self) -> int:
        """The epoch of the newest cluster map this node knows (0 before the first)."""
        known = [m.epoch for m in (self.meta.state.cluster_map, self._fetched_map) if m]
        return max(known, default=0)

    async def stop(self) -> None:
        if self.cold is not None:
            await self.cold.stop()
        for name in ("_map_task", "_follow_task", "_mover_task"):
            task = getattr(self, name, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for space in self._spaces.values():
            space.close()
        if self.session is not None:
            await self.session.close()
        await self.raft.stop()

    # -- leaders and routing -------------------------------------------------------

    def leader(self, group: int) -> int | None:
        if group in self.raft.groups:
            return self.raft.leader(group)
        return None

    def leader_url(self, group: int) -> str | None:
        leader = self.leader(group)
        if leader is None:
            # A group not replicated here, or one this node joins and whose
            # leader has not contacted it yet: ask another replica, which forwards.
            replicas = [r for r in self.placement.get(group, ()) if r != self.id]
            return self.client_url(replicas[0]) if replicas else None
        return self.client_url(leader)

    def is_leader(self, group: int) -> bool:
        return group in self.raft.groups and self.raft.leader(group) == self.id

    def ready(self) -> tuple[bool, str]:
        """Whether every group placed here has a leader and the cluster map is
        known here (the /ready answer)."""
        for group in self.raft.groups:
            if self.raft.leader(group) is None:
                name = "meta group" if group == META_GROUP else f"partition group {group}"
                return False, f"{name} has no leader yet"
        if self.map_epoch == 0 and META_GROUP in self.raft.groups:
            return False, "the cluster map is not written yet"
        return True, "ready"

    async def forward(self, group: int, route: str, body: bytes, forwarded: bool) -> bytes:
        """Send an operation to the leader of `group`; its answer's body.

        The wait ends early, with `Unavailable`, when this node sees the group's
        leader change: a leader that stopped (SIGSTOP, a hung machine) accepts the
        connection and never answers, and the caller should retry at the new leader
        at once rather than wait out the HTTP timeout. Every forwarded operation is
        idempotent by id, so the retry is safe whatever the old leader did.
        """
        url = self.leader_url(group)
        if url is None or url == self.settings.me.client:
            raise Unavailable(f"group {group} has no leader this node can reach; retry")
        if forwarded:
            # Forwarded once already: name the leader (421) rather than forward
            # again, so requests never travel in circles.
            leader = self.leader(group)
            if leader is None:
                raise Unavailable(f"group {group} has no leader this node knows; retry")
            raise NotLeader(group, leader)
        target = self.leader(group)
        request = asyncio.ensure_future(self._post_to_leader(group, url, route, body))
        try:
            while True:
                done, _ = await asyncio.wait({request}, timeout=self.settings.tick_interval)
                if done:
                    return request.result()
                if target is not None and self.leader(group) != target:
                    raise Unavailable(
                        f"group {group}: its leader changed from node {target} while "
                        "the operation was forwarded to it; retry"
                    )
        finally:
            if not request.done():
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)

    async def _post_to_leader(self, group: int, url: str, route: str, body: bytes) -> bytes:
        """POST to the node at `url`; a replica that is not the leader names it
        (421), and the request goes there once."""
        assert self.session is not None
        for _ in range(2):
            try:
                async with self.session.post(
                    url + route,
                    data=body,
                    headers={FORWARDED: str(self.id), "Content-Type": "application/msgpack"},
                ) as response:
                    payload = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise Unavailable(
                    f"the leader of group {group} at {url} is unreachable: {exc}"
                ) from exc
            if status == 200:
                return payload
            error = _error_text(payload)
            hint = _leader_hint(payload) if status == 421 else None
            if hint is not None and hint.rstrip("/") != url:
                url = hint.rstrip("/")
                continue
            if status == 404:
                raise AtomNotFoundError(error)
            if status == 409:
                raise CommitConflict(error)
            if status in (421, 503):
                raise Unavailable(f"group {group}: {error}")
            raise StorageError(f"node at {url} answered {status}: {error}")
        raise Unavailable(f"group {group}: its leader moved while the request was forwarded")

    async def propose(self, group: int, entry: bytes, timeout: float | None = None) -> Any:
        try:
            return await self.raft.propose(group, entry, timeout)
        except NotLeader:
            raise
        except ProposalDropped as exc:
            raise Unavailable(str(exc)) from exc
        except (OutcomeUnknown, NodeStopped) as exc:
            raise UnknownOutcome(str(exc)) from exc

    # -- batches -------------------------------------------------------------------

    async def put_batch(
        self,
        transaction_id: bytes,
        atoms: list[bytes],
        links: list[Any] | None,
        body: bytes | None,
        forwarded: bool = False,
        first: int = 0,
        total: int | None = None,
    ) -> None:
        """Store atoms `first` .. of batch `transaction_id` (of `total`; default:
        `atoms` is the whole batch). A client sends a batch too large for one
        request in parts; the batch is readable once every part is applied."""
        group = group_of_partition(partition_for(transaction_id, self.settings.partitions))
        if not self.is_leader(group):
            if body is None:
                body = msgpack.packb(
                    {
                        "txid": transaction_id,
                        "atoms": atoms,
                        "links": links,
                        "first": first,
                        "total": total,
                    }
                )
            await self.forward(group, "/v1/batch/put", body, forwarded)
            return
        machine = self.partitions[group]
        known = machine.batches.get(transaction_id)
        if known is not None and known.total != (len(atoms) if total is None else total):
            raise StorageError(
                f"transaction id {transaction_id.hex()} is already stored with {known.total} "
                "atoms; every commit needs a fresh transaction id"
            )
        stored = await self._read_partition(
            group, lambda: machine.part_atoms(transaction_id, first, len(atoms))
        )
        if stored is not None:
            if stored != atoms:
                raise StorageError(
                    f"transaction id {transaction_id.hex()} is already stored with "
                    "different atoms; every commit needs a fresh transaction id"
                )
            return
        started = time.perf_counter()
        for entry in chunks(transaction_id, atoms, links, offset=first, total=total):
            await self.propose(group, entry)
        self.metrics.commit_phase_seconds.labels("put_batch").observe(time.perf_counter() - started)

    async def get_atoms(
        self, pointers: Sequence[tuple[bytes, int]], forwarded: bool
    ) -> list[bytes]:
        return (await self.get_atoms_and_batches(pointers, forwarded, 0))[0]

    async def get_atoms_and_batches(
        self, pointers: Sequence[tuple[bytes, int]], forwarded: bool, prefetch: int
    ) -> tuple[list[bytes], dict[bytes, list[bytes]]]:
        """The atoms of `pointers`, and whole batches they belong to, at most
        `prefetch` bytes of them (atoms of one commit are mostly read together:
        a cold client then needs one request per batch, not one per tree level)."""
        found: list[bytes | None] = [None] * len(pointers)
        batches: dict[bytes, list[bytes]] = {}
        budget = min(prefetch, MAX_PREFETCH_BYTES)
        remote: dict[int, list[int]] = {}
        for position, (transaction_id, index) in enumerate(pointers):
            group = group_of_partition(partition_for(transaction_id, self.settings.partitions))
            machine = self.partitions.get(group)
            atom = None
            if machine is not None:
                atom = await self._read_partition(
                    group, lambda m=machine, t=transaction_id, i=index: m.atom(t, i)
                )
                if atom is None and self.is_leader(group):
                    # A leader elected moments ago may not have applied all that
                    # its predecessor committed: after a read barrier it has.
                    await self._partition_barrier(group)
                    atom = await self._read_partition(
                        group, lambda m=machine, t=transaction_id, i=index: m.atom(t, i)
                    )
                    if atom is None:
                        raise AtomNotFoundError(
                            f"no atom at ({transaction_id.hex()}, {index}) in partition "
                            f"group {group}"
                        )
            if atom is not None:
                found[position] = atom
                if budget > 0 and transaction_id not in batches and machine is not None:
                    size = await self._read_partition(
                        group, lambda m=machine, t=transaction_id: m.batch_bytes(t)
                    )
                    if size is not None and size <= budget:
                        whole = await self._read_partition(
                            group, lambda m=machine, t=transaction_id: m.batch_atoms(t)
                        )
                        if whole is not None:
                            batches[transaction_id] = whole
                            budget -= size
            else:
                remote.setdefault(group, []).append(position)
        for group, positions in remote.items():
            body = msgpack.packb(
                {"pointers": [list(pointers[p]) for p in positions], "prefetch": budget}
            )
            answer = msgpack.unpackb(await self.forward(group, "/v1/atoms/get", body, forwarded))
            for position, atom in zip(positions, answer["atoms"], strict=True):
                found[position] = atom
            for transaction_id, atoms in answer.get("batches", {}).items():
                batches[transaction_id] = atoms
                budget -= sum(len(a) for a in atoms)
        return found, batches  # type: ignore[return-value]

    async def _partition_barrier(self, group: int) -> None:
        """Wait until this leader has applied everything committed in `group`
        before the call (a ReadIndex round).

        Raises:
            Unavailable: it is not the leader any more, or no quorum answered.
        """
        try:
            await self.raft.read_barrier(group, timeout=5.0)
        except (NotLeader, OutcomeUnknown, NodeStopped, ProposalTimeout) as exc:
            raise Unavailable(f"partition group {group}: read barrier failed: {exc}") from exc

    # -- roots ---------------------------------------------------------------------

    def remember_batch(self, transaction_id: bytes, atoms: list[bytes]) -> None:
        if sum(len(a) for a in atoms) > RECENT_BATCH_BYTES:
            return
        self.recent_batches[transaction_id] = atoms
        self.recent_batches.move_to_end(transaction_id)
        while len(self.recent_batches) > RECENT_BATCHES:
            self.recent_batches.popitem(last=False)

    def led_partitions(self) -> list[int]:
        """The partitions (0-based) whose groups this node leads."""
        return [g - 1 for g in self.raft.groups if g != META_GROUP and self.is_leader(g)]

    def check_meta_leader(self) -> None:
        """Raises NotLeader naming the meta leader, or (on a node outside the
        meta group) a meta replica, which knows the leader."""
        if not self.is_leader(META_GROUP):
            hint = self.leader(META_GROUP)
            if META_GROUP not in self.raft.groups:
                replicas = [r for r in self.placement.get(META_GROUP, ()) if r != self.id]
                hint = replicas[0] if replicas else None
            raise NotLeader(META_GROUP, hint)

    async def read_root(self, space: str) -> RootRef:
        if self.failpoints.stale_follower_reads and META_GROUP in self.raft.groups:
            root = self.meta.root(space)  # the deliberate bug: no barrier, any member
            return RootRef(AtomPointer(*root.pointer) if root.pointer else None, root.version)
        self.check_meta_leader()
        try:
            await self._meta_reads.barrier()
        except (OutcomeUnknown, NodeStopped) as exc:
            raise Unavailable(str(exc)) from exc
        root = self.meta.root(space)
        return RootRef(AtomPointer(*root.pointer) if root.pointer else None, root.version)

    async def set_root(
        self,
        space: str,
        expected: int,
        root: AtomPointer,
        change_id: bytes,
        alias: bytes | None = None,
        expected_root: AtomPointer | None = None,
        size: int = 0,
    ) -> RootRef:
        """Compare-and-set the root of `space` (meta leader only); with
        `expected_root`, the current root must be that pointer as well."""
        self.check_meta_leader()
        wire_expected = None
        if expected_root is not None:
            wire_expected = (expected_root.transaction_id, expected_root.index)
        entry = cas_entry(
            space,
            expected,
            wire_expected,
            (root.transaction_id, root.index),
            change_id,
            alias,
            time.time(),
            size,
        )
        # No timeout: while this node lives, a root change's future ends only
        # when its entry is applied or overwritten, so its outcome is never
        # left unknown here (a repeated request waits for it; see `commit`).
        started = time.perf_counter()
        result = await self.propose(META_GROUP, entry, ROOT_CHANGE_TIMEOUT)
        self.metrics.commit_phase_seconds.labels("cas").observe(time.perf_counter() - started)
        if result[0] == "ok":
            return RootRef(root, result[1])
        if result[0] == "dup":
            return RootRef(AtomPointer(*result[2]), result[1])
        raise RootConflict(f"root of space {space!r} is at version {result[1]}, not {expected}")

    async def check_cas(
        self, space: str, expected: int | None, root: AtomPointer, change_id: bytes, count: int
    ) -> None:
        """Raise what a root change to `root` in a batch of `count` atoms would.

        A check before the batch is put, so that a refused commit stores
        nothing: `root` must be an atom of the batch or a stored one, and
        (for a compare-and-set, `expected` given) the version must be
        current. The root change itself still decides (a root that moves in
        between leaves the batch unreachable, for pack to remove).
        """
        if self.meta.outcome(change_id) is not None:
            return
        current = self.meta.root(space).version
        if expected is not None and current != expected:
            raise RootConflict(f"root of space {space!r} is at version {current}, not {expected}")
        if root.transaction_id == change_id:
            if not 0 <= root.index < count:
                raise StorageError(f"new root {root} is not an atom of the batch")
        else:
            try:
                await self.get_atoms([(root.transaction_id, root.index)], False)
            except AtomNotFoundError as exc:
                raise StorageError(f"new root {root} is not a stored atom") from exc

    async def history(self, space: str) -> list[CommitInfo]:
        """The recent commits of `space` (the last `RECENT_ROOTS`), oldest first."""
        await self.read_root(space)
        return [
            CommitInfo(version, r.time, r.size, r.change_id, AtomPointer(*r.pointer))
            for version, r in self.meta.history(space)
        ]

    async def checkpoint(self) -> dict[str, Any]:
        """Upload the meta state to the cold tier now (meta leader only): a backup's cut.

        Every batch a root of this state names was applied in its partition
        before the root change was proposed, so once each partition's
        uploads pass the commit index its replicas report after this call,
        the cold tier holds everything this state reaches.
        """
        self.check_meta_leader()
        if self.cold is None:
            raise StorageError(
                "this cluster has no cold tier; add an [s3] table to every node.toml "
                "to back it up to S3"
            )
        try:
            await self._meta_reads.barrier()
        except (OutcomeUnknown, NodeStopped) as exc:
            raise Unavailable(str(exc)) from exc
        index, key = await self.cold.upload_meta_now()
        return {"meta_index": index, "key": key, "location": str(self.cold.location)}

    async def commit_outcome(self, change_id: bytes) -> RootRef | None:
        self.check_meta_leader()
        await self.raft.read_barrier(META_GROUP)
        found = self.meta.outcome(change_id)
        if found is None:
            return None
        return RootRef(AtomPointer(*found[2]), found[1])

    async def commit(
        self,
        space: str,
        base_version: int,
        new_root: AtomPointer,
        transaction_id: bytes,
        reads: dict[str, DatabaseReads],
        rebase: bool = True,
        stored: bool = False,
        size: int = 0,
    ) -> RootRef:
        """Set the root to the client's `new_root` (in a batch of `size` bytes, when
        known), rebasing it when its base is stale (or raising `RootConflict`, when
        `rebase` is False).

        Exactly once per transaction id: a repeated request waits for the
        first one still running here, and finds the outcome of one that ran
        before (on this leader, or on an earlier one: the first commit of a
        leader's term passes a read barrier, so every root change an earlier
        leader got committed is applied before `done` is consulted). Without
        this, a repeat could rebase the change onto its own first copy and
        answer ConflictError for a commit that happened.
        """
        self.check_meta_leader()
        running = self._running.get(transaction_id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[RootRef] = asyncio.get_running_loop().create_future()
        self._running[transaction_id] = future
        started = time.perf_counter()
        try:
            ref = await self._commit_once(
                space, base_version, new_root, transaction_id, reads, rebase, stored, size
            )
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a repeat may never come
            outcome = "conflict" if isinstance(exc, CommitConflict | RootConflict) else "failed"
            self.metrics.commits.labels(outcome).inc()
            raise
        else:
            future.set_result(ref)
            self.metrics.commits.labels("committed").inc()
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
            return ref
        finally:
            del self._running[transaction_id]

    async def _commit_once(
        self,
        space: str,
        base_version: int,
        new_root: AtomPointer,
        transaction_id: bytes,
        reads: dict[str, DatabaseReads],
        rebase: bool,
        stored: bool,
        size: int,
    ) -> RootRef:
        term = self.raft.group(META_GROUP).term
        if self._barrier_term != term:
            await self.raft.read_barrier(META_GROUP)
            self._barrier_term = term
        earlier = self.meta.outcome(transaction_id)
        if earlier is not None:
            return RootRef(AtomPointer(*earlier[2]), earlier[1])
        if not stored:
            # The new root must be stored before any root names it.
            await self.get_atoms([(new_root.transaction_id, new_root.index)], False)
        if not rebase:
            return await self.set_root(space, base_version, new_root, transaction_id, size=size)
        base_pointer = self.meta.root_at(space, base_version) if base_version else None
        if base_version and base_pointer is None:
            raise CommitConflict(
                f"the commit's base version {base_version} is too old to rebase here; "
                "nothing was written. Run the transaction again."
            )
        base = RootRef(AtomPointer(*base_pointer) if base_pointer else None, base_version)
        try:
            # Built on the newest root: set it, after the changes already queued.
            return await asyncio.wrap_future(
                self._pipeline(space).start(
                    CommitBatch(transaction_id, []), base, new_root, None, size
                )
            )
        except RootConflict:
            pass
        if self.failpoints.overwrite_on_rebase:
            # The deliberate bug: the client's root replaces the current one.
            head = self._pipeline(space).head()
            if head is None:
                applied = self.meta.root(space)
                pointer = AtomPointer(*applied.pointer) if applied.pointer else None
                head = RootRef(pointer, applied.version)
            return await asyncio.wrap_future(
                self._pipeline(space).start(
                    CommitBatch(transaction_id, []), head, new_root, None, size
                )
            )
        self.metrics.rebases.inc()
        for _ in range(SPECULATION_ATTEMPTS):
            try:
                merged = await asyncio.to_thread(
                    self._rebase, space, base, new_root, transaction_id, reads
                )
            except RootConflict:
                # A root change proposed before this one failed, so this one,
                # built on it, failed too: rebase again on what was applied.
                earlier = self.meta.outcome(transaction_id)
                if earlier is not None:
                    return RootRef(AtomPointer(*earlier[2]), earlier[1])
            else:
                self.metrics.merges.inc()
                return merged
        raise CommitConflict(
            f"the commit was rebased {SPECULATION_ATTEMPTS} times while earlier root changes "
            "kept failing; nothing was written. Run the transaction again."
        )

    def object_space(self, name: str) -> ObjectSpace:
        """The object space this node rebases commits of `name` in (its cache lives on)."""
        space = self._spaces.get(name)
        if space is None:
            # Its roots may go back: a withdrawn speculation (see RootPipeline).
            space = self._spaces[name] = ObjectSpace(NodeStorage(self, name), monotonic_reads=False)
        return space

    def _pipeline(self, space: str) -> RootPipeline:
        pipeline = self._pipelines.get(space)
        if pipeline is None:
            pipeline = self._pipelines[space] = RootPipeline(self, space)
        return pipeline

    def _rebase(
        self,
        space_name: str,
        base: RootRef,
        new_root: AtomPointer,
        transaction_id: bytes,
        reads: dict[str, DatabaseReads],
    ) -> RootRef:
        """Runs in a worker thread: the embedded commit protocol over `NodeStorage`."""
        from protobase.errors import ConflictError

        space = self.object_space(space_name)
        storage = space.storage
        assert isinstance(storage, NodeStorage)
        snapshot = Snapshot(space, base)
        try:
            storage.local.alias = transaction_id
            storage.local.building = base
            mine = snapshot.databases_at(RootRef(new_root, base.version))
            change = SpaceChange(
                base,
                snapshot.databases_at(base),
                mine,
                reads,
                stored_root=new_root,
                transaction_id=transaction_id,
            )
            try:
                return space.committer.commit(change, snapshot)
            except ConflictError as exc:
                raise CommitConflict(str(exc)) from exc
        finally:
            storage.local.alias = None
            storage.local.building = None
            snapshot.close()

    # -- membership ----------------------------------------------------------------

    async def _join(self, url: str) -> None:
        """Become a member of the cluster `url` belongs to (retried until it answers)."""
        me = self.settings.me
        body = {
            "member": self.id,
            "peer": f"{me.peer[0]}:{me.peer[1]}",
            "client": me.client,
            "zone": self.settings.zone,
        }
        delay = 0.5
        while True:
            try:
                answer = await self.post_admin(url, "/v1/admin/members/join", body, 15.0)
            except MembershipError as exc:
                log.warning("node %d: joining through %s: %s; retrying", self.id, url, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.learn_map(ClusterMap.from_wire(answer["map"]))
            self._follow_members()
            log.info("node %d joined the cluster (map epoch %d)", self.id, self.map_epoch)
            return

    async def join_member(
        self, member: int | None, peer: str, client: str, zone: str | None
    ) -> tuple[int, ClusterMap]:
        """Meta leader: add a member to the map; its id and the new map."""
        self.check_meta_leader()
        current = await self.current_map()
        new_map, member_id = joined(current, member, peer, client, zone)
        if new_map is not current:
            await self._propose_map(new_map)
        return member_id, self.cluster_map

    async def set_member_state(self, member: int, state: str) -> ClusterMap:
        """Meta leader: mark a member active, leaving or dead."""
        self.check_meta_leader()
        current = await self.current_map()
        if current.state_of(member) != state or member not in current.member_ids():
            await self._propose_map(with_state(current, member, state))
        return self.cluster_map

    def rebalance(self) -> None:
        """Meta leader: spread the group leaders too, and look for moves now."""
        self.check_meta_leader()
        self.mover.balance_leaders = True

    async def _propose_map(self, new_map: ClusterMap) -> None:
        result = await self.propose(META_GROUP, map_entry(new_map))
        if result[0] not in ("ok", "dup"):
            raise Unavailable(f"the cluster map changed meanwhile (epoch {result[1]}); retry")

    async def group_admin(self, action: str, group: int, member: int, timeout: float) -> None:
        """On the group's leader: add `member` (learner, catch up, promote), remove
        it, or hand it the leadership.

        Raises:
            NotLeader: this node does not lead the group.
            MembershipError: the action is unknown or cannot be done.
        """
        if group not in self.raft.groups or not self.is_leader(group):
            raise NotLeader(group, self.leader(group))
        try:
            if action == "add-voter":
                await self.raft.add_voter(group, member, timeout=timeout)
            elif action == "remove":
                if member == self.id:
                    raise MembershipError("the leader cannot remove itself: move leadership first")
                await self.raft.change_membership(
                    group, ConfChange(ConfChangeKind.REMOVE_NODE, member), timeout
                )
            elif action == "transfer":
                await self.raft.transfer_leadership(group, member)
            else:
                raise MembershipError(f"unknown group action {action!r}")
        except (ProposalDropped, ProposalTimeout, OutcomeUnknown) as exc:
            raise Unavailable(f"group {group}: {action} {member}: {exc}") from exc

    async def fetch_json(self, url: str, timeout: float) -> dict[str, Any]:
        """GET a member's JSON document (its /status.json)."""
        assert self.session is not None
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                if r.status != 200:
                    raise MembershipError(f"{url} answered {r.status}")
                found: dict[str, Any] = await r.json()
                return found
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise MembershipError(f"{url} did not answer: {exc!r}") from exc

    async def post_admin(
        self, url: str, route: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """POST an admin request to a member, following one redirect to a leader."""
        assert self.session is not None
        for _ in range(3):
            try:
                async with self.session.post(
                    url.rstrip("/") + route,
                    data=msgpack.packb(body),
                    headers={"Content-Type": "application/msgpack"},
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as response:
                    payload = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise MembershipError(f"{url}{route} did not answer: {exc!r}") from exc
            if response.status == 200:
                answer: dict[str, Any] = msgpack.unpackb(payload)
                return answer
            error = _error_text(payload)
            if response.status == 421:
                hint = _leader_hint(payload)
                if hint:
                    url = hint
                    continue
            raise MembershipError(f"{url}{route} answered {response.status}: {error}")
        raise MembershipError(f"{route}: the leader kept moving")

    # -- status --------------------------------------------------------------------

    def _figures(self) -> dict[str, Any]:
        """What the metrics read besides the groups' status (see `NodeMetrics`)."""
        stats = self.raft.transport.stats
        partitions = {}
        for group, machine in self.partitions.items():
            if group not in self.raft.groups:
                continue
            disk = self.raft.group_log(group).disk_bytes()
            partitions[f"partition-{group - 1}"] = (machine.atoms, disk)
        objects = [space.atom_cache for space in self._spaces.values()]
        return {
            "transport": {
                "sent_bytes": stats.bytes_sent,
                "received_bytes": stats.bytes_received,
                "reconnects": stats.reconnects,
                "auth_failures": stats.handshake_failures + stats.peers_refused,
                "dropped_messages": stats.dropped,
            },
            "partitions": partitions,
            "caches": {
                "objects": (sum(c.hits for c in objects), sum(c.misses for c in objects)),
                "entries": (
                    sum(m.decoded_hits for m in self.partitions.values()),
                    sum(m.decoded_misses for m in self.partitions.values()),
                ),
            },
        }

    def status(self) -> dict[str, Any]:
        groups = []
        for group in sorted(self.raft.groups):
            state = self.raft.status(group)
            state["name"] = "meta" if group == META_GROUP else f"partition-{group - 1}"
            state["leader_changes"] = self.raft.groups[group].leader_changes
            groups.append(state)
        current = self.cluster_map
        return {
            "cluster": self.settings.cluster,
            "node_id": self.id,
            "partitions": self.settings.partitions,
            "epoch": self.map_epoch,
            "members": [
                {
                    "id": member,
                    "peer": peer,
                    "client": client,
                    "state": current.state_of(member),
                    "zone": current.zone_of(member),
                }
                for member, peer, client in current.members
            ],
            "placement": {str(g): list(r) for g, r in self.placement.items()},
            "groups": groups,
            "ready": self.ready()[0],
            "uptime_seconds": round(time.time() - self.started, 1),
            "s3": None if self.cold is None else self.cold.status(),
            "membership": {
                "last_step": self.mover.last_step,
                "balanced_epoch": self.mover.balanced_epoch,
                "balancing_leaders": self.mover.balance_leaders,
                "unreachable": {str(k): v for k, v in self.mover.unreachable.items()},
            },
            "leader_history": [
                {
                    "time": when,
                    "group": "meta" if group == META_GROUP else f"partition-{group - 1}",
                    "term": term,
                    "leader": leader,
                }
                for when, group, term, leader in reversed(self.raft.leader_history)
            ],
        }


def timed_sync(sync: Callable[[], None], *histograms: Any) -> Callable[[], None]:
    """`sync`, each call's duration observed in every one of `histograms`."""

    def timed() -> None:
        started = time.perf_counter()
        try:
            sync()
        finally:
            took = time.perf_counter() - started
            for histogram in histograms:
                histogram.observe(took)

    return timed


class SharedBarrier:
    """Linearizable read barriers of one group, shared by concurrent readers.

    A reader may share a barrier only if it started after the reader
    arrived: a reader that comes while one is running waits for the next,
    which starts when the running one ends and serves everyone who came in
    the meantime. Under load this costs one ReadIndex round per round trip,
    not one per reader.
    """

    def __init__(self, raft: RaftNode, group: int) -> None:
        self._raft = raft
        self._group = group
        self._running: asyncio.Future[int] | None = None
        self._next: asyncio.Future[int] | None = None

    async def barrier(self) -> int:
        if self._running is None:
            self._running = self._start()
            return await asyncio.shield(self._running)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._next)

    def _start(self) -> asyncio.Future[int]:
        task = asyncio.ensure_future(self._raft.read_barrier(self._group))
        task.add_done_callback(self._finished)
        return task

    def _finished(self, done: asyncio.Future[int]) -> None:
        waiting, self._next = self._next, None
        self._running = None
        if waiting is None:
            return
        follow = self._start()
        self._running = follow

        def hand_over(result: asyncio.Future[int]) -> None:
            if waiting.done():
                return
            if result.cancelled():
                waiting.cancel()
            elif result.exception() is not None:
                waiting.set_exception(result.exception())  # type: ignore[arg-type]
            else:
                waiting.set_result(result.result())

        follow.add_done_callback(hand_over)
        if not done.cancelled():
            done.exception()  # retrieved by its own awaiters; never left unobserved


class RootPipeline:
    """Root changes of one space proposed ahead of their predecessors' outcome.

    The meta leader rebases commits one after another (the committer's lock)
    but does not wait for each root change to apply before rebasing the
    next one onto it: `head` is the root after the last queued change. A
    change is proposed only once its batch is committed in its partition
    (a root never names atoms that could be lost), and after the change
    queued before it was proposed (so they apply in order). When one fails,
    those built on it fail too (their expected version is gone) and are
    rebased again from the applied root.

    `start` may be called from any thread (the rebase threads call it with
    the committer's lock held, and return at once); the changes run on the
    event loop, in the order `start` queued them (`call_soon_threadsafe` is
    FIFO).
    """

    def __init__(self, node: ClusterNode, space: str) -> None:
        self.node = node
        self.space = space
        self._lock = threading.Lock()
        self._proposed: RootRef | None = None
        self._pending = 0
        self._last_proposed: asyncio.Future[None] | None = None
        """Set once the last queued change was proposed (event loop only)."""

    @property
    def idle(self) -> bool:
        return self._pending == 0

    def head(self) -> RootRef | None:
        """The root after every queued change, or None when none is pending."""
        with self._lock:
            return self._proposed if self._pending else None

    def start(
        self,
        batch: CommitBatch,
        expected: RootRef,
        root: AtomPointer,
        alias: bytes | None,
        size: int | None = None,
    ) -> concurrent.futures.Future[RootRef]:
        """Queue a root change after the pending ones; its future resolves when applied.

        Raises:
            RootConflict: `expected` is not the head (version and pointer: a
                failed change's version is reused by the next head).
        """
        with self._lock:
            if self._pending:
                assert self._proposed is not None
                current = self._proposed
            else:
                applied = self.node.meta.root(self.space)
                pointer = AtomPointer(*applied.pointer) if applied.pointer else None
                current = RootRef(pointer, applied.version)
            if current != expected:
                raise RootConflict(f"the head of space {self.space!r} is at version {current}")
            self._proposed = RootRef(root, expected.version + 1)
            self._pending += 1
        assert self.node.loop is not None
        if size is None:
            size = sum(len(atom) for atom in batch.atoms)
        return asyncio.run_coroutine_threadsafe(
            self._run(batch, expected, root, alias, size), self.node.loop
        )

    async def _run(
        self,
        batch: CommitBatch,
        expected: RootRef,
        root: AtomPointer,
        alias: bytes | None,
        size: int,
    ) -> RootRef:
        previous = self._last_proposed
        proposed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last_proposed = proposed
        try:
            try:
                if batch.atoms:
                    await self.node.put_batch(
                        batch.transaction_id, list(batch.atoms), _wire_links(batch), None
                    )
            finally:
                if previous is not None:
                    await asyncio.shield(previous)
            change = asyncio.ensure_future(
                self.node.set_root(
                    self.space,
                    expected.version,
                    root,
                    batch.transaction_id,
                    alias,
                    expected.pointer,
                    size,
                )
            )
            # The task runs up to its first suspension (its entry is appended
            # to the log) before the next change may propose.
            await asyncio.sleep(0)
            proposed.set_result(None)
            ref = await change
            if batch.atoms:
                self.node.remember_batch(batch.transaction_id, list(batch.atoms))
            return ref
        finally:
            if not proposed.done():
                proposed.set_result(None)
            with self._lock:
                self._pending -= 1
                if not self._pending:
                    self._proposed = None


class NodeStorage:
    """The storage contract over this node's groups, for the rebase threads.

    Calls block the calling worker thread while the event loop runs them.
    `commit_pipelined` hands root changes to the space's `RootPipeline`, so
    the committer rebases the next commit while this one replicates. A root
    change made here is recorded under the calling thread's `local.alias`
    too: the client's transaction id, so that its repeated request finds
    the outcome.
    """

    def __init__(self, node: ClusterNode, space: str) -> None:
        self.node = node
        self.space = space
        self.local = threading.local()

    def _alias(self) -> bytes | None:
        return getattr(self.local, "alias", None)

    def _run(self, coroutine: Any) -> Any:
        assert self.node.loop is not None
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.node.loop)
        try:
            return future.result()
        except UnknownOutcome as exc:
            raise CommitOutcomeUnknown(str(exc), b"") from exc

    def _building(self, expected_version: int) -> RootRef:
        """The root the committer in this thread builds on (its last read, or the
        base it started from): a change is proposed against its exact pointer."""
        building: RootRef | None = getattr(self.local, "building", None)
        if building is None or building.version != expected_version:
            raise RootConflict(f"no root at version {expected_version} was read here; read again")
        return building

    def read_root(self) -> RootRef:
        ref: RootRef = self._run(self._read_head())
        self.local.building = ref
        return ref

    async def _read_head(self) -> RootRef:
        """The root to rebase onto: the pipeline's head, else the applied root.

        No read barrier: the compare-and-set decides, so a root this node
        has not applied yet only costs a retry, while a barrier under the
        committer's lock would cost every commit a heartbeat round.
        """
        head = self.node._pipeline(self.space).head()
        if head is not None:
            return head
        self.node.check_meta_leader()
        root = self.node.meta.root(self.space)
        return RootRef(AtomPointer(*root.pointer) if root.pointer else None, root.version)

    def get_atoms(self, pointers: Sequence[AtomPointer]) -> list[bytes]:
        pairs = [(p.transaction_id, p.index) for p in pointers]
        return self._run(self.node.get_atoms(pairs, False))

    def new_transaction_id(self) -> bytes:
        """A random id in a partition this node leads, when it leads one."""
        led = self.node.led_partitions()
        for _ in range(64 if led else 1):
            transaction_id = new_transaction_id()
            if not led or partition_for(transaction_id, self.node.settings.partitions) in led:
                break
        return transaction_id

    def put_batch(self, batch: CommitBatch) -> None:
        self._run(
            self.node.put_batch(batch.transaction_id, list(batch.atoms), _wire_links(batch), None)
        )

    def set_root(
        self, expected_root_version: int, new_root: AtomPointer, transaction_id: bytes
    ) -> RootRef:
        applied = self.node._pipeline(self.space).start(
            CommitBatch(transaction_id, []),
            self._building(expected_root_version),
            new_root,
            self._alias(),
        )
        try:
            return applied.result()
        except UnknownOutcome as exc:
            raise CommitOutcomeUnknown(str(exc), transaction_id) from exc

    def committed_root(self, transaction_id: bytes) -> RootRef | None:
        return self._run(self.node.commit_outcome(transaction_id))

    def commit(
        self, batch: CommitBatch, expected_root_version: int, new_root: AtomPointer
    ) -> RootRef:
        ref, wait = self.commit_pipelined(batch, expected_root_version, new_root)
        wait()
        return ref

    def commit_pipelined(
        self, batch: CommitBatch, expected_root_version: int, new_root: AtomPointer
    ) -> tuple[RootRef, Callable[[], None]]:
        """Queue the root change; the returned function waits until it is applied
        (and raises `RootConflict` when a change before it failed)."""
        applied = self.node._pipeline(self.space).start(
            batch, self._building(expected_root_version), new_root, self._alias()
        )

        def wait() -> None:
            try:
                applied.result()
            except UnknownOutcome as exc:
                raise CommitOutcomeUnknown(str(exc), batch.transaction_id) from exc

        return RootRef(new_root, expected_root_version + 1), wait

    def close(self) -> None:
        """The node owns the groups; nothing to release."""


def _wire_links(batch: CommitBatch) -> list[Any] | None:
    if batch.links is None:
        return None
    return [[[p.transaction_id, p.index] for p in atom] for atom in batch.links]


LEFT_MARKER = "LEFT.json"
"""Written into the data directory when the cluster forgot this member: its
id is retired, so the directory never serves again."""


def _check_identity(settings: NodeSettings) -> None:
    """A data directory belongs to one cluster with one partition count, and
    to a member the cluster has not forgotten."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    left = settings.data_dir / LEFT_MARKER
    if left.exists():
        raise ConfigError(
            f"member {settings.node_id} left the cluster (removed or replaced; "
            f"{left.read_text(errors='replace').strip()}), so {settings.data_dir} cannot "
            "serve again. To bring this machine back, start it as a new member: "
            "an empty data_dir, a node_id the cluster never used and `join` set "
            "(`protobase cluster add-node` does this for a local cluster)"
        )
    path = settings.data_dir / "CLUSTER.json"
    wanted = {"cluster": settings.cluster, "partitions": settings.partitions}
    if path.exists():
        try:
            found = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path} is damaged ({exc}); restore it") from exc
        if found != wanted:
            raise ConfigError(
                f"{settings.data_dir} belongs to cluster {found.get('cluster')!r} with "
                f"{found.get('partitions')} partitions; this config says "
                f"{settings.cluster!r} with {settings.partitions}. The partition count is "
                "fixed when a cluster is created: fix the config or use another data_dir"
            )
        return
    _write_durably(path, json.dumps(wanted))


def _write_durably(path: Path, text: str) -> None:
    """Write `path` whole (a temporary file, fsynced, renamed over it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    tmp.rename(path)


def _leader_hint(payload: bytes) -> str | None:
    """The ``leader_url`` of a 421 answer, if it names one."""
    try:
        hint = json.loads(payload).get("leader_url")
    except (ValueError, AttributeError):
        return None
    return hint if isinstance(hint, str) else None


def _error_text(payload: bytes) -> str:
    try:
        return str(json.loads(payload).get("error", payload[:200]))
    except ValueError:
        return payload[:200].decode(errors="replace")
