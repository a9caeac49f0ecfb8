"""Query expressions: conditions on rows, with SQL's three-valued logic.

Two ways to write one::

    Expression.compile(["&", ["age", ">", 25], ["city", "==", "NY"]])
    (F.age > 25) & (F.city == "NY")

Semantics (docs/queries.md has examples):

- A field path reads attributes, dict keys and mapping keys (see
  `protobase.collections.fields`). Missing and None are both NULL.
- A comparison with NULL on either side is UNKNOWN. A row matches a
  condition only when it is TRUE, so a row whose field is missing or None
  never matches a comparison, and ``~(F.age > 25)`` does not match it either.
- Values of types Python cannot order against each other (``5 > "x"``,
  naive vs aware datetimes) compare FALSE, never raise; ``==`` between
  different types is FALSE unless Python says they are equal (``1 == 1.0``).
- ``&``, ``|`` and ``~`` follow Kleene's logic: FALSE & UNKNOWN is FALSE,
  TRUE | UNKNOWN is TRUE, ~UNKNOWN is UNKNOWN.
- ``in`` is TRUE when a listed value equals the field; else UNKNOWN when
  the field is NULL or None is listed, else FALSE. ``between lo hi`` is
  ``lo <= field <= hi``. ``contains`` is a substring test for str and bytes,
  membership for lists, tuples, dicts (keys) and collections, FALSE for other
  values. ``startswith`` needs a str field with a str prefix (or bytes with
  bytes). ``is_null`` is never UNKNOWN.

Each expression compiles once into two closures: `test` (the condition is
TRUE) and `refute` (it is FALSE); a NOT swaps them. Neither returns UNKNOWN,
so evaluating a row never builds a third value.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from ..collections.fields import Path, parse_path, path_text, read_path
from ..collections.ordering import sort_key
from ..errors import QueryError, ValidationError
from ..objects import DBObject, Literal, class_name

Predicate = Callable[[Any], bool]

COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
TERM_OPERATORS = (*COMPARISONS, "in", "contains", "startswith", "between", "is_null")


def compare(op: str, left: Any, right: Any) -> bool | None:
    """`left op right` in three-valued logic: None is UNKNOWN."""
    if left is None or right is None:
        return None
    try:
        return bool(COMPARISONS[op](left, right))
    except (TypeError, ArithmeticError):
        return False


def equal(left: Any, right: Any) -> bool:
    """Python's ``==``, FALSE where it raises (joins, ``in``, grouping fallbacks)."""
    try:
        return bool(left == right)
    except (TypeError, ArithmeticError):
        return False


def same_loose(left: Any, right: Any) -> bool:
    """Whether DISTINCT and GROUP BY treat two values as one, also when they cannot be keys.

    Values that can be keys are one when their sort keys are equal (``1``
    and ``1.0``; NaN and NaN). Lists, tuples, dicts and DBObjects that
    cannot be keys (they hold a list or a dict) compare part by part with
    the same rule, so the answer never depends on whether two rows share
    one NaN object or hold two. Anything else compares with `equal`.
    """
    left_key, right_key = _key_or_none(left), _key_or_none(right)
    if left_key is not None or right_key is not None:
        return left_key == right_key
    kind = type(left)
    if kind is not type(right):
        return equal(left, right)
    if kind is list or kind is tuple:
        return len(left) == len(right) and all(map(same_loose, left, right))
    if kind is dict:
        return left.keys() == right.keys() and all(
            same_loose(item, right[key]) for key, item in left.items()
        )
    if isinstance(left, DBObject):
        return class_name(left) == class_name(right) and same_loose(left._attrs, right._attrs)
    return equal(left, right)


def _key_or_none(value: Any) -> Any:
    try:
        return sort_key(value)
    except ValidationError:
        return None


def contains(container: Any, item: Any) -> bool | None:
    """The ``contains`` operator (see the module docstring)."""
    if container is None or item is None:
        return None
    kind = type(container)
    if kind is str or kind is bytes:
        return type(item) is kind and item in container
    if kind is list or kind is tuple:
        return any(equal(element, item) for element in container)
    if kind is dict:
        try:
            return item in container
        except TypeError:
            return False
    has = getattr(container, "has", None)  # Set, CountedSet, Dictionary, HashDictionary
    if has is not None:
        try:
            return bool(has(item))
        except (TypeError, ValueError):
            return False
    iterate = getattr(container, "as_iterable", None)  # List
    if iterate is not None:
        return any(equal(element, item) for element in iterate())
    return False


