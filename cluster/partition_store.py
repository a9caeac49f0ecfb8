"""A partition group's state machine: its atom batches, served from the Raft log.

The partition log is the WAL: a batch's atoms are stored once, in the Raft
entry that carries them, and read back from the log by index. The machine
itself keeps only an index: transaction id -> the chunks of its batch.

Entry layout (msgpack)::

    ["batch", transaction id, first atom index, [atom bytes, ...],
     [[pointer, ...] per atom] | None, total atoms of the batch]

A batch larger than one entry is split into chunks of consecutive atoms
(`chunks`); it is complete, and readable, once every chunk is applied. A
chunk applied twice (a retried put) is recorded once: the index keeps the
first copy, and the result says "dup".

Invariant: `apply` is deterministic and never reads the log; reads go
through `read_entry`, which the node points at the group's log.

With a cold tier (`cluster.cold_tier`), entries before `keep_from` may be
compacted out of the local log once they are in S3. Reading an atom of
such an entry raises `EntryEvicted`; the node fetches the entry from S3
off the event loop, hands it over with `remember`, and reads again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .raft.errors import LogUnavailableError
from .wire import BytesSnapshots

BATCH_CHUNK_BYTES = 8 << 20
"""Atom bytes per entry, well under the Raft library's largest entry."""

DECODED_CACHE_ENTRIES = 64


class PartitionEntryError(ValueError):
    """A partition entry is not one this program writes."""


class EntryEvicted(Exception):
    """The log entry holding the atoms asked for is no longer on this node's disk."""

    def __init__(self, log_index: int) -> None:
        super().__init__(f"log entry {log_index} was evicted to the cold tier")
        self.log_index = log_index


@dataclass
class Chunk:
    first: int
    count: int
    log_index: int


@dataclass
class BatchIndex:
    total: int
    chunks: list[Chunk] = field(default_factory=list)
    size: int | None = None
    """Atom bytes, once measured (not in snapshots)."""

    @property
    def complete(self) -> bool:
        return sum(c.count for c in self.chunks) == self.total


def chunks(
    transaction_id: bytes,
    atoms: Sequence[bytes],
    links: Sequence[Sequence[Any]] | None,
    limit: int = BATCH_CHUNK_BYTES,
    offset: int = 0,
    total: int | None = None,
) -> Iterator[bytes]:
    """The entries of `atoms`, each holding at most about `limit` atom bytes.

    `atoms` are the batch's atoms from index `offset` on (a part a client
    sent alone), of `total` in the whole batch (default: all of them).
    """
    total = len(atoms) if total is None else total
    start = 0
    while True:
        size, end = 0, start
        while end < len(atoms) and (end == start or size + len(atoms[end]) <= limit):
            size += len(atoms[end])
            end += 1
        part_links = None if links is None else [list(x) for x in links[start:end]]
        yield msgpack.packb(
            ["batch", transaction_id, offset + start, list(atoms[start:end]), part_links, total]
        )
        start = end
        if start >= len(atoms):
            return


def parse_entry(data: bytes) -> tuple[bytes, int, list[bytes], int]:
    try:
        raw = msgpack.unpackb(data)
    except (ValueError, msgpack.UnpackException) as exc:
        raise PartitionEntryError(f"partition entry is not msgpack: {exc}") from exc
    if type(raw) is not list or len(raw) != 6 or raw[0] != "batch":
        raise PartitionEntryError("unknown partition entry")
    _, transaction_id, first, atoms, _, total = raw
    if (
        type(transaction_id) is not bytes
        or len(transaction_id) != 16
        or type(first) is not int
        or type(atoms) is not list
        or type(total) is not int
        or not 0 <= first <= first + len(atoms) <= total
    ):
        raise PartitionEntryError("malformed batch entry")
    return transaction_id, first, atoms, total


