"""The commit protocol of `protobase.committer` and the rebase rule of `protobase.merge`.

- `AtomWriter.links` holds exactly the pointers each atom contains;
- unknown outcomes are resolved with `committed_root`, never reported twice;
- retries are bounded and leave nothing behind;
- `new_database` under concurrency neither loops nor loses a database;
- `merge_databases` as a pure function;
- the server-side shape: a change already stored (`stored_root`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protobase import (
    AtomNotFoundError,
    AtomPointer,
    CommitBatch,
    ConflictError,
    Database,
    DatabaseExistsError,
    DBObject,
    Dictionary,
    HashDictionary,
    List,
    Literal,
    MemoryStorage,
    ObjectSpace,
    RootConflict,
    RootRef,
    StandaloneFileStorage,
    Storage,
    StorageError,
    Transaction,
)
from protobase import committer as committer_module
from protobase.atoms import new_transaction_id, unframe_atom
from protobase.codec import Codec
from protobase.collections.btree import MISSING
from protobase.committer import MAX_ATTEMPTS, SPACE_FORMAT, SpaceChange
from protobase.errors import CommitOutcomeUnknown
from protobase.merge import merge_databases
from protobase.reachability import LITERAL, NODE, VALUE, _node_children, _PointerCollector
from protobase.serialization import AtomWriter
from protobase.storage.interfaces import DatabaseReads
from protobase.transaction import Snapshot


class Item(DBObject):
    pass


class RecordingStorage(MemoryStorage):
    """A MemoryStorage that keeps every batch committed through it."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[CommitBatch] = []
        self.roots: list[AtomPointer] = []
        """The space root each recorded batch was committed with."""

    def commit(self, batch: CommitBatch, expected_root_version: int, new_root: AtomPointer):  # type: ignore[no-untyped-def]
        ref = super().commit(batch, expected_root_version, new_root)
        self.batches.append(batch)
        self.roots.append(new_root)
        return ref


def root_value(db: Database, name: str) -> Any:
    """Root `name`, read eagerly: a Literal as its str, a Dictionary as a dict."""
    tr = db.new_read_only_transaction()
    try:
        value = tr.get_root_object(name)
        if isinstance(value, Literal):
            return str(value)
        if isinstance(value, Dictionary):
            return value.to_dict()
        return value
    finally:
        tr.abort()


def root_names(db: Database) -> list[str]:
    tr = db.new_read_only_transaction()
    try:
        return sorted(tr.root_names())
    finally:
        tr.abort()


# --------------------------------------------------------------------------
# AtomWriter.links is exact
# --------------------------------------------------------------------------


def decoded_links(batch: CommitBatch, roots: Sequence[int] = (0,)) -> dict[int, set[AtomPointer]]:
    """For each atom of `batch`, the pointers the reachability walk finds in it.

    The batch is walked from its space root atoms (`roots`: the first one
    written, index 0, and after a rebase the merged one the commit names)
    with the decoding hooks of `protobase.reachability`, internal nodes'
    packed children included; every atom of the batch must be reached.
    """
    kinds = dict.fromkeys(roots, VALUE)
    order = list(roots)
    found: dict[int, set[AtomPointer]] = {}
    for index in order:
        pointer = batch.pointer(index)
        kind = kinds[index]
        collector = _PointerCollector()
        if kind != LITERAL:
            decoded = Codec(collector).decode(unframe_atom(batch.atoms[index], pointer))
            if kind == NODE:
                _node_children(decoded, collector.found)
        found[index] = {child for child, _ in collector.found}
        for child, child_kind in collector.found:
            if child.transaction_id == batch.transaction_id and child.index not in kinds:
                kinds[child.index] = child_kind
                order.append(child.index)
    assert sorted(found) == list(range(len(batch.atoms))), "the batch holds unreachable atoms"
    return found


def assert_links_exact(batch: CommitBatch, root: AtomPointer | None = None) -> None:
    """`batch.links` is what its atoms hold; `root`: the space root it was committed with."""
    assert batch.links is not None
    assert len(batch.links) == len(batch.atoms)
    roots = [0] if root is None or root.index == 0 else [0, root.index]
    expected = decoded_links(batch, roots)
    for index, links in enumerate(batch.links):
        assert set(links) == expected[index], f"links of atom {index}"


