"""Which atoms a set of roots reaches: the walk behind pack and fsck.

Three kinds of atoms exist: *value* atoms (the space root), *node* atoms
(collection tree nodes) and *literal* atoms. A value or node atom refers to
others through collection descriptors (a root node), literals, and, for
internal nodes, the packed child pointers. MutableObjects are referred to by
object id only; their states sit in the object table, a collection that is
itself reached from the space root.

The walk decodes atoms with hooks that record pointers instead of building
objects, so it needs no application classes and never warns about them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .atoms import AtomPointer
from .codec import POINTER_STRUCT, Codec
from .errors import ProtoBaseException
from .serialization import EXT_COLLECTION, EXT_LITERAL

VALUE, NODE, LITERAL = "value", "node", "literal"


class _PointerCollector:
    """Codec hooks that note the atoms a decoded value refers to."""

    def __init__(self) -> None:
        self.found: list[tuple[AtomPointer, str]] = []

    def encode_extension(self, value: Any) -> tuple[int, Any] | None:
        return None

    def decode_extension(self, code: int, plain: Any) -> Any:
        if code == EXT_COLLECTION and type(plain) is list and len(plain) in (4, 5):
            if type(plain[1]) is AtomPointer:
                self.found.append((plain[1], NODE))
        elif code == EXT_LITERAL and type(plain) is AtomPointer:
            self.found.append((plain, LITERAL))
        return None


@dataclass
class WalkResult:
    reachable: set[AtomPointer] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def walk(
    read_payloads: Callable[[Sequence[AtomPointer]], list[bytes]],
    roots: Sequence[AtomPointer],
    progress: Callable[[int, int], None] | None = None,
    collect_problems: bool = False,
) -> WalkResult:
    """Every atom reachable from `roots` (value atoms), each read and decoded once.

    Args:
        read_payloads: reads verified atom payloads (raises on damage).
        roots: pointers of space root atoms.
        progress: called with (atoms visited, atoms known so far).
        collect_problems: record unreadable or undecodable atoms in
            ``problems`` and go on, instead of raising (fsck).
    """
    result = WalkResult()
    pending: list[tuple[AtomPointer, str]] = [(root, VALUE) for root in roots]
    seen: set[AtomPointer] = set()
    collector = _PointerCollector()
    codec = Codec(collector)
    while pending:
        batch: list[tuple[AtomPointer, str]] = []
        while pending and len(batch) < 256:
            pointer, kind = pending.pop()
            if pointer not in seen:
                seen.add(pointer)
                batch.append((pointer, kind))
        if not batch:
            continue
        try:
            payloads = read_payloads([pointer for pointer, _ in batch])
        except ProtoBaseException as exc:
            if not collect_problems or len(batch) == 1:
                if not collect_problems:
                    raise
                result.problems.append(f"atom {batch[0][0]}: {exc}")
                continue
            # Find out which atoms of the batch are bad, one by one.
            payloads = []
            for pointer, _ in batch:
                try:
                    payloads.append(read_payloads([pointer])[0])
                except ProtoBaseException as one:
                    result.problems.append(f"atom {pointer}: {one}")
                    payloads.append(b"")
        for (pointer, kind), payload in zip(batch, payloads, strict=True):
            if not payload and collect_problems and kind != LITERAL:
                continue
            result.reachable.add(pointer)
            if kind == LITERAL:
                continue
            collector.found = []
            try:
                decoded = codec.decode(payload)
                if kind == NODE:
                    _node_children(decoded, collector.found)
            except (ProtoBaseException, ValueError, TypeError, IndexError) as exc:
                if not collect_problems:
                    raise
                result.problems.append(f"atom {pointer} ({kind}): {exc}")
                continue
            pending.extend(collector.found)
        if progress is not None:
            progress(len(seen), len(seen) + len(pending))
    return result


def _node_children(payload: Any, found: list[tuple[AtomPointer, str]]) -> None:
    tag = payload[0]
    if tag in (2, 3):
        blob = payload[3]
        if type(blob) is not bytes or len(blob) % POINTER_STRUCT.size:
            raise ValueError("internal node children are not a packed pointer array")
        found.extend((AtomPointer(t, i), NODE) for t, i in POINTER_STRUCT.iter_unpack(blob))
    elif tag not in (0, 1):
        raise ValueError(f"unknown node tag {tag!r}")
