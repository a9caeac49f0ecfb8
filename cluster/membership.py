"""Elastic membership: members join and leave, replicas move, one change at a time.

The meta group's cluster map is the source of truth for the members (their
addresses, zones and states) and for where every group's replicas are. A
node's ``[[members]]`` only bootstrap a new cluster.

The protocol has three actors and one rule each:

- **Every node** runs the groups the map places on it (`ClusterNode._follow_groups`):
  a group placed on it starts empty and waits for its leader; a group the
  map moved away is dropped once the group's leader no longer counts the
  node in its Raft configuration.
- **The meta leader's `Mover`** makes each group's Raft configuration match
  the map: a replica the map names and the configuration lacks is added as
  a learner, caught up and promoted (`RaftNode.add_voter`, on the group's
  leader); only when no group lacks one, a voter the map no longer names is
  removed (after leadership moves off it). So a group never has fewer
  voters than the map gives it while a replica moves.
- **When every configuration matches the map**, the mover plans the next
  step toward the goal placement (`balance.goal_placement`, `next_moves`)
  and writes it into the map as the next epoch: one replica added to one
  group, or one removed. It also forgets a leaving or dead member that holds
  no replica, and moves group leaders to spread them (`leader_transfers`).

Every step is idempotent and derived from the map and the configurations
as they are, so a step interrupted by a crash or a new meta leader is simply
taken again; operators' commands (join, leave, declare dead) only change
the map.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .balance import Member, PlacementError, goal_placement, leader_transfers, next_moves
from .errors import Unavailable
from .meta import ClusterMap, map_entry
from .partitions import META_GROUP

if TYPE_CHECKING:
    from .node import ClusterNode

log = logging.getLogger("protobase.membership")

STEP_SECONDS = 0.5
"""How often the meta leader looks for the next step."""

SETTLED_SECONDS = 10.0
"""How often the meta leader checks a cluster whose map has not changed since
it last found every group as the map says."""

ADD_WAIT = 10.0
"""How long one step waits for a new replica to catch up; a replica that
needs longer (or is down) is waited for again at the next step, so that a
change of plan (the target declared dead, a new meta leader) is seen."""

IDLE = "waiting: "
"""Steps that could do nothing start with it (the loop pauses after them)."""


class MembershipError(Exception):
    """A membership request cannot be carried out (the message says why)."""


@dataclass(frozen=True)
class GroupConf:
    """A group's Raft configuration as its leader reports it."""

    leader: int
    voters: frozenset[int]
    learners: frozenset[int]


def members_of(cluster_map: ClusterMap) -> list[Member]:
    return [
        Member(m, cluster_map.zone_of(m), cluster_map.state_of(m)) for m in cluster_map.member_ids()
    ]