big_str = st.text(min_size=1, max_size=6).map(lambda text: f"{text}:" + "s" * 120)
big_bytes = st.binary(min_size=1, max_size=6).map(lambda data: data + b"b" * 120)
literals = st.one_of(big_str, big_bytes).map(Literal)
scalars = st.one_of(st.none(), st.integers(), st.text(max_size=8), literals)
keys = st.text(min_size=1, max_size=6)


def _wide_dictionary(count: int, value: Any) -> Dictionary:
    """More entries than a leaf holds: internal nodes with packed children."""
    return Dictionary({f"k{i:04}": [value, Literal(f"literal {i} " * 12)] for i in range(count)})


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    items = st.builds(Item, a=children, b=literals)
    return st.one_of(
        st.dictionaries(keys, children, max_size=12).map(Dictionary),
        st.lists(children, max_size=12).map(List),
        st.dictionaries(keys, items, max_size=12).map(HashDictionary),
        st.builds(_wide_dictionary, st.integers(65, 200), children),
        st.lists(items, min_size=65, max_size=150).map(List),
        st.lists(children, max_size=3),
        st.builds(Item, a=children, b=children),
    )


nested_values = st.recursive(scalars, _containers, max_leaves=12)

LINK_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@LINK_SETTINGS
@given(value=nested_values, other=nested_values)
def test_links_are_exact_for_new_and_stored_values(value: Any, other: Any) -> None:
    storage = RecordingStorage()
    with ObjectSpace(storage) as space:
        db = space.new_database("links")
        anchored = Item(value=value, anchor=Literal("anchor " * 30))
        db.run(lambda tr: tr.set_root_object("value", anchored))
        assert_links_exact(storage.batches[-1])

        # Stored values referred to again (collection roots and literals of
        # earlier batches) next to new ones.
        def refer_again(tr: Transaction) -> None:
            stored = tr.get_root_object("value")
            tr.set_root_object("both", Dictionary({"old": stored, "new": other}))

        db.run(refer_again)
        batch = storage.batches[-1]
        assert_links_exact(batch)
        assert any(
            link.transaction_id != batch.transaction_id for links in batch.links for link in links
        ), "the second commit refers to nothing stored before"


def test_links_of_an_edited_stored_tree_include_its_unloaded_children() -> None:
    storage = RecordingStorage()
    with ObjectSpace(storage) as space:
        db = space.new_database("links")
        db.run(lambda tr: tr.set_root_object("big", _wide_dictionary(300, 0)))
        db.run(lambda tr: tr.set_root_object("big", tr.get_root_object("big").set_at("k0007", 1)))
        assert_links_exact(storage.batches[-1])


@LINK_SETTINGS
@given(value=nested_values)
def test_links_stay_exact_when_a_rebase_rewrites_the_change(value: Any) -> None:
    storage = RecordingStorage()
    with ObjectSpace(storage) as space:
        db = space.new_database("links")
        tr = db.new_transaction()
        tr.set_root_object("mine", value)
        db.run(lambda other: other.set_root_object("theirs", Literal("t" * 200)))
        tr.commit()
        # Its base was already old when it committed: merged first, then encoded.
        assert storage.roots[-1].index == 0
        assert_links_exact(storage.batches[-1], storage.roots[-1])
        assert root_names(db) == ["mine", "theirs"]


@pytest.mark.pure_python("replaces a method of a Committer instance")
@LINK_SETTINGS
@given(value=nested_values)
def test_links_stay_exact_when_a_rebase_follows_the_early_encoding(value: Any) -> None:
    """Encoded on the newest root outside the lock, then another thread commits first:
    the rebase adds the merged space root to the same batch."""
    storage = RecordingStorage()
    with ObjectSpace(storage) as space:
        db = space.new_database("links")
        tr = db.new_transaction()
        tr.set_root_object("mine", value)
        committer = space.committer
        original = committer._write_root
        raced: list[bool] = []

        def write_then_lose_the_race(writer: Any, databases: Any) -> Any:
            pointer = original(writer, databases)
            if not raced:
                raced.append(True)
                other = threading.Thread(
                    target=db.run, args=(lambda o: o.set_root_object("theirs", Literal("t")),)
                )
                other.start()
                other.join()
            return pointer

        committer._write_root = write_then_lose_the_race  # type: ignore[method-assign]
        tr.commit()
        assert raced
        # Both roots' atoms are in the batch (the first one unreachable), links exact.
        assert storage.roots[-1].index > 0
        assert_links_exact(storage.batches[-1], storage.roots[-1])
        assert root_names(db) == ["mine", "theirs"]


