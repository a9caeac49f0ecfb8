"""Stored objects: immutable `DBObject`, identity-bearing `MutableObject`, `Literal`.

- A `DBObject` is a value: its attributes are fixed at construction, equal
  objects are interchangeable, and it is stored inline inside whatever atom
  holds it. `_setattr` returns a new object of the same class.
- A `MutableObject` has identity (a 128-bit object id) and mutable attributes,
  like a ZODB persistent object. Its state lives in its database's object
  table, keyed by object id; references to it store only the id. Inside a
  transaction an object id maps to exactly one Python object.
- A `Literal` boxes a large str or bytes value into an atom of its own, so the
  collection nodes that refer to it stay small; it loads on first use.

Classes are stored by registered name (`protobase.registry.registry`; default
``module.QualName``). A stored name that can no longer be imported loads as
`UnknownObject` (or `UnknownMutableObject`) with a warning, keeping its
attributes and its stored name so that it is written back unchanged.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from .atoms import AtomPointer
from .collections.ordering import canonical_bytes, sort_key
from .errors import ImmutableObjectError, TransactionClosedError, ValidationError
from .registry import registry
from .values import NO_CHECK_TYPES, Storable, needs_check, same_value, storable

if TYPE_CHECKING:
    from typing import Self

OBJECT_ID_BYTES = 16

unbound_objects: weakref.WeakSet[MutableObject] = weakref.WeakSet()
"""MutableObjects created outside any transaction and not yet stored.

A commit walks its new values for such objects only while this set is
non-empty, so programs that never create MutableObjects never pay for it.
"""


def register_class(
    name: str | None = None, aliases: tuple[str, ...] = ()
) -> Callable[[type], type]:
    """Class decorator: store the class under `name`, also loading old `aliases`.

    Use it when a class is renamed or moved: register the new class with the
    old stored name as an alias (or keep the old name as `name`).
    """

    def decorate(cls: type) -> type:
        registry.register(cls, name, aliases)
        return cls

    return decorate


def class_name(obj: Any) -> str:
    """The name an object's class is stored under."""
    kind = type(obj)
    if kind is UnknownObject or kind is UnknownMutableObject:
        return obj._pb_stored_name
    return registry.name_of(kind)


C = TypeVar("C")


def resolve_class(name: str, base: type[C]) -> type[C] | None:
    """The registered class for `name` if it derives from `base`; None otherwise."""
    cls = registry.lookup(name)
    if cls is None or not issubclass(cls, base):
        warnings.warn(
            f"stored class {name!r} cannot be imported (or is not a {base.__name__}); "
            f"loading it as a generic {base.__name__}. Register the class or an alias "
            "with protobase.register_class to load it as its own type.",
            stacklevel=4,
        )
        return None
    return cls  # a subclass of base, checked above


def _attributes_repr(attrs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in attrs.items())


