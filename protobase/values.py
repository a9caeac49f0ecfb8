"""What can be stored, and when two stored values are the same.

`storable` is called where a value enters the object layer (an object
attribute, a collection entry, a root object) so that a bad value fails at
the line that introduced it, with the attribute or key named, instead of at
commit time. It also copies plain lists and dicts, so a stored value never
changes when the caller later changes the list it passed in.

`same_value` is the equality the merge uses: it never calls a collection's
content comparison (two collections are the same only when they share their
root node), it tells ``1`` from ``1.0`` from ``True``, and it compares
MutableObjects by identity (object id).
"""

from __future__ import annotations

from typing import Any

from .codec import PLAIN_SCALAR_TYPES
from .errors import ValidationError


class Storable:
    """Base of the object layer's own storable types (objects, collections)."""

    __slots__ = ()

    def _pb_check_nested(self, where: str) -> None:
        """Validate values held inside; most storable types are checked on entry."""


NO_CHECK_TYPES: set[type] = set(PLAIN_SCALAR_TYPES)
"""Types whose values `storable` returns unchanged: the plain scalars and every
Storable subclass met so far. Hot loops test ``type(v) in NO_CHECK_TYPES``
before calling `needs_check`."""


def needs_check(value: Any) -> bool:
    """False for values `storable` returns unchanged without looking inside.

    Callers test this first so that the description of the place (an
    f-string) is only built for values that need the full check.
    """
    kind = type(value)
    if kind in NO_CHECK_TYPES:
        return False
    if isinstance(value, Storable):
        NO_CHECK_TYPES.add(kind)
        return False
    return True


def storable(value: Any, where: str) -> Any:
    """`value` checked for storing, with its plain containers copied.

    Lists, dicts and tuples holding them are copied (recursively), so that
    changing the caller's list later cannot change a stored value; scalars
    and the object layer's own types come back as they are.

    Args:
        value: the candidate value.
        where: how the caller names the place, e.g. ``"attribute 'email' of Person"``.

    Raises:
        ValidationError: `value` (or something inside it) cannot be stored;
            the message names the type and `where`.
    """
    kind = type(value)
    if kind in PLAIN_SCALAR_TYPES or isinstance(value, Storable):
        return value
    if kind is list:
        return [storable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if kind is dict:
        return {
            storable(key, f"a key in {where}"): storable(item, f"{where}[{key!r}]")
            for key, item in value.items()
        }
    if kind is tuple:
        items = tuple(storable(item, f"{where}[{i}]") for i, item in enumerate(value))
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
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
