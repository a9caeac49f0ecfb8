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
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import aiohttp
import msgpack

from protobase.atoms import AtomPointer
from protobase.committer import SpaceChange
from protobase.errors import (
    AtomNotFoundError,
    CommitOutcomeUnknown,
    RootConflict,
    StorageError,
)
from protobase.space import ObjectSpace
from protobase.storage.interfaces import CommitBatch, DatabaseReads, RootRef
from protobase.transaction import Snapshot

from .config import ConfigError, NodeSettings
from .meta import MetaMachine, cas_entry
from .partition_store import PartitionMachine, chunks
from .partitions import META_GROUP, group_of_partition, partition_for, placement
from .raft.errors import NotLeader, ProposalDropped
from .raft.node import NodeConfig, NodeStopped, OutcomeUnknown, RaftNode

log = logging.getLogger("protobase.node")

FORWARDED = "X-ProtoBase-Forwarded"


class Unavailable(Exception):
    """The operation cannot be served now (no leader, a timeout); retry."""


class UnknownOutcome(Unavailable):
    """The operation may or may not have taken effect."""


class CommitConflict(Exception):
    """The commit overlaps a concurrent one (the client sees ConflictError)."""


class ClusterNode:
    """See the module docstring."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.id = settings.node_id
        members = [m.id for m in settings.members]
        self.placement = placement(members, settings.partitions, settings.replication)
        _check_identity(settings)
        self.meta = MetaMachine()
        self.partitions: dict[int, PartitionMachine] = {}
        groups: dict[int, Any] = {}
        for group, replicas in self.placement.items():
            if self.id not in replicas:
                continue
            if group == META_GROUP:
                groups[group] = (self.meta, replicas)
            else:
                machine = PartitionMachine(self._entry_reader(group))
                self.partitions[group] = machine
                groups[group] = (machine, replicas)
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
        )
        self.raft = RaftNode(config, groups)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.session: aiohttp.ClientSession | None = None
        self._spaces: dict[str, ObjectSpace] = {}
        self._rebase_locks: dict[str, asyncio.Lock] = {}
        self.started = time.time()

    def _entry_reader(self, group: int) -> Any:
        return lambda index: self.raft.read_entry(group, index)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.settings.token}"},
            timeout=aiohttp.ClientTimeout(total=15),
        )
        await self.raft.start()

    async def stop(self) -> None:
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
            # A group not replicated here: ask its first replica, which forwards.
            replicas = self.placement[group]
            return self.settings.client_url(replicas[0]) if replicas else None
        return self.settings.client_url(leader)

    def is_leader(self, group: int) -> bool:
        return group in self.raft.groups and self.raft.leader(group) == self.id

    def ready(self) -> tuple[bool, str]:
        """Whether every group placed here has a leader (the /ready answer)."""
        for group in self.raft.groups:
            if self.raft.leader(group) is None:
                name = "meta group" if group == META_GROUP else f"partition group {group}"
                return False, f"{name} has no leader yet"
        return True, "ready"

    async def forward(self, group: int, route: str, body: bytes, forwarded: bool) -> bytes:
        """Send an operation to the leader of `group`; its answer's body."""
        url = self.leader_url(group)
        if forwarded or url is None or url == self.settings.me.client:
            raise Unavailable(f"group {group} has no leader this node can reach; retry")
        assert self.session is not None
        try:
            async with self.session.post(
                url + route,
                data=body,
                headers={FORWARDED: str(self.id), "Content-Type": "application/msgpack"},
            ) as response:
                payload = await response.read()
                if response.status == 200:
                    return payload
                error = _error_text(payload)
                if response.status == 404:
                    raise AtomNotFoundError(error)
                if response.status == 409:
                    raise CommitConflict(error)
                if response.status in (421, 503):
                    raise Unavailable(f"group {group}: {error}")
                raise StorageError(f"node at {url} answered {response.status}: {error}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(
                f"the leader of group {group} at {url} is unreachable: {exc}"
            ) from exc

    async def propose(self, group: int, entry: bytes) -> Any:
        try:
            return await self.raft.propose(group, entry)
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
    ) -> None:
        group = group_of_partition(partition_for(transaction_id, self.settings.partitions))
        if not self.is_leader(group):
            if body is None:
                body = msgpack.packb({"txid": transaction_id, "atoms": atoms, "links": links})
            await self.forward(group, "/v1/batch/put", body, forwarded)
            return
        machine = self.partitions[group]
        if machine.has(transaction_id):
            if machine.batch_atoms(transaction_id) != atoms:
                raise StorageError(
                    f"transaction id {transaction_id.hex()} is already stored with "
                    "different atoms; every commit needs a fresh transaction id"
                )
            return
        for entry in chunks(transaction_id, atoms, links):
            await self.propose(group, entry)

    async def get_atoms(
        self, pointers: Sequence[tuple[bytes, int]], forwarded: bool
    ) -> list[bytes]:
        found: list[bytes | None] = [None] * len(pointers)
        remote: dict[int, list[int]] = {}
        for position, (transaction_id, index) in enumerate(pointers):
            group = group_of_partition(partition_for(transaction_id, self.settings.partitions))
            machine = self.partitions.get(group)
            atom = machine.atom(transaction_id, index) if machine is not None else None
            if atom is not None:
                found[position] = atom
            elif self.is_leader(group):
                raise AtomNotFoundError(
                    f"no atom at ({transaction_id.hex()}, {index}) in partition group {group}"
                )
            else:
                remote.setdefault(group, []).append(position)
        for group, positions in remote.items():
            body = msgpack.packb({"pointers": [list(pointers[p]) for p in positions]})
            answer = msgpack.unpackb(await self.forward(group, "/v1/atoms/get", body, forwarded))
            for position, atom in zip(positions, answer["atoms"], strict=True):
                found[position] = atom
        return found  # type: ignore[return-value]

    # -- roots ---------------------------------------------------------------------

    def led_partitions(self) -> list[int]:
        """The partitions (0-based) whose groups this node leads."""
        return [g - 1 for g in self.raft.groups if g != META_GROUP and self.is_leader(g)]

    def check_meta_leader(self) -> None:
        if not self.is_leader(META_GROUP):
            raise NotLeader(META_GROUP, self.leader(META_GROUP))

    async def read_root(self, space: str) -> RootRef:
        self.check_meta_leader()
        try:
            await self.raft.read_barrier(META_GROUP)
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
    ) -> RootRef:
        """Compare-and-set the root of `space` (meta leader only)."""
        self.check_meta_leader()
        entry = cas_entry(
            space, expected, (root.transaction_id, root.index), change_id, alias, time.time()
        )
        result = await self.propose(META_GROUP, entry)
        if result[0] == "ok":
            return RootRef(root, result[1])
        if result[0] == "dup":
            return RootRef(AtomPointer(*result[2]), result[1])
        raise RootConflict(f"root of space {space!r} is at version {result[1]}, not {expected}")

    async def check_cas(
        self, space: str, expected: int, root: AtomPointer, change_id: bytes, count: int
    ) -> None:
        """Raise what a compare-and-set to `root` in a batch of `count` atoms would.

        A check before the batch is put, so that a refused commit stores
        nothing; the compare-and-set itself still decides (a root that moves
        in between leaves the batch unreachable, for pack to remove).
        """
        if self.meta.outcome(change_id) is not None:
            return
        current = self.meta.root(space).version
        if current != expected:
            raise RootConflict(f"root of space {space!r} is at version {current}, not {expected}")
        if root.transaction_id == change_id:
            if not 0 <= root.index < count:
                raise StorageError(f"new root {root} is not an atom of the batch")
        else:
            try:
                await self.get_atoms([(root.transaction_id, root.index)], False)
            except AtomNotFoundError as exc:
                raise StorageError(f"new root {root} is not a stored atom") from exc

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
    ) -> RootRef:
        """Set the root to the client's `new_root`, rebasing it when its base is stale
        (or raising `RootConflict`, when `rebase` is False)."""
        self.check_meta_leader()
        earlier = self.meta.outcome(transaction_id)
        if earlier is not None:
            return RootRef(AtomPointer(*earlier[2]), earlier[1])
        if not stored:
            # The new root must be stored before any root names it.
            await self.get_atoms([(new_root.transaction_id, new_root.index)], False)
        if not rebase:
            return await self.set_root(space, base_version, new_root, transaction_id)
        if self.meta.root(space).version == base_version:
            try:
                return await self.set_root(space, base_version, new_root, transaction_id)
            except RootConflict:
                pass
        base_pointer = self.meta.root_at(space, base_version) if base_version else None
        if base_version and base_pointer is None:
            raise CommitConflict(
                f"the commit's base version {base_version} is too old to rebase here; "
                "nothing was written. Run the transaction again."
            )
        base = RootRef(AtomPointer(*base_pointer) if base_pointer else None, base_version)
        lock = self._rebase_locks.setdefault(space, asyncio.Lock())
        async with lock:
            return await asyncio.to_thread(
                self._rebase, space, base, new_root, transaction_id, reads
            )

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

        space = self._spaces.get(space_name)
        if space is None:
            space = self._spaces[space_name] = ObjectSpace(NodeStorage(self, space_name))
        storage = space.storage
        assert isinstance(storage, NodeStorage)
        snapshot = Snapshot(space, base)
        try:
            storage.alias = transaction_id
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
            storage.alias = None
            snapshot.close()

    # -- status --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        groups = []
        for group in sorted(self.raft.groups):
            state = self.raft.status(group)
            state["name"] = "meta" if group == META_GROUP else f"partition-{group - 1}"
            groups.append(state)
        return {
            "cluster": self.settings.cluster,
            "node_id": self.id,
            "partitions": self.settings.partitions,
            "members": [
                {"id": m.id, "peer": f"{m.peer[0]}:{m.peer[1]}", "client": m.client}
                for m in self.settings.members
            ],
            "placement": {str(g): list(r) for g, r in self.placement.items()},
            "groups": groups,
            "ready": self.ready()[0],
            "uptime_seconds": round(time.time() - self.started, 1),
        }


