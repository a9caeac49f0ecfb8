"""Persistent B+-trees with wide nodes: the structure under every collection.

One node is one atom. Leaves hold up to `MAX_WIDTH` entries; internal nodes
hold up to `MAX_WIDTH` children together with each child's entry count (so
positions are found in O(log n)) and, in keyed trees, each child's smallest
key (so keys are found without loading siblings).

Two flavours share the code:

- **keyed** trees (Dictionary, HashDictionary, Set, CountedSet, index trees):
  leaves hold ``keys`` and ``values`` sorted by ``keyfn(key)``; a key
  appears once.
- **positional** trees (List): leaves hold ``values`` only; the position of
  an entry is the number of entries before it.

A node therefore has one of four shapes, each a class of its own:
`KeyedLeaf`, `KeyedInternal`, `PositionalLeaf` and `PositionalInternal`
(`KeyedNode` and `PositionalNode` name the two flavours). All four derive
from `Node`, which is what code that does not care about the shape sees (the
loader, the writer); code that reads entries tests the shape first. A
child or root loaded from an atom of the wrong shape or height for its
place is a `CorruptionError`, so the code of a flavour only ever meets its
own shapes.

Invariants:

1. A node reachable from a collection value is never modified. Mutators copy
   the path from the root to the changed leaf (structural sharing: untouched
   subtrees are shared between the old and the new tree).
2. The one exception is *transient* editing, used by bulk operations: a node
   whose ``edit`` token is the token of the running bulk operation was created
   by that operation and is not yet visible to anyone, so it is changed in
   place. Tokens are never reused, so a finished tree is immutable.
3. Every node but the root holds at least `MIN_WIDTH` entries or children;
   all leaves are at the same depth (height 0); a node's ``total`` is the
   number of entries below it.
4. A child is either a loaded node or the `AtomPointer` of a stored one;
   replacing the pointer by the node it names changes nothing observable.
5. A keyed node's sort key cache (``_skeys``), when present, is
   ``[keyfn(key) for key in keys]``; mutators keep it so or drop it.

Node atom payloads (msgpack, see `protobase.codec`)::

    [0, keys, values]                    keyed leaf
    [1, values]                          positional leaf
    [2, height, sizes, children, keys]   keyed internal node
    [3, height, sizes, children]         positional internal node

``sizes`` are the entry counts of the children; ``children`` is one bytes
value, the children's pointers packed as 16-byte transaction id + uint32
index, big-endian (one msgpack object instead of one extension per child).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, Protocol, Self, TypeAlias, TypeVar, final

from ..atoms import AtomPointer
from ..codec import POINTER_STRUCT as _POINTER
from ..errors import CorruptionError, TransactionClosedError

MAX_WIDTH = 64
MIN_WIDTH = MAX_WIDTH // 4
BUILD_WIDTH = (MAX_WIDTH * 3) // 4
"""Bulk builds fill nodes to three quarters, leaving room for later inserts."""

KeyFn = Callable[[Any], Any]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""Marks an absent entry in lookups and diffs."""


class NodeLoader(Protocol):
    """Turns atom pointers into nodes (the transaction that reads the tree)."""

    def load_node(self, pointer: AtomPointer) -> Node: ...

    def load_nodes(self, pointers: Sequence[AtomPointer]) -> list[Node]: ...


class DetachedLoader:
    """The loader of a tree built outside any transaction: it has no stored nodes."""

    def load_node(self, pointer: AtomPointer) -> Node:
        raise TransactionClosedError(
            f"node {pointer} cannot be loaded: this collection is not attached to a "
            "transaction; read it again through a transaction"
        )

    def load_nodes(self, pointers: Sequence[AtomPointer]) -> list[Node]:
        return [self.load_node(p) for p in pointers]


DETACHED = DetachedLoader()


# -- the node shapes ----------------------------------------------------------------