def _plain(value: Any) -> Any:
    """A query value as rows hold it: a Literal reads as its str or bytes."""
    return value.value if type(value) is Literal else value


class Expression:
    """A condition on a row. Combine with ``&``, ``|`` and ``~``."""

    __slots__ = ("_compiled",)

    def __init__(self) -> None:
        self._compiled: tuple[Predicate, Predicate] | None = None

    # -- construction -------------------------------------------------------------

    @staticmethod
    def compile(spec: Any) -> Expression:
        """An expression from prefix lists (docs/queries.md).

        ``[field, op, value]`` with op one of ``== != > >= < <= in contains
        startswith``; ``[field, "between", lo, hi]``; ``[field, "is_null"]``;
        ``["&", e1, e2, ...]``, ``["|", e1, e2, ...]``, ``["!", e]``; a list of
        several terms is their AND. An Expression passes through unchanged.

        Raises:
            QueryError: the spec is malformed; the message quotes the part.
        """
        return _compile(spec)

    def __and__(self, other: Any) -> Expression:
        return And([self, as_expression(other)])

    def __rand__(self, other: Any) -> Expression:
        return And([as_expression(other), self])

    def __or__(self, other: Any) -> Expression:
        return Or([self, as_expression(other)])

    def __ror__(self, other: Any) -> Expression:
        return Or([as_expression(other), self])

    def __invert__(self) -> Expression:
        return Not(self)

    def __bool__(self) -> bool:
        raise QueryError(
            f"an expression has no truth value: combine conditions with & | ~ instead of "
            f"and / or / not, and parenthesize comparisons: {self}"
        )

    # -- evaluation ---------------------------------------------------------------

    def _predicates(self) -> tuple[Predicate, Predicate]:
        """(test, refute): TRUE and FALSE of this condition on a row."""
        raise NotImplementedError

    def _closures(self) -> tuple[Predicate, Predicate]:
        if self._compiled is None:
            self._compiled = self._predicates()
        return self._compiled

    @property
    def test(self) -> Predicate:
        """A function of a row: True when the condition is TRUE."""
        return self._closures()[0]

    @property
    def refute(self) -> Predicate:
        """A function of a row: True when the condition is FALSE."""
        return self._closures()[1]

    def evaluate(self, row: Any) -> bool | None:
        """TRUE, FALSE or UNKNOWN (None) for `row`."""
        test, refute = self._closures()
        if test(row):
            return True
        if refute(row):
            return False
        return None

    def matches(self, row: Any) -> bool:
        return self._closures()[0](row)

    def fields(self) -> set[Path]:
        """The field paths this expression reads."""
        return set()

    def __repr__(self) -> str:
        return f"Expression({self})"


def as_expression(value: Any) -> Expression:
    """An Expression from an Expression, a prefix list, or a field (true when == True)."""
    if isinstance(value, Expression):
        return value
    if isinstance(value, Field):
        return Compare(value.path, "==", True)
    if isinstance(value, (list, tuple)):
        return _compile(value)
    raise QueryError(f"expected a condition (an Expression or a prefix list), got {value!r}")


# -- terms ---------------------------------------------------------------------------


class Term(Expression):
    """A condition on one field."""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def fields(self) -> set[Path]:
        return {self.path}

    @property
    def field(self) -> str:
        return path_text(self.path)


def field_reader(path: Path) -> Callable[[Any], Any]:
    """A reader of `path`; one-step paths on DBObjects and dicts skip the generic walk."""
    if len(path) == 1:
        (name,) = path

        def read_one(row: Any) -> Any:
            if type(row) is dict:
                value = row.get(name)
            elif isinstance(row, DBObject):
                value = row._attrs.get(name)
            else:
                return read_path(row, path)
            return value if type(value) is not Literal else value.value

        return read_one
    return lambda row: read_path(row, path)


