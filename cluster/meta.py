"""The meta group's state machine: the cluster map and each object space's root.

State (msgpack in snapshots)::

    {"map":    [epoch, [[member id, peer, client URL], ...], partitions,
                replication] | None,
     "spaces": {name: [root pointer | None, version]},
     "done":   {root change id: [space, version, root pointer]},
     "recent": {name: {version: [root pointer, change id, time, size]}}}

A root pointer is ``[transaction id, index]``. Entries are msgpack lists:

    ["map", epoch, members, partitions, replication]
    ["cas", space, expected version, expected root pointer | None,
     root pointer, change id, alias | None, time, batch bytes]

The **cluster map** is the members, the partition count and the
replication factor, with an epoch that grows by one with every change. The
first meta leader writes epoch 1 from its configuration; a map entry is
applied only as the next epoch (or as a repeat of the current map).
Requests that name an older epoch are answered with the current map.

`apply` is deterministic: a compare-and-set moves the root of `space` to the
pointer when its version is `expected` (and its pointer the expected one,
when given: the meta leader proposes changes built on roots not yet
applied, whose version numbers a failed change can leave to another root),
and records the change under its id
(and under `alias`, the client's transaction id when the node rebased the
client's commit). A change id already recorded answers with the recorded
outcome and changes nothing, so a repeated request is harmless.

Results: ``["ok", version]``, ``["dup", version, root]`` or
``["conflict", current version]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .wire import BytesSnapshots, wire_pointer

Pointer = tuple[bytes, int]


class MetaEntryError(ValueError):
    """A meta entry is not one this program writes (checked before proposing)."""


@dataclass
class SpaceRoot:
    pointer: Pointer | None
    version: int


DONE_KEPT = 200_000
"""Root change ids remembered (oldest forgotten first): a repeated request is
recognised while its change is among the last this many. Clients repeat
within their timeout, seconds after the first attempt."""

RECENT_ROOTS = 4096
"""Roots kept per space by version, so that a node can rebase a commit built
on any of them (an older base is refused as too old, and retried)."""


@dataclass(frozen=True)
class RecentRoot:
    """A root of the history: what `history` and `root_at` answer."""

    pointer: Pointer
    change_id: bytes
    time: float
    size: int
    """Bytes of the batch the root change named, when the proposer knew them (else 0)."""


MEMBER_STATES = ("active", "leaving", "dead")
"""An active member may hold replicas; a leaving one is being decommissioned
(its replicas move off, then it is forgotten); a dead one was declared gone
for good by an operator (its replicas are replaced; it never gets one)."""


@dataclass(frozen=True)
class ClusterMap:
    """Who the members are, where each group's replicas are, and how data is
    partitioned, as of `epoch`.

    Invariants: member ids are unique and sorted; every replica named in
    `groups` is a member; `states` and `zones` name members only; no member
    id is `retired`. A map with
    no `groups` is one written before placement became data: its placement
    is the rotation of `cluster.partitions.placement` over all members.
    """

    epoch: int
    members: tuple[tuple[int, str, str], ...]
    """(member id, peer HOST:PORT, client URL), by id."""
    partitions: int
    replication: int
    groups: tuple[tuple[int, tuple[int, ...]], ...] = ()
    """(group id, its replicas), by group id: the placement, once it is data."""
    states: tuple[tuple[int, str], ...] = ()
    """(member id, "leaving" | "dead") for the members that are not active."""
    zones: tuple[tuple[int, str], ...] = ()
    """(member id, zone label) for the members that have one."""
    retired: tuple[int, ...] = ()
    """Ids of members that were forgotten (left or replaced): never used again,
    so that no Raft group can mistake a new member for an old one."""

    def placement(self) -> dict[int, tuple[int, ...]]:
        """Group id -> its replicas (the meta group is group 0)."""
        if self.groups:
            return dict(self.groups)
        from .partitions import placement

        return placement([m[0] for m in self.members], self.partitions, self.replication)

    def member_ids(self) -> list[int]:
        return [m[0] for m in self.members]

    def state_of(self, member: int) -> str:
        return dict(self.states).get(member, "active")

    def zone_of(self, member: int) -> str | None:
        return dict(self.zones).get(member)

    def member(self, member: int) -> tuple[int, str, str] | None:
        return next((m for m in self.members if m[0] == member), None)

    def changed(self, **fields: Any) -> ClusterMap:
        """This map with `fields` replaced, at the next epoch (normalized and checked)."""
        changed = dataclasses.replace(self, epoch=self.epoch + 1, **fields)
        return ClusterMap.from_wire(changed.to_wire())

    def to_wire(self) -> list[Any]:
        wire: list[Any] = [
            self.epoch,
            [list(m) for m in self.members],
            self.partitions,
            self.replication,
        ]
        if self.groups or self.states or self.zones or self.retired:
            extra: dict[str, Any] = {
                "groups": [[g, list(r)] for g, r in self.groups],
                "states": [list(s) for s in self.states],
                "zones": [list(z) for z in self.zones],
            }
            if self.retired:  # maps that never forgot a member keep their older form
                extra["retired"] = list(self.retired)
            wire.append(extra)
        return wire

    @staticmethod
    def from_wire(raw: Any) -> ClusterMap:
        if type(raw) is not list or len(raw) not in (4, 5):
            raise MetaEntryError(
                "a cluster map is [epoch, members, partitions, replication, {placement}]"
            )
        epoch, members, partitions, replication = raw[:4]
        if (
            type(epoch) is not int
            or epoch < 1
            or type(members) is not list
            or not members
            or type(partitions) is not int
            or partitions < 1
            or type(replication) is not int
            or replication < 1
        ):
            raise MetaEntryError("malformed cluster map")
        parsed = []
        for member in members:
            if (
                type(member) is not list
                or len(member) != 3
                or type(member[0]) is not int
                or member[0] < 1
                or type(member[1]) is not str
                or type(member[2]) is not str
            ):
                raise MetaEntryError("a member is [id, peer, client URL]")
            host, _, port = member[1].rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise MetaEntryError(
                    f"member {member[0]}'s peer address {member[1]!r} is not HOST:PORT"
                )
            parsed.append((member[0], member[1], member[2]))
        ids = {m[0] for m in parsed}
        if len(ids) != len(parsed):
            raise MetaEntryError("a cluster map names a member id twice")
        groups: list[tuple[int, tuple[int, ...]]] = []
        states: list[tuple[int, str]] = []
        zones: list[tuple[int, str]] = []
        retired: list[int] = []
        if len(raw) == 5:
            extra = raw[4]
            if type(extra) is not dict or set(extra) - {"retired"} != {"groups", "states", "zones"}:
                raise MetaEntryError(
                    "a cluster map's placement is {groups, states, zones[, retired]}"
                )
            raw_retired = extra.get("retired", [])
            if (
                type(raw_retired) is not list
                or not all(type(m) is int and m > 0 for m in raw_retired)
                or len(set(raw_retired)) != len(raw_retired)
                or ids & set(raw_retired)
            ):
                raise MetaEntryError(
                    "a cluster map's retired ids are distinct positive ids of no member"
                )
            retired = raw_retired
            for item in extra["groups"]:
                if (
                    type(item) is not list
                    or len(item) != 2
                    or type(item[0]) is not int
                    or not 0 <= item[0] <= partitions
                    or type(item[1]) is not list
                    or not all(type(r) is int and r in ids for r in item[1])
                    or len(set(item[1])) != len(item[1])
                ):
                    raise MetaEntryError(f"malformed placement of a group: {item!r:.80}")
                groups.append((item[0], tuple(sorted(item[1]))))
            for item in extra["states"]:
                if (
                    type(item) is not list
                    or len(item) != 2
                    or item[0] not in ids
                    or item[1] not in MEMBER_STATES[1:]
                ):
                    raise MetaEntryError(f"malformed member state: {item!r:.80}")
                states.append((item[0], item[1]))
            for item in extra["zones"]:
                if (
                    type(item) is not list
                    or len(item) != 2
                    or item[0] not in ids
                    or type(item[1]) is not str
                    or not item[1]
                ):
                    raise MetaEntryError(f"malformed member zone: {item!r:.80}")
                zones.append((item[0], item[1]))
            for name, pairs in (("state", states), ("zone", zones)):
                if len({member for member, _ in pairs}) != len(pairs):
                    raise MetaEntryError(f"a cluster map gives a member two {name}s")
            if len({g for g, _ in groups}) != len(groups):
                raise MetaEntryError("a cluster map places a group twice")
            if groups and {g for g, _ in groups} != set(range(partitions + 1)):
                raise MetaEntryError("a cluster map's placement must name every group")
        return ClusterMap(
            epoch,
            tuple(sorted(parsed)),
            partitions,
            replication,
            tuple(sorted(groups)),
            tuple(sorted(states)),
            tuple(sorted(zones)),
            tuple(sorted(retired)),
        )


def map_entry(cluster_map: ClusterMap) -> bytes:
    return msgpack.packb(["map", *cluster_map.to_wire()])


@dataclass
class MetaState:
    cluster_map: ClusterMap | None = None
    spaces: dict[str, SpaceRoot] = field(default_factory=dict)
    done: dict[bytes, tuple[str, int, Pointer]] = field(default_factory=dict)
    recent: dict[str, dict[int, RecentRoot]] = field(default_factory=dict)


def cas_entry(
    space: str,
    expected: int,
    expected_root: Pointer | None,
    root: Pointer,
    change_id: bytes,
    alias: bytes | None,
    time: float,
    size: int = 0,
) -> bytes:
    wire_expected = None if expected_root is None else list(expected_root)
    return msgpack.packb(
        ["cas", space, expected, wire_expected, list(root), change_id, alias, time, size]
    )


def _pointer(raw: Any) -> Pointer:
    pointer = wire_pointer(raw)
    if pointer is None:
        raise MetaEntryError(f"not a pointer: {raw!r:.80}")
    return pointer


def unpack_entry(data: bytes) -> list[Any]:
    try:
        raw = msgpack.unpackb(data, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise MetaEntryError(f"meta entry is not msgpack: {exc}") from exc
    if type(raw) is not list or raw[:1] not in (["cas"], ["map"]):
        raise MetaEntryError(f"unknown meta entry {raw!r:.80}")
    return raw


def parse_cas(
    raw: list[Any],
) -> tuple[str, int, Pointer | None, Pointer, bytes, bytes | None, float, int]:
    if len(raw) != 9 or raw[0] != "cas":
        raise MetaEntryError(f"unknown meta entry {raw!r:.80}")
    _, space, expected, expected_root, root, change_id, alias, time, size = raw
    if type(time) not in (int, float) or type(size) is not int:
        raise MetaEntryError("malformed cas time or size")
    if type(space) is not str or type(expected) is not int or type(change_id) is not bytes:
        raise MetaEntryError("malformed cas entry")
    if alias is not None and type(alias) is not bytes:
        raise MetaEntryError("malformed cas alias")
    expected_pointer = None if expected_root is None else _pointer(expected_root)
    return space, expected, expected_pointer, _pointer(root), change_id, alias, float(time), size


class MetaMachine(BytesSnapshots):
    """Applies meta entries in log order (see the module docstring)."""

    def __init__(self) -> None:
        self.state = MetaState()

    def root(self, space: str) -> SpaceRoot:
        return self.state.spaces.get(space) or SpaceRoot(None, 0)

    def root_at(self, space: str, version: int) -> Pointer | None:
        """The root `space` had at `version`, while it is among the recent ones."""
        found = self.state.recent.get(space, {}).get(version)
        return None if found is None else found.pointer

    def history(self, space: str) -> list[tuple[int, RecentRoot]]:
        """The recent roots of `space` by version, oldest first."""
        return sorted(self.state.recent.get(space, {}).items())

    def outcome(self, change_id: bytes) -> tuple[str, int, Pointer] | None:
        return self.state.done.get(change_id)

    def apply(self, index: int, data: bytes) -> list[Any]:
        raw = unpack_entry(data)
        if raw[0] == "map":
            return self._apply_map(raw)
        space, expected, expected_root, root, change_id, alias, time, size = parse_cas(raw)
        for key in (change_id, alias):
            if key is not None and key in self.state.done:
                _, version, pointer = self.state.done[key]
                return ["dup", version, list(pointer)]
        current = self.root(space)
        if current.version != expected or (
            expected_root is not None and current.pointer != expected_root
        ):
            return ["conflict", current.version]
        version = current.version + 1
        self.state.spaces[space] = SpaceRoot(root, version)
        recent = self.state.recent.setdefault(space, {})
        recent[version] = RecentRoot(root, change_id, time, size)
        recent.pop(version - RECENT_ROOTS, None)
        done = self.state.done
        done[change_id] = (space, version, root)
        if alias is not None:
            done[alias] = (space, version, root)
        while len(done) > DONE_KEPT:
            del done[next(iter(done))]  # insertion order: the oldest first
        return ["ok", version]

    def _apply_map(self, raw: list[Any]) -> list[Any]:
        proposed = ClusterMap.from_wire(raw[1:])
        current = self.state.cluster_map
        if current == proposed:
            return ["dup", proposed.epoch]
        if proposed.epoch != (current.epoch + 1 if current is not None else 1):
            return ["conflict", current.epoch if current is not None else 0]
        self.state.cluster_map = proposed
        return ["ok", proposed.epoch]

    def snapshot_bytes(self) -> bytes:
        cluster_map = self.state.cluster_map
        return msgpack.packb(
            {
                "map": None if cluster_map is None else cluster_map.to_wire(),
                "spaces": {
                    name: [list(r.pointer) if r.pointer else None, r.version]
                    for name, r in self.state.spaces.items()
                },
                "done": {k: [s, v, list(p)] for k, (s, v, p) in self.state.done.items()},
                "recent": {
                    name: {
                        v: [list(r.pointer), r.change_id, r.time, r.size] for v, r in roots.items()
                    }
                    for name, roots in self.state.recent.items()
                },
            }
        )

    def restore_bytes(self, data: bytes) -> None:
        self.state = MetaState()
        if not data:
            return
        raw = msgpack.unpackb(data, strict_map_key=False)
        if raw.get("map") is not None:
            self.state.cluster_map = ClusterMap.from_wire(raw["map"])
        for name, (pointer, version) in raw["spaces"].items():
            self.state.spaces[name] = SpaceRoot(
                _pointer(pointer) if pointer is not None else None, version
            )
        for key, (space, version, pointer) in raw["done"].items():
            self.state.done[key] = (space, version, _pointer(pointer))
        for name, roots in raw["recent"].items():
            self.state.recent[name] = {
                v: RecentRoot(_pointer(p), c, t, n) for v, (p, c, t, n) in roots.items()
            }
