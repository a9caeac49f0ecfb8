"""The storage contract of `protobase.storage.interfaces`, run against every backend.

Only raw bytes go through the storage here: atoms are `frame_atom(payload)`
(or arbitrary bytes, since a storage must not interpret them).
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from protobase import (
    AtomNotFoundError,
    AtomPointer,
    CommitBatch,
    RootConflict,
    RootRef,
    Storage,
    StorageError,
)
from protobase.atoms import frame_atom, new_transaction_id, unframe_atom
from protobase.codec import decode, encode


def make_batch(*payloads: bytes) -> CommitBatch:
    """A batch with a fresh transaction id whose atoms are the framed payloads."""
    return CommitBatch(new_transaction_id(), [frame_atom(payload) for payload in payloads])


def commit_next(storage: Storage, *payloads: bytes, root_index: int = 0) -> CommitBatch:
    """Commit a batch on top of the current root, its atom `root_index` as the new root."""
    batch = make_batch(*(payloads or (b"root",)))
    expected = storage.read_root().version
    ref = storage.commit(batch, expected, batch.pointer(root_index))
    assert ref == RootRef(batch.pointer(root_index), expected + 1)
    return batch


def pointers_of(batch: CommitBatch) -> list[AtomPointer]:
    return [batch.pointer(i) for i in range(len(batch.atoms))]


def assert_not_stored(storage: Storage, batch: CommitBatch) -> None:
    for pointer in pointers_of(batch):
        with pytest.raises(AtomNotFoundError):
            storage.get_atoms([pointer])


# --------------------------------------------------------------------------
# Root and versions
# --------------------------------------------------------------------------


def test_implements_the_storage_protocol(storage: Storage) -> None:
    assert isinstance(storage, Storage)


def test_empty_storage_root(storage: Storage) -> None:
    root = storage.read_root()
    assert root == RootRef(None, 0)
    assert root.pointer is None
    assert root.version == 0


def test_commit_returns_next_version_and_read_root_reflects_it(storage: Storage) -> None:
    batch = make_batch(b"child", b"root")
    ref = storage.commit(batch, 0, batch.pointer(1))
    assert ref == RootRef(AtomPointer(batch.transaction_id, 1), 1)
    assert storage.read_root() == ref
    assert storage.get_atoms(pointers_of(batch)) == list(batch.atoms)


def test_versions_increase_by_exactly_one_per_commit(storage: Storage) -> None:
    for version in range(1, 21):
        batch = make_batch(f"root {version}".encode())
        ref = storage.commit(batch, version - 1, batch.pointer(0))
        assert ref.version == version
        assert storage.read_root() == RootRef(batch.pointer(0), version)


# --------------------------------------------------------------------------
# Compare-and-set
# --------------------------------------------------------------------------


@pytest.mark.parametrize("expected", [0, 1, 3, 4, 100, -1])
def test_wrong_expected_version_raises_root_conflict_and_writes_nothing(
    storage: Storage, expected: int
) -> None:
    commit_next(storage)
    last = commit_next(storage)
    before = storage.read_root()
    assert before.version == 2
    batch = make_batch(b"loser", b"loser root")
    with pytest.raises(RootConflict):
        storage.commit(batch, expected, batch.pointer(1))
    assert storage.read_root() == before
    assert before.pointer == last.pointer(0)
    assert_not_stored(storage, batch)
    # Nothing of the failed attempt remains: the same batch commits on the right version.
    assert storage.commit(batch, 2, batch.pointer(1)) == RootRef(batch.pointer(1), 3)
    assert storage.get_atoms(pointers_of(batch)) == list(batch.atoms)


def test_root_conflict_on_empty_storage(storage: Storage) -> None:
    batch = make_batch(b"root")
    with pytest.raises(RootConflict):
        storage.commit(batch, 1, batch.pointer(0))
    assert storage.read_root() == RootRef(None, 0)
    assert_not_stored(storage, batch)


def test_root_conflict_is_a_storage_error() -> None:
    assert issubclass(RootConflict, StorageError)
    assert issubclass(AtomNotFoundError, StorageError)


# --------------------------------------------------------------------------
# Idempotence by transaction id
# --------------------------------------------------------------------------


def test_recommit_of_same_transaction_returns_same_root_ref(storage: Storage) -> None:
    batch = make_batch(b"a0", b"a1")
    first = storage.commit(batch, 0, batch.pointer(1))
    assert first == RootRef(batch.pointer(1), 1)
    # The usual retry: same batch, same (now stale) expected version.
    assert storage.commit(batch, 0, batch.pointer(1)) == first
    assert storage.read_root() == first
    assert storage.get_atoms(pointers_of(batch)) == list(batch.atoms)


def test_recommit_after_other_commits_returns_earlier_root_ref(storage: Storage) -> None:
    batch = make_batch(b"a0", b"a1")
    first = storage.commit(batch, 0, batch.pointer(0))
    commit_next(storage, b"b")
    latest = commit_next(storage, b"c")
    current = storage.read_root()
    assert current == RootRef(latest.pointer(0), 3)
    for expected in (0, 1, current.version):
        assert storage.commit(batch, expected, batch.pointer(0)) == first
        assert storage.read_root() == current
    assert storage.get_atoms(pointers_of(batch)) == list(batch.atoms)


@pytest.mark.parametrize(
    "other_atoms",
    [
        lambda atoms: [frame_atom(b"different"), atoms[1]],
        lambda atoms: [*atoms, frame_atom(b"extra")],
        lambda atoms: atoms[:1],
        lambda atoms: [atoms[1], atoms[0]],
    ],
    ids=["changed", "extra", "fewer", "reordered"],
)
def test_same_transaction_id_with_different_atoms_raises(
    storage: Storage, other_atoms: Callable[[list[bytes]], list[bytes]]
) -> None:
    batch = make_batch(b"x0", b"x1")
    first = storage.commit(batch, 0, batch.pointer(0))
    impostor = CommitBatch(batch.transaction_id, other_atoms(list(batch.atoms)))
    for expected in (0, first.version):
        with pytest.raises(StorageError) as caught:
            storage.commit(impostor, expected, impostor.pointer(0))
        assert not isinstance(caught.value, RootConflict)
        assert storage.read_root() == first
    assert storage.get_atoms(pointers_of(batch)) == list(batch.atoms)


# --------------------------------------------------------------------------
# The new root must be a stored atom
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outside",
    [
        lambda batch, earlier: AtomPointer(new_transaction_id(), 0),
        lambda batch, earlier: batch.pointer(len(batch.atoms)),
        lambda batch, earlier: batch.pointer(len(batch.atoms) + 100),
        lambda batch, earlier: earlier.pointer(len(earlier.atoms)),
    ],
    ids=["unknown-transaction", "past-batch-end", "far-past-batch-end", "past-earlier-commit"],
)
def test_new_root_outside_batch_and_not_stored_raises(
    storage: Storage, outside: Callable[[CommitBatch, CommitBatch], AtomPointer]
) -> None:
    earlier = commit_next(storage, b"e0", b"e1")
    before = storage.read_root()
    batch = make_batch(b"n0", b"n1")
    with pytest.raises(StorageError) as caught:
        storage.commit(batch, before.version, outside(batch, earlier))
    assert not isinstance(caught.value, RootConflict)
    assert storage.read_root() == before
    assert_not_stored(storage, batch)
    # The refused attempt left nothing behind: the batch commits correctly afterwards.
    assert storage.commit(batch, before.version, batch.pointer(1)) == RootRef(
        batch.pointer(1), before.version + 1
    )


def test_new_root_may_point_to_an_atom_of_an_earlier_commit(storage: Storage) -> None:
    earlier = commit_next(storage, b"e0", b"e1")
    batch = make_batch(b"unrelated")
    ref = storage.commit(batch, 1, earlier.pointer(1))
    assert ref == RootRef(earlier.pointer(1), 2)
    assert storage.read_root() == ref
    assert storage.get_atoms([ref.pointer]) == [earlier.atoms[1]]
    assert storage.get_atoms(pointers_of(batch)) == list(batch.atoms)


# --------------------------------------------------------------------------
# Reading atoms
# --------------------------------------------------------------------------


def test_get_atoms_is_batched_and_keeps_order_and_duplicates(storage: Storage) -> None:
    first = commit_next(storage, b"a0", b"a1", b"a2")
    second = commit_next(storage, b"b0", b"b1")
    third = commit_next(storage, b"c0")
    wanted = [
        second.pointer(1),
        first.pointer(0),
        third.pointer(0),
        first.pointer(2),
        second.pointer(1),
        first.pointer(0),
        second.pointer(0),
        first.pointer(1),
    ]
    expected = [
        frame_atom(name) for name in (b"b1", b"a0", b"c0", b"a2", b"b1", b"a0", b"b0", b"a1")
    ]
    assert storage.get_atoms(wanted) == expected
    assert storage.get_atoms(list(reversed(wanted))) == list(reversed(expected))


def test_get_atoms_of_no_pointers_is_empty(storage: Storage) -> None:
    commit_next(storage)
    assert storage.get_atoms([]) == []


def test_exact_bytes_are_returned(storage: Storage) -> None:
    rng = random.Random(1234)
    atoms = [
        b"",
        frame_atom(b""),
        b"\x00",
        bytes(range(256)),
        b"\x00" * 1000,
        frame_atom(rng.randbytes(1 << 20)),
        rng.randbytes(1 << 20),
        b"\r\n\x1a trailing newline\n",
    ]
    batch = CommitBatch(new_transaction_id(), list(atoms))
    storage.commit(batch, 0, batch.pointer(5))
    returned = storage.get_atoms(pointers_of(batch))
    assert len(returned) == len(atoms)
    for got, want in zip(returned, atoms, strict=True):
        assert isinstance(got, bytes)
        assert len(got) == len(want)
        assert got == want
    assert storage.get_atoms([batch.pointer(0)]) == [b""]


def test_stored_atoms_do_not_change_when_the_caller_reuses_its_list(storage: Storage) -> None:
    atoms = [frame_atom(b"original 0"), frame_atom(b"original 1")]
    batch = CommitBatch(new_transaction_id(), atoms)
    storage.commit(batch, 0, batch.pointer(0))
    atoms[0] = frame_atom(b"replaced")
    atoms.append(frame_atom(b"appended"))
    assert storage.get_atoms([batch.pointer(0), batch.pointer(1)]) == [
        frame_atom(b"original 0"),
        frame_atom(b"original 1"),
    ]
    with pytest.raises(AtomNotFoundError):
        storage.get_atoms([batch.pointer(2)])


def test_unknown_pointer_on_empty_storage_raises(storage: Storage) -> None:
    with pytest.raises(AtomNotFoundError):
        storage.get_atoms([AtomPointer(new_transaction_id(), 0)])


@pytest.mark.parametrize(
    "unknown",
    [
        lambda batch: AtomPointer(new_transaction_id(), 0),
        lambda batch: batch.pointer(len(batch.atoms)),
        lambda batch: batch.pointer(2**32 - 1),
        lambda batch: AtomPointer(bytes(16), 0),
    ],
    ids=["unknown-transaction", "past-batch-end", "max-index", "zero-transaction"],
)
def test_unknown_pointer_raises_atom_not_found(
    storage: Storage, unknown: Callable[[CommitBatch], AtomPointer]
) -> None:
    batch = commit_next(storage, b"k0", b"k1")
    missing = unknown(batch)
    with pytest.raises(AtomNotFoundError):
        storage.get_atoms([missing])
    with pytest.raises(AtomNotFoundError):
        storage.get_atoms([batch.pointer(0), missing, batch.pointer(1)])
    assert storage.get_atoms([batch.pointer(0)]) == [batch.atoms[0]]


def test_stored_atoms_pass_their_checksum_and_decode(storage: Storage) -> None:
    values = [None, {"name": "root", "children": [1, 2, 3]}, (2**70, "é😀"), b"\x00" * 300]
    payloads = [encode(value) for value in values]
    batch = make_batch(*payloads)
    storage.commit(batch, 0, batch.pointer(1))
    stored = storage.get_atoms(pointers_of(batch))
    for index, (data, payload, value) in enumerate(zip(stored, payloads, values, strict=True)):
        pointer = batch.pointer(index)
        assert unframe_atom(data, pointer) == payload
        assert decode(unframe_atom(data, pointer)) == value


# --------------------------------------------------------------------------
# Closing
# --------------------------------------------------------------------------


def test_operations_after_close_raise_storage_error(storage: Storage) -> None:
    committed = commit_next(storage, b"before close")
    storage.close()
    with pytest.raises(StorageError):
        storage.read_root()
    with pytest.raises(StorageError):
        storage.get_atoms([committed.pointer(0)])
    with pytest.raises(StorageError):
        storage.get_atoms([])
    batch = make_batch(b"after close")
    with pytest.raises(StorageError):
        storage.commit(batch, 1, batch.pointer(0))
    # Even the idempotent retry of an earlier commit is refused.
    with pytest.raises(StorageError):
        storage.commit(committed, 0, committed.pointer(0))


def test_close_is_idempotent(storage: Storage) -> None:
    commit_next(storage)
    assert storage.close() is None
    assert storage.close() is None
    with pytest.raises(StorageError):
        storage.read_root()


# --------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------

THREADS = 8
COMMITS_PER_THREAD = 25
"""8 threads of 25 commits: 200 compare-and-set commits racing each other. On the
cluster, where the 50 per thread took some 6 s more of the suite's budget, a
trial run met about 800 RootConflicts (4 retries per commit); file storage
about 50, memory a few."""


def _cas_commit(
    storage: Storage, payloads: Callable[[int], list[bytes]]
) -> tuple[CommitBatch, RootRef]:
    """Commit with a read-root / compare-and-set loop; a fresh transaction per attempt.

    `payloads(version)` builds the atoms for a commit that would become `version`.
    """
    while True:
        root = storage.read_root()
        batch = CommitBatch(new_transaction_id(), payloads(root.version + 1))
        try:
            ref = storage.commit(batch, root.version, batch.pointer(0))
        except RootConflict:
            continue
        assert ref == RootRef(batch.pointer(0), root.version + 1)
        return batch, ref


def test_concurrent_cas_writers_lose_no_commit(storage: Storage) -> None:
    start = threading.Barrier(THREADS, timeout=30)

    def writer(number: int) -> list[tuple[CommitBatch, RootRef]]:
        start.wait()
        done = []
        for i in range(COMMITS_PER_THREAD):

            def payloads(version: int, i: int = i) -> list[bytes]:
                return [
                    frame_atom(f"v{version} w{number} #{i}".encode()),
                    frame_atom(os.urandom(8)),
                ]

            done.append(_cas_commit(storage, payloads))
        return done

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(writer, number) for number in range(THREADS)]
        results = [commit for future in futures for commit in future.result(timeout=60)]

    total = THREADS * COMMITS_PER_THREAD
    assert storage.read_root().version == total
    assert sorted(ref.version for _, ref in results) == list(range(1, total + 1))
    for batch, ref in results:
        assert storage.get_atoms(pointers_of(batch)) == list(batch.atoms)
        root_payload = unframe_atom(storage.get_atoms([ref.pointer])[0], ref.pointer)
        assert root_payload.startswith(f"v{ref.version} ".encode())


def test_concurrent_readers_see_monotonic_versions_and_readable_roots(storage: Storage) -> None:
    writers = 4
    readers = 4
    start = threading.Barrier(writers + readers, timeout=30)
    writers_done = threading.Event()

    def writer(number: int) -> int:
        start.wait()
        for i in range(COMMITS_PER_THREAD):

            def payloads(version: int, i: int = i) -> list[bytes]:
                return [frame_atom(f"v{version} w{number} #{i}".encode())]

            _cas_commit(storage, payloads)
        return COMMITS_PER_THREAD

    def reader() -> int:
        start.wait()
        last = -1
        observed = 0
        while True:
            finished = writers_done.is_set()
            root = storage.read_root()
            assert root.version >= last, f"version went back from {last} to {root.version}"
            last = root.version
            if root.pointer is None:
                assert root.version == 0
            else:
                # Atomicity: the atom a visible root names is readable, and is that root's atom.
                data = storage.get_atoms([root.pointer])[0]
                payload = unframe_atom(data, root.pointer)
                assert payload.startswith(f"v{root.version} ".encode()), (root, payload)
                observed += 1
            if finished:
                return observed

    with ThreadPoolExecutor(writers + readers) as pool:
        reading = [pool.submit(reader) for _ in range(readers)]
        writing = [pool.submit(writer, number) for number in range(writers)]
        try:
            written = sum(future.result(timeout=60) for future in writing)
        finally:
            writers_done.set()
        observations = [future.result(timeout=60) for future in reading]

    assert written == writers * COMMITS_PER_THREAD
    assert storage.read_root().version == written
    assert all(count > 0 for count in observations)


# --------------------------------------------------------------------------
# The split contract: put_batch, set_root, committed_root
# --------------------------------------------------------------------------


def test_put_batch_then_set_root_makes_atoms_readable_and_moves_the_root(
    storage: Storage,
) -> None:
    earlier = commit_next(storage, b"earlier")
    batch = make_batch(b"p0", b"p1", b"p2")
    assert storage.put_batch(batch) is None
    assert storage.read_root() == RootRef(earlier.pointer(0), 1)
    ref = storage.set_root(1, batch.pointer(2), batch.transaction_id)
    assert ref == RootRef(batch.pointer(2), 2)
    assert storage.read_root() == ref
    assert storage.get_atoms(pointers_of(batch)) == list(batch.atoms)
    assert storage.get_atoms([earlier.pointer(0)]) == list(earlier.atoms)


def test_put_batch_is_idempotent_for_the_same_atoms(storage: Storage) -> None:
    batch = make_batch(b"i0", b"i1")
    storage.put_batch(batch)
    storage.put_batch(batch)
    storage.put_batch(CommitBatch(batch.transaction_id, list(batch.atoms)))
    assert storage.set_root(0, batch.pointer(1), batch.transaction_id) == RootRef(
        batch.pointer(1), 1
    )
    # Putting it again once its root change took effect changes nothing either.
    storage.put_batch(batch)
    assert storage.read_root() == RootRef(batch.pointer(1), 1)
    assert storage.get_atoms(pointers_of(batch)) == list(batch.atoms)


@pytest.mark.parametrize("rooted", [False, True], ids=["put", "rooted"])
@pytest.mark.parametrize(
    "other_atoms",
    [
        lambda atoms: [frame_atom(b"different"), atoms[1]],
        lambda atoms: [*atoms, frame_atom(b"extra")],
        lambda atoms: atoms[:1],
    ],
    ids=["changed", "extra", "fewer"],
)
def test_put_batch_of_a_stored_id_with_other_atoms_raises(
    storage: Storage, other_atoms: Callable[[list[bytes]], list[bytes]], rooted: bool
) -> None:
    batch = make_batch(b"o0", b"o1")
    storage.put_batch(batch)
    if rooted:
        storage.set_root(0, batch.pointer(0), batch.transaction_id)
    before = storage.read_root()
    impostor = CommitBatch(batch.transaction_id, other_atoms(list(batch.atoms)))
    with pytest.raises(StorageError) as caught:
        storage.put_batch(impostor)
    assert not isinstance(caught.value, RootConflict)
    assert storage.read_root() == before
    assert storage.get_atoms(pointers_of(batch)) == list(batch.atoms)
    if not rooted:
        # The first atoms are the ones the root change writes.
        assert storage.set_root(0, batch.pointer(1), batch.transaction_id) == RootRef(
            batch.pointer(1), 1
        )
        assert storage.get_atoms(pointers_of(batch)) == list(batch.atoms)


@pytest.mark.parametrize("expected", [0, 1, 3, -1])
def test_set_root_with_a_stale_version_raises_root_conflict_and_changes_nothing(
    storage: Storage, expected: int
) -> None:
    commit_next(storage)
    commit_next(storage)
    before = storage.read_root()
    assert before.version == 2
    batch = make_batch(b"late")
    storage.put_batch(batch)
    with pytest.raises(RootConflict):
        storage.set_root(expected, batch.pointer(0), batch.transaction_id)
    assert storage.read_root() == before
    assert storage.committed_root(batch.transaction_id) is None
    # The batch stays put: the same root change succeeds on the right version.
    assert storage.set_root(2, batch.pointer(0), batch.transaction_id) == RootRef(
        batch.pointer(0), 3
    )
    assert storage.get_atoms(pointers_of(batch)) == list(batch.atoms)


def test_set_root_repeated_returns_the_first_root_ref_after_other_commits(
    storage: Storage,
) -> None:
    batch = make_batch(b"r0", b"r1")
    storage.put_batch(batch)
    first = storage.set_root(0, batch.pointer(1), batch.transaction_id)
    assert first == RootRef(batch.pointer(1), 1)
    assert storage.set_root(0, batch.pointer(1), batch.transaction_id) == first
    commit_next(storage, b"s")
    latest = commit_next(storage, b"t")
    current = storage.read_root()
    assert current == RootRef(latest.pointer(0), 3)
    for expected in (0, 1, 2, current.version):
        assert storage.set_root(expected, batch.pointer(1), batch.transaction_id) == first
        assert storage.read_root() == current
    assert storage.committed_root(batch.transaction_id) == first


@pytest.mark.parametrize(
    "outside",
    [
        lambda put, earlier: AtomPointer(new_transaction_id(), 0),
        lambda put, earlier: put.pointer(len(put.atoms)),
        lambda put, earlier: earlier.pointer(len(earlier.atoms)),
    ],
    ids=["unknown-transaction", "past-put-batch-end", "past-committed-batch-end"],
)
def test_set_root_to_a_pointer_into_no_stored_batch_raises(
    storage: Storage, outside: Callable[[CommitBatch, CommitBatch], AtomPointer]
) -> None:
    earlier = commit_next(storage, b"e0", b"e1")
    before = storage.read_root()
    put = make_batch(b"n0", b"n1")
    storage.put_batch(put)
    with pytest.raises(StorageError) as caught:
        storage.set_root(before.version, outside(put, earlier), put.transaction_id)
    assert not isinstance(caught.value, RootConflict)
    assert storage.read_root() == before
    assert storage.committed_root(put.transaction_id) is None
    # The refusal left the put batch usable.
    assert storage.set_root(before.version, put.pointer(1), put.transaction_id) == RootRef(
        put.pointer(1), before.version + 1
    )


def test_set_root_may_point_into_an_earlier_commit_under_a_new_id(storage: Storage) -> None:
    earlier = commit_next(storage, b"e0", b"e1")
    change_id = new_transaction_id()
    ref = storage.set_root(1, earlier.pointer(1), change_id)
    assert ref == RootRef(earlier.pointer(1), 2)
    assert storage.read_root() == ref
    assert storage.committed_root(change_id) == ref
    assert storage.set_root(2, earlier.pointer(1), change_id) == ref


def test_set_root_may_name_a_put_batch_under_another_transaction_id(
    storage: Storage, request: pytest.FixtureRequest
) -> None:
    # interfaces.py: `transaction_id` names the root change, "usually" the
    # batch's id; a cluster's meta group moves roots into batches it did not put.
    put = make_batch(b"q0", b"q1")
    storage.put_batch(put)
    change_id = new_transaction_id()
    ref = storage.set_root(0, put.pointer(1), change_id)
    assert ref == RootRef(put.pointer(1), 1)
    assert storage.committed_root(change_id) == ref
    assert storage.get_atoms(pointers_of(put)) == list(put.atoms)


def test_committed_root_answers_for_committed_unknown_and_unrooted_ids(
    storage: Storage,
) -> None:
    by_commit = make_batch(b"c")
    first = storage.commit(by_commit, 0, by_commit.pointer(0))
    by_split = make_batch(b"s0", b"s1")
    storage.put_batch(by_split)
    unrooted = make_batch(b"never rooted")
    storage.put_batch(unrooted)
    assert storage.committed_root(by_split.transaction_id) is None
    second = storage.set_root(1, by_split.pointer(1), by_split.transaction_id)
    commit_next(storage, b"later")
    assert (
        storage.committed_root(by_commit.transaction_id)
        == first
        == RootRef(by_commit.pointer(0), 1)
    )
    assert (
        storage.committed_root(by_split.transaction_id) == second == RootRef(by_split.pointer(1), 2)
    )
    assert storage.committed_root(unrooted.transaction_id) is None
    assert storage.committed_root(new_transaction_id()) is None
    assert storage.committed_root(bytes(16)) is None


def test_commit_is_put_batch_and_set_root(storage: Storage) -> None:
    batch = make_batch(b"c0", b"c1")
    ref = storage.commit(batch, 0, batch.pointer(1))
    assert storage.committed_root(batch.transaction_id) == ref == RootRef(batch.pointer(1), 1)
    # The halves see the commit as their own: a repeat of either changes nothing.
    storage.put_batch(batch)
    assert storage.set_root(0, batch.pointer(1), batch.transaction_id) == ref
    with pytest.raises(StorageError):
        storage.put_batch(CommitBatch(batch.transaction_id, [frame_atom(b"other")]))
    # A batch put first commits with `commit` as well.
    put = make_batch(b"d0")
    storage.put_batch(put)
    assert storage.commit(put, 1, put.pointer(0)) == RootRef(put.pointer(0), 2)
    assert storage.committed_root(put.transaction_id) == RootRef(put.pointer(0), 2)
    assert storage.read_root() == RootRef(put.pointer(0), 2)


def test_split_operations_after_close_raise_storage_error(storage: Storage) -> None:
    committed = commit_next(storage, b"before close")
    storage.close()
    batch = make_batch(b"after close")
    with pytest.raises(StorageError):
        storage.put_batch(batch)
    with pytest.raises(StorageError):
        storage.set_root(1, committed.pointer(0), batch.transaction_id)
    with pytest.raises(StorageError):
        storage.committed_root(committed.transaction_id)