class Compare(Term):
    """``field op value``; the value may be another field (``F.a < F.b``)."""

    __slots__ = ("op", "value")

    def __init__(self, path: Path, op: str, value: Any) -> None:
        super().__init__(path)
        if op not in COMPARISONS:
            raise QueryError(f"unknown comparison {op!r}; use one of {', '.join(COMPARISONS)}")
        self.op = op
        self.value = _plain(value)

    def fields(self) -> set[Path]:
        if isinstance(self.value, Field):
            return {self.path, self.value.path}
        return {self.path}

    def _predicates(self) -> tuple[Predicate, Predicate]:
        read = field_reader(self.path)
        fn = COMPARISONS[self.op]
        value = self.value
        if isinstance(value, Field):
            read_other = field_reader(value.path)

            def test_fields(row: Any) -> bool:
                return compare(self.op, read(row), read_other(row)) is True

            def refute_fields(row: Any) -> bool:
                return compare(self.op, read(row), read_other(row)) is False

            return test_fields, refute_fields
        if value is None:  # a comparison with NULL is never TRUE nor FALSE
            return _never, _never

        def test(row: Any) -> bool:
            found = read(row)
            if found is None:
                return False
            try:
                return bool(fn(found, value))
            except (TypeError, ArithmeticError):
                return False

        def refute(row: Any) -> bool:
            found = read(row)
            if found is None:
                return False
            try:
                return not fn(found, value)
            except (TypeError, ArithmeticError):
                return True

        return test, refute

    def __str__(self) -> str:
        other = (
            f"F.{path_text(self.value.path)}" if isinstance(self.value, Field) else repr(self.value)
        )
        return f"{self.field} {self.op} {other}"


def _never(row: Any) -> bool:
    return False


class In(Term):
    __slots__ = ("values",)

    def __init__(self, path: Path, values: Iterable[Any]) -> None:
        super().__init__(path)
        # One flag, not the test inline: narrowing `values` to str | bytes in the
        # raise branch made the compiled form check that type (and fail on 3).
        not_a_list = isinstance(values, (str, bytes)) or not isinstance(values, Iterable)
        if not_a_list:
            raise QueryError(f"'in' takes a list of values, not {values!r}")
        self.values = tuple(_plain(value) for value in values)

    def _predicates(self) -> tuple[Predicate, Predicate]:
        read = field_reader(self.path)
        values = [v for v in self.values if v is not None]
        has_null = len(values) != len(self.values)

        def test(row: Any) -> bool:
            found = read(row)
            return found is not None and any(equal(found, v) for v in values)

        def refute(row: Any) -> bool:
            if has_null:
                return False
            found = read(row)
            return found is not None and not any(equal(found, v) for v in values)

        return test, refute

    def __str__(self) -> str:
        return f"{self.field} in {list(self.values)!r}"


class Between(Term):
    __slots__ = ("high", "low")

    def __init__(self, path: Path, low: Any, high: Any) -> None:
        super().__init__(path)
        self.low, self.high = _plain(low), _plain(high)

    def _predicates(self) -> tuple[Predicate, Predicate]:
        read = field_reader(self.path)
        low, high = self.low, self.high

        def decide(row: Any) -> bool | None:
            found = read(row)
            if found is None or low is None or high is None:
                return None
            try:
                return bool(low <= found <= high)
            except (TypeError, ArithmeticError):
                return False

        return (lambda row: decide(row) is True), (lambda row: decide(row) is False)

    def __str__(self) -> str:
        return f"{self.field} between {self.low!r} and {self.high!r}"


class Contains(Term):
    __slots__ = ("value",)

    def __init__(self, path: Path, value: Any) -> None:
        super().__init__(path)
        self.value = _plain(value)

    def _predicates(self) -> tuple[Predicate, Predicate]:
        read = field_reader(self.path)
        value = self.value
        return (
            lambda row: contains(read(row), value) is True,
            lambda row: contains(read(row), value) is False,
        )

    def __str__(self) -> str:
        return f"{self.field} contains {self.value!r}"


class StartsWith(Term):
    __slots__ = ("prefix",)

    def __init__(self, path: Path, prefix: Any) -> None:
        super().__init__(path)
        prefix = _plain(prefix)
        if type(prefix) not in (str, bytes):
            raise QueryError(f"startswith takes a str or bytes prefix, not {prefix!r}")
        self.prefix = prefix

    def _predicates(self) -> tuple[Predicate, Predicate]:
        read = field_reader(self.path)
        prefix = self.prefix
        kind = type(prefix)

        def decide(row: Any) -> bool | None:
            found = read(row)
            if found is None:
                return None
            return type(found) is kind and found.startswith(prefix)

        return (lambda row: decide(row) is True), (lambda row: decide(row) is False)

    def __str__(self) -> str:
        return f"{self.field} startswith {self.prefix!r}"


class IsNull(Term):
    __slots__ = ()

    def _predicates(self) -> tuple[Predicate, Predicate]:
        read = field_reader(self.path)
        return (lambda row: read(row) is None), (lambda row: read(row) is not None)

    def __str__(self) -> str:
        return f"{self.field} is_null"


# -- connectives ---------------------------------------------------------------------