class NodeStorage:
    """The storage contract over this node's groups, for the rebase thread.

    Calls block the worker thread while the event loop runs them. A root
    change made here is recorded under `alias` too: the client's
    transaction id, so that its repeated request finds the outcome.
    """

    def __init__(self, node: ClusterNode, space: str) -> None:
        self.node = node
        self.space = space
        self.alias: bytes | None = None

    def _run(self, coroutine: Any) -> Any:
        assert self.node.loop is not None
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.node.loop)
        try:
            return future.result()
        except UnknownOutcome as exc:
            raise CommitOutcomeUnknown(str(exc), b"") from exc

    def read_root(self) -> RootRef:
        return self._run(self.node.read_root(self.space))

    def get_atoms(self, pointers: Sequence[AtomPointer]) -> list[bytes]:
        pairs = [(p.transaction_id, p.index) for p in pointers]
        return self._run(self.node.get_atoms(pairs, False))

    def put_batch(self, batch: CommitBatch) -> None:
        links = None if batch.links is None else [[list(p) for p in atom] for atom in batch.links]
        self._run(self.node.put_batch(batch.transaction_id, list(batch.atoms), links, None))

    def set_root(
        self, expected_root_version: int, new_root: AtomPointer, transaction_id: bytes
    ) -> RootRef:
        return self._run(
            self.node.set_root(
                self.space, expected_root_version, new_root, transaction_id, self.alias
            )
        )

    def committed_root(self, transaction_id: bytes) -> RootRef | None:
        return self._run(self.node.commit_outcome(transaction_id))

    def commit(
        self, batch: CommitBatch, expected_root_version: int, new_root: AtomPointer
    ) -> RootRef:
        self.put_batch(batch)
        return self.set_root(expected_root_version, new_root, batch.transaction_id)

    def close(self) -> None:
        """The node owns the groups; nothing to release."""


def _check_identity(settings: NodeSettings) -> None:
    """A data directory belongs to one cluster with one partition count."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
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
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(wanted))
    with open(tmp, "rb+") as handle:
        import os

        os.fsync(handle.fileno())
    tmp.rename(path)


def _error_text(payload: bytes) -> str:
    try:
        return str(json.loads(payload).get("error", payload[:200]))
    except ValueError:
        return payload[:200].decode(errors="replace")