class PartitionMachine(BytesSnapshots):
    """The index of one partition's batches (see the module docstring)."""

    def __init__(self, read_entry: Callable[[int], bytes] | None = None) -> None:
        self.read_entry = read_entry
        self.batches: dict[bytes, BatchIndex] = {}
        self._decoded: OrderedDict[int, list[bytes]] = OrderedDict()
        self.atoms = 0
        """Atoms of the batches indexed here (complete or not)."""
        self.decoded_hits = 0
        self.decoded_misses = 0
        """Reads of an entry's atoms found decoded in memory, or not."""
        self.keep_from = 1
        """The lowest log index kept on disk: the cold tier raises it for
        entries it has uploaded, when the log is over its disk budget."""

    def apply(self, index: int, data: bytes) -> str:
        transaction_id, first, atoms, total = parse_entry(data)
        batch = self.batches.get(transaction_id)
        if batch is None:
            batch = self.batches[transaction_id] = BatchIndex(total)
        if batch.total != total or any(c.first == first for c in batch.chunks):
            return "dup"
        batch.chunks.append(Chunk(first, len(atoms), index))
        batch.chunks.sort(key=lambda c: c.first)
        self.atoms += len(atoms)
        return "ok"

    def first_needed_index(self) -> int:
        """Applied batches are read back from the log: nothing before `keep_from`
        (1 unless the cold tier holds the entries before it) may be compacted."""
        return self.keep_from

    def has(self, transaction_id: bytes) -> bool:
        batch = self.batches.get(transaction_id)
        return batch is not None and batch.complete

    def atom(self, transaction_id: bytes, index: int) -> bytes | None:
        """The atom, or None when this replica has not applied its batch."""
        batch = self.batches.get(transaction_id)
        if batch is None or not batch.complete or not 0 <= index < batch.total:
            return None
        for chunk in batch.chunks:
            if chunk.first <= index < chunk.first + chunk.count:
                return self._atoms_at(chunk.log_index)[index - chunk.first]
        return None

    def part_atoms(self, transaction_id: bytes, first: int, count: int) -> list[bytes] | None:
        """Atoms `first` .. `first + count` when every chunk holding them is applied."""
        batch = self.batches.get(transaction_id)
        if batch is None:
            return None
        found: list[bytes] = []
        for chunk in batch.chunks:
            end = chunk.first + chunk.count
            if end <= first or chunk.first >= first + count:
                continue
            atoms = self._atoms_at(chunk.log_index)
            found.extend(atoms[max(first, chunk.first) - chunk.first : first + count - chunk.first])
        return found if len(found) == count else None

    def batch_bytes(self, transaction_id: bytes) -> int:
        """The atom bytes of a complete batch (read from the log when first asked)."""
        batch = self.batches.get(transaction_id)
        if batch is None or not batch.complete:
            return 0
        if batch.size is None:
            batch.size = sum(len(a) for c in batch.chunks for a in self._atoms_at(c.log_index))
        return batch.size

    def batch_atoms(self, transaction_id: bytes) -> list[bytes] | None:
        batch = self.batches.get(transaction_id)
        if batch is None or not batch.complete:
            return None
        found: list[bytes] = []
        for chunk in batch.chunks:
            found.extend(self._atoms_at(chunk.log_index))
        return found

    def _atoms_at(self, log_index: int) -> list[bytes]:
        atoms = self._decoded.get(log_index)
        if atoms is not None:
            self._decoded.move_to_end(log_index)
            self.decoded_hits += 1
            return atoms
        self.decoded_misses += 1
        if self.read_entry is None:
            raise RuntimeError("this partition machine reads no log")
        try:
            data = self.read_entry(log_index)
        except LogUnavailableError as exc:
            raise EntryEvicted(log_index) from exc
        return self.remember(log_index, data)

    def remember(self, log_index: int, data: bytes, check: bool = False) -> list[bytes]:
        """Keep the decoded atoms of entry `log_index` (read from the log or from S3).

        With `check` (data that came from elsewhere than this node's log), the
        entry must be the chunk this machine indexed at `log_index`.

        Raises:
            PartitionEntryError: the entry is malformed, or (checked) not that chunk.
        """
        transaction_id, first, atoms, _ = parse_entry(data)
        if check:
            batch = self.batches.get(transaction_id)
            if batch is None or not any(
                c.log_index == log_index and c.first == first and c.count == len(atoms)
                for c in batch.chunks
            ):
                raise PartitionEntryError(
                    f"entry {log_index} read back is not the chunk this partition indexed there"
                )
        self._decoded[log_index] = atoms
        if len(self._decoded) > DECODED_CACHE_ENTRIES:
            self._decoded.popitem(last=False)
        return atoms

    def snapshot_bytes(self) -> bytes:
        return msgpack.packb(
            {
                tid: [b.total, [[c.first, c.count, c.log_index] for c in b.chunks]]
                for tid, b in self.batches.items()
            }
        )

    def restore_bytes(self, data: bytes) -> None:
        self.batches = {}
        self.atoms = 0
        self._decoded.clear()
        if not data:
            return
        for tid, (total, raw_chunks) in msgpack.unpackb(data).items():
            self.batches[tid] = BatchIndex(total, [Chunk(*c) for c in raw_chunks])
        self.atoms = sum(c.count for b in self.batches.values() for c in b.chunks)
