"""What can be stored, and when two stored values are the same.

`check_storable` is called where a value enters the object layer (an object
attribute, a collection entry, a root object) so that a bad value fails at
the line that introduced it, with the attribute or key named, instead of at
commit time.

`same_value` is the equality the merge uses: it never calls a collection's
content comparison (two collections are the same only when they share their
root node), it tells ``1`` from ``1.0`` from ``True``, and it compares
MutableObjects by identity (object id).
"""

from __future__ import annotations

from typing import Any

from .codec import PLAIN_SCALAR_TYPES
from .errors import ValidationError

_CONTAINERS = (tuple, list, dict)


class Storable:
    """Base of the object layer's own storable types (objects, collections)."""

    __slots__ = ()

    def _pb_check_nested(self, where: str) -> None:
        """Validate values held inside; most storable types are checked on entry."""


def check_storable(value: Any, where: str) -> None:
    """Raise `ValidationError` naming `where` when `value` cannot be stored.

    Args:
        value: the candidate value; containers are checked recursively.
        where: how the caller names the place, e.g. ``"attribute 'email' of Person"``.
    """
    kind = type(value)
    if kind in PLAIN_SCALAR_TYPES:
        return
    if kind in _CONTAINERS:
        if kind is dict:
            for key, item in value.items():
                check_storable(key, f"a key in {where}")
                check_storable(item, f"{where}[{key!r}]")
        else:
            for position, item in enumerate(value):
                check_storable(item, f"{where}[{position}]")
        return
    if isinstance(value, Storable):
        return
    raise ValidationError(
        f"cannot store a value of type {kind.__module__}.{kind.__qualname__} in {where}: "
        "store plain values (None, bool, int, float, str, bytes, datetime, date, timedelta, "
        "Decimal, UUID, tuple, list, dict), DBObject, MutableObject or ProtoBase collections"
    )


def same_value(a: Any, b: Any) -> bool:
    """True when `a` and `b` are the same stored value (see module docstring)."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is float:
        return bool(a == b or (a != a and b != b))
    if kind is tuple or kind is list:
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if kind is dict:
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    own = getattr(a, "_pb_same_value", None)
    if own is not None:
        return bool(own(b))
    return bool(a == b)
