"""The codec round-trips plain values with their exact type and rejects corrupt input.

Also covers atom framing (`frame_atom` / `unframe_atom`): the checksum catches
every single-bit flip and every truncation.
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import math
import uuid
import zoneinfo
from decimal import Decimal
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protobase import AtomPointer, CorruptionError, ValidationError
from protobase.atoms import HEADER_SIZE, frame_atom, new_transaction_id, unframe_atom
from protobase.codec import decode, encode

MADRID = zoneinfo.ZoneInfo("Europe/Madrid")
IST = dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")


# --------------------------------------------------------------------------
# Exact comparison
# --------------------------------------------------------------------------


def _tz_identity(tz: dt.tzinfo | None) -> tuple[Any, ...] | None:
    if tz is None:
        return None
    if isinstance(tz, zoneinfo.ZoneInfo):
        return (type(tz), tz.key)
    return (type(tz), tz.utcoffset(None), tz.tzname(None))


def mismatch(expected: Any, actual: Any, path: str = "value") -> str | None:
    """Describe the first difference between two values, or None when they are identical.

    Types must be identical at every level (tuple is not list, bool is not int),
    nan equals nan, -0.0 differs from 0.0, Decimal compares by representation,
    datetimes compare by wall time, fold and time zone (key, offset and name),
    and dicts compare item by item in order.
    """
    if type(expected) is not type(actual):
        return f"{path}: got {type(actual).__name__} {actual!r}, expected {type(expected).__name__}"
    if isinstance(expected, float):
        if math.isnan(expected):
            same = math.isnan(actual)
        else:
            same = expected == actual and math.copysign(1, expected) == math.copysign(1, actual)
    elif isinstance(expected, Decimal):
        same = expected.as_tuple() == actual.as_tuple()
    elif isinstance(expected, dt.datetime):
        same = (
            expected.replace(tzinfo=None) == actual.replace(tzinfo=None)
            and expected.fold == actual.fold
            and _tz_identity(expected.tzinfo) == _tz_identity(actual.tzinfo)
        )
    elif isinstance(expected, (list, tuple)):
        if len(expected) != len(actual):
            return f"{path}: length {len(actual)}, expected {len(expected)}"
        for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
            found = mismatch(want, got, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    elif isinstance(expected, dict):
        if len(expected) != len(actual):
            return f"{path}: {len(actual)} items, expected {len(expected)}"
        pairs = zip(expected.items(), actual.items(), strict=True)
        for i, ((want_key, want), (got_key, got)) in enumerate(pairs):
            found = mismatch(want_key, got_key, f"{path}.<key {i}>")
            if found is None:
                found = mismatch(want, got, f"{path}[{want_key!r}]")
            if found is not None:
                return found
        return None
    else:
        same = expected == actual
    return None if same else f"{path}: got {actual!r}, expected {expected!r}"


def assert_round_trip(value: Any) -> None:
    decoded = decode(encode(value))
    problem = mismatch(value, decoded)
    assert problem is None, problem


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ([1], (1,)),
        ((1,), [1]),
        (1, True),
        (0.0, -0.0),
        (1.0, 1),
        (Decimal("1E+3"), Decimal("1000")),
        (Decimal("-0"), Decimal("0")),
        (dt.datetime(2021, 1, 1), dt.datetime(2021, 1, 1, fold=1)),
        (
            dt.datetime(2021, 1, 1, tzinfo=IST),
            dt.datetime(2021, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        ),
        (dt.datetime(2021, 1, 1, tzinfo=dt.UTC), dt.datetime(2021, 1, 1, 1, tzinfo=MADRID)),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        ({1: "x"}, {"1": "x"}),
        ([[(1,)]], [[[1]]]),
        ({"k": [1.0]}, {"k": [float("nan")]}),
    ],
)
def test_mismatch_helper_detects_differences(left: Any, right: Any) -> None:
    assert mismatch(left, right) is not None


def test_mismatch_helper_accepts_nan_and_identical_values() -> None:
    value = {"x": [float("nan"), (Decimal("NaN"), -0.0)], (1, "k"): dt.datetime(2020, 1, 1)}
    same = {"x": [float("nan"), (Decimal("NaN"), -0.0)], (1, "k"): dt.datetime(2020, 1, 1)}
    assert mismatch(value, same) is None


# --------------------------------------------------------------------------
# Round trips of explicit values
# --------------------------------------------------------------------------

INTS = [
    0,
    1,
    -1,
    127,
    -32,
    2**31,
    2**32,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    2**64 + 1,
    -(2**63),
    -(2**63) - 1,
    -(2**64),
    2**200,
    -(2**200),
    2**1000 + 12345,
]

FLOATS = [
    0.0,
    -0.0,
    1.5,
    -2.25,
    float("nan"),
    float("inf"),
    float("-inf"),
    5e-324,
    1.7976931348623157e308,
    0.1,
]

STRINGS = ["", "a", "héllo wörld", "日本語", "😀", "𝄞 music", "mixed 😀 é 日 \U0010ffff", "\x00nul"]

BYTES = [b"", b"\x00", b"\xff\xfe", bytes(range(256)), b"x" * 70000]

DATETIMES = [
    dt.datetime(2024, 2, 29, 13, 45, 7, 123456),
    dt.datetime(2024, 2, 29, 13, 45, 7, 123456, fold=1),
    dt.datetime.min,
    dt.datetime.max,
    dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC),
    dt.datetime(2024, 5, 1, 12, 0, tzinfo=IST),
    dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
    dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone(-dt.timedelta(hours=5, microseconds=1))),
    dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(0), "Zulu")),
    dt.datetime(2024, 7, 14, 9, 30, 15, 5, tzinfo=MADRID),
    dt.datetime(2024, 1, 14, 9, 30, tzinfo=MADRID),
    # 2021-10-31 02:30 happens twice in Madrid: fold selects the second one.
    dt.datetime(2021, 10, 31, 2, 30, tzinfo=MADRID),
    dt.datetime(2021, 10, 31, 2, 30, fold=1, tzinfo=MADRID),
    dt.datetime(2024, 5, 1, tzinfo=zoneinfo.ZoneInfo("America/St_Johns")),
]

DATES = [dt.date(2024, 2, 29), dt.date.min, dt.date.max, dt.date(1970, 1, 1)]

TIMEDELTAS = [
    dt.timedelta(0),
    dt.timedelta(days=3, seconds=5, microseconds=7),
    -dt.timedelta(microseconds=1),
    dt.timedelta(days=-5, hours=3),
    -dt.timedelta(days=400, seconds=1),
    dt.timedelta.max,
    dt.timedelta.min,
]

DECIMALS = [
    Decimal("0"),
    Decimal("-0"),
    Decimal("NaN"),
    Decimal("-NaN"),
    Decimal("sNaN"),
    Decimal("NaN123"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    Decimal("1E+3"),
    Decimal("1000"),
    Decimal("-1.000"),
    Decimal("1E-40"),
    Decimal("3.14159265358979323846264338327950288419716939937510582097494459230781640628"),
    Decimal("-12345678901234567890123456789012345678901234567890.1234567890"),
]

UUIDS = [
    uuid.UUID(int=0),
    uuid.UUID("12345678-1234-5678-9abc-def012345678"),
    uuid.UUID(int=2**128 - 1),
]

CONTAINERS = [
    (),
    [],
    {},
    (1,),
    [()],
    ((),),
    ([],),
    [[], ()],
    [(1, "a"), (2, "b")],
    ([1, 2], [3]),
    ([(1, [2, (3,)])],),
    {"a": 1, "b": [1, 2], "c": (3, 4)},
    {1: "one", -(2**70): "big", 0: None},
    {(1, 2): "pair", ("a", (b"b", ())): None, (): "empty"},
    {True: 1, None: 2, 1.5: 3, b"k": 4, "s": 5},
    {dt.date(2024, 1, 1): "date key", uuid.UUID(int=7): "uuid key"},
    {"nested": {"deeper": [{"deepest": (dt.timedelta(1), Decimal("1.10"))}]}},
    [None, True, 2**64, 1.25, "s", b"b", dt.date(2000, 1, 1), uuid.UUID(int=1)],
]

ROUND_TRIP_VALUES = [
    None,
    True,
    False,
    *INTS,
    *FLOATS,
    *STRINGS,
    *BYTES,
    *DATETIMES,
    *DATES,
    *TIMEDELTAS,
    *DECIMALS,
    *UUIDS,
    *CONTAINERS,
]


def _value_id(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=_value_id)
def test_plain_value_round_trips_with_its_type(value: Any) -> None:
    assert_round_trip(value)


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=_value_id)
def test_plain_value_round_trips_inside_containers(value: Any) -> None:
    assert_round_trip([value, (value,), {"k": value}])


def test_tuple_and_list_encode_differently() -> None:
    assert encode((1, 2)) != encode([1, 2])
    assert type(decode(encode((1, 2)))) is tuple
    assert type(decode(encode([1, 2]))) is list


def test_dict_keys_keep_their_types() -> None:
    decoded = decode(encode({1: "int", "1": "str", (1,): "tuple", 2**80: "bigint"}))
    assert [type(key) for key in decoded] == [int, str, tuple, int]
    assert decoded[1] == "int"
    assert decoded["1"] == "str"
    assert decoded[(1,)] == "tuple"
    assert decoded[2**80] == "bigint"


def test_zoneinfo_datetime_keeps_zone_and_fold() -> None:
    first = dt.datetime(2021, 10, 31, 2, 30, tzinfo=MADRID)
    second = first.replace(fold=1)
    decoded_first, decoded_second = decode(encode([first, second]))
    assert decoded_first.tzinfo.key == "Europe/Madrid"
    assert decoded_second.fold == 1
    assert decoded_first.utcoffset() == dt.timedelta(hours=2)
    assert decoded_second.utcoffset() == dt.timedelta(hours=1)


def test_fixed_offset_keeps_its_name() -> None:
    decoded = decode(encode(dt.datetime(2024, 5, 1, 12, tzinfo=IST)))
    assert decoded.tzname() == "IST"
    assert decoded.utcoffset() == dt.timedelta(hours=5, minutes=30)


def test_utc_decodes_as_utc() -> None:
    decoded = decode(encode(dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)))
    assert decoded.tzinfo == dt.UTC
    assert decoded.tzname() == "UTC"


@pytest.mark.parametrize(
    "pointer",
    [
        AtomPointer(bytes(16), 0),
        AtomPointer(b"\xff" * 16, 2**32 - 1),
        AtomPointer(new_transaction_id(), 17),
    ],
    ids=["zero", "max", "random"],
)
def test_atom_pointer_round_trips_as_itself(pointer: AtomPointer) -> None:
    decoded = decode(encode(pointer))
    assert type(decoded) is AtomPointer
    assert decoded == pointer
    nested = decode(encode({"child": [pointer, (pointer,)]}))
    assert type(nested["child"][0]) is AtomPointer
    assert type(nested["child"][1][0]) is AtomPointer
    assert nested["child"][1][0] == pointer


def test_atom_pointer_is_not_a_plain_tuple() -> None:
    pointer = AtomPointer(bytes(range(16)), 3)
    plain = tuple(pointer)
    assert encode(pointer) != encode(plain)
    assert type(decode(encode(plain))) is tuple


# --------------------------------------------------------------------------
# Property: recursive values round-trip exactly
# --------------------------------------------------------------------------

_offsets = st.timedeltas(
    min_value=-dt.timedelta(hours=23, minutes=59, seconds=59),
    max_value=dt.timedelta(hours=23, minutes=59, seconds=59),
)
_fixed_offset_zones = st.builds(dt.timezone, _offsets) | st.builds(
    dt.timezone, _offsets, st.text(max_size=8)
)
_zones = st.none() | st.just(dt.UTC) | _fixed_offset_zones | st.timezones()
_pointers = st.builds(AtomPointer, st.binary(min_size=16, max_size=16), st.integers(0, 2**32 - 1))

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(),
    st.datetimes(timezones=_zones),
    st.dates(),
    st.timedeltas(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.uuids(),
    _pointers,
)

_hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**100), max_value=2**100),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.dates(),
    st.uuids(),
)
_keys = st.recursive(
    _hashable_scalars, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=5
)

plain_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(_keys, children, max_size=5),
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(plain_values)
def test_property_recursive_values_round_trip_exactly(value: Any) -> None:
    assert_round_trip(value)


@settings(max_examples=100, deadline=None)
@given(plain_values)
def test_property_reencoding_is_stable(value: Any) -> None:
    data = encode(value)
    assert encode(decode(data)) == data


# --------------------------------------------------------------------------
# Unsupported values
# --------------------------------------------------------------------------


class Custom:
    pass


class PytzLikeZone(dt.tzinfo):
    """A tzinfo of its own, like pytz's: the codec cannot store it faithfully."""

    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(hours=1)

    def dst(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, when: dt.datetime | None) -> str:
        return "CET"


