"""Placement planning (cluster/balance.py): goal placement, moves toward it, leaders.

The balance claims are checked against an independent oracle: a small
flow with lower bounds decides whether some placement (or leader choice)
gives every active member a load within one of the others.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.balance import (
    Member,
    Move,
    PlacementError,
    goal_placement,
    leader_transfers,
    next_moves,
    zone_caps,
)
from cluster.partitions import placement

Placement = dict[int, tuple[int, ...]]

# -- strategies ---------------------------------------------------------------


@st.composite
def clusters(draw: st.DrawFn, zoned: bool | None = None) -> tuple[list[Member], int]:
    """1..12 members with distinct ids, at least one active; and a replication."""
    ids = draw(st.lists(st.integers(1, 30), min_size=1, max_size=12, unique=True))
    use_zones = draw(st.booleans()) if zoned is None else zoned
    zone = st.sampled_from([None, "a", "b", "c", "d"]) if use_zones else st.none()
    states = st.sampled_from(["active"] * 4 + ["leaving", "dead"])
    members = [Member(i, draw(zone), draw(states)) for i in ids]
    if not any(m.state == "active" for m in members):
        members[0] = Member(members[0].id, members[0].zone, "active")
    return members, draw(st.integers(1, 5))


@st.composite
def placements(draw: st.DrawFn, members: Sequence[Member], replication: int) -> Placement:
    """Any placement on these members: empty, short, long, on any member state."""
    ids = [m.id for m in members]
    most = replication + 1
    result: Placement = {}
    # two draws a group (a subset, a rotation) keep the examples cheap to make
    subsets = st.lists(st.integers(0, 2 ** len(ids) - 1), min_size=1, max_size=9)
    for group, subset in enumerate(draw(subsets)):
        chosen = [m for i, m in enumerate(ids) if subset >> i & 1][:most]
        turn = draw(st.integers(0, len(ids))) % max(len(chosen), 1)
        result[group] = tuple(chosen[turn:] + chosen[:turn])
    return result


@st.composite
def cluster_and_placement(
    draw: st.DrawFn, zoned: bool | None = None
) -> tuple[list[Member], int, Placement]:
    members, replication = draw(clusters(zoned))
    return members, replication, draw(placements(members, replication))


# -- helpers -------------------------------------------------------------------


def active_of(members: Sequence[Member]) -> list[Member]:
    return [m for m in members if m.state == "active"]


def zone_key(member: Member) -> str | int:
    return member.zone if member.zone is not None else member.id


def loads(result: Mapping[int, tuple[int, ...]], members: Sequence[Member]) -> Counter[int]:
    counts = Counter({m.id: 0 for m in active_of(members)})
    counts.update(m for replicas in result.values() for m in replicas)
    return counts


def spread(counts: Counter[int]) -> int:
    return max(counts.values()) - min(counts.values())


def apply(current: Placement, move: Move) -> Placement:
    changed = dict(current)
    replicas = changed.get(move.group, ())
    if move.add is not None:
        assert move.add not in replicas, f"{move} adds a member the group has"
        changed[move.group] = (*replicas, move.add)
    else:
        assert move.remove in replicas, f"{move} removes a member the group lacks"
        changed[move.group] = tuple(m for m in replicas if m != move.remove)
    return changed


def changes(before: Placement, after: Placement) -> int:
    """Replica changes: additions plus removals."""
    return sum(len(set(before.get(g, ())) ^ set(after[g])) for g in after)


def feasible(edges: list[tuple[object, object, int, int]]) -> bool:
    """Whether a circulation with these (tail, head, lower, upper) edges exists."""
    source, sink = ("source",), ("sink",)
    capacity: dict[object, dict[object, int]] = {}
    excess: Counter[object] = Counter()

    def edge(tail: object, head: object, amount: int) -> None:
        capacity.setdefault(tail, {}).setdefault(head, 0)
        capacity[tail][head] += amount
        capacity.setdefault(head, {}).setdefault(tail, 0)

    for tail, head, lower, upper in edges:
        edge(tail, head, upper - lower)
        excess[head] += lower
        excess[tail] -= lower
    for vertex, amount in excess.items():
        if amount > 0:
            edge(source, vertex, amount)
        elif amount < 0:
            edge(vertex, sink, -amount)
    needed = sum(amount for amount in excess.values() if amount > 0)
    while True:  # Edmonds-Karp
        parent: dict[object, object] = {source: source}
        queue: deque[object] = deque([source])
        while queue and sink not in parent:
            vertex = queue.popleft()
            for head, left in capacity.get(vertex, {}).items():
                if left > 0 and head not in parent:
                    parent[head] = vertex
                    queue.append(head)
        if sink not in parent:
            return needed == 0
        path: list[object] = [sink]
        while path[-1] != source:
            path.append(parent[path[-1]])
        pushed = min(capacity[parent[v]][v] for v in path[:-1])
        for vertex in path[:-1]:
            capacity[parent[vertex]][vertex] -= pushed
            capacity[vertex][parent[vertex]] += pushed
        needed -= pushed


def balanced_layout_exists(groups: int, members: Sequence[Member], replication: int) -> bool:
    """Some placement meets the replica count and zone caps with loads within one."""
    active = active_of(members)
    k = min(replication, len(active))
    sizes = Counter(zone_key(m) for m in active)
    caps = zone_caps(sizes, k)
    low, high = divmod(groups * k, len(active))
    edges: list[tuple[object, object, int, int]] = [("sink", "source", 0, groups * k)]
    for g in range(groups):
        edges.append(("source", ("g", g), k, k))
        for zone, cap in caps.items():
            edges.append((("g", g), ("gz", g, zone), 0, cap))
        for m in active:
            edges.append((("gz", g, zone_key(m)), ("m", m.id), 0, 1))
    for m in active:
        edges.append((("m", m.id), "sink", low, low + (1 if high else 0)))
    return feasible(edges)


def balanced_leaders_exist(choices: Mapping[int, list[int]], members: Sequence[Member]) -> bool:
    active = [m.id for m in active_of(members)]
    led = [g for g, c in choices.items() if c]
    low, high = divmod(len(led), len(active))
    edges: list[tuple[object, object, int, int]] = [("sink", "source", 0, len(led))]
    for g in led:
        edges.append(("source", ("g", g), 1, 1))
        edges.extend((("g", g), ("m", m), 0, 1) for m in choices[g])
    edges.extend((("m", m), "sink", low, low + (1 if high else 0)) for m in active)
    return feasible(edges)


# -- goal_placement: properties -------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(cluster_and_placement())
def test_goal_gives_each_group_min_replication_distinct_active_members(
    case: tuple[list[Member], int, Placement],
) -> None:
    members, replication, current = case
    goal = goal_placement(current, members, replication)
    active = {m.id for m in active_of(members)}
    assert set(goal) == set(current)
    for replicas in goal.values():
        assert len(replicas) == len(set(replicas)) == min(replication, len(active))
        assert set(replicas) <= active


@settings(max_examples=100, deadline=None)
@given(cluster_and_placement(zoned=True))
def test_goal_spreads_each_group_over_zones(case: tuple[list[Member], int, Placement]) -> None:
    members, replication, current = case
    goal = goal_placement(current, members, replication)
    active = active_of(members)
    zone = {m.id: zone_key(m) for m in active}
    zones = len(set(zone.values()))
    k = min(replication, len(active))
    # the fewest a group can put in its fullest zone, from the zone sizes alone
    sizes = Counter(zone.values())
    fewest = next(c for c in range(1, k + 1) if sum(min(s, c) for s in sizes.values()) >= k)
    for replicas in goal.values():
        per_zone = Counter(zone[m] for m in replicas)
        if zones >= k:
            assert max(per_zone.values()) == 1, f"{replicas}: two replicas in one zone"
        assert max(per_zone.values()) <= fewest


@settings(max_examples=100, deadline=None)
@given(cluster_and_placement())
def test_goal_loads_differ_by_one_whenever_the_zones_allow(
    case: tuple[list[Member], int, Placement],
) -> None:
    members, replication, current = case
    goal = goal_placement(current, members, replication)
    possible = balanced_layout_exists(len(current), members, replication)
    assert (spread(loads(goal, members)) <= 1) == possible
    sizes = Counter(zone_key(m) for m in active_of(members))
    if len(set(sizes.values())) == 1:  # no zones, or zones of equal size
        assert possible


@settings(max_examples=100, deadline=None)
@given(cluster_and_placement())
def test_goal_is_idempotent(case: tuple[list[Member], int, Placement]) -> None:
    members, replication, current = case
    goal = goal_placement(current, members, replication)
    assert goal_placement(goal, members, replication) == goal


@settings(max_examples=60, deadline=None)
@given(cluster_and_placement(zoned=False), st.data())
def test_goal_of_a_valid_placement_moves_only_the_excess_over_balance(
    case: tuple[list[Member], int, Placement], data: st.DataObject
) -> None:
    members, replication, groups = case
    active = sorted(m.id for m in active_of(members))
    k = min(replication, len(active))
    current = {
        g: tuple(data.draw(st.permutations(active))[:k]) for g in groups
    }  # valid: k distinct active members, any order
    goal = goal_placement(current, members, replication)
    # the fewest moves that balance: the load above its final count, when
    # the most loaded members keep the `extra` rounded-up counts
    low, extra = divmod(len(current) * k, len(active))
    ordered = sorted(loads(current, members).values(), reverse=True)
    fewest = sum(max(0, n - low - (i < extra)) for i, n in enumerate(ordered))
    assert changes(current, goal) == 2 * fewest
    if spread(loads(current, members)) <= 1:
        assert goal == current  # unchanged, tuple order included


# -- next_moves: convergence --------------------------------------------------------


def converge(current: Placement, goal: Placement, members: Sequence[Member]) -> int:
    """Apply next_moves(limit=1) until none is left, checking every step; the steps."""
    active = {m.id for m in active_of(members)}
    alive = {m.id for m in members if m.state != "dead"}
    start = dict(current)
    steps = 0
    while moves := next_moves(current, goal, members=members):
        (move,) = moves
        replicas = current.get(move.group, ())
        wanted = set(goal[move.group])
        live = len(alive.intersection(replicas))
        if move.add is not None:
            assert move.add in wanted
        else:
            assert move.remove not in wanted
            # a removal only from a group above its goal count; never an
            # active member's replica while a departing one could go instead
            assert len(replicas) > len(wanted)
            if move.remove in active:
                assert set(replicas) <= active
        current = apply(current, move)
        after = current[move.group]
        assert len(after) == len(set(after))
        assert len(after) >= min(len(start.get(move.group, ())), len(wanted))
        assert len(alive.intersection(after)) >= min(live, len(wanted))
        steps += 1
        assert steps <= changes(start, goal), "more moves than replica changes"
    assert {g: set(r) for g, r in current.items()} == {g: set(r) for g, r in goal.items()}
    return steps


@settings(max_examples=100, deadline=None)
@given(cluster_and_placement())
def test_next_moves_reach_the_goal_one_replica_at_a_time(
    case: tuple[list[Member], int, Placement],
) -> None:
    members, replication, current = case
    goal = goal_placement(current, members, replication)
    assert converge(current, goal, members) == changes(current, goal)


@settings(max_examples=60, deadline=None)
@given(cluster_and_placement(), st.integers(1, 6))
def test_next_moves_touch_each_group_once_and_respect_the_limit(
    case: tuple[list[Member], int, Placement], limit: int
) -> None:
    members, replication, current = case
    goal = goal_placement(current, members, replication)
    moves = next_moves(current, goal, limit, members=members)
    differing = [g for g in goal if set(current[g]) != set(goal[g])]
    assert len(moves) == min(limit, len(differing))
    assert len({m.group for m in moves}) == len(moves)
    assert moves[:1] == next_moves(current, goal, members=members)
    # without the members the same groups move; only who goes first may differ
    assert len(next_moves(current, goal, limit)) == len(moves)


def test_a_move_changes_exactly_one_replica() -> None:
    with pytest.raises(PlacementError):
        Move(1, add=2, remove=3)
    with pytest.raises(PlacementError):
        Move(1, add=None, remove=None)


def test_replacing_a_dead_replica_adds_first_then_removes_it() -> None:
    members = [Member(1), Member(2), Member(3, state="dead"), Member(4)]
    current = {0: (1, 2, 3), 1: (1, 2, 4)}
    goal = goal_placement(current, members, 3)
    assert goal[0] == (1, 2, 4)
    assert next_moves(current, goal, limit=5, members=members) == [Move(0, add=4, remove=None)]
    after_add = {0: (1, 2, 3, 4), 1: (1, 2, 4)}
    assert next_moves(after_add, goal, members=members) == [Move(0, add=None, remove=3)]


def test_dead_and_leaving_members_go_before_repair_and_balance() -> None:
    members = [Member(i) for i in range(1, 6)] + [Member(6, state="dead")]
    current = {0: (1, 2, 3), 1: (1, 2), 2: (1, 2, 6), 3: (1, 2, 3), 4: (1, 2, 3)}
    goal = goal_placement(current, members, 3)
    moves = next_moves(current, goal, limit=5, members=members)
    assert [m.group for m in moves][:2] == [2, 1]  # dead replica, then under-replicated
    assert {m.group for m in moves[2:]} <= {0, 3, 4}


def test_a_dead_replica_goes_before_one_on_an_active_member_the_goal_leaves_empty() -> None:
    # Member 3 is active but the goal uses only member 2 (more members than
    # replicas). Removing 3 first would leave {2, 9}: two voters, one dead, no
    # quorum. Only the member states tell 9 from 3.
    members = [Member(1), Member(2), Member(3), Member(9, state="dead")]
    current = {0: (3, 2, 9)}
    goal = goal_placement(current, members, 1)
    assert goal == {0: (2,)}
    assert next_moves(current, goal, members=members) == [Move(0, None, 9)]
    assert next_moves(current, goal) == [Move(0, None, 3)]  # by id, as documented


def test_too_few_active_members_remove_dead_replicas_without_replacement() -> None:
    # The documented exception: with fewer active members than the replication,
    # k shrinks, and the replica on the dead member goes with nothing in its place.
    members = [Member(1), Member(2), Member(3, state="dead")]
    current = {0: (1, 2, 3), 1: (1, 2, 3)}
    goal = goal_placement(current, members, 3)
    assert goal == {0: (1, 2), 1: (1, 2)}
    assert next_moves(current, goal, limit=2, members=members) == [
        Move(0, None, 3),
        Move(1, None, 3),
    ]


def test_no_active_member_is_refused() -> None:
    with pytest.raises(PlacementError, match="no member is active"):
        goal_placement({0: (1,)}, [Member(1, state="leaving")], 3)
    with pytest.raises(PlacementError):
        goal_placement({0: ()}, [Member(1), Member(1)], 3)
    with pytest.raises(PlacementError):
        Member(1, state="gone")


# -- scenarios -----------------------------------------------------------------------


def groups_of(partitions: int) -> dict[int, tuple[int, ...]]:
    return {g: () for g in range(partitions + 1)}


def test_growing_from_three_to_five_members_moves_only_what_balance_needs() -> None:
    current = placement([1, 2, 3], 8, 3)  # 9 groups, all on 1, 2 and 3
    members = [Member(i) for i in range(1, 6)]
    goal = goal_placement(current, members, 3)
    counts = loads(goal, members)
    assert spread(counts) <= 1
    assert counts[4] == counts[5] == 5  # 27 replicas over 5 members: 6, 6, 5, 5, 5
    assert converge(current, goal, members) == 2 * 10  # 10 replicas move, no more
    assert goal_placement(goal, members, 3) == goal


def test_shrinking_from_five_to_three_empties_the_leaving_members() -> None:
    five = [Member(i) for i in range(1, 6)]
    current = goal_placement(groups_of(8), five, 3)
    assert spread(loads(current, five)) <= 1
    members = [Member(i, state="leaving" if i > 3 else "active") for i in range(1, 6)]
    goal = goal_placement(current, members, 3)
    assert all(set(r) == {1, 2, 3} for r in goal.values())
    converge(current, goal, members)


def test_a_new_member_takes_the_dead_members_replicas() -> None:
    five = [Member(i) for i in range(1, 6)]
    current = goal_placement(groups_of(8), five, 3)
    members = [Member(i, state="dead" if i == 3 else "active") for i in range(1, 7)]
    goal = goal_placement(current, members, 3)
    for group, replicas in current.items():
        assert goal[group] == tuple(6 if m == 3 else m for m in replicas)
    converge(current, goal, members)


def test_three_zones_of_two_never_put_two_replicas_in_one_zone() -> None:
    members = [Member(i, zone="abc"[(i - 1) // 2]) for i in range(1, 7)]
    zone = {m.id: str(m.zone) for m in members}
    for current in (groups_of(8), placement([1, 2, 3, 4, 5, 6], 8, 3)):
        goal = goal_placement(current, members, 3)
        for replicas in goal.values():
            assert sorted(zone[m] for m in replicas) == ["a", "b", "c"]
        assert spread(loads(goal, members)) <= 1
        converge(current, goal, members)


def test_a_new_cluster_is_placed_evenly() -> None:
    for count in range(1, 10):
        members = [Member(i) for i in range(1, count + 1)]
        goal = goal_placement(groups_of(8), members, 3)
        assert spread(loads(goal, members)) <= 1


def test_sixty_four_members_and_256_groups_plan_quickly() -> None:
    members = [Member(i, zone=f"z{i % 4}") for i in range(1, 65)]
    goal = goal_placement(groups_of(255), members, 3)
    grown = [*members, *(Member(i, zone=f"z{i % 4}") for i in range(65, 69))]
    regoal = goal_placement(goal, grown, 3)
    assert spread(loads(regoal, grown)) <= 1
    assert changes(goal, regoal) == 2 * 44  # 768 replicas over 68: each new one takes 11


# -- leader_transfers -----------------------------------------------------------------


@st.composite
def leaderships(
    draw: st.DrawFn,
) -> tuple[list[Member], Placement, dict[int, int | None]]:
    members, _, current = draw(cluster_and_placement())
    leaders: dict[int, int | None] = {
        g: draw(st.none() | st.sampled_from(r)) if r else None for g, r in current.items()
    }
    return members, current, leaders


def transfer_all(
    leaders: dict[int, int | None], replicas: Placement, members: Sequence[Member]
) -> tuple[dict[int, int | None], int]:
    active = {m.id for m in active_of(members)}
    steps = 0
    while transfers := leader_transfers(leaders, replicas, members):
        ((group, source, target),) = transfers
        assert leaders[group] == source
        assert target in replicas[group] and target in active
        leaders = {**leaders, group: target}
        steps += 1
        assert steps <= 4 * len(replicas) * len(members), "leader transfers do not settle"
    return leaders, steps


def leader_counts(leaders: Mapping[int, int | None], members: Sequence[Member]) -> Counter[int]:
    counts = Counter({m.id: 0 for m in active_of(members)})
    counts.update(m for m in leaders.values() if m is not None and m in counts)
    return counts


@settings(max_examples=100, deadline=None)
@given(leaderships())
def test_leader_transfers_settle_balanced_and_only_onto_active_replicas(
    case: tuple[list[Member], Placement, dict[int, int | None]],
) -> None:
    members, replicas, leaders = case
    active = {m.id for m in active_of(members)}
    settled, _ = transfer_all(leaders, replicas, members)
    choices = {
        g: [m for m in replicas[g] if m in active] for g, leader in leaders.items() if leader
    }
    for group, leader in settled.items():
        if leader is not None and choices[group]:
            assert leader in active, "a leader was left on a leaving or dead member"
    balanced = spread(leader_counts(settled, members)) <= 1
    assert balanced == balanced_leaders_exist(choices, members)
    assert leader_transfers(settled, replicas, members, limit=10) == []


def test_balanced_leaders_need_no_transfer() -> None:
    members = [Member(i) for i in range(1, 4)]
    replicas = placement([1, 2, 3], 8, 3)
    leaders: dict[int, int | None] = {g: 1 + g % 3 for g in replicas}
    assert leader_transfers(leaders, replicas, members, limit=10) == []


def test_leaders_all_on_one_member_spread_out() -> None:
    members = [Member(i) for i in range(1, 6)]
    replicas = goal_placement(groups_of(8), members, 3)
    leaders: dict[int, int | None] = {g: 1 for g in replicas if 1 in replicas[g]}
    leaders.update({g: replicas[g][0] for g in replicas if g not in leaders})
    assert leader_counts(leaders, members)[1] == 6
    settled, steps = transfer_all(leaders, replicas, members)
    assert spread(leader_counts(settled, members)) <= 1
    assert steps == 4  # 9 leaders over 5 members: 2, 2, 2, 2, 1; only member 1's extra move
    first = leader_transfers(leaders, replicas, members, limit=3)
    assert len(first) == 3 and all(source == 1 for _, source, _ in first)


def test_leaders_leave_leaving_and_dead_members_first() -> None:
    members = [Member(1), Member(2), Member(3, state="leaving"), Member(4, state="dead")]
    replicas: Placement = {0: (1, 2, 3), 1: (2, 3, 4), 2: (1, 4, 2), 3: (1, 2, 3)}
    leaders: dict[int, int | None] = {0: 3, 1: 4, 2: 1, 3: 1}
    transfers = leader_transfers(leaders, replicas, members, limit=10)
    assert transfers[:2] == [(0, 3, 2), (1, 4, 2)]
    settled, _ = transfer_all(leaders, replicas, members)
    assert sorted(leader_counts(settled, members).values()) == [2, 2]