class Mover:
    """The meta leader's loop that carries out the protocol (module docstring)."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.last_step = "idle"
        """What the latest step did (shown in /status.json)."""
        self.balanced_epoch = 0
        """The map epoch at which a step last found nothing to do (a watcher
        that sees "balanced" knows which map it was said of)."""
        self.balance_leaders = False
        """Move group leaders to spread them (set by a rebalance request)."""
        self._settled_epoch = 0
        """The map epoch at which the last step found nothing to do."""
        self._uneven_since: float | None = None
        """When the leaders were first seen uneven (None: they are even)."""
        self.unreachable: dict[int, str] = {}
        """Members whose status the last step could not read, and why."""
        self.applied: dict[tuple[int, int], int] = {}
        """(member, group) -> the index the member has applied, as last read."""

    async def run(self) -> None:
        quiet = 0.0
        while True:
            await asyncio.sleep(STEP_SECONDS)
            if not self.node.is_leader(META_GROUP):
                continue
            if self._settled_epoch == self.node.map_epoch and not self.balance_leaders:
                # Nothing changed since everything matched: look again now and then.
                quiet += STEP_SECONDS
                if quiet < SETTLED_SECONDS:
                    continue
            quiet = 0.0
            try:
                # Steps that changed something follow each other at once.
                while self.node.is_leader(META_GROUP):
                    self.last_step = await self.step()
                    if self.last_step == "balanced" or self.last_step.startswith(IDLE):
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # shown in /status.json and retried next step
                self.last_step = f"failed: {type(exc).__name__}: {exc}"
                log.warning("node %d: membership step failed: %s", self.node.id, exc)

    async def step(self) -> str:
        """Take one step of the protocol; returns what it did."""
        node = self.node
        current = await node.current_map()
        if not current.groups:
            # A map from before placement was data: write its placement out first.
            await self._propose(current.changed(groups=tuple(sorted(current.placement().items()))))
            return "placement written into the map"
        placement = current.placement()
        confs = await self.confs(current)
        # 1. Adds first: a replica the map names that the configuration lacks.
        for group, replicas in sorted(placement.items()):
            conf = confs[group]
            if conf is None:
                continue
            for member in replicas:
                if member in conf.voters:
                    continue
                if current.state_of(member) != "active":
                    # Placed, then declared dead or leaving before it caught up:
                    # take the unfinished add back instead of waiting for it.
                    groups = dict(placement)
                    groups[group] = tuple(r for r in replicas if r != member)
                    await self._propose(current.changed(groups=tuple(sorted(groups.items()))))
                    return f"map: group {group} -{member} (an add it will not finish)"
                try:
                    await self._group_call(conf, "add-voter", group, member, ADD_WAIT)
                except (MembershipError, Unavailable) as exc:
                    # Not caught up yet, or the leader could not be asked now:
                    # the learner stays, and the next step looks again.
                    return IDLE + f"group {group}: member {member} is catching up ({exc})"
                return f"group {group}: added member {member}"
        # 2. Then removals: a voter the map no longer names.
        for group, replicas in sorted(placement.items()):
            conf = confs[group]
            if conf is None:
                continue
            for member in sorted(conf.voters | conf.learners):
                if member in replicas:
                    continue
                if member == conf.leader:
                    target = min(replicas)
                    await self._group_call(conf, "transfer", group, target, 30.0)
                    return f"group {group}: leadership moved to member {target}"
                await self._group_call(conf, "remove", group, member, 30.0)
                return f"group {group}: removed member {member}"
        if any(conf is None for conf in confs.values()):
            return IDLE + "waiting for every group to have a leader"
        # 3. Every configuration matches the map: plan the next map change.
        members = members_of(current)
        try:
            goal = goal_placement(placement, members, current.replication)
        except PlacementError as exc:
            return IDLE + f"no placement possible: {exc}"
        moves = next_moves(placement, goal, 1, members=members)
        if moves:
            move = moves[0]
            changed = set(placement[move.group])
            if move.add is not None:
                changed.add(move.add)
            if move.remove is not None:
                changed.discard(move.remove)
            groups = dict(placement)
            groups[move.group] = tuple(sorted(changed))
            await self._propose(current.changed(groups=tuple(sorted(groups.items()))))
            return f"map: group {move.group} +{move.add} -{move.remove}"
        # 4. Forget members that left and hold nothing.
        held = {member for replicas in placement.values() for member in replicas}
        gone = [
            m
            for m in current.member_ids()
            if current.state_of(m) != "active" and m not in held and m != node.id
        ]
        if gone:
            await self._propose(_without(current, gone[0]))
            return f"member {gone[0]} forgotten"
        # 5. Spread the leaders: when asked to, or once they stayed uneven for
        # `leader_balance_after` seconds (a restarted member takes its share back).
        leaders = {group: conf.leader for group, conf in confs.items() if conf is not None}
        # A member that did not answer now takes no leadership (it may be down).
        reachable = [
            m if m.id not in self.unreachable else Member(m.id, m.zone, "dead") for m in members
        ]
        transfers = leader_transfers(leaders, placement, reachable, 1)
        now = asyncio.get_running_loop().time()
        if not transfers:
            self._uneven_since = None
            self.balance_leaders = False
        elif self._uneven_since is None:
            self._uneven_since = now
        uneven_for = 0.0 if self._uneven_since is None else now - self._uneven_since
        patience = self.node.settings.leader_balance_after
        if transfers and (self.balance_leaders or 0 < patience <= uneven_for):
            group, source, target = transfers[0]
            conf = confs[group]
            assert conf is not None and conf.leader == source
            leader_at = self.applied.get((source, group), 0)
            if self.applied.get((target, group), -1) < leader_at:
                # A transfer to a replica that is behind holds proposals back
                # until it catches up (or the transfer gives up): wait for it.
                return IDLE + f"group {group}: member {target} catches up before it leads"
            # Left alone, one transfer per round of patience: one that does not
            # take (the target fell behind) is not retried in a tight loop.
            self._uneven_since = now
            await self._group_call(conf, "transfer", group, target, 30.0)
            return f"group {group}: leadership asked to move from member {source} to {target}"
        if not transfers or self.node.settings.leader_balance_after == 0:
            self._settled_epoch = current.epoch
        self.balanced_epoch = current.epoch
        return "balanced"

    async def confs(self, current: ClusterMap) -> dict[int, GroupConf | None]:
        """Every group's configuration, as its leader reports it (None: no
        member answered as its leader). Each member is asked once."""
        node = self.node
        unreachable: dict[int, str] = {}
        reports: dict[int, list[dict[str, Any]]] = {
            node.id: [node.raft.status(group) for group in sorted(node.raft.groups)]
        }

        async def ask(member: int, url: str) -> None:
            try:
                reports[member] = (await node.fetch_json(url + "/status.json", 2.0))["groups"]
            except MembershipError as exc:
                # A member down or slow: its groups' other replicas answer for them.
                unreachable[member] = str(exc)

        await asyncio.gather(
            *(ask(member, client) for member, _, client in current.members if member != node.id)
        )
        self.unreachable = unreachable
        found: dict[int, GroupConf | None] = dict.fromkeys(current.placement())
        self.applied = {
            (member, status["group"]): int(status["applied"])
            for member, statuses in reports.items()
            for status in statuses
        }
        for member, statuses in reports.items():
            for status in statuses:
                if status.get("role") == "leader" and status["group"] in found:
                    found[status["group"]] = GroupConf(
                        member, frozenset(status["voters"]), frozenset(status["learners"])
                    )
        return found

    async def conf(self, group: int, replicas: tuple[int, ...]) -> GroupConf | None:
        """The group's configuration, from whichever replica leads it (None when
        no replica answers as its leader)."""
        node = self.node
        asked = set(replicas)
        if group in node.raft.groups:
            leader = node.raft.leader(group)
            if leader is not None:
                asked.add(leader)
        for member in sorted(asked):
            if member == node.id:
                statuses = [node.raft.status(group)] if group in node.raft.groups else []
            else:
                url = node.client_url(member)
                if url is None:
                    continue
                try:
                    answer = await node.fetch_json(url + "/status.json", timeout=2.0)
                except MembershipError:
                    continue
                statuses = answer["groups"]
            for status in statuses:
                if status["group"] == group and status["role"] == "leader":
                    return GroupConf(
                        member, frozenset(status["voters"]), frozenset(status["learners"])
                    )
        return None

    async def _group_call(
        self, conf: GroupConf, action: str, group: int, member: int, timeout: float
    ) -> None:
        body = {"group": group, "member": member, "timeout": timeout}
        if conf.leader == self.node.id:
            await self.node.group_admin(action, group, member, timeout)
            return
        url = self.node.client_url(conf.leader)
        if url is None:
            raise MembershipError(f"member {conf.leader} has no client URL in the map")
        await self.node.post_admin(url, f"/v1/admin/groups/{action}", body, timeout + 5)

    async def _propose(self, new_map: ClusterMap) -> None:
        result = await self.node.propose(META_GROUP, map_entry(new_map))
        if result[0] not in ("ok", "dup"):
            raise MembershipError(f"the map changed meanwhile (epoch {result[1]}); next step")


def _without(current: ClusterMap, member: int) -> ClusterMap:
    """The map with `member` forgotten, its id retired."""
    return current.changed(
        members=tuple(m for m in current.members if m[0] != member),
        states=tuple(s for s in current.states if s[0] != member),
        zones=tuple(z for z in current.zones if z[0] != member),
        retired=tuple(sorted({*current.retired, member})),
    )


def joined(
    current: ClusterMap, member: int | None, peer: str, client: str, zone: str | None
) -> tuple[ClusterMap, int]:
    """The map with a new member (id `member`, or the next free one), and its id.

    A member already there with the same addresses is not an error (a join
    repeated after a lost answer); with other addresses it is.

    Raises:
        MembershipError: the id or an address is taken by another member, or
            the id belonged to a member the cluster forgot.
    """
    if member in current.retired:
        raise MembershipError(
            f"member id {member} belonged to a member that left this cluster; ids are "
            "never used twice: give the new member another node_id (`protobase cluster "
            "add-node` picks a free one) and an empty data_dir"
        )
    for existing, their_peer, their_client in current.members:
        same = (their_peer, their_client) == (peer, client)
        if existing == member or (member is None and same):
            if same:
                return current, existing
            raise MembershipError(
                f"member {existing} is already in the cluster at {their_peer} / {their_client}"
            )
        if their_peer == peer or their_client == client:
            raise MembershipError(
                f"member {existing} already uses {their_peer} / {their_client}; "
                "give the new member addresses of its own"
            )
    new_id = member if member is not None else max(*current.member_ids(), *current.retired) + 1
    zones = current.zones + (((new_id, zone),) if zone else ())
    return (
        current.changed(members=(*current.members, (new_id, peer, client)), zones=zones),
        new_id,
    )


def with_state(current: ClusterMap, member: int, state: str) -> ClusterMap:
    """The map with `member` marked active, leaving or dead.

    Raises:
        MembershipError: no such member, or it is the last active one.
    """
    if member not in current.member_ids():
        raise MembershipError(f"member {member} is not in the cluster")
    states = tuple(s for s in current.states if s[0] != member)
    if state != "active":
        states += ((member, state),)
        active = [m for m in current.member_ids() if current.state_of(m) == "active"]
        after = [m for m in active if m != member]
        if not after:
            raise MembershipError(
                f"member {member} is the last active member; add another before it goes"
            )
        if state == "leaving" and len(after) < min(current.replication, len(active)):
            # A dead member's replicas are gone anyway; a leaving one's are not,
            # and its leaving must not lower how many copies each group keeps.
            raise MembershipError(
                f"member {member} cannot leave: {len(after)} active members would be left "
                f"for groups of {min(current.replication, len(active))} replicas; add a "
                "member first"
            )
    return current.changed(states=states)
