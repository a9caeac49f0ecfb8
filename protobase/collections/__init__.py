"""Persistent collections: immutable values over wide-node B+-trees."""

from .base import PersistentCollection
from .keyed import CountedSet, Dictionary, HashDictionary, KeyedCollection, Set
from .lists import List

__all__ = [
    "CountedSet",
    "Dictionary",
    "HashDictionary",
    "KeyedCollection",
    "List",
    "PersistentCollection",
    "Set",
]
