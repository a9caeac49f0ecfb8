"""JOIN: a hash join for equality conditions, a nested loop for the others.

``JoinPlan(based_on=left, join_query=right, on=("dept_id", "id"),
join_type="inner")`` yields `JoinRow`s (``.left``, ``.right``). `on` is:

- ``(left field, right field)``, or a list of such pairs: equality, run as a
  hash join (the right side is read into a table once, the left streams).
  Keys match when Python's ``==`` says so (``1`` joins ``1.0``); a NULL
  key (None or missing) never matches, as in SQL;
- an Expression over the pair (``F.left.start < F.right.day``) or a
  function ``on(left, right) -> bool``: a nested loop over the right rows.

Order: left rows in their order, each followed by its matches in right
order. ``left`` and ``outer`` emit an unmatched left row once, with
``right`` None, in its place; ``right`` and ``outer`` then emit the
unmatched right rows, in right order, with ``left`` None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..collections.fields import Path, parse_path, path_text
from ..collections.ordering import sort_key
from ..errors import QueryError, ValidationError
from .expressions import Expression, equal, field_reader
from .plans import QueryPlan, as_plan
from .rows import JoinRow

JOIN_TYPES = ("inner", "left", "right", "outer")


class JoinPlan(QueryPlan):
    """The pairs of left and right rows that satisfy `on` (see the module docstring)."""

    def __init__(
        self,
        based_on: Any = None,
        join_query: Any = None,
        on: Any = None,
        join_type: str = "inner",
    ) -> None:
        super().__init__(based_on)
        if self.based_on is None or join_query is None:
            raise QueryError("JoinPlan needs based_on= (the left side) and join_query= (the right)")
        self.join_query = as_plan(join_query)
        if join_type not in JOIN_TYPES:
            raise QueryError(f"join_type {join_type!r} is not one of {', '.join(JOIN_TYPES)}")
        self.join_type = join_type
        self.pairs: list[tuple[Path, Path]] | None = None
        self.condition: Callable[[Any, Any], bool] | None = None
        self._on_text = ""
        if isinstance(on, Expression):
            test = on.test
            self.condition = lambda left, right: test(JoinRow(left, right))
            self._on_text = str(on)
        elif callable(on):
            self.condition = lambda left, right: bool(on(left, right))
            self._on_text = getattr(on, "__name__", "a function")
        else:
            pairs = [on] if _is_pair(on) else on
            if not isinstance(pairs, (list, tuple)) or not pairs or not all(map(_is_pair, pairs)):
                raise QueryError(
                    "JoinPlan on= is (left field, right field), a list of such pairs, an "
                    f"Expression over F.left / F.right, or a function (left, right); not {on!r}"
                )
            self.pairs = [(parse_path(a), parse_path(b)) for a, b in pairs]
            self._on_text = " & ".join(
                f"left.{path_text(a)} == right.{path_text(b)}" for a, b in self.pairs
            )

    def _rows(self) -> Iterator[Any]:
        assert self.based_on is not None
        right_rows = list(self.join_query.execute())
        keep_left = self.join_type in ("left", "outer")
        keep_right = self.join_type in ("right", "outer")
        matched = bytearray(len(right_rows)) if keep_right else None
        if self.pairs:
            rows = self._hash_join(right_rows, keep_left, matched)
        else:
            rows = self._loop_join(right_rows, keep_left, matched)
        yield from rows
        if matched is not None:
            for index, right in enumerate(right_rows):
                if not matched[index]:
                    yield JoinRow(None, right)

    def _hash_join(
        self, right_rows: list[Any], keep_left: bool, matched: bytearray | None
    ) -> Iterator[JoinRow]:
        """Build a table of the right rows by key; stream the left rows through it."""
        assert self.pairs is not None and self.based_on is not None
        single = len(self.pairs) == 1
        if single:
            read_left, read_right = (field_reader(path) for path in self.pairs[0])
        else:
            left_readers = [field_reader(a) for a, _ in self.pairs]
            right_readers = [field_reader(b) for _, b in self.pairs]

            def read_left(row: Any) -> Any:
                key = tuple(read(row) for read in left_readers)
                return None if None in key else key

            def read_right(row: Any) -> Any:
                key = tuple(read(row) for read in right_readers)
                return None if None in key else key

        buckets: dict[Any, list[int]] = {}
        loose: list[int] = []  # keys that cannot be hashed (lists, dicts): compared with ==
        right_keys: list[Any] = []
        for index, row in enumerate(right_rows):
            key = read_right(row)
            right_keys.append(key)
            if key is None:  # NULL never matches
                continue
            try:
                hashed = sort_key(key)
            except ValidationError:
                loose.append(index)
                continue
            bucket = buckets.get(hashed)
            if bucket is None:
                buckets[hashed] = [index]
            else:
                bucket.append(index)
        for left in self.based_on.execute():
            key = read_left(left)
            found = False
            if key is not None:
                try:
                    candidates = buckets.get(sort_key(key), ())
                except ValidationError:
                    candidates = loose
                for index in candidates:
                    other = right_keys[index]
                    if equal(key, other) if single else all(map(equal, key, other)):
                        found = True
                        if matched is not None:
                            matched[index] = 1
                        yield JoinRow(left, right_rows[index])
            if not found and keep_left:
                yield JoinRow(left, None)

    def _loop_join(
        self, right_rows: list[Any], keep_left: bool, matched: bytearray | None
    ) -> Iterator[JoinRow]:
        assert self.condition is not None and self.based_on is not None
        condition = self.condition
        for left in self.based_on.execute():
            found = False
            for index, right in enumerate(right_rows):
                if condition(left, right):
                    found = True
                    if matched is not None:
                        matched[index] = 1
                    yield JoinRow(left, right)
            if not found and keep_left:
                yield JoinRow(left, None)

    def estimate(self) -> int | None:
        left, right = super().estimate(), self.join_query.estimate()
        if left is None or right is None:
            return None
        return max(left, right)

    def _describe(self, limit: int | None) -> tuple[str, str]:
        how = "hash join" if self.pairs else "nested loop"
        return "Join", f"{self.join_type} {how} on {self._on_text}"

    def _children(self, limit: int | None) -> list[Any]:
        assert self.based_on is not None
        return [self.based_on._explain(None), self.join_query._explain(None)]


def _is_pair(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(part, str) for part in value)
    )
