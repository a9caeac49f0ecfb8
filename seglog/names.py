"""How a log names its segment files.

A name is a prefix, one or more numbers zero-padded to fixed widths and
joined by ``-``, and a suffix: the WAL's ``wal-0001-00000002.pbw``
(generation, number), the Raft log's ``seg-00000002.log`` (sequence).
A number wider than its width takes the digits it needs, so names sort by
number only up to that width: logs list, parse and sort numbers, never names.

Only canonical names, those `SegmentNames.name` makes, are segments:
`parse` returns None for every other file (``wal-1-1.pbw``, a ``.tmp``, a
file an operator left), so recovery never reads, truncates or removes a
file the log did not name.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SegmentNames"]


@dataclass(frozen=True, slots=True)
class SegmentNames:
    """The segment names of one log: `prefix`, numbers padded to `widths`, `suffix`."""

    prefix: str
    suffix: str
    widths: tuple[int, ...]

    def name(self, *numbers: int) -> str:
        """The file name of the segment `numbers` (one per width)."""
        padded = (f"{n:0{w}d}" for n, w in zip(numbers, self.widths, strict=True))
        return f"{self.prefix}{'-'.join(padded)}{self.suffix}"

    def parse(self, name: str) -> tuple[int, ...] | None:
        """The numbers of a segment file name, or None when `name` is not one `name` makes."""
        if not (name.startswith(self.prefix) and name.endswith(self.suffix)):
            return None
        parts = name[len(self.prefix) : len(name) - len(self.suffix)].split("-")
        if len(parts) != len(self.widths) or not all(p.isascii() and p.isdigit() for p in parts):
            return None
        numbers = tuple(int(part) for part in parts)
        return numbers if self.name(*numbers) == name else None
