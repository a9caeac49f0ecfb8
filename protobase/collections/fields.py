"""Field paths: how queries and indexes read a named field of a row.

A path is a tuple of names, written dotted (``"address.city"``). Each step
reads one name from the current value:

- a plain ``dict``: the item under that key;
- a value whose class defines ``_pb_field(name)`` (DBObject, MutableObject,
  Dictionary, HashDictionary, query rows): what that returns;
- anything else (numbers, strings, lists, ...): nothing.

A step that finds nothing ends the path with None: missing and None are the
same to a query (SQL's NULL). A Literal at the end of a path reads as its
str or bytes value.

Indexes need rows that cannot change behind the collection's back, so
`index_path_value` refuses a path that reads an attribute of a MutableObject
(whose attributes change in place). A MutableObject as the *value* of a
field is fine: it is indexed by its identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import QueryError, ValidationError

Path = tuple[str, ...]


def parse_path(field: Any) -> Path:
    """A path from a dotted string or a sequence of names.

    Raises:
        QueryError: the field is not a non-empty dotted name.
    """
    if isinstance(field, str):
        parts = tuple(field.split("."))
    elif isinstance(field, (tuple, list)) and all(isinstance(p, str) for p in field):
        parts = tuple(field)
    else:
        raise QueryError(f"a field is a dotted name like 'address.city', not {field!r}")
    if not parts or any(not part for part in parts):
        raise QueryError(f"field {field!r} has an empty name in its path")
    return parts


def path_text(path: Path) -> str:
    return ".".join(path)


def read_field(value: Any, name: str) -> Any:
    """One step of a path (see the module docstring); None when absent."""
    if type(value) is dict:
        return value.get(name)
    reader = getattr(type(value), "_pb_field", None)
    if reader is None:
        return None
    return reader(value, name)


def read_path(value: Any, path: Path) -> Any:
    """The value at `path` in `value`; None when any step finds nothing."""
    for name in path:
        if value is None:
            return None
        kind = type(value)
        if kind is dict:
            value = value.get(name)
            continue
        reader = getattr(kind, "_pb_field", None)
        value = None if reader is None else reader(value, name)
    unwrap = getattr(type(value), "_pb_plain_value", None)
    return value if unwrap is None else unwrap(value)


def index_path_value(value: Any, path: Path) -> Any:
    """`read_path` for an index: refuses to read through a MutableObject.

    Raises:
        ValidationError: a step reads an attribute of a MutableObject.
    """
    for name in path:
        if value is None:
            return None
        if getattr(type(value), "_pb_changes_in_place", False):
            raise ValidationError(
                f"cannot index field {path_text(path)!r}: it reads attribute {name!r} of a "
                f"{type(value).__qualname__}, a MutableObject whose attributes change in place "
                "without the collection knowing. Index collections of DBObjects or plain "
                "values, or query this one without an index."
            )
        value = read_field(value, name)
    unwrap = getattr(type(value), "_pb_plain_value", None)
    return value if unwrap is None else unwrap(value)


_PLAIN_RESULTS = frozenset({type(None), bool, int, float, str, bytes, tuple})
"""Field values that are never a Literal to unwrap."""


def index_field_reader(path: Path) -> Callable[[Any], Any]:
    """`index_path_value` for `path` as one function, for reading every row of a build.

    A one-step path learns, once per row type, how that type reads the
    field; every other path (and any type that refuses) goes through
    `index_path_value`, which raises its errors.
    """
    if len(path) != 1:
        return lambda row: index_path_value(row, path)
    name = path[0]
    steps: dict[type, Callable[[Any], Any] | None] = {}

    def read(row: Any) -> Any:
        kind = type(row)
        if kind is dict:
            value = row.get(name)
        else:
            try:
                step = steps[kind]
            except KeyError:
                step = steps[kind] = _one_step(kind, name)
            if step is None:
                return index_path_value(row, path)
            value = step(row)
        if type(value) in _PLAIN_RESULTS:
            return value
        unwrap = getattr(type(value), "_pb_plain_value", None)
        return value if unwrap is None else unwrap(value)

    return read


def _one_step(kind: type, name: str) -> Callable[[Any], Any] | None:
    """How rows of `kind` read field `name`; None when `index_path_value` must decide."""
    if kind is type(None) or getattr(kind, "_pb_changes_in_place", False):
        return None
    getter = getattr(kind, "_pb_field_getter", None)
    if getter is not None:
        return getter(name)
    field = getattr(kind, "_pb_field", None)
    if field is None:
        return lambda row: None
    return lambda row: field(row, name)
