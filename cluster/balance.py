"""Replica and leader balancing: where each group should live, and the next steps there.

Placement is data in the meta group (group -> tuple of replica member ids).
The meta leader calls these pure functions to plan its changes and makes
them one at a time: add the target as a Raft learner, let it catch up,
promote it, then remove the source. No I/O, no clocks, no randomness: ties
are broken by sorted ids, so every node plans the same thing.

Words
-----
- **active** member: may hold replicas. **leaving**: being decommissioned,
  ends with none. **dead**: declared gone by an operator; its replicas are
  replaced and it never receives one. A replica naming an id that is not a
  member is treated like one on a dead member.
- **k** = ``min(replication, number of active members)``: the replicas each
  group should have.
- **zone**: a failure domain. A member without a zone is a zone of its own
  (so a cluster without zones only asks for distinct members, and an
  unlabelled member is never assumed to share a fate with another).
- **zone cap**: the most replicas of one group a zone may hold: ``min(size,
  c)`` with ``c`` the smallest number such that ``sum(min(size, c))`` over the
  zones of active members is at least k. With k or more zones c is 1: never
  two replicas of a group in one zone. With fewer, replicas spread as evenly
  as the zone sizes allow.
- **load**: the number of replicas an active member holds, over all groups.

`goal_placement`: invariants of its result
-------------------------------------------
1. Every group has exactly k replicas, on distinct active members.
2. No zone holds more replicas of a group than its zone cap.
3. Loads are as even as invariants 1 and 2 allow: they minimise the sum of
   squared loads, so max - min <= 1 whenever some placement satisfying 1 and
   2 achieves it: always without zones or with zones of equal size; not when
   a small zone must take a replica of every group (one member alone in one
   of 3 zones, k = 3: it holds every group).
4. Minimal change: a placement already satisfying 1-3 is returned as is
   (hence ``goal(goal(x)) == goal(x)``); otherwise a current replica moves
   only when it breaks 1 or 2, or when a balance step needs it. Kept replicas
   keep their position in the tuple and new ones take vacated positions.

The algorithm, in five steps over the groups in id order:

1. Keep the current replicas that are on active members (first occurrence).
2. Zone rule: while a zone holds more than its cap of a group, drop that
   group's replica in the zone on the most loaded member (ties: highest id).
3. Excess: while a group has more than k replicas, drop the one on the most
   loaded member (ties: highest id). Steps 2 and 3 only remove, so what is
   left can always be completed within the caps (the caps sum to at least k).
4. Fill: while a group has fewer than k replicas, add the least loaded active
   member not in the group whose zone is under its cap (ties: lowest id).
5. Balance: a placement is a flow (each group sends k units through its
   group-zone vertices, each capped, to distinct members), and loads minimise
   the sum of squares iff there is no augmenting path in the residual graph
   from a member of load L to one of load <= L - 2. Such a path is a chain
   of replica moves, each inside one group: A -> x1 in group g1, x1 -> x2 in
   g2, ..., each move within a zone or into a zone with room; the members in
   the middle keep their load. Starting from the most loaded member, a
   breadth-first search by moves finds the chain with the fewest moves (and
   among those, the least loaded destination) and applies it. Each chain lowers the sum of squared
   loads, so this ends; it ends when no member has a chain, which is
   invariant 3. Without zones every chain is one move, from the most loaded
   member to the least loaded one: the fewest moves that balance.

Cost: steps 1-4 are O(groups x k x members); each balance chain is a
search over members + groups x zones vertices, stopped at the first number
of moves that reaches a destination. 64 members x 256 groups, with or
without zones, plan in about 0.1 s.

`next_moves`: single steps toward the goal
------------------------------------------
Each `Move` adds or removes one replica of one group; at most one per group
and ``limit`` in all. For a group whose current replicas differ from its
goal: if it has more replicas than its goal it removes one (on a dead
member first, then a leaving one, then the lowest id); otherwise it adds
one (the lowest id of the goal's new replicas). So a replacement is an
add, then, once `current` shows it, the removal of the replaced replica,
and a removal only happens while a group has more replicas than its goal:
a group never drops below ``min(its count, k)`` replicas, and no live
replica goes while a dead one could, so its live (not dead) replicas never
drop below ``min(live, k)`` either. The one way a group ends
with fewer replicas than before is when k itself is smaller, i.e. fewer
active members than `replication`: replicas on dead (or leaving) members
are then removed with no replacement. Applying the moves one by one
reaches the goal in exactly as many moves as replicas differ (the sum over
groups of the symmetric differences).

Keep the goal while stepping toward it, and compute a new one when the
members, their states or zones, or the replication change. The goal of a
placement in the middle of a change is the same goal up to ties between
equally loaded members (random trials: at most one extra replica move
when the goal was recomputed after every move), so recomputing is safe,
only not minimal.

Priority: groups with a replica on a dead or leaving member first, then
under-replicated groups, then the rest (balance). Within a class, a group
that is waiting for the removal after its add comes first (finish a change
before starting another), then the groups with the fewest live (not dead)
replicas, then by id. `next_moves` takes the members to know who is dead;
without them it takes every member the goal does not use as departing.

`leader_transfers`: spreading leaders
-------------------------------------
Leaders on leaving or dead members move first, each to the active replica
of its group that leads the fewest groups. Then the same argument as step 5
on a simpler graph (each group has one leader; an edge u -> v per group led
by u with v an active replica): while a member leading L groups has a chain
of transfers to a member leading <= L - 2, the chain is returned last hop
first. After its last hop the busiest member with a chain is still the
same one and its chain is one hop shorter, so calls with ``limit=1``
finish the chain and converge. The result is [] once counts differ by at
most 1, or as little as the placement allows. Groups without a known
leader are left alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from protobase.errors import ProtoBaseException

from .meta import MEMBER_STATES

__all__ = [
    "Member",
    "Move",
    "PlacementError",
    "goal_placement",
    "leader_transfers",
    "next_moves",
    "zone_caps",
]

ACTIVE, LEAVING, DEAD = MEMBER_STATES

Zone = str | int
"""A zone label, or the member id of a member without one (a zone of its own)."""


class PlacementError(ProtoBaseException, ValueError):
    """The members or the replication factor admit no placement."""


@dataclass(frozen=True)
class Member:
    """A cluster member as placement sees it."""

    id: int
    zone: str | None = None
    state: str = ACTIVE

    def __post_init__(self) -> None:
        if self.state not in MEMBER_STATES:
            raise PlacementError(
                f"member {self.id} has state {self.state!r}; use one of {MEMBER_STATES}"
            )

    @property
    def zone_key(self) -> Zone:
        return self.zone if self.zone is not None else self.id


@dataclass(frozen=True)
class Move:
    """One change to one group's replicas: add a member, or remove one."""

    group: int
    add: int | None
    remove: int | None

    def __post_init__(self) -> None:
        if (self.add is None) == (self.remove is None):
            raise PlacementError(
                f"a move of group {self.group} adds or removes exactly one replica, "
                f"not add={self.add} remove={self.remove}"
            )