class Color(enum.IntEnum):
    RED = 1


UNSUPPORTED = [
    pytest.param(object(), "object", id="object"),
    pytest.param({1, 2}, "set", id="set"),
    pytest.param(frozenset({1}), "frozenset", id="frozenset"),
    pytest.param(Custom(), "Custom", id="custom-class"),
    pytest.param(dt.datetime(2024, 1, 1, tzinfo=PytzLikeZone()), "PytzLikeZone", id="custom-tz"),
    pytest.param(1j, "complex", id="complex"),
    pytest.param(Color.RED, "Color", id="int-enum"),
    pytest.param(collections.OrderedDict(a=1), "OrderedDict", id="ordereddict"),
    pytest.param([1, {2}], "set", id="set-in-list"),
    pytest.param({"k": (1, Custom())}, "Custom", id="custom-in-dict"),
    pytest.param({Custom(): 1}, "Custom", id="custom-as-key"),
]


@pytest.mark.parametrize(("value", "type_name"), UNSUPPORTED)
def test_unsupported_value_raises_validation_error_naming_type(value: Any, type_name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        encode(value)
    assert type_name in str(caught.value)


def test_failed_encode_leaves_no_residue_in_reused_packers() -> None:
    # Packers are pooled; a value refused half-way must not leak its partial
    # bytes into the next encoding (at the top level or nested in a tuple).
    for bad in ([1, Custom()], (1, (2, Custom()))):
        with pytest.raises(ValidationError):
            encode(bad)
        assert decode(encode([5, (1, (2, 3))])) == [5, (1, (2, 3))]
    assert encode((1, 2)) == msgpack.packb(msgpack.ExtType(2, msgpack.packb([1, 2])))


def test_threads_sharing_the_codec_encode_independently() -> None:
    import threading

    values = [[i, (i, str(i)), {"k": (i, (i,))}] for i in range(50)]
    expected = [encode(v) for v in values]
    failures: list[str] = []

    def work() -> None:
        for _ in range(200):
            for value, want in zip(values, expected, strict=True):
                if encode(value) != want:
                    failures.append(repr(value))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --------------------------------------------------------------------------
# Corrupt input
# --------------------------------------------------------------------------

NON_TRIVIAL = {
    "ints": [0, -1, 2**63, -(2**70)],
    "text": "héllo 😀",
    "blob": b"\x00\x01\x02" * 5,
    "when": dt.datetime(2021, 10, 31, 2, 30, fold=1, tzinfo=MADRID),
    "fixed": dt.datetime(2024, 5, 1, tzinfo=IST),
    "day": dt.date(2024, 2, 29),
    "span": dt.timedelta(days=-1, microseconds=5),
    "money": Decimal("-12.50"),
    "id": uuid.UUID(int=12345),
    "pair": (1.5, [None, True]),
    (1, 2): AtomPointer(bytes(range(16)), 9),
}


def test_empty_input_raises_corruption_error() -> None:
    with pytest.raises(CorruptionError):
        decode(b"")


def test_every_truncation_raises_corruption_error() -> None:
    data = encode(NON_TRIVIAL)
    assert mismatch(NON_TRIVIAL, decode(data)) is None
    for length in range(len(data)):
        with pytest.raises(CorruptionError):
            decode(data[:length])


@pytest.mark.parametrize("garbage", [b"\x00", b"\xc0", b"\xc1", b"\xff\xff", encode(1)])
@pytest.mark.parametrize("value", [None, 0, "s", [1, 2], (1,), NON_TRIVIAL], ids=_value_id)
def test_trailing_garbage_raises_corruption_error(value: Any, garbage: bytes) -> None:
    with pytest.raises(CorruptionError):
        decode(encode(value) + garbage)


def _ext(code: int, payload: bytes) -> bytes:
    return msgpack.packb(msgpack.ExtType(code, payload))


def _raw_ext(code: int, payload: bytes) -> bytes:
    """An ext8 frame for any signed code, including the negative ones msgpack reserves."""
    return bytes([0xC7, len(payload), code & 0xFF]) + payload


@pytest.mark.parametrize(
    "data",
    [
        _ext(99, b"x"),
        _ext(8, b"x"),
        _ext(31, b""),
        _ext(32, msgpack.packb(1)),
        _ext(127, b"x"),
        _raw_ext(-5, b"x"),
        _raw_ext(-128, b""),
        msgpack.packb([1, msgpack.ExtType(99, b"x")]),
        msgpack.packb({"k": msgpack.ExtType(99, b"x")}),
        # -1 is msgpack's Timestamp: not a ProtoBase type, so unknown here.
        _raw_ext(-1, b"\x00\x00\x00\x00"),
        _raw_ext(-1, bytes(8)),
    ],
    ids=lambda data: data.hex(),
)
def test_unknown_extension_code_raises_corruption_error(data: bytes) -> None:
    with pytest.raises(CorruptionError):
        decode(data)


def _dt_fields(tz: Any) -> bytes:
    return msgpack.packb([2000, 1, 1, 0, 0, 0, 0, 0, tz])


MALFORMED_EXT = [
    pytest.param(7, b"short", id="uuid-short"),
    pytest.param(7, bytes(17), id="uuid-long"),
    pytest.param(0, b"abc", id="pointer-short"),
    pytest.param(0, bytes(21), id="pointer-long"),
    pytest.param(3, msgpack.packb([1, 2]), id="datetime-two-fields"),
    pytest.param(3, msgpack.packb(5), id="datetime-not-list"),
    pytest.param(3, b"\xc1", id="datetime-not-msgpack"),
    pytest.param(3, b"", id="datetime-empty"),
    pytest.param(3, msgpack.packb([2021, 2, 30, 0, 0, 0, 0, 0, None]), id="datetime-feb-30"),
    pytest.param(3, msgpack.packb([2021, 1, 1, 0, 0, 0, 0, 5, None]), id="datetime-fold-5"),
    pytest.param(3, _dt_fields([7]), id="datetime-unknown-tz-tag"),
    pytest.param(3, _dt_fields([]), id="datetime-empty-tz"),
    pytest.param(3, _dt_fields(3), id="datetime-tz-not-list"),
    pytest.param(3, _dt_fields([1, "No/Such_Zone"]), id="datetime-unknown-zone"),
    pytest.param(3, _dt_fields([1, 5]), id="datetime-zone-key-int"),
    pytest.param(3, _dt_fields([1, "/etc/passwd"]), id="datetime-zone-absolute"),
    pytest.param(3, _dt_fields([0, 86400, 0, None]), id="datetime-offset-24h"),
    pytest.param(3, _dt_fields([0, 10**15, 0, None]), id="datetime-offset-overflow"),
    pytest.param(3, _dt_fields([0, 3600, 0, 5]), id="datetime-tz-name-int"),
    pytest.param(2, msgpack.packb({"a": 1}), id="tuple-of-map"),
    pytest.param(2, msgpack.packb(1), id="tuple-of-int"),
    pytest.param(2, msgpack.packb([1]) + b"\x00", id="tuple-trailing"),
    pytest.param(2, msgpack.packb([1, 2])[:-1], id="tuple-truncated"),
    pytest.param(4, msgpack.packb([2024, 13, 1]), id="date-month-13"),
    pytest.param(4, msgpack.packb([2024, 1]), id="date-two-fields"),
    pytest.param(4, msgpack.packb([2**62, 1, 1]), id="date-year-overflow"),
    pytest.param(4, msgpack.packb("2024-01-01"), id="date-string"),
    pytest.param(5, msgpack.packb([1, 2]), id="timedelta-two-fields"),
    pytest.param(5, msgpack.packb([10**12, 0, 0]), id="timedelta-days-overflow"),
    pytest.param(5, msgpack.packb([float("inf"), 0, 0]), id="timedelta-infinite"),
    pytest.param(5, msgpack.packb([float("nan"), 0, 0]), id="timedelta-nan"),
    pytest.param(6, b"abc", id="decimal-not-a-number"),
    pytest.param(6, b"", id="decimal-empty"),
    pytest.param(6, b"1.2.3", id="decimal-two-points"),
    pytest.param(6, b"\xff", id="decimal-not-ascii"),
]


@pytest.mark.parametrize(("code", "payload"), MALFORMED_EXT)
def test_malformed_extension_payload_raises_corruption_error(code: int, payload: bytes) -> None:
    with pytest.raises(CorruptionError):
        decode(_ext(code, payload))
    with pytest.raises(CorruptionError):
        decode(msgpack.packb({"nested": [msgpack.ExtType(code, payload)]}))


def _assert_decodes_or_corruption(data: bytes) -> None:
    try:
        value = decode(data)
    except CorruptionError:
        return
    # What decodes is a plain value: it encodes again without error.
    encode(value)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_property_random_bytes_decode_or_raise_corruption_error(data: bytes) -> None:
    _assert_decodes_or_corruption(data)


@settings(max_examples=500, deadline=None)
@given(st.integers(-128, 127), st.binary(max_size=40))
def test_property_random_extension_frames_decode_or_raise_corruption_error(
    code: int, payload: bytes
) -> None:
    _assert_decodes_or_corruption(_raw_ext(code, payload))
    # The same frame as the only item of a one-element array (fixarray header 0x91).
    _assert_decodes_or_corruption(b"\x91" + _raw_ext(code, payload))


@settings(max_examples=300, deadline=None)
@given(plain_values, st.data())
def test_property_damaged_encodings_decode_or_raise_corruption_error(
    value: Any, data: st.DataObject
) -> None:
    encoded = bytearray(encode(value))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    _assert_decodes_or_corruption(bytes(encoded[:cut]))
    _assert_decodes_or_corruption(bytes(encoded))


# --------------------------------------------------------------------------
# Atom framing
# --------------------------------------------------------------------------

FRAME_PAYLOADS = [b"", b"x", encode(NON_TRIVIAL), bytes(range(256)) * 40]


@pytest.mark.parametrize("payload", FRAME_PAYLOADS, ids=lambda p: f"{len(p)}-bytes")
def test_frame_round_trip(payload: bytes) -> None:
    framed = frame_atom(payload)
    assert len(framed) == HEADER_SIZE + len(payload)
    assert framed.endswith(payload)
    assert unframe_atom(framed) == payload
    assert unframe_atom(framed, AtomPointer(new_transaction_id(), 0)) == payload


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_property_frame_round_trip(payload: bytes) -> None:
    assert unframe_atom(frame_atom(payload)) == payload


def test_frame_checksum_depends_on_payload() -> None:
    assert frame_atom(b"a")[:HEADER_SIZE] != frame_atom(b"b")[:HEADER_SIZE]


@pytest.mark.parametrize("payload", [b"", encode({"k": [1, 2.5, "x"], "t": (None,)})])
def test_every_single_bit_flip_raises_corruption_error(payload: bytes) -> None:
    framed = frame_atom(payload)
    for bit in range(len(framed) * 8):
        damaged = bytearray(framed)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptionError):
            unframe_atom(bytes(damaged))