# --------------------------------------------------------------------------
# Unknown outcomes
# --------------------------------------------------------------------------

BACKENDS: dict[str, tuple[Callable[[Path], Storage], type, str]] = {
    "memory": (lambda path: MemoryStorage(), MemoryStorage, "commit"),
    "file": (lambda path: StandaloneFileStorage(path), StandaloneFileStorage, "commit_pipelined"),
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ObjectSpace, str]]:
    factory, _, _ = BACKENDS[request.param]
    with ObjectSpace(factory(tmp_path / "db")) as space:
        yield space, request.param


class Fault:
    """Replaces the commit method of a backend class; the first `times` calls fail."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        backend: str,
        fail: Callable[[CommitBatch], Exception],
        times: int,
        commit_first: bool,
    ) -> None:
        _, cls, method = BACKENDS[backend]
        original = getattr(cls, method)
        self.calls: list[CommitBatch] = []

        def faulty(storage: Storage, batch: CommitBatch, expected: int, root: AtomPointer) -> Any:
            self.calls.append(batch)
            if len(self.calls) <= times:
                if commit_first:
                    original(storage, batch, expected, root)
                raise fail(batch)
            return original(storage, batch, expected, root)

        monkeypatch.setattr(cls, method, faulty)


def lost_answer(batch: CommitBatch) -> Exception:
    return CommitOutcomeUnknown(
        "the connection dropped after the request left", batch.transaction_id
    )


def counting_run(db: Database) -> tuple[int, list[int]]:
    """Increment root "counter" with `db.run`; returns its result and the runs of the body."""
    runs: list[int] = []

    def increment(tr: Transaction) -> int:
        value = (tr.get_root_object("counter") or 0) + 1
        runs.append(value)
        tr.set_root_object("counter", value)
        return value

    return db.run(increment), runs


def test_unknown_outcome_of_a_commit_that_took_effect_is_found_once(
    backend: tuple[ObjectSpace, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, name = backend
    db = space.new_database("unknown")
    before = space.storage.read_root()
    fault = Fault(monkeypatch, name, lost_answer, times=1, commit_first=True)
    result, runs = counting_run(db)
    assert result == 1 and runs == [1]
    assert len(fault.calls) == 1, "a commit that took effect was attempted again"
    after = space.storage.read_root()
    assert after.version == before.version + 1
    assert after == space.storage.committed_root(fault.calls[0].transaction_id)
    assert root_value(db, "counter") == 1
    # The next commit builds on it normally.
    assert counting_run(db)[0] == 2
    assert space.storage.read_root().version == before.version + 2


@pytest.mark.parametrize("times", [1, 3])
def test_unknown_outcome_of_a_commit_that_did_not_take_effect_is_retried_once(
    backend: tuple[ObjectSpace, str], monkeypatch: pytest.MonkeyPatch, times: int
) -> None:
    space, name = backend
    db = space.new_database("unknown")
    before = space.storage.read_root()
    fault = Fault(monkeypatch, name, lost_answer, times=times, commit_first=False)
    result, runs = counting_run(db)
    assert result == 1 and runs == [1]
    assert len(fault.calls) == times + 1
    for lost in fault.calls[:times]:
        assert space.storage.committed_root(lost.transaction_id) is None
    after = space.storage.read_root()
    assert after.version == before.version + 1
    assert after == space.storage.committed_root(fault.calls[-1].transaction_id)
    assert root_value(db, "counter") == 1


def test_unknown_outcome_resolved_on_a_file_storage_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db"
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        db = space.new_database("unknown")
        with monkeypatch.context() as patch:
            Fault(patch, "file", lost_answer, times=1, commit_first=True)
            assert counting_run(db)[0] == 1
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        assert root_value(space.open_database("unknown"), "counter") == 1


# --------------------------------------------------------------------------
# Bounded retries
# --------------------------------------------------------------------------


def test_commit_gives_up_after_max_attempts_and_writes_nothing(
    backend: tuple[ObjectSpace, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, name = backend
    db = space.new_database("busy")
    db.run(lambda tr: tr.set_root_object("x", 0))
    before = space.storage.read_root()
    monkeypatch.setattr(committer_module, "BACKOFF_CAP", 0.0)

    def always_lost(batch: CommitBatch) -> Exception:
        return RootConflict("another process committed first")

    fault = Fault(monkeypatch, name, always_lost, times=10**9, commit_first=False)
    tr = db.new_transaction()
    tr.set_root_object("x", 1)
    with pytest.raises(ConflictError):
        tr.commit()
    assert len(fault.calls) == MAX_ATTEMPTS
    assert len({batch.transaction_id for batch in fault.calls}) == MAX_ATTEMPTS
    monkeypatch.undo()
    assert space.storage.read_root() == before
    for batch in fault.calls:
        assert space.storage.committed_root(batch.transaction_id) is None
        with pytest.raises(AtomNotFoundError):
            space.storage.get_atoms([batch.pointer(0)])
    assert root_value(db, "x") == 0


# --------------------------------------------------------------------------
# Creating databases concurrently
# --------------------------------------------------------------------------


class PlainStorage:
    """A MemoryStorage without `commit_pipelined`: the committer's unlocked retry path."""

    def __init__(self) -> None:
        self._inner = MemoryStorage()

    def __getattr__(self, name: str) -> Any:
        if name == "commit_pipelined":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def read_root(self) -> RootRef:
        return self._inner.read_root()

    def get_atoms(self, pointers: Any) -> list[bytes]:
        return self._inner.get_atoms(pointers)

    def put_batch(self, batch: CommitBatch) -> None:
        self._inner.put_batch(batch)

    def set_root(self, expected: int, new_root: AtomPointer, transaction_id: bytes) -> RootRef:
        return self._inner.set_root(expected, new_root, transaction_id)

    def committed_root(self, transaction_id: bytes) -> RootRef | None:
        return self._inner.committed_root(transaction_id)

    def commit(self, batch: CommitBatch, expected: int, new_root: AtomPointer) -> RootRef:
        return self._inner.commit(batch, expected, new_root)

    def close(self) -> None:
        self._inner.close()