class Node:
    """What every node shape has; see the module docstring for the invariants.

    Not instantiated itself: a node is a `KeyedLeaf`, `KeyedInternal`,
    `PositionalLeaf` or `PositionalInternal`.
    """

    __slots__ = ("edit", "origin", "pointer", "replaces", "total")

    edit: object | None
    """The token of the bulk operation that may still change the node in place."""
    origin: object | None
    """The space the node was stored in or loaded from (None: never stored)."""
    pointer: AtomPointer | None
    """The atom holding the node, once it is stored."""
    replaces: AtomPointer | None
    """The stored node a mutator copied this one from (its older version), if any:
    once this one is committed, new transactions no longer read that one."""
    total: int
    """The number of entries below the node."""
    height: int
    """0 for a leaf; the children of an internal node are one lower."""

    @property
    def width(self) -> int:
        """The number of entries (leaf) or children (internal node)."""
        raise NotImplementedError

    def clone(self, edit: object | None) -> Self:
        """An unstored copy that bulk operation `edit` may change in place."""
        raise NotImplementedError

    def split(self, at_end: bool) -> Self:
        """Cut this node (editable) in two; returns the new right half.

        When the last insertion was at the end (sequential loading), this
        node keeps all but `MIN_WIDTH` entries, so appends leave nodes about
        three quarters full behind them and the new node is not underfull.
        """
        raise NotImplementedError

    def absorb(self, right: Self) -> None:
        """Append all of `right` to this node (editable)."""
        raise NotImplementedError

    def payload(self, refs: Callable[[list[Any]], list[AtomPointer]]) -> list[Any]:
        """The atom payload; ``refs`` turns the list of children into their pointers.

        Every child goes through ``refs``, also one still held as an
        AtomPointer (returned as it is), so that the writer sees every
        pointer the atom holds (its links).
        """
        raise NotImplementedError

    def identity(self) -> object:
        """Equal for two references to the same stored or in-memory node."""
        return self.pointer if self.pointer is not None else self

    @staticmethod
    def from_payload(payload: Any, pointer: AtomPointer, origin: object) -> Node:
        """The node stored as `payload` at `pointer`; CorruptionError when malformed."""
        node: Node
        try:
            tag = payload[0]
            if tag == 0:
                keys, values = list(payload[1]), list(payload[2])
                if len(keys) != len(values):
                    raise ValueError("keys and values differ in length")
                node = KeyedLeaf(keys, values)
            elif tag == 1:
                node = PositionalLeaf(list(payload[1]))
            elif tag == 2 or tag == 3:
                height, sizes = payload[1], list(payload[2])
                blob = payload[3]
                if type(blob) is not bytes or len(blob) % _POINTER.size:
                    raise ValueError("children are not a packed pointer array")
                children: list[Any] = [AtomPointer(t, i) for t, i in _POINTER.iter_unpack(blob)]
                if not (isinstance(height, int) and height > 0):
                    raise ValueError(f"bad height {height!r}")
                if len(sizes) != len(children):
                    raise ValueError("sizes, children and keys differ in length")
                if tag == 2:
                    keys = list(payload[4])
                    if len(keys) != len(sizes):
                        raise ValueError("sizes, children and keys differ in length")
                    node = KeyedInternal(height, keys, children, sizes)
                else:
                    node = PositionalInternal(height, children, sizes)
            else:
                raise ValueError(f"unknown node tag {tag!r}")
        except (TypeError, ValueError, IndexError) as exc:
            raise CorruptionError(f"atom {pointer} is not a valid tree node: {exc}") from exc
        node.pointer = pointer
        node.origin = origin
        return node


def _cut(width: int, at_end: bool) -> int:
    """Where `Node.split` cuts a node of `width`."""
    return width - MIN_WIDTH if at_end else width // 2


@final
class KeyedLeaf(Node):
    """A leaf of a keyed tree: ``keys[i]`` maps to ``values[i]``, in ``keyfn`` order."""

    __slots__ = ("_skeys", "keys", "values")

    keys: list[Any]
    values: list[Any]
    _skeys: list[Any] | None
    height = 0

    def __init__(
        self,
        keys: list[Any],
        values: list[Any],
        edit: object | None = None,
        origin: object | None = None,
        skeys: list[Any] | None = None,
    ) -> None:
        self.keys = keys
        self.values = values
        self.total = len(values)
        self.edit = edit
        self.origin = origin
        self.pointer = None
        self.replaces = None
        self._skeys = skeys

    @property
    def width(self) -> int:
        return len(self.values)

    def skeys(self, keyfn: KeyFn) -> list[Any]:
        """Sort keys of ``self.keys``, computed once per node."""
        if self._skeys is None:
            self._skeys = list(map(keyfn, self.keys))
        return self._skeys

    def clone(self, edit: object | None) -> KeyedLeaf:
        skeys = self._skeys
        return KeyedLeaf(
            list(self.keys),
            list(self.values),
            edit,
            self.origin,
            None if skeys is None else list(skeys),
        )

    def split(self, at_end: bool) -> KeyedLeaf:
        cut = _cut(len(self.values), at_end)
        skeys = self._skeys
        right = KeyedLeaf(
            self.keys[cut:],
            self.values[cut:],
            self.edit,
            self.origin,
            None if skeys is None else skeys[cut:],
        )
        del self.keys[cut:]
        del self.values[cut:]
        if skeys is not None:
            del skeys[cut:]
        self.total -= right.total
        return right

    def absorb(self, right: KeyedLeaf) -> None:
        self.keys.extend(right.keys)
        self.values.extend(right.values)
        self._skeys = _joined_skeys(self._skeys, right._skeys)
        self.total += right.total

    def payload(self, refs: Callable[[list[Any]], list[AtomPointer]]) -> list[Any]:
        return [0, self.keys, self.values]


@final
class PositionalLeaf(Node):
    """A leaf of a positional tree: its values, in order."""

    __slots__ = ("values",)

    values: list[Any]
    height = 0

    def __init__(
        self, values: list[Any], edit: object | None = None, origin: object | None = None
    ) -> None:
        self.values = values
        self.total = len(values)
        self.edit = edit
        self.origin = origin
        self.pointer = None
        self.replaces = None

    @property
    def width(self) -> int:
        return len(self.values)

    def clone(self, edit: object | None) -> PositionalLeaf:
        return PositionalLeaf(list(self.values), edit, self.origin)

    def split(self, at_end: bool) -> PositionalLeaf:
        cut = _cut(len(self.values), at_end)
        right = PositionalLeaf(self.values[cut:], self.edit, self.origin)
        del self.values[cut:]
        self.total -= right.total
        return right

    def absorb(self, right: PositionalLeaf) -> None:
        self.values.extend(right.values)
        self.total += right.total

    def payload(self, refs: Callable[[list[Any]], list[AtomPointer]]) -> list[Any]:
        return [1, self.values]


C = TypeVar("C", bound=Node)
"""The shape of an internal node's children (its flavour's `KeyedNode` or `PositionalNode`)."""


