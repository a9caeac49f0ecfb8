"""A total order and a stable hash over storable keys.

Keys of mixed types order deterministically instead of raising::

    None < numbers (bool, int, float, Decimal) < NaN < str < bytes < tuple
         < naive datetime < aware datetime < date < timedelta < UUID < objects

Within a rank, Python's own order applies (tuples element by element with this
order). Values Python considers equal (``1 == 1.0 == True``, aware datetimes
naming the same instant) get equal sort keys and equal stable hashes, so a
collection treats them as one key, exactly like a `dict`.

`stable_hash` does not depend on PYTHONHASHSEED: stored hash-ordered trees stay
valid across processes.

The first element of a sort key is its rank, and all sort keys of one rank
have the same length. Secondary indexes concatenate sort keys and rely on
this (`collections.indexes.index_key`).
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from decimal import Decimal
from typing import Any

import xxhash

from ..errors import ValidationError

_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_I64 = struct.Struct(">q")


def _is_nan(value: Any) -> bool:
    if type(value) is float:
        return bool(value != value)
    if type(value) is Decimal:
        return value.is_nan()
    return False


def sort_key(value: Any) -> tuple[Any, ...]:
    """The key that orders `value` among keys of every storable type.

    Raises:
        ValidationError: the value cannot be a key (a list, a dict, ...).
    """
    kind = type(value)
    if kind is str:
        return (3, value)
    if kind is int or kind is bool:
        return (1, value)
    if kind is float or kind is Decimal:
        return (2,) if _is_nan(value) else (1, value)
    if value is None:
        return (0,)
    if kind is bytes:
        return (4, value)
    if kind is tuple:
        return (5, tuple(sort_key(item) for item in value))
    if kind is dt.datetime:
        return (6, value) if value.tzinfo is None else (7, value)
    if kind is dt.date:
        return (8, value)
    if kind is dt.timedelta:
        return (9, value)
    if kind is uuid.UUID:
        return (10, value.int)
    plain = getattr(kind, "_pb_plain_value", None)
    if plain is not None:  # a Literal orders as the str or bytes it holds (they are ==)
        return sort_key(plain(value))
    own = getattr(value, "_pb_sort_key", None)
    if own is not None:
        return (11, *own())
    raise ValidationError(
        f"a value of type {kind.__qualname__} cannot be a key or set element: "
        "use None, numbers, str, bytes, tuples, dates and times, UUID or DBObject"
    )


def canonical_bytes(value: Any) -> bytes:
    """Bytes equal for values that compare equal; the input of `stable_hash`."""
    kind = type(value)
    if kind is str:
        return b"\x03" + value.encode("utf-8", "surrogatepass")
    if kind is int or kind is bool or kind is float or kind is Decimal:
        if _is_nan(value):
            return b"\x02"
        # Python's numeric hash is deterministic and equal for equal numbers
        # of different types (1 == 1.0 == Decimal(1)).
        return b"\x01" + _I64.pack(hash(value))
    if value is None:
        return b"\x00"
    if kind is bytes:
        return b"\x04" + value
    if kind is tuple:
        parts = [b"\x05"]
        for item in value:
            encoded = canonical_bytes(item)
            parts.append(_I64.pack(len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    if kind is dt.datetime:
        if value.tzinfo is None:
            return b"\x06" + value.isoformat().encode()
        delta = value - _EPOCH_UTC
        return b"\x07" + repr((delta.days, delta.seconds, delta.microseconds)).encode()
    if kind is dt.date:
        return b"\x08" + value.isoformat().encode()
    if kind is dt.timedelta:
        return b"\x09" + repr((value.days, value.seconds, value.microseconds)).encode()
    if kind is uuid.UUID:
        return b"\x0a" + value.bytes
    plain = getattr(kind, "_pb_plain_value", None)
    if plain is not None:  # a Literal hashes as the str or bytes it holds
        return canonical_bytes(plain(value))
    own = getattr(value, "_pb_canonical_bytes", None)
    if own is not None:
        return b"\x0b" + bytes(own())
    sort_key(value)  # raises the ValidationError that names the type
    raise AssertionError("unreachable")


def stable_hash(value: Any) -> int:
    """A 64-bit hash of `value`, the same in every process."""
    return int(xxhash.xxh3_64_intdigest(canonical_bytes(value)))


def hash_key(value: Any) -> tuple[Any, ...]:
    """The order of hash-ordered collections: by stable hash, ties by value."""
    return (stable_hash(value), sort_key(value))
