"""What the space's shared node cache keeps of a stored leaf (see `cache.NodeCache`).

- A leaf whose keys and values are immutable plain data (scalars, tuples of
  them, DBObjects holding them) is kept as it is: every transaction reads
  the same node object.
- A leaf whose values also hold collections, lists or dicts is kept as a
  `NodeTemplate`: each transaction that loads it gets a copy in which those
  values are copied, the collections bound to that transaction (a
  collection reads its nodes through its transaction, and a list or dict a
  reader changes must not change another transaction's value). Copying is
  much cheaper than decoding the atom again.
- A leaf holding a MutableObject or a Literal (each resolved through its
  transaction's identity map or reads), or a collection with secondary
  indexes, is not kept: each transaction decodes it.

- An internal node is kept as a *shared* node (the ``shared`` flag of `btree.KeyedInternal` and
  `btree.PositionalInternal`, from their base `btree.Internal`):
  its children stay pointers, because a child may be private to the
  transaction that loads it; each transaction finds them through its own
  loader.
"""

from __future__ import annotations

from typing import Any

from .atoms import AtomPointer
from .codec import PLAIN_SCALAR_TYPES
from .collections.base import DETACHED, PersistentCollection
from .collections.btree import Internal, KeyedLeaf, Node, NodeLoader, PositionalLeaf
from .objects import DBObject, UnknownObject

_FROZEN_SCALARS = frozenset(PLAIN_SCALAR_TYPES)


def _frozen(value: Any) -> bool:
    """True when nothing inside `value` can change or reads through a transaction."""
    kind = type(value)
    if kind in _FROZEN_SCALARS:
        return True
    if kind is tuple:
        return _FROZEN_SCALARS.issuperset(map(type, value)) or all(map(_frozen, value))
    if isinstance(value, DBObject):
        attrs = value._attrs.values()
        if _FROZEN_SCALARS.issuperset(map(type, attrs)):  # the common case, checked in C
            return True
        return all(map(_frozen, attrs))
    return False


def _rebindable(value: Any) -> bool:
    """True when `value` can be copied for another transaction (see the module doc)."""
    kind = type(value)
    if kind in _FROZEN_SCALARS:
        return True
    if kind is tuple or kind is list:
        return all(map(_rebindable, value))
    if kind is dict:
        return all(map(_rebindable, value.values()))
    if isinstance(value, PersistentCollection):
        root = value._root
        return not value._indexes and (
            root is None or type(root) is AtomPointer or root.pointer is not None  # type: ignore[union-attr]
        )
    if isinstance(value, DBObject) and not isinstance(value, UnknownObject):
        return all(map(_rebindable, value._attrs.values()))
    return False


def _rebind(value: Any, loader: NodeLoader) -> Any:
    """A copy of `value` whose collections read through `loader`, from their stored roots."""
    kind = type(value)
    if kind in _FROZEN_SCALARS:
        return value
    if kind is dict:
        return {key: _rebind(item, loader) for key, item in value.items()}
    if kind is list:
        return [_rebind(item, loader) for item in value]
    if kind is tuple:
        return tuple([_rebind(item, loader) for item in value])
    if isinstance(value, PersistentCollection):
        root = value._root
        if root is not None and type(root) is not AtomPointer:
            root = root.pointer  # type: ignore[union-attr]
        copy = value._copy_with(root, ())
        copy._loader = loader
        return copy
    if isinstance(value, DBObject):
        return type(value)._pb_from_state(
            {name: _rebind(item, loader) for name, item in value._attrs.items()}
        )
    return value


def _leaf_values(node: Node) -> list[Any]:
    if isinstance(node, (KeyedLeaf, PositionalLeaf)):
        return node.values
    raise TypeError(f"a {type(node).__name__} has no values")


class NodeTemplate:
    """A stored leaf to copy for each transaction: the values at `positions` are rebound.

    The template's own values hold collections bound to no transaction,
    with stored roots, so what one transaction loads never reaches another.
    """

    __slots__ = ("node", "positions")

    def __init__(self, node: Node, positions: tuple[int, ...]) -> None:
        self.node = node
        self.positions = positions

    def instantiate(self, loader: NodeLoader) -> Node:
        """The leaf as `loader` (a transaction) reads it."""
        template = self.node
        node = template.clone(None)
        node.pointer, node.origin = template.pointer, template.origin
        values = _leaf_values(node)
        for position in self.positions:
            values[position] = _rebind(values[position], loader)
        return node


def shared_form(node: Node) -> Node | NodeTemplate | None:
    """What the shared cache keeps for a stored node: itself, a template, or nothing.

    An internal node is kept as a shared node (its children as pointers): the
    node itself when it was just decoded (all its children are pointers),
    else a copy.
    """
    if node.pointer is None:
        return None
    if isinstance(node, Internal):
        if all(type(child) is AtomPointer for child in node.children):
            node.shared = True
            return node
        return node.shareable_copy()
    scalars = _FROZEN_SCALARS
    if isinstance(node, KeyedLeaf) and not scalars.issuperset(map(type, node.keys)):
        for key in node.keys:
            if type(key) not in scalars and not _frozen(key):
                return None
    values = _leaf_values(node)
    if scalars.issuperset(map(type, values)):  # the common case, checked in C
        return node
    positions = []
    for position, value in enumerate(values):
        if type(value) in scalars or _frozen(value):
            continue
        if not _rebindable(value):
            return None
        positions.append(position)
    if not positions:
        return node
    if all(isinstance(values[position], PersistentCollection) for position in positions):
        # Collections are values: what `instantiate` rebinds is read, never changed.
        return NodeTemplate(node, tuple(positions))
    template = node.clone(None)
    template.pointer, template.origin = node.pointer, node.origin
    kept = _leaf_values(template)
    for position in positions:
        kept[position] = _rebind(kept[position], DETACHED)
    return NodeTemplate(template, tuple(positions))