class Internal(Node, Generic[C]):
    """What both internal shapes have: children (nodes or pointers) and their sizes.

    A *shared* internal node is read by every transaction of a space (see
    `protobase.sharing`): it never keeps the children it loads, because a
    child may be private to the transaction that loaded it (it may hold that
    transaction's collections). Its children stay pointers; each reader
    finds them through its loader, which remembers what it loaded.
    """

    __slots__ = ("children", "height", "shared", "sizes")

    children: list[C | AtomPointer]
    sizes: list[int]
    """``sizes[i]`` is the ``total`` of child i."""
    shared: bool

    @property
    def width(self) -> int:
        return len(self.children)

    def child(self, index: int, loader: NodeLoader) -> C:
        """Child `index`, loaded (and kept, unless this node is shared) if it is a pointer."""
        child = self.children[index]
        if isinstance(child, AtomPointer):
            child = self._adopt(loader.load_node(child))
            if not self.shared:
                self.children[index] = child
        return child

    def load_children(self, loader: NodeLoader, start: int = 0, stop: int | None = None) -> None:
        """Load the children in ``[start, stop)`` with one batched read.

        A shared node only has its loader read them (`child` then finds them there).
        """
        children = self.children
        stop = len(children) if stop is None else stop
        wanted: list[int] = []
        pointers: list[AtomPointer] = []
        for i in range(start, stop):
            child = children[i]
            if isinstance(child, AtomPointer):
                wanted.append(i)
                pointers.append(child)
        if wanted:
            loaded = loader.load_nodes(pointers)
            if not self.shared:
                for i, node in zip(wanted, loaded, strict=True):
                    children[i] = self._adopt(node)

    def shareable_copy(self) -> Self | None:
        """A stored copy for every transaction: children as pointers; None if one is unstored."""
        pointers: list[C | AtomPointer] = []
        for child in self.children:
            if not isinstance(child, AtomPointer):
                if child.pointer is None:
                    return None
                child = child.pointer
            pointers.append(child)
        copy = self.clone(None)
        copy.children = pointers
        copy.pointer, copy.origin, copy.shared = self.pointer, self.origin, True
        return copy

    def _adopt(self, node: Node) -> C:
        """`node`, loaded as a child of this node; CorruptionError if it cannot be one."""
        raise NotImplementedError

    def _wrong_child(self, node: Node) -> CorruptionError:
        return CorruptionError(
            f"atom {node.pointer} holds a {type(node).__name__} of height {node.height}, "
            f"which cannot be a child of a {type(self).__name__} of height {self.height}"
        )

    def replace_child(self, index: int, child: C) -> None:
        """Put `child` (not empty, or the only child) in place of child `index`."""
        raise NotImplementedError

    def insert_child(self, index: int, child: C) -> None:
        """Insert `child` (not empty) before child `index`; ``total`` is the caller's."""
        raise NotImplementedError

    def delete_child(self, index: int) -> None:
        """Remove child `index`; ``total`` is the caller's."""
        raise NotImplementedError

    def _packed_children(self, refs: Callable[[list[Any]], list[AtomPointer]]) -> bytes:
        pack = _POINTER.pack
        return b"".join([pack(tid, index) for tid, index in refs(self.children)])


@final
class KeyedInternal(Internal["KeyedNode"]):
    """An internal node of a keyed tree: ``keys[i]`` is the smallest key below child i."""

    __slots__ = ("_skeys", "keys")

    keys: list[Any]
    _skeys: list[Any] | None

    def __init__(
        self,
        height: int,
        keys: list[Any],
        children: list[KeyedNode | AtomPointer],
        sizes: list[int],
        edit: object | None = None,
        origin: object | None = None,
        skeys: list[Any] | None = None,
        total: int | None = None,
    ) -> None:
        self.height = height
        self.keys = keys
        self.children = children
        self.sizes = sizes
        self.total = sum(sizes) if total is None else total
        self.edit = edit
        self.origin = origin
        self.pointer = None
        self.replaces = None
        self.shared = False
        self._skeys = skeys

    @staticmethod
    def over(
        children: list[KeyedNode], edit: object | None, origin: object | None = None
    ) -> KeyedInternal:
        """A new parent of `children` (none of them empty)."""
        held: list[KeyedNode | AtomPointer] = list(children)
        return KeyedInternal(
            children[0].height + 1,
            [child.keys[0] for child in children],
            held,
            [child.total for child in children],
            edit,
            origin,
        )

    def skeys(self, keyfn: KeyFn) -> list[Any]:
        """Sort keys of ``self.keys``, computed once per node."""
        if self._skeys is None:
            self._skeys = list(map(keyfn, self.keys))
        return self._skeys

    def _adopt(self, node: Node) -> KeyedNode:
        if (type(node) is KeyedLeaf or type(node) is KeyedInternal) and (
            node.height == self.height - 1
        ):
            return node
        raise self._wrong_child(node)

    def clone(self, edit: object | None) -> KeyedInternal:
        skeys = self._skeys
        return KeyedInternal(
            self.height,
            list(self.keys),
            list(self.children),
            list(self.sizes),
            edit,
            self.origin,
            None if skeys is None else list(skeys),
            self.total,
        )

    def split(self, at_end: bool) -> KeyedInternal:
        cut = _cut(len(self.children), at_end)
        skeys = self._skeys
        right = KeyedInternal(
            self.height,
            self.keys[cut:],
            self.children[cut:],
            self.sizes[cut:],
            self.edit,
            self.origin,
            None if skeys is None else skeys[cut:],
        )
        del self.keys[cut:]
        del self.children[cut:]
        del self.sizes[cut:]
        if skeys is not None:
            del skeys[cut:]
        self.total -= right.total
        return right

    def absorb(self, right: KeyedInternal) -> None:
        self.keys.extend(right.keys)
        self.children.extend(right.children)
        self.sizes.extend(right.sizes)
        self._skeys = _joined_skeys(self._skeys, right._skeys)
        self.total += right.total

    def replace_child(self, index: int, child: KeyedNode) -> None:
        self.children[index] = child
        self.sizes[index] = child.total
        if child.keys:
            self.keys[index] = child.keys[0]
            skeys = self._skeys
            if skeys is not None:
                # The child's cache holds its first sort key (it was searched to
                # be changed); without one, this cache is dropped, not recomputed.
                if child._skeys is None:
                    self._skeys = None
                else:
                    skeys[index] = child._skeys[0]

    def insert_child(self, index: int, child: KeyedNode) -> None:
        self.children.insert(index, child)
        self.sizes.insert(index, child.total)
        self.keys.insert(index, child.keys[0])
        skeys = self._skeys
        if skeys is not None:
            if child._skeys is None:
                self._skeys = None
            else:
                skeys.insert(index, child._skeys[0])

    def delete_child(self, index: int) -> None:
        del self.children[index]
        del self.sizes[index]
        del self.keys[index]
        if self._skeys is not None:
            del self._skeys[index]

    def payload(self, refs: Callable[[list[Any]], list[AtomPointer]]) -> list[Any]:
        return [2, self.height, self.sizes, self._packed_children(refs), self.keys]


