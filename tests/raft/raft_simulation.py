"""Deterministic simulation of a Raft group (FoundationDB-style).

3 to 5 `RaftGroup`s run in one process on `MemoryGroupLog`s under a seeded
scheduler. The simulated network drops, delays (and so reorders), and
duplicates messages and partitions nodes; nodes crash (losing every write
not yet synced) and restart; the leader changes membership and nodes take
snapshots and compact their logs during all of it. Safety is checked after
every event; at the end the network heals and liveness is checked.

Checked properties:
- election safety: at most one leader per term;
- log matching: two logs with an entry of the same index and term agree on
  every entry up to it;
- committed entries never change: no node commits, and no later leader
  holds, a different entry at a committed index (leader completeness);
- state machine safety: no two nodes apply different entries at one index;
- durability: every acknowledged proposal is applied on every member once
  the network heals;
- linearizable reads: a ReadIndex read sees every write acknowledged before
  it started.

Replay one seed: `.venv/bin/python tests/raft/raft_simulation.py --seed 17`
(add `--fault NAME` to replay a mutation-check run, `-v` for a trace).
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import msgpack

from cluster.raft.core import RaftConfig, RaftGroup, Role, TestFault
from cluster.raft.errors import NotLeader, ProposalDropped
from cluster.raft.memlog import MemoryGroupLog
from cluster.raft.types import (
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    Message,
    Ready,
    SnapshotMeta,
    sent_before_persist,
)

TICK = 10
"""Simulated time units between two ticks of a node."""


class Violation(AssertionError):
    """A safety or liveness property failed."""


DRIVER_FAULTS = ("send-before-sync",)
"""Faults of the simulated driver (the core's are `TestFault`)."""


@dataclass
class SimNode:
    node_id: int
    log: MemoryGroupLog
    raft: RaftGroup | None = None
    up: bool = True
    ready: Ready | None = None
    kv: dict[str, tuple[str, int]] = field(default_factory=dict)
    applied: int = 0
    applied_since_snapshot: int = 0


@dataclass
class Proposal:
    node: int
    index: int
    term: int
    data: bytes
    key: str


@dataclass
class Read:
    node: int
    key: str
    started: float
    min_index: int
    read_index: int | None = None


class Simulation:
    def __init__(
        self,
        seed: int,
        *,
        fault: str | None = None,
        steps: int = 1500,
        verbose: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.fault = fault
        self.core_fault = TestFault(fault) if fault in {f.value for f in TestFault} else None
        self.verbose = verbose
        self.steps = steps
        rng = self.rng
        self.initial_voters = rng.choice((3, 3, 5))
        self.pool = self.initial_voters + rng.choice((0, 1, 2))
        self.p_drop = rng.choice((0.0, 0.02, 0.1))
        self.p_dup = rng.choice((0.0, 0.02, 0.05))
        self.max_delay = rng.choice((2, 5, 15))
        self.p_crash = rng.choice((0.0, 0.003, 0.01))
        self.p_partition = rng.choice((0.0, 0.005, 0.02))
        self.p_conf = rng.choice((0.0, 0.05, 0.15))
        self.snapshot_every = rng.choice((0, 5, 20))
        self.keep_entries = rng.choice((0, 3, 10))
        """Entries a snapshot leaves readable behind it (for followers a little behind)."""
        self.now = 0.0
        self.events: list[tuple[float, int, str, Any]] = []
        self.sequence = 0
        self.nodes: dict[int, SimNode] = {}
        self.cut: set[tuple[int, int]] = set()
        self.leaders: dict[int, int] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
        self.known_committed = 0
        """max(self.committed, default=0), kept as entries are added (in index order):
        the checks after every event need it, and max() over the dict is O(commits)."""
        self.applied_global: dict[int, tuple[int, bytes]] = {}
        self.pending: list[Proposal] = []
        self.acked: list[Proposal] = []
        self.acked_index_by_key: dict[str, list[tuple[float, int]]] = {}
        self.reads: dict[bytes, Read] = {}
        self.read_counter = 0
        self.write_counter = 0
        self.reads_checked = 0
        self.healing = False
        self.installed_snapshots = 0
        self.conf_changes = 0
        self.transfers = 0
        voters = tuple(range(1, self.initial_voters + 1))
        for node_id in range(1, self.pool + 1):
            node = SimNode(node_id, MemoryGroupLog())
            self.nodes[node_id] = node
            self._start(node, voters if node_id in voters else ())
            self._schedule(rng.uniform(0, TICK), "tick", node_id)

    # -- plumbing -----------------------------------------------------------------
    def trace(self, text: str) -> None:
        if self.verbose:
            print(f"[{self.now:8.1f}] {text}")

    def _schedule(self, delay: float, kind: str, payload: Any) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (self.now + delay, self.sequence, kind, payload))

    def _start(self, node: SimNode, peers: tuple[int, ...]) -> None:
        config = RaftConfig(
            node.node_id,
            election_tick=10,
            heartbeat_tick=2,
            max_inflight=self.rng.choice((1, 4, 64)),
            max_message_bytes=self.rng.choice((16, 1 << 20)),
            snapshot_chunk_bytes=self.rng.choice((7, 64, 1 << 20)),
            fault=self.core_fault,
        )
        node.raft = RaftGroup(config, node.log, random.Random(self.rng.random()), peers)
        self._restore_state_machine(node)
        node.ready = None

    def _restore_state_machine(self, node: SimNode) -> None:
        """From the log's snapshot, as a driver does (`GroupLog.open_snapshot`)."""
        with node.log.open_snapshot() as source:
            data = source.read()
        raw = msgpack.unpackb(data) if data else {}
        node.kv = {k: (v[0], v[1]) for k, v in raw.items()}
        node.applied = node.log.snapshot_meta().index
        node.applied_since_snapshot = 0

    # -- running --------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Violation as exc:
            raise Violation(f"{exc}\n  replay: {self.replay_command()}") from None
        except Exception as exc:
            raise Violation(
                f"unexpected {type(exc).__name__}: {exc}\n  replay: {self.replay_command()}"
            ) from exc

    def replay_command(self) -> str:
        extra = f" --fault {self.fault}" if self.fault else ""
        return f".venv/bin/python tests/raft/raft_simulation.py --seed {self.seed}{extra} -v"

    def _run(self) -> None:
        horizon = self.steps * TICK / 5
        while self.events and self.now < horizon:
            self._step_event()
            self._inject_faults()
        self._heal()
        deadline = self.now + 400 * TICK
        while self.events and self.now < deadline:
            self._step_event()
            if self._converged():
                break
        self._check_liveness()

    def _step_event(self) -> None:
        when, _, kind, payload = heapq.heappop(self.events)
        self.now = when
        if kind == "tick":
            node = self.nodes[payload]
            if node.up:
                assert node.raft is not None
                node.raft.tick()
                self._after_input(node)
                if self.rng.random() < 0.3:
                    self._client_action(node)
            self._schedule(TICK * self.rng.uniform(0.9, 1.1), "tick", payload)
        elif kind == "deliver":
            self._deliver(payload)
        elif kind == "persisted":
            node_id, ready = payload
            node = self.nodes[node_id]
            if node.up and node.ready is ready:
                self._finish_ready(node, ready)
        elif kind == "restart":
            node = self.nodes[payload]
            if not node.up:
                node.up = True
                self._start(node, ())
                self.trace(f"node {payload} restarts")

    def _deliver(self, message: Message) -> None:
        node = self.nodes[message.to]
        if not node.up or (message.frm, message.to) in self.cut:
            return
        assert node.raft is not None
        node.raft.step(message)
        self._after_input(node)

    def _after_input(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        self._check_node(node)
        if node.ready is None and raft.has_ready():
            ready = raft.ready()
            node.ready = ready
            if self.fault == "send-before-sync":
                self._send_all(ready.messages)
            else:
                self._send_all([m for m in ready.messages if sent_before_persist(m)])
            self._schedule(self.rng.uniform(0, 3), "persisted", (node.node_id, ready))

    def _finish_ready(self, node: SimNode, ready: Ready) -> None:
        raft = node.raft
        assert raft is not None
        ready.write_to(node.log)
        if ready.must_sync:
            node.log.sync()
        if self.fault != "send-before-sync":
            self._send_all([m for m in ready.messages if not sent_before_persist(m)])
        if ready.snapshot is not None:
            self._restore_state_machine(node)
            self.installed_snapshots += 1
            self.trace(f"node {node.node_id} installs a snapshot at {ready.snapshot.index}")
        for entry in ready.committed:
            self._apply(node, entry)
        for state in ready.read_states:
            self._read_ready(node, state.context, state.index)
        node.ready = None
        raft.advance(ready)
        self._maybe_snapshot(node)
        self._check_node(node)
        self._after_input(node)

    def _send_all(self, messages: list[Message]) -> None:
        for message in messages:
            if self.rng.random() < self.p_drop:
                continue
            copies = 2 if self.rng.random() < self.p_dup else 1
            for _ in range(copies):
                self._schedule(self.rng.uniform(0.5, self.max_delay), "deliver", message)

    # -- the state machine -------------------------------------------------------------
    def _apply(self, node: SimNode, entry: Entry) -> None:
        if entry.index != node.applied + 1:
            raise Violation(f"node {node.node_id} applies index {entry.index} after {node.applied}")
        seen = self.applied_global.setdefault(entry.index, (entry.term, entry.data))
        if seen != (entry.term, entry.data):
            raise Violation(
                f"state machine safety: node {node.node_id} applies {entry.index}@{entry.term} "
                f"but {seen[0]} was applied elsewhere"
            )
        node.applied = entry.index
        node.applied_since_snapshot += 1
        if entry.kind is EntryKind.CONF_CHANGE and entry.term > 1:
            self.conf_changes += 1
        if entry.kind is EntryKind.NORMAL and entry.data:
            key, _, value = entry.data.decode().partition("=")
            node.kv[key] = (value, entry.index)
        for proposal in list(self.pending):
            if proposal.node == node.node_id and proposal.index == entry.index:
                self.pending.remove(proposal)
                if proposal.term == entry.term and proposal.data == entry.data:
                    self.acked.append(proposal)
                    self.acked_index_by_key.setdefault(proposal.key, []).append(
                        (self.now, entry.index)
                    )
        for read_id, read in list(self.reads.items()):
            if read.node == node.node_id and read.read_index is not None:
                self._maybe_finish_read(node, read_id, read)

    def _maybe_snapshot(self, node: SimNode) -> None:
        if not self.snapshot_every or node.applied_since_snapshot < self.snapshot_every:
            return
        raft = node.raft
        assert raft is not None
        at_applied = raft.snapshot_meta_at_applied()
        if at_applied is None:
            return  # the leader's snapshot replaces the state machine next
        index, term, conf = at_applied
        if index != node.applied or index <= node.log.snapshot_meta().index:
            return
        data = msgpack.packb({k: list(v) for k, v in sorted(node.kv.items())})
        node.log.save_snapshot(SnapshotMeta(index, term, conf), lambda sink: sink.write(data))
        node.log.compact(max(index - self.keep_entries, 0))
        node.applied_since_snapshot = 0
        self.trace(f"node {node.node_id} snapshots at {index}")

    # -- clients --------------------------------------------------------------------------
    def _client_action(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        choice = self.rng.random()
        if self.healing and choice < 0.6:
            return  # no new writes while healing: the log must settle
        if choice < 0.6:
            self.write_counter += 1
            key = f"k{self.rng.randrange(3)}"
            data = f"{key}=v{self.write_counter}".encode()
            try:
                entry = raft.propose(data)
            except (NotLeader, ProposalDropped):
                return
            self.pending.append(Proposal(node.node_id, entry.index, entry.term, data, key))
            self._after_input(node)
        elif choice < 0.85:
            self.read_counter += 1
            context = f"r{self.read_counter}".encode()
            key = f"k{self.rng.randrange(3)}"
            latest = max((i for _, i in self.acked_index_by_key.get(key, [])), default=0)
            try:
                raft.read_index(context)
            except NotLeader:
                return
            self.reads[context] = Read(node.node_id, key, self.now, latest)
            self._after_input(node)
        elif choice < 0.85 + self.p_conf and raft.is_leader:
            self._change_membership(node)
        elif choice > 0.99 and raft.is_leader and not self.healing:
            others = sorted(v for v in raft.conf.voters if v != raft.id)
            if others:
                target = self.rng.choice(others)
                raft.transfer_leadership(target)
                self.transfers += 1
                self.trace(f"leader {raft.id} transfers leadership to {target}")
                self._after_input(node)

    def _change_membership(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        conf = raft.conf
        options: list[ConfChange] = []
        for candidate in self.nodes:
            if candidate not in conf.members:
                options.append(ConfChange(ConfChangeKind.ADD_LEARNER, candidate))
            elif candidate in conf.learners:
                options.append(ConfChange(ConfChangeKind.ADD_VOTER, candidate))
                options.append(ConfChange(ConfChangeKind.REMOVE_NODE, candidate))
            elif len(conf.voters) > 3 and candidate != raft.id:
                options.append(ConfChange(ConfChangeKind.REMOVE_NODE, candidate))
        if not options:
            return
        change = self.rng.choice(options)
        try:
            raft.propose_membership_change(change)
        except (NotLeader, ProposalDropped):
            return
        self.trace(f"leader {raft.id} proposes {change}")
        self._after_input(node)

    def _read_ready(self, node: SimNode, context: bytes, index: int) -> None:
        read = self.reads.get(context)
        if read is None or read.node != node.node_id:
            return
        read.read_index = index
        self._maybe_finish_read(node, context, read)

    def _maybe_finish_read(self, node: SimNode, context: bytes, read: Read) -> None:
        assert read.read_index is not None
        if node.applied < read.read_index:
            return
        del self.reads[context]
        value = node.kv.get(read.key)
        written_at = value[1] if value is not None else 0
        if written_at < read.min_index:
            raise Violation(
                f"stale read on node {node.node_id}: key {read.key} read the write at index "
                f"{written_at}, but the write at {read.min_index} was acknowledged before the "
                "read started"
            )
        self.reads_checked += 1

    # -- faults ---------------------------------------------------------------------------
    def _inject_faults(self) -> None:
        rng = self.rng
        if rng.random() < self.p_crash:
            node = self.nodes[rng.randrange(1, self.pool + 1)]
            if node.up and sum(n.up for n in self.nodes.values()) > 1:
                self._crash(node)
        if rng.random() < self.p_partition:
            if self.cut and rng.random() < 0.5:
                self.cut.clear()
                self.trace("network heals")
            else:
                a, b = rng.sample(list(self.nodes), 2)
                self.cut.update({(a, b), (b, a)})
                if rng.random() < 0.3:  # isolate `a` completely
                    for other in self.nodes:
                        if other != a:
                            self.cut.update({(a, other), (other, a)})
                self.trace(f"partition {a} | {b}")

    def _crash(self, node: SimNode) -> None:
        node.up = False
        node.ready = None
        node.log.crash()
        node.raft = None
        self.pending = [p for p in self.pending if p.node != node.node_id]
        self.reads = {k: r for k, r in self.reads.items() if r.node != node.node_id}
        self.trace(f"node {node.node_id} crashes")
        for other in self.nodes.values():
            # Its kernel closes its sockets: the peers see the connection end.
            if (
                other.up
                and other.raft is not None
                and (node.node_id, other.node_id) not in self.cut
            ):
                other.raft.leader_unreachable(node.node_id)
        self._schedule(self.rng.uniform(5, 60) * TICK / 5, "restart", node.node_id)

    def _heal(self) -> None:
        self.healing = True
        self.cut.clear()
        self.p_drop = 0.0
        self.p_dup = 0.0
        self.p_crash = 0.0
        self.p_partition = 0.0
        self.p_conf = 0.0
        for node in self.nodes.values():
            if not node.up:
                self._schedule(1, "restart", node.node_id)

    # -- checks -------------------------------------------------------------------------------
    def _check_node(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        if raft.role is Role.LEADER:
            holder = self.leaders.setdefault(raft.term, node.node_id)
            if holder != node.node_id:
                raise Violation(
                    f"election safety: nodes {holder} and {node.node_id} lead term {raft.term}"
                )
            if self.leaders.get(-raft.term) != node.node_id:
                self.leaders[-raft.term] = node.node_id
                self._check_leader_completeness(node)
        log = raft.log
        known = self.known_committed
        low = max(log.first_index(), 1)
        if log.committed > known:
            for entry in log.slice(max(low, known + 1), log.committed + 1):
                self.committed[entry.index] = (entry.term, entry.data)
                self.known_committed = max(self.known_committed, entry.index)
        # Committed entries never change, in any log. (Inline: this runs after
        # every event, for up to 9 entries.)
        commit = log.committed
        start = max(low, commit - 8)
        end = min(log.last_index(), known, commit)
        if start <= end:
            committed = self.committed
            for entry in log.slice(start, end + 1):
                expected = committed.get(entry.index)
                if expected is not None and expected != (entry.term, entry.data):
                    raise Violation(
                        f"node {node.node_id} commits {entry.index}@{entry.term} but "
                        f"{entry.index}@{expected[0]} was committed"
                    )

    def _check_leader_completeness(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        log = raft.log
        known = self.known_committed
        if log.last_index() < known:
            raise Violation(
                f"leader completeness: leader {node.node_id} of term {raft.term} ends at "
                f"{log.last_index()}, but {known} is committed"
            )
        low = max(log.first_index(), 1)
        if low <= known:
            for entry in log.slice(low, known + 1):
                expected = self.committed.get(entry.index)
                if expected is not None and expected[0] != entry.term:
                    raise Violation(
                        f"leader completeness: leader {node.node_id} of term {raft.term} holds "
                        f"{entry.index}@{entry.term}, but {entry.index}@{expected[0]} is committed"
                    )

    def _check_log_matching(self) -> None:
        live = [n for n in self.nodes.values() if n.up and n.raft is not None]
        for i, a in enumerate(live):
            for b in live[i + 1 :]:
                assert a.raft is not None and b.raft is not None
                la, lb = a.raft.log, b.raft.log
                low = max(la.first_index(), lb.first_index())
                high = min(la.last_index(), lb.last_index())
                last_match = 0
                for index in range(high, low - 1, -1):
                    if la.term(index) == lb.term(index):
                        last_match = index
                        break
                if last_match >= low:
                    ea = la.slice(low, last_match + 1)
                    eb = lb.slice(low, last_match + 1)
                    if ea != eb:
                        raise Violation(
                            f"log matching: nodes {a.node_id} and {b.node_id} agree at "
                            f"{last_match} but differ before it"
                        )

    def _members(self) -> set[int]:
        leader = next(
            (n for n in self.nodes.values() if n.raft is not None and n.raft.is_leader), None
        )
        if leader is None or leader.raft is None:
            return set()
        return set(leader.raft.conf.members)

    def _converged(self) -> bool:
        members = self._members()
        if not members or not all(self.nodes[m].up for m in members):
            return False
        leader = next(n.raft for n in self.nodes.values() if n.raft and n.raft.is_leader)
        applied = {self.nodes[m].applied for m in members}
        return (
            leader.log.committed == leader.log.last_index()
            and applied == {leader.log.committed}
            and all(self.nodes[m].ready is None for m in members)
        )

    def _check_liveness(self) -> None:
        self._check_log_matching()
        members = self._members()
        if not members:
            raise Violation("liveness: no leader after the network healed")
        if not self._converged():
            state = {
                m: (self.nodes[m].applied, self.nodes[m].raft.log.committed)  # type: ignore[union-attr]
                for m in sorted(members)
            }
            raise Violation(f"liveness: members did not converge after healing: {state}")
        for proposal in self.acked:
            for member in members:
                node = self.nodes[member]
                if node.log.snapshot_meta().index >= proposal.index:
                    continue  # covered by the snapshot (checked through the kv contents)
                entry = node.raft.log.slice(proposal.index, proposal.index + 1)[0]  # type: ignore[union-attr]
                if (entry.term, entry.data) != (proposal.term, proposal.data):
                    raise Violation(
                        f"durability: acknowledged {proposal.data!r} at {proposal.index} "
                        f"is missing on node {member}"
                    )
        kvs = {member: self.nodes[member].kv for member in members}
        if len({repr(sorted(kv.items())) for kv in kvs.values()}) != 1:
            raise Violation(f"members' state machines differ after convergence: {kvs}")

    def summary(self) -> str:
        return (
            f"seed {self.seed}: voters {self.initial_voters}/{self.pool}, "
            f"acked {len(self.acked)}, reads {self.reads_checked}, "
            f"terms {len([t for t in self.leaders if t > 0])}, "
            f"max commit {max(self.committed, default=0)}, "
            f"snapshots installed {self.installed_snapshots}, "
            f"membership changes applied {self.conf_changes}, transfers {self.transfers}"
        )


def run_seed(seed: int, fault: str | None = None, steps: int = 1500) -> Simulation:
    sim = Simulation(seed, fault=fault, steps=steps)
    sim.run()
    return sim


def run_seeds(
    seeds: range, fault: str | None = None, report: Callable[[str], None] | None = None
) -> list[str]:
    failures = []
    for seed in seeds:
        try:
            sim = run_seed(seed, fault)
        except Violation as exc:
            failures.append(str(exc))
            if report:
                report(str(exc))
            continue
        if report:
            report(sim.summary())
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, help="replay one seed")
    parser.add_argument("--seeds", type=int, default=500, help="run seeds 0..N-1")
    parser.add_argument("--first", type=int, default=0, help="first seed of the range")
    parser.add_argument("--fault", choices=[f.value for f in TestFault] + list(DRIVER_FAULTS))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    if args.seed is not None:
        sim = Simulation(args.seed, fault=args.fault, steps=args.steps, verbose=args.verbose)
        try:
            sim.run()
        except Violation as exc:
            print(f"VIOLATION {exc}")
            return 1
        print(sim.summary())
        return 0
    failures = run_seeds(range(args.first, args.first + args.seeds), args.fault)
    for failure in failures:
        print(f"VIOLATION {failure}")
    print(f"{args.seeds} seeds, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