SPACE_STORAGES: dict[str, Callable[[Path], Storage]] = {
    "memory": lambda path: MemoryStorage(),
    "plain": lambda path: PlainStorage(),  # type: ignore[dict-item]
    "file": lambda path: StandaloneFileStorage(path),
}


@pytest.fixture(params=list(SPACE_STORAGES))
def any_space(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectSpace]:
    with ObjectSpace(SPACE_STORAGES[request.param](tmp_path / "db")) as space:
        yield space


def in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run `work(i)` in `count` threads started together; results (or exceptions) in order."""
    start = threading.Barrier(count, timeout=30)

    def target(i: int) -> Any:
        start.wait()
        try:
            return work(i)
        except Exception as exc:  # the caller inspects it
            return exc

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(target, i) for i in range(count)]
        return [future.result(timeout=120) for future in futures]


def test_two_threads_creating_the_same_database_one_wins(any_space: ObjectSpace) -> None:
    for round_number in range(10):
        name = f"same{round_number}"
        outcomes = in_threads(2, lambda i, name=name: any_space.new_database(name))
        created = [o for o in outcomes if isinstance(o, Database)]
        refused = [o for o in outcomes if isinstance(o, DatabaseExistsError)]
        assert len(created) == 1 and len(refused) == 1, outcomes
        assert any_space.list_databases().count(name) == 1
    assert len(any_space.list_databases()) == 10


def test_many_threads_creating_different_databases_all_succeed(any_space: ObjectSpace) -> None:
    count = 12
    outcomes = in_threads(count, lambda i: any_space.new_database(f"db{i:02}"))
    assert all(isinstance(o, Database) for o in outcomes), outcomes
    assert sorted(any_space.list_databases()) == [f"db{i:02}" for i in range(count)]
    for i in range(count):
        db = any_space.open_database(f"db{i:02}")
        db.run(lambda tr, i=i: tr.set_root_object("n", i))
        assert root_value(db, "n") == i


# --------------------------------------------------------------------------
# merge_databases, a pure function
# --------------------------------------------------------------------------


class NoLoader:
    """Every tree here is in memory: the merge must not load a single node."""

    def load_node(self, pointer: AtomPointer) -> Any:
        raise AssertionError(f"loaded {pointer}")

    def load_nodes(self, pointers: Any) -> list[Any]:
        raise AssertionError(f"loaded {pointers}")


OID_A = b"a" * 16
OID_B = b"b" * 16


def state(objects: dict[bytes, int] | None = None, **roots: Any) -> dict[str, Any]:
    table = {oid: ("tests.Thing", {"n": n}) for oid, n in (objects or {}).items()}
    return {"roots": Dictionary(roots), "objects": HashDictionary(table)}


def with_roots(databases: Dictionary, name: str, **changes: Any) -> Dictionary:
    old = databases.get_at(name)
    roots = old["roots"]
    for key, value in changes.items():
        roots = roots.remove_at(key) if value is MISSING else roots.set_at(key, value)
    return databases.set_at(name, {"roots": roots, "objects": old["objects"]})


def with_object(databases: Dictionary, name: str, oid: bytes, n: int) -> Dictionary:
    old = databases.get_at(name)
    objects = old["objects"].set_at(oid, ("tests.Thing", {"n": n}))
    return databases.set_at(name, {"roots": old["roots"], "objects": objects})


def merge(
    base: Dictionary,
    mine: Dictionary,
    theirs: Dictionary,
    reads: dict[str, DatabaseReads] | None = None,
) -> Dictionary:
    return merge_databases(base, mine, theirs, NoLoader(), reads or {})


def roots_of(databases: Dictionary, name: str) -> dict[str, Any]:
    return dict(databases.get_at(name)["roots"].items())


def objects_of(databases: Dictionary, name: str) -> dict[bytes, Any]:
    return {oid: attrs["n"] for oid, (_, attrs) in databases.get_at(name)["objects"].items()}


BASE = Dictionary({"one": state({OID_A: 1, OID_B: 2}, a=1, b=2), "two": state(c=3)})


def test_merge_of_disjoint_root_changes_in_one_database() -> None:
    mine = with_roots(BASE, "one", a=10, new=1)
    theirs = with_roots(BASE, "one", b=20)
    merged = merge(BASE, mine, theirs)
    assert roots_of(merged, "one") == {"a": 10, "b": 20, "new": 1}
    assert roots_of(merged, "two") == {"c": 3}
    removed = merge(BASE, with_roots(BASE, "one", a=MISSING), theirs)
    assert roots_of(removed, "one") == {"b": 20}


def test_merge_of_changes_to_different_databases() -> None:
    mine = with_object(with_roots(BASE, "one", a=10), "one", OID_A, 11)
    theirs = with_roots(BASE, "two", c=30)
    merged = merge(BASE, mine, theirs)
    assert roots_of(merged, "one") == {"a": 10, "b": 2}
    assert objects_of(merged, "one") == {OID_A: 11, OID_B: 2}
    assert roots_of(merged, "two") == {"c": 30}
    created = merge(BASE, BASE.set_at("three", state(d=4)), theirs)
    assert sorted(created.keys()) == ["one", "three", "two"]
    assert roots_of(created, "two") == {"c": 30}


def test_merge_of_disjoint_object_changes() -> None:
    mine = with_object(BASE, "one", OID_A, 10)
    theirs = with_object(BASE, "one", OID_B, 20)
    assert objects_of(merge(BASE, mine, theirs), "one") == {OID_A: 10, OID_B: 20}


def test_merge_without_my_changes_is_theirs_and_theirs_unchanged_is_mine() -> None:
    theirs = with_roots(BASE, "one", b=20)
    mine = with_roots(BASE, "one", a=10)
    assert merge(BASE, BASE, theirs) is theirs
    assert merge(BASE, mine, BASE) is mine


@pytest.mark.parametrize(
    ("mine", "theirs"),
    [
        (with_roots(BASE, "one", a=10), with_roots(BASE, "one", a=11)),
        (with_roots(BASE, "one", a=10), with_roots(BASE, "one", a=10)),
        (with_roots(BASE, "one", a=10), with_roots(BASE, "one", a=MISSING)),
        (with_roots(BASE, "one", z=1), with_roots(BASE, "one", z=1)),
        (with_object(BASE, "one", OID_A, 10), with_object(BASE, "one", OID_A, 12)),
        (BASE.set_at("new", state(x=1)), BASE.set_at("new", state(x=1))),
        (BASE.set_at("new", state(x=1)), BASE.set_at("new", state(y=2))),
        (with_roots(BASE, "two", c=4), BASE.remove_at("two")),
        (BASE.remove_at("two"), with_roots(BASE, "two", c=4)),
    ],
    ids=[
        "same-root-key",
        "same-root-key-same-value",
        "changed-and-removed",
        "added-on-both-sides",
        "same-object",
        "database-created-on-both-sides-alike",
        "database-created-on-both-sides",
        "changed-database-removed",
        "removed-database-changed",
    ],
)
def test_merge_of_overlapping_changes_conflicts(mine: Dictionary, theirs: Dictionary) -> None:
    with pytest.raises(ConflictError):
        merge(BASE, mine, theirs)


@pytest.mark.parametrize(
    ("reads", "theirs", "conflicts"),
    [
        (DatabaseReads(roots=frozenset({"b"})), with_roots(BASE, "one", b=20), True),
        (DatabaseReads(roots=frozenset({"b"})), with_roots(BASE, "one", b=MISSING), True),
        (DatabaseReads(roots=frozenset({"nothing"})), with_roots(BASE, "one", nothing=1), True),
        (DatabaseReads(roots=frozenset({"b"})), with_roots(BASE, "one", z=20), False),
        (DatabaseReads(roots=frozenset({"b"})), with_roots(BASE, "two", c=30), False),
        (DatabaseReads(objects=frozenset({OID_B})), with_object(BASE, "one", OID_B, 20), True),
        (DatabaseReads(objects=frozenset({OID_B})), with_object(BASE, "one", OID_A, 20), False),
        (DatabaseReads(objects=frozenset({OID_B})), with_roots(BASE, "one", b=20), False),
    ],
    ids=[
        "read-root-changed",
        "read-root-removed",
        "read-missing-root-added",
        "other-root-changed",
        "other-database-changed",
        "read-object-changed",
        "other-object-changed",
        "roots-changed-object-not",
    ],
)
def test_merge_validates_read_current_reads(
    reads: DatabaseReads, theirs: Dictionary, conflicts: bool
) -> None:
    mine = with_roots(BASE, "one", a=10)
    for my_side in (mine, BASE):  # reads are validated even with nothing written there
        if conflicts:
            with pytest.raises(ConflictError):
                merge(BASE, my_side, theirs, {"one": reads})
        else:
            merged = merge(BASE, my_side, theirs, {"one": reads})
            expected = {**roots_of(theirs, "one"), **({"a": 10} if my_side is mine else {})}
            assert roots_of(merged, "one") == expected
            assert objects_of(merged, "one") == objects_of(theirs, "one")


# --------------------------------------------------------------------------
# The server-side shape: a change already stored
# --------------------------------------------------------------------------


def put_client_change(
    space: ObjectSpace, name: str, reads: dict[str, DatabaseReads] | None = None, **roots: Any
) -> tuple[Snapshot, SpaceChange]:
    """What a cluster client does, then what the node receives.

    The client writes the database table it wants with an `AtomWriter` and
    stores it with `put_batch` only. The node decodes the table from the
    stored root and hands the committer a change with `stored_root` set.
    The caller closes the returned snapshot.
    """
    snapshot = Snapshot(space, space.pinned_root())
    base = snapshot.ref
    base_databases = snapshot.databases_at(base)
    wanted = with_roots(base_databases, name, **roots)
    writer = AtomWriter(space.origin, new_transaction_id())
    stored_root = writer.write_value({"format": SPACE_FORMAT, "databases": wanted})
    space.storage.put_batch(writer.batch())
    received = snapshot.databases_at(RootRef(stored_root, 0))
    change = SpaceChange(
        base,
        base_databases,
        received,
        reads or {},
        stored_root=stored_root,
        transaction_id=writer.transaction_id,
    )
    return snapshot, change


@pytest.fixture
def server() -> Iterator[tuple[ObjectSpace, Database]]:
    with ObjectSpace(MemoryStorage()) as space:
        db = space.new_database("d")
        db.run(lambda tr: tr.set_root_object("a", 1))
        yield space, db


def commit_change(space: ObjectSpace, snapshot: Snapshot, change: SpaceChange) -> RootRef:
    try:
        return space.committer.commit(change, snapshot)
    finally:
        snapshot.close()


def test_stored_change_without_concurrent_commit_sets_exactly_its_root(
    server: tuple[ObjectSpace, Database],
) -> None:
    space, db = server
    before = space.storage.read_root()
    snapshot, change = put_client_change(space, "d", mine=Literal("m" * 300))
    ref = commit_change(space, snapshot, change)
    assert change.stored_root is not None and change.transaction_id is not None
    assert ref == RootRef(change.stored_root, before.version + 1)
    assert space.storage.read_root() == ref
    assert space.storage.committed_root(change.transaction_id) == ref
    assert root_names(db) == ["a", "mine"]
    assert root_value(db, "mine") == "m" * 300


@pytest.mark.parametrize("through", ["same-space", "other-space"])
def test_stored_change_after_a_concurrent_commit_is_rebased(
    server: tuple[ObjectSpace, Database], through: str
) -> None:
    space, db = server
    snapshot, change = put_client_change(space, "d", mine=Literal("m" * 300), a=2)
    if through == "same-space":
        db.run(lambda tr: tr.set_root_object("theirs", Dictionary({"t": 1})))
    else:
        other = ObjectSpace(space.storage)  # another writer the committer never saw
        other.open_database("d").run(lambda tr: tr.set_root_object("theirs", Dictionary({"t": 1})))
    concurrent = space.storage.read_root()
    ref = commit_change(space, snapshot, change)
    assert ref.version == concurrent.version + 1
    assert ref.pointer != change.stored_root
    assert space.storage.read_root() == ref
    assert root_names(db) == ["a", "mine", "theirs"]
    assert root_value(db, "a") == 2
    assert root_value(db, "mine") == "m" * 300
    assert root_value(db, "theirs") == {"t": 1}


def test_stored_change_overlapping_a_concurrent_commit_conflicts(
    server: tuple[ObjectSpace, Database],
) -> None:
    space, db = server
    snapshot, change = put_client_change(space, "d", a=2)
    db.run(lambda tr: tr.set_root_object("a", 3))
    concurrent = space.storage.read_root()
    with pytest.raises(ConflictError):
        commit_change(space, snapshot, change)
    assert space.storage.read_root() == concurrent
    assert root_value(db, "a") == 3


def test_stored_change_with_a_stale_read_conflicts(server: tuple[ObjectSpace, Database]) -> None:
    space, db = server
    reads = {"d": DatabaseReads(roots=frozenset({"a"}))}
    snapshot, change = put_client_change(space, "d", reads, b=2)
    db.run(lambda tr: tr.set_root_object("a", 3))
    with pytest.raises(ConflictError):
        commit_change(space, snapshot, change)
    assert root_names(db) == ["a"]


def test_stored_change_whose_root_change_answer_was_lost_is_found(
    server: tuple[ObjectSpace, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, db = server
    before = space.storage.read_root()
    original = MemoryStorage.set_root
    calls: list[bytes] = []

    def set_root_then_lose_answer(
        storage: MemoryStorage, expected: int, new_root: AtomPointer, transaction_id: bytes
    ) -> RootRef:
        calls.append(transaction_id)
        original(storage, expected, new_root, transaction_id)
        raise CommitOutcomeUnknown("the answer was lost", transaction_id)

    monkeypatch.setattr(MemoryStorage, "set_root", set_root_then_lose_answer)
    snapshot, change = put_client_change(space, "d", mine=1)
    ref = commit_change(space, snapshot, change)
    assert calls == [change.transaction_id]
    assert ref == RootRef(change.stored_root, before.version + 1)
    assert root_value(db, "mine") == 1


def test_rebased_stored_change_on_a_file_storage_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        db = space.new_database("d")
        snapshot, change = put_client_change(space, "d", mine=Literal("m" * 300))
        db.run(lambda tr: tr.set_root_object("theirs", 1))
        ref = commit_change(space, snapshot, change)
        assert ref.pointer != change.stored_root
        assert root_value(db, "mine") == "m" * 300
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        db = space.open_database("d")
        assert root_names(db) == ["mine", "theirs"]
        assert root_value(db, "mine") == "m" * 300


def test_reads_that_go_back_are_refused_unless_the_space_allows_them() -> None:
    """A cluster node's own space reads roots its pipeline may withdraw (a failed
    speculation); a client's space must never see a root older than one it saw."""

    class GoesBack(MemoryStorage):
        def __init__(self) -> None:
            super().__init__()
            self.older: RootRef | None = None

        def read_root(self) -> RootRef:
            return self.older if self.older is not None else super().read_root()

    for monotonic in (True, False):
        storage = GoesBack()
        space = ObjectSpace(storage, monotonic_reads=monotonic)
        db = space.new_database("d")
        db.run(lambda tr: tr.set_root_object("x", 1))
        storage.older = RootRef(None, 0)
        if monotonic:
            with pytest.raises(StorageError, match="refusing a stale read"):
                space.committer.read_root()
        else:
            assert space.committer.read_root() == RootRef(None, 0)