@pytest.mark.parametrize("payload", [b"", encode({"k": [1, 2.5, "x"], "t": (None,)})])
def test_every_truncation_of_a_frame_raises_corruption_error(payload: bytes) -> None:
    framed = frame_atom(payload)
    for length in range(len(framed)):
        with pytest.raises(CorruptionError):
            unframe_atom(framed[:length])


def test_appended_byte_raises_corruption_error() -> None:
    with pytest.raises(CorruptionError):
        unframe_atom(frame_atom(b"payload") + b"\x00")


def _flip_format(framed: bytes) -> bytes:
    return bytes([framed[0] ^ 0xFF]) + framed[1:]


def _flip_payload(framed: bytes) -> bytes:
    return framed[:-1] + bytes([framed[-1] ^ 0x01])


@pytest.mark.parametrize(
    "damage",
    [lambda framed: framed[:4], _flip_format, _flip_payload],
    ids=["truncated", "format-byte", "checksum"],
)
def test_corruption_message_names_the_pointer(damage: Any) -> None:
    pointer = AtomPointer(new_transaction_id(), 42)
    damaged = damage(frame_atom(b"some payload"))
    with pytest.raises(CorruptionError) as caught:
        unframe_atom(damaged, pointer)
    message = str(caught.value)
    assert str(pointer) in message
    assert pointer.transaction_id.hex() in message


@settings(max_examples=300)
@given(
    data=st.lists(
        st.sampled_from([b"\xd6", b"\xd7", b"\xc7", b"\xc8", b"\xc9", b"\x00", b"\x04", b"\x08"])
        | st.sampled_from([b"\x0c", b"\xff", b"\x01"])
        | st.binary(max_size=3),
        max_size=40,
    ).map(b"".join)
)
def test_the_timestamp_header_scan_finds_what_the_pattern_finds(data: bytes) -> None:
    # The fast scan looks only around 0xff bytes; it must agree with a full search.
    from protobase.codec import _TIMESTAMP_HEADER, _may_hold_timestamp

    assert _may_hold_timestamp(data) == (_TIMESTAMP_HEADER.search(data) is not None)
