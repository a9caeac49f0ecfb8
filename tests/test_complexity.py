"""Changing one element of a large collection writes O(log n) atoms.

The bound: a commit writes the space root atom, one leaf of the database
dictionary, one leaf of the root-object dictionary, and the path from the
collection's root node to the changed leaf. With nodes of up to 64 entries
(bulk-built at 48) a 100,000-element tree has height 2, so its path is 3
nodes and a commit writes 6 atoms. We allow 8: a split or a rebalance can add
a sibling. An implementation that copied the collection, or one atom per
element, writes thousands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from protobase import Dictionary, HashDictionary, List, MemoryStorage, ObjectSpace
from protobase.atoms import AtomPointer
from protobase.collections.btree import BUILD_WIDTH
from protobase.storage.interfaces import CommitBatch, RootRef

N = 100_000
MAX_ATOMS_PER_SMALL_CHANGE = 8


class CountingStorage:
    """A MemoryStorage that records the size of every committed batch."""

    def __init__(self) -> None:
        self.inner = MemoryStorage()
        self.batch_sizes: list[int] = []

    def read_root(self) -> RootRef:
        return self.inner.read_root()

    def get_atoms(self, pointers: Sequence[AtomPointer]) -> list[bytes]:
        return self.inner.get_atoms(pointers)

    def put_batch(self, batch: CommitBatch) -> None:
        self.batch_sizes.append(len(batch.atoms))
        self.inner.put_batch(batch)

    def set_root(self, expected: int, new_root: AtomPointer, transaction_id: bytes) -> RootRef:
        return self.inner.set_root(expected, new_root, transaction_id)

    def committed_root(self, transaction_id: bytes) -> RootRef | None:
        return self.inner.committed_root(transaction_id)

    def commit(self, batch: CommitBatch, expected: int, new_root: AtomPointer) -> RootRef:
        self.batch_sizes.append(len(batch.atoms))
        return self.inner.commit(batch, expected, new_root)

    def close(self) -> None:
        self.inner.close()


def build(kind: str):
    if kind == "list":
        return List(range(N))
    if kind == "dict":
        return Dictionary((i, i) for i in range(N))
    return HashDictionary((i, i) for i in range(N))


@pytest.mark.parametrize("kind", ["list", "dict", "hdict"])
def test_one_change_in_100k_collection_writes_a_handful_of_atoms(kind: str) -> None:
    storage = CountingStorage()
    with ObjectSpace(storage) as space:
        db = space.new_database("big")
        with db.transaction() as tr:
            tr.set_root_object("c", build(kind))
        initial = storage.batch_sizes[-1]
        # The bulk load itself is O(n) atoms: about n / BUILD_WIDTH leaves.
        assert initial < 2 * N / BUILD_WIDTH + 50

        for key in (0, N // 2, N - 1, 12_345):
            with db.transaction() as tr:
                tr.set_root_object("c", tr.get_root_object("c").set_at(key, -1))
            assert storage.batch_sizes[-1] <= MAX_ATOMS_PER_SMALL_CHANGE, storage.batch_sizes

        with db.transaction() as tr:
            collection = tr.get_root_object("c")
            assert collection.count == N
            assert collection.get_at(12_345) == -1
            assert collection.get_at(1) == 1


def test_atoms_written_grow_with_log_n() -> None:
    """From 1,000 to 100,000 keys the written path grows by at most one node per 16x."""
    sizes = {}
    for n in (1_000, 100_000):
        storage = CountingStorage()
        with ObjectSpace(storage) as space:
            db = space.new_database("d")
            with db.transaction() as tr:
                tr.set_root_object("c", Dictionary((i, i) for i in range(n)))
            with db.transaction() as tr:
                tr.set_root_object("c", tr.get_root_object("c").set_at(n // 3, "x"))
            sizes[n] = storage.batch_sizes[-1]
    growth = math.ceil(math.log(100, 16))
    assert sizes[100_000] <= sizes[1_000] + growth, sizes


def test_bulk_update_of_existing_tree_does_not_copy_per_item() -> None:
    """update() of k keys into a stored n-key Dictionary writes O(k/width + log n) atoms."""
    storage = CountingStorage()
    with ObjectSpace(storage) as space:
        db = space.new_database("d")
        with db.transaction() as tr:
            tr.set_root_object("c", Dictionary((i, i) for i in range(N)))
        with db.transaction() as tr:
            d = tr.get_root_object("c")
            tr.set_root_object("c", d.update((N + i, i) for i in range(5_000)))
        # 5,000 appended keys fill about 5,000/64 new leaves plus their parents.
        assert storage.batch_sizes[-1] < 5_000 / 32 + 20, storage.batch_sizes[-1]