def zone_caps(zone_sizes: Mapping[Zone, int], replicas: int) -> dict[Zone, int]:
    """The most replicas of one group each zone may hold (see the module docstring).

    Args:
        zone_sizes: active members per zone.
        replicas: k, at most the sum of the sizes.

    Returns:
        Zone -> its cap.
    """
    per_zone = 1
    while sum(min(size, per_zone) for size in zone_sizes.values()) < replicas:
        per_zone += 1
    return {zone: min(size, per_zone) for zone, size in zone_sizes.items()}


# -- goal_placement ----------------------------------------------------------

# Vertices of the balance graph: (_MEMBER, member, 0), (_GROUP_ZONE, group,
# zone) and (_GROUP, group, 0).
_Vertex = tuple[int, int, Zone]
_MEMBER, _GROUP_ZONE, _GROUP = 0, 1, 2


class _Layout:
    """A placement being built, with each member's load and each group's zone counts."""

    def __init__(self, active: list[Member], replicas: int) -> None:
        self.k = replicas
        self.zone = {m.id: m.zone_key for m in active}
        self.in_zone: dict[Zone, list[int]] = {}
        for m in active:  # sorted by id, so each zone lists its members by id
            self.in_zone.setdefault(m.zone_key, []).append(m.id)
        self.caps = zone_caps({z: len(ids) for z, ids in self.in_zone.items()}, replicas)
        self.load = {m.id: 0 for m in active}
        self.groups_of: dict[int, set[int]] = {m.id: set() for m in active}
        self.replicas: dict[int, list[int]] = {}
        self.zone_count: dict[int, dict[Zone, int]] = {}

    def add(self, group: int, member: int, at: int | None = None) -> None:
        replicas = self.replicas[group]
        replicas.insert(len(replicas) if at is None else at, member)
        self.load[member] += 1
        self.groups_of[member].add(group)
        counts = self.zone_count[group]
        counts[self.zone[member]] = counts.get(self.zone[member], 0) + 1

    def remove(self, group: int, member: int) -> int:
        at = self.replicas[group].index(member)
        del self.replicas[group][at]
        self.load[member] -= 1
        self.groups_of[member].discard(group)
        self.zone_count[group][self.zone[member]] -= 1
        return at

    def has_room(self, group: int, zone: Zone) -> bool:
        return self.zone_count[group].get(zone, 0) < self.caps[zone]

    def drop_most_loaded(self, group: int, among: list[int]) -> None:
        self.remove(group, max(among, key=lambda m: (self.load[m], m)))

    def fill(self, group: int) -> None:
        while len(self.replicas[group]) < self.k:
            present = set(self.replicas[group])
            member = min(
                (m for m in self.load if m not in present and self.has_room(group, self.zone[m])),
                key=lambda m: (self.load[m], m),
            )
            self.add(group, member)

    # Balance (step 5) ---------------------------------------------------

    def balance(self) -> None:
        stuck: set[int] = set()
        while True:
            if self._improve(skip=stuck, stuck=stuck):
                continue
            if not stuck:
                return
            # Chains made since a member was found stuck may have freed it:
            # check everyone once more before stopping.
            stuck.clear()
            if not self._improve(skip=set(), stuck=stuck):
                return

    def _improve(self, skip: set[int], stuck: set[int]) -> bool:
        """Apply one chain from the most loaded member not in `skip` that has one."""
        lightest = min(self.load.values())
        for member in sorted(self.load, key=lambda m: (-self.load[m], m)):
            if self.load[member] - lightest < 2:
                return False
            if member in skip:
                continue
            chain = self._chain_from(member)
            if chain is not None:
                self._apply(chain)
                return True
            stuck.add(member)
        return False

    def _neighbours(self, vertex: _Vertex) -> Iterator[tuple[_Vertex, int]]:
        """Residual edges out of `vertex`, each with the moves it makes (1 into a member)."""
        if vertex[0] == _MEMBER:
            member = vertex[1]
            for group in sorted(self.groups_of[member]):
                yield (_GROUP_ZONE, group, self.zone[member]), 0
        elif vertex[0] == _GROUP_ZONE:
            _, group, zone = vertex
            present = self.replicas[group]
            for member in self.in_zone[zone]:
                if member not in present:
                    yield (_MEMBER, member, 0), 1
            if self.zone_count[group].get(zone, 0) > 0:
                yield (_GROUP, group, 0), 0
        else:
            group = vertex[1]
            for zone in self.in_zone:
                if self.has_room(group, zone):
                    yield (_GROUP_ZONE, group, zone), 0

    def _chain_from(self, start: int) -> list[_Vertex] | None:
        """The shortest chain of moves from `start` to a member 2 or more below it.

        Breadth-first by moves: each round takes the members reached by the
        previous one through their groups (member -> group-zone -> group ->
        group-zone, no move yet) to the members one move further.
        """
        ceiling = self.load[start] - 2
        origin: _Vertex = (_MEMBER, start, 0)
        parent: dict[_Vertex, _Vertex] = {}
        seen = {origin}
        frontier = [origin]
        while frontier:
            reached: list[_Vertex] = []
            queue = deque(frontier)
            while queue:
                vertex = queue.popleft()
                for neighbour, moves in self._neighbours(vertex):
                    if neighbour not in seen:
                        seen.add(neighbour)
                        parent[neighbour] = vertex
                        (reached if moves else queue).append(neighbour)
            lighter = [v for v in reached if self.load[v[1]] <= ceiling]
            if lighter:
                path = [min(lighter, key=lambda v: (self.load[v[1]], v[1]))]
                while path[-1] != origin:
                    path.append(parent[path[-1]])
                path.reverse()
                return path
            frontier = reached
        return None

    def _apply(self, path: list[_Vertex]) -> None:
        """Make the moves of a chain: between two members, one move in one group."""
        members = [i for i, vertex in enumerate(path) if vertex[0] == _MEMBER]
        for here, there in pairwise(members):
            group = path[here + 1][1]
            source, target = path[here][1], path[there][1]
            self.add(group, target, at=self.remove(group, source))


