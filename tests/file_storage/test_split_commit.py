"""The split commit (put_batch, set_root, committed_root) of StandaloneFileStorage across reopening.

The conformance suite (tests/storage) checks the contract within one open
storage; these tests close (or abandon) the directory and open it again, so
they check what recovery rebuilds: roots, atoms and the outcome of every
root change by transaction id.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from protobase import (
    AtomNotFoundError,
    AtomPointer,
    CommitBatch,
    RootConflict,
    RootRef,
    StandaloneFileStorage,
    StorageError,
)
from protobase.atoms import frame_atom, new_transaction_id


def make_batch(*payloads: bytes) -> CommitBatch:
    return CommitBatch(new_transaction_id(), [frame_atom(payload) for payload in payloads])


def pointers_of(batch: CommitBatch) -> list[AtomPointer]:
    return [batch.pointer(i) for i in range(len(batch.atoms))]


def test_root_change_of_a_put_batch_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "db"
    first = make_batch(b"a0", b"a1")
    second = make_batch(b"b0")
    with StandaloneFileStorage(path) as storage:
        storage.put_batch(first)
        first_ref = storage.set_root(0, first.pointer(1), first.transaction_id)
        storage.put_batch(second)
        second_ref = storage.set_root(1, second.pointer(0), second.transaction_id)
    with StandaloneFileStorage(path) as storage:
        assert storage.read_root() == second_ref == RootRef(second.pointer(0), 2)
        assert storage.get_atoms(pointers_of(first)) == list(first.atoms)
        assert storage.get_atoms(pointers_of(second)) == list(second.atoms)
        assert storage.committed_root(first.transaction_id) == first_ref
        assert storage.committed_root(second.transaction_id) == second_ref
        # A client repeating a request whose answer it lost gets the first answer.
        assert storage.set_root(0, first.pointer(1), first.transaction_id) == first_ref
        storage.put_batch(first)
        assert storage.read_root() == second_ref
        with pytest.raises(StorageError) as caught:
            storage.put_batch(CommitBatch(first.transaction_id, [frame_atom(b"other")]))
        assert not isinstance(caught.value, RootConflict)


def test_a_put_batch_never_rooted_has_no_outcome_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "db"
    rooted = make_batch(b"rooted")
    unrooted = make_batch(b"never rooted")
    with StandaloneFileStorage(path) as storage:
        ref = storage.commit(rooted, 0, rooted.pointer(0))
        storage.put_batch(unrooted)
        assert storage.committed_root(unrooted.transaction_id) is None
    with StandaloneFileStorage(path) as storage:
        assert storage.read_root() == ref
        assert storage.committed_root(unrooted.transaction_id) is None
        assert storage.committed_root(rooted.transaction_id) == ref
        # Its root change may still come later, put again after the restart.
        storage.put_batch(unrooted)
        assert storage.set_root(1, unrooted.pointer(0), unrooted.transaction_id) == RootRef(
            unrooted.pointer(0), 2
        )
    with StandaloneFileStorage(path) as storage:
        assert storage.read_root() == RootRef(unrooted.pointer(0), 2)
        assert storage.get_atoms([unrooted.pointer(0)]) == list(unrooted.atoms)


def test_acknowledged_root_change_survives_a_process_that_never_closes(tmp_path: Path) -> None:
    path = tmp_path / "db"
    script = textwrap.dedent(
        """
        import os, sys
        from protobase import CommitBatch, StandaloneFileStorage
        from protobase.atoms import frame_atom
        storage = StandaloneFileStorage(sys.argv[1])
        batch = CommitBatch(bytes.fromhex(sys.argv[2]), [frame_atom(b"x0"), frame_atom(b"x1")])
        storage.put_batch(batch)
        ref = storage.set_root(0, batch.pointer(1), batch.transaction_id)
        print(ref.version, flush=True)
        os._exit(0)  # no close: no checkpoint, recovery scans the WAL
        """
    )
    transaction_id = new_transaction_id()
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), transaction_id.hex()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "1"
    expected = CommitBatch(transaction_id, [frame_atom(b"x0"), frame_atom(b"x1")])
    with StandaloneFileStorage(path) as storage:
        assert storage.read_root() == RootRef(expected.pointer(1), 1)
        assert storage.committed_root(transaction_id) == RootRef(expected.pointer(1), 1)
        assert storage.get_atoms(pointers_of(expected)) == list(expected.atoms)


def test_atoms_of_a_batch_put_before_a_root_change_survive_reopening(tmp_path: Path) -> None:
    # Invariant 2: a process reopening sees a root only together with every
    # atom of the batches put before it. A server rebasing a client's put
    # batch commits a new root (another transaction id) that points into it.
    path = tmp_path / "db"
    put = make_batch(b"client node", b"client root")
    rebased = make_batch(b"merged root pointing into the client's batch")
    with StandaloneFileStorage(path) as storage:
        storage.put_batch(put)
        ref = storage.commit(rebased, 0, rebased.pointer(0))
        assert storage.get_atoms(pointers_of(put)) == list(put.atoms)
    with StandaloneFileStorage(path) as storage:
        assert storage.read_root() == ref
        try:
            found = storage.get_atoms(pointers_of(put))
        except AtomNotFoundError as exc:
            pytest.fail(f"an atom put before root version {ref.version} is gone: {exc}")
        assert found == list(put.atoms)