@final
class PositionalInternal(Internal["PositionalNode"]):
    """An internal node of a positional tree."""

    __slots__ = ()

    def __init__(
        self,
        height: int,
        children: list[PositionalNode | AtomPointer],
        sizes: list[int],
        edit: object | None = None,
        origin: object | None = None,
        total: int | None = None,
    ) -> None:
        self.height = height
        self.children = children
        self.sizes = sizes
        self.total = sum(sizes) if total is None else total
        self.edit = edit
        self.origin = origin
        self.pointer = None
        self.replaces = None
        self.shared = False

    @staticmethod
    def over(
        children: list[PositionalNode], edit: object | None, origin: object | None = None
    ) -> PositionalInternal:
        """A new parent of `children`."""
        held: list[PositionalNode | AtomPointer] = list(children)
        return PositionalInternal(
            children[0].height + 1, held, [child.total for child in children], edit, origin
        )

    def _adopt(self, node: Node) -> PositionalNode:
        if (type(node) is PositionalLeaf or type(node) is PositionalInternal) and (
            node.height == self.height - 1
        ):
            return node
        raise self._wrong_child(node)

    def clone(self, edit: object | None) -> PositionalInternal:
        return PositionalInternal(
            self.height, list(self.children), list(self.sizes), edit, self.origin, self.total
        )

    def split(self, at_end: bool) -> PositionalInternal:
        cut = _cut(len(self.children), at_end)
        right = PositionalInternal(
            self.height, self.children[cut:], self.sizes[cut:], self.edit, self.origin
        )
        del self.children[cut:]
        del self.sizes[cut:]
        self.total -= right.total
        return right

    def absorb(self, right: PositionalInternal) -> None:
        self.children.extend(right.children)
        self.sizes.extend(right.sizes)
        self.total += right.total

    def replace_child(self, index: int, child: PositionalNode) -> None:
        self.children[index] = child
        self.sizes[index] = child.total

    def insert_child(self, index: int, child: PositionalNode) -> None:
        self.children.insert(index, child)
        self.sizes.insert(index, child.total)

    def delete_child(self, index: int) -> None:
        del self.children[index]
        del self.sizes[index]

    def payload(self, refs: Callable[[list[Any]], list[AtomPointer]]) -> list[Any]:
        return [3, self.height, self.sizes, self._packed_children(refs)]


KeyedNode: TypeAlias = KeyedLeaf | KeyedInternal
PositionalNode: TypeAlias = PositionalLeaf | PositionalInternal


def _joined_skeys(left: list[Any] | None, right: list[Any] | None) -> list[Any] | None:
    """The sort key cache of two keyed nodes joined: kept only if both have one."""
    if left is None or right is None:
        return None
    left.extend(right)
    return left


def as_keyed(node: Node) -> KeyedNode:
    """`node` as the root of a keyed tree; CorruptionError when it has another shape."""
    if type(node) is KeyedLeaf or type(node) is KeyedInternal:
        return node
    raise CorruptionError(f"atom {node.pointer} holds a {type(node).__name__}, not a keyed tree")


def as_positional(node: Node) -> PositionalNode:
    """`node` as the root of a positional tree; CorruptionError when it has another shape."""
    if type(node) is PositionalLeaf or type(node) is PositionalInternal:
        return node
    raise CorruptionError(
        f"atom {node.pointer} holds a {type(node).__name__}, not a positional tree"
    )


def same_node(a: object, b: object) -> bool:
    """True when two child references denote the same node."""
    ia = a.identity() if isinstance(a, Node) else a
    ib = b.identity() if isinstance(b, Node) else b
    return ia is ib or (type(ia) is AtomPointer and ia == ib)


N = TypeVar("N", bound=Node)


def _editable(node: N, edit: object | None) -> N:
    if edit is not None and node.edit is edit:
        return node
    copy = node.clone(edit)
    copy.replaces = node.pointer if node.pointer is not None else node.replaces
    return copy


# -- rebalancing (shared by both flavours) ---------------------------------------