def _states(members: Sequence[Member]) -> dict[int, str]:
    states = {m.id: m.state for m in members}
    if len(states) != len(members):
        raise PlacementError("a member id appears twice in the member list")
    return states


def _active_members(members: Sequence[Member]) -> list[Member]:
    _states(members)
    return sorted((m for m in members if m.state == ACTIVE), key=lambda m: m.id)


def goal_placement(
    current: Mapping[int, tuple[int, ...]], members: Sequence[Member], replication: int
) -> dict[int, tuple[int, ...]]:
    """The replicas each group should have (invariants in the module docstring).

    Args:
        current: group -> its replicas now (empty for a new cluster).
        members: every member, whatever its state.
        replication: the wanted replicas per group.

    Returns:
        Group -> its goal replicas, for every group of `current`.

    Raises:
        PlacementError: `replication` is below 1, no member is active, or a
            member id is listed twice.
    """
    if replication < 1:
        raise PlacementError(f"replication must be at least 1, not {replication}")
    active = _active_members(members)
    if not active:
        raise PlacementError(
            "no member is active, so no member may hold replicas: "
            "add a member or mark one active before planning"
        )
    layout = _Layout(active, min(replication, len(active)))
    groups = sorted(current)
    for group in groups:  # step 1
        layout.replicas[group] = []
        layout.zone_count[group] = {}
        for member in dict.fromkeys(current[group]):
            if member in layout.load:
                layout.add(group, member)
    for group in groups:  # steps 2 and 3
        counts = layout.zone_count[group]
        for zone in [z for z in counts if counts[z] > layout.caps[z]]:
            while counts[zone] > layout.caps[zone]:
                in_zone = [m for m in layout.replicas[group] if layout.zone[m] == zone]
                layout.drop_most_loaded(group, in_zone)
        while len(layout.replicas[group]) > layout.k:
            layout.drop_most_loaded(group, layout.replicas[group])
    for group in groups:  # step 4
        layout.fill(group)
    layout.balance()  # step 5
    return {group: _in_place(current[group], layout.replicas[group]) for group in groups}


