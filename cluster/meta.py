"""The meta group's state machine: each object space's root register.

State (msgpack in snapshots)::

    {"spaces": {name: [root pointer | None, version]},
     "done":   {root change id: [space, version, root pointer]}}

A root pointer is ``[transaction id, index]``. Entries are msgpack lists:

    ["cas", space, expected version, expected root pointer | None,
     root pointer, change id, alias | None, time, batch bytes]

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


@dataclass
class MetaState:
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


def parse_entry(
    data: bytes,
) -> tuple[str, int, Pointer | None, Pointer, bytes, bytes | None, float, int]:
    try:
        raw = msgpack.unpackb(data, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise MetaEntryError(f"meta entry is not msgpack: {exc}") from exc
    if type(raw) is not list or len(raw) != 9 or raw[0] != "cas":
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
        space, expected, expected_root, root, change_id, alias, time, size = parse_entry(data)
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

    def snapshot_bytes(self) -> bytes:
        return msgpack.packb(
            {
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