def _rebalance(parent: Internal[C], index: int, loader: NodeLoader, edit: object | None) -> None:
    """Fix an underfull child of `parent` (editable) by merging or sharing."""
    width = len(parent.children)
    if width < 2:
        return
    a = index if index + 1 < width else index - 1
    left = _editable(parent.child(a, loader), edit)
    left.absorb(parent.child(a + 1, loader))
    if left.width <= MAX_WIDTH:
        parent.replace_child(a, left)
        parent.delete_child(a + 1)
    else:
        right = left.split(at_end=False)
        parent.replace_child(a, left)
        parent.replace_child(a + 1, right)


def _finish(root: N, loader: NodeLoader) -> N | None:
    """Collapse a root with a single child; an empty tree is None."""
    while isinstance(root, Internal) and len(root.children) == 1:
        root = root.child(0, loader)
    return None if root.total == 0 else root


# -- keyed trees ----------------------------------------------------------------


def _child_for(node: KeyedInternal, skey: Any, keyfn: KeyFn) -> int:
    return max(bisect_right(node.skeys(keyfn), skey) - 1, 0)


def _grow_keyed(root: KeyedNode, split: KeyedNode | None, edit: object | None) -> KeyedNode:
    if split is None:
        return root
    return KeyedInternal.over([root, split], edit, root.origin)


def keyed_get(root: KeyedNode | None, loader: NodeLoader, skey: Any, keyfn: KeyFn) -> Any:
    """The value stored under `skey`, or MISSING."""
    node = root
    if node is None:
        return MISSING
    # The hot path of every point read: inlined child search and memoized loads.
    while type(node) is KeyedInternal:
        sk = node._skeys
        if sk is None:
            sk = node.skeys(keyfn)
        i = bisect_right(sk, skey) - 1
        if i < 0:
            i = 0
        child = node.children[i]
        node = node.child(i, loader) if isinstance(child, AtomPointer) else child
    sk = node._skeys
    if sk is None:
        sk = node.skeys(keyfn)
    i = bisect_left(sk, skey)
    if i < len(sk) and sk[i] == skey:
        return node.values[i]
    return MISSING


def _keyed_set(
    node: KeyedNode,
    loader: NodeLoader,
    key: Any,
    skey: Any,
    value: Any,
    keyfn: KeyFn,
    edit: object | None,
) -> tuple[KeyedNode, KeyedNode | None, int]:
    if type(node) is KeyedLeaf:
        sk = node.skeys(keyfn)
        i = bisect_left(sk, skey)
        if i < len(sk) and sk[i] == skey:
            if node.values[i] is value:
                return node, None, 0
            leaf = _editable(node, edit)
            leaf.values[i] = value
            return leaf, None, 0
        leaf = _editable(node, edit)
        leaf.keys.insert(i, key)
        leaf.skeys(keyfn).insert(i, skey)
        leaf.values.insert(i, value)
        leaf.total += 1
        width = len(leaf.values)
        return leaf, (leaf.split(i == width - 1) if width > MAX_WIDTH else None), 1
    i = _child_for(node, skey, keyfn)
    before = node.child(i, loader)
    child, split, added = _keyed_set(before, loader, key, skey, value, keyfn, edit)
    if child is before and split is None and not added:
        return node, None, 0
    parent = _editable(node, edit)
    parent.replace_child(i, child)
    if split is not None:
        parent.insert_child(i + 1, split)
    parent.total += added
    width = len(parent.children)
    at_end = i + (split is not None) == width - 1
    return parent, (parent.split(at_end) if width > MAX_WIDTH else None), added


def keyed_set(
    root: KeyedNode | None,
    loader: NodeLoader,
    key: Any,
    value: Any,
    keyfn: KeyFn,
    edit: object | None = None,
) -> tuple[KeyedNode, bool]:
    """Set `key` to `value`; returns the new root and whether the key is new."""
    skey = keyfn(key)
    if root is None:
        return KeyedLeaf([key], [value], edit, None, [skey]), True
    before = root.total
    new_root, split, _ = _keyed_set(root, loader, key, skey, value, keyfn, edit)
    new_root = _grow_keyed(new_root, split, edit)
    return new_root, new_root.total > before


def _keyed_remove(
    node: KeyedNode, loader: NodeLoader, skey: Any, keyfn: KeyFn, edit: object | None
) -> tuple[KeyedNode, Any]:
    if type(node) is KeyedLeaf:
        sk = node.skeys(keyfn)
        i = bisect_left(sk, skey)
        if i == len(sk) or sk[i] != skey:
            return node, MISSING
        leaf = _editable(node, edit)
        removed = leaf.values.pop(i)
        del leaf.keys[i]
        del leaf.skeys(keyfn)[i]
        leaf.total -= 1
        return leaf, removed
    i = _child_for(node, skey, keyfn)
    child, removed = _keyed_remove(node.child(i, loader), loader, skey, keyfn, edit)
    if removed is MISSING:
        return node, MISSING
    parent = _editable(node, edit)
    parent.replace_child(i, child)
    parent.total -= 1
    if len(child.keys) < MIN_WIDTH:
        _rebalance(parent, i, loader, edit)
    return parent, removed


def keyed_remove(
    root: KeyedNode | None,
    loader: NodeLoader,
    key: Any,
    keyfn: KeyFn,
    edit: object | None = None,
) -> tuple[KeyedNode | None, Any]:
    """Remove `key`; returns the new root and the removed value (or MISSING)."""
    if root is None:
        return None, MISSING
    new_root, removed = _keyed_remove(root, loader, keyfn(key), keyfn, edit)
    if removed is MISSING:
        return root, MISSING
    return _finish(new_root, loader), removed