def _in_place(current: tuple[int, ...], goal: list[int]) -> tuple[int, ...]:
    """`goal` ordered like `current`: kept replicas stay, new ones fill the gaps."""
    wanted, before = set(goal), set(current)
    new = iter([m for m in goal if m not in before])
    ordered: list[int] = []
    for member in dict.fromkeys(current):
        if member in wanted:
            ordered.append(member)
        else:
            replacement = next(new, None)
            if replacement is not None:
                ordered.append(replacement)
    ordered.extend(new)
    return tuple(ordered)


# -- next_moves --------------------------------------------------------------


def next_moves(
    current: Mapping[int, tuple[int, ...]],
    goal: Mapping[int, tuple[int, ...]],
    limit: int = 1,
    *,
    members: Sequence[Member] | None = None,
) -> list[Move]:
    """The next single-replica changes that bring `current` toward `goal`.

    Args:
        current: group -> its replicas now.
        goal: group -> its goal replicas (`goal_placement`); a group missing
            from `current` has none yet.
        limit: the most moves returned.
        members: every member, whatever its state. Pass it: only with it
            can a replica on a dead member be told from one on an active
            member the goal leaves empty (more members than replicas), and
            the dead one must go first (it counts toward the Raft quorum
            without voting). Without it, every member the goal does not use
            is taken as departing, and ties between them go by id.

    Returns:
        At most `limit` moves, at most one per group, most urgent first
        (order in the module docstring); [] when `current` is the goal.

    Raises:
        PlacementError: a member id is listed twice.
    """
    used = {m for replicas in goal.values() for m in replicas}
    states = dict.fromkeys(used, ACTIVE) if members is None else _states(members)

    def lost(member: int) -> bool:
        """On a dead member (or one that is not a member, or unused when states are unknown)."""
        return states.get(member, DEAD) == DEAD

    def departing(member: int) -> bool:
        return states.get(member, DEAD) != ACTIVE

    ranked: list[tuple[tuple[int, int, int, int], Move]] = []
    for group in sorted(set(current) | set(goal)):
        now = list(dict.fromkeys(current.get(group, ())))
        wanted = set(goal.get(group, ()))
        if set(now) == wanted:
            continue
        removing = len(now) > len(wanted)
        if removing:
            extra = [m for m in now if m not in wanted]
            # dead replicas first: removing a live one while a dead one stays
            # lowers the live replicas, and with them the group's margin
            chosen = min(extra, key=lambda m: (not lost(m), not departing(m), m))
            move = Move(group, None, chosen)
        else:
            move = Move(group, min(wanted.difference(now)), None)
        if any(departing(m) for m in now):
            urgency = 0
        elif len(now) < len(wanted):
            urgency = 1
        else:
            urgency = 2
        live = sum(not lost(m) for m in now)
        ranked.append(((urgency, 0 if removing else 1, live, group), move))
    ranked.sort(key=lambda item: item[0])
    return [move for _, move in ranked[: max(limit, 0)]]