class DBObject(Storable):
    """An immutable value object with free-form attributes.

    ``Person(name="Ann")`` stores ``name``; any attribute never set reads as
    None. Objects are immutable: ``p = p._setattr("age", 31)`` gives the
    changed copy; the original never changes.
    """

    __slots__ = ("_attrs",)
    _attrs: dict[str, Any]

    def __init__(self, **attrs: Any) -> None:
        for name, value in attrs.items():
            if type(value) not in NO_CHECK_TYPES and needs_check(value):
                attrs[name] = storable(value, f"attribute {name!r} of {type(self).__qualname__}")
        object.__setattr__(self, "_attrs", attrs)

    @classmethod
    def _pb_from_state(cls, attrs: dict[str, Any]) -> Self:
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_attrs", attrs)
        return obj

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_attrs":
            raise AttributeError(name)
        return self._attrs.get(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise ImmutableObjectError(
            f"{type(self).__qualname__} objects are immutable: use "
            f"`obj = obj._setattr({name!r}, value)` to get an updated copy, "
            "or subclass MutableObject for objects changed in place"
        )

    def __delattr__(self, name: str) -> None:
        raise ImmutableObjectError(
            f"{type(self).__qualname__} objects are immutable: use "
            f"`obj = obj._delattr({name!r})` to get a copy without it"
        )

    def _setattr(self, name: str, value: Any) -> Self:
        """A copy of this object with attribute `name` set to `value`."""
        value = storable(value, f"attribute {name!r} of {type(self).__qualname__}")
        return self._pb_from_state({**self._attrs, name: value})

    def _delattr(self, name: str) -> Self:
        """A copy of this object without attribute `name`."""
        attrs = dict(self._attrs)
        attrs.pop(name, None)
        return self._pb_from_state(attrs)

    def _update(self, **changes: Any) -> Self:
        """A copy of this object with several attributes changed."""
        cls = type(self).__qualname__
        checked = {
            name: storable(value, f"attribute {name!r} of {cls}") for name, value in changes.items()
        }
        return self._pb_from_state({**self._attrs, **checked})

    def has_defined_attr(self, name: str) -> bool:
        """True when attribute `name` was set (even to None)."""
        return name in self._attrs

    def _pb_field(self, name: str) -> Any:
        """A stored attribute for query paths (collections.fields); None if unset."""
        return self._attrs.get(name)

    @classmethod
    def _pb_field_getter(cls, name: str) -> Callable[[DBObject], Any]:
        """`_pb_field` of `name` as one function, for reading many rows (index builds)."""
        return lambda obj: obj._attrs.get(name)

    def attributes(self) -> dict[str, Any]:
        """A copy of the attributes as a dict."""
        return dict(self._attrs)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return class_name(self) == class_name(other) and self._attrs == other._attrs

    def __hash__(self) -> int:
        return hash(canonical_bytes(self))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({_attributes_repr(self._attrs)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_dbobject, (type(self), self._attrs))

    # -- ordering, hashing and merge equality (see collections.ordering) --------

    def _pb_sort_key(self) -> tuple[Any, ...]:
        return (class_name(self), tuple(sorted((k, sort_key(v)) for k, v in self._attrs.items())))

    def _pb_canonical_bytes(self) -> bytes:
        parts = [class_name(self).encode()]
        for name in sorted(self._attrs):
            parts.append(name.encode())
            parts.append(canonical_bytes(self._attrs[name]))
        return b"\x00".join(parts)

    def _pb_same_value(self, other: Any) -> bool:
        return (
            class_name(self) == class_name(other)
            and self._attrs.keys() == other._attrs.keys()
            and all(same_value(v, other._attrs[k]) for k, v in self._attrs.items())
        )


def _rebuild_dbobject(cls: type[DBObject], attrs: dict[str, Any]) -> DBObject:
    return cls._pb_from_state(attrs)


class UnknownObject(DBObject):
    """A stored DBObject whose class cannot be imported; keeps its stored name."""

    __slots__ = ("_pb_stored_name",)

    @classmethod
    def _pb_with_name(cls, stored_name: str, attrs: dict[str, Any]) -> UnknownObject:
        obj = cls._pb_from_state(attrs)
        object.__setattr__(obj, "_pb_stored_name", stored_name)
        return obj

    def _pb_from_state_like(self, attrs: dict[str, Any]) -> UnknownObject:
        return UnknownObject._pb_with_name(self._pb_stored_name, attrs)

    def _setattr(self, name: str, value: Any) -> UnknownObject:
        value = storable(value, f"attribute {name!r} of {self._pb_stored_name}")
        return self._pb_from_state_like({**self._attrs, name: value})

    def __repr__(self) -> str:
        return f"UnknownObject[{self._pb_stored_name}]({_attributes_repr(self._attrs)})"


class ObjectContext(Protocol):
    """What a MutableObject needs from the transaction that loaded it."""

    def load_mutable_state(self, obj: MutableObject) -> dict[str, Any]:
        """The stored attributes of `obj` (a fresh dict the object may change)."""
        ...

    def note_mutation(self, obj: MutableObject) -> None:
        """Record that `obj` changed; raises when the transaction cannot write."""
        ...


class MutableObject(Storable):
    """An object with identity whose attributes change in place.

    Changes made inside a transaction are stored when it commits. An object
    belongs to the transaction that loaded (or first stored) it; touching it
    after that transaction ended raises `TransactionClosedError`.
    """

    __slots__ = ("__weakref__", "_pb_attrs", "_pb_context", "_pb_oid")
    _pb_slots: ClassVar[frozenset[str]] = frozenset(
        {"_pb_attrs", "_pb_context", "_pb_oid", "_pb_stored_name"}
    )

    _pb_oid: bytes
    _pb_attrs: dict[str, Any] | None
    _pb_context: ObjectContext | None

    def __init__(self, **attrs: Any) -> None:
        cls = type(self).__qualname__
        checked = {
            name: storable(value, f"attribute {name!r} of {cls}") for name, value in attrs.items()
        }
        object.__setattr__(self, "_pb_oid", os.urandom(OBJECT_ID_BYTES))
        object.__setattr__(self, "_pb_attrs", checked)
        object.__setattr__(self, "_pb_context", None)
        unbound_objects.add(self)

    @classmethod
    def _pb_ghost(cls, oid: bytes, context: ObjectContext) -> Self:
        """An object whose state loads from `context` on first use."""
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_pb_oid", oid)
        object.__setattr__(obj, "_pb_attrs", None)
        object.__setattr__(obj, "_pb_context", context)
        return obj

    @property
    def object_id(self) -> bytes:
        """The stable 128-bit identity of this object."""
        return self._pb_oid

    def _pb_state(self) -> dict[str, Any]:
        attrs = self._pb_attrs
        if attrs is None:
            context = self._pb_context
            if context is None:
                raise TransactionClosedError("object state is not loaded and has no transaction")
            attrs = context.load_mutable_state(self)
            object.__setattr__(self, "_pb_attrs", attrs)
        return attrs

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in MutableObject._pb_slots:
            raise AttributeError(name)
        return self._pb_state().get(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in MutableObject._pb_slots:
            raise AttributeError(f"{name} is managed by ProtoBase")
        value = storable(value, f"attribute {name!r} of {type(self).__qualname__}")
        state = self._pb_state()
        if self._pb_context is not None:
            self._pb_context.note_mutation(self)
        state[name] = value

    def __delattr__(self, name: str) -> None:
        state = self._pb_state()
        if self._pb_context is not None:
            self._pb_context.note_mutation(self)
        state.pop(name, None)

    def has_defined_attr(self, name: str) -> bool:
        return name in self._pb_state()

    _pb_changes_in_place: ClassVar[bool] = True
    """Indexes refuse to read attributes of such objects (collections.fields)."""

    def _pb_field(self, name: str) -> Any:
        return self._pb_state().get(name)

    def attributes(self) -> dict[str, Any]:
        return dict(self._pb_state())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MutableObject):
            return NotImplemented
        return self._pb_oid == other._pb_oid

    def __hash__(self) -> int:
        return hash(self._pb_oid)

    def __repr__(self) -> str:
        if self._pb_attrs is None:
            return f"<{type(self).__qualname__} {self._pb_oid.hex()[:12]} (not loaded)>"
        return f"{type(self).__qualname__}({_attributes_repr(self._pb_attrs)})"

    def _pb_sort_key(self) -> tuple[Any, ...]:
        return ("\x00mutable", self._pb_oid)

    def _pb_canonical_bytes(self) -> bytes:
        return b"\x01" + self._pb_oid

    def _pb_same_value(self, other: Any) -> bool:
        return self._pb_oid == other._pb_oid


class UnknownMutableObject(MutableObject):
    """A stored MutableObject whose class cannot be imported."""

    __slots__ = ("_pb_stored_name",)


class Literal(Storable):
    """A str or bytes value stored in an atom of its own and loaded on first use.

    Compare and hash like the value; ``str(lit)`` / ``lit.value`` give it.
    """

    __slots__ = ("_loader", "_origin", "_pointer", "_value")

    def __init__(self, value: str | bytes) -> None:
        if type(value) not in (str, bytes):
            raise ValidationError(f"Literal holds str or bytes, not {type(value).__qualname__}")
        self._value: str | bytes | None = value
        self._pointer: AtomPointer | None = None
        self._origin: object | None = None
        self._loader: Callable[[AtomPointer], Any] | None = None

    @classmethod
    def _pb_stored(
        cls, pointer: AtomPointer, loader: Callable[[AtomPointer], Any], origin: object
    ) -> Literal:
        lit = cls.__new__(cls)
        lit._value = None
        lit._pointer = pointer
        lit._origin = origin
        lit._loader = loader
        return lit

    @property
    def value(self) -> str | bytes:
        if self._value is None:
            assert self._loader is not None and self._pointer is not None
            loaded = self._loader(self._pointer)
            if type(loaded) not in (str, bytes):
                raise ValidationError(f"atom {self._pointer} does not hold a literal")
            self._value = loaded
        return self._value

    def __str__(self) -> str:
        value = self.value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")

    def _pb_plain_value(self) -> str | bytes:
        """What a query path reads: the str or bytes value."""
        return self.value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Literal):
            return self.value == other.value
        return self.value == other

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"Literal({self.value!r})"

    def _pb_same_value(self, other: Any) -> bool:
        if self._pointer is not None and self._pointer == other._pointer:
            return True
        return self.value == other.value