def keyed_items(
    root: KeyedNode | None,
    loader: NodeLoader,
    keyfn: KeyFn,
    lo: Any = MISSING,
    hi: Any = MISSING,
) -> Iterator[tuple[Any, Any]]:
    """Entries ``(key, value)`` in key order, with ``lo <= skey < hi`` when given."""
    if root is None:
        return
    yield from _keyed_items(root, loader, keyfn, lo, hi, False)


def keyed_sorted_keys(
    root: KeyedNode | None,
    loader: NodeLoader,
    keyfn: KeyFn,
    lo: Any = MISSING,
    hi: Any = MISSING,
) -> Iterator[tuple[Any, Any]]:
    """``(sort key, key)`` of the entries with ``lo <= skey < hi``, in key order.

    The sort keys come from the nodes' caches, computed once per node.
    """
    if root is None:
        return
    yield from _keyed_items(root, loader, keyfn, lo, hi, True)


def keyed_values(root: KeyedNode | None, loader: NodeLoader, keyfn: KeyFn) -> Iterator[Any]:
    """Every value, in key order (what a scan of a Dictionary's rows reads)."""
    if root is None:
        return
    yield from _keyed_items(root, loader, keyfn, MISSING, MISSING, None)


def _keyed_items(
    root: KeyedNode,
    loader: NodeLoader,
    keyfn: KeyFn,
    lo: Any,
    hi: Any,
    sorted_keys: bool | None,
) -> Iterator[Any]:
    # Iterative (a stack of [node, next child, stop]): nested generators per
    # level cost more than the short ranges index lookups read.
    bounded = lo is not MISSING or hi is not MISSING
    stack: list[list[Any]] = []
    node: KeyedNode | None = root
    while True:
        if type(node) is KeyedLeaf:
            keys, values = node.keys, node.values
            start, stop = 0, len(values)
            if bounded:
                sk = node.skeys(keyfn)
                if lo is not MISSING:
                    start = bisect_left(sk, lo)
                if hi is not MISSING:
                    stop = bisect_left(sk, hi)
            if sorted_keys is None:  # values only
                yield from values if start == 0 and stop == len(values) else values[start:stop]
            elif sorted_keys:
                sk = node.skeys(keyfn)
                for i in range(start, stop):
                    yield sk[i], keys[i]
            else:
                for i in range(start, stop):
                    yield keys[i], values[i]
            node = None
        elif node is not None:
            start, stop = 0, len(node.children)
            if bounded:
                sk = node.skeys(keyfn)
                if lo is not MISSING:
                    start = max(bisect_right(sk, lo) - 1, 0)
                if hi is not MISSING:
                    stop = bisect_left(sk, hi)
            if start < stop:
                node.load_children(loader, start, stop)
                stack.append([node, start, stop])
            node = None
        # The next subtree to enter: the next child of the deepest open node.
        while stack:
            frame = stack[-1]
            parent, index, stop = frame
            if index < stop:
                frame[1] = index + 1
                node = parent.child(index, loader)
                break
            stack.pop()
        if node is None:
            return


def keyed_get_sorted(
    root: KeyedNode | None, loader: NodeLoader, skeys: Iterable[Any], keyfn: KeyFn
) -> list[Any]:
    """The values under ascending sort keys `skeys` (MISSING where absent), as a list.

    One walk down the tree for all of them: the path of nodes to the current
    leaf is kept with the key each node's range ends at, and the next key
    climbs only as far as the first node whose range still holds it.
    """
    if root is None:
        return [MISSING for _ in skeys]
    found: list[Any] = []
    append = found.append
    path: list[tuple[KeyedNode, Any]] = [(root, MISSING)]  # (node, end of its key range)
    sk: list[Any] = []
    values: list[Any] = []
    leaf_end: Any = None  # None: no leaf reached yet
    for skey in skeys:
        if leaf_end is None or (leaf_end is not MISSING and not skey < leaf_end):
            while len(path) > 1 and path[-1][1] is not MISSING and not skey < path[-1][1]:
                path.pop()
            node, end = path[-1]
            while type(node) is KeyedInternal:  # inlined as in keyed_get: once per leaf visited
                node_sk = node._skeys
                if node_sk is None:
                    node_sk = node.skeys(keyfn)
                i = bisect_right(node_sk, skey) - 1
                if i < 0:
                    i = 0
                if i + 1 < len(node_sk):
                    end = node_sk[i + 1]
                child = node.children[i]
                node = node.child(i, loader) if isinstance(child, AtomPointer) else child
                if type(node) is KeyedInternal:
                    path.append((node, end))
            sk, values = node.skeys(keyfn), node.values
            leaf_end = end
        i = bisect_left(sk, skey)
        append(values[i] if i < len(sk) and sk[i] == skey else MISSING)
    return found


def keyed_first(
    root: KeyedNode | None, loader: NodeLoader, keyfn: KeyFn, lo: Any, hi: Any
) -> tuple[Any, Any] | None:
    """``(sort key, key)`` of the first entry with ``lo <= skey < hi``, or None.

    One descent; only when `lo` falls past the last entry of the leaf it leads
    to (the entry starts the next leaf) does it fall back to a range scan.
    """
    node = root
    if node is None:
        return None
    while type(node) is KeyedInternal:  # inlined as in keyed_get: one call per index lookup
        node_sk = node._skeys
        if node_sk is None:
            node_sk = node.skeys(keyfn)
        i = bisect_right(node_sk, lo) - 1
        if i < 0:
            i = 0
        child = node.children[i]
        node = node.child(i, loader) if isinstance(child, AtomPointer) else child
    sk = node.skeys(keyfn)
    i = bisect_left(sk, lo)
    if i == len(sk):
        return next(keyed_sorted_keys(root, loader, keyfn, lo, hi), None)
    return (sk[i], node.keys[i]) if sk[i] < hi else None


