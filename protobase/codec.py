"""msgpack encoding of stored values and atom pointers.

Plain Python values round-trip exactly, with their type: None, bool, int of
any size, float, str, bytes, datetime (naive, fixed-offset or zoneinfo),
date, timedelta, Decimal, UUID, tuple, list and dict (keys of any storable
hashable type). Anything else raises `ValidationError` naming the type.

msgpack extension codes (the stored format; never renumber)::

    0  AtomPointer   16-byte transaction id + uint32 index, big-endian
    1  int           beyond 64 bits: two's-complement bytes, big-endian
    2  tuple         packed list of the items
    3  datetime      [y, mo, d, h, mi, s, us, fold, tz]; tz is nil,
                     [0, offset_seconds, offset_microseconds, name|nil] or [1, zone key]
    4  date          [y, mo, d]
    5  timedelta     [days, seconds, microseconds]
    6  Decimal       str(value)
    7  UUID          16 bytes
    32..127          reserved for the object layer (`ExtensionHooks`)

Decoding never returns garbage: truncated input, trailing bytes, an unknown
extension code or a malformed extension payload raise `CorruptionError`.

`bytearray` and `memoryview` are written as bytes by msgpack itself (they
would load as `bytes`); the object layer refuses them where values enter
(`protobase.values.storable`), so they never reach the codec from there.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
import uuid
import zoneinfo
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol

import msgpack

from .atoms import TRANSACTION_ID_BYTES, AtomPointer
from .errors import CorruptionError, ProtoBaseException, ValidationError

EXT_POINTER = 0
EXT_BIGINT = 1
EXT_TUPLE = 2
EXT_DATETIME = 3
EXT_DATE = 4
EXT_TIMEDELTA = 5
EXT_DECIMAL = 6
EXT_UUID = 7
FIRST_OBJECT_EXT = 32
LAST_OBJECT_EXT = 127

POINTER_STRUCT = struct.Struct(">16sI")
_POINTER = POINTER_STRUCT

PLAIN_SCALAR_TYPES: frozenset[type] = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        str,
        bytes,
        dt.datetime,
        dt.date,
        dt.timedelta,
        Decimal,
        uuid.UUID,
    }
)
"""Scalar types the codec stores by itself (containers: tuple, list, dict)."""


class ExtensionHooks(Protocol):
    """How the object layer adds its own types to the codec.

    `encode_extension` returns ``(code, plain)`` for a value it owns, where
    `plain` is any encodable value, or None when the value is not its own.
    `decode_extension` turns ``(code, plain)`` back into the value.
    """

    def encode_extension(self, value: Any) -> tuple[int, Any] | None: ...

    def decode_extension(self, code: int, plain: Any) -> Any: ...


def encode_pointer(pointer: AtomPointer) -> bytes:
    transaction_id, index = pointer
    if type(transaction_id) is not bytes or len(transaction_id) != TRANSACTION_ID_BYTES:
        raise ValidationError(f"an atom pointer needs a 16-byte transaction id, not {pointer!r}")
    if type(index) is not int or not 0 <= index < 2**32:
        raise ValidationError(f"an atom pointer index is an int in [0, 2**32), not {index!r}")
    return _POINTER.pack(transaction_id, index)


def decode_pointer(data: bytes) -> AtomPointer:
    if len(data) != _POINTER.size:
        raise CorruptionError(
            f"atom pointer payload has {len(data)} bytes, expected {_POINTER.size}"
        )
    transaction_id, index = _POINTER.unpack(data)
    return AtomPointer(transaction_id, index)


def _encode_tz(tz: dt.tzinfo) -> list[Any]:
    if isinstance(tz, zoneinfo.ZoneInfo) and tz.key is not None:
        return [1, tz.key]
    if isinstance(tz, dt.timezone):
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        default_name = dt.timezone(offset).tzname(None)
        return [
            0,
            offset.days * 86400 + offset.seconds,
            offset.microseconds,
            None if name == default_name else name,
        ]
    raise ValidationError(
        f"cannot store a datetime with tzinfo of type {type(tz).__name__}: "
        "use datetime.timezone or zoneinfo.ZoneInfo"
    )


def _decode_tz(spec: Any) -> dt.tzinfo | None:
    if spec is None:
        return None
    if spec[0] == 1:
        return zoneinfo.ZoneInfo(spec[1])
    if spec[0] == 0:
        offset = dt.timedelta(seconds=spec[1], microseconds=spec[2])
        return dt.timezone(offset) if spec[3] is None else dt.timezone(offset, spec[3])
    raise CorruptionError(f"unknown timezone tag {spec[0]!r} in a stored datetime")


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    """An ExtType built without its constructor's checks.

    ``ExtType.__new__`` validates code and data in Python (two frames, most
    of the cost of a small extension); ours are valid by construction.
    """
    return _tuple_new(msgpack.ExtType, (code, data))


_tuple_new = tuple.__new__


class _Encoder:
    """A msgpack Packer with our `default` callback, borrowed from a pool.

    Extension payloads are packed from inside the callback, so packing nests:
    each level borrows an encoder of its own. Building a Packer costs more
    than packing a small value, so encoders are reused process-wide; list
    pop and append are atomic, so two threads never hold one encoder. While
    borrowed, `hooks` is the borrowing codec's object-layer hooks.
    """

    __slots__ = ("hooks", "packer")

    def __init__(self) -> None:
        self.hooks: ExtensionHooks | None = None
        self.packer = msgpack.Packer(default=self.default, use_bin_type=True, strict_types=True)

    def default(self, value: Any) -> msgpack.ExtType:
        kind = type(value)
        if kind is int:
            size = (value.bit_length() + 8) // 8
            return _ext(EXT_BIGINT, value.to_bytes(size, "big", signed=True))
        if kind is tuple:
            return _ext(EXT_TUPLE, _pack(list(value), self.hooks))
        if kind is AtomPointer:
            return _ext(EXT_POINTER, encode_pointer(value))
        if kind is dt.datetime:
            tz = None if value.tzinfo is None else _encode_tz(value.tzinfo)
            fields = [
                value.year,
                value.month,
                value.day,
                value.hour,
                value.minute,
                value.second,
                value.microsecond,
                value.fold,
                tz,
            ]
            return _ext(EXT_DATETIME, _pack(fields, None))
        if kind is dt.date:
            return _ext(EXT_DATE, _pack([value.year, value.month, value.day], None))
        if kind is dt.timedelta:
            return _ext(EXT_TIMEDELTA, _pack([value.days, value.seconds, value.microseconds], None))
        if kind is Decimal:
            return _ext(EXT_DECIMAL, str(value).encode("ascii"))
        if kind is uuid.UUID:
            return _ext(EXT_UUID, value.bytes)
        hooks = self.hooks
        if hooks is not None:
            owned = hooks.encode_extension(value)
            if owned is not None:
                code, plain = owned
                return _ext(code, _pack(plain, hooks))
        raise ValidationError(
            f"cannot store a value of type {kind.__module__}.{kind.__qualname__}: "
            "store plain values (None, bool, int, float, str, bytes, datetime, date, "
            "timedelta, Decimal, UUID, tuple, list, dict), DBObject, MutableObject "
            "or ProtoBase collections"
        )


_encoders: list[_Encoder] = []


def _pack(value: Any, hooks: ExtensionHooks | None) -> bytes:
    """Pack `value` with a borrowed encoder (msgpack resets it on failure)."""
    encoder = _encoders.pop() if _encoders else _Encoder()
    encoder.hooks = hooks
    try:
        return encoder.packer.pack(value)
    finally:
        encoder.hooks = None
        _encoders.append(encoder)


# msgpack itself turns extension -1 of 4, 8 or 12 bytes into a Timestamp and
# offers no way to switch that off. We never write extension -1, so stored data
# holding one is damaged. Only these headers can produce a Timestamp; data
# without them decodes on the fast path, data with them (possibly by chance,
# inside a string or a pointer) decodes with hooks that reject a Timestamp.
_TIMESTAMP_HEADER = re.compile(
    rb"[\xd6\xd7]\xff|\xc7[\x04\x08\x0c]\xff|\xc8\x00[\x04\x08\x0c]\xff"
    rb"|\xc9\x00\x00\x00[\x04\x08\x0c]\xff"
)


def _may_hold_timestamp(data: bytes) -> bool:
    # Every header ends with the type byte 0xff (-1): look only where one is
    # (a C-speed find; most data holds no 0xff at all).
    at = data.find(b"\xff")
    while at >= 0:
        if _TIMESTAMP_HEADER.search(data, max(at - 5, 0), at + 1) is not None:
            return True
        at = data.find(b"\xff", at + 1)
    return False


def _no_timestamp(value: Any) -> None:
    if type(value) is msgpack.Timestamp:
        raise CorruptionError("stored data holds a msgpack timestamp, which ProtoBase never writes")


def _checked_list(items: list[Any]) -> list[Any]:
    for item in items:
        _no_timestamp(item)
    return items


def _checked_map(mapping: dict[Any, Any]) -> dict[Any, Any]:
    for key, item in mapping.items():
        _no_timestamp(key)
        _no_timestamp(item)
    return mapping


def _unpack_fast(data: bytes, ext_hook: Callable[[int, bytes], Any]) -> Any:
    return msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)


def _unpack_checked(data: bytes, ext_hook: Callable[[int, bytes], Any]) -> Any:
    value = msgpack.unpackb(
        data,
        ext_hook=ext_hook,
        raw=False,
        strict_map_key=False,
        list_hook=_checked_list,
        object_hook=_checked_map,
    )
    _no_timestamp(value)
    return value


def _check_ints(fields: Any, count: int, what: str) -> None:
    """The first `count` fields of an extension are plain ints (not bools, not floats)."""
    if type(fields) is not list or len(fields) < count:
        raise CorruptionError(f"{what} extension does not hold its fields")
    if any(type(field) is not int for field in fields[:count]):
        raise CorruptionError(f"{what} extension holds a field that is not an integer")


class _HookSource(Protocol):
    hooks: ExtensionHooks | None


def _make_ext_hook(source: _HookSource, checked: bool) -> Callable[[int, bytes], Any]:
    """The ext hook of one decoding path; nested payloads stay on the same path.

    An extension payload is a slice of the data being decoded, so when the
    whole data holds no timestamp header (the fast path), neither does it.
    The object-layer hooks are read from `source` at each call, so one hook
    serves every decoding that borrows its source (see `decode_with`).
    """
    unpacker = _unpack_checked if checked else _unpack_fast

    def unpack(data: bytes) -> Any:
        return unpacker(data, ext_hook)

    def ext_hook(code: int, data: bytes) -> Any:
        if code == EXT_POINTER:
            return decode_pointer(data)
        if code == EXT_BIGINT:
            if not data:
                raise CorruptionError("big integer extension is empty")
            return int.from_bytes(data, "big", signed=True)
        if code == EXT_TUPLE:
            items = unpack(data)
            if type(items) is not list:
                raise CorruptionError("tuple extension does not hold a list")
            return tuple(items)
        if code == EXT_DATETIME:
            fields = unpack(data)
            _check_ints(fields, 8, "datetime")
            y, mo, d, h, mi, s, us, fold, tz = fields
            return dt.datetime(y, mo, d, h, mi, s, us, tzinfo=_decode_tz(tz), fold=fold)
        if code == EXT_DATE:
            fields = unpack(data)
            _check_ints(fields, 3, "date")
            y, mo, d = fields
            return dt.date(y, mo, d)
        if code == EXT_TIMEDELTA:
            fields = unpack(data)
            _check_ints(fields, 3, "timedelta")
            days, seconds, micros = fields
            return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
        if code == EXT_DECIMAL:
            text = data.decode("ascii")
            value = Decimal(text)
            if str(value) != text:
                raise CorruptionError(f"Decimal extension {text!r} is not in canonical form")
            return value
        if code == EXT_UUID:
            if len(data) != 16:
                raise CorruptionError(f"UUID extension has {len(data)} bytes, expected 16")
            return uuid.UUID(bytes=data)
        hooks = source.hooks
        if hooks is not None and FIRST_OBJECT_EXT <= code <= LAST_OBJECT_EXT:
            return hooks.decode_extension(code, unpack(data))
        raise CorruptionError(f"unknown msgpack extension code {code} in stored data")

    return ext_hook


class Codec:
    """Encodes and decodes stored values, with optional object-layer hooks.

    A Codec is safe to share between threads. Its ext hooks refer to each
    other (a cycle only the garbage collector frees), so a Codec is meant
    to live long; code that decodes for a short-lived object uses
    `decode_with` and `encode_with`, which borrow pooled ones.
    """

    def __init__(self, hooks: ExtensionHooks | None = None) -> None:
        self.hooks = hooks
        self._fast_ext_hook = _make_ext_hook(self, checked=False)
        self._checked_ext_hook: Callable[[int, bytes], Any] | None = None  # built on first use

    def encode(self, value: Any) -> bytes:
        """Encode `value`; raises `ValidationError` for an unstorable type."""
        return encode_with(value, self.hooks)

    def decode(self, data: bytes) -> Any:
        """Decode one value; raises `CorruptionError` on any malformed input."""
        try:
            if _may_hold_timestamp(data):
                if self._checked_ext_hook is None:
                    self._checked_ext_hook = _make_ext_hook(self, checked=True)
                return _unpack_checked(data, self._checked_ext_hook)
            return _unpack_fast(data, self._fast_ext_hook)
        except ProtoBaseException:
            raise
        except (
            ArithmeticError,
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            UnicodeDecodeError,
            zoneinfo.ZoneInfoNotFoundError,
            msgpack.UnpackException,
            RecursionError,
        ) as exc:
            raise CorruptionError(
                f"stored data does not decode: {type(exc).__name__}: {exc}"
            ) from exc


def encode_with(value: Any, hooks: ExtensionHooks | None) -> bytes:
    """Encode `value` with the object layer's `hooks` (no Codec object needed).

    Raises `ValidationError` for an unstorable type.
    """
    try:
        return _pack(value, hooks)
    except (ValueError, OverflowError, RecursionError) as exc:
        # msgpack refuses e.g. a dict nested deeper than its limit.
        raise ValidationError(f"cannot encode value: {exc}") from exc


_decoders: list[Codec] = []


def decode_with(data: bytes, hooks: ExtensionHooks) -> Any:
    """Decode one value with the object layer's `hooks`, through a pooled Codec.

    Raises `CorruptionError` on any malformed input. The pool (list pop and
    append are atomic) lets a short-lived reader decode without building
    a Codec, whose hooks would tie it into a reference cycle.
    """
    codec = _decoders.pop() if _decoders else Codec()
    codec.hooks = hooks
    try:
        return codec.decode(data)
    finally:
        codec.hooks = None
        _decoders.append(codec)


_plain = Codec()


def encode(value: Any) -> bytes:
    """Encode a plain value (no object-layer types)."""
    return _plain.encode(value)


def decode(data: bytes) -> Any:
    """Decode a plain value (no object-layer types)."""
    return _plain.decode(data)
