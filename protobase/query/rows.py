"""Rows that plans build: named fields (Select, GroupBy) and join pairs.

Both are plain read-only values; query paths read them like objects
(``F.total``, ``F.left.name``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


class Row(Mapping[str, Any]):
    """Named values: ``row.name`` and ``row["name"]`` read the same field.

    A Mapping, so ``dict(row)``, ``row.keys()`` and ``"name" in row`` work;
    equal to another Row or a dict with the same items.
    """

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(
                f"this row has no field {name!r}; its fields: {', '.join(self._values)}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("query rows are read-only")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values == other._values
        if isinstance(other, dict):
            return self._values == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def _pb_field(self, name: str) -> Any:
        return self._values.get(name)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        return "Row(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"


class JoinRow:
    """One result of a join: ``.left`` and ``.right`` (None for an outer miss)."""

    __slots__ = ("left", "right")
    left: Any
    right: Any

    def __init__(self, left: Any, right: Any) -> None:
        object.__setattr__(self, "left", left)
        object.__setattr__(self, "right", right)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("query rows are read-only")

    def _pb_field(self, name: str) -> Any:
        if name == "left":
            return self.left
        if name == "right":
            return self.right
        return None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JoinRow):
            return NotImplemented
        return bool(self.left == other.left and self.right == other.right)

    __hash__ = None  # type: ignore[assignment]

    def __iter__(self) -> Iterator[Any]:
        yield self.left
        yield self.right

    def __repr__(self) -> str:
        return f"JoinRow(left={self.left!r}, right={self.right!r})"