def keyed_rank(root: KeyedNode | None, loader: NodeLoader, skey: Any, keyfn: KeyFn) -> int:
    """The number of entries whose sort key is below `skey`; O(log n) loads."""
    node = root
    if node is None:
        return 0
    rank = 0
    while type(node) is KeyedInternal:
        i = max(bisect_left(node.skeys(keyfn), skey) - 1, 0)
        rank += sum(node.sizes[:i])
        node = node.child(i, loader)
    return rank + bisect_left(node.skeys(keyfn), skey)


def build_keyed(
    items: Sequence[tuple[Any, Any]],
    keyfn: KeyFn,
    edit: object | None = None,
    skeys: Sequence[Any] | None = None,
) -> KeyedNode | None:
    """A tree from entries already sorted by ``keyfn(key)`` with unique keys; O(n).

    `skeys`, when the caller has them, are the entries' sort keys; they seed
    the leaves' caches instead of being computed again (with `keyfn`, by the
    first reader that needs them).
    """
    leaves: list[KeyedNode] = []
    for chunk in _chunks(len(items)):
        part = items[chunk]
        leaves.append(
            KeyedLeaf(
                [k for k, _ in part],
                [v for _, v in part],
                edit,
                None,
                None if skeys is None else list(skeys[chunk]),
            )
        )
    return _build_levels(leaves, KeyedInternal.over, edit)


# -- positional trees -------------------------------------------------------------


def _locate(node: PositionalInternal, index: int, inserting: bool = False) -> tuple[int, int]:
    """The child holding position `index` and the position within it."""
    sizes = node.sizes
    for child_index, size in enumerate(sizes):
        if index < size:
            return child_index, index
        index -= size
    if inserting:
        last = len(sizes) - 1
        return last, sizes[last]
    raise IndexError("position out of range")


def positional_get(root: PositionalNode | None, loader: NodeLoader, index: int) -> Any:
    node = root
    if node is None or not 0 <= index < node.total:
        raise IndexError("list index out of range")
    while type(node) is PositionalInternal:
        child_index, index = _locate(node, index)
        node = node.child(child_index, loader)
    return node.values[index]


def _positional_update(
    node: PositionalNode,
    loader: NodeLoader,
    index: int,
    value: Any,
    mode: str,
    edit: object | None,
) -> tuple[PositionalNode, PositionalNode | None, Any]:
    """Set, insert or remove at `index` below `node`; returns (node, split, old value)."""
    if type(node) is PositionalLeaf:
        leaf = _editable(node, edit)
        values = leaf.values
        old = MISSING
        if mode == "set":
            old = values[index]
            values[index] = value
        elif mode == "insert":
            values.insert(index, value)
            leaf.total += 1
        else:
            old = values.pop(index)
            leaf.total -= 1
        width = len(values)
        return leaf, (leaf.split(index == width - 1) if width > MAX_WIDTH else None), old
    parent = _editable(node, edit)
    child_index, offset = _locate(parent, index, inserting=mode == "insert")
    child, split, old = _positional_update(
        parent.child(child_index, loader), loader, offset, value, mode, edit
    )
    parent.replace_child(child_index, child)
    if split is not None:
        parent.insert_child(child_index + 1, split)
    if mode == "insert":
        parent.total += 1
    elif mode == "remove":
        parent.total -= 1
        if child.width < MIN_WIDTH:
            _rebalance(parent, child_index, loader, edit)
    width = len(parent.children)
    at_end = child_index + (split is not None) == width - 1
    return parent, (parent.split(at_end) if width > MAX_WIDTH else None), old


def positional_set(
    root: PositionalNode | None,
    loader: NodeLoader,
    index: int,
    value: Any,
    edit: object | None = None,
) -> PositionalNode:
    if root is None or not 0 <= index < root.total:
        raise IndexError("list assignment index out of range")
    new_root, _, _ = _positional_update(root, loader, index, value, "set", edit)
    return new_root


def positional_insert(
    root: PositionalNode | None,
    loader: NodeLoader,
    index: int,
    value: Any,
    edit: object | None = None,
) -> PositionalNode:
    """Insert so that `value` ends at position `index` (0 <= index <= total)."""
    if root is None:
        return PositionalLeaf([value], edit)
    if not 0 <= index <= root.total:
        raise IndexError("list insert index out of range")
    new_root, split, _ = _positional_update(root, loader, index, value, "insert", edit)
    if split is None:
        return new_root
    return PositionalInternal.over([new_root, split], edit, new_root.origin)


def positional_remove(
    root: PositionalNode | None, loader: NodeLoader, index: int, edit: object | None = None
) -> tuple[PositionalNode | None, Any]:
    if root is None or not 0 <= index < root.total:
        raise IndexError("list index out of range")
    new_root, _, old = _positional_update(root, loader, index, None, "remove", edit)
    return _finish(new_root, loader), old


def positional_values(
    root: PositionalNode | None, loader: NodeLoader, start: int = 0, stop: int | None = None
) -> Iterator[Any]:
    """Values at positions ``[start, stop)`` in order."""
    if root is None:
        return
    stop = root.total if stop is None else min(stop, root.total)
    if start < stop:
        yield from _positional_values(root, loader, start, stop)