class _Connective(Expression):
    """And / Or: nested connectives of the same kind flatten into one."""

    __slots__ = ("parts",)
    parts: tuple[Expression, ...]
    symbol: ClassVar[str]

    def __init__(self, parts: Sequence[Expression]) -> None:
        super().__init__()
        flat: list[Expression] = []
        for part in parts:
            flat.extend(part.parts if type(part) is type(self) else [part])
        if not flat:
            raise QueryError(f"{self.symbol!r} needs at least one condition")
        self.parts = tuple(flat)

    def fields(self) -> set[Path]:
        return set().union(*(part.fields() for part in self.parts))

    def __str__(self) -> str:
        return f" {self.symbol} ".join(f"({part})" for part in self.parts)


class And(_Connective):
    __slots__ = ()
    symbol = "&"

    def _predicates(self) -> tuple[Predicate, Predicate]:
        tests = [part.test for part in self.parts]
        refutes = [part.refute for part in self.parts]
        if len(tests) == 2:
            first, second = tests
            return (lambda row: first(row) and second(row)), (
                lambda row: any(r(row) for r in refutes)
            )
        return (lambda row: all(t(row) for t in tests)), (lambda row: any(r(row) for r in refutes))


class Or(_Connective):
    __slots__ = ()
    symbol = "|"

    def _predicates(self) -> tuple[Predicate, Predicate]:
        tests = [part.test for part in self.parts]
        refutes = [part.refute for part in self.parts]
        return (lambda row: any(t(row) for t in tests)), (lambda row: all(r(row) for r in refutes))


class Not(Expression):
    __slots__ = ("part",)

    def __init__(self, part: Expression) -> None:
        super().__init__()
        self.part = part

    def fields(self) -> set[Path]:
        return self.part.fields()

    def _predicates(self) -> tuple[Predicate, Predicate]:
        test, refute = self.part._closures()
        return refute, test

    def __str__(self) -> str:
        return f"~({self.part})"


# -- fields and order keys (the Python-operator form) -------------------------------


class Field:
    """A field path for writing conditions with Python operators: ``F.address.city``.

    ``F.a.b`` follows attribute, dict and mapping steps; ``F["odd name"]``
    names a step that is not an identifier or that clashes with a method
    below. Comparisons give Expressions; ``-F.age`` and ``F.age.desc()`` give
    descending order keys.
    """

    __slots__ = ("path",)
    path: Path

    def __init__(self, path: Path = ()) -> None:
        object.__setattr__(self, "path", path)

    def __getattr__(self, name: str) -> Field:
        if name.startswith("__"):
            raise AttributeError(name)
        return Field((*self.path, name))

    def __getitem__(self, name: object) -> Field:
        # `object`, so that the compiled form too reaches the QueryError below
        if not isinstance(name, str) or not name:
            raise QueryError(f"a field name is a non-empty str, not {name!r}")
        return Field((*self.path, name))

    def _require_path(self) -> Path:
        if not self.path:
            raise QueryError("name a field first: F.age, F['odd name']")
        return self.path

    def __eq__(self, value: Any) -> Expression:  # type: ignore[override]
        return Compare(self._require_path(), "==", value)

    def __ne__(self, value: Any) -> Expression:  # type: ignore[override]
        return Compare(self._require_path(), "!=", value)

    def __gt__(self, value: Any) -> Expression:
        return Compare(self._require_path(), ">", value)

    def __ge__(self, value: Any) -> Expression:
        return Compare(self._require_path(), ">=", value)

    def __lt__(self, value: Any) -> Expression:
        return Compare(self._require_path(), "<", value)

    def __le__(self, value: Any) -> Expression:
        return Compare(self._require_path(), "<=", value)

    __hash__ = None  # type: ignore[assignment]

    def is_in(self, values: Iterable[Any]) -> Expression:
        return In(self._require_path(), values)

    def between(self, low: Any, high: Any) -> Expression:
        return Between(self._require_path(), low, high)

    def contains(self, value: Any) -> Expression:
        return Contains(self._require_path(), value)

    def startswith(self, prefix: Any) -> Expression:
        """Rows whose field starts with `prefix` (a str or bytes, or a Literal of one)."""
        return StartsWith(self._require_path(), prefix)

    def is_null(self) -> Expression:
        return IsNull(self._require_path())

    def is_not_null(self) -> Expression:
        return Not(IsNull(self._require_path()))

    def __invert__(self) -> Expression:
        return Not(Compare(self._require_path(), "==", True))

    def __and__(self, other: Any) -> Expression:
        return as_expression(self) & other

    def __or__(self, other: Any) -> Expression:
        return as_expression(self) | other

    def asc(self) -> OrderKey:
        return OrderKey(self._require_path(), descending=False)

    def desc(self) -> OrderKey:
        return OrderKey(self._require_path(), descending=True)

    def __neg__(self) -> OrderKey:
        return self.desc()

    def __pos__(self) -> OrderKey:
        return self.asc()

    def read(self, row: Any) -> Any:
        """The value of this field in `row` (None when missing)."""
        return read_path(row, self._require_path())

    def __repr__(self) -> str:
        return f"F.{path_text(self.path)}" if self.path else "F"