# -- leader_transfers --------------------------------------------------------


def leader_transfers(
    leaders: Mapping[int, int | None],
    replicas: Mapping[int, tuple[int, ...]],
    members: Sequence[Member],
    limit: int = 1,
) -> list[tuple[int, int, int]]:
    """Leadership transfers that spread group leaders evenly over active members.

    Args:
        leaders: group -> its leader now, or None when unknown.
        replicas: group -> its replicas.
        members: every member, whatever its state.
        limit: the most transfers returned.

    Returns:
        Up to `limit` ``(group, from member, to member)``, to be made in order;
        always to an active replica of the group. [] when balanced.

    Raises:
        PlacementError: a member id is listed twice.
    """
    active = {m.id for m in _active_members(members)}
    led = {g: leader for g, leader in sorted(leaders.items()) if leader is not None}
    choices = {g: [m for m in dict.fromkeys(replicas.get(g, ())) if m in active] for g in led}
    count = dict.fromkeys(sorted(active), 0)
    leading: dict[int, set[int]] = {m: set() for m in count}
    for group, leader in led.items():
        if leader in count:
            count[leader] += 1
            leading[leader].add(group)
    transfers: list[tuple[int, int, int]] = []

    def transfer(group: int, source: int, target: int) -> None:
        transfers.append((group, source, target))
        led[group] = target
        count[target] += 1
        leading[target].add(group)
        if source in count:
            count[source] -= 1
            leading[source].discard(group)

    for group, leader in list(led.items()):
        if leader not in count and choices[group] and len(transfers) < limit:
            transfer(group, leader, min(choices[group], key=lambda m: (count[m], m)))
    while len(transfers) < limit:
        chain = _leader_chain(count, leading, choices)
        if chain is None:
            break
        for group, source, target in reversed(chain):
            if len(transfers) < limit:
                transfer(group, source, target)
    return transfers


def _leader_chain(
    count: Mapping[int, int],
    leading: Mapping[int, set[int]],
    choices: Mapping[int, list[int]],
) -> list[tuple[int, int, int]] | None:
    """The shortest chain of transfers from the busiest member that has one."""
    for start in sorted(count, key=lambda m: (-count[m], m)):
        ceiling = count[start] - 2
        parent: dict[int, tuple[int, int]] = {}  # member -> (group, member it came from)
        layer = [start]
        seen = {start}
        found: list[int] = []
        while layer and not found:
            following: list[int] = []
            for member in layer:
                for group in sorted(leading[member]):
                    for target in choices[group]:
                        if target not in seen:
                            seen.add(target)
                            parent[target] = (group, member)
                            following.append(target)
            found = [m for m in following if count[m] <= ceiling]
            layer = following
        if found:
            member = min(found, key=lambda m: (count[m], m))
            chain: list[tuple[int, int, int]] = []
            while member != start:
                group, source = parent[member]
                chain.append((group, source, member))
                member = source
            chain.reverse()
            return chain
    return None