def _positional_values(
    node: PositionalNode, loader: NodeLoader, start: int, stop: int
) -> Iterator[Any]:
    if type(node) is PositionalLeaf:
        yield from node.values[start:stop]
        return
    sizes = node.sizes
    first, offset = _locate(node, start)
    last, _ = _locate(node, stop - 1)
    node.load_children(loader, first, last + 1)
    base = start - offset
    for i in range(first, last + 1):
        size = sizes[i]
        yield from _positional_values(
            node.child(i, loader), loader, max(start - base, 0), min(stop - base, size)
        )
        base += size


def build_positional(values: Sequence[Any], edit: object | None = None) -> PositionalNode | None:
    """A tree holding `values` in order; O(n)."""
    leaves: list[PositionalNode] = [
        PositionalLeaf(list(values[chunk]), edit) for chunk in _chunks(len(values))
    ]
    return _build_levels(leaves, PositionalInternal.over, edit)


# -- building -------------------------------------------------------------------


def _chunks(count: int) -> Iterator[slice]:
    """Slices cutting `count` entries into nodes of near-equal width."""
    if count == 0:
        return
    pieces = -(-count // BUILD_WIDTH)
    base, extra = divmod(count, pieces)
    start = 0
    for piece in range(pieces):
        size = base + (1 if piece < extra else 0)
        yield slice(start, start + size)
        start += size


def _build_levels(
    level: list[N], parent_of: Callable[[list[N], object | None], N], edit: object | None
) -> N | None:
    """The root over `level` (nodes of one height), adding levels of parents."""
    if not level:
        return None
    while len(level) > 1:
        level = [parent_of(level[chunk], edit) for chunk in _chunks(len(level))]
    return level[0]


# -- diff -------------------------------------------------------------------------


def keyed_diff(
    base: KeyedNode | AtomPointer | None,
    other: KeyedNode | AtomPointer | None,
    loader: NodeLoader,
    keyfn: KeyFn,
    same_value: Callable[[Any, Any], bool],
) -> Iterator[tuple[Any, Any, Any, Any]]:
    """Entries that differ between two keyed trees: ``(skey, key, base_v, other_v)``.

    A side that lacks the key has MISSING. Each side is a stack of pending
    items in key order: entries ``(skey, key, value)`` and subtrees
    ``[reference, height, first skey]``. A subtree both sides share (the same
    node or pointer) is skipped without loading; otherwise the item that
    starts first is expanded, and an entry that sorts before the other side's
    next subtree is decided without opening it. The cost is
    O(changes x (node width + log n)) loads.
    """
    a: list[Any] = [] if base is None else [_subtree(base, loader, keyfn)]
    b: list[Any] = [] if other is None else [_subtree(other, loader, keyfn)]
    while a and b:
        x, y = a[-1], b[-1]
        x_entry, y_entry = type(x) is tuple, type(y) is tuple
        if x_entry and y_entry:
            if x[0] == y[0]:
                a.pop()
                b.pop()
                if not same_value(x[2], y[2]):
                    yield x[0], x[1], x[2], y[2]
            elif x[0] < y[0]:
                a.pop()
                yield x[0], x[1], x[2], MISSING
            else:
                b.pop()
                yield y[0], y[1], MISSING, y[2]
        elif x_entry:
            if x[0] < y[2]:
                a.pop()
                yield x[0], x[1], x[2], MISSING
            else:
                _expand(b, loader, keyfn)
        elif y_entry:
            if y[0] < x[2]:
                b.pop()
                yield y[0], y[1], MISSING, y[2]
            else:
                _expand(a, loader, keyfn)
        elif same_node(x[0], y[0]):
            a.pop()
            b.pop()
        elif x[2] < y[2] or (x[2] == y[2] and x[1] >= y[1]):
            _expand(a, loader, keyfn)
        else:
            _expand(b, loader, keyfn)
    for stack, left in ((a, True), (b, False)):
        while stack:
            item = stack[-1]
            if type(item) is not tuple:
                _expand(stack, loader, keyfn)
                continue
            stack.pop()
            if left:
                yield item[0], item[1], item[2], MISSING
            else:
                yield item[0], item[1], MISSING, item[2]


def _keyed_node(ref: KeyedNode | AtomPointer, loader: NodeLoader) -> KeyedNode:
    return as_keyed(loader.load_node(ref)) if isinstance(ref, AtomPointer) else ref


def _subtree(ref: KeyedNode | AtomPointer, loader: NodeLoader, keyfn: KeyFn) -> list[Any]:
    node = _keyed_node(ref, loader)
    return [ref, node.height, node.skeys(keyfn)[0]]


def _expand(stack: list[Any], loader: NodeLoader, keyfn: KeyFn) -> None:
    """Replace the subtree on top of `stack` by its children (or its entries)."""
    ref, height, _ = stack.pop()
    node = _keyed_node(ref, loader)
    sk = node.skeys(keyfn)
    if type(node) is KeyedLeaf:
        keys, values = node.keys, node.values
        for i in range(len(keys) - 1, -1, -1):
            stack.append((sk[i], keys[i], values[i]))
    else:
        children = node.children
        for i in range(len(children) - 1, -1, -1):
            stack.append([children[i], height - 1, sk[i]])


def iter_nodes(
    root: Node | None, loader: NodeLoader, descend: Callable[[Node], bool]
) -> Iterator[Node]:
    """Nodes of a tree, parents first, entering only nodes `descend` accepts.

    Children still held as pointers are not entered (`loader` loads nothing).
    """
    if root is None or not descend(root):
        return
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, Internal):
            for child in node.children:
                if isinstance(child, Node) and descend(child):
                    stack.append(child)