F = Field()
"""The root of field paths: ``F.age > 25``, ``F.address.city == "NY"``."""


class OrderKey:
    """One key of an ORDER BY: a field, a direction, and where NULLs go."""

    __slots__ = ("descending", "nulls_last", "path")

    def __init__(self, path: Path, descending: bool = False, nulls_last: bool = True) -> None:
        self.path = path
        self.descending = descending
        self.nulls_last = nulls_last

    def nulls_first(self) -> OrderKey:
        return OrderKey(self.path, self.descending, nulls_last=False)

    @staticmethod
    def parse(spec: Any) -> OrderKey:
        """From ``"name"``, ``("age", "desc")``, ``("age", "asc", "nulls_first")``, F.x or -F.x."""
        if isinstance(spec, OrderKey):
            return spec
        if isinstance(spec, Field):
            return spec.asc()
        if isinstance(spec, str):
            return OrderKey(parse_path(spec))
        if isinstance(spec, (tuple, list)) and 1 <= len(spec) <= 3:
            field, *options = spec
            base = OrderKey.parse(field)
            descending, nulls_last = base.descending, base.nulls_last
            for option in options:
                if option in ("asc", "desc"):
                    descending = option == "desc"
                elif option in ("nulls_first", "nulls_last"):
                    nulls_last = option == "nulls_last"
                else:
                    raise QueryError(
                        f"order key {spec!r}: unknown option {option!r}; "
                        "use 'asc', 'desc', 'nulls_first' or 'nulls_last'"
                    )
            return OrderKey(base.path, descending, nulls_last)
        raise QueryError(
            f"an order key is a field name, F.field, -F.field or (field, 'asc'|'desc'), "
            f"not {spec!r}"
        )

    def __str__(self) -> str:
        text = path_text(self.path) + (" desc" if self.descending else "")
        return text + ("" if self.nulls_last else " nulls first")

    def __repr__(self) -> str:
        return f"OrderKey({self})"


# -- the prefix syntax ----------------------------------------------------------------


def _compile(spec: Any) -> Expression:
    if isinstance(spec, Expression):
        return spec
    if isinstance(spec, Field):
        return as_expression(spec)
    if not isinstance(spec, (list, tuple)) or not spec:
        raise QueryError(f"an expression is a non-empty list like ['age', '>', 25], not {spec!r}")
    head = spec[0]
    if isinstance(head, (list, tuple, Expression, Field)):  # several terms: their AND
        return And([_compile(part) for part in spec])
    if head in ("&", "|"):
        if len(spec) < 2:
            raise QueryError(f"{head!r} needs at least one condition: {spec!r}")
        parts = [_compile(part) for part in spec[1:]]
        return And(parts) if head == "&" else Or(parts)
    if head == "!":
        if len(spec) != 2:
            raise QueryError(f"'!' takes exactly one condition: {spec!r}")
        return Not(_compile(spec[1]))
    if not isinstance(head, str):
        raise QueryError(f"a term starts with a field name, not {head!r}: {spec!r}")
    if len(spec) < 2:
        raise QueryError(f"term {spec!r} has no operator; write [field, op, value]")
    path, op = parse_path(head), spec[1]
    if not isinstance(op, str) or op not in TERM_OPERATORS:
        raise QueryError(
            f"unknown operator {op!r} in {spec!r}; operators: {', '.join(TERM_OPERATORS)}"
        )
    arity = {"is_null": 2, "between": 4}.get(op, 3)
    if len(spec) != arity:
        shape = {2: "[field, op]", 3: "[field, op, value]", 4: "[field, 'between', lo, hi]"}
        raise QueryError(f"{op!r} takes the form {shape[arity]}, got {spec!r}")
    if op == "is_null":
        return IsNull(path)
    if op == "between":
        return Between(path, spec[2], spec[3])
    if op == "in":
        return In(path, spec[2])
    if op == "contains":
        return Contains(path, spec[2])
    if op == "startswith":
        return StartsWith(path, spec[2])
    return Compare(path, op, spec[2])
