"""Persistent B+-trees with wide nodes: the structure under every collection.

One node is one atom. Leaves hold up to `MAX_WIDTH` entries; internal nodes
hold up to `MAX_WIDTH` children together with each child's entry count (so
positions are found in O(log n)) and, in keyed trees, each child's smallest
key (so keys are found without loading siblings).

Two flavours share the code:

- **keyed** trees (Dictionary, HashDictionary, Set, CountedSet): leaves hold
  ``keys`` and ``values`` sorted by ``keyfn(key)``; a key appears once.
- **positional** trees (List): leaves hold ``values`` only; the position of
  an entry is the number of entries before it.

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
4. A child is either a loaded `Node` or the `AtomPointer` of a stored one;
   replacing the pointer by the node it names changes nothing observable.

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
from typing import Any, Protocol

from ..atoms import AtomPointer
from ..codec import POINTER_STRUCT as _POINTER
from ..errors import CorruptionError

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


class Node:
    """One tree node; see the module docstring for its invariants."""

    __slots__ = (
        "_skeys",
        "children",
        "edit",
        "height",
        "keys",
        "origin",
        "pointer",
        "sizes",
        "total",
        "values",
    )

    def __init__(
        self,
        height: int,
        keys: list[Any] | None,
        values: list[Any] | None = None,
        children: list[Any] | None = None,
        sizes: list[int] | None = None,
        edit: object | None = None,
        origin: object | None = None,
    ) -> None:
        self.height = height
        self.keys = keys
        self.values = values
        self.children = children
        self.sizes = sizes
        self.total = len(values) if height == 0 else sum(sizes or ())  # type: ignore[arg-type]
        self.edit = edit
        self.origin = origin
        self.pointer: AtomPointer | None = None
        self._skeys: list[Any] | None = None

    @property
    def width(self) -> int:
        return len(self.values) if self.height == 0 else len(self.children)  # type: ignore[arg-type]

    def skeys(self, keyfn: KeyFn) -> list[Any]:
        """Sort keys of ``self.keys``, computed once per node."""
        if self._skeys is None:
            self._skeys = list(map(keyfn, self.keys))  # type: ignore[arg-type]
        return self._skeys

    def child(self, index: int, loader: NodeLoader) -> Node:
        child = self.children[index]  # type: ignore[index]
        if type(child) is AtomPointer:
            child = loader.load_node(child)
            self.children[index] = child  # type: ignore[index]
        return child

    def load_children(self, loader: NodeLoader, start: int = 0, stop: int | None = None) -> None:
        """Load the children in ``[start, stop)`` with one batched read."""
        children = self.children
        assert children is not None
        stop = len(children) if stop is None else stop
        wanted = [i for i in range(start, stop) if type(children[i]) is AtomPointer]
        if wanted:
            loaded = loader.load_nodes([children[i] for i in wanted])
            for i, node in zip(wanted, loaded, strict=True):
                children[i] = node

    def clone(self, edit: object | None) -> Node:
        copy = Node.__new__(Node)
        copy.height = self.height
        copy.keys = None if self.keys is None else list(self.keys)
        copy.values = None if self.values is None else list(self.values)
        copy.children = None if self.children is None else list(self.children)
        copy.sizes = None if self.sizes is None else list(self.sizes)
        copy.total = self.total
        copy.edit = edit
        copy.origin = self.origin
        copy.pointer = None
        copy._skeys = None if self._skeys is None else list(self._skeys)
        return copy

    def identity(self) -> object:
        """Equal for two references to the same stored or in-memory node."""
        return self.pointer if self.pointer is not None else self

    # -- encoding -----------------------------------------------------------

    def payload(self, ref: Callable[[Any], AtomPointer]) -> list[Any]:
        """The atom payload; ``ref`` turns each child into its pointer.

        Every child goes through ``ref``, also one still held as an
        AtomPointer (``ref`` returns it as it is), so that the writer sees
        every pointer the atom holds (its links).
        """
        if self.height == 0:
            if self.keys is None:
                return [1, self.values]
            return [0, self.keys, self.values]
        pack = _POINTER.pack
        children = b"".join(
            [
                pack(*ref(child))
                for child in self.children  # type: ignore[union-attr]
            ]
        )
        if self.keys is None:
            return [3, self.height, self.sizes, children]
        return [2, self.height, self.sizes, children, self.keys]

    @staticmethod
    def from_payload(payload: Any, pointer: AtomPointer, origin: object) -> Node:
        try:
            tag = payload[0]
            if tag == 0:
                node = Node(0, list(payload[1]), list(payload[2]))
                if len(node.keys) != len(node.values):  # type: ignore[arg-type]
                    raise ValueError("keys and values differ in length")
            elif tag == 1:
                node = Node(0, None, list(payload[1]))
            elif tag in (2, 3):
                height, sizes = payload[1], list(payload[2])
                blob = payload[3]
                if type(blob) is not bytes or len(blob) % _POINTER.size:
                    raise ValueError("children are not a packed pointer array")
                children: list[Any] = [AtomPointer(t, i) for t, i in _POINTER.iter_unpack(blob)]
                keys = list(payload[4]) if tag == 2 else None
                if not (isinstance(height, int) and height > 0):
                    raise ValueError(f"bad height {height!r}")
                if len(sizes) != len(children) or (keys is not None and len(keys) != len(sizes)):
                    raise ValueError("sizes, children and keys differ in length")
                node = Node(height, keys, None, children, sizes)
            else:
                raise ValueError(f"unknown node tag {tag!r}")
        except (TypeError, ValueError, IndexError) as exc:
            raise CorruptionError(f"atom {pointer} is not a valid tree node: {exc}") from exc
        node.pointer = pointer
        node.origin = origin
        return node


def same_node(a: object, b: object) -> bool:
    """True when two child references denote the same node."""
    ia = a.identity() if isinstance(a, Node) else a
    ib = b.identity() if isinstance(b, Node) else b
    return ia is ib or (type(ia) is AtomPointer and ia == ib)


def _editable(node: Node, edit: object | None) -> Node:
    if edit is not None and node.edit is edit:
        return node
    return node.clone(edit)


# -- splitting and rebalancing (shared by both flavours) ------------------------


def _split(node: Node, at_end: bool) -> Node:
    """Cut `node` (already editable) in two; returns the new right half.

    When the last insertion was at the end (sequential loading), the left
    node keeps all but `MIN_WIDTH` entries, so appends leave nodes about
    three quarters full behind them and the new node is not underfull.
    """
    width = node.width
    cut = width - MIN_WIDTH if at_end else width // 2
    if node.height == 0:
        right = Node(
            0,
            None if node.keys is None else node.keys[cut:],
            node.values[cut:],  # type: ignore[index]
            edit=node.edit,
            origin=node.origin,
        )
        del node.values[cut:]  # type: ignore[union-attr]
    else:
        right = Node(
            node.height,
            None if node.keys is None else node.keys[cut:],
            None,
            node.children[cut:],  # type: ignore[index]
            node.sizes[cut:],  # type: ignore[index]
            edit=node.edit,
            origin=node.origin,
        )
        del node.children[cut:]  # type: ignore[union-attr]
        del node.sizes[cut:]  # type: ignore[union-attr]
    if node.keys is not None:
        if node._skeys is not None:
            right._skeys = node._skeys[cut:]
            del node._skeys[cut:]
        del node.keys[cut:]
    node.total -= right.total
    return right


def _replace_child(parent: Node, index: int, child: Node, keyfn: KeyFn | None) -> None:
    parent.children[index] = child  # type: ignore[index]
    parent.sizes[index] = child.total  # type: ignore[index]
    if parent.keys is not None and child.width:
        parent.keys[index] = child.keys[0]  # type: ignore[index]
        if parent._skeys is not None:
            parent._skeys[index] = child.skeys(keyfn)[0]  # type: ignore[arg-type]


def _insert_child(parent: Node, index: int, child: Node, keyfn: KeyFn | None) -> None:
    parent.children.insert(index, child)  # type: ignore[union-attr]
    parent.sizes.insert(index, child.total)  # type: ignore[union-attr]
    if parent.keys is not None:
        parent.keys.insert(index, child.keys[0])  # type: ignore[index]
        if parent._skeys is not None:
            parent._skeys.insert(index, child.skeys(keyfn)[0])  # type: ignore[arg-type]


def _delete_child(parent: Node, index: int) -> None:
    del parent.children[index]  # type: ignore[union-attr]
    del parent.sizes[index]  # type: ignore[union-attr]
    if parent.keys is not None:
        del parent.keys[index]
        if parent._skeys is not None:
            del parent._skeys[index]


def _absorb(left: Node, right: Node) -> None:
    """Append all of `right` to `left` (editable)."""
    if left.height == 0:
        left.values.extend(right.values)  # type: ignore[union-attr, arg-type]
    else:
        left.children.extend(right.children)  # type: ignore[union-attr, arg-type]
        left.sizes.extend(right.sizes)  # type: ignore[union-attr, arg-type]
    if left.keys is not None:
        left.keys.extend(right.keys)  # type: ignore[arg-type]
        if left._skeys is not None and right._skeys is not None:
            left._skeys.extend(right._skeys)
        else:
            left._skeys = None
    left.total += right.total


def _rebalance(
    parent: Node, index: int, loader: NodeLoader, keyfn: KeyFn | None, edit: object | None
) -> None:
    """Fix an underfull child of `parent` (editable) by merging or sharing."""
    if parent.width < 2:
        return
    a = index if index + 1 < parent.width else index - 1
    left = _editable(parent.child(a, loader), edit)
    right = parent.child(a + 1, loader)
    _absorb(left, right)
    if left.width <= MAX_WIDTH:
        _replace_child(parent, a, left, keyfn)
        _delete_child(parent, a + 1)
    else:
        new_right = _split(left, at_end=False)
        _replace_child(parent, a, left, keyfn)
        _replace_child(parent, a + 1, new_right, keyfn)


def _finish(root: Node | None, loader: NodeLoader) -> Node | None:
    """Collapse a root with a single child; an empty tree is None."""
    while root is not None and root.height > 0 and root.width == 1:
        root = root.child(0, loader)
    if root is not None and root.total == 0:
        return None
    return root


def _grow(root: Node, split: Node | None, keyfn: KeyFn | None, edit: object | None) -> Node:
    if split is None:
        return root
    keyed = root.keys is not None
    new_root = Node(
        root.height + 1, [] if keyed else None, None, [], [], edit=edit, origin=root.origin
    )
    _insert_child(new_root, 0, root, keyfn)
    _insert_child(new_root, 1, split, keyfn)
    new_root.total = root.total + split.total
    return new_root


# -- keyed trees ----------------------------------------------------------------


def _child_for(node: Node, skey: Any, keyfn: KeyFn) -> int:
    return max(bisect_right(node.skeys(keyfn), skey) - 1, 0)


def keyed_get(root: Node | None, loader: NodeLoader, skey: Any, keyfn: KeyFn) -> Any:
    """The value stored under `skey`, or MISSING."""
    node = root
    if node is None:
        return MISSING
    # The hot path of every point read: inlined child search and memoized loads.
    while node.height:
        sk = node._skeys
        if sk is None:
            sk = node.skeys(keyfn)
        i = bisect_right(sk, skey) - 1
        child = node.children[i if i > 0 else 0]  # type: ignore[index]
        node = child if type(child) is Node else node.child(i if i > 0 else 0, loader)
    sk = node._skeys
    if sk is None:
        sk = node.skeys(keyfn)
    i = bisect_left(sk, skey)
    if i < len(sk) and sk[i] == skey:
        return node.values[i]  # type: ignore[index]
    return MISSING


def _keyed_set(
    node: Node,
    loader: NodeLoader,
    key: Any,
    skey: Any,
    value: Any,
    keyfn: KeyFn,
    edit: object | None,
) -> tuple[Node, Node | None, int]:
    if node.height == 0:
        sk = node.skeys(keyfn)
        i = bisect_left(sk, skey)
        if i < len(sk) and sk[i] == skey:
            if node.values[i] is value:  # type: ignore[index]
                return node, None, 0
            n = _editable(node, edit)
            n.values[i] = value  # type: ignore[index]
            return n, None, 0
        n = _editable(node, edit)
        n.keys.insert(i, key)  # type: ignore[union-attr]
        n.skeys(keyfn).insert(i, skey)
        n.values.insert(i, value)  # type: ignore[union-attr]
        n.total += 1
        added = 1
        at_end = i == n.width - 1
    else:
        i = _child_for(node, skey, keyfn)
        child, split, added = _keyed_set(
            node.child(i, loader), loader, key, skey, value, keyfn, edit
        )
        if child is node.children[i] and split is None and not added:  # type: ignore[index]
            return node, None, 0
        n = _editable(node, edit)
        _replace_child(n, i, child, keyfn)
        if split is not None:
            _insert_child(n, i + 1, split, keyfn)
        n.total += added
        at_end = i + (split is not None) == n.width - 1
    return n, (_split(n, at_end) if n.width > MAX_WIDTH else None), added


def keyed_set(
    root: Node | None,
    loader: NodeLoader,
    key: Any,
    value: Any,
    keyfn: KeyFn,
    edit: object | None = None,
) -> tuple[Node, bool]:
    """Set `key` to `value`; returns the new root and whether the key is new."""
    skey = keyfn(key)
    if root is None:
        leaf = Node(0, [key], [value], edit=edit)
        leaf._skeys = [skey]
        return leaf, True
    before = root.total
    new_root, split, _ = _keyed_set(root, loader, key, skey, value, keyfn, edit)
    new_root = _grow(new_root, split, keyfn, edit)
    return new_root, new_root.total > before


def _keyed_remove(
    node: Node, loader: NodeLoader, skey: Any, keyfn: KeyFn, edit: object | None
) -> tuple[Node, Any]:
    if node.height == 0:
        sk = node.skeys(keyfn)
        i = bisect_left(sk, skey)
        if i == len(sk) or sk[i] != skey:
            return node, MISSING
        n = _editable(node, edit)
        removed = n.values.pop(i)  # type: ignore[union-attr]
        del n.keys[i]  # type: ignore[union-attr]
        del n.skeys(keyfn)[i]
        n.total -= 1
        return n, removed
    i = _child_for(node, skey, keyfn)
    child, removed = _keyed_remove(node.child(i, loader), loader, skey, keyfn, edit)
    if removed is MISSING:
        return node, MISSING
    n = _editable(node, edit)
    _replace_child(n, i, child, keyfn)
    n.total -= 1
    if child.width < MIN_WIDTH:
        _rebalance(n, i, loader, keyfn, edit)
    return n, removed


def keyed_remove(
    root: Node | None, loader: NodeLoader, key: Any, keyfn: KeyFn, edit: object | None = None
) -> tuple[Node | None, Any]:
    """Remove `key`; returns the new root and the removed value (or MISSING)."""
    if root is None:
        return None, MISSING
    new_root, removed = _keyed_remove(root, loader, keyfn(key), keyfn, edit)
    if removed is MISSING:
        return root, MISSING
    return _finish(new_root, loader), removed


def keyed_items(
    root: Node | None, loader: NodeLoader, keyfn: KeyFn, lo: Any = MISSING, hi: Any = MISSING
) -> Iterator[tuple[Any, Any]]:
    """Entries ``(key, value)`` in key order, with ``lo <= skey < hi`` when given."""
    if root is None:
        return
    yield from _keyed_items(root, loader, keyfn, lo, hi, False)


def keyed_sorted_keys(
    root: Node | None, loader: NodeLoader, keyfn: KeyFn, lo: Any = MISSING, hi: Any = MISSING
) -> Iterator[tuple[Any, Any]]:
    """``(sort key, key)`` of the entries with ``lo <= skey < hi``, in key order.

    The sort keys come from the nodes' caches, computed once per node.
    """
    if root is None:
        return
    yield from _keyed_items(root, loader, keyfn, lo, hi, True)


def keyed_values(root: Node | None, loader: NodeLoader, keyfn: KeyFn) -> Iterator[Any]:
    """Every value, in key order (what a scan of a Dictionary's rows reads)."""
    if root is None:
        return
    yield from _keyed_items(root, loader, keyfn, MISSING, MISSING, None)


def _keyed_items(
    root: Node, loader: NodeLoader, keyfn: KeyFn, lo: Any, hi: Any, sorted_keys: bool | None
) -> Iterator[Any]:
    # Iterative (a stack of [node, next child, stop]): nested generators per
    # level cost more than the short ranges index lookups read.
    bounded = lo is not MISSING or hi is not MISSING
    stack: list[list[Any]] = []
    node: Node | None = root
    while True:
        if node is not None and node.height == 0:
            keys, values = node.keys, node.values
            start, stop = 0, len(values)  # type: ignore[arg-type]
            if bounded:
                sk = node.skeys(keyfn)
                if lo is not MISSING:
                    start = bisect_left(sk, lo)
                if hi is not MISSING:
                    stop = bisect_left(sk, hi)
            if sorted_keys is None:  # values only
                assert values is not None
                yield from values if start == 0 and stop == len(values) else values[start:stop]
            elif sorted_keys:
                sk = node.skeys(keyfn)
                for i in range(start, stop):
                    yield sk[i], keys[i]  # type: ignore[index]
            else:
                for i in range(start, stop):
                    yield keys[i], values[i]  # type: ignore[index]
            node = None
        elif node is not None:
            start, stop = 0, node.width
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
    root: Node | None, loader: NodeLoader, skeys: Iterable[Any], keyfn: KeyFn
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
    path: list[tuple[Node, Any]] = [(root, MISSING)]  # (node, end of its key range)
    sk: list[Any] = []
    values: list[Any] = []
    leaf_end: Any = None  # None: no leaf reached yet
    for skey in skeys:
        if leaf_end is None or (leaf_end is not MISSING and not skey < leaf_end):
            while len(path) > 1 and path[-1][1] is not MISSING and not skey < path[-1][1]:
                path.pop()
            node, end = path[-1]
            while node.height:  # inlined as in keyed_get: this runs once per leaf visited
                node_sk = node._skeys
                if node_sk is None:
                    node_sk = node.skeys(keyfn)
                i = bisect_right(node_sk, skey) - 1
                if i < 0:
                    i = 0
                if i + 1 < len(node_sk):
                    end = node_sk[i + 1]
                child = node.children[i]  # type: ignore[index]
                node = child if type(child) is Node else node.child(i, loader)
                if node.height:
                    path.append((node, end))
            sk, values = node.skeys(keyfn), node.values  # type: ignore[assignment]
            leaf_end = end
        i = bisect_left(sk, skey)
        append(values[i] if i < len(sk) and sk[i] == skey else MISSING)
    return found


def keyed_first(
    root: Node | None, loader: NodeLoader, keyfn: KeyFn, lo: Any, hi: Any
) -> tuple[Any, Any] | None:
    """``(sort key, key)`` of the first entry with ``lo <= skey < hi``, or None.

    One descent; only when `lo` falls past the last entry of the leaf it leads
    to (the entry starts the next leaf) does it fall back to a range scan.
    """
    node = root
    if node is None:
        return None
    while node.height:  # inlined as in keyed_get: one call per index lookup
        node_sk = node._skeys
        if node_sk is None:
            node_sk = node.skeys(keyfn)
        i = bisect_right(node_sk, lo) - 1
        child = node.children[i if i > 0 else 0]  # type: ignore[index]
        node = child if type(child) is Node else node.child(i if i > 0 else 0, loader)
    sk = node.skeys(keyfn)
    i = bisect_left(sk, lo)
    if i == len(sk):
        return next(keyed_sorted_keys(root, loader, keyfn, lo, hi), None)
    return (sk[i], node.keys[i]) if sk[i] < hi else None  # type: ignore[index]


def keyed_rank(root: Node | None, loader: NodeLoader, skey: Any, keyfn: KeyFn) -> int:
    """The number of entries whose sort key is below `skey`; O(log n) loads."""
    node = root
    if node is None:
        return 0
    rank = 0
    while node.height:
        sk = node.skeys(keyfn)
        i = max(bisect_left(sk, skey) - 1, 0)
        rank += sum(node.sizes[:i])  # type: ignore[index]
        node = node.child(i, loader)
    return rank + bisect_left(node.skeys(keyfn), skey)


def build_keyed(
    items: Sequence[tuple[Any, Any]],
    keyfn: KeyFn,
    edit: object | None = None,
    skeys: Sequence[Any] | None = None,
) -> Node | None:
    """A tree from entries already sorted by ``keyfn(key)`` with unique keys; O(n).

    `skeys`, when the caller has them, are the entries' sort keys; they seed
    the nodes' caches instead of being computed again.
    """
    leaves = []
    for chunk in _chunks(len(items)):
        part = items[chunk]
        leaf = Node(0, [k for k, _ in part], [v for _, v in part], edit=edit)
        if skeys is not None:
            leaf._skeys = list(skeys[chunk])
        leaves.append(leaf)
    return _build_levels(leaves, keyfn, edit)


# -- positional trees -------------------------------------------------------------


def _locate(node: Node, index: int, inserting: bool = False) -> tuple[int, int]:
    """The child holding position `index` and the position within it."""
    sizes = node.sizes
    assert sizes is not None
    for child_index, size in enumerate(sizes):
        if index < size:
            return child_index, index
        index -= size
    if inserting:
        last = len(sizes) - 1
        return last, sizes[last]
    raise IndexError("position out of range")


def positional_get(root: Node | None, loader: NodeLoader, index: int) -> Any:
    node = root
    if node is None or not 0 <= index < node.total:
        raise IndexError("list index out of range")
    while node.height > 0:
        child_index, index = _locate(node, index)
        node = node.child(child_index, loader)
    return node.values[index]  # type: ignore[index]


def _positional_update(
    node: Node, loader: NodeLoader, index: int, value: Any, mode: str, edit: object | None
) -> tuple[Node, Node | None, Any]:
    """Set, insert or remove at `index` below `node`; returns (node, split, old value)."""
    n = _editable(node, edit)
    if n.height == 0:
        values = n.values
        assert values is not None
        old = MISSING
        if mode == "set":
            old = values[index]
            values[index] = value
        elif mode == "insert":
            values.insert(index, value)
            n.total += 1
        else:
            old = values.pop(index)
            n.total -= 1
        at_end = index == n.width - 1
    else:
        child_index, offset = _locate(n, index, inserting=mode == "insert")
        child, split, old = _positional_update(
            n.child(child_index, loader), loader, offset, value, mode, edit
        )
        _replace_child(n, child_index, child, None)
        if split is not None:
            _insert_child(n, child_index + 1, split, None)
        if mode == "insert":
            n.total += 1
        elif mode == "remove":
            n.total -= 1
            if child.width < MIN_WIDTH:
                _rebalance(n, child_index, loader, None, edit)
        at_end = child_index + (split is not None) == n.width - 1
    split_node = _split(n, at_end) if n.width > MAX_WIDTH else None
    return n, split_node, old


def positional_set(
    root: Node | None, loader: NodeLoader, index: int, value: Any, edit: object | None = None
) -> Node:
    if root is None or not 0 <= index < root.total:
        raise IndexError("list assignment index out of range")
    new_root, _, _ = _positional_update(root, loader, index, value, "set", edit)
    return new_root


def positional_insert(
    root: Node | None, loader: NodeLoader, index: int, value: Any, edit: object | None = None
) -> Node:
    """Insert so that `value` ends at position `index` (0 <= index <= total)."""
    if root is None:
        return Node(0, None, [value], edit=edit)
    if not 0 <= index <= root.total:
        raise IndexError("list insert index out of range")
    new_root, split, _ = _positional_update(root, loader, index, value, "insert", edit)
    return _grow(new_root, split, None, edit)


def positional_remove(
    root: Node | None, loader: NodeLoader, index: int, edit: object | None = None
) -> tuple[Node | None, Any]:
    if root is None or not 0 <= index < root.total:
        raise IndexError("list index out of range")
    new_root, _, old = _positional_update(root, loader, index, None, "remove", edit)
    return _finish(new_root, loader), old


def positional_values(
    root: Node | None, loader: NodeLoader, start: int = 0, stop: int | None = None
) -> Iterator[Any]:
    """Values at positions ``[start, stop)`` in order."""
    if root is None:
        return
    stop = root.total if stop is None else min(stop, root.total)
    if start < stop:
        yield from _positional_values(root, loader, start, stop)


def _positional_values(node: Node, loader: NodeLoader, start: int, stop: int) -> Iterator[Any]:
    if node.height == 0:
        yield from node.values[start:stop]  # type: ignore[index]
        return
    sizes = node.sizes
    assert sizes is not None
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


def build_positional(values: Sequence[Any], edit: object | None = None) -> Node | None:
    """A tree holding `values` in order; O(n)."""
    leaves = [Node(0, None, list(values[chunk]), edit=edit) for chunk in _chunks(len(values))]
    return _build_levels(leaves, None, edit)


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


def _build_levels(level: list[Node], keyfn: KeyFn | None, edit: object | None) -> Node | None:
    if not level:
        return None
    height = 0
    while len(level) > 1:
        height += 1
        parents = []
        for chunk in _chunks(len(level)):
            parent = Node(height, None if keyfn is None else [], None, [], [], edit=edit)
            for child in level[chunk]:
                _insert_child(parent, parent.width, child, keyfn)
            parent.total = sum(parent.sizes)  # type: ignore[arg-type]
            parents.append(parent)
        level = parents
    return level[0]


# -- diff -------------------------------------------------------------------------


def keyed_diff(
    base: Node | None,
    other: Node | None,
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


def _subtree(ref: Node | AtomPointer, loader: NodeLoader, keyfn: KeyFn) -> list[Any]:
    node = loader.load_node(ref) if type(ref) is AtomPointer else ref
    return [ref, node.height, node.skeys(keyfn)[0]]  # type: ignore[union-attr]


def _expand(stack: list[Any], loader: NodeLoader, keyfn: KeyFn) -> None:
    """Replace the subtree on top of `stack` by its children (or its entries)."""
    ref, height, _ = stack.pop()
    node = loader.load_node(ref) if type(ref) is AtomPointer else ref
    sk = node.skeys(keyfn)
    if height == 0:
        keys, values = node.keys, node.values
        for i in range(node.width - 1, -1, -1):
            stack.append((sk[i], keys[i], values[i]))  # type: ignore[index]
    else:
        children = node.children
        for i in range(node.width - 1, -1, -1):
            stack.append([children[i], height - 1, sk[i]])  # type: ignore[index]


def iter_nodes(
    root: Node | None, loader: NodeLoader, descend: Callable[[Node], bool]
) -> Iterator[Node]:
    """Nodes of a tree, parents first, entering only nodes `descend` accepts."""
    if root is None or not descend(root):
        return
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        if node.height > 0:
            for i in range(node.width):
                child = node.children[i]  # type: ignore[index]
                if isinstance(child, Node) and descend(child):
                    stack.append(child)
