"""Which decoded nodes every transaction of a space may read (the shared node cache).

A node is *shareable* when it is a stored leaf whose keys and values are
immutable plain data: scalars, tuples of them, and DBObjects (immutable)
holding them. Anything that reads through the transaction that decoded it
(a collection, a MutableObject, a Literal) or that a reader could change in
place (a list or dict value) keeps the node private to its transaction.
Internal nodes stay private: they cache the children they load, which may
be private to the transaction that loads them.
"""

from __future__ import annotations

from typing import Any

from .codec import PLAIN_SCALAR_TYPES
from .collections.btree import Node
from .objects import DBObject

_FROZEN_SCALARS = frozenset(PLAIN_SCALAR_TYPES)


def _frozen(value: Any) -> bool:
    """True when nothing inside `value` can change or reads through a transaction."""
    kind = type(value)
    if kind in _FROZEN_SCALARS:
        return True
    if kind is tuple:
        return all(map(_frozen, value))
    if isinstance(value, DBObject):
        return all(map(_frozen, value._attrs.values()))
    return False


def shareable(node: Node) -> bool:
    """Whether every transaction of a space may read `node` itself (see the module doc).

    Only stored leaves qualify: an internal node caches the children it
    loads, which may be private to the transaction that loads them.
    """
    if node.height or node.pointer is None:
        return False
    scalars = _FROZEN_SCALARS
    for items in (node.keys or (), node.values or ()):
        for item in items:
            if type(item) not in scalars and not _frozen(item):
                return False
    return True
